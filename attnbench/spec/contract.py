"""The adapter contract: what a backend adapter builds for one case, and how the runner finds it.

Torch-free, so the registry, the runner and every adapter import it without a cycle: the runner
loads an adapter by the registry row's ``"module:factory"`` string (collection needs no vLLM),
and adapters import only this module from the harness's execution side.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol

if TYPE_CHECKING:
    import torch

    from attnbench.spec.cases import BenchCase
    from attnbench.spec.metrics import SparseSelection
    from grammar import BatchRequest


# What one timed call can be: "layer", vLLM's layer step (cache write + attention, MLA projections included),
# or "attention", the backend's attention call alone on a cache the step already wrote. Adapters build both.
TIMED_REGIONS = ("layer", "attention")
# Sparse MLA (DeepSeek-V3.2): which index_topk keys the mock indexer gives each query (attnbench/measure/sparse_mla.py
# writes them); here so the option table and collection need no torch.
TOPK_PATTERNS = ("random", "prefix", "sliding_window")


class SkipCase(Exception):
    """The case cannot run here; the message is the reason (hardware, memory, unsupported knob)."""


@dataclass
class LayerCall:
    """One layer's buffers and its attention step, as the timed region runs it."""

    run: Callable[[], Any]  # one attention call, as the timed region runs it
    result: Callable[[], "torch.Tensor"]  # the output of the last call
    oracle: Callable[[], "torch.Tensor"]  # the reference result for this layer's current cache contents
    check_cache: Callable[[], str | None] = lambda: None  # None, or why the cache write is wrong
    # brings the buffers to the state ``run`` expects, once before the first call: for the attention
    # region, one layer step writes the new tokens into the cache (and MLA absorbs the decode rows' q)
    prepare: Callable[[], Any] = lambda: None
    # a quantised cache only: exact attention over the K/V before quantisation (the accuracy cost's reference)
    unquantized_oracle: Callable[[], "torch.Tensor"] | None = None


def region_call(region: str, write: Callable[[], Any], attend: Callable[[], Any], result: Callable[[], "torch.Tensor"],
                oracle: Callable[[], "torch.Tensor"], check_cache: Callable[[], str | None],
                unquantized_oracle: Callable[[], "torch.Tensor"] | None = None) -> LayerCall:
    """A layer whose step is ``write`` then ``attend``, timed as ``region`` says: the whole step, or ``attend``
    alone after one ``write`` (prepare)."""
    if region == "layer":
        def step() -> None:
            write()
            attend()
        return LayerCall(step, result, oracle, check_cache, unquantized_oracle=unquantized_oracle)
    return LayerCall(attend, result, oracle, check_cache, prepare=write, unquantized_oracle=unquantized_oracle)


class CaseAdapter(Protocol):
    """What an adapter builds for one case. ``info`` says which path vLLM took (the kernel path)."""

    info: dict[str, Any]
    bytes_per_layer: int  # one layer's buffers (cache, inputs, outputs) that a call touches
    mla_paths: list[str] | None  # per request: "decode" or "prefill" (MLA only)
    # the attention kernel reads q as fp8 (vLLM quantises it with the layer's _q_scale for a quantised cache)
    quantized_query: bool
    # per request, which attention kernel runs it where a standard backend splits them (FlashInfer); None: one
    attention_paths: list[str] | None
    # per request, the keys a sparse MLA indexer selected (the work model counts only those); None: dense
    sparse_selections: list["SparseSelection"] | None
    requests: list["BatchRequest"]  # in execution order

    def make_layer(self, index: int) -> LayerCall: ...

    def context(self) -> ContextManager[Any]: ...  # entered around every eager call and the capture

    def estimate_bytes(self, num_layer_buffers: int) -> int: ...

    def close(self) -> None: ...


AdapterFactory = Callable[["BenchCase"], CaseAdapter]


def load_adapter(case: "BenchCase") -> CaseAdapter:
    """Build ``case``'s adapter from its registry row's ``"module:factory"``."""
    module_name, factory = case.backend.adapter.split(":")
    make: AdapterFactory = getattr(importlib.import_module(module_name), factory)
    return make(case)
