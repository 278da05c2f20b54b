"""What every vLLM adapter shares: an offline environment, a local model config, VllmConfig,
CommonAttentionMetadata from a BatchLayout, and restoring vLLM's process-global state.

Nothing here reaches for the network: the model config is a ``config.json`` the harness
writes into a temporary folder, and the hub is switched off before vLLM is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from attnbench.spec.backends import VLLM_VERSION
from attnbench.spec.contract import SkipCase
from attnbench.spec.metrics import SparseSelection
from attnbench.spec.shapes import AttentionShape, MLAShape
from attnbench.measure.sparse_mla import IndexerSpec
from attnbench.spec.workload import BatchLayout, build_layout, resolve_device, scheduler_order, torch_dtype

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1"}


def prepare_environment() -> None:
    """Offline switches and the tools FlashInfer's JIT needs (nvcc, ninja) on PATH; before importing vLLM."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    paths = os.environ.get("PATH", "").split(os.pathsep)
    extra = [os.path.dirname(sys.executable)]
    for cuda in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", "/usr/local/cuda-13.0"):
        if cuda and os.path.isdir(os.path.join(cuda, "bin")):
            extra.append(os.path.join(cuda, "bin"))
            os.environ.setdefault("CUDA_HOME", cuda)
            break
    try:
        import ninja  # type: ignore[import-not-found]

        extra.append(ninja.BIN_DIR)
    except ImportError:
        pass
    os.environ["PATH"] = os.pathsep.join(dict.fromkeys([p for p in extra + paths if p]))


