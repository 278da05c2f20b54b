"""The session summary: rich tables over ``BenchmarkResult``s, and the decode/prefill crossover.

One table per group (study x family). Rows are batch specs ordered by size (total new
tokens, then total KV). Grouping comes from the results' structured fields, never from
test ids.

* Standard studies: per backend, the median time in µs (rounded to the digits the measured
  noise supports, see ``format_time_us``) with a verification mark, "vs best" (how much
  slower than the fastest backend of the row), TFLOP/s, GB/s, % of the roofline floor
  (GPU only), and memory when ``--profile-memory`` recorded it.
* Sweeps and decode_vs_prefill: one column per backend x sweep value (or pipeline), each
  cell the time and its distance from the row's best; decode_vs_prefill adds the
  ``crossover_table``.

Skipped cases show a footnote number whose reason is printed under the table; failed
cases are red, with their error under the table.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from io import StringIO
from typing import Any, Iterable, Sequence

from attnbench.crossover_search import CrossoverAnswer, Point, crossover_answer, measurement, vllm_default
from attnbench.results import FAILED, SKIPPED, BenchmarkResult

MARKS = {"passed": "✓", "oracle": "ref", "skipped": "·", "failed": "✗"}
_MAX_DECIMALS = 3
_MAX_ERROR_CHARS = 240
_MAX_TABLE_WIDTH = 1000


# ------------------------------------------------------------------ numbers

def format_time_us(seconds: float, rel_noise: float | None) -> str:
    """``seconds`` in µs, keeping only the digits the noise supports.

    The last digit kept is the one of the noise's first significant digit: noise 2 % of
    13.37 µs is 0.27 µs, so one decimal: "13.4". Without a noise estimate, 3 significant digits.
    """
    us = seconds * 1e6
    if us <= 0:
        return f"{us:.0f}"
    if rel_noise and rel_noise > 0:
        decimals = -math.floor(math.log10(us * rel_noise))
    else:
        decimals = 2 - math.floor(math.log10(us))
    decimals = min(max(decimals, 0), _MAX_DECIMALS)
    return f"{us:.{decimals}f}"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value == 0:
        return "0"
    decimals = min(max(digits - 1 - math.floor(math.log10(abs(value))), 0), 4)
    return f"{value:.{decimals}f}"


def _mib(nbytes: int | None) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:.1f}"


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
    decode_up_to: int | None  # largest q where decode is faster: the reorder_batch_threshold to pick
    prefill_from: int | None  # smallest q above ``decode_up_to`` where prefill is faster
    decode_speedup: float | None  # geometric mean of t_prefill / t_decode over q <= decode_up_to
    prefill_speedup: float | None  # geometric mean of t_decode / t_prefill over q > decode_up_to
    flips: int  # how often the faster pipeline changes along q; more than 1 = noisy or non-monotonic
    times: dict[int, tuple[float, float]] = field(default_factory=dict)  # q -> (decode s, prefill s)
    # noise-aware: the threshold before the first flip, an interval where the pipelines tie, the flip points and
    # vLLM's default; what the table and plot show. decode_up_to above is the largest q decode won at anywhere.
    answer: CrossoverAnswer | None = None


def crossover_table(results: Iterable[BenchmarkResult]) -> list[Crossover]:
    """Per backend and batch size, the largest q at which the decode pipeline is still faster.

    Uses timed results with ``pipeline`` "decode" or "prefill" (decode_vs_prefill mode). The
    batch size is the number of requests of a spec and q its longest query. If one batch size
    holds the same q at several KV lengths, each KV length gets its own row.
    """
    by_group: dict[tuple, dict[tuple[int, int], dict[str, BenchmarkResult]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        if r.pipeline in ("decode", "prefill") and r.timed:
            by_group[(r.study, r.family, r.backend, r.batch_size)][(r.q_len, r.kv_len)][r.pipeline] = r
    rows: list[Crossover] = []
    for (study, family, backend, batch_size), points in by_group.items():
        both = {qk: t for qk, t in points.items() if len(t) == 2}
        qs = [q for q, _ in both]
        if len(set(qs)) < len(qs):  # the same q at several KV lengths: one row per KV length
            kvs = sorted({kv for _, kv in both})
            subsets = [(kv, {q: t for (q, k), t in both.items() if k == kv}) for kv in kvs]
        else:
            kv_set = {kv for _, kv in both}
            subsets = [(kv_set.pop() if len(kv_set) == 1 else None, {q: t for (q, _), t in both.items()})]
        for kv, by_q in subsets:
            if by_q:
                rows.append(_crossover(study, family, backend, batch_size, kv, by_q))
    rows.sort(key=lambda c: (c.study or "", c.family or "", c.backend, c.batch_size, c.kv_len or 0))
    return rows


def _crossover(study: str | None, family: str | None, backend: str, batch_size: int, kv: int | None,
               by_q: dict[int, dict[str, BenchmarkResult]]) -> Crossover:
    qs = sorted(by_q)
    times = {q: (by_q[q]["decode"].median_time or 0.0, by_q[q]["prefill"].median_time or 0.0) for q in qs}  # timed
    decode_wins = [times[q][0] < times[q][1] for q in qs]
    winners_q = [q for q, wins in zip(qs, decode_wins) if wins]
    up_to = max(winners_q) if winners_q else None
    above = [q for q in qs if up_to is None or q > up_to]
    below = [q for q in qs if up_to is not None and q <= up_to]
    prefill_from = min((q for q in above if times[q][1] < times[q][0]), default=None)
    flips = sum(1 for a, b in zip(decode_wins, decode_wins[1:]) if a != b)
    answer = crossover_answer([Point(q, measurement(vars(by_q[q]["decode"])), measurement(vars(by_q[q]["prefill"])))
                               for q in qs], vllm_default(backend, _recorded_default(by_q)))
    return Crossover(study, family, backend, batch_size, kv, qs, up_to, prefill_from,
                     _geomean([times[q][1] / times[q][0] for q in below]),
                     _geomean([times[q][0] / times[q][1] for q in above]), flips, times, answer)


def crossover_records(results: Iterable[BenchmarkResult]) -> list[dict[str, Any]]:
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


def _recorded_default(by_q: dict[int, dict[str, BenchmarkResult]]) -> Any:
    """The default reorder_batch_threshold vLLM's builder reported for these cases (GPU runs record it)."""
    for pair in by_q.values():
        for r in pair.values():
            info = r.extra.get("backend_info")
            if isinstance(info, dict) and info.get("default_reorder_batch_threshold") is not None:
                return info["default_reorder_batch_threshold"]
    return None


