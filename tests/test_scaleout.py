"""Scale-out: the worker plan (one per GPU, never two on one), xdist runs whose numbers reach
pytest-benchmark's JSON and storage, and crashes that lose one case, not the run (CPU REFERENCE path)."""

from __future__ import annotations

import json
import signal
import statistics
from pathlib import Path

import pytest

from attnbench.pytest_plugin.scaleout import (POISONED_EXIT, PlanError, describe_exit, plan_workers,
                                              read_flight_recorder, sticky_cuda_error)
from test_report_plugin import CPU, run_pytest

pytest.importorskip("xdist")

SPECS = ["q1s256", "2q16_2q1s64", "q1s128", "q1s64"]
BASE = ["bench_attention", "-k", "REFERENCE", *CPU, "--batch-specs", *SPECS, "-p", "no:randomly"]
FAULTS = ["-p", "tests.plugins.fault_injection"]


# ------------------------------------------------------------------ the plan

@pytest.mark.parametrize("kwargs, gpus, workers", [
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": None}, ("0", "1"), 2),  # default
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": "auto"}, ("0", "1"), 2),
    ({"device": "cuda", "visible_gpus": ["0", "1", "2"], "numprocesses": None, "gpus": "2"}, ("0", "1"), 2),
    ({"device": "cuda", "visible_gpus": ["0", "1", "2"], "numprocesses": None, "gpus": "2,0"}, ("2", "0"), 2),
    ({"device": "cuda:1", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": None}, ("1",), 1),
    ({"device": "cuda", "visible_gpus": ["4", "7"], "numprocesses": 1, "gpus": None}, ("4",), 1),  # -n 1 of 2
    ({"device": "cuda", "visible_gpus": ["0"], "numprocesses": 0, "gpus": None}, None, 0),  # -n 0: in-process
    ({"device": "cuda", "visible_gpus": ["0"], "numprocesses": None, "gpus": "none"}, None, 0),
    ({"device": "cpu", "visible_gpus": [], "numprocesses": 2, "gpus": None}, None, 2),  # CPU: xdist as asked
    ({"device": "cuda", "visible_gpus": [], "numprocesses": 2, "gpus": None}, None, 2),  # no GPU: cases skip
])
def test_plan(kwargs, gpus, workers):
    plan = plan_workers(**kwargs)
    assert (plan.gpus, plan.workers) == (gpus, workers)


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda", "visible_gpus": ["0"], "numprocesses": 2, "gpus": None}, "-n 2 would put more than one"),
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": 3, "gpus": "auto"}, "--gpus auto selects 2"),
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": "0,0"}, "listed twice"),
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": "3"}, "--gpus 3: 2 GPU(s)"),
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": "5"}, "--gpus 5"),
    ({"device": "cuda", "visible_gpus": ["0", "1"], "numprocesses": None, "gpus": "1,x"}, "'x' is not a visible"),
    ({"device": "cuda", "visible_gpus": ["0"], "numprocesses": 1, "gpus": "none"}, "--gpus none runs in-process"),
    ({"device": "cuda:3", "visible_gpus": ["0"], "numprocesses": None, "gpus": None}, "--device cuda:3"),
    ({"device": "cpu", "visible_gpus": [], "numprocesses": None, "gpus": "2"}, "no GPU to pin"),
])
def test_plans_that_would_share_a_gpu_or_contradict_are_refused(kwargs, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_workers(**kwargs)


def test_without_xdist_a_gpu_run_is_in_process_and_says_so():
    plan = plan_workers(device="cuda", visible_gpus=["0"], numprocesses=None, gpus=None, xdist_available=False)
    assert plan.workers == 0 and "crash ends the run" in plan.why
    with pytest.raises(PlanError, match="needs pytest-xdist"):
        plan_workers(device="cuda", visible_gpus=["0"], numprocesses=None, gpus="auto", xdist_available=False)


def test_a_refused_plan_is_a_usage_error_before_anything_runs():
    proc = run_pytest("bench_attention", "--device", "cpu", "--gpus", "2", "-p", "no:cacheprovider")
    assert proc.returncode == 4 and "--gpus 2: no GPU to pin workers to" in proc.stderr


@pytest.mark.parametrize("status, text", [
    (-signal.SIGSEGV, "killed by SIGSEGV"), (-signal.SIGKILL, "OOM killer"), (3, "exit code 3"),
    (POISONED_EXIT, "sticky CUDA error"), (None, "unknown"),
])
def test_exit_status_is_described(status, text):
    assert text in describe_exit(status)


def test_sticky_cuda_errors_are_recognised():
    assert sticky_cuda_error("RuntimeError: CUDA error: an illegal memory access was encountered")
    assert sticky_cuda_error("torch.AcceleratorError: CUDA error: device-side assert triggered")
    assert not sticky_cuda_error("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not sticky_cuda_error("AssertionError: output does not match REFERENCE")


def test_flight_recorder_names_the_case_that_was_running(tmp_path: Path):
    events = tmp_path / "gw3.events.jsonl"
    events.write_text("\n".join([
        json.dumps({"event": "start", "nodeid": "a", "record": {"backend": "X"}}),
        json.dumps({"event": "done", "nodeid": "a"}),
        json.dumps({"event": "start", "nodeid": "b", "record": {"backend": "Y"}}),
        json.dumps({"event": "error", "nodeid": "b", "text": "RuntimeError: CUDA error: unspecified launch failure"}),
        '{"event": "do',  # cut short by the crash
    ]))
    (tmp_path / "gw3.fault.txt").write_text("Fatal Python error: Aborted\n\nCurrent thread 0x1:\n  File x\n")
    story = read_flight_recorder(tmp_path, "gw3")
    assert story.current == "b" and story.record == {"backend": "Y"}
    cause = story.cause("killed by SIGABRT")
    assert cause == ("RuntimeError: CUDA error: unspecified launch failure; Fatal Python error: Aborted; "
                     "killed by SIGABRT")
    assert read_flight_recorder(tmp_path, "gw9").current is None


# ------------------------------------------------------------------ xdist carries the numbers

def _benchmarks(path: Path) -> dict[str, dict]:
    return {b["fullname"]: b for b in json.loads(path.read_text())["benchmarks"]}


def test_n2_gives_the_serial_runs_cases_with_numbers_in_every_output(tmp_path: Path):
    storage = tmp_path / "storage"
    serial = run_pytest(*BASE, "--benchmark-json", str(tmp_path / "serial.json"),
                        "--output-json", str(tmp_path / "serial_out.json"),
                        "--benchmark-storage", f"file://{storage}", "--benchmark-save", "serial", timeout=400)
    assert serial.returncode == 0, serial.stdout + serial.stderr
    (saved,) = storage.rglob("0001_serial.json")
    # Doctor the stored baseline: two cases 1000x faster (now a regression), two 1000x slower.
    doctored = json.loads(saved.read_text())
    faster = {"test_attention[REFERENCE-q1s256]", "test_attention[REFERENCE-q1s64]"}
    for bench in doctored["benchmarks"]:
        factor = 1e-3 if bench["name"] in faster else 1e3
        for stat in ("min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "ld15iqr", "hd15iqr"):
            bench["stats"][stat] *= factor
    saved.write_text(json.dumps(doctored))
    parallel = run_pytest(*BASE, "-n", "2", "--benchmark-only", "--benchmark-json", str(tmp_path / "xdist.json"),
                          "--output-json", str(tmp_path / "xdist_out.json"),
                          "--benchmark-storage", f"file://{storage}", "--benchmark-save", "xdist",
                          "--benchmark-compare", "0001", "--benchmark-compare-fail", "median:50%", timeout=400)
    assert parallel.returncode != 0 and "Performance has regressed" in parallel.stdout + parallel.stderr
    regressed = {line.strip().split(" ")[0] for line in (parallel.stdout + parallel.stderr).splitlines()
                 if "Field 'median' has failed" in line}
    assert regressed == faster, parallel.stdout
    one, two = _benchmarks(tmp_path / "serial.json"), _benchmarks(tmp_path / "xdist.json")
    assert set(one) == set(two) and len(one) == len(SPECS)
    for name, b in two.items():
        assert b["params"] == one[name]["params"] and b["params"]["bench_backend"] == "REFERENCE"  # plain data
        assert b["options"]["timer"] == one[name]["options"]["timer"] == "time.perf_counter"
        assert b["stats"]["rounds"] >= 1 and len(b["stats"]["data"]) == b["stats"]["rounds"]
        assert b["extra_info"]["verified"] is True and b["extra_info"]["host_seconds"]["total"] > 0
        assert b["extra_info"]["batch_spec"] == one[name]["extra_info"]["batch_spec"]
        # (CPU host timings of two workers on a shared 2-core box say nothing about noise; the GPU
        # comparison of serial and --gpus runs is in README, measured on the H200)
        assert b["stats"]["median"] > 0
    # workers save nothing
    assert sorted(p.name for p in storage.rglob("*.json")) == ["0001_serial.json", "0002_xdist.json"]
    rows_one = json.loads((tmp_path / "serial_out.json").read_text())["results"]
    rows_two = json.loads((tmp_path / "xdist_out.json").read_text())["results"]
    key = lambda r: (r["backend"], r["batch_spec"])  # noqa: E731
    assert sorted(map(key, rows_one)) == sorted(map(key, rows_two))
    assert all(r["status"] == "passed" and r["median_time"] > 0 for r in rows_two)


# ------------------------------------------------------------------ a crash loses one case

@pytest.mark.parametrize("kind, cause", [
    ("segfault", "Fatal Python error: Segmentation fault; killed by SIGSEGV"),
    ("abort", "killed by SIGABRT"),
    ("exit", "exit code 3"),
    ("sigkill", "killed by SIGKILL"),
])
def test_a_dying_case_fails_alone_with_its_cause_and_everything_else_is_exported(tmp_path: Path, kind, cause):
    victim = "q1s128"
    proc = run_pytest(*BASE, *FAULTS, "--inject-fault", f"{kind}@{victim}", "-n", "2",
                      "--benchmark-json", str(tmp_path / "b.json"), "--output-json", str(tmp_path / "o.json"),
                      timeout=400)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"died while running bench_attention/test_attention.py::test_attention[REFERENCE-{victim}]" in proc.stdout
    assert cause in proc.stdout
    assert "replacing crashed worker" in proc.stdout
    assert "1 failed, 3 passed" in proc.stdout
    rows = {r["batch_spec"]: r for r in json.loads((tmp_path / "o.json").read_text())["results"]}
    assert set(rows) == set(SPECS)
    assert rows[victim]["status"] == "failed" and cause in rows[victim]["error"]
    assert all(rows[s]["status"] == "passed" and rows[s]["median_time"] > 0 for s in SPECS if s != victim)
    timed = {b["extra_info"]["batch_spec"] for b in json.loads((tmp_path / "b.json").read_text())["benchmarks"]}
    assert timed == set(SPECS) - {victim}
    (not_timed,) = json.loads((tmp_path / "b.json").read_text())["attnbench"]["not_timed"]
    assert (not_timed["status"], not_timed["count"]) == ("failed", 1) and cause in not_timed["reason"]
    assert not_timed["cases"] == [f"bench_attention/test_attention.py::test_attention[REFERENCE-{victim}]"]
    # read back with its case key: reports learn what failed from the JSON, not from a pytest log
    from attnbench.results.exports import load_results

    loaded = load_results(tmp_path / "b.json")
    (failed,) = [r for r in loaded.results if not r.timed]
    assert loaded.lists_untimed and failed.status == "failed" and cause in failed.reason
    assert (failed.key.backend, failed.key.batch_spec, failed.key.device) == ("REFERENCE", victim, "cpu")
    assert len(loaded.results) == len(SPECS)


def test_a_poisoned_worker_stops_and_its_next_case_runs_on_a_replacement(tmp_path: Path):
    # one worker: the case after the poisoned one is certainly queued on the same process
    proc = run_pytest(*BASE, *FAULTS, "--inject-fault", "fake-sticky-cuda@q1s256", "-n", "1",
                      "--output-json", str(tmp_path / "o.json"), timeout=400)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 rescheduled" in proc.stdout and "CUDA context poisoned" in proc.stdout + proc.stderr
    rows = {r["batch_spec"]: r for r in json.loads((tmp_path / "o.json").read_text())["results"]}
    assert rows["q1s256"]["status"] == "failed" and "illegal memory access" in rows["q1s256"]["error"]
    assert all(rows[s]["status"] == "passed" for s in SPECS if s != "q1s256")
    assert "1 failed, 3 passed" in proc.stdout


def test_in_process_a_poisoned_context_times_nothing_more(tmp_path: Path):
    proc = run_pytest(*BASE, *FAULTS, "--inject-fault", "fake-sticky-cuda@q1s256", "-rs")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 3 skipped" in proc.stdout
    assert "CUDA context poisoned by bench_attention/test_attention.py::test_attention[REFERENCE-q1s256]" in proc.stdout


def test_host_seconds_are_recorded_per_phase(tmp_path: Path):
    proc = run_pytest("bench_attention", "-k", "REFERENCE", *CPU, "--batch-specs", "q1s64",
                      "--benchmark-json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bench,) = json.loads((tmp_path / "b.json").read_text())["benchmarks"]
    host = bench["extra_info"]["host_seconds"]
    assert set(host) == {"setup", "verify", "timing", "profile", "total"}
    assert all(v >= 0 for v in host.values())
    assert host["total"] >= statistics.fsum(v for k, v in host.items() if k != "total") * 0.99


def _fake_gpu_run(tmp_path: Path, gpus: str, *args: str):
    """Run a tiny GPU study on a host that FAKES ``gpus`` as visible; returns the run and each worker's pin."""
    import subprocess
    import sys

    from test_report_plugin import ROOT, _env

    out = tmp_path / "pins"
    out.mkdir(exist_ok=True)
    env = {**_env(), "ATTNBENCH_FAKE_GPUS": gpus, "ATTNBENCH_FAKE_GPUS_OUT": str(out)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.plugins.fake_gpus", "bench_attention",
                           "-k", "FLASH_ATTN", "--batch-specs", "q1s64", "-p", "no:cacheprovider",
                           "--allow-untimed", *args],  # the faked GPU times nothing: its case skips
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    pins = sorted(p.read_text() for p in out.iterdir())
    return proc, pins


def test_one_worker_per_gpu_each_pinned_to_its_own(tmp_path: Path):
    proc, pins = _fake_gpu_run(tmp_path, "0,1,2")  # the default on a GPU host: --gpus auto
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pins == ["0", "1", "2"]
    assert "attnbench workers: 3 worker(s), one per GPU (0,1,2)" in proc.stdout


@pytest.mark.parametrize("args, pinned", [(["-n", "2"], ["0", "1"]), (["--gpus", "2,0"], ["0", "2"]),
                                          (["-n", "auto"], ["0", "1", "2"])])
def test_n_and_gpus_choose_which_gpus_the_workers_get(tmp_path: Path, args, pinned):
    proc, pins = _fake_gpu_run(tmp_path, "0,1,2", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pins == pinned


def test_more_workers_than_gpus_is_refused_before_any_worker_starts(tmp_path: Path):
    proc, pins = _fake_gpu_run(tmp_path, "0,1,2", "-n", "4")
    assert proc.returncode == 4 and "-n 4 would put more than one timing worker on a GPU" in proc.stderr
    assert pins == []


def test_a_replacement_worker_keeps_the_gpu_of_the_worker_it_replaces(tmp_path: Path):
    import re

    proc, pins = _fake_gpu_run(tmp_path, "0,1", "-p", "tests.plugins.fault_injection", "--inject-fault",
                               "exit@q1s128", "--inject-fault-at", "setup", "--batch-specs", "q1s64", "q1s128",
                               "q1s256", "q1s512", "q2s512", "q4s512")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    died = re.search(r"worker (gw\d) \(GPU (\d)\) died while running \S+q1s128\]: exit code 3", proc.stdout)
    assert died, proc.stdout
    files = {p.stem: p.read_text() for p in (tmp_path / "pins").iterdir()}
    replacements = sorted(set(files) - {"gw0", "gw1"})
    assert replacements and all(files[w] == died.group(2) for w in replacements), files
