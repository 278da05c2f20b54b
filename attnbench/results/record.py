"""One typed, versioned record of a measured case: what the runner writes, once.

``CaseRecord`` nests frozen parts: the case key, the timing summary, the verification, the
work (FLOPs, bytes, rates, phases), the kernel path vLLM took, memory, host seconds and the GPU.
``to_json``/``from_json`` are its one serialisation: it is pytest-benchmark's ``extra_info``
(samples left to pytest-benchmark's own ``stats``), what an xdist worker sends the controller,
and what ``outcome.CaseOutcome`` (the record with its status and times) carries. ``from_json`` checks
every field it reads and names the one that is wrong (``RecordError``).

Torch-free: reading saved results never needs a GPU stack.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Mapping

# Model dimensions as upstream's BenchmarkConfig names them; MLA-only ones are absent for standard attention.
SHAPE_FIELDS = ("num_layers", "head_dim", "num_q_heads", "num_kv_heads", "block_size", "dtype", "kv_cache_dtype",
                "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
_SHAPE_NAMES = ("dtype", "kv_cache_dtype")  # the shape fields that are names, not counts

# a backend name (AttentionBackendEnum's FLASH_ATTN_MLA, the suite's REFERENCE, upstream files' lowercase aliases such
# as flash): checked by form, not against this version's registry, so a file from a suite that knows more backends
# still reads
_BACKEND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

SCHEMA = 2  # this record (1, a flat extra_info of 2026-11, is no longer read: the files that had it were converted)

# pytest-benchmark's "timer" for each timing mode: what the stored numbers measured
TIMER_NAMES = {"cuda-graph": "cuda_events(cuda_graph_replay)", "cuda-events": "cuda_events(eager)",
               "host": "time.perf_counter"}
# ... and under --timer cupti (timing.timer "cupti"): CUPTI's first-kernel-start to last-kernel-end
CUPTI_TIMER_NAMES = {"cuda-graph": "cupti_kernel_span(cuda_graph_replay)", "cuda-events": "cupti_kernel_span(eager)"}


def timer_name(mode: str, timer: str | None) -> str:
    """pytest-benchmark's name for what timed a case: its timing ``mode`` under its ``timer`` (None: events/host)."""
    return (CUPTI_TIMER_NAMES if timer == "cupti" else TIMER_NAMES).get(mode, mode)


class RecordError(ValueError):
    """A record or pytest-benchmark entry that is not a well-formed result; the message says what is wrong.

    ``exports.load_results`` turns it into a ``ResultsFileError`` naming the file and the record."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise RecordError(message)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number that is neither NaN nor infinite: in a results file anything else is corruption."""
    return is_number(value) and math.isfinite(value)


MAX_SECONDS = 1e6  # a timed call, or a statistic of its rounds, of more than ~11 days is a broken file, not a time


def is_seconds(value: Any) -> bool:
    """A time a results file may hold: finite, not negative, and small enough that sums of many stay finite."""
    return is_finite(value) and 0 <= value <= MAX_SECONDS


def show(value: Any) -> str:
    import json

    text = json.dumps(value, default=str)
    return f"{text[:40]}..." if len(text) > 43 else text


