"""Quantised (fp8) KV caches on the CPU: the stored format, the dequantising reference, the cache-write check,
the gate against kernels that mishandle scales, the accuracy cost, and the byte model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from attnbench.measure import buffers  # noqa: E402
from attnbench.spec import metrics  # noqa: E402
from attnbench.measure import runner  # noqa: E402
from attnbench.measure.adapters.reference import calibrate_like_vllm  # noqa: E402
from attnbench.spec.cases import BenchCase  # noqa: E402
from attnbench.measure.kv_cache import cache_format, write_stored  # noqa: E402
from attnbench.measure.oracle import paged_attention  # noqa: E402
from attnbench.spec.shapes import AttentionShape, MLAShape  # noqa: E402
from attnbench.spec.study import RunSettings  # noqa: E402
from attnbench.spec.workload import build_layout  # noqa: E402
from grammar import parse_batch_spec as parse_requests  # noqa: E402
from tests.plugins.fake_adapters import fake_backend  # noqa: E402

SMALL = dict(num_q_heads=4, num_kv_heads=2, head_dim=16)


@pytest.mark.parametrize("name, element, step", [("fp8", torch.float8_e4m3fn, 2 ** -3),
                                                 ("fp8_e4m3", torch.float8_e4m3fn, 2 ** -3),
                                                 ("fp8_e5m2", torch.float8_e5m2, 2 ** -2)])
def test_fp8_formats_store_one_byte_and_round_within_one_step(name, element, step):
    fmt = cache_format(AttentionShape(kv_cache_dtype=name))
    assert fmt.quantized and fmt.storage == torch.uint8 and fmt.element == element
    values = torch.randn(64, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    scale = float(values.abs().max()) / 200
    stored = torch.empty(64, 32, dtype=torch.uint8)
    fmt.encode_(stored, values, scale)
    rel, absolute = fmt.rounding(scale)
    assert rel == step
    error = (fmt.decode(stored, scale) - values.float()).abs()
    assert bool((error <= rel * values.float().abs() + absolute).all())
    assert float(error.max()) > 0  # it really is quantised: some values moved


def test_encoding_saturates_instead_of_overflowing_to_nan():
    fmt = cache_format(AttentionShape(kv_cache_dtype="fp8"))
    stored = torch.empty(2, dtype=torch.uint8)
    fmt.encode_(stored, torch.tensor([1e6, -1e6]), 1.0)
    assert fmt.decode(stored, 1.0).tolist() == [448.0, -448.0]


def test_the_model_dtype_cache_is_stored_exactly():
    fmt = cache_format(AttentionShape())
    assert not fmt.quantized and fmt.storage == torch.bfloat16 and fmt.rounding(0.5) == (0.0, 0.0)


def _buffers(kv_cache_dtype: str, spec: str = "q4s32_2q1s48"):
    shape = AttentionShape(kv_cache_dtype=kv_cache_dtype, **SMALL)
    layout = build_layout(parse_requests(spec), shape.block_size, torch.device("cpu"), 0)
    buf = buffers.make_attention_buffers(layout, shape, torch.device("cpu"), 3,
                                        lambda: buffers.plain_attention_cache(layout, shape, torch.device("cpu")),
                                        calibrate=calibrate_like_vllm)
    return shape, layout, buf


def test_the_reference_reads_the_stored_fp8_values_times_their_scales():
    shape, layout, buf = _buffers("fp8")
    assert buf.key_cache.dtype == torch.float8_e4m3fn and buf.k_scale != 1.0 and buf.v_scale != 1.0
    got = buffers.attention_oracle(buf, layout, 0.25)()
    fmt = buf.kv_format
    decoded = paged_attention(buf.query, fmt.decode(buf.key_cache, buf.k_scale),
                              fmt.decode(buf.value_cache, buf.v_scale), layout.block_table, layout.query_lens,
                              layout.kv_lens, 0.25)
    assert torch.equal(got, decoded)
    # and not the stored elements alone: the scales matter
    unscaled = paged_attention(buf.query, buf.key_cache, buf.value_cache, layout.block_table, layout.query_lens,
                               layout.kv_lens, 0.25)
    assert not torch.allclose(got, unscaled, rtol=0.1)


def test_an_fp8_cache_holds_the_same_seeded_values_as_the_model_dtype_one_rounded():
    _, _, plain = _buffers("auto")
    _, _, quant = _buffers("fp8")
    assert torch.equal(plain.query, quant.query) and torch.equal(plain.key, quant.key)
    rel, absolute = quant.kv_format.rounding(quant.k_scale)
    stored = quant.kv_format.decode(quant.key_cache, quant.k_scale)
    assert bool(((stored - plain.key_cache.float()).abs() <= rel * plain.key_cache.float().abs() + absolute).all())
    # the accuracy cost's reference regenerates exactly that unquantised context
    key, value = quant.unquantized_context()
    assert torch.equal(key, plain.key_cache) and torch.equal(value, plain.value_cache)


def test_the_cache_check_accepts_a_quantising_write_and_catches_wrong_ones():
    _, layout, buf = _buffers("fp8")
    check = buffers.attention_cache_check(buf, layout)
    write_stored(buf.kv_format, buf.key_cache, layout.slot_mapping, buf.key, buf.k_scale)
    write_stored(buf.kv_format, buf.value_cache, layout.slot_mapping, buf.value, buf.v_scale)
    assert check() is None
    write_stored(buf.kv_format, buf.value_cache, layout.slot_mapping, buf.value, 1.0)  # forgot the scale
    assert "new value entries not at their slots" in check()
    write_stored(buf.kv_format, buf.value_cache, layout.slot_mapping, buf.value, buf.v_scale)
    write_stored(buf.kv_format, buf.key_cache, layout.slot_mapping.flip(0), buf.key, buf.k_scale)  # wrong slots
    assert "new key entries not at their slots" in check()


def _case(factory: str, kv_cache_dtype: str, spec: str = "q8s64_3q1s80") -> BenchCase:
    settings = RunSettings(device="cpu", repeats=3, warmup_iters=1, min_rounds=1)
    return BenchCase(study="t", backend=fake_backend(factory), batch_spec=spec,
                     shape=AttentionShape(kv_cache_dtype=kv_cache_dtype, **SMALL), run=settings)


def test_an_fp8_backend_passes_the_gate_and_records_its_accuracy_cost():
    result = runner.execute(_case("honest", "fp8"))
    v = result.verification
    assert v.passed and v.rel_tol == pytest.approx(8e-2)
    # against the stored values the fake is exact up to bf16 output rounding; against the unquantised K/V it
    # carries fp8's rounding (e4m3: a few per cent)
    assert v.rel_error < 5e-3 < v.unquantized_rel_error < 8e-2
    record = result.record().to_json()
    assert record["shape"]["kv_cache_dtype"] == "fp8"
    assert record["verification"]["unquantized_rel_error"] == pytest.approx(v.unquantized_rel_error)


def test_e5m2_costs_more_accuracy_than_e4m3():
    e4m3 = runner.execute(_case("honest", "fp8_e4m3")).verification.unquantized_rel_error
    e5m2 = runner.execute(_case("honest", "fp8_e5m2")).verification.unquantized_rel_error
    assert e5m2 > 1.5 * e4m3


def test_the_model_dtype_cache_records_no_accuracy_cost():
    assert runner.execute(_case("honest", "auto")).verification.unquantized_rel_error is None


def test_a_kernel_that_ignores_the_scales_fails_the_gate():
    with pytest.raises(runner.VerificationFailed, match="does not match REFERENCE"):
        runner.execute(_case("quantised_ignores_scale", "fp8"))


def test_a_cache_write_that_forgets_the_scale_fails_the_cache_check():
    with pytest.raises(runner.VerificationFailed, match="not at their slots"):
        runner.execute(_case("quantised_writes_unscaled", "fp8"))


@pytest.mark.parametrize("region", ["layer", "attention"])
def test_an_fp8_cache_halves_the_cache_bytes_and_a_quantised_q_is_read_as_one_byte(region):
    requests = parse_requests("16q1s4k")
    bf16 = AttentionShape()
    fp8 = AttentionShape(kv_cache_dtype="fp8")
    plain = metrics.kernel_groups(requests, bf16, timed_region=region)
    quant = metrics.kernel_groups(requests, fp8, timed_region=region, quantized_query=True)
    t, d, hq, hkv = 16, 128, 32, 8
    kv = 16 * 4096 * hkv * 2 * d
    assert plain["attention"].bytes == 2 * (t * hq * d + kv + t * hq * d)
    assert quant["attention"].bytes == t * hq * d + kv + 2 * t * hq * d
    assert quant["attention"].flops == plain["attention"].flops
    if region == "layer":
        assert quant["cache_write"].bytes == 3 * t * hkv * 2 * d  # bf16 in, fp8 out
        assert quant["query_quant"].bytes == 3 * t * hq * d
    else:
        assert "query_quant" not in quant and "cache_write" not in quant


def test_an_fp8_latent_cache_is_read_at_one_byte_per_element():
    requests = parse_requests("64q1s1k")
    plain = metrics.kernel_groups(requests, MLAShape(), timed_region="attention")
    quant = metrics.kernel_groups(requests, MLAShape(kv_cache_dtype="fp8"), timed_region="attention",
                                  quantized_query=True)
    latent, rank, hq = 576, 512, 128
    assert plain["decode_attention"].bytes - quant["decode_attention"].bytes == (
        64 * 1024 * latent + 64 * hq * latent)  # the cache and the absorbed q, each one byte instead of two
    assert quant["decode_attention"].bytes == 64 * hq * latent + 64 * 1024 * latent + 2 * 64 * hq * rank


def _fp8_mla_layer(spec: str):
    """A small MLA layer over an fp8 latent cache, its new tokens written as the quantising write stores them."""
    shape = MLAShape(num_q_heads=4, kv_lora_rank=32, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
                     block_size=16, kv_cache_dtype="fp8")
    layout = build_layout(parse_requests(spec), shape.block_size, torch.device("cpu"), 0)
    buf = buffers.make_mla_buffers(layout, shape, torch.device("cpu"), 5, calibrate=calibrate_like_vllm)
    weight = buffers.make_kv_b_proj_weight(shape, torch.device("cpu"), 9)
    write_stored(buf.kv_format, buf.kv_cache, layout.slot_mapping, torch.cat([buf.kv_c, buf.k_pe], dim=-1),
                 buf.kv_scale)
    return shape, layout, buf, weight


def test_mla_reference_over_an_fp8_latent_cache_runs_on_the_cpu():
    shape, layout, buf, weight = _fp8_mla_layer("q4s40_2q1s20")
    assert buffers.mla_cache_check(buf, layout)() is None
    stored = buffers.mla_oracle(buf, layout, shape, weight)()
    exact = buffers.unquantized_mla_oracle(buf, layout, shape, weight)()
    error = float((stored - exact).norm() / exact.norm())
    assert 1e-3 < error < 8e-2  # fp8's rounding of the latent, nothing more


def test_prefill_rows_read_their_new_latents_from_the_inputs_as_forward_mha_does():
    shape, layout, buf, weight = _fp8_mla_layer("q24_q4s40")
    from_cache = buffers.mla_oracle(buf, layout, shape, weight, ["decode", "decode"])()
    from_inputs = buffers.mla_oracle(buf, layout, shape, weight, ["prefill", "prefill"])()
    exact = buffers.unquantized_mla_oracle(buf, layout, shape, weight)()
    first = slice(0, 24)  # a prefill with no context: every key is a new token, so it is exact attention
    assert torch.equal(from_inputs[first], exact[first])
    assert not torch.allclose(from_cache[first], exact[first], rtol=1e-3)


def test_unit_scales_keep_vllms_default_of_one():
    from attnbench.measure.adapters.reference import scales_for
    shape = AttentionShape(kv_cache_dtype="fp8", **SMALL)
    layout = build_layout(parse_requests("q8s64"), shape.block_size, torch.device("cpu"), 0)
    buf = buffers.make_attention_buffers(layout, shape, torch.device("cpu"), 3,
                                        lambda: buffers.plain_attention_cache(layout, shape, torch.device("cpu")),
                                        calibrate=scales_for("unit"))
    assert (buf.k_scale, buf.v_scale) == (1.0, 1.0)
    settings = RunSettings(device="cpu", repeats=3, warmup_iters=1, min_rounds=1, kv_scales="unit")
    case = BenchCase(study="t", backend=fake_backend("honest"), batch_spec="q8s64_3q1s80", shape=shape, run=settings)
    result = runner.execute(case)
    assert result.verification.passed and result.verification.unquantized_rel_error > 0


def test_a_bare_assert_inside_a_backend_is_reported_with_its_source_line():
    try:  # compiled outside pytest's assertion rewriting, as vLLM's own asserts are: no message
        exec(compile("assert 1 + 1 == 3", "vllm_layer.py", "exec"))
    except AssertionError as exc:
        assert str(exc) == "" and runner._first_line(exc).startswith("at vllm_layer.py:1")
    else:
        pytest.fail("the assert did not fire")


def test_the_mla_prefill_transient_counts_what_forward_mha_holds_at_once():
    # vLLM 0.26.0's forward_mha, new tokens: kv_b_proj's output [T, H, nope + v], k [T, H, qk] and the attention's
    # output [T, H, v] together; at 256q1k and 128 heads kv_b_proj's output alone is 16 GiB
    from attnbench.measure.buffers import mla_step_transient_bytes, reference_output_bytes
    from attnbench.spec.shapes import MLAShape
    from attnbench.spec.workload import build_layout
    from grammar import parse_batch_spec

    shape = MLAShape(num_q_heads=128)
    h, nope, qk, v = 128, shape.qk_nope_head_dim, shape.qk_head_dim, shape.v_head_dim
    layout = build_layout(parse_batch_spec("256q1k"), shape.block_size, "cpu")
    tokens = 256 * 1024
    assert tokens * h * (nope + v) * 2 == 16 * 2**30
    assert mla_step_transient_bytes(layout, shape, ["prefill"] * 256, 65536) == 2 * tokens * h * (nope + v + qk + v)
    assert reference_output_bytes(tokens, h, v) == 16 * 2**30  # float32, kept through timing
    # a context is up-projected one workspace chunk at a time: one chunk when it fits ...
    one = build_layout(parse_batch_spec("q1s1k"), shape.block_size, "cpu")
    new_tokens = 1 * (nope + v + qk + v)
    assert mla_step_transient_bytes(one, shape, ["prefill"], 65536) == 2 * h * (
        new_tokens + 1023 * (nope + v + qk) + 1 * v)
    # ... two chunks' alive and three outputs when it does not
    assert mla_step_transient_bytes(one, shape, ["prefill"], 512) == 2 * h * (
        new_tokens + 2 * 512 * (nope + v + qk) + 3 * 1 * v)
    assert mla_step_transient_bytes(one, shape, ["decode"], 512) == 1 * h * shape.kv_lora_rank * 8


def test_the_chunked_prefill_workspace_follows_vllms_rule():
    from attnbench.measure.adapters.vllm_common import chunked_prefill_workspace_tokens
    from attnbench.spec.workload import build_layout
    from grammar import parse_batch_spec

    small = build_layout(parse_batch_spec("q1s1k"), 64, "cpu")  # max_model_len 2048: 8 x 2048 tokens
    assert chunked_prefill_workspace_tokens(small) == 8 * 2048
    long = build_layout(parse_batch_spec("q1s64k"), 64, "cpu")  # capped at 64k tokens
    assert chunked_prefill_workspace_tokens(long) == 64 * 1024
