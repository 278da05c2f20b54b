"""The option table (attnbench/spec/options.py): every row is tested on every surface it declares.

Tests are parametrized over ``OPTIONS`` itself, so a newly added row is tested without editing this file:
its pytest flag parses into the Study, its YAML keys round-trip, command line > YAML > default holds, and its
validator refuses NaN, inf, negatives, non-ASCII digits and numbers past int64.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

import benchmark
from attnbench.spec import options
from attnbench.pytest_plugin import plugin
from attnbench.api import BenchmarkConfig
from attnbench.spec.options import OPTIONS, Option
from attnbench.results.record import SHAPE_FIELDS
from attnbench.spec.shapes import ATTENTION_KEYS, MLA_KEYS
from attnbench.spec.study import RunSettings, Study, StudyError, build_study, load_study_file
from attnbench.spec import study as study_module


@pytest.fixture(autouse=True)
def cupti_python_installed(monkeypatch):
    """--timer cupti's examples are checked here as values; cupti-python itself (missing here) is
    test_kernel_activity's concern."""
    monkeypatch.setattr(study_module, "cupti_missing", lambda: False)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
MERGED = [o for o in OPTIONS if o.to in ("run", "model", "study")]  # rows build_study merges itself
NUMERIC = [o for o in OPTIONS if o.kind in (int, float)]


def ids(rows: list[Option]) -> list[str]:
    return [o.name for o in rows]


def study_value(study: Study, opt: Option) -> Any:
    if opt.to == "run":
        return getattr(study.run, opt.name)
    if opt.to == "model":
        return study.model.get(opt.name)
    return getattr(study, opt.name)


def cli_text(opt: Option, example: Any) -> list[str]:
    """What a user types after the flag for ``example``."""
    if opt.const is not None:
        return []
    return [str(v) for v in example] if opt.many else [str(example)]


def nested(key: str, value: Any) -> dict[str, Any]:
    head, _, sub = key.partition(".")
    return {head: {sub: value}} if sub else {head: value}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def parse(pytester: pytest.Pytester, *args: str) -> pytest.Config:
    return pytester.parseconfig("-p", "attnbench.pytest_plugin.plugin", "-p", "no:cacheprovider", *args)


# ---------------------------------------------------------------------------------------- the table itself

def test_the_table_is_well_formed():
    names = [o.name for o in OPTIONS]
    flags = [f for o in OPTIONS for f in o.flags]
    keys = [k for o in OPTIONS for k in o.yaml]
    upstream = [f for o in OPTIONS for f in o.upstream]
    for spellings in (names, flags, keys, upstream):
        assert len(spellings) == len(set(spellings)), spellings
    for opt in OPTIONS:
        assert opt.flags or opt.yaml, opt.name
        assert opt.to in ("run", "model", "study", "sweep", "file", "session"), opt.name
        assert all(f.startswith("--") and f == f.lower() for f in opt.flags + opt.upstream), opt.name
        assert len(opt.examples) == 2 and opt.value(opt.examples[0]) != opt.value(opt.examples[1]), opt.name
        if opt.const is not None:
            assert opt.flags and opt.const in opt.examples, opt.name


def test_model_rows_are_the_shape_fields_and_the_model():
    rows = {o.name for o in OPTIONS if o.to == "model"}
    assert rows - {"model"} == set(SHAPE_FIELDS) == ATTENTION_KEYS | MLA_KEYS


@pytest.mark.parametrize("cls, targets", [(RunSettings, ("run",)), (Study, ("study",)),
                                          (BenchmarkConfig, ("run", "model"))], ids=["run", "study", "api"])
def test_records_carry_every_row_with_its_default(cls, targets):
    options.check_record(cls, targets)  # what the modules run at import
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    for opt in OPTIONS:
        if opt.to in targets and fields_[opt.name].default is not dataclasses.MISSING:
            assert fields_[opt.name].default == opt.default


