"""The reporting plugin end to end: real pytest sessions of the CPU benchmark path, in subprocesses."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.results.exports import load_results, partial_path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
CPU = ["--device", "cpu", "--num-q-heads", "8", "--repeats", "3", "--warmup-iters", "0", "-p", "no:cacheprovider"]
FAST_SPECS = ["2q16_2q1s64", "q1s256"]  # a few ms per round on the CPU reference


def run_pytest(*args: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = _env()
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _env() -> dict[str, str]:
    # the inner session must not inherit the outer one's xdist worker identity or options
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="220")
    return env


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One session with every output on: CSV, JSON, plots, memory, pytest-benchmark JSON and storage."""
    out = tmp_path_factory.mktemp("first")
    proc = run_pytest("bench_attention", "bench_mla", *CPU, "-k", "REFERENCE or FLASH_ATTN",
                      "--batch-specs", *FAST_SPECS, "--profile-memory",
                      "--output-csv", str(out / "r.csv"), "--output-json", str(out / "r.json"), "--plot",
                      "--benchmark-json", str(out / "bench.json"),
                      "--benchmark-storage", f"file://{out / 'storage'}", "--benchmark-save", "base")
    return out, proc


def test_session_prints_a_table_per_study_and_family(first_run) -> None:
    out, proc = first_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.split("attnbench summary", 1)[1]
    assert "cli · attention" in summary and "cli · mla" in summary
    assert "FLASH_ATTN needs a CUDA device (--device cpu)" in summary  # the skip reason, as a footnote
    assert "MiB" in summary  # --profile-memory
    # pytest-benchmark's own table is still there
    assert "test_attention[REFERENCE-2q16_2q1s64]" in proc.stdout and "Rounds" in proc.stdout


def test_session_says_where_the_host_time_went(first_run) -> None:
    """One line sums every timed case's host phases (from its record) and the timed calls themselves."""
    out, proc = first_run
    line = next(line for line in proc.stdout.splitlines() if "where the time went" in line)
    rows = [r for r in json.loads((out / "r.json").read_text())["results"] if r["status"] == "passed"]
    assert f"where the time went, {len(rows)} cases: host " in line, line
    total = sum(r["extra"]["host_seconds"]["total"] for r in rows)
    shown = float(re.search(r"host ([0-9.]+) s", line).group(1))
    assert abs(shown - total) <= 0.05 + 1e-9, (line, total)
    timed = float(re.search(r"timing ([0-9.]+) s \(the timed calls themselves ([0-9.]+) s\)", line).group(2))
    assert 0 < timed <= float(re.search(r"timing ([0-9.]+) s", line).group(1)) + 0.05, line


def test_session_writes_csv_json_and_plots_and_removes_its_journal(first_run) -> None:
    out, proc = first_run
    rows = read_csv(out / "r.csv")
    assert len(rows) == 8  # 2 families x (REFERENCE + one skipped GPU backend) x 2 specs
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("passed", "skipped")}
    assert len(by_status["passed"]) == 4 and len(by_status["skipped"]) == 4
    assert all(r["backend"] == "REFERENCE" and float(r["median_time"]) > 0 and int(r["kv_memory_bytes"]) > 0
               for r in by_status["passed"])
    assert all("needs a CUDA device" in r["error"] for r in by_status["skipped"])
    doc = json.loads((out / "r.json").read_text())
    assert doc["machine_info"]["attnbench"]["gpu"] is None and len(doc["results"]) == 8
    assert {r["batch_spec"] for r in doc["results"]} == set(FAST_SPECS)
    assert not partial_path(out / "r.json").exists()
    assert (out / "r.cli.attention.bars.png").stat().st_size > 10_000
    assert (out / "r.cli.mla.bars.png").stat().st_size > 10_000


def test_csv_times_match_pytest_benchmark_json(first_run) -> None:
    out, _ = first_run
    ours = {(r["family"], r["batch_spec"]): float(r["median_time"]) for r in read_csv(out / "r.csv")
            if r["status"] == "passed"}
    theirs = json.loads((out / "bench.json").read_text())["benchmarks"]
    assert len(theirs) == 4
    for entry in theirs:
        info = entry["extra_info"]
        assert ours[(info["family"], info["batch_spec"])] == pytest.approx(entry["stats"]["median"])


