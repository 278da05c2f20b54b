"""Paged batch layouts: block ownership, padding, slot mapping, seeding, ordering and cache fill."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attnbench.measure import buffers
from attnbench.spec import workload
from attnbench.spec.shapes import AttentionShape, MLAShape
from attnbench.spec.workload import NULL_BLOCK, build_layout, scheduler_order
from grammar import BatchRequest, parse_batch_spec

MIXED = [BatchRequest(1, 37), BatchRequest(5, 5), BatchRequest(3, 70), BatchRequest(17, 33), BatchRequest(1, 1)]


def _needed(req: BatchRequest, block_size: int) -> int:
    return -(-req.kv_len // block_size)


def _check_layout(requests: list[BatchRequest], block_size: int, seed: int) -> None:
    layout = build_layout(requests, block_size, "cpu", seed=seed)
    table = layout.block_table.tolist()
    needed = [_needed(r, block_size) for r in requests]

    assert layout.block_table.dtype == torch.int32
    assert len(table) == len(requests)
    assert all(len(row) == max(needed) for row in table)
    assert layout.num_blocks == sum(needed) + 1  # every request's blocks plus the null block

    owned = [row[:n] for row, n in zip(table, needed)]
    flat = [b for row in owned for b in row]
    assert NULL_BLOCK == 0
    assert 0 not in flat  # the null block is never handed to a request
    assert len(set(flat)) == len(flat)  # no block shared within or across requests
    assert set(flat) == set(range(1, layout.num_blocks))  # all physical blocks are used, none out of range
    for row, n in zip(table, needed):
        assert row[n:] == [NULL_BLOCK] * (len(row) - n)  # padding

    expected_slots = []
    for row, req in zip(table, requests):
        for pos in range(req.kv_len - req.q_len, req.kv_len):
            expected_slots.append(row[pos // block_size] * block_size + pos % block_size)
    assert layout.slot_mapping.dtype == torch.int64
    assert layout.slot_mapping.tolist() == expected_slots
    assert len(set(expected_slots)) == len(expected_slots)

    qsl = [0]
    for r in requests:
        qsl.append(qsl[-1] + r.q_len)
    assert layout.query_start_loc.tolist() == qsl and layout.query_start_loc.dtype == torch.int32
    assert layout.seq_lens.tolist() == [r.kv_len for r in requests] and layout.seq_lens.dtype == torch.int32
    assert layout.num_tokens == qsl[-1]
    assert layout.num_reqs == len(requests)
    assert layout.max_query_len == max(r.q_len for r in requests)
    assert layout.max_seq_len == max(r.kv_len for r in requests)
    assert layout.num_blocks == sum(needed) + 1  # block 0 is the null block


@pytest.mark.parametrize("block_size", [1, 3, 16, 64])
def test_layout_of_a_mixed_batch(block_size):
    _check_layout(MIXED, block_size, seed=0)


_requests = st.builds(lambda q, extra: BatchRequest(q, q + extra), st.integers(1, 40), st.integers(0, 90))


@settings(max_examples=60, deadline=None)
@given(requests=st.lists(_requests, min_size=1, max_size=8), block_size=st.sampled_from([1, 2, 3, 7, 16, 64]),
       seed=st.integers(0, 2**31 - 1))
def test_layout_properties(requests, block_size, seed):
    _check_layout(requests, block_size, seed)


def test_same_seed_reproduces_and_other_seeds_permute_differently():
    reqs = parse_batch_spec("4q1s100_2q30")  # 4 * 7 + 2 * 2 = 32 blocks of 16
    a, b = build_layout(reqs, 16, "cpu", seed=3), build_layout(reqs, 16, "cpu", seed=3)
    assert torch.equal(a.block_table, b.block_table) and torch.equal(a.slot_mapping, b.slot_mapping)
    tables = {tuple(build_layout(reqs, 16, "cpu", seed=s).block_table.flatten().tolist()) for s in range(6)}
    assert len(tables) == 6  # 32! orderings: six seeds giving a repeat would mean the seed is ignored


def test_blocks_are_placed_randomly_not_in_order():
    reqs = parse_batch_spec("8q1s256")
    table = build_layout(reqs, 16, "cpu", seed=0).block_table
    flat = table.flatten().tolist()
    assert flat != sorted(flat)  # a contiguous identity layout would hide block-table indexing bugs


def test_layout_tensors_live_on_the_requested_device():
    layout = build_layout(MIXED, 16, torch.device("cpu"))
    for t in (layout.query_start_loc, layout.seq_lens, layout.block_table, layout.slot_mapping):
        assert t.device.type == "cpu"


# ------------------------------------------------------------------------------------ scheduler order
# vLLM's reorder_batch_to_split_decodes_and_prefills: a request is a "decode" when its scheduled tokens
# (q_len) are <= reorder_batch_threshold, whatever its context; other requests are extends when they have
# context and prefills when they have none. Order: decodes, extends, prefills.

def _region(req: BatchRequest, threshold: int) -> int:
    """vLLM 0.26.0's regions: decode (context, q <= threshold), long extend (context), prefill (no context)."""
    if req.kv_len == req.q_len:
        return 2
    return 0 if req.q_len <= threshold else 1


