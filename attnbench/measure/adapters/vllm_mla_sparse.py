"""vLLM sparse MLA backends (FLASHMLA_SPARSE, FLASH_ATTN_MLA_SPARSE: DeepSeek-V3.2) through vLLM's own MLA layer,
with a mock indexer we control.

Path: the dense MLA adapter's (``vllm_mla``: a real ``MLAAttention`` with a seeded kv_b_proj, called as
``layer.forward(q, kv_c, k_pe)`` under ``set_forward_context``), with what makes vLLM 0.26.0 run it sparse:

* the model config is DeepSeek-V3.2's (``index_topk`` 2048, ``index_n_heads``, ``index_head_dim``,
  DeepseekV32ForCausalLM / deepseek_v32): the sparse builders read ``hf_config.index_topk``;
* the layer is built ``use_sparse=True`` with ``topk_indices_buffer=`` one [max_num_batched_tokens, index_topk]
  int32 tensor shared by every layer, as ``DeepseekV2Model`` allocates it; no Indexer is built (``indexer=None``,
  as for vLLM's own index-skipping layers), so nothing overwrites the buffer: it is filled once per case from the
  seeded pattern (``attnbench.measure.sparse_mla.batch_topk``), request-local positions in execution order;
* the KV cache is the backend's own layout: [NB, 64, 576] in the model dtype, or FLASHMLA_SPARSE's fp8_ds_mla
  [NB, 64, 656] uint8 (``--kv-cache-dtype fp8`` becomes fp8_ds_mla for it, as vLLM canonicalises it).

Which rows take which path is vLLM's: the builder's ``reorder_batch_threshold`` (256 at 128 heads on SM90) makes
the short rows decodes, which always run top-k MQA (``forward_mqa`` reads ``buffer[:num_mqa_tokens]``); the
prefill rows run dense MHA (``forward_mha``) while ``prefill_max_seq_len <= index_topk`` and
``sparse_mla_force_mqa`` is off, else top-k MQA as well. The verification reference is exact attention over
exactly the selected tokens, which for an MHA row (its whole context fits in top-k, so it is all selected) is
dense causal attention.
"""

from __future__ import annotations

from typing import Any

import torch

from attnbench.measure import buffers, sparse_mla
from attnbench.measure.adapters import vllm_common
from attnbench.measure.adapters.vllm_mla import VllmMLAAdapter
from attnbench.spec.cases import MHA, BenchCase
from attnbench.spec.contract import LayerCall, SkipCase
from attnbench.spec.workload import torch_dtype

DRIVEN_THROUGH = ("vllm MLAAttention(use_sparse=True, topk_indices_buffer=mock indexer's) layer forward under "
                  "set_forward_context")


