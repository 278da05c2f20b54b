"""What the results say, before any table: groupings, the decode/prefill crossover, the best sweep value.

Grouping comes from the results' structured fields (study, family), never from test ids. A
study's title is its YAML ``description``: results record the study's name only, so the title is
looked up in the YAML studies of a folder the caller names (``study_titles``, by ``name:`` or file stem); a
study no YAML there describes is titled by its name.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from attnbench.measure.crossover_search import (CrossoverAnswer, Point, crossover_answer, curve_kv, measurement,
                                                vllm_default)
from attnbench.reporting.cells import is_default_point, spec_order, sweep_point
from attnbench.results.outcome import CaseOutcome
from attnbench.spec.cases import DECODE, PREFILL


def group_results(results: Iterable[CaseOutcome]) -> dict[tuple[str, str], list[CaseOutcome]]:
    """Results by (study, family), in first-seen order."""
    groups: dict[tuple[str, str], list[CaseOutcome]] = {}
    for r in results:
        groups.setdefault((r.key.study or "-", r.key.family or "-"), []).append(r)
    return groups


def has_variants(group: Sequence[CaseOutcome]) -> bool:
    """Whether a group compares variants of each case (sweep values, pipelines or timed regions) rather than
    backends only."""
    return (any(r.key.pipeline for r in group) or any(r.key.sweep for r in group)
            or len({r.key.timed_region for r in group}) > 1)


def info(result: CaseOutcome | None, section: str, key: str) -> Any:
    """What vLLM (``section`` "backend_info") or the profiler ("kernels") reported as ``key``, or None."""
    return result.info(section, key) if result is not None else None


def study_titles(configs: Path) -> dict[str, str]:
    """Study name (its ``name:``, else the file's stem) -> the ``description`` of each YAML study in ``configs``."""
    import yaml

    out: dict[str, str] = {}
    for path in sorted(configs.glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # a broken study is load_study_file's to report
            continue
        if isinstance(raw, dict) and isinstance(raw.get("description"), str) and raw["description"]:
            out.setdefault(str(raw.get("name") or path.stem), raw["description"])
    return out


# ------------------------------------------------------------------ crossover

@dataclass
class Crossover:
    """Where the prefill pipeline overtakes the decode pipeline, for one backend and batch size."""

    study: str | None
    family: str | None
    backend: str
    batch_size: int
    kv_len: int | None  # None: the KV length varies with q (e.g. q{N} prefills)
    q_lens: list[int]  # query lengths with both pipelines timed, ascending
    decode_up_to: int | None  # largest q where decode is faster before prefill first wins: the threshold to pick
    prefill_from: int | None  # smallest q above ``decode_up_to`` where prefill is faster
    decode_speedup: float | None  # geometric mean of t_prefill / t_decode over q <= decode_up_to
    prefill_speedup: float | None  # geometric mean of t_decode / t_prefill over q > decode_up_to
    flips: int  # how often the faster pipeline changes along q; more than 1 = noisy or non-monotonic
    times: dict[int, tuple[float, float]] = field(default_factory=dict)  # q -> (decode s, prefill s)
    # the noise-aware reading the fields above come from: an interval where the pipelines tie, the flip points
    # and vLLM's default
    answer: CrossoverAnswer | None = None


def crossover_table(results: Iterable[CaseOutcome]) -> list[Crossover]:
    """Per backend and batch size, the largest q at which the decode pipeline is still faster.

    Uses timed results with ``pipeline`` "decode" or "prefill" (decode_vs_prefill mode). The
    batch size is the number of requests of a spec and q its longest query. If one batch size
    holds the same q at several KV lengths, each KV length gets its own row.
    """
    by_group: dict[tuple, dict[tuple[int, int], dict[str, CaseOutcome]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        if r.key.pipeline in (DECODE, PREFILL) and r.timed:
            group = by_group[(r.key.study, r.key.family, r.key.backend, r.key.batch_size)]
            group[(r.key.q_len, r.key.kv_len)][r.key.pipeline] = r
    rows: list[Crossover] = []
    for (study, family, backend, batch_size), points in by_group.items():
        both = {qk: t for qk, t in points.items() if len(t) == 2}
        curves: dict[int | None, dict[int, dict[str, CaseOutcome]]] = {}
        for (q, kv), named in curve_kv(both).items():  # one row per curve, as the search walks them
            curves.setdefault(named, {})[q] = both[(q, kv)]
        for kv, by_q in curves.items():
            rows.append(_crossover(study, family, backend, batch_size, kv, by_q))
    rows.sort(key=lambda c: (c.study or "", c.family or "", c.backend, c.batch_size, c.kv_len or 0))
    return rows


def _crossover(study: str | None, family: str | None, backend: str, batch_size: int, kv: int | None,
               by_q: dict[int, dict[str, CaseOutcome]]) -> Crossover:
    qs = sorted(by_q)
    times = {q: (by_q[q]["decode"].median, by_q[q]["prefill"].median) for q in qs}  # timed
    answer = crossover_answer([Point(q, measurement(by_q[q]["decode"]), measurement(by_q[q]["prefill"]))
                               for q in qs], vllm_default(backend, _recorded_default(by_q)))
    # one reading of the curve, the noise-aware one: the threshold before the first flip, the flips counted
    # between clear winners (a tie is no flip)
    up_to, prefill_from, flips = answer.threshold, answer.prefill_from, answer.flips
    above = [q for q in qs if up_to is None or q > up_to]
    below = [q for q in qs if up_to is not None and q <= up_to]
    return Crossover(study, family, backend, batch_size, kv, qs, up_to, prefill_from,
                     _geomean([times[q][1] / times[q][0] for q in below]),
                     _geomean([times[q][0] / times[q][1] for q in above]), flips, times, answer)


def crossover_records(results: Iterable[CaseOutcome]) -> list[dict[str, Any]]:
    """The crossover answers as plain data, for the CSV/JSON exports: one row per backend x batch size."""
    rows = []
    for c in crossover_table(results):
        a = c.answer
        rows.append({"study": c.study, "backend": c.backend, "batch_size": c.batch_size, "kv_len": c.kv_len,
                     "reorder_batch_threshold": a.threshold if a else c.decode_up_to,
                     "threshold_upper": a.hi if a else None, "within_noise": bool(a and a.interval),
                     "prefill_from": a.prefill_from if a else c.prefill_from,
                     "vllm_default": a.vllm_default if a else None, "kind": a.kind if a else None,
                     "flips": a.flips if a else c.flips, "flip_points": a.flip_points if a else [],
                     "q_timed": len(c.q_lens), "q_lens": c.q_lens})
    return rows


def _recorded_default(by_q: dict[int, dict[str, CaseOutcome]]) -> Any:
    """The default reorder_batch_threshold vLLM's builder reported for these cases (GPU runs record it)."""
    for pair in by_q.values():
        for r in pair.values():
            default = r.info("backend_info", "default_reorder_batch_threshold")
            if default is not None:
                return default
    return None


def _geomean(values: Sequence[float]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ------------------------------------------------------------------ sweeps

@dataclass
class BestSweepValue:
    """The fastest point of a sweep for one backend and batch spec, against the default ("auto" for every swept
    parameter). ``param`` names the swept parameters ("num_kv_splits × head_dim"); ``best_value`` is the point as
    ``cells.sweep_point`` gives it: a value, or the tuple of values of several parameters."""

    backend: str
    batch_spec: str
    param: str
    best_value: Any
    best_time: float
    auto_time: float | None  # the "auto" (backend default) point, when it was run
    values_timed: int
    noise: float = 0.0  # the larger relative noise of the best and the auto point

    @property
    def within_noise(self) -> bool:
        """True when best and auto differ by less than twice their measured noise: no real winner."""
        gain = self.speedup_over_auto
        return gain is not None and gain - 1 < 2 * self.noise

    @property
    def speedup_over_auto(self) -> float | None:
        return self.auto_time / self.best_time if self.auto_time and self.best_time else None


def best_sweep_values(results: Iterable[CaseOutcome]) -> list[BestSweepValue]:
    """Per backend and batch spec of a sweep, the value with the lowest median time."""
    by_case: dict[tuple[str, str, tuple[str, ...]], list[CaseOutcome]] = defaultdict(list)
    for r in results:
        if r.key.sweep and r.timed:
            by_case[(r.key.backend, r.key.batch_spec, r.key.sweep_params)].append(r)
    rows = []
    for (backend, spec, params), group in by_case.items():
        best = min(group, key=lambda r: r.median)
        auto = next((r for r in group if is_default_point(sweep_point(r.key))), None)
        noise = max((x.times.rel_noise or 0.0) for x in (best, auto) if x is not None)
        rows.append(BestSweepValue(backend, spec, " × ".join(params), sweep_point(best.key), best.median,
                                   auto.median if auto else None, len(group), noise))
    size = {spec: i for i, spec in enumerate(spec_order(r for group in by_case.values() for r in group))}
    rows.sort(key=lambda b: (b.param, b.backend, size[b.batch_spec]))
    return rows
