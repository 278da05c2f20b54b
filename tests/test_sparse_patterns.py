"""Sparse MLA (DeepSeek-V3.2) on the CPU: the mock indexer's patterns, the exact-over-selected-tokens reference,
the fp8_ds_mla entry, the work model, and the collection, options and skips of bench_mla's test_sparse_mla."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from attnbench.spec import backends as registry  # noqa: E402
from attnbench.measure import buffers  # noqa: E402
from attnbench.spec import metrics  # noqa: E402
from attnbench.measure import sparse_mla  # noqa: E402
from attnbench.spec.cases import MHA, MQA  # noqa: E402
from attnbench.measure.oracle import mla_attention  # noqa: E402
from attnbench.spec.shapes import MLAShape  # noqa: E402
from attnbench.spec.study import build_study, load_study_file  # noqa: E402
from attnbench.spec.workload import build_layout  # noqa: E402
from grammar import parse_batch_spec  # noqa: E402
from tests.test_bad_input import ROOT, assert_one_line_usage_error, run_pytest  # noqa: E402

SPECS = ["q1s40", "3q1s17", "q8s20", "q16", "q5s5_2q1s64_q12s30", "q40s100"]


# ------------------------------------------------------------------ patterns

@pytest.mark.parametrize("pattern", sparse_mla.TOPK_PATTERNS)
@pytest.mark.parametrize("spec", SPECS)
def test_every_pattern_is_what_an_indexer_could_write(pattern, spec):
    requests = parse_batch_spec(spec)
    indices = sparse_mla.batch_topk(pattern, requests, 16, seed=3)
    assert indices.dtype == torch.int32 and indices.shape == (sum(r.q_len for r in requests), 16)
    assert sparse_mla.validity_problem(indices, requests) is None


@pytest.mark.parametrize("pattern", sparse_mla.TOPK_PATTERNS)
def test_causality_and_padding_per_query(pattern):
    (req,) = parse_batch_spec("q8s20")  # context 12: query j has 13 + j candidates, top-k 16
    rows = sparse_mla.batch_topk(pattern, [req], 16, seed=0)
    for j, row in enumerate(rows.tolist()):
        n = 12 + j + 1
        valid = [i for i in row if i >= 0]
        assert max(valid) <= 12 + j  # causal: key <= c + j
        assert len(valid) == min(n, 16) and len(set(valid)) == len(valid)
        assert row[len(valid):] == [-1] * (16 - len(valid))  # -1 only at the end
        if n <= 16:
            assert sorted(valid) == list(range(n))  # fewer candidates than top-k: all of them


def test_pattern_shapes_past_top_k():
    (req,) = parse_batch_spec("q2s40")
    prefix, window, rand = (sparse_mla.batch_topk(p, [req], 16, seed=1) for p in ("prefix", "sliding_window", "random"))
    assert prefix.tolist() == [list(range(16))] * 2
    assert window.tolist() == [list(range(23, 39)), list(range(24, 40))]  # the last 16 of 39 and of 40 candidates
    assert all(sorted(r) != list(range(16)) for r in rand.tolist())  # a subset of the whole context
    assert rand.tolist()[0] != sorted(rand.tolist()[0])  # in random order, as a top-k over scores is


def test_patterns_are_seeded_and_each_request_on_its_own():
    reqs = parse_batch_spec("q1s100_q1s80")
    a, b = sparse_mla.batch_topk("random", reqs, 16, 5), sparse_mla.batch_topk("random", reqs, 16, 5)
    assert torch.equal(a, b)
    assert not torch.equal(a, sparse_mla.batch_topk("random", reqs, 16, 6))
    # the first request's rows do not depend on what follows it in the batch
    assert torch.equal(a[:1], sparse_mla.batch_topk("random", reqs[:1], 16, 5))


@pytest.mark.parametrize("corrupt, problem", [
    (lambda t: t.__setitem__((0, 0), 40), "past its causal bound"),
    (lambda t: t.__setitem__((0, 1), -1), "a -1 before a valid index"),
    (lambda t: t.__setitem__((0, 1), int(t[0, 0])), "selected twice"),
    (lambda t: t.__setitem__((0, 0), -2), "below -1"),
])
def test_validity_check_names_what_is_wrong(corrupt, problem):
    reqs = parse_batch_spec("q1s40")
    indices = sparse_mla.batch_topk("random", reqs, 16, 0)
    corrupt(indices)
    assert problem in sparse_mla.validity_problem(indices, reqs)


def test_unknown_pattern_is_refused():
    with pytest.raises(sparse_mla.PatternError, match="valid: random, prefix, sliding_window"):
        sparse_mla.batch_topk("strided", parse_batch_spec("q1s4"), 16, 0)


# ------------------------------------------------------------------ the reference

SMALL = MLAShape(num_q_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                 block_size=8, dtype="float32")


def _case(spec: str, shape: MLAShape = SMALL, seed: int = 0):
    reqs = parse_batch_spec(spec)
    layout = build_layout(reqs, shape.block_size, "cpu", seed)
    buf = buffers.make_mla_buffers(layout, shape, torch.device("cpu"), seed + 1)
    weight = buffers.make_kv_b_proj_weight(shape, torch.device("cpu"), seed + 2)
    return reqs, layout, buf, weight


def _sparse(buf, layout, weight, indices, shape=SMALL):
    return sparse_mla.sparse_mla_attention(buf.q, buf.kv_cache, weight, layout.block_table, layout.query_lens,
                                           layout.kv_lens, indices, shape.kv_lora_rank, shape.qk_nope_head_dim,
                                           shape.v_head_dim, buffers.mla_scale(shape))


@pytest.mark.parametrize("pattern", sparse_mla.TOPK_PATTERNS)
@pytest.mark.parametrize("spec", ["q1s40", "q16", "q12s30_2q1s20"])
def test_reference_equals_dense_attention_when_top_k_covers_the_context(pattern, spec):
    reqs, layout, buf, weight = _case(spec)
    indices = sparse_mla.batch_topk(pattern, reqs, 128, seed=0)  # 128 > every context: all selected
    dense = mla_attention(buf.q, buf.kv_cache, weight, layout.block_table, layout.query_lens, layout.kv_lens,
                          SMALL.kv_lora_rank, SMALL.qk_nope_head_dim, SMALL.v_head_dim, buffers.mla_scale(SMALL))
    torch.testing.assert_close(_sparse(buf, layout, weight, indices), dense, rtol=1e-5, atol=1e-5)


def test_reference_attends_exactly_the_selected_tokens():
    """Against the plain (non-absorbed) formula over the gathered selected keys, one query at a time."""
    reqs, layout, buf, weight = _case("q3s50")
    indices = sparse_mla.batch_topk("random", reqs, 16, seed=4)
    got = _sparse(buf, layout, weight, indices)
    from attnbench.measure.oracle import gather_sequence

    latent = gather_sequence(buf.kv_cache, layout.block_table[0], 50).float()
    h, nope, v, rank = SMALL.num_q_heads, SMALL.qk_nope_head_dim, SMALL.v_head_dim, SMALL.kv_lora_rank
    kv = (latent[:, :rank] @ weight.float().t()).view(50, h, nope + v)
    for j in range(3):
        sel = indices[j][indices[j] >= 0].long()
        k = torch.cat([kv[sel, :, :nope], latent[sel, rank:].unsqueeze(1).expand(-1, h, -1)], dim=-1)
        p = torch.softmax(torch.einsum("hd,khd->hk", buf.q[j].float(), k) * buffers.mla_scale(SMALL), dim=-1)
        torch.testing.assert_close(got[j], torch.einsum("hk,khd->hd", p, kv[sel, :, nope:]), rtol=1e-5, atol=1e-5)
    # and it is not dense attention: a sliding window of 16 of 48+ keys changes the output
    dense = mla_attention(buf.q, buf.kv_cache, weight, layout.block_table, layout.query_lens, layout.kv_lens,
                          rank, nope, v, buffers.mla_scale(SMALL))
    assert (got - dense).abs().max() > 1e-3


def test_reference_refuses_indices_outside_the_context():
    reqs, layout, buf, weight = _case("q1s40")
    indices = sparse_mla.batch_topk("prefix", reqs, 16, 0)
    indices[0, 3] = 40
    with pytest.raises(sparse_mla.PatternError, match="outside its 40-token context"):
        _sparse(buf, layout, weight, indices)


# ------------------------------------------------------------------ fp8_ds_mla

def test_ds_mla_entry_is_656_bytes_in_flashmlas_order():
    gen = torch.Generator().manual_seed(0)
    kv_c = torch.randn(3, 512, generator=gen) * torch.tensor([1.0, 10.0, 0.01, 3.0]).repeat_interleave(128)
    k_pe = torch.randn(3, 64, generator=gen).to(torch.bfloat16)
    entry = sparse_mla.ds_mla_quantize(kv_c, k_pe)
    assert entry.shape == (3, 656) and entry.dtype == torch.uint8 and sparse_mla.DS_MLA_ENTRY_BYTES == 656
    scales = entry[:, 512:528].contiguous().view(torch.float32)
    expected = kv_c.view(3, 4, 128).abs().amax(-1) / 448.0
    torch.testing.assert_close(scales, expected)  # one float32 scale per 128 NoPE values, after them
    assert torch.equal(entry[:, 528:].contiguous().view(torch.bfloat16), k_pe)  # rope last, unquantised
    back = sparse_mla.ds_mla_dequantize(entry)
    rel = (back[:, :512] - kv_c).abs() / kv_c.abs().clamp(min=1e-6)
    assert float(rel.median()) < 0.05 and torch.equal(back[:, 512:], k_pe.float())
    assert sparse_mla.ds_mla_cache_problem(entry, kv_c, k_pe) is None
    spoiled = entry.clone()
    spoiled[1, 7] ^= 0x40
    assert "1 of 3 new latent entries" in sparse_mla.ds_mla_cache_problem(spoiled, kv_c, k_pe)


def test_reference_reads_an_fp8_ds_mla_cache_as_its_dequantised_latents():
    shape = MLAShape(num_q_heads=2, block_size=8, dtype="bfloat16")
    reqs, layout, buf, weight = _case("q2s30", shape)
    cache = torch.empty(layout.num_blocks, 8, 656, dtype=torch.uint8)
    plain = buf.kv_cache
    buf.kv_cache = sparse_mla.fill_ds_mla_(cache, plain)
    indices = sparse_mla.batch_topk("random", reqs, 128, 0)
    from_fp8 = _sparse(buf, layout, weight, indices, shape)
    from_plain = _sparse(buf.__class__(buf.q, buf.kv_c, buf.k_pe, plain, buf.output, buf.kv_format), layout, weight,
                         indices, shape)
    assert (from_fp8 - from_plain).abs().max() > 0  # fp8 rounding shows: the entry was decoded
    buf.kv_cache = sparse_mla.ds_mla_dequantize(cache)
    torch.testing.assert_close(from_fp8, _sparse(buf, layout, weight, indices, shape))


# ------------------------------------------------------------------ work model

def test_sparse_work_counts_selected_pairs_and_rows():
    shape = MLAShape()
    reqs = parse_batch_spec("4q1s8k")
    indices = sparse_mla.batch_topk("sliding_window", reqs, 2048, 0)
    selections = sparse_mla.selections(indices, reqs, sparse_mla.entry_bytes("auto", shape.head_dim, 2))
    assert selections[0] == metrics.SparseSelection(pairs=2048, rows=2048, index_topk=2048, entry_bytes=1152)
    dense = metrics.summarize(reqs, shape, 1e-4, None, ["decode"] * 4)
    sparse = metrics.summarize(reqs, shape, 1e-4, None, ["decode"] * 4, sparse=selections)
    assert (dense.attended_pairs, sparse.attended_pairs) == (4 * 8192, 4 * 2048)
    group = sparse.kernel_groups["decode_attention"]
    assert group["bytes"] == 4 * (2 * 128 * 64 + 2048 * 1152 + 2048 * 4)  # q_pe + selected rows + index row
    assert group["flops"] == 2 * 128 * (576 + 512) * 4 * 2048
    # fp8_ds_mla reads 656-byte rows; the MHA path of a prefill row is the dense model's
    fp8 = sparse_mla.selections(indices, reqs, sparse_mla.entry_bytes("fp8_ds_mla", 576, 2))
    assert metrics.summarize(reqs, shape, 1e-4, None, ["decode"] * 4, sparse=fp8).bytes < sparse.bytes
    (prefill,) = parse_batch_spec("q1k")
    sel = sparse_mla.selections(sparse_mla.batch_topk("random", [prefill], 2048, 0), [prefill], 1152)
    assert (metrics.request_work(prefill, shape, "prefill", selection=sel[0])
            == metrics.request_work(prefill, shape, "prefill"))
    assert metrics.request_work(prefill, shape, "decode", selection=sel[0]).pairs == metrics.attended_pairs(1024, 1024)


def test_the_mha_path_applies_only_while_the_context_fits_in_top_k():
    assert sparse_mla.mha_path_problem(parse_batch_spec("4q512s2k"), 2048) is None
    assert "prefill_max_seq_len <= index_topk (2048); this batch's longest row has 2049" in \
        sparse_mla.mha_path_problem(parse_batch_spec("q1s2049"), 2048)


# ------------------------------------------------------------------ cases, options, model config

def _sparse_case(spec: str, pipeline=None, pattern="random"):
    from attnbench.spec.axes import compose_case

    study = build_study(None, {"device": "cpu"})
    return compose_case(study, registry.lookup("FLASHMLA_SPARSE", "mla"), spec, pipeline=pipeline,
                        topk_pattern=pattern)


def test_pipelines_of_mha_vs_mqa():
    mha, mqa = _sparse_case("q1s512", MHA), _sparse_case("q1s512", MQA)
    assert mha.backend_params == {"reorder_batch_threshold": -1} and not mha.force_mqa
    assert mqa.backend_params == {} and mqa.force_mqa
    assert mha.unsupported_sweep is None
    assert "runs the MQA path" in _sparse_case("q1s4k", MHA).unsupported_sweep
    assert mha.key().topk_pattern == "random" and mha.key().variant == "mha topk=random"


def test_the_topk_pattern_row_checks_its_values():
    from attnbench.spec import options

    row = options.BY_NAME["topk_pattern"]
    assert row.value("prefix") == ("prefix",)  # one YAML string is a list of one
    assert row.value(["random", "random", "prefix"]) == ("random", "prefix")
    for bad in (["strided"], [], "Random", [3]):
        with pytest.raises(options.OptionError):
            row.value(bad)


def test_upstreams_yaml_spelling_and_the_shipped_studies(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("sparse_mla_topk_pattern: sliding_window\nbackends: [flashmla_sparse]\n")
    assert load_study_file(path)["topk_pattern"] == ("sliding_window",)
    sparse = load_study_file(ROOT / "configs/sparse_mla.yaml")
    assert sparse["topk_pattern"] == tuple(sparse_mla.TOPK_PATTERNS)
    study = load_study_file(ROOT / "configs/mha_vs_mqa.yaml")
    assert study["mode"] == "mha_vs_mqa" and study["batch_sizes"] == (1, 2, 4, 8, 16, 32)
    longest = max(r.kv_len for spec in study["batch_specs"] for r in parse_batch_spec(spec))
    assert longest == sparse_mla.DEEPSEEK_V32.index_topk  # never past top-k: vLLM would not take MHA there


def test_the_sparse_model_config_is_deepseek_v32(tmp_path):
    from attnbench.measure.adapters.vllm_common import write_model_config

    cfg = json.loads((write_model_config(tmp_path, MLAShape(), sparse_mla.DEEPSEEK_V32) / "config.json").read_text())
    assert (cfg["architectures"], cfg["model_type"]) == (["DeepseekV32ForCausalLM"], "deepseek_v32")
    assert (cfg["index_topk"], cfg["index_n_heads"], cfg["index_head_dim"]) == (2048, 64, 128)
    assert (cfg["num_attention_heads"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]) == (128, 512, 64)
    dense = json.loads((write_model_config(tmp_path / "d", MLAShape()) / "config.json").read_text())
    assert "index_topk" not in dense and dense["model_type"] == "deepseek_v2"


def test_registry_rows():
    fm, fa = registry.lookup("flashmla_sparse", "mla"), registry.lookup("fa_mla_sparse", "mla")
    assert (fm.name, fa.name) == ("FLASHMLA_SPARSE", "FLASH_ATTN_MLA_SPARSE")
    assert registry.capability_skip_reason(fm, (9, 0)) is None and registry.capability_skip_reason(fa, (9, 0)) is None
    assert "SM90" in registry.capability_skip_reason(fa, (10, 0))
    assert registry.runs_kind(registry.lookup("REFERENCE", "mla"), registry.SPARSE)
    assert not registry.runs_kind(registry.lookup("FLASHMLA", "mla"), registry.SPARSE)


def test_the_adapter_asks_vllm_as_a_sparse_model(monkeypatch):
    import sys
    import types
    from typing import Any, NamedTuple

    class Cap(NamedTuple):
        major: int
        minor: int

    class Selector(NamedTuple):
        head_size: int
        dtype: Any
        kv_cache_dtype: Any
        block_size: Any
        use_mla: bool = False
        use_sparse: bool = False

    interface, selector = types.ModuleType("vllm.platforms.interface"), types.ModuleType("vllm.v1.attention.selector")
    interface.DeviceCapability, selector.AttentionSelectorConfig = Cap, Selector
    for name in ("vllm", "vllm.platforms", "vllm.v1", "vllm.v1.attention"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.platforms.interface", interface)
    monkeypatch.setitem(sys.modules, "vllm.v1.attention.selector", selector)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    asked = {}

    class Backend:
        @classmethod
        def validate_configuration(cls, device_capability, **config):
            asked.update(config)
            return []

    from attnbench.measure.adapters.vllm_common import support_problems

    support_problems(Backend, MLAShape(), torch.device("cuda:0"), use_sparse=True)
    assert asked["use_sparse"] is True and asked["use_mla"] is True


# ------------------------------------------------------------------ collection and runs (subprocesses)

BENCH_MLA = str(ROOT / "bench_mla")


def test_collection_gives_readable_ids_per_pattern(tmp_path):
    proc = run_pytest(BENCH_MLA, "--collect-only", "-q", "--batch-specs", "64q1s8k", "--topk-pattern", "random",
                      "sliding_window", "prefix", cwd=tmp_path)
    ids = [line.split("::")[1] for line in proc.stdout.splitlines() if "::test_sparse_mla" in line]
    assert ids[:3] == ["test_sparse_mla[REFERENCE-64q1s8k-topk=random]",
                       "test_sparse_mla[REFERENCE-64q1s8k-topk=sliding_window]",
                       "test_sparse_mla[REFERENCE-64q1s8k-topk=prefix]"]
    assert "test_sparse_mla[FLASHMLA_SPARSE-64q1s8k-topk=random]" in ids
    assert "test_sparse_mla[FLASH_ATTN_MLA_SPARSE-64q1s8k-topk=prefix]" in ids and len(ids) == 9
    dense = [line for line in proc.stdout.splitlines() if "::test_mla[" in line]
    assert dense and not any("SPARSE" in line for line in dense)  # test_mla runs the dense rows only
    plain = run_pytest(BENCH_MLA, "--collect-only", "-q", "--batch-specs", "64q1s8k", cwd=tmp_path)
    assert "test_sparse_mla" not in plain.stdout and "test_mla[FLASHMLA-64q1s8k]" in plain.stdout  # opt-in


def test_mha_vs_mqa_ids_and_sparse_only_backends(tmp_path):
    proc = run_pytest(BENCH_MLA, "--collect-only", "-q", "--bench-config", str(ROOT / "configs/mha_vs_mqa.yaml"),
                      "--backends", "flashmla_sparse", "--batch-specs", "q1s512", cwd=tmp_path)
    ids = [line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line]
    assert ids[:2] == ["test_sparse_mla_mha_vs_mqa[FLASHMLA_SPARSE-q1s512-topk=random-mha]",
                       "test_sparse_mla_mha_vs_mqa[FLASHMLA_SPARSE-q1s512-topk=random-mqa]"]


def test_mha_vs_mqa_sweeps_num_q_heads_beside_the_pipelines_and_nothing_else(tmp_path):
    config = str(ROOT / "configs/mha_vs_mqa.yaml")
    proc = run_pytest(BENCH_MLA, "--collect-only", "-q", "--bench-config", config, "--backends", "flashmla_sparse",
                      "--batch-specs", "q1s512", "--sweep-param", "num_q_heads", "--sweep-values", "16", "128",
                      cwd=tmp_path)
    ids = [line.split("::")[1] for line in proc.stdout.splitlines() if "::" in line]
    assert ids[:4] == [f"test_sparse_mla_mha_vs_mqa[FLASHMLA_SPARSE-q1s512-num_q_heads={h}-topk=random-{p}]"
                       for h in (16, 128) for p in ("mha", "mqa")]
    refused = run_pytest(BENCH_MLA, "--collect-only", "-q", "--bench-config", config, "--sweep-param", "v_head_dim",
                         "--sweep-values", "64", "128", cwd=tmp_path)
    assert refused.returncode == 4
    assert "--sweep-param: mha_vs_mqa mode sweeps only num_q_heads" in refused.stderr + refused.stdout


def test_sparse_cases_skip_with_a_reason_without_a_gpu(tmp_path):
    proc = run_pytest(BENCH_MLA, "-k", "sparse and SPARSE", "-rs", "--batch-specs", "q1s4k", "-p", "no:xdist",
                      "--topk-pattern", "random", "--allow-untimed", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "FLASHMLA_SPARSE requires SM90+ (found none)" in out
    assert "FLASH_ATTN_MLA_SPARSE requires SM90+ (found none)" in out


@pytest.mark.parametrize("args, token", [
    ([BENCH_MLA, "--topk-pattern", "strided"],
     "--topk-pattern: must be random, prefix or sliding_window, got 'strided'"),
    ([f"{BENCH_MLA}/test_mla.py", "--backends", "flashmla_sparse"],
     "FLASHMLA_SPARSE runs sparse MLA only: test_sparse_mla runs it"),
    ([f"{BENCH_MLA}/test_sparse_mla.py", "--backends", "flashmla", "--topk-pattern", "random"],
     "FLASHMLA runs dense MLA only: test_mla runs it"),
    # opt-in: without a sparse backend or a pattern, -k REFERENCE / -k flashmla on bench_mla stay the dense cases
    ([f"{BENCH_MLA}/test_sparse_mla.py"], "sparse MLA cases run when asked: name a sparse backend"),
])
def test_bad_sparse_input_is_one_usage_error(tmp_path, args, token):
    assert_one_line_usage_error(run_pytest("--collect-only", "-q", *args, cwd=tmp_path), token)


def test_reference_runs_sparse_cases_on_the_cpu_and_records_them(tmp_path):
    out = tmp_path / "sparse.json"
    proc = run_pytest(BENCH_MLA, "-k", "test_sparse_mla and REFERENCE", "--device", "cpu", "--batch-specs", "2q1s3k",
                      "--topk-pattern", "sliding_window", "--kv-cache-dtype", "fp8_ds_mla", "--repeats", "2",
                      "--warmup-iters", "0", "--no-kernel-profile", "-p", "no:xdist", "--output-json", str(out),
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(out.read_text())["results"]
    record = row["extra"]
    assert row["topk_pattern"] == "sliding_window" and record["backend_info"]["kv_cache_dtype"] == "fp8_ds_mla"
    assert record["work"]["attended_pairs"] == 2 * 2048 and record["verification"]["status"] == "oracle"
    assert math.isfinite(row["median_time"])
    from attnbench.results.exports import load_results

    (loaded,) = load_results(out).results
    assert loaded.key.topk_pattern == "sliding_window"  # the pattern is part of the case's identity on reload


def test_mha_rows_of_an_fp8_ds_mla_cache_read_their_new_tokens_from_the_layer_inputs():
    shape = MLAShape(num_q_heads=2, block_size=8, dtype="bfloat16")
    reqs, layout, buf, weight = _case("q20_q1s30", shape)
    plain = buf.kv_cache
    cache = torch.empty(layout.num_blocks, 8, 656, dtype=torch.uint8)
    sparse_mla.write_latents(plain, layout.slot_mapping, buf.kv_c, buf.k_pe)
    buf.kv_cache = sparse_mla.fill_ds_mla_(cache, plain)
    indices = sparse_mla.batch_topk("random", reqs, 128, 0)
    oracle = sparse_mla.make_oracle(buf, layout, shape, weight, indices, ["prefill", "decode"])()
    stored = sparse_mla.make_oracle(buf, layout, shape, weight, indices, ["decode", "decode"])()
    exact = _sparse(buf.__class__(buf.q, buf.kv_c, buf.k_pe, plain, buf.output, buf.kv_format), layout, weight,
                    indices, shape).reshape(oracle.shape)
    rows = slice(0, 20)  # the prefill without context: every key is new, so MHA sees no fp8 at all
    torch.testing.assert_close(oracle[rows], exact[rows])
    assert not torch.allclose(stored[rows], exact[rows], rtol=1e-3)
    torch.testing.assert_close(oracle[20:], stored[20:])  # the decode row reads the cache either way
