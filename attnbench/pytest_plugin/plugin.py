"""The pytest plugin: options, study resolution, parametrization, hardware gating, provenance.

Collection never needs a GPU or vLLM: backends are parametrized from the registry and
gated by markers that skip at setup with a reason. A bad option, spec, backend or
config key is a ``pytest.UsageError`` (exit code 4) with one line naming it.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import re
import statistics
import sys
from typing import Any

import pytest

from pathlib import Path

from attnbench.spec import axes
from attnbench.spec import backends as registry
from attnbench.spec import options
from attnbench.spec import sweeps as sweeping
from attnbench.spec.axes import MAX_CASES, CasePoint
from attnbench.spec.cases import BenchCase
from attnbench.spec.study import Study, StudyError, build_study, check_shape, load_study_file

STUDY_KEY = pytest.StashKey[Study]()
ERRORS_KEY = pytest.StashKey[list]()
NOTES_KEY = pytest.StashKey[list]()  # what collection merged (repeated batches), shown at the end
UNUSED_KEY = pytest.StashKey[dict]()  # benchmark file -> why the study gives it no case
_GIVEN = "attnbench_given"  # config.option attribute: dest -> [(flag, value), ...] of options that take one value


class Once(argparse.Action):
    """``store``, remembering every value given: where an option that takes one value is given twice with
    different values (pytest.ini's addopts, then the command line), the last one is used, as argparse does,
    and ``repeated_options`` says so rather than dropping the other silently."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        given = namespace.__dict__.setdefault(_GIVEN, {})
        given.setdefault(self.dest, []).append((option_string, values))
        setattr(namespace, self.dest, values)


def repeated_options(config: pytest.Config) -> list[str]:
    """A note for each option that takes one value and was given several different ones."""
    notes = []
    for dest, given in (getattr(config.option, _GIVEN, None) or {}).items():
        values = list(dict.fromkeys(str(v) for _, v in given))
        if len(values) > 1:
            flags = "/".join(dict.fromkeys(str(f) for f, _ in given))
            shown = ", ".join(repr(v if len(v) <= 120 else v[:120] + "...") for v in values)
            notes.append(f"{flags} given {len(values)} times ({shown}): it takes one value, the last one is used")
    return notes


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """The suite's extension points (attnbench/pytest_plugin/hookspec.py)."""
    from attnbench.pytest_plugin import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every attnbench flag, from the option table (flags, help, YAML keys and rules live there)."""
    study = parser.getgroup("attnbench", "vLLM attention benchmarks (command line > --bench-config YAML > defaults)")
    run = parser.getgroup("attnbench-run", "attnbench run settings, pytest only (reporting, resume, baselines, "
                                           "plots, workers, crossover search)")
    for opt in options.OPTIONS:
        if opt.flags:
            (run if opt.to == "session" else study).addoption(*opt.flags, **opt.pytest_kwargs(once=Once))


def _check_session_options(config: pytest.Config) -> None:
    """The run settings typed and checked once, here; every plugin then reads them with ``config.getoption``."""
    try:
        values = options.session_values(config.getoption)
    except options.OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    for name, value in values.items():
        setattr(config.option, name, value)


def _cli_values(config: pytest.Config) -> dict[str, Any]:
    return options.cli_values(config.getoption)


def resolve_study(config: pytest.Config) -> Study:
    path = config.getoption("bench_config")
    yaml_fields = load_study_file(path) if path is not None else None
    return build_study(yaml_fields, _cli_values(config))


@pytest.hookimpl(tryfirst=True)  # the study is what every other attnbench plugin configures from
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_family(name, mode='standard'): a benchmark of 'attention' or 'mla' cases")
    config.addinivalue_line("markers", "requires_cuda: needs a CUDA device")
    config.addinivalue_line("markers", "requires_vllm: needs vLLM installed")
    config.addinivalue_line("markers", "requires_capability(min, max): needs an SM capability in [min, max]")
    _check_session_options(config)
    _check_foreign_numbers(config)
    _take_benchmark_precision(config)
    try:
        config.stash[STUDY_KEY] = resolve_study(config)
    except StudyError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not hasattr(config, "workerinput"):
        check_benchmark_storage(config)
    config.stash[ERRORS_KEY] = []
    config.stash[NOTES_KEY] = repeated_options(config)
    config.stash[UNUSED_KEY] = {}


def _take_benchmark_precision(config: pytest.Config) -> None:
    """pytest-benchmark 5.3's --benchmark-precision (stop once the mean's margin of error at --benchmark-confidence
    is below F) stops its own host timer, which times no case here: it becomes the device timer's --noise-target
    (the mean's relative standard error), F / z, rather than being ignored."""
    precision = config.getoption("benchmark_precision", None)
    if precision is None:
        return
    if config.getoption("noise_target") is not None:
        raise pytest.UsageError("--benchmark-precision: --noise-target says the same thing; give one of them")
    confidence = config.getoption("benchmark_confidence", None) or 0.99
    z = statistics.NormalDist().inv_cdf(0.5 + float(confidence) / 2)
    config.option.noise_target = repr(float(precision) / z)


# Numeric options of pytest-benchmark and pytest-xdist: they convert with int()/float(), which read "٣" as 3 and
# take "nan"; the text as given is checked here (ASCII digits, finite), as the option table checks its own.
FOREIGN_NUMBERS = ("--benchmark-min-rounds", "--benchmark-min-time", "--benchmark-max-time",
                   "--benchmark-warmup-iterations", "--benchmark-calibration-precision", "--max-worker-restart",
                   "--maxprocesses", "-n", "--numprocesses")
_FOREIGN_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?", re.ASCII)
_XDIST_WORDS = ("auto", "logical")  # -n auto / -n logical


def _check_foreign_numbers(config: pytest.Config) -> None:
    args = [str(a) for a in config.invocation_params.args]
    for i, arg in enumerate(args):
        for flag in FOREIGN_NUMBERS:
            if arg == flag and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(flag + "="):
                value = arg[len(flag) + 1:]
            elif flag == "-n" and arg.startswith("-n") and len(arg) > 2 and not arg.startswith("--"):
                value = arg[2:]
            else:
                continue
            if not (_FOREIGN_NUMBER.fullmatch(value) or (flag in ("-n", "--numprocesses") and value in _XDIST_WORDS)):
                raise pytest.UsageError(f"{flag}: must be a finite number in ASCII digits, got {value!r}")


def check_benchmark_storage(config: pytest.Config) -> None:
    """pytest-benchmark's storage, checked before pytest-benchmark configures: it would fail with a traceback after
    the run (--benchmark-save into a folder that cannot be made), or compare against nothing with a mere warning
    (--benchmark-compare with no saved run)."""
    from attnbench.results.exports import unusable_folder_reason, unwritable_reason

    opt = config.getoption
    storage = str(opt("benchmark_storage", None) or "")
    if "://" in storage and not storage.startswith("file://"):
        return  # elasticsearch: not a path
    folder = storage.removeprefix("file://")
    if folder and (opt("benchmark_save", None) or opt("benchmark_autosave", None)):
        reason = unusable_folder_reason(folder)
        if reason is not None:
            raise pytest.UsageError(f"--benchmark-storage {folder}: cannot save runs there: {reason}")
    name = opt("benchmark_save", None)
    if folder and name:  # pytest-benchmark saves <storage>/<machine>/NNNN_<name>.json after the whole run
        reason = unwritable_reason(Path(folder) / "machine" / f"0001_{name}.json")
        if reason is not None:
            raise pytest.UsageError(f"--benchmark-save {name}: cannot save the run under that name: {reason}")
    if folder and opt("benchmark_compare", None) not in (None, [], False):
        if not Path(folder).is_dir() or next(Path(folder).glob("*/*.json"), None) is None:
            raise pytest.UsageError(f"--benchmark-compare: no saved runs in --benchmark-storage {folder} "
                                    f"(save one first with --benchmark-save NAME)")


def _unused(metafunc: pytest.Metafunc, why: str) -> None:
    """Give this benchmark no case; ``why`` is shown if the whole session ends up with nothing to run."""
    metafunc.config.stash[UNUSED_KEY].setdefault(str(metafunc.definition.path), why)
    metafunc.parametrize(axes.BACKEND.argname, [pytest.param(None, marks=pytest.mark.attnbench_unused)])


_BENCH_DIR = {"attention": "bench_attention", "mla": "bench_mla"}
_MODE_TESTS = {"standard": "test_attention, test_mla and test_sparse_mla",
               "decode_vs_prefill": "bench_mla's test_mla_decode_vs_prefill",
               "mha_vs_mqa": "bench_mla's test_sparse_mla_mha_vs_mqa"}
_FAMILY_NAME = {"attention": "a standard-attention", "mla": "an MLA"}


def _why_no_backends(study: Study, family: str) -> str:
    names = list(study.backends or ())
    other = "mla" if family == "attention" else "attention"
    elsewhere = [n for n in names if registry.for_family([n], other)]  # type: ignore[arg-type]
    if elsewhere:
        kind = f"{_FAMILY_NAME[other]} backend" if len(elsewhere) == 1 else f"{_FAMILY_NAME[other].split()[1]} backends"
        return f"{', '.join(elsewhere)} {'is' if len(elsewhere) == 1 else 'are'} {kind}: run {_BENCH_DIR[other]}"
    return f"none of the backends {', '.join(names)} is {_FAMILY_NAME[family]} backend"


def _backend_marks(info: registry.BackendInfo) -> list[Any]:
    """What a backend's cases need, as markers that ``pytest_runtest_setup`` turns into skips with a reason."""
    marks = []
    if info.needs_cuda:
        marks.append(pytest.mark.requires_cuda)
    if info.min_capability or info.max_capability:
        marks.append(pytest.mark.requires_capability(info.min_capability, info.max_capability))
    if info.needs_vllm:
        marks.append(pytest.mark.requires_vllm)
    return marks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("bench_family")
    if marker is None or "bench_case" not in metafunc.fixturenames:
        return
    family = marker.args[0]
    mode = marker.kwargs.get("mode", "standard")
    kind = registry.SPARSE if marker.kwargs.get("sparse") else registry.DENSE
    config = metafunc.config
    study = config.stash[STUDY_KEY]
    bench = axes.Bench(study, family, mode, kind, notes=config.stash[NOTES_KEY])
    of_family = study.backends_for(family)
    backends = bench.backends()
    if study.mode != mode:
        _unused(metafunc, f"the study's mode is {study.mode}, which only {_MODE_TESTS[study.mode]} runs")
        return
    if kind == registry.SPARSE and not study.wants_sparse():
        _unused(metafunc, "sparse MLA cases run when asked: name a sparse backend (--backends FLASHMLA_SPARSE "
                          "FLASH_ATTN_MLA_SPARSE) or a top-k pattern (--topk-pattern random)")
        return
    if not backends:
        _unused(metafunc, _why_no_backends(study, family) if not of_family else
                f"{', '.join(b.name for b in of_family)} run{'s' if len(of_family) == 1 else ''} "
                f"{'dense' if kind == registry.SPARSE else 'sparse'} MLA only: "
                f"{'test_mla' if kind == registry.SPARSE else 'test_sparse_mla'} runs "
                f"{'it' if len(of_family) == 1 else 'them'}")
        return
    foreign = next((s for s in study.sweeps if not s.applies_to(family)), None)
    if foreign is not None:
        # a model-dimension sweep of the other family (e.g. kv_lora_rank): nothing to run here
        other = "mla" if family == "attention" else "attention"
        _unused(metafunc, f"the sweep's {foreign.param} is {_FAMILY_NAME[other]} dimension: "
                          f"run {_BENCH_DIR[other]}")
        return
    try:
        shape = check_shape(study, family)
        cases, factors = axes.case_count(bench)
        if cases > MAX_CASES:
            raise StudyError(f"{study.source or 'the command line'}: the study has {cases} {family} cases "
                             f"({factors}), more than the limit {MAX_CASES}: split it into several studies")
        try:
            sweeping.check_shapes(study.sweeps, shape)
        except sweeping.SweepError as exc:
            raise StudyError(str(exc)) from None
    except (StudyError, ValueError) as exc:
        # command-line dimensions apply to every collected family; say how to aim them at one
        other = "mla" if family == "attention" else "attention"
        hint = "" if study.source or not _shape_fits(study, other) else {
            "attention": " (dimensions meant for MLA? run only bench_mla)",
            "mla": " (dimensions meant for standard attention? run only bench_attention)"}[family]
        config.stash[ERRORS_KEY].append(f"{exc}{hint}")
        _unused(metafunc, str(exc))
        return
    used = axes.axes_of(bench)
    assert used[0] is axes.BACKEND
    marks = {b.name: _backend_marks(b) for b in backends}  # the backend axis's values are their names
    metafunc.parametrize([axis.argname for axis in used], [
        pytest.param(*(value for value, _ in case), id=axes.joined_id(part for _, part in case),
                     marks=marks[case[0][0]])
        for case in itertools.product(*axes.labelled_values(bench, used))])


def _axis_fixture(axis: axes.Axis) -> Any:
    def default() -> Any:
        return axis.default  # a benchmark that does not apply this axis
    return pytest.fixture(name=axis.argname)(default)


for _axis in axes.AXES:  # parametrize names only fixtures, so each axis has one (its value where it does not apply)
    globals()[f"_{_axis.argname}_fixture"] = _axis_fixture(_axis)


@pytest.fixture
def bench_study(request: pytest.FixtureRequest) -> Study:
    return request.config.stash[STUDY_KEY]


def _bench_case(request: pytest.FixtureRequest, bench_study: Study, **axis_values: Any) -> BenchCase:
    """The case this test id stands for, composed from the parametrized axes and the study."""
    point = case_point(request.node)
    backend = axis_values.get(axes.BACKEND.argname)
    assert point is not None, f"{request.node.nodeid}: {backend!r} is not a benchmark backend"
    return point.case(bench_study)


# The fixture's parameters are the axes' (pytest reads a fixture's arguments from its signature): a test that takes
# ``bench_case`` then takes every axis, which parametrize needs, and the plugin needs no edit for a new axis.
_bench_case.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in ("request", "bench_study")]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in axes.ARGNAMES])
bench_case = pytest.fixture(name="bench_case")(_bench_case)


