"""The work model: attended pairs, FLOPs, compulsory bytes, phases, bounds and the summary."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbench.spec import metrics
from attnbench.measure import oracle
from attnbench.spec.shapes import AttentionShape, MLAShape
from grammar import BatchRequest, parse_batch_spec

PEAKS = {"peak_bf16_tflops": 900.0, "peak_copy_gbps": 3000.0}
PF, PB = 900e12, 3000e9


def _brute_pairs(q_len: int, kv_len: int) -> int:
    context = kv_len - q_len
    count = 0
    for j in range(q_len):
        for i in range(kv_len):
            if i <= context + j:
                count += 1
    return count


@settings(max_examples=150, deadline=None)
@given(q=st.integers(1, 48), extra=st.integers(0, 150))
def test_attended_pairs_is_the_causal_mask_count(q, extra):
    kv = q + extra
    expected = _brute_pairs(q, kv)
    assert int(oracle.causal_mask(q, kv, torch.device("cpu")).sum()) == expected
    assert metrics.attended_pairs(q, kv) == expected
    assert metrics.request_work(BatchRequest(q, kv), AttentionShape()).pairs == expected


@pytest.mark.parametrize("q, kv, pairs", [(1, 1, 1), (1, 1024, 1024), (4, 4, 10), (4, 1024, 4 * 1020 + 10),
                                          (2048, 2048, 2048 * 2049 // 2)])
def test_attended_pairs_worked_examples(q, kv, pairs):
    assert metrics.attended_pairs(q, kv) == pairs


def test_phase_work_pairs_sum_the_requests():
    reqs = parse_batch_spec("2q7s9_q3")
    assert metrics.phase_work(reqs, AttentionShape())["total"].pairs == 2 * _brute_pairs(7, 9) + _brute_pairs(3, 3)


@pytest.mark.parametrize("shape", [AttentionShape(), AttentionShape(num_q_heads=16, num_kv_heads=2, head_dim=64),
                                   AttentionShape(num_q_heads=8, num_kv_heads=8, head_dim=256, dtype="float32")])
@pytest.mark.parametrize("q, kv", [(1, 1000), (5, 5), (16, 1024), (300, 777)])
def test_standard_attention_flops(shape, q, kv):
    work = metrics.request_work(BatchRequest(q, kv), shape)
    d_qk = d_v = shape.head_dim
    assert work.flops == 2 * shape.num_q_heads * (d_qk + d_v) * _brute_pairs(q, kv)
    assert work.requests == 1 and work.tokens == q


# ------------------------------------------------------------------------------------------- phases

MIXED = "2q2k_q4s1k_32q1s1k"


def test_phase_split_of_a_mixed_batch():
    shape = AttentionShape()
    phases = metrics.phase_work(parse_batch_spec(MIXED), shape)
    assert set(phases) == {"prefill", "extend", "decode", "total"}
    assert (phases["prefill"].requests, phases["prefill"].tokens) == (2, 4096)
    assert (phases["extend"].requests, phases["extend"].tokens) == (1, 4)
    assert (phases["decode"].requests, phases["decode"].tokens) == (32, 32)
    assert phases["prefill"].pairs == 2 * _brute_pairs(2048, 2048)
    assert phases["extend"].pairs == _brute_pairs(4, 1024)
    assert phases["decode"].pairs == 32 * 1024
    total = phases["total"]
    for field in ("pairs", "flops", "bytes", "requests", "tokens"):
        assert getattr(total, field) == sum(getattr(phases[p], field) for p in ("prefill", "extend", "decode"))
    assert total.requests == 35 and total.tokens == 4132


def test_empty_phases_are_left_out():
    phases = metrics.phase_work(parse_batch_spec("8q1s1k"), AttentionShape())
    assert set(phases) == {"decode", "total"}
    assert phases["total"] == phases["decode"]


def test_work_addition_is_fieldwise():
    a, b = metrics.WorkCount(1, 2, 3, 4, 5), metrics.WorkCount(10, 20, 30, 40, 50)
    assert a + b == metrics.WorkCount(11, 22, 33, 44, 55)


# -------------------------------------------------------------------------------------------- bytes

def test_bytes_grow_with_kv_len_and_are_rounded_to_whole_blocks():
    shape = AttentionShape(block_size=16)
    nbytes = [metrics.request_work(BatchRequest(1, kv), shape).bytes for kv in range(1, 100)]
    assert all(a <= b for a, b in zip(nbytes, nbytes[1:]))
    by_kv = dict(zip(range(1, 100), nbytes))
    assert by_kv[17] == by_kv[32]  # both read two whole 16-token pages
    assert by_kv[1] == by_kv[16]
    assert by_kv[16] < by_kv[17]
    # one more page of K and V for every KV head
    page = shape.elem_bytes * 16 * shape.num_kv_heads * 2 * shape.head_dim
    assert by_kv[33] - by_kv[17] == page
    assert by_kv[17] - by_kv[16] == page


def test_bytes_grow_with_new_tokens():
    shape = AttentionShape()
    one, two = (metrics.request_work(BatchRequest(q, 64), shape).bytes for q in (1, 2))
    # at least one more query row in and one more output row out
    assert two - one >= 2 * shape.elem_bytes * shape.num_q_heads * shape.head_dim


def test_bytes_scale_with_element_size():
    half = metrics.request_work(BatchRequest(3, 100), AttentionShape(dtype="bfloat16")).bytes
    full = metrics.request_work(BatchRequest(3, 100), AttentionShape(dtype="float32")).bytes
    assert full == 2 * half


# -------------------------------------------------------------------------------------------- bound

def test_a_decode_batch_is_memory_bound_and_a_long_prefill_compute_bound():
    shape = AttentionShape()
    decode = metrics.phase_work(parse_batch_spec("32q1s1k"), shape)["total"]
    prefill = metrics.phase_work(parse_batch_spec("q8k"), shape)["total"]
    assert metrics.bound(decode, PF, PB) == "memory"
    assert metrics.bound(prefill, PF, PB) == "compute"
    assert metrics.floor_seconds(decode, PF, PB) == pytest.approx(decode.bytes / PB)
    assert metrics.floor_seconds(prefill, PF, PB) == pytest.approx(prefill.flops / PF)


def test_no_peaks_means_no_bound():
    work = metrics.phase_work(parse_batch_spec("q1k"), AttentionShape())["total"]
    assert metrics.bound(work, None, PB) is None and metrics.bound(work, PF, None) is None
    assert metrics.floor_seconds(work, None, None) is None


def test_mixed_batch_bound_per_phase():
    out = metrics.summarize(parse_batch_spec("q8k_32q1s1k"), AttentionShape(), 1e-3, PEAKS)
    assert out.phases["prefill"]["bound"] == "compute"
    assert out.phases["decode"]["bound"] == "memory"


# ---------------------------------------------------------------------------------------------- MLA
# The timed step is vLLM's MLAAttention forward. Compulsory I/O is the layer's inputs and outputs only:
# q at qk = nope + rope per head, the new tokens' 576-wide latent read and written to the cache, the
# latent cache read once (whole pages; the prefill path reads only the context, kv - q), the output at H x v.
# Decode path = q absorption bmm with W_UK, MQA over the 576-wide latent, V up-projection bmm with W_UV.
# Prefill path = kv_b_proj up-projection of every latent, then MHA over qk 192 / v 128. Weights
# (H x (nope + v) x rank elements) once per call per pipeline, never per request. Expectations are written out by
# hand from those definitions.

MLA = MLAShape(num_q_heads=16, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
               block_size=64)
H, RANK, NOPE, ROPE, V, LATENT, E = 16, 512, 128, 64, 128, 576, 2
WEIGHT_BYTES = E * H * (NOPE + V) * RANK  # 4 MiB: kv_b_proj == W_UK + W_UV


def _mla_io(q: int, paged_kv: int) -> int:
    """Bytes of one request's activations: q (192/head), new latent in + cache write, cache read, output."""
    return E * (q * H * (NOPE + ROPE) + 2 * q * LATENT + paged_kv * LATENT + q * H * V)


