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
  ``--benchmark-only``, from refusing to start) when xdist is active;
* ``benchmark_json_path`` reads ``--benchmark-json`` the same way on every pytest-benchmark the range admits:
  5.2 types it ``argparse.FileType('wb')`` (an open file, truncated while pytest parses the command line), 5.3 a
  ``pathlib.Path`` it opens only when it writes the JSON at the end. pytest.ini loads this module early
  (``-p attnbench.pytest_plugin.bench_shim``) so that on 5.2, too, the file is opened only then
  (``DeferredJsonFile``): a run refused at start-up (``--benchmark-json X --baseline-json X``) leaves X as it was;
* ``--benchmark-compare`` loads the saved runs here, not in pytest-benchmark's session (held back while it is
  built, as ``--benchmark-only`` is): pytest-benchmark's own ``pytest_benchmark_compare_machine_info`` warns on
  any difference at all (this suite's measured peaks, clocks, GPUs used, the host name...) and crashes building
  that warning for a storage outside the working directory. Every other implementation of the hook still runs;
  this module's warns only on what makes runs incomparable (``attnbench.measure.hardware.machine_differences``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, MutableMapping, Sequence
from weakref import WeakKeyDictionary

import pytest


def session_of(config: pytest.Config) -> Any | None:
    return getattr(config, "_benchmarksession", None)


def timing_wanted(config: pytest.Config) -> bool:
    """The user's choice: time unless --benchmark-disable / --benchmark-skip (xdist does not count)."""
    disabled = config.getoption("benchmark_disable", False) and not config.getoption("benchmark_enable", False)
    return not disabled and not config.getoption("benchmark_skip", False)


_HELD = pytest.StashKey[bool]()  # --benchmark-only as given, while pytest-benchmark builds its session
_COMPARE = pytest.StashKey[Any]()  # --benchmark-compare as given (True, or a run's number/name), held likewise
_COMPARING = pytest.StashKey[str]()  # the saved run being compared, for the machine check's message


def _release(name: str) -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version(name).split(".")[:2] if part.isdigit())


def check_versions() -> None:
    """pytest-benchmark before 5.3 reads ``Node._nodeid``, which pytest 9.2 removed: every benchmark would error
    at setup. pip cannot say "5.2 needs pytest < 9.2", so the pair is refused here, in one line."""
    benchmark, pytest_release = _release("pytest-benchmark"), _release("pytest")
    if benchmark < (5, 3) and pytest_release >= (9, 2):
        raise pytest.UsageError(f"pytest-benchmark {'.'.join(map(str, benchmark))} does not run on pytest "
                                f"{'.'.join(map(str, pytest_release))} (it reads Node._nodeid, which pytest 9.2 "
                                f"removed): install pytest-benchmark >= 5.3.1, or pytest < 9.2")


# Plain priority: before pytest-benchmark's trylast configure builds its session.
def pytest_configure(config: pytest.Config) -> None:
    """pytest-benchmark disables itself when it sees xdist (which attnbench.pytest_plugin.scaleout may switch on in
    this very hook), and then refuses --benchmark-only. It does neither when told it is disabled: say
    that while it builds its session; ``pytest_sessionstart`` switches it back on.

    --benchmark-compare is held back too: pytest-benchmark would load the saved runs and check their
    machine_info right now; ``pytest_sessionstart`` does it without pytest-benchmark's own check."""
    check_versions()
    compare = getattr(config.option, "benchmark_compare", None)
    if compare:
        config.stash[_COMPARE] = compare
        config.option.benchmark_compare = []  # pytest-benchmark's default: compare nothing
    if not timing_wanted(config):
        return
    config.stash[_HELD] = bool(config.getoption("benchmark_only", False))
    config.option.benchmark_disable, config.option.benchmark_enable = True, False
    config.option.benchmark_only = False


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if _COMPARE in config.stash:
        config.option.benchmark_compare = config.stash[_COMPARE]
        bench = session_of(config)
        if bench is not None and not hasattr(config, "workerinput"):  # workers compare nothing (below)
            bench.compare = config.stash[_COMPARE]
            load_compared(config, bench)
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