def case_point(item: pytest.Item) -> CasePoint | None:
    """The axes of a benchmark item (None: not a benchmark case). ``bench_backend`` is the backend's name, whose
    family comes from the ``bench_family`` marker (or, in a test that parametrizes rows directly, the row)."""
    callspec = getattr(item, "callspec", None)
    marker = item.get_closest_marker("bench_family")
    return CasePoint.of(callspec.params if callspec else {}, marker.args[0] if marker is not None else None)


def backend_for_item(item: pytest.Item) -> registry.BackendInfo | None:
    """The registry entry of a benchmark item's backend (None: not a benchmark case)."""
    point = case_point(item)
    return point.backend if point else None


def _shape_fits(study: Study, family: str) -> bool:
    """Whether the study's dimensions make a valid shape of ``family``: only then is a failure of the other family
    a sign of dimensions aimed at this one (a bad value, such as --dtype nope, fits neither)."""
    try:
        study.shape_for(family)
    except (ValueError, TypeError):
        return False
    return True


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    errors = config.stash.get(ERRORS_KEY, [])
    if errors:
        items[:] = []  # --collect-only lists the items even when collection fails: no placeholder test[None]
        _usage_error(config, errors[0])
    unused = [item for item in items if item.get_closest_marker("attnbench_unused")]
    if unused:
        items[:] = [item for item in items if not item.get_closest_marker("attnbench_unused")]
        if not items:  # nothing else was collected either: say why, not pytest's bare "no tests collected"
            why = config.stash.get(UNUSED_KEY, {})
            _usage_error(config, "nothing to run: " + "; ".join(
                f"{Path(path).parent.name}: {reason}" for path, reason in why.items()))
        config.hook.pytest_deselected(items=unused)
    study = config.stash.get(STUDY_KEY, None)
    if study is not None and study.topk_pattern is not None and items and not any(
            (point := case_point(item)) is not None and point.topk_pattern is not None for item in items):
        config.stash[NOTES_KEY].append(f"--topk-pattern {' '.join(study.topk_pattern)} changes nothing here: it "
                                       "chooses sparse MLA's top-k keys, and no sparse MLA case was collected "
                                       "(bench_mla's test_sparse_mla runs them)")