class VllmSparseMLAAdapter(VllmMLAAdapter):
    indexer = sparse_mla.DEEPSEEK_V32

    def __init__(self, case: BenchCase) -> None:
        if case.topk_pattern is None:
            raise SkipCase(f"{case.backend.name} is a sparse MLA backend: its cases need a top-k pattern "
                           f"(bench_mla's test_sparse_mla)")
        self.topk = self.indexer.index_topk
        super().__init__(case)

    def _prepare_process(self) -> None:
        super()._prepare_process()
        # the model's one buffer, which its Indexer would fill every step (deepseek_v2.DeepseekV2Model): -1 is
        # "no key", what vLLM's indexer leaves in the slots it does not fill
        rows = self.vllm_config.scheduler_config.max_num_batched_tokens
        self.topk_indices_buffer = torch.full((rows, self.topk), -1, dtype=torch.int32, device=self.device)

    def _layer_kwargs(self) -> dict[str, Any]:
        return {"use_sparse": True, "indexer": None, "topk_indices_buffer": self.topk_indices_buffer}

    @property
    def kv_cache_dtype(self) -> str:
        """The cache format vLLM resolved for the layer (FLASHMLA_SPARSE turns any fp8 into fp8_ds_mla)."""
        return self.layers[0].kv_cache_dtype

    def _mqa_tokens(self) -> int:
        return self.layout.num_tokens if not self.mha_rows else int(self.metadata.num_decode_tokens or 0)

    def _after_build(self) -> None:
        md, layer = self.metadata, self.layers[0]
        n_dec = int(md.num_decodes or 0)
        # MLAAttention.forward_impl's rule for the non-decode rows, read from the same fields
        self.mha_rows = (n_dec < len(self.requests) and layer.prefill_backend is not None
                         and int(md.prefill_max_seq_len) <= int(md.topk_tokens)
                         and not self.vllm_config.attention_config.sparse_mla_force_mqa)
        if self.case.pipeline == MHA and not self.mha_rows:
            raise SkipCase(f"{self.case.backend.name}: vLLM {vllm_common.VLLM_VERSION} would run this batch's prefill "
                           f"rows through top-k MQA (prefill_max_seq_len {int(md.prefill_max_seq_len)}, index_topk "
                           f"{int(md.topk_tokens)}, prefill backend "
                           f"{type(layer.prefill_backend).__name__ if layer.prefill_backend else 'none'})")
        self.mla_paths = ["decode"] * n_dec + ["prefill" if self.mha_rows else "decode"] * (len(self.requests) - n_dec)
        # the mock indexer: the same seeded indices for every layer, in the order vLLM's runner gives the batch
        indices = sparse_mla.batch_topk(self.case.topk_pattern, self.requests, self.topk, self.case.run.seed)
        self.indices = indices.to(self.device)
        self.topk_indices_buffer[:self.layout.num_tokens].copy_(self.indices)
        entry = sparse_mla.entry_bytes(self.kv_cache_dtype, self.shape.head_dim, self.shape.elem_bytes)
        self.sparse_selections = sparse_mla.selections(indices, self.requests, entry)
        plain = buffers.mla_buffer_bytes(self.layout, self.shape)
        cache_plain = self.layout.num_blocks * self.layout.block_size * self.shape.head_dim * self.shape.elem_bytes
        self.bytes_per_layer = (plain - cache_plain + self.layout.num_blocks * self.layout.block_size * entry
                                + self.topk_indices_buffer[:self.layout.num_tokens].numel() * 4)

    def _describe(self) -> dict[str, Any]:
        info = super()._describe()
        md, impl = self.metadata, self.layers[0].impl
        n_mqa = len(self.requests) if not self.mha_rows else info["num_decodes"]
        info.update({
            "driven_through": DRIVEN_THROUGH, "index_topk": int(md.topk_tokens), "topk_pattern": self.case.topk_pattern,
            "kv_cache_dtype": self.kv_cache_dtype, "prefill_max_seq_len": int(md.prefill_max_seq_len),
            "sparse_mla_force_mqa": bool(self.vllm_config.attention_config.sparse_mla_force_mqa),
            "prefill_rows_path": None if info["num_prefills"] == 0 else ("mha" if self.mha_rows else "mqa"),
            "fp8_use_mixed_batch": getattr(md, "fp8_use_mixed_batch", None),
        })
        if self.kv_cache_dtype == sparse_mla.FP8_DS_MLA:  # its own scales, not the layer's per-tensor ones
            info["kv_scales"] = "per 128 NoPE values, inside each 656-byte entry (fp8_ds_mla)"
            info["quantized_query"] = False
        info["kernel_path"] = (f"{type(impl).__name__}.forward_mqa (top-k {int(md.topk_tokens)}) x{n_mqa} requests"
                               + (f" + {info['prefill_backend']}.forward_mha x{info['num_prefills']}"
                                  if self.mha_rows else ""))
        return info

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        shape, layout = self.shape, self.layout
        return (num_layer_buffers * self.bytes_per_layer
                + buffers.mla_step_transient_bytes(layout, shape, self.mla_paths,
                                                   vllm_common.chunked_prefill_workspace_tokens(layout))
                + sparse_mla.oracle_transient_bytes(self.requests, shape.num_q_heads, self.topk)
                + buffers.reference_output_bytes(layout.num_tokens, shape.num_q_heads, shape.v_head_dim)
                + buffers.after_timing_bytes(layout.num_tokens * shape.num_q_heads * shape.v_head_dim
                                             * shape.elem_bytes))

    def _make_layer(self, index: int) -> LayerCall:
        shape, layout, layer = self.shape, self.layout, self.layers[index]
        ds_mla = self.kv_cache_dtype == sparse_mla.FP8_DS_MLA
        cache = vllm_common.allocate_kv_cache(self.backend_cls, layout.num_blocks, layout.block_size, 1,
                                              shape.head_dim, torch.uint8 if ds_mla else torch_dtype(shape.dtype),
                                              self.device, cache_dtype=self.kv_cache_dtype)
        buf = sparse_mla.make_buffers(layout, shape, self.device, self.case.run.seed + 1 + index,
                                      self.case.run.kv_fill, cache)
        layer.kv_cache = buf.kv_cache
        k_pe = buf.k_pe.unsqueeze(1)  # the model passes k_pe as [T, 1, rope]
        out_shape = torch.Size((layout.num_tokens, shape.num_q_heads * shape.v_head_dim))
        last: dict[str, torch.Tensor] = {}

        def step() -> None:
            last["out"] = layer.forward(buf.q, buf.kv_c, k_pe, output_shape=out_shape)

        oracle = sparse_mla.make_oracle(buf, layout, shape, layer.kv_b_proj.weight, self.indices, self.mla_paths)
        check = sparse_mla.cache_check(buf.kv_cache, layout.slot_mapping, buf.kv_c, buf.k_pe)
        if self.case.timed_region == "layer":
            return LayerCall(step, lambda: last["out"], oracle, check)
        return self._attention_call(layer, buf, k_pe, step, oracle, check)


def make_adapter(case: BenchCase) -> VllmSparseMLAAdapter:
    return VllmSparseMLAAdapter(case)
