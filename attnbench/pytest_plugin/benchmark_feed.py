"""Hand a case's measurement to pytest-benchmark, so its storage, compare and tables work unchanged.

pytest-benchmark times host callables; our samples are already device seconds per
attention call, so they are fed to the fixture's stats (``bench_shim``). The timer name
stored in the JSON says what was measured. Under pytest-xdist a worker's fixture is off, so
the case is also kept as a plain-data ``BenchmarkView`` for the controller to add.
"""

from __future__ import annotations

from typing import Any

import pytest

from attnbench.pytest_plugin import bench_shim
from attnbench.results.record import timer_name
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import SkipCase
from attnbench.measure.runner import CaseResult, execute

CASE_RESULT_ATTRIBUTE = "attnbench_case_result"  # set on the benchmark fixture: the reporting hooks read it


def record(benchmark: Any, result: CaseResult) -> None:
    """Feed ``result``'s per-round samples into ``benchmark`` as its stats, with structured extra_info."""
    benchmark.extra_info.update(result.extra_info())
    t = result.timing
    bench_shim.feed_samples(benchmark, t.samples, timer_name(t.mode, t.timer), t.rounds, t.warmup_rounds)


def run_benchmark(case: BenchCase, benchmark: Any, config: pytest.Config | None = None) -> CaseResult:
    """The body of every benchmark test: execute the case, skip with a reason, record the numbers."""
    benchmark.group = f"{case.study} | {case.batch_spec}"
    time_it = bench_shim.timing_wanted(config) if config is not None else not benchmark.disabled
    try:
        result = execute(case, time_it=time_it)
    except SkipCase as exc:
        pytest.skip(str(exc))
    record(benchmark, result)
    setattr(benchmark, CASE_RESULT_ATTRIBUTE, result)
    return result
