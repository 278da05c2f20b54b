"""The correctness gate: tolerances, wrong rows, NaN reporting and cache-write problems."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.measure.verify import TOLERANCE, Verification, compare


def _expected(shape=(24, 8, 16), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_bf16_rounding_noise_passes():
    ref = _expected()
    out = ref.to(torch.bfloat16)  # one bf16 rounding per element: relative error <= 2**-9
    v = compare(out, ref, dtype="bfloat16")
    assert v.status == "passed" and v.passed
    assert 0 < v.rel_error <= 2 ** -8
    assert v.nonfinite == 0 and v.first_nonfinite is None
    assert v.ref_abs_max == pytest.approx(float(ref.abs().max()))


def test_output_is_compared_after_reshaping_to_the_expected_shape():
    ref = _expected()
    out = ref.reshape(24, -1).to(torch.bfloat16)  # e.g. an MLA output [T, H * v]
    assert compare(out, ref).passed


def test_a_wrong_row_fails():
    ref = _expected()
    out = ref.clone()
    out[5] = torch.randn(8, 16, generator=torch.Generator().manual_seed(9))  # one token's rows are garbage
    v = compare(out, ref, dtype="bfloat16")
    assert v.status == "failed" and not v.passed
    assert v.max_abs_error == pytest.approx(float((out[5] - ref[5]).abs().max()))
    assert v.rel_error == pytest.approx(float((out - ref).norm() / ref.norm()), rel=1e-5)


def test_a_single_bad_element_fails_on_max_abs_even_with_small_rel_error():
    ref = _expected((256, 8, 64))
    out = ref.clone()
    out[100, 3, 7] += 0.5 * float(ref.abs().max())
    v = compare(out, ref, dtype="bfloat16")
    rel_tol, abs_frac = TOLERANCE["bfloat16"]
    assert v.rel_error < rel_tol  # diluted over 131072 elements
    assert v.max_abs_error > abs_frac * v.ref_abs_max
    assert not v.passed


def test_nan_count_and_first_position_are_reported():
    ref = _expected()
    out = ref.clone()
    out[3, 2, 1] = float("nan")
    out[7, 0, 0] = float("inf")
    out[20, 5, 9] = float("nan")
    v = compare(out, ref)
    assert not v.passed
    assert v.nonfinite == 3
    assert v.first_nonfinite == (3, 2, 1)
    assert math.isinf(v.rel_error) or math.isnan(v.rel_error)
    assert "3 NaN/inf, first at (3, 2, 1)" in v.summary()


def test_an_untouched_poisoned_output_fails():
    ref = _expected()
    v = compare(torch.full_like(ref, float("nan")), ref)
    assert not v.passed and v.nonfinite == ref.numel() and v.first_nonfinite == (0, 0, 0)


def test_a_cache_problem_fails_an_exact_output():
    ref = _expected()
    v = compare(ref.clone(), ref, cache_problem="3 of 40 new key entries not at their slots")
    assert v.status == "failed" and not v.passed
    assert v.rel_error == 0.0
    assert "cache write: 3 of 40 new key entries not at their slots" in v.summary()


def test_tolerances_tighten_with_precision():
    ref = _expected()
    noisy = ref * (1 + 3e-3)  # 0.3% off everywhere: fine for bf16, far too much for float32
    assert compare(noisy, ref, dtype="bfloat16").passed
    assert not compare(noisy, ref, dtype="float32").passed
    assert compare(ref * (1 + 1e-6), ref, dtype="float32").passed


def test_oracle_verdict_and_plain_dict():
    assert Verification.oracle().passed and Verification.oracle().status == "oracle"
    assert not Verification("failed").passed
    d = compare(_expected(), _expected()).as_dict()
    assert d["status"] == "passed" and "cache_problem" not in d and "reason" not in d


def test_chunked_comparison_equals_the_whole_tensor_comparison():
    torch.manual_seed(3)
    ref = torch.randn(37, 4, 8)
    out = (ref + 1e-3 * torch.randn_like(ref)).to(torch.bfloat16)
    out[20, 1, 5] = float("nan")
    whole = compare(out, ref, chunk_elements=1 << 30)
    for chunk in (1, 32, 33, 100, 31 * 32):
        part = compare(out, ref, chunk_elements=chunk)
        assert part.nonfinite == whole.nonfinite == 1 and part.first_nonfinite == whole.first_nonfinite == (20, 1, 5)
        assert part.max_abs_error == whole.max_abs_error and part.ref_abs_max == whole.ref_abs_max
        assert part.rel_error == pytest.approx(whole.rel_error)
    clean = out.clone()
    clean[20, 1, 5] = ref[20, 1, 5]
    expected_rel = float((clean.float() - ref).norm() / ref.norm())
    assert compare(clean, ref, chunk_elements=64).rel_error == pytest.approx(expected_rel, rel=1e-5)
