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


class FakeCupti:
    """Test-only stand-in for cupti-python's ``cupti`` module: a clock, and records that a flush delivers."""

    class ActivityKind:
        CONCURRENT_KERNEL, MEMCPY, MEMSET, RUNTIME = 10, 1, 2, 5

    def __init__(self, refuse=None):
        self.calls, self.pending, self.now, self.refuse = [], [], 1_000, refuse

    def activity_register_callbacks(self, requested, completed):
        self.completed = completed
        self.calls.append("register")

    def activity_enable(self, kind):
        if kind == self.refuse:
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")
        self.calls.append(("enable", kind))

    def activity_disable(self, kind):
        self.calls.append(("disable", kind))

    def activity_flush_all(self, forced):
        delivered, self.pending = self.pending, []
        self.completed(delivered)

    def finalize(self):
        self.calls.append("finalize")

    def get_timestamp(self):
        self.now += 1_000
        return self.now

    def launch(self, *activities):
        """Activities of a round that starts now: (kind, name, offset, duration) each, in ns."""
        start = self.now + 1
        self.now += 500
        self.pending += [types.SimpleNamespace(kind=kind, name=name, start=start + at, end=start + at + took)
                         for kind, name, at, took in activities]


@pytest.fixture
def fake_cupti(monkeypatch):
    module = types.ModuleType("cupti")
    module.cupti = FakeCupti()
    monkeypatch.setitem(sys.modules, "cupti", module)
    return module.cupti


K, COPY, SET = FakeCupti.ActivityKind.CONCURRENT_KERNEL, FakeCupti.ActivityKind.MEMCPY, FakeCupti.ActivityKind.MEMSET


def test_a_collector_times_rounds_by_their_activities_and_holds_later_rounds_to_the_first(fake_cupti):
    one_round = [(K, "cache_kernel", 0, 10), (SET, None, 12, 3), (K, "attention_kernel", 20, 100), (COPY, None, 130, 5)]
    with ka.Collector() as collector:
        first = collector.time_round(lambda: fake_cupti.launch(*one_round))
        assert first == pytest.approx(135e-9)  # the memset and the trailing memcpy are part of the round
        assert collector.expected == ("cache_kernel", "memset", "attention_kernel", "memcpy")
        fake_cupti.launch((K, "verification_kernel", 0, 50))  # between rounds: not the round's
        assert collector.time_round(lambda: fake_cupti.launch(*one_round)) == pytest.approx(135e-9)
        with pytest.raises(ActivityError, match="^round 2: 1 kernel.s. missing .* first missing 'memcpy'"):
            collector.time_round(lambda: fake_cupti.launch(*one_round[:3]))

        def with_work_queued_before():  # a kernel that started before the round's first timestamp ends inside it
            fake_cupti.launch(*one_round)
            fake_cupti.pending.append(types.SimpleNamespace(kind=K, name="queued_before", start=fake_cupti.now - 2_000,
                                                            end=fake_cupti.now - 400))

        with pytest.raises(ActivityError, match="'queued_before' ran outside every timed round"):
            collector.time_round(with_work_queued_before)
    assert fake_cupti.calls[:4] == ["register", ("enable", K), ("enable", COPY), ("enable", SET)]
    assert fake_cupti.calls[-4:] == [("disable", SET), ("disable", COPY), ("disable", K), "finalize"]


def test_a_refused_enable_is_unavailable_and_disables_what_was_enabled(fake_cupti):
    fake_cupti.refuse = FakeCupti.ActivityKind.MEMSET
    with pytest.raises(ka.TimerUnavailable, match="CUPTI refused to record kernels: CUPTI_ERROR_NOT_INITIALIZED"):
        with ka.Collector():
            pass
    assert fake_cupti.calls[-3:] == [("disable", COPY), ("disable", K), "finalize"]


# ------------------------------------------------------------------ the option, the record and the gate

def test_cupti_on_the_cpu_or_without_cupti_python_is_refused_before_any_work_naming_the_flag(monkeypatch):
    from attnbench.spec import study
    from attnbench.spec.study import StudyError, build_study

    monkeypatch.setattr(study, "cupti_missing", lambda: False)
    with pytest.raises(StudyError, match=r"^--timer cupti: CUPTI times GPU kernels, and the device is cpu"):
        build_study(None, {"device": "cpu", "timer": "cupti"})
    with pytest.raises(StudyError, match=r"^key 'timer' cupti"):
        build_study({"run": {"timer": "cupti"}}, {"device": "cpu"})
    assert build_study(None, {"timer": "cupti"}).run.timer == "cupti"  # on a GPU it is the study's timer
    monkeypatch.setattr(study, "cupti_missing", lambda: True)
    with pytest.raises(StudyError, match=r"^--timer cupti: needs cupti-python, which is not installed"):
        build_study(None, {"timer": "cupti"})


def test_the_record_names_the_cupti_timer_and_keeps_the_events_median_beside_it():
    from attnbench.results.record import TimingSummary

    cupti = TimingSummary("cuda-graph", timer="cupti", events_median_s=2e-5)
    assert cupti.timer_name == "cupti_kernel_span(cuda_graph_replay)"
    assert TimingSummary("cuda-graph").timer_name == "cuda_events(cuda_graph_replay)"
    assert TimingSummary("cuda-events", timer="cupti").timer_name == "cupti_kernel_span(eager)"


def _stored_entry(timing, seconds: float) -> dict:
    """A case as pytest-benchmark stores it, through the shim that makes its entry (the timer name included)."""
    import statistics
    import types

    from attnbench.pytest_plugin.bench_shim import BenchmarkView
    from attnbench.results.record import CaseKey, CaseRecord, Verification

    samples = [seconds * (1 + 0.001 * i) for i in range(20)]
    record = CaseRecord(CaseKey("FLASHMLA", "q1s1k", family="mla", study="s"), timing, Verification("passed"))
    fixture = types.SimpleNamespace(name="test_mla[FLASHMLA-q1s1k]", fullname="bench_mla/test_mla.py::test_mla["
                                    "FLASHMLA-q1s1k]", group=None, param="FLASHMLA-q1s1k", params=None,
                                    extra_info=record.to_json(include_samples=False))
    view = BenchmarkView.of(fixture, samples, timing.timer_name, len(samples), 0).to_dict()
    stats = {"data": samples, "median": statistics.median(samples), "mean": statistics.fmean(samples),
             "stddev": statistics.stdev(samples), "min": min(samples), "max": max(samples), "iqr": 0.0,
             "rounds": len(samples)}
    return {**view, "stats": stats}


def test_the_gate_never_calls_a_change_between_a_cupti_and_an_events_timing_read_from_storage():
    from attnbench.reporting.verdicts import SLOWER, UNSURE, compare_results
    from attnbench.results.exports import from_benchmark_entry
    from attnbench.results.record import TimingSummary

    cupti, events = TimingSummary("cuda-graph", timer="cupti"), TimingSummary("cuda-graph")
    base = from_benchmark_entry(_stored_entry(cupti, 1e-5))
    assert base.timer == "cupti_kernel_span(cuda_graph_replay)"  # what pytest-benchmark's storage names
    [verdict] = compare_results([base], [from_benchmark_entry(_stored_entry(events, 2e-5))])
    assert verdict.verdict == UNSURE and "not comparable" in verdict.note
    # the same timer on both sides: the doubling is SLOWER, so the rule is the timer and nothing else
    assert compare_results([base], [from_benchmark_entry(_stored_entry(cupti, 2e-5))])[0].verdict == SLOWER


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
        timing.measure([lambda: None], device=torch.device("cpu"), repeats=1, warmup_iters=0, cupti=object())
