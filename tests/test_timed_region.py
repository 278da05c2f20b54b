"""The timed-region axis, the K/V fill, the per-request gate and the check after timing (CPU, REFERENCE
and test-only fake adapters)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from attnbench.measure import clocks  # noqa: E402
from attnbench.measure import runner  # noqa: E402
from attnbench.spec.cases import BenchCase  # noqa: E402
from attnbench.results.record import CaseRecord  # noqa: E402
from attnbench.spec.shapes import AttentionShape  # noqa: E402
from attnbench.spec.study import RunSettings  # noqa: E402
from attnbench.measure.verify import compare  # noqa: E402
from tests.plugins.fake_adapters import fake_backend  # noqa: E402
from tests.test_plugin import (BENCH_ATTENTION, BENCH_MLA, REPO, assert_usage_error,  # noqa: E402, F401
                               child_is_not_an_xdist_worker, collected_ids, run)

pytest_plugins = ["pytester"]


def test_region_axis_keeps_layer_ids_and_names_the_attention_region(pytester):
    result = run(pytester, BENCH_MLA, "--collect-only", "-q", "-k", "REFERENCE", "--batch-specs", "q1s1k", "q4",
                 "--timed-region", "layer", "attention")
    assert result.ret == 0
    assert collected_ids(result) == ["test_mla[REFERENCE-q1s1k]", "test_mla[REFERENCE-q1s1k-attention-only]",
                                     "test_mla[REFERENCE-q4]", "test_mla[REFERENCE-q4-attention-only]"]


def test_the_attention_region_in_a_decode_vs_prefill_study_is_refused_naming_the_flag(pytester):
    result = run(pytester, BENCH_MLA, "--collect-only", "-q", "--timed-region", "attention",
                 "--bench-config", str(REPO / "configs/reorder_threshold.yaml"))
    assert_usage_error(result, "--timed-region")


def test_yaml_region_in_a_decode_vs_prefill_study_names_the_key(pytester):
    study = pytester.path / "s.yaml"
    study.write_text("mode: decode_vs_prefill\nbackends: [flashmla]\nbatch_specs: [q1s1k]\ntimed_region: attention\n")
    result = run(pytester, BENCH_MLA, "--collect-only", "-q", "--bench-config", str(study))
    assert_usage_error(result, "timed_region")
    assert "s.yaml" in result.errlines[0]


def test_both_regions_and_zero_fill_run_verified_on_the_cpu(pytester):
    out = pytester.path / "bench.json"
    result = run(pytester, BENCH_ATTENTION, BENCH_MLA, "-k", "REFERENCE", "--device", "cpu", "--batch-specs",
                 "2q16_2q1s64", "--timed-region", "layer", "attention", "--kv-fill", "zeros", "--repeats", "3",
                 "--warmup-iters", "0", "--num-q-heads", "8", f"--benchmark-json={out}")
    assert result.ret == 0, "\n".join(result.outlines[-30:])
    result.assert_outcomes(passed=4)
    records = {b["name"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    for family in ("attention", "mla"):
        layer = records[f"test_{family}[REFERENCE-2q16_2q1s64]"]
        attention = records[f"test_{family}[REFERENCE-2q16_2q1s64-attention-only]"]
        assert (layer["timed_region"], attention["timed_region"]) == ("layer", "attention")
        assert layer["kv_fill"] == attention["kv_fill"] == "zeros"
        assert "already written" in attention["backend_info"]["timed_region"]
        assert layer["verified"] and attention["verified"]
        # the work model follows the region: no cache write in the attention call
        assert (layer["work"]["timed_region"], attention["work"]["timed_region"]) == ("layer", "attention")
        assert attention["work"]["bytes"] < layer["work"]["bytes"]
        assert CaseRecord.from_json(attention).key.timed_region == "attention"


def test_records_written_before_the_axis_read_as_layer_step_on_random_data():
    old = {"schema": 2, "backend": "X", "batch_spec": "q1", "timing": {"mode": "host"},
           "verification": {"status": "passed"}}
    key = CaseRecord.from_json(old).key
    assert (key.timed_region, key.kv_fill) == ("layer", "random")


# ------------------------------------------------------------------ the per-request gate

def test_one_wrong_request_in_256_fails_the_gate_the_global_error_would_pass():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(256 * 4, 8, 16, generator=gen)
    out = ref.clone()
    out[40:44] *= 1.03  # request 10 of 256 (4 rows each) is 3 % off
    rows = [4] * 256
    whole = compare(out, ref, dtype="bfloat16")
    assert whole.passed and whole.rel_error < 0.01  # the global error alone misses it
    per_request = compare(out, ref, dtype="bfloat16", request_rows=rows)
    assert not per_request.passed
    assert per_request.worst_requests[0] == 10
    assert per_request.worst_request_rel_errors[0] == pytest.approx(0.03, rel=1e-3)
    assert "worst request #10" in per_request.summary()
    assert compare(ref.clone(), ref, request_rows=rows).passed


def test_per_request_errors_survive_a_non_finite_row():
    ref = torch.ones(6, 4)
    out = ref.clone()
    out[4, 0] = float("inf")
    v = compare(out, ref, request_rows=[2, 2, 2])
    assert not v.passed and v.worst_requests[0] == 2 and v.worst_request_rel_errors[0] > 1e30
    assert v.worst_request_rel_errors[1:] == (0.0, 0.0)


def test_request_rows_must_cover_the_output():
    with pytest.raises(ValueError, match="request_rows"):
        compare(torch.ones(4, 2), torch.ones(4, 2), request_rows=[1, 2])


# ------------------------------------------------------------------ the check after timing

def _case(factory: str, spec: str = "2q8_2q1s32", **run: object) -> BenchCase:
    settings = RunSettings(device="cpu", repeats=3, warmup_iters=1, min_rounds=1, **run)  # type: ignore[arg-type]
    return BenchCase(study="t", backend=fake_backend(factory), batch_spec=spec,
                     shape=AttentionShape(num_q_heads=4, num_kv_heads=2, head_dim=16), run=settings)


def test_an_honest_backend_records_the_check_after_timing():
    result = runner.execute(_case("honest"))
    after = result.verification.after_timing
    assert after["status"] == "passed" and after["buffers_checked"] == after["buffers"] == 1
    # the same computation on the same buffers: the replayed output is the eagerly verified one (bf16 rounding)
    assert after["rel_error"] == pytest.approx(result.verification.rel_error) and after["rel_error"] < 5e-3
    assert result.record().to_json()["verification"]["after_timing"]["status"] == "passed"


def test_the_check_after_timing_shows_whether_one_more_call_gives_exactly_the_timed_output():
    honest = runner.execute(_case("honest")).verification.after_timing
    assert honest["rerun_identical"] is True and honest["rerun_max_abs_diff"] == 0.0
    result = runner.execute(_case("jittery"))  # within tolerance: shown, not failed
    after = result.verification.after_timing
    assert after["status"] == "passed" and after["rerun_identical"] is False and 0 < after["rerun_max_abs_diff"] < 0.1
    assert result.record().to_json()["verification"]["after_timing"]["rerun_identical"] is False


def test_the_check_after_timing_shows_whether_the_timed_output_is_the_first_eager_calls():
    honest = runner.execute(_case("honest", placements=2)).verification.after_timing
    assert honest["timed_identical_to_first_call"] is True and honest["timed_first_call_max_abs_diff"] == 0.0
    differs = runner.execute(_case("replay_differs", placements=2))  # every call after the first, steadily
    after = differs.verification.after_timing
    assert after["status"] == "passed" and after["placements_checked"] == 2  # within tolerance: shown, not failed
    assert after["timed_identical_to_first_call"] is False and 0 < after["timed_first_call_max_abs_diff"] < 0.1
    assert after["rerun_identical"] is True  # steady: only the first call differs
    assert differs.record().to_json()["verification"]["after_timing"]["timed_identical_to_first_call"] is False


def test_a_backend_whose_timed_calls_go_wrong_fails_after_timing():
    with pytest.raises(runner.VerificationFailed, match="last timed round") as info:
        runner.execute(_case("replay_drift"))
    assert "worst request #1" in str(info.value)


def test_one_wrong_request_fails_the_eager_gate():
    with pytest.raises(runner.VerificationFailed, match="worst request #0"):
        runner.execute(_case("one_wrong_request", spec="q1s64_63q1s64"))


def test_the_check_after_timing_covers_every_buffer_set_while_affordable(monkeypatch):
    small = _case("honest")
    assert runner.sets_to_check_after_timing(small, 7) == 7
    monkeypatch.setattr(runner, "AFTER_TIMING_REQUEST_BUDGET", 8)  # 4 requests: 2 sets fit
    assert runner.sets_to_check_after_timing(small, 7) == 2
    monkeypatch.setattr(runner, "AFTER_TIMING_PAIR_BUDGET", 1)
    assert runner.sets_to_check_after_timing(small, 7) == 1  # never fewer than buffer 0


# ------------------------------------------------------------------ clocks (a fake NVML)

class FakeNvml:
    """Test-only stand-in for pynvml: a GPU whose SM clock and throttle bits follow a script."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, script: list[tuple[int, int]]) -> None:
        self.script, self.i, self.uuids = script, 0, []

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.uuids.append(uuid)
        return uuid

    def nvmlDeviceGetMaxClockInfo(self, handle: str, kind: int) -> int:
        return 1980

    def nvmlDeviceGetClockInfo(self, handle: str, kind: int) -> int:
        return self.script[min(self.i, len(self.script) - 1)][0]

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 650_000

    def nvmlDeviceGetTemperature(self, handle: str, kind: int) -> int:
        return 60 + self.i

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        bits = self.script[min(self.i, len(self.script) - 1)][1]
        self.i += 1
        return bits


