"""Files of results: CSV and JSON exports, the append-only journal, and loading any of them back.

* The CSV and JSON exports (written by ``reporting.formatter.ResultsFormatter``, upstream attention_benchmarks'
  interface) keep upstream's column / key names (``backend, batch_spec, num_layers, mean_time, std_time,
  throughput, memory_mb`` lead the CSV; JSON records carry ``config`` and ``throughput_tokens_per_sec``); more
  columns follow. A swept parameter has a column of its own, ``sweep.<param>`` (``sweep.num_kv_splits``,
  ``sweep.kv_cache_dtype``), one per parameter any row sweeps, after the fixed columns; ``sweep_param`` /
  ``sweep_value`` keep naming the one swept parameter of a single sweep, as they always did, and are empty on the
  rows of a case of several (JSON rows carry those in ``sweeps``: ``record.CaseKey``). The JSON is
  ``{"schema", "created", "machine_info", "results": [...]}``, each result a ``CaseOutcome.to_json`` row.
* ``Journal`` appends one such row per finished case, a JSON line, and fsyncs it, so a crash mid-study
  loses nothing already measured; the final CSV/JSON are written from it.
* ``load_results`` reads any of: a journal (JSON lines), this module's JSON, upstream's JSON
  (a list of records), or a pytest-benchmark JSON (``--benchmark-json`` / ``--benchmark-save``), each
  into ``CaseOutcome``s: one reader per format below.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import stat
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

from attnbench.results.outcome import FAILED, PASSED, CaseOutcome, Times, case_key, summary_times
from attnbench.results.record import SCHEMA as RECORD_SCHEMA
from attnbench.results.record import (SHAPE_FIELDS, CaseKey, CaseRecord, RecordError, is_finite, keys_of, kind_of,
                                      require, show)

SCHEMA = "attnbench.results/1"
# the "attnbench" block of pytest-benchmark JSON: the cases that were not timed, grouped by (status, reason)
NOT_TIMED_SCHEMA = 3

# Upstream's columns first, in its order, so its readers keep working; ours follow.
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


SWEEP_COLUMN = "sweep.{}"  # the column of one swept parameter


def sweep_columns(results: Iterable[CaseOutcome]) -> tuple[str, ...]:
    """The ``sweep.<param>`` columns of a CSV of ``results``: one per swept parameter, in the order first seen."""
    return tuple(dict.fromkeys(SWEEP_COLUMN.format(p) for r in results for p in r.key.sweep_params))


def csv_row(outcome: CaseOutcome, columns: Sequence[str] = CSV_COLUMNS) -> dict[str, Any]:
    """The JSON row's plain columns (CSV holds no lists or objects), each swept value in its ``sweep.<param>``."""
    row = outcome.to_json()
    row["memory_mb"] = row["memory_allocated_mb"]
    row["rel_noise"] = outcome.times.rel_noise
    row["backend_params"] = json.dumps(row["backend_params"], sort_keys=True) if row["backend_params"] else None
    row.update({SWEEP_COLUMN.format(s.param): s.value for s in outcome.key.sweep})
    # empty cells, not "None" or 0: an unknown number must not read as a measured zero
    return {k: ("" if row.get(k) is None else row[k]) for k in columns}


