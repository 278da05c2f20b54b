"""Studies: YAML loading and validation, upstream keys, CLI > YAML > defaults, aliases, shapes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from attnbench.spec import backends as registry
from attnbench.spec.study import (
    DEFAULT_SPECS,
    RunSettings,
    Study,
    StudyError,
    Sweep,
    build_study,
    check_shape,
    load_study_file,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPECTED_CONFIGS = ("mla_decode.yaml", "mla_mixed_batch.yaml", "speculative_decode.yaml", "standard_attention.yaml",
                    "reorder_threshold.yaml", "cutlass_numsplits.yaml")
# every shipped config, plus the expected ones even before they land (those fail, they do not skip)
CONFIG_NAMES = sorted(set(EXPECTED_CONFIGS) | {p.name for p in CONFIGS.glob("*.yaml")})


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------------- shipped configs

def test_configs_folder_holds_the_expected_studies():
    assert CONFIGS.is_dir()
    present = {p.name for p in CONFIGS.glob("*.yaml")}
    assert len(present) >= 5
    assert set(EXPECTED_CONFIGS) <= present, f"missing: {sorted(set(EXPECTED_CONFIGS) - present)}"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_shipped_config_loads_and_resolves(name):
    path = CONFIGS / name
    assert path.is_file(), f"{path} does not exist"
    fields = load_study_file(path)
    study = build_study(fields, {})
    assert study.source == str(path)
    families = [f for f in ("attention", "mla") if study.backends_for(f)]
    assert families, f"{name} names no backend of either family"
    for family in families:  # what the plugin resolves at collection time
        check_shape(study, family)
        specs = study.specs_for(family)
        assert specs and len(specs) == len(set(specs))


# -------------------------------------------------------------------------------------- upstream keys

UPSTREAM = """\
    description: DeepSeek-V3 decode sweep
    backend: cutlass_mla
    batch_spec_ranges:
      - template: "q{q}s1k"
        q: {start: 1, stop: 3}
    batch_sizes: [1, 4]
    mode: standard
    model:
      name: deepseek-v3
      num_q_heads: 16
      kv_lora_rank: 512
      qk_nope_head_dim: 128
      qk_rope_head_dim: 64
      v_head_dim: 128
      head_dim: 576
      block_size: 64
      num_layers: 2
      dtype: bfloat16
      kv_cache_dtype: auto
    parameter_sweep:
      param_name: num_kv_splits
      values: [1, 2, auto]
      include_auto: true
    output:
      csv: results/out.csv
      json: results/out.json
    benchmark:
      device: cuda:1
      repeats: 20
      warmup_iters: 3
      profile_memory: true
    CUTLASS_MLA:
      num_kv_splits: auto
    FLASHMLA:
      reorder_batch_threshold: 4
