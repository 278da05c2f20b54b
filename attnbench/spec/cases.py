"""One benchmark case: a backend x batch spec (x a point of the study's sweeps) at a shape, with run settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from attnbench.spec.backends import NUM_KV_SPLITS, REORDER_BATCH_THRESHOLD, BackendInfo, knob_problem
from attnbench.results.record import CaseKey, SweptValue
from attnbench.spec.shapes import DEEPSEEK_V32, Shape, mha_path_problem
from attnbench.spec.study import RunSettings
from attnbench.spec.sweeps import AUTO, apply_to_shape, is_knob, model_params
from grammar import BatchRequest, parse_batch_spec


# mha_vs_mqa mode's pipelines: sparse prefill rows through dense MHA (vLLM's choice while prefill_max_seq_len <=
# index_topk), or every row through the top-k MQA kernel (attention_config.sparse_mla_force_mqa)
MHA, MQA = "mha", "mqa"
# decode_vs_prefill mode's pipelines: every row through the decode (MQA) path, or every row through prefill
DECODE, PREFILL = "decode", "prefill"


@dataclass(frozen=True)
class BenchCase:
    study: str
    backend: BackendInfo
    batch_spec: str
    shape: Shape
    run: RunSettings
    sweep: tuple[SweptValue, ...] = ()  # one value per swept parameter of the study, in its order
    pipeline: str | None = None  # decode_vs_prefill mode: "decode" or "prefill"
    backend_settings: dict[str, Any] = field(default_factory=dict)  # from the study's per-backend section
    timed_region: str = "layer"  # "layer": vLLM's layer step; "attention": the backend's attention call alone
    # sparse MLA (DeepSeek-V3.2): the mock indexer's pattern (attnbench.measure.sparse_mla.TOPK_PATTERNS); None = dense
    topk_pattern: str | None = None
    model: str | None = None  # the model whose dimensions ``shape`` starts from (``--model``), as it was given

    @property
    def sparse(self) -> bool:
        return self.topk_pattern is not None

    @property
    def force_mqa(self) -> bool:
        """mha_vs_mqa's "mqa" pipeline: vLLM's ``attention_config.sparse_mla_force_mqa``, every row top-k MQA."""
        return self.pipeline == MQA

    @property
    def family(self) -> str:
        return self.backend.family

    @functools.cached_property
    def requests(self) -> list[BatchRequest]:
        """The batch spec's requests, parsed once per case (read-only: every reader iterates or slices it)."""
        return parse_batch_spec(self.batch_spec)

    @property
    def effective_shape(self) -> Shape:
        """The shape with the swept model dimensions applied (those of this family: the plugin collects no case
        of a sweep of the other family's dimensions)."""
        return apply_to_shape(self.shape, tuple(s for s in self.sweep if s.param in model_params(self.family)))

    @property
    def backend_params(self) -> dict[str, int]:
        """Builder knobs to force (num_kv_splits, reorder_batch_threshold); absent = vLLM's choice."""
        params = dict(self.backend_settings)
        for swept in self.sweep:
            if not is_knob(swept.param):
                continue
            if swept.value == AUTO:
                params.pop(swept.param, None)
            else:
                params[swept.param] = swept.value
        if self.pipeline == MHA:
            # every row a prefill row, q 1 included: split_decodes_and_prefills reads `threshold or 1`, so 0
            # would still call q-1 rows decodes; -1 calls none (what upstream's dense_mha variant forces too)
            params[REORDER_BATCH_THRESHOLD] = -1
        elif self.pipeline == MQA:
            pass  # vLLM's own split; force_mqa sends the prefill rows through MQA as well
        elif self.pipeline is not None:
            max_q = max(r.q_len for r in self.requests)
            # decode pipeline: every request is short enough for the MQA path; prefill: none is
            params[REORDER_BATCH_THRESHOLD] = max_q if self.pipeline == DECODE else max_q - 1
        return params

    @property
    def unsupported_sweep(self) -> str | None:
        """Why a builder knob this case forces (swept, or set by the Python API's arguments or a per-backend
        YAML section, which the study already checked) does not apply to this backend, if it does not."""
        for swept in self.sweep:
            problem = knob_problem(self.backend, swept.param) if is_knob(swept.param) and swept.value != AUTO else None
            if problem:
                return problem
        for knob in self.backend_settings:
            problem = knob_problem(self.backend, knob) if knob in (NUM_KV_SPLITS, REORDER_BATCH_THRESHOLD) else None
            if problem:
                return problem
        if self.pipeline is not None and knob_problem(self.backend, REORDER_BATCH_THRESHOLD):
            return f"{self.backend.name} has no decode/prefill pipeline split (reorder_batch_threshold)"
        if self.pipeline == MHA:
            return mha_path_problem(self.requests, DEEPSEEK_V32.index_topk)
        return None

    def describe(self) -> dict[str, Any]:
        """Structured labels for extra_info and exports (never parsed back from ids)."""
        return {
            "study": self.study,
            "family": self.family,
            "backend": self.backend.name,
            "batch_spec": self.batch_spec,
            "shape": self.effective_shape.describe(),
            "sweep": self.sweep,
            "pipeline": self.pipeline,
            "backend_params": self.backend_params,
            "device": self.run.device,
            "timed_region": self.timed_region,
            "kv_fill": self.run.kv_fill,
            "topk_pattern": self.topk_pattern,
        }

    def key(self) -> CaseKey:
        """The case's identity in its record and in every report."""
        return CaseKey(**self.describe(), cache_state=self.run.cache_state)