def test_scheduler_order_without_threshold_keeps_the_batch_order():
    reqs = [BatchRequest(5, 5), BatchRequest(1, 11), BatchRequest(3, 12)]
    assert scheduler_order(reqs, None) == reqs


def test_scheduler_order_moves_only_misplaced_rows():
    reqs = [BatchRequest(5, 10), BatchRequest(1, 11), BatchRequest(3, 12), BatchRequest(1, 13),
            BatchRequest(8, 8), BatchRequest(2, 15), BatchRequest(9, 9), BatchRequest(4, 40)]
    ordered = scheduler_order(reqs, threshold=2)
    # regions [ext, dec, ext, dec, pre, dec, pre, ext] -> target [dec x3, ext x3, pre x2]. Rows 1 (kv 11) and
    # 6 (kv 9) already sit in their target region and stay; the misplaced slots 0,2,3,4,5,7 take rows
    # 3,5,0,2,7,4 (the misplaced rows sorted stably by region), as vLLM's swap cycles do.
    assert [r.kv_len for r in ordered] == [13, 11, 15, 10, 12, 40, 9, 8]


@pytest.mark.parametrize("requests, threshold, expected_regions", [
    # (q_len, kv_len) built from vLLM's own reorder test cases, (scheduled, computed) -> (s, s + c)
    ([(100, 200), (1, 11), (200, 400), (1, 21)], 1, [0, 0, 1, 1]),  # mixed_interleaved
    ([(100, 100), (10, 60), (1, 11)], 1, [0, 1, 2]),  # decode_extend_prefill
    ([(2, 12), (3, 23), (5, 35), (6, 46)], 4, [0, 0, 1, 1]),  # higher_threshold
    ([(1, 21), (1, 51), (374, 374), (300, 320), (1, 21), (256, 256), (1, 6), (27, 27), (1, 5)], 1,
     [0, 0, 0, 0, 0, 1, 2, 2, 2]),  # complicated_mixed_interleaved
])
def test_scheduler_order_regions_match_vllm(requests, threshold, expected_regions):
    ordered = scheduler_order([BatchRequest(q, kv) for q, kv in requests], threshold)
    assert [_region(r, threshold) for r in ordered] == expected_regions


def test_a_request_without_context_is_a_prefill_as_in_vllm_0_26():
    """vLLM 0.26.0's reorder puts every first chunk (no context) in the last region, whatever its q_len
    (``is_pure_prefill = ~has_context`` in reorder_batch_to_split_decodes_and_prefills)."""
    one_token_prefill, extend = BatchRequest(1, 1), BatchRequest(10, 60)
    assert scheduler_order([one_token_prefill, extend], 1) == [extend, one_token_prefill]
    short_prefill, long_extend, decode = BatchRequest(4, 4), BatchRequest(8, 1024), BatchRequest(1, 9)
    assert scheduler_order([short_prefill, long_extend, decode], 4) == [decode, long_extend, short_prefill]


@settings(max_examples=80, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 30)), min_size=0, max_size=12),
       threshold=st.integers(0, 21))