# ------------------------------------------------------------------ sweeps

@dataclass
class BestSweepValue:
    """The fastest value of a swept knob for one backend and batch spec, against the backend's default."""

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


def best_sweep_values(results: Iterable[BenchmarkResult]) -> list[BestSweepValue]:
    """Per backend and batch spec of a sweep, the value with the lowest median time."""
    by_case: dict[tuple[str, str, str], list[BenchmarkResult]] = defaultdict(list)
    for r in results:
        if r.sweep_param and r.timed:
            by_case[(r.backend, r.batch_spec, r.sweep_param)].append(r)
    rows = []
    for (backend, spec, param), group in by_case.items():
        best = min(group, key=lambda r: r.median_time)  # type: ignore[arg-type, return-value]
        auto = next((r for r in group if str(r.sweep_value) == "auto"), None)
        noise = max((x.rel_noise or 0.0) for x in (best, auto) if x is not None)
        rows.append(BestSweepValue(backend, spec, param, best.sweep_value, best.median_time,  # type: ignore[arg-type]
                                   auto.median_time if auto else None, len(group), noise))
    rows.sort(key=lambda b: (b.param, b.backend, next((r.size_key for r in by_case[(b.backend, b.batch_spec, b.param)]))))
    return rows


def best_sweep_renderable(rows: Sequence[BestSweepValue]) -> Any:
    from rich.table import Table

    table = Table(title=f"Best {rows[0].param} per batch spec", title_justify="left")
    for name in ("backend", "batch spec", "best value", "µs", "vs auto", "values timed", "note"):
        table.add_column(name, justify="left" if name in ("backend", "batch spec", "note") else "right")
    for b in rows:
        table.add_row(b.backend, b.batch_spec, str(b.best_value), f"{b.best_time * 1e6:.4g}",
                      _speedup(b.speedup_over_auto), str(b.values_timed),
                      "within noise of auto" if b.within_noise and str(b.best_value) != "auto" else "")
    return table


