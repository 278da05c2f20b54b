"""Hypothesis: whole YAML studies, valid and mutated, either load or are refused with one line naming the file
and the key (or, for text that is not YAML, its line and column). Nothing else may be raised."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnbench.spec import options
from attnbench.spec.study import StudyError, build_study, check_shape, load_study_file

STUDIES = settings(max_examples=400, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ------------------------------------------------------------------ valid studies

PATTERNS = ["random", "prefix", "sliding_window"]
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["a", "study one"]),
    "description": st.text(max_size=20),
    "mode": st.sampled_from(["standard", "decode_vs_prefill", "mha_vs_mqa"]),
    "backends": st.lists(st.sampled_from(["flash", "FLASHMLA", "REFERENCE", "cutlass_mla"]), min_size=1, max_size=3),
    "batch_specs": st.lists(st.sampled_from(["q2k", "8q1s1k", "16q4s1k", "2q2k_32q1s1k", "q1s1k", "1q1s1k",
                                             "q1024"]), min_size=1, max_size=5),
    "batch_sizes": st.lists(st.integers(1, 8), min_size=1, max_size=3),
    "repeats": st.integers(1, 50),
    "warmup_iters": st.integers(0, 5),
    "noise_target": st.floats(0, 1),
    "placements": st.integers(1, 64),
    "inject_delay": st.floats(0, 10),
    "seed": st.integers(0, 2**63 - 1),
    "cache_state": st.sampled_from(["cold", "warm"]),
    "device": st.sampled_from(["cpu", "cuda", "cuda:1"]),
    "kv_fill": st.sampled_from(["random", "zeros"]),
    "timer": st.just("events"),  # cupti is refused with device cpu, which this generator also draws
    "kv_scales": st.sampled_from(["calibrated", "unit"]),
    "topk_pattern": st.one_of(st.sampled_from(PATTERNS), st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3)),
    "timed_region": st.one_of(st.sampled_from(["layer", "attention"]),
                              st.lists(st.sampled_from(["layer", "attention"]), min_size=1, max_size=2)),
    "model": st.fixed_dictionaries({}, optional={"num_layers": st.integers(1, 4),
                                                 "head_dim": st.sampled_from([64, 128]),
                                                 "num_q_heads": st.sampled_from([8, 16]),
                                                 "dtype": st.sampled_from(["bfloat16", "float16"])}),
    "parameter_sweep": st.fixed_dictionaries({"param_name": st.sampled_from(["num_kv_splits", "head_dim"]),
                                              "values": st.lists(st.sampled_from([1, 2, 64, 128, "auto"]),
                                                                 min_size=1, max_size=3)}),
    "parameter_sweeps": st.lists(st.one_of(
        st.fixed_dictionaries({"param": st.sampled_from(["num_kv_splits", "head_dim", "num_layers"]),
                               "values": st.lists(st.sampled_from([1, 2, 64, 128, "auto"]), min_size=1, max_size=3)},
                              optional={"include_auto": st.booleans()}),
        st.fixed_dictionaries({"param": st.just("kv_cache_dtype"),
                               "values": st.lists(st.sampled_from(["auto", "fp8", "fp8_e5m2", "bfloat16"]),
                                                  min_size=1, max_size=3)})),
        min_size=1, max_size=3, unique_by=lambda entry: entry["param"]),
    "batch_spec_ranges": st.lists(st.fixed_dictionaries({"template": st.just("{b}q1s{s}"),
                                                         "b": st.integers(1, 4),
                                                         "s": st.fixed_dictionaries(
                                                             {"start": st.just(1000),
                                                              "stop": st.integers(1001, 1010)})}),
                                  min_size=1, max_size=2),
    "CUTLASS_MLA": st.fixed_dictionaries({"num_kv_splits": st.integers(1, 8)}),
}

valid_studies = st.fixed_dictionaries({}, optional=_VALUES)

# ------------------------------------------------------------------ mutations

_BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["٣", "\x1c3", "3\x85", ".nan", "1e3", "q1S1k", "x" * 5000, "\x1cq1s1k"]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_BAD_KEYS = st.one_of(st.text(max_size=10), st.sampled_from(["a\nb", "esc\x1b", "\x85", "k" * 5000, "backendz"]),
                      st.integers(), st.booleans())


@st.composite
def mutated_studies(draw: st.DrawFn) -> str:
    """YAML text: a valid study with one or more mutations (a bad value, an unknown key, a key given twice, two
    spellings of one option, broken syntax, a deep nest)."""
    doc = dict(draw(valid_studies))
    text = None
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "key", "nested_value", "duplicate", "two_spellings", "syntax",
                                     "deep", "non_mapping"]))
        if kind == "value":
            doc[draw(st.sampled_from(sorted(_VALUES)))] = draw(_BAD_VALUES)
        elif kind == "key":
            doc[draw(_BAD_KEYS)] = draw(_BAD_VALUES)
        elif kind == "nested_value":
            section = draw(st.sampled_from(["model", "benchmark", "output", "parameter_sweep", "parameter_sweeps",
                                            "CUTLASS_MLA"]))
            doc[section] = {draw(st.one_of(_BAD_KEYS, st.sampled_from(["num_layers", "repeats", "csv", "values",
                                                                        "num_kv_splits"]))): draw(_BAD_VALUES)}
        elif kind == "two_spellings":
            key, other = draw(st.sampled_from([("backend", "backends"), ("repeats", "benchmark"),
                                               ("parameter_sweep", "model_parameter_sweep"),
                                               ("parameter_sweep", "parameter_sweeps")]))
            doc[key] = ["flash"] if key == "backend" else 3 if key == "repeats" else {"param_name": "head_dim",
                                                                                    "values": [64]}
            doc[other] = {"repeats": 4} if other == "benchmark" else [doc[key]] if other == "parameter_sweeps" \
                else doc[key]
        elif kind == "duplicate":
            key = draw(st.sampled_from(sorted(_VALUES)))
            text = (text or _dump(doc)) + f"{key}: 1\n{key}: 2\n"
        elif kind == "syntax":
            text = (text or _dump(doc)) + draw(st.sampled_from(["backends: [flash\n", " - x\n", "a: b: c\n",
                                                                 "? [a]\n: 1\n", "\t- tab\n", "key: 'unclosed\n",
                                                                 "{\n"]))
        elif kind == "deep":
            depth = draw(st.sampled_from([50, 5000]))
            text = (text or _dump(doc)) + "batch_specs: " + "[" * depth + "]" * depth + "\n"
        else:
            text = draw(st.sampled_from(["[1, 2]\n", "1.5\n", "", "~\n", "'q1s1k'\n"]))
    return text if text is not None else _dump(doc)


def _dump(doc: dict[Any, Any]) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError):
        return yaml.safe_dump({str(k): str(v) for k, v in doc.items()}, sort_keys=False)


# ------------------------------------------------------------------ the property

def load_everything(text: str) -> None:
    """Load the study as pytest would: the file, then the study, its shapes and its specs per family."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            study = build_study(load_study_file(path), {})
            for family in ("attention", "mla"):
                check_shape(study, family)
                study.specs_for(family, limit=200_000, notes=[])
        except StudyError as exc:
            message = str(exc)
            assert "\n" not in message and "\r" not in message, message
            assert message.startswith(f"{path}: "), message
            assert re.search(r"key '|line \d+, column \d+|model: |top level|nested too deeply", message), message
            assert len(message) < 2500, len(message)
            return


