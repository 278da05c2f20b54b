"""The timer on the CPU path: stopping rule, cold-L2 buffer sets and the host measurement loop.

The host loop reads ``time.perf_counter`` through ``attnbench.measure.timing.time``; the tests swap in a fake
clock that steps advance by a known amount, so every sample is known exactly in advance.
"""

from __future__ import annotations

import math
import statistics
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from attnbench.measure import timing
from attnbench.results.record import TimingSummary

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ should_stop

def _rel_stderr(xs):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return sd / mean / math.sqrt(n)


def test_should_stop_when_the_noise_target_is_reached():
    samples = [1.0, 1.01, 0.99, 1.0, 1.0, 1.01, 0.99, 1.0, 1.0, 1.0]
    assert _rel_stderr(samples) < 0.005
    assert timing.should_stop(samples, min_rounds=10, noise_target=0.005)


def test_should_not_stop_while_too_noisy():
    samples = [1.0, 2.0] * 5
    assert _rel_stderr(samples) > 0.1
    assert not timing.should_stop(samples, min_rounds=10, noise_target=0.1)
    assert timing.should_stop(samples, min_rounds=10, noise_target=_rel_stderr(samples) * 1.001)


def test_should_stop_is_disabled_by_a_zero_target():
    assert not timing.should_stop([1.0] * 50, min_rounds=2, noise_target=0.0)


def test_should_stop_respects_min_rounds():
    constant = [1.0] * 9
    assert not timing.should_stop(constant, min_rounds=10, noise_target=0.5)
    assert timing.should_stop(constant + [1.0], min_rounds=10, noise_target=0.5)
    assert not timing.should_stop([1.0], min_rounds=0, noise_target=0.5)  # one sample has no spread


# ------------------------------------------------------------------------------------ buffer_sets_needed

L2 = 50 * 2**20