def _geomean(values: Sequence[float]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ------------------------------------------------------------------ tables

@dataclass
class _Footnotes:
    """Numbered reasons shared by the cells of one table (identical reasons share a number)."""

    skips: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    skipped_cases: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failed_cases: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def mark(self, result: BenchmarkResult, label: str) -> str:
        reason = (result.error or result.status).splitlines()[0][:_MAX_ERROR_CHARS] if result.error else result.status
        if result.status == SKIPPED:
            number = self.skips.setdefault(reason, len(self.skips) + len(self.failures) + 1)
            self.skipped_cases[reason].append(label)
            return f"[dim]skip[{number}][/dim]"
        number = self.failures.setdefault(reason, len(self.skips) + len(self.failures) + 1)
        self.failed_cases[reason].append(label)
        return f"[bold red]FAILED[{number}][/bold red]"

    def renderable(self, caption: str) -> Any:
        """The caption (what the numbers mean), then the numbered skip reasons and failures."""
        from rich.text import Text

        text = Text(caption + "\n", style="dim")
        for reason, number in sorted(self.skips.items(), key=lambda kv: kv[1]):
            cases = self.skipped_cases[reason]
            text.append(f"[{number}] skipped ({len(cases)}): {reason}\n", style="dim")
        for reason, number in sorted(self.failures.items(), key=lambda kv: kv[1]):
            cases = self.failed_cases[reason]
            shown = ", ".join(cases[:4]) + (f" and {len(cases) - 4} more" if len(cases) > 4 else "")
            text.append(f"[{number}] FAILED ({shown}): {reason}\n", style="bold red")
        return text


def group_results(results: Iterable[BenchmarkResult]) -> dict[tuple[str, str], list[BenchmarkResult]]:
    """Results by (study, family), in first-seen order."""
    groups: dict[tuple[str, str], list[BenchmarkResult]] = {}
    for r in results:
        groups.setdefault((r.study or "-", r.family or "-"), []).append(r)
    return groups


def summary_renderables(results: Sequence[BenchmarkResult]) -> list[Any]:
    """Rich tables (and footnotes) for ``results``: one per study x family, plus crossovers."""
    out: list[Any] = []
    for (study, family), group in group_results(results).items():
        if any(r.pipeline for r in group) or any(r.sweep_param for r in group):
            table, notes = _variant_table(study, family, group)
        else:
            table, notes = _metrics_table(study, family, group)
        out += [table, notes]
        crossovers = crossover_table(group)
        if crossovers:
            out.append(crossover_renderable(crossovers))
        best = best_sweep_values(group)
        if best:
            out.append(best_sweep_renderable(best))
    return out


def render_summary(results: Sequence[BenchmarkResult], width: int = 160, color: bool = False) -> str:
    """The summary as text (ANSI-coloured when ``color``), for a terminal reporter or a file."""
    return render_renderables(summary_renderables(results), width, color)


def render_renderables(renderables: Sequence[Any], width: int = 160, color: bool = False) -> str:
    """Render to text. A table wider than ``width`` keeps its natural width (the terminal wraps the
    lines) rather than being squeezed into truncated cells: a number cut to "0.…" is worse than a long line."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    buffer = StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False, soft_wrap=False)
    for renderable in renderables:
        if isinstance(renderable, Table):
            natural = Measurement.get(console, console.options.update(width=_MAX_TABLE_WIDTH), renderable).maximum
            console.width = max(width, min(natural, _MAX_TABLE_WIDTH))
        else:
            console.width = width
        console.print(renderable)
    return buffer.getvalue()


def crossover_renderable(crossovers: Sequence[Crossover]) -> Any:
    from rich.table import Table

    table = Table(title="Decode vs prefill crossover (pick reorder_batch_threshold = 'decode faster up to q'; "
                        "a–b: within noise between)", title_justify="left")
    for name in ("backend", "batch size", "kv", "q tested", "decode faster up to q", "decode speed-up",
                 "prefill faster from q", "prefill speed-up", "vLLM default", "note"):
        table.add_column(name, justify="left" if name in ("backend", "note") else "right")
    for c in crossovers:
        a = c.answer or crossover_answer([])
        table.add_row(c.backend, str(c.batch_size), "varies" if c.kv_len is None else str(c.kv_len),
                      f"{c.q_lens[0]}..{c.q_lens[-1]} ({len(c.q_lens)})", a.label(),
                      _speedup(c.decode_speedup), "never" if a.prefill_from is None else str(a.prefill_from),
                      _speedup(c.prefill_speedup), "–" if a.vllm_default is None else str(a.vllm_default), a.note())
    return table


def _speedup(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _sorted_specs(group: Sequence[BenchmarkResult]) -> list[str]:
    sizes: dict[str, tuple] = {}
    for r in group:
        if r.batch_spec not in sizes:
            try:
                sizes[r.batch_spec] = r.size_key
            except ValueError:  # an unparsable spec from a foreign file sorts last, by name
                sizes[r.batch_spec] = (math.inf, math.inf, r.batch_spec)
    return sorted(sizes, key=lambda s: sizes[s])


def _caption(group: Sequence[BenchmarkResult]) -> str:
    first = group[0]
    shape = ", ".join(f"{k}={v}" for k, v in first.shape.items() if k not in ("kv_cache_dtype",))
    timers = {r.timer for r in group if r.timer}
    unit = "median µs per attention call (one layer)"
    if timers:
        unit += f"; timer: {', '.join(sorted(timers))}"
    marks = "✓ verified against REFERENCE, ref = the reference itself, – not verified"
    on_gpu = bool(first.device) and str(first.device).startswith("cuda")
    cache = (f"{first.cache_state} L2" if on_gpu else "L2 not controlled (host timer)") if first.cache_state else ""
    where = ", ".join(p for p in (f"device {first.device}" if first.device else "", cache) if p)
    return ". ".join(p for p in (f"{shape}; {where}" if shape and where else shape or where, unit, marks) if p) + "."


def _time_cell(r: BenchmarkResult, notes: _Footnotes, label: str) -> str:
    if r.status in (SKIPPED, FAILED):
        return notes.mark(r, label)
    if not r.timed:
        return "[dim]not timed[/dim]"
    return f"{format_time_us(r.median_time, r.rel_noise)} {_verified_mark(r)}"  # type: ignore[arg-type]


def _verified_mark(r: BenchmarkResult) -> str:
    status = (r.extra.get("verification") or {}).get("status")
    if status in MARKS:
        return MARKS[status]
    return "✓" if r.verified else "–"


def _vs_best(r: BenchmarkResult, best: float | None) -> str:
    if not r.timed or not best:
        return ""
    if r.median_time == best:
        return "[bold green]best[/bold green]"
    pct = (r.median_time / best - 1) * 100  # type: ignore[operator]
    return f"+{pct:.1f}%" if pct < 10 else f"+{pct:.0f}%"


def _metrics_table(study: str, family: str, group: Sequence[BenchmarkResult]) -> tuple[Any, Any]:
    from rich.table import Table

    backends = list(dict.fromkeys(r.backend for r in group))
    cells = {(r.batch_spec, r.backend): r for r in group}
    show_peak = any(r.pct_of_peak is not None for r in group)
    show_memory = any(r.memory_info for r in group)
    metrics: list[tuple[str, Any]] = [("vs best", None), ("TFLOP/s", lambda r: _num(r.tflops)),
                                      ("GB/s", lambda r: _num(r.gbps))]
    if show_peak:
        metrics.append(("% peak", lambda r: _num(r.pct_of_peak, 2)))
    if show_memory:
        metrics.append(("MiB", _memory))
    # a backend that timed nothing (skipped or failed everywhere) gets its status column only
    timed_backends = {r.backend for r in group if r.timed}
    table = Table(title=f"{study} · {family}", title_justify="left")
    table.add_column("batch spec", no_wrap=True)
    styles = ("cyan", "magenta")
    for i, backend in enumerate(backends):
        style = styles[i % 2]
        table.add_column(f"{backend}\nµs", justify="right", header_style=f"bold {style}", no_wrap=True)
        if backend in timed_backends:
            for name, _ in metrics:
                table.add_column(name, justify="right", header_style=style)
    notes = _Footnotes()
    for spec in _sorted_specs(group):
        row_results = [cells[(spec, b)] for b in backends if (spec, b) in cells]
        best = min((r.median_time for r in row_results if r.timed), default=None)
        row = [spec]
        for backend in backends:
            r = cells.get((spec, backend))
            row.append(_time_cell(r, notes, f"{backend} {spec}") if r is not None else "")
            if backend not in timed_backends:
                continue
            for _name, show in metrics:
                if r is None or not r.timed:
                    row.append("")
                else:
                    row.append(_vs_best(r, best) if show is None else show(r))
        table.add_row(*row)
    return table, notes.renderable(_caption(group))


def _variant_label(r: BenchmarkResult) -> str:
    """The column label within one backend: the pipeline, or the bare sweep value (the title names the knob)."""
    if r.pipeline is not None:
        return r.pipeline
    return str(r.sweep_value) if r.sweep_param is not None else ""


def _memory(r: BenchmarkResult) -> str:
    if r.peak_memory_bytes is not None:
        return _mib(r.peak_memory_bytes)
    if r.kv_memory_bytes is not None:
        return f"~{_mib(r.kv_memory_bytes)}"  # the estimate (no peak measured off GPU)
    return ""


def _variant_table(study: str, family: str, group: Sequence[BenchmarkResult]) -> tuple[Any, Any]:
    """Columns: backend x sweep value (or pipeline); a cell: time + mark, and its distance from the row's best."""
    from rich.table import Table

    all_columns = list(dict.fromkeys((r.backend, _variant_label(r)) for r in group))
    cells = {(r.batch_spec, r.backend, _variant_label(r)): r for r in group}
    # a column of nothing but skips says one thing many times: its reason goes to the footnotes only
    columns = [c for c in all_columns if any(r.status != SKIPPED for k, r in cells.items() if k[1:] == c)]
    show_memory = any(r.memory_info for r in group)
    mode = "decode vs prefill" if any(r.pipeline for r in group) else f"sweep of {group[0].sweep_param}"
    table = Table(title=f"{study} · {family} · {mode}", title_justify="left")
    table.add_column("batch spec", no_wrap=True)
    for backend, variant in columns:
        table.add_column(f"{backend}\n{variant}", justify="right")
    notes = _Footnotes()
    for (spec, backend, variant), r in cells.items():
        if (backend, variant) not in columns:
            notes.mark(r, f"{backend} {variant} {spec}")
    for spec in _sorted_specs(group):
        row_results = [cells[(spec, b, v)] for b, v in columns if (spec, b, v) in cells]
        best = min((r.median_time for r in row_results if r.timed), default=None)
        row = [spec]
        for backend, variant in columns:
            r = cells.get((spec, backend, variant))
            if r is None:
                row.append("")
                continue
            cell = _time_cell(r, notes, f"{backend} {variant} {spec}")
            if r.timed:
                cell += f"\n{_vs_best(r, best)}"
                if show_memory and _memory(r):
                    cell += f"\n{_memory(r)} MiB"
            row.append(cell)
        table.add_row(*row)
    return table, notes.renderable(_caption(group))