def test_mla_decode_formula():
    work = metrics.request_work(BatchRequest(1, 1000), MLA)
    pairs = 1000
    assert work.pairs == pairs
    attention = 2 * H * (LATENT + RANK) * pairs  # scores over 576, values over the 512-wide latent
    absorb = 2 * 1 * H * NOPE * RANK  # q_nope [1,H,128] x W_UK [H,128,512]
    v_up = 2 * 1 * H * RANK * V  # latent out [1,H,512] x W_UV [H,512,128]
    assert work.projection_flops == absorb + v_up == 4_194_304
    assert work.flops == attention + absorb + v_up == 34_816_000 + 4_194_304
    # 16 pages of 64 read; the absorbed q (576 wide) and latent output (512 wide) are intermediates
    assert work.bytes == _mla_io(1, 1024) == 2 * (3072 + 1152 + 589_824 + 2048)
    assert work.weight_bytes == 0  # per-request work is activations only


def test_mla_prefill_formula():
    work = metrics.request_work(BatchRequest(300, 300), MLA)
    pairs = _brute_pairs(300, 300)
    up_projection = 2 * 300 * RANK * H * (NOPE + V)  # kv_b_proj over every latent
    assert work.projection_flops == up_projection
    assert work.flops == 2 * H * ((NOPE + ROPE) + V) * pairs + up_projection
    # no context: forward_mha reads nothing from the cache; the 300 new latents come from the layer inputs
    assert work.bytes == _mla_io(300, 0) == 2 * (300 * H * 192 + 2 * 300 * LATENT + 300 * H * V)
    assert work.weight_bytes == 0


