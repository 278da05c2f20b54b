"""vLLM standard attention (FLASH_ATTN, TRITON_ATTN, FLASHINFER) driven as a model drives it.

Path: vLLM's own ``Attention`` layer module (``vllm.model_executor.layers.attention.Attention``),
built with the backend class from ``AttentionBackendEnum[name].get_class()`` inside
``set_current_vllm_config``, its KV cache allocated in the backend's shape and stride order
and bound to ``layer.kv_cache``, and called as ``layer.forward(q, k, v)`` under vLLM's
``set_forward_context`` with the metadata the backend's own builder built from a
``CommonAttentionMetadata``. So the timed region is the layer step a model runs:
``unified_kv_cache_update`` (the backend's ``do_kv_cache_update``, the KV-cache write) then
``unified_attention_with_output`` (the impl's ``forward``), plus the layer's output allocation.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from attnbench.measure import buffers
from attnbench.measure.adapters import vllm_common
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import LayerCall
from attnbench.measure.kv_cache import PerTokenHeadFormat, cache_format
from attnbench.spec.shapes import ROTATED_KV_CACHE_DTYPES
from attnbench.spec.workload import torch_dtype

DRIVEN_THROUGH = "vllm Attention layer forward under set_forward_context (do_kv_cache_update, then impl.forward)"
TIMED_REGION = {"layer": "KV-cache write + attention (the layer step)",
                "attention": "impl.forward alone, on a cache the layer step already wrote"}


PER_ENTRY_SCALES = "per_token_head"  # backend_info.kv_scales: each entry's own, computed by the cache write


def layer_name(index: int) -> str:
    return f"model.layers.{index}.self_attn.attn"


class VllmAttentionAdapter(vllm_common.VllmLayerAdapter):
    def _new_layer(self, index: int) -> Any:
        from vllm.model_executor.layers.attention import Attention

        shape = self.shape
        layer = Attention(num_heads=shape.num_q_heads, head_size=shape.head_dim, scale=shape.head_dim ** -0.5,
                          num_kv_heads=shape.num_kv_heads, cache_config=self.vllm_config.cache_config,
                          prefix=layer_name(index), attn_backend=self.backend_cls)
        layer.to(self.device)
        layer.process_weights_after_loading(torch_dtype(shape.dtype))  # sets the default 1.0 KV scales
        self.layers.append(layer)
        return layer

    def _after_build(self) -> None:
        shape = self.shape
        # the cache format, completed with vLLM's own rotation where the format rotates its entries
        self.kv_format = cache_format(shape, vllm_rotation(shape.head_dim, self.device)
                                      if shape.kv_cache_dtype in ROTATED_KV_CACHE_DTYPES else None)
        self.bytes_per_layer = buffers.attention_buffer_bytes(self.layout, self.shape)
        # a quantised cache: the layer quantises q with its _q_scale where the kernel takes fp8 q (FA3)
        self.quantized_query = self.layers[0].query_quant is not None
        if self.case.backend.name == "FLASHINFER":  # separate decode and prefill wrappers, decodes first
            n_dec = int(getattr(self.metadata, "num_decodes", 0) or 0)
            self.attention_paths = ["decode"] * n_dec + ["prefill"] * (len(self.requests) - n_dec)

    def _describe(self) -> dict[str, Any]:
        region = TIMED_REGION[self.case.timed_region]
        if self.case.timed_region == "attention" and self.backend_cls.forward_includes_kv_cache_update:
            region += " (this backend's forward writes the cache itself)"
        info: dict[str, Any] = {"driven_through": DRIVEN_THROUGH, "timed_region": region}
        if self.shape.kv_quantized:
            info["kv_cache_dtype"] = self.shape.kv_cache_dtype
            info["quantized_query"] = self.quantized_query
            info["kv_scales"] = self.case.run.kv_scales if self.kv_format.per_tensor_scales else PER_ENTRY_SCALES
        describe = KERNEL_PATH.get(self.case.backend.name)
        if describe is not None:
            info.update(describe(self.metadata, self.layers[0].impl, self.layout))
        return info

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        return (num_layer_buffers * self.bytes_per_layer
                + buffers.oracle_transient_bytes(self.layout, self.shape.num_q_heads, 2 * self.shape.head_dim)
                + buffers.reference_output_bytes(self.layout.num_tokens, self.shape.num_q_heads, self.shape.head_dim)
                + buffers.after_timing_bytes(
                    self.layout.num_tokens * self.shape.num_q_heads * self.shape.head_dim * self.shape.elem_bytes))

    def _make_layer(self, index: int) -> LayerCall:
        shape, layout, layer = self.shape, self.layout, self.layers[index]

        fmt = self.kv_format

        def allocate() -> buffers.AttentionCache:
            # as vLLM allocates it: raw bytes for a quantised cache, which the backend views as fp8; a
            # per-(token, head) one with each entry's head dim padded for its inline float32 scale
            kv = vllm_common.allocate_kv_cache(self.backend_cls, layout.num_blocks, layout.block_size,
                                               shape.num_kv_heads, shape.head_dim, fmt.storage, self.device,
                                               vllm_common.cache_dtype(shape))
            if isinstance(fmt, PerTokenHeadFormat):
                # the impl carves its scale views out of the first cache it sees and sets them to 1.0 then
                # (what the engine's first forward does); done here, before the context's scales are stored, and
                # for this cache (as the engine clears them when it reallocates: gpu_model_runner)
                layer.impl._k_scale_cache = layer.impl._v_scale_cache = None
                layer.impl._ensure_scale_caches(kv)
            key_view, value_view = logical_views(kv, fmt.width(shape.head_dim))
            return kv, fmt.elements(key_view), fmt.elements(value_view)

        buf = buffers.make_attention_buffers(layout, shape, self.device, self.case.run.seed + 1 + index, allocate,
                                            self.case.run.kv_fill, lambda q, k, v: vllm_common.layer_scales(
                                                layer, self.case.run.kv_scales, q, k, v), fmt)
        layer.kv_cache = buf.kv_cache
        last: dict[str, torch.Tensor] = {}
        tokens = layout.num_tokens

        def step() -> None:  # 2-D q/k/v, as a model's qkv projection hands them over
            last["out"] = layer.forward(buf.query.view(tokens, -1), buf.key.view(tokens, -1),
                                        buf.value.view(tokens, -1))

        oracle = buffers.attention_oracle(buf, layout, shape.head_dim ** -0.5)
        unquantized = buffers.unquantized_attention_oracle(buf, layout, shape.head_dim ** -0.5)
        check = buffers.attention_cache_check(buf, layout)
        if self.case.timed_region == "layer":
            return LayerCall(step, lambda: last["out"], oracle, check, unquantized_oracle=unquantized)
        # the attention call as unified_attention_with_output makes it: 3-D q/k/v (q quantised as the layer
        # quantises it), the layer's cache and the builder's metadata, into a preallocated output
        out = torch.empty_like(buf.query)
        impl, metadata = layer.impl, self.metadata
        query: dict[str, torch.Tensor] = {}

        def prepare() -> None:
            step()
            q = buf.query
            if layer.query_quant is not None:
                q = layer.query_quant(q.view(tokens, -1), layer._q_scale)[0].view(q.shape)
            query["q"] = q

        def attend() -> None:
            impl.forward(layer, query["q"], buf.key, buf.value, buf.kv_cache, metadata, output=out)

        return LayerCall(attend, lambda: out, oracle, check, prepare=prepare, unquantized_oracle=unquantized)


def _flash_attn_path(md: Any, impl: Any, layout: Any) -> dict[str, Any]:
    version = getattr(impl, "vllm_flash_attn_version", None)
    return {"kernel_path": f"FlashAttention {version or '?'} varlen", "fa_version": version,
            "max_num_splits": getattr(md, "max_num_splits", None),
            "aot_scheduler_metadata": getattr(md, "scheduler_metadata", None) is not None}


def _triton_attn_path(md: Any, impl: Any, layout: Any) -> dict[str, Any]:
    threshold_3d = getattr(md, "seq_threshold_3D", None)
    split = layout.max_query_len == 1 and threshold_3d is not None and layout.num_reqs <= threshold_3d
    return {"kernel_path": "triton unified_attention " + ("3D split-softmax" if split else "2D"),
            "seq_threshold_3D": threshold_3d}


def _flashinfer_path(md: Any, impl: Any, layout: Any) -> dict[str, Any]:
    parts = []
    for kind in ("decode", "prefill"):
        sub = getattr(md, kind, None)
        if sub is not None:
            wrapper = getattr(sub, "wrapper", None)
            parts.append(f"{kind}: {type(wrapper or sub).__name__} backend={getattr(wrapper, '_backend', '?')}")
    return {"kernel_path": "FlashInfer " + "; ".join(parts), "num_decodes": getattr(md, "num_decodes", None),
            "num_prefills": getattr(md, "num_prefills", None)}


# Which kernel path vLLM took, read off the backend's metadata and impl: one describer per backend.
KERNEL_PATH: dict[str, Callable[[Any, Any, Any], dict[str, Any]]] = {
    "FLASH_ATTN": _flash_attn_path, "TRITON_ATTN": _triton_attn_path, "FLASHINFER": _flashinfer_path}


def vllm_rotation(head_dim: int, device: torch.device) -> torch.Tensor:
    """vLLM's own RHT (int4_per_token_head) as a ±1 matrix: its ``single_rht`` of the identity, whose entries are
    ±1 up to the rounding of its bf16 Hadamard kernel (hence the sign)."""
    from vllm.v1.attention.ops.int4_per_token_head import single_rht

    rotation = torch.sign(single_rht(torch.eye(head_dim, dtype=torch.float32, device=device))).cpu()
    if not torch.equal(rotation @ rotation.t(), head_dim * torch.eye(head_dim)):
        raise RuntimeError(f"vLLM's single_rht of the identity is not a ±1 Hadamard rotation (head_dim={head_dim})")
    return rotation


def logical_views(kv: torch.Tensor, entry_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[num_blocks, block_size, num_kv_heads, entry_width] views of K and V inside a vLLM cache tensor
    (``entry_width``: the stored head dim, a per-(token, head) format's inline scale included)."""
    if kv.dim() == 4 and kv.shape[-1] == 2 * entry_width:  # 0.26.0: logical (B, H, N, 2D), K|V packed
        k, v = kv.transpose(1, 2).split(entry_width, dim=-1)
        return k, v
    if kv.dim() == 5 and kv.shape[0] == 2:  # older (2, B, N, H, D)
        return kv[0], kv[1]
    if kv.dim() == 5 and kv.shape[1] == 2:  # FlashInfer's older (B, 2, N, H, D)
        return kv[:, 0], kv[:, 1]
    raise RuntimeError(f"unrecognised KV cache shape {tuple(kv.shape)} for entries of width {entry_width}")


def make_adapter(case: BenchCase) -> VllmAttentionAdapter:
    return VllmAttentionAdapter(case)