"""


def test_upstream_keys_are_accepted_and_normalised(tmp_path):
    path = write(tmp_path, UPSTREAM, "deepseek.yaml")
    fields = load_study_file(path)
    assert fields["name"] == "deepseek"  # the file stem when no name is given
    assert fields["source"] == str(path)
    assert fields["description"] == "DeepSeek-V3 decode sweep"
    assert fields["backends"] == ("CUTLASS_MLA",)
    assert fields["batch_specs"] == ("q1s1k", "q2s1k")
    assert fields["batch_sizes"] == (1, 4)
    assert fields["mode"] == "standard"
    assert "name" not in fields["model"] and fields["model"]["num_q_heads"] == 16
    assert fields["sweeps"] == (Sweep("num_kv_splits", (1, 2), True),)
    assert fields["output_csv"] == "results/out.csv" and fields["output_json"] == "results/out.json"
    assert fields["run"] == {"device": "cuda:1", "repeats": 20, "warmup_iters": 3, "profile_memory": True}
    assert fields["backend_settings"] == {"CUTLASS_MLA": {}, "FLASHMLA": {"reorder_batch_threshold": 4}}

    study = build_study(fields, {})
    assert study.run == RunSettings(device="cuda:1", repeats=20, warmup_iters=3, profile_memory=True)
    assert [s.points() for s in study.sweeps] == [["auto", 1, 2]]
    assert [b.name for b in study.backends_for("mla")] == ["CUTLASS_MLA"]
    assert study.backends_for("attention") == []
    shape = check_shape(study, "mla")
    assert (shape.num_q_heads, shape.head_dim, shape.num_layers) == (16, 576, 2)
    assert sorted(study.specs_for("mla")) == sorted(["q1s1k", "q2s1k", "4q1s1k", "4q2s1k"])


def test_top_level_run_keys_and_lists_of_backends(tmp_path):
    fields = load_study_file(write(tmp_path, """\
        name: my-study
        backends: [flash, TRITON_ATTN]
        batch_specs: [q2k, 8q1s1k]
        repeats: 5
        warmup_iters: 0
        device: cpu
        cache_state: warm
        noise_target: 0
        kv_cache_dtype: fp8
        model_parameter_sweep:
          param_name: head_dim
          values: [64, "128"]
    """))
    assert fields["name"] == "my-study"
    assert fields["backends"] == ("FLASH_ATTN", "TRITON_ATTN")
    assert fields["batch_specs"] == ("q2k", "8q1s1k")
    assert fields["run"] == {"repeats": 5, "warmup_iters": 0, "device": "cpu", "cache_state": "warm",
                             "noise_target": 0.0}
    assert fields["model"] == {"kv_cache_dtype": "fp8"}
    assert fields["sweeps"] == (Sweep("head_dim", (64, 128), False),)


# ---------------------------------------------------------------------------------------------- errors

BAD_YAML = [
    ("bogus_key: 1\n", "bogus_key"),
    ("model:\n  num_heads: 8\n", "model.num_heads"),
    ("repeats: ten\n", "repeats"),
    ("repeats: true\n", "repeats"),
    ("repeats: 0\n", "repeats"),
    ("model:\n  num_q_heads: -1\n", "model.num_q_heads"),
    ("model:\n  head_dim: 12.5\n", "model.head_dim"),
    ("model:\n  dtype: 16\n", "model.dtype"),
    ("batch_specs: [8q1S1k]\n", "batch_specs"),
    ("batch_specs: 8q1s1k\n", "batch_specs"),
    ("backends: [nope]\n", "backends"),
    ("backend: nope\n", "backend"),
    ("batch_sizes: [0, 2]\n", "batch_sizes"),
    ("mode: fast\n", "mode"),
    ("benchmark:\n  repeats: ten\n", "benchmark.repeats"),
    ("benchmark:\n  iterations: 3\n", "benchmark.iterations"),
    ("output:\n  html: x.html\n", "output.html"),
    ("parameter_sweep:\n  param_name: bogus\n  values: [1]\n", "parameter_sweep"),
    ("parameter_sweep:\n  param_name: num_kv_splits\n  values: []\n", "parameter_sweep.values"),
    ("parameter_sweep:\n  param_name: num_kv_splits\n  values: [1]\n  steps: 2\n", "parameter_sweep.steps"),
    ("CUTLASS_MLA:\n  bogus: 1\n", "CUTLASS_MLA.bogus"),
    ("CUTLASS_MLA:\n  num_kv_splits: -2\n", "CUTLASS_MLA.num_kv_splits"),
    ("batch_spec_ranges:\n  - template: 'q{q}'\n", "batch_spec_ranges"),
    ("mode: decode_vs_prefill\nparameter_sweep:\n  param_name: num_kv_splits\n  values: [1]\n",
     "parameter_sweep"),
    ("123: 4\n", "123"),  # a key YAML reads as a number is still an unknown key
    ("on: 4\n", "True"),  # YAML 1.1 reads a bare `on` as the boolean true
]


@pytest.mark.parametrize("text, key", [pytest.param(t, k, id=f"{i}-{k}") for i, (t, k) in enumerate(BAD_YAML)])
def test_bad_yaml_is_a_study_error_naming_file_and_key(tmp_path, text, key):
    """Every rejected key: a one-line StudyError quoting the file and the key."""
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(StudyError) as info:
        load_study_file(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert "\n" not in message


def test_bad_values_are_quoted(tmp_path):
    with pytest.raises(StudyError, match="8q1S1k"):
        load_study_file(write(tmp_path, "batch_specs: [8q1S1k]\n"))
    with pytest.raises(StudyError, match="nope"):
        load_study_file(write(tmp_path, "backends: [flash, nope]\n"))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "key: [unclosed\n"])
def test_not_a_mapping_or_not_yaml(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(StudyError, match="study.yaml"):
        load_study_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(StudyError, match="nothere.yaml"):
        load_study_file(tmp_path / "nothere.yaml")


# ------------------------------------------------------------------------------------------ precedence

def test_cli_beats_yaml_beats_defaults(tmp_path):
    fields = load_study_file(write(tmp_path, "repeats: 7\nwarmup_iters: 2\nmodel:\n  num_q_heads: 16\n"))
    assert build_study(fields, {"repeats": 3}).run.repeats == 3
    assert build_study(fields, {"repeats": None}).run.repeats == 7
    assert build_study(fields, {}).run.warmup_iters == 2
    assert build_study(None, {}).run.repeats == RunSettings().repeats
    assert build_study(None, {}).run == RunSettings()
    # model dimensions: the same order
    assert build_study(fields, {"model": {"num_q_heads": 8}}).model["num_q_heads"] == 8
    assert build_study(fields, {"model": {"num_q_heads": None}}).model["num_q_heads"] == 16
    assert "num_q_heads" not in build_study(None, {"model": {"num_q_heads": None}}).model


def test_cli_lists_replace_yaml_lists(tmp_path):
    fields = load_study_file(write(tmp_path, "backends: [flashmla]\nbatch_specs: [q2k]\n"))
    study = build_study(fields, {"backends": ["cutlass_mla"], "batch_specs": [" 8q1s1k "]})
    assert study.backends == ("CUTLASS_MLA",)
    assert study.batch_specs == ("8q1s1k",)
    kept = build_study(fields, {"backends": None, "batch_specs": None})
    assert kept.backends == ("FLASHMLA",) and kept.batch_specs == ("q2k",)


def test_defaults_without_any_input():
    study = build_study(None, {})
    assert study.backends is None and study.batch_specs is None
    assert study.specs_for("mla") == list(DEFAULT_SPECS["mla"])
    assert [b.name for b in study.backends_for("attention")] == registry.default_backends("attention")
    assert study.run.device == "cuda"


@pytest.mark.parametrize("cli, token", [
    ({"batch_specs": ["8q1S1k"]}, "8q1S1k"),
    ({"backends": ["nope"]}, "nope"),
    ({"device": "gpu"}, "gpu"),
    ({"repeats": 0}, "--repeats"),
    ({"warmup_iters": -1}, "--warmup-iters"),
    ({"sweep_param": "num_kv_splits"}, "--sweep-values"),
    ({"sweep_param": "num_kv_splits", "sweep_values": ["x"]}, "'x'"),
])
def test_bad_cli_values(cli, token):
    with pytest.raises(StudyError) as info:
        build_study(None, cli)
    assert token in str(info.value)


@pytest.mark.parametrize("text", ["device: gpu\n", "benchmark:\n  device: gpu\n"],
                         ids=["top-level", "benchmark-section"])
def test_a_bad_device_in_yaml_is_blamed_on_the_file(tmp_path, text):
    """The user never typed --device: the error must point at the YAML file and its key."""
    path = write(tmp_path, text, "dev.yaml")
    with pytest.raises(StudyError) as info:
        build_study(load_study_file(path), {})
    assert str(path) in str(info.value) and "device" in str(info.value) and "gpu" in str(info.value)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1"])
def test_good_devices(device):
    assert build_study(None, {"device": device}).run.device == device


# ---------------------------------------------------------------------------------------------- aliases

@pytest.mark.parametrize("alias, canonical", [
    ("flash", "FLASH_ATTN"), ("triton", "TRITON_ATTN"), ("flashinfer", "FLASHINFER"),
    ("cutlass_mla", "CUTLASS_MLA"), ("flashinfer_mla", "FLASHINFER_MLA"), ("flashattn_mla", "FLASH_ATTN_MLA"),
    ("flashmla", "FLASHMLA"), ("FlAsHmLa", "FLASHMLA"), ("FLASH_ATTN", "FLASH_ATTN"), ("Triton_MLA", "TRITON_MLA"),
    ("reference", "REFERENCE"),
])
def test_backend_aliases_are_case_insensitive(tmp_path, alias, canonical):
    assert registry.canonical_name(alias) == canonical
    assert build_study(None, {"backends": [alias]}).backends == (canonical,)
    assert load_study_file(write(tmp_path, f"backends: [{alias}]\n"))["backends"] == (canonical,)


def test_aliases_of_one_backend_collapse():
    assert build_study(None, {"backends": ["flashmla", "FLASHMLA", "flash_mla"]}).backends == ("FLASHMLA",)


def test_reference_belongs_to_both_families():
    study = build_study(None, {"backends": ["ref"]})
    assert [b.family for b in study.backends_for("attention") + study.backends_for("mla")] == ["attention", "mla"]


# ------------------------------------------------------------------------------------------------ shapes

def test_mla_head_dim_must_agree_with_rank_plus_rope(tmp_path):
    path = write(tmp_path, "model:\n  head_dim: 512\n", "mla.yaml")
    study = build_study(load_study_file(path), {})
    with pytest.raises(StudyError) as info:
        check_shape(study, "mla")
    assert str(path) in str(info.value) and "head_dim" in str(info.value)
    with pytest.raises(StudyError, match="command line"):
        check_shape(build_study(None, {"model": {"head_dim": 512}}), "mla")
    assert check_shape(build_study(None, {"model": {"head_dim": 576}}), "mla").head_dim == 576
    agreed = build_study(None, {"model": {"kv_lora_rank": 256, "qk_rope_head_dim": 32, "head_dim": 288}})
    assert check_shape(agreed, "mla").head_dim == 288


@pytest.mark.parametrize("model, family", [
    ({"num_q_heads": 12, "num_kv_heads": 8}, "attention"),  # GQA needs a multiple
    ({"num_kv_heads": 2}, "mla"),  # one latent head
    ({"kv_lora_rank": 512}, "attention"),  # not a standard attention dimension
    ({"dtype": "int4"}, "attention"),
])
def test_impossible_shapes_are_study_errors(model, family):
    with pytest.raises(StudyError):
        check_shape(build_study(None, {"model": model}), family)


# ----------------------------------------------------------------------------------------- batch sizes

def test_batch_sizes_multiply_specs(tmp_path):
    study = build_study(load_study_file(write(tmp_path, "batch_specs: [q4s1k]\nbatch_sizes: [1, 8]\n")), {})
    assert study.specs_for("mla") == ["q4s1k", "8q4s1k"]
    mixed = Study(name="x", batch_specs=("q2k_q1s1k",), batch_sizes=(2,))
    assert mixed.specs_for("attention") == ["q2k_q1s1k_q2k_q1s1k"]
    assert Study(name="x", batch_specs=("q1s1k",)).specs_for("attention") == ["q1s1k"]


# ------------------------------------------------------------------ review fixes

def _write(tmp_path, text, name="s.yaml", mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_non_utf8_yaml_is_a_study_error(tmp_path):
    path = _write(tmp_path, b"backends: [\xff\xfe]\n", mode="wb")
    with pytest.raises(StudyError, match="not UTF-8"):
        load_study_file(path)


def test_per_backend_section_rejects_a_knob_the_backend_lacks(tmp_path):
    path = _write(tmp_path, "FLASH_ATTN:\n  reorder_batch_threshold: 4\n")
    with pytest.raises(StudyError, match="FLASH_ATTN.reorder_batch_threshold.*no reorder_batch_threshold knob"):
        load_study_file(path)
    ok = load_study_file(_write(tmp_path, "FLASHMLA:\n  reorder_batch_threshold: 64\n", "ok.yaml"))
    assert ok["backend_settings"] == {"FLASHMLA": {"reorder_batch_threshold": 64}}


def test_include_auto_must_be_a_boolean(tmp_path):
    path = _write(tmp_path, "parameter_sweep:\n  param_name: num_kv_splits\n  values: [1]\n  include_auto: 'no'\n")
    with pytest.raises(StudyError, match="include_auto"):
        load_study_file(path)


def test_cli_include_auto_applies_to_the_yaml_sweep_and_needs_one(tmp_path):
    fields = load_study_file(_write(tmp_path, "parameter_sweep:\n  param_name: num_kv_splits\n  values: [1, 2]\n"))
    study = build_study(fields, {"sweep_include_auto": True})
    assert [s.points() for s in study.sweeps] == [["auto", 1, 2]]
    with pytest.raises(StudyError, match="--sweep-include-auto needs a sweep"):
        build_study(None, {"sweep_include_auto": True})


@pytest.mark.parametrize("device", ["gpu", "cuda:abc", "cuda0", "cpu:1"])
def test_bad_devices_are_rejected_on_the_command_line(device):
    with pytest.raises(StudyError, match="--device: must be cpu, cuda or cuda:N"):
        build_study(None, {"device": device})


def test_negative_noise_target_is_rejected_on_the_command_line():
    with pytest.raises(StudyError, match="--noise-target"):
        build_study(None, {"noise_target": -0.1})


def test_repeated_specs_and_sweep_values_are_one_case():
    study = build_study(None, {"batch_specs": ["q1s64", "q1s64", "q2"], "sweep_param": "num_kv_splits",
                               "sweep_values": ["1", "1", "2"]})
    assert study.batch_specs == ("q1s64", "q2")
    assert [s.values for s in study.sweeps] == [(1, 2)]


def test_only_real_integer_dimensions_can_be_swept():
    with pytest.raises(StudyError, match="unknown sweep parameter 'dtype'"):
        build_study(None, {"sweep_param": "dtype", "sweep_values": ["1"]})
    with pytest.raises(StudyError, match="unknown sweep parameter 'head_dimm'"):
        build_study(None, {"sweep_param": "head_dimm", "sweep_values": ["1"]})


@pytest.mark.parametrize("name", ["fp8", "fp8_e4m3", "fp8_e5m2", "auto", "bfloat16"])
def test_kv_cache_dtypes_vllm_spells_are_accepted(name):
    study = build_study(None, {"model": {"kv_cache_dtype": name}})
    check_shape(study, "attention")
    check_shape(study, "mla")


@pytest.mark.parametrize("name, message", [("fp9", "kv_cache_dtype='fp9' must be one of auto"),
                                           ("float16", "kv_cache_dtype='float16' differs from dtype='bfloat16'")])
def test_unknown_or_converting_kv_cache_dtype_is_refused(name, message):
    study = build_study(None, {"model": {"kv_cache_dtype": name}})
    with pytest.raises(StudyError, match=message):
        check_shape(study, "attention")


def test_all_range_entries_together_are_capped_with_the_count(tmp_path) -> None:
    from grammar.ranges import MAX_SPECS

    entries = "\n".join(f"  - template: \"{n + 1}q{{q}}s{{s}}\"\n    q: {{start: 1, stop: 200}}\n"
                        f"    s: {{start: 300, stop: 400}}" for n in range(6))  # 6 x 19,900 specs
    path = tmp_path / "huge.yaml"
    path.write_text(f"batch_spec_ranges:\n{entries}\n")
    with pytest.raises(StudyError, match=rf"entries 0..5 expand to \d+ specs, more than the limit {MAX_SPECS}"):
        load_study_file(path)


def test_a_study_with_too_many_cases_is_a_usage_error_naming_the_count(tmp_path) -> None:
    import subprocess
    import sys

    from attnbench.spec.axes import MAX_CASES

    specs = " ".join(f"q{q}s2048" for q in range(1, 1001))
    path = tmp_path / "big.yaml"
    path.write_text(f"batch_specs: [{', '.join(specs.split())}]\nbatch_sizes: [{', '.join(map(str, range(1, 301)))}]\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", str(root / "bench_attention"), "--bench-config", str(path),
                           "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"more than the limit {MAX_CASES}" in proc.stderr and "batch specs" in proc.stderr
