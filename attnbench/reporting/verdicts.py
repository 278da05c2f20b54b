"""Regression verdicts against saved baseline runs, aware of the noise between placements and processes.

For every case present in the new run and the baselines (matched by ``attnbench.results.outcome.case_key``: family,
backend, batch spec, shape, sweep value, pipeline, backend knobs, cache state, device kind;
records without those fields are matched by pytest fullname) we estimate the time ratio r (r > 1 means the
new run is slower) and a two-sided confidence interval [lo, hi] for it. ``confidence`` (default 95 %) holds
for the whole run: each case's interval is taken at Sidak's level ``confidence ** (1 / cases compared)``.

* Cases timed on several placements (``timing.placement_rounds``, the default): ``NoiseModel``. A run's
  estimate is the log median of its fastest placement (``run_estimate``); how far it moves between processes is
  the spread of several baseline runs' estimates, pooled over the comparison's cases and shrunk into each case's
  own; the interval is Student's t on the log difference, and the ratio is that of the fastest placements
  (docs/REGRESSION_GATE.md).

Cases without placements (older files, ``--placements 1``) take r = median(new) / median(baseline) and:

* with per-round samples on both sides (``stats.data`` in pytest-benchmark JSON, which
  ``--benchmark-json`` always writes and ``--benchmark-save`` writes with
  ``--benchmark-save-data``; ``samples`` in attnbench records) and at least
  ``MIN_BOOTSTRAP_ROUNDS`` rounds each: a percentile bootstrap. Both sample sets are
  resampled with replacement ``BOOTSTRAP_RESAMPLES`` times, the ratio of the resampled
  medians is taken each time, and [lo, hi] are its quantiles. The generator is seeded from
  the case key, so a verdict is reproducible.
* otherwise, from the summary statistics: the standard error of each median is
  1.2533 * sigma / sqrt(rounds), with sigma = IQR / 1.349 (robust to outliers; stddev when
  the IQR is missing or zero), and the log-ratio gets a normal interval:
  log r +- z * sqrt((se_b / median_b)^2 + (se_n / median_n)^2).

With a practical threshold t (default 0.5 %, ``--verdict-threshold``), the verdict is

    SAME    1 - t <= lo  and  hi <= 1 + t   the whole interval is within +-t: no change that matters
    SLOWER  lo > 1 + t                      the whole interval is beyond +t: a real regression
    FASTER  hi < 1 - t                      the whole interval is beyond -t: a real improvement
    UNSURE  anything else                   the interval straddles a threshold: the runs are too
                                            noisy (or too short) to tell; measure more rounds

So a 6 % slowdown measured with 15 % round-to-round noise is UNSURE, while a 3 % slowdown
with 0.3 % noise is SLOWER, where a fixed "flag anything over 5 %" rule gets both wrong.
A case with fewer than two rounds on either side has no measurable spread and is UNSURE.
Cases only in the new run are NEW; baseline cases the new run holds but did not time (skipped
or failed: the note says which) are UNTIMED; baseline cases the new run does not hold at all are
MISSING. None of these fails a run.

GPU check: runs on different GPU models are not comparable. The GPU model is
``machine_info["attnbench"]["gpu"]["name"]`` (``None`` there means no GPU: a CPU run). A
mismatch is an error unless ``--allow-gpu-mismatch`` turns it into a warning.

Offline use (baseline first; exit 1 on SLOWER, 2 on a GPU mismatch or unreadable input)::

    python benchmark.py compare BASELINE.json NEW.json [--verdict-json FILE]
    python -m attnbench.reporting.verdicts BASELINE.json NEW.json

``main`` is that command line; ``verdict_table`` shows verdicts through ``reporting.model`` (the
console renders it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from attnbench.spec import options
from attnbench.results.exports import ResultsFileError, load_results
from attnbench.reporting.cells import NO_VALUE, change, us
from attnbench.reporting.model import ADDED, BAD, DOUBT, GONE, GOOD, Cell, Column, Table
from attnbench.results.outcome import CaseOutcome, Times, case_key, describe_key

FASTER, SLOWER, SAME, UNSURE, NEW = "FASTER", "SLOWER", "SAME", "UNSURE", "NEW"
UNTIMED = "UNTIMED"  # the new run holds the baseline's case but skipped or failed it
MISSING = "MISSING"  # the new run does not hold the baseline's case at all
VERDICTS = (FASTER, SLOWER, SAME, UNSURE, NEW, UNTIMED, MISSING)
THRESHOLD = options.DEFAULTS["verdict_threshold"]  # --verdict-threshold's default
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10000  # enough to place the tails of a run-wide interval
MIN_BOOTSTRAP_ROUNDS = 5
_MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # 1.2533: asymptotic SE of a normal sample's median, in sigmas
_IQR_PER_SIGMA = 1.349


@dataclass
class Verdict:
    label: str
    verdict: str
    ratio: float | None = None  # new median / baseline median
    ci_low: float | None = None
    ci_high: float | None = None
    method: str | None = None  # "bootstrap" or "summary"
    baseline_median: float | None = None  # seconds
    new_median: float | None = None
    baseline_rounds: int = 0
    new_rounds: int = 0
    matched_by: str | None = None  # "case" (structured fields) or "fullname"
    note: str | None = None
    key: tuple = ()

    threshold: float | None = None  # the practical threshold the verdict used

    @property
    def change_pct(self) -> float | None:
        return (self.ratio - 1.0) * 100.0 if self.ratio is not None else None

    @property
    def detectable_pct(self) -> float | None:
        """The smallest slowdown this comparison calls SLOWER (its interval's lower edge then clears the
        threshold): what the gate can see for this case, given both runs' noise."""
        if self.ratio is None or not self.ci_low or self.threshold is None:
            return None
        return ((1.0 + self.threshold) * self.ratio / self.ci_low - 1.0) * 100.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = list(self.key)
        out["change_pct"] = self.change_pct
        out["detectable_pct"] = self.detectable_pct
        return out

    def line(self) -> str:
        """One line per case, for the offline command and logs."""
        if self.ratio is None:
            known = [f"baseline {us(self.baseline_median, 4)} us" if self.baseline_median else "",
                     f"new {us(self.new_median, 4)} us" if self.new_median else "", self.note or ""]
            return f"{self.verdict:<7} {'':>8}  {'':<20}  {self.label}  ({'; '.join(k for k in known if k)})"
        ci = f"[{change(self.ci_low)}, {change(self.ci_high)}]" if self.ci_low is not None and \
            self.ci_high is not None else "[no spread]"
        times = f"{us(self.baseline_median, 4)} -> {us(self.new_median, 4)} us"
        tail = f"{times}, {self.method or '-'}" + (f"; {self.note}" if self.note else "")
        return f"{self.verdict:<7} {change(self.ratio):>8}  {ci:<20}  {self.label}  ({tail})"