def test_a_record_that_drifts_from_the_table_fails_the_import_check():
    lacking = dataclasses.make_dataclass("Lacking", [("device", str, "cuda")])
    with pytest.raises(TypeError, match="no field 'repeats'"):
        options.check_record(lacking, ("run",))
    wrong = dataclasses.make_dataclass("Wrong", [(o.name, Any, o.default) for o in OPTIONS if o.to == "run"]
                                       + [("extra", int, 1)])
    options.check_record(wrong, ("run",))
    off = dataclasses.make_dataclass("Off", [(o.name, Any, 99 if o.name == "repeats" else o.default)
                                             for o in OPTIONS if o.to == "run"])
    with pytest.raises(TypeError, match="Off.repeats defaults to 99"):
        options.check_record(off, ("run",))


# ------------------------------------------------------------------------------- every surface, every row

@pytest.mark.parametrize("opt, flag", [pytest.param(o, f, id=f) for o in OPTIONS for f in o.flags])
def test_every_flag_parses_into_the_study(pytester, opt, flag):
    example = opt.examples[0] if opt.const is None else opt.const
    config = parse(pytester, flag, *cli_text(opt, example))
    text = cli_text(opt, example)
    one = opt.const if opt.const is not None else text if opt.many else text[0]
    repeatable = opt.to == "sweep" and opt.const is None  # one --sweep-param/--sweep-values per swept parameter
    assert config.getoption(opt.name) == ([one] if repeatable else one)
    if opt in MERGED:
        assert study_value(plugin.resolve_study(config), opt) == opt.value(example)


@pytest.mark.parametrize("opt, key", [pytest.param(o, k, id=k) for o in OPTIONS for k in o.yaml])
def test_every_yaml_key_round_trips_into_the_study(tmp_path, opt, key):
    for example in opt.examples:
        path = write_yaml(tmp_path / "s.yaml", nested(key, example))
        assert study_value(build_study(load_study_file(path), {}), opt) == opt.value(example)


@pytest.mark.parametrize("opt", MERGED, ids=ids(MERGED))
def test_the_default_is_the_tables(opt):
    assert study_value(build_study(None, {}), opt) == opt.default


@pytest.mark.parametrize("opt", [o for o in MERGED if o.flags and o.yaml], ids=ids([o for o in MERGED
                                                                                    if o.flags and o.yaml]))
def test_command_line_beats_yaml_beats_default(pytester, opt):
    from_file = next(e for e in opt.examples if opt.value(e) != opt.default)
    path = write_yaml(pytester.path / "s.yaml", nested(opt.yaml[0], from_file))
    assert study_value(plugin.resolve_study(parse(pytester, "--bench-config", str(path))), opt) == opt.value(from_file)

    typed = opt.const if opt.const is not None else opt.examples[0]
    under = next(e for e in opt.examples if opt.value(e) != opt.value(typed))
    path = write_yaml(pytester.path / "s.yaml", nested(opt.yaml[0], under))
    config = parse(pytester, "--bench-config", str(path), opt.flags[0], *cli_text(opt, typed))
    assert study_value(plugin.resolve_study(config), opt) == opt.value(typed)


@pytest.mark.parametrize("opt, spelling", [pytest.param(o, s, id=s) for o in OPTIONS for s in o.upstream])
def test_every_upstream_flag_translates_to_the_pytest_flag(opt, spelling):
    example = opt.const if opt.const is not None else opt.examples[0]
    args = benchmark.to_pytest_args([spelling, *cli_text(opt, example), "-q"])
    at = args.index(opt.flags[0])
    assert args[at:at + 1 + len(cli_text(opt, example))] == [opt.flags[0], *cli_text(opt, example)]
    assert at < args.index("-rs") and args[-1] == "-q"
    assert spelling in opt.flags or spelling not in args


# ----------------------------------------------------------------------------------------------- validators

def bad_values(opt: Option) -> list[tuple[Any, str]]:
    """(value as typed on the command line, as written in YAML) pairs every numeric row must refuse."""
    out: list[tuple[Any, str]] = [("-1", -1), ("1180591620717411303424", 2**70), ("٣", "٣")]
    if opt.kind is float:
        out += [("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf")), ("1e999", float("inf")),
                ("١.٥", "١.٥")]
    return out


