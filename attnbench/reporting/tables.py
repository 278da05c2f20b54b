"""Which rows and columns each table shows: results in, ``model.Table`` out, for every renderer.

* Console summary, one table per study x family (``summary_tables``): ``metrics_table`` for plain
  studies (per backend the median µs with its verification mark, "vs best", then the ``summary``
  metrics), ``variant_table`` for sweeps and decode_vs_prefill (a column per backend x sweep value
  or pipeline), then ``crossover_model`` and ``best_sweep_model``. Skipped and failed cases get a
  footnote number; the notes under the table name the reasons.
* The results page: ``backend_table``, ``sweep_table``, ``crossover_model`` and ``crossover_pivot``.
* Plots: ``time_table`` (bars) and ``speedup_tables`` (the sweep heatmap).

A per-result metric column is one ``Metric`` in ``METRICS``: the console summary shows each
``summary`` metric per backend when any result of its table has the data; a page section names
the metrics it adds.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from attnbench.measure.crossover_search import crossover_answer
from attnbench.reporting.analysis import (BestSweepValue, Crossover, best_sweep_values, crossover_table,
                                          group_results, has_variants, info)
from attnbench.reporting.cells import (NO_VALUE, backend_order, behind_best, format_time_us, is_default_point,
                                       median_us, mib, percent, point_text, ratio, significant, spec_order, speedup,
                                       sweep_axis, sweep_order, sweep_point, us)
from attnbench.reporting.model import BAD, FASTEST, MUTED, Cell, Column, Table
from attnbench.results.outcome import FAILED, SKIPPED, CaseOutcome
from attnbench.results.record import UNSTABLE_SPREAD_PCT, region_label, topk_label
from attnbench.spec.study import AUTO

MARKS = {"passed": "✓", "oracle": "ref", "skipped": "·", "failed": "✗"}
_MAX_ERROR_CHARS = 240


# ------------------------------------------------------------------ metric columns

@dataclass(frozen=True)
class Metric:
    """One number per result, as a column. ``cell`` also gets None: the backend has no result in that row."""

    header: str
    cell: Callable[[CaseOutcome | None], str]
    shown: Callable[[Sequence[CaseOutcome]], bool] = lambda group: True  # whether a table shows it at all
    summary: bool = False  # a column of the console summary, per backend (for timed results)
    right: bool = True


def _number(name: str, digits: int = 3) -> Callable[[CaseOutcome | None], str]:
    """A rate of the work model (``record.Work``), at the median."""
    return lambda r: significant(getattr(r.work, name) if r is not None else None, digits)


def memory(r: CaseOutcome | None) -> str:
    if r is not None and r.memory.peak_allocated_bytes is not None:
        return mib(r.memory.peak_allocated_bytes)
    if r is not None and r.memory.kv_and_buffers_bytes is not None:
        return f"~{mib(r.memory.kv_and_buffers_bytes)}"  # the estimate (no peak measured off GPU)
    return ""


def split(r: CaseOutcome | None) -> str:
    """How vLLM's builder split the batch: decode requests / prefill requests."""
    decodes, prefills = info(r, "backend_info", "num_decodes"), info(r, "backend_info", "num_prefills")
    if decodes is None and prefills is None:
        return NO_VALUE
    return f"{decodes or 0} d + {prefills or 0} p"


_PATH_SHORTHANDS = ((re.compile(r"^triton unified_attention "), ""), (re.compile(r"^FlashInfer "), ""),
                    (re.compile(r"Batch\w+Wrapper backend="), ""))


def short_kernel_path(path: str | None, limit: int = 40) -> str:
    if not path:
        return NO_VALUE
    for pattern, repl in _PATH_SHORTHANDS:
        path = pattern.sub(repl, path)
    return path if len(path) <= limit else path[:limit - 1] + "…"


def bound_label(r: CaseOutcome | None) -> str:
    """The bound the sequential floor (% peak's basis) comes from: per phase for a mixed batch."""
    if r is None:
        return ""
    return r.work.bound_label or r.work.bound or ""


