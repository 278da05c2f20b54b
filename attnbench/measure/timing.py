"""One timing utility for every backend: device seconds per attention call.

On a GPU the steps of one round (every layer buffer set, back to back, as a model
runs its layers) are captured once in a CUDA graph and replayed; CUDA events around
each replay give device time, so host launch overhead is not counted as kernel
time. If capture fails the same loop runs eagerly between events, and the mode says
so. Cold L2 (the default) means a round rotates over enough independent buffer sets
that its working set is at least ``COLD_FACTOR`` x the device's L2, so no call finds
its inputs left in L2 by the previous one. On the CPU the host clock is used.

Rounds stop at ``repeats`` or, after ``min_rounds``, once the mean's relative
standard error falls under ``noise_target`` (nvbench-style noise-targeted stopping).

A case is timed over several placements (``pooled``): the runner re-allocates its buffers between groups of
rounds, because where the buffers land in device memory moves a case's time by up to ~1 % on an H100 (more
than the spread of the rounds on one allocation), and a number taken on one placement would carry that offset
into every comparison between two processes. ``placement_rounds`` says which rounds came from which placement.

``cupti`` (``--timer cupti``: a ``kernel_activity.Collector``, one per case) takes each round's time from CUPTI's
records instead of the CUDA events: first activity's start to last one's end, failing closed; the events still
run, and their median is kept beside it (``events_median_s``) so that the two timers reconcile on every case.

``delay_fraction``/``delay_s`` (``--inject-delay``) add a fixed spin after every call inside the timed region:
it exists to test the regression gate against a known slowdown, and the record says so.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch

from attnbench.measure import kernel_activity

COLD_FACTOR = 3
# A round (one graph replay) is sized to about this much device time: long enough that the graph
# launch (a few µs) is noise for a 20 µs decode, short enough that a 20 ms prefill runs one call.
ROUND_TARGET_S = 1e-3
MAX_CALLS_PER_ROUND = 256
WARMUP_TARGET_S = 0.05  # warm-up rounds stop after about this much device time (at least one round)

Step = Callable[[], Any]


@dataclass
class Timing:
    samples: list[float]  # seconds per attention call (one layer), one sample per round
    mode: str  # "cuda-graph", "cuda-events" or "host"
    calls_per_round: int
    warmup_rounds: int
    stopped_by: str  # "noise-target" or "repeats"
    cache_state: str
    buffer_sets: int
    working_set_bytes: int
    l2_bytes: int | None
    capture_error: str | None = None
    estimated_call_s: float | None = None  # one eager call, measured before sizing the round
    round_target_s: float | None = None  # the round duration calls_per_round was chosen for
    # what ``sample`` returned in each timed round (NVML clocks), taken while the round ran; not in info()
    round_samples: list[Any] = field(default_factory=list, repr=False)
    # the rounds of each placement (buffers re-allocated between them), in sample order; () = one placement
    placement_rounds: tuple[int, ...] = ()
    # each placement's median round, in placement order: what the verdicts compare, kept in the record because
    # pytest-benchmark's storage drops the rounds themselves unless --benchmark-save-data is given
    placement_medians: tuple[float, ...] = ()
    injected_delay_s: float | None = None  # the test-only spin added to every call (--inject-delay); None: none
    timer: str | None = None  # "cupti": CUPTI's kernel span; None: the mode's own clock (CUDA events, or the host's)
    # under --timer cupti, the CUDA events' time of the same rounds (per call), for reconciling the two; not in info()
    event_samples: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def pooled(cls, groups: Sequence["Timing"]) -> "Timing":
        """One case's timing over several placements: the rounds of every group, in order."""
        first = groups[0]
        stopped = {g.stopped_by for g in groups}
        return dataclasses.replace(
            first, samples=[s for g in groups for s in g.samples],
            warmup_rounds=sum(g.warmup_rounds for g in groups),
            stopped_by=stopped.pop() if len(stopped) == 1 else "repeats",
            capture_error=next((g.capture_error for g in groups if g.capture_error), None),
            round_samples=[r for g in groups for r in g.round_samples],
            event_samples=[e for g in groups for e in g.event_samples],
            placement_rounds=tuple(len(g.samples) for g in groups) if len(groups) > 1 else (),
            placement_medians=tuple(statistics.median(g.samples) for g in groups) if len(groups) > 1 else ())

    @property
    def rounds(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def rel_noise(self) -> float:
        """Relative standard deviation of the samples (stddev / mean)."""
        if len(self.samples) < 2:
            return 0.0
        return statistics.stdev(self.samples) / self.mean

    @property
    def rel_stderr(self) -> float:
        return self.rel_noise / math.sqrt(len(self.samples)) if self.samples else float("inf")

    @property
    def spread_pct(self) -> float | None:
        """How far the rounds spread: their 10th to 90th percentile, in % of their median (None: under 5 rounds)."""
        if len(self.samples) < 5:
            return None
        deciles = statistics.quantiles(self.samples, n=10)
        return 100 * (deciles[8] - deciles[0]) / self.median

    def info(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("samples", "round_samples", "event_samples")}
        timed = bool(self.samples)  # an untimed case has no spread (rel_stderr would be inf)
        out.update(rounds=self.rounds, rel_noise=self.rel_noise if timed else None,
                   rel_stderr=self.rel_stderr if timed else None, spread_pct=self.spread_pct,
                   events_median_s=statistics.median(self.event_samples) if self.event_samples else None)
        return out


def l2_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def buffer_sets_needed(bytes_per_set: int, l2: int | None, cache_state: str) -> int:
    """How many independent buffer sets make one round's working set >= COLD_FACTOR x L2."""
    if cache_state == "warm" or not l2 or bytes_per_set <= 0:
        return 1
    return max(1, math.ceil(COLD_FACTOR * l2 / bytes_per_set))


def should_stop(samples: Sequence[float], min_rounds: int, noise_target: float) -> bool:
    if noise_target <= 0 or len(samples) < max(2, min_rounds):
        return False
    mean = statistics.fmean(samples)
    return mean > 0 and statistics.stdev(samples) / mean / math.sqrt(len(samples)) <= noise_target


def measure(steps: Sequence[Step], *, device: torch.device, repeats: int, warmup_iters: int,
            min_rounds: int = 10, noise_target: float = 0.0, cache_state: str = "cold",
            buffer_sets: int = 1, working_set_bytes: int = 0, use_graph: bool = True,
            context: Callable[[], ContextManager[Any]] = nullcontext,
            sample: Callable[[], Any] | None = None, delay_fraction: float = 0.0,
            delay_s: float | None = None, cupti: kernel_activity.Collector | None = None) -> Timing:
    """Time ``steps`` (each one attention call) and return seconds per call, per round.

    ``context`` is entered around all host-side calls (e.g. vLLM's forward context); graph
    replays run no Python and need none. ``sample`` (the GPU's clocks) is called once per timed
    round while the round runs on the device; its results are ``Timing.round_samples``.
    ``delay_s`` (or, when None, ``delay_fraction`` x the call's own time) is spun after every call.
    ``cupti``: time the rounds by CUPTI's records (an entered collector; a GPU only), else by CUDA events.
    """
    if not steps:
        raise ValueError("nothing to time")
    if cupti is not None and device.type != "cuda":
        raise ValueError(f"--timer cupti times GPU kernels, and the device is {device}")
    common = dict(cache_state=cache_state, buffer_sets=buffer_sets, working_set_bytes=working_set_bytes,
                  l2_bytes=l2_bytes(device))
    with context():
        if device.type != "cuda":
            # one thread: on a CPU shared with other work (xdist workers, CI) torch's thread pool waits for a busy
            # core, and a round swings 100x (seen: 0.35 ms and 40 ms for one case in one run on 2 cores)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return _measure_host(list(steps), repeats, warmup_iters, min_rounds, noise_target, common,
                                     delay_fraction, delay_s)
            finally:
                torch.set_num_threads(threads)
        return _measure_cuda(list(steps), device, repeats, warmup_iters, min_rounds, noise_target, use_graph,
                             common, sample, delay_fraction, delay_s, cupti)