def kind_of(value: Any) -> str:
    """What a JSON value is, for messages: "an object", "a number", ..."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), f"a {type(value).__name__}")


def keys_of(data: dict[str, Any]) -> str:
    """The first keys of an object, for messages."""
    keys = sorted(map(str, data))
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "none"


def _part(cls: type, data: Any, where: str) -> Any:
    """Build frozen dataclass ``cls`` from ``data``, checking each field against its annotation."""
    if data is None:
        return None
    require(isinstance(data, dict), f"{where} is {show(data)}, expected an object")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    require(not unknown, f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    values = {}
    for name, value in data.items():
        kind = cls.KINDS.get(name, "any")
        label = f"{where}.{name}"
        if value is None or kind == "any":
            values[name] = value
        elif kind == "number":
            require(is_finite(value), f"{label} is {show(value)}, expected a finite number")
            values[name] = value
        elif kind == "int":
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"{label} is {show(value)}, expected an integer")
            values[name] = value
        elif kind == "str":
            require(isinstance(value, str), f"{label} is {show(value)}, expected a string")
            values[name] = value
        elif kind == "object":
            require(isinstance(value, dict), f"{label} is {show(value)}, expected an object")
            values[name] = value
        elif kind == "numbers":
            require(isinstance(value, list) and all(is_finite(v) for v in value),
                     f"{label} is {show(value)}, expected a list of finite numbers")
            values[name] = tuple(float(v) for v in value)
        elif kind == "strs":
            require(isinstance(value, list) and all(isinstance(v, str) for v in value),
                    f"{label} is {show(value)}, expected a list of strings")
            values[name] = tuple(value)
        elif kind == "ints":
            require(isinstance(value, list) and all(isinstance(v, int) for v in value),
                     f"{label} is {show(value)}, expected a list of integers")
            values[name] = tuple(value)
    return cls(**values)


def _plain(part: Any) -> dict[str, Any] | None:
    if part is None:
        return None
    out = {}
    for f in fields(part):
        value = getattr(part, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class SweptValue:
    """One swept parameter's value in one case: ``num_kv_splits`` 2, ``head_dim`` 64, ``kv_cache_dtype`` "fp8",
    or "auto" (the backend's default knob, the study's own dimension). A case of a study that sweeps several
    parameters has one per parameter, in the study's order (``CaseKey.sweep``)."""

    param: str
    value: int | str

    @classmethod
    def from_json(cls, data: Any, where: str) -> "SweptValue":
        require(isinstance(data, dict), f"{where} is {show(data)}, expected an object with param and value")
        unknown = sorted(set(map(str, data)) - {"param", "value"})
        require(not unknown, f"{where}: unknown key(s) {', '.join(unknown)}")
        return cls(*_swept(data.get("param"), data.get("value"), where))

    def to_json(self) -> dict[str, Any]:
        return {"param": self.param, "value": self.value}

    @property
    def label(self) -> str:
        return f"{self.param}={self.value}"


def _swept(param: Any, value: Any, where: str) -> tuple[str, int | str]:
    require(isinstance(param, str) and param, f"{where}: param is {show(param)}, expected a parameter name")
    ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    require(ok, f"{where}: value of {param} is {show(value)}, expected an integer or a name")
    return param, value


def region_label(timed_region: str) -> str:
    """How a timed region shows in test ids and labels: ``attention-only``; "" for the layer step, the default."""
    return "" if timed_region == "layer" else f"{timed_region}-only"


def topk_label(topk_pattern: str | None) -> str:
    """How a sparse case's top-k pattern shows in test ids and labels: ``topk=random``; "" for a dense case."""
    return "" if topk_pattern is None else f"topk={topk_pattern}"