def load_compared(config: pytest.Config, bench: Any) -> None:
    """``BenchmarkSession.handle_loading`` (the same in 5.2 and 5.3), calling every
    ``pytest_benchmark_compare_machine_info`` but pytest-benchmark's own (see the module's docstring).

    Its warnings (a saved run that does not load, a machine that differs) are shown as they were at configure
    time, where pytest-benchmark gave them: pytest shows warnings there and never raises them, so that a filter
    turning warnings into errors (``python -W error``) does not make a note about the machine an INTERNALERROR."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        if bench.compare is True:
            loaded = list(bench.storage.load())[-1:]
        else:
            loaded = list(bench.storage.load(bench.compare))
        if not loaded:  # attnbench.pytest_plugin.plugin refuses this for a file storage before pytest-benchmark starts
            msg = f"Can't compare. No benchmark files in {str(bench.storage)!r}"
            msg += ". Can't load the previous benchmark." if bench.compare is True else f" match {bench.compare!r}."
            bench.logger.warning(msg)
        default = sys.modules.get("pytest_benchmark.plugin")
        check = config.pluginmanager.subset_hook_caller("pytest_benchmark_compare_machine_info",
                                                        remove_plugins=[default] if default is not None else [])
        machine_info = bench.get_machine_info()
        mapping = {}
        for path, saved in loaded:
            config.stash[_COMPARING] = saved_run_name(path)
            try:
                check(config=config, benchmarksession=bench, machine_info=machine_info, compared_benchmark=saved)
            finally:
                del config.stash[_COMPARING]
            mapping[path] = {b["fullname"]: b for b in saved["benchmarks"]}
            bench.logger.info(f"Comparing against benchmarks from: {path}", newline=False)
    bench.compared_mapping = mapping


def saved_run_name(path: Any) -> str:
    """``0001_A`` for a file storage's ``.../0001_A.json``; an Elasticsearch id as it is."""
    text = str(path)
    return Path(text).stem if text.endswith(".json") else text


def pytest_benchmark_compare_machine_info(config: pytest.Config, benchmarksession: Any, machine_info: dict[str, Any],
                                          compared_benchmark: dict[str, Any]) -> None:
    """Warn, naming each one, about the differences that make the saved run's numbers incomparable (GPU model,
    driver, CUDA runtime, torch, Triton, vLLM, FlashInfer); never about what differs between any two runs
    (measured peaks, clocks, GPUs used, host name, CPU), nor about where the storage is."""
    from attnbench.measure.hardware import machine_differences

    saved = compared_benchmark.get("machine_info") or {}
    differences = machine_differences(machine_info.get("attnbench"), saved.get("attnbench"))
    if differences:
        name = config.stash.get(_COMPARING, None)
        benchmarksession.logger.warning(f"machine differs from the saved run{' ' + name if name else ''} (this run "
                                        f"vs saved): {'; '.join(differences)}")


# ------------------------------------------------------------------ --benchmark-json

STDOUT = "-"  # benchmark_json_path's answer for pytest-benchmark 5.2's `--benchmark-json -` (its standard output)


def benchmark_json_path(config: pytest.Config) -> str | None:
    """The file ``--benchmark-json`` names, as a path string; None without the option; ``STDOUT`` where
    pytest-benchmark writes the JSON to its standard output (5.2's ``-``; 5.3 writes a file named ``-``, which is
    returned as ``./-``)."""
    value = config.getoption("benchmark_json", None)
    if value is None:
        return None
    if isinstance(value, DeferredJsonFile):
        return value.name
    if isinstance(value, (str, os.PathLike)):  # 5.3: a pathlib.Path, opened when the JSON is written
        path = os.fspath(value)
        return os.path.join(os.curdir, path) if path == STDOUT else str(path)
    name = getattr(value, "name", None)  # 5.2 when this module was not loaded early: a file argparse opened
    if not isinstance(name, str):
        return None
    return STDOUT if name.startswith("<") else name  # "<stdout>"


def benchmark_json_emptied(config: pytest.Config) -> bool:
    """Whether pytest-benchmark already opened (so emptied) the ``--benchmark-json`` file while pytest parsed the
    command line: 5.2, where this module was not loaded before pytest-benchmark's options were parsed."""
    value = config.getoption("benchmark_json", None)
    return value is not None and not isinstance(value, (DeferredJsonFile, str, os.PathLike)) \
        and benchmark_json_path(config) not in (None, STDOUT)


