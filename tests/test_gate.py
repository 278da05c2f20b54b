"""The regression gate: placements, the noise model between processes, the injected delay, and CI's rules."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest

from attnbench.measure import timing
from attnbench.results.outcome import CaseOutcome, Times, case_key
from attnbench.reporting.verdicts import (FASTER, SAME, SLOWER, NoiseModel, compare_runs, needs_recheck,
                                          placement_logs)
from factories import timed

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
BENCH_ATTENTION = str(REPO / "bench_attention")


def placed(spec: str, groups: list[list[float]]) -> CaseOutcome:
    """A timed case whose rounds came from ``len(groups)`` placements."""
    samples = [s for g in groups for s in g]
    outcome = timed("A", spec, 0.0, samples=samples)
    record = outcome.record
    part = dataclasses.replace(record.timing, placement_rounds=tuple(len(g) for g in groups))
    return dataclasses.replace(outcome, record=dataclasses.replace(record, timing=part))


def run_of(rng: random.Random, specs: list[str], *, process_sd: float, placement_sd: float, round_sd: float = 0.002,
           shift: float = 0.0, placements: int = 16, rounds: int = 2, slow_mode: float = 0.0,
           slow_share: tuple[float, float] = (0.0, 0.0)) -> list[CaseOutcome]:
    """One simulated process: each case moves by a process offset, each placement by its own, each round by noise.
    With ``slow_mode``, a share of the placements (drawn per case and process from ``slow_share``) runs that much
    slower: the two modes an H100 showed on memory-bound decodes (docs/REGRESSION_GATE.md)."""
    out = []
    for i, spec in enumerate(specs):
        base = 50e-6 * (1 + i % 7) * (1 + shift) * math.exp(rng.gauss(0, process_sd))
        share = rng.uniform(*slow_share)
        groups = []
        for _ in range(placements):
            where = base * math.exp(rng.gauss(0, placement_sd)) * (1 + slow_mode * (rng.random() < share))
            groups.append([where * math.exp(rng.gauss(0, round_sd)) for _ in range(rounds)])
        out.append(placed(spec, groups))
    return out


SPECS = [f"{n}q1s{k}k" for n in (8, 16, 32, 64, 128, 256) for k in (1, 2, 4, 8, 16, 32)]  # 36 cases


def verdicts_of(baselines, new, rechecks=None):
    return [v.verdict for v in compare_runs(baselines, new, rechecks=rechecks)]  # the default threshold, confidence


def gate(rng: random.Random, baselines, new, **noise) -> list[str]:
    """What the pytest gate does: a first verdict, then every case that leans slower timed in a fresh process."""
    first = compare_runs(baselines, new)
    again = run_of(rng, SPECS, **noise)
    rechecks = {v.key: [again[i]] for i, v in enumerate(first) if needs_recheck(v)}
    return verdicts_of(baselines, new, rechecks)


H100_LIKE = dict(process_sd=0.002, placement_sd=0.004)
TWO_MODES = dict(process_sd=0.002, placement_sd=0.003, slow_mode=0.10, slow_share=(0.2, 0.75))


@pytest.mark.parametrize("noise", [H100_LIKE, TWO_MODES], ids=["one-mode", "two-modes"])
def test_unchanged_reruns_give_no_false_alarm_and_a_3_percent_slowdown_is_slower_everywhere(noise):
    """Three reruns of 36 cases against three baseline runs give no FASTER or SLOWER; a 3 % slowdown of every
    case is SLOWER in every case once the cases that lean slower are timed again in a fresh process. With two
    modes (some placements 10 % slower, in a share that changes between processes) too."""
    rng = random.Random(7)
    baselines = [run_of(rng, SPECS, **noise) for _ in range(3)]
    for _ in range(3):
        got = gate(rng, baselines, run_of(rng, SPECS, **noise), **noise)
        assert FASTER not in got and SLOWER not in got, got
    slowed = dict(noise, shift=0.03)
    assert set(gate(rng, baselines, run_of(rng, SPECS, **slowed), **slowed)) == {SLOWER}


def test_the_fastest_placement_is_not_moved_by_the_share_of_slow_ones():
    """The mean over placements follows the share of slow placements, which changes between processes; the
    verdicts' estimate (the fastest placement) does not: unchanged code with 20 % slow placements against baselines
    with 75 % is not FASTER."""
    rng = random.Random(5)
    mostly_slow = dict(process_sd=0.001, placement_sd=0.002, slow_mode=0.10, slow_share=(0.75, 0.75))
    baselines = [run_of(rng, SPECS, **mostly_slow) for _ in range(3)]
    new = run_of(rng, SPECS, **dict(mostly_slow, slow_share=(0.2, 0.2)))
    assert not {FASTER, SLOWER} & set(verdicts_of(baselines, new))


def test_one_offset_in_the_new_process_is_not_a_regression_once_rechecked():
    """The new run's process carries an offset (+4 % on every case, as one H100 run showed for one backend): alone
    it reads as SLOWER; timed again in a fresh process that has no such offset, it does not."""
    rng = random.Random(9)
    baselines = [run_of(rng, SPECS, **H100_LIKE) for _ in range(3)]
    offset = run_of(rng, SPECS, shift=0.04, **H100_LIKE)
    assert SLOWER in verdicts_of(baselines, offset)
    again = run_of(rng, SPECS, **H100_LIKE)
    rechecked = compare_runs(baselines, offset, rechecks={case_key(r): [a] for r, a in zip(offset, again)})
    assert SLOWER not in {v.verdict for v in rechecked}, [v.line() for v in rechecked if v.verdict == SLOWER]
    assert all("timed in 2 processes" in v.note for v in rechecked)


def test_one_placement_per_run_would_cry_wolf_where_placements_do_not():
    """The same placement noise seen through one placement per run (what the suite timed before): the rounds'
    bootstrap is blind to it and calls unchanged cases FASTER or SLOWER."""
    rng = random.Random(3)
    noise = dict(process_sd=0.0, placement_sd=0.007)
    base = run_of(rng, SPECS, placements=1, rounds=10, **noise)
    new = run_of(rng, SPECS, placements=1, rounds=10, **noise)
    single = verdicts_of([base], new)
    assert FASTER in single or SLOWER in single
    rng = random.Random(3)
    base = run_of(rng, SPECS, **noise)
    assert not {FASTER, SLOWER} & set(verdicts_of([base], run_of(rng, SPECS, **noise)))


def test_process_noise_seen_between_baseline_runs_widens_every_interval():
    """H200-like offsets between processes (3 %): several baseline runs measure them, and an unchanged rerun is
    never called FASTER or SLOWER; with a single baseline run the verdicts say the offset is not measured."""
    rng = random.Random(11)
    noise = dict(process_sd=0.03, placement_sd=0.004)
    baselines = [run_of(rng, SPECS, **noise) for _ in range(3)]
    model = NoiseModel.fit([[run[i] for run in baselines] for i in range(len(SPECS))], [])
    assert model.run_var is not None and 0.015 < math.sqrt(model.run_var) < 0.05
    for _ in range(3):
        got = verdicts_of(baselines, run_of(rng, SPECS, **noise))
        assert FASTER not in got and SLOWER not in got
    single = compare_runs([baselines[0]], run_of(rng, SPECS, **noise))
    assert all("offset between processes is not measured" in (v.note or "") for v in single)


def test_cases_without_placements_fall_back_to_the_rounds():
    """A baseline saved before placements (or with --placements 1) still compares, by the rounds' bootstrap."""
    old = timed("A", "q1s1k", 0.0, samples=[1e-4] * 10)
    new = placed("q1s1k", [[1e-4] * 3, [1e-4] * 3])
    assert placement_logs(old) is None
    [v] = compare_runs([[old]], [new])
    assert v.method == "bootstrap" and v.verdict == SAME