@dataclass(frozen=True)
class CaseKey:
    """What was measured. ``shape`` holds the model dimensions by their names (``SHAPE_FIELDS``), with swept ones
    applied; ``sweep`` the swept parameters' values, one per swept parameter in the study's order.

    In JSON (``to_json``) a case of one swept parameter keeps the flat ``sweep_param``/``sweep_value`` it always
    had, so files of single sweeps read as before; a case of several has them all in ``sweeps`` (a list of
    ``{param, value}``), its ``sweep_param``/``sweep_value`` null. ``from_json`` reads either."""

    KINDS: ClassVar[dict[str, str]] = {"backend": "str", "batch_spec": "str", "family": "str", "study": "str",
                                       "shape": "object", "pipeline": "str",
                                       "backend_params": "object", "device": "str", "cache_state": "str",
                                       "timed_region": "str", "kv_fill": "str", "topk_pattern": "str"}
    backend: str
    batch_spec: str
    family: str | None = None
    study: str | None = None
    shape: Mapping[str, Any] = field(default_factory=dict)
    sweep: tuple[SweptValue, ...] = ()
    pipeline: str | None = None  # decode_vs_prefill: "decode" or "prefill"; mha_vs_mqa: "mha" or "mqa"
    backend_params: Mapping[str, Any] = field(default_factory=dict)  # builder knobs forced for this case
    device: str | None = None
    cache_state: str | None = None
    # what one timed call is, and the K/V data; records written before these existed were layer / random
    timed_region: str = "layer"
    kv_fill: str = "random"
    topk_pattern: str | None = None  # sparse MLA's mock-indexer pattern; None: a dense case (and older records)

    # the JSON spellings of ``sweep``: the flat pair of a single sweep (every file before multi-parameter sweeps),
    # and the list of several
    SWEEP_JSON: ClassVar[tuple[str, ...]] = ("sweep_param", "sweep_value", "sweeps")

    def to_json(self) -> dict[str, Any]:
        """The key's fields as plain JSON, in field order; ``sweep`` as the class doc says."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "topk_pattern" and self.topk_pattern is None:
                continue  # a dense case: its JSON is what it was before sparse MLA existed
            if f.name != "sweep":
                value = getattr(self, f.name)
                out[f.name] = dict(value) if isinstance(value, Mapping) else value  # a copy, as asdict made
                continue
            one = self.sweep[0] if len(self.sweep) == 1 else None
            out["sweep_param"] = one.param if one else None
            out["sweep_value"] = one.value if one else None
            if len(self.sweep) > 1:
                out["sweeps"] = [s.to_json() for s in self.sweep]
        return out

    @classmethod
    def sweep_from_json(cls, data: dict[str, Any], where: str = "record") -> tuple[SweptValue, ...]:
        """``sweep`` from a JSON key's ``sweep_param``/``sweep_value`` (one swept parameter, or none) or its
        ``sweeps`` list (several): each checked, a parameter swept twice refused."""
        listed, param, value = data.get("sweeps"), data.get("sweep_param"), data.get("sweep_value")
        if listed is None:
            require(param is not None or value is None, f"{where}: sweep_value is {show(value)} but sweep_param is "
                                                        f"null")
            return () if param is None else (SweptValue(*_swept(param, value, where)),)
        require(param is None and value is None, f"{where}: sweeps and sweep_param/sweep_value both given; a key "
                                                 f"has one of them")
        require(isinstance(listed, list) and len(listed) > 1, f"{where}: sweeps is {show(listed)}, expected a list "
                                                              f"of two or more {{param, value}} objects")
        sweep = tuple(SweptValue.from_json(item, f"{where}: sweeps[{i}]") for i, item in enumerate(listed))
        params = [s.param for s in sweep]
        require(len(set(params)) == len(params), f"{where}: sweeps names a parameter twice ({', '.join(params)})")
        return sweep

    @classmethod
    def from_json(cls, data: Any, where: str = "record") -> "CaseKey":
        """The key's fields of ``data`` (a record's top level), each checked; the shape's values too."""
        require(isinstance(data, dict), f"{where} is {show(data)}, expected an object")
        for required in ("backend", "batch_spec"):
            require(isinstance(data.get(required), str), f"{where}: {required} is {show(data.get(required))}, "
                                                          f"expected a string")
        require("sweep" not in data, f"{where}: unknown key(s) sweep (a key's swept values are sweep_param/"
                                     f"sweep_value, or sweeps)")
        sweep = cls.sweep_from_json(data, where)
        key = replace(_part(cls, {k: v for k, v in data.items() if k not in cls.SWEEP_JSON}, where), sweep=sweep)
        for name, value in (key.shape or {}).items():
            expected = "a string" if name in _SHAPE_NAMES else "a positive integer"
            ok = isinstance(value, str) if name in _SHAPE_NAMES else \
                isinstance(value, int) and not isinstance(value, bool) and value >= 1
            require(value is None or ok, f"shape.{name} is {show(value)}, expected {expected}")
        from grammar import BatchSpecError, parse_batch_spec  # here: the grammar is pure Python, one floor down

        if key.batch_spec:  # a plain pytest-benchmark entry has none
            try:
                parse_batch_spec(key.batch_spec)
            except BatchSpecError as exc:
                raise RecordError(f"{where}: batch_spec {key.batch_spec!r} is not a batch spec: {exc}") from None
        require(_BACKEND_NAME.fullmatch(key.backend) is not None,
                f"{where}: backend is {show(key.backend)}, expected a backend name (letters, digits, _ and -)")
        return key

    @property
    def dims(self) -> dict[str, Any]:
        """The shape's set dimensions in ``SHAPE_FIELDS`` order (how tables and keys show them)."""
        return {name: self.shape[name] for name in SHAPE_FIELDS if self.shape.get(name) is not None}

    # what the batch is: new tokens, requests, longest query and KV (a spec the grammar rejects raises ValueError);
    # parsed once per key, however often tables sort and group by it
    @functools.cached_property
    def batch_stats(self) -> dict[str, Any]:
        from grammar import get_batch_stats, parse_batch_spec

        return get_batch_stats(parse_batch_spec(self.batch_spec))

    @property
    def total_tokens(self) -> int:
        return int(self.batch_stats["total_tokens"])

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
    def sweep_params(self) -> tuple[str, ...]:
        """The swept parameters' names, in the study's order (empty: not a sweep)."""
        return tuple(s.param for s in self.sweep)

    @property
    def sweep_values(self) -> tuple[int | str, ...]:
        """The swept parameters' values, in the order of ``sweep_params``."""
        return tuple(s.value for s in self.sweep)

    @property
    def sweep_label(self) -> str | None:
        """``num_kv_splits=2 head_dim=64`` (None: not a sweep)."""
        return " ".join(s.label for s in self.sweep) or None

    @property
    def variant(self) -> str | None:
        """What tells this case from its siblings in one table row (the pipeline, or each swept param=value, and
        the timed region when it is not the layer step)."""
        base = self.pipeline if self.pipeline is not None else self.sweep_label
        return " ".join(p for p in (base, topk_label(self.topk_pattern), region_label(self.timed_region)) if p) or None