class DeferredJsonFile:
    """pytest-benchmark 5.2's ``--benchmark-json`` value, opened only when it writes the JSON (``with value as
    fh: fh.write(...)``, then it logs ``value``): what ``argparse.FileType('wb')`` returns, less the opening (and
    emptying) of the file while the command line is parsed. 5.3 does the same with its ``pathlib.Path``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._file: Any = None

    def __enter__(self) -> Any:
        self._file = open(self.name, "wb")  # noqa: SIM115 -- closed by __exit__
        return self._file.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._file.__exit__(*exc)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DeferredJsonFile({self.name!r})"


class _DeferredFileType:
    """``argparse.FileType('wb')`` for ``-`` (standard output, nothing opened), a ``DeferredJsonFile`` otherwise."""

    def __init__(self, file_type: argparse.FileType) -> None:
        self.file_type = file_type

    def __call__(self, value: str) -> Any:
        return self.file_type(value) if value == STDOUT else DeferredJsonFile(value)

    def __repr__(self) -> str:  # argparse names the type in its messages
        return f"deferred {self.file_type!r}"


# pytest's option parser, kept (from pytest_addoption) only where this module was registered before pytest-benchmark
_PARSERS: "WeakKeyDictionary[Any, pytest.Parser]" = WeakKeyDictionary()


def _benchmark_plugin_registered(manager: pytest.PytestPluginManager) -> bool:
    return any(getattr(p, "__name__", None) == "pytest_benchmark.plugin" for p in manager.get_plugins())


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not _benchmark_plugin_registered(pluginmanager):
        _PARSERS[pluginmanager] = parser


def pytest_plugin_registered(plugin: Any, manager: pytest.PytestPluginManager) -> None:
    if getattr(plugin, "__name__", None) == "pytest_benchmark.plugin":
        parser = _PARSERS.get(manager)
        if parser is not None:
            _defer_benchmark_json(parser)
            _check_benchmark_timer(parser)


def _retype(parser: pytest.Parser, flag: str, replace: Callable[[Any], Any | None]) -> None:
    """Give pytest-benchmark's ``flag`` the type ``replace(its type)`` returns (None: leave it as it is), before
    pytest parses the command line with it.

    Loaded early (pytest.ini's ``-p attnbench.pytest_plugin.bench_shim``: before pytest loads its plugins from entry
    points), this module is registered before pytest-benchmark, whose options exist here as soon as it is registered.
    Loaded after pytest-benchmark (as a conftest's plugin) it is too late, and the options keep pytest-benchmark's
    types."""
    for option in parser.getgroup("benchmark").options:
        if flag not in option.names():
            continue
        attrs = option.attrs()
        old = attrs.get("type")
        new = replace(old)
        if new is None:
            continue
        # pytest 8 builds its argparse parser from these keywords at each parse; 9.2 returns the argparse action's
        if isinstance(attrs, MutableMapping):
            attrs["type"] = new
        # pytest 9.0 and 9.1 made the argparse action from these keywords once, when the option was added: argparse
        # looks every type up in its registry
        optparser = getattr(parser, "optparser", None)
        if isinstance(optparser, argparse.ArgumentParser):
            optparser.register("type", old, new)


def _defer_benchmark_json(parser: pytest.Parser) -> None:
    """Give pytest-benchmark 5.2's ``--benchmark-json`` (``type=argparse.FileType('wb')``) the deferred type, so the
    file is opened only when the JSON is written. Loaded too late, the file was opened already, and it is left as
    pytest-benchmark opened it (``benchmark_json_emptied`` says so). 5.3 (``type=Path``) is left as it is."""
    _retype(parser, "--benchmark-json",
            lambda old: _DeferredFileType(old) if isinstance(old, argparse.FileType) else None)


def _check_benchmark_timer(parser: pytest.Parser) -> None:
    """``--benchmark-timer nope.timer`` is one usage error naming the flag, not the import's traceback:
    pytest-benchmark's ``load_timer`` imports the module while pytest parses the command line."""
    def checked_loader(load: Any) -> Any:
        if not callable(load) or getattr(load, "attnbench_checked", False):
            return None

        def checked(value: str) -> Any:
            try:
                return load(value)
            except Exception as exc:  # noqa: BLE001 - any import or attribute error of the named timer
                raise argparse.ArgumentTypeError(f"cannot load the timer {value!r}: {type(exc).__name__}: {exc}"
                                                 ) from None

        checked.attnbench_checked = True  # type: ignore[attr-defined]
        return checked

    _retype(parser, "--benchmark-timer", checked_loader)


def feed_samples(benchmark: Any, samples: Sequence[float], timer: str, rounds: int, warmup_rounds: int) -> None:
    """Make ``samples`` (seconds per call, one per round) the fixture's stats; ``timer`` is what took them
    (``record.timer_name``)."""
    if samples:  # the fixture was used, if not by its own calls: else it warns "not used at all" at teardown
        benchmark._mode = "attnbench's device-time samples"
    if benchmark.disabled or not samples:
        return
    stats = benchmark._make_stats(1)
    stats.options.update(timer=timer, min_rounds=rounds, warmup=warmup_rounds)
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
    def of(cls, benchmark: Any, samples: Sequence[float], timer: str, rounds: int,
           warmup_rounds: int) -> "BenchmarkView":
        options = {"disable_gc": False, "timer": timer, "min_rounds": rounds,
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