def test_placement_logs_refuse_counts_that_do_not_match_the_samples():
    outcome = placed("q1s1k", [[1e-4] * 3, [2e-4] * 3])
    assert placement_logs(outcome) == pytest.approx([math.log(1e-4), math.log(2e-4)])
    broken = dataclasses.replace(outcome, times=Times.of([1e-4] * 5))
    assert placement_logs(broken) is None


def test_pooled_timing_keeps_each_placements_rounds_in_order():
    a = timing.Timing([1.0, 2.0], "host", 1, 2, "noise-target", "cold", 1, 0, None)
    b = timing.Timing([3.0, 4.0, 5.0], "host", 1, 1, "repeats", "cold", 1, 0, None)
    pooled = timing.Timing.pooled([a, b])
    assert pooled.samples == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert pooled.placement_rounds == (2, 3) and pooled.warmup_rounds == 3 and pooled.stopped_by == "repeats"
    assert timing.Timing.pooled([a]).placement_rounds == ()


def test_injected_delay_slows_every_call_by_the_fraction_asked():
    """The host timer's spin: a 1 ms step with --inject-delay 1.0 takes about twice as long, and says so."""
    import time

    def step():
        until = time.perf_counter() + 1e-3
        while time.perf_counter() < until:
            pass

    plain = timing.measure([step], device=_cpu(), repeats=5, warmup_iters=1, min_rounds=5)
    slowed = timing.measure([step], device=_cpu(), repeats=5, warmup_iters=1, min_rounds=5, delay_fraction=1.0)
    assert plain.injected_delay_s is None
    assert slowed.injected_delay_s == pytest.approx(1e-3, rel=0.5)
    assert slowed.median > 1.5 * plain.median