def classify(ci_low: float | None, ci_high: float | None, threshold: float = THRESHOLD) -> str:
    """The verdict for a confidence interval [ci_low, ci_high] of the time ratio new / baseline."""
    if ci_low is None or ci_high is None:
        return UNSURE
    if ci_low > 1.0 + threshold:
        return SLOWER
    if ci_high < 1.0 - threshold:
        return FASTER
    if ci_low >= 1.0 - threshold and ci_high <= 1.0 + threshold:
        return SAME
    return UNSURE


def ratio_interval(baseline: CaseOutcome, new: CaseOutcome, confidence: float = CONFIDENCE,
                   seed: int = 0) -> tuple[float, float | None, float | None, str, str | None]:
    """(ratio, ci_low, ci_high, method, note) for new / baseline median times."""
    ratio = new.median / baseline.median
    b, n = baseline.times, new.times
    if b.rounds < 2 or n.rounds < 2:
        return ratio, None, None, "none", "fewer than 2 rounds: spread unknown"
    if len(b.samples) >= MIN_BOOTSTRAP_ROUNDS and len(n.samples) >= MIN_BOOTSTRAP_ROUNDS:
        interval = _bootstrap(b.samples, n.samples, confidence, seed)
        if interval is not None:
            return ratio, interval[0], interval[1], "bootstrap", None
    se_b, se_n = _median_se(b), _median_se(n)
    if se_b is None or se_n is None:
        return ratio, None, None, "none", "no spread recorded"
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = math.sqrt((se_b / baseline.median) ** 2 + (se_n / new.median) ** 2)
    return ratio, ratio * math.exp(-z * spread), ratio * math.exp(z * spread), "summary", None


