"""A benchmark case's outcome, the one form every report, file and comparison reads.

``CaseOutcome`` is the runner's typed record (``record.CaseRecord``) plus what lies outside it: the
pass / skip / fail status with its reason, the times (per-round samples and their statistics), the
pytest node id and the timer's name. A case that never reached the end of the runner (skipped,
failed, or untimed) has its key only; so do foreign results (upstream's JSON, a plain pytest-benchmark
test), which still have times.

One constructor per source: ``measured`` (a record from the runner), ``unmeasured`` (a ``BenchCase``
that has no record) and ``from_json`` (what ``to_json`` wrote: a journal line, an ``--output-json``
row, a report crossing xdist). ``exports`` reads pytest-benchmark's and upstream's files.

``to_json`` keeps upstream's flat keys at the top (``config``, ``mean_time``, ...) so readers of its
JSON find them; the record's parts sit under ``extra``. Times are seconds per attention call of one
layer, so ``mean_time`` means what upstream's ``BenchmarkResult.mean_time`` means.
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from attnbench.results.record import (MAX_SECONDS, SCHEMA, SHAPE_FIELDS, CaseKey, CaseRecord, Memory, Work, is_finite,
                              is_seconds, keys_of, kind_of, region_label, require, show)

if TYPE_CHECKING:  # cases imports the backend registry; reading saved results needs neither
    from attnbench.spec.cases import BenchCase

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
STATUSES = (PASSED, FAILED, SKIPPED)


@dataclass(frozen=True)
class Times:
    """Seconds per call: the per-round samples and their statistics. A file that kept no samples gives its
    summary only, and upstream's files no median (such a case counts as not timed). ``Times()``: not timed."""

    rounds: int = 0
    median: float | None = None
    mean: float | None = None
    stddev: float | None = None
    min: float | None = None
    max: float | None = None
    iqr: float | None = None
    samples: tuple[float, ...] = ()

    @classmethod
    def of(cls, samples: Iterable[float]) -> "Times":
        data = [float(s) for s in samples]
        if not data:
            return cls()
        for i, value in enumerate(data):
            require(is_seconds(value), f"sample {i} is {show(value)}, expected seconds between 0 and {MAX_SECONDS:g}")
        ordered = sorted(data)
        iqr = 0.0
        if len(ordered) > 1:
            q = statistics.quantiles(ordered, n=4)
            iqr = q[2] - q[0]
        return cls(len(data), statistics.median(data), statistics.fmean(data),
                   statistics.stdev(data) if len(data) > 1 else 0.0, ordered[0], ordered[-1], iqr, tuple(data))

    @property
    def rel_noise(self) -> float | None:
        """Relative spread of the rounds (stddev / mean), the measured noise; None if unknown."""
        if self.stddev is None or not self.mean or self.rounds < 2:
            return None
        return self.stddev / self.mean