def test_mla_prefill_reads_only_its_context_from_the_cache():
    # 100 new tokens on 1000 of context: 1000 context tokens are 16 pages of 64 (not ceil(1100 / 64) = 18)
    work = metrics.request_work(BatchRequest(100, 1100), MLA, "prefill")
    assert work.bytes == _mla_io(100, 1024)
    # the decode path reads the whole kv (the new tokens included) from the cache it has just written
    assert metrics.request_work(BatchRequest(100, 1100), MLA, "decode").bytes == _mla_io(100, 1152)
    # the q2k at DeepSeek-V3 (Hq 128): the old model counted 2048 x 576 x 2 more bytes (+1.1 %)
    q2k = metrics.request_work(BatchRequest(2048, 2048), MLAShape())
    assert q2k.bytes == 2 * (2048 * 128 * 192 + 2 * 2048 * 576 + 2048 * 128 * 128)


def test_mla_activation_bytes_differ_by_pipeline_only_in_the_cache_read():
    # decode reads ceil(kv / 64) pages, prefill ceil((kv - q) / 64): the same for the first two requests
    for req in (BatchRequest(1, 1000), BatchRequest(4, 1024), BatchRequest(64, 64)):
        decode = metrics.request_work(req, MLA, "decode")
        prefill = metrics.request_work(req, MLA, "prefill")
        assert decode.bytes == _mla_io(req.q_len, -(-req.kv_len // 64) * 64)
        assert prefill.bytes == _mla_io(req.q_len, -(-(req.kv_len - req.q_len) // 64) * 64)
    assert metrics.request_work(BatchRequest(64, 64), MLA, "prefill").bytes == _mla_io(64, 0)


def test_mla_weights_are_read_once_per_call_not_per_request():
    one = metrics.request_work(BatchRequest(300, 300), MLA)
    prefill = metrics.phase_work(parse_batch_spec("4q300"), MLA)
    assert prefill["total"].weight_bytes == WEIGHT_BYTES
    assert prefill["total"].bytes == 4 * one.bytes + WEIGHT_BYTES
    decode = metrics.phase_work(parse_batch_spec("8q1s1k"), MLA)["total"]
    assert decode.weight_bytes == WEIGHT_BYTES  # W_UK + W_UV, once for all 8 rows
    assert decode.bytes == 8 * _mla_io(1, 1024) + WEIGHT_BYTES
    assert decode.flops == 8 * (2 * H * (LATENT + RANK) * 1024 + 2 * H * NOPE * RANK + 2 * H * RANK * V)
    assert metrics.weight_work(MLA, "decode") == metrics.weight_work(MLA, "prefill") == metrics.WorkCount(
        bytes=WEIGHT_BYTES, weight_bytes=WEIGHT_BYTES)
    assert metrics.weight_work(AttentionShape(), "decode") == metrics.WorkCount()


def test_mla_weights_once_per_pipeline_and_in_the_phase_that_runs_it():
    # a mixed batch runs both pipelines: the weights are read by each (documented choice)
    mixed = metrics.phase_work(parse_batch_spec("q300_8q1s1k"), MLA)
    assert mixed["prefill"].weight_bytes == mixed["decode"].weight_bytes == WEIGHT_BYTES
    assert mixed["total"].weight_bytes == 2 * WEIGHT_BYTES
    # spec-decode rows forced onto the decode pipeline share its weights with the decode rows
    reqs = parse_batch_spec("4q4s1k_8q1s1k")
    forced = metrics.phase_work(reqs, MLA, ["decode"] * len(reqs))
    assert forced["decode"].weight_bytes == WEIGHT_BYTES and forced["extend"].weight_bytes == 0
    assert forced["total"].weight_bytes == WEIGHT_BYTES
    # alone, the extend phase carries the pipeline's weights
    extend_only = metrics.phase_work(parse_batch_spec("4q4s1k"), MLA, ["decode"] * 4)
    assert extend_only["extend"].weight_bytes == WEIGHT_BYTES
    for phases in (mixed, forced, extend_only):
        total = phases["total"]
        for field in ("pairs", "flops", "bytes", "requests", "tokens", "projection_flops", "weight_bytes"):
            assert getattr(total, field) == sum(getattr(w, field) for p, w in phases.items() if p != "total")


def test_standard_attention_has_no_weights_or_projections():
    phases = metrics.phase_work(parse_batch_spec(MIXED), AttentionShape())
    assert phases["total"].weight_bytes == 0 and phases["total"].projection_flops == 0


def test_mla_default_path_and_override():
    spec_decode = BatchRequest(4, 1024)
    assert metrics.default_mla_path(BatchRequest(1, 1024)) == "decode"
    assert metrics.default_mla_path(spec_decode) == "prefill"
    assert metrics.default_mla_path(BatchRequest(1, 1)) == "prefill"  # no context: a one-token prefill
    forced = metrics.request_work(spec_decode, MLA, "decode")
    assert forced.flops == 2 * H * (LATENT + RANK) * _brute_pairs(4, 1024) + 2 * 4 * H * (NOPE * RANK + RANK * V)
    assert metrics.request_work(spec_decode, MLA) == metrics.request_work(spec_decode, MLA, "prefill")
    reqs = [spec_decode, BatchRequest(1, 1024)]
    by_path = metrics.phase_work(reqs, MLA, ["decode", "decode"])
    assert by_path["extend"].flops == forced.flops
    with pytest.raises(ValueError, match="unknown MLA path"):
        metrics.request_work(spec_decode, MLA, "mha")


def test_mla_summary_shows_projection_flops_and_weight_bytes():
    reqs = parse_batch_spec("q300_8q1s1k")
    out = metrics.summarize(reqs, MLA, 1e-3, PEAKS)
    pairs = _brute_pairs(300, 300) + 8 * 1024
    attention = 2 * H * (NOPE + ROPE + V) * _brute_pairs(300, 300) + 2 * H * (LATENT + RANK) * 8 * 1024
    projection = 2 * 300 * RANK * H * (NOPE + V) + 8 * 2 * H * (NOPE * RANK + RANK * V)
    assert out.attended_pairs == pairs
    assert out.projection_flops == projection
    assert out.flops == attention + projection
    assert out.weight_bytes == 2 * WEIGHT_BYTES
    assert out.bytes == _mla_io(300, 0) + 8 * _mla_io(1, 1024) + 2 * WEIGHT_BYTES
    assert out.phases["decode"]["weight_bytes"] == WEIGHT_BYTES
    assert out.phases["decode"]["projection_flops"] == 8 * 2 * H * (NOPE * RANK + RANK * V)
    assert out.tflops == pytest.approx(out.flops / 1e-3 / 1e12)


def test_mla_decode_is_memory_bound_and_prefill_compute_bound():
    decode = metrics.phase_work(parse_batch_spec("64q1s1k"), MLA)["total"]
    prefill = metrics.phase_work(parse_batch_spec("q4k"), MLA)["total"]
    assert metrics.bound(decode, PF, PB) == "memory"
    assert metrics.bound(prefill, PF, PB) == "compute"


# ---------------------------------------------------------------------------------------- summarize

def test_summarize_fields_and_arithmetic():
    reqs = parse_batch_spec(MIXED)
    shape = AttentionShape()
    seconds = 2.5e-3
    total = metrics.phase_work(reqs, shape)["total"]
    out = metrics.summarize(reqs, shape, seconds, PEAKS)
    assert out.attended_pairs == total.pairs == sum(_brute_pairs(r.q_len, r.kv_len) for r in reqs)
    assert out.flops == total.flops and out.bytes == total.bytes
    assert out.tflops == pytest.approx(total.flops / seconds / 1e12)
    assert out.gbps == pytest.approx(total.bytes / seconds / 1e9)
    floor = max(total.flops / PF, total.bytes / PB)
    # % peak moved to the sequential floor; the overlap floor's % (the old pct_of_peak) is kept beside it
    assert out.pct_of_peak_overlap == pytest.approx(100 * floor / seconds)
    assert out.overlap_floor_s == pytest.approx(floor)
    groups = metrics.kernel_groups(reqs, shape)
    sequential = sum(max(w.flops / PF, w.bytes / PB) for w in groups.values())
    assert out.pct_of_peak_basis == "sequential"
    assert out.sequential_floor_s == pytest.approx(sequential) and sequential > floor
    assert out.pct_of_peak == pytest.approx(100 * sequential / seconds)
    assert out.pct_peak_flops == pytest.approx(100 * (total.flops / seconds) / PF)
    assert out.pct_peak_bandwidth == pytest.approx(100 * (total.bytes / seconds) / PB)
    assert out.bound == ("compute" if total.flops / PF >= total.bytes / PB else "memory")
    assert set(out.phases) == {"prefill", "extend", "decode"}
    decode = out.phases["decode"]
    assert set(decode) == {"requests", "tokens", "attended_pairs", "flops", "bytes", "projection_flops",
                           "weight_bytes", "bound", "floor_s"}
    assert out.projection_flops == 0 and out.weight_bytes == 0
    assert (decode["requests"], decode["tokens"], decode["attended_pairs"]) == (32, 32, 32 * 1024)
    assert decode["floor_s"] == pytest.approx(max(decode["flops"] / PF, decode["bytes"] / PB))
    assert sum(p["flops"] for p in out.phases.values()) == out.flops


def test_pct_of_peak_is_100_at_the_floor():
    reqs = parse_batch_spec("32q1s1k")
    total = metrics.phase_work(reqs, AttentionShape())["total"]
    floor = max(total.flops / PF, total.bytes / PB)
    out = metrics.summarize(reqs, AttentionShape(), floor, PEAKS)
    assert out.pct_of_peak == pytest.approx(100.0)
    assert out.pct_peak_bandwidth == pytest.approx(100.0)  # memory bound: bandwidth is the floor


def test_summarize_without_peaks_or_time():
    reqs = parse_batch_spec("q1s1k")
    no_peaks = metrics.summarize(reqs, AttentionShape(), 1e-3)
    assert no_peaks.bound is None and no_peaks.pct_of_peak is None
    assert no_peaks.pct_peak_flops is None and no_peaks.pct_peak_bandwidth is None
    assert no_peaks.tflops == pytest.approx(no_peaks.flops / 1e-3 / 1e12)
    assert no_peaks.phases["decode"]["floor_s"] is None
    untimed = metrics.summarize(reqs, AttentionShape(), 0.0, PEAKS)
    assert untimed.tflops is None and untimed.gbps is None and untimed.pct_of_peak is None
    assert untimed.flops > 0 and untimed.bound == "memory"
    assert not math.isnan(untimed.bytes)


# ------------------------------------------------------------------------- kernel groups and floors
# The sequential floor sums max(F_g / peak, B_g / bw) over the kernels that run one after another; the
# groups partition the call's work, so it is >= the overlap floor max(F / peak, B / bw) of the whole call.

TINY = AttentionShape(num_q_heads=2, num_kv_heads=1, head_dim=4, block_size=4)
# a peak of 100 FLOP/s and 100 B/s makes every floor readable by hand
SLOW_PEAKS = {"peak_bf16_tflops": 100e-12, "peak_copy_gbps": 100e-9}


def test_sequential_floor_of_a_tiny_call_by_hand():
    # q2s4 (2 new tokens on 2 of context), 2 q heads, 1 KV head, d 4, pages of 4, 2-byte elements
    groups = metrics.kernel_groups([BatchRequest(2, 4)], TINY)
    assert list(groups) == ["cache_write", "attention"]
    assert groups["cache_write"] == metrics.WorkCount(bytes=2 * 2 * 1 * 8 * 2)  # 64: new K/V in, then into the cache
    # 7 pairs x 2 x 2 heads x (4 + 4); Q 16 + K/V one page 32 + O 16 elements
    assert groups["attention"] == metrics.WorkCount(7, 224, 128, 1, 2)
    out = metrics.summarize([BatchRequest(2, 4)], TINY, 10.0, SLOW_PEAKS)
    assert (out.flops, out.bytes) == (224, 192)
    assert out.overlap_floor_s == pytest.approx(2.24)  # max(224 / 100, 192 / 100)
    assert out.sequential_floor_s == pytest.approx(0.64 + 2.24)  # cache write 64 / 100, then 224 / 100
    assert out.pct_of_peak == pytest.approx(28.8) and out.pct_of_peak_overlap == pytest.approx(22.4)
    assert out.kernel_groups["cache_write"]["bound"] == "memory"
    assert out.kernel_groups["attention"] == {"flops": 224, "bytes": 128, "projection_flops": 0,
                                                 "weight_bytes": 0, "bound": "compute",
                                                 "floor_s": pytest.approx(2.24)}


def test_sequential_equals_overlap_for_one_group_or_one_bound():
    work = metrics.WorkCount(7, 224, 128, 1, 2)
    assert metrics.sequential_floor_seconds({"attention": work}, 100, 100) == metrics.floor_seconds(work, 100, 100)
    # a decode batch: cache write and attention are both memory bound, so the floors add up to B / bw
    out = metrics.summarize(parse_batch_spec("32q1s1k"), AttentionShape(), 1e-3, PEAKS)
    assert out.sequential_floor_s == pytest.approx(out.overlap_floor_s) == pytest.approx(out.bytes / PB)
    assert metrics.sequential_floor_seconds({"attention": work}, None, 100) is None


def test_a_split_mixed_batch_pays_both_kernels():
    reqs = parse_batch_spec("q8k_32q1s1k")
    shape = AttentionShape()
    paths = [metrics.default_mla_path(r) for r in reqs]  # FlashInfer-like: a decode and a prefill kernel
    groups = metrics.kernel_groups(reqs, shape, attention_paths=paths)
    assert list(groups) == ["cache_write", "decode_attention", "prefill_attention"]
    prefill, decode = groups["prefill_attention"], groups["decode_attention"]
    assert prefill.pairs == _brute_pairs(8192, 8192) and decode.pairs == 32 * 1024
    assert prefill.flops / PF > prefill.bytes / PB and decode.flops / PF < decode.bytes / PB
    out = metrics.summarize(reqs, shape, 1e-3, PEAKS, attention_paths=paths)
    expected = groups["cache_write"].bytes / PB + prefill.flops / PF + decode.bytes / PB
    assert out.sequential_floor_s == pytest.approx(expected)
    assert out.overlap_floor_s == pytest.approx(out.flops / PF)
    assert out.overlap_floor_s < expected
    # one varlen kernel (FlashAttention, Triton) overlaps the two: a lower floor
    one = metrics.summarize(reqs, shape, 1e-3, PEAKS)
    assert list(one.kernel_groups) == ["cache_write", "attention"]
    assert one.overlap_floor_s <= one.sequential_floor_s < out.sequential_floor_s
    with pytest.raises(ValueError, match="unknown attention path"):
        metrics.kernel_groups(reqs, shape, attention_paths=["mha", "decode"])


def test_mla_decode_groups_by_hand():
    groups = metrics.kernel_groups([BatchRequest(1, 1000)], MLA)
    assert list(groups) == ["cache_write", "decode_q_absorb", "decode_attention", "decode_v_up"]
    w_uk, w_uv = E * H * NOPE * RANK, E * H * RANK * V
    assert groups["cache_write"] == metrics.WorkCount(bytes=E * 2 * LATENT)
    # q_nope in; W_UK once per call
    assert groups["decode_q_absorb"] == metrics.WorkCount(flops=2 * H * NOPE * RANK, bytes=E * H * NOPE + w_uk,
                                                     projection_flops=2 * H * NOPE * RANK, weight_bytes=w_uk)
    # q_pe in, the whole kv (16 pages of 64) from the cache; the absorbed q and latent out are intermediates
    assert groups["decode_attention"] == metrics.WorkCount(1000, 2 * H * (LATENT + RANK) * 1000,
                                                      E * (H * ROPE + 1024 * LATENT), 1, 1)
    assert groups["decode_v_up"] == metrics.WorkCount(flops=2 * H * RANK * V, bytes=E * H * V + w_uv,
                                                 projection_flops=2 * H * RANK * V, weight_bytes=w_uv)
    total = sum(groups.values(), metrics.WorkCount())
    assert total == metrics.phase_work([BatchRequest(1, 1000)], MLA)["total"]
    assert total.bytes == _mla_io(1, 1024) + WEIGHT_BYTES


def test_mla_prefill_groups_by_hand():
    groups = metrics.kernel_groups([BatchRequest(100, 1100)], MLA)
    assert list(groups) == ["cache_write", "prefill_kv_up", "prefill_attention"]
    # kv_b_proj over all 1100 latents; it gathers the 1000 context tokens (16 pages) and reads the weights
    assert groups["prefill_kv_up"] == metrics.WorkCount(
        flops=2 * 1100 * RANK * H * (NOPE + V), bytes=E * 1024 * LATENT + WEIGHT_BYTES,
        projection_flops=2 * 1100 * RANK * H * (NOPE + V), weight_bytes=WEIGHT_BYTES)
    pairs = _brute_pairs(100, 1100)
    assert groups["prefill_attention"] == metrics.WorkCount(pairs, 2 * H * (NOPE + ROPE + V) * pairs,
                                                       E * (100 * H * (NOPE + ROPE) + 100 * H * V), 1, 100)


def test_mla_mixed_batch_runs_both_pipelines_one_after_another():
    reqs = parse_batch_spec("q4k_64q1s1k")
    out = metrics.summarize(reqs, MLA, 1e-3, PEAKS)
    groups = out.kernel_groups
    assert set(groups) == {"cache_write", "decode_q_absorb", "decode_attention", "decode_v_up", "prefill_kv_up",
                           "prefill_attention"}
    assert groups["prefill_attention"]["bound"] == "compute" and groups["decode_attention"]["bound"] == "memory"
    assert out.sequential_floor_s == pytest.approx(sum(g["floor_s"] for g in groups.values()))
    assert out.sequential_floor_s > out.overlap_floor_s
    assert sum(g["bytes"] for g in groups.values()) == out.bytes
    assert sum(g["flops"] for g in groups.values()) == out.flops
    assert sum(g["weight_bytes"] for g in groups.values()) == out.weight_bytes == 2 * WEIGHT_BYTES


@settings(max_examples=60, deadline=None)
@given(reqs=st.lists(st.tuples(st.integers(1, 300), st.integers(0, 3000)), min_size=1, max_size=6),
       mla=st.booleans(), split=st.booleans())
def test_groups_partition_the_call_and_sequential_is_at_least_overlap(reqs, mla, split):
    batch = [BatchRequest(q, q + c) for q, c in reqs]
    shape = MLA if mla else AttentionShape()
    paths = [metrics.default_mla_path(r) for r in batch] if split and not mla else None
    groups = metrics.kernel_groups(batch, shape, attention_paths=paths)
    assert sum(groups.values(), metrics.WorkCount()) == metrics.phase_work(batch, shape)["total"]
    out = metrics.summarize(batch, shape, 1e-3, PEAKS, attention_paths=paths)
    assert out.sequential_floor_s >= out.overlap_floor_s * (1 - 1e-12)


def test_bound_label_per_phase_for_mixed_batches():
    def label(spec, shape=AttentionShape(), peaks=PEAKS):
        return metrics.summarize(parse_batch_spec(spec), shape, 1e-3, peaks).bound_label

    assert label("32q1s1k") == "memory" and label("q8k") == "compute"
    assert label("q8k_32q1s1k") == "decode:mem+prefill:comp"  # decodes first, as the builders order them
    assert label("q8k_q4s1k_32q1s1k") == "decode:mem+extend:mem+prefill:comp"
    assert label("q4k_64q1s1k", MLA) == "decode:mem+prefill:comp"
    assert label("q8k_32q1s1k", peaks=None) is None


def test_summarize_gives_the_records_work_and_it_survives_the_records_json():
    from attnbench.results.record import CaseRecord, Work

    out = metrics.summarize(parse_batch_spec("q4k_8q1s1k"), MLA, 1e-3, PEAKS)
    assert isinstance(out, Work) and out.peaks == PEAKS
    assert (out.pct_of_peak_basis, out.bound_label) == ("sequential", "decode:mem+prefill:comp")
    record = CaseRecord.from_json({"schema": 2, "backend": "X", "batch_spec": "q4k_8q1s1k", "timing": {"mode": "none"},
                                   "verification": {"status": "passed"}, "work": dataclasses.asdict(out)})
    assert CaseRecord.from_json(json.loads(json.dumps(record.to_json()))).work == out


# ------------------------------------------------------------------------------------ timed region
# "attention": the backend's attention call alone, on an already written cache. Standard attention is
# impl.forward (no cache write, the new K/V read from the cache as part of K/V); MLA decode rows are
# forward_mqa on the absorbed q (576 per head in, the 512-wide latent out, no projection GEMMs or weights);
# MLA prefill rows are forward_mha (kv_b_proj over context + new latents, the new kv_c + k_pe as inputs).

def test_attention_region_of_standard_attention_drops_exactly_the_cache_write():
    reqs = parse_batch_spec(MIXED)
    shape = AttentionShape()
    layer = metrics.summarize(reqs, shape, 1e-3, PEAKS)
    attention = metrics.summarize(reqs, shape, 1e-3, PEAKS, timed_region="attention")
    cache_write = sum(E * r.q_len * shape.num_kv_heads * 2 * shape.head_dim * 2 for r in reqs)
    assert layer.kernel_groups["cache_write"]["bytes"] == cache_write == 2 * 4132 * 8 * 256 * 2
    assert layer.bytes - attention.bytes == cache_write
    assert attention.flops == layer.flops and attention.attended_pairs == layer.attended_pairs
    assert (layer.timed_region, attention.timed_region) == ("layer", "attention")
    # one varlen kernel is the whole region: one group, so the two floors are one
    assert list(attention.kernel_groups) == ["attention"]
    assert attention.sequential_floor_s == attention.overlap_floor_s
    assert attention.pct_of_peak == attention.pct_of_peak_overlap
    for req in reqs:
        layer_bytes = metrics.request_work(req, shape).bytes
        attention_bytes = metrics.request_work(req, shape, timed_region="attention").bytes
        assert layer_bytes - attention_bytes == E * req.q_len * 8 * 256 * 2


def test_attention_region_of_a_tiny_call_by_hand():
    out = metrics.summarize([BatchRequest(2, 4)], TINY, 10.0, SLOW_PEAKS, timed_region="attention")
    assert (out.flops, out.bytes) == (224, 128)  # Q 16 + K/V one page 32 + O 16 elements, 2 bytes each
    assert out.overlap_floor_s == out.sequential_floor_s == pytest.approx(2.24)


def test_attention_region_of_mla_decode_is_forward_mqa_on_the_absorbed_q():
    work = metrics.request_work(BatchRequest(1, 1000), MLA, timed_region="attention")
    # absorbed q (512 + 64 per head) in, 16 pages of the latent cache, the latent output (512 per head) out
    assert work.bytes == E * (H * LATENT + 1024 * LATENT + H * RANK) == 2 * (9216 + 589_824 + 8192)
    assert work.flops == 2 * H * (LATENT + RANK) * 1000 and work.projection_flops == 0
    decode = metrics.phase_work(parse_batch_spec("8q1s1k"), MLA, timed_region="attention")["total"]
    assert decode.weight_bytes == 0 and decode.bytes == 8 * work.bytes  # no W_UK / W_UV in the region
    groups = metrics.kernel_groups(parse_batch_spec("8q1s1k"), MLA, timed_region="attention")
    assert list(groups) == ["decode_attention"]
    assert metrics.weight_work(MLA, "decode", timed_region="attention") == metrics.WorkCount()


def test_attention_region_of_mla_prefill_is_forward_mha():
    req = BatchRequest(100, 1100)
    layer = metrics.request_work(req, MLA)
    work = metrics.request_work(req, MLA, timed_region="attention")
    # the new latents are still read (as forward_mha's inputs), no longer written to the cache
    assert layer.bytes - work.bytes == E * 100 * LATENT
    assert work.bytes == E * (100 * H * (NOPE + ROPE) + 100 * LATENT + 1024 * LATENT + 100 * H * V)
    assert work.flops == layer.flops and work.projection_flops == 2 * 1100 * RANK * H * (NOPE + V)
    groups = metrics.kernel_groups([req], MLA, timed_region="attention")
    assert list(groups) == ["prefill_kv_up", "prefill_attention"]
    assert groups["prefill_kv_up"].weight_bytes == WEIGHT_BYTES  # kv_b_proj runs inside forward_mha
    mixed = metrics.summarize(parse_batch_spec("q300_8q1s1k"), MLA, 1e-3, PEAKS, timed_region="attention")
    assert mixed.weight_bytes == WEIGHT_BYTES  # the prefill path's kv_b_proj only
    assert mixed.projection_flops == 2 * 300 * RANK * H * (NOPE + V)


def test_unknown_timed_region_is_refused():
    with pytest.raises(ValueError, match="unknown timed region 'kernel'"):
        metrics.summarize(parse_batch_spec("q1s1k"), AttentionShape(), 1e-3, PEAKS, timed_region="kernel")
