"""DeepSeek-V3.2-style sparse MLA: the top-k index patterns a mock indexer writes, and the exact reference.

vLLM 0.26.0's sparse MLA impls (FLASHMLA_SPARSE, FLASH_ATTN_MLA_SPARSE) do not choose their keys: the model's
Indexer writes, for every token of the step, ``index_topk`` request-local key positions into one shared
``topk_indices_buffer`` [max_num_batched_tokens, index_topk] int32, and ``forward_mqa`` reads
``buffer[:num_mqa_tokens]``. Here that buffer is filled from a seeded pattern instead of an indexer, so the
kernel's input is known and the reference can attend over exactly the same tokens.

What a pattern writes is what a real indexer could write (``batch_topk``): query j of a request with context
c has the c + j + 1 causal candidates 0 .. c + j; where that is at most ``index_topk`` every candidate is
selected (top-k of fewer than k), otherwise ``index_topk`` of them by the pattern:

* ``random``: a seeded random subset, in random order (an indexer's top-k is not sorted by position);
* ``prefix``: the first ``index_topk`` positions (attention-sink-like);
* ``sliding_window``: the last ``index_topk`` positions, c + j - k + 1 .. c + j (local attention).

Valid entries come first and the row is padded with -1, as vLLM's indexer leaves it: FLASH_ATTN_MLA_SPARSE
reads the first ``valid_count`` entries of a row (``seqused_k``), so an interior -1 would hide keys.

The reference (``sparse_mla_attention``) is exact float32 attention of each query over exactly its selected
latent rows, in the absorbed form (scores ``(q_nope W_UK) . kv_c + q_pe . k_pe``, output ``W_UV (P kv_c)``),
which is the dense MLA math restricted to the selection. The ``fp8_ds_mla`` cache entry (656 bytes:
512 fp8-e4m3 NoPE values, 4 float32 scales one per 128 values, 64 bf16 RoPE values) is quantised and read
back here too (``ds_mla_quantize`` / ``ds_mla_dequantize``), so the reference reads what the kernel reads.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import torch

from attnbench.spec.contract import TOPK_PATTERNS  # noqa: F401 - declared torch-free there, used here and re-exported
from attnbench.spec.metrics import SparseSelection
from attnbench.spec.shapes import DEEPSEEK_V32, FP8_DS_MLA, IndexerSpec, mha_path_problem  # noqa: F401 - re-exported
from grammar import BatchRequest

if TYPE_CHECKING:
    from attnbench.measure.buffers import MLABuffers
    from attnbench.spec.shapes import MLAShape
    from attnbench.spec.workload import BatchLayout



# fp8_ds_mla: one latent cache entry of DeepSeek-V3.2 in FlashMLA's "FP8 with scale" format (vLLM 0.26.0's
# flashmla_sparse.py docstring), for kv_lora_rank 512 and rope 64 only
DS_MLA_NOPE = 512
DS_MLA_ROPE = 64
DS_MLA_TILE = 128  # NoPE values per float32 scale
DS_MLA_ENTRY_BYTES = DS_MLA_NOPE + 4 * (DS_MLA_NOPE // DS_MLA_TILE) + 2 * DS_MLA_ROPE  # 656
FP8_E4M3_MAX = 448.0
_FLT_MIN = 1.1754944e-38  # vLLM floors a tile's scale to FLT_MIN (an all-zero tile)


class PatternError(ValueError):
    """An unknown pattern, or indices that break the rules (outside the context, acausal, padding inside)."""


def check_pattern(name: str) -> str:
    if name not in TOPK_PATTERNS:
        raise PatternError(f"unknown top-k pattern {name!r} (valid: {', '.join(TOPK_PATTERNS)})")
    return name


def candidate_counts(q_len: int, kv_len: int) -> torch.Tensor:
    """Per query of a request, how many keys it may select under causality: c + j + 1 for context c."""
    context = kv_len - q_len
    return torch.arange(context + 1, kv_len + 1, dtype=torch.int64)


_RANDOM_CHUNK = 1 << 24  # random-key elements drawn at a time (rows x kv): 64 MB of float32


def request_topk(pattern: str, q_len: int, kv_len: int, topk: int, gen: torch.Generator) -> torch.Tensor:
    """One request's indices [q_len, topk] int32 (CPU): request-local key positions, -1 padding at the end."""
    check_pattern(pattern)
    n = candidate_counts(q_len, kv_len).unsqueeze(1)  # [q, 1]
    slots = torch.arange(topk, dtype=torch.int64).unsqueeze(0)  # [1, k]
    if pattern == "prefix":
        idx = slots.expand(q_len, topk)
    elif pattern == "sliding_window":
        idx = (n - topk).clamp(min=0) + slots
    else:
        # top-k of seeded random keys over the causal candidates: a uniform random subset in random order;
        # a row with fewer than k candidates keeps all of them, its non-candidates (-inf) sort last
        rows = max(1, _RANDOM_CHUNK // max(1, kv_len))
        parts = []
        cols = torch.arange(kv_len, dtype=torch.int64).unsqueeze(0)
        for start in range(0, q_len, rows):
            stop = min(q_len, start + rows)
            keys = torch.rand((stop - start, kv_len), generator=gen)
            keys = keys.masked_fill(cols >= n[start:stop], float("-inf"))
            k = min(topk, kv_len)
            _, picked = keys.topk(k, dim=1)
            if k < topk:
                picked = torch.cat([picked, picked.new_zeros((stop - start, topk - k))], dim=1)
            parts.append(picked)
        idx = torch.cat(parts) if parts else torch.empty((0, topk), dtype=torch.int64)
    idx = torch.where(slots < n, idx, torch.full_like(idx, -1))
    return idx.to(torch.int32)


def batch_topk(pattern: str, requests: Sequence[BatchRequest], topk: int, seed: int) -> torch.Tensor:
    """The whole step's indices [num_tokens, topk] int32 (CPU), requests in the order given (execution order),
    each request seeded on its own: its indices do not depend on the other requests of the batch."""
    rows = []
    for i, r in enumerate(requests):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        rows.append(request_topk(pattern, r.q_len, r.kv_len, topk, gen))
    return torch.cat(rows) if rows else torch.empty((0, topk), dtype=torch.int32)


def validity_problem(indices: torch.Tensor, requests: Sequence[BatchRequest]) -> str | None:
    """None if every row is what vLLM's indexer could write (module doc), else what is wrong first."""
    start = 0
    for i, r in enumerate(requests):
        rows = indices[start:start + r.q_len].long().cpu()
        start += r.q_len
        n = candidate_counts(r.q_len, r.kv_len).unsqueeze(1)
        valid = rows >= 0
        counts = valid.sum(dim=1, keepdim=True)
        if bool((rows < -1).any()):
            return f"request {i}: an index below -1"
        if bool((valid & (rows >= n)).any()):
            j = int((valid & (rows >= n)).any(dim=1).nonzero()[0])
            return f"request {i} query {j}: an index past its causal bound {int(n[j]) - 1}"
        slots = torch.arange(rows.shape[1]).unsqueeze(0)
        if bool((valid != (slots < counts)).any()):
            return f"request {i}: a -1 before a valid index (padding must be at the end)"
        if bool((counts != n.clamp(max=rows.shape[1])).any()):
            return f"request {i}: a query selects fewer than min(top-k, its candidates) keys"
        ordered = rows.masked_fill(~valid, -1).sort(dim=1).values
        if bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any()):
            return f"request {i}: a key selected twice by one query"
    if start != indices.shape[0]:
        return f"{indices.shape[0]} index rows for {start} tokens"
    return None