def test_baseline_verdicts_fail_the_run_and_pytest_benchmark_compare_still_works(first_run, tmp_path: Path) -> None:
    out, _ = first_run
    doc = json.loads((out / "bench.json").read_text())
    for entry in doc["benchmarks"]:
        # a baseline of ~1 ns with a tight spread: this run is SLOWER however noisy this machine is, as long
        # as it has enough rounds (7, below) for the bootstrap, which one wild round cannot sway
        entry["stats"]["data"] = [1e-9 * (1 + i * 1e-3) for i in range(7)]
        entry["stats"].update(rounds=7, median=entry["stats"]["data"][3])
    baseline = tmp_path / "fast_baseline.json"
    baseline.write_text(json.dumps(doc))
    verdict_json = tmp_path / "verdicts.json"
    proc = run_pytest("bench_attention", "bench_mla", *CPU, "-k", "REFERENCE", "--batch-specs", *FAST_SPECS,
                      "--repeats", "7", "--baseline-json", str(baseline), "--fail-on-regression",
                      "--verdict-json", str(verdict_json),
                      "--benchmark-storage", f"file://{out / 'storage'}", "--benchmark-compare", "0001",
                      "--benchmark-compare-fail", "median:100000%")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout  # every test passed: the exit status is the regression's
    assert "Verdicts vs" in proc.stdout and "4 SLOWER" in proc.stdout
    assert "failing the run (--fail-on-regression)" in proc.stdout
    assert "(0001_base)" in proc.stdout  # pytest-benchmark's comparison ran too
    verdicts = json.loads(verdict_json.read_text())
    assert verdicts["counts"]["SLOWER"] == 4
    assert {c["method"] for c in verdicts["cases"]} == {"bootstrap"}
    assert {c["label"] for c in verdicts["cases"]} == {f"REFERENCE {fam} {spec}" for fam in ("attention", "mla")
                                                       for spec in FAST_SPECS}


def test_baseline_from_another_gpu_is_refused_before_anything_runs(tmp_path: Path) -> None:
    args = ["bench_attention", *CPU, "-k", "REFERENCE", "--batch-specs", "q1s256",
            "--baseline-json", str(DATA / "verdict_baseline.json")]
    refused = run_pytest(*args)
    assert refused.returncode == 4  # a usage error
    assert "GPU model differs" in refused.stderr and "NVIDIA H100 80GB HBM3" in refused.stderr
    allowed = run_pytest(*args, "--allow-gpu-mismatch", "--collect-only", "-q",
                         "--output-json", str(tmp_path / "r.json"))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "attnbench WARNING: GPU model differs" in allowed.stdout
    assert not list(tmp_path.iterdir())  # a session that measured nothing writes no files


FAKE_BENCH = '''
import pytest
from attnbench.pytest_plugin.benchmark_feed import run_benchmark

pytestmark = pytest.mark.bench_family("attention")


def test_fake_kernel(bench_case, benchmark):
    if bench_case.batch_spec == "q1s512":
        raise AssertionError("fake kernel wrote NaN at (0, 3)")
    if bench_case.batch_spec == "q1s128":
        pytest.skip("fake: not supported for this spec")
    run_benchmark(bench_case, benchmark)
'''


def test_failures_and_skips_reach_the_table_and_outputs(tmp_path: Path) -> None:
    (tmp_path / "test_fake_bench.py").write_text(FAKE_BENCH)
    proc = run_pytest("-p", "attnbench.pytest_plugin.plugin", "-p", "attnbench.pytest_plugin.reporting_plugin",
                      "test_fake_bench.py", *CPU,
                      "--backends", "REFERENCE", "FLASH_ATTN", "--batch-specs", "q1s256", "q1s512", "q1s128",
                      "--output-csv", "out.csv", "--color=yes", cwd=tmp_path)
    assert proc.returncode == 1  # the failed case fails the run
    rows = {(r["backend"], r["batch_spec"]): r for r in read_csv(tmp_path / "out.csv")}
    assert len(rows) == 6
    assert rows[("REFERENCE", "q1s256")]["status"] == "passed" and rows[("REFERENCE", "q1s256")]["median_time"]
    failed = rows[("REFERENCE", "q1s512")]
    assert failed["status"] == "failed" and "AssertionError: fake kernel wrote NaN at (0, 3)" in failed["error"]
    call_skip = rows[("REFERENCE", "q1s128")]
    assert call_skip["status"] == "skipped" and call_skip["error"] == "fake: not supported for this spec"
    assert all(rows[("FLASH_ATTN", s)]["status"] == "skipped" for s in ("q1s256", "q1s512", "q1s128"))
    summary = proc.stdout.split("attnbench summary", 1)[1]
    assert re.search(r"\x1b\[[0-9;]*31m[^\x1b]*FAILED\[\d\]", summary)
    assert re.search(r"\x1b\[[0-9;]*31m[^\x1b]*fake kernel wrote NaN", summary)
    assert "fake: not supported for this spec" in summary