METRICS: dict[str, Metric] = {m.header: m for m in (
    Metric("TFLOP/s", _number("tflops"), summary=True),
    Metric("GB/s", _number("gbps"), summary=True),
    Metric("% peak", _number("pct_of_peak", 2), lambda g: any(r.work.pct_of_peak is not None for r in g),
           summary=True),
    Metric("bound", bound_label, lambda g: any(bound_label(r) for r in g), summary=True, right=False),
    Metric("MiB", memory, lambda g: any(memory(r) for r in g), summary=True),
    Metric("attention share", lambda r: percent(info(r, "kernels", "attention_share"))),
    Metric("split · attention share", lambda r: f"{split(r)} · {percent(info(r, 'kernels', 'attention_share'))}"),
    Metric("path", lambda r: short_kernel_path(info(r, "backend_info", "kernel_path")), right=False),
    Metric("graph/kernel-sum", lambda r: ratio(info(r, "kernels", "timed_over_kernel_sum"))),
)}


def rate(result: CaseOutcome) -> str:
    """The rate of the bound resource at the median (GB/s if memory-bound, else TFLOP/s), with % of peak."""
    w = result.work
    if w.bound == "memory" and w.gbps is not None:
        text = f"{significant(w.gbps)} GB/s"
    elif w.tflops is not None:
        text = f"{significant(w.tflops)} TFLOP/s"
    elif w.gbps is not None:
        text = f"{significant(w.gbps)} GB/s"
    else:
        return NO_VALUE
    if w.pct_of_peak is not None:
        text += f" ({percent(w.pct_of_peak / 100)})"
    label = bound_label(result)
    if ":" in label:  # a mixed batch: the rate is the total's, the label says what bounds each phase
        text += f" {label}"
    return text


# ------------------------------------------------------------------ console summary

@dataclass
class Footnotes:
    """Numbered reasons shared by the cells of one table (identical reasons share a number)."""

    skips: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    skipped_cases: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failed_cases: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def mark(self, result: CaseOutcome, label: str) -> Cell:
        reason = result.reason.splitlines()[0][:_MAX_ERROR_CHARS] if result.reason else result.status
        if result.status == SKIPPED:
            number = self.skips.setdefault(reason, len(self.skips) + len(self.failures) + 1)
            self.skipped_cases[reason].append(label)
            return Cell(f"skip[{number}]", emphasis=MUTED, result=result)
        number = self.failures.setdefault(reason, len(self.skips) + len(self.failures) + 1)
        self.failed_cases[reason].append(label)
        return Cell(f"FAILED[{number}]", emphasis=BAD, result=result)

    def notes(self, caption: str) -> list[Cell]:
        """The caption (what the numbers mean), then the numbered skip reasons and failures."""
        out = [Cell(caption, emphasis=MUTED)]
        for reason, number in sorted(self.skips.items(), key=lambda kv: kv[1]):
            out.append(Cell(f"[{number}] skipped ({len(self.skipped_cases[reason])}): {reason}", emphasis=MUTED))
        for reason, number in sorted(self.failures.items(), key=lambda kv: kv[1]):
            cases = self.failed_cases[reason]
            shown = ", ".join(cases[:4]) + (f" and {len(cases) - 4} more" if len(cases) > 4 else "")
            out.append(Cell(f"[{number}] FAILED ({shown}): {reason}", emphasis=BAD))
        return out


def summary_tables(results: Sequence[CaseOutcome]) -> list[Table]:
    """The session summary: per study x family its table, then its crossovers and best sweep values."""
    out: list[Table] = []
    for (study, family), group in group_results(results).items():
        out.append(variant_table(study, family, group) if has_variants(group) else metrics_table(study, family, group))
        crossovers = crossover_table(group)
        if crossovers:
            out.append(crossover_model(crossovers))
        best = best_sweep_values(group)
        if best:
            out.append(best_sweep_model(best))
    return out


