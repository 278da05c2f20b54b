"""The correctness gate: a backend's output against the REFERENCE on the same cache contents."""

from __future__ import annotations

import math

import torch

from attnbench.record import Verification

# bf16/fp16 operands: ~2^-8 relative rounding per element; accumulated attention lands at 1e-3..1e-2.
TOLERANCE = {"bfloat16": (2e-2, 5e-2), "float16": (1e-2, 2e-2), "float32": (1e-4, 1e-3)}  # (rel L2, max-abs / max|ref|)


CHUNK_ELEMENTS = 1 << 26  # rows compared at a time: a few hundred MB of float32 temporaries, not the output x3


def compare(output: torch.Tensor, expected: torch.Tensor, *, dtype: str = "bfloat16",
            cache_problem: str | None = None, first_call_s: float | None = None,
            chunk_elements: int = CHUNK_ELEMENTS) -> Verification:
    """Relative L2 error, max-abs error and non-finite count of ``output`` against ``expected``.

    Computed where the tensors live (a GPU output is not copied to the host: for a 256-request
    prefill that copy alone took seconds), in float32 chunks of rows, with the norms summed in float64."""
    out_all = output.detach().reshape(expected.shape)
    ref_all = expected.detach()
    per_row = max(1, out_all[0].numel()) if out_all.dim() else 1
    rows = max(1, chunk_elements // per_row)
    diff_sq = ref_sq = 0.0
    max_abs = ref_max = 0.0
    nonfinite, first = 0, None
    for start in range(0, max(1, out_all.shape[0] if out_all.dim() else 1), rows):
        out = out_all[start:start + rows].float() if out_all.dim() else out_all.float()
        ref = ref_all[start:start + rows].float() if ref_all.dim() else ref_all.float()
        bad = ~torch.isfinite(out)
        count = int(bad.sum())
        if count and first is None:
            index = [int(i) for i in bad.nonzero()[0]]
            first = tuple([index[0] + start, *index[1:]]) if index else ()
        nonfinite += count
        diff = (out - ref).nan_to_num(nan=float("inf"))
        diff_sq += float(torch.linalg.vector_norm(diff, dtype=torch.float64)) ** 2
        ref_sq += float(torch.linalg.vector_norm(ref, dtype=torch.float64)) ** 2
        max_abs = max(max_abs, float(diff.abs().max())) if diff.numel() else max_abs
        ref_max = max(ref_max, float(ref.abs().max())) if ref.numel() else ref_max
    rel = math.sqrt(diff_sq) / max(math.sqrt(ref_sq), 1e-30)
    rel_tol, abs_frac = TOLERANCE[dtype]
    abs_tol = abs_frac * max(ref_max, 1e-6)
    ok = nonfinite == 0 and rel <= rel_tol and max_abs <= abs_tol and cache_problem is None
    return Verification("passed" if ok else "failed", rel, max_abs, ref_max, nonfinite, first, cache_problem,
                        rel_tol, abs_tol, first_call_s=first_call_s)