def selections(indices: torch.Tensor, requests: Sequence[BatchRequest], entry_bytes: int) -> list[SparseSelection]:
    """Per request, what its queries select (the work model's input): pairs and distinct latent rows."""
    out, start = [], 0
    for r in requests:
        rows = indices[start:start + r.q_len]
        start += r.q_len
        valid = rows[rows >= 0]
        out.append(SparseSelection(int(valid.numel()), int(valid.unique().numel()), int(indices.shape[1]),
                                   entry_bytes))
    return out


def entry_bytes(kv_cache_dtype: str, head_dim: int, elem_bytes: int) -> int:
    """Bytes of one latent cache entry as stored: 656 for fp8_ds_mla, else head_dim values of the cache dtype."""
    return DS_MLA_ENTRY_BYTES if kv_cache_dtype == FP8_DS_MLA else head_dim * elem_bytes


# ------------------------------------------------------------------ fp8_ds_mla

def ds_mla_quantize(kv_c: torch.Tensor, k_pe: torch.Tensor) -> torch.Tensor:
    """Latents [N, 512] and rope [N, 64] -> fp8_ds_mla entries [N, 656] uint8, as vLLM's cache write makes them:
    per 128-value tile, scale = max(amax / 448, FLT_MIN) and fp8 = e4m3(x / scale); rope kept in bf16."""
    if kv_c.shape[-1] != DS_MLA_NOPE or k_pe.shape[-1] != DS_MLA_ROPE:
        raise ValueError(f"fp8_ds_mla needs kv_lora_rank {DS_MLA_NOPE} and rope {DS_MLA_ROPE}, got "
                         f"{kv_c.shape[-1]} and {k_pe.shape[-1]}")
    n = kv_c.shape[0]
    tiles = kv_c.float().view(n, -1, DS_MLA_TILE)
    scale = (tiles.abs().amax(dim=-1, keepdim=True) / FP8_E4M3_MAX).clamp(min=_FLT_MIN)
    nope = (tiles / scale).to(torch.float8_e4m3fn).view(torch.uint8).view(n, DS_MLA_NOPE)
    scales = scale.view(n, -1).contiguous().view(torch.uint8)
    rope = k_pe.to(torch.bfloat16).contiguous().view(torch.uint8)
    return torch.cat([nope, scales, rope], dim=-1)