def metrics_table(study: str, family: str, group: Sequence[CaseOutcome]) -> Table:
    """Per backend: the median µs with its mark, "vs best" in the row, then the summary metrics."""
    backends = backend_order(group)
    cells = {(r.key.batch_spec, r.key.backend): r for r in group}
    metrics = [m for m in METRICS.values() if m.summary and m.shown(group)]
    # a backend that timed nothing (skipped or failed everywhere) gets its status column only
    timed_backends = {r.key.backend for r in group if r.timed}
    columns = [Column("batch spec", right=False, wrap=False)]
    for i, backend in enumerate(backends):
        columns.append(Column(f"{backend}\nµs", key=backend, group=i, lead=True, wrap=False))
        if backend in timed_backends:
            columns += [Column(name, key=backend, group=i) for name in ("vs best", *(m.header for m in metrics))]
    table = Table(f"{study} · {family}", columns)
    notes = Footnotes()
    for spec in spec_order(group):
        best = _best_time(cells.get((spec, b)) for b in backends)
        row = [Cell(spec)]
        for backend in backends:
            r = cells.get((spec, backend))
            row.append(_time_cell(r, notes, f"{backend} {spec}") if r is not None else Cell())
            if backend not in timed_backends:
                continue
            if r is None or not r.timed:
                row += [Cell()] * (1 + len(metrics))
            else:
                row += [_vs_best(r, best), *(Cell(m.cell(r)) for m in metrics)]
        table.rows.append(row)
    table.notes = notes.notes(_caption(group))
    return table


def variant_table(study: str, family: str, group: Sequence[CaseOutcome]) -> Table:
    """Columns: backend x sweep value (or pipeline); a cell: time + mark, its distance from the row's best."""
    cells = {(r.key.batch_spec, r.key.backend, _variant(r)): r for r in group}
    present = {key[1:] for key in cells}
    values = sweep_order(_variant(r) for r in group)
    every = [(b, v) for b in backend_order(group) for v in values if (b, v) in present]
    # a column of nothing but skips says one thing many times: its reason goes to the footnotes only
    columns = [c for c in every if any(r.status != SKIPPED for k, r in cells.items() if k[1:] == c)]
    show_memory = any(memory(r) for r in group)
    pipelines = " vs ".join(sorted({r.key.pipeline for r in group if r.key.pipeline}))
    swept = f"sweep of {sweep_axis(group)}" if any(r.key.sweep for r in group) else ""
    mode = " · ".join(m for m in (pipelines, swept) if m) or "timed regions"
    table = Table(f"{study} · {family} · {mode}", [Column("batch spec", right=False, wrap=False)]
                  + [Column(f"{b}\n{point_text(v)}", key=(b, v)) for b, v in columns])
    notes = Footnotes()
    for (spec, backend, variant), r in cells.items():
        if (backend, variant) not in columns:
            notes.mark(r, f"{backend} {point_text(variant)} {spec}")
    for spec in spec_order(group):
        best = _best_time(cells.get((spec, b, v)) for b, v in columns)
        row = [Cell(spec)]
        for backend, variant in columns:
            r = cells.get((spec, backend, variant))
            if r is None:
                row.append(Cell())
                continue
            cell = _time_cell(r, notes, f"{backend} {point_text(variant)} {spec}")
            if r.timed:
                below = [_vs_best(r, best)] + ([Cell(f"{memory(r)} MiB")] if show_memory and memory(r) else [])
                cell = replace(cell, below=tuple(below))
            row.append(cell)
        table.rows.append(row)
    table.notes = notes.notes(_caption(group))
    return table


def crossover_model(rows: Sequence[Crossover]) -> Table:
    """One row per backend x batch size (x kv): the threshold before the first flip, "a–b" where the pipelines
    tie within noise, and its note (``crossover_search.crossover_answer``)."""
    headers = ("backend", "batch size", "kv", "q tested", "decode faster up to q", "decode speed-up",
               "prefill faster from q", "prefill speed-up", "vLLM default", "note")
    table = Table("Decode vs prefill crossover (pick reorder_batch_threshold = 'decode faster up to q'; "
                  "a–b: within noise between)", [Column(h, right=h not in ("backend", "note")) for h in headers])
    for c in rows:
        a = c.answer or crossover_answer([])
        table.add(c.backend, str(c.batch_size), "varies" if c.kv_len is None else str(c.kv_len),
                  f"{c.q_lens[0]}..{c.q_lens[-1]} ({len(c.q_lens)})", a.label(), speedup(c.decode_speedup),
                  "never" if a.prefill_from is None else str(a.prefill_from), speedup(c.prefill_speedup),
                  NO_VALUE if a.vllm_default is None else str(a.vllm_default), a.note())
    return table