class Journal:
    """An append-only JSON-lines file: one record per finished case, flushed and fsynced per line."""

    def __init__(self, path: str | os.PathLike[str], carried: Iterable[CaseOutcome] = ()):
        """Start a fresh journal at ``path`` holding ``carried`` (rows carried from a resumed run).

        The file is replaced atomically, so when ``path`` is itself the journal being resumed its
        rows are never absent from disk."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(_line(r) for r in carried)
        atomic_write(self.path, lambda f: f.write(lines))
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")

    def append(self, result: CaseOutcome) -> None:
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
    results: list[CaseOutcome]
    machine_info: dict[str, Any] | None = None  # None when the file has none (a journal)
    kind: str = "attnbench-json"  # "journal", "attnbench-json", "seed-json" or "pytest-benchmark"
    notes: list[str] = field(default_factory=list)
    lists_untimed: bool = False  # the file names its skipped and failed cases (attnbench.not_timed, schema 3)


class ResultsFileError(ValueError):
    """A results file that cannot be read: names the file and why."""


class _NotRecords(ResultsFileError):
    """A journal whose lines are JSON but none of them a result record."""


def load_results(path: str | os.PathLike[str], *, allow_empty: bool = False) -> LoadedResults:
    """Read a results file of any kind ``load_results`` knows (see the module docstring).

    A file that holds no results (empty, ``[]``, zero benchmarks) is an error unless ``allow_empty``: a
    comparison or a plot of nothing would otherwise pass quietly.

    Anything unreadable — a missing file, a binary or non-UTF-8 file, JSON of the wrong shape, a record with
    a missing or mistyped field — is a ``ResultsFileError`` naming the file and what is wrong, never a bare
    TypeError / UnicodeDecodeError. (Unreadable lines of a journal are skipped with a warning, since a crash
    can cut its last line short; a journal with no readable line at all is an error.)"""
    if not str(path).strip():
        raise ResultsFileError("an empty path: no results file named")
    p = Path(path)
    if not p.is_file():
        raise ResultsFileError(f"{p}: no such results file" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFileError(f"{p}: not a text results file (byte {exc.start} is not UTF-8: "
                               f"{raw[exc.start:exc.start + 1]!r})") from None
    try:
        loaded = _load_text(p, text)
    except RecursionError:  # 200,000 nested '[': Python's JSON parser recurses per level
        raise ResultsFileError(f"{p}: not a results file: JSON nested too deeply") from None
    if not loaded.results and not allow_empty:
        raise ResultsFileError(f"{p}: holds no results ({'an empty file' if not text.strip() else 'zero records'})")
    return loaded


def _load_text(p: Path, text: str) -> LoadedResults:
    stripped = text.lstrip()
    if not stripped:
        return LoadedResults([], None, "journal")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("{"):  # several JSON objects, one a line: a journal
            try:
                return _load_journal(p, text)
            except _NotRecords:  # JSON lines, but not records: say which and why
                raise
            except ResultsFileError:
                pass
        raise ResultsFileError(f"{p}: not JSON: {exc}") from None
    except ValueError as exc:  # an integer of thousands of digits: Python refuses to convert it
        raise ResultsFileError(f"{p}: unreadable JSON: {str(exc).split(';')[0]}") from None
    if isinstance(doc, list):
        return LoadedResults(_records(p, doc, "record", from_seed_record), None, "seed-json")
    if isinstance(doc, dict) and "benchmarks" in doc:
        results = _records(p, doc["benchmarks"], "benchmarks", from_benchmark_entry)
        block = doc.get("attnbench")
        results += _not_timed(p, block)
        listed = isinstance(block, dict)
        return LoadedResults(results, _machine_info(p, doc), "pytest-benchmark", lists_untimed=listed)
    if isinstance(doc, dict) and "results" in doc:
        results = _records(p, doc["results"], "results", CaseOutcome.from_json)
        return LoadedResults(results, _machine_info(p, doc), "attnbench-json")
    if isinstance(doc, dict) and "backend" in doc:  # a journal of one line
        return _load_journal(p, text)
    found = f"an object with keys {', '.join(sorted(doc)[:6]) or 'none'}" if isinstance(doc, dict) else \
        f"a JSON {type(doc).__name__}"
    raise ResultsFileError(f"{p}: neither attnbench results, a journal, nor pytest-benchmark JSON (found {found})")


def _not_timed(p: Path, block: Any) -> list[CaseOutcome]:
    """The skipped and failed cases this suite adds to pytest-benchmark's JSON (``attnbench.not_timed``, with their
    test ids and case keys)."""
    if block is None:
        return []
    where = f"{p}: attnbench.not_timed"
    if not isinstance(block, dict) or not isinstance(block.get("not_timed", []), list):
        raise ResultsFileError(f"{p}: 'attnbench' is {kind_of(block)}, expected an object with a not_timed list")
    if block.get("schema") != NOT_TIMED_SCHEMA:
        raise ResultsFileError(f"{p}: attnbench.schema is {show(block.get('schema'))}, expected {NOT_TIMED_SCHEMA}")
    out = []
    for i, group in enumerate(block["not_timed"]):
        try:
            require(isinstance(group, dict), f"[{i}] is {kind_of(group)}, expected an object")
            status, reason, names, keys = (group.get(k) for k in ("status", "reason", "cases", "keys"))
            require(isinstance(status, str) and isinstance(reason, str), f"[{i}]: status and reason must be strings")
            require(isinstance(names, list) and isinstance(keys, list) and len(names) == len(keys),
                    f"[{i}]: cases and keys must be lists of one length")
            for name, key in zip(names, keys):
                require(isinstance(name, str), f"[{i}].cases: {show(name)} is not a string")
                out.append(CaseOutcome(CaseKey.from_json(key, f"[{i}].keys"), status, reason or None, fullname=name))
        except RecordError as exc:
            raise ResultsFileError(f"{where}{exc}" if str(exc).startswith("[") else f"{where}: {exc}") from None
    return out


def _records(p: Path, items: Any, what: str, build: Any) -> list[CaseOutcome]:
    """``build`` over a list of records, naming the file and the record on the first malformed one."""
    if not isinstance(items, list):
        raise ResultsFileError(f"{p}: {what!r} is a JSON {type(items).__name__}, expected a list of records")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(build(item))
        except RecordError as exc:
            where = f"record {i + 1} of {len(items)}" if what == "record" else f"{what}[{i}]"
            raise ResultsFileError(f"{p}: {where}: {exc}") from None
    return out


# ------------------------------------------------------------------ foreign formats

def from_benchmark_entry(entry: Any) -> CaseOutcome:
    """One entry of pytest-benchmark's ``benchmarks`` list (only passed tests are saved there): the record in its
    ``extra_info``, the times from ``stats.data``, else from the summary when
    ``--benchmark-save`` kept no samples. An entry with no record (a plain pytest-benchmark test) is known by its
    node id. Raises ``RecordError`` naming the field when the entry is malformed."""
    require(isinstance(entry, dict), f"benchmark entry is {kind_of(entry)}, expected an object")
    stats = _container(entry, "stats") or {}
    raw = stats.get("data") or []
    require(isinstance(raw, list), f"stats.data is {kind_of(raw)}, expected a list of numbers")
    for i, sample in enumerate(raw):
        require(is_finite(sample), f"stats.data[{i}] is {show(sample)}, expected a number")
    # the summary is checked even when the samples are used: a file with NaN rounds is a broken file
    for key in ("mean", "median", "stddev", "min", "max", "iqr", "rounds"):
        value = stats.get(key)
        require(value is None or is_finite(value), f"stats.{key} is {show(value)}, expected a number")
    rounds = stats.get("rounds")
    require(rounds is None or (rounds >= 0 and float(rounds).is_integer()),
            f"stats.rounds is {show(rounds)}, expected a whole number of rounds")
    times = Times.of(raw) if raw else summary_times(stats, ("mean", "median", "stddev", "min", "max", "iqr", "rounds"),
                                           "stats.")
    info = dict(_container(entry, "extra_info") or {})
    schema = info.get("schema")
    require(schema is None or schema == RECORD_SCHEMA,
            f"extra_info.schema is {show(schema)}, expected {RECORD_SCHEMA} (this suite's record) or none")
    require(schema is not None or "verification" not in info,  # not a plain pytest-benchmark test's extra_info
            f"extra_info is an attnbench record without a schema (the flat records of 2026-11), expected schema "
            f"{RECORD_SCHEMA}")
    timer = (_container(entry, "options") or {}).get("timer")
    for key, value in (("fullname", entry.get("fullname")), ("name", entry.get("name")), ("options.timer", timer)):
        require(value is None or isinstance(value, str), f"{key} is {show(value)}, expected a string")
    if info.get("schema") == RECORD_SCHEMA:
        record: CaseRecord | None = CaseRecord.from_json(info, samples=raw or None)
        key = record.key
    else:
        record, key = None, CaseKey(backend=entry.get("name") or "?", batch_spec="")
    return CaseOutcome(key, PASSED, None, record, times, entry.get("fullname"), timer)


def from_seed_record(row: Any) -> CaseOutcome:
    """One record of upstream's JSON (``config`` plus times, ``error`` when it failed); a list of this module's
    rows reads as well. Raises ``RecordError`` naming the field."""
    require(isinstance(row, dict), f"record is {kind_of(row)}, expected an object")
    if "backend" in row or "config" not in row:
        return CaseOutcome.from_json(row)
    config = _container(row, "config") or {}
    for required in ("backend", "batch_spec"):
        require(required in config, f"seed record's config has no {required!r} (keys: {keys_of(config)})")
    key = CaseKey.from_json({"backend": config["backend"], "batch_spec": config["batch_spec"],
                             "device": config.get("device"),
                             "shape": {k: config[k] for k in SHAPE_FIELDS if config.get(k) is not None}},
                            "config")
    throughput, error = row.get("throughput_tokens_per_sec"), row.get("error")
    require(throughput is None or is_finite(throughput),
            f"throughput_tokens_per_sec is {show(throughput)}, expected a number")
    require(error is None or isinstance(error, str), f"error is {show(error)}, expected a string")
    times = summary_times(row, ("mean_time", "median_time", "std_time", "min_time", "max_time", "iqr_time",
                                "rounds"))
    return CaseOutcome(key, FAILED if error else PASSED, error, times=times)


def _container(parent: dict[str, Any], key: str) -> dict[str, Any] | None:
    """``parent[key]`` when it is an object or absent/null; a RecordError otherwise."""
    value = parent.get(key)
    require(value is None or isinstance(value, dict), f"{key} is {show(value)}, expected an object")
    return value


def _machine_info(p: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    info = doc.get("machine_info")
    if info is not None and not isinstance(info, dict):
        raise ResultsFileError(f"{p}: machine_info is a JSON {type(info).__name__}, expected an object")
    return info


def merge_results(results: Iterable[CaseOutcome]) -> list[CaseOutcome]:
    """One result per case: a later result of the same case replaces an earlier one, in place."""
    by_key: dict[tuple, CaseOutcome] = {}
    for result in results:
        by_key[case_key(result)] = result
    return list(by_key.values())


def _load_journal(p: Path, text: str) -> LoadedResults:
    """The readable lines of a journal; a ResultsFileError when none is (the first problem, named)."""
    results, notes, problems = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:  # not JSON, or an integer too long to convert
            notes.append(f"{p}:{number}: unreadable line skipped ({str(exc).split(';')[0]})")
            continue
        try:
            results.append(CaseOutcome.from_json(record))
        except (RecordError, TypeError) as exc:
            notes.append(f"{p}:{number}: unreadable line skipped ({exc})")
            if isinstance(record, dict):  # a JSON object that is not a result: worth naming if none is
                problems.append(f"{p}: line {number}: {exc}")
    if not results:
        if problems:
            raise _NotRecords(problems[0])
        raise ResultsFileError(f"{p}: not JSON: {notes[0] if notes else 'no records'}")
    for note in notes:
        # a crash can cut the last line short; anything earlier is corruption worth a warning too
        warnings.warn(note, stacklevel=3)
    return LoadedResults(results, None, "journal", notes)


def _line(result: CaseOutcome) -> str:
    return json.dumps(result.to_json(), default=str) + "\n"


def atomic_write(path: Path, write: Any, newline: str | None = None) -> Path:
    """Write through a temporary file and rename, so a reader never sees half a file.

    The temporary ``.NAME.tmpPID`` is removed whatever happens: a failed write or rename leaves no litter. A
    symbolic link is followed (the file it names is rewritten, the link kept), and a path that is not a regular
    file (a device such as /dev/null, a FIFO, a socket) is refused: the rename would replace that node."""
    path = Path(os.path.realpath(path))
    reason = _not_regular_reason(path)
    if reason is not None:
        raise OSError(f"{path}: {reason}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # gone already after a successful rename
            tmp.unlink(missing_ok=True)
    return path


def unwritable_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be written as an output file (None when it can).

    Probes what ``atomic_write`` will do: the path must not be a directory, and a file must be creatable in
    its folder (or, when folders are missing, in the nearest existing one, which must be a directory).
    Nothing is left behind: the probe file is removed and no folder is created."""
    if not str(path).strip():
        return "an empty path names no file"
    try:
        p = Path(os.path.realpath(path))
        too_long = _too_long_reason(p)
        if too_long or p.is_dir():
            return too_long or "it is a directory"
        return _not_regular_reason(p) or _creatable_in(p.parent, "a directory")
    except OSError as exc:  # a path the system refuses to even look at
        return exc.strerror or str(exc)