def compare_results(baseline: Sequence[CaseOutcome], new: Sequence[CaseOutcome], *,
                    threshold: float = THRESHOLD, confidence: float = CONFIDENCE) -> list[Verdict]:
    """``compare_runs`` against one baseline run."""
    return compare_runs([baseline], new, threshold=threshold, confidence=confidence)


def compare_runs(baselines: Sequence[Sequence[CaseOutcome]], new: Sequence[CaseOutcome], *,
                 threshold: float = THRESHOLD, confidence: float = CONFIDENCE,
                 rechecks: Mapping[tuple, Sequence[CaseOutcome]] | None = None) -> list[Verdict]:
    """A verdict per case of ``new`` (NEW if no baseline run has it, UNTIMED if ``new`` did not time it), then
    MISSING for the timed baseline cases ``new`` does not hold. ``baselines`` are separate runs (processes) of the
    same code: with two or more, the spread between them is the process noise that every verdict accounts for.
    ``rechecks`` holds, by ``case_key``, the same case of the new code timed again in other processes
    (``needs_recheck``): its verdict then rests on every process of the new code."""
    runs = [[b for b in run if b.timed] for run in baselines]
    by_key: dict[tuple, list[CaseOutcome]] = {}
    by_name: dict[str, list[CaseOutcome]] = {}
    for run in runs:
        for b in run:
            by_key.setdefault(case_key(b), []).append(b)
            if b.fullname:
                by_name.setdefault(b.fullname, []).append(b)
    model = NoiseModel.fit(list(by_key.values()), [r for r in new if r.timed])
    # ``confidence`` holds for the whole run, not each case: a gate over 50 cases at 95 % each would call one
    # unchanged case FASTER or SLOWER in most runs (Sidak's per-case level for the cases compared)
    compared = sum(1 for r in new if r.timed and (case_key(r) in by_key or r.fullname in by_name))
    per_case = confidence ** (1.0 / max(1, compared))
    used: set[tuple] = set()
    verdicts: list[Verdict] = []
    for result in new:
        key = case_key(result)
        bases, matched_by = by_key.get(key), "case"
        if bases is None and result.fullname and (key[0] == "fullname" or _unstructured(by_name.get(result.fullname))):
            # only records without structured fields fall back to the test id; otherwise an id that
            # names a different shape (--num-q-heads) would be compared as if it were the same case
            bases, matched_by = by_name.get(result.fullname), "fullname"
        label = describe_key(result)
        if not bases:
            if result.timed:
                verdicts.append(Verdict(label, NEW, new_median=result.median, new_rounds=result.times.rounds, key=key))
            continue
        used.add(case_key(bases[0]))
        base = bases[0] if len(bases) == 1 else _pooled(bases)
        if not result.timed:
            verdicts.append(Verdict(label, UNTIMED, baseline_median=base.median, baseline_rounds=base.times.rounds,
                                    note=f"{result.status}: {result.reason}" if result.reason else result.status,
                                    matched_by=matched_by, key=key))
            continue
        seed = zlib.crc32(repr(key).encode())
        again = [r for r in (rechecks or {}).get(key, ()) if r.timed]
        interval = model.interval(bases, [result, *again], per_case)
        if interval is None:
            ratio, lo, hi, method, note = ratio_interval(base, result, per_case, seed)
        else:
            ratio, lo, hi, method, note = interval.ratio, interval.low, interval.high, "placements", interval.note
        verdict = classify(lo, hi, threshold)
        if interval is not None and again:
            unconfirmed = verdict == SLOWER and interval.disagree and interval.least_low <= 1.0 + threshold
            verdict = UNSURE if unconfirmed else verdict
            shown = ", ".join(change(c) for c in interval.process_ratios)
            note = "; ".join(n for n in (note, f"timed in {len(interval.process_ratios)} processes: {shown}" + (
                " (they disagree: SLOWER not confirmed)" if unconfirmed else "")) if n)
        # a change measured while either run's clocks were held down says so: it may be the GPU, not the code
        throttled = "; ".join(f"{side} run {c.note()}" for side, c in (("baseline", _clocks(bases[0])),
                                                                        ("new", _clocks(result)))
                              if c is not None and c.throttled)
        injected = _injected(result)
        other_timer = _other_timer(bases[0], result)
        if other_timer is not None:  # CUPTI's kernel span leaves out what the events count: not the same number
            verdict = UNSURE
        note = "; ".join(n for n in (other_timer, note, throttled, injected) if n) or None
        verdicts.append(Verdict(label, verdict, ratio, lo, hi, method, base.median,
                                result.median, base.times.rounds, result.times.rounds, matched_by, note, key,
                                threshold))
    for key, bases in by_key.items():
        if key not in used:
            verdicts.append(Verdict(describe_key(bases[0]), MISSING, baseline_median=bases[0].median,
                                    baseline_rounds=bases[0].times.rounds, note="not in the new run", key=key))
    return verdicts