def calls_for_round(rotation_s: float, steps: int, target_s: float = ROUND_TARGET_S) -> int:
    """Whole rotations over the buffer sets whose device time is about ``target_s``."""
    rotations = math.ceil(target_s / rotation_s) if rotation_s > 0 else 1
    return steps * max(1, min(rotations, max(1, MAX_CALLS_PER_ROUND // steps)))


def warmup_rounds_for(round_s: float, warmup_iters: int, target_s: float = WARMUP_TARGET_S) -> int:
    """At most ``warmup_iters`` untimed rounds, fewer when each is long (at least one)."""
    if warmup_iters <= 0:
        return 0
    return max(1, min(warmup_iters, math.ceil(target_s / round_s) if round_s > 0 else warmup_iters))


def _run_rounds(one_round: Callable[[], float], repeats: int, warmup: int, min_rounds: int,
                noise_target: float) -> tuple[list[float], str]:
    for _ in range(warmup):
        one_round()
    samples: list[float] = []
    while len(samples) < repeats:
        samples.append(one_round())
        if should_stop(samples, min_rounds, noise_target):
            return samples, "noise-target"
    return samples, "repeats"


def _measure_host(steps: list[Step], repeats: int, warmup: int, min_rounds: int, noise_target: float,
                  common: dict[str, Any], delay_fraction: float = 0.0, delay_s: float | None = None) -> Timing:
    spin_s = 0.0

    def one_round() -> float:
        start = time.perf_counter()
        for step in steps:
            step()
            if spin_s:
                until = time.perf_counter() + spin_s
                while time.perf_counter() < until:
                    pass
        return (time.perf_counter() - start) / len(steps)

    one_round()  # first call pays lazy initialisation; never a sample
    if delay_s is None and delay_fraction > 0:
        delay_s = delay_fraction * statistics.median(one_round() for _ in range(3))
    spin_s = delay_s or 0.0
    samples, stopped = _run_rounds(one_round, repeats, warmup, min_rounds, noise_target)
    return Timing(samples, "host", len(steps), warmup, stopped, injected_delay_s=delay_s or None, **common)


def _measure_cuda(steps: list[Step], device: torch.device, repeats: int, warmup: int, min_rounds: int,
                  noise_target: float, use_graph: bool, common: dict[str, Any],
                  sample: Callable[[], Any] | None = None, delay_fraction: float = 0.0,
                  delay_s: float | None = None, cupti: kernel_activity.Collector | None = None) -> Timing:
    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for step in steps:  # eager warm-up on the capture stream: JIT, autotuning, workspace allocation
                step()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for step in steps:  # one eager rotation sizes the round (an upper bound: it has launch gaps)
                step()
            end.record(stream)
        end.synchronize()
        torch.cuda.current_stream(device).wait_stream(stream)
        rotation_s = start.elapsed_time(end) / 1e3
        calls = calls_for_round(rotation_s, len(steps))
        inner = calls // len(steps)

        spin: list[Step] = []

        def body() -> None:
            for _ in range(inner):
                for step in steps:
                    step()
                    for extra in spin:
                        extra()

        def capture() -> tuple[Any, str | None]:
            if not use_graph:
                return None, None
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    body()
                torch.cuda.synchronize(device)
                return graph, None
            except Exception as exc:  # capture is not supported by every kernel path; fall back, and say so
                torch.cuda.synchronize(device)
                return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

        graph, capture_error = capture()
        run = graph.replay if graph is not None else body
        mode = "cuda-graph" if graph is not None else "cuda-events"
        if delay_fraction > 0 or delay_s:
            run()
            plain_s = statistics.median(_replay_seconds(run) for _ in range(5)) / calls
            if delay_s is None:  # the fraction of this case's own time, as the plain graph runs it
                delay_s = delay_fraction * plain_s
            cycles = delay_s * _spin_cycles_per_s()
            for _ in range(2):  # closed loop: the spin counts SM cycles, and the clock it runs at may have moved
                spin[:] = [_spin_step(cycles)]
                graph, capture_error = capture()
                run = graph.replay if graph is not None else body
                run()
                added = statistics.median(_replay_seconds(run) for _ in range(5)) / calls - plain_s
                if added <= 0 or abs(added / delay_s - 1) < 0.05:
                    break
                cycles *= delay_s / added

        readings: list[Any] = []
        event_samples: list[float] = []

        def events_round() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            if sample is not None:
                readings.append(sample())  # the replay is queued: this reads the clocks while it runs
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / calls

        def cupti_round() -> float:
            assert cupti is not None
            return cupti.time_round(lambda: event_samples.append(events_round())) / calls

        one_round = events_round if cupti is None else cupti_round
        if cupti is not None and cupti.expected is None:
            one_round()  # the case's reference round: it fixes what every later round must launch
            del readings[:], event_samples[:]
        warmup = warmup_rounds_for(rotation_s * inner, warmup)
        samples, stopped = _run_rounds(one_round, repeats, warmup, min_rounds, noise_target)
    return Timing(samples, mode, calls, warmup, stopped, capture_error=capture_error,
                  estimated_call_s=rotation_s / len(steps), round_target_s=ROUND_TARGET_S,
                  round_samples=readings[warmup:], injected_delay_s=delay_s or None,
                  timer="cupti" if cupti is not None else None, event_samples=event_samples[warmup:],
                  **common)  # the timed rounds' readings only


def _replay_seconds(run: Callable[[], Any]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _spin_cycles_per_s() -> float:
    """SM cycles per second of ``torch.cuda._sleep`` now (its loop counts clock64 ticks)."""
    probe = 1 << 20
    torch.cuda._sleep(probe)
    return probe / statistics.median(_replay_seconds(lambda: torch.cuda._sleep(probe)) for _ in range(5))


def _spin_step(cycles: float) -> Step:
    """A GPU spin of ``cycles`` SM cycles (the injected delay)."""
    count = max(1, int(cycles))
    return lambda: torch.cuda._sleep(count)


# Kernel names by role, for the attention kernel's share of a step (matched case-insensitively).
KERNEL_ROLES = (
    ("cache_write", ("reshape_and_cache", "concat_and_cache", "cache_kernel", "index_copy", "scatter")),
    ("gemm", ("gemm", "bmm", "nvjet", "xmma", "cutlass_80", "sm90_xmma", "cublas", "matmul")),
    # data movement around attention that name-matching below would otherwise count as attention
    ("other", ("concatmlak", "prepare_varlen_num_blocks", "elementwise", "copy_kernel")),
    ("attention", ("flash", "fmha", "mla", "attn", "attention", "decode", "prefill", "softmax", "merge_attn",
                   "_fwd_grouped_kernel", "_fwd_kernel_stage", "reduce_segments", "unified_attention")),
)


def kernel_role(name: str) -> str:
    low = name.lower()
    for role, needles in KERNEL_ROLES:
        if any(n in low for n in needles):
            return role
    return "other"


def kernel_breakdown(steps: Sequence[Step], device: torch.device,
                     context: Callable[[], ContextManager[Any]] = nullcontext) -> dict[str, Any]:
    """Device time per kernel for one attention call, from torch.profiler (CUPTI) over eager calls.

    One eager round over every buffer set (the same rotation, so the same cache state, as a timed
    round). Kernel durations are device-side, without launch gaps: their sum per call is the kernel
    time the graph-mode median should match, and the roles give the attention kernel's share.
    """
    from torch.profiler import ProfilerActivity, profile

    calls = len(steps)
    with context():
        for step in steps:
            step()
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for step in steps:
                step()
            torch.cuda.synchronize(device)
    per_kernel: dict[str, float] = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA and evt.device_time_total > 0:
            per_kernel[evt.name] = per_kernel.get(evt.name, 0.0) + evt.device_time_total / 1e6 / calls
    by_role: dict[str, float] = {}
    for name, seconds in per_kernel.items():
        by_role[kernel_role(name)] = by_role.get(kernel_role(name), 0.0) + seconds
    total = sum(per_kernel.values())
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:8]
    return {
        "kernel_sum_s": total,
        "by_role_s": by_role,
        "attention_share": by_role.get("attention", 0.0) / total if total else None,
        "top_kernels": [{"name": n[:160], "seconds": s, "role": kernel_role(n)} for n, s in top],
        "method": f"torch.profiler CUDA activity over one eager round of {calls} calls (same rotation as timing)",
    }
