"""The pytest plugin end to end: the real repository's benchmarks run in a child pytest.

Each test starts ``python -m pytest`` (pytester, in a subprocess) on this repository's bench
folders with its pytest.ini and rootdir, from a fresh temporary working directory, so nothing
(benchmark storage, JSON) lands in the repository and the runs are independent under xdist.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attnbench.spec.study import DEFAULT_SPECS

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
BENCH_ATTENTION = str(REPO / "bench_attention")
BENCH_MLA = str(REPO / "bench_mla")
CPU_SPECS = ("q1s1k", "2q64_4q1s128")


@pytest.fixture(autouse=True)
def child_is_not_an_xdist_worker(monkeypatch):
    """Under ``-n``, this process is an xdist worker; pytest-benchmark disables itself in any pytest that
    sees PYTEST_XDIST_WORKER, so the child must not inherit it."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-c", str(REPO / "pytest.ini"),
                                         "--rootdir", str(REPO), *args, timeout=300)


def collected_ids(result: pytest.RunResult) -> list[str]:
    return [line.split("::", 1)[1] for line in result.outlines if "::" in line and not line.startswith(" ")]


def assert_usage_error(result: pytest.RunResult, token: str) -> None:
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # 4
    error_lines = [line for line in result.errlines if line.strip()]
    assert len(error_lines) == 1, output
    assert error_lines[0].startswith("ERROR: "), output
    assert token in error_lines[0]
    assert "Traceback" not in output


def test_collect_only_k_flashmla_lists_exactly_the_flashmla_ids(pytester):
    result = run(pytester, BENCH_MLA, "--collect-only", "-q", "-k", "flashmla")
    assert result.ret == 0
    ids = collected_ids(result)
    assert ids == [f"test_mla[FLASHMLA-{spec}]" for spec in DEFAULT_SPECS["mla"]]
    assert "test_mla[FLASHMLA-64q1s1k]" in ids


def test_ids_carry_backend_spec_and_sweep_value(pytester):
    result = run(pytester, BENCH_MLA, "--collect-only", "-q", "--backends", "cutlass_mla", "--batch-specs",
                 "64q1s4k", "--sweep-param", "num_kv_splits", "--sweep-values", "4")
    assert result.ret == 0
    assert collected_ids(result) == ["test_mla[CUTLASS_MLA-64q1s4k-num_kv_splits=4]"]


@pytest.mark.parametrize("args, token", [
    (["--batch-specs", "8q1S1k"], "8q1S1k"),
    (["--backends", "nope"], "nope"),
    (["--device", "gpu"], "gpu"),
    (["--timed-region", "kernel"], "kernel"),
    (["--kv-fill", "ones"], "ones"),
], ids=["bad-spec", "unknown-backend", "bad-device", "unknown-region", "unknown-kv-fill"])
def test_bad_options_are_one_line_usage_errors(pytester, args, token):
    # paths first: the options take several values (nargs="+") and would swallow a path after them
    assert_usage_error(run(pytester, BENCH_MLA, "--collect-only", "-q", *args), token)


def test_unknown_yaml_key_is_a_one_line_usage_error(pytester):
    config = pytester.path / "bad_study.yaml"
    config.write_text("backends: [flashmla]\nbatch_specz: [q1s1k]\n")
    result = run(pytester, BENCH_MLA, "--collect-only", "-q", "--bench-config", str(config))
    assert_usage_error(result, "batch_specz")
    assert "bad_study.yaml" in result.errlines[0]


