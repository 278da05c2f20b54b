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

import contextlib
from typing import Any, ContextManager, Iterator

import torch

from attnbench import layers
from attnbench.adapters import vllm_common
from attnbench.cases import BenchCase
from attnbench.runner import LayerCall
from attnbench.shapes import AttentionShape
from attnbench.workload import build_layout, resolve_device, scheduler_order, torch_dtype

DRIVEN_THROUGH = "vllm Attention layer forward under set_forward_context (do_kv_cache_update, then impl.forward)"
TIMED_REGION = "KV-cache write + attention (the layer step)"


def layer_name(index: int) -> str:
    return f"model.layers.{index}.self_attn.attn"


class VllmAttentionRunner:
    mla_paths = None

    def __init__(self, case: BenchCase) -> None:
        vllm_common.prepare_environment()
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        shape = case.effective_shape
        assert isinstance(shape, AttentionShape)
        self.case, self.shape = case, shape
        self.device = resolve_device(case.run.device)
        self.backend_cls = AttentionBackendEnum[case.backend.name].get_class()
        self._check_support()
        self._state = contextlib.ExitStack()
        self._state.enter_context(vllm_common.restored_global_state())
        try:
            self._build(case, shape)
        except BaseException:
            self.close()
            raise

    def _build(self, case: BenchCase, shape: Any) -> None:
        from vllm.config import set_current_vllm_config

        self.model_dir = vllm_common.ModelDir(shape)

        # Limits and layout depend on the order the builder wants; build a provisional layout first.
        provisional = build_layout(case.requests, shape.block_size, self.device, case.run.seed)
        self.vllm_config = vllm_common.make_vllm_config(case.backend.name, self.model_dir.path, shape,
                                                       vllm_common.limits_for(provisional))
        self._config_ctx = lambda: set_current_vllm_config(self.vllm_config)
        self.layers: list[Any] = []
        with self._config_ctx():
            first = self._new_layer(0)
            spec = first.get_kv_cache_spec(self.vllm_config)
            self.builder = self.backend_cls.get_builder_cls()(spec, [first.layer_name], self.vllm_config, self.device)
            threshold = getattr(self.builder, "reorder_batch_threshold", None)
            self.requests = scheduler_order(case.requests, threshold)
            self.layout = build_layout(self.requests, shape.block_size, self.device, case.run.seed)
            self.metadata = self.builder.build(common_prefix_len=0,
                                               common_attn_metadata=vllm_common.common_metadata(self.layout))
        self.bytes_per_layer = layers.attention_buffer_bytes(self.layout, shape)
        self.info = self._describe(threshold)

    def _check_support(self) -> None:
        from attnbench.runner import SkipCase

        shape, cls = self.shape, self.backend_cls
        if hasattr(cls, "supports_head_size") and not cls.supports_head_size(shape.head_dim):
            raise SkipCase(f"{self.case.backend.name} does not support head_dim={shape.head_dim} in vLLM 0.26.0")
        if hasattr(cls, "supports_block_size") and not cls.supports_block_size(shape.block_size):
            raise SkipCase(f"{self.case.backend.name} does not support block_size={shape.block_size} in vLLM 0.26.0")

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

    def _describe(self, threshold: int | None) -> dict[str, Any]:
        md, impl = self.metadata, self.layers[0].impl
        info: dict[str, Any] = {
            "driven_through": DRIVEN_THROUGH, "timed_region": TIMED_REGION,
            "vllm_version": vllm_common.vllm_version(), "impl": type(impl).__name__,
            "builder": type(self.builder).__name__, "reorder_batch_threshold": threshold,
            "request_order": [f"q{r.q_len}s{r.kv_len}" for r in self.requests][:16],
            "cudagraph_mode": str(self.vllm_config.compilation_config.cudagraph_mode),
        }
        name = self.case.backend.name
        if name == "FLASH_ATTN":
            info["kernel_path"] = f"FlashAttention {getattr(impl, 'vllm_flash_attn_version', '?')} varlen"
            info["fa_version"] = getattr(impl, "vllm_flash_attn_version", None)
            info["max_num_splits"] = getattr(md, "max_num_splits", None)
            info["aot_scheduler_metadata"] = getattr(md, "scheduler_metadata", None) is not None
        elif name == "TRITON_ATTN":
            threshold_3d = getattr(md, "seq_threshold_3D", None)
            split = self.layout.max_query_len == 1 and threshold_3d is not None and self.layout.num_reqs <= threshold_3d
            info["kernel_path"] = "triton unified_attention " + ("3D split-softmax" if split else "2D")
            info["seq_threshold_3D"] = threshold_3d
        elif name == "FLASHINFER":
            parts = []
            for kind in ("decode", "prefill"):
                sub = getattr(md, kind, None)
                if sub is None:
                    continue
                wrapper = getattr(sub, "wrapper", None)
                parts.append(f"{kind}: {type(wrapper or sub).__name__} backend={getattr(wrapper, '_backend', '?')}")
            info["kernel_path"] = "FlashInfer " + "; ".join(parts)
            info["num_decodes"] = getattr(md, "num_decodes", None)
            info["num_prefills"] = getattr(md, "num_prefills", None)
        return info

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        return (num_layer_buffers * self.bytes_per_layer
                + layers.oracle_transient_bytes(self.layout, self.shape.num_q_heads, 2 * self.shape.head_dim))

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        from vllm.forward_context import set_forward_context

        names = [layer.layer_name for layer in self.layers]
        with self._config_ctx(), set_forward_context(
                {n: self.metadata for n in names}, self.vllm_config,
                slot_mapping={n: self.layout.slot_mapping for n in names}):
            yield

    def make_layer(self, index: int) -> LayerCall:
        with self._config_ctx():  # layer construction and the cache's stride order read the current config
            return self._make_layer(index)

    def _make_layer(self, index: int) -> LayerCall:
        shape, layout = self.shape, self.layout
        if index >= len(self.layers):
            self._new_layer(index)
        layer = self.layers[index]

        def allocate() -> layers.AttentionCache:
            kv = vllm_common.allocate_kv_cache(self.backend_cls, layout.num_blocks, layout.block_size,
                                               shape.num_kv_heads, shape.head_dim, torch_dtype(shape.dtype),
                                               self.device)
            key_view, value_view = logical_views(kv, shape.head_dim)
            return kv, key_view, value_view

        buf = layers.make_attention_buffers(layout, shape, self.device, self.case.run.seed + 1 + index, allocate)
        layer.kv_cache = buf.kv_cache
        last: dict[str, torch.Tensor] = {}

        def run() -> None:
            last["out"] = layer.forward(buf.query, buf.key, buf.value)

        return LayerCall(run, lambda: last["out"], layers.attention_oracle(buf, layout, shape.head_dim ** -0.5),
                         layers.attention_cache_check(buf, layout))

    def close(self) -> None:
        config = getattr(self, "vllm_config", None)
        if config is not None:
            config.compilation_config.static_forward_context.clear()
        self.layers = []
        if hasattr(self, "model_dir"):
            self.model_dir.close()
        self._state.close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def logical_views(kv: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[num_blocks, block_size, num_kv_heads, head_dim] views of K and V inside a vLLM cache tensor."""
    if kv.dim() == 4 and kv.shape[-1] == 2 * head_dim:  # 0.26.0: logical (B, H, N, 2D), K|V packed
        k, v = kv.transpose(1, 2).split(head_dim, dim=-1)
        return k, v
    if kv.dim() == 5 and kv.shape[0] == 2:  # older (2, B, N, H, D)
        return kv[0], kv[1]
    if kv.dim() == 5 and kv.shape[1] == 2:  # FlashInfer's older (B, 2, N, H, D)
        return kv[:, 0], kv[:, 1]
    raise RuntimeError(f"unrecognised KV cache shape {tuple(kv.shape)} for head_dim={head_dim}")


def make_runner(case: BenchCase) -> VllmAttentionRunner:
    return VllmAttentionRunner(case)