# Above this spread of a case's rounds (p10 to p90, % of the median) its timing is flagged unstable. Chosen, not
# fitted: a tenth of the median is more than a case's own noise should ever be, and less than the up to 14 % by which
# where the buffers land moves a memory-bound decode on an H100, so a case whose placements fall into two modes is
# flagged.
UNSTABLE_SPREAD_PCT = 10.0


@dataclass(frozen=True)
class TimingSummary:
    """How the device time was taken. The per-round samples themselves live in pytest-benchmark's stats
    (and in ``samples`` when the record travels on its own)."""

    KINDS: ClassVar[dict[str, str]] = {"mode": "str", "calls_per_round": "int", "warmup_rounds": "int",
                                       "stopped_by": "str", "buffer_sets": "int", "working_set_bytes": "int",
                                       "l2_bytes": "int", "capture_error": "str", "estimated_call_s": "number",
                                       "round_target_s": "number", "rounds": "int", "rel_noise": "number",
                                       "rel_stderr": "number", "samples": "numbers", "cache_state": "str",
                                       "time_unit": "str", "placement_rounds": "ints", "placement_medians": "numbers",
                                       "injected_delay_s": "number", "spread_pct": "number", "timer": "str",
                                       "events_median_s": "number"}
    mode: str  # "cuda-graph", "cuda-events", "host" or "none" (not timed)
    calls_per_round: int = 0
    warmup_rounds: int = 0
    stopped_by: str | None = None  # "noise-target" or "repeats"
    buffer_sets: int = 1
    working_set_bytes: int = 0
    l2_bytes: int | None = None
    capture_error: str | None = None
    estimated_call_s: float | None = None
    round_target_s: float | None = None
    rounds: int = 0
    rel_noise: float | None = None
    rel_stderr: float | None = None
    cache_state: str | None = None
    time_unit: str | None = None
    samples: tuple[float, ...] = ()
    # rounds per placement (the buffers re-allocated between them), in sample order; () = one placement
    placement_rounds: tuple[int, ...] = ()
    placement_medians: tuple[float, ...] = ()  # each placement's median round (seconds), in placement order
    injected_delay_s: float | None = None  # --inject-delay's spin per call (testing the gate); None = none
    spread_pct: float | None = None  # the rounds' 10th to 90th percentile in % of their median (None: < 5 rounds)
    timer: str | None = None  # "cupti": the samples are CUPTI's kernel spans; None: the mode's clock (events, host)
    events_median_s: float | None = None  # under "cupti": the CUDA events' median of the same rounds, per call

    @property
    def timer_name(self) -> str:
        return timer_name(self.mode, self.timer)

    @property
    def unstable(self) -> bool:
        """The rounds disagree so much that their median is not one number (``UNSTABLE_SPREAD_PCT``)."""
        return self.spread_pct is not None and self.spread_pct > UNSTABLE_SPREAD_PCT