def write_model_config(folder: Path, shape: AttentionShape | MLAShape, indexer: IndexerSpec | None = None) -> Path:
    """A minimal local config.json whose attention dimensions match ``shape``; with ``indexer``, a DeepSeek-V3.2
    (sparse MLA) one: vLLM 0.26.0 calls a model sparse by ``hasattr(hf_config, "index_topk")``
    (deepseek_v2.py's ``is_v32``, the sparse builders' ``topk_tokens``), and the DeepseekV32ForCausalLM
    architecture with model_type deepseek_v32 (transformers' DeepseekV3Config) is what its checkpoints carry."""
    common = {"num_hidden_layers": shape.num_layers, "vocab_size": 32000, "max_position_embeddings": 1 << 20,
              "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "torch_dtype": shape.dtype, "dtype": shape.dtype,
              "tie_word_embeddings": False}
    if isinstance(shape, AttentionShape):
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
               "hidden_size": shape.num_q_heads * shape.head_dim,
               "intermediate_size": 4 * shape.num_q_heads * shape.head_dim,
               "num_attention_heads": shape.num_q_heads, "num_key_value_heads": shape.num_kv_heads,
               "head_dim": shape.head_dim, **common}
    else:
        cfg = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
               "num_attention_heads": shape.num_q_heads, "num_key_value_heads": shape.num_q_heads,
               "kv_lora_rank": shape.kv_lora_rank, "q_lora_rank": None,
               "qk_nope_head_dim": shape.qk_nope_head_dim, "qk_rope_head_dim": shape.qk_rope_head_dim,
               "v_head_dim": shape.v_head_dim, "intermediate_size": 10944, "moe_intermediate_size": 1408,
               "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
               "first_k_dense_replace": 1, **common}
        if indexer is not None:
            cfg.update({"architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
                        "index_topk": indexer.index_topk, "index_n_heads": indexer.index_n_heads,
                        "index_head_dim": indexer.index_head_dim})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def limits_for(layout: BatchLayout) -> dict[str, int]:
    """Scheduler limits that admit this batch (builders size their buffers from them)."""
    block = layout.block_size
    max_len = max(layout.max_seq_len, 2048)
    max_len = -(-max_len // block) * block
    return {"max_model_len": max_len, "max_num_seqs": max(layout.num_reqs, 8),
            "max_num_batched_tokens": max(layout.num_tokens, max_len, 2048)}


def chunked_prefill_workspace_tokens(layout: BatchLayout) -> int:
    """The cached tokens vLLM 0.26.0's MLA prefill up-projects per context chunk under ``limits_for`` (its
    ``determine_chunked_prefill_workspace_size``)."""
    limits = limits_for(layout)
    size = min(max(8 * limits["max_model_len"], 4 * limits["max_num_seqs"] * layout.block_size), 64 * 1024)
    return max(size, limits["max_num_seqs"] * layout.block_size)


def make_vllm_config(backend_name: str, model_dir: Path, shape: AttentionShape | MLAShape,
                     limits: dict[str, int], sparse_mla_force_mqa: bool = False) -> Any:
    from vllm.config import (AttentionConfig, CacheConfig, DeviceConfig, ModelConfig, ParallelConfig,
                             SchedulerConfig, VllmConfig)
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    model_config = ModelConfig(model=str(model_dir), tokenizer=str(model_dir), skip_tokenizer_init=True,
                               trust_remote_code=False, dtype=shape.dtype, seed=0,
                               max_model_len=limits["max_model_len"])
    cache_config = CacheConfig(block_size=shape.block_size, cache_dtype=cache_dtype(shape))
    return VllmConfig(
        model_config=model_config,
        cache_config=cache_config,
        scheduler_config=SchedulerConfig(max_num_seqs=limits["max_num_seqs"],
                                         max_num_batched_tokens=limits["max_num_batched_tokens"],
                                         max_model_len=limits["max_model_len"], is_encoder_decoder=False),
        parallel_config=ParallelConfig(),
        device_config=DeviceConfig(device="cuda"),
        # use_trtllm_attention=False: otherwise FlashInfer probes NVIDIA's artifactory over the network
        # sparse_mla_force_mqa: sparse MLA's prefill rows through top-k MQA too (mha_vs_mqa's "mqa" pipeline)
        attention_config=AttentionConfig(backend=AttentionBackendEnum[backend_name], use_trtllm_attention=False,
                                         sparse_mla_force_mqa=sparse_mla_force_mqa),
    )


def cache_dtype(shape: AttentionShape | MLAShape) -> str:
    """The KV-cache dtype as vLLM's CacheConfig spells it ("auto": the model dtype)."""
    return shape.kv_cache_dtype if shape.kv_cache_dtype != "bfloat16" else "auto"


def support_problems(backend_cls: Any, shape: AttentionShape | MLAShape, device: torch.device,
                     use_sparse: bool = False) -> list[str]:
    """What vLLM itself says against running this shape on this GPU with this backend: the answer of the backend
    class's ``validate_configuration`` (capability, dtypes, head and block size, MLA, combination), as vLLM's
    own backend selection asks it. Empty: vLLM has nothing against it."""
    from vllm.platforms.interface import DeviceCapability
    from vllm.v1.attention.selector import AttentionSelectorConfig

    capability = DeviceCapability(*torch.cuda.get_device_capability(device))
    config = AttentionSelectorConfig(head_size=shape.head_dim, dtype=torch_dtype(shape.dtype),
                                     kv_cache_dtype=cache_dtype(shape), block_size=shape.block_size,
                                     use_mla=isinstance(shape, MLAShape),
                                     **({"use_sparse": True} if use_sparse else {}))  # a sparse MLA model
    return list(backend_cls.validate_configuration(device_capability=capability, **config._asdict()))


def common_metadata(layout: BatchLayout) -> Any:
    from vllm.v1.attention.backend import CommonAttentionMetadata

    q_lens = layout.query_lens
    kv_lens = layout.kv_lens
    seq_lens_cpu = torch.tensor(kv_lens, dtype=torch.int32)
    positions = torch.cat([torch.arange(kv - q, kv) for q, kv in zip(q_lens, kv_lens)]).to(layout.seq_lens.device)
    return CommonAttentionMetadata(
        query_start_loc=layout.query_start_loc, query_start_loc_cpu=layout.query_start_loc.cpu(),
        seq_lens=layout.seq_lens, num_reqs=layout.num_reqs, num_actual_tokens=layout.num_tokens,
        max_query_len=layout.max_query_len, max_seq_len=layout.max_seq_len,
        block_table_tensor=layout.block_table, slot_mapping=layout.slot_mapping, causal=True,
        # extends count as still prefilling (chunked prefill); only mamba and sparse-indexer builders read it
        positions=positions, is_prefilling=torch.tensor([r.is_prefill or r.is_extend for r in layout.requests]),
        seq_lens_cpu_upper_bound=seq_lens_cpu, _seq_lens_cpu=seq_lens_cpu,
        _num_computed_tokens_cpu=torch.tensor([kv - q for q, kv in zip(q_lens, kv_lens)], dtype=torch.int32),
    )


def allocate_kv_cache(backend_cls: Any, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                      dtype: torch.dtype, device: torch.device, cache_dtype: str = "auto") -> torch.Tensor:
    """The backend's KV cache: allocated in its physical stride order, returned in its logical shape."""
    shape = backend_cls.get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str=cache_dtype)
    try:
        order = tuple(backend_cls.get_kv_cache_stride_order())
    except (AttributeError, NotImplementedError):
        order = tuple(range(len(shape)))
    physical = tuple(shape[i] for i in order)
    inverse = [order.index(i) for i in range(len(order))]
    return torch.empty(physical, dtype=dtype, device=device).permute(*inverse)


