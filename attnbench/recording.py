"""Hand a case's measurement to pytest-benchmark, so its storage, compare and tables work unchanged.

pytest-benchmark times host callables; our samples are already device seconds per
attention call, so they are fed to the fixture's stats object directly. The timer
name stored in the JSON says what was measured.
"""

from __future__ import annotations

from typing import Any

import pytest

from attnbench.cases import BenchCase
from attnbench.runner import CaseResult, SkipCase, execute

TIMER_NAMES = {"cuda-graph": "cuda_events(cuda_graph_replay)", "cuda-events": "cuda_events(eager)",
               "host": "time.perf_counter"}


def record(benchmark: Any, result: CaseResult) -> None:
    """Feed ``result``'s per-round samples into ``benchmark`` as its stats, with structured extra_info."""
    benchmark.extra_info.update(result.extra_info())
    if benchmark.disabled or not result.timing.samples:
        return
    # pytest-benchmark has no public way to add externally timed samples; _make_stats is the one place
    # its own pedantic() uses to create the stats object, so the JSON, compare and histogram see them.
    stats = benchmark._make_stats(1)
    stats.options["timer"] = TIMER_NAMES.get(result.timing.mode, result.timing.mode)
    stats.options["min_rounds"] = result.timing.rounds
    stats.options["warmup"] = result.timing.warmup_rounds
    for sample in result.timing.samples:
        stats.update(sample)


def run_benchmark(case: BenchCase, benchmark: Any) -> CaseResult:
    """The body of every benchmark test: execute the case, skip with a reason, record the numbers."""
    benchmark.group = f"{case.study} | {case.batch_spec}"
    try:
        result = execute(case, time_it=not benchmark.disabled)
    except SkipCase as exc:
        pytest.skip(str(exc))
    record(benchmark, result)
    return result