@dataclass(frozen=True)
class Verification:
    """The correctness gate's verdict and numbers (``verify.compare`` makes it; the record carries it)."""

    KINDS: ClassVar[dict[str, str]] = {"status": "str", "rel_error": "number", "max_abs_error": "number",
                                       "ref_abs_max": "number", "nonfinite": "int", "first_nonfinite": "ints",
                                       "cache_problem": "str", "rel_tol": "number", "abs_tol": "number",
                                       "reason": "str", "first_call_s": "number", "worst_requests": "ints",
                                       "worst_request_rel_errors": "numbers", "after_timing": "object",
                                       "unquantized_rel_error": "number"}
    status: str  # "passed", "failed" or "oracle" (this is the reference)
    rel_error: float | None = None
    max_abs_error: float | None = None
    ref_abs_max: float | None = None
    nonfinite: int = 0
    first_nonfinite: tuple[int, ...] | None = None
    cache_problem: str | None = None
    rel_tol: float | None = None
    abs_tol: float | None = None
    reason: str | None = None
    first_call_s: float | None = None  # host seconds of the first (untimed) call, JIT compilation included
    # per request (index in execution order, relative L2 error), worst first; the tolerance holds for each
    worst_requests: tuple[int, ...] | None = None
    worst_request_rel_errors: tuple[float, ...] | None = None
    # the outputs the last timed round (graph replay) left, checked against the REFERENCE again:
    # {"status", "buffers_checked", "buffers", "rel_error" (worst), "worst_request_rel_error", "reason"?}
    after_timing: Mapping[str, Any] | None = None
    # a quantised KV cache only: the output's relative L2 error against exact attention over the K/V before
    # quantisation, the accuracy cost of the cache format (the gate above compares with the stored values)
    unquantized_rel_error: float | None = None

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "oracle")

    @classmethod
    def oracle(cls) -> "Verification":
        return cls("oracle", reason="REFERENCE is the oracle (tested against a brute-force loop in tests/)")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def summary(self) -> str:
        parts = [f"rel_error={self.rel_error:.3e} (tol {self.rel_tol:.0e})" if self.rel_error is not None else "",
                 f"max_abs_error={self.max_abs_error:.3e} (tol {self.abs_tol:.3e})"
                 if self.max_abs_error is not None else "",
                 f"{self.nonfinite} NaN/inf, first at {self.first_nonfinite}" if self.nonfinite else "",
                 f"cache write: {self.cache_problem}" if self.cache_problem else "",
                 f"worst request #{self.worst_requests[0]}: rel_error={self.worst_request_rel_errors[0]:.3e}"
                 if self.worst_requests and self.worst_request_rel_errors else ""]
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Work:
    """The work model at the median time (``metrics.summarize``)."""

    KINDS: ClassVar[dict[str, str]] = {"attended_pairs": "int", "flops": "int", "bytes": "int",
                                       "projection_flops": "int", "weight_bytes": "int", "tflops": "number",
                                       "gbps": "number", "bound": "str", "pct_of_peak": "number",
                                       "pct_peak_flops": "number", "pct_peak_bandwidth": "number",
                                       "phases": "object", "peaks": "object", "bound_label": "str",
                                       "overlap_floor_s": "number", "sequential_floor_s": "number",
                                       "pct_of_peak_basis": "str", "pct_of_peak_overlap": "number",
                                       "kernel_groups": "object", "timed_region": "str"}
    attended_pairs: int | None = None
    flops: int | None = None
    bytes: int | None = None
    projection_flops: int | None = None
    weight_bytes: int | None = None
    tflops: float | None = None
    gbps: float | None = None
    bound: str | None = None  # of the whole call (the overlap floor's limit)
    pct_of_peak: float | None = None  # the floor named by pct_of_peak_basis over the median, in %
    pct_peak_flops: float | None = None
    pct_peak_bandwidth: float | None = None
    phases: Mapping[str, Any] = field(default_factory=dict)
    peaks: Mapping[str, Any] = field(default_factory=dict)
    bound_label: str | None = None  # "memory" / "compute", per phase when mixed: "decode:mem+prefill:comp"
    overlap_floor_s: float | None = None  # max(F / peak, B / bw) over the whole call
    sequential_floor_s: float | None = None  # the sum of that floor over the kernel groups (>= overlap)
    pct_of_peak_basis: str | None = None  # which floor pct_of_peak uses: "sequential"
    pct_of_peak_overlap: float | None = None  # the overlap floor over the median, in %
    kernel_groups: Mapping[str, Any] = field(default_factory=dict)  # per group: flops, bytes, bound, floor_s
    timed_region: str | None = None  # the region this work models: "layer" or "attention" (None: layer, before it)