@STUDIES
@given(valid_studies)
def test_valid_studies_load(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        try:
            fields = load_study_file(path)
        except StudyError as exc:
            # the generator may combine what the study refuses by design, nothing else
            assert any(refusal in str(exc) for refusal in ("decode_vs_prefill mode already sweeps",
                                                           "decode_vs_prefill mode compares whole layer steps",
                                                           "mha_vs_mqa mode sweeps only num_q_heads",
                                                           "mha_vs_mqa mode compares whole layer steps",
                                                           "is not used by template",
                                                           # parameter_sweep and parameter_sweeps both drawn
                                                           "sets the same thing as key 'parameter_sweep'")), exc
            return
        study = build_study(fields, {})
        if "batch_specs" in doc and "batch_spec_ranges" not in doc:
            # repeated batches run once: 1q1s1k is q1s1k and q1024 is q1k, each kept in its first spelling
            canonical = {"1q1s1k": "q1s1k", "q1024": "q1024"}
            assert len(study.batch_specs) == len({canonical.get(s, s) for s in doc["batch_specs"]})
        else:
            assert study.batch_specs is None or study.batch_specs


@STUDIES
@given(mutated_studies())
def test_mutated_studies_load_or_are_refused_in_one_line_naming_file_and_key(text: str) -> None:
    load_everything(text)


@pytest.mark.parametrize("text, expected", [
    ("repeats: 3\nrepeats: 4\n", "line 2, column 1: key 'repeats' is given twice (first on line 1)"),
    ("model:\n  head_dim: 64\n  head_dim: 128\n", "line 3, column 3: key 'head_dim' is given twice"),
    ("backends: [flash\n", "line 2, column 1"),
    ("'a\\nb': 1\n", "key 'a\\nb': unknown key"),
    ("batch_specs: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_examples_of_the_property(text: str, expected: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(StudyError) as info:
            load_study_file(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_generator_covers_every_option_with_a_yaml_key() -> None:
    # a new option row needs a strategy here, or the property silently stops covering it
    tops = {key.split(".")[0] for key in options.BY_YAML}
    assert tops - set(_VALUES) <= {"backend", "benchmark", "output", "kv_cache_dtype", "profile_memory",
                                   "kernel_profile", "sparse_mla_topk_pattern"}, tops - set(_VALUES)