@contextlib.contextmanager
def restored_global_state() -> Iterator[None]:
    """Undo process-global state a backend may set (KV layout override, default dtype) after a case."""
    from vllm.v1.attention.backends import utils as backend_utils

    layout_override = getattr(backend_utils, "_KV_CACHE_LAYOUT_OVERRIDE", None)
    default_dtype = torch.get_default_dtype()
    try:
        yield
    finally:
        backend_utils.set_kv_cache_layout(layout_override)
        torch.set_default_dtype(default_dtype)


def layer_scales(layer: Any, kv_scales: str, *inputs: torch.Tensor) -> tuple[float, float]:
    """vLLM's own scales for a quantised cache, read back as the layer holds them: "unit" keeps the 1.0 that
    process_weights_after_loading set (a checkpoint without scales); "calibrated" runs the layer's
    ``calc_kv_scales`` on the step's inputs (what ``calculate_kv_scales`` does at the first forward: q, k and
    v scales). All-zero inputs (kv_fill=zeros) keep 1.0: |max| / range would be a zero scale."""
    if kv_scales == "calibrated" and any(bool(t.abs().amax() > 0) for t in inputs[1:]):
        layer.calc_kv_scales(*inputs)
    return float(layer._k_scale_float), float(layer._v_scale_float)


def init_workspace(device: torch.device) -> None:
    from vllm.v1.worker.workspace import init_workspace_manager, is_workspace_manager_initialized

    if not is_workspace_manager_initialized():
        init_workspace_manager(device)


class ModelDir:
    """A temporary folder holding the case's config.json, removed on close."""

    def __init__(self, shape: AttentionShape | MLAShape, indexer: IndexerSpec | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="attnbench-model-"))
        write_model_config(self.path, shape, indexer)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def ensure_single_process_groups() -> None:
    """vLLM's distributed groups at world size 1, as a single-GPU server has them.

    Real parallel layers (kv_b_proj is a ColumnParallelLinear) read the tensor-parallel rank at
    construction, so the groups must exist; a free loopback port keeps this off the network.
    """
    from vllm.distributed import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    parallel_state.init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                                distributed_init_method=f"tcp://127.0.0.1:{port}", backend="nccl")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)


