"""Regression verdicts against a saved baseline, aware of each run's measured noise.

For every case present in both runs (matched by ``attnbench.outcome.case_key``: family,
backend, batch spec, shape, sweep value, pipeline, backend knobs, cache state, device kind;
records without those fields are matched by pytest fullname) we estimate

    r = median(new) / median(baseline)          (time ratio: r > 1 means the new run is slower)

and a two-sided confidence interval [lo, hi] for r (default 95 %):

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

With a practical threshold t (default 2 %, ``--verdict-threshold``), the verdict is

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
import json
import math
import statistics
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from attnbench import options
from attnbench.exports import ResultsFileError, load_results
from attnbench.reporting.cells import NO_VALUE, change, us
from attnbench.reporting.model import ADDED, BAD, DOUBT, GONE, GOOD, Cell, Column, Table
from attnbench.outcome import CaseOutcome, Times, case_key, describe_key

FASTER, SLOWER, SAME, UNSURE, NEW = "FASTER", "SLOWER", "SAME", "UNSURE", "NEW"
UNTIMED = "UNTIMED"  # the new run holds the baseline's case but skipped or failed it
MISSING = "MISSING"  # the new run does not hold the baseline's case at all
VERDICTS = (FASTER, SLOWER, SAME, UNSURE, NEW, UNTIMED, MISSING)
THRESHOLD = options.DEFAULTS["verdict_threshold"]  # --verdict-threshold's default
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
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

    @property
    def change_pct(self) -> float | None:
        return (self.ratio - 1.0) * 100.0 if self.ratio is not None else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = list(self.key)
        out["change_pct"] = self.change_pct
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
    """A verdict per case of ``new`` (NEW if the baseline lacks it, UNTIMED if ``new`` did not time it), then
    MISSING for the timed baseline cases ``new`` does not hold."""
    base_by_key = {case_key(b): b for b in baseline if b.timed}
    base_by_name = {b.fullname: b for b in baseline if b.timed and b.fullname}
    used: set[int] = set()
    verdicts: list[Verdict] = []
    for result in new:
        key = case_key(result)
        base, matched_by = base_by_key.get(key), "case"
        if base is None and result.fullname and (key[0] == "fullname" or _unstructured(base_by_name.get(result.fullname))):
            # only records without structured fields fall back to the test id; otherwise an id that
            # names a different shape (--num-q-heads) would be compared as if it were the same case
            base, matched_by = base_by_name.get(result.fullname), "fullname"
        label = describe_key(result)
        if base is None:
            if result.timed:
                verdicts.append(Verdict(label, NEW, new_median=result.median, new_rounds=result.times.rounds, key=key))
            continue
        used.add(id(base))
        if not result.timed:
            verdicts.append(Verdict(label, UNTIMED, baseline_median=base.median, baseline_rounds=base.times.rounds,
                                    note=f"{result.status}: {result.reason}" if result.reason else result.status,
                                    matched_by=matched_by, key=key))
            continue
        seed = zlib.crc32(repr(key).encode())
        ratio, lo, hi, method, note = ratio_interval(base, result, confidence, seed)
        # a change measured while either run's clocks were held down says so: it may be the GPU, not the code
        throttled = "; ".join(f"{side} run {c.note()}" for side, c in (("baseline", _clocks(base)), ("new", _clocks(result)))
                              if c is not None and c.throttled)
        note = "; ".join(n for n in (note, throttled) if n) or None
        verdicts.append(Verdict(label, classify(lo, hi, threshold), ratio, lo, hi, method, base.median,
                                result.median, base.times.rounds, result.times.rounds, matched_by, note, key))
    for base in baseline:
        if base.timed and id(base) not in used and base_by_key.get(case_key(base)) is base:
            verdicts.append(Verdict(describe_key(base), MISSING, baseline_median=base.median,
                                    baseline_rounds=base.times.rounds, note="not in the new run", key=case_key(base)))
    return verdicts


def counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    out = {v: 0 for v in VERDICTS}
    for v in verdicts:
        out[v.verdict] += 1
    return out


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
    headers = ("case", "verdict", "change", "CI of change", "baseline µs", "new µs", "rounds", "how")
    table = Table(title, [Column(h, right=h not in ("case", "verdict", "how")) for h in headers])
    for v in verdicts:
        ci = f"{change(v.ci_low)} .. {change(v.ci_high)}" if v.ci_low is not None and v.ci_high is not None \
            else NO_VALUE
        how = ", ".join(p for p in (v.method, None if v.matched_by in (None, "case") else f"matched by {v.matched_by}",
                                     v.note) if p)
        table.add(v.label, Cell(v.verdict, emphasis=_EMPHASIS.get(v.verdict)),
                  change(v.ratio) if v.ratio is not None else NO_VALUE, ci, us(v.baseline_median, 4),
                  us(v.new_median, 4), f"{v.baseline_rounds}/{v.new_rounds}", how)
    return table


def write_verdict_json(path: str | Path, verdicts: Sequence[Verdict], *, baseline: str, new: str,
                       threshold: float, confidence: float, baseline_gpu: str | None, new_gpu: str | None,
                       warnings: Sequence[str] = ()) -> Path:
    doc = {
        "baseline": baseline, "new": new, "threshold": threshold, "confidence": confidence,
        "definition": "ratio = new median / baseline median; SAME if CI within [1-t, 1+t], SLOWER if CI low > 1+t, "
                      "FASTER if CI high < 1-t, else UNSURE (see attnbench.reporting.verdicts)",
        "gpu": {"baseline": baseline_gpu, "new": new_gpu}, "warnings": list(warnings),
        "counts": counts(verdicts), "cases": [v.to_dict() for v in verdicts],
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``benchmark.py compare BASELINE NEW``: one verdict line per case; exit 1 on SLOWER, 2 on a GPU mismatch or
    bad input."""
    from attnbench.cli import Once, OneLineParser, fail, finite_number

    parser = OneLineParser(prog="benchmark.py compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="baseline results (pytest-benchmark JSON, or attnbench JSON/JSONL)")
    parser.add_argument("new", help="new results, same formats")
    parser.add_argument("--threshold", type=_threshold, default=THRESHOLD, action=Once,
                        help=f"practical threshold t as a fraction (default {THRESHOLD}: +-2%%)")
    parser.add_argument("--confidence", type=finite_number, default=CONFIDENCE, action=Once,
                        help="confidence level (default 0.95)")
    parser.add_argument("--allow-gpu-mismatch", action="store_true", help="compare runs from different GPU models")
    parser.add_argument("--verdict-json", metavar="FILE", action=Once, help="also write the verdicts as JSON")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if a case is SLOWER")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not 0 < args.confidence < 1:  # NaN fails the comparison too
        parser.error("--confidence must be in (0, 1)")
    if args.verdict_json:
        from attnbench.exports import unwritable_reason

        reason = unwritable_reason(args.verdict_json)
        if reason is not None:  # before any work, not after the comparison
            return fail(f"--verdict-json {args.verdict_json}: cannot write the verdicts there: {reason}")
        for label, path in (("baseline", args.baseline), ("new", args.new)):
            if Path(path).exists() and Path(path).resolve() == Path(args.verdict_json).resolve():
                return fail(f"--verdict-json {args.verdict_json}: the same file as the {label} results {path}")
    try:
        base, new = load_results(args.baseline), load_results(args.new)
    except ResultsFileError as exc:
        return fail(str(exc))
    base_gpu, new_gpu = recorded_gpu(base), recorded_gpu(new)
    try:
        warning = check_gpu(base_gpu, new_gpu, args.allow_gpu_mismatch)
    except GpuMismatch as exc:
        unrecorded = args.baseline if base_gpu is None else args.new if new_gpu is None else None
        return fail(f"{unrecorded}: {exc}" if unrecorded else str(exc))
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    verdicts = compare_results(base.results, new.results, threshold=args.threshold, confidence=args.confidence)
    for v in verdicts:
        print(v.line())
    tally = counts(verdicts)
    print(", ".join(f"{n} {name}" for name, n in tally.items() if n) or "no cases to compare")
    if args.verdict_json:
        write_verdict_json(args.verdict_json, verdicts, baseline=args.baseline, new=args.new, threshold=args.threshold,
                           confidence=args.confidence, baseline_gpu=base_gpu, new_gpu=new_gpu,
                           warnings=[warning] if warning else [])
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


def _unstructured(result: CaseOutcome | None) -> bool:
    return result is not None and case_key(result)[0] == "fullname"


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