# ------------------------------------------------------------------ the noise model

# How many degrees of freedom the comparison-wide variance estimate weighs, against a case's own: a case has two or
# three baseline runs, so its own spread is itself noisy; the comparison's pooled spread steadies it (a shrinkage
# estimate) without hiding a case that really is noisier than the rest.
POOL_WEIGHT = 16.0


def run_estimate(logs: Sequence[float]) -> float:
    """A run's estimate of a case: the log median of its fastest placement.

    Where a case's buffers land moves its time in modes, not in a bell: on an H100 a memory-bound decode runs in a
    fast mode on some allocations and up to 14 % slower on others, with the share of slow placements changing from
    process to process (docs/REGRESSION_GATE.md). The mean over placements inherits that lottery; the fastest
    placement does not, and it moves with a change to the code as every placement does."""
    return min(logs)


@dataclass(frozen=True)
class NoiseModel:
    """How far a run's estimate of a case (``run_estimate``, log seconds) moves between runs of the same code.

    With two or more baseline runs (separate processes), that spread is measured directly: ``run_var`` pools the
    variance of the baseline runs' estimates over the comparison's cases, and each case's own is shrunk towards it
    (``POOL_WEIGHT``). It covers everything that differs between processes: placement, clocks, the allocation
    history. With one baseline run only the spread within a run is known (``split_var``: each run's placements split
    in two halves, even and odd, whose estimates differ by chance only), and the verdicts say the offset between
    processes is not measured."""

    run_var: float | None  # pooled variance of a run's estimate between baseline runs; None: one baseline run
    run_dof: float
    split_var: float  # pooled variance of an estimate from half a run's placements
    split_dof: float

    @classmethod
    def fit(cls, baseline_cases: Sequence[Sequence[CaseOutcome]], new: Sequence[CaseOutcome]) -> "NoiseModel":
        run_ss = run_dof = 0.0
        for case in baseline_cases:
            estimates = [run_estimate(x) for x in (placement_logs(b) for b in case) if x is not None]
            if len(estimates) >= 2:
                run_ss += statistics.variance(estimates) * (len(estimates) - 1)
                run_dof += len(estimates) - 1
        split_ss = split_dof = 0.0
        for outcome in [*[b for case in baseline_cases for b in case], *new]:
            half = _split_var(placement_logs(outcome))
            if half is not None:
                split_ss += half
                split_dof += 1
        return cls(run_ss / run_dof if run_dof else None, run_dof, split_ss / split_dof if split_dof else 0.0,
                   split_dof)

    def interval(self, bases: Sequence[CaseOutcome], news: Sequence[CaseOutcome], confidence: float
                 ) -> "PlacementInterval | None":
        """The ratio's interval for the new code's runs ``news`` (one process each) against the baseline runs
        ``bases``, or None when a run has no placements to model."""
        base_logs = [x for x in (placement_logs(b) for b in bases) if x is not None]
        new_logs = [x for x in (placement_logs(n) for n in news) if x is not None]
        if not new_logs or len(new_logs) < len(news) or not base_logs or len(base_logs) < len(bases):
            return None
        estimates = [run_estimate(x) for x in base_logs]
        runs, note = len(estimates), None
        if self.run_var is not None and runs >= 2:
            weight = min(POOL_WEIGHT, self.run_dof)
            own_dof = runs - 1
            var = (statistics.variance(estimates) * own_dof + weight * self.run_var) / (own_dof + weight)
            dof = own_dof + weight
        else:
            own = [v for v in (_split_var(x) for x in [*base_logs, *new_logs]) if v is not None]
            weight = min(POOL_WEIGHT, self.split_dof)
            var = (sum(own) + weight * self.split_var) / (len(own) + weight) if own or weight else 0.0
            dof = len(own) + weight
            note = "one baseline run: the offset between processes is not measured (give several baseline runs)"
        news_ = [run_estimate(x) for x in new_logs]
        base = statistics.fmean(estimates)
        diff = statistics.fmean(news_) - base
        quantile = _t_quantile(0.5 + confidence / 2, dof)
        half = quantile * math.sqrt(var * (1.0 / len(new_logs) + 1.0 / runs))
        # two processes of the new code further apart than the baseline runs' spread allows: one carries an offset
        # of its own (an H100 showed +2 to +6 % on one backend's cases in one process), and their mean says nothing
        apart = max(news_) - min(news_)
        disagree = len(news_) > 1 and apart > quantile * math.sqrt(2.0 * var)
        # then the process that measured the least change must show a change on its own
        least_low = math.exp(min(news_) - base - quantile * math.sqrt(var * (1.0 + 1.0 / runs)))
        return PlacementInterval(math.exp(diff), math.exp(diff - half), math.exp(diff + half), note,
                                 tuple(math.exp(e - base) for e in news_), disagree, least_low)