def test_a_killed_study_keeps_its_finished_cases_and_resume_skips_them(tmp_path: Path) -> None:
    out = tmp_path / "study.json"
    journal = partial_path(out)
    slow = subprocess.Popen(  # a fast case, then one that would take a minute
        [sys.executable, "-m", "pytest", "bench_attention", "-k", "REFERENCE", "--device", "cpu", "--num-q-heads",
         "8", "-p", "no:cacheprovider", "--batch-specs", "2q16_2q1s64", "q2k", "--repeats", "100",
         "--noise-target", "0", "--output-json", str(out)],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (journal.exists() and journal.read_text().endswith("\n")):
            assert slow.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no case was journaled"
            time.sleep(0.05)
    finally:
        slow.kill()  # SIGKILL: no sessionfinish, no final outputs
        slow.wait()
    assert not out.exists()
    [done] = load_results(journal).results
    assert (done.key.batch_spec, done.status, done.times.rounds) == ("2q16_2q1s64", "passed", 100)

    resumed = run_pytest("bench_attention", *CPU, "-k", "REFERENCE", "--batch-specs", "2q16_2q1s64", "q1s256",
                         "--resume", str(journal), "--output-json", str(out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 case(s) already done" in resumed.stdout and "1 passed" in resumed.stdout
    final = {r.key.batch_spec: r for r in load_results(out).results}
    assert set(final) == {"2q16_2q1s64", "q1s256"}
    assert final["2q16_2q1s64"].times.samples == done.times.samples  # carried, not re-measured
    assert final["q1s256"].times.rounds == 3
    assert not journal.exists()


def test_under_xdist_results_reach_the_controller(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    out = tmp_path / "r.csv"
    stale = partial_path(out)
    stale.write_text('{"backend": "OLD", "batch_spec": "q1s1k"}\n')  # left by a crashed earlier run
    proc = run_pytest("bench_attention", "bench_mla", *CPU, "-n", "2", "-k", "REFERENCE",
                      "--batch-specs", *FAST_SPECS, "--output-csv", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_csv(out)
    assert len(rows) == 4 and all(r["status"] == "passed" for r in rows)
    assert all(float(r["median_time"]) > 0 and int(r["rounds"]) >= 1 for r in rows)  # workers time the cases
    assert "not timed" not in proc.stdout
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("r.csv.partial.") and p != stale]
    assert len(kept) == 1 and "OLD" in kept[0].read_text()  # the earlier run's rows were set aside, not lost
    assert stale.exists()  # CSV cannot be resumed from, so this run's journal stays


# ------------------------------------------------------------------ usage errors before anything runs

def _bad_results_files(tmp_path: Path) -> dict[str, Path]:
    files = {"list": ("[1, 2]", "record 1 of 2: record is a number"),
             "foo": ('{"results": [{"foo": 1}]}', "results[0]: record has no 'backend'")}
    out = {}
    for name, (content, _) in files.items():
        out[name] = tmp_path / f"{name}.json"
        out[name].write_text(content)
    bench = json.loads((DATA / "cpu_run.json").read_text())
    bench["benchmarks"][0]["stats"].pop("data")
    bench["benchmarks"][0]["stats"]["median"] = "x"
    out["median"] = tmp_path / "median.json"
    out["median"].write_text(json.dumps(bench))
    out["binary"] = tmp_path / "binary.json"
    out["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    return out


@pytest.mark.parametrize("option", ["--resume", "--baseline-json"])
def test_malformed_resume_or_baseline_file_is_one_usage_error(tmp_path: Path, option: str) -> None:
    expected = {"list": "record 1 of 2: record is a number, expected an object",
                "foo": "results[0]: record has no 'backend'",
                "median": 'benchmarks[0]: stats.median is "x", expected a number',
                "binary": "not a text results file"}
    for name, path in _bad_results_files(tmp_path).items():
        proc = run_pytest("bench_attention", *CPU, "-k", "REFERENCE", "--batch-specs", "q1s256", option, str(path))
        assert proc.returncode == 4, (name, proc.stdout + proc.stderr)
        assert f"ERROR: {option}: {path}: {expected[name]}" in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr and "passed" not in proc.stdout


@pytest.mark.parametrize("option, target, reason", [
    ("--output-json", "{tmp}", "it is a directory"),
    ("--output-csv", "/proc/nope.json", "cannot create a file in /proc"),
    ("--output-json", "{tmp}/a_file/r.json", "{tmp}/a_file is not a directory"),
])
def test_unwritable_output_is_a_usage_error_before_any_case_runs(tmp_path: Path, option, target, reason) -> None:
    (tmp_path / "a_file").write_text("x")
    target, reason = target.format(tmp=tmp_path), reason.format(tmp=tmp_path)
    proc = run_pytest("bench_attention", *CPU, "-k", "REFERENCE", "--batch-specs", "q1s256", option, target)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"ERROR: {option} {target}: cannot write the results there: {reason}" in proc.stderr
    assert "passed" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no journal, no temporary file


def test_resume_from_another_device_kind_deselects_nothing(tmp_path: Path) -> None:
    # a journal that timed the case on a GPU says nothing about the same case on the CPU (and vice versa)
    record = {"backend": "REFERENCE", "batch_spec": "q1s256", "family": "attention", "study": "cli",
              "num_layers": 1, "head_dim": 128, "num_q_heads": 8, "num_kv_heads": 8, "block_size": 16,
              "dtype": "bfloat16", "kv_cache_dtype": "auto", "backend_params": {}, "cache_state": "cold",
              "status": "passed", "median_time": 1e-5, "mean_time": 1e-5, "rounds": 3, "samples": [1e-5] * 3}
    for device, deselected in (("cuda", False), ("cpu", True)):
        journal = tmp_path / f"{device}.partial.jsonl"
        journal.write_text(json.dumps({**record, "device": device}) + "\n")
        proc = run_pytest("bench_attention", *CPU, "-k", "REFERENCE", "--batch-specs", "q1s256",
                          "--resume", str(journal), "--benchmark-disable")
        assert proc.returncode == (5 if deselected else 0), proc.stdout + proc.stderr  # 5: nothing left to run
        assert ("1 case(s) already done" in proc.stdout) is deselected, (device, proc.stdout)
        assert ("1 passed" in proc.stdout) is not deselected, (device, proc.stdout)


@pytest.mark.parametrize("args, message", [
    (["--plot", "--plot-dir", "/proc/attnbench-x"], "--plot-dir /proc/attnbench-x: cannot write plots there"),
    (["--verdict-json", "/proc/v.json", "--baseline-json", "{tmp}/b.json"],
     "--verdict-json /proc/v.json: cannot write the verdicts there"),
    (["--output-csv", "{tmp}/x", "--output-json", "{tmp}/x"], "--output-csv {tmp}/x: the same file as --output-json"),
    (["--output-json", "{tmp}/c.json", "--output-csv", "{tmp}/c.json.partial.jsonl"],
     "--output-csv {tmp}/c.json.partial.jsonl: the same file as the journal {tmp}/c.json.partial.jsonl"),
    (["--output-csv", "{tmp}/r.csv", "--output-json", "{tmp}/r.crossover.csv"],
     "--output-json {tmp}/r.crossover.csv: the same file as the crossover CSV"),
    (["--output-json", "{tmp}/b.json", "--baseline-json", "{tmp}/b.json"],
     "--output-json {tmp}/b.json: the same file as --baseline-json {tmp}/b.json"),
])
def test_clashing_or_unusable_paths_are_one_usage_error_before_anything_runs(tmp_path: Path, args, message) -> None:
    if any(a.startswith("--baseline-json") for a in args):
        (tmp_path / "b.json").write_text(json.dumps({"schema": 1, "results": [
            {"backend": "REFERENCE", "batch_spec": "q1s64", "status": "passed", "median_time": 1e-3,
             "mean_time": 1e-3, "rounds": 3, "samples": [1e-3] * 3}]}))
    given = [a.format(tmp=tmp_path) for a in args]
    proc = run_pytest("bench_attention", *CPU, "-k", "REFERENCE", "--batch-specs", "q1s64", *given)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert message.format(tmp=tmp_path) in proc.stderr
    given_baseline = any(a.startswith("--baseline-json") for a in args)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["b.json"] if given_baseline else [])


def test_plot_command_refuses_an_unusable_folder_before_any_work() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "plot", "no-such.json", "--out", "/proc/p"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--out /proc/p: cannot write plots there" in proc.stderr


@pytest.mark.parametrize("args", [["--batch-specs", "q1s64", "--num-layers", "100000000"],
                                  ["--batch-specs", "q1s100000k"], ["--batch-specs", "q1s1000000k"],
                                  ["--batch-specs", "1024q1s2097152k"]])
def test_a_cpu_case_that_cannot_fit_in_host_memory_is_a_skip_with_the_numbers(args) -> None:
    # sized before its block table is built: q1s1000000k is 64 M blocks, 1024q1s2097152k 2**37 of them
    proc = run_pytest("bench_attention", *CPU, "-k", "REFERENCE", *args, "-rs", "--allow-untimed", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"needs (at least )?~[\d.]+ GiB for \d+ layer buffers.*, [\d.]+ GiB available on the host",
                     proc.stdout)
    assert "1 skipped" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--verdict-threshold=-1"], "--verdict-threshold: must be a fraction between 0 and 1"),
    (["--verdict-threshold=nan"], "--verdict-threshold: must be a fraction between 0 and 1 (0.05 = 5 %), got 'nan'"),
    (["--search-timeout=-5"], "--search-timeout: must be a finite number of seconds >= 0"),
])
def test_reporting_numbers_are_checked_at_start_up(args, message) -> None:
    proc = run_pytest("bench_attention", *CPU, "--collect-only", "-q", *args)
    assert proc.returncode == 4 and message in proc.stderr, proc.stdout + proc.stderr


def test_a_users_plugin_gets_each_case_and_the_verdicts_through_the_suites_hooks(tmp_path: Path) -> None:
    """attnbench/pytest_plugin/hookspec.py: pytest_attnbench_case_done once per benchmark case (timed or skipped), with
    its typed outcome; pytest_attnbench_verdicts once, with the verdicts against --baseline-json."""
    (tmp_path / "hooks_probe.py").write_text(
        "import json\n"
        "def pytest_attnbench_case_done(config, outcome):\n"
        "    with open('events.jsonl', 'a') as f:\n"
        "        f.write(json.dumps({'case': outcome.key.backend + ' ' + outcome.key.batch_spec,\n"
        "                            'status': outcome.status,\n"
        "                            'median': outcome.median if outcome.timed else None}) + '\\n')\n"
        "def pytest_attnbench_verdicts(config, verdicts):\n"
        "    with open('events.jsonl', 'a') as f:\n"
        "        f.write(json.dumps({'verdicts': sorted(v.verdict for v in verdicts)}) + '\\n')\n")
    base = tmp_path / "base.json"
    args = [str(ROOT / "bench_attention"), *CPU, "--backends", "REFERENCE", "FLASH_ATTN", "--batch-specs", *FAST_SPECS]
    first = run_pytest(*args, "--benchmark-json", str(base))
    assert first.returncode == 0, first.stdout + first.stderr
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "hooks_probe", "--baseline-json", str(base),
                           "--rootdir", str(ROOT), "-c", str(ROOT / "pytest.ini")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    cases, verdicts = events[:-1], events[-1]
    assert sorted((e["case"], e["status"]) for e in cases) == sorted(
        [(f"REFERENCE {s}", "passed") for s in FAST_SPECS] + [(f"FLASH_ATTN {s}", "skipped") for s in FAST_SPECS])
    assert all(e["median"] > 0 for e in cases if e["status"] == "passed")
    assert len(verdicts["verdicts"]) == len(FAST_SPECS)
