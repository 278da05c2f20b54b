"""The CUPTI timer's bookkeeping (attnbench/measure/kernel_activity.py), on recorded activity streams: a round's
time is its kernels' span, and any activity the rounds do not account for exactly is an error, never a number."""

from __future__ import annotations

import sys
import types

import pytest

from attnbench.measure import kernel_activity as ka
from attnbench.measure.kernel_activity import ActivityError, KernelActivity, assign, difference, round_spans

# A recorded stream: two rounds of one layer call each (cache write, then attention), bracketed by the host.
ROUND = ("reshape_and_cache_flash_kernel", "flash_fwd_splitkv_mla_kernel")
BRACKETS = [(1_000, 2_000), (3_000, 4_000)]
STREAM = [KernelActivity(ROUND[0], 1_100, 1_150), KernelActivity(ROUND[1], 1_160, 1_460),
          KernelActivity(ROUND[0], 3_100, 3_140), KernelActivity(ROUND[1], 3_150, 3_500)]


def test_a_rounds_time_is_its_first_kernels_start_to_its_last_kernels_end():
    spans, expected = round_spans(STREAM, BRACKETS, None)
    assert expected == ROUND  # the first round fixes the kernels
    assert spans == [pytest.approx(360e-9), pytest.approx(400e-9)]


def test_kernels_are_assigned_to_the_round_that_brackets_them_in_start_order():
    shuffled = [STREAM[3], STREAM[0], STREAM[2], STREAM[1]]  # CUPTI's buffers come back in any order
    rounds = assign(shuffled, BRACKETS)
    assert [[k.name for k in r] for r in rounds] == [list(ROUND), list(ROUND)]


@pytest.mark.parametrize("stream, problem", [
    (STREAM[:3], "round 1: 1 kernel(s) missing (expected 2, first missing 'flash_fwd_splitkv_mla_kernel')"),
    (STREAM + [KernelActivity("fill_kernel", 3_600, 3_700)], "round 1: 1 extra kernel(s) (expected 2, "
                                                                "first extra 'fill_kernel')"),
    (STREAM[:2] + [KernelActivity(ROUND[1], 3_100, 3_140), KernelActivity(ROUND[0], 3_150, 3_500)],
     "round 1: kernels out of order at #0"),
    (STREAM[:3] + [KernelActivity("other_kernel", 3_150, 3_500)],
     "round 1: kernel #1 is 'other_kernel', expected 'flash_fwd_splitkv_mla_kernel'"),
    (STREAM + [KernelActivity("stray", 2_500, 2_600)], "kernel 'stray' ran outside every timed round"),
    (STREAM + [KernelActivity("late", 3_900, 4_100)], "kernel 'late' ran outside every timed round"),
    (STREAM[:3] + [KernelActivity(ROUND[1], 0, 0)], "has no valid timestamps"),
])
def test_any_activity_the_rounds_do_not_account_for_is_an_error(stream, problem):
    with pytest.raises(ActivityError) as info:
        round_spans(stream, BRACKETS, None)
    assert problem in str(info.value)


def test_an_expected_round_from_before_is_held_to():
    with pytest.raises(ActivityError, match="round 0: 1 extra kernel"):
        round_spans(STREAM[:2], BRACKETS[:1], ROUND[1:])


def test_a_round_with_no_kernel_is_an_error():
    with pytest.raises(ActivityError, match="no kernel was recorded"):
        round_spans([], BRACKETS, None)


def test_overlapping_brackets_are_an_error():
    with pytest.raises(ActivityError, match="overlap"):
        assign(STREAM, [(1_000, 3_200), (3_000, 4_000)])


def test_difference_names_nothing_for_the_same_round():
    assert difference(ROUND, list(ROUND)) is None


def test_only_names_in_excluded_are_left_out_and_only_exactly(monkeypatch):
    monkeypatch.setattr(ka, "EXCLUDED", frozenset({"l2_flush_kernel"}))
    flushed = STREAM + [KernelActivity("l2_flush_kernel", 3_010, 3_090)]
    assert round_spans(flushed, BRACKETS, None)[0][1] == pytest.approx(400e-9)
    near = STREAM + [KernelActivity("l2_flush_kernel_v2", 3_010, 3_090)]  # not an exact match: counted, so refused
    with pytest.raises(ActivityError, match="extra kernel"):
        round_spans(near, BRACKETS, None)


def test_without_cupti_python_the_timer_is_unavailable_with_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupti", None)  # import cupti fails
    with pytest.raises(ka.TimerUnavailable, match="pip install cupti-python"):
        ka.Collector()


