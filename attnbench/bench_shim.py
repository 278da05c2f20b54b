"""The one place that touches pytest-benchmark's internals.

pytest-benchmark times host callables and has no public way to accept samples measured
elsewhere, and it switches itself off under pytest-xdist. This suite measures device time
itself, and under xdist the numbers come from the workers. So:

* ``feed_samples`` puts a case's samples into the fixture's stats through ``_make_stats``,
  the one place pytest-benchmark's own ``pedantic()`` creates them;
* ``BenchmarkView`` is the plain-data view of one case as pytest-benchmark stores it (name,
  fullname, group, param, params, extra_info, options, samples): a worker sends it to the
  controller with the report, and ``add_to_session`` turns it back into the session's
  ``Metadata`` there, so ``--benchmark-json``, ``--benchmark-save``, ``--benchmark-compare``
  and ``--benchmark-compare-fail`` see every worker's cases;
* ``pytest_configure``/``pytest_sessionstart`` stop the session from disabling itself (and, with
  ``--benchmark-only``, from refusing to start) when xdist is active.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Sequence

import pytest

from attnbench.record import TIMER_NAMES


def session_of(config: pytest.Config) -> Any | None:
    return getattr(config, "_benchmarksession", None)


def timing_wanted(config: pytest.Config) -> bool:
    """The user's choice: time unless --benchmark-disable / --benchmark-skip (xdist does not count)."""
    disabled = config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False)
    return not disabled and not config.getoption("benchmark_skip", False)


_HELD = pytest.StashKey[bool]()  # --benchmark-only as given, while pytest-benchmark builds its session


# Plain priority: before pytest-benchmark's trylast configure builds its session.
def pytest_configure(config: pytest.Config) -> None:
    """pytest-benchmark disables itself when it sees xdist (which attnbench.scaleout may switch on in
    this very hook), and then refuses --benchmark-only. It does neither when told it is disabled: say
    that while it builds its session; ``pytest_sessionstart`` switches it back on."""
    if not timing_wanted(config):
        return
    config.stash[_HELD] = bool(config.getoption("benchmark_only", False))
    config.option.benchmark_disable, config.option.benchmark_enable = True, False
    config.option.benchmark_only = False


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _HELD not in config.stash:
        return
    only = config.stash[_HELD]
    config.option.benchmark_disable, config.option.benchmark_only = False, only
    bench = session_of(config)
    if bench is None:
        return
    bench.only = only
    worker = hasattr(config, "workerinput")
    # Workers measure and send; only the controller (or a serial run) saves, writes JSON, compares, shows.
    bench.disabled = worker
    if worker:
        bench.json = None
        bench.save = bench.autosave = False
        bench.compare = bench.compare_fail = None
        bench.histogram = False


def feed_samples(benchmark: Any, samples: Sequence[float], mode: str, rounds: int, warmup_rounds: int) -> None:
    """Make ``samples`` (seconds per call, one per round) the fixture's stats."""
    if benchmark.disabled or not samples:
        return
    stats = benchmark._make_stats(1)
    stats.options.update(timer=TIMER_NAMES.get(mode, mode), min_rounds=rounds, warmup=warmup_rounds)
    for sample in samples:
        stats.update(sample)


def recorded_samples(benchmark: Any) -> list[float]:
    stats = getattr(benchmark, "stats", None)
    return list(stats.stats.data) if stats is not None else []


@dataclass(frozen=True)
class BenchmarkView:
    """One case as pytest-benchmark stores it, in plain data (it crosses xdist's process boundary).

    It also stands in for the fixture when the controller builds the case's ``Metadata``: that
    reads name, fullname, group, param, params, extra_info, cprofile_stats and has_error."""

    cprofile_stats: ClassVar[Any] = None
    has_error: ClassVar[bool] = False

    name: str
    fullname: str
    group: str | None
    param: str | None
    params: dict[str, Any] | None
    extra_info: dict[str, Any]
    options: dict[str, Any]
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, benchmark: Any, samples: Sequence[float], mode: str, rounds: int, warmup_rounds: int) -> "BenchmarkView":
        options = {"disable_gc": False, "timer": TIMER_NAMES.get(mode, mode), "min_rounds": rounds,
                   "max_time": 0.0, "min_time": 0.0, "warmup": warmup_rounds}
        return cls(benchmark.name, benchmark.fullname, benchmark.group, benchmark.param,
                   dict(benchmark.params) if benchmark.params is not None else None,
                   dict(benchmark.extra_info), options, [float(s) for s in samples])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchmarkView":
        return cls(**data)


def add_to_session(config: pytest.Config, view: BenchmarkView) -> bool:
    """Controller: add a worker's case to pytest-benchmark's session as if it had run here."""
    session = session_of(config)
    if session is None or session.disabled or not view.samples:
        return False
    from pytest_benchmark.stats import Metadata

    metadata = Metadata(view, iterations=1, options=dict(view.options))
    for sample in view.samples:
        metadata.stats.update(sample)
    session.benchmarks.append(metadata)
    return True