@dataclass(frozen=True)
class PlacementInterval:
    ratio: float  # new / baseline, fastest placements, over every process of the new code
    low: float
    high: float
    note: str | None
    process_ratios: tuple[float, ...]  # each new process's own ratio, the first one first
    disagree: bool  # the new processes differ by more than the spread between processes allows
    least_low: float  # the low end of the interval of the process that measured the least change, on its own


def compare_rechecked(baselines: Sequence[Sequence[CaseOutcome]], new: Sequence[CaseOutcome],
                      retime: Callable[[set[tuple]], Mapping[tuple, Sequence[CaseOutcome]]], *,
                      threshold: float = THRESHOLD, confidence: float = CONFIDENCE) -> list[Verdict]:
    """``compare_runs``, then the cases whose first verdict leans slower (``needs_recheck``) judged again with what
    ``retime`` gives for their ``case_key``s: other processes of the new code (pytest's ``--recheck`` times them in
    fresh processes; ``benchmark.py compare --rerun`` reads them from files)."""
    verdicts = compare_runs(baselines, new, threshold=threshold, confidence=confidence)
    leaning = {v.key for v in verdicts if needs_recheck(v)}
    rechecks = retime(leaning) if leaning else {}
    if not rechecks:
        return verdicts
    return compare_runs(baselines, new, threshold=threshold, confidence=confidence, rechecks=rechecks)


def needs_recheck(verdict: Verdict) -> bool:
    """Whether a case's first verdict leans slower (SLOWER, or UNSURE above the threshold): one process of the new
    code may carry an offset of its own, so such a case is timed again in a fresh process before its verdict stands
    (``--recheck``). A SLOWER verdict then needs the processes together to clear the threshold; where they disagree
    by more than the baseline runs' spread allows, the process that measured the least change must be SLOWER on its
    own."""
    return (verdict.verdict in (SLOWER, UNSURE) and verdict.ratio is not None and verdict.threshold is not None
            and verdict.ratio > 1.0 + verdict.threshold and verdict.method == "placements")


def _split_var(logs: list[float] | None) -> float | None:
    """One degree of freedom of the variance of a half-run estimate: its even and its odd placements' estimates
    differ by chance only. None below four placements (a half needs two)."""
    if logs is None or len(logs) < 4:
        return None
    return (run_estimate(logs[0::2]) - run_estimate(logs[1::2])) ** 2 / 2.0


def placement_logs(outcome: CaseOutcome) -> list[float] | None:
    """log(median) of each placement's rounds, where the case was timed on two or more placements: from the rounds
    where the file holds them, else from the record's ``timing.placement_medians``."""
    record = outcome.record
    if record is None:
        return None
    counts_, samples = record.timing.placement_rounds, outcome.times.samples
    if len(counts_) < 2 or min(counts_) < 1:
        return None
    if samples and sum(counts_) == len(samples):
        medians, start = [], 0
        for n in counts_:
            medians.append(statistics.median(samples[start:start + n]))
            start += n
    elif not samples and len(record.timing.placement_medians) == len(counts_):
        medians = list(record.timing.placement_medians)
    else:
        return None
    return [math.log(m) for m in medians] if min(medians) > 0 else None


