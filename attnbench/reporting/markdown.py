"""Render a folder of committed pytest-benchmark baselines as markdown: the results page, or its README excerpt.

    python tools/results_markdown.py baselines/NVIDIA_H100_80GB_HBM3 --out docs/RESULTS_H100.md --plots docs/plots
    python tools/results_markdown.py baselines/NVIDIA_H100_80GB_HBM3 --short      # README tables, to stdout

BASELINE_DIR is searched recursively for pytest-benchmark JSON files (``<gpu>/<machine>/NNNN_<study>.json``).
Every file is read with ``attnbench.results.exports.load_results``; the cases of all files are merged with
``attnbench.results.exports.merge_results`` (one result per ``case_key``; a passing result is preferred, and
among passing ones the later file wins, so a rerun replaces the run it repeats).

pytest-benchmark JSON holds passed cases only, so skipped and failed cases are taken from the pytest
logs next to the JSON (``BASELINE_DIR/logs`` or ``BASELINE_DIR/../logs``, or ``--logs``): the
``SKIPPED [n] where: reason`` lines of ``-rs`` and the ``___ test_id ___`` sections of failures.

A section per study, headed by its YAML description where ``main``'s caller gives the studies' folder
(``analysis.study_titles``). A study the caller names gets a section with its own analysis
(``standard_section``: kernel paths, CUDA graph over kernel sum; ``mla_decode_section``: attention share;
``mla_mixed_section``: how the builder split each batch); any other study gets the section its results call
for: the crossover (decode_vs_prefill), a sweep table, or a backend table. Backends appear in the order the
results name them. The tables come from ``reporting.tables``; this module writes the prose around them and lays
them out (``markdown_table``). ``main`` is the command line of ``tools/results_markdown.py``, which gives it this
checkout's studies.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from attnbench.results.exports import LoadedResults, ResultsFileError, load_results, merge_results
from attnbench.reporting.analysis import Crossover, crossover_table, info, study_titles
from attnbench.reporting.cells import NO_VALUE, backend_order, median_us, significant, sweep_axis
from attnbench.reporting.model import FASTEST, Cell, Table, simple_table
from attnbench.reporting.tables import (METRICS, Metric, backend_table, crossover_model, crossover_pivot, split,
                                        sweep_table, wins_line)
from attnbench.results.outcome import PASSED, CaseOutcome


# ------------------------------------------------------------------ loading

class BaselineError(ValueError):
    """A baseline folder that cannot be rendered: names the folder and why."""


@dataclass
class LogNote:
    """A case the JSON cannot hold: skipped (``count`` cases share ``reason``) or failed (one test)."""

    log: str
    status: str  # "skipped" or "failed"
    reason: str
    count: int = 1
    test: str | None = None  # the failed test's id, e.g. test_mla[FLASHMLA-256q256s1k-decode]
    rerun_passed_in: str | None = None  # the JSON file whose passing result supersedes the failure


@dataclass
class Baseline:
    directory: Path
    files: list[tuple[Path, LoadedResults]]
    results: list[CaseOutcome]  # merged: one per case
    source: dict[int, str] = field(default_factory=dict)  # id(result) -> the JSON file's name
    logs_dir: Path | None = None
    log_notes: list[LogNote] = field(default_factory=list)
    display_root: Path | None = None  # the page shows paths relative to this folder (the checkout), where inside it

    @property
    def machine_infos(self) -> list[dict[str, Any]]:
        return [loaded.machine_info for _, loaded in self.files if loaded.machine_info]

    def study(self, name: str) -> list[CaseOutcome]:
        return [r for r in self.results if r.key.study == name]

    def studies(self) -> list[str]:
        return list(dict.fromkeys(r.key.study or "-" for r in self.results))


def load_baseline(directory: str | os.PathLike[str], logs: str | os.PathLike[str] | None = None) -> Baseline:
    root = Path(directory)
    if not root.is_dir():
        raise BaselineError(f"{root}: no such baseline directory "
                            "(expected a folder such as baselines/NVIDIA_H100_80GB_HBM3)")
    logs_dir = Path(logs) if logs is not None else next(
        (d for d in (root / "logs", root.parent / "logs") if d.is_dir()), None)
    # the logs folder may hold other JSON (compare verdicts): results are the JSON files outside it
    paths = sorted(p for p in root.rglob("*.json") if logs_dir is None or logs_dir.resolve() not in p.resolve().parents)
    if not paths:
        raise BaselineError(f"{root}: no pytest-benchmark JSON files under it "
                            "(expected <gpu>/<machine>/NNNN_<study>.json)")
    files: list[tuple[Path, LoadedResults]] = []
    everything: list[CaseOutcome] = []
    source: dict[int, str] = {}
    for path in paths:
        loaded = load_results(path)  # ResultsFileError names the file
        files.append((path, loaded))
        for result in loaded.results:
            source[id(result)] = path.name
            everything.append(result)
    # merge_results keeps the last result of a case: order failures first so a pass always wins
    merged = merge_results(sorted(everything, key=lambda r: r.status == PASSED))
    if not any(r.timed for r in merged):
        raise BaselineError(f"{root}: the JSON files hold no timed results")
    baseline = Baseline(root, files, merged, source, logs_dir)
    if logs_dir is not None and not all(loaded.lists_untimed for _, loaded in files):
        # older files hold passed cases only: their skipped and failed cases are in the pytest logs
        baseline.log_notes = read_log_notes(logs_dir, baseline)
    return baseline


_SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$")
_FAIL_LINE = re.compile(r"^FAILED (\S+?)(?: - (.*))?$")
_FAIL_HEADER = re.compile(r"^_{3,} (\S+) _{3,}$")


def read_log_notes(logs_dir: Path, baseline: Baseline | None = None) -> list[LogNote]:
    """Skipped and failed cases from pytest logs (``-rs`` summary lines and failure sections).

    With a ``baseline``, only the logs of its studies are read: a log is named after its study
    (``<study>[_<suffix>].log``, one per study run); other logs (a compare run,
    an ad-hoc check) are not part of the baseline."""
    notes: list[LogNote] = []
    studies = tuple(baseline.studies()) if baseline is not None else ()
    for log in sorted(logs_dir.glob("*.log")):
        if studies and not any(log.stem == s or log.stem.startswith(f"{s}_") for s in studies):
            continue
        failed: dict[str, str] = {}
        current: str | None = None
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if m := _SKIP_LINE.match(line):
                notes.append(LogNote(log.name, "skipped", m.group(2).strip(), int(m.group(1))))
            elif m := _FAIL_HEADER.match(line):
                current = m.group(1)
                failed.setdefault(current, "")
            elif current and line.startswith("E ") and not failed[current]:
                failed[current] = line[1:].strip()
            elif m := _FAIL_LINE.match(line):
                test = m.group(1).split("::")[-1]
                if not failed.get(test):
                    failed[test] = (m.group(2) or "").strip()
        for test, reason in failed.items():
            note = LogNote(log.name, "failed", reason or "see the log", test=test)
            if baseline is not None:
                note.rerun_passed_in = next((baseline.source.get(id(r)) for r in baseline.results
                                             if r.passed and (r.fullname or "").endswith(f"::{test}")), None)
            notes.append(note)
    return notes


# ------------------------------------------------------------------ tables

def markdown_table(table: Table) -> str:
    """A GitHub markdown table: FASTEST cells in bold, a cell's lines joined by spaces."""
    def text(cell: Cell) -> str:
        return " ".join(f"**{line.text}**" if line.emphasis == FASTEST else line.text for line in cell.lines())

    def escaped(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(escaped(c.header) for c in table.columns) + " |",
             "|" + "|".join("---:" if c.right else ":---" for c in table.columns) + "|"]
    lines += ["| " + " | ".join(escaped(text(cell)) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """A table of plain text; ``right[i]`` right-aligns column i (default: all but the first)."""
    return markdown_table(simple_table(headers, rows, right))


# ------------------------------------------------------------------ sections

def header(baseline: Baseline, command: str) -> str:
    infos = baseline.machine_infos
    ab = (infos[0].get("attnbench") or {}) if infos else {}
    gpu = ab.get("gpu") or {}
    name = gpu.get("name") or _device_names(baseline) or "unknown GPU"
    lines = [f"# Attention kernel results: {name}", "",
             f"Generated by `{command}` from {len(baseline.files)} pytest-benchmark files "
             f"({len(baseline.results)} cases); do not edit by hand.", ""]
    rows: list[tuple[str, str]] = []
    if gpu:
        memory = f"{gpu['memory_bytes'] / 2**30:.1f} GiB" if gpu.get("memory_bytes") else "?"
        l2 = f"{gpu['l2_bytes'] / 2**20:.0f} MiB L2" if gpu.get("l2_bytes") else "? L2"
        rows.append(("GPU", f"{name} (SM {gpu.get('capability', '?')}, {gpu.get('sm_count', '?')} SMs, "
                            f"{memory}, {l2})"))
        rows.append(("Driver", f"{gpu.get('driver', '?')}, CUDA runtime {ab.get('cuda_runtime', '?')}"))
        rows.append(("Clocks", f"SM {gpu.get('sm_clock_mhz', '?')} MHz (max {gpu.get('max_sm_clock_mhz', '?')}), "
                               f"memory {gpu.get('mem_clock_mhz', '?')} MHz (max {gpu.get('max_mem_clock_mhz', '?')}), "
                               f"power limit {gpu.get('power_limit_w', '?')} W"))
    versions = [(label, ab.get(key)) for label, key in (("torch", "torch"), ("Triton", "triton"), ("vLLM", "vllm"),
                                                         ("FlashInfer", "flashinfer"),
                                                         ("pytest-benchmark", "pytest_benchmark"))]
    python = infos[0].get("python_version") if infos else None
    rows.append(("Software", ", ".join(f"{label} {v}" for label, v in versions if v)
                 + (f", Python {python}" if python else "")))
    peaks = [i["attnbench"]["peaks"] for i in infos if (i.get("attnbench") or {}).get("peaks")]
    if peaks:
        flops = [p["peak_bf16_tflops"] for p in peaks if p.get("peak_bf16_tflops")]
        copy = [p["peak_copy_gbps"] for p in peaks if p.get("peak_copy_gbps")]
        rows.append(("Measured peaks", f"bf16 matmul {_span(flops)} TFLOP/s, copy {_span(copy)} GB/s "
                                       f"(per run, {len(peaks)} runs; {peaks[0].get('peak_method', '')})"))
    lines.append(md_table(("", ""), rows, right=(False, False)))
    return "\n".join(lines)


def _device_names(baseline: Baseline) -> str | None:
    names = {r.key.device for r in baseline.results if r.key.device}
    return ", ".join(sorted(names)) if names else None


def _span(values: Sequence[float]) -> str:
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return significant(lo) if significant(lo) == significant(hi) else f"{significant(lo)}–{significant(hi)}"


def methodology(baseline: Baseline) -> str:
    results = baseline.results
    records = [r.record for r in results if r.record is not None]  # the cases the runner recorded
    modes = Counter(rec.timing.mode for rec in records) or Counter({"?": len(results)})
    caches = Counter(r.key.cache_state or "?" for r in results)
    timers = Counter(r.timer or "?" for r in results)
    units = Counter(rec.timing.time_unit or "seconds per call" for rec in records)
    statuses = Counter(rec.verification.status for rec in records)
    verified = sum(1 for r in results if r.verified)
    rel_errors = [rec.verification.rel_error for rec in records if rec.verification.rel_error is not None]
    tolerances = sorted({rec.verification.rel_tol for rec in records if rec.verification.rel_tol})
    rounds = [r.times.rounds for r in results if r.times.rounds]
    stopped = Counter(rec.timing.stopped_by or "?" for rec in records)
    sets = [rec.timing.buffer_sets for rec in records if rec.timing.buffer_sets]
    ratios = [rec.timing.working_set_bytes / rec.timing.l2_bytes for rec in records
              if rec.timing.working_set_bytes and rec.timing.l2_bytes]
    regions = {(r.key.family or "-"): info(r, "backend_info", "timed_region") for r in results
               if info(r, "backend_info", "timed_region")}
    methods = Counter(info(r, "kernels", "method") and re.sub(r"\d+ calls", "N calls", info(r, "kernels", "method"))
                      for r in results if info(r, "kernels", "method"))
    lines = ["## How the numbers were measured", "",
             f"- **Unit**: {_counted(units)}; the tables show the **median in µs** to 3 significant digits "
             "(whole µs from 1000 up). Lower is better.",
             f"- **Timing**: mode {_counted(modes)}; pytest-benchmark timer {_counted(timers)}. "
             f"{min(rounds)}–{max(rounds)} rounds per case (stopped by: {_counted(stopped)})."
             if rounds else f"- **Timing**: mode {_counted(modes)}.",
             f"- **Cache state**: {_counted(caches)} L2"
             + (f": each call of a round reads the next of {min(sets)}–{max(sets)} buffer sets, a working set of "
                f"{min(ratios):.1f}–{max(ratios):.0f}× the L2, so a call's inputs have left L2 before they are "
                "read again." if sets and ratios else "."),
             f"- **Verification**: {verified}/{len(results)} cases verified against the REFERENCE implementation "
             f"(status {_counted(statuses)}"
             + (f"; largest relative error {max(rel_errors):.2g}, tolerance {', '.join(f'{t:g}' for t in tolerances)}"
                if rel_errors else "") + ").",
             ]
    for family, region in regions.items():
        lines.append(f"- **Timed region ({family})**: {region}.")
    if methods:
        lines.append(f"- **Kernel breakdown**: {_counted(methods)}. *graph/kernel-sum* is the CUDA-graph median "
                     "over the sum of the kernels' device times (≈1: the graph adds no gaps); *attention share* is "
                     "the fraction of that kernel time spent in kernels classified as attention "
                     "(`attnbench.measure.timing.KERNEL_ROLES`).")
    lines.append("- **Rates** at the median: TFLOP/s or GB/s of the bound resource (`bound` from the roofline model), "
                 "with % of peak: the sequential floor (the sum of max(FLOPs / peak, bytes / bandwidth) over the "
                 "kernels that run one after another) over the median; per-phase bounds for mixed batches.")
    return "\n".join(lines)


def _counted(counter: Counter[str]) -> str:
    if len(counter) == 1:
        return f"`{next(iter(counter))}`"
    return ", ".join(f"`{k}` ({n})" for k, n in counter.most_common())


def sources(baseline: Baseline) -> str:
    rows = []
    for path, loaded in baseline.files:
        studies = ", ".join(dict.fromkeys(r.key.study or "-" for r in loaded.results))
        backends = ", ".join(backend_order(loaded.results))
        rows.append((f"`{path.relative_to(baseline.directory)}`", studies, backends, str(len(loaded.results))))
    return "## Sources\n\n" + md_table(("file", "study", "backends", "passed cases"), rows,
                                       right=(False, False, False, True))


def _section(study: str, results: Sequence[CaseOutcome], table: str, notes: Sequence[str]) -> str:
    shape = results[0].key.dims if results else {}
    dims = ", ".join(f"{k}={v}" for k, v in shape.items() if k not in ("num_layers", "kv_cache_dtype"))
    parts = [f"Study `{study}`; {dims}.", "", table]
    for note in notes:  # each its own paragraph
        if note:
            parts += ["", note]
    return "\n".join(parts)


def _has(results: Sequence[CaseOutcome], backend: str, section: str, key: str) -> bool:
    return any(info(r, section, key) is not None for r in results if r.key.backend == backend)


def standard_section(study: str, results: Sequence[CaseOutcome]) -> str:
    backends = backend_order(results)
    extra: list[tuple[str, Metric]] = []
    constant: list[str] = []
    for b in backends:  # a kernel path that never changes is said once, under the table
        paths = {info(r, "backend_info", "kernel_path") for r in results if r.key.backend == b}
        paths.discard(None)
        if len(paths) == 1:
            constant.append(f"{b}: {next(iter(paths))}")
        elif paths:
            extra.append((b, METRICS["path"]))
    extra += [(b, METRICS["graph/kernel-sum"]) for b in backends
              if _has(results, b, "kernels", "timed_over_kernel_sum")]
    table, winners = backend_table(results, extra)
    notes = [wins_line(winners, len(winners))]
    if constant:
        notes.append("Kernel path throughout: " + "; ".join(constant) + ".")
    return _section(study, results, markdown_table(table), notes)


def _shares(results: Sequence[CaseOutcome], with_split: bool) -> list[tuple[str, Metric]]:
    metric = METRICS["split · attention share" if with_split else "attention share"]
    return [(b, metric) for b in backend_order(results)]


def _share_notes(results: Sequence[CaseOutcome]) -> list[str]:
    """Name what a 0 % attention share means: no kernel matched the attention role."""
    notes = []
    for backend in backend_order(results):
        mine = [r for r in results if r.key.backend == backend and info(r, "kernels", "attention_share") is not None]
        zero = [r for r in mine if info(r, "kernels", "attention_share") == 0]
        if not (mine and zero):
            continue
        unmatched: dict[str, float] = defaultdict(float)
        for r in zero:
            for k in info(r, "kernels", "top_kernels") or []:
                name = k.get("name") or ""
                if k.get("role") == "other" and not _LIBRARY_KERNEL.search(name):
                    unmatched[name] += k.get("seconds") or 0.0
        largest = sorted(unmatched, key=lambda n: -unmatched[n])[:3]
        names = ", ".join(f"`{_clip(n, 60)}`" for n in largest) or "unknown"
        notes.append(f"{backend}'s attention share reads 0 % in {len(zero)}/{len(mine)} cases because none of its "
                     f"kernels matched the attention role of `attnbench.measure.timing.KERNEL_ROLES` (its largest "
                     f"unclassified kernels: {names}): the share is unmeasured, not zero.")
    return notes


_LIBRARY_KERNEL = re.compile(r"at::native|^Memset|^Memcpy")


def _split_notes(results: Sequence[CaseOutcome]) -> list[str]:
    """Cases where the builder sent requests with q <= reorder_batch_threshold down the prefill path."""
    notes = []
    for r in results:
        threshold = info(r, "backend_info", "reorder_batch_threshold")
        decodes = info(r, "backend_info", "num_decodes")
        if not isinstance(threshold, int) or decodes is None:
            continue
        try:
            eligible = sum(1 for q in _q_lens(r) if q <= threshold)
        except ValueError:
            continue
        if decodes < eligible:
            notes.append(f"{r.key.backend} {r.key.batch_spec}: {eligible} requests have q ≤ its threshold {threshold}, "
                         f"but only {decodes} took the decode path ({split(r)}); the other "
                         f"{eligible - decodes} ran through the prefill pipeline ({median_us(r)} µs).")
    return notes


def _q_lens(result: CaseOutcome) -> list[int]:
    from grammar import parse_batch_spec

    return [request.q_len for request in parse_batch_spec(result.key.batch_spec)]


def mla_decode_section(study: str, results: Sequence[CaseOutcome]) -> str:
    table, winners = backend_table(results, _shares(results, with_split=False))
    prefills = [r for r in results if info(r, "backend_info", "num_prefills")]
    path = ("Every request of every case ran through the decode (MQA) path (num_prefills = 0)." if not prefills else
            f"{len(prefills)} cases sent requests through the prefill path: "
            + ", ".join(f"{r.key.backend} {r.key.batch_spec} ({split(r)})" for r in prefills) + ".")
    return _section(study, results, markdown_table(table),
                    [wins_line(winners, len(winners)), path, *_share_notes(results)])


def mla_mixed_section(study: str, results: Sequence[CaseOutcome]) -> str:
    table, winners = backend_table(results, _shares(results, with_split=True))
    thresholds = {b: sorted({str(info(r, "backend_info", "reorder_batch_threshold")) for r in results
                             if r.key.backend == b}) for b in backend_order(results)}
    notes = [wins_line(winners, len(winners)),
             "*split*: requests vLLM's metadata builder sent down the decode (d) and the prefill (p) path; the "
             "default reorder_batch_threshold is " + ", ".join(f"{b} {'/'.join(t)}" for b, t in thresholds.items())
             + " (a request with q ≤ threshold is a decode).", *_split_notes(results), *_share_notes(results)]
    return _section(study, results, markdown_table(table), notes)


def sweep_section(study: str, results: Sequence[CaseOutcome]) -> str:
    swept = [r for r in results if r.key.sweep]
    param = sweep_axis(swept) or "?"
    table, winners = sweep_table(swept)
    *body, path_row = table.rows
    slow = []
    for i, column in enumerate(table.columns[1:-1], start=1):
        timed = [(row[i].result, _row_best(row)) for row in body if row[i].result is not None and row[i].result.timed]
        ratios = [r.median / best for r, best in timed if best]
        if path_row[i].text == "prefill" and ratios:
            slow.append(f"{column.key[0]} {column.key[1]} {min(ratios):.0f}–{max(ratios):.0f}×")
    absent = sum(cell.text == f"{NO_VALUE}¹" for row in body for cell in row)
    notes = [wins_line(winners, len(winners)),
             f"Columns: backend × `{param}`" + (" (a column's values in that order)" if " × " in param else "")
             + "; *auto* is the backend's default (resolved value in brackets). The *path* "
             "row: where the builder sent the requests (all decode, all prefill, or mixed)."]
    if slow:
        notes.append("Columns on the prefill path are slower than the row's fastest by " + ", ".join(slow) + ".")
    if absent:
        notes.append(f"¹ not in the JSON ({absent} cells): the case was skipped or failed; see "
                     "[Skipped and failed cases](#skipped-and-failed-cases).")
    return _section(study, swept, markdown_table(table), notes)


def _row_best(row: Sequence[Cell]) -> float | None:
    return min((c.result.median for c in row if c.result is not None and c.result.timed),
               default=None)


def crossovers(results: Sequence[CaseOutcome]) -> list[Crossover]:
    return crossover_table(results)


def crossover_section(study: str, results: Sequence[CaseOutcome]) -> str:
    rows = crossovers(results)
    if not rows:
        return ""
    kvs = sorted({c.kv_len for c in rows if c.kv_len is not None})
    qs = sorted({q for c in rows for q in c.q_lens})
    parts = [f"Study `{study}` (decode_vs_prefill mode): every batch of N requests q{{q}}s"
             f"{'/'.join(str(k) for k in kvs) or '?'} is timed twice, with reorder_batch_threshold ≥ q (the decode, "
             "MQA pipeline) and < q (the prefill, MHA pipeline); merged from every file of the study, a passing rerun "
             f"replacing a failed case. q tested: {', '.join(str(q) for q in qs)}.", "",
             "*Decode faster up to q* is the reorder_batch_threshold to pick for that batch size (the true crossover "
             "lies between it and *prefill faster from q*); the speed-ups are geometric means over the q on each side.",
             "", markdown_table(crossover_model(rows)), "",
             "Compact (decode faster up to q · decode speed-up / prefill speed-up):", "",
             markdown_table(crossover_pivot(rows, backend_order(results)))]
    noisy = [c for c in rows if c.flips > 1]
    if noisy:
        parts += ["", "Noisy or non-monotonic: " + ", ".join(f"{c.backend} batch {c.batch_size}" for c in noisy) + "."]
    return "\n".join(parts)


def generic_section(study: str, results: Sequence[CaseOutcome]) -> str:
    table, winners = backend_table(results)
    return _section(study, results, markdown_table(table), [wins_line(winners, len(winners))])


def skipped_section(baseline: Baseline) -> str:
    in_json = [r for r in baseline.results if not r.passed]
    lines = ["## Skipped and failed cases", ""]
    if in_json:
        rows = [(r.key.study or "-", r.key.backend, r.key.batch_spec + (f" {r.key.variant}" if r.key.variant else ""),
                 r.status, r.reason.splitlines()[0][:160] if r.reason else "") for r in in_json]
        lines += [md_table(("study", "backend", "case", "status", "reason"), rows, right=(False,) * 5), ""]
    if not baseline.log_notes:
        if not in_json:
            lines.append("The JSON files hold passed cases only (pytest-benchmark saves nothing else) and no pytest "
                         "logs were found, so skipped and failed cases are unknown.")
        return "\n".join(lines)
    lines.append("pytest-benchmark JSON holds passed cases only; these come from the pytest logs "
                 f"(`{_display_path(str(baseline.logs_dir), baseline.display_root)}`).")
    lines.append("")
    log_rows = []
    for n in baseline.log_notes:
        what = n.test if n.test else f"{n.count} case{'s' if n.count != 1 else ''}"
        outcome = n.status
        if n.rerun_passed_in:
            outcome += f" (rerun passed: `{n.rerun_passed_in}`)"
        log_rows.append((f"`{n.log}`", what, outcome, _clip(n.reason, 180)))
    lines.append(md_table(("log", "cases", "status", "reason"), log_rows, right=(False, False, False, False)))
    skipped_backends = sorted({m.group(1) for n in baseline.log_notes if n.status == "skipped"
                               for m in [re.match(r"(\w+) requires (SM\d+\+)", n.reason)] if m})
    if skipped_backends:
        lines += ["", "Not runnable on this GPU: " + ", ".join(skipped_backends)
                  + " (" + "; ".join(sorted({n.reason for n in baseline.log_notes if n.status == "skipped"
                                             and re.match(r"\w+ requires SM", n.reason)})) + ")."]
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------ plots

# kind of plot: the file name's suffix, what the figure shows (for the page's caption)
_PLOT_KINDS = (("backends", "backend_bars", "median µs per backend and batch spec"),
               ("crossover", "crossover_plot", "time against q for both pipelines, one panel per batch size"),
               ("sweep", "sweep_heatmap", "speed-up of each swept value over the backend's default"))


def write_plots(baseline: Baseline, out_dir: Path, titles: Mapping[str, str] | None = None) -> list[tuple[str, Path]]:
    """Every figure that applies to each study (``<study>_<kind>.png``), via ``reporting.plots``; returns
    (caption, path) of those drawn. ``titles``: study name -> its title (the name where there is none)."""
    from attnbench.reporting import plots

    gpu = _gpu_name(baseline).replace("NVIDIA ", "")
    written = []
    for study in baseline.studies():
        title = (titles or {}).get(study, study)
        for kind, plot, shows in _PLOT_KINDS:
            # the figure's title: the description up to its first colon (the caption carries the rest), the GPU
            path = getattr(plots, plot)(baseline.study(study), out_dir / f"{study}_{kind}.png",
                                        title=f"{title.split(':')[0]}, {gpu}")
            if path is not None:
                written.append((f"{title} ({shows})", path))
    return written


def _gpu_name(baseline: Baseline) -> str:
    for i in baseline.machine_infos:
        name = ((i.get("attnbench") or {}).get("gpu") or {}).get("name")
        if name:
            return name
    return _device_names(baseline) or "?"


def plots_section(plots: Sequence[tuple[str, Path]], out: Path | None) -> str:
    if not plots:
        return ""
    lines = ["## Plots", ""]
    for caption, path in plots:
        target = Path(os.path.relpath(path, out.parent)) if out is not None else path
        lines += [f"![{caption}]({target.as_posix()})", ""]
    return "\n".join(lines).rstrip()


# ------------------------------------------------------------------ documents

Section = Callable[[str, Sequence[CaseOutcome]], str]  # (study, its results) -> the section's body


def render(baseline: Baseline, command: str, plots: Sequence[tuple[str, Path]] = (), out: Path | None = None,
           titles: Mapping[str, str] | None = None, sections_by_study: Mapping[str, Section] | None = None) -> str:
    """The page. ``titles``: study name -> its heading (the name where there is none); ``sections_by_study``: a
    study whose section is its own analysis (``standard_section``, ...); any other gets the one its results call
    for: the crossover, a sweep table or a backend table."""
    sections = [header(baseline, command), methodology(baseline)]
    special, titles = sections_by_study or {}, titles or {}
    for study in baseline.studies():
        results = baseline.study(study)
        if study in special:
            body = special[study](study, results)
        elif any(r.key.pipeline for r in results):
            body = crossover_section(study, results)
        elif any(r.key.sweep for r in results):
            body = sweep_section(study, results)
        else:
            body = generic_section(study, results)
        if body:
            sections.append(f"## {titles.get(study, study)}\n\n{body}")
    sections += [skipped_section(baseline), plots_section(plots, out), sources(baseline)]
    return "\n\n".join(s for s in sections if s) + "\n"


def render_short(baseline: Baseline) -> str:
    """The README excerpt: a compact standard-attention table and the crossover pivot."""
    infos = baseline.machine_infos
    vllm = ((infos[0].get("attnbench") or {}).get("vllm")) if infos else None
    parts = []
    standard = baseline.study("standard_attention")
    if standard:
        table, _ = backend_table(standard, with_rate=False)
        parts += [f"Standard attention on {_gpu_name(baseline)}" + (f", vLLM {vllm}" if vllm else "")
                  + f": median µs per layer call ({how_measured(standard)}; fastest in bold).", "",
                  markdown_table(table)]
    pipelines = [r for r in baseline.results if r.key.pipeline]
    rows = crossovers(pipelines)
    if rows:
        qs = sorted({q for c in rows for q in c.q_lens})
        kvs = sorted({c.kv_len for c in rows if c.kv_len is not None})
        parts += ["", "MLA decode vs prefill crossover (q tested: " + ", ".join(str(q) for q in qs)
                  + (f"; kv {'/'.join(str(k) for k in kvs)}" if kvs else "") + "): the largest q at which the "
                  "decode pipeline is still faster, i.e. the reorder_batch_threshold to pick · decode speed-up "
                  "below / prefill speed-up above it.", "",
                  markdown_table(crossover_pivot(rows, backend_order(pipelines)))]
    return "\n".join(parts).lstrip("\n") + "\n"


def how_measured(results: Sequence[CaseOutcome]) -> str:
    """'CUDA-graph replay, cold L2, all verified against the reference', from the results themselves."""
    modes = sorted({r.record.timing.mode if r.record is not None else "?" for r in results})
    caches = sorted({r.key.cache_state or "?" for r in results})
    verified = sum(1 for r in results if r.verified)
    mode_text = "CUDA-graph replay" if modes == ["cuda-graph"] else "timing " + "/".join(modes)
    check = ("all verified against the reference" if verified == len(results)
             else f"{verified}/{len(results)} verified against the reference")
    return f"{mode_text}, {'/'.join(caches)} L2, {check}"


# ------------------------------------------------------------------ command line

def main(argv: Sequence[str] | None = None, *, configs: Path | None = None, root: Path | None = None,
         sections_by_study: Mapping[str, Section] | None = None) -> int:
    """``tools/results_markdown.py BASELINE_DIR [--out FILE] [--short] [--plots DIR] [--logs DIR]``; exit 2 on
    an unreadable baseline. The caller (the tool, in a checkout) says where the studies' YAML is (``configs``: the
    headings are their descriptions), which folder the page's paths are shown relative to (``root``), and which
    studies get a section of their own (``sections_by_study``)."""
    parser = argparse.ArgumentParser(prog="results_markdown.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline_dir", metavar="BASELINE_DIR",
                        help="folder of pytest-benchmark JSON files, searched recursively")
    parser.add_argument("--out", metavar="FILE", help="write the markdown here (default: stdout)")
    parser.add_argument("--short", action="store_true",
                        help="only a compact standard-attention table and the crossover table (for the README)")
    parser.add_argument("--plots", metavar="DIR", help="also draw the PNGs into DIR and link them from the page")
    parser.add_argument("--logs", metavar="DIR", help="pytest logs (default: BASELINE_DIR/logs or ../logs)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        baseline = load_baseline(args.baseline_dir, args.logs)
    except (BaselineError, ResultsFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    baseline.display_root = root
    out = Path(args.out) if args.out else None
    if args.short:
        text = render_short(baseline)
    else:
        titles = study_titles(configs) if configs is not None else {}
        drawn = write_plots(baseline, Path(args.plots), titles) if args.plots else []
        command = " ".join(["python tools/results_markdown.py", _display_path(args.baseline_dir, root)]
                           + (["--out", _display_path(args.out, root)] if args.out else [])
                           + (["--plots", _display_path(args.plots, root)] if args.plots else []))
        text = render(baseline, command, drawn, out, titles, sections_by_study)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(out)
    return 0


def _display_path(path: str, root: Path | None) -> str:
    """A path as the command line of the page should show it: relative to ``root`` when inside it."""
    if root is None:
        return path
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path