@pytest.mark.parametrize("opt", [o for o in NUMERIC if o.flags], ids=ids([o for o in NUMERIC if o.flags]))
def test_numeric_flags_refuse_nan_inf_negative_non_ascii_and_huge(opt):
    for text, _ in bad_values(opt):
        cli = {opt.name: [text] if opt.many else text}
        if opt.to == "session":  # a run setting: checked by session_values, not merged into the study
            with pytest.raises(options.OptionError) as info:
                options.session_values(cli.get)
        else:
            with pytest.raises(StudyError) as info:
                build_study(None, {"model": cli} if opt.to == "model" else cli)
        assert str(info.value).startswith(f"{opt.flags[0]}: "), (text, str(info.value))


@pytest.mark.parametrize("opt, key", [pytest.param(o, k, id=k) for o in NUMERIC for k in o.yaml])
def test_numeric_yaml_keys_refuse_nan_inf_negative_and_huge(tmp_path, opt, key):
    for _, value in bad_values(opt):
        path = write_yaml(tmp_path / "bad.yaml", nested(key, [value] if opt.many else value))
        with pytest.raises(StudyError) as info:
            load_study_file(path)
        assert str(path) in str(info.value) and f"'{key}'" in str(info.value)


def test_int_bound_is_int64():
    seed = options.BY_NAME["seed"]
    assert seed.value(str(options.INT_MAX), cli=True) == 2**63 - 1
    with pytest.raises(options.OptionError, match=r"< 2\*\*63"):
        seed.value(str(2**63), cli=True)
    with pytest.raises(options.OptionError, match="ASCII"):
        options.BY_NAME["num_layers"].value("٣", cli=True)  # int("٣") == 3 in Python


def test_yaml_numbers_are_not_text():
    with pytest.raises(options.OptionError):
        options.BY_NAME["repeats"].value("5")  # YAML `repeats: "5"` is a string, not a count
    with pytest.raises(options.OptionError):
        options.BY_NAME["repeats"].value(True)


def test_sweep_values_refuse_non_ascii_digits_and_huge():
    for value in ("٣", str(2**63)):
        with pytest.raises(StudyError, match="must be a non-negative integer or 'auto'"):
            build_study(None, {"sweep_param": "num_kv_splits", "sweep_values": [value]})


def test_unknown_yaml_key_lists_the_valid_ones(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"repeat": 3})
    with pytest.raises(StudyError) as info:
        load_study_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key 'repeat': unknown key (valid: ")
    for key in options.BY_YAML:
        assert key.split(".")[0] in message


def test_api_checks_run_settings_with_the_tables_rules():
    with pytest.raises(ValueError, match="BenchmarkConfig.noise_target: must be a finite number"):
        BenchmarkConfig(backend="reference", batch_spec="q1s1k", noise_target=float("nan")).run_settings()
    with pytest.raises(ValueError, match="BenchmarkConfig.seed: must be < 2"):
        BenchmarkConfig(backend="reference", batch_spec="q1s1k", seed=2**64).run_settings()
    assert BenchmarkConfig(backend="reference", batch_spec="q1s1k").run_settings() == RunSettings()


# ------------------------------------------------------------------------------------- end to end, at start-up

@pytest.fixture
def child(monkeypatch):
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("args, token", [
    (["--seed", "1180591620717411303424"], "--seed: must be < 2**63, got 1180591620717411303424"),
    (["--num-layers", "٣"], "--num-layers: must be an integer in ASCII digits, got '٣'"),
    (["--noise-target", "nan"], "--noise-target: must be a finite number"),
], ids=["huge-seed", "arabic-indic-digit", "nan"])
def test_bad_numbers_are_one_line_usage_errors_at_start_up(pytester, child, args, token):
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-c", str(REPO / "pytest.ini"),
                                           "--rootdir", str(REPO), str(REPO / "bench_attention"), "--collect-only",
                                           "-q", *args, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert errors == [f"ERROR: {token}"] or (len(errors) == 1 and token in errors[0]), errors