class VllmLayerAdapter:
    """The lifecycle every vLLM adapter shares (a ``contract.CaseAdapter``).

    Build: local config.json -> VllmConfig -> the first real layer (registered in the config's
    static_forward_context) -> the backend's metadata builder -> requests in the order vLLM's
    runner gives that builder -> one BatchLayout and one metadata object shared by all layers,
    as in a model. Each call runs under the config and vLLM's forward context; ``close`` undoes
    process-global state. Subclasses make the layer and its buffers (``_new_layer``,
    ``_make_layer``) and describe the kernel path (``_describe``).
    """

    mla_paths: list[str] | None = None
    sparse_selections: list[SparseSelection] | None = None  # a sparse MLA adapter's, per request
    attention_paths: list[str] | None = None
    quantized_query = False  # set per layer kind once the first layer exists
    indexer: IndexerSpec | None = None  # a sparse MLA adapter's: the model is DeepSeek-V3.2-like

    def __init__(self, case: Any) -> None:
        prepare_environment()
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        self.case, self.shape = case, case.effective_shape
        self.device = resolve_device(case.run.device)
        self.backend_cls = AttentionBackendEnum[case.backend.name].get_class()
        self.layers: list[Any] = []
        self._check_support()
        self._state = contextlib.ExitStack()
        self._state.enter_context(restored_global_state())
        try:
            self._build()
        except ModuleNotFoundError as exc:  # a backend whose kernels live in a separate package (HPC_ATTN: hpc)
            self.close()
            raise SkipCase(f"{case.backend.name} needs the Python package {exc.name!r}, which is not installed "
                           f"here ({exc})") from None
        except BaseException:
            self.close()  # never leak global state or temp folders into the next case
            raise

    def _check_support(self) -> None:
        """Skip with vLLM's own answer: the backend class decides, the registry's table only gates collection."""
        shape, cls, name = self.shape, self.backend_cls, self.case.backend.name
        if hasattr(cls, "validate_configuration"):
            problems = support_problems(cls, shape, self.device, use_sparse=self.indexer is not None)
            if problems:
                raise SkipCase(f"{name} in vLLM {VLLM_VERSION}: {', '.join(problems)} (head_size={shape.head_dim}, "
                               f"dtype={shape.dtype}, kv_cache_dtype={cache_dtype(shape)}, "
                               f"block_size={shape.block_size}, "
                               f"SM{''.join(map(str, torch.cuda.get_device_capability(self.device)))})")
            return
        if hasattr(cls, "supports_head_size") and not cls.supports_head_size(shape.head_dim):
            raise SkipCase(f"{name} does not support head size {shape.head_dim} in vLLM {VLLM_VERSION}")
        if hasattr(cls, "supports_block_size") and not cls.supports_block_size(shape.block_size):
            sizes = getattr(cls, "get_supported_kernel_block_sizes", lambda: "?")()
            raise SkipCase(f"{name} does not support block_size={shape.block_size} in vLLM {VLLM_VERSION} "
                           f"(supported: {sizes})")

    def _prepare_process(self) -> None:
        """Process-wide vLLM setup a layer kind needs before its first layer (none by default)."""

    def _configure_builder(self) -> None:
        """Force builder knobs (e.g. a swept reorder_batch_threshold) before the batch is ordered."""

    def _build(self) -> None:
        from vllm.config import set_current_vllm_config

        case, shape = self.case, self.shape
        self.model_dir = ModelDir(shape, self.indexer)
        # Scheduler limits only need the batch's sizes, which do not depend on its order.
        provisional = build_layout(case.requests, shape.block_size, self.device, case.run.seed)
        self.vllm_config = make_vllm_config(case.backend.name, self.model_dir.path, shape, limits_for(provisional),
                                            sparse_mla_force_mqa=bool(getattr(case, "force_mqa", False)))
        # what the engine sets once it has sized the cache (FlexAttention's builder reads it)
        self.vllm_config.cache_config.num_gpu_blocks = provisional.num_blocks
        self._config_ctx = lambda: set_current_vllm_config(self.vllm_config)
        with self._config_ctx():
            self._prepare_process()
            first = self._new_layer(0)
            spec = first.get_kv_cache_spec(self.vllm_config)
            self.builder = self.backend_cls.get_builder_cls()(spec, [first.layer_name], self.vllm_config, self.device)
            self.default_threshold = getattr(self.builder, "reorder_batch_threshold", None)
            self._configure_builder()
            self.threshold = getattr(self.builder, "reorder_batch_threshold", None)
            self.requests = scheduler_order(case.requests, self.threshold)
            self.layout = build_layout(self.requests, shape.block_size, self.device, case.run.seed)
            self.metadata = self.builder.build(common_prefix_len=0, common_attn_metadata=common_metadata(self.layout))
        self._after_build()
        self.info = {**self._common_info(), **self._describe()}

    def _after_build(self) -> None:
        """Derive what depends on the metadata (bytes per layer, MLA decode/prefill split)."""

    def _common_info(self) -> dict[str, Any]:
        return {
            "vllm_version": vllm_version(), "impl": type(self.layers[0].impl).__name__,
            "builder": type(self.builder).__name__, "reorder_batch_threshold": self.threshold,
            "default_reorder_batch_threshold": self.default_threshold,
            "request_order": [f"q{r.q_len}s{r.kv_len}" for r in self.requests][:16],
            "cudagraph_mode": str(self.vllm_config.compilation_config.cudagraph_mode),
        }

    def _describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _new_layer(self, index: int) -> Any:
        raise NotImplementedError

    def _make_layer(self, index: int) -> Any:
        raise NotImplementedError

    def make_layer(self, index: int) -> Any:
        with self._config_ctx():  # layer construction and the cache's stride order read the current config
            if index >= len(self.layers):
                self._new_layer(index)
            return self._make_layer(index)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        from vllm.forward_context import set_forward_context

        names = [layer.layer_name for layer in self.layers]
        with self._config_ctx(), set_forward_context(
                {n: self.metadata for n in names}, self.vllm_config,
                slot_mapping={n: self.layout.slot_mapping for n in names}):
            yield

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