@pytest.mark.parametrize("bytes_per_set, expected", [
    (7 * 2**20, math.ceil(3 * 50 / 7)),  # 22 sets: 154 MiB >= 150 MiB
    (L2, 3),
    (3 * L2, 1),
    (10 * L2, 1),
    (L2 // 4 + 1, 12),
])
def test_cold_cache_needs_three_times_l2(bytes_per_set, expected):
    sets = timing.buffer_sets_needed(bytes_per_set, L2, "cold")
    assert sets == expected
    assert sets * bytes_per_set >= timing.COLD_FACTOR * L2 or sets == 1
    assert sets == 1 or (sets - 1) * bytes_per_set < timing.COLD_FACTOR * L2  # and no more than needed


def test_warm_cache_or_no_l2_needs_one_set():
    assert timing.buffer_sets_needed(2**20, L2, "warm") == 1
    assert timing.buffer_sets_needed(2**20, None, "cold") == 1
    assert timing.buffer_sets_needed(2**20, 0, "cold") == 1
    assert timing.buffer_sets_needed(0, L2, "cold") == 1


def test_cpu_has_no_l2_to_flush():
    assert timing.l2_bytes(CPU) is None


# --------------------------------------------------------------------------------------------- measure

class FakeClock:
    """Stands in for the ``time`` module inside attnbench.measure.timing."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


class FakeStep:
    """A step that records its calls and advances the fake clock by ``duration(call_index)``."""

    def __init__(self, clock: FakeClock, duration) -> None:
        self.clock, self.duration, self.calls = clock, duration, 0

    def __call__(self) -> None:
        self.clock.now += self.duration(self.calls)
        self.calls += 1


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def test_measure_runs_at_most_repeats_rounds_in_host_mode(clock):
    alternating = FakeStep(clock, lambda i: 1e-3 if i % 2 else 3e-3)
    t = timing.measure([alternating], device=CPU, repeats=7, warmup_iters=2, min_rounds=3, noise_target=0.0)
    assert t.mode == "host"
    assert t.rounds == 7 and len(t.samples) == 7
    assert t.stopped_by == "repeats"
    assert t.calls_per_round == 1 and t.warmup_rounds == 2
    assert alternating.calls == 1 + 2 + 7  # one untimed first call, warm-up, timed rounds
    assert t.l2_bytes is None


def test_warmup_rounds_are_not_sampled(clock):
    # the untimed first round and 3 warm-up rounds are slow; every timed round takes 2 ms per step
    slow_then_fast = [FakeStep(clock, lambda i: 0.5 if i < 4 else 2e-3) for _ in range(2)]
    t = timing.measure(slow_then_fast, device=CPU, repeats=5, warmup_iters=3, min_rounds=2, noise_target=0.0)
    assert t.samples == pytest.approx([2e-3] * 5)  # seconds per call, not per round of 2 calls
    assert t.calls_per_round == 2
    assert all(s.calls == 1 + 3 + 5 for s in slow_then_fast)


def test_a_constant_step_stops_early_on_the_noise_target(clock):
    step = FakeStep(clock, lambda i: 1e-3)
    t = timing.measure([step], device=CPU, repeats=100, warmup_iters=1, min_rounds=10, noise_target=0.005)
    assert t.stopped_by == "noise-target"
    assert t.rounds == 10  # the first moment the rule may stop
    assert step.calls == 1 + 1 + 10
    assert t.median == pytest.approx(1e-3)


def test_a_noisy_step_runs_to_repeats_despite_a_noise_target(clock):
    step = FakeStep(clock, lambda i: 1e-3 if i % 2 else 5e-3)
    t = timing.measure([step], device=CPU, repeats=30, warmup_iters=0, min_rounds=10, noise_target=0.005)
    assert t.stopped_by == "repeats" and t.rounds == 30


def test_measure_records_the_cache_settings_and_enters_the_context(clock):
    entered = []

    @contextmanager
    def ctx():
        entered.append("in")
        yield
        entered.append("out")

    step = FakeStep(clock, lambda i: 1e-3)
    t = timing.measure([step], device=CPU, repeats=3, warmup_iters=0, cache_state="warm", buffer_sets=4,
                       working_set_bytes=1234, context=ctx)
    assert (t.cache_state, t.buffer_sets, t.working_set_bytes) == ("warm", 4, 1234)
    assert entered == ["in", "out"]


def test_measure_on_the_real_clock_returns_positive_samples():
    calls = []
    t = timing.measure([lambda: calls.append(1)], device=CPU, repeats=4, warmup_iters=1)
    assert 1 <= t.rounds <= 4 and all(s >= 0 for s in t.samples)
    assert len(calls) == 1 + 1 + t.rounds


def test_measure_refuses_nothing_to_time():
    with pytest.raises(ValueError):
        timing.measure([], device=CPU, repeats=3, warmup_iters=0)


# ---------------------------------------------------------------------------------------------- Timing

def _timing(samples):
    return timing.Timing(samples, "host", 1, 0, "repeats", "cold", 1, 0, None)


def test_timing_statistics():
    t = _timing([4.0, 1.0, 3.0, 2.0])
    assert t.median == 2.5
    assert t.mean == 2.5
    sd = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)
    assert t.rel_noise == pytest.approx(sd / 2.5)
    assert t.rel_stderr == pytest.approx(sd / 2.5 / 2)
    assert t.rounds == 4
    assert _timing([7.0]).rel_noise == 0.0
    assert _timing([5.0, 5.0, 5.0]).rel_noise == 0.0
    assert _timing([1.0, 2.0, 100.0]).median == 2.0


def test_timing_info_drops_samples_and_adds_derived_fields():
    t = timing.Timing([1.0, 3.0], "host", 2, 1, "repeats", "cold", 3, 99, None, estimated_call_s=0.5,
                      round_target_s=1e-3)
    info = t.info()
    assert "samples" not in info
    assert info["rounds"] == 2 and info["estimated_call_s"] == 0.5 and info["round_target_s"] == 1e-3
    assert info["rel_noise"] == pytest.approx(statistics.stdev([1.0, 3.0]) / 2.0)
    assert (info["mode"], info["calls_per_round"], info["buffer_sets"]) == ("host", 2, 3)


@pytest.mark.parametrize("name, role", [
    ("void cutlass::device_kernel<flash::FlashAttnFwdSm90<...>>", "attention"),
    ("_fwd_grouped_kernel_stage1", "attention"),  # TRITON_MLA decode
    ("reduce_segments", "attention"),  # TRITON_ATTN 3D split-softmax reduction
    ("flashinfer::BatchPrefillWithPagedKVCacheKernel<...>", "attention"),  # 'prefill' must not read as 'fill'
    ("void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>", "cache_write"),
    ("void vllm::concat_and_cache_mla_kernel<...>", "cache_write"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("void flashinfer::ConcatMLAKKernel<...>", "other"),  # a copy, despite 'mla' in its name
    ("flash::prepare_varlen_num_blocks_kernel", "other"),
])
def test_kernel_roles(name, role):
    from attnbench.measure.timing import kernel_role

    assert kernel_role(name) == role


@pytest.mark.parametrize("rotation_s, steps, calls", [
    (20e-6, 1, 50),  # a 20 µs decode: 50 calls make a ~1 ms round
    (20e-3, 1, 1),  # a 20 ms prefill: one call per round, not 8
    (60e-6, 3, 51),  # cold L2 over 3 buffer sets: whole rotations only
    (1e-9, 4, 256),  # a degenerate estimate is capped
    (0.0, 2, 2),
])
def test_calls_per_round_follow_the_round_target(rotation_s, steps, calls):
    assert timing.calls_for_round(rotation_s, steps) == calls
    assert timing.calls_for_round(rotation_s, steps) % steps == 0


def test_warmup_rounds_shrink_for_long_rounds_but_never_to_zero():
    assert timing.warmup_rounds_for(1e-3, 10) == 10
    assert timing.warmup_rounds_for(20e-3, 10) == 3
    assert timing.warmup_rounds_for(1.0, 10) == 1
    assert timing.warmup_rounds_for(1.0, 0) == 0


def test_the_spread_is_the_rounds_p10_to_p90_over_their_median_and_flags_an_unstable_case():
    steady = timing.Timing([1.0] * 9 + [1.01], "host", 1, 0, "repeats", "cold", 1, 0, None)
    two_modes = timing.Timing([1.0] * 5 + [1.2] * 5, "host", 1, 0, "repeats", "cold", 1, 0, None)
    assert steady.spread_pct is not None and steady.spread_pct < 1.0
    assert two_modes.spread_pct == pytest.approx(100 * 0.2 / 1.1)
    assert timing.Timing([1.0, 2.0], "host", 1, 0, "repeats", "cold", 1, 0, None).spread_pct is None  # too few
    summaries = [TimingSummary(**t.info(), samples=tuple(t.samples)) for t in (steady, two_modes)]
    assert [s.unstable for s in summaries] == [False, True]
    assert TimingSummary("host").unstable is False  # an untimed or older record: no spread, no flag