def test_cpu_path_runs_and_records_structured_results(pytester):
    out = pytester.path / "bench.json"
    result = run(pytester, BENCH_ATTENTION, BENCH_MLA, "-k", "REFERENCE", "--device", "cpu", "--batch-specs",
                 *CPU_SPECS, "--repeats", "3", "--warmup-iters", "1", "--num-q-heads", "8",
                 f"--benchmark-json={out}")
    assert result.ret == 0, "\n".join(result.outlines[-30:])
    result.assert_outcomes(passed=4)
    data = json.loads(out.read_text())
    benches = data["benchmarks"]
    assert sorted(b["name"] for b in benches) == sorted(
        f"{test}[REFERENCE-{spec}]" for test in ("test_attention", "test_mla") for spec in CPU_SPECS)
    for bench in benches:
        info = bench["extra_info"]
        for key in ("schema", "batch_spec", "backend", "shape", "verified", "work", "timing", "cache_state"):
            assert key in info, key
        assert info["schema"] == 2 and info["work"]["flops"] > 0
        assert info["backend"] == "REFERENCE"
        assert info["batch_spec"] in CPU_SPECS and info["batch_spec"] in bench["name"]
        assert isinstance(info["shape"], dict) and info["shape"]["num_q_heads"] == 8
        assert info["verified"] is True
        assert "host" in info["timing"]["time_unit"]
        assert info["cache_state"] in ("cold", "warm")
        assert 1 <= bench["stats"]["rounds"] <= 3
        assert bench["stats"]["rounds"] == info["timing"]["rounds"]  # every timed round reached the stats
        assert info["timing"]["mode"] == "host"
        assert bench["stats"]["min"] > 0
    attention_q1 = next(b for b in benches if b["name"] == "test_attention[REFERENCE-q1s1k]")["extra_info"]
    # one decode over 1024 keys, 8 q heads of 128: 2 * Hq * (d_qk + d_v) * pairs
    assert attention_q1["work"]["flops"] == 2 * 8 * (128 + 128) * 1024
    assert attention_q1["shape"]["head_dim"] == 128


@pytest.fixture
def no_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: FLASH_ATTN would run, not skip")


def test_flash_attn_skips_with_a_reason_without_a_gpu(pytester, no_gpu):
    result = run(pytester, BENCH_ATTENTION, "-k", "FLASH_ATTN", "--batch-specs", "q1s1k", "-rs", "--allow-untimed")
    assert result.ret == 0
    result.assert_outcomes(skipped=1)
    skip_lines = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1
    assert "FLASH_ATTN" in skip_lines[0]
    assert re.search(r"requires|CUDA", skip_lines[0])


def test_flash_attn_on_cpu_needs_a_cuda_device(pytester):
    result = run(pytester, BENCH_ATTENTION, "-k", "FLASH_ATTN", "--batch-specs", "q1s1k", "--device", "cpu", "-rs",
                 "--allow-untimed")
    assert result.ret == 0
    result.assert_outcomes(skipped=1)
    assert any("needs a CUDA device" in line for line in result.outlines if line.startswith("SKIPPED"))


def test_benchmark_save_and_compare_round_trip(pytester):
    storage = pytester.path / "storage"
    common = [BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", "--batch-specs", "q1s1k", "--repeats", "3",
              "--warmup-iters", "0", "--num-q-heads", "8", f"--benchmark-storage=file://{storage}"]
    saved = run(pytester, *common, "--benchmark-save=baseline")
    assert saved.ret == 0, "\n".join(saved.outlines[-30:])
    files = list(storage.rglob("*baseline.json"))
    assert len(files) == 1
    run_id = files[0].stem.split("_", 1)[0]  # e.g. 0001
    stored = json.loads(files[0].read_text())
    assert [b["name"] for b in stored["benchmarks"]] == ["test_attention[REFERENCE-q1s1k]"]

    compared = run(pytester, *common, "--benchmark-compare")
    assert compared.ret == 0, "\n".join(compared.outlines[-30:])
    text = "\n".join(compared.outlines + compared.errlines)
    assert f"Comparing against benchmarks from: {files[0].parent.name}/{files[0].name}" in text
    rows = [line for line in compared.outlines if line.startswith("test_attention[REFERENCE-q1s1k]")]
    assert len(rows) == 2  # the current run and the saved one, side by side
    assert any("(NOW)" in row for row in rows)
    assert any(f"({run_id}_base" in row for row in rows)  # the table may truncate the saved run's name