def ds_mla_dequantize(entries: torch.Tensor) -> torch.Tensor:
    """fp8_ds_mla entries [..., 656] (uint8) -> the latent they hold [..., 576] in float32."""
    lead = entries.shape[:-1]
    flat = entries.reshape(-1, DS_MLA_ENTRY_BYTES).view(torch.uint8)
    nope = flat[:, :DS_MLA_NOPE].contiguous().view(torch.float8_e4m3fn).float()
    scales = flat[:, DS_MLA_NOPE:DS_MLA_NOPE + 16].contiguous().view(torch.float32)
    rope = flat[:, DS_MLA_NOPE + 16:].contiguous().view(torch.bfloat16).float()
    nope = (nope.view(-1, DS_MLA_NOPE // DS_MLA_TILE, DS_MLA_TILE) * scales.unsqueeze(-1)).view(-1, DS_MLA_NOPE)
    return torch.cat([nope, rope], dim=-1).view(*lead, DS_MLA_NOPE + DS_MLA_ROPE)


def latent_rows(entries: torch.Tensor) -> torch.Tensor:
    """Cache entries as float32 latents: a 656-byte fp8_ds_mla entry is decoded, a plain one converted."""
    if entries.dtype == torch.uint8 and entries.shape[-1] == DS_MLA_ENTRY_BYTES:
        return ds_mla_dequantize(entries)
    return entries.float()


def ds_mla_cache_problem(stored: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor) -> str | None:
    """Whether stored fp8_ds_mla entries [N, 656] hold kv_c / k_pe: rope exactly (bf16), NoPE within e4m3's
    rounding (half a unit in the last place: 2^-4 relative, plus the subnormal step of its tile's scale)."""
    got = ds_mla_dequantize(stored)
    if not torch.equal(got[:, DS_MLA_NOPE:], k_pe.float()):
        bad = (got[:, DS_MLA_NOPE:] != k_pe.float()).any(dim=1)
        return f"{int(bad.sum())} of {bad.numel()} new rope entries not at their slots"
    x = kv_c.float().view(-1, DS_MLA_NOPE // DS_MLA_TILE, DS_MLA_TILE)
    scale = (x.abs().amax(dim=-1, keepdim=True) / FP8_E4M3_MAX).clamp(min=_FLT_MIN)
    err = (got[:, :DS_MLA_NOPE].view_as(x) - x).abs()
    bad = (err > x.abs() * 2.0 ** -4 + scale * 2.0 ** -9 * 1.01).flatten(1).any(dim=1)
    if bool(bad.any()):
        return f"{int(bad.sum())} of {bad.numel()} new latent entries not at their slots (or not fp8_ds_mla)"
    return None


# ------------------------------------------------------------------ the reference

_GATHER_CHUNK = 1 << 26  # gathered latent elements per chunk of queries (256 MB of float32)


def sparse_mla_attention(query: torch.Tensor, latent_cache: torch.Tensor, kv_b_proj_weight: torch.Tensor,
                         block_table: torch.Tensor, query_lens: Sequence[int], kv_lens: Sequence[int],
                         topk_indices: torch.Tensor, kv_lora_rank: int, qk_nope_head_dim: int, v_head_dim: int,
                         scale: float, new_latents: torch.Tensor | None = None,
                         new_from_inputs: Sequence[bool] | None = None) -> torch.Tensor:
    """Exact attention of every query over exactly its selected tokens; float32 [T, H, v].

    ``query`` [T, H, nope + rope]; ``latent_cache`` [NB, BS, rank + rope] (any float dtype) or fp8_ds_mla
    [NB, BS, 656] uint8; ``kv_b_proj_weight`` [H * (nope + v), rank]; ``topk_indices`` [T, k] request-local
    positions, -1 = none. A row with no valid index would be 0/0: it is refused, as is an index outside its
    request's context. ``new_from_inputs[i]``: request i's new tokens are read from ``new_latents`` [T, rank +
    rope] (the layer inputs, as forward_mha reads them: its dense MHA rows) instead of the cache."""
    from attnbench.measure.oracle import gather_sequence

    heads = query.shape[1]
    w = kv_b_proj_weight.float().view(heads, qk_nope_head_dim + v_head_dim, kv_lora_rank)
    w_uk, w_uv = w[:, :qk_nope_head_dim], w[:, qk_nope_head_dim:]  # [H, nope, rank], [H, v, rank]
    indices = topk_indices.to(query.device).long()
    out = torch.empty(query.shape[0], heads, v_head_dim, dtype=torch.float32, device=query.device)
    start = 0
    for i, (q_len, kv_len) in enumerate(zip(query_lens, kv_lens)):
        latent = latent_rows(gather_sequence(latent_cache, block_table[i], kv_len))  # [kv, rank + rope]
        if new_from_inputs is not None and new_from_inputs[i]:
            assert new_latents is not None
            latent[kv_len - q_len:] = new_latents[start:start + q_len].to(latent.dtype)
        rows = indices[start:start + q_len]
        valid = rows >= 0
        if bool((rows >= kv_len).any()) or bool((~valid).all(dim=1).any()):
            raise PatternError(f"request {i}: top-k indices outside its {kv_len}-token context, or a query "
                               f"with no selected key")
        width = max(1, rows.shape[1] * latent.shape[1])
        step = max(1, _GATHER_CHUNK // width)
        for a in range(0, q_len, step):
            b = min(q_len, a + step)
            q = query[start + a:start + b].float()  # [n, H, nope + rope]
            sel = latent[rows[a:b].clamp(min=0)]  # [n, k, rank + rope]
            kv_c, k_pe = sel[..., :kv_lora_rank], sel[..., kv_lora_rank:]
            q_latent = torch.einsum("nhd,hdr->nhr", q[..., :qk_nope_head_dim], w_uk)
            scores = (torch.einsum("nhr,nkr->nhk", q_latent, kv_c)
                      + torch.einsum("nhe,nke->nhk", q[..., qk_nope_head_dim:], k_pe)) * scale
            scores = scores.masked_fill(~valid[a:b].unsqueeze(1), float("-inf"))
            o_latent = torch.einsum("nhk,nkr->nhr", torch.softmax(scores, dim=-1), kv_c)
            out[start + a:start + b] = torch.einsum("nhr,hvr->nhv", o_latent, w_uv)
        start += q_len
    return out


# ------------------------------------------------------------------ one layer's sparse parts (every adapter's)

def oracle_transient_bytes(requests: Sequence[BatchRequest], num_heads: int, topk: int) -> int:
    """Peak float32 memory of ``sparse_mla_attention``: one chunk of gathered latents (and its scores and
    probabilities), plus the longest request's decoded latent sequence."""
    latent = DS_MLA_NOPE + DS_MLA_ROPE
    longest = max((r.kv_len for r in requests), default=0)
    rows = max(1, _GATHER_CHUNK // max(1, topk * latent))
    return 4 * (_GATHER_CHUNK + 3 * rows * num_heads * topk + longest * latent)


def write_latents(cache: torch.Tensor, slot_mapping: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor) -> None:
    """The new tokens' latents into the cache at their slots, in the cache's own format (fp8_ds_mla or plain)."""
    flat = cache.view(-1, cache.shape[-1])
    if cache.dtype == torch.uint8 and cache.shape[-1] == DS_MLA_ENTRY_BYTES:
        flat.index_copy_(0, slot_mapping, ds_mla_quantize(kv_c, k_pe))
    else:
        flat.index_copy_(0, slot_mapping, torch.cat([kv_c, k_pe], dim=-1).to(cache.dtype))


def fill_ds_mla_(cache: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """An fp8_ds_mla cache [NB, BS, 656] holding the quantised ``plain`` latents [NB, BS, 576]."""
    rank = DS_MLA_NOPE
    flat = plain.reshape(-1, plain.shape[-1])
    step = 1 << 16  # entries quantised at a time (the float32 temporaries stay small)
    out = cache.view(-1, DS_MLA_ENTRY_BYTES)
    for a in range(0, flat.shape[0], step):
        out[a:a + step] = ds_mla_quantize(flat[a:a + step, :rank], flat[a:a + step, rank:])
    return cache


def cache_check(cache: torch.Tensor, slot_mapping: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor):
    """After a step: whether every new token's latent sits at its slot (exact for a plain cache, within fp8's
    rounding for fp8_ds_mla). Returns a callable giving None or the problem."""
    def check() -> str | None:
        flat = cache.reshape(-1, cache.shape[-1]).index_select(0, slot_mapping)
        if cache.dtype == torch.uint8 and cache.shape[-1] == DS_MLA_ENTRY_BYTES:
            return ds_mla_cache_problem(flat, kv_c, k_pe)
        bad = (flat != torch.cat([kv_c, k_pe], dim=-1).to(flat.dtype)).any(dim=1)
        return f"{int(bad.sum())} of {bad.numel()} new latent entries not at their slots" if bool(bad.any()) else None
    return check


def make_buffers(layout: "BatchLayout", shape: "MLAShape", device: torch.device, seed: int, kv_fill: str,
                 cache: torch.Tensor | None = None) -> "MLABuffers":
    """One layer's MLA buffers (buffers.make_mla_buffers, the same seeded data) in ``cache``: an fp8_ds_mla cache
    gets the quantised form of the latents a plain cache would have held."""
    from attnbench.measure import buffers

    # the latents in the model dtype first (fp8_ds_mla is this module's format, not layers' per-tensor fp8)
    plain_shape = dataclasses.replace(shape, kv_cache_dtype="auto")
    if cache is not None and cache.dtype == torch.uint8 and cache.shape[-1] == DS_MLA_ENTRY_BYTES:
        buf = buffers.make_mla_buffers(layout, plain_shape, device, seed, kv_fill=kv_fill)
        buf.kv_cache = fill_ds_mla_(cache, buf.kv_cache)
        return buf
    return buffers.make_mla_buffers(layout, plain_shape, device, seed, kv_cache=cache, kv_fill=kv_fill)


def make_oracle(buf: "MLABuffers", layout: "BatchLayout", shape: "MLAShape", kv_b_proj_weight: torch.Tensor,
                indices: torch.Tensor, mla_paths: Sequence[str] | None = None):
    """The reference of one layer: exact attention over exactly ``indices`` on the cache's current contents; rows
    on the dense MHA path (``mla_paths`` "prefill") read their new tokens from the layer inputs as forward_mha does
    (for an fp8_ds_mla cache those differ from the stored entries by fp8's rounding)."""
    from attnbench.measure import buffers

    new, from_inputs = buffers.prefill_rows_from_inputs(buf, mla_paths)

    def oracle() -> torch.Tensor:
        out = sparse_mla_attention(buf.q, buf.kv_cache, kv_b_proj_weight, layout.block_table, layout.query_lens,
                                   layout.kv_lens, indices, shape.kv_lora_rank, shape.qk_nope_head_dim,
                                   shape.v_head_dim, buffers.mla_scale(shape), new, from_inputs)
        return out.reshape(out.shape[0], -1)
    return oracle
