"""--model: a shipped model's or a config.json's attention dimensions, overridden by explicit ones, named in the
record; nothing fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnbench.spec import models
from attnbench.spec.study import StudyError, build_study, check_shape, load_study_file
from tests.test_plugin import BENCH_ATTENTION, REPO, child_is_not_an_xdist_worker, run  # noqa: F401

pytest_plugins = ["pytester"]


def shape(family: str, cli: dict, yaml_fields: dict | None = None):
    return check_shape(build_study(yaml_fields, cli), family)


@pytest.mark.parametrize("name, family, heads", [("llama-3-8b", "attention", 32), ("llama-3-70b", "attention", 64),
                                                 ("qwen2.5-7b", "attention", 28), ("qwen3-32b", "attention", 64),
                                                 ("deepseek-v3", "mla", 128), ("deepseek-v3.2", "mla", 128),
                                                 ("glm-5", "mla", 64)])
def test_each_shipped_model_sets_its_heads(name, family, heads):
    got = shape(family, {"model": {"model": name}})
    assert got.num_q_heads == heads
    assert {k: getattr(got, k) for k in models.MODELS[name].dims} == dict(models.MODELS[name].dims)


def test_glm5_is_mla_with_its_own_head_sizes():
    got = shape("mla", {"model": {"model": "GLM-5"}})  # a name in any case
    assert (got.qk_nope_head_dim, got.qk_rope_head_dim, got.v_head_dim, got.head_dim) == (192, 64, 256, 576)


def test_explicit_dimensions_override_the_model():
    got = shape("attention", {"model": {"model": "llama-3-70b", "num_q_heads": 8}})
    assert (got.num_q_heads, got.num_kv_heads, got.head_dim) == (8, 8, 128)


def test_the_command_lines_model_replaces_the_files_dimensions_and_keeps_its_other_settings(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("model: {name: llama-3-8b, num_q_heads: 32, num_kv_heads: 8, head_dim: 128, num_layers: 3}\n",
                     encoding="utf-8")
    from_file = load_study_file(study)
    assert shape("attention", {}, from_file).num_q_heads == 32
    got = shape("attention", {"model": {"model": "qwen2.5-7b"}}, from_file)
    assert (got.num_q_heads, got.num_kv_heads, got.num_layers) == (28, 4, 3)


def test_in_the_file_the_files_dimensions_override_its_model(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("model: {name: llama-3-70b, num_kv_heads: 16}\n", encoding="utf-8")
    got = shape("attention", {}, load_study_file(study))
    assert (got.num_q_heads, got.num_kv_heads) == (64, 16)


def test_a_model_of_the_other_family_is_refused_naming_both():
    with pytest.raises(StudyError, match="model 'llama-3-8b' is a standard-attention model: it has no MLA "
                                         "dimensions"):
        shape("mla", {"model": {"model": "llama-3-8b"}})


def test_a_config_json_gives_gqa_dimensions_from_hidden_size_and_from_a_nested_text_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"num_attention_heads": 40, "num_key_value_heads": 8, "hidden_size": 5120}))
    got = shape("attention", {"model": {"model": str(config)}})
    assert (got.num_q_heads, got.num_kv_heads, got.head_dim) == (40, 8, 128)
    nested = tmp_path / "mm"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"text_config": {"num_attention_heads": 16, "head_dim": 256}}))
    got = shape("attention", {"model": {"model": str(nested)}})  # a folder holding config.json
    assert (got.num_q_heads, got.num_kv_heads, got.head_dim) == (16, 16, 256)


def test_a_config_json_with_kv_lora_rank_is_mla(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"num_attention_heads": 16, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                                  "qk_rope_head_dim": 64, "v_head_dim": 128, "head_dim": 64}))
    got = shape("mla", {"model": {"model": str(config)}})
    assert (got.num_q_heads, got.kv_lora_rank, got.head_dim) == (16, 512, 576)


@pytest.mark.parametrize("content, message", [
    ("{", "cannot read it as JSON"),
    ("[1]", "the top level is not a JSON object"),
    ('{"num_attention_heads": 0, "hidden_size": 64}', "key 'num_attention_heads' is 0, expected a positive integer"),
    ('{"num_attention_heads": 3, "hidden_size": 64}', "hidden_size 64 is not a multiple of num_attention_heads 3"),
    ('{"num_attention_heads": 4, "kv_lora_rank": 512}', "key 'qk_nope_head_dim' is None"),
])
def test_a_bad_config_json_is_one_error_naming_the_flag_and_the_key(tmp_path, content, message):
    config = tmp_path / "config.json"
    config.write_text(content)
    with pytest.raises(StudyError, match=f"^--model: .*{message}"):
        build_study(None, {"model": {"model": str(config)}})


def test_an_unknown_name_lists_the_shipped_ones_and_fetches_nothing():
    with pytest.raises(StudyError, match=r"^--model: 'meta-llama/Llama-3-8B' is neither a model the suite ships "
                                         r"\(llama-3-8b, .*glm-5\) nor a config.json \(nothing is fetched"):
        build_study(None, {"model": {"model": "meta-llama/Llama-3-8B"}})


def test_the_shipped_studies_name_shipped_models():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_study_file(path)  # model.name is checked now, not a label


def test_the_record_names_the_model_and_holds_its_dimensions(pytester):
    result = run(pytester, BENCH_ATTENTION, "-k", "REFERENCE", "--device", "cpu", "--repeats", "3",
                 "--warmup-iters", "0", "--no-kernel-profile", "--batch-specs", "q1s64", "--model", "qwen2.5-7b",
                 "--num-kv-heads", "2", "--benchmark-json", "out.json")
    assert result.ret == 0, result.outlines[-20:]
    (bench,) = json.loads(Path(pytester.path / "out.json").read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["model"] == "qwen2.5-7b"
    assert (info["shape"]["num_q_heads"], info["shape"]["num_kv_heads"]) == (28, 2)
