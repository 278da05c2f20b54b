"""Per-layer buffers of a case, shared by every adapter of a family.

An adapter decides how its KV cache is laid out physically (vLLM backends have
their own shapes and stride orders); these helpers fill whatever it allocates with
seeded random data and give the oracle a logical view of the same memory, so the
REFERENCE reads exactly the cache contents the backend read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from attnbench.measure.kv_cache import KVCacheFormat, cache_format, gather_rows
from attnbench.measure.oracle import mla_attention, paged_attention, write_kv
from attnbench.spec.shapes import AttentionShape, MLAShape
from attnbench.spec.workload import BatchLayout, fill_random_, generator, random_tensor, torch_dtype

# (raw cache tensor the backend reads, logical key view, logical value view), views [NB, BS, Hkv, D] of the
# elements the kernel reads (the model dtype, or float8 for a quantised cache)
AttentionCache = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# vLLM's own scale calculation for a quantised cache (the layer's calc_kv_scales on the step's inputs):
# q, k, v (MLA: q, kv_c, k_pe) -> (k_scale, v_scale) as the layer holds them afterwards
Calibrate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[float, float]]


@dataclass
class AttentionBuffers:
    query: torch.Tensor  # [T, Hq, D]
    key: torch.Tensor  # [T, Hkv, D]: the new tokens' keys, written into the cache by the step
    value: torch.Tensor
    kv_cache: torch.Tensor  # the backend's own physical cache tensor
    key_cache: torch.Tensor  # logical view [NB, BS, Hkv, D] of kv_cache, as the kernel's elements
    value_cache: torch.Tensor
    output: torch.Tensor  # [T, Hq, D]
    kv_format: KVCacheFormat
    k_scale: float = 1.0  # the layer's per-tensor scales (1.0 for an unquantised cache)
    v_scale: float = 1.0
    # a quantised cache's context as the model dtype held it before it was stored (key, value), regenerated from
    # the seed on demand: what the accuracy cost of quantising is measured against
    unquantized_context: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None


def plain_attention_cache(layout: BatchLayout, shape: AttentionShape, device: torch.device) -> AttentionCache:
    fmt = cache_format(shape)
    kv = torch.empty(2, layout.num_blocks, layout.block_size, shape.num_kv_heads, fmt.width(shape.head_dim),
                     dtype=fmt.storage, device=device)
    return kv, fmt.elements(kv[0]), fmt.elements(kv[1])


def attention_buffer_bytes(layout: BatchLayout, shape: AttentionShape) -> int:
    e, t = shape.elem_bytes, layout.num_tokens
    cache = 2 * layout.num_blocks * layout.block_size * shape.num_kv_heads * shape.kv_entry_bytes(shape.head_dim)
    return cache + e * (2 * t * shape.num_q_heads * shape.head_dim + 2 * t * shape.num_kv_heads * shape.head_dim)


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
                           allocate_cache: Callable[[], AttentionCache], kv_fill: str = "random",
                           calibrate: Calibrate | None = None, fmt: KVCacheFormat | None = None) -> AttentionBuffers:
    """Seeded buffers of one layer. A cache with per-tensor scales needs ``calibrate``: its scales come from the
    step's own inputs (as vLLM's calc_kv_scales takes them), and the context is stored with them. ``fmt``: the
    cache's format when the backend's own facts complete it (int4's rotation); default ``cache_format(shape)``."""
    gen = generator(device, seed)
    dt = torch_dtype(shape.dtype)
    t = layout.num_tokens
    fmt = fmt or cache_format(shape)
    kv_cache, key_cache, value_cache = allocate_cache()
    # [NB, BS, Hkv, D]: the values; a per-(token, head) format's entries are wider (its inline scale)
    values_shape = (*key_cache.shape[:-1], shape.head_dim)
    # the context values come first in the seeded stream; a quantised cache stores them once its scales are known
    if fmt.quantized:
        key_context = kv_data(kv_fill, values_shape, dt, device, gen)
        value_context = kv_data(kv_fill, values_shape, dt, device, gen)
    else:
        fill_kv_(key_cache, kv_fill, gen)
        fill_kv_(value_cache, kv_fill, gen)
    out = torch.full((t, shape.num_q_heads, shape.head_dim), float("nan"), dtype=dt, device=device)  # poisoned
    buf = AttentionBuffers(
        query=random_tensor((t, shape.num_q_heads, shape.head_dim), dt, device, gen),
        key=kv_data(kv_fill, (t, shape.num_kv_heads, shape.head_dim), dt, device, gen),
        value=kv_data(kv_fill, (t, shape.num_kv_heads, shape.head_dim), dt, device, gen),
        kv_cache=kv_cache, key_cache=key_cache, value_cache=value_cache, output=out, kv_format=fmt)
    if fmt.quantized:
        if fmt.per_tensor_scales:
            if calibrate is None:
                raise ValueError(f"kv_cache_dtype={fmt.name} needs the layer's scales (calibrate)")
            buf.k_scale, buf.v_scale = calibrate(buf.query, buf.key, buf.value)
        fmt.encode_(key_cache, key_context, buf.k_scale)
        fmt.encode_(value_cache, value_context, buf.v_scale)

        def unquantized_context() -> tuple[torch.Tensor, torch.Tensor]:
            again = generator(device, seed)  # the same first draws as above
            return (kv_data(kv_fill, values_shape, dt, device, again),
                    kv_data(kv_fill, values_shape, dt, device, again))
        buf.unquantized_context = unquantized_context
    return buf


def attention_oracle(buf: AttentionBuffers, layout: BatchLayout, scale: float) -> Callable[[], torch.Tensor]:
    def oracle() -> torch.Tensor:
        return paged_attention(buf.query, buf.key_cache, buf.value_cache, layout.block_table,
                               layout.query_lens, layout.kv_lens, scale, buf.k_scale, buf.v_scale, buf.kv_format)
    return oracle


def unquantized_attention_oracle(buf: AttentionBuffers, layout: BatchLayout, scale: float
                                 ) -> Callable[[], torch.Tensor] | None:
    """Exact attention over the K/V a quantised cache was made from (context and new tokens in the model dtype):
    the backend's output against it is the accuracy cost of the quantised cache. None for an unquantised one."""
    if buf.unquantized_context is None:
        return None
    context = buf.unquantized_context

    def oracle() -> torch.Tensor:
        key, value = context()
        write_kv(key, layout.slot_mapping, buf.key)
        write_kv(value, layout.slot_mapping, buf.value)
        return paged_attention(buf.query, key, value, layout.block_table, layout.query_lens, layout.kv_lens, scale)
    return oracle


def stored_mismatch(fmt: KVCacheFormat, stored: torch.Tensor, new: torch.Tensor, scale: float) -> torch.Tensor:
    """Per row of ``stored`` (the cache at the new tokens' slots): True where it is not ``new`` as the cache
    write stores it: exactly, for the model dtype; within one quantisation step, for a quantised cache."""
    if not fmt.quantized:
        return (stored != new).flatten(1).any(dim=1)
    error = (fmt.decode(stored, scale) - new.float()).abs()
    return (error > fmt.step_bound(stored, new, scale)).flatten(1).any(dim=1)


def attention_cache_check(buf: AttentionBuffers, layout: BatchLayout) -> Callable[[], str | None]:
    """After a step: every new token's K/V must sit at its slot, as the cache write stores it."""
    def check() -> str | None:
        for name, cache, new, scale in (("key", buf.key_cache, buf.key, buf.k_scale),
                                        ("value", buf.value_cache, buf.value, buf.v_scale)):
            flat = cache.reshape(-1, *cache.shape[2:])
            bad = stored_mismatch(buf.kv_format, gather_rows(flat, layout.slot_mapping), new, scale)
            if bool(bad.any()):
                return f"{int(bad.sum())} of {bad.numel()} new {name} entries not at their slots"
        return None
    return check


@dataclass
class MLABuffers:
    q: torch.Tensor  # [T, H, nope + rope]: the layer's query before absorption
    kv_c: torch.Tensor  # [T, kv_lora_rank]: new tokens' normalised latent
    k_pe: torch.Tensor  # [T, rope]: new tokens' rotary key part
    kv_cache: torch.Tensor  # the backend's latent cache [NB, BS, rank + rope], as the kernel's elements
    output: torch.Tensor  # [T, H * v_head_dim]
    kv_format: KVCacheFormat
    kv_scale: float = 1.0  # the layer's _k_scale: latent and rope parts of a quantised cache share it
    unquantized_context: Callable[[], torch.Tensor] | None = None  # see AttentionBuffers


def mla_buffer_bytes(layout: BatchLayout, shape: MLAShape) -> int:
    e, c, t = shape.elem_bytes, shape.kv_elem_bytes, layout.num_tokens
    cache = layout.num_blocks * layout.block_size * shape.head_dim
    return c * cache + e * (t * shape.num_q_heads * (shape.qk_head_dim + shape.v_head_dim) + t * shape.head_dim)


def make_kv_b_proj_weight(shape: MLAShape, device: torch.device, seed: int) -> torch.Tensor:
    """A seeded kv_b_proj weight [H * (nope + v), rank], scaled so up-projected K/V have unit variance."""
    gen = generator(device, seed)
    rows = shape.num_q_heads * (shape.qk_nope_head_dim + shape.v_head_dim)
    return random_tensor((rows, shape.kv_lora_rank), torch_dtype(shape.dtype), device, gen,
                         scale=shape.kv_lora_rank ** -0.5)


def make_mla_buffers(layout: BatchLayout, shape: MLAShape, device: torch.device, seed: int,
                     kv_cache: torch.Tensor | None = None, kv_fill: str = "random",
                     calibrate: Calibrate | None = None) -> MLABuffers:
    """Seeded buffers of one MLA layer; ``kv_cache`` is the backend's (stored) latent cache, or a plain one.
    A quantised cache needs ``calibrate`` (see make_attention_buffers); its first scale is the latent's."""
    gen = generator(device, seed)
    dt = torch_dtype(shape.dtype)
    t = layout.num_tokens
    fmt = cache_format(shape)
    if kv_cache is None:
        kv_cache = torch.empty(layout.num_blocks, layout.block_size, shape.head_dim, dtype=fmt.storage,
                               device=device)
    kv_cache = fmt.elements(kv_cache)
    if fmt.quantized:
        context = kv_data(kv_fill, tuple(kv_cache.shape), dt, device, gen)
    else:
        fill_kv_(kv_cache, kv_fill, gen)
    out = torch.full((t, shape.num_q_heads * shape.v_head_dim), float("nan"), dtype=dt, device=device)
    buf = MLABuffers(
        q=random_tensor((t, shape.num_q_heads, shape.qk_head_dim), dt, device, gen),
        kv_c=kv_data(kv_fill, (t, shape.kv_lora_rank), dt, device, gen),
        k_pe=kv_data(kv_fill, (t, shape.qk_rope_head_dim), dt, device, gen),
        kv_cache=kv_cache, output=out, kv_format=fmt)
    if fmt.quantized:
        if calibrate is None:
            raise ValueError(f"kv_cache_dtype={fmt.name} needs the layer's scale (calibrate)")
        buf.kv_scale, _ = calibrate(buf.q, buf.kv_c, buf.k_pe)
        fmt.encode_(kv_cache, context, buf.kv_scale)

        def unquantized_context() -> torch.Tensor:
            return kv_data(kv_fill, tuple(kv_cache.shape), dt, device, generator(device, seed))
        buf.unquantized_context = unquantized_context
    return buf


def mla_scale(shape: MLAShape) -> float:
    return shape.qk_head_dim ** -0.5


def prefill_rows_from_inputs(buf: MLABuffers, mla_paths: Sequence[str] | None
                             ) -> tuple[torch.Tensor | None, list[bool] | None]:
    """(the new tokens' latents [T, rank + rope], per request whether it reads them from there): requests on the
    prefill path (forward_mha) take their new tokens from the layer inputs, not the cache. (None, None) when no
    request does."""
    if not mla_paths or "prefill" not in mla_paths:
        return None, None
    return torch.cat([buf.kv_c, buf.k_pe], dim=-1), [p == "prefill" for p in mla_paths]


def mla_oracle(buf: MLABuffers, layout: BatchLayout, shape: MLAShape, kv_b_proj_weight: torch.Tensor,
               mla_paths: list[str] | None = None) -> Callable[[], torch.Tensor]:
    """The REFERENCE of one MLA layer over exactly what the kernels read: the latent cache, except that rows on
    the prefill path (``mla_paths``) read their new tokens from the layer inputs as vLLM's forward_mha does
    (for a quantised cache those differ from the stored values by fp8's rounding)."""
    # for a cache in the model dtype the stored new tokens are the inputs: nothing to substitute
    new, from_inputs = prefill_rows_from_inputs(buf, mla_paths) if buf.kv_format.quantized else (None, None)

    def oracle() -> torch.Tensor:
        out = mla_attention(buf.q, buf.kv_cache, kv_b_proj_weight, layout.block_table, layout.query_lens,
                            layout.kv_lens, shape.kv_lora_rank, shape.qk_nope_head_dim,
                            shape.v_head_dim, mla_scale(shape), buf.kv_scale, new, from_inputs)
        return out.reshape(out.shape[0], -1)
    return oracle


def unquantized_mla_oracle(buf: MLABuffers, layout: BatchLayout, shape: MLAShape, kv_b_proj_weight: torch.Tensor
                           ) -> Callable[[], torch.Tensor] | None:
    """MLA's ``unquantized_attention_oracle``."""
    if buf.unquantized_context is None:
        return None
    context = buf.unquantized_context

    def oracle() -> torch.Tensor:
        latent = context()
        write_kv(latent, layout.slot_mapping, torch.cat([buf.kv_c, buf.k_pe], dim=-1))
        out = mla_attention(buf.q, latent, kv_b_proj_weight, layout.block_table, layout.query_lens, layout.kv_lens,
                            shape.kv_lora_rank, shape.qk_nope_head_dim, shape.v_head_dim, mla_scale(shape))
        return out.reshape(out.shape[0], -1)
    return oracle


def mla_cache_check(buf: MLABuffers, layout: BatchLayout) -> Callable[[], str | None]:
    def check() -> str | None:
        flat = buf.kv_cache.reshape(-1, buf.kv_cache.shape[-1])
        new = torch.cat([buf.kv_c, buf.k_pe], dim=-1)
        bad = stored_mismatch(buf.kv_format, gather_rows(flat, layout.slot_mapping), new, buf.kv_scale)
        if bool(bad.any()):
            return f"{int(bad.sum())} of {bad.numel()} new latent entries not at their slots"
        return None
    return check


def oracle_transient_bytes(layout: BatchLayout, num_heads: int, head_width: int) -> int:
    """Peak float32 memory of the oracle for its largest request: scores + probabilities + gathered K/V."""
    return max(4 * (2 * num_heads * r.q_len * r.kv_len + 2 * r.kv_len * num_heads * head_width)
               for r in layout.requests)


def reference_output_bytes(num_tokens: int, num_heads: int, head_width: int) -> int:
    """The REFERENCE output a case keeps from its first check to the check after timing: float32 [T, H, width]."""
    return 4 * num_tokens * num_heads * head_width


def mla_step_transient_bytes(layout: BatchLayout, shape: MLAShape, paths: list[str], workspace_tokens: int) -> int:
    """Intermediates vLLM's MLA step allocates beyond the layer buffers. Decode rows: absorbed q and the latent output
    (bf16 + fp32 split-KV partials, measured order of magnitude). Prefill rows, as vLLM 0.26.0's forward_mha holds
    them at once: for the new tokens kv_b_proj's output [T, H, nope + v], k = [k_nope, k_pe] [T, H, qk] and the
    attention's output [T, H, v] (FlashAttention 3 and 4 take v unpadded); for a context, the same up-projection
    of one chunk of at most ``workspace_tokens`` cached tokens (two chunks' alive while the next allocates) and
    up to three outputs over the rows' tokens (the chunk's, the running one and the merge's). At 256q1k and 128
    heads the new tokens' kv_b_proj output alone is 16 GiB."""
    h, e = shape.num_q_heads, shape.elem_bytes
    nope, qk, v = shape.qk_nope_head_dim, shape.qk_head_dim, shape.v_head_dim
    rows = list(zip(layout.requests, paths))
    decode = sum(r.q_len for r, p in rows if p == "decode") * h * shape.kv_lora_rank * (2 + 2 + 4)
    prefill = [r for r, p in rows if p != "decode"]
    new = sum(r.q_len for r in prefill)
    context = sum(r.kv_len - r.q_len for r in prefill)
    with_context = sum(r.q_len for r in prefill if r.kv_len > r.q_len)
    chunk = min(context, max(1, workspace_tokens))
    several = context > chunk
    chunks = chunk * (nope + v + qk) * (2 if several else 1) + with_context * v * (3 if several else 1)
    return decode + e * h * (new * (nope + v + qk + v) + (chunks if context else 0))


# The first call's output is kept for the exact comparison with the timed output up to this size (every decode
# case of the shipped studies but the largest reorder_threshold batches; not the largest prefills).
FIRST_OUTPUT_KEPT_BYTES = 256 * 2**20


def after_timing_bytes(output_bytes: int) -> int:
    """What the checks after timing hold beyond the buffers: the timed output's copy (one more call follows), the
    first call's output where it is kept, and the comparison's float32 working rows (in chunks of at most 64 MiB)."""
    return output_bytes + min(output_bytes, FIRST_OUTPUT_KEPT_BYTES) + 64 * 2**20
