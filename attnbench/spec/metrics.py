"""The work model: exact FLOPs and compulsory bytes of one attention call.

Everything derives from the parsed requests and the shape, per phase (prefill,
extend, decode), so a mixed batch reports where its time should go. Pairs are exact
causal bottom-right (query j of a request with context c attends c + j + 1 keys):
q (2s - q + 1) / 2 per request. A phase's bound is whichever floor (FLOPs over peak
FLOP/s, bytes over peak bandwidth) is larger.

Two floors for the whole call. The *overlap* floor, max(F/peak, B/bw) over the call,
lets every FLOP overlap every byte. The call's kernels run one after another, though, so
the *sequential* floor sums max(F_g/peak, B_g/bw) over its kernel groups
(``kernel_groups``): the cache write; the attention kernel (one varlen kernel for a
standard backend, or a decode and a prefill kernel where the backend splits the batch:
``attention_paths``); for MLA, per pipeline used, the decode path's W_UK bmm, MQA kernel
and W_UV bmm and the prefill path's kv_b_proj GEMM and MHA kernel. The groups partition
the call's compulsory work (each input to the first group that reads it, each output to
the group that writes it; intermediates between groups are not counted, since they may
stay in L2), so sequential >= overlap, equal for one group or when every group has the
same bound. ``pct_of_peak`` uses the sequential floor: it is the tighter of the two
lower bounds on the time.

Compulsory bytes are the timed step's real inputs and outputs, each counted once;
intermediates the kernels make for themselves are not.

* Standard attention: Q, K/V once per KV head (whole pages, since the paged cache is
  read in blocks), the new K/V read from the layer and written into the cache, and O.
  FLOPs 2·Hq·(d_qk + d_v)·pairs. The cache counts at its stored size
  (``shape.kv_entry_bytes``: a per-(token, head) format's entry includes its inline float32
  scale, e.g. 132 bytes for int8 at d = 128, 68 for int4); int4's Hadamard rotations of
  q, O and the new K/V are their own group (``KV_ROTATION``, bytes only).
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

* Sparse MLA (DeepSeek-V3.2, ``sparse``: a ``SparseSelection`` per request): rows on the MQA pipeline attend
  only the keys the indexer selected. Their pairs are the (query, selected key) pairs, their cache reads the
  distinct selected latent rows (``SparseSelection.rows`` x ``entry_bytes``: 1152 for a bf16 entry, 656 for
  fp8_ds_mla), plus the step's top-k index rows (index_topk int32 per token). Everything else (projection
  GEMMs, q_pe, weights, cache write) is the dense decode path's; rows on the MHA pipeline are dense prefill rows
  (vLLM takes it only while the whole context fits in top-k, where the selection is the whole context).
  ``sparse_mqa_groups`` is that difference, in one place.

The timed region (``timed_region``): "layer" (the default) is the layer step above.
"attention" is the backend's attention call alone, on a cache that is already written,
so there is no cache-write group. Standard attention (``impl.forward``) reads the new
tokens' K/V from the cache as part of K/V, not from the layer. MLA decode rows run
``forward_mqa`` on the absorbed q: it reads the absorbed q (rank + rope, 576 per head)
and writes the latent output (rank, 512 per head), with no W_UK / W_UV GEMMs and no
weights. MLA prefill rows run ``forward_mha``, which still up-projects the context and
new latents with kv_b_proj (so it reads those weights) and reads the new tokens' kv_c +
k_pe as its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from attnbench.results.record import Work
from attnbench.spec.contract import TIMED_REGIONS
from attnbench.spec.shapes import ROTATED_KV_CACHE_DTYPES, AttentionShape, MLAShape, Shape
from grammar import BatchRequest

PHASES = ("prefill", "extend", "decode")
MLA_PATHS = ("decode", "prefill")
CACHE_WRITE = "cache_write"
ATTENTION = "attention"  # a standard backend's one attention kernel for the whole batch
# What the timer covered: the whole layer step, or the backend's attention call alone (see the docstring).
# The kernel groups a call can run, one after another: each pipeline's in its own order (the sequential
# floor, a sum, does not depend on the order of the pipelines).
QUERY_QUANT = "query_quant"  # the layer's fp8 quantisation of q before a quantised-cache attention kernel
# int4_per_token_head's Hadamard rotations (vLLM's single_rht): of the new K and V before the cache write, of q
# before the attention kernel and of its output after it; each reads and writes its tensor in the model dtype
KV_ROTATION = "kv_rotation"
KERNEL_GROUPS = (CACHE_WRITE, QUERY_QUANT, KV_ROTATION, ATTENTION, "decode_q_absorb", "decode_q_quant",
                 "decode_attention", "decode_v_up", "prefill_kv_up", "prefill_attention")
FP8_BYTES = 1
# The per-phase bound label lists phases in batch order (vLLM's builders put decodes first).
LABEL_ORDER = ("decode", "extend", "prefill")
_SHORT_BOUND = {"memory": "mem", "compute": "comp"}


def attended_pairs(q_len: int, kv_len: int) -> int:
    """Query-key pairs a causal, bottom-right-aligned request computes."""
    return q_len * (2 * kv_len - q_len + 1) // 2


@dataclass(frozen=True)
class WorkCount:
    """The work counted for a request, a phase or a kernel group. ``flops`` includes ``projection_flops``;
    ``bytes`` includes ``weight_bytes`` (both zero for standard attention)."""

    pairs: int = 0
    flops: int = 0
    bytes: int = 0
    requests: int = 0
    tokens: int = 0
    projection_flops: int = 0
    weight_bytes: int = 0

    def __add__(self, other: "WorkCount") -> "WorkCount":
        return WorkCount(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.pairs, self.flops, self.bytes, self.requests, self.tokens, self.projection_flops,
                self.weight_bytes)


@dataclass(frozen=True)
class SparseSelection:
    """What one request's queries select in a sparse MLA step (``attnbench.measure.sparse_mla.selections``)."""

    pairs: int  # (query, selected key) pairs
    rows: int  # distinct latent rows selected by the request's queries: the compulsory cache reads
    index_topk: int  # width of one token's index row (int32 entries, -1 padded)
    entry_bytes: int  # one latent cache entry: (rank + rope) x element size, or 656 for fp8_ds_mla