@dataclass(frozen=True)
class Memory:
    KINDS: ClassVar[dict[str, str]] = {"peak_allocated_bytes": "int", "kv_and_buffers_bytes": "int",
                                       "free_before_bytes": "int"}
    peak_allocated_bytes: int | None = None
    kv_and_buffers_bytes: int | None = None  # the estimate of KV cache + layer buffers
    free_before_bytes: int | None = None


@dataclass(frozen=True)
class HostSeconds:
    """Where the case's host time went."""

    KINDS: ClassVar[dict[str, str]] = {k: "number" for k in ("setup", "verify", "timing", "profile", "total")}
    setup: float = 0.0
    verify: float = 0.0
    timing: float = 0.0
    profile: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class GpuIdentity:
    KINDS: ClassVar[dict[str, str]] = {"name": "str", "uuid": "str", "worker": "str"}
    index: Any  # the host's index (an int), or the CUDA_VISIBLE_DEVICES entry as given (a UUID)
    name: str | None = None
    uuid: str | None = None
    worker: str | None = None  # the xdist worker id, or None in-process


@dataclass(frozen=True)
class Clocks:
    """NVML readings while the case was timed (``clocks.summarize``): one sample per timed round."""

    KINDS: ClassVar[dict[str, str]] = {
        **{k: "int" for k in ("rounds_sampled", "sm_mhz_min", "sm_mhz_max", "max_sm_mhz", "temp_c_max",
                              "throttled_rounds", "sm_mhz_before", "sm_mhz_after", "temp_c_before", "temp_c_after")},
        **{k: "number" for k in ("sm_mhz_median", "power_w_median", "power_w_max", "power_w_before",
                                 "power_w_after")},
        "throttle_reasons": "strs"}
    rounds_sampled: int
    sm_mhz_min: int | None = None
    sm_mhz_median: float | None = None
    sm_mhz_max: int | None = None
    max_sm_mhz: int | None = None  # the GPU's own maximum SM clock, for scale
    power_w_median: float | None = None
    power_w_max: float | None = None
    temp_c_max: int | None = None
    throttled_rounds: int = 0  # rounds sampled with a power, thermal or hardware slowdown reason set
    throttle_reasons: tuple[str, ...] = ()  # which ones (clocks.THROTTLE_REASONS names)
    sm_mhz_before: int | None = None
    sm_mhz_after: int | None = None
    power_w_before: float | None = None
    power_w_after: float | None = None
    temp_c_before: int | None = None
    temp_c_after: int | None = None

    @property
    def throttled(self) -> bool:
        return self.throttled_rounds > 0

    def note(self) -> str:
        """One line for tables and verdicts: empty when no round ran throttled."""
        if not self.throttled:
            return ""
        return (f"throttled ({', '.join(self.throttle_reasons)}) in {self.throttled_rounds}/{self.rounds_sampled} "
                f"rounds, SM clock {self.sm_mhz_min}-{self.sm_mhz_max} MHz")