@dataclass(frozen=True)
class CaseOutcome:
    key: CaseKey
    status: str = PASSED
    reason: str | None = None  # the skip reason or the failure message
    record: CaseRecord | None = None  # the runner's record; None when the case has none (see the module doc)
    times: Times = Times()
    fullname: str | None = None  # the pytest node id, when known
    timer: str | None = None  # pytest-benchmark's name for what timed it

    def __post_init__(self) -> None:
        require(self.status in STATUSES, f"status is {show(self.status)}, expected one of {', '.join(STATUSES)}")
        if self.record is not None and self.record.key != self.key:
            raise ValueError("an outcome's key is its record's key")

    # ------------------------------------------------------------ builders

    @classmethod
    def measured(cls, record: CaseRecord, *, fullname: str | None = None) -> "CaseOutcome":
        """A case the runner recorded; its samples are the record's."""
        return cls(record.key, PASSED, None, record, Times.of(record.samples), fullname, record.timing.timer_name)

    @classmethod
    def unmeasured(cls, case: "BenchCase", status: str, reason: str | None = None,
                   fullname: str | None = None) -> "CaseOutcome":
        """A case with no record: skipped or failed before recording, or passed without recording."""
        return cls(case.key(), status, reason, fullname=fullname)

    # ------------------------------------------------------------ derived

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def timed(self) -> bool:
        return self.passed and self.times.median is not None and self.times.median > 0

    @property
    def median(self) -> float:
        """The median seconds per call of a timed outcome; callers filter on ``timed`` first, so an untimed one
        here is a bug, not a case to format."""
        if not self.timed:
            raise ValueError(f"{describe_key(self)} was not timed")
        assert self.times.median is not None
        return self.times.median

    @property
    def verified(self) -> bool:
        return self.record is not None and self.record.verified

    @property
    def unstable(self) -> bool:
        """Its rounds spread too far for their median to be one number (``record.UNSTABLE_SPREAD_PCT``)."""
        return self.record is not None and self.record.timing.unstable

    @property
    def work(self) -> Work:
        return self.record.work if self.record is not None else Work()

    @property
    def memory(self) -> Memory:
        return (self.record.memory if self.record is not None else None) or Memory()

    @property
    def throughput(self) -> float | None:
        """New tokens per second at the median."""
        if not self.timed:
            return None
        try:
            tokens = self.key.total_tokens
        except ValueError:  # a foreign file's spec this grammar does not read
            return None
        return tokens / self.median if tokens else None

    def info(self, part: str, name: str) -> Any:
        """One value vLLM or the profiler reported: ``part`` is "backend_info" or "kernels"; None if absent."""
        if self.record is None:
            return None
        return (getattr(self.record, part) or {}).get(name)

    # ------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready row: upstream's flat keys and ours at the top, the record's parts under ``extra``."""
        t, w, m = self.times, self.work, self.memory
        key = self.key.to_json()
        shape = {name: self.key.shape.get(name) for name in SHAPE_FIELDS}
        row: dict[str, Any] = {
            **{k: key[k] for k in _KEY_HEAD}, **shape, **{k: key[k] for k in _KEY_TAIL if k in key},
            "status": self.status, "error": self.reason,
            "verified": self.record.verified if self.record is not None else None,
            "mean_time": t.mean, "median_time": t.median, "std_time": t.stddev, "min_time": t.min,
            "max_time": t.max, "iqr_time": t.iqr, "rounds": t.rounds, "samples": list(t.samples),
            "timer": self.timer, "throughput": self.throughput, "flops": w.flops, "bytes": w.bytes,
            "tflops": w.tflops, "gbps": w.gbps, "pct_of_peak": w.pct_of_peak, "bound": w.bound,
            "peak_memory_bytes": m.peak_allocated_bytes, "kv_memory_bytes": m.kv_and_buffers_bytes,
            "fullname": self.fullname, "extra": {},
        }
        if self.key.topk_pattern is not None:  # sparse MLA rows only: dense rows keep their columns
            row["topk_pattern"] = self.key.topk_pattern
        if self.record is not None:
            row["extra"] = {k: v for k, v in self.record.to_json(include_samples=False).items()
                            if k not in key and k != "verified"}
        row["config"] = {"backend": self.key.backend, "batch_spec": self.key.batch_spec,
                         **{k: v for k, v in shape.items() if v is not None}, "device": self.key.device,
                         **self.key.backend_params}
        row["throughput_tokens_per_sec"] = row["throughput"]
        row["memory_allocated_mb"] = m.peak_allocated_bytes / 2**20 if m.peak_allocated_bytes is not None else None
        return _json_safe(row)

    @classmethod
    def from_json(cls, row: Any) -> "CaseOutcome":
        """What ``to_json`` wrote (or a hand-written row of its keys). Raises ``RecordError`` naming the field."""
        require(isinstance(row, dict), f"record is {kind_of(row)}, expected an object")
        for required in ("backend", "batch_spec"):
            require(required in row, f"record has no {required!r} (keys: {keys_of(row)})")
        for name, value in row.items():
            _check_row_value(name, value)
        key_json = {k: row.get(k) for k in (*_KEY_HEAD, *_KEY_TAIL, "topk_pattern") if row.get(k) is not None}
        key_json["shape"] = {k: row[k] for k in SHAPE_FIELDS if row.get(k) is not None}
        extra = row.get("extra") or {}
        samples = row.get("samples") or []
        record = None
        if extra.get("schema") == SCHEMA:
            record = CaseRecord.from_json({**key_json, **extra}, samples=samples or None)
            key = record.key
        else:
            key = CaseKey.from_json(key_json)
        times = Times.of(samples) if samples else summary_times(
            row, ("mean_time", "median_time", "std_time", "min_time", "max_time", "iqr_time", "rounds"))
        return cls(key, row.get("status") or PASSED, row.get("error"), record, times, row.get("fullname"),
                   row.get("timer"))


_KEY_HEAD = ("backend", "batch_spec", "family", "study")  # the row's key fields before the shape's
# after the shape's; "sweeps" only in the row of a case of several swept parameters (record.CaseKey.to_json).
# Every key field is here: one left out is dropped from the row (``extra`` leaves the key's fields out), and the
# case comes back with its default, under another case's key
_KEY_TAIL = ("sweep_param", "sweep_value", "sweeps", "pipeline", "backend_params", "device", "cache_state",
             "timed_region", "kv_fill")


def summary_times(stats: dict[str, Any], names: tuple[str, str, str, str, str, str, str],
                  where: str = "") -> Times:
    """Times from a summary without samples; ``names`` are the source's keys for mean, median, stddev, min, max,
    iqr and rounds, each checked."""
    values = {}
    for field_name, name in zip(("mean", "median", "stddev", "min", "max", "iqr", "rounds"), names):
        value = stats.get(name)
        require(value is None or is_finite(value), f"{where}{name} is {show(value)}, expected a number")
        if field_name == "rounds":
            require(value is None or (value >= 0 and float(value).is_integer()),
                    f"{where}{name} is {show(value)}, expected a whole number of rounds")
        else:
            require(value is None or is_seconds(value),
                    f"{where}{name} is {show(value)}, expected seconds between 0 and {MAX_SECONDS:g}")
        values[field_name] = value
    return Times(**{**values, "rounds": int(values["rounds"] or 0)})