def sparse_mqa_groups(req: BatchRequest, shape: MLAShape, selection: SparseSelection,
                      layer: bool) -> dict[str, WorkCount]:
    """The MQA pipeline's attention group of a sparse request: the dense decode path's formulas with the
    selected pairs and selected rows in place of the causal pairs and the whole paged context."""
    e, hq, latent, rank, rope = (shape.elem_bytes, shape.num_q_heads, shape.head_dim, shape.kv_lora_rank,
                                 shape.qk_rope_head_dim)
    t, pairs = req.q_len, selection.pairs
    cache_and_indices = selection.rows * selection.entry_bytes + t * selection.index_topk * 4
    if layer:  # q_pe in (the absorbed nope part is an intermediate); the latent output is too
        moved = e * t * hq * rope + cache_and_indices
    else:  # forward_mqa alone: the absorbed q in, the latent output out
        moved = e * (t * hq * latent + t * hq * rank) + cache_and_indices
    return {"decode_attention": WorkCount(pairs, 2 * hq * (latent + rank) * pairs, moved, 1, t)}


def _paged(kv_len: int, block_size: int) -> int:
    return math.ceil(kv_len / block_size) * block_size


def _attention_group(attention_path: str | None) -> str:
    if attention_path is None:
        return ATTENTION
    if attention_path not in MLA_PATHS:
        raise ValueError(f"unknown attention path {attention_path!r} (expected one of {', '.join(MLA_PATHS)})")
    return f"{attention_path}_attention"


def _check_region(timed_region: str) -> None:
    if timed_region not in TIMED_REGIONS:
        raise ValueError(f"unknown timed region {timed_region!r} (expected one of {', '.join(TIMED_REGIONS)})")


