"""vLLM MLA backends (FLASHMLA, FLASH_ATTN_MLA, TRITON_MLA; CUTLASS_MLA, FLASHINFER_MLA on SM100)
driven through vLLM's own MLA layer.

Path: ``vllm.model_executor.layers.attention.mla_attention.MLAAttention`` built with the backend
class and a real, seeded ``ColumnParallelLinear`` kv_b_proj (``process_weights_after_loading``
splits it into W_UK / W_UV as at model load), called as ``layer.forward(q, kv_c, k_pe)`` under
vLLM's ``set_forward_context``. The timed region is the whole MLA step as a model runs it:
latent-cache write (``do_kv_cache_update``), q absorption into the latent space (W_UK bmm),
``forward_mqa`` for the decode rows, ``forward_mha`` (kv_b_proj up-projection + FA3 prefill) for
the rest, and the V up-projection (W_UV bmm). The builder's ``reorder_batch_threshold`` (vLLM's
default, or a swept / forced value) decides which rows take which path; the split is recorded.
"""

from __future__ import annotations

from typing import Any

import torch

from attnbench.measure import buffers
from attnbench.measure.adapters import vllm_common
from attnbench.spec.backends import NUM_KV_SPLITS, REORDER_BATCH_THRESHOLD
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import LayerCall, SkipCase
from attnbench.measure.kv_cache import cache_format
from attnbench.spec.workload import torch_dtype

DRIVEN_THROUGH = "vllm MLAAttention layer forward under set_forward_context"
TIMED_REGION = {"layer": ("latent-cache write + q absorption (W_UK) + forward_mqa (decode rows) + forward_mha "
                          "(prefill rows, kv_b_proj up-projection) + V up-projection (W_UV)"),
                "attention": ("forward_mqa on the already absorbed q (decode rows) + forward_mha (prefill rows, "
                              "kv_b_proj up-projection), on a latent cache the layer step already wrote")}


def layer_name(index: int) -> str:
    return f"model.layers.{index}.self_attn.mla_attn"


