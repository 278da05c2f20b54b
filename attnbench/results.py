"""``BenchmarkResult``: one benchmark case's outcome, in one flat, serialisable record.

Every reporting path goes through this one model: the session table, the CSV/JSON
exports, the append-only journal and resume, the baseline verdicts and the plots. A
result is built from whichever form the measurement is in:

* ``from_case_result``     an ``attnbench.runner.CaseResult`` (the Python API),
* ``from_extra_info``      a pytest-benchmark fixture's ``extra_info`` plus its samples,
* ``from_benchmark_json``  one entry of a pytest-benchmark JSON file (``--benchmark-json``
                           or ``--benchmark-save``; ``stats.data`` may be absent),
* ``from_record``          a record this module wrote (``to_record``).

Times are seconds per attention call of one layer (``CaseResult.timing`` samples), so
``mean_time`` means the same thing as upstream attention_benchmarks' ``BenchmarkResult.mean_time``.

Cases are identified across files by ``case_key``: structured fields (family, backend,
batch spec, shape, sweep, pipeline, backend knobs, cache state, device kind), never a parsed test id;
a record without them (a plain pytest-benchmark test) falls back to its fullname.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterable

from attnbench.record import SCHEMA as RECORD_SCHEMA
from attnbench.record import SHAPE_FIELDS, CaseRecord
from attnbench.record import is_finite as _is_finite
from attnbench.record import is_number as _is_number
from attnbench.record import require as _require
from attnbench.record import show as _show
from grammar import get_batch_stats, parse_batch_spec

if TYPE_CHECKING:  # runner imports torch; reading saved results must not need it
    from attnbench.cases import BenchCase
    from attnbench.runner import CaseResult

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
STATUSES = (PASSED, FAILED, SKIPPED)


# extra_info keys that become first-class fields; everything else is kept under ``extra``.
_LIFTED_INFO = {"study", "family", "backend", "batch_spec", "shape", "sweep_param", "sweep_value", "pipeline",
                "backend_params", "device", "verified", "cache_state", "flops", "bytes", "tflops", "gbps",
                "pct_of_peak", "bound", "memory"}


# Field types a stored record must have (None always allowed except where noted), checked before use so a
# malformed file is one clear error, never a TypeError deep in the reporting code.
_NUMBER = "a number"  # finite: NaN and inf are refused too
_STR = "a string"
_FIELD_TYPES: dict[str, str] = {
    **{name: _NUMBER for name in ("mean_time", "median_time", "std_time", "min_time", "max_time", "iqr_time",
                                  "throughput", "flops", "bytes", "tflops", "gbps", "pct_of_peak",
                                  "peak_memory_bytes", "kv_memory_bytes", "rounds")},
    **{name: _NUMBER for name in SHAPE_FIELDS if name not in ("dtype", "kv_cache_dtype")},
    **{name: _STR for name in ("backend", "batch_spec", "family", "study", "dtype", "kv_cache_dtype", "sweep_param",
                               "pipeline", "device", "cache_state", "status", "error", "timer", "bound", "fullname")},
    "verified": "true or false", "backend_params": "an object", "extra": "an object", "samples": "a list of numbers",
}
_NOT_NULL = {"backend", "batch_spec", "status", "rounds", "samples", "backend_params", "extra"}


@dataclass
class BenchmarkResult:
    backend: str
    batch_spec: str
    family: str | None = None  # "attention" or "mla"
    study: str | None = None
    # shape (seed BenchmarkConfig fields)
    num_layers: int | None = None
    head_dim: int | None = None
    num_q_heads: int | None = None
    num_kv_heads: int | None = None
    block_size: int | None = None
    dtype: str | None = None
    kv_cache_dtype: str | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    # what varies within a study
    sweep_param: str | None = None
    sweep_value: Any = None  # an int or "auto"
    pipeline: str | None = None  # decode_vs_prefill: "decode" or "prefill"
    backend_params: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    cache_state: str | None = None
    # outcome
    status: str = PASSED
    error: str | None = None  # the failure message, or the skip reason
    verified: bool | None = None
    # timing: seconds per attention call (one layer); None when not timed (skipped, failed, --benchmark-disable)
    mean_time: float | None = None
    median_time: float | None = None
    std_time: float | None = None
    min_time: float | None = None
    max_time: float | None = None
    iqr_time: float | None = None
    rounds: int = 0
    samples: list[float] = field(default_factory=list)  # per-round seconds, when the source kept them
    timer: str | None = None
    # work and rates (rates at the median time)
    throughput: float | None = None  # new tokens per second
    flops: int | None = None
    bytes: int | None = None
    tflops: float | None = None
    gbps: float | None = None
    pct_of_peak: float | None = None
    bound: str | None = None
    # memory (--profile-memory)
    peak_memory_bytes: int | None = None
    kv_memory_bytes: int | None = None  # the estimate of KV cache + layer buffers
    fullname: str | None = None  # the pytest node id, when known
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ derived

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def median(self) -> float:
        """The median seconds per call of a timed result; callers filter on ``timed`` first, so an untimed
        one here is a bug, not a case to format."""
        if self.median_time is None:
            raise ValueError(f"{describe_key(self)} was not timed")
        return self.median_time

    @property
    def timed(self) -> bool:
        return self.passed and self.median_time is not None and self.median_time > 0

    @property
    def rel_noise(self) -> float | None:
        """Relative spread of the rounds (stddev / mean), the measured noise; None if unknown."""
        if self.std_time is None or not self.mean_time or self.rounds < 2:
            return None
        return self.std_time / self.mean_time

    @property
    def shape(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SHAPE_FIELDS if getattr(self, name) is not None}

    @property
    def batch_stats(self) -> dict[str, Any]:
        return get_batch_stats(parse_batch_spec(self.batch_spec))

    @property
    def batch_size(self) -> int:
        return int(self.batch_stats["total_requests"])

    @property
    def q_len(self) -> int:
        return int(self.batch_stats["max_q_len"])

    @property
    def kv_len(self) -> int:
        return int(self.batch_stats["max_kv_len"])

    @property
    def size_key(self) -> tuple[int, int, str]:
        """Orders batch specs by size: total new tokens, then total KV, then the spelling."""
        stats = self.batch_stats
        return int(stats["total_tokens"]), int(stats["total_kv_cache"]), self.batch_spec

    @property
    def variant(self) -> str | None:
        """What distinguishes this result from its siblings in one table row (sweep value or pipeline)."""
        if self.pipeline is not None:
            return self.pipeline
        if self.sweep_param is not None:
            return f"{self.sweep_param}={self.sweep_value}"
        return None

    def key(self) -> tuple:
        return case_key(self)

    # ------------------------------------------------------------ builders

    @classmethod
    def from_case_result(cls, case_result: "CaseResult", fullname: str | None = None) -> "BenchmarkResult":
        return cls.from_case_record(case_result.record(), fullname=fullname)

    @classmethod
    def from_case_record(cls, record: CaseRecord, *, fullname: str | None = None,
                         timer: str | None = None) -> "BenchmarkResult":
        """The reporting view of the runner's typed record (its samples included)."""
        from attnbench.bench_shim import TIMER_NAMES

        info = record.to_json(include_samples=False)
        return cls.from_extra_info(info, record.samples, fullname=fullname,
                                   timer=timer or TIMER_NAMES.get(record.timing.mode, record.timing.mode))

    @classmethod
    def from_case(cls, case: "BenchCase", status: str, error: str | None = None,
                  fullname: str | None = None) -> "BenchmarkResult":
        """A result with no measurement: a case that was skipped or failed before recording."""
        info = dict(case.describe())
        info["cache_state"] = case.run.cache_state
        return cls.from_extra_info(info, [], status=status, error=error, fullname=fullname)

    @classmethod
    def from_extra_info(cls, info: dict[str, Any], samples: Iterable[float] = (), *, status: str = PASSED,
                        error: str | None = None, timer: str | None = None,
                        fullname: str | None = None) -> "BenchmarkResult":
        data = [float(s) for s in samples]
        times = _times_from_samples(data)
        return cls._from_info(info, times, data, status=status, error=error, timer=timer, fullname=fullname)

    @classmethod
    def from_benchmark_json(cls, entry: dict[str, Any]) -> "BenchmarkResult":
        """One entry of pytest-benchmark's ``benchmarks`` list (only passed tests are saved there).

        Raises ``RecordError`` naming the field when the entry is malformed."""
        _require(isinstance(entry, dict), f"benchmark entry is {_kind(entry)}, expected an object")
        stats = _container(entry, "stats", "stats") or {}
        raw = stats.get("data") or []
        _require(isinstance(raw, list), f"stats.data is {_kind(raw)}, expected a list of numbers")
        for i, sample in enumerate(raw):
            _require(_is_finite(sample), f"stats.data[{i}] is {_show(sample)}, expected a number")
        data = [float(s) for s in raw]
        # the summary is checked even when the samples are used: a file with NaN rounds is a broken file
        for key in ("mean", "median", "stddev", "min", "max", "iqr", "rounds"):
            value = stats.get(key)
            _require(value is None or _is_finite(value), f"stats.{key} is {_show(value)}, expected a number")
        rounds = stats.get("rounds")
        _require(rounds is None or (rounds >= 0 and float(rounds).is_integer()),
                 f"stats.rounds is {_show(rounds)}, expected a whole number of rounds")
        if data:
            times = _times_from_samples(data)
        else:  # --benchmark-save keeps only the summary unless --benchmark-save-data
            times = {"mean_time": stats.get("mean"), "median_time": stats.get("median"),
                     "std_time": stats.get("stddev"), "min_time": stats.get("min"), "max_time": stats.get("max"),
                     "iqr_time": stats.get("iqr"), "rounds": int(stats.get("rounds") or 0)}
        info = dict(_container(entry, "extra_info", "extra_info") or {})
        info = upgrade_schema_1(info)
        if info.get("schema") == RECORD_SCHEMA:
            CaseRecord.from_json(info)  # every field typed and checked; names the wrong one
        else:  # a plain pytest-benchmark test (no attnbench record)
            info.setdefault("backend", None)
            info.setdefault("batch_spec", None)
            _check_info(info)
        timer = (_container(entry, "options", "options") or {}).get("timer")
        for key, value in (("fullname", entry.get("fullname")), ("name", entry.get("name")), ("options.timer", timer)):
            _require(value is None or isinstance(value, str), f"{key} is {_show(value)}, expected a string")
        return cls._from_info(info, times, data, status=PASSED, error=None, timer=timer,
                              fullname=entry.get("fullname"), fallback_name=entry.get("name"))

    @classmethod
    def _from_info(cls, info: dict[str, Any], times: dict[str, Any], samples: list[float], *, status: str,
                   error: str | None, timer: str | None, fullname: str | None,
                   fallback_name: str | None = None) -> "BenchmarkResult":
        info = upgrade_schema_1(info)
        shape = info.get("shape") or {}
        memory = info.get("memory") or {}
        # schema 2 (the typed record) keeps the work model under "work"; the flat schema 1 at the top
        work = info.get("work") or {} if info.get("schema") == RECORD_SCHEMA else info
        extra = {k: v for k, v in info.items() if k not in _LIFTED_INFO}
        result = cls(
            backend=info.get("backend") or fallback_name or "?",
            batch_spec=info.get("batch_spec") or "",
            family=info.get("family"), study=info.get("study"),
            **{name: shape.get(name) for name in SHAPE_FIELDS},
            sweep_param=info.get("sweep_param"), sweep_value=info.get("sweep_value"),
            pipeline=info.get("pipeline"), backend_params=dict(info.get("backend_params") or {}),
            device=info.get("device"), cache_state=info.get("cache_state"),
            status=status, error=error,
            verified=info.get("verified"),
            samples=samples, timer=timer,
            flops=work.get("flops"), bytes=work.get("bytes"), bound=work.get("bound"),
            peak_memory_bytes=memory.get("peak_allocated_bytes"), kv_memory_bytes=memory.get("kv_and_buffers_bytes"),
            fullname=fullname, extra=extra,
            **times,
        )
        if result.memory_info:
            result.extra["memory"] = memory
        result._fill_rates(work)
        return result

    @functools.cached_property
    def case_record(self) -> CaseRecord | None:
        """The runner's typed record behind this timed result (files of schema 1 are upgraded on load), or None
        (a skipped or failed case, or a plain pytest-benchmark test)."""
        if self.extra.get("schema") != RECORD_SCHEMA or "timing" not in self.extra:
            return None
        key = {"backend": self.backend, "batch_spec": self.batch_spec, "family": self.family, "study": self.study,
               "shape": self.shape, "sweep_param": self.sweep_param, "sweep_value": self.sweep_value,
               "pipeline": self.pipeline, "backend_params": self.backend_params, "device": self.device,
               "cache_state": self.cache_state}
        extra = {k: v for k, v in self.extra.items() if k != "memory" or isinstance(v, dict)}
        return CaseRecord.from_json({**key, **extra, "verified": self.verified}, samples=self.samples or None)

    @property
    def memory_info(self) -> bool:
        return self.peak_memory_bytes is not None or self.kv_memory_bytes is not None

    def _fill_rates(self, info: dict[str, Any]) -> None:
        """Rates at the median time. The runner records them at its median, which is the median of these
        same samples; they are recomputed only where the source lacks them."""
        t = self.median_time if self.median_time and self.median_time > 0 else None
        if t is None:
            return
        tokens = self._tokens()
        self.throughput = tokens / t if tokens else None
        self.tflops = info.get("tflops") if info.get("tflops") is not None else (
            self.flops / t / 1e12 if self.flops else None)
        self.gbps = info.get("gbps") if info.get("gbps") is not None else (
            self.bytes / t / 1e9 if self.bytes else None)
        self.pct_of_peak = info.get("pct_of_peak")

    def _tokens(self) -> int:
        try:
            return int(self.batch_stats["total_tokens"])
        except ValueError:
            return 0

    # ------------------------------------------------------------ records

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, plus upstream's keys (``config``, ``throughput_tokens_per_sec``,
        ``memory_allocated_mb``) so readers of upstream's JSON find what they expect."""
        out = asdict(self)
        out["config"] = {"backend": self.backend, "batch_spec": self.batch_spec, **self.shape,
                         "device": self.device, **self.backend_params}
        out["throughput_tokens_per_sec"] = self.throughput
        out["memory_allocated_mb"] = self.peak_memory_bytes / 2**20 if self.peak_memory_bytes is not None else None
        return _json_safe(out)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "BenchmarkResult":
        """A result from ``to_record``'s dict (or a seed record). Raises ``RecordError`` when it is not one."""
        _require(isinstance(record, dict), f"record is {_kind(record)}, expected an object")
        if "backend" not in record and "config" in record:  # a seed record: only config + times
            return cls._from_seed_record(record)
        for required in ("backend", "batch_spec"):
            _require(required in record, f"record has no {required!r} (keys: {_keys(record)})")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in record.items() if k in names}
        _check_fields(kwargs)
        return cls(**kwargs)

    @classmethod
    def _from_seed_record(cls, record: dict[str, Any]) -> "BenchmarkResult":
        config = _container(record, "config", "config") or {}
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        for required in ("backend", "batch_spec"):
            _require(required in kwargs, f"seed record's config has no {required!r} (keys: {_keys(config)})")
        error = record.get("error")
        kwargs.update(mean_time=record.get("mean_time"), std_time=record.get("std_time"),
                      min_time=record.get("min_time"), max_time=record.get("max_time"),
                      throughput=record.get("throughput_tokens_per_sec"),
                      status=FAILED if error else PASSED, error=error)
        _check_fields(kwargs, renamed={"throughput": "throughput_tokens_per_sec"})
        return cls(**kwargs)