def request_groups(req: BatchRequest, shape: Shape, mla_path: str | None = None,
                   attention_path: str | None = None, *, timed_region: str = "layer",
                   quantized_query: bool = False, selection: SparseSelection | None = None) -> dict[str, WorkCount]:
    """One request's activation work (no weights: see ``weight_groups``) split over the kernel groups that run
    it; the groups sum to ``request_work``. The attention group carries the pairs, the request and its tokens.

    For MLA, ``mla_path`` is "decode" (MQA over the latent) or "prefill" (MHA); None means
    ``default_mla_path``. For standard attention, ``attention_path`` ("decode" / "prefill") names the
    attention kernel of a backend that runs decode and prefill rows as separate kernels; None means one
    kernel for the whole batch. ``timed_region``: "layer" or "attention" (``TIMED_REGIONS``). ``selection``: a
    sparse MLA request's top-k selection (its MQA-pipeline rows attend only those keys).

    The cache's bytes are its stored entries' (``shape.kv_entry_bytes``: one byte per element for fp8, plus the
    inline scale for a per-(token, head) format; MLA: ``shape.kv_elem_bytes`` per latent element).
    ``quantized_query``: the attention kernel reads q as fp8, which the layer step quantises first (its own group, or
    for MLA decode the absorbed q's concat-and-quantise); the attention region finds it quantised."""
    _check_region(timed_region)
    layer = timed_region == "layer"
    e, c = shape.elem_bytes, shape.kv_elem_bytes
    qe = FP8_BYTES if quantized_query else e
    pairs = attended_pairs(req.q_len, req.kv_len)
    kv_read = _paged(req.kv_len, shape.block_size)
    t = req.q_len
    if isinstance(shape, AttentionShape):
        d, hq, hkv = shape.head_dim, shape.num_q_heads, shape.num_kv_heads
        entry = shape.kv_entry_bytes(d)  # one token's K (or V) of one KV head as stored, inline scale included
        # new K/V read from the layer and written to the cache; impl.forward alone finds them in the cache
        groups = {CACHE_WRITE: WorkCount(bytes=(e * d + entry) * t * hkv * 2)} if layer else {}
        if layer and quantized_query:
            groups[QUERY_QUANT] = WorkCount(bytes=(e + qe) * t * hq * d)
        if shape.kv_cache_dtype in ROTATED_KV_CACHE_DTYPES:
            rotated = t * hq * d * 2 + (t * hkv * d * 2 if layer else 0)  # q and O; the new K and V
            groups[KV_ROTATION] = WorkCount(bytes=2 * e * rotated)
        return groups | {
            _attention_group(attention_path): WorkCount(
                pairs, 2 * hq * (d + d) * pairs,
                qe * t * hq * d  # Q
                + entry * kv_read * hkv * 2  # K and V (the new tokens' included), once per KV head, whole pages
                + e * t * hq * d,  # O
                1, t)}
    assert isinstance(shape, MLAShape)
    hq, latent, rank = shape.num_q_heads, shape.head_dim, shape.kv_lora_rank
    nope, rope, qk, v = shape.qk_nope_head_dim, shape.qk_rope_head_dim, shape.qk_head_dim, shape.v_head_dim
    # kv_c + k_pe of the new tokens: read from the layer, written to the latent cache
    groups = {CACHE_WRITE: WorkCount(bytes=(e + c) * t * latent)} if layer else {}
    path = _resolve_path(req, mla_path)
    sparse = sparse_mqa_groups(req, shape, selection, layer) if selection is not None and path == "decode" else {}
    if path == "decode" and not layer:
        # forward_mqa alone: the absorbed q (rank + rope per head) in, the latent output (rank per head) out
        groups["decode_attention"] = WorkCount(pairs, 2 * hq * (latent + rank) * pairs,
                                               qe * t * hq * latent + c * kv_read * latent + e * t * hq * rank, 1, t)
    elif path == "decode":
        absorb = 2 * t * hq * nope * rank  # q_nope [T,Hq,nope] x W_UK [Hq,nope,rank]
        v_up = 2 * t * hq * rank * v  # latent out [T,Hq,rank] x W_UV [Hq,rank,v]
        groups["decode_q_absorb"] = WorkCount(flops=absorb, bytes=e * t * hq * nope, projection_flops=absorb)
        q_pe = e * t * hq * rope
        if quantized_query:  # absorbed q_nope and q_pe concatenated into one fp8 q (read: q_pe; the rest is L2's)
            groups["decode_q_quant"] = WorkCount(bytes=q_pe)
        # MQA over the latent: scores over rank + rope, values over the rank-wide latent; it reads q_pe and the
        # whole kv (the new tokens were just written) from the cache. Absorbed q and latent out are intermediates.
        groups["decode_attention"] = WorkCount(pairs, 2 * hq * (latent + rank) * pairs,
                                               (0 if quantized_query else q_pe) + c * kv_read * latent, 1, t)
        groups["decode_v_up"] = WorkCount(flops=v_up, bytes=e * t * hq * v, projection_flops=v_up)  # writes the output
    else:
        # kv_b_proj up-projects every new and cached latent; only the context (kv - q, whole pages) is read
        # from the cache
        up = 2 * req.kv_len * rank * hq * (nope + v)
        context = _paged(req.kv_len - t, shape.block_size)
        # forward_mha alone reads the new latents as its inputs (in the layer step the cache write did)
        new_latents = 0 if layer else t * latent
        groups["prefill_kv_up"] = WorkCount(flops=up, bytes=e * new_latents + c * context * latent, projection_flops=up)
        # MHA over qk / v: reads q (nope + rope per head), writes the output
        groups["prefill_attention"] = WorkCount(pairs, 2 * hq * (qk + v) * pairs, e * (t * hq * qk + t * hq * v), 1, t)
    return groups | sparse


