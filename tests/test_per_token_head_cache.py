"""TRITON_ATTN's per-(token, head) quantised KV caches on the CPU: the stored entry layout ([data | float32
scale], int4's packed nibbles, zero point and Hadamard rotation), the dequantising reference, the cache check,
the gate against a kernel that drops the entry scales, the accuracy cost and the byte model."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from attnbench.measure import buffers, runner  # noqa: E402
from attnbench.spec import metrics  # noqa: E402
from attnbench.measure import verify  # noqa: E402
from attnbench.measure.kv_cache import PerTokenHeadFormat, cache_format, hadamard_rotation, write_stored  # noqa: E402
from attnbench.spec.shapes import AttentionShape, MLAShape, ShapeError  # noqa: E402
from grammar import parse_batch_spec as parse_requests  # noqa: E402
from tests.test_kv_cache import _buffers, _case  # noqa: E402  (a per-(token, head) format ignores calibrate)

PER_TOKEN_HEAD = ("int8_per_token_head", "fp8_per_token_head", "int4_per_token_head")


def _values(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize("name, storage, width", [("int8_per_token_head", torch.int8, 132),
                                                  ("fp8_per_token_head", torch.uint8, 132),
                                                  ("int4_per_token_head", torch.uint8, 68)])
def test_an_entry_is_its_data_then_one_float32_scale_as_vllm_pads_the_head_dim(name, storage, width):
    fmt = cache_format(AttentionShape(kv_cache_dtype=name))
    assert isinstance(fmt, PerTokenHeadFormat) and fmt.quantized and not fmt.per_tensor_scales
    assert fmt.storage == storage and fmt.width(128) == width  # vLLM: head_size (int4: // 2) + 4 bytes
    values = _values(6, 2, 128)
    stored = torch.empty(6, 2, width, dtype=storage)
    fmt.encode_(stored, values, 123.0)  # the per-tensor scale is not used
    error = (fmt.decode(stored, 1.0) - values.float()).abs()
    assert bool((error <= fmt.step_bound(stored, values, 1.0)).all())
    assert float(error.max()) > 0  # quantised: values moved


def test_int8_and_fp8_scales_are_each_entrys_absmax_over_the_range():
    values = _values(5, 3, 128)
    absmax = values.float().abs().amax(-1)
    for name, limit in (("int8_per_token_head", 127.0), ("fp8_per_token_head", 448.0)):
        fmt = cache_format(AttentionShape(kv_cache_dtype=name))
        stored = torch.empty(5, 3, fmt.width(128), dtype=fmt.storage)
        fmt.encode_(stored, values, 1.0)
        assert torch.allclose(fmt.entry_scales(stored), absmax / limit, rtol=1e-6)
        scale_bytes = stored.view(torch.uint8)[..., 128:].contiguous().view(torch.float32).squeeze(-1)
        assert torch.equal(scale_bytes, fmt.entry_scales(stored))  # inline, right after the data


def test_int8_rounds_half_away_from_zero_and_stores_the_extremes_at_127():
    fmt = cache_format(AttentionShape(kv_cache_dtype="int8_per_token_head", head_dim=4))
    stored = torch.empty(1, fmt.width(4), dtype=torch.int8)
    fmt.encode_(stored, torch.tensor([[127.0, -127.0, 0.5, -0.5]]), 1.0)
    assert stored[0, :4].tolist() == [127, -127, 1, -1]


def test_int4_packs_even_elements_low_and_hides_the_zero_point_in_the_scale():
    fmt = cache_format(AttentionShape(kv_cache_dtype="int4_per_token_head", head_dim=16))
    values = _values(3, 16)
    stored = torch.empty(3, fmt.width(16), dtype=torch.uint8)
    fmt.encode_(stored, values, 1.0)
    data = stored[:, :8]
    rotated = (values.float() @ fmt.rotation).to(torch.bfloat16).float()
    low, high = rotated.amin(-1, keepdim=True), rotated.amax(-1, keepdim=True)
    step = (high - low) / 15
    zero = torch.floor(-low / step + 0.5)  # -low / step >= 0: half away from zero is floor(x + 0.5)
    levels = torch.floor(rotated * (1.0 / step) + zero + 0.5).clamp(0, 15)
    assert torch.equal(data & 0xF, levels[:, 0::2].to(torch.uint8))  # element 2j in the low nibble
    assert torch.equal(data >> 4, levels[:, 1::2].to(torch.uint8))
    packed = stored[:, 8:].contiguous().view(torch.int32).squeeze(-1)
    assert torch.equal((packed & 0xF).float(), zero.squeeze(-1))
    assert torch.allclose(fmt.entry_scales(stored), step.squeeze(-1), rtol=1e-5)


def test_the_hadamard_rotation_is_orthogonal_up_to_head_dim_and_needs_a_power_of_two():
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0])
    m = hadamard_rotation(signs)
    assert torch.equal(m @ m.t(), 8 * torch.eye(8)) and torch.equal(m.abs(), torch.ones(8, 8))
    assert torch.equal(m[:, 0], signs)  # diag(signs) x Hadamard: the first column is the signs
    with pytest.raises(ValueError, match="power-of-two head_dim, got 6"):
        hadamard_rotation(torch.ones(6))


def test_int4_decodes_through_the_inverse_rotation_and_a_wrong_rotation_is_noise():
    shape = AttentionShape(kv_cache_dtype="int4_per_token_head", head_dim=32)
    fmt = cache_format(shape)
    values = _values(64, 32)
    stored = torch.empty(64, fmt.width(32), dtype=torch.uint8)
    fmt.encode_(stored, values, 1.0)
    rel = float((fmt.decode(stored) - values.float()).norm() / values.float().norm())
    assert 0.02 < rel < 0.2  # int4's rounding, nothing more
    other = cache_format(shape, hadamard_rotation(-fmt.rotation[:, 0]))  # the other signs
    other_rel = float((other.decode(stored) - values.float()).norm() / values.float().norm())
    assert other_rel > 0.9


def test_int4_needs_a_power_of_two_head_dim():
    with pytest.raises(ShapeError, match="head_dim=96 must be a power of two"):
        AttentionShape(kv_cache_dtype="int4_per_token_head", head_dim=96).validate()


@pytest.mark.parametrize("name, head_dim, data", [("int8_per_token_head", 34, 34), ("int4_per_token_head", 4, 2)])
def test_the_inline_float32_scale_needs_whole_words_of_data(name, head_dim, data):
    with pytest.raises(ShapeError, match=f"head_dim={head_dim} gives {data} data bytes, not a multiple of 4"):
        AttentionShape(kv_cache_dtype=name, num_q_heads=4, num_kv_heads=2, head_dim=head_dim).validate()


def test_per_token_head_caches_are_standard_attention_only():
    with pytest.raises(ShapeError, match="'int8_per_token_head' quantises per .token, KV head.: standard"):
        MLAShape(kv_cache_dtype="int8_per_token_head").validate()


@pytest.mark.parametrize("name", PER_TOKEN_HEAD)
def test_the_context_is_stored_per_entry_and_the_layer_scales_stay_one(name):
    _, _, plain = _buffers("auto")
    shape, _, quant = _buffers(name)
    assert quant.k_scale == quant.v_scale == 1.0  # vLLM sets the layer's to 1.0 and never reads them
    assert quant.key_cache.shape[-1] == quant.kv_format.width(shape.head_dim)
    fmt = quant.kv_format
    for cache, exact in ((quant.key_cache, plain.key_cache), (quant.value_cache, plain.value_cache)):
        decoded = fmt.decode(cache)
        assert bool(((decoded - exact.float()).abs() <= fmt.step_bound(cache, exact, 1.0)).all())
    key, value = quant.unquantized_context()
    assert torch.equal(key, plain.key_cache) and torch.equal(value, plain.value_cache)


def _written_int8_layer():
    """An int8 layer whose new tokens went in as a correct write stores them, and its cache check (passing)."""
    _, layout, buf = _buffers("int8_per_token_head")
    check = buffers.attention_cache_check(buf, layout)
    write_stored(buf.kv_format, buf.key_cache, layout.slot_mapping, buf.key, 1.0)
    write_stored(buf.kv_format, buf.value_cache, layout.slot_mapping, buf.value, 1.0)
    assert check() is None
    return layout, buf, check


def test_the_cache_check_catches_an_entry_whose_scale_was_not_written():
    layout, buf, check = _written_int8_layer()
    flat = buf.value_cache.view(-1, *buf.value_cache.shape[2:])
    stale = flat[layout.slot_mapping[0]]
    stale.view(torch.uint8)[..., -4:] = torch.tensor([1.0]).view(torch.uint8)  # the scale left at vLLM's 1.0
    assert "1 of" in check() and "new value entries not at their slots" in check()


def test_the_cache_check_catches_a_write_that_stored_too_large_a_scale():
    """int8 with the /127 forgotten: scale = absmax, data in {-1, 0, 1}. Each entry decodes within one step of *its
    stored* scale, so only comparing with the scale the values give catches it."""
    layout, buf, check = _written_int8_layer()
    flat = buf.key_cache.view(-1, *buf.key_cache.shape[2:])
    absmax = buf.key.float().abs().amax(-1, keepdim=True)
    wrong = torch.empty(*buf.key.shape[:-1], flat.shape[-1], dtype=torch.uint8)
    wrong[..., :-4] = torch.round(buf.key.float() / absmax).to(torch.int8).view(torch.uint8)
    wrong[..., -4:] = absmax.view(torch.uint8)
    assert bool(((buf.kv_format.decode(wrong.view(torch.int8)) - buf.key.float()).abs() <= absmax).all())
    flat.view(torch.uint8).index_copy_(0, layout.slot_mapping, wrong)
    assert "new key entries not at their slots" in check()


def test_per_token_head_backends_pass_the_gate_and_int4_costs_the_most_accuracy():
    cost = {}
    for name in PER_TOKEN_HEAD:
        v = runner.execute(_case("honest", name)).verification
        assert v.passed and v.rel_tol == verify.tolerance("bfloat16", name)[0]
        assert v.rel_error < 5e-3  # against the stored values: exact up to the output's bf16 rounding
        cost[name] = v.unquantized_rel_error
    assert cost["int8_per_token_head"] < cost["fp8_per_token_head"] < cost["int4_per_token_head"] < 0.2


@pytest.mark.parametrize("name", PER_TOKEN_HEAD)
def test_a_kernel_that_drops_the_entry_scales_fails_the_gate(name):
    with pytest.raises(runner.VerificationFailed, match="does not match REFERENCE"):
        runner.execute(_case("quantised_ignores_scale", name))


def test_an_int4_kernel_that_rotates_back_with_other_signs_fails_the_gate():
    with pytest.raises(runner.VerificationFailed, match="does not match REFERENCE"):
        runner.execute(_case("per_token_head_wrong_rotation", "int4_per_token_head"))


def test_the_reference_backend_runs_a_per_token_head_cache_end_to_end():
    from attnbench.spec.backends import lookup

    case = dataclasses.replace(_case("honest", "int4_per_token_head"), backend=lookup("REFERENCE", "attention"))
    result = runner.execute(case)  # the REFERENCE is the oracle: it writes, stores and reads the format itself
    assert result.verification == result.verification.oracle()
    assert result.record().to_json()["shape"]["kv_cache_dtype"] == "int4_per_token_head"


@pytest.mark.parametrize("region", ["layer", "attention"])
def test_the_cache_counts_at_its_stored_entry_size_scales_included(region):
    requests = parse_requests("16q1s4k")
    t, d, hq, hkv, kv = 16, 128, 32, 8, 16 * 4096
    plain = metrics.kernel_groups(requests, AttentionShape(), timed_region=region)
    for name, entry in (("int8_per_token_head", 132), ("fp8_per_token_head", 132), ("int4_per_token_head", 68)):
        groups = metrics.kernel_groups(requests, AttentionShape(kv_cache_dtype=name), timed_region=region)
        assert groups["attention"].bytes == 2 * t * hq * d + kv * hkv * 2 * entry + 2 * t * hq * d
        assert groups["attention"].flops == plain["attention"].flops
        if region == "layer":
            assert groups["cache_write"].bytes == (2 * d + entry) * t * hkv * 2
        rotation = groups.get("kv_rotation")
        if name == "int4_per_token_head":  # q and O (and, in the layer step, the new K and V), read and written
            assert rotation.bytes == 2 * 2 * (2 * t * hq * d + (2 * t * hkv * d if region == "layer" else 0))
        else:
            assert rotation is None