def test_compare_against_a_storage_outside_the_working_directory_warns_only_on_what_matters(pytester,
                                                                                            tmp_path_factory):
    """pytest-benchmark's own machine check crashed here (it names the storage relative to the working directory)
    and warned on every difference, such as this suite's measured peaks: bench_shim's check replaces it."""
    storage = tmp_path_factory.mktemp("storage")  # not under pytester.path, the child's working directory
    common = [BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", "--batch-specs", "q1s256", "--repeats", "3",
              "--warmup-iters", "0", "--benchmark-only", f"--benchmark-storage=file://{storage}"]
    saved = run(pytester, *common, "--benchmark-save", "A")
    assert saved.ret == 0, "\n".join(saved.outlines[-30:] + saved.errlines)
    [path] = storage.rglob("0001_A.json")

    def compare(*extra: str) -> str:
        result = run(pytester, *common, "--benchmark-compare", "0001", *extra)
        text = "\n".join(result.outlines + result.errlines)
        assert result.ret == 0, text
        assert "INTERNALERROR" not in text and "Comparing against benchmarks from:" in text, text
        return text

    def edit(change) -> None:
        data = json.loads(path.read_text())
        change(data["machine_info"])
        path.write_text(json.dumps(data))

    def not_what_matters(info: dict) -> None:  # what differs between any two runs, even on one machine
        info.update(node="another-host", cpu={"brand_raw": "another CPU"}, python_version="3.99.0")
        info["attnbench"].update(peaks={"peak_bf16_tflops": 1.0}, pytest_benchmark="0.0.1",
                                 gpus_used=[{"index": 7, "name": None, "uuid": "GPU-x"}])

    for text in (compare(), edit(not_what_matters) or compare()):
        assert "machine_info" not in text and "machine differs" not in text, text
    edit(lambda info: info["attnbench"].update(vllm="0.27.0"))
    text = compare("-W", "error::pytest_benchmark.logger.PytestBenchmarkWarning")
    warned = [line for line in text.splitlines() if "machine differs" in line]
    assert len(warned) == 1, text
    assert "machine differs from the saved run 0001_A (this run vs saved): vllm none vs 0.27.0" in warned[0], text
    assert "machine_info" not in text, text


def test_a_shipped_yaml_study_drives_collection(pytester):
    yaml = pytest.importorskip("yaml")
    config = REPO / "configs" / "cutlass_numsplits.yaml"
    assert config.is_file()
    raw = yaml.safe_load(config.read_text())
    sweep = raw["parameter_sweep"]
    points = (["auto"] if sweep.get("include_auto") else []) + [v for v in sweep["values"] if v != "auto"]
    expected = {f"test_mla[CUTLASS_MLA-{spec}-{sweep['param_name']}={v}]" for spec in raw["batch_specs"]
                for v in points}
    result = run(pytester, BENCH_ATTENTION, BENCH_MLA, "--collect-only", "-q", "--bench-config", str(config))
    assert result.ret == 0, "\n".join(result.outlines[-20:] + result.errlines)
    ids = collected_ids(result)
    assert len(ids) == len(expected) and set(ids) == expected  # no standard-attention case: none is named


def test_benchmark_histogram_and_compare_fail_work_on_the_recorded_stats(pytester):
    storage = pytester.path / "storage"
    common = [BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", "--batch-specs", "q1s1k", "--repeats", "4",
              "--warmup-iters", "0", "--num-q-heads", "8", f"--benchmark-storage=file://{storage}"]
    hist = pytester.path / "hist" / "h"
    result = run(pytester, *common, "--benchmark-save=base", f"--benchmark-histogram={hist}")
    assert result.ret == 0, "\n".join(result.outlines[-30:])
    svgs = list(hist.parent.glob("h*.svg"))
    assert svgs and "REFERENCE" in svgs[0].read_text()
    # a 1000000% allowance never fails; the option itself must be accepted on our device-time stats
    compared = run(pytester, *common, "--benchmark-compare", "--benchmark-compare-fail=median:1000000%")
    assert compared.ret == 0, "\n".join(compared.outlines[-30:])
