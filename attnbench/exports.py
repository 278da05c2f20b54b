"""Files of results: CSV and JSON exports, the append-only journal, and loading any of them back.

* ``ResultsFormatter.save_csv`` / ``save_json`` keep the seed's interface and its column /
  key names (``backend, batch_spec, num_layers, mean_time, std_time, throughput, memory_mb``
  lead the CSV; JSON records carry ``config`` and ``throughput_tokens_per_sec``); more
  columns follow. The JSON is ``{"schema", "created", "machine_info", "results": [...]}``.
* ``Journal`` appends one JSON line per finished case and fsyncs it, so a crash mid-study
  loses nothing already measured; the final CSV/JSON are written from it.
* ``load_results`` reads any of: a journal (JSON lines), this module's JSON, the seed's JSON
  (a list of records), or a pytest-benchmark JSON (``--benchmark-json`` / ``--benchmark-save``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable

from attnbench.results import SHAPE_FIELDS, BenchmarkResult, case_key

SCHEMA = "attnbench.results/1"

# The seed's columns first, in its order, so its readers keep working; ours follow.
SEED_CSV_COLUMNS = ("backend", "batch_spec", "num_layers", "mean_time", "std_time", "throughput", "memory_mb")
CSV_COLUMNS = SEED_CSV_COLUMNS + tuple(n for n in SHAPE_FIELDS if n != "num_layers") + (
    "family", "study", "sweep_param", "sweep_value", "pipeline", "backend_params", "device", "cache_state",
    "status", "error", "verified", "median_time", "min_time", "max_time", "iqr_time", "rounds", "rel_noise",
    "timer", "flops", "bytes", "tflops", "gbps", "pct_of_peak", "bound", "peak_memory_bytes", "kv_memory_bytes",
    "fullname",
)


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where the journal of a session writing ``output`` lives: ``<output>.partial.jsonl``."""
    return Path(f"{output}.partial.jsonl")


def csv_row(result: BenchmarkResult) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(result, name, None) for name in CSV_COLUMNS if hasattr(result, name)}
    row["throughput"] = result.throughput
    row["memory_mb"] = result.peak_memory_bytes / 2**20 if result.peak_memory_bytes is not None else None
    row["rel_noise"] = result.rel_noise
    row["backend_params"] = json.dumps(result.backend_params, sort_keys=True) if result.backend_params else None
    # empty cells, not "None" or 0: an unknown number must not read as a measured zero
    return {k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS}


class ResultsFormatter:
    """The seed's formatter: a table on the console, and CSV / JSON files, over ``BenchmarkResult``s."""

    def __init__(self, console: Any = None, machine_info: dict[str, Any] | None = None):
        self.console = console
        self.machine_info = machine_info

    def print_table(self, results: list[BenchmarkResult], backends: list[str] | None = None) -> None:
        from rich.console import Console

        from attnbench.report import summary_renderables

        console = self.console or Console()
        chosen = [r for r in results if backends is None or r.backend in backends]
        for renderable in summary_renderables(chosen):
            console.print(renderable)

    def save_csv(self, results: list[BenchmarkResult], path: str | os.PathLike[str]) -> Path:
        def write(f: IO[str]) -> None:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            for result in results:
                writer.writerow(csv_row(result))

        return _atomic_write(Path(path), write, newline="")

    def save_json(self, results: list[BenchmarkResult], path: str | os.PathLike[str]) -> Path:
        doc = {"schema": SCHEMA, "created": _now(), "machine_info": self.machine_info or {},
               "results": [r.to_record() for r in results]}
        return _atomic_write(Path(path), lambda f: json.dump(doc, f, indent=1, default=str))


class Journal:
    """An append-only JSON-lines file: one record per finished case, flushed and fsynced per line."""

    def __init__(self, path: str | os.PathLike[str], seed: Iterable[BenchmarkResult] = ()):
        """Start a fresh journal at ``path`` holding ``seed`` (rows carried from a resumed run).

        The file is replaced atomically, so when ``path`` is itself the journal being resumed its
        rows are never absent from disk."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(_line(r) for r in seed)
        _atomic_write(self.path, lambda f: f.write(lines))
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")

    def append(self, result: BenchmarkResult) -> None:
        if self._file is None:
            raise ValueError(f"journal {self.path} is closed")
        self._file.write(_line(result))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class LoadedResults:
    results: list[BenchmarkResult]
    machine_info: dict[str, Any] | None = None  # None when the file has none (a journal)
    kind: str = "attnbench-json"  # "journal", "attnbench-json", "seed-json" or "pytest-benchmark"
    notes: list[str] = field(default_factory=list)


class ResultsFileError(ValueError):
    """A results file that cannot be read: names the file and why."""


def load_results(path: str | os.PathLike[str]) -> LoadedResults:
    p = Path(path)
    if not p.is_file():
        raise ResultsFileError(f"{p}: no such results file")
    text = p.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        return LoadedResults([], None, "journal")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("{"):  # several JSON objects, one a line: a journal
            loaded = _load_journal(p, text)
            if loaded.results:
                return loaded
        raise ResultsFileError(f"{p}: not JSON: {exc}") from None
    if isinstance(doc, list):
        return LoadedResults([BenchmarkResult.from_record(r) for r in doc], None, "seed-json")
    if isinstance(doc, dict) and "benchmarks" in doc:
        results = [BenchmarkResult.from_benchmark_json(e) for e in doc["benchmarks"]]
        return LoadedResults(results, doc.get("machine_info"), "pytest-benchmark")
    if isinstance(doc, dict) and "results" in doc:
        return LoadedResults([BenchmarkResult.from_record(r) for r in doc["results"]], doc.get("machine_info"),
                             "attnbench-json")
    if isinstance(doc, dict) and "backend" in doc:  # a journal of one line
        return _load_journal(p, text)
    raise ResultsFileError(f"{p}: neither attnbench results, a journal, nor pytest-benchmark JSON")


def merge_results(results: Iterable[BenchmarkResult]) -> list[BenchmarkResult]:
    """One result per case: a later result of the same case replaces an earlier one, in place."""
    by_key: dict[tuple, BenchmarkResult] = {}
    for result in results:
        by_key[case_key(result)] = result
    return list(by_key.values())


def _load_journal(p: Path, text: str) -> LoadedResults:
    results, notes = [], []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            results.append(BenchmarkResult.from_record(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            # a crash can cut the last line short; anything earlier is corruption worth a warning too
            note = f"{p}:{number}: unreadable line skipped ({exc})"
            notes.append(note)
            warnings.warn(note, stacklevel=2)
    return LoadedResults(results, None, "journal", notes)


def _line(result: BenchmarkResult) -> str:
    return json.dumps(result.to_record(), default=str) + "\n"


def _atomic_write(path: Path, write: Any, newline: str | None = None) -> Path:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline=newline) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