@example(shapes=[(5, 10), (1, 0)], threshold=2)  # an extend, then a one-token prefill
def test_scheduler_order_properties(shapes, threshold):
    # kv_len = q + context + 1000 * index keeps every request distinct (index recoverable) yet with context
    # exactly when context > 0
    reqs = [BatchRequest(q, q + c + (1000 * (i + 1) if c else 0)) for i, (q, c) in enumerate(shapes)]
    ordered = scheduler_order(reqs, threshold)
    key = lambda r: (r.q_len, r.kv_len)  # noqa: E731
    assert sorted(ordered, key=key) == sorted(reqs, key=key)  # a permutation (prefills may repeat)
    regions = [_region(r, threshold) for r in ordered]
    assert regions == sorted(regions)  # decodes, then extends, then prefills
    original = [_region(r, threshold) for r in reqs]
    for i, (before, want) in enumerate(zip(original, sorted(original))):
        if before == want:
            assert ordered[i] is reqs[i]  # a row already in its region is not moved (vLLM swaps only misplaced rows)


def test_scheduler_order_matches_vllm_swap_cycles():
    """vLLM's own interleaved example: regions [prefill, decode, extend, decode] -> rows [3, 1, 2, 0]."""
    prefill, decode_a = BatchRequest(8, 8), BatchRequest(1, 9)
    extend, decode_b = BatchRequest(8, 30), BatchRequest(1, 20)
    assert scheduler_order([prefill, decode_a, extend, decode_b], 4) == [decode_b, decode_a, extend, prefill]


# ------------------------------------------------------------------------------------------ cache fill

def test_fill_random_fills_a_strided_view_and_never_leaves_zeros():
    base = torch.zeros(2, 9, 4, 3, 8, dtype=torch.bfloat16)
    view = base[1].transpose(1, 2)  # non-contiguous
    workload.fill_random_(view, workload.generator("cpu", 0))
    assert torch.count_nonzero(base[0]) == 0  # only the view was written
    flat = base[1].reshape(9, -1)
    assert bool((flat != 0).any(dim=1).all())  # no block left all zeros
    assert torch.count_nonzero(base[1]) > 0.99 * base[1].numel()
    assert torch.isfinite(base[1].float()).all()


def test_fill_random_is_seeded():
    a, b, c = (torch.zeros(3, 4, 5) for _ in range(3))
    workload.fill_random_(a, workload.generator("cpu", 1))
    workload.fill_random_(b, workload.generator("cpu", 1))
    workload.fill_random_(c, workload.generator("cpu", 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_tensor_dtype_shape_and_scale():
    t = workload.random_tensor((4000,), torch.float16, "cpu", workload.generator("cpu", 0), scale=0.1)
    assert t.dtype == torch.float16 and t.shape == (4000,)
    assert 0.08 < float(t.float().std()) < 0.12


def test_attention_buffers_fill_every_cache_block_and_poison_the_output():
    shape = AttentionShape(num_q_heads=4, num_kv_heads=2, head_dim=8, block_size=4)
    layout = build_layout(MIXED, shape.block_size, "cpu", seed=0)
    dev = torch.device("cpu")
    buf = buffers.make_attention_buffers(layout, shape, dev, 1,
                                         lambda: buffers.plain_attention_cache(layout, shape, dev))
    for cache in (buf.key_cache, buf.value_cache):
        assert cache.shape == (layout.num_blocks, 4, 2, 8)
        assert bool((cache.reshape(layout.num_blocks, -1) != 0).any(dim=1).all())
    assert not torch.equal(buf.key_cache, buf.value_cache)
    assert buf.query.shape == (layout.num_tokens, 4, 8) and buf.key.shape == (layout.num_tokens, 2, 8)
    assert torch.isnan(buf.output.float()).all()  # poisoned, so an unwritten output cannot verify


def test_mla_buffers_fill_every_latent_block():
    shape = MLAShape(num_q_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                     block_size=3)
    layout = build_layout(MIXED, shape.block_size, "cpu", seed=0)
    buf = buffers.make_mla_buffers(layout, shape, torch.device("cpu"), 2)
    assert buf.kv_cache.shape == (layout.num_blocks, 3, 20)
    assert bool((buf.kv_cache.reshape(layout.num_blocks, -1) != 0).any(dim=1).all())
    assert buf.q.shape == (layout.num_tokens, 4, 12)


def test_torch_dtype_names():
    assert workload.torch_dtype("bfloat16") is torch.bfloat16
    assert workload.torch_dtype("float16") is torch.float16
    assert workload.torch_dtype("float32") is torch.float32