_PARTS: dict[str, type] = {"timing": TimingSummary, "verification": Verification, "work": Work,
                           "memory": Memory, "host_seconds": HostSeconds, "gpu": GpuIdentity, "clocks": Clocks}
_FREE = ("backend_info", "kernels", "search")  # what vLLM or a plugin reports, kept as given


@dataclass(frozen=True)
class CaseRecord:
    """One measured case. ``backend_info`` is the kernel path vLLM took (the adapter's description),
    ``kernels`` the profiler's breakdown (when profiled), ``search`` the crossover search's note, ``model`` the
    model the shape's dimensions came from (``--model``, as given; the key's shape holds the dimensions)."""

    key: CaseKey
    timing: TimingSummary
    verification: Verification
    work: Work = field(default_factory=Work)
    backend_info: Mapping[str, Any] = field(default_factory=dict)
    kernels: Mapping[str, Any] | None = None
    memory: Memory | None = None
    host_seconds: HostSeconds | None = None
    gpu: GpuIdentity | None = None
    search: Mapping[str, Any] | None = None
    clocks: Clocks | None = None
    model: str | None = None

    @property
    def verified(self) -> bool:
        return self.verification.passed

    @property
    def samples(self) -> tuple[float, ...]:
        return self.timing.samples

    def to_json(self, *, include_samples: bool = True) -> dict[str, Any]:
        """Plain JSON: the key's fields at the top level (as pytest-benchmark users read ``extra_info``),
        each part under its own name, ``schema`` and ``verified`` beside them."""
        out: dict[str, Any] = {"schema": SCHEMA, **self.key.to_json()}
        out["verified"] = self.verified
        for name in _PARTS:
            part = _plain(getattr(self, name))
            if part is not None:
                out[name] = part
        if not include_samples:
            out["timing"].pop("samples", None)
        if not out["timing"].get("placement_rounds"):  # one placement: the record reads as before placements
            out["timing"].pop("placement_rounds", None)
            out["timing"].pop("placement_medians", None)
        for name in _FREE:
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value)
        if self.model is not None:
            out["model"] = self.model
        return out

    @classmethod
    def from_json(cls, data: Any, samples: Any = None) -> "CaseRecord":
        """The record ``to_json`` wrote; ``samples`` (pytest-benchmark's ``stats.data``) fill in the timing's."""
        require(isinstance(data, dict), f"record is {show(data)}, expected an object")
        require(data.get("schema") == SCHEMA, f"record schema is {show(data.get('schema'))}, expected {SCHEMA}")
        for required in ("backend", "batch_spec", "timing", "verification"):
            require(required in data, f"record has no {required!r}")
        key_names = {f.name for f in fields(CaseKey)} - {"sweep"} | set(CaseKey.SWEEP_JSON)
        known = key_names | set(_PARTS) | set(_FREE) | {"schema", "verified", "model"}
        unknown = sorted(set(data) - known)
        require(not unknown, f"record: unknown key(s) {', '.join(map(str, unknown))}")
        key = CaseKey.from_json({k: v for k, v in data.items() if k in key_names})
        parts = {name: _part(kind, data.get(name), name) for name, kind in _PARTS.items()}
        if samples is not None:
            timing = dict(data["timing"], samples=samples)
            parts["timing"] = _part(TimingSummary, timing, "timing")
        for name in _FREE:
            require(data.get(name) is None or isinstance(data[name], dict), f"{name} is {show(data.get(name))}, "
                                                                              f"expected an object")
        model = data.get("model")
        require(model is None or (isinstance(model, str) and model), f"model is {show(model)}, expected a name")
        return cls(key=key, timing=parts["timing"], verification=parts["verification"],
                   work=parts["work"] or Work(), backend_info=data.get("backend_info") or {},
                   kernels=data.get("kernels"), memory=parts["memory"], host_seconds=parts["host_seconds"],
                   gpu=parts["gpu"], search=data.get("search"), clocks=parts["clocks"], model=model)
