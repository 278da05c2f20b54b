"""The adaptive crossover search: levels, decisions, answers, and the pytest plugin with FAKE timings."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.measure.crossover_search import (CROSSOVER, DECODE_EVERYWHERE, NO_DATA, PREFILL_EVERYWHERE, Measurement,
                                        Point, SearchState, coarse_points, crossover_answer, decide_waiting,
                                        run_search, search_levels)
from attnbench.pytest_plugin.search_plugin import SEARCH_SKIP_REASON, curve_points
from attnbench.spec.study import load_study_file

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
# the grid of configs/reorder_threshold.yaml: 1..15, 16..62 step 2, 64..1024 step 4
REAL_GRID = sorted({int(s.split("q")[1].split("s")[0]) for s in load_study_file(REPO / "configs/reorder_threshold.yaml")
                    ["batch_specs"]})


def step_curve(threshold: int, tie_to: int | None = None, err: float = 1e-3):
    """A synthetic curve: decode clearly faster for q <= threshold, within 0.3 % of prefill up to ``tie_to``,
    clearly slower beyond."""
    def measure(curve, q, pipeline):
        if pipeline == "prefill":
            return Measurement(1.0, err)
        if q <= threshold:
            return Measurement(0.5, err)
        return Measurement(1.003 if tie_to is not None and q <= tie_to else 2.0, err)
    return measure


def full_grid_answer(grid, measure):
    return crossover_answer([Point(q, measure("c", q, "decode"), measure("c", q, "prefill")) for q in grid])


def same_answer(a, b) -> bool:
    """Equal answers, however many points each timed."""
    return replace(a, points_timed=0) == replace(b, points_timed=0)


def bisection(grid: list[int], lo: int, hi: int, decode_wins) -> list[int]:
    """Textbook bisection over the grid points strictly inside (lo, hi): the midpoints it visits, in order."""
    visits = []
    while True:
        inside = [q for q in grid if lo < q < hi]
        if not inside:
            return visits
        mid = (lo + hi) / 2
        m = min(inside, key=lambda q: (abs(q - mid), q))
        visits.append(m)
        lo, hi = (m, hi) if decode_wins(m) else (lo, m)


# ------------------------------------------------------------------ levels

def test_the_real_grid_is_the_study_grid() -> None:
    assert len(REAL_GRID) == 280 and REAL_GRID[:3] == [1, 2, 3] and REAL_GRID[-2:] == [1020, 1024]


@pytest.mark.parametrize("grid", [REAL_GRID, list(range(3, 100, 3)), [5], [7, 9], [1, 2, 3, 50, 51, 997]])
def test_every_grid_point_gets_a_level_and_level_0_is_the_coarse_set(grid: list[int]) -> None:
    levels = search_levels(grid)
    assert sorted(levels) == sorted(grid)
    assert sorted(q for q, lv in levels.items() if lv == 0) == coarse_points(grid)
    assert min(grid) in coarse_points(grid) and max(grid) in coarse_points(grid)


def test_level_0_of_the_real_grid_is_the_powers_of_two() -> None:
    assert coarse_points(REAL_GRID) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert coarse_points(range(3, 100, 3)) == [3, 9, 15, 33, 63, 99]  # 8 -> 9, 16 -> 15, 32 -> 33, 64 -> 63


def test_each_level_bisects_between_the_points_of_the_levels_above() -> None:
    levels = search_levels(REAL_GRID)
    for level in range(1, max(levels.values()) + 1):
        above = sorted(q for q, lv in levels.items() if lv < level)
        for q in (q for q, lv in levels.items() if lv == level):
            a = max(x for x in above if x < q)
            b = min(x for x in above if x > q)
            inside = [x for x in REAL_GRID if a < x < b]
            assert q == min(inside, key=lambda x: (abs(x - (a + b) / 2), x))


@pytest.mark.parametrize("threshold", [3, 23, 64, 65, 100, 127, 500, 1019])
def test_visit_order_reproduces_bisection_to_grid_resolution(threshold: int) -> None:
    _, visited = run_search({"c": REAL_GRID}, step_curve(threshold))
    coarse = coarse_points(REAL_GRID)
    deeper = [q for _, q in visited if q not in coarse]
    lo = max(q for q in coarse if q <= threshold)
    hi = min(q for q in coarse if q > threshold)
    assert deeper == bisection(REAL_GRID, lo, hi, lambda q: q <= threshold)


# ------------------------------------------------------------------ decisions

@pytest.mark.parametrize("threshold", [1, 2, 13, 22, 62, 64, 68, 72, 300, 1020])
def test_a_single_flip_is_found_exactly_with_far_fewer_visits(threshold: int) -> None:
    state, visited = run_search({"c": REAL_GRID}, step_curve(threshold))
    answer = state.answer("c")
    following = REAL_GRID[REAL_GRID.index(threshold) + 1]
    assert (answer.kind, answer.lo, answer.hi, answer.prefill_from, answer.flips) == (
        CROSSOVER, threshold, threshold, following, 1)
    assert same_answer(answer, full_grid_answer(REAL_GRID, step_curve(threshold)))
    assert len(visited) <= 18  # 11 coarse + at most 7 bisection steps, of 280


def test_ties_around_the_flip_give_an_interval_and_are_bisected() -> None:
    measure = step_curve(100, tie_to=140)
    state, visited = run_search({"c": REAL_GRID}, measure)
    answer = state.answer("c")
    assert (answer.lo, answer.hi, answer.prefill_from) == (100, 140, 144) and answer.interval
    assert answer.label() == "100–140" and "within noise" in answer.note()
    assert same_answer(answer, full_grid_answer(REAL_GRID, measure))
    assert len(visited) < 40


def test_two_flips_are_flagged_with_their_points() -> None:
    def measure(curve, q, pipeline):  # decode wins up to 40, prefill up to 300, decode again above
        return Measurement(1.0 if pipeline == "prefill" else 0.5 if q <= 40 or q > 300 else 2.0, 1e-3)

    state, _ = run_search({"c": REAL_GRID}, measure)
    answer = state.answer("c")
    assert answer.flips == 2 and answer.flip_points == [42, 304] and answer.lo == 40
    assert "2 flips (at q 42, 304)" in answer.note()
    assert same_answer(answer, full_grid_answer(REAL_GRID, measure))


def test_one_pipeline_winning_everywhere_times_only_the_coarse_set() -> None:
    for threshold, kind in ((2000, DECODE_EVERYWHERE), (0, PREFILL_EVERYWHERE)):
        state, visited = run_search({"c": REAL_GRID}, step_curve(threshold))
        assert [q for _, q in visited] == coarse_points(REAL_GRID)
        assert state.answer("c").kind == kind
    assert state.answer("c").label() == "never"


def test_untimed_ends_are_bisected_towards_and_untimed_brackets_left_alone() -> None:
    def measure(curve, q, pipeline):  # every case at q >= 512 fails (out of memory, say)
        return Measurement(None, status="failed") if q >= 512 else step_curve(2000)(curve, q, pipeline)

    state, visited = run_search({"c": REAL_GRID}, measure)
    qs = [q for _, q in visited]
    assert [q for q in qs if 256 < q < 512] == [384, 448, 480, 496, 504, 508]  # closes in on the failure boundary
    assert not [q for q in qs if 512 < q < 1024]  # both ends failed: nothing to learn there
    assert state.decide("c", 768).reason == "neither q512 nor q1024 timed"


def test_decide_waits_for_a_result_still_running_and_gives_up_conservatively() -> None:
    state = SearchState({"c": [10, 11, 12, 13]})  # level 0: 10 and 13; then 11, then 12
    assert state.levels["c"] == {10: 0, 13: 0, 11: 1, 12: 2}
    state.tell("c", 10, "decode", 0.5)
    state.tell("c", 10, "prefill", 1.0)
    state.tell("c", 13, "decode", 2.0)  # prefill at q13 is still running elsewhere
    assert state.decide("c", 10).visit
    waiting = state.decide("c", 11)
    assert waiting.wait and not waiting.visit and waiting.reason == "waiting for q13 prefill"
    assert state.decide("c", 12).wait  # its bracket depends on whether q11 is visited

    now = [0.0]
    gave_up = decide_waiting(state, "c", 11, timeout=5, poll=1, clock=lambda: now[0],
                             sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert gave_up.visit and not gave_up.wait and gave_up.reason.startswith("gave up waiting for q13 prefill")
    assert now[0] == 5

    arrived = decide_waiting(state, "c", 11, refresh=lambda: state.tell("c", 13, "prefill", 1.0), timeout=5)
    assert arrived.visit and arrived.reason == "winner flips between q10 and q13" and arrived.bracket == (10, 13)


def test_a_case_that_will_not_run_is_not_waited_for() -> None:
    state = SearchState({"c": [10, 11, 12, 13]}, present=lambda curve, q, pipeline: pipeline == "decode")
    for q in (10, 13):
        state.tell("c", q, "decode", 1.0)
    decision = state.decide("c", 11)
    assert not decision.wait and not decision.visit  # no prefill anywhere: neither end is timed


# ------------------------------------------------------------------ answers

def test_answer_kinds_and_labels() -> None:
    assert crossover_answer([]).kind == NO_DATA and crossover_answer([]).label() == "–"
    m = Measurement
    tie = crossover_answer([Point(1, m(1.0), m(1.001)), Point(2, m(1.0), m(1.004))])
    assert (tie.kind, tie.lo, tie.hi, tie.label()) == ("within noise everywhere", None, 2, "never–2")
    # 1 % apart with 0.1 % noise: decisive; 0.5 % apart: a tie however small the noise
    close = crossover_answer([Point(1, m(1.0, 1e-3), m(1.012, 1e-3)), Point(2, m(1.0, 1e-6), m(1.005, 1e-6))])
    assert (close.lo, close.hi) == (1, 2)
    noisy = crossover_answer([Point(1, m(1.0, 0.05), m(1.1, 0.05)), Point(2, m(1.0, 0.05), m(0.9, 0.05))])
    assert (noisy.kind, noisy.label()) == ("within noise everywhere", "never–2")  # 10 % apart but 5 % noise each
    assert crossover_answer([Point(1, m(0.5), m(1.0))], vllm_default=128).vllm_default == 128


def test_curves_split_by_kv_only_where_one_q_has_several() -> None:
    where = curve_points([("mla", "FLASHMLA", s) for s in ("4q1s1k", "4q8s1k", "q1s1k", "q8s4k", "q8s1k")])
    assert where[("mla", "FLASHMLA", "4q8s1k")] == (("mla", "FLASHMLA", 4, 1024), 8)
    assert where[("mla", "FLASHMLA", "q8s4k")] == (("mla", "FLASHMLA", 1, 4096), 8)
    assert where[("mla", "FLASHMLA", "q1s1k")] == (("mla", "FLASHMLA", 1, 1024), 1)
    assert curve_points([("mla", "X", "q8"), ("mla", "X", "q16")])[("mla", "X", "q8")][0] == ("mla", "X", 1, None)


# ------------------------------------------------------------------ property

@st.composite
def grids_and_curves(draw):
    grid = sorted(draw(st.sets(st.integers(1, 3000), min_size=2, max_size=150)))
    threshold = draw(st.sampled_from(grid[:-1]))
    tie_to = draw(st.one_of(st.none(), st.sampled_from([q for q in grid if q > threshold])))
    return grid, threshold, tie_to


@settings(max_examples=80, deadline=None)
@given(grids_and_curves())
def test_the_search_finds_the_full_grid_answer(case) -> None:
    grid, threshold, tie_to = case
    measure = step_curve(threshold, tie_to)
    state, visited = run_search({"c": grid}, measure)
    assert same_answer(state.answer("c"), full_grid_answer(grid, measure))
    assert state.answer("c").lo == threshold


# ------------------------------------------------------------------ the plugin, with FAKE timings

FAKE_CONFTEST = '''
"""FAKE timings for the crossover search plugin: no kernel runs, each case's record gets synthetic times."""
import pytest
from grammar import get_batch_stats, parse_batch_spec

