"""Multi-parameter sweeps: the Cartesian product of named axes, on every surface.

The command line (``--sweep-param``/``--sweep-values`` repeated, paired in order) and YAML (``parameter_sweeps:``,
and the single ``parameter_sweep:`` / ``model_parameter_sweep:`` mappings as before) give the same sweeps; the
product's size and ids; kv_cache_dtype as a sweep of names; bad input as one line naming its token before
anything runs; the swept values typed on the case key through pytest-benchmark's JSON, attnbench's JSON and CSV,
``--benchmark-compare`` and the verdicts, on the CPU REFERENCE path; and files of single sweeps written before
any of this loading and comparing as they did.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.spec import sweeps
from attnbench.results.exports import load_results
from attnbench.reporting.formatter import ResultsFormatter
from attnbench.results.outcome import CaseOutcome, case_key
from attnbench.results.record import CaseKey, CaseRecord, RecordError, SweptValue
from attnbench.reporting.tables import summary_tables
from attnbench.reporting.verdicts import MISSING, NEW, compare_results
from attnbench.spec.shapes import KV_CACHE_DTYPES
from attnbench.spec.study import StudyError, build_study, load_study_file
from attnbench.spec.sweeps import Sweep, SweepError, make_sweep
from tests.factories import timed, untimed
from tests.test_plugin import (BENCH_ATTENTION, BENCH_MLA, REPO, child_is_not_an_xdist_worker,  # noqa: F401
                               collected_ids, run)

pytest_plugins = ["pytester"]

CPU = ("-k", "REFERENCE", "--device", "cpu", "--repeats", "3", "--warmup-iters", "0", "--no-kernel-profile")
TWO_SWEEPS = ("--sweep-param", "head_dim", "--sweep-values", "64", "128",
              "--sweep-param", "kv_cache_dtype", "--sweep-values", "auto", "fp8")
FP8_STUDY = "parameter_sweeps: [{param: kv_cache_dtype, values: [auto, fp8]}]\n"  # configs/fp8_kv_cache.yaml's sweep


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def points(study_sweeps: tuple[Sweep, ...]) -> list[str]:
    return [sweeps.point_id(p) for p in sweeps.grid(study_sweeps)]


# ------------------------------------------------------------------ the product

def test_the_product_has_every_combination_first_sweep_slowest_with_readable_ids() -> None:
    study = build_study(None, {"sweep_param": ["num_kv_splits", "head_dim"],
                               "sweep_values": [["1", "2", "4"], ["64", "128"]]})
    assert sweeps.point_count(study.sweeps) == 6
    assert points(study.sweeps) == ["num_kv_splits=1-head_dim=64", "num_kv_splits=1-head_dim=128",
                                    "num_kv_splits=2-head_dim=64", "num_kv_splits=2-head_dim=128",
                                    "num_kv_splits=4-head_dim=64", "num_kv_splits=4-head_dim=128"]
    assert sweeps.grid(study.sweeps)[3] == (SweptValue("num_kv_splits", 2), SweptValue("head_dim", 128))


def test_a_single_sweep_keeps_its_ids_and_no_sweep_is_one_empty_point() -> None:
    study = build_study(None, {"sweep_param": "num_kv_splits", "sweep_values": ["4", "auto"]})
    assert points(study.sweeps) == ["num_kv_splits=auto", "num_kv_splits=4"]
    assert sweeps.grid(()) == [()] and sweeps.point_count(()) == 1


def test_include_auto_applies_to_every_sweep_of_the_command_line() -> None:
    study = build_study(None, {"sweep_param": ["num_kv_splits", "head_dim"], "sweep_values": [["2"], ["64"]],
                               "sweep_include_auto": True})
    assert [s.points() for s in study.sweeps] == [["auto", 2], ["auto", 64]]


def test_kv_cache_dtype_sweeps_names_and_its_auto_is_a_value_of_its_own() -> None:
    sweep = make_sweep("kv_cache_dtype", ["fp8", " fp8_e5m2 ", "auto"], False)
    assert sweep.points() == ["auto", "fp8", "fp8_e5m2"]
    from attnbench.spec.shapes import make_shape

    shape = make_shape("attention", {"kv_cache_dtype": "fp8"})
    # the study's cache is fp8; the sweep's "auto" is the model dtype, not "leave the study's value"
    assert sweeps.apply_to_shape(shape, (SweptValue("kv_cache_dtype", "auto"),)).kv_cache_dtype == "auto"
    # an integer dimension's "auto" leaves the study's value
    assert sweeps.apply_to_shape(shape, (SweptValue("head_dim", "auto"),)).head_dim == shape.head_dim


@pytest.mark.parametrize("param, value, token", [
    ("kv_cache_dtype", "fp9", "'fp9' for kv_cache_dtype must be one of " + ", ".join(KV_CACHE_DTYPES)),
    ("kv_cache_dtype", "FP8", "did you mean 'fp8'?"),
    ("kv_cache_dtype", 8, "8 for kv_cache_dtype must be one of"),
    ("head_dim", "x", "'x' for head_dim must be a non-negative integer or 'auto'"),
    ("num_kv_splits", "fp8", "'fp8' for num_kv_splits must be a non-negative integer"),
    ("dtype", "float16", "unknown sweep parameter 'dtype'"),  # string dimensions other than kv_cache_dtype
])
def test_a_value_is_checked_by_its_parameter(param, value, token) -> None:
    with pytest.raises(SweepError) as info:
        make_sweep(param, [value], False)
    assert token in str(info.value)


# ------------------------------------------------------------------ command line

@pytest.mark.parametrize("cli, message", [
    ({"sweep_param": ["num_kv_splits", "head_dim"], "sweep_values": [["1", "2"]]},
     "--sweep-param head_dim: has no --sweep-values of its own (2 --sweep-param, 1 --sweep-values"),
    ({"sweep_param": ["num_kv_splits"], "sweep_values": [["1", "2"], ["64", "128"]]},
     "--sweep-values 64 128: has no --sweep-param of its own (1 --sweep-param, 2 --sweep-values"),
    ({"sweep_values": [["1"]]}, "--sweep-values 1: has no --sweep-param"),
    ({"sweep_param": ["head_dim", "head_dim"], "sweep_values": [["64"], ["128"]]},
     "--sweep-param: head_dim is swept twice"),
    ({"sweep_param": ["num_kv_splits", "head_dimm"], "sweep_values": [["1"], ["64"]]},
     "--sweep-param: unknown sweep parameter 'head_dimm'"),
    ({"sweep_param": ["num_kv_splits", "kv_cache_dtype"], "sweep_values": [["1"], ["auto", "fp9"]]},
     "--sweep-values: sweep value 'fp9' for kv_cache_dtype"),
    ({"sweep_param": ["num_kv_splits", "head_dim"], "sweep_values": [["1"], ["x"]]},
     "--sweep-values: sweep value 'x' for head_dim"),
])
def test_command_line_sweeps_are_refused_in_one_line_naming_the_token(cli, message) -> None:
    with pytest.raises(StudyError) as info:
        build_study(None, cli)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


def test_upstreams_command_line_repeats_the_pairs_in_order() -> None:
    import benchmark

    args = benchmark.to_pytest_args(["--sweep-param", "num_kv_splits", "--sweep-values", "1", "2",
                                     "--sweep-param", "head_dim", "--sweep-values", "64", "--include-auto", "-q"])
    joined = " ".join(args[:args.index("-rs")])
    assert "--sweep-param num_kv_splits --sweep-param head_dim --sweep-values 1 2 --sweep-values 64 " \
           "--sweep-include-auto" in joined  # paired by position, as the plugin pairs them


def test_the_command_line_replaces_the_yamls_sweeps(tmp_path) -> None:
    fields = load_study_file(write(tmp_path, "parameter_sweeps:\n  - {param: head_dim, values: [64]}\n"
                                             "  - {param: num_q_heads, values: [8]}\n"))
    study = build_study(fields, {"sweep_param": ["kv_cache_dtype"], "sweep_values": [["fp8"]]})
    assert [s.param for s in study.sweeps] == ["kv_cache_dtype"]


def test_decode_vs_prefill_refuses_a_command_line_sweep(tmp_path) -> None:
    fields = load_study_file(write(tmp_path, "mode: decode_vs_prefill\n"))
    with pytest.raises(StudyError, match="^--sweep-param: decode_vs_prefill mode already sweeps the pipeline"):
        build_study(fields, {"sweep_param": ["num_kv_splits", "head_dim"], "sweep_values": [["1"], ["64"]]})


# ------------------------------------------------------------------ YAML

def test_parameter_sweeps_is_the_command_lines_product(tmp_path) -> None:
    path = write(tmp_path, "parameter_sweeps:\n"
                           "  - {param: num_kv_splits, values: [1, 2, 4]}\n"
                           "  - {param: head_dim, values: [64, 128], include_auto: true}\n")
    from_yaml = build_study(load_study_file(path), {})
    from_cli = build_study(None, {"sweep_param": ["num_kv_splits", "head_dim"],
                                  "sweep_values": [["1", "2", "4"], ["auto", "64", "128"]]})
    assert from_yaml.sweeps == from_cli.sweeps and sweeps.point_count(from_yaml.sweeps) == 9
    assert from_yaml.sweeps[0].origin == f"{path}: key 'parameter_sweeps[0].values'"


def test_the_fp8_study_sweeps_the_cache_dtype(tmp_path) -> None:
    study = build_study(load_study_file(write(tmp_path, FP8_STUDY, "fp8_kv_cache.yaml")), {})
    assert study.sweeps == (Sweep("kv_cache_dtype", ("fp8",), True),)
    assert points(study.sweeps) == ["kv_cache_dtype=auto", "kv_cache_dtype=fp8"]


@pytest.mark.parametrize("key", ["parameter_sweep", "model_parameter_sweep"])
def test_the_single_sweep_mappings_are_a_list_of_one(tmp_path, key) -> None:
    study = build_study(load_study_file(write(tmp_path, f"{key}: {{param_name: head_dim, values: [64, 128]}}\n")), {})
    assert study.sweeps == (Sweep("head_dim", (64, 128)),)
    listed = write(tmp_path, "parameter_sweeps: [{param_name: head_dim, values: [64, 128]}]\n", "listed.yaml")
    assert build_study(load_study_file(listed), {}).sweeps == study.sweeps  # an upstream mapping, listed as it is


@pytest.mark.parametrize("text, key, why", [
    ("parameter_sweeps: []\n", "parameter_sweeps", "must be a non-empty list"),
    ("parameter_sweeps: {param: head_dim, values: [64]}\n", "parameter_sweeps", "must be a non-empty list"),
    ("parameter_sweeps: [{param: head_dim, values: [64]}, {param: head_dim, values: [128]}]\n",
     "parameter_sweeps[1].param", "head_dim is swept already by parameter_sweeps[0]"),
    ("parameter_sweeps: [{param: head_dim, param_name: head_dim, values: [64]}]\n", "parameter_sweeps[0].param_name",
     "sets the same thing as key 'param'"),
    ("parameter_sweeps: [{param: head_dim, values: [64], steps: 2}]\n", "parameter_sweeps[0].steps", "unknown key"),
    ("parameter_sweeps: [{values: [64]}]\n", "parameter_sweeps[0].param", "is required"),
    ("parameter_sweeps: [{param: head_dim, values: []}]\n", "parameter_sweeps[0].values", "must be a non-empty list"),
    ("parameter_sweeps: [{param: head_dim, values: [64]}, {param: kv_cache_dtype, values: [fp9]}]\n",
     "parameter_sweeps[1]", "sweep value 'fp9' for kv_cache_dtype"),
    ("parameter_sweeps: [{param: bogus, values: [1]}]\n", "parameter_sweeps[0]", "unknown sweep parameter 'bogus'"),
    ("parameter_sweeps: [{param: head_dim, values: [64], include_auto: 'no'}]\n",
     "parameter_sweeps[0].include_auto", "must be true or false"),
    ("parameter_sweep: {param_name: head_dim, values: [64]}\nparameter_sweeps: [{param: num_kv_splits, values: [1]}]\n",
     "parameter_sweeps", "sets the same thing as key 'parameter_sweep'"),
    ("mode: decode_vs_prefill\nparameter_sweeps: [{param: num_kv_splits, values: [1]}]\n", "parameter_sweeps",
     "decode_vs_prefill mode already sweeps the pipeline"),
])
def test_bad_parameter_sweeps_name_the_file_and_the_key(tmp_path, text, key, why) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        load_study_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}': ") and why in message and "\n" not in message, message


# ------------------------------------------------------------------ the case key, typed

def test_a_case_carries_each_swept_value_typed() -> None:
    from attnbench.spec import backends as registry
    from attnbench.spec.axes import compose_case

    study = build_study(None, {"sweep_param": ["num_kv_splits", "head_dim", "kv_cache_dtype"],
                               "sweep_values": [["auto", "2"], ["64"], ["fp8"]]})
    cutlass = registry.lookup("CUTLASS_MLA", "mla")
    case = compose_case(study, registry.lookup("REFERENCE", "attention"), "q1s1k", (2, 64, "fp8"))
    key = case.key()
    assert key.sweep == (SweptValue("num_kv_splits", 2), SweptValue("head_dim", 64),
                         SweptValue("kv_cache_dtype", "fp8"))
    assert (key.shape["head_dim"], key.shape["kv_cache_dtype"]) == (64, "fp8")
    assert key.variant == "num_kv_splits=2 head_dim=64 kv_cache_dtype=fp8"
    assert case.unsupported_sweep == "REFERENCE has no num_kv_splits knob in vLLM 0.26.0"  # the knob rule, per case
    assert compose_case(study, registry.lookup("REFERENCE", "attention"), "q1s1k", ("auto", 64, "fp8")) \
        .unsupported_sweep is None  # "auto" forces nothing
    forced = compose_case(study, cutlass, "q1s1k", (2, "auto", "auto"))
    assert forced.backend_params == {"num_kv_splits": 2} and forced.unsupported_sweep is None
    assert forced.effective_shape.kv_cache_dtype == "auto"  # head_dim is MLA's derived width: not applied here


def test_json_keeps_a_single_sweep_flat_and_lists_several() -> None:
    one = CaseKey("B", "q1s1k", sweep=(SweptValue("num_kv_splits", 4),))
    two = CaseKey("B", "q1s1k", sweep=(SweptValue("num_kv_splits", 4), SweptValue("kv_cache_dtype", "fp8")))
    assert {k: one.to_json()[k] for k in ("sweep_param", "sweep_value")} == {"sweep_param": "num_kv_splits",
                                                                              "sweep_value": 4}
    assert "sweeps" not in one.to_json() and "sweep" not in one.to_json()
    assert two.to_json()["sweeps"] == [{"param": "num_kv_splits", "value": 4}, {"param": "kv_cache_dtype",
                                                                                 "value": "fp8"}]
    assert two.to_json()["sweep_param"] is None and two.to_json()["sweep_value"] is None
    for key in (one, two, CaseKey("B", "q1s1k")):
        assert CaseKey.from_json(key.to_json()) == key
    assert case_key(CaseOutcome(one))[5:7] == ("num_kv_splits", "4")  # what keys were before: verdict seeds hold


@pytest.mark.parametrize("change, message", [
    ({"sweep_param": "num_kv_splits", "sweep_value": 4}, "sweeps and sweep_param/sweep_value both given"),
    ({"sweeps": [{"param": "a", "value": 1}]}, "expected a list of two or more"),
    ({"sweeps": [{"param": "a", "value": 1}, {"param": "a", "value": 2}]}, "names a parameter twice"),
    ({"sweeps": [{"param": "a", "value": 1}, {"param": "b", "value": 1.5}]}, "sweeps[1]: value of b is 1.5"),
    ({"sweeps": [{"param": "a", "value": 1}, {"param": "b", "value": 1, "x": 0}]}, "sweeps[1]: unknown key(s) x"),
    ({"sweeps": None, "sweep_value": 3}, "sweep_value is 3 but sweep_param is null"),
    ({"sweep": [["a", 1]]}, "unknown key(s) sweep"),
])
def test_a_malformed_sweep_in_a_file_is_named(change, message) -> None:
    data = {**CaseKey("B", "q1s1k", sweep=(SweptValue("a", 1), SweptValue("b", 2))).to_json(), **change}
    data = {k: v for k, v in data.items() if v is not None or k not in ("sweeps",)}
    with pytest.raises(RecordError) as info:
        CaseKey.from_json(data)
    assert message in str(info.value)


def test_reports_show_every_swept_value() -> None:
    results = [timed("CUTLASS_MLA", "q1s1k", t * 1e-6, family="mla", sweep={"num_kv_splits": s, "kv_cache_dtype": d})
               for (s, d), t in {("auto", "auto"): 20, ("auto", "fp8"): 15, (2, "auto"): 18, (2, "fp8"): 12}.items()]
    results.append(untimed("FLASHMLA", "q1s1k", "skipped", "FLASHMLA has no num_kv_splits knob", family="mla",
                           study="s", sweep={"num_kv_splits": 2, "kv_cache_dtype": "fp8"}))
    table, best = summary_tables(results)
    assert table.title == "s · mla · sweep of num_kv_splits × kv_cache_dtype"
    headers = [c.header for c in table.columns[1:]]
    assert headers == ["CUTLASS_MLA\nauto · auto", "CUTLASS_MLA\nauto · fp8", "CUTLASS_MLA\n2 · auto",
                       "CUTLASS_MLA\n2 · fp8"]  # the all-skipped column is a footnote
    assert any("skipped (1): FLASHMLA has no num_kv_splits knob" in c.text for c in table.notes)
    assert best.title == "Best num_kv_splits × kv_cache_dtype per batch spec"
    assert [c.text for c in best.rows[0][:3]] == ["CUTLASS_MLA", "q1s1k", "2 · fp8"]
    assert best.rows[0][4].text == "1.67×"  # against auto · auto


def test_the_results_page_and_the_heatmap_name_every_swept_value(tmp_path) -> None:
    from attnbench.reporting import markdown, plots
    from attnbench.reporting.tables import speedup_tables

    results = [timed("CUTLASS_MLA", "q1s1k", t * 1e-6, family="mla", sweep={"num_kv_splits": s, "kv_cache_dtype": d},
                     backend_info={"num_decodes": 1, "num_prefills": 0})
               for (s, d), t in {("auto", "auto"): 20, ("auto", "fp8"): 15, (2, "auto"): 18, (2, "fp8"): 12}.items()]
    page = markdown.sweep_section("s", results)
    assert "| batch spec | CUTLASS_MLA auto · auto | CUTLASS_MLA auto · fp8 | CUTLASS_MLA 2 · auto | " \
           "CUTLASS_MLA 2 · fp8 | fastest |" in page
    assert "backend × `num_kv_splits × kv_cache_dtype` (a column's values in that order)" in page
    param, reference, (grid,) = speedup_tables(results)
    assert (param, reference) == ("num_kv_splits × kv_cache_dtype", ("auto", "auto"))
    assert [c.text for c in grid.rows[0]] == ["q1s1k", "1.00x", "1.33x", "1.11x", "1.67x"]
    assert plots.sweep_heatmap(results, tmp_path / "sweep.png").stat().st_size > 0


# ------------------------------------------------------------------ collection, end to end

def test_repeated_flags_and_the_yaml_list_collect_the_same_product(pytester) -> None:
    cli = run(pytester, BENCH_MLA, "--collect-only", "-q", "--backends", "cutlass_mla", "--batch-specs", "64q1s4k",
              "--sweep-param", "num_kv_splits", "--sweep-values", "1", "2", "--sweep-param", "kv_cache_dtype",
              "--sweep-values", "auto", "fp8", "--sweep-param", "num_q_heads", "--sweep-values", "16", "128")
    assert cli.ret == 0, "\n".join(cli.outlines[-20:] + cli.errlines)
    expected = [f"test_mla[CUTLASS_MLA-64q1s4k-num_kv_splits={s}-kv_cache_dtype={d}-num_q_heads={h}]"
                for s in (1, 2) for d in ("auto", "fp8") for h in (16, 128)]
    assert collected_ids(cli) == expected
    study = pytester.path / "product.yaml"
    study.write_text("backends: [cutlass_mla]\nbatch_specs: [64q1s4k]\nparameter_sweeps:\n"
                     "  - {param: num_kv_splits, values: [1, 2]}\n  - {param: kv_cache_dtype, values: [auto, fp8]}\n"
                     "  - {param: num_q_heads, values: [16, 128]}\n")
    from_yaml = run(pytester, BENCH_MLA, "--collect-only", "-q", "--bench-config", str(study))
    assert collected_ids(from_yaml) == expected


@pytest.mark.parametrize("args, token", [
    (["--sweep-param", "num_kv_splits", "--sweep-param", "head_dim", "--sweep-values", "1"],
     "--sweep-param head_dim: has no --sweep-values of its own"),
    (["--sweep-param", "head_dim", "--sweep-values", "64", "--sweep-param", "head_dim", "--sweep-values", "128"],
     "--sweep-param: head_dim is swept twice"),
    (["--sweep-param", "kv_cache_dtype", "--sweep-values", "auto", "fp9"], "'fp9' for kv_cache_dtype"),
    (["--sweep-param", "num_kv_splits", "--sweep-values", "1", "--sweep-param", "head_dim", "--sweep-values", "x"],
     "'x' for head_dim"),
    # each value fits the shape alone (32 q heads over 8 or 16 KV heads); 8 q heads over 16 KV heads does not
    (["--sweep-param", "num_q_heads", "--sweep-values", "8", "32", "--sweep-param", "num_kv_heads", "--sweep-values",
      "8", "16"], "--sweep-values: num_q_heads=8, num_kv_heads=16: num_q_heads=8 is not a multiple of num_kv_heads=16"),
    # 1 backend x 1 spec x 500 x 500 points: more than the 200,000-case limit, refused before the product is made
    (["--sweep-param", "num_kv_splits", "--sweep-values", *map(str, range(500)), "--sweep-param",
      "reorder_batch_threshold", "--sweep-values", *map(str, range(500))],
     "the study has 250000 attention cases (1 backends x 1 batch specs x 250000 sweep points (500 num_kv_splits x "
     "500 reorder_batch_threshold)), more than the limit 200000"),
])
def test_bad_sweeps_are_one_usage_error_before_anything_runs(pytester, args, token) -> None:
    result = run(pytester, BENCH_ATTENTION, *CPU, "--backends", "reference", "--batch-specs", "q1s1k", *args)
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: ") and token in errors[0], output
    assert "passed" not in output and "Traceback" not in output


def test_the_product_round_trips_through_every_results_file_and_compare(pytester) -> None:
    storage = pytester.path / "storage"
    common = [BENCH_ATTENTION, *CPU, "--num-q-heads", "8", "--batch-specs", "q1s128", *TWO_SWEEPS,
              "--sweep-param", "num_kv_splits", "--sweep-values", "auto", "2", f"--benchmark-storage=file://{storage}",
              "-rs"]
    first = run(pytester, *common, "--benchmark-save=base", "--benchmark-json=first.json",
                "--output-json=first.out.json", "--output-csv=first.csv")
    assert first.ret == 0, "\n".join(first.outlines[-30:] + first.errlines)
    first.assert_outcomes(passed=4, skipped=4)  # num_kv_splits=2: REFERENCE has no such knob, the existing rule
    assert any(line.startswith("SKIPPED") and "REFERENCE has no num_kv_splits knob" in line for line in first.outlines)

    ids = {f"test_attention[REFERENCE-q1s128-head_dim={h}-kv_cache_dtype={d}-num_kv_splits=auto]"
           for h in (64, 128) for d in ("auto", "fp8")}
    bench = json.loads((pytester.path / "first.json").read_text())
    assert {b["name"] for b in bench["benchmarks"]} == ids
    entry = next(b for b in bench["benchmarks"] if "head_dim=64-kv_cache_dtype=fp8" in b["name"])
    assert entry["params"]["bench_sweep_values"] == [64, "fp8", "auto"]
    assert entry["extra_info"]["sweeps"] == [{"param": "head_dim", "value": 64},
                                             {"param": "kv_cache_dtype", "value": "fp8"},
                                             {"param": "num_kv_splits", "value": "auto"}]
    assert entry["extra_info"]["shape"]["head_dim"] == 64 and entry["extra_info"]["shape"]["kv_cache_dtype"] == "fp8"

    from_bench, from_out = load_results(pytester.path / "first.json"), load_results(pytester.path / "first.out.json")
    assert len(from_out.results) == len(from_bench.results) == 8  # the skipped ones too, with their keys
    assert {case_key(r) for r in from_bench.results} == {case_key(r) for r in from_out.results}
    assert {case_key(r) for r in from_bench.results if r.timed} == {case_key(r) for r in from_out.results if r.timed}
    skipped = [r for r in from_out.results if not r.timed]
    assert {r.key.sweep[2] for r in skipped} == {SweptValue("num_kv_splits", 2)}
    assert len({r.key.sweep for r in from_out.results}) == 8

    with open(pytester.path / "first.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-3:] == ["sweep.head_dim", "sweep.kv_cache_dtype", "sweep.num_kv_splits"]
    assert {(r["sweep.head_dim"], r["sweep.kv_cache_dtype"], r["sweep.num_kv_splits"]) for r in rows} == {
        (h, d, s) for h in ("64", "128") for d in ("auto", "fp8") for s in ("auto", "2")}
    assert {r["sweep_param"] for r in rows} == {""}  # several swept parameters: those are in sweep.<param>

    second = run(pytester, *common, "--benchmark-compare", "--benchmark-compare-fail=median:1000000%",
                 "--benchmark-json=second.json")
    assert second.ret == 0, "\n".join(second.outlines[-30:] + second.errlines)
    for name in ids:  # pytest-benchmark matched every case of the saved run by its id
        assert sum(line.startswith(name) for line in second.outlines) == 2, name
    verdicts = compare_results(from_bench.results, load_results(pytester.path / "second.json").results)
    assert len(verdicts) == 4 and {v.matched_by for v in verdicts} == {"case"}
    assert not {v.verdict for v in verdicts} & {NEW, MISSING}


# ------------------------------------------------------------------ committed files of single sweeps

SAVED_SINGLE_SWEEPS = [REPO / "baselines/NVIDIA_H100_80GB_HBM3/Linux-CPython-3.12-64bit/0004_speculative_decode.json",
                       REPO / "baselines/NVIDIA_H200/Linux-CPython-3.12-64bit/0004_speculative_decode.json"]


@pytest.mark.parametrize("path", SAVED_SINGLE_SWEEPS, ids=["H100", "H200"])
def test_saved_single_sweeps_load_typed_and_compare(path) -> None:
    loaded = load_results(path).results
    swept = [r for r in loaded if r.key.sweep and r.timed]
    assert len(swept) == 56 and {r.key.sweep_params for r in swept} == {("reorder_batch_threshold",)}
    first = json.loads(path.read_text())["benchmarks"][0]
    assert first["name"].endswith("-reorder_batch_threshold=auto]")
    assert next(r for r in loaded if r.fullname == first["fullname"]).key.sweep == (
        SweptValue("reorder_batch_threshold", "auto"),)
    verdicts = compare_results(loaded, loaded)  # a file against itself: every case found, by its structured key
    assert len(verdicts) == sum(r.timed for r in loaded) and {v.matched_by for v in verdicts} == {"case"}


def test_a_saved_single_sweep_record_is_written_back_exactly() -> None:
    # extra_info of a single sweep is what it was before several parameters could be swept
    doc = json.loads(SAVED_SINGLE_SWEEPS[1].read_text())
    for entry in doc["benchmarks"]:
        info = entry["extra_info"]
        assert CaseRecord.from_json(info).to_json(include_samples=False) == info


def test_an_attnbench_json_row_of_a_single_sweep_keeps_its_flat_keys(tmp_path) -> None:
    results = [timed("CUTLASS_MLA", "q1s1k", 1e-5, family="mla", sweep_param="num_kv_splits", sweep_value=v)
               for v in ("auto", 4)]
    saved = ResultsFormatter().save_json(results, tmp_path / "one.json")
    rows = json.loads(saved.read_text())["results"]
    assert [(r["sweep_param"], r["sweep_value"]) for r in rows] == [("num_kv_splits", "auto"), ("num_kv_splits", 4)]
    assert all("sweeps" not in r for r in rows)
    assert [r.key for r in load_results(saved).results] == [r.key for r in results]


# ------------------------------------------------------------------ property

_PARAMS = {"num_kv_splits": st.integers(0, 64), "reorder_batch_threshold": st.integers(0, 512),
           "head_dim": st.sampled_from([64, 128, 256]), "num_layers": st.integers(1, 4),
           "kv_cache_dtype": st.sampled_from(list(KV_CACHE_DTYPES)), "block_size": st.sampled_from([16, 32, 64])}


@st.composite
def sweep_specs(draw: st.DrawFn) -> list[tuple[str, list[Any], bool]]:
    names = draw(st.lists(st.sampled_from(sorted(_PARAMS)), min_size=1, max_size=4, unique=True))
    return [(name, draw(st.lists(st.one_of(_PARAMS[name], st.just("auto")), min_size=1, max_size=4)),
             draw(st.booleans())) for name in names]


@settings(max_examples=150, deadline=None, database=None)
@given(sweep_specs())
def test_yaml_and_command_line_give_one_product_whose_keys_round_trip(specs) -> None:
    import tempfile

    doc = {"parameter_sweeps": [{"param": p, "values": values, "include_auto": auto} for p, values, auto in specs]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(doc))
        from_yaml = build_study(load_study_file(path), {}).sweeps
    from_cli = build_study(None, {"sweep_param": [p for p, _, _ in specs],
                                  "sweep_values": [[str(v) for v in values] + (["auto"] if auto else [])
                                                   for _, values, auto in specs]}).sweeps
    assert from_yaml == from_cli
    grid = sweeps.grid(from_yaml)
    size = 1
    for _, values, auto in specs:
        size *= len(set(values) | ({"auto"} if auto else set()))
    assert len(grid) == sweeps.point_count(from_yaml) == size
    ids = [sweeps.point_id(p) for p in grid]
    assert len(set(ids)) == len(ids)  # readable and distinct
    keys = [CaseKey("B", "q1s1k", sweep=p) for p in grid]
    assert [CaseKey.from_json(json.loads(json.dumps(k.to_json()))) for k in keys] == keys
    assert len({case_key(CaseOutcome(k)) for k in keys}) == len(keys)