def _cpu():
    import torch

    return torch.device("cpu")


def test_a_case_is_timed_and_checked_on_each_placement():
    """The runner re-allocates a case's buffers for each placement: its record says how many rounds each gave."""
    from attnbench.spec import backends
    from attnbench.spec.cases import BenchCase
    from attnbench.measure.runner import execute
    from attnbench.spec.shapes import make_shape
    from attnbench.spec.study import RunSettings

    case = BenchCase(study="t", backend=backends.lookup("REFERENCE", "attention"), batch_spec="2q16_2q1s64",
                     shape=make_shape("attention", {"num_q_heads": 4, "num_kv_heads": 2, "head_dim": 32}),
                     run=RunSettings(device="cpu", repeats=12, warmup_iters=0, placements=3, noise_target=0))
    record = execute(case).record()
    assert len(record.timing.placement_rounds) == 3
    assert sum(record.timing.placement_rounds) == record.timing.rounds == len(record.timing.samples) == 12


def test_a_case_is_timed_again_in_a_fresh_process_from_its_record():
    """--recheck's plumbing: the case a record names is composed again from the study and timed in a new process;
    what comes back is the same case, measured."""
    import os

    from attnbench.spec import backends

    from attnbench.measure import recheck
    from attnbench.measure.runner import execute
    from attnbench.spec.axes import case_of_key, compose_case
    from attnbench.spec.study import build_study

    study = build_study(None, {"backends": ("REFERENCE",), "batch_specs": ("2q16_2q1s64",), "device": "cpu",
                               "num_q_heads": 4, "num_kv_heads": 2, "head_dim": 32, "repeats": 8,
                               "warmup_iters": 0})
    case = compose_case(study, backends.lookup("REFERENCE", "attention"), "2q16_2q1s64")
    first = execute(case).record()
    again_case = case_of_key(study, first.key)
    assert again_case is not None and again_case.key() == first.key
    [again], note = recheck.in_fresh_process([again_case])
    assert note is None and again is not None
    assert again.key == first.key and again.timed and again.record.verified
    assert again.record.host_seconds.total > 0 and os.getpid()  # measured there, not copied from here


# ------------------------------------------------------------------ CI's rules, end to end


@pytest.fixture(autouse=True)
def child_is_not_an_xdist_worker(monkeypatch):
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-c", str(REPO / "pytest.ini"),
                                         "--rootdir", str(REPO), "--gpus", "none", *args, timeout=300)


