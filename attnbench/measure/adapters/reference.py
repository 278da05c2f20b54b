"""The REFERENCE backend: exact attention in plain torch over the harness's paged cache.

It runs on the CPU (and on a GPU), so the whole pipeline is exercised in CI. Its
timed step is the same as a model step: write the new tokens into the cache, then
attend over the cache.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch

from attnbench.measure import buffers, sparse_mla
from attnbench.measure.kv_cache import write_stored
from attnbench.spec.metrics import SparseSelection
from attnbench.measure.oracle import paged_attention
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import LayerCall, SkipCase, region_call
from attnbench.spec.shapes import FP8_DS_MLA, AttentionShape, MLAShape
from attnbench.spec.workload import build_layout, resolve_device

TIMED_REGION = {"layer": "cache write + attention (plain torch, float32 math)",
                "attention": "attention over the already written cache (plain torch, float32 math)"}
# The ranges vLLM's calc_kv_scales divides |max| by (envs K_SCALE_CONSTANT, V_SCALE_CONSTANT defaults): the
# REFERENCE has no vLLM layer, so it calibrates an fp8 cache the way that layer would.
K_RANGE, V_RANGE = 200.0, 100.0


def calibrate_like_vllm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    return float(k.abs().max()) / K_RANGE or 1.0, float(v.abs().max()) / V_RANGE or 1.0


def scales_for(kv_scales: str) -> buffers.Calibrate:
    """The REFERENCE's scales for run setting ``kv_scales``: calibrated like vLLM's layer, or unit."""
    return calibrate_like_vllm if kv_scales == "calibrated" else (lambda q, k, v: (1.0, 1.0))


class PlainTorchAdapter:
    """What an adapter that runs plain torch (no vLLM state, no forward context) shares."""

    def context(self) -> ContextManager[Any]:
        return nullcontext()

    def close(self) -> None:
        pass


class ReferenceAttentionAdapter(PlainTorchAdapter):
    mla_paths = None
    attention_paths = None
    sparse_selections = None
    quantized_query = False

    def __init__(self, case: BenchCase) -> None:
        shape = case.effective_shape
        assert isinstance(shape, AttentionShape)
        self.shape, self.case = shape, case
        self.device = resolve_device(case.run.device)
        self.requests = case.requests
        self.layout = build_layout(self.requests, shape.block_size, self.device, case.run.seed)
        self.bytes_per_layer = buffers.attention_buffer_bytes(self.layout, shape)
        self.info: dict[str, Any] = {"kernel_path": "torch reference", "timed_region": TIMED_REGION[case.timed_region],
                                     "driven_through": "attnbench.measure.oracle"}

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        shape = self.shape
        return (num_layer_buffers * self.bytes_per_layer
                + buffers.oracle_transient_bytes(self.layout, shape.num_q_heads, 2 * shape.head_dim))

    def make_layer(self, index: int) -> LayerCall:
        layout, shape = self.layout, self.shape
        buf = buffers.make_attention_buffers(layout, shape, self.device, self.case.run.seed + 1 + index,
                                            lambda: buffers.plain_attention_cache(layout, shape, self.device),
                                            self.case.run.kv_fill, scales_for(self.case.run.kv_scales))
        scale = shape.head_dim ** -0.5

        def write() -> None:
            write_stored(buf.kv_format, buf.key_cache, layout.slot_mapping, buf.key, buf.k_scale)
            write_stored(buf.kv_format, buf.value_cache, layout.slot_mapping, buf.value, buf.v_scale)

        def attend() -> None:
            buf.output.copy_(paged_attention(buf.query, buf.key_cache, buf.value_cache, layout.block_table,
                                             layout.query_lens, layout.kv_lens, scale, buf.k_scale, buf.v_scale,
                                             buf.kv_format))

        return region_call(self.case.timed_region, write, attend, lambda: buf.output,
                           buffers.attention_oracle(buf, layout, scale), buffers.attention_cache_check(buf, layout),
                           buffers.unquantized_attention_oracle(buf, layout, scale))


class ReferenceMLAAdapter(PlainTorchAdapter):
    attention_paths = None
    sparse_selections: list[SparseSelection] | None = None  # the sparse subclass's
    quantized_query = False

    def __init__(self, case: BenchCase) -> None:
        shape = case.effective_shape
        assert isinstance(shape, MLAShape)
        if shape.kv_cache_dtype == FP8_DS_MLA and case.topk_pattern is None:
            raise SkipCase(f"kv_cache_dtype={FP8_DS_MLA} is sparse MLA's cache entry (test_sparse_mla's cases)")
        self.shape, self.case = shape, case
        self.device = resolve_device(case.run.device)
        self.requests = case.requests
        self.mla_paths = None
        self.layout = build_layout(self.requests, shape.block_size, self.device, case.run.seed)
        self.bytes_per_layer = buffers.mla_buffer_bytes(self.layout, shape)
        self.info: dict[str, Any] = {"kernel_path": "torch reference (latent up-projected with kv_b_proj)",
                                     "timed_region": TIMED_REGION[case.timed_region],
                                     "driven_through": "attnbench.measure.oracle"}

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        shape = self.shape
        return (num_layer_buffers * self.bytes_per_layer
                + buffers.oracle_transient_bytes(self.layout, shape.num_q_heads, shape.qk_head_dim + shape.v_head_dim))

    def make_layer(self, index: int) -> LayerCall:
        layout, shape = self.layout, self.shape
        seed = self.case.run.seed + 1 + index
        buf = buffers.make_mla_buffers(layout, shape, self.device, seed, kv_fill=self.case.run.kv_fill,
                                      calibrate=scales_for(self.case.run.kv_scales))
        weight = buffers.make_kv_b_proj_weight(shape, self.device, seed + 10_000)
        oracle = buffers.mla_oracle(buf, layout, shape, weight)

        def write() -> None:
            write_stored(buf.kv_format, buf.kv_cache, layout.slot_mapping, torch.cat([buf.kv_c, buf.k_pe], dim=-1),
                         buf.kv_scale)

        def attend() -> None:
            buf.output.copy_(oracle())

        return region_call(self.case.timed_region, write, attend, lambda: buf.output, oracle,
                           buffers.mla_cache_check(buf, layout),
                           buffers.unquantized_mla_oracle(buf, layout, shape, weight))


class ReferenceSparseMLAAdapter(ReferenceMLAAdapter):
    """Sparse MLA (DeepSeek-V3.2): the same seeded buffers, the mock indexer's top-k indices, and exact attention
    over exactly the selected tokens; an fp8_ds_mla cache holds the 656-byte entries vLLM writes."""

    def __init__(self, case: BenchCase) -> None:
        super().__init__(case)
        shape = self.shape
        assert case.topk_pattern is not None
        topk = sparse_mla.DEEPSEEK_V32.index_topk
        self.ds_mla = shape.kv_cache_dtype in (FP8_DS_MLA, "fp8", "fp8_e4m3")  # as vLLM resolves FLASHMLA_SPARSE's
        self.indices = sparse_mla.batch_topk(case.topk_pattern, self.requests, topk, case.run.seed).to(self.device)
        entry = sparse_mla.entry_bytes(FP8_DS_MLA if self.ds_mla else "auto", shape.head_dim, shape.elem_bytes)
        self.sparse_selections = sparse_mla.selections(self.indices, self.requests, entry)
        self.mla_paths = ["decode"] * len(self.requests)  # the reference attends top-k for every row
        self.info["kernel_path"] = f"torch reference over the top-k selected tokens (index_topk {topk})"
        self.info.update({"topk_pattern": case.topk_pattern, "index_topk": topk,
                          "kv_cache_dtype": FP8_DS_MLA if self.ds_mla else "auto"})

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        return (num_layer_buffers * self.bytes_per_layer + sparse_mla.oracle_transient_bytes(
            self.requests, self.shape.num_q_heads, self.indices.shape[1]))

    def make_layer(self, index: int) -> LayerCall:
        layout, shape = self.layout, self.shape
        seed = self.case.run.seed + 1 + index
        cache = (torch.empty(layout.num_blocks, layout.block_size, sparse_mla.DS_MLA_ENTRY_BYTES, dtype=torch.uint8,
                             device=self.device) if self.ds_mla else None)
        buf = sparse_mla.make_buffers(layout, shape, self.device, seed, self.case.run.kv_fill, cache)
        weight = buffers.make_kv_b_proj_weight(shape, self.device, seed + 10_000)
        oracle = sparse_mla.make_oracle(buf, layout, shape, weight, self.indices)

        def write() -> None:
            sparse_mla.write_latents(buf.kv_cache, layout.slot_mapping, buf.kv_c, buf.k_pe)

        def attend() -> None:
            buf.output.copy_(oracle())

        return region_call(self.case.timed_region, write, attend, lambda: buf.output, oracle,
                           sparse_mla.cache_check(buf.kv_cache, layout.slot_mapping, buf.kv_c, buf.k_pe))


def make_attention_adapter(case: BenchCase) -> ReferenceAttentionAdapter:
    return ReferenceAttentionAdapter(case)


def make_mla_adapter(case: BenchCase) -> ReferenceMLAAdapter:
    return ReferenceSparseMLAAdapter(case) if case.topk_pattern is not None else ReferenceMLAAdapter(case)
