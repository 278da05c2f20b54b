"""Exact attention in plain torch over the paged KV cache: the correctness oracle.

Causal, bottom-right aligned: query j (0-based among a request's new tokens) of a
request with context c sees keys 0..c+j. Standard attention is GQA over
``[num_blocks, block_size, num_kv_heads, head_dim]`` key/value caches; MLA reads the
``[num_blocks, block_size, kv_lora_rank + rope]`` latent cache, up-projects it with the
layer's ``kv_b_proj`` weight and runs the same attention. Computed in float32.
"""

from __future__ import annotations

from typing import Sequence

import torch

from attnbench.measure.kv_cache import KVCacheFormat, gather_rows


def gather_sequence(cache: torch.Tensor, block_table_row: torch.Tensor, kv_len: int) -> torch.Tensor:
    """The first ``kv_len`` token entries of one request, read block by block from ``cache``."""
    block_size = cache.shape[1]
    n_blocks = -(-kv_len // block_size)
    blocks = gather_rows(cache, block_table_row[:n_blocks].long())
    return blocks.reshape(n_blocks * block_size, *cache.shape[2:])[:kv_len]


def causal_mask(q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """True where query j may attend key i (i <= kv_len - q_len + j)."""
    rows = torch.arange(q_len, device=device).unsqueeze(1)
    cols = torch.arange(kv_len, device=device).unsqueeze(0)
    return cols <= rows + (kv_len - q_len)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [q_len, H, d_qk], k [kv_len, H, d_qk], v [kv_len, H, d_v] -> [q_len, H, d_v], causal."""
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    mask = causal_mask(q.shape[0], k.shape[0], q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v.float())


def paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                    block_table: torch.Tensor, query_lens: Sequence[int], kv_lens: Sequence[int],
                    scale: float, k_scale: float = 1.0, v_scale: float = 1.0,
                    kv_format: KVCacheFormat | None = None) -> torch.Tensor:
    """GQA attention of ``query`` [T, Hq, D] over paged K/V caches; returns float32 [T, Hq, D].

    The caches may hold fp8 elements: they are read as stored, times ``k_scale`` / ``v_scale``. With
    ``kv_format`` they hold that format's entries, read as ``kv_format.decode`` dequantises them."""
    def read(stored: torch.Tensor, tensor_scale: float) -> torch.Tensor:
        return kv_format.decode(stored, tensor_scale) if kv_format is not None else stored.float() * tensor_scale

    num_q_heads, num_kv_heads = query.shape[1], key_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out: list[torch.Tensor] = []
    start = 0
    for i, (q_len, kv_len) in enumerate(zip(query_lens, kv_lens)):
        k = read(gather_sequence(key_cache, block_table[i], kv_len), k_scale).repeat_interleave(group, dim=1)
        v = read(gather_sequence(value_cache, block_table[i], kv_len), v_scale).repeat_interleave(group, dim=1)
        out.append(_attend(query[start:start + q_len], k, v, scale))
        start += q_len
    return torch.cat(out)


def mla_attention(query: torch.Tensor, latent_cache: torch.Tensor, kv_b_proj_weight: torch.Tensor,
                  block_table: torch.Tensor, query_lens: Sequence[int], kv_lens: Sequence[int],
                  kv_lora_rank: int, qk_nope_head_dim: int, v_head_dim: int, scale: float,
                  kv_scale: float = 1.0, new_latents: torch.Tensor | None = None,
                  new_from_inputs: Sequence[bool] | None = None) -> torch.Tensor:
    """MLA as standard attention: ``query`` [T, H, nope+rope] over the latent cache [NB, BS, rank+rope].

    ``kv_b_proj_weight`` is [H * (nope + v), rank] (a torch Linear weight). Returns float32 [T, H, v].
    An fp8 latent cache is read as stored, times ``kv_scale`` (vLLM's one _k_scale for latent and rope).
    ``new_from_inputs[i]``: request i's new tokens are read from ``new_latents`` [T, rank + rope] (the layer's
    inputs, as vLLM's forward_mha takes them) instead of the cache; only its context comes from the cache.
    """
    num_heads = query.shape[1]
    w = kv_b_proj_weight.float()
    out = torch.empty(query.shape[0], num_heads, v_head_dim, dtype=torch.float32, device=query.device)
    start = 0
    for i, (q_len, kv_len) in enumerate(zip(query_lens, kv_lens)):
        latent = gather_sequence(latent_cache, block_table[i], kv_len).float() * kv_scale
        if new_from_inputs is not None and new_from_inputs[i]:
            assert new_latents is not None
            latent[kv_len - q_len:] = new_latents[start:start + q_len].float()
        kv_c, k_pe = latent[:, :kv_lora_rank], latent[:, kv_lora_rank:]
        kv = (kv_c @ w.t()).view(kv_len, num_heads, qk_nope_head_dim + v_head_dim)
        k_nope, v = kv.split([qk_nope_head_dim, v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(1).expand(-1, num_heads, -1)], dim=-1)
        out[start:start + q_len] = _attend(query[start:start + q_len], k, v, scale)
        start += q_len
    return out


def write_kv(cache: torch.Tensor, slot_mapping: torch.Tensor, new: torch.Tensor) -> None:
    """Scatter new token entries into a ``[num_blocks, block_size, ...]`` cache at their slots."""
    flat = cache.view(-1, *cache.shape[2:])
    flat.index_copy_(0, slot_mapping, new.to(cache.dtype))