_WORKER_ERROR = "attnbench_usage_error"  # workeroutput key: a worker's collection-time usage error
WORKER_ERROR_KEY = pytest.StashKey[str]()


def _usage_error(config: pytest.Config, message: str) -> None:
    """Raise the usage error; an xdist worker (GPU runs are one per GPU) also hands it to the controller, which
    would otherwise end with a bare "no tests ran": workers' stderr is not shown."""
    output = getattr(config, "workeroutput", None)
    if output is not None:
        output[_WORKER_ERROR] = message
    raise pytest.UsageError(message)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    message = (getattr(node, "workeroutput", None) or {}).get(_WORKER_ERROR)
    if message and WORKER_ERROR_KEY not in node.config.stash:
        node.config.stash[WORKER_ERROR_KEY] = message


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    message = session.config.stash.get(WORKER_ERROR_KEY, None)
    if message is not None:  # what pytest prints for a UsageError, and its exit code
        sys.stderr.write(f"ERROR: {message}\n")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """What resolving the study merged or dropped (repeated batch specs, sweep values, ...), said once."""
    if hasattr(config, "workerinput") or STUDY_KEY not in config.stash:
        return
    for note in (*config.stash[STUDY_KEY].notes, *config.stash.get(NOTES_KEY, [])):
        terminalreporter.write_line(f"attnbench: {note}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, with a reason, cases this machine cannot run (SM capability, no GPU, no vLLM)."""
    info = backend_for_item(item)
    if info is None:
        return
    from attnbench.measure.hardware import skip_reason  # torch is imported only when a case is set up

    study = item.config.stash[STUDY_KEY]
    reason = skip_reason(info, study.run.device)
    if reason:
        pytest.skip(reason)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    from attnbench.measure.hardware import machine_info as describe

    study = config.stash.get(STUDY_KEY, None)
    machine_info["attnbench"] = describe(study.run.device if study else "cuda")