def test_clock_summary_flags_throttled_rounds_and_names_the_reasons():
    nvml = FakeNvml([(1980, 0), (1980, 0x1), (1755, 0x4), (1620, 0x4 | 0x20), (1980, 0)])
    monitor = clocks.ClockMonitor.for_uuid("GPU-abc", nvml=nvml)
    assert nvml.uuids == ["GPU-abc"] and monitor.max_sm_mhz == 1980
    before = monitor.sample()
    rounds = [monitor.sample() for _ in range(3)]
    after = monitor.sample()
    part = clocks.summarize(before, rounds, after, monitor.max_sm_mhz)
    assert part.rounds_sampled == 3 and part.throttled_rounds == 2  # idle (0x1) is not throttling
    assert part.throttle_reasons == ("sw_power_cap", "sw_thermal")
    assert (part.sm_mhz_min, part.sm_mhz_max, part.sm_mhz_median) == (1620, 1980, 1755.0)
    assert part.power_w_median == 650.0 and part.sm_mhz_before == 1980 and part.temp_c_max == 63
    assert "throttled (sw_power_cap, sw_thermal) in 2/3 rounds" in part.note()
    assert CaseRecord.from_json({"schema": 2, "backend": "X", "batch_spec": "q1", "timing": {"mode": "host"},
                                 "verification": {"status": "passed"},
                                 "clocks": json.loads(json.dumps(part.__dict__, default=list))}).clocks == part


