"""The vLLM adapters' pure helpers, on the CPU (no vLLM): cache views, cache allocation, scheduler limits."""

from __future__ import annotations

import pytest
import torch

from attnbench.measure.adapters.vllm_attention import logical_views
from attnbench.measure.adapters.vllm_common import allocate_kv_cache, limits_for
from attnbench.spec.workload import build_layout
from grammar import parse_batch_spec


def test_logical_views_of_the_packed_layout_are_k_then_v():
    blocks, heads, tokens, d = 3, 2, 4, 8
    kv = torch.arange(blocks * heads * tokens * 2 * d, dtype=torch.float32).view(blocks, heads, tokens, 2 * d)
    k, v = logical_views(kv, d)
    assert k.shape == v.shape == (blocks, tokens, heads, d)
    assert torch.equal(k[1, 2, 0], kv[1, 0, 2, :d]) and torch.equal(v[1, 2, 1], kv[1, 1, 2, d:])
    k[0, 0, 0, 0] = -1.0  # views, not copies: the oracle reads what the kernel wrote
    assert kv[0, 0, 0, 0] == -1.0


@pytest.mark.parametrize("shape, pick", [((2, 3, 4, 2, 8), lambda kv: (kv[0], kv[1])),
                                         ((3, 2, 4, 2, 8), lambda kv: (kv[:, 0], kv[:, 1]))])
def test_logical_views_of_the_older_layouts(shape, pick):
    kv = torch.randn(*shape)
    k, v = logical_views(kv, 8)
    want_k, want_v = pick(kv)
    assert torch.equal(k, want_k) and torch.equal(v, want_v)


def test_logical_views_refuse_an_unknown_layout():
    with pytest.raises(RuntimeError, match="unrecognised KV cache shape"):
        logical_views(torch.zeros(3, 4, 5), 8)


class FakeBackend:
    """A stand-in with the two classmethods allocate_kv_cache reads (tests only)."""

    order: tuple[int, ...] | None = (0, 2, 1, 3)

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str="auto"):
        return (num_blocks, block_size, num_kv_heads, head_size)

    @classmethod
    def get_kv_cache_stride_order(cls):
        if cls.order is None:
            raise NotImplementedError
        return cls.order


def test_allocate_kv_cache_has_the_logical_shape_and_the_physical_stride_order():
    cache = allocate_kv_cache(FakeBackend, 5, 16, 2, 8, torch.bfloat16, torch.device("cpu"))
    assert cache.shape == (5, 16, 2, 8) and cache.dtype == torch.bfloat16
    # physical order (blocks, heads, tokens, dim): heads are outside tokens in memory
    assert cache.stride() == (16 * 2 * 8, 8, 16 * 8, 1)


def test_allocate_kv_cache_without_a_stride_order_is_contiguous():
    class NoOrder(FakeBackend):
        order = None

    cache = allocate_kv_cache(NoOrder, 5, 16, 2, 8, torch.float16, torch.device("cpu"))
    assert cache.is_contiguous() and cache.shape == (5, 16, 2, 8)


@pytest.mark.parametrize("spec, block", [("q1s1k", 16), ("256q1s4k", 64), ("q8k", 16), ("2q2k_32q1s1k", 32)])
def test_limits_admit_the_batch_in_whole_blocks(spec, block):
    layout = build_layout(parse_batch_spec(spec), block, "cpu")
    limits = limits_for(layout)
    assert limits["max_model_len"] >= layout.max_seq_len and limits["max_model_len"] % block == 0
    assert limits["max_num_seqs"] >= layout.num_reqs
    assert limits["max_num_batched_tokens"] >= max(layout.num_tokens, limits["max_model_len"])
