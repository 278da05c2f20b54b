"""Bad input never crashes the run and never passes silently. One test family per rule, parametrized
over every option or file the rule covers; the end-to-end ones run the real suite on the CPU REFERENCE backend
in a child pytest, so they see exactly what a user sees (one ``ERROR:`` line, exit 4, nothing run)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from attnbench.spec import options
from attnbench.results.exports import ResultsFileError, load_results
from attnbench.reporting import plots, verdicts
from attnbench.pytest_plugin.plugin import FOREIGN_NUMBERS
from attnbench.spec.study import Study, StudyError, build_study, load_study_file
from attnbench.spec.workload import build_layout, scheduler_order
from grammar import BatchSpecError, parse_batch_spec

ROOT = Path(__file__).resolve().parents[1]
CPU = ("--device", "cpu", "-k", "REFERENCE", "--repeats", "3", "--warmup-iters", "0", "--no-kernel-profile",
       "-p", "no:cacheprovider")
NUMBER_ROWS = [o for o in options.OPTIONS if o.kind in (int, float) and o.flags]
YAML_NUMBER_ROWS = [o for o in options.OPTIONS if o.kind in (int, float) and o.yaml]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="200")
    return env


def run_pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pytest.ini"), "--rootdir", str(ROOT),
                           *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)


def assert_one_line_usage_error(proc: subprocess.CompletedProcess[str], *tokens: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: "), out
    assert "Traceback" not in out and "[None]" not in out and " passed" not in out, out
    for token in tokens:
        assert token in errors[0], errors[0]
    return errors[0]


def _cli(opt: options.Option, value: str) -> dict:
    return {"model": {opt.name: value}} if opt.to == "model" else {opt.name: value}


# ------------------------------------------------------------------ rule 2: numbers

@pytest.mark.parametrize("opt", NUMBER_ROWS, ids=lambda o: o.flags[0])
@pytest.mark.parametrize("text", ["٣", "３", "\x1c3", "3\x85", "nan", "inf", "-inf", "1e400", "0x10", ""])
def test_every_numeric_option_takes_finite_ascii_digits(opt, text) -> None:
    value = [text] if opt.many else text
    if opt.to == "session":  # pytest-run settings: checked once at configure (options.session_values)
        with pytest.raises(options.OptionError, match=rf"^{opt.flags[0]}: must be"):
            options.session_values(lambda name: value if name == opt.name else None)
        return
    with pytest.raises(StudyError, match=rf"^{opt.flags[0]}: must be"):
        build_study(None, _cli(opt, value))


@pytest.mark.parametrize("flag, text", [(f, "٣") for f in FOREIGN_NUMBERS]
                         + [("--benchmark-min-time", "nan"), ("--benchmark-max-time", "inf")])
def test_numbers_of_pytest_benchmark_and_xdist_options_are_checked_too(tmp_path, flag, text) -> None:
    # int("٣") == 3 and float("nan") inside those plugins: the text as given is checked at configure (an int
    # option given "nan" is refused by argparse itself)
    spelled = [f"{flag}={text}"] if flag.startswith("--") else [flag, text]
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--collect-only", *spelled, cwd=tmp_path)
    assert_one_line_usage_error(proc, flag, repr(text))


@pytest.mark.parametrize("opt", [o for o in NUMBER_ROWS if o.kind is int], ids=lambda o: o.flags[0])
def test_every_integer_option_is_int64(opt) -> None:
    bound = r"(< 2\*\*63|<= \d+)"  # int64, or the option's own smaller bound (--placements <= 64)
    if opt.to == "session":
        with pytest.raises(options.OptionError, match=rf"^{opt.flags[0]}: must be {bound}"):
            options.session_values(lambda name: str(2**70) if name == opt.name else None)
        return
    with pytest.raises(StudyError, match=rf"^{opt.flags[0]}: must be {bound}"):
        build_study(None, _cli(opt, str(2**70)))


@pytest.mark.parametrize("opt", YAML_NUMBER_ROWS, ids=lambda o: o.yaml[0])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "٣", 2**70, True])
def test_every_numeric_yaml_key_takes_finite_numbers(tmp_path, opt, value) -> None:
    key = opt.yaml[0]
    doc: dict = {}
    section, _, sub = key.rpartition(".")
    (doc.setdefault(section, {}) if section else doc)[sub] = [value] if opt.many else value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(StudyError, match=rf"^{path}: key '{key}': must be"):
        load_study_file(path)


@pytest.mark.parametrize("device", ["cuda:٣", "cuda:128", "cuda:300", "cuda:99999999999999999999999", "cuda:-1"])
def test_device_index_is_ascii_and_within_torch_range(device) -> None:
    with pytest.raises(StudyError, match="^--device: "):
        build_study(None, {"device": device})


@pytest.mark.parametrize("values", [["٣"], ["-1"], [str(2**63)], ["1.5"], ["\x1c2"]])
def test_sweep_values_from_the_command_line_name_the_option(values) -> None:
    with pytest.raises(StudyError, match="^--sweep-values: sweep value"):
        build_study(None, {"sweep_param": "num_kv_splits", "sweep_values": values})


@pytest.mark.parametrize("args", [["--threshold", "٠.٠٥"], ["--threshold", "nan"], ["--threshold=-1"],
                                  ["--confidence", "inf"], ["--confidence", "١"], ["--threshold", "0.1",
                                                                                    "--threshold", "0.2"]])
def test_compare_numbers_are_one_line_errors(capsys, args) -> None:
    with pytest.raises(SystemExit) as info:
        verdicts.main([str(ROOT / "tests/data/verdict_baseline.json"), str(ROOT / "tests/data/verdict_new.json"),
                       *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


# ------------------------------------------------------------------ rule 3: bounded before allocating

def test_batch_sizes_times_specs_is_capped_before_expanding() -> None:
    study = Study("s", source="big.yaml", batch_specs=tuple(f"{n}q1s{1000 + n}" for n in range(1, 1001)),
                  batch_sizes=tuple(range(1, 301)))
    start = time.perf_counter()
    with pytest.raises(StudyError, match=r"^big.yaml: key 'batch_sizes': 300 batch sizes x 1000 batch specs = "
                                         r"300000 specs, more than the limit 200000"):
        study.specs_for("attention", limit=200_000)
    assert time.perf_counter() - start < 2


def test_a_batch_size_beyond_max_requests_names_the_key() -> None:
    study = Study("s", source="b.yaml", batch_specs=("q1s1k",), batch_sizes=(2_000_000,))
    with pytest.raises(StudyError, match=r"^b.yaml: key 'batch_sizes': batch size 2000000 x 'q1s1k'"):
        study.specs_for("attention")


@pytest.mark.parametrize("spec", ["q1s1000000k", "1000000q1s2k", "1024q1s2097152k"])
def test_a_case_is_sized_before_its_block_table_is_built(spec) -> None:
    from attnbench.spec import backends as registry
    from attnbench.spec.contract import SkipCase
    from attnbench.spec.axes import compose_case
    from attnbench.measure.runner import execute

    case = compose_case(build_study(None, {"device": "cpu"}), registry.lookup("REFERENCE", "attention"), spec)
    start = time.perf_counter()
    with pytest.raises(SkipCase, match=r"needs at least ~[\d.]+ GiB .* GiB available on the host"):
        execute(case)
    assert time.perf_counter() - start < 10  # building 64 M blocks first took 12 s and GBs of host memory


# ------------------------------------------------------------------ rule 4: files read

def _pb_json(tmp_path: Path) -> dict:
    return json.loads((ROOT / "tests/data/verdict_new.json").read_text())


@pytest.mark.parametrize("field", ["rounds", "mean", "median", "stddev", "min", "max", "iqr"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x"])
def test_every_stats_number_is_checked_even_beside_samples(tmp_path, field, bad) -> None:
    doc = _pb_json(tmp_path)
    doc["benchmarks"][0]["stats"][field] = bad
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsFileError, match=rf"benchmarks\[0\]: stats.{field} is"):
        load_results(path)


def _with_rounds(text: str) -> str:
    """A pytest-benchmark file whose first entry's ``stats.rounds`` is ``text``, as written (no JSON encoder)."""
    doc = _pb_json(Path())
    doc["benchmarks"][0]["stats"]["rounds"] = 424242
    return json.dumps(doc).replace("424242", text, 1)