pytest_plugins = ["attnbench.pytest_plugin.plugin", "attnbench.pytest_plugin.reporting_plugin",
                  "attnbench.pytest_plugin.search_plugin"]
FAKE_THRESHOLD = {1: 23, 4: 9}  # batch size -> the largest q at which the fake decode pipeline is faster


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after the reporting plugin attached the record
def pytest_runtest_makereport(item, call):
    report = yield
    record = getattr(report, "attnbench_result", None)
    if record is not None and record["status"] == "passed":
        stats = get_batch_stats(parse_batch_spec(record["batch_spec"]))
        q, size = stats["max_q_len"], stats["total_requests"]
        seconds = 1e-6 * size * (q if record["pipeline"] == "decode" else FAKE_THRESHOLD[size] + 0.5)
        record.update(median_time=seconds, mean_time=seconds, std_time=seconds * 1e-3, rounds=20)
    return report
'''

FAKE_TEST = '''
import pytest


@pytest.mark.bench_family("mla", mode="decode_vs_prefill")
def test_fake_decode_vs_prefill(bench_case, benchmark):
    from attnbench.results.record import CaseRecord, TimingSummary, Verification

    # a FAKE recording: the case's record, no timing
    record = CaseRecord(bench_case.key(), TimingSummary("none"), Verification("passed"))
    benchmark.extra_info.update(record.to_json())
