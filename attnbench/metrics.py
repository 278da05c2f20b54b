"""The work model: exact FLOPs and compulsory bytes of one attention call.

Everything derives from the parsed requests and the shape, per phase (prefill,
extend, decode), so a mixed batch reports where its time should go. Pairs are exact
causal bottom-right (query j of a request with context c attends c + j + 1 keys):
q (2s - q + 1) / 2 per request. Compulsory bytes count each input once: Q, K/V once
per KV head (whole pages, since the paged cache is read in blocks), the new K/V
written into the cache, and O. A phase's bound is whichever floor (FLOPs over peak
FLOP/s, bytes over peak bandwidth) is larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from attnbench.shapes import AttentionShape, MLAShape, Shape
from grammar import BatchRequest

PHASES = ("prefill", "extend", "decode")


def attended_pairs(q_len: int, kv_len: int) -> int:
    """Query-key pairs a causal, bottom-right-aligned request computes."""
    return q_len * (2 * kv_len - q_len + 1) // 2


@dataclass(frozen=True)
class Work:
    pairs: int = 0
    flops: int = 0
    bytes: int = 0
    requests: int = 0
    tokens: int = 0

    def __add__(self, other: "Work") -> "Work":
        return Work(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.pairs, self.flops, self.bytes, self.requests, self.tokens)


def _paged(kv_len: int, block_size: int) -> int:
    return math.ceil(kv_len / block_size) * block_size


def request_work(req: BatchRequest, shape: Shape, mla_path: str | None = None) -> Work:
    """Work of one request. For MLA, ``mla_path`` is "decode" (MQA over the latent) or "prefill" (MHA)."""
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
    new_latent = req.q_len * latent * 2  # kv_c + k_pe read from the layer and written to the latent cache
    if (mla_path or default_mla_path(req)) == "decode":
        # MQA over the latent: q absorbed to rank+rope, scores over 576, values over the 512-wide latent
        flops = 2 * hq * (latent + rank) * pairs
        nbytes = e * (req.q_len * hq * latent + kv_read * latent + new_latent + req.q_len * hq * rank)
    else:
        # MHA: up-project every cached latent with kv_b_proj, then attention over qk 192 / v 128
        qk, v = shape.qk_head_dim, shape.v_head_dim
        up = 2 * req.kv_len * rank * hq * (shape.qk_nope_head_dim + v)
        flops = 2 * hq * (qk + v) * pairs + up
        nbytes = e * (req.q_len * hq * qk + kv_read * latent + new_latent + req.q_len * hq * v
                      + hq * (shape.qk_nope_head_dim + v) * rank)  # kv_b_proj weight
    return Work(pairs, flops, nbytes, 1, req.q_len)


def default_mla_path(req: BatchRequest) -> str:
    return "decode" if req.is_decode else "prefill"


def phase_work(requests: Sequence[BatchRequest], shape: Shape,
               mla_paths: Sequence[str] | None = None) -> dict[str, Work]:
    """Work per phase (prefill / extend / decode) and ``total``."""
    out = {p: Work() for p in PHASES}
    for i, req in enumerate(requests):
        out[req.kind] = out[req.kind] + request_work(req, shape, mla_paths[i] if mla_paths else None)
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
    """Metrics for ``extra_info``: FLOPs, bytes, rates, % of measured peak, bound per phase."""
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
               "bytes": w.bytes, "bound": bound(w, pf, pb), "floor_s": floor_seconds(w, pf, pb)}
        for name, w in phases.items() if name != "total"
    }
    return out


def total_pairs(requests: Iterable[BatchRequest]) -> int:
    return sum(attended_pairs(r.q_len, r.kv_len) for r in requests)