def request_work(req: BatchRequest, shape: Shape, mla_path: str | None = None, *,
                 timed_region: str = "layer", quantized_query: bool = False,
                 selection: SparseSelection | None = None) -> WorkCount:
    """Activation work of one request (no weights: see ``weight_work``): the sum of its ``request_groups``.

    For MLA, ``mla_path`` is "decode" (MQA over the latent) or "prefill" (MHA); None means
    ``default_mla_path``."""
    return sum(request_groups(req, shape, mla_path, timed_region=timed_region, quantized_query=quantized_query,
                              selection=selection).values(), WorkCount())


def weight_groups(shape: Shape, mla_path: str, *, timed_region: str = "layer") -> dict[str, WorkCount]:
    """The weights one MLA pipeline reads once per call, by the GEMM that reads them: W_UK (q absorption) and
    W_UV (V up-projection) for the decode path, kv_b_proj for the prefill path. None for standard attention,
    and none for the decode path when only its attention kernel (forward_mqa) was timed."""
    _check_region(timed_region)
    if not isinstance(shape, MLAShape):
        return {}
    if mla_path not in MLA_PATHS:
        raise ValueError(f"unknown MLA path {mla_path!r} (expected one of {', '.join(MLA_PATHS)})")
    e, hq, rank = shape.elem_bytes, shape.num_q_heads, shape.kv_lora_rank
    nope, v = shape.qk_nope_head_dim, shape.v_head_dim

    def weights(n: int) -> WorkCount:
        return WorkCount(bytes=e * n, weight_bytes=e * n)

    if mla_path == "decode" and timed_region == "attention":
        return {}
    if mla_path == "decode":
        return {"decode_q_absorb": weights(hq * nope * rank), "decode_v_up": weights(hq * rank * v)}
    return {"prefill_kv_up": weights(hq * (nope + v) * rank)}


def weight_work(shape: Shape, mla_path: str, *, timed_region: str = "layer") -> WorkCount:
    """The weights one call reads for one MLA pipeline (kv_b_proj, i.e. W_UK + W_UV): counted once per call
    per pipeline used. Standard attention has no weights in the timed step."""
    return sum(weight_groups(shape, mla_path, timed_region=timed_region).values(), WorkCount())


def default_mla_path(req: BatchRequest) -> str:
    return "decode" if req.is_decode else "prefill"


def _resolve_path(req: BatchRequest, mla_path: str | None) -> str:
    path = mla_path or default_mla_path(req)
    if path not in MLA_PATHS:
        raise ValueError(f"unknown MLA path {path!r} (expected one of {', '.join(MLA_PATHS)})")
    return path