_TIMING_FACTS_V1 = ("time_unit", "working_set_bytes", "l2_bytes")  # top-level in schema 1, in ``timing`` since 2


def upgrade_schema_1(info: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 (flat, 2026-11) ``extra_info`` of a timed case as the schema-2 record JSON: the work model
    moves under ``work`` and the timing facts under ``timing``; nothing else changes. Anything else (a
    record already, an untimed case, a plain pytest-benchmark test) is returned as it is."""
    from attnbench.record import Work

    if info.get("schema") is not None or not isinstance(info.get("timing"), dict) or "verification" not in info:
        return info
    out: dict[str, Any] = {"schema": RECORD_SCHEMA}
    timing = dict(info.get("timing") or {})
    for key, value in info.items():
        if key in Work.KINDS:
            out.setdefault("work", {})[key] = value
        elif key in _TIMING_FACTS_V1:
            timing.setdefault(key, value)
        elif key != "timing":
            out[key] = value
    out["timing"] = timing
    return out


def case_key(result: BenchmarkResult) -> tuple:
    """The structured identity of a case, stable across runs, files and machines.

    The device kind is part of it ("cpu" / "cuda": a CPU timing is not a GPU case's timing, so a CPU journal
    given to --resume deselects nothing of a GPU run); the device index is not (``cuda:1`` is ``cuda``)."""
    if not result.batch_spec:
        return ("fullname", result.fullname or result.backend)
    return ("case", result.family, result.backend, result.batch_spec, _canon(result.shape), result.sweep_param,
            _canon(result.sweep_value), result.pipeline, _canon(result.backend_params), result.cache_state,
            device_kind(result.device))


def device_kind(device: str | None) -> str | None:
    """``cuda:1`` -> ``cuda``, ``cpu`` -> ``cpu``; None (unrecorded) stays None."""
    return device.split(":", 1)[0].strip().lower() or None if isinstance(device, str) else device


def describe_key(result: BenchmarkResult) -> str:
    """A short human label for one case (for verdict lines and messages)."""
    if not result.batch_spec:
        return result.fullname or result.backend
    parts = [result.backend, result.family or "", result.batch_spec]
    if result.variant:
        parts.append(result.variant)
    return " ".join(p for p in parts if p)


def _canon(value: Any) -> str:
    # json with sorted keys: dicts compare by content, and 4 vs "4" (CLI strings) stay distinct only if typed so
    return json.dumps(value, sort_keys=True, default=str)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), f"a {type(value).__name__}")


def _keys(record: dict[str, Any]) -> str:
    keys = sorted(map(str, record))
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "none"


def _container(parent: dict[str, Any], key: str, label: str) -> dict[str, Any] | None:
    """``parent[key]`` when it is an object or absent/null; a RecordError otherwise."""
    value = parent.get(key)
    _require(value is None or isinstance(value, dict), f"{label} is {_show(value)}, expected an object")
    return value


def _check_value(name: str, value: Any, label: str | None = None) -> None:
    label = label or name
    expected = _FIELD_TYPES.get(name)
    if expected is None:
        return
    if value is None:
        _require(name not in _NOT_NULL, f"{label} is null, expected {expected}")
        return
    ok = {_NUMBER: _is_finite(value), _STR: isinstance(value, str), "true or false": isinstance(value, bool),
          "an object": isinstance(value, dict),
          "a list of numbers": isinstance(value, list) and all(_is_finite(v) for v in value)}[expected]
    _require(ok, f"{label} is {_show(value)}, expected {expected}")


def _check_fields(values: dict[str, Any], renamed: dict[str, str] | None = None) -> None:
    for name, value in values.items():
        _check_value(name, value, (renamed or {}).get(name))
    status = values.get("status", PASSED)
    _require(status in STATUSES, f"status is {_show(status)}, expected one of {', '.join(STATUSES)}")


def _check_info(info: dict[str, Any]) -> None:
    """The ``extra_info`` keys that become fields (pytest-benchmark JSON), checked before they are used."""
    for name in ("backend", "batch_spec", "family", "study", "sweep_param", "pipeline", "device", "cache_state",
                 "bound", "verified", "flops", "bytes", "tflops", "gbps", "pct_of_peak", "backend_params"):
        if info.get(name) is not None:
            _check_value(name, info[name], f"extra_info.{name}")
    shape = _container(info, "shape", "extra_info.shape") or {}
    for name in SHAPE_FIELDS:
        if shape.get(name) is not None:
            _check_value(name, shape[name], f"extra_info.shape.{name}")
    memory = _container(info, "memory", "extra_info.memory") or {}
    for key in ("peak_allocated_bytes", "kv_and_buffers_bytes"):
        value = memory.get(key)
        _require(value is None or _is_number(value), f"extra_info.memory.{key} is {_show(value)}, expected a number")


def _times_from_samples(data: list[float]) -> dict[str, Any]:
    if not data:
        return {"rounds": 0}
    ordered = sorted(data)
    return {
        "mean_time": statistics.fmean(data), "median_time": statistics.median(data),
        "std_time": statistics.stdev(data) if len(data) > 1 else 0.0,
        "min_time": ordered[0], "max_time": ordered[-1], "iqr_time": _iqr(ordered), "rounds": len(data),
    }


def _iqr(ordered: list[float]) -> float:
    if len(ordered) < 2:
        return 0.0
    q = statistics.quantiles(ordered, n=4)
    return q[2] - q[0]


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
