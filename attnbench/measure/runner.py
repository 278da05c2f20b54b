"""Run one case end to end: adapter -> correctness gate -> timer -> metrics.

Both the pytest benchmarks and the upstream-compatible Python API (api.py) call ``execute``; there
is one measurement, not two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from attnbench.measure import buffers, clocks, hardware, kernel_activity, timing
from attnbench.spec import metrics
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import CaseAdapter, LayerCall, SkipCase, load_adapter
from attnbench.results.record import CaseRecord, Clocks, GpuIdentity, HostSeconds, Memory, TimingSummary, Work
from attnbench.measure.verify import Verification, compare
from attnbench.spec.workload import layout_size, resolve_device


@dataclass
class CaseResult:
    """A measured case as the runner holds it (live objects); ``record()`` is what leaves the runner."""

    case: BenchCase
    timing: timing.Timing
    verification: Verification
    work: Work  # the work model at the median (``metrics.summarize``)
    info: dict[str, Any]
    memory: dict[str, Any] = field(default_factory=dict)
    host_seconds: dict[str, float] = field(default_factory=dict)  # setup, verify, timing, profile, total
    gpu: dict[str, Any] | None = None  # the physical GPU that timed it (index, name, UUID, worker)
    clocks: Clocks | None = None  # NVML readings while it was timed
    kernels: dict[str, Any] | None = None  # the profiler's pass (``timing.kernel_breakdown``), when asked for

    @property
    def seconds(self) -> float:
        return self.timing.median

    def record(self) -> CaseRecord:
        """The one typed record of this case."""
        t = self.timing
        unit = "host" if t.mode == "host" else "device"
        timing_part = TimingSummary(**t.info(), time_unit=f"{unit} seconds per attention call (one layer)",
                                    samples=tuple(t.samples))
        return CaseRecord(
            key=self.case.key(), timing=timing_part, verification=self.verification,
            work=self.work, backend_info=dict(self.info), kernels=self.kernels,
            memory=Memory(**self.memory) if self.memory else None,
            host_seconds=HostSeconds(**self.host_seconds) if self.host_seconds else None,
            gpu=GpuIdentity(**self.gpu) if self.gpu else None, clocks=self.clocks, model=self.case.model)

    def extra_info(self) -> dict[str, Any]:
        """pytest-benchmark's ``extra_info``: the record, its samples left to pytest-benchmark's stats."""
        return self.record().to_json(include_samples=False)


def execute(case: BenchCase, *, time_it: bool = True) -> CaseResult:
    """Build the case's layers through its adapter, verify, time and measure it."""
    reason = hardware.skip_reason(case.backend, torch.device(case.run.device)) or case.unsupported_sweep
    if reason:
        raise SkipCase(reason)
    device = resolve_device(case.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    failure: Exception | None = None
    started = time.perf_counter()
    try:
        result = _execute(case, device, time_it)
        result.host_seconds["total"] = time.perf_counter() - started
        return result
    except (SkipCase, VerificationFailed) as exc:
        failure = exc.with_traceback(None)  # its message says it all; its frames hold the case's buffers
    except Exception as exc:  # noqa: BLE001 - re-raised below without the frames that hold the buffers
        failure = CaseFailed(f"{case.backend.name} {case.batch_spec}: {type(exc).__name__}: {_first_line(exc)}\n"
                             + "".join(traceback.format_exception(exc)[-6:]))
    if device.type == "cuda":
        # A failed case's tensors lived on in its traceback frames; collecting them and emptying the
        # cache keeps one failure (an OOM, say) from failing every case after it. A passing case frees
        # its buffers when the adapter closes, so it skips the full gc (host time for nothing).
        try:
            gc.collect()
            torch.cuda.empty_cache()
        except Exception as cleanup:  # noqa: BLE001 - a sticky CUDA error fails this too; keep the case's own error
            failure.add_note(f"cleanup after the failure failed too: {type(cleanup).__name__}: "
                             f"{str(cleanup).splitlines()[0] if str(cleanup) else ''}")
    raise failure


def _first_line(exc: BaseException) -> str:
    """The error's first line, or where it was raised when it has no message (a bare ``assert`` in vLLM)."""
    if str(exc):
        return str(exc).splitlines()[0]
    frames = traceback.extract_tb(exc.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""


class CaseFailed(RuntimeError):
    """A case raised inside vLLM or the harness; the message carries the original error and its tail."""


class VerificationFailed(AssertionError):
    """The backend's output does not match the REFERENCE."""


def _execute(case: BenchCase, device: torch.device, time_it: bool) -> CaseResult:
    clock = _PhaseClock()
    _check_memory_before_layout(case, device)
    adapter = load_adapter(case)
    try:
        shape = case.effective_shape
        l2 = timing.l2_bytes(device)
        sets = timing.buffer_sets_needed(shape.num_layers * adapter.bytes_per_layer, l2, case.run.cache_state)
        n_buffers = shape.num_layers * sets
        memory = _check_memory(adapter, n_buffers, device, case.run.profile_memory)
        layers = [adapter.make_layer(i) for i in range(n_buffers)]
        clock.lap("setup")
        rows = [r.q_len for r in adapter.requests]  # the output's rows, request by request, in execution order
        with adapter.context():
            started = time.perf_counter()
            for layer in layers:
                layer.prepare()  # the attention region's cache write; nothing for the layer step
            verification, expected, first_output = _verify(layers[0], case, rows, time.perf_counter() - started)
        clock.lap("verify")
        if not verification.passed:
            raise VerificationFailed(f"{case.backend.name} {case.batch_spec}: output does not match REFERENCE: "
                                 f"{verification.summary()}")
        if time_it:
            t, verification, clock_part, layers = _time_placements(layers, adapter, case, device, sets, expected,
                                                                   rows, verification, clock, first_output)
        else:
            t = timing.Timing([], "none", 0, 0, "not-timed", case.run.cache_state, sets,
                              n_buffers * adapter.bytes_per_layer, l2)
            clock_part = None
            clock.lap("timing")
        kernels = None
        if device.type == "cuda" and case.run.kernel_profile:
            kernels = timing.kernel_breakdown([layer.run for layer in layers], device, context=adapter.context)
        clock.lap("profile")
        if memory and device.type == "cuda":
            memory["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        peaks = hardware.device_peaks(device)
        work = metrics.summarize(adapter.requests, shape, t.median if t.samples else 0.0, peaks, adapter.mla_paths,
                                 attention_paths=adapter.attention_paths, timed_region=case.timed_region,
                                 quantized_query=adapter.quantized_query,
                                 sparse=adapter.sparse_selections)
        if kernels is not None and t.samples and kernels["kernel_sum_s"]:
            # graph replay time over the sum of the kernels' own durations: ~1 means kernel time
            kernels["timed_over_kernel_sum"] = t.median / kernels["kernel_sum_s"]
        return CaseResult(case, t, verification, work, dict(adapter.info), memory, host_seconds=clock.laps,
                          gpu=hardware.gpu_identity(device), clocks=clock_part, kernels=kernels)
    finally:
        adapter.close()


def _time_placements(layers: list[LayerCall], adapter: CaseAdapter, case: BenchCase, device: torch.device,
                     sets: int, expected: torch.Tensor | None, rows: list[int], verification: Verification,
                     clock: "_PhaseClock", first_output: torch.Tensor | None = None
                     ) -> tuple[timing.Timing, Verification, Clocks | None, list[LayerCall]]:
    """Time the case on ``case.run.placements`` allocations of its buffers, checking each one's output after its
    rounds: the same seeded data at other addresses, so the spread of the rounds covers where the buffers land."""
    placements = min(case.run.placements, case.run.repeats)  # at least one round each, --repeats at most in all
    share, extra = divmod(case.run.repeats, placements)
    min_rounds = max(2, math.ceil(case.run.min_rounds / placements)) if placements > 1 else case.run.min_rounds
    monitor = clocks.monitor_for(device) if device.type == "cuda" else None
    before = monitor.sample() if monitor else None
    groups: list[timing.Timing] = []
    oracles: dict[int, torch.Tensor] = {} if expected is None else {0: expected}
    delay_s: float | None = None
    # --timer cupti: one collector for the case, so that its reference round holds every placement to the same work
    with kernel_activity.Collector() if case.run.timer == "cupti" else contextlib.nullcontext() as cupti:
        for group in range(placements):
            spacer = None
            if group:
                count = len(layers)
                layers.clear()  # the last placement's buffers go before the next is allocated
                layers, spacer = _reallocate(adapter, count, device, case.run.seed, group)
            t = timing.measure([layer.run for layer in layers], device=device, repeats=share + (group < extra),
                               warmup_iters=case.run.warmup_iters if group == 0 else min(case.run.warmup_iters, 2),
                               min_rounds=min_rounds, noise_target=case.run.noise_target,
                               cache_state=case.run.cache_state, buffer_sets=sets,
                               working_set_bytes=len(layers) * adapter.bytes_per_layer, context=adapter.context,
                               sample=monitor.sample if monitor else None,
                               delay_fraction=case.run.inject_delay, delay_s=delay_s, cupti=cupti)
            delay_s = t.injected_delay_s
            groups.append(t)
            clock.lap("timing")
            if expected is not None:
                with adapter.context():  # oracles of buffer sets other than 0 may run vLLM code (kv_b_proj)
                    verification = _verify_after_timing(layers, oracles, case, rows, verification, group,
                                                        first_output)
                clock.lap("verify")
                if verification.after_timing["status"] != "passed":
                    raise VerificationFailed(f"{case.backend.name} {case.batch_spec}: the last timed round's output "
                                             f"does not match REFERENCE: {verification.after_timing['reason']}")
            del spacer
    t = timing.Timing.pooled(groups)
    part = clocks.summarize(before, t.round_samples, monitor.sample(), monitor.max_sm_mhz) if monitor else None
    return t, verification, part, layers


# The spacer held while a placement's buffers are allocated: a different size each time, so the buffers land at
# other addresses (and, after empty_cache, on other physical pages) than the placement before.
_SPACER_STEP_BYTES = 2**20 + 2**16


def _reallocate(adapter: CaseAdapter, count: int, device: torch.device, seed: int, group: int
                ) -> tuple[list[LayerCall], Any]:
    """The case's layer buffers built again (same seeds, so the same data and the same expected outputs). No full
    gc here: with vLLM loaded one costs ~0.5 s, and the last placement's buffers hold no reference cycle."""
    spacer = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        size = _SPACER_STEP_BYTES * (1 + (seed * 31 + group * 97) % 61)
        spacer = torch.empty(size, dtype=torch.uint8, device=device)
    layers = [adapter.make_layer(i) for i in range(count)]
    with adapter.context():
        for layer in layers:
            layer.prepare()
    return layers, spacer


class _PhaseClock:
    """Host seconds per phase of one case (where a study's wall time goes)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = self.laps.get(phase, 0.0) + now - self._last
        self._last = now


def _verify(layer: LayerCall, case: BenchCase, rows: list[int], prepare_s: float
            ) -> tuple[Verification, torch.Tensor | None, torch.Tensor | None]:
    """The eager gate on layer buffer 0, the REFERENCE output it used and the call's own output (both kept for the
    check after timing)."""
    if case.backend.is_reference:
        return Verification.oracle(), None, None
    start = time.perf_counter()
    layer.run()  # the first call: JIT compilation (FlashInfer, Triton) and autotuning happen here, untimed
    output = layer.result()
    if output.is_cuda:
        torch.cuda.synchronize(output.device)
    first_call_s = time.perf_counter() - start + prepare_s  # the attention region's JIT runs in prepare
    cache_problem = layer.check_cache()
    expected = layer.oracle()
    shape = case.effective_shape
    verification = compare(output, expected, cache_problem=cache_problem, dtype=shape.dtype,
                           kv_cache_dtype=shape.kv_cache_dtype, first_call_s=first_call_s, request_rows=rows)
    if layer.unquantized_oracle is not None:  # a quantised cache: what quantising it costs in accuracy
        cost = compare(output, layer.unquantized_oracle(), dtype=shape.dtype).rel_error
        verification = dataclasses.replace(verification, unquantized_rel_error=cost)
    # kept for comparing the timed output with it exactly, where that costs no memory a large case needs
    kept = output.clone() if output.numel() * output.element_size() <= buffers.FIRST_OUTPUT_KEPT_BYTES else None
    return verification, expected, kept


# The check after timing recomputes the REFERENCE of every buffer set but the first while this stays small:
# attended pairs x heads summed over the sets (2**34 is ~10^10, seconds of float32 math on a GPU), and
# requests summed over the sets (the oracle loops over requests in Python).
AFTER_TIMING_PAIR_BUDGET = 2**34
AFTER_TIMING_REQUEST_BUDGET = 1024


def sets_to_check_after_timing(case: BenchCase, n_buffers: int) -> int:
    """How many layer buffers (from 0) the check after timing covers: all where affordable, else buffer 0."""
    requests = case.requests
    pairs = sum(metrics.attended_pairs(r.q_len, r.kv_len) for r in requests) * case.effective_shape.num_q_heads
    affordable = min(AFTER_TIMING_PAIR_BUDGET // max(1, pairs), AFTER_TIMING_REQUEST_BUDGET // max(1, len(requests)))
    return max(1, min(n_buffers, affordable))


def _agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    """Whether two outputs are bit for bit the same, and their largest difference (inf where a NaN differs), taken
    over row chunks of at most 64 MiB of float32 so that a large output needs no full-size float copies."""
    if torch.equal(a, b):
        return True, 0.0
    rows = max(1, (16 * 2**20) // max(1, a[0].numel()))  # 16 Mi elements: 64 MiB per float32 chunk
    worst = 0.0
    for start in range(0, a.shape[0], rows):
        part = (a[start:start + rows].float() - b[start:start + rows].float()).abs().nan_to_num(nan=float("inf"))
        worst = max(worst, float(part.max()))
    return False, worst


def _rerun_agreement(layer: LayerCall, first_output: torch.Tensor | None) -> dict[str, Any]:
    """Whether the output the last timed round left (a graph replay's, under the graph timer) is exactly the first,
    eagerly verified call's, and whether one more eager call gives it again: a kernel whose result moves between
    identical calls (atomics, a race) or between eager and replay is shown, not failed, since both passed the
    REFERENCE. Buffer 0 of the first placement only: one call and two comparisons per case (later placements carry
    the answers)."""
    replayed = layer.result().clone()
    out: dict[str, Any] = {"timed_identical_to_first_call": None, "timed_first_call_max_abs_diff": None}
    if first_output is not None:  # None: an output over buffers.FIRST_OUTPUT_KEPT_BYTES, not kept
        out["timed_identical_to_first_call"], out["timed_first_call_max_abs_diff"] = _agreement(replayed, first_output)
    layer.run()
    out["rerun_identical"], out["rerun_max_abs_diff"] = _agreement(replayed, layer.result())
    return out


def _verify_after_timing(layers: list[LayerCall], oracles: dict[int, torch.Tensor], case: BenchCase, rows: list[int],
                         eager: Verification, placement: int = 0, first_output: torch.Tensor | None = None
                         ) -> Verification:
    """Check the outputs the last timed round (the graph's last replay) left against the REFERENCE: the replay
    computes what was verified eagerly. ``oracles`` holds each buffer's REFERENCE output once computed (buffer 0's
    is the eager check's): every placement holds the same data, so later placements only compare."""
    checked = sets_to_check_after_timing(case, len(layers))
    dtype, kv_cache_dtype = case.effective_shape.dtype, case.effective_shape.kv_cache_dtype
    worst: Verification | None = None
    failed: tuple[int, Verification] | None = None
    for index in range(checked):
        layer = layers[index]
        output = layer.result()
        if index not in oracles:
            oracles[index] = layer.oracle()
        v = compare(output, oracles[index], dtype=dtype, kv_cache_dtype=kv_cache_dtype, request_rows=rows)
        if worst is None or v.rel_error > worst.rel_error:
            worst = v
        if not v.passed and failed is None:
            failed = (index, v)
    assert worst is not None
    after: dict[str, Any] = {"status": "passed" if failed is None else "failed", "buffers_checked": checked,
                             "buffers": len(layers), "rel_error": worst.rel_error,
                             "worst_request_rel_error": (worst.worst_request_rel_errors or (None,))[0]}
    if placement == 0:
        after.update(_rerun_agreement(layers[0], first_output))
    else:
        after.update({k: v for k, v in (eager.after_timing or {}).items() if k.startswith(("rerun_", "timed_"))})
    if placement:
        after["placements_checked"] = placement + 1
    if failed is not None:
        after["reason"] = f"placement {placement}, layer buffer {failed[0]}: {failed[1].summary()}"
    return dataclasses.replace(eager, after_timing=after)


def _check_memory_before_layout(case: BenchCase, device: torch.device) -> None:
    """Skip, with the numbers, a case that cannot fit even before its adapter builds anything: the block table
    of ``q1s1000000k`` alone is 64 M blocks of host memory. A lower bound (every layer's buffers once, no
    oracle or backend workspace): the adapter's own estimate (``_check_memory``) still follows."""
    shape = case.effective_shape
    size = layout_size(case.requests, shape.block_size)
    per_layer = (buffers.attention_buffer_bytes if case.family == "attention" else buffers.mla_buffer_bytes)(
        size, shape)  # type: ignore[arg-type]
    need = shape.num_layers * per_layer
    host = hardware.host_available_bytes()
    if device.type != "cuda":
        need += size.host_bytes
        if host is not None and need > 0.9 * host:
            raise SkipCase(f"needs at least ~{need / 2**30:.1f} GiB for {shape.num_layers} layer buffers and the "
                           f"block table ({size.num_blocks} blocks), {host / 2**30:.1f} GiB available on the host")
        return
    if host is not None and size.host_bytes > 0.9 * host:
        raise SkipCase(f"its block table ({size.num_blocks} blocks) needs ~{size.host_bytes / 2**30:.1f} GiB of host "
                       f"memory to build, {host / 2**30:.1f} GiB available")
    free, total = torch.cuda.mem_get_info(device)
    if need > 0.9 * free:
        raise SkipCase(f"needs at least ~{need / 2**30:.1f} GiB for {shape.num_layers} layer buffers, "
                       f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")


def _check_memory(adapter: CaseAdapter, n_buffers: int, device: torch.device, profile: bool) -> dict[str, Any]:
    """Skip, with the numbers, a case whose buffers would not fit; record the estimate when profiling."""
    need = adapter.estimate_bytes(n_buffers)
    if device.type != "cuda":  # the host's memory bounds a CPU case just as the GPU's bounds a GPU case
        available = hardware.host_available_bytes()
        if available is not None and need > 0.9 * available:
            raise SkipCase(f"needs ~{need / 2**30:.1f} GiB for {n_buffers} layer buffers, "
                           f"{available / 2**30:.1f} GiB available on the host")
        return {"kv_and_buffers_bytes": need} if profile else {}
    free, total = torch.cuda.mem_get_info(device)
    if need > 0.9 * free:
        raise SkipCase(f"needs ~{need / 2**30:.1f} GiB for {n_buffers} layer buffers, "
                       f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
    if profile:
        torch.cuda.reset_peak_memory_stats(device)
        return {"kv_and_buffers_bytes": need, "free_before_bytes": int(free)}
    return {}
