"""How a layer's KV cache stores its entries: the model dtype, fp8 with per-tensor scales, or one of
TRITON_ATTN's per-(token, head) quantised formats.

* **Per-tensor fp8** ("fp8" = "fp8_e4m3", "fp8_e5m2"). vLLM allocates raw bytes (uint8) and its kernels read
  them as float8, one element each, times the layer's per-tensor scale (``_k_scale`` for K, ``_v_scale`` for
  V; MLA's latent and rope parts both use ``_k_scale``).
* **Per-(token, head)** ("int8_per_token_head", "fp8_per_token_head", "int4_per_token_head", TRITON_ATTN's in
  vLLM 0.26.0). Each (token, KV head) entry of K and of V is its quantised data followed inline by one float32
  scale, the entry's absmax over the format's range (``get_kv_cache_shape`` pads the head dim by four bytes).
  int4 first rotates the entry with a randomised Hadamard transform (RHT: sign flips, then Hadamard), stores
  two unsigned nibbles per byte (even element low) and hides a 4-bit zero point in the scale's low mantissa
  bits; the kernel rotates q the same way and the output back. The layer's per-tensor scales are 1.0, unused.

The harness fills the context part of a cache the way the backend's quantising write would, and the reference
reads exactly those stored bytes back (``decode``): for int4, dequantised and rotated back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.spec.shapes import FP8_DS_MLA, PER_TOKEN_HEAD_DATA_BITS, PER_TOKEN_HEAD_SCALE_BYTES, Shape
from attnbench.spec.workload import torch_dtype

FP8_ELEMENTS = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_MANTISSA_BITS = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}
_INT4_LEVELS = 15  # unsigned nibbles 0..15
_MIN_SCALE = 1e-6  # vLLM's floor on a per-(token, head) scale (an all-zero entry)
_ENCODE_CHUNK_VALUES = 1 << 24  # values encoded at a time
# how far a stored per-entry scale may sit from the one the new values give: float32 division for int8 / fp8;
# for int4 also the rotated entry's rounding to the model dtype, which moves its range by ~2^-8
_SCALE_AGREEMENT = {"int8": 1e-5, "fp8": 1e-5, "int4": 2.0 ** -6}


class KVCacheFormat:
    """The stored form of one cache entry. Views passed in and out are ``[..., width]`` of ``storage``
    elements for one (token, head) entry (the MLA latent: one token's row); values are ``[..., head_dim]``."""

    name: str  # kv_cache_dtype as vLLM's CacheConfig spells it
    storage: torch.dtype  # what vLLM allocates
    quantized: bool = True
    per_tensor_scales: bool = True  # the layer's _k_scale / _v_scale apply (calibrated or unit)

    def width(self, head_dim: int) -> int:
        """Stored elements of one entry of ``head_dim`` values (vLLM's padded head dim)."""
        return head_dim

    def elements(self, stored: torch.Tensor) -> torch.Tensor:
        """``stored`` (any view of the cache) as the elements the kernel reads."""
        return stored

    def encode_(self, stored: torch.Tensor, values: torch.Tensor, scale: float) -> None:
        """Write ``values`` into ``stored`` as the backend's quantising cache write would."""
        raise NotImplementedError

    def decode(self, stored: torch.Tensor, scale: float) -> torch.Tensor:
        """The float32 values the kernel computes with."""
        raise NotImplementedError

    def step_bound(self, stored: torch.Tensor, expected: torch.Tensor, scale: float) -> torch.Tensor:
        """Bound on |decode(stored) - expected| (broadcastable to the values) for an entry a correct write
        stored from ``expected``: one quantisation step."""
        raise NotImplementedError


@dataclass(frozen=True)
class ElementFormat(KVCacheFormat):
    """One element per value: the model dtype (exact), or fp8 times the layer's per-tensor scale. ``element`` is
    what the kernel reads; ``storage`` what vLLM allocates (uint8 for fp8, viewed as ``element`` by the backend)."""

    name: str
    element: torch.dtype
    storage: torch.dtype

    @property
    def quantized(self) -> bool:  # type: ignore[override]
        return self.element in _MANTISSA_BITS

    def elements(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.view(self.element) if self.quantized else stored

    def encode_(self, stored: torch.Tensor, values: torch.Tensor, scale: float) -> None:
        """value / scale, saturated to the format's finite range, rounded to nearest even."""
        if not self.quantized:
            stored.copy_(values)
            return
        finite = torch.finfo(self.element).max
        self.elements(stored).copy_((values.float() / scale).clamp_(-finite, finite).to(self.element))

    def decode(self, stored: torch.Tensor, scale: float) -> torch.Tensor:
        """Stored element x scale."""
        values = self.elements(stored).float()
        return values * scale if self.quantized else values

    def rounding(self, scale: float) -> tuple[float, float]:
        """(relative, absolute) bound on |decode(encode(x)) - x| for x inside the format's range: one unit in
        the last place relative, plus the smallest subnormal (times the scale) near zero."""
        if not self.quantized:
            return 0.0, 0.0
        bits = _MANTISSA_BITS[self.element]
        return 2.0 ** -bits, float(torch.finfo(self.element).smallest_normal) * 2.0 ** -bits * scale

    def step_bound(self, stored: torch.Tensor, expected: torch.Tensor, scale: float) -> torch.Tensor:
        rel, absolute = self.rounding(scale)
        return rel * expected.float().abs() + absolute


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """vLLM's integer rounding before the store truncates: half away from zero."""
    return torch.where(x >= 0, x + 0.5, x - 0.5).trunc()


def hadamard_rotation(signs: torch.Tensor) -> torch.Tensor:
    """An RHT as a matrix ``M`` (float32, entries ±1) with ``rotated = x @ M``: diag(signs) times the Sylvester
    Hadamard matrix (``M @ M.T = d I``, so ``x = rotated @ M.T / d``)."""
    d = signs.numel()
    if d & (d - 1):
        raise ValueError(f"the int4 cache's Hadamard rotation needs a power-of-two head_dim, got {d}")
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return signs.float().cpu().unsqueeze(1) * h


def harness_rotation(head_dim: int) -> torch.Tensor:
    """A seeded RHT the harness owns (the REFERENCE's cache write); a vLLM backend's cache uses vLLM's own
    (``adapters.vllm_attention.vllm_rotation``)."""
    gen = torch.Generator().manual_seed(0x5EED)
    return hadamard_rotation(torch.randint(0, 2, (head_dim,), generator=gen).float() * 2 - 1)


@dataclass(frozen=True, eq=False)
class PerTokenHeadFormat(KVCacheFormat):
    """[data | float32 scale] per (token, head) entry. ``code``: "int8", "fp8" (e4m3) or "int4" (RHT, packed
    nibbles, zero point in the scale's low 4 mantissa bits); ``rotation`` is int4's RHT as a ±1 matrix ``M``
    (rotated = x @ M, M @ M.T = head_dim x I)."""

    name: str
    storage: torch.dtype
    code: str
    rotation: torch.Tensor | None = None
    per_tensor_scales = False  # vLLM sets the layer's to 1.0 and never reads them

    def data_width(self, head_dim: int) -> int:
        return head_dim * PER_TOKEN_HEAD_DATA_BITS[self.name] // 8

    def width(self, head_dim: int) -> int:
        return self.data_width(head_dim) + PER_TOKEN_HEAD_SCALE_BYTES

    def _rotation(self, head_dim: int, device: torch.device) -> torch.Tensor:
        if self.rotation is None or tuple(self.rotation.shape) != (head_dim, head_dim):
            raise ValueError(f"kv_cache_dtype={self.name} needs the RHT of head_dim={head_dim}")
        return self.rotation.to(device)

    def _split(self, stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(data bytes, float32 scales [...]) of stored entries (int4's with its zero point in the low bits)."""
        data = stored.shape[-1] - PER_TOKEN_HEAD_SCALE_BYTES
        raw = stored.view(torch.uint8)
        return raw[..., :data], raw[..., data:].contiguous().view(torch.float32).squeeze(-1)

    def entry_scales(self, stored: torch.Tensor) -> torch.Tensor:
        """Each stored entry's scale [...] as the kernel multiplies by it (int4: zero-point bits cleared)."""
        step = self._split(stored)[1]
        return (step.view(torch.int32) & -16).view(torch.float32) if self.code == "int4" else step

    def encode_(self, stored: torch.Tensor, values: torch.Tensor, scale: float) -> None:
        """As vLLM's ``triton_reshape_and_cache_flash_per_token_head_quant`` writes an entry (``scale``, the
        layer's unused per-tensor one, is ignored). In chunks of the leading dimension, so the float32
        temporaries stay bounded (~20 bytes per value) for a whole cache."""
        per_row = max(1, values[0].numel()) if values.dim() > 1 else 1
        step = max(1, _ENCODE_CHUNK_VALUES // per_row)
        for start in range(0, values.shape[0], step):
            self._encode_rows(stored[start:start + step], values[start:start + step])

    @property
    def _limit(self) -> float:
        """int8's and fp8's largest stored magnitude, which an entry's absmax maps to."""
        return 127.0 if self.code == "int8" else float(torch.finfo(torch.float8_e4m3fn).max)

    def _quantised_domain(self, values: torch.Tensor) -> torch.Tensor:
        """The float32 entries the write quantises: the values, or for int4 the values rotated (vLLM rotates in
        float32 and hands the kernel the rotated entry in the model dtype)."""
        x = values.float()
        if self.code == "int4":
            x = (x @ self._rotation(x.shape[-1], x.device)).to(values.dtype).float()
        return x

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        """Each entry's scale [..., 1] for entries ``x`` of the quantised domain: absmax / range, or int4's
        range / 15; floored as vLLM floors it."""
        if self.code == "int4":
            step = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / _INT4_LEVELS
        else:
            step = x.abs().amax(-1, keepdim=True) / self._limit
        return step.clamp_min(_MIN_SCALE)

    def _encode_rows(self, stored: torch.Tensor, values: torch.Tensor) -> None:
        x = self._quantised_domain(values)
        head_dim = x.shape[-1]
        entry = torch.empty(*x.shape[:-1], self.width(head_dim), dtype=torch.uint8, device=x.device)
        step = self._steps(x)
        if self.code == "int4":
            zero = _round_half_away(-x.amin(-1, keepdim=True) / step).clamp(0, _INT4_LEVELS)
            q = _round_half_away(x * (1.0 / step) + zero).clamp(0, _INT4_LEVELS).to(torch.uint8)
            entry[..., :head_dim // 2] = q[..., 0::2] | (q[..., 1::2] << 4)
            bits = (step.view(torch.int32) & -16) | zero.to(torch.int32)
            entry[..., head_dim // 2:] = bits.view(torch.uint8)
        else:
            q = x * (1.0 / step)
            if self.code == "int8":
                data = _round_half_away(q).clamp(-128, 127).to(torch.int8).view(torch.uint8)
            else:
                data = q.clamp(-self._limit, self._limit).to(torch.float8_e4m3fn).view(torch.uint8)
            entry[..., :head_dim] = data
            entry[..., head_dim:] = step.view(torch.uint8)
        stored.copy_(entry.view(stored.dtype))

    def decode(self, stored: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        data, packed = self._split(stored)
        step = self.entry_scales(stored).unsqueeze(-1)
        if self.code == "int4":
            zero = (packed.view(torch.int32) & 0xF).float().unsqueeze(-1)
            q = torch.stack([data & 0xF, data >> 4], dim=-1).flatten(-2).float()
            rotated = (q - zero) * step
            head_dim = rotated.shape[-1]
            return rotated @ self._rotation(head_dim, rotated.device).t() / head_dim
        element = torch.int8 if self.code == "int8" else torch.float8_e4m3fn
        return data.contiguous().view(element).float() * step

    def expected_scales(self, values: torch.Tensor) -> torch.Tensor:
        """The scale [...] a correct write stores for entries ``values``."""
        return self._steps(self._quantised_domain(values)).squeeze(-1)

    def step_bound(self, stored: torch.Tensor, expected: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """One step of the scale ``expected`` itself gives (int8, int4: rounding is half of it; int4's rotation in
        the model dtype adds a few per cent); fp8: one unit in the last place, plus the subnormal step near zero.
        An entry whose stored scale is not that scale gets a negative bound: a write that stored too large a
        scale, with its data quantised to match, still decodes close but is wrong."""
        step = self.expected_scales(expected).unsqueeze(-1)
        agrees = (self.entry_scales(stored).unsqueeze(-1) - step).abs() <= _SCALE_AGREEMENT[self.code] * step
        if self.code == "fp8":
            e4m3 = torch.float8_e4m3fn
            bound = 2.0 ** -3 * expected.float().abs() + float(torch.finfo(e4m3).smallest_normal) * 2.0 ** -3 * step
        else:
            bound = step.expand(*step.shape[:-1], expected.shape[-1])
        return torch.where(agrees, bound, torch.full_like(bound, -1.0))


_PER_TOKEN_HEAD = {"int8_per_token_head": (torch.int8, "int8"), "fp8_per_token_head": (torch.uint8, "fp8"),
                   "int4_per_token_head": (torch.uint8, "int4")}


def cache_format(shape: Shape, rotation: torch.Tensor | None = None) -> KVCacheFormat:
    """The cache format ``shape.kv_cache_dtype`` names ("auto" and unquantised names: the model dtype).
    ``rotation``: int4_per_token_head's RHT (default: the harness's own, ``harness_rotation``)."""
    if shape.kv_cache_dtype == FP8_DS_MLA:  # DeepSeek-V3.2's 656-byte entry: its own format, in sparse_mla.py
        raise ValueError(f"kv_cache_dtype={FP8_DS_MLA} is sparse MLA's entry layout (attnbench/measure/sparse_mla.py), "
                         f"not a per-tensor fp8 cache")
    if shape.kv_cache_dtype in _PER_TOKEN_HEAD:
        storage, code = _PER_TOKEN_HEAD[shape.kv_cache_dtype]
        if code == "int4" and rotation is None:
            rotation = harness_rotation(shape.head_dim)
        return PerTokenHeadFormat(shape.kv_cache_dtype, storage, code, rotation if code == "int4" else None)
    element = FP8_ELEMENTS.get(shape.kv_cache_dtype)
    if element is None:
        model = torch_dtype(shape.dtype)
        return ElementFormat(shape.kv_cache_dtype, model, model)
    return ElementFormat(shape.kv_cache_dtype, element, torch.uint8)


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