def test_no_uuid_or_no_nvml_means_no_clocks_not_made_up_ones():
    assert clocks.ClockMonitor.for_uuid(None, nvml=FakeNvml([(1, 0)])) is None
    assert clocks.summarize(None, [None, None], None, None) is None


def test_an_output_too_large_to_keep_leaves_the_first_call_comparison_unanswered(monkeypatch):
    from attnbench.measure import buffers

    monkeypatch.setattr(buffers, "FIRST_OUTPUT_KEPT_BYTES", 0)  # every output is "too large" to keep
    after = runner.execute(_case("replay_differs")).verification.after_timing
    assert after["timed_identical_to_first_call"] is None and after["timed_first_call_max_abs_diff"] is None
    assert after["status"] == "passed" and after["rerun_identical"] is True  # the other checks still run


def test_the_agreement_of_two_outputs_names_their_largest_difference_a_differing_nan_as_infinite():
    a = torch.zeros(64, 4)
    b = a.clone()
    b[63, 1] = 0.5  # in the last chunk
    b[0, 0] = float("nan")  # a NaN that differs counts as infinitely far
    assert runner._agreement(a, a.clone()) == (True, 0.0)
    identical, worst = runner._agreement(a, b)
    assert identical is False and worst == float("inf")
    b[0, 0] = 0.0
    assert runner._agreement(a, b) == (False, 0.5)