def best_sweep_model(rows: Sequence[BestSweepValue]) -> Table:
    headers = ("backend", "batch spec", "best value", "µs", "vs auto", "values timed", "note")
    table = Table(f"Best {rows[0].param} per batch spec",
                  [Column(h, right=h not in ("backend", "batch spec", "note")) for h in headers])
    for b in rows:
        table.add(b.backend, b.batch_spec, point_text(b.best_value), us(b.best_time, 4), speedup(b.speedup_over_auto),
                  str(b.values_timed), "within noise of auto" if b.within_noise and not is_default_point(b.best_value)
                  else "")
    return table


def _variant(r: CaseOutcome) -> Any:
    """What tells a result from its siblings in one row: the pipeline, or the sweep point (the bare value of one
    swept parameter, the values of several; the title names them), then the timed region when it is not the layer
    step."""
    base: Any = sweep_point(r.key) if r.key.sweep else ""
    if r.key.pipeline is not None:  # with a sweep beside it (mha_vs_mqa over num_q_heads), both: "16 · mha"
        base = (*r.key.sweep_values, r.key.pipeline) if r.key.sweep else r.key.pipeline
    if r.key.topk_pattern is not None:  # sparse MLA: the mock indexer's pattern tells siblings apart
        base = f"{point_text(base)} {topk_label(r.key.topk_pattern)}".strip()
    if r.key.timed_region == "layer":
        return base
    return f"{point_text(base)} {region_label(r.key.timed_region)}".strip()


def _best_time(results: Any) -> float | None:
    return min((r.median for r in results if r is not None and r.timed), default=None)


def _time_cell(r: CaseOutcome, notes: Footnotes, label: str) -> Cell:
    if r.status in (SKIPPED, FAILED):
        return notes.mark(r, label)
    if not r.timed:
        return Cell("not timed", emphasis=MUTED, result=r)
    seconds = r.median
    throttled = r.record is not None and r.record.clocks is not None and r.record.clocks.throttled
    marks = (THROTTLED if throttled else "") + (UNSTABLE if r.unstable else "")
    return Cell(f"{format_time_us(seconds, r.times.rel_noise)} {_verified_mark(r)}{marks}", seconds, result=r)


THROTTLED = "‡"
UNSTABLE = "≈"


def _verified_mark(r: CaseOutcome) -> str:
    status = r.record.verification.status if r.record is not None else None
    return MARKS.get(status or "", "–")


def _vs_best(r: CaseOutcome, best: float | None) -> Cell:
    if not r.timed or not best:
        return Cell()
    if r.median == best:
        return Cell("best", emphasis=FASTEST)
    return Cell(behind_best(r.median, best))


def _caption(group: Sequence[CaseOutcome]) -> str:
    first = group[0]
    shape = ", ".join(f"{k}={v}" for k, v in first.key.dims.items() if k not in ("kv_cache_dtype",))
    timers = {r.timer for r in group if r.timer}
    unit = "median µs per attention call (one layer)"
    if timers:
        unit += f"; timer: {', '.join(sorted(timers))}"
    marks = "✓ verified against REFERENCE, ref = the reference itself, – not verified"
    if any(r.record is not None and r.record.clocks is not None and r.record.clocks.throttled for r in group):
        marks += f", {THROTTLED} timed rounds ran with the SM clock throttled (record: clocks)"
    if any(r.unstable for r in group):
        marks += (f", {UNSTABLE} unstable: its rounds spread over more than {UNSTABLE_SPREAD_PCT:g} % of the median "
                  f"(p10 to p90; record: timing.spread_pct)")
    regions = sorted({r.key.timed_region for r in group})
    if regions != ["layer"]:
        marks += "; timed region: " + ", ".join("the layer step" if g == "layer" else f"{g} call only" for g in regions)
    if any(r.key.kv_fill == "zeros" for r in group):
        marks += ("; K/V ZERO-FILLED (--kv-fill zeros): not representative of a model's cache, and the "
                  "verification cannot catch wrong attention weights")
    on_gpu = bool(first.key.device) and str(first.key.device).startswith("cuda")
    cache = ((f"{first.key.cache_state} L2" if on_gpu else "L2 not controlled (host timer)")
             if first.key.cache_state else "")
    where = ", ".join(p for p in (f"device {first.key.device}" if first.key.device else "", cache) if p)
    return ". ".join(p for p in (f"{shape}; {where}" if shape and where else shape or where, unit, marks) if p) + "."