def _t_quantile(p: float, dof: float) -> float:
    """Student's t quantile for ``dof`` degrees of freedom (bisection on the CDF; the normal's for dof <= 0)."""
    if dof <= 0:
        return statistics.NormalDist().inv_cdf(p)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2


def _t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for t >= 0: 1 - I_x(dof/2, 1/2) / 2 with x = dof / (dof + t^2)."""
    return 1.0 - 0.5 * _incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (Lentz's continued fraction)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * result / a


def _pooled(bases: Sequence[CaseOutcome]) -> CaseOutcome:
    """Several baseline runs of one case as one outcome (their rounds together), for the summary columns and the
    methods that know no placements."""
    samples = [s for b in bases for s in b.times.samples]
    if not samples:
        return bases[0]
    return dataclasses.replace(bases[0], times=Times.of(samples))


def _other_timer(base: CaseOutcome, result: CaseOutcome) -> str | None:
    """Why two timings are not comparable when one is CUPTI's kernel span and the other is not (None: they are)."""
    timers = [r.record.timing.timer_name if r.record is not None else r.timer for r in (base, result)]
    if None in timers or ("cupti" in timers[0]) == ("cupti" in timers[1]):  # type: ignore[operator]
        return None
    return f"baseline timed by {timers[0]}, new by {timers[1]}: not comparable, so never SLOWER or FASTER"


def _injected(result: CaseOutcome) -> str | None:
    delay = result.record.timing.injected_delay_s if result.record is not None else None
    return f"injected delay {delay * 1e6:.3g} us per call (--inject-delay)" if delay else None


def counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    out = {v: 0 for v in VERDICTS}
    for v in verdicts:
        out[v.verdict] += 1
    return out


def tally_line(verdicts: Sequence[Verdict]) -> str:
    """The verdicts' counts, and what the comparison could see: the median smallest slowdown called SLOWER."""
    tally = counts(verdicts)
    line = ", ".join(f"{n} {name}" for name, n in tally.items() if n) or "no cases compared"
    seen = sorted(v.detectable_pct for v in verdicts if v.detectable_pct is not None)
    if seen:
        line += f"; a slowdown is SLOWER from {statistics.median(seen):.1f} % (median over the cases compared)"
    return line


# ------------------------------------------------------------------ GPU check

class GpuMismatch(Exception):
    """Baseline and new run were measured on different GPU models."""


def recorded_gpu(loaded: Any) -> str | None:
    """The GPU model a loaded results file was measured on: its machine_info's (``gpu_name``); a journal has no
    machine_info, so its records tell: the one GPU model its timed records name, or "none (CPU)" for CPU rows."""
    if loaded.machine_info is not None:
        return gpu_name(loaded.machine_info)
    names = {r.record.gpu.name for r in loaded.results if r.record is not None and r.record.gpu}
    if len(names) == 1:
        return str(names.pop())
    devices = {str(r.key.device or "").split(":")[0] for r in loaded.results}
    return "none (CPU)" if loaded.kind == "journal" and devices == {"cpu"} else None


def gpu_name(machine_info: dict[str, Any] | None) -> str | None:
    """The GPU model in ``machine_info``: a name, "none (CPU)" for a run without a GPU, None if unrecorded."""
    attn = (machine_info or {}).get("attnbench")
    if not isinstance(attn, dict) or "gpu" not in attn:
        return None
    gpu = attn.get("gpu")
    if not gpu:
        return "none (CPU)"
    return str(gpu.get("name")) if isinstance(gpu, dict) and gpu.get("name") else None