def phase_work(requests: Sequence[BatchRequest], shape: Shape, mla_paths: Sequence[str] | None = None, *,
               timed_region: str = "layer", quantized_query: bool = False,
               sparse: Sequence[SparseSelection] | None = None) -> dict[str, WorkCount]:
    """The work per phase (prefill / extend / decode) and ``total``; MLA weights once per pipeline used."""
    out = {p: WorkCount() for p in PHASES}
    phases_on: dict[str, list[str]] = {}  # MLA pipeline -> the phases whose requests run on it
    for i, req in enumerate(requests):
        path = mla_paths[i] if mla_paths else None
        out[req.kind] = out[req.kind] + request_work(req, shape, path, timed_region=timed_region,
                                                     quantized_query=quantized_query,
                                                     selection=sparse[i] if sparse else None)
        if isinstance(shape, MLAShape):
            phases_on.setdefault(_resolve_path(req, path), []).append(req.kind)
    for pipeline, kinds in phases_on.items():
        home = pipeline if pipeline in kinds else next(p for p in PHASES if p in kinds)
        out[home] = out[home] + weight_work(shape, pipeline, timed_region=timed_region)
    out = {p: w for p, w in out.items() if w.requests}
    out["total"] = sum(out.values(), WorkCount())
    return out


def kernel_groups(requests: Sequence[BatchRequest], shape: Shape, mla_paths: Sequence[str] | None = None,
                  attention_paths: Sequence[str] | None = None, *, timed_region: str = "layer",
                  quantized_query: bool = False, sparse: Sequence[SparseSelection] | None = None
                  ) -> dict[str, WorkCount]:
    """The work per kernel group (``KERNEL_GROUPS`` order, empty groups left out): the partition of the call's
    work over the kernels that run one after another. MLA weights go to the GEMMs of each pipeline used.

    ``attention_paths`` (standard attention only): per request, which attention kernel runs it, for a
    backend that splits decode and prefill rows (FlashInfer's decode and prefill wrappers); None: one
    varlen kernel for the batch (FlashAttention, Triton). MLA always splits by ``mla_paths``."""
    out = {g: WorkCount() for g in KERNEL_GROUPS}
    pipelines: set[str] = set()
    for i, req in enumerate(requests):
        path = mla_paths[i] if mla_paths else None
        attention_path = attention_paths[i] if attention_paths else None
        selection = sparse[i] if sparse else None
        for group, w in request_groups(req, shape, path, attention_path, timed_region=timed_region,
                                       quantized_query=quantized_query, selection=selection).items():
            out[group] = out[group] + w
        if isinstance(shape, MLAShape):
            pipelines.add(_resolve_path(req, path))
    for pipeline in pipelines:
        for group, w in weight_groups(shape, pipeline, timed_region=timed_region).items():
            out[group] = out[group] + w
    return {g: w for g, w in out.items() if w.flops or w.bytes}


def bound(work: WorkCount, peak_flops: float | None, peak_bytes_per_s: float | None) -> str | None:
    if not peak_flops or not peak_bytes_per_s:
        return None
    return "compute" if work.flops / peak_flops >= work.bytes / peak_bytes_per_s else "memory"


def floor_seconds(work: WorkCount, peak_flops: float | None, peak_bytes_per_s: float | None) -> float | None:
    if not peak_flops or not peak_bytes_per_s:
        return None
    return max(work.flops / peak_flops, work.bytes / peak_bytes_per_s)


def sequential_floor_seconds(groups: Mapping[str, WorkCount], peak_flops: float | None,
                             peak_bytes_per_s: float | None) -> float | None:
    """The sum of the groups' floors: kernels that run one after another cannot overlap their bounds."""
    if not peak_flops or not peak_bytes_per_s:
        return None
    return sum(max(w.flops / peak_flops, w.bytes / peak_bytes_per_s) for w in groups.values())


