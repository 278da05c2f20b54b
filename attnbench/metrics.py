"""The work model: exact FLOPs and compulsory bytes of one attention call.

Everything derives from the parsed requests and the shape, per phase (prefill,
extend, decode), so a mixed batch reports where its time should go. Pairs are exact
causal bottom-right (query j of a request with context c attends c + j + 1 keys):
q (2s - q + 1) / 2 per request. A phase's bound is whichever floor (FLOPs over peak
FLOP/s, bytes over peak bandwidth) is larger.

Compulsory bytes are the timed step's real inputs and outputs, each counted once;
intermediates the kernels make for themselves are not.

* Standard attention: Q, K/V once per KV head (whole pages, since the paged cache is
  read in blocks), the new K/V read from the layer and written into the cache, and O.
  FLOPs 2·Hq·(d_qk + d_v)·pairs.
* MLA (vLLM's ``MLAAttention`` forward): per request, activations only — q at
  ``qk_head_dim`` (nope + rope, 192) per head, the new tokens' kv_c + k_pe (576 wide)
  read from the layer and written to the latent cache, the latent cache read once (whole
  pages), and the output at Hq·``v_head_dim``. The decode path reads the request's whole
  kv from the cache (the new tokens were just written there); the prefill path reads only
  the context (kv − q tokens, whole pages) from it and takes the new tokens' latents from
  the layer inputs, which are already counted. The absorbed q (576 wide) and the latent
  output (512 wide) of the decode path are intermediates and are not counted.

  - decode path (MQA over the latent): attention 2·Hq·(576 + 512)·pairs, plus the
    projection GEMMs — q absorption ``q_nope [T,Hq,nope] x W_UK [Hq,nope,rank]`` and the V
    up-projection ``[T,Hq,rank] x W_UV [Hq,rank,v]`` — 2·T·Hq·nope·rank + 2·T·Hq·rank·v.
  - prefill path (MHA): attention 2·Hq·(192 + 128)·pairs, plus the kv_b_proj
    up-projection of every new and cached latent, 2·kv·rank·Hq·(nope + v).

  ``projection_flops`` is the projection-GEMM part of ``flops`` (both paths), so the
  attention FLOPs are ``flops - projection_flops``.

  Weights (``weight_bytes``, included in ``bytes``): the Hq·(nope + v)·rank elements of
  kv_b_proj / W_UK + W_UV are read once per *call* per pipeline used, never per request.
  When one call runs both pipelines (a mixed batch) they are counted once for each: the
  decode path's absorption / V-up bmms and the prefill path's kv_b_proj GEMM are separate
  kernels that each stream the weights (W_UK/W_UV are split from the same kv_b_proj
  weight, so this is an upper bound of the strict once-per-call minimum by one weight
  read). In ``phase_work`` a pipeline's weights belong to the phase named like the
  pipeline when that phase runs on it, else to the first phase (prefill, extend, decode)
  that does — so the phases still sum to the total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from attnbench.shapes import AttentionShape, MLAShape, Shape
from grammar import BatchRequest

PHASES = ("prefill", "extend", "decode")
MLA_PATHS = ("decode", "prefill")


def attended_pairs(q_len: int, kv_len: int) -> int:
    """Query-key pairs a causal, bottom-right-aligned request computes."""
    return q_len * (2 * kv_len - q_len + 1) // 2


@dataclass(frozen=True)
class Work:
    """Work of a request, a phase or a call. ``flops`` includes ``projection_flops``; ``bytes`` includes
    ``weight_bytes`` (both zero for standard attention)."""

    pairs: int = 0
    flops: int = 0
    bytes: int = 0
    requests: int = 0
    tokens: int = 0
    projection_flops: int = 0
    weight_bytes: int = 0

    def __add__(self, other: "Work") -> "Work":
        return Work(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.pairs, self.flops, self.bytes, self.requests, self.tokens, self.projection_flops,
                self.weight_bytes)


def _paged(kv_len: int, block_size: int) -> int:
    return math.ceil(kv_len / block_size) * block_size


def request_work(req: BatchRequest, shape: Shape, mla_path: str | None = None) -> Work:
    """Activation work of one request (no weights: see ``weight_work``).

    For MLA, ``mla_path`` is "decode" (MQA over the latent) or "prefill" (MHA); None means
    ``default_mla_path``."""
    e = shape.elem_bytes
    pairs = attended_pairs(req.q_len, req.kv_len)
    kv_read = _paged(req.kv_len, shape.block_size)
    if isinstance(shape, AttentionShape):
        d, hq, hkv = shape.head_dim, shape.num_q_heads, shape.num_kv_heads
        flops = 2 * hq * (d + d) * pairs
        nbytes = e * (req.q_len * hq * d  # Q
                      + kv_read * hkv * 2 * d  # K and V, once per KV head
                      + req.q_len * hkv * 2 * d * 2  # new K/V read from the layer and written to the cache
                      + req.q_len * hq * d)  # O
        return Work(pairs, flops, nbytes, 1, req.q_len)
    assert isinstance(shape, MLAShape)
    hq, latent, rank = shape.num_q_heads, shape.head_dim, shape.kv_lora_rank
    nope, qk, v = shape.qk_nope_head_dim, shape.qk_head_dim, shape.v_head_dim
    t = req.q_len
    path = _resolve_path(req, mla_path)
    if path == "prefill":
        # forward_mha gathers only the context from the cache; the new latents come from the layer inputs
        kv_read = _paged(req.kv_len - t, shape.block_size)
    nbytes = e * (t * hq * qk  # q, nope + rope per head
                  + t * latent * 2  # kv_c + k_pe of the new tokens: read from the layer, written to the cache
                  + kv_read * latent  # the latent cache, once, in whole pages
                  + t * hq * v)  # output
    if path == "decode":
        # MQA over the latent: scores over rank + rope, values over the rank-wide latent
        attention = 2 * hq * (latent + rank) * pairs
        projection = 2 * t * hq * nope * rank + 2 * t * hq * rank * v  # q absorption (W_UK) + V up (W_UV)
    else:
        # MHA: attention over qk / v after up-projecting every new and cached latent with kv_b_proj
        attention = 2 * hq * (qk + v) * pairs
        projection = 2 * req.kv_len * rank * hq * (nope + v)
    return Work(pairs, attention + projection, nbytes, 1, t, projection_flops=projection)


def weight_work(shape: Shape, mla_path: str) -> Work:
    """The weights one call reads for one MLA pipeline (kv_b_proj, i.e. W_UK + W_UV): counted once per call
    per pipeline used. Standard attention has no weights in the timed step."""
    if not isinstance(shape, MLAShape):
        return Work()
    if mla_path not in MLA_PATHS:
        raise ValueError(f"unknown MLA path {mla_path!r} (expected one of {', '.join(MLA_PATHS)})")
    nbytes = shape.elem_bytes * shape.num_q_heads * (shape.qk_nope_head_dim + shape.v_head_dim) * shape.kv_lora_rank
    return Work(bytes=nbytes, weight_bytes=nbytes)


def default_mla_path(req: BatchRequest) -> str:
    return "decode" if req.is_decode else "prefill"


def _resolve_path(req: BatchRequest, mla_path: str | None) -> str:
    path = mla_path or default_mla_path(req)
    if path not in MLA_PATHS:
        raise ValueError(f"unknown MLA path {path!r} (expected one of {', '.join(MLA_PATHS)})")
    return path


def phase_work(requests: Sequence[BatchRequest], shape: Shape,
               mla_paths: Sequence[str] | None = None) -> dict[str, Work]:
    """Work per phase (prefill / extend / decode) and ``total``; MLA weights once per pipeline used."""
    out = {p: Work() for p in PHASES}
    phases_on: dict[str, list[str]] = {}  # MLA pipeline -> the phases whose requests run on it
    for i, req in enumerate(requests):
        path = mla_paths[i] if mla_paths else None
        out[req.kind] = out[req.kind] + request_work(req, shape, path)
        if isinstance(shape, MLAShape):
            phases_on.setdefault(_resolve_path(req, path), []).append(req.kind)
    for pipeline, kinds in phases_on.items():
        home = pipeline if pipeline in kinds else next(p for p in PHASES if p in kinds)
        out[home] = out[home] + weight_work(shape, pipeline)
    out = {p: w for p, w in out.items() if w.requests}
    out["total"] = sum(out.values(), Work())
    return out


def bound(work: Work, peak_flops: float | None, peak_bytes_per_s: float | None) -> str | None:
    if not peak_flops or not peak_bytes_per_s:
        return None
    return "compute" if work.flops / peak_flops >= work.bytes / peak_bytes_per_s else "memory"


def floor_seconds(work: Work, peak_flops: float | None, peak_bytes_per_s: float | None) -> float | None:
    if not peak_flops or not peak_bytes_per_s:
        return None
    return max(work.flops / peak_flops, work.bytes / peak_bytes_per_s)


def summarize(requests: Sequence[BatchRequest], shape: Shape, seconds: float,
              peaks: dict[str, Any] | None = None, mla_paths: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics for ``extra_info``: FLOPs, bytes, rates, % of measured peak, bound per phase.

    ``flops`` includes ``projection_flops`` (MLA's W_UK / W_UV / kv_b_proj GEMMs; 0 for standard attention)
    and ``bytes`` includes ``weight_bytes`` (MLA's kv_b_proj weights, once per call per pipeline used); both
    are also given on their own, in the total and per phase."""
    peaks = peaks or {}
    pf, pb = peaks.get("peak_bf16_tflops"), peaks.get("peak_copy_gbps")
    pf = pf * 1e12 if pf else None
    pb = pb * 1e9 if pb else None
    phases = phase_work(requests, shape, mla_paths)
    total = phases["total"]
    out: dict[str, Any] = {
        "attended_pairs": total.pairs,
        "flops": total.flops,
        "bytes": total.bytes,
        "projection_flops": total.projection_flops,
        "weight_bytes": total.weight_bytes,
        "tflops": total.flops / seconds / 1e12 if seconds > 0 else None,
        "gbps": total.bytes / seconds / 1e9 if seconds > 0 else None,
        "bound": bound(total, pf, pb),
    }
    floor = floor_seconds(total, pf, pb)
    out["pct_of_peak"] = 100.0 * floor / seconds if floor and seconds > 0 else None
    out["pct_peak_flops"] = 100.0 * total.flops / seconds / pf if pf and seconds > 0 else None
    out["pct_peak_bandwidth"] = 100.0 * total.bytes / seconds / pb if pb and seconds > 0 else None
    out["phases"] = {
        name: {"requests": w.requests, "tokens": w.tokens, "attended_pairs": w.pairs, "flops": w.flops,
               "bytes": w.bytes, "projection_flops": w.projection_flops, "weight_bytes": w.weight_bytes,
               "bound": bound(w, pf, pb), "floor_s": floor_seconds(w, pf, pb)}
        for name, w in phases.items() if name != "total"
    }
    return out