def check_gpu(baseline_gpu: str | None, new_gpu: str | None, allow_mismatch: bool) -> str | None:
    """Raise GpuMismatch on different GPU models (unless allowed); return a warning to show, if any."""
    if baseline_gpu is None or new_gpu is None:
        unrecorded = "baseline" if baseline_gpu is None else "new run"
        message = (f"the {unrecorded} does not record its GPU model (machine_info.attnbench); cannot check that the "
                   f"runs are comparable")
        if not allow_mismatch:  # a file from elsewhere (or edited) is not compared as if it were this GPU's
            raise GpuMismatch(f"{message} (pass --allow-gpu-mismatch to compare anyway)")
        return f"{message}; compared anyway (--allow-gpu-mismatch)"
    if baseline_gpu == new_gpu:
        return None
    message = f"GPU model differs: baseline {baseline_gpu!r}, new run {new_gpu!r}"
    if not allow_mismatch:
        raise GpuMismatch(f"{message}; timings are not comparable (pass --allow-gpu-mismatch to compare anyway)")
    return f"{message}; compared anyway (--allow-gpu-mismatch): verdicts reflect the hardware too"


# ------------------------------------------------------------------ output

_EMPHASIS = {SLOWER: BAD, FASTER: GOOD, UNSURE: DOUBT, NEW: ADDED, UNTIMED: GONE, MISSING: GONE}


def verdict_table(verdicts: Sequence[Verdict], title: str = "Verdicts vs baseline") -> Table:
    """The verdicts as a ``reporting.model`` table (``reporting.console`` renders it)."""
    headers = ("case", "verdict", "change", "CI of change", "detects", "baseline µs", "new µs", "rounds", "how")
    table = Table(title, [Column(h, right=h not in ("case", "verdict", "how")) for h in headers])
    for v in verdicts:
        ci = f"{change(v.ci_low)} .. {change(v.ci_high)}" if v.ci_low is not None and v.ci_high is not None \
            else NO_VALUE
        how = ", ".join(p for p in (v.method, None if v.matched_by in (None, "case") else f"matched by {v.matched_by}",
                                     v.note) if p)
        detects = f"≥ {v.detectable_pct:.1f}%" if v.detectable_pct is not None else NO_VALUE
        table.add(v.label, Cell(v.verdict, emphasis=_EMPHASIS.get(v.verdict)),
                  change(v.ratio) if v.ratio is not None else NO_VALUE, ci, detects, us(v.baseline_median, 4),
                  us(v.new_median, 4), f"{v.baseline_rounds}/{v.new_rounds}", how)
    return table


