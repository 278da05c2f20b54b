"""The correctness oracle against a brute-force loop written here, independently of its torch code.

The brute force walks each query row, each visible key and each head with plain Python floats
(float64), applies the causal bottom-right rule explicitly (query j of a request with context c
sees keys 0..c+j), looks every key up through the block table by hand and does its own softmax.
New tokens' K/V are taken from the tensors handed to ``write_kv``, context tokens from the cache
as it was before the write, so a wrong slot mapping or a wrong scatter also shows up.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.measure import oracle
from attnbench.spec.workload import build_layout
from grammar import BatchRequest

REQUESTS = [BatchRequest(1, 37), BatchRequest(5, 5), BatchRequest(3, 70), BatchRequest(17, 33)]


def _lists(t: torch.Tensor) -> list:
    return t.detach().double().cpu().tolist()


def _softmax_weighted_sum(scores: list[float], values: list[list[float]]) -> list[float]:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = math.fsum(weights)
    return [math.fsum(w * v[d] for w, v in zip(weights, values)) / total for d in range(len(values[0]))]


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b))


def _entry(cache: list, table: list[list[int]], req_index: int, pos: int, block_size: int):
    """Token ``pos`` of request ``req_index``: block_table[req][pos // bs], offset pos % bs."""
    return cache[table[req_index][pos // block_size]][pos % block_size]


def brute_paged_attention(query, old_key_cache, old_value_cache, new_key, new_value, block_table, requests,
                          scale):
    """[T, Hq, Dv] float64, one query row, one head, one key at a time."""
    q, kc, vc = _lists(query), _lists(old_key_cache), _lists(old_value_cache)
    nk, nv = _lists(new_key), _lists(new_value)
    table = block_table.tolist()
    block_size = old_key_cache.shape[1]
    num_q_heads, num_kv_heads = query.shape[1], old_key_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = []
    start = 0
    for r, req in enumerate(requests):
        context = req.kv_len - req.q_len
        for j in range(req.q_len):
            row = []
            for h in range(num_q_heads):
                kvh = h // group  # q heads [g*group, (g+1)*group) share kv head g
                scores, values = [], []
                for i in range(context + j + 1):  # causal, bottom-right: keys 0..context+j
                    if i >= context:  # a new token of this step: its K/V come from the layer inputs
                        k, v = nk[start + i - context][kvh], nv[start + i - context][kvh]
                    else:
                        k = _entry(kc, table, r, i, block_size)[kvh]
                        v = _entry(vc, table, r, i, block_size)[kvh]
                    scores.append(_dot(q[start + j][h], k) * scale)
                    values.append(v)
                row.append(_softmax_weighted_sum(scores, values))
            out.append(row)
        start += req.q_len
    return torch.tensor(out, dtype=torch.float64)


def _paged_case(group: int, block_size: int, dtype: torch.dtype, seed: int, num_kv_heads: int = 2,
                head_dim: int = 8, v_dim: int = 6):
    layout = build_layout(REQUESTS, block_size, "cpu", seed=seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    hq = num_kv_heads * group
    t = layout.num_tokens
    key_cache = torch.randn(layout.num_blocks, block_size, num_kv_heads, head_dim, generator=gen).to(dtype)
    value_cache = torch.randn(layout.num_blocks, block_size, num_kv_heads, v_dim, generator=gen).to(dtype)
    query = torch.randn(t, hq, head_dim, generator=gen).to(dtype)
    new_k = torch.randn(t, num_kv_heads, head_dim, generator=gen).to(dtype)
    new_v = torch.randn(t, num_kv_heads, v_dim, generator=gen).to(dtype)
    return layout, query, key_cache, value_cache, new_k, new_v


@pytest.mark.parametrize("block_size", [1, 3, 16])
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_paged_attention_matches_brute_force(group, block_size):
    layout, query, key_cache, value_cache, new_k, new_v = _paged_case(group, block_size, torch.float32,
                                                                      seed=group * 31 + block_size)
    old_k, old_v = key_cache.clone(), value_cache.clone()
    oracle.write_kv(key_cache, layout.slot_mapping, new_k)
    oracle.write_kv(value_cache, layout.slot_mapping, new_v)
    scale = 8 ** -0.5
    got = oracle.paged_attention(query, key_cache, value_cache, layout.block_table, layout.query_lens,
                                    layout.kv_lens, scale)
    want = brute_paged_attention(query, old_k, old_v, new_k, new_v, layout.block_table, REQUESTS, scale)
    assert got.dtype == torch.float32
    assert got.shape == (layout.num_tokens, 2 * group, 6)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_paged_attention_bf16_inputs_match_brute_force_on_the_same_values():
    layout, query, key_cache, value_cache, new_k, new_v = _paged_case(4, 16, torch.bfloat16, seed=7)
    old_k, old_v = key_cache.clone(), value_cache.clone()
    oracle.write_kv(key_cache, layout.slot_mapping, new_k)
    oracle.write_kv(value_cache, layout.slot_mapping, new_v)
    got = oracle.paged_attention(query, key_cache, value_cache, layout.block_table, layout.query_lens,
                                    layout.kv_lens, 0.3)
    want = brute_paged_attention(query, old_k, old_v, new_k, new_v, layout.block_table, REQUESTS, 0.3)
    assert got.dtype == torch.float32  # computed in float32 even for bf16 operands
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_first_query_of_a_fresh_prefill_sees_only_its_own_key():
    """Causal rule at its edge: with no context, query 0 attends key 0 alone, so its output is V[0]."""
    layout, query, key_cache, value_cache, new_k, new_v = _paged_case(1, 3, torch.float32, seed=3)
    oracle.write_kv(key_cache, layout.slot_mapping, new_k)
    oracle.write_kv(value_cache, layout.slot_mapping, new_v)
    got = oracle.paged_attention(query, key_cache, value_cache, layout.block_table, layout.query_lens,
                                    layout.kv_lens, 0.35)
    # request (5, 5) occupies rows 1..5: its first query sees exactly one key, so its output is that value
    first_row_of_prefill = 1
    blk = int(layout.block_table[1, 0])
    torch.testing.assert_close(got[first_row_of_prefill], value_cache[blk, 0])


def test_keys_outside_the_visible_window_do_not_matter():
    """Cache slots past kv_len in a request's last block, the null block and other requests' blocks
    are never read; slots inside the window are."""
    block_size = 16
    layout, query, key_cache, value_cache, new_k, new_v = _paged_case(2, block_size, torch.float32, seed=11)
    oracle.write_kv(key_cache, layout.slot_mapping, new_k)
    oracle.write_kv(value_cache, layout.slot_mapping, new_v)

    def run(kc, vc):
        return oracle.paged_attention(query, kc, vc, layout.block_table, layout.query_lens, layout.kv_lens, 0.5)

    base = run(key_cache, value_cache)
    kc, vc = key_cache.clone(), value_cache.clone()
    kc[0] = 1e4
    vc[0] = float("nan")  # the null block
    for r, req in enumerate(REQUESTS):
        last = int(layout.block_table[r, (req.kv_len - 1) // block_size])
        tail = req.kv_len % block_size
        if tail:
            kc[last, tail:] = 1e4
            vc[last, tail:] = float("nan")
    torch.testing.assert_close(run(kc, vc), base)

    # touching a visible context key of request 0 (q=1, kv=37) changes only request 0's row
    kc2 = key_cache.clone()
    kc2[int(layout.block_table[0, 0]), 0] += 5.0
    changed = run(kc2, value_cache)
    assert not torch.allclose(changed[0], base[0])
    torch.testing.assert_close(changed[1:], base[1:])


def test_write_kv_scatters_each_new_token_to_its_slot_only():
    layout = build_layout(REQUESTS, 3, "cpu", seed=5)
    cache = torch.zeros(layout.num_blocks, 3, 2, 4)
    new = torch.arange(1, layout.num_tokens + 1, dtype=torch.float32)[:, None, None].expand(-1, 2, 4)
    oracle.write_kv(cache, layout.slot_mapping, new)
    table = layout.block_table.tolist()
    expected = torch.zeros_like(cache)
    t = 0
    for r, req in enumerate(REQUESTS):
        for pos in range(req.kv_len - req.q_len, req.kv_len):
            expected[table[r][pos // 3], pos % 3] = t + 1
            t += 1
    assert torch.equal(cache, expected)


def test_causal_mask_is_bottom_right_aligned():
    mask = oracle.causal_mask(3, 5, torch.device("cpu"))
    expected = [[i <= 2 + j for i in range(5)] for j in range(3)]  # context 2: query j sees keys 0..2+j
    assert mask.tolist() == expected


# ------------------------------------------------------------------------------------------------ MLA

H, RANK, NOPE, ROPE, V = 4, 16, 8, 4, 8


def brute_mla(query, old_latent_cache, new_latent, weight, block_table, requests, scale):
    """Up-project each key's latent by hand (per head: rows [h*(nope+v), h*(nope+v)+nope) give k_nope,
    the next v rows give the value), append the shared rope part, then plain attention."""
    q, cache, new, w = _lists(query), _lists(old_latent_cache), _lists(new_latent), _lists(weight)
    table = block_table.tolist()
    block_size = old_latent_cache.shape[1]
    out = []
    start = 0
    for r, req in enumerate(requests):
        context = req.kv_len - req.q_len
        keys, vals = [], []  # per position: [H][nope+rope], [H][v]
        for i in range(req.kv_len):
            lat = new[start + i - context] if i >= context else _entry(cache, table, r, i, block_size)
            kv_c, k_pe = lat[:RANK], lat[RANK:]
            k_heads, v_heads = [], []
            for h in range(H):
                base = h * (NOPE + V)
                k_nope = [_dot(w[base + d], kv_c) for d in range(NOPE)]
                v_heads.append([_dot(w[base + NOPE + d], kv_c) for d in range(V)])
                k_heads.append(k_nope + k_pe)
            keys.append(k_heads)
            vals.append(v_heads)
        for j in range(req.q_len):
            row = []
            for h in range(H):
                visible = range(context + j + 1)
                scores = [_dot(q[start + j][h], keys[i][h]) * scale for i in visible]
                row.append(_softmax_weighted_sum(scores, [vals[i][h] for i in visible]))
            out.append(row)
        start += req.q_len
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_mla_attention_matches_brute_force(block_size, dtype):
    layout = build_layout(REQUESTS, block_size, "cpu", seed=block_size)
    gen = torch.Generator().manual_seed(77 + block_size)
    t = layout.num_tokens
    cache = torch.randn(layout.num_blocks, block_size, RANK + ROPE, generator=gen).to(dtype)
    new_latent = torch.randn(t, RANK + ROPE, generator=gen).to(dtype)
    weight = (torch.randn(H * (NOPE + V), RANK, generator=gen) * RANK ** -0.5).to(dtype)
    query = torch.randn(t, H, NOPE + ROPE, generator=gen).to(dtype)
    old = cache.clone()
    oracle.write_kv(cache, layout.slot_mapping, new_latent)
    scale = (NOPE + ROPE) ** -0.5  # qk_head_dim ** -0.5
    got = oracle.mla_attention(query, cache, weight, layout.block_table, layout.query_lens, layout.kv_lens,
                                  RANK, NOPE, V, scale)
    want = brute_mla(query, old, new_latent, weight, layout.block_table, REQUESTS, scale)
    assert got.shape == (t, H, V) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_mla_scale_helper_is_qk_head_dim_to_the_minus_half():
    from attnbench.measure.buffers import mla_scale
    from attnbench.spec.shapes import MLAShape

    shape = MLAShape(num_q_heads=H, kv_lora_rank=RANK, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V)
    assert mla_scale(shape) == pytest.approx((NOPE + ROPE) ** -0.5)
    assert mla_scale(MLAShape()) == pytest.approx(192 ** -0.5)  # DeepSeek-V3: 128 nope + 64 rope