def case_key(outcome: CaseOutcome) -> tuple:
    """The structured identity of a case, stable across runs, files and machines.

    The device kind is part of it ("cpu" / "cuda": a CPU timing is not a GPU case's timing, so a CPU journal
    given to --resume deselects nothing of a GPU run); the device index is not (``cuda:1`` is ``cuda``). A
    result without a batch spec (a plain pytest-benchmark test) is known by its node id."""
    k = outcome.key
    if not k.batch_spec:
        return ("fullname", outcome.fullname or k.backend)
    return ("case", k.family, k.backend, k.batch_spec, _canon(k.dims), *_sweep_identity(k), k.pipeline,
            _canon(dict(k.backend_params)), k.cache_state, devicekind_of(k.device), k.timed_region, k.kv_fill,
            *((k.topk_pattern,) if k.topk_pattern is not None else ()))


def _sweep_identity(k: CaseKey) -> tuple[Any, str]:
    """The swept parameters and their values as two members of ``case_key``: (param, value) for none or one,
    exactly as keys were before several could be swept (the verdicts' bootstrap seeds come from the key, so a
    stored single-sweep baseline gives the verdicts it always gave), and (the params, the values) for several."""
    if len(k.sweep) > 1:
        return k.sweep_params, _canon(list(k.sweep_values))
    one = k.sweep[0] if k.sweep else None
    return (one.param if one else None), _canon(one.value if one else None)


def devicekind_of(device: str | None) -> str | None:
    """``cuda:1`` -> ``cuda``, ``cpu`` -> ``cpu``; None (unrecorded) stays None."""
    return device.split(":", 1)[0].strip().lower() or None if isinstance(device, str) else device


def describe_key(outcome: CaseOutcome) -> str:
    """A short human label for one case (for verdict lines and messages)."""
    k = outcome.key
    if not k.batch_spec:
        return outcome.fullname or k.backend
    marks = [region_label(k.timed_region),
             f"kv={k.kv_fill}" if k.kv_fill != "random" else ""]
    return " ".join(p for p in (k.backend, k.family or "", k.batch_spec, k.variant or "", *marks) if p)


# The types a row's fields must have (None always allowed except where noted), checked before use so a
# malformed file is one clear error, never a TypeError deep in the reporting code. The derived fields
# (rates, memory, upstream's keys) are checked too, then rebuilt from the record.
_NUMBER, _STR = "a number", "a string"  # numbers finite: NaN and inf are refused too
_ROW_KINDS: dict[str, str] = {
    **{name: _NUMBER for name in ("mean_time", "median_time", "std_time", "min_time", "max_time", "iqr_time",
                                  "throughput", "flops", "bytes", "tflops", "gbps", "pct_of_peak",
                                  "peak_memory_bytes", "kv_memory_bytes", "rounds", "throughput_tokens_per_sec",
                                  "memory_allocated_mb")},
    **{name: _NUMBER for name in SHAPE_FIELDS if name not in ("dtype", "kv_cache_dtype")},
    **{name: _STR for name in ("backend", "batch_spec", "family", "study", "dtype", "kv_cache_dtype", "sweep_param",
                               "pipeline", "device", "cache_state", "status", "error", "timer", "bound", "fullname",
                               "timed_region", "kv_fill", "topk_pattern")},
    "verified": "true or false", "backend_params": "an object", "extra": "an object", "config": "an object",
    "samples": "a list of numbers", "sweeps": "a list",
}
_NOT_NULL = {"backend", "batch_spec", "status", "rounds", "samples", "backend_params", "extra"}


def _check_row_value(name: str, value: Any) -> None:
    if name == "sweep_value":  # a number, or a name (kv_cache_dtype); CaseKey.from_json checks it with its param
        return
    expected = _ROW_KINDS.get(name)
    if expected is None:  # a misspelt or foreign field would otherwise be ignored
        close = difflib.get_close_matches(str(name), [*_ROW_KINDS, "sweep_value"], n=1)
        require(False, f"record has an unknown key {show(name)}" + (f" (did you mean {close[0]}?)" if close else ""))
    if value is None:
        require(name not in _NOT_NULL, f"{name} is null, expected {expected}")
        return
    ok = {_NUMBER: is_finite(value), _STR: isinstance(value, str), "true or false": isinstance(value, bool),
          "an object": isinstance(value, dict), "a list": isinstance(value, list),
          "a list of numbers": isinstance(value, list) and all(is_finite(v) for v in value)}[expected]
    require(ok, f"{name} is {show(value)}, expected {expected}")


def _canon(value: Any) -> str:
    # json with sorted keys: dicts compare by content, and 4 vs "4" (CLI strings) stay distinct only if typed so
    return json.dumps(value, sort_keys=True, default=str)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


