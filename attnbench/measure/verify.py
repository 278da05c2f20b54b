"""The correctness gate: a backend's output against the REFERENCE on the same cache contents."""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

from attnbench.results.record import Verification

# bf16/fp16 operands: ~2^-8 relative rounding per element; accumulated attention lands at 1e-3..1e-2.
TOLERANCE = {"bfloat16": (2e-2, 5e-2), "float16": (1e-2, 2e-2), "float32": (1e-4, 1e-3)}  # (rel L2, max-abs / max|ref|)
# A quantised cache, against the REFERENCE over the same stored values: the cache's own rounding is not an
# error here, but a kernel's fp8 q (quantised with the layer's _q_scale) is. Measured on the H200 (vLLM 0.26.0,
# 46 verified e4m3 cases of FA3, Triton, FlashInfer, FlashMLA, Triton-MLA): relative L2 2.8e-3 (bf16 q) to
# 3.6e-2 (fp8 q), worst request 4.0e-2, max-abs 4.5e-2 of max |ref|; a wrong scale gives ~0.3 (README:
# "FP8 KV caches"). e5m2 ran on no SM90 backend of 0.26.0: its bound is e4m3's scaled by one mantissa bit.
# TRITON_ATTN's per-(token, head) caches keep q in the model dtype and dequantise each entry exactly: int8 and fp8
# measured 2.3-2.4e-3 (bf16's own level, so bf16's gate). int4's kernel adds its zero-point corrections in
# fp32 to TF32 tensor-core dots, and that error does not average out: measured 1.1e-2 (q2k, mixed), 3.5e-2
# (4k decodes), 7.0e-2 (16k), 9.9e-2 (32k), 1.4e-1 (64k), growing as sqrt(context); max-abs 0.07 (4k) to 0.37
# (64k) of max |ref|. Its gate covers contexts to about 64k, with little margin there; a dropped scale or a wrong
# rotation is far beyond it (README: "Per-(token, head) KV caches").
KV_CACHE_TOLERANCE = {"fp8": (8e-2, 1.5e-1), "fp8_e4m3": (8e-2, 1.5e-1), "fp8_e5m2": (1.6e-1, 3e-1),
                      "int8_per_token_head": TOLERANCE["bfloat16"], "fp8_per_token_head": TOLERANCE["bfloat16"],
                      "int4_per_token_head": (1.5e-1, 4e-1)}


def tolerance(dtype: str, kv_cache_dtype: str = "auto") -> tuple[float, float]:
    """(relative L2, max-abs as a fraction of max |reference|) the gate allows for this model and cache dtype."""
    return KV_CACHE_TOLERANCE.get(kv_cache_dtype, TOLERANCE[dtype])


CHUNK_ELEMENTS = 1 << 26  # rows compared at a time: a few hundred MB of float32 temporaries, not the output x3


WORST_SHOWN = 5  # requests listed, worst first