def _too_long_reason(path: Path) -> str | None:
    """Why the system would refuse ``path``'s name: a part longer than its file system allows, or the whole."""
    existing = next((a for a in [path, *path.parents] if os.path.lexists(a)), Path("/"))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            return f"a name in it is {len(os.fsencode(part))} bytes long; the file system allows {name_max}"
    if len(os.fsencode(str(path))) >= path_max:
        return f"it is {len(os.fsencode(str(path)))} bytes long; the system allows {path_max - 1}"
    return None


def _not_regular_reason(path: Path) -> str | None:
    """Why an existing ``path`` must not be replaced by a results file: it is not a regular file."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # not there (yet): a new file
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"it is {kind}, not a regular file (writing the results would replace it)"


def _creatable_in(folder: Path, kind: str) -> str | None:
    """Why no file can be created in ``folder`` (or, when it is missing, in its nearest existing parent)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not {kind}"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".attnbench-probe.")
    except OSError as exc:
        return f"cannot create a file in {folder}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(probe)
    return None


def unusable_folder_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be an output folder (None when it can): it must be a folder, or creatable, and
    writable. Nothing is left behind."""
    if not str(path).strip():
        return "an empty path names no folder (give . for this one)"
    p = Path(path)
    try:
        too_long = _too_long_reason(Path(os.path.abspath(p)))
        if too_long or (p.exists() and not p.is_dir()):
            return too_long or "it is not a folder"
        return _creatable_in(p, "a folder")
    except OSError as exc:
        return exc.strerror or str(exc)


def path_conflict(outputs: Sequence[tuple[str, str]], inputs: Sequence[tuple[str, str]] = ()) -> str | None:
    """The first clash among a session's files, as one line naming both options: two outputs (journals
    included) on one path, or an output on an input. ``outputs``/``inputs`` are (option, path) pairs."""
    seen: dict[Path, str] = {}
    for option, path in inputs:
        seen.setdefault(Path(path).resolve(), f"{option} {path}")
    for option, path in outputs:
        key = Path(path).resolve()
        if key in seen:
            return f"{option} {path}: the same file as {seen[key]}"
        seen[key] = f"{option} {path}"
    return None


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