def write_verdict_json(path: str | Path, verdicts: Sequence[Verdict], *, baseline: str, new: str,
                       threshold: float, confidence: float, baseline_gpu: str | None, new_gpu: str | None,
                       warnings: Sequence[str] = ()) -> Path:
    doc = {
        "baseline": baseline, "new": new, "threshold": threshold, "confidence": confidence,
        "definition": "ratio = new / baseline time; SAME if CI within [1-t, 1+t], SLOWER if CI low > 1+t, "
                      "FASTER if CI high < 1-t, else UNSURE; confidence holds for the whole run (Sidak); "
                      "detectable_pct: the smallest slowdown a case's comparison calls SLOWER "
                      "(see attnbench.reporting.verdicts)",
        "gpu": {"baseline": baseline_gpu, "new": new_gpu}, "warnings": list(warnings),
        "counts": counts(verdicts), "cases": [v.to_dict() for v in verdicts],
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``benchmark.py compare BASELINE [BASELINE ...] NEW``: one verdict line per case; exit 1 on SLOWER, 2 on a GPU
    mismatch or bad input. Several baselines are separate runs of the same code (their spread is the process
    noise)."""
    from attnbench.reporting.command_line import Once, OneLineParser, fail, finite_number

    parser = OneLineParser(prog="benchmark.py compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", nargs="+",
                        help="baseline results (pytest-benchmark JSON, or attnbench JSON/JSONL); several files are "
                             "separate runs of the baseline code")
    parser.add_argument("new", help="new results, same formats")
    parser.add_argument("--threshold", type=_threshold, default=THRESHOLD, action=Once,
                        help=f"practical threshold t as a fraction (default {THRESHOLD}: +-{100 * THRESHOLD:g}%%)")
    parser.add_argument("--confidence", type=finite_number, default=CONFIDENCE, action=Once,
                        help="confidence level for the whole run, not each case (default 0.95)")
    parser.add_argument("--rerun", nargs="+", default=[], metavar="FILE", action=Once,
                        help="other runs (processes) of the new code: a case whose first verdict leans slower is "
                             "judged on them as well, as pytest's --recheck does")
    parser.add_argument("--allow-gpu-mismatch", action="store_true", help="compare runs from different GPU models")
    parser.add_argument("--verdict-json", metavar="FILE", action=Once, help="also write the verdicts as JSON")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if a case is SLOWER")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not 0 < args.confidence < 1:  # NaN fails the comparison too
        parser.error("--confidence must be in (0, 1)")
    if args.verdict_json:
        from attnbench.results.exports import unwritable_reason

        reason = unwritable_reason(args.verdict_json)
        if reason is not None:  # before any work, not after the comparison
            return fail(f"--verdict-json {args.verdict_json}: cannot write the verdicts there: {reason}")
        for label, path in [*(("baseline", b) for b in args.baseline), ("new", args.new),
                            *(("rerun", r) for r in args.rerun)]:
            if Path(path).exists() and Path(path).resolve() == Path(args.verdict_json).resolve():
                return fail(f"--verdict-json {args.verdict_json}: the same file as the {label} results {path}")
    try:
        bases, new = [load_results(b) for b in args.baseline], load_results(args.new)
        reruns = [load_results(r) for r in args.rerun]
    except ResultsFileError as exc:
        return fail(str(exc))
    new_gpu = recorded_gpu(new)
    warnings: list[str] = []
    for path, base in [*zip(args.baseline, bases), *zip(args.rerun, reruns)]:
        base_gpu = recorded_gpu(base)
        try:
            warning = check_gpu(base_gpu, new_gpu, args.allow_gpu_mismatch)
        except GpuMismatch as exc:
            unrecorded = path if base_gpu is None else args.new if new_gpu is None else None
            return fail(f"{unrecorded}: {exc}" if unrecorded else str(exc))
        if warning and warning not in warnings:
            warnings.append(warning)
            print(f"WARNING: {warning}", file=sys.stderr)
    def from_reruns(leaning: set[tuple]) -> dict[tuple, list[CaseOutcome]]:
        found: dict[tuple, list[CaseOutcome]] = {}
        for rerun in reruns:
            for r in rerun.results:
                if r.timed and case_key(r) in leaning:
                    found.setdefault(case_key(r), []).append(r)
        return found

    verdicts = compare_rechecked([b.results for b in bases], new.results, from_reruns, threshold=args.threshold,
                                 confidence=args.confidence)
    for v in verdicts:
        print(v.line())
    tally = counts(verdicts)
    print(tally_line(verdicts))
    if args.verdict_json:
        write_verdict_json(args.verdict_json, verdicts, baseline=" ".join(args.baseline), new=args.new,
                           threshold=args.threshold, confidence=args.confidence,
                           baseline_gpu=recorded_gpu(bases[0]), new_gpu=new_gpu, warnings=warnings)
    return 1 if tally[SLOWER] and not args.no_fail else 0


# ------------------------------------------------------------------ helpers

def _threshold(text: str) -> float:
    """--threshold by --verdict-threshold's rule (the option table's row)."""
    try:
        return options.BY_NAME["verdict_threshold"].value(text, cli=True)
    except options.OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _clocks(result: CaseOutcome) -> Any:
    return result.record.clocks if result.record is not None else None


def _unstructured(results: Sequence[CaseOutcome] | None) -> bool:
    return bool(results) and case_key(results[0])[0] == "fullname"


def _median_se(times: Times) -> float | None:
    sigma = None
    if times.iqr:
        sigma = times.iqr / _IQR_PER_SIGMA
    elif times.stddev is not None:
        sigma = times.stddev
    if sigma is None:
        return None
    return _MEDIAN_SE_FACTOR * sigma / math.sqrt(times.rounds)


def _bootstrap(base: Sequence[float], new: Sequence[float], confidence: float,
               seed: int) -> tuple[float, float] | None:
    try:
        import numpy as np
    except ImportError:  # the summary-statistics interval still applies
        return None
    rng = np.random.default_rng(seed)
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    med_b = np.median(b[rng.integers(0, len(b), (BOOTSTRAP_RESAMPLES, len(b)))], axis=1)
    med_n = np.median(n[rng.integers(0, len(n), (BOOTSTRAP_RESAMPLES, len(n)))], axis=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(med_n / med_b, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


if __name__ == "__main__":
    sys.exit(main())
