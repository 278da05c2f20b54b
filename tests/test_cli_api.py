"""Upstream's command lines (benchmark.py) and Python API run through this suite unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
from attnbench.api import BenchmarkConfig, run_attention_benchmark, run_mla_benchmark

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.mark.parametrize("argv, expected", [
    (["--config", "configs/mla_decode.yaml"], ["--bench-config", "configs/mla_decode.yaml"]),
    (["--backends", "flash", "flashinfer", "--batch-specs", "q2k", "8q1s1k", "--output-csv", "results.csv"],
     ["--backends", "flash", "flashinfer", "--batch-specs", "q2k", "8q1s1k", "--output-csv", "results.csv"]),
    (["--backend", "cutlass_mla", "--sweep-param", "num_kv_splits", "--sweep-values", "1", "2", "--include-auto"],
     ["--backends", "cutlass_mla", "--sweep-values", "1", "2", "--sweep-param", "num_kv_splits",
      "--sweep-include-auto"]),
    (["--num-layers", "4", "--head-dim", "64", "--profile-memory", "--repeats", "5", "--warmup-iters", "1"],
     ["--num-layers", "4", "--head-dim", "64", "--repeats", "5", "--warmup-iters", "1", "--profile-memory"]),
    (["--dtype", "float16", "--seed", "7", "--noise-target", "0.01"],
     ["--dtype", "float16", "--seed", "7", "--noise-target", "0.01"]),
])
def test_seed_flags_translate_to_the_suite_options(argv, expected):
    args = benchmark.to_pytest_args(argv)
    joined = " ".join(args)
    assert " ".join(expected) in joined or all(token in args for token in expected)
    for flag in expected[::2]:
        if flag.startswith("--"):
            assert flag in args
    assert "--config" not in args  # upstream's --config is this suite's --bench-config


def test_pytest_arguments_pass_through():
    args = benchmark.to_pytest_args(["--batch-specs", "q2k", "-k", "FLASH_ATTN", "--benchmark-json", "x.json"])
    assert args[-4:] == ["-k", "FLASH_ATTN", "--benchmark-json", "x.json"]


def test_value_flags_are_the_pytest_options_and_carry_their_value():
    args = benchmark.to_pytest_args(["--dtype", "float32", "--seed", "3", "--noise-target", "0.02", "-q"])
    for flag, value in (("--dtype", "float32"), ("--seed", "3"), ("--noise-target", "0.02")):
        assert args[args.index(flag) + 1] == value
        assert args.index(flag) < args.index("-rs")  # translated as a seed flag, not passed through
    assert args[-1] == "-q"
    assert all(f"--{name}" in benchmark._parser().format_help() for name in ("dtype", "seed", "noise-target"))


@pytest.mark.parametrize("abbreviation", ["--co", "--sw", "--conf", "--batch", "--num"])
def test_pytest_short_spellings_are_not_taken_as_abbreviated_seed_flags(abbreviation):
    # --co is pytest's --collect-only, --sw its --stepwise: not upstream's --config / an ambiguous --sweep-*
    args = benchmark.to_pytest_args(["--batch-specs", "q1s1k", abbreviation, "-q"])
    assert args[-2:] == [abbreviation, "-q"]
    assert "--bench-config" not in args
    assert args[args.index("--batch-specs") + 1:args.index("--batch-specs") + 2] == ["q1s1k"]


def test_seed_command_line_with_pytest_short_collect_only_flag_collects():
    proc = subprocess.run([sys.executable, "benchmark.py", "--backend", "reference", "--device", "cpu",
                           "--batch-specs", "q1s1k", "--co", "-q"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = sorted(line for line in proc.stdout.splitlines() if "::test_" in line)
    assert ids == ["bench_attention/test_attention.py::test_attention[REFERENCE-q1s1k]",
                   "bench_mla/test_mla.py::test_mla[REFERENCE-q1s1k]"]
    assert "passed" not in proc.stdout  # collected only


def test_compare_command_reports_a_malformed_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    proc = subprocess.run([sys.executable, "benchmark.py", "compare", str(bad), str(bad)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: record 1 of 2: record is a number, expected an object"


def test_seed_command_line_runs_the_cpu_path_and_writes_csv(tmp_path):
    out = tmp_path / "results.csv"
    proc = subprocess.run([sys.executable, "benchmark.py", "--backend", "reference", "--device", "cpu",
                           "--batch-specs", "q1s1k", "2q64_4q1s128", "--num-q-heads", "8", "--repeats", "3",
                           "--warmup-iters", "1", "--output-csv", str(out), "-k", "test_attention"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = out.read_text().splitlines()
    assert rows[0].startswith("backend,batch_spec,")
    assert {r.split(",")[1] for r in rows[1:]} == {"q1s1k", "2q64_4q1s128"}


def test_seed_command_line_rejects_unknown_backend_as_usage_error():
    proc = subprocess.run([sys.executable, "benchmark.py", "--backends", "nope"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4
    assert "unknown backend 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_seed_config_command_line_collects_every_case():
    proc = subprocess.run([sys.executable, "benchmark.py", "--config", "configs/mla_decode.yaml", "--collect-only",
                           "-q"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::test_mla[" in line]
    assert len(ids) == 18 * 5  # 18 specs x 5 MLA backends in the YAML
    assert any(line.endswith("test_mla[FLASHMLA-64q1s1k]") for line in ids)


def test_api_runs_the_same_measurement_on_cpu():
    config = BenchmarkConfig(backend="reference", batch_spec="2q16_4q1s64", num_q_heads=4, num_kv_heads=2,
                             head_dim=32, device="cpu", repeats=4, warmup_iters=1)
    result = run_attention_benchmark(config)
    assert result.outcome.status == "passed" and result.success
    assert (result.outcome.key.backend, result.outcome.key.batch_spec) == ("REFERENCE", "2q16_4q1s64")
    assert 0 < result.min_time <= result.mean_time <= result.max_time
    shape = result.outcome.key.shape
    assert shape["num_q_heads"] == 4 and shape["head_dim"] == 32  # custom dims are honoured, not dropped
    assert 0 < result.outcome.times.rounds <= 4


def test_mla_api_honours_custom_dims_and_reports_skips():
    config = BenchmarkConfig(backend="REFERENCE", batch_spec="q8s16", num_q_heads=2, kv_lora_rank=32,
                             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, block_size=4,
                             device="cpu", repeats=2, warmup_iters=0)
    result = run_mla_benchmark("reference", config)
    shape = result.outcome.key.shape
    assert result.outcome.status == "passed" and shape["kv_lora_rank"] == 32 and shape["head_dim"] == 40
    skipped = run_mla_benchmark("FLASHMLA", config, reorder_batch_threshold=4)
    assert skipped.outcome.status == "skipped" and "CUDA" in (skipped.error or "")
    with pytest.raises(ValueError, match="unknown backend"):
        run_mla_benchmark("nope", config)


def _cpu(**kw):
    from attnbench.api import BenchmarkConfig

    return BenchmarkConfig("REFERENCE", "q1s64", device="cpu", **kw)


@pytest.mark.parametrize("call, error, said", [
    (lambda api: api.run_attention_benchmark("REFERENCE"), TypeError, "config is str 'REFERENCE', expected a Bench"),
    (lambda api: api.run_mla_benchmark("REFERENCE", None), TypeError, "config is NoneType None, expected a Bench"),
    (lambda api: api.run_attention_benchmark(_cpu(extra="notadict")), TypeError, "BenchmarkConfig.extra is str"),
    (lambda api: api.run_mla_benchmark("REFERENCE", _cpu(), num_kv_splits=-1), ValueError, "num_kv_splits: must be"),
    (lambda api: api.run_mla_benchmark("REFERENCE", _cpu(), num_kv_splits="x"), ValueError, "num_kv_splits: must be"),
    (lambda api: api.run_mla_benchmark("REFERENCE", _cpu(), num_kv_splits=2.5), ValueError, "must be an integer"),
    (lambda api: api.run_mla_benchmark("REFERENCE", _cpu(), reorder_batch_threshold=2**70), ValueError,
     "reorder_batch_threshold: must be < 2**63"),
    (lambda api: api.run_attention_benchmark(_cpu(num_layers=2**70)), ValueError, "BenchmarkConfig.num_layers: must"),
], ids=["bare-backend-name", "none-config", "extra-not-a-dict", "splits-negative", "splits-text", "splits-float",
        "threshold-2**70", "num-layers-2**70"])
def test_the_api_refuses_what_the_command_line_refuses_naming_the_argument(call, error, said):
    """The Python API checks its arguments with the option table's rules, before any work: a TypeError or
    ValueError naming the argument, never an AttributeError from deep inside, nor a value the CLI would refuse."""
    from attnbench import api

    with pytest.raises(error) as info:
        call(api)
    assert said in str(info.value)