def test_the_collector_hands_over_cuptis_kernel_records_and_leaves_cupti_as_it_found_it(monkeypatch):
    calls = []

    class FakeCupti:  # test-only stand-in for cupti-python's module: records what the collector asks of it
        class ActivityKind:
            CONCURRENT_KERNEL, MEMCPY = 10, 1

        def activity_register_callbacks(self, requested, completed):
            self.completed = completed
            calls.append("register")

        def activity_enable(self, kind):
            calls.append(("enable", kind))

        def activity_disable(self, kind):
            calls.append(("disable", kind))

        def activity_flush_all(self, forced):
            record = types.SimpleNamespace
            self.completed([record(kind=10, name="k", start=5, end=9), record(kind=1, name="copy", start=1, end=2)])
            calls.append("flush")

        def finalize(self):
            calls.append("finalize")

        def get_timestamp(self):
            return 42

    module = types.ModuleType("cupti")
    module.cupti = FakeCupti()
    monkeypatch.setitem(sys.modules, "cupti", module)
    with ka.Collector() as collector:
        assert collector.timestamp() == 42
        assert collector.take() == [KernelActivity("k", 5, 9)]  # kernels only; the memcpy is not a kernel
        assert collector.take() == [KernelActivity("k", 5, 9)]  # each flush's records, once
    assert calls[:2] == ["register", ("enable", 10)]
    assert calls[-2:] == [("disable", 10), "finalize"]


# ------------------------------------------------------------------ the option, the record and the gate

def test_cupti_on_the_cpu_is_refused_before_any_work_naming_the_flag():
    from attnbench.spec.study import StudyError, build_study

    with pytest.raises(StudyError, match=r"^--timer cupti: CUPTI times GPU kernels, and the device is cpu"):
        build_study(None, {"device": "cpu", "timer": "cupti"})
    with pytest.raises(StudyError, match=r"^key 'timer' cupti"):
        build_study({"run": {"timer": "cupti"}}, {"device": "cpu"})
    assert build_study(None, {"timer": "cupti"}).run.timer == "cupti"  # on a GPU it is the study's timer


def test_the_record_names_the_cupti_timer_and_keeps_the_events_median_beside_it():
    from attnbench.results.record import TimingSummary

    cupti = TimingSummary("cuda-graph", timer="cupti", events_median_s=2e-5)
    assert cupti.timer_name == "cupti_kernel_span(cuda_graph_replay)"
    assert TimingSummary("cuda-graph").timer_name == "cuda_events(cuda_graph_replay)"
    assert TimingSummary("cuda-events", timer="cupti").timer_name == "cupti_kernel_span(eager)"


def test_the_gate_never_calls_a_change_between_a_cupti_and_an_events_timing():
    import dataclasses

    from attnbench.reporting.verdicts import UNSURE, compare_results
    from tests.factories import timed

    base = [dataclasses.replace(timed("FLASHMLA", "q1s1k", 1e-5, samples=[1e-5] * 20), timer="cupti_kernel_span(x)")]
    slower = [dataclasses.replace(timed("FLASHMLA", "q1s1k", 2e-5, samples=[2e-5] * 20), timer="cuda_events(x)")]
    [verdict] = compare_results(base, slower)
    assert verdict.verdict == UNSURE and "not comparable" in verdict.note
    same_timer = [dataclasses.replace(slower[0], timer="cupti_kernel_span(x)")]
    assert compare_results(base, same_timer)[0].verdict != UNSURE  # the check is the timer, nothing else


def test_the_events_median_of_cupti_rounds_reaches_the_record_and_pools_over_placements():
    import torch

    from attnbench.measure import timing
    from attnbench.results.record import TimingSummary

    def placement(spans, events):
        return timing.Timing(spans, "cuda-graph", 8, 0, "repeats", "cold", 1, 0, None, timer="cupti",
                             event_samples=events)

    pooled = timing.Timing.pooled([placement([1.0, 1.0], [1.5, 1.5]), placement([2.0, 2.0], [2.5, 3.5])])
    info = pooled.info()
    assert "event_samples" not in info and info["events_median_s"] == 2.0 and info["timer"] == "cupti"
    assert TimingSummary(**info).timer_name == "cupti_kernel_span(cuda_graph_replay)"
    with pytest.raises(ValueError, match="--timer cupti times GPU kernels, and the device is cpu"):
        timing.measure([lambda: None], device=torch.device("cpu"), repeats=1, warmup_iters=0, timer="cupti")