class VllmMLAAdapter(vllm_common.VllmLayerAdapter):
    def _prepare_process(self) -> None:
        vllm_common.init_workspace(self.device)
        vllm_common.ensure_single_process_groups()

    def _configure_builder(self) -> None:
        from vllm.model_executor.layers.attention.mla_attention import QueryLenSupport

        value = self.case.backend_params.get(REORDER_BATCH_THRESHOLD)
        if value is None:
            return
        if value > 1 and getattr(self.builder, "query_len_support", None) == QueryLenSupport.SINGLE_ONLY:
            raise SkipCase(f"{self.case.backend.name} decodes single-token queries only "
                           f"(query_len_support SINGLE_ONLY): reorder_batch_threshold={value} does not apply")
        self.builder.reorder_batch_threshold = value

    def _new_layer(self, index: int) -> Any:
        from vllm.model_executor.layers.attention.mla_attention import MLAAttention
        from vllm.model_executor.layers.linear import ColumnParallelLinear

        shape = self.shape
        dtype = torch_dtype(shape.dtype)
        kv_b_proj = ColumnParallelLinear(shape.kv_lora_rank,
                                         shape.num_q_heads * (shape.qk_nope_head_dim + shape.v_head_dim),
                                         bias=False, quant_config=None, params_dtype=dtype, disable_tp=True,
                                         prefix=f"model.layers.{index}.self_attn.kv_b_proj")
        weight = buffers.make_kv_b_proj_weight(shape, self.device, self.case.run.seed + 10_001 + index)
        kv_b_proj.weight.data = weight  # a real, seeded linear layer; the oracle reads the same tensor
        layer = MLAAttention(num_heads=shape.num_q_heads, scale=buffers.mla_scale(shape),
                             qk_nope_head_dim=shape.qk_nope_head_dim, qk_rope_head_dim=shape.qk_rope_head_dim,
                             v_head_dim=shape.v_head_dim, q_lora_rank=None, kv_lora_rank=shape.kv_lora_rank,
                             kv_b_proj=kv_b_proj, cache_config=self.vllm_config.cache_config, quant_config=None,
                             prefix=layer_name(index), attn_backend=self.backend_cls, **self._layer_kwargs())
        layer.to(self.device)
        layer.process_weights_after_loading(dtype)  # W_UK_T / W_UV from kv_b_proj, default KV scales
        layer.impl.dcp_world_size, layer.impl.dcp_rank = 1, 0  # no decode-context parallelism
        if NUM_KV_SPLITS in self.case.backend_params:
            layer.impl._num_kv_splits = int(self.case.backend_params[NUM_KV_SPLITS])
        self.layers.append(layer)
        return layer

    def _layer_kwargs(self) -> dict[str, Any]:
        """Extra MLAAttention arguments of a layer kind (a sparse adapter's top-k buffer); none for dense MLA."""
        return {}

    def _mqa_tokens(self) -> int:
        """The leading rows forward_mqa runs: the decode rows (sparse MLA may send its prefill rows there too)."""
        return int(self.metadata.num_decode_tokens or 0)

    def _after_build(self) -> None:
        n_dec = int(self.metadata.num_decodes or 0)
        self.mla_paths = ["decode"] * n_dec + ["prefill"] * (len(self.requests) - n_dec)
        self.bytes_per_layer = buffers.mla_buffer_bytes(self.layout, self.shape)
        # forward_impl concatenates and quantises the absorbed decode q with _q_scale where the kernel takes fp8
        self.quantized_query = self.shape.kv_quantized and bool(self.layers[0].impl.supports_quant_query_input)

    def _describe(self) -> dict[str, Any]:
        md, layer = self.metadata, self.layers[0]
        prefill = getattr(md, "prefill", None)
        decode = getattr(md, "decode", None)
        info: dict[str, Any] = {
            "driven_through": DRIVEN_THROUGH, "timed_region": TIMED_REGION[self.case.timed_region],
            "num_decodes": int(md.num_decodes or 0), "num_decode_tokens": int(md.num_decode_tokens or 0),
            "num_prefills": int(md.num_prefills or 0),
            "prefill_backend": type(layer.prefill_backend).__name__ if layer.prefill_backend is not None else None,
            "chunked_context": getattr(prefill, "chunked_context", None) is not None if prefill else False,
        }
        if decode is not None:
            info["decode_max_num_splits"] = getattr(decode, "max_num_splits", None)
        if NUM_KV_SPLITS in self.case.backend_params:
            info["num_kv_splits"] = self.case.backend_params[NUM_KV_SPLITS]
        if self.shape.kv_quantized:
            info["kv_cache_dtype"] = self.shape.kv_cache_dtype
            info["quantized_query"] = self.quantized_query
            info["kv_scales"] = self.case.run.kv_scales
        info["kernel_path"] = f"{type(layer.impl).__name__}.forward_mqa x{info['num_decodes']} requests" + (
            f" + {info['prefill_backend']}.forward_mha x{info['num_prefills']}" if info["num_prefills"] else "")
        return info

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        shape, layout = self.shape, self.layout
        return (num_layer_buffers * self.bytes_per_layer
                + buffers.mla_step_transient_bytes(layout, shape, self.mla_paths,
                                                   vllm_common.chunked_prefill_workspace_tokens(layout))
                + buffers.oracle_transient_bytes(layout, shape.num_q_heads, shape.qk_head_dim + shape.v_head_dim)
                + buffers.reference_output_bytes(layout.num_tokens, shape.num_q_heads, shape.v_head_dim)
                + buffers.after_timing_bytes(layout.num_tokens * shape.num_q_heads * shape.v_head_dim
                                             * shape.elem_bytes))

    def _make_layer(self, index: int) -> LayerCall:
        shape, layout, layer = self.shape, self.layout, self.layers[index]
        # as vLLM allocates it: raw bytes for a quantised cache, which forward_impl views as fp8
        cache = vllm_common.allocate_kv_cache(self.backend_cls, layout.num_blocks, layout.block_size, 1,
                                              shape.head_dim, cache_format(shape).storage, self.device,
                                              vllm_common.cache_dtype(shape))
        buf = buffers.make_mla_buffers(layout, shape, self.device, self.case.run.seed + 1 + index, kv_cache=cache,
                                      kv_fill=self.case.run.kv_fill,
                                      calibrate=lambda q, kv_c, k_pe: vllm_common.layer_scales(
                                          layer, self.case.run.kv_scales, q, kv_c, k_pe))
        layer.kv_cache = cache
        k_pe = buf.k_pe.unsqueeze(1)  # the model passes k_pe as [T, 1, rope]
        out_shape = torch.Size((layout.num_tokens, shape.num_q_heads * shape.v_head_dim))
        last: dict[str, torch.Tensor] = {}

        def step() -> None:
            last["out"] = layer.forward(buf.q, buf.kv_c, k_pe, output_shape=out_shape)

        oracle = buffers.mla_oracle(buf, layout, shape, layer.kv_b_proj.weight, self.mla_paths)
        unquantized = buffers.unquantized_mla_oracle(buf, layout, shape, layer.kv_b_proj.weight)
        check = buffers.mla_cache_check(buf, layout)
        if self.case.timed_region == "layer":
            return LayerCall(step, lambda: last["out"], oracle, check, unquantized_oracle=unquantized)
        call = self._attention_call(layer, buf, k_pe, step, oracle, check)
        call.unquantized_oracle = unquantized
        return call

    def _attention_call(self, layer: Any, buf: buffers.MLABuffers, k_pe: torch.Tensor, step: Any, oracle: Any,
                        check: Any) -> LayerCall:
        """forward_mqa / forward_mha alone, with the inputs MLAAttention.forward_impl hands them: the decode
        rows' q absorbed by W_UK (bmm into an [N, B, L] buffer, used transposed, head-padded as vLLM pads it)
        beforehand; the latent decode output is up-projected by W_UV only when the result is read."""
        md, impl = self.metadata, layer.impl
        n_dec, total = self._mqa_tokens(), self.layout.num_tokens
        out = torch.empty(total, self.shape.num_q_heads * self.shape.v_head_dim, dtype=buf.q.dtype, device=buf.q.device)
        absorbed: dict[str, Any] = {}
        latent: dict[str, torch.Tensor] = {}

        def prepare() -> None:
            step()  # the layer step writes the new tokens' latents into the cache
            if not n_dec:
                return
            q_nope, q_pe = buf.q[:n_dec].split([layer.qk_nope_head_dim, layer.qk_rope_head_dim], dim=-1)
            q_nope = q_nope.transpose(0, 1)
            heads, rows, _ = q_nope.shape
            rank = layer.W_UK_T.shape[-1]
            pad = layer.q_pad_num_heads
            if pad is not None:
                padded = q_pe.new_empty((rows, pad, q_pe.shape[-1]))
                padded.resize_(q_pe.shape)
                padded.copy_(q_pe)
                q_pe = padded
            ql_nope = q_nope.new_empty((pad if pad is not None else heads, rows, rank))
            ql_nope.resize_((heads, rows, rank))
            torch.bmm(q_nope, layer.W_UK_T, out=ql_nope)
            if self.quantized_query:  # one fp8 q, concatenated and quantised with _q_scale as forward_impl does
                absorbed["q"] = layer._decode_concat_quant_fp8_op(ql_nope.transpose(0, 1), q_pe, layer._q_scale)
            else:
                absorbed["q"] = (ql_nope.transpose(0, 1), q_pe)

        def attend() -> None:
            if n_dec:
                latent["out"], _ = impl.forward_mqa(absorbed["q"], buf.kv_cache, md, layer)
            if n_dec < total:
                impl.forward_mha(buf.q[n_dec:], buf.kv_c[n_dec:], k_pe[n_dec:], buf.kv_cache, md, layer._k_scale,
                                 output=out[n_dec:])

        def result() -> torch.Tensor:
            if n_dec:
                layer._v_up_proj(latent["out"], out=out[:n_dec])
            return out

        return LayerCall(attend, result, oracle, check, prepare=prepare)


def make_adapter(case: BenchCase) -> VllmMLAAdapter:
    return VllmMLAAdapter(case)