def bound_label(phases: Mapping[str, WorkCount], peak_flops: float | None,
                peak_bytes_per_s: float | None) -> str | None:
    """"memory" / "compute" for a one-phase call; per phase for a mixed one, e.g. "decode:mem+prefill:comp"."""
    present = [p for p in LABEL_ORDER if p in phases]
    if not present or not peak_flops or not peak_bytes_per_s:
        return None
    if len(present) == 1:
        return bound(phases[present[0]], peak_flops, peak_bytes_per_s)
    return "+".join(f"{p}:{_SHORT_BOUND[bound(phases[p], peak_flops, peak_bytes_per_s)]}" for p in present)


def summarize(requests: Sequence[BatchRequest], shape: Shape, seconds: float,
              peaks: dict[str, Any] | None = None, mla_paths: Sequence[str] | None = None, *,
              attention_paths: Sequence[str] | None = None, timed_region: str = "layer",
              quantized_query: bool = False, sparse: Sequence[SparseSelection] | None = None) -> Work:
    """The record's work model at ``seconds`` (the median): FLOPs, bytes, rates, both floors, % of the measured
    ``peaks``, bound per phase and per kernel group.

    ``flops`` includes ``projection_flops`` (MLA's W_UK / W_UV / kv_b_proj GEMMs; 0 for standard attention)
    and ``bytes`` includes ``weight_bytes`` (MLA's kv_b_proj weights, once per call per pipeline used); both
    are also given on their own, in the total and per phase. ``pct_of_peak`` is measured against the
    sequential floor (``pct_of_peak_basis``); ``pct_of_peak_overlap`` against the overlap floor.
    ``attention_paths``: see ``kernel_groups``. ``timed_region``: what the timer covered, "layer" (the
    layer step) or "attention" (the backend's attention call alone; see the module docstring). ``sparse``: per
    request in execution order, a sparse MLA step's top-k selection (None: dense)."""
    peaks = peaks or {}
    pf, pb = peaks.get("peak_bf16_tflops"), peaks.get("peak_copy_gbps")
    pf = pf * 1e12 if pf else None
    pb = pb * 1e9 if pb else None
    phases = phase_work(requests, shape, mla_paths, timed_region=timed_region, quantized_query=quantized_query,
                        sparse=sparse)
    groups = kernel_groups(requests, shape, mla_paths, attention_paths, timed_region=timed_region,
                           quantized_query=quantized_query, sparse=sparse)
    total = phases["total"]
    overlap = floor_seconds(total, pf, pb)
    # the sequential floor is the tighter of the two lower bounds (>= the overlap floor) and follows the
    # kernels the call really launches one after another, so % peak is measured against it
    sequential = sequential_floor_seconds(groups, pf, pb)
    timed = seconds > 0
    return Work(
        timed_region=timed_region, attended_pairs=total.pairs, flops=total.flops, bytes=total.bytes,
        projection_flops=total.projection_flops, weight_bytes=total.weight_bytes,
        tflops=total.flops / seconds / 1e12 if timed else None,
        gbps=total.bytes / seconds / 1e9 if timed else None,
        bound=bound(total, pf, pb), bound_label=bound_label(phases, pf, pb),
        overlap_floor_s=overlap, sequential_floor_s=sequential, pct_of_peak_basis="sequential",
        pct_of_peak=100.0 * sequential / seconds if sequential and timed else None,
        pct_of_peak_overlap=100.0 * overlap / seconds if overlap and timed else None,
        pct_peak_flops=100.0 * total.flops / seconds / pf if pf and timed else None,
        pct_peak_bandwidth=100.0 * total.bytes / seconds / pb if pb and timed else None,
        phases={name: {"requests": w.requests, "tokens": w.tokens, "attended_pairs": w.pairs, "flops": w.flops,
                       "bytes": w.bytes, "projection_flops": w.projection_flops, "weight_bytes": w.weight_bytes,
                       "bound": bound(w, pf, pb), "floor_s": floor_seconds(w, pf, pb)}
                for name, w in phases.items() if name != "total"},
        kernel_groups={name: {"flops": w.flops, "bytes": w.bytes, "projection_flops": w.projection_flops,
                              "weight_bytes": w.weight_bytes, "bound": bound(w, pf, pb),
                              "floor_s": floor_seconds(w, pf, pb)}
                       for name, w in groups.items()},
        peaks=dict(peaks),
    )