# ------------------------------------------------------------------ results page and plots

def time_table(results: Sequence[CaseOutcome]) -> Table:
    """Rows: batch specs by size; one µs column per backend, over the results with no sweep value or pipeline.
    A cell holds its result and median; the row's fastest is FASTEST."""
    plain = [r for r in results if r.key.variant is None]
    backends = backend_order(plain)
    cells = {(r.key.batch_spec, r.key.backend): r for r in plain}
    table = Table("", [Column("batch spec", right=False)] + [Column(f"{b} µs", key=b) for b in backends])
    for spec in spec_order(plain):
        row = [cells.get((spec, b)) for b in backends]
        timed = [r for r in row if r is not None and r.timed]
        best = min(timed, key=lambda r: r.median, default=None)
        table.add(spec, *(Cell(median_us(r), r.median if r.timed else None, FASTEST if r is best else None, r)
                          if r is not None else Cell(NO_VALUE) for r in row))
    return table


def backend_table(results: Sequence[CaseOutcome], extra: Sequence[tuple[str, Metric]] = (),
                  with_rate: bool = True) -> tuple[Table, list[str]]:
    """``time_table``, then the fastest backend, its rate, and the ``extra`` (backend, metric) columns;
    also the fastest backend of each row."""
    table = time_table(results)
    backends = [c.key for c in table.columns[1:]]
    table.columns += [Column("fastest", right=False)] + ([Column("rate of fastest (% peak)")] if with_rate else []) \
        + [Column(f"{b} {m.header}", m.right) for b, m in extra]
    winners = []
    for row in table.rows:
        by_backend = {b: cell.result for b, cell in zip(backends, row[1:])}
        best = next((cell.result for cell in row[1:] if cell.emphasis == FASTEST), None)
        row.append(Cell(best.key.backend if best else NO_VALUE))
        if with_rate:
            row.append(Cell(rate(best) if best else NO_VALUE))
        row += [Cell(m.cell(by_backend.get(b))) for b, m in extra]
        if best:
            winners.append(best.key.backend)
    return table, winners


def sweep_table(results: Sequence[CaseOutcome]) -> tuple[Table, list[str]]:
    """Rows: batch specs; a µs column per backend x sweep value ("auto" shows the value it resolved to), the
    fastest column, and a last row naming the path the builder sent each column's requests down. A case
    missing from the results shows NO_VALUE marked ¹. Also returns the fastest column of each row."""
    swept = [r for r in results if r.key.sweep]
    values = sweep_order(sweep_point(r.key) for r in swept)
    cells = {(r.key.batch_spec, r.key.backend, point_text(sweep_point(r.key))): r for r in swept}
    columns = [(b, point_text(v)) for b in backend_order(swept) for v in values]
    headers = []
    for b, v in columns:
        resolved = {info(r, "backend_info", "reorder_batch_threshold") for r in swept
                    if r.key.backend == b and point_text(sweep_point(r.key)) == v}
        headers.append(f"{b} auto (={next(iter(resolved))})" if v == AUTO and len(resolved) == 1 else f"{b} {v}")
    table = Table("", [Column("batch spec", right=False)] + [Column(h, key=c) for h, c in zip(headers, columns)]
                  + [Column("fastest", right=False)])
    winners = []
    for spec in spec_order(swept):
        row = [cells.get((spec, b, v)) for b, v in columns]
        timed = [(r.median, i) for i, r in enumerate(row) if r is not None and r.timed]
        best = min(timed)[1] if timed else None
        label = f"{columns[best][0]} {columns[best][1]}" if best is not None else NO_VALUE
        table.add(spec, *(Cell(median_us(r), r.median if r.timed else None, FASTEST if i == best else None, r)
                          if r is not None else Cell(f"{NO_VALUE}¹") for i, r in enumerate(row)), label)
        if best is not None:
            winners.append(label)
    table.add("path", *(path_kind([r for (_, b, v), r in cells.items() if (b, v) == c]) for c in columns), "")
    return table, winners