def _edited(edit) -> str:
    doc = _pb_json(Path())
    edit(doc["benchmarks"][0])
    return json.dumps(doc)


@pytest.mark.parametrize("text, said", [
    (_with_rounds("9" * 5000), "unreadable JSON: Exceeds the limit (4300 digits)"),
    (_with_rounds("1e400"), "stats.rounds is Infinity"),
    (_edited(lambda b: b["stats"].update(data=[1.7e308] * 10)), "sample 0 is 1.7e+308, expected seconds"),
    (_edited(lambda b: b["stats"].update(data=[], median=-1.0)), "stats.median is -1.0, expected seconds"),
    (_edited(lambda b: b["stats"].update(data=[], rounds=-3)), "stats.rounds is -3, expected a whole number"),
    (_edited(lambda b: b["extra_info"].update(schema=99)), "extra_info.schema is 99, expected 2"),
    (_edited(lambda b: b["extra_info"].update(backend="no such")), 'backend is "no such", expected a backend name'),
    (_edited(lambda b: b["extra_info"].update(batch_spec="q1s1kx")), "batch_spec 'q1s1kx' is not a batch spec"),
    (_edited(lambda b: b["extra_info"]["shape"].update(num_layers=-2)), "shape.num_layers is -2, expected a posi"),
], ids=["5000-digit-int", "1e400", "samples-near-1e308", "negative-median", "negative-rounds", "unknown-schema",
        "malformed-backend", "malformed-batch-spec", "negative-layers"])
