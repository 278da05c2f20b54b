"""Per-layer buffers of a case, shared by every adapter of a family.

An adapter decides how its KV cache is laid out physically (vLLM backends have
their own shapes and stride orders); these helpers fill whatever it allocates with
seeded random data and give the oracle a logical view of the same memory, so the
REFERENCE reads exactly the cache contents the backend read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from attnbench.oracle import mla_attention, paged_attention
from attnbench.shapes import AttentionShape, MLAShape
from attnbench.workload import BatchLayout, fill_random_, generator, random_tensor, torch_dtype

# (raw cache tensor the backend reads, logical key view, logical value view), views [NB, BS, Hkv, D]
AttentionCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class AttentionBuffers:
    query: torch.Tensor  # [T, Hq, D]
    key: torch.Tensor  # [T, Hkv, D]: the new tokens' keys, written into the cache by the step
    value: torch.Tensor
    kv_cache: torch.Tensor  # the backend's own physical cache tensor
    key_cache: torch.Tensor  # logical view [NB, BS, Hkv, D] of kv_cache
    value_cache: torch.Tensor
    output: torch.Tensor  # [T, Hq, D]


def plain_attention_cache(layout: BatchLayout, shape: AttentionShape, device: torch.device) -> AttentionCache:
    kv = torch.empty(2, layout.num_blocks, layout.block_size, shape.num_kv_heads, shape.head_dim,
                     dtype=torch_dtype(shape.dtype), device=device)
    return kv, kv[0], kv[1]


def attention_buffer_bytes(layout: BatchLayout, shape: AttentionShape) -> int:
    e, t = shape.elem_bytes, layout.num_tokens
    cache = 2 * layout.num_blocks * layout.block_size * shape.num_kv_heads * shape.head_dim
    return e * (cache + 2 * t * shape.num_q_heads * shape.head_dim + 2 * t * shape.num_kv_heads * shape.head_dim)


def kv_data(kv_fill: str, tensor_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
            gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """K/V-side data (cache contents, the new tokens' K/V or latent): seeded random, or zeros (kv_fill)."""
    if kv_fill == "zeros":
        return torch.zeros(tensor_shape, dtype=dtype, device=device)
    return random_tensor(tensor_shape, dtype, device, gen, scale)


def fill_kv_(tensor: torch.Tensor, kv_fill: str, gen: torch.Generator) -> torch.Tensor:
    if kv_fill == "zeros":
        return tensor.zero_()
    return fill_random_(tensor, gen)


def make_attention_buffers(layout: BatchLayout, shape: AttentionShape, device: torch.device, seed: int,
                           allocate_cache: Callable[[], AttentionCache], kv_fill: str = "random") -> AttentionBuffers:
    gen = generator(device, seed)
    dt = torch_dtype(shape.dtype)
    t = layout.num_tokens
    kv_cache, key_cache, value_cache = allocate_cache()
    fill_kv_(key_cache, kv_fill, gen)
    fill_kv_(value_cache, kv_fill, gen)
    out = torch.full((t, shape.num_q_heads, shape.head_dim), float("nan"), dtype=dt, device=device)  # poisoned
    return AttentionBuffers(
        query=random_tensor((t, shape.num_q_heads, shape.head_dim), dt, device, gen),
        key=kv_data(kv_fill, (t, shape.num_kv_heads, shape.head_dim), dt, device, gen),
        value=kv_data(kv_fill, (t, shape.num_kv_heads, shape.head_dim), dt, device, gen),
        kv_cache=kv_cache, key_cache=key_cache, value_cache=value_cache, output=out)


def attention_oracle(buf: AttentionBuffers, layout: BatchLayout, scale: float) -> Callable[[], torch.Tensor]:
    def oracle() -> torch.Tensor:
        return paged_attention(buf.query, buf.key_cache, buf.value_cache, layout.block_table,
                                         layout.query_lens, layout.kv_lens, scale)
    return oracle


def attention_cache_check(buf: AttentionBuffers, layout: BatchLayout) -> Callable[[], str | None]:
    """After a step: every new token's K/V must sit at its slot (exact: the cache has the model dtype)."""
    def check() -> str | None:
        flat_k = buf.key_cache.reshape(-1, *buf.key_cache.shape[2:])
        flat_v = buf.value_cache.reshape(-1, *buf.value_cache.shape[2:])
        for name, flat, new in (("key", flat_k, buf.key), ("value", flat_v, buf.value)):
            bad = (flat.index_select(0, layout.slot_mapping) != new).flatten(1).any(dim=1)
            if bool(bad.any()):
                return f"{int(bad.sum())} of {bad.numel()} new {name} entries not at their slots"
        return None
    return check


@dataclass
class MLABuffers:
    q: torch.Tensor  # [T, H, nope + rope]: the layer's query before absorption
    kv_c: torch.Tensor  # [T, kv_lora_rank]: new tokens' normalised latent
    k_pe: torch.Tensor  # [T, rope]: new tokens' rotary key part
    kv_cache: torch.Tensor  # the backend's latent cache [NB, BS, rank + rope]
    output: torch.Tensor  # [T, H * v_head_dim]


def mla_buffer_bytes(layout: BatchLayout, shape: MLAShape) -> int:
    e, t = shape.elem_bytes, layout.num_tokens
    cache = layout.num_blocks * layout.block_size * shape.head_dim
    return e * (cache + t * shape.num_q_heads * (shape.qk_head_dim + shape.v_head_dim) + t * shape.head_dim)


def make_kv_b_proj_weight(shape: MLAShape, device: torch.device, seed: int) -> torch.Tensor:
    """A seeded kv_b_proj weight [H * (nope + v), rank], scaled so up-projected K/V have unit variance."""
    gen = generator(device, seed)
    rows = shape.num_q_heads * (shape.qk_nope_head_dim + shape.v_head_dim)
    return random_tensor((rows, shape.kv_lora_rank), torch_dtype(shape.dtype), device, gen,
                         scale=shape.kv_lora_rank ** -0.5)


def make_mla_buffers(layout: BatchLayout, shape: MLAShape, device: torch.device, seed: int,
                     kv_cache: torch.Tensor | None = None, kv_fill: str = "random") -> MLABuffers:
    gen = generator(device, seed)
    dt = torch_dtype(shape.dtype)
    t = layout.num_tokens
    if kv_cache is None:
        kv_cache = torch.empty(layout.num_blocks, layout.block_size, shape.head_dim, dtype=dt, device=device)
    fill_kv_(kv_cache, kv_fill, gen)
    out = torch.full((t, shape.num_q_heads * shape.v_head_dim), float("nan"), dtype=dt, device=device)
    return MLABuffers(
        q=random_tensor((t, shape.num_q_heads, shape.qk_head_dim), dt, device, gen),
        kv_c=kv_data(kv_fill, (t, shape.kv_lora_rank), dt, device, gen),
        k_pe=kv_data(kv_fill, (t, shape.qk_rope_head_dim), dt, device, gen),
        kv_cache=kv_cache, output=out)


def mla_scale(shape: MLAShape) -> float:
    return shape.qk_head_dim ** -0.5


def mla_oracle(buf: MLABuffers, layout: BatchLayout, shape: MLAShape, kv_b_proj_weight: torch.Tensor
               ) -> Callable[[], torch.Tensor]:
    def oracle() -> torch.Tensor:
        out = mla_attention(buf.q, buf.kv_cache, kv_b_proj_weight, layout.block_table, layout.query_lens,
                                      layout.kv_lens, shape.kv_lora_rank, shape.qk_nope_head_dim,
                                      shape.v_head_dim, mla_scale(shape))
        return out.reshape(out.shape[0], -1)
    return oracle


def mla_cache_check(buf: MLABuffers, layout: BatchLayout) -> Callable[[], str | None]:
    def check() -> str | None:
        flat = buf.kv_cache.reshape(-1, buf.kv_cache.shape[-1])
        new = torch.cat([buf.kv_c, buf.k_pe], dim=-1)
        bad = (flat.index_select(0, layout.slot_mapping) != new).any(dim=1)
        if bool(bad.any()):
            return f"{int(bad.sum())} of {bad.numel()} new latent entries not at their slots"
        return None
    return check


def oracle_transient_bytes(layout: BatchLayout, num_heads: int, head_width: int) -> int:
    """Peak float32 memory of the oracle for its largest request: scores + probabilities + gathered K/V."""
    return max(4 * (2 * num_heads * r.q_len * r.kv_len + 2 * r.kv_len * num_heads * head_width)
               for r in layout.requests)


def mla_step_transient_bytes(layout: BatchLayout, shape: MLAShape, paths: list[str]) -> int:
    """Intermediates vLLM's MLA step allocates beyond the layer buffers (measured order of magnitude):
    absorbed q and the latent output for decode rows (bf16 + fp32 split-KV partials), and the
    up-projected K/V of new + cached tokens for prefill rows."""
    h = shape.num_q_heads
    rows = list(zip(layout.requests, paths))
    decode = sum(r.q_len for r, p in rows if p == "decode") * h * shape.kv_lora_rank * (2 + 2 + 4)
    prefill = sum(r.kv_len for r, p in rows if p != "decode") * h * (shape.qk_head_dim + shape.v_head_dim) * 2
    return decode + prefill
