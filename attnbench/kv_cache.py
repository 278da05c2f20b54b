"""How a layer's KV cache stores its elements: the model dtype, or fp8 with per-tensor scales.

vLLM allocates a quantised cache as raw bytes (uint8) and its kernels read them as
float8_e4m3fn ("fp8", "fp8_e4m3") or float8_e5m2 ("fp8_e5m2"), one element each, times the
layer's per-tensor scale (``_k_scale`` for K, ``_v_scale`` for V; MLA's latent and rope
parts both use ``_k_scale``). The harness fills the context part of such a cache the way
vLLM's quantising cache write would (value / scale, saturated to the format's finite range,
rounded to nearest), and the reference reads exactly those stored bytes back, dequantised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.shapes import Shape
from attnbench.workload import torch_dtype

FP8_ELEMENTS = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
SPARSE_ONLY = "fp8_ds_mla"  # DeepSeek-V3.2's 656-byte entry: its own format, stored by sparse_mla.py
_MANTISSA_BITS = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}


@dataclass(frozen=True)
class KVCacheFormat:
    """The stored form of one cache element. ``element`` is what the kernel reads; ``storage`` what vLLM
    allocates (uint8 for fp8, viewed as ``element`` by the backend)."""

    name: str  # kv_cache_dtype as vLLM's CacheConfig spells it
    element: torch.dtype
    storage: torch.dtype

    @property
    def quantized(self) -> bool:
        return self.element in _MANTISSA_BITS

    def elements(self, stored: torch.Tensor) -> torch.Tensor:
        """``stored`` (any view of the cache) as the elements the kernel reads."""
        return stored.view(self.element) if self.quantized else stored

    def encode_(self, stored: torch.Tensor, values: torch.Tensor, scale: float) -> None:
        """Write ``values`` into ``stored`` as the backend's cache write would: value / scale, saturated, RNE."""
        if not self.quantized:
            stored.copy_(values)
            return
        finite = torch.finfo(self.element).max
        self.elements(stored).copy_((values.float() / scale).clamp_(-finite, finite).to(self.element))

    def decode(self, stored: torch.Tensor, scale: float) -> torch.Tensor:
        """The float32 values the kernel computes with: stored element x scale."""
        values = self.elements(stored).float()
        return values * scale if self.quantized else values

    def rounding(self, scale: float) -> tuple[float, float]:
        """(relative, absolute) bound on |decode(encode(x)) - x| for x inside the format's range: one unit in
        the last place relative, plus the smallest subnormal (times the scale) near zero."""
        if not self.quantized:
            return 0.0, 0.0
        bits = _MANTISSA_BITS[self.element]
        return 2.0 ** -bits, float(torch.finfo(self.element).smallest_normal) * 2.0 ** -bits * scale


def cache_format(shape: Shape) -> KVCacheFormat:
    """The cache format ``shape.kv_cache_dtype`` names ("auto" and unquantised names: the model dtype)."""
    if shape.kv_cache_dtype == SPARSE_ONLY:
        raise ValueError(f"kv_cache_dtype={SPARSE_ONLY} is sparse MLA's entry layout (attnbench/sparse_mla.py), "
                         f"not a per-tensor fp8 cache")
    element = FP8_ELEMENTS.get(shape.kv_cache_dtype)
    if element is None:
        model = torch_dtype(shape.dtype)
        return KVCacheFormat(shape.kv_cache_dtype, model, model)
    return KVCacheFormat(shape.kv_cache_dtype, element, torch.uint8)


def gather_rows(cache: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``cache.index_select(0, index)`` for any element type (float8 has no index kernels: gather its bytes)."""
    if cache.dtype in _MANTISSA_BITS:
        return cache.view(torch.uint8).index_select(0, index).view(cache.dtype)
    return cache.index_select(0, index)


def write_stored(fmt: KVCacheFormat, cache: torch.Tensor, slot_mapping: torch.Tensor, new: torch.Tensor,
                 scale: float) -> None:
    """Scatter new entries into a [num_blocks, block_size, ...] cache at their slots, stored as ``fmt`` stores them
    (the REFERENCE's and the test fakes' cache write; vLLM backends use their own)."""
    flat = cache.view(-1, *cache.shape[2:])
    stored = torch.empty_like(flat[:new.shape[0]])
    fmt.encode_(stored, new, scale)
    raw = (lambda t: t.view(torch.uint8)) if fmt.quantized else (lambda t: t)
    raw(flat).index_copy_(0, slot_mapping, raw(stored))