'''

FAKE_STUDY = '''
backends: [REFERENCE]
mode: decode_vs_prefill
batch_spec_ranges:
  - template: "q{q_len}s64"
    q_len: {start: 1, stop: 64, step: 1, end_inclusive: true}
batch_sizes: [1, 4]
'''


@pytest.fixture
def fake_study(pytester: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)  # the child is not this run's xdist worker
    pytester.makeconftest(FAKE_CONFTEST)
    pytester.makepyfile(test_fake=FAKE_TEST)
    pytester.makefile(".yaml", study=FAKE_STUDY)
    pytester.makeini("[pytest]\nmarkers =\n    attnbench_unused: internal\nfilterwarnings =\n"
                     "    ignore::pytest_benchmark.logger.PytestBenchmarkWarning\n")
    return pytester


def run_fake(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--bench-config", "study.yaml", "--device", "cpu",
                                         "--no-bench-summary", "-ra", *args, timeout=240)


def ids(result: pytest.RunResult) -> list[str]:
    return [re.search(r"\[(.*)\]", line).group(1) for line in result.outlines if "::test_fake" in line]


def search_rows(result: pytest.RunResult) -> dict[str, list[str]]:
    text = result.stdout.str().split("attnbench crossover search", 1)[1]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    return {row[1]: row for row in rows}


def test_plugin_orders_cases_by_level_with_both_pipelines_adjacent(fake_study) -> None:
    result = run_fake(fake_study, "--collect-only", "-q")
    order = ids(result)
    assert len(order) == 2 * 64 * 2
    first = [i.rsplit("-", 1)[0] for i in order[:28:2]]
    assert first == [f"REFERENCE-{s}" for s in ("q1s64", "q2s64", "q4s64", "q8s64", "q16s64", "q32s64", "q64",
                                                "4q1s64", "4q2s64", "4q4s64", "4q8s64", "4q16s64", "4q32s64", "4q64")]
    assert all(a.endswith("-decode") and b.endswith("-prefill") and a[:-7] == b[:-8]
               for a, b in zip(order[::2], order[1::2]))
    assert order[28:32] == ["REFERENCE-q3s64-decode", "REFERENCE-q3s64-prefill",  # level 1 follows level 0
                            "REFERENCE-q6s64-decode", "REFERENCE-q6s64-prefill"]


def test_plugin_times_a_fraction_and_finds_the_fake_thresholds(fake_study, tmp_path: Path) -> None:
    result = run_fake(fake_study, "--output-json", str(tmp_path / "r.json"))
    assert result.ret == 0, result.stdout.str()
    rows = search_rows(result)
    assert rows["1"][3] == "23" and rows["4"][3] == "9"  # decode faster up to q
    assert rows["1"][5] == "11/64" and rows["4"][5] == "10/64"
    skipped = [line for line in result.outlines if line.startswith("SKIPPED [")]
    assert len(skipped) == 1 and skipped[0].endswith(SEARCH_SKIP_REASON)  # one -ra line for every skip
    result.assert_outcomes(passed=42, skipped=214)
    records = json.loads((tmp_path / "r.json").read_text())["results"]
    timed = [r for r in records if r["status"] == "passed"]
    assert len(timed) == 42
    assert all(r["extra"]["search"]["visit"] and "reason" in r["extra"]["search"] for r in timed)
    deep = {r["batch_spec"]: r["extra"]["search"] for r in timed if r["extra"]["search"]["level"] > 0}
    assert deep["q24s64"]["reason"] == "winner flips between q16 and q32"


def test_full_grid_times_every_point(fake_study) -> None:
    result = run_fake(fake_study, "--full-grid")
    result.assert_outcomes(passed=256)
    assert "attnbench crossover search" not in result.stdout.str()


def test_plugin_shares_results_between_xdist_workers(fake_study) -> None:
    pytest.importorskip("xdist")
    result = run_fake(fake_study, "-n", "2")
    assert result.ret == 0, result.stdout.str()
    rows = search_rows(result)
    assert rows["1"][3] == "23" and rows["4"][3] == "9"
    result.assert_outcomes(passed=42, skipped=214)


def test_shared_log_reads_only_complete_new_lines_of_the_other_processes(tmp_path: Path) -> None:
    from attnbench.pytest_plugin.search_plugin import SharedLog

    mine, theirs = SharedLog(tmp_path), SharedLog(tmp_path)
    theirs.own = tmp_path / "results-other.jsonl"  # as if another worker's pid
    theirs.append({"kind": "result", "q": 1})
    mine.append({"kind": "result", "q": 2})
    assert mine.read_new() == [{"kind": "result", "q": 1}]  # not its own lines
    assert mine.read_new() == []  # nothing new
    with open(theirs.own, "a") as f:
        f.write('{"kind": "result", "q": 3')  # a line still being written
    assert mine.read_new() == []
    with open(theirs.own, "a") as f:
        f.write('}\n')
    assert mine.read_new() == [{"kind": "result", "q": 3}]
    assert sorted(r["q"] for r in SharedLog(tmp_path).read_new(include_own=True)) == [1, 2, 3]  # the summary's view
    mine.close()
    theirs.close()


def test_one_rule_names_the_curves_for_the_search_and_the_table() -> None:
    """KV splits the curve only where one q appears at several KV lengths; a single KV length names the curve;
    KV that grows with q names none. search_plugin.curve_points and analysis.crossover_table both use it."""
    from attnbench.measure.crossover_search import curve_kv
    from attnbench.pytest_plugin.search_plugin import curve_points

    assert curve_kv([(1, 1024), (8, 1024), (64, 1024)]) == {(1, 1024): 1024, (8, 1024): 1024, (64, 1024): 1024}
    assert curve_kv([(1, 1025), (8, 1032), (64, 1088)]) == {(1, 1025): None, (8, 1032): None, (64, 1088): None}
    assert curve_kv([(1, 1024), (1, 2048), (8, 1024)]) == {(1, 1024): 1024, (1, 2048): 2048, (8, 1024): 1024}
    # two specs at one (q, kv) (8q4s1k and q4s1k_7q1s1k both have batch 8, q 4, kv 1024) split as before
    assert curve_kv([(4, 1024), (4, 1024), (8, 1032)]) == {(4, 1024): 1024, (8, 1032): 1032}
    found = curve_points([("mla", "FLASHMLA", "8q1s1k"), ("mla", "FLASHMLA", "8q8s1k"), ("mla", "FLASHMLA", "8q1s2k")])
    assert found[("mla", "FLASHMLA", "8q1s2k")] == (("mla", "FLASHMLA", 8, 2048), 1)
    assert found[("mla", "FLASHMLA", "8q8s1k")] == (("mla", "FLASHMLA", 8, 1024), 8)