def test_numbers_no_time_can_be_are_one_error_in_every_reader(tmp_path, capsys, text, said) -> None:
    """Huge integers, overflowing samples, negative times and unknown record schemas: one error naming the file and
    the field, in load_results (--resume, --baseline-json) and in `benchmark.py compare`; never a traceback."""
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ResultsFileError, match=re.escape(said)) as info:
        load_results(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert verdicts.main([str(path), str(ROOT / "tests/data/verdict_new.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and said in err and err.count("\n") == 1, err


@pytest.mark.parametrize("edit, said", [
    (lambda row: row.update(median_tme=1e-3), 'record has an unknown key "median_tme"'),
    (lambda row: row.update({"Backend": "FLASH_ATTN"}), 'record has an unknown key "Backend"'),
], ids=["misspelt-key", "wrong-case-key"])
def test_an_unknown_row_key_in_attnbench_json_is_one_error(tmp_path, edit, said) -> None:
    """README: an unknown key in a results file is an error naming it, not a field quietly ignored. The rows an
    attnbench JSON export writes load back as they are; one edited key does not."""
    rows = [r.to_json() for r in load_results(ROOT / "tests/data/verdict_new.json").results]
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"results": rows}))
    assert len(load_results(good).results) == len(rows)
    edit(rows[1])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": rows}))
    with pytest.raises(ResultsFileError, match=re.escape(said)) as info:
        load_results(bad)
    assert str(info.value).startswith(str(bad)) and "results[1]" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("flag, name", [("--output-json", "x" * 300 + ".json"), ("--benchmark-json", "y" * 300),
                                        ("--benchmark-save", "z" * 300)])
def test_an_output_name_too_long_for_the_file_system_is_one_usage_error(tmp_path, flag, name) -> None:
    """The name is checked where the other output checks are, before any case runs (not an OSError at the end)."""
    value = name if flag == "--benchmark-save" else str(tmp_path / name)
    proc = run_pytest(str(ROOT / "bench_attention"), "-p", "no:cacheprovider", "-k", "REFERENCE", "--device", "cpu",
                      "--batch-specs", "q1s64", "--gpus", "none", flag, value, cwd=tmp_path)
    assert_one_line_usage_error(proc, flag, "bytes long")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written, nothing half-written


def test_a_benchmark_timer_that_cannot_be_loaded_is_a_usage_error(tmp_path) -> None:
    """pytest-benchmark imports --benchmark-timer's module while the command line is parsed: a typo there is
    argparse's one-line error naming the flag, not the import's traceback."""
    proc = run_pytest(str(ROOT / "bench_attention"), "-p", "no:cacheprovider", "--benchmark-timer", "nope.timer",
                      cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4 and "Traceback" not in out, out
    assert "argument --benchmark-timer: cannot load the timer 'nope.timer': ModuleNotFoundError" in out


@pytest.mark.parametrize("text", ["[" * 200_000, '{"benchmarks": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  '{"a": ' * 100_000 + "1" + "}" * 100_000, ('{"backend": ' + "[" * 100_000)])
def test_deeply_nested_json_is_one_line(tmp_path, text) -> None:
    path = tmp_path / "nested.json"
    path.write_text(text)
    with pytest.raises(ResultsFileError) as info:
        load_results(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("source", ["verdict_baseline.json", "cpu_run.json"])
@pytest.mark.parametrize("side", ["baseline", "new"])
def test_compare_refuses_a_file_that_does_not_record_its_gpu(tmp_path, capsys, source, side) -> None:
    doc = json.loads((ROOT / "tests/data" / source).read_text())
    del doc["machine_info"]["attnbench"]
    stripped = tmp_path / "stripped.json"
    stripped.write_text(json.dumps(doc))
    other = str(ROOT / "tests/data" / source)
    argv = [str(stripped), other] if side == "baseline" else [other, str(stripped)]
    assert verdicts.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {stripped}: the {'baseline' if side == 'baseline' else 'new run'} does not "
                          f"record its GPU model") and err.count("\n") == 1, err
    assert verdicts.main([*argv, "--allow-gpu-mismatch", "--no-fail"]) == 0


@pytest.mark.parametrize("which", ["baseline", "new"])
def test_compare_verdict_json_never_overwrites_an_input(tmp_path, capsys, which) -> None:
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_bytes((ROOT / "tests/data/verdict_baseline.json").read_bytes())
    new.write_bytes((ROOT / "tests/data/verdict_new.json").read_bytes())
    target = base if which == "baseline" else new
    before = target.read_bytes()
    assert verdicts.main([str(base), str(new), "--verdict-json", str(target)]) == 2
    assert target.read_bytes() == before
    assert f"the same file as the {which} results" in capsys.readouterr().err


@pytest.mark.parametrize("main, argv", [
    (plots.main, ["r.json", "--out", "a", "--out", "b"]),
    (plots.main, []),
    (verdicts.main, ["only-one.json"]),
    (verdicts.main, ["a.json", "b.json", "--verdict-json", "x.json", "--verdict-json", "y.json"]),
])
def test_offline_commands_refuse_bad_command_lines_in_one_line(capsys, main, argv) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


# ------------------------------------------------------------------ rule 5: nothing dropped or doubled

@pytest.mark.parametrize("char", ["\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\x0b", "\x0c", "\u2028", "\u3000", "\xa0"])
@pytest.mark.parametrize("where", ["lead", "trail"])
def test_control_characters_are_refused_not_stripped(char, where) -> None:
    def wrap(text: str) -> str:
        return char + text if where == "lead" else text + char

    with pytest.raises(BatchSpecError):
        parse_batch_spec(wrap("q1s1k"))
    with pytest.raises(StudyError, match="^--batch-specs: "):
        build_study(None, {"batch_specs": [wrap("q1s1k")]})
    with pytest.raises(StudyError, match="^--backends: unknown backend"):
        build_study(None, {"backends": [wrap("flash")]})
    with pytest.raises(StudyError, match="^--repeats: must be"):
        build_study(None, {"repeats": wrap("3")})


def test_repeated_batches_are_run_once_and_said_so_on_the_command_line() -> None:
    study = build_study(None, {"batch_specs": ["q1s1k", "1q1s1k", "q1k", "q1024", " q1s1k "]})
    assert study.batch_specs == ("q1s1k", "q1k")
    assert any("--batch-specs: 3 batch spec(s) repeat" in n and "1q1s1k (= q1s1k)" in n and "q1024 (= q1k)" in n
               for n in study.notes), study.notes


@pytest.mark.parametrize("doc, kept, said", [
    ({"batch_specs": ["q1s1k", "1q1s1k"]}, ("q1s1k",), "key 'batch_specs'"),
    ({"batch_specs": ["q1k"], "batch_spec_ranges": [{"template": "q{q}", "q": [1024]}]}, ("q1k",),
     "keys 'batch_specs' and 'batch_spec_ranges'"),
    ({"batch_spec_ranges": [{"template": "{b}q1s1k", "b": [1]}, {"template": "q1s{s}", "s": [1024]}]},
     ("1q1s1k",), "key 'batch_spec_ranges'"),
    ({"backends": ["flash", "FLASH_ATTN"]}, None, "key 'backends'"),
    ({"parameter_sweep": {"param_name": "num_kv_splits", "values": [1, 1, "auto", "AUTO"]}}, None,
     "key 'parameter_sweep.values'"),
])
def test_repeats_in_a_yaml_study_are_run_once_and_said_so(tmp_path, doc, kept, said) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    study = build_study(load_study_file(path), {})
    if kept is not None:
        assert study.batch_specs == kept
    assert any(n.startswith(f"{path}: {said}") for n in study.notes), study.notes


def test_batch_size_expansions_that_repeat_a_batch_are_said_so() -> None:
    notes: list[str] = []
    study = Study("s", source="x.yaml", batch_specs=("q1s1k", "2q1s1k"), batch_sizes=(1, 2))
    assert study.specs_for("attention", notes=notes) == ["q1s1k", "2q1s1k", "4q1s1k"]
    assert notes and notes[0].startswith("x.yaml: key 'batch_sizes': 1 batch size x spec") and "2 x q1s1k" in notes[0]
    notes = []  # a batch size given twice: its cases once, said so
    assert Study("s", source="x.yaml", batch_specs=("q1s1k",), batch_sizes=(2, 2)).specs_for("mla", notes=notes) == [
        "2q1s1k"]
    assert notes and "2 x q1s1k = 2 x q1s1k" in notes[0]


_TOP = ["name", "description", "mode", "backends", "batch_specs", "batch_sizes", "repeats", "seed", "device",
        "model", "benchmark", "output", "parameter_sweep", "batch_spec_ranges", "CUTLASS_MLA"]


@pytest.mark.parametrize("key", _TOP)
def test_a_yaml_key_given_twice_is_refused_with_file_key_and_line(tmp_path, key) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(f"{key}: 1\nmode: standard\n{key}: 2\n" if key != "mode" else "mode: standard\nmode: standard\n")
    with pytest.raises(StudyError) as info:
        load_study_file(path)
    line = 3 if key != "mode" else 2
    assert str(info.value) == (f"{path}: not valid YAML: line {line}, column 1: key '{key}' is given twice (first on "
                               f"line 1); give it once")


@pytest.mark.parametrize("section, sub", [("model", "num_layers"), ("benchmark", "repeats"), ("output", "csv"),
                                          ("parameter_sweep", "values"), ("CUTLASS_MLA", "num_kv_splits")])
def test_a_nested_key_given_twice_is_refused(tmp_path, section, sub) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(f"{section}:\n  {sub}: 1\n  {sub}: 2\n")
    with pytest.raises(StudyError, match=rf"line 3, column 3: key '{sub}' is given twice \(first on line 2\)"):
        load_study_file(path)


def test_a_merge_key_may_still_be_overridden(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("benchmark:\n  <<: {repeats: 3}\n  repeats: 5\n")
    assert load_study_file(path)["run"]["repeats"] == 5


@pytest.mark.parametrize("first, second", [("backend", "backends"), ("repeats", "benchmark.repeats"),
                                           ("device", "benchmark.device"), ("seed", "benchmark.seed"),
                                           ("parameter_sweep", "model_parameter_sweep")])
def test_one_option_under_two_keys_is_refused(tmp_path, first, second) -> None:
    values = {"backend": "flash", "backends": ["flash"], "repeats": 3, "device": "cpu", "seed": 1,
              "parameter_sweep": {"param_name": "head_dim", "values": [64]}}
    doc: dict = {first: values[first]}
    section, _, sub = second.rpartition(".")
    (doc.setdefault(section, {}) if section else doc)[sub] = values.get(sub, values[first])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(StudyError, match=rf"^{path}: key '{second}': sets the same thing as key '{first}'"):
        load_study_file(path)


# ------------------------------------------------------------------ rule 7: one clean line

@pytest.mark.parametrize("text, where", [("backends: [flash\nbatch_specs: [q1s1k]\n", "line 2, column 12"),
                                         ("a: b: c\n", "line 1, column 5"), ("x:\n - 1\n y: 2\n", "line 3, column 2"),
                                         ("key: 'unclosed\n", "line 2, column 1"), ("\tbad: 1\n", "line 1, column 1")])
def test_yaml_syntax_errors_give_line_and_column(tmp_path, text, where) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(StudyError) as info:
        load_study_file(path)
    assert str(info.value).startswith(f"{path}: not valid YAML: {where}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "model:\n  ", "benchmark:\n  ", "output:\n  ", "CUTLASS_MLA:\n  ",
                                    "parameter_sweep:\n  "])
@pytest.mark.parametrize("key, shown", [('"a\\nb"', "a\\nb"), ('"esc\\x1bk"', "esc\\x1bk"), ('"tab\\tk"', "tab\\tk"),
                                        ('"' + "k" * 5000 + '"', "k" * 100)],
                         ids=["newline", "escape", "tab", "5000-characters"])
def test_yaml_keys_are_shown_escaped_and_cut(tmp_path, prefix, key, shown) -> None:
    path = tmp_path / "study.yaml"
    indent = "  " if prefix else ""
    path.write_text(f"{prefix}? {key}\n{indent}: 1\n")  # an explicit key: YAML caps implicit ones at 1024 chars
    with pytest.raises(StudyError) as info:
        load_study_file(path)
    message = str(info.value)
    assert shown in message and "\n" not in message and "\x1b" not in message and len(message) < 1000, message


@pytest.mark.parametrize("cli", [{"batch_specs": ["q1" * 2500]}, {"batch_specs": ["q1_" * 2000 + "x"]},
                                 {"backends": ["x" * 5000]}, {"sweep_param": "x" * 5000, "sweep_values": ["1"]},
                                 {"sweep_param": "head_dim", "sweep_values": ["9" * 5000]},
                                 {"repeats": "9" * 5000}, {"device": "cuda:" + "1" * 5000},
                                 {"batch_specs": ["Q" * 5000]}], ids=lambda cli: "-".join(cli))
def test_a_5000_character_value_is_cut_in_its_message(cli) -> None:
    with pytest.raises(StudyError) as info:
        build_study(None, cli)
    assert len(str(info.value)) < 1000 and "\n" not in str(info.value), len(str(info.value))


# ------------------------------------------------------------------ end to end: rules 1, 4, 5, 6, 7


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A real CPU run's --output-json and the study file that made it (study 'other')."""
    out = tmp_path_factory.mktemp("runs")
    (out / "other.yaml").write_text("name: other\nbackends: [REFERENCE]\nbatch_specs: [q1s1k, 2q1s1k]\n")
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--bench-config", "other.yaml", "--output-json",
                      "other.json", "-q", cwd=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.parametrize("args, tokens", [
    (["--output-csv", "X", "--output-json", "X"], ["--output-csv X", "--output-json X"]),
    (["--output-json", "c.json", "--output-csv", "c.json.partial.jsonl"], ["the journal c.json.partial.jsonl"]),
    (["--output-csv", "o.csv", "--benchmark-json", "o.csv"], ["--benchmark-json o.csv", "--output-csv o.csv"]),
    (["--output-json", "o.json", "--benchmark-json", "o.json"], ["--benchmark-json o.json"]),
    (["--baseline-json", "other.json", "--benchmark-json", "other.json"], ["--benchmark-json other.json",
                                                                           "--baseline-json other.json"]),
    (["--resume", "other.json", "--benchmark-json", "other.json"], ["--resume other.json"]),
    (["--baseline-json", "other.json", "--output-json", "other.json"], ["--baseline-json other.json"]),
    (["--baseline-json", "other.json", "--verdict-json", "other.json"], ["--verdict-json other.json"]),
    (["--output-csv", "o.csv", "--verdict-json", "o.crossover.csv", "--baseline-json", "other.json"],
     ["the crossover CSV o.crossover.csv"]),
    (["--output-csv", ""], ["--output-csv"]),
    (["--output-json", ""], ["--output-json"]),
    (["--output-json", "/proc/x.json"], ["--output-json /proc/x.json"]),
    (["--output-csv", "/proc/x.csv"], ["--output-csv /proc/x.csv"]),
    (["--plot", "--plot-dir", "/proc/x"], ["--plot-dir /proc/x"]),
    (["--verdict-json", "/proc/v.json", "--baseline-json", "other.json"], ["--verdict-json /proc/v.json"]),
    (["--benchmark-json", "/proc/x.json"], ["--benchmark-json /proc/x.json", "cannot write"]),
    (["--benchmark-json", "X/b.json"], ["--benchmark-json X/b.json", "no folder X"]),
    (["--benchmark-storage", "/proc/x", "--benchmark-save", "s"], ["--benchmark-storage /proc/x"]),
    (["--benchmark-storage", "/proc/x", "--benchmark-autosave"], ["--benchmark-storage /proc/x"]),
    (["--benchmark-storage", "nothing-here", "--benchmark-compare"], ["--benchmark-compare", "nothing-here"]),
    (["--resume", "missing.json"], ["--resume", "missing.json"]),
    (["--baseline-json", "missing.json"], ["--baseline-json", "missing.json"]),
    (["--bench-config", "missing.yaml"], ["missing.yaml"]),
    (["--bench-config", "/proc/self/mem"], ["/proc/self/mem: cannot read"]),
    (["--bench-config", "."], [".: a directory"]),
    (["--resume", "other.json"], ["--resume other.json: none of its 2 rows is of this study", "'other'"]),
])
def test_paths_are_checked_at_start_up(results, args, tokens) -> None:
    baseline = (results / "other.json").read_bytes()
    assert baseline
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--batch-specs", "q1s1k", *args, cwd=results)
    assert_one_line_usage_error(proc, *tokens)
    # a refused run changes no file: not even --benchmark-json, which pytest-benchmark 5.2 opened (and so emptied)
    # while pytest parsed the command line, before any check could run (pytest.ini's -p ...bench_shim)
    assert (results / "other.json").read_bytes() == baseline
    for name in ("X", "c.json", "o.csv", "o.json", "o.crossover.csv", "c.json.partial.jsonl"):
        assert not (results / name).exists(), name


@pytest.mark.parametrize("flag", ["--baseline-json", "--resume"])
def test_benchmark_json_on_an_input_is_refused_and_leaves_it_intact(tmp_path, results, flag) -> None:
    """The file --benchmark-json names is opened only when the JSON is written, on every pytest-benchmark the
    range admits (5.2 opens it while parsing the command line, unless pytest.ini's -p ...bench_shim)."""
    import pytest_benchmark

    kept = tmp_path / "kept.json"
    kept.write_bytes((results / "other.json").read_bytes())
    before = kept.stat()
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--bench-config", str(results / "other.yaml"),
                      f"--benchmark-json={kept}", flag, str(kept), cwd=tmp_path)
    error = assert_one_line_usage_error(proc, f"--benchmark-json {kept}", f"{flag} {kept}")
    assert "would overwrite it" in error, (pytest_benchmark.__version__, error)
    assert kept.read_bytes() == (results / "other.json").read_bytes()
    assert kept.stat().st_mtime_ns == before.st_mtime_ns  # not even opened for writing


def test_resume_takes_only_this_studys_rows_and_says_so(results, tmp_path) -> None:
    mixed = tmp_path / "mixed.jsonl"
    rows = json.loads((results / "other.json").read_text())["results"]
    mine = dict(rows[0], study="mine")
    mixed.write_text("".join(json.dumps(r) + "\n" for r in (*rows, mine)))
    (tmp_path / "mine.yaml").write_text("name: mine\nbackends: [REFERENCE]\nbatch_specs: [q1s1k]\n")
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--bench-config", "mine.yaml", "--resume", str(mixed),
                      "--output-json", "mine.json", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 5), out  # its one case was done already
    assert f"--resume {mixed}: took 1 of its 3 rows; left out 2 of study 'other'" in out, out
    written = json.loads((tmp_path / "mine.json").read_text())["results"]
    assert [r["study"] for r in written] == ["mine"]


def test_a_usage_error_writes_no_outputs_even_with_resumed_rows(results) -> None:
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--bench-config", "other.yaml", "--resume", "other.json",
                      "--output-json", "after-error.json", "--num-q-heads", "3", cwd=results)
    assert_one_line_usage_error(proc, "num_q_heads=3")
    assert not (results / "after-error.json").exists()


@pytest.mark.parametrize("paths, args, tokens", [
    (["bench_attention"], ["--backends", "flashmla"], ["FLASHMLA is an MLA backend: run bench_mla"]),
    (["bench_attention"], ["--backends", "flashmla", "cutlass_mla"], ["FLASHMLA, CUTLASS_MLA are MLA backends"]),
    (["bench_mla"], ["--backends", "flash"], ["FLASH_ATTN is a standard-attention backend: run bench_attention"]),
    (["bench_attention"], ["--bench-config", str(ROOT / "configs/reorder_threshold.yaml")],
     ["mode is decode_vs_prefill"]),
    (["bench_attention"], ["--sweep-param", "kv_lora_rank", "--sweep-values", "256"],
     ["kv_lora_rank is an MLA dimension: run bench_mla"]),
    (["bench_attention", "bench_mla"], ["--backends", "flash", "--sweep-param", "kv_lora_rank", "--sweep-values",
                                        "256"], ["bench_attention: the sweep's kv_lora_rank", "bench_mla: FLASH_ATTN"]),
])
def test_a_selection_that_collects_nothing_says_why(tmp_path, paths, args, tokens) -> None:
    proc = run_pytest(*(str(ROOT / p) for p in paths), "--collect-only", "-q", *args, cwd=tmp_path)
    assert_one_line_usage_error(proc, "nothing to run", *tokens)


@pytest.mark.parametrize("args, yaml_text, tokens", [
    (["--num-q-heads", "3"], None, ["command line: model: num_q_heads=3"]),
    (["--sweep-param", "num_q_heads", "--sweep-values", "3"], None, ["--sweep-values: num_q_heads=3"]),
    ([], "parameter_sweep: {param_name: num_q_heads, values: [3]}\n", ["study.yaml: key 'parameter_sweep.values'"]),
    ([], "model_parameter_sweep: {param_name: num_q_heads, values: [3]}\n",
     ["study.yaml: key 'model_parameter_sweep.values'"]),
    ([], "batch_sizes: [2000000]\nbatch_specs: [q1s1k]\n", ["study.yaml: key 'batch_sizes'"]),
    ([], "model: {num_q_heads: 3}\n", ["study.yaml: model: num_q_heads=3"]),
])
def test_collection_errors_list_no_placeholder_and_name_their_source(tmp_path, args, yaml_text, tokens) -> None:
    extra = []
    if yaml_text is not None:
        (tmp_path / "study.yaml").write_text(yaml_text)
        extra = ["--bench-config", "study.yaml"]
    proc = run_pytest(str(ROOT / "bench_attention"), "--collect-only", "-q", *extra, *args, cwd=tmp_path)
    line = assert_one_line_usage_error(proc, *tokens)
    if yaml_text is not None:
        assert "--sweep-values" not in line  # a YAML sweep's error names the file and key, not a CLI option


def test_repeated_options_accumulate_or_say_which_value_is_used(tmp_path) -> None:
    proc = run_pytest(str(ROOT / "bench_attention"), *CPU, "--collect-only", "-q", "--batch-specs", "q1",
                      "--batch-specs", "q2", "--num-layers", "2", "--num-layers", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_attention[REFERENCE-q1]" in proc.stdout and "test_attention[REFERENCE-q2]" in proc.stdout
    assert "--num-layers given 2 times ('2', '3'): it takes one value, the last one is used" in proc.stdout


def test_benchmark_py_accumulates_list_flags_and_refuses_repeated_scalars(tmp_path) -> None:
    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *args], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=240)

    proc = bench("--backend", "REFERENCE", "--batch-specs", "q1", "--batch-specs", "q2", "--collect-only", "-q")
    assert "test_attention[REFERENCE-q1]" in proc.stdout and "test_attention[REFERENCE-q2]" in proc.stdout
    proc = bench("--num-layers", "2", "--num-layers", "3")
    assert proc.returncode == 2 and proc.stderr == "error: --num-layers: given twice ('2', '3'); give it once\n"


@pytest.mark.parametrize("args, said", [
    (["--noise-target", "-inf"], "--noise-target: must be a finite number in ASCII digits, got '-inf'"),
    (["--batch-specs", "-q1"], "--batch-specs: batch spec '-q1': segment '-q1': unknown character '-'"),
    (["--batch-specs=-q1"], "--batch-specs: batch spec '-q1'"),
    (["--repeats", "-3"], "--repeats: must be >= 1, got -3"),
], ids=["-inf", "-q1", "-q1-joined", "negative-count"])
def test_benchmark_py_gives_a_value_that_starts_with_a_dash_to_its_own_flag(tmp_path, args, said) -> None:
    """argparse would read `-q1` as pytest's -q and `-inf` as an unknown option: benchmark.py hands such a value to
    its flag, whose check then names the flag and the value."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--device", "cpu", *args], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert_one_line_usage_error(proc, said)


@pytest.mark.parametrize("args, token", [(["--backends", "flashmla"], "FLASHMLA is an MLA backend: run bench_mla"),
                                         (["--num-q-heads", "3"], "command line: model: num_q_heads=3")])
def test_collection_usage_errors_reach_the_user_under_xdist(tmp_path, args, token) -> None:
    # GPU runs are one xdist worker per GPU: a worker's usage error must not end as a bare "no tests ran"
    proc = run_pytest(str(ROOT / "bench_attention"), "--device", "cpu", "-n", "2", "-p", "no:cacheprovider", *args,
                      cwd=tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    message = proc.stderr.split("ERROR: ", 1)[1].strip()
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [f"ERROR: {message}"]
    assert token in proc.stderr


# ------------------------------------------------------------------ quietly ignored, now refused

@pytest.mark.parametrize("args, tokens", [
    (["--gpus", "none", "-n", "2"], ["--gpus none runs in-process", "-n 2"]),
    (["--bench-config", ""], ["--bench-config: an empty path"]),
    (["--plot", "--plot-dir", ""], ["--plot-dir: must be a non-empty string"]),
    (["--resume", ""], ["--resume: must be a non-empty string"]),
    (["--baseline-json", ""], ["--baseline-json: an empty path"]),
    (["--full-grid"], ["--full-grid: only a decode_vs_prefill study", "mode is standard"]),
    (["--search-timeout", "5"], ["--search-timeout: only a decode_vs_prefill study"]),
], ids=["gpus-none-with-workers", "empty-bench-config", "empty-plot-dir", "empty-resume", "empty-baseline",
        "full-grid-outside-its-mode", "search-timeout-outside-its-mode"])
def test_options_that_would_be_ignored_are_one_usage_error(tmp_path, args, tokens) -> None:
    """An empty path (which would mean "here", or nothing), workers that --gpus none forbids, and the crossover
    search's options in a study that does not search: each refused before any case runs, naming the flag."""
    proc = run_pytest(str(ROOT / "bench_attention"), "-p", "no:cacheprovider", "-k", "REFERENCE", "--device", "cpu",
                      "--batch-specs", "q1s64", "--benchmark-only", *args, cwd=tmp_path)
    assert_one_line_usage_error(proc, *tokens)


@pytest.mark.parametrize("args, note", [
    (["--topk-pattern", "prefix"], "attnbench: --topk-pattern prefix changes nothing here: it chooses sparse MLA's "
                                   "top-k keys, and no sparse MLA case was collected"),
    (["--kv-scales", "unit"], "attnbench: --kv-scales unit changes nothing here: scales belong to a quantised (fp8) "
                              "cache, and this study's KV cache is auto"),
], ids=["topk-pattern-without-sparse-cases", "kv-scales-without-a-quantised-cache"])
def test_an_option_no_collected_case_reads_is_said(tmp_path, args, note) -> None:
    """Options of one family or one cache format, given where no case reads them: the run goes on (benchmark.py
    passes both folders the same options) and says, once, that the option changed nothing."""
    proc = run_pytest(str(ROOT / "bench_attention"), "-p", "no:cacheprovider", "-k", "REFERENCE", "--device", "cpu",
                      "--batch-specs", "q1s64", "--benchmark-only", "--benchmark-disable-gc", *args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count(note) == 1, out


def test_options_read_by_a_collected_case_are_not_said_to_change_nothing(tmp_path) -> None:
    """The notes above are not printed where the option matters: a sparse case for --topk-pattern, an fp8 cache for
    --kv-scales."""
    proc = run_pytest(str(ROOT / "bench_mla"), "-p", "no:cacheprovider", "-k", "REFERENCE", "--device", "cpu",
                      "--batch-specs", "q1s64", "--collect-only", "-q", "--topk-pattern", "prefix", "--kv-scales",
                      "unit", "--kv-cache-dtype", "fp8", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "topk=prefix" in out, out
    assert "changes nothing here" not in out, out


@pytest.mark.parametrize("main, argv, said", [
    (verdicts.main, ["", str(ROOT / "tests/data/verdict_new.json")], "error: an empty path: no results file named"),
    (plots.main, [str(ROOT / "tests/data/cpu_run.json"), "--out", ""], "error: --out : cannot write plots there: "
                                                                        "an empty path names no folder"),
], ids=["compare-empty-baseline", "plot-empty-out"])
def test_an_empty_path_in_the_offline_commands_is_one_error(tmp_path, monkeypatch, capsys, main, argv, said) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written "here"


@pytest.mark.parametrize("args, hint", [
    (["--dtype", "nope"], None), (["--kv-cache-dtype", "nope"], None),
    (["--kv-lora-rank", "7"], "(dimensions meant for MLA? run only bench_mla)"),
    (["--num-kv-heads", "4"], "(dimensions meant for standard attention? run only bench_attention)"),
], ids=["bad-dtype", "bad-kv-cache-dtype", "mla-dimension", "attention-dimension"])
def test_the_family_hint_is_given_only_where_the_other_family_takes_the_dimensions(tmp_path, args, hint) -> None:
    """Command-line dimensions reach both folders; "run only bench_mla" is good advice for an MLA dimension, and
    wrong for a value no family takes (--dtype nope), which gets the value's error alone."""
    proc = run_pytest(str(ROOT / "bench_attention"), str(ROOT / "bench_mla"), "-p", "no:cacheprovider", "--device",
                      "cpu", "-k", "REFERENCE", "--batch-specs", "q1s64", "--benchmark-only", *args, cwd=tmp_path)
    line = assert_one_line_usage_error(proc, args[0].removeprefix("--").replace("-", "_"))
    assert (hint in line) if hint else ("meant for" not in line), line


def test_a_huge_repeated_list_is_summarised_in_its_note(tmp_path) -> None:
    """300,000 repeats of one backend in a YAML study: the note names a few and counts the rest (it was a 3.3 MB
    line), and the backend runs once."""
    study = tmp_path / "big.yaml"
    study.write_text(yaml.safe_dump({"backends": ["REFERENCE"] * 300_000, "batch_specs": ["q1s64"]}))
    proc = run_pytest(str(ROOT / "bench_attention"), "-p", "no:cacheprovider", "--device", "cpu", "--benchmark-only",
                      "--bench-config", str(study), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    [note] = [line for line in out.splitlines() if "repeated value(s) merged" in line]
    assert "299999 repeated value(s)" in note and "and 299995 more -> REFERENCE" in note and len(note) < 300, note
    assert max(len(line) for line in out.splitlines()) < 1000


# ------------------------------------------------------------------ scale of valid input

def test_a_case_costs_in_proportion_to_its_segments() -> None:
    """A spec of N `_`-joined segments is read, ordered and laid out in time linear in N (20,000 segments: about as
    long as the same batch written as one `20000q1` segment). Four times the segments may cost at most eight times
    the time: a quadratic step would cost sixteen."""
    def cost(segments: int) -> float:
        spec = "_".join(["q1s64", "q4s256"] * (segments // 2))
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            requests = scheduler_order(parse_batch_spec(spec), 1)
            build_layout(requests, 16, "cpu")
            best = min(best, time.perf_counter() - start)
        return best

    small, large = cost(2000), cost(8000)
    assert large < 8 * small, (small, large)
