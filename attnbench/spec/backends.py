"""The backend registry: every backend the suite can benchmark, in one place.

A newcomer adds a backend by adding one ``BackendInfo`` row here (and, for a new
kind of kernel, one adapter module). Availability is declared, not discovered by
trial: each row says which SM capabilities it runs on and whether it needs vLLM,
so that unsupported cases skip with a reason before any GPU work starts
(TritonBench's ``enabled=`` idea). ``REFERENCE`` is the baseline and oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Family = Literal["attention", "mla"]
# An MLA model is dense (DeepSeek-V3: every query attends its whole context) or sparse (DeepSeek-V3.2: an indexer
# picks index_topk keys per query); a backend runs one kind, the REFERENCE both. bench_mla's test_sparse_mla
# collects the sparse rows, test_mla the dense ones.
DENSE, SPARSE = "dense", "sparse"

VLLM_VERSION = "0.26.0"  # the vLLM release this registry, its knobs and its capability ranges describe

# Sweep parameters that live on the backend (its metadata builder) rather than on the model shape.
NUM_KV_SPLITS = "num_kv_splits"
REORDER_BATCH_THRESHOLD = "reorder_batch_threshold"


@dataclass(frozen=True)
class BackendInfo:
    """One benchmarkable backend (a vLLM ``AttentionBackendEnum`` member or the reference)."""

    name: str
    family: Family
    adapter: str  # "module:factory", imported only when a case runs (collection needs no vLLM)
    aliases: tuple[str, ...] = ()
    min_capability: tuple[int, int] | None = None  # inclusive
    max_capability: tuple[int, int] | None = None  # inclusive
    needs_vllm: bool = True
    needs_cuda: bool = True
    sweep_params: frozenset[str] = field(default_factory=frozenset)
    note: str = ""
    kinds: frozenset[str] = frozenset({DENSE})  # which kinds of model it runs (DENSE, SPARSE)

    @property
    def is_reference(self) -> bool:
        return self.name == "REFERENCE"


_VLLM_ATTENTION = "attnbench.measure.adapters.vllm_attention:make_adapter"
_VLLM_MLA = "attnbench.measure.adapters.vllm_mla:make_adapter"
_VLLM_MLA_SPARSE = "attnbench.measure.adapters.vllm_mla_sparse:make_adapter"
_MLA_PARAMS = frozenset({REORDER_BATCH_THRESHOLD})

BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo("REFERENCE", "attention", "attnbench.measure.adapters.reference:make_attention_adapter",
                aliases=("reference", "ref"), needs_vllm=False, needs_cuda=False,
                note="exact attention in plain torch over the paged cache (the oracle)"),
    BackendInfo("FLASH_ATTN", "attention", _VLLM_ATTENTION, aliases=("flash", "flash_attn", "fa"),
                min_capability=(8, 0), note="FlashAttention 3 on SM90"),
    BackendInfo("TRITON_ATTN", "attention", _VLLM_ATTENTION, aliases=("triton", "triton_attn")),
    # vLLM 0.26.0's FlashInferBackend.supports_compute_capability: SM80-SM121 (SM75 held back, FlashInfer #3620)
    BackendInfo("FLASHINFER", "attention", _VLLM_ATTENTION, aliases=("flashinfer",),
                min_capability=(8, 0), max_capability=(12, 1)),
    BackendInfo("FLEX_ATTENTION", "attention", _VLLM_ATTENTION, aliases=("flex", "flex_attention"),
                note="torch's flex_attention (compiled by torch on the first call)"),
    # HpcAttentionBackend imports the separate 'hpc' package: without it a case skips naming it
    BackendInfo("HPC_ATTN", "attention", _VLLM_ATTENTION, aliases=("hpc", "hpc_attn"), min_capability=(9, 0),
                note="needs the 'hpc' kernel package"),
    BackendInfo("REFERENCE", "mla", "attnbench.measure.adapters.reference:make_mla_adapter",
                aliases=("reference", "ref"), needs_vllm=False, needs_cuda=False, kinds=frozenset({DENSE, SPARSE}),
                note="latent up-projected with kv_b_proj, then exact attention in plain torch (sparse: over "
                     "exactly the selected tokens)"),
    BackendInfo("FLASHMLA", "mla", _VLLM_MLA, aliases=("flashmla", "flash_mla"),
                min_capability=(9, 0), max_capability=(10, 3), sweep_params=_MLA_PARAMS),
    BackendInfo("FLASH_ATTN_MLA", "mla", _VLLM_MLA, aliases=("flashattn_mla", "flash_attn_mla", "fa_mla"),
                min_capability=(9, 0), max_capability=(9, 0), sweep_params=_MLA_PARAMS,
                note="FlashAttention 3 MLA, Hopper only"),
    BackendInfo("TRITON_MLA", "mla", _VLLM_MLA, aliases=("triton_mla",), sweep_params=_MLA_PARAMS),
    BackendInfo("CUTLASS_MLA", "mla", _VLLM_MLA, aliases=("cutlass_mla", "cutlass"),
                min_capability=(10, 0), max_capability=(10, 3),
                sweep_params=_MLA_PARAMS | {NUM_KV_SPLITS}, note=f"Blackwell (SM100) only in vLLM {VLLM_VERSION}"),
    BackendInfo("FLASHINFER_MLA", "mla", _VLLM_MLA, aliases=("flashinfer_mla",),
                min_capability=(10, 0), max_capability=(10, 3), sweep_params=_MLA_PARAMS,
                note=f"Blackwell (SM100) only in vLLM {VLLM_VERSION}"),
    # DeepSeek-V3.2 sparse MLA (vLLM 0.26.0): block size 64 only, head size 576; FlashMLASparseBackend's
    # supports_compute_capability is major 9 or 10 and its caches bf16 or fp8_ds_mla (fp8 is its alias),
    # FlashAttnMLASparseBackend's major 9 and bf16/fp16 only
    BackendInfo("FLASHMLA_SPARSE", "mla", _VLLM_MLA_SPARSE, aliases=("flashmla_sparse",),
                min_capability=(9, 0), max_capability=(10, 3), sweep_params=_MLA_PARAMS, kinds=frozenset({SPARSE}),
                note="FlashMLA sparse top-k kernels; bf16 or fp8_ds_mla (656-byte) cache"),
    BackendInfo("FLASH_ATTN_MLA_SPARSE", "mla", _VLLM_MLA_SPARSE,
                aliases=("flashattn_mla_sparse", "flash_attn_mla_sparse", "fa_mla_sparse"),
                min_capability=(9, 0), max_capability=(9, 0), sweep_params=_MLA_PARAMS, kinds=frozenset({SPARSE}),
                note="FlashAttention 3 over the top-k indices as a page-size-1 block table, Hopper only"),
)


def knob_problem(info: BackendInfo, knob: str) -> str | None:
    """Why builder knob ``knob`` (num_kv_splits, reorder_batch_threshold) does not apply to ``info``, or None.

    The one place that answers it: a sweep, a per-backend YAML section and the adapters all ask here."""
    if knob in info.sweep_params:
        return None
    return f"{info.name} has no {knob} knob in vLLM {VLLM_VERSION}"


class UnknownBackendError(ValueError):
    """A backend name that matches no registry row nor alias."""


def _key(name: str) -> str:
    return name.strip(" \t\r\n").lower().replace("-", "_")  # not str.strip(): "\x1cflash" is no backend


def all_names() -> list[str]:
    return list(dict.fromkeys(b.name for b in BACKENDS))


def lookup(name: str, family: Family) -> BackendInfo | None:
    """The row of ``family`` that ``name`` spells (case-insensitive, aliases accepted)."""
    key = _key(name)
    for info in BACKENDS:
        if info.family == family and (key == _key(info.name) or key in info.aliases):
            return info
    return None


def canonical_name(name: str) -> str:
    """The ``AttentionBackendEnum`` spelling of ``name``; raises UnknownBackendError."""
    for family in ("attention", "mla"):
        info = lookup(name, family)  # type: ignore[arg-type]
        if info is not None:
            return info.name
    raise UnknownBackendError(
        f"unknown backend {name if len(name) <= 120 else name[:120] + '...'!r}; "
        f"valid backends: {', '.join(all_names())} "
        f"(lowercase aliases such as flash, triton, flashinfer, flashmla, flashattn_mla, cutlass_mla are accepted)"
    )


def for_family(names: list[str], family: Family) -> list[BackendInfo]:
    """Rows of ``family`` among the canonical ``names``, in the order given."""
    rows = [lookup(n, family) for n in names]
    return [r for r in rows if r is not None]


def runs_kind(info: BackendInfo, kind: str) -> bool:
    """Whether ``info`` runs models of ``kind`` (DENSE or SPARSE)."""
    return kind in info.kinds


def default_backends(family: Family) -> list[str]:
    return [b.name for b in BACKENDS if b.family == family]


def format_capability(cap: tuple[int, int]) -> str:
    return f"SM{cap[0]}{cap[1]}"


def capability_skip_reason(info: BackendInfo, found: tuple[int, int] | None) -> str | None:
    """Why ``info`` cannot run on a device of capability ``found`` (None = no CUDA device)."""
    lo, hi = info.min_capability, info.max_capability
    if found is None:
        if lo is None:
            return f"{info.name} requires a CUDA device (found none)"
        return f"{info.name} requires {format_capability(lo)}+ (found none)"
    if lo is not None and found < lo:
        return f"{info.name} requires {format_capability(lo)}+ (found {format_capability(found)})"
    if hi is not None and found > hi:
        span = format_capability(lo) if lo == hi else f"{format_capability(lo or (0, 0))}-{format_capability(hi)}"
        return f"{info.name} runs only on {span} in vLLM {VLLM_VERSION} (found {format_capability(found)})"
    return None
