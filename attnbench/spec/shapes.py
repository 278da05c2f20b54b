"""Model shapes: the dimensions one attention layer is benchmarked at."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

from attnbench.spec import models
from grammar import BatchRequest

DTYPES = {"bfloat16": 2, "float16": 2, "float32": 4}

# KV-cache dtypes as vLLM's CacheConfig spells them. "auto" stores the model dtype; the fp8 ones store one byte
# per element with one per-tensor scale per layer for K and one for V (MLA: one for the latent), which the
# layer owns (_k_scale, _v_scale). "fp8" is e4m3 on CUDA.
# FP8_DS_MLA ("fp8_ds_mla") is DeepSeek-V3.2's sparse-MLA entry (512 fp8 + 4 float32 scales + 64 bf16 rope: 656 bytes,
# attnbench/measure/sparse_mla.py), FLASHMLA_SPARSE only; its element size here is the NoPE part's.
# The per-token-head ones (TRITON_ATTN, standard attention only) store each (token, KV head) entry of K and of V
# as its quantised data (bits per value below; int4 packs two per byte) followed inline by one float32 scale
# (attnbench/measure/kv_cache.py).
FP8_DS_MLA = "fp8_ds_mla"
PER_TOKEN_HEAD_DATA_BITS = {"int8_per_token_head": 8, "fp8_per_token_head": 8, "int4_per_token_head": 4}
PER_TOKEN_HEAD_SCALE_BYTES = 4
# int4 also rotates each entry (and q, and the output back) with a Hadamard transform
ROTATED_KV_CACHE_DTYPES = ("int4_per_token_head",)
QUANTIZED_KV_CACHE_DTYPES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, FP8_DS_MLA: 1,
                             **{name: 1 for name in PER_TOKEN_HEAD_DATA_BITS}}
KV_CACHE_DTYPES = ("auto", *DTYPES, *QUANTIZED_KV_CACHE_DTYPES)


class ShapeError(ValueError):
    """An impossible or inconsistent shape."""


class _ElementSizes:
    """What a shape's ``dtype`` and ``kv_cache_dtype`` give, the same for both families."""

    dtype: str
    kv_cache_dtype: str

    @property
    def elem_bytes(self) -> int:
        return DTYPES[self.dtype]

    @property
    def kv_quantized(self) -> bool:
        return self.kv_cache_dtype in QUANTIZED_KV_CACHE_DTYPES

    @property
    def kv_elem_bytes(self) -> int:
        """Bytes of one stored KV-cache element (the model dtype's, or one for fp8; a per-(token, head) format's
        storage element, one byte: its entries' sizes are ``kv_entry_bytes``)."""
        return QUANTIZED_KV_CACHE_DTYPES.get(self.kv_cache_dtype, self.elem_bytes)

    def kv_entry_bytes(self, values: int) -> int:
        """Bytes of one stored cache entry of ``values`` values (one token's K or V of one KV head; MLA: one
        token's latent), its inline per-(token, head) scale included."""
        bits = PER_TOKEN_HEAD_DATA_BITS.get(self.kv_cache_dtype)
        if bits is None:
            return values * self.kv_elem_bytes
        return values * bits // 8 + PER_TOKEN_HEAD_SCALE_BYTES