@pytest.mark.parametrize("flag, needed", [
    (["--fail-on-regression"], "--baseline-json"), (["--verdict-json", "v.json"], "--baseline-json"),
    (["--verdict-threshold", "0.02"], "--baseline-json"), (["--allow-gpu-mismatch"], "--baseline-json"),
    (["--recheck", "2"], "--baseline-json"),
    (["--plot-dir", "plots"], "--plot"),
])
def test_options_that_do_nothing_alone_are_usage_errors(pytester, flag, needed):
    """An option that would pass silently without the one it works with is refused, naming both."""
    result = run(pytester, BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", *flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    [line] = [ln for ln in result.errlines if ln.strip()]
    assert line.startswith(f"ERROR: {flag[0]}: needs {needed} ")
    assert not (pytester.path / "plots").exists()


def test_a_benchmark_run_that_times_nothing_fails_unless_allowed(pytester):
    """Every selected case skipped (a GPU job on a machine without a GPU): exit 1, saying why."""
    args = [BENCH_ATTENTION, "-k", "FLASH_ATTN", "--batch-specs", "q1s1k", "--device", "cpu", "--benchmark-only"]
    failed = run(pytester, *args)
    text = "\n".join(failed.outlines)
    assert failed.ret == pytest.ExitCode.TESTS_FAILED, text
    assert "no case was timed: 1 skipped" in text and "--allow-untimed" in text
    assert run(pytester, *args, "--allow-untimed").ret == pytest.ExitCode.OK


def test_the_ci_recipe_end_to_end(pytester):
    """README's CI recipe on the CPU with the REFERENCE backend: baseline runs on main, a pull request compared
    against them; an unchanged run passes, a slowed one fails the job with SLOWER verdicts."""
    case = [BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", "--batch-specs", "q1s256", "2q16_2q1s64", "q64",
            "--num-q-heads", "8", "--num-kv-heads", "2", "--head-dim", "32", "--repeats", "24", "--warmup-iters", "1",
            "--benchmark-only"]
    baselines = []
    for i in (1, 2, 3):  # three processes on main: their spread is the noise between processes
        path = pytester.path / f"main-{i}.json"
        assert run(pytester, *case, f"--benchmark-json={path}").ret == 0
        baselines.append(str(path))
    # the practical threshold is wide here: this checks the recipe's plumbing, not a loaded CI machine's CPU noise
    gate = ["--baseline-json", *baselines, "--fail-on-regression", "--verdict-threshold", "0.5"]
    same = run(pytester, *case, *gate, "--verdict-json", "same.json")
    assert same.ret == 0, "\n".join(same.outlines[-30:])
    assert json.loads((pytester.path / "same.json").read_text())["counts"][SLOWER] == 0
    slowed = run(pytester, *case, *gate, "--verdict-json", "slow.json", "--inject-delay", "9")
    assert slowed.ret == pytest.ExitCode.TESTS_FAILED, "\n".join(slowed.outlines[-30:])
    doc = json.loads((pytester.path / "slow.json").read_text())
    assert doc["counts"][SLOWER] == 3, [c["note"] for c in doc["cases"]]
    assert all("injected delay" in case["note"] for case in doc["cases"])
    # every case leaned slower, so each was timed again in a fresh process (with the same injected delay)
    assert all("timed in 2 processes" in case["note"] for case in doc["cases"]), doc["cases"]
    assert "--recheck: re-timed 3 case(s)" in "\n".join(slowed.outlines)
    for path in baselines:  # nothing the run was given as input was touched
        assert json.loads(Path(path).read_text())["benchmarks"]


def _has_benchmark_precision() -> bool:
    from importlib.metadata import version

    return tuple(int(p) for p in version("pytest-benchmark").split(".")[:2]) >= (5, 3)


@pytest.mark.skipif(not _has_benchmark_precision(), reason="--benchmark-precision is pytest-benchmark 5.3's")
def test_benchmark_precision_drives_the_device_timers_noise_target(pytester):
    """pytest-benchmark 5.3's stopping rule is not ignored: it becomes --noise-target (and may not be given twice)."""
    case = [BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", "--batch-specs", "q1s256", "--num-q-heads", "8",
            "--repeats", "60", "--benchmark-only", "--benchmark-json=out.json"]
    result = run(pytester, *case, "--benchmark-precision", "0.9")
    assert result.ret == 0, "\n".join(result.outlines[-20:])
    [bench] = json.loads((pytester.path / "out.json").read_text())["benchmarks"]
    assert bench["stats"]["rounds"] < 60  # some placement stopped on the noise target before its share of rounds
    both = run(pytester, *case, "--benchmark-precision", "0.9", "--noise-target", "0.01")
    assert both.ret == pytest.ExitCode.USAGE_ERROR
    assert "--benchmark-precision: --noise-target says the same thing" in "\n".join(both.errlines)


def test_pytest_benchmark_5_2_on_pytest_9_2_is_one_clear_error(monkeypatch):
    """pytest-benchmark 5.2 errors on every benchmark under pytest 9.2: refused at start-up, naming both."""
    from attnbench.pytest_plugin import bench_shim

    releases = {"pytest-benchmark": (5, 2), "pytest": (9, 2)}
    monkeypatch.setattr(bench_shim, "_release", releases.__getitem__)
    with pytest.raises(pytest.UsageError, match=r"pytest-benchmark 5\.2 does not run on pytest 9\.2.*>= 5\.3\.1"):
        bench_shim.check_versions()
    releases["pytest"] = (9, 1)
    bench_shim.check_versions()
    releases.update({"pytest-benchmark": (5, 3), "pytest": (9, 2)})
    bench_shim.check_versions()