def compare(output: torch.Tensor, expected: torch.Tensor, *, dtype: str = "bfloat16", kv_cache_dtype: str = "auto",
            cache_problem: str | None = None, first_call_s: float | None = None,
            request_rows: Sequence[int] | None = None, chunk_elements: int = CHUNK_ELEMENTS) -> Verification:
    """Relative L2 error, max-abs error and non-finite count of ``output`` against ``expected``, globally and
    per request (``request_rows``: each request's row count, in row order; the relative tolerance holds for
    every request on its own, so one wrong request in 256 fails although the global error barely moves).

    Computed where the tensors live (a GPU output is not copied to the host: for a 256-request
    prefill that copy alone took seconds), in float32 chunks of rows, with the norms summed in float64."""
    out_all = output.detach().reshape(expected.shape)
    ref_all = expected.detach()
    if out_all.dim() < 2:  # one row per element
        out_all, ref_all = out_all.reshape(-1, 1), ref_all.reshape(-1, 1)
    n_rows = out_all.shape[0]
    rows = max(1, chunk_elements // max(1, out_all[0].numel())) if n_rows else 1
    diff_sq, ref_sq = [], []  # per row, float64
    max_abs = ref_max = 0.0
    nonfinite, first = 0, None
    for start in range(0, n_rows, rows):
        out = out_all[start:start + rows].float()
        ref = ref_all[start:start + rows].float()
        bad = ~torch.isfinite(out)
        count = int(bad.sum())
        if count and first is None:
            index = [int(i) for i in bad.nonzero()[0]]
            first = (index[0] + start, *index[1:])
        nonfinite += count
        diff = (out - ref).nan_to_num(nan=float("inf"))
        diff_sq.append(torch.linalg.vector_norm(diff.flatten(1), dim=1, dtype=torch.float64) ** 2)
        ref_sq.append(torch.linalg.vector_norm(ref.flatten(1), dim=1, dtype=torch.float64) ** 2)
        max_abs = max(max_abs, float(diff.abs().max())) if diff.numel() else max_abs
        ref_max = max(ref_max, float(ref.abs().max())) if ref.numel() else ref_max
    row_diff = torch.cat(diff_sq) if diff_sq else torch.zeros(0, dtype=torch.float64)
    row_ref = torch.cat(ref_sq) if ref_sq else torch.zeros(0, dtype=torch.float64)
    rel = math.sqrt(float(row_diff.sum())) / max(math.sqrt(float(row_ref.sum())), 1e-30)
    rel_tol, abs_frac = tolerance(dtype, kv_cache_dtype)
    abs_tol = abs_frac * max(ref_max, 1e-6)
    worst_index: tuple[int, ...] = ()
    worst_error: tuple[float, ...] = ()
    per_request_ok = True
    if request_rows is not None:
        if sum(request_rows) != n_rows:
            raise ValueError(f"request_rows sum to {sum(request_rows)}, the output has {n_rows} rows")
        errors = _per_request(row_diff, row_ref, request_rows)
        order = sorted(range(len(errors)), key=lambda i: -errors[i])[:WORST_SHOWN]
        worst_index, worst_error = tuple(order), tuple(errors[i] for i in order)
        per_request_ok = not worst_error or worst_error[0] <= rel_tol
    ok = nonfinite == 0 and rel <= rel_tol and per_request_ok and max_abs <= abs_tol and cache_problem is None
    return Verification("passed" if ok else "failed", rel, max_abs, ref_max, nonfinite, first, cache_problem,
                        rel_tol, abs_tol, first_call_s=first_call_s,
                        worst_requests=worst_index or None, worst_request_rel_errors=worst_error or None)


def _per_request(row_diff: torch.Tensor, row_ref: torch.Tensor, request_rows: Sequence[int]) -> list[float]:
    """Each request's relative L2 error from per-row squared norms (segment sums; inf where it is non-finite)."""
    ends = torch.tensor(list(itertools.accumulate(request_rows)), dtype=torch.long, device=row_diff.device)
    cum_diff = torch.cat([row_diff.new_zeros(1), row_diff.cumsum(0)])
    cum_ref = torch.cat([row_ref.new_zeros(1), row_ref.cumsum(0)])
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    seg_diff = (cum_diff[ends] - cum_diff[starts]).clamp_min(0)
    seg_ref = (cum_ref[ends] - cum_ref[starts]).clamp_min(0)
    # a cumulative sum past an inf row is inf - inf = nan downstream: take those requests' rows directly
    rel = (seg_diff.sqrt() / seg_ref.sqrt().clamp_min(1e-30)).tolist()
    bad = [i for i, r in enumerate(rel) if not math.isfinite(r)]
    if bad:
        bounds = [0, *itertools.accumulate(request_rows)]
        for i in bad:
            d = float(row_diff[bounds[i]:bounds[i + 1]].sum())
            rel[i] = math.sqrt(d) / max(math.sqrt(float(row_ref[bounds[i]:bounds[i + 1]].sum())), 1e-30)
    return rel