@dataclass(frozen=True)
class AttentionShape(_ElementSizes):
    """Standard (GQA) attention, Llama-3-8B-like defaults."""

    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16
    num_layers: int = 1
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"

    family = "attention"

    @property
    def qk_head_dim(self) -> int:
        return self.head_dim

    @property
    def v_head_dim(self) -> int:
        return self.head_dim

    def validate(self) -> None:
        _positive(self, ("num_q_heads", "num_kv_heads", "head_dim", "block_size", "num_layers"))
        if self.num_q_heads % self.num_kv_heads:
            raise ShapeError(
                f"num_q_heads={self.num_q_heads} is not a multiple of num_kv_heads={self.num_kv_heads} (GQA needs it)"
            )
        _check_dtypes(self)

    def describe(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MLAShape(_ElementSizes):
    """Multi-head latent attention, DeepSeek-V3 defaults (head_dim 576 = 512 latent + 64 rope)."""

    num_q_heads: int = 128
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    block_size: int = 64
    num_layers: int = 1
    dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    num_kv_heads: int = 1  # the latent cache has one head; kept so --num-kv-heads 1 is accepted

    family = "mla"

    @property
    def head_dim(self) -> int:
        """Width of one latent cache entry (what vLLM calls head_size for MLA)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def validate(self) -> None:
        _positive(self, ("num_q_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                         "v_head_dim", "block_size", "num_layers"))
        if self.num_kv_heads != 1:
            raise ShapeError(f"num_kv_heads={self.num_kv_heads}: MLA has exactly one latent KV head")
        _check_dtypes(self)

    def describe(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["head_dim"] = self.head_dim
        return out


Shape = AttentionShape | MLAShape

# Keys a user may set (CLI, YAML `model:` or a sweep) per family.
ATTENTION_KEYS = {f.name for f in fields(AttentionShape)}
MLA_KEYS = {f.name for f in fields(MLAShape)} | {"head_dim"}


def sweepable_keys(family: str) -> set[str]:
    """Integer dimensions of ``family`` a sweep may vary (MLA's head_dim is derived, its KV heads fixed)."""
    cls = AttentionShape if family == "attention" else MLAShape
    keys = {f.name for f in fields(cls) if f.type in (int, "int")}
    return keys - {"num_kv_heads"} if family == "mla" else keys


def make_shape(family: str, overrides: dict[str, Any]) -> Shape:
    """Build and validate the shape of ``family`` from user ``overrides`` (None values ignored): a ``model``
    (``models.lookup``'s reference) gives its dimensions, which the other overrides override."""
    given = {k: v for k, v in overrides.items() if v is not None}
    reference = given.pop("model", None)
    if reference is not None:
        try:
            given = {**models.dimensions(reference, family), **given}
        except models.ModelError as exc:
            raise ShapeError(f"model {exc}") from None
    if family == "attention":
        unknown = set(given) - ATTENTION_KEYS
        if unknown:
            raise ShapeError(f"unknown model key(s) for standard attention: {', '.join(sorted(unknown))}")
        shape: Shape = AttentionShape(**given)
    else:
        head_dim = given.pop("head_dim", None)
        unknown = set(given) - MLA_KEYS
        if unknown:
            raise ShapeError(f"unknown model key(s) for MLA: {', '.join(sorted(unknown))}")
        shape = MLAShape(**given)
        # head_dim is derived for MLA; a given one must agree rather than be dropped silently.
        if head_dim is not None and head_dim != shape.head_dim:
            raise ShapeError(
                f"head_dim={head_dim} disagrees with kv_lora_rank + qk_rope_head_dim = {shape.head_dim} for MLA"
            )
    shape.validate()
    return shape


def with_value(shape: Shape, key: str, value: Any) -> Shape:
    new = replace(shape, **{key: value})
    new.validate()
    return new


def _positive(shape: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(shape, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ShapeError(f"{name}={value!r} must be a positive integer")


def _check_dtypes(shape: Any) -> None:
    if shape.dtype not in DTYPES:
        raise ShapeError(f"dtype={shape.dtype!r} must be one of {', '.join(DTYPES)}")
    if shape.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ShapeError(f"kv_cache_dtype={shape.kv_cache_dtype!r} must be one of {', '.join(KV_CACHE_DTYPES)}")
    if shape.kv_cache_dtype == FP8_DS_MLA and shape.family != "mla":
        raise ShapeError("kv_cache_dtype='fp8_ds_mla' is DeepSeek-V3.2's sparse MLA cache entry: MLA only")
    if shape.kv_cache_dtype in PER_TOKEN_HEAD_DATA_BITS and shape.family != "attention":
        raise ShapeError(f"kv_cache_dtype={shape.kv_cache_dtype!r} quantises per (token, KV head): standard "
                         f"attention only (TRITON_ATTN's), not the MLA latent")
    bits = PER_TOKEN_HEAD_DATA_BITS.get(shape.kv_cache_dtype)
    if bits is not None and shape.head_dim * bits // 8 % PER_TOKEN_HEAD_SCALE_BYTES:
        # vLLM views each entry's scale as a float32 right after the data (TritonAttentionImpl._ensure_scale_caches)
        raise ShapeError(f"kv_cache_dtype={shape.kv_cache_dtype!r} stores a float32 scale right after each entry's "
                         f"data: head_dim={shape.head_dim} gives {shape.head_dim * bits // 8} data bytes, not a "
                         f"multiple of {PER_TOKEN_HEAD_SCALE_BYTES}")
    if shape.kv_cache_dtype == "int4_per_token_head" and shape.head_dim & (shape.head_dim - 1):
        raise ShapeError(f"kv_cache_dtype='int4_per_token_head' rotates each entry with a Hadamard transform: "
                         f"head_dim={shape.head_dim} must be a power of two")
    # an unquantised cache in another float dtype than the model's is a conversion no vLLM backend makes
    if shape.kv_cache_dtype in DTYPES and shape.kv_cache_dtype != shape.dtype:
        raise ShapeError(f"kv_cache_dtype={shape.kv_cache_dtype!r} differs from dtype={shape.dtype!r}: an "
                         f"unquantised cache holds the model dtype ('auto'); quantised: "
                         f"{', '.join(QUANTIZED_KV_CACHE_DTYPES)}")


# ------------------------------------------------------------------ sparse MLA

@dataclass(frozen=True)
class IndexerSpec:
    """The sparse indexer's dimensions, as DeepSeek-V3.2's config.json spells them (``index_*``)."""

    index_topk: int = 2048
    index_n_heads: int = 64
    index_head_dim: int = 128


DEEPSEEK_V32 = IndexerSpec()


def mha_path_problem(requests: Sequence[BatchRequest], topk: int) -> str | None:
    """Why vLLM 0.26.0 would not run this batch's rows through the dense MHA prefill path, or None:
    ``MLAAttention.forward_impl`` takes it for sparse prefill rows only while ``prefill_max_seq_len`` (the
    longest prefill row's KV) is at most ``index_topk``; beyond it every row goes through the sparse MQA path."""
    longest = max((r.kv_len for r in requests), default=0)
    if longest > topk:
        return (f"vLLM 0.26.0 runs sparse prefill rows through dense MHA only while prefill_max_seq_len <= "
                f"index_topk ({topk}); this batch's longest row has {longest} tokens, so it runs the MQA path")
    return None