def path_kind(results: Sequence[CaseOutcome]) -> str:
    """Where the builder sent these cases' requests: all "decode", all "prefill", or "mixed"."""
    if not results:
        return NO_VALUE
    decodes = sum(info(r, "backend_info", "num_decodes") or 0 for r in results)
    prefills = sum(info(r, "backend_info", "num_prefills") or 0 for r in results)
    return "decode" if not prefills else "prefill" if not decodes else "mixed"


def crossover_pivot(rows: Sequence[Crossover], backends: Sequence[str] = ()) -> Table:
    """Rows = batch size, a column per backend (in ``backends``' order, then the rest): 'decode faster up to q'
    (the grid reading) and the speed-ups either side."""
    order = [b for b in backends if any(c.backend == b for c in rows)]
    order += [b for b in dict.fromkeys(c.backend for c in rows) if b not in order]
    by_key = {(c.backend, c.batch_size, c.kv_len): c for c in rows}
    keys = sorted({(c.batch_size, c.kv_len) for c in rows}, key=lambda k: (k[0], k[1] or 0))
    multi_kv = len({kv for _, kv in keys}) > 1
    table = Table("", [Column("batch size", right=False)] + [Column(b, key=b) for b in order])
    for size, kv in keys:
        row = [f"{size}" + (f" (kv {kv})" if multi_kv else "")]
        for b in order:
            c = by_key.get((b, size, kv))
            up_to = "" if c is None else f"q ≤ {c.answer.label()}" if c.answer else (
                "never" if c.decode_up_to is None else f"q ≤ {c.decode_up_to}")
            row.append(NO_VALUE if c is None else
                       f"{up_to} · {speedup(c.decode_speedup)} / {speedup(c.prefill_speedup)}")
        table.add(*row)
    return table


def speedup_tables(results: Sequence[CaseOutcome]) -> tuple[str, Any, list[Table]]:
    """For the sweep heatmap: the swept parameter(s), the reference point ("auto", else the first) and per
    backend that timed something a table: batch specs x sweep values, each cell the speed-up over the reference
    (figure text, ASCII x), FASTEST on the fastest value of each row."""
    swept = [r for r in results if r.key.sweep and r.key.pipeline is None]
    param = sweep_axis(swept)
    values = sweep_order(sweep_point(r.key) for r in swept)
    specs = spec_order(swept)
    cells = {(r.key.backend, r.key.batch_spec, point_text(sweep_point(r.key))): r for r in swept}
    reference = next((v for v in values if is_default_point(v)), values[0] if values else None)
    tables = []
    for backend in backend_order(swept):
        if not any(r.timed and r.key.backend == backend for r in swept):
            continue
        table = Table(backend, [Column("batch spec", right=False)] + [Column(point_text(v), key=v) for v in values])
        for spec in specs:
            ref = cells.get((backend, spec, point_text(reference)))
            row = [cells.get((backend, spec, point_text(v))) for v in values]
            timed = [(r.median, x) for x, r in enumerate(row) if r is not None and r.timed]
            best = min(timed)[1] if timed else None
            out = [Cell(spec)]
            for x, r in enumerate(row):
                s = ref.median / r.median if r is not None and r.timed and ref is not None and ref.timed else None
                text = speedup(s, "x") if s is not None else "skip" if r is not None and r.status == SKIPPED else \
                    NO_VALUE if r is None or not r.timed else "n/a"
                out.append(Cell(text, s, FASTEST if x == best else None, r))
            table.rows.append(out)
        tables.append(table)
    return param, reference, tables


def wins_line(winners: Sequence[str], rows: int) -> str:
    if not winners:
        return ""
    return "Fastest: " + ", ".join(f"{label} {n}/{rows}" for label, n in Counter(winners).most_common()) + "."
