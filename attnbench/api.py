"""Upstream's Python API: ``BenchmarkConfig`` -> ``run_mla_benchmark`` / ``run_attention_benchmark``
-> ``BenchmarkResult``.

It builds the same ``BenchCase`` the pytest plugin builds and calls the same
``runner.execute``: one measurement, not a second one. ``BenchmarkResult`` has upstream's fields
(``mean_time`` is device seconds per attention call of one layer on a GPU, host seconds on the
CPU) read from the case's ``CaseOutcome``, which it carries whole as ``outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnbench.spec import backends as registry
from attnbench.spec import options
from attnbench.spec.backends import NUM_KV_SPLITS, REORDER_BATCH_THRESHOLD
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import SkipCase
from attnbench.results.outcome import SKIPPED, CaseOutcome
from attnbench.measure.runner import execute
from attnbench.spec.shapes import make_shape
from attnbench.spec.study import RunSettings
from grammar import parse_batch_spec

__all__ = ["BenchmarkConfig", "BenchmarkResult", "run_attention_benchmark", "run_mla_benchmark"]


_D = options.DEFAULTS


@dataclass
class BenchmarkConfig:
    """One case, as upstream's ``common.BenchmarkConfig`` described it (its field order, so positional calls
    keep working). None = the family's default. Run settings are the ``run`` rows of attnbench/spec/options.py,
    model dimensions its ``model`` rows; ``check_record`` below fails the import if a row has no field here."""

    backend: str
    batch_spec: str
    num_layers: int | None = None
    head_dim: int | None = None
    num_q_heads: int | None = None
    num_kv_heads: int | None = None
    block_size: int | None = None
    device: str = _D["device"]
    repeats: int = _D["repeats"]
    warmup_iters: int = _D["warmup_iters"]
    profile_memory: bool = _D["profile_memory"]
    kv_cache_dtype: str | None = None
    dtype: str | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    model: str | None = None  # a shipped model name or a config.json: its dimensions, which the ones above override
    cache_state: str = _D["cache_state"]
    noise_target: float = _D["noise_target"]
    seed: int = _D["seed"]
    kernel_profile: bool = _D["kernel_profile"]
    kv_fill: str = _D["kv_fill"]
    kv_scales: str = _D["kv_scales"]
    placements: int = _D["placements"]
    inject_delay: float = _D["inject_delay"]
    timer: str = _D["timer"]
    timed_region: str = "layer"  # one case times one region ("layer" or "attention")
    extra: dict[str, Any] = field(default_factory=dict)  # upstream fields this suite does not use

    def model_overrides(self) -> dict[str, Any]:
        """The model dimensions given (None: the family's default), each checked by its ``model`` row's rule, as the
        command line checks it (a ValueError naming the field)."""
        rows = {opt.name: opt for opt in options.OPTIONS if opt.to == "model"}
        values = {}
        for name in rows:
            value = getattr(self, name)
            if value is not None:
                try:
                    value = rows[name].value(value)
                except options.OptionError as exc:
                    raise ValueError(f"BenchmarkConfig.{name}: {exc}") from None
            values[name] = value
        return values

    def run_settings(self) -> RunSettings:
        """The run rows' values, each checked by its row's rule (a ValueError naming the field)."""
        values = {}
        for opt in options.OPTIONS:
            if opt.to == "run":
                try:
                    values[opt.name] = opt.value(getattr(self, opt.name))
                except options.OptionError as exc:
                    raise ValueError(f"BenchmarkConfig.{opt.name}: {exc}") from None
        return RunSettings(**values)


options.check_record(BenchmarkConfig, ("run", "model"))


@dataclass(frozen=True)
class BenchmarkResult:
    """Upstream's result of one case; its numbers are the outcome's (None where it has none)."""

    config: BenchmarkConfig
    outcome: CaseOutcome

    @property
    def mean_time(self) -> float | None:
        return self.outcome.times.mean

    @property
    def std_time(self) -> float | None:
        return self.outcome.times.stddev

    @property
    def min_time(self) -> float | None:
        return self.outcome.times.min

    @property
    def max_time(self) -> float | None:
        return self.outcome.times.max

    @property
    def throughput_tokens_per_sec(self) -> float | None:
        return self.outcome.throughput

    @property
    def memory_allocated_mb(self) -> float | None:
        peak = self.outcome.memory.peak_allocated_bytes
        return peak / 2**20 if peak is not None else None

    @property
    def error(self) -> str | None:
        return self.outcome.reason

    @property
    def success(self) -> bool:
        return self.outcome.passed


def _require_config(config: Any) -> None:
    if not isinstance(config, BenchmarkConfig):
        raise TypeError(f"config is {type(config).__name__} {config!r:.60}, expected a BenchmarkConfig")


def _run(family: str, config: BenchmarkConfig, params: dict[str, int]) -> BenchmarkResult:
    _require_config(config)
    if not isinstance(config.backend, str):
        raise TypeError(f"BenchmarkConfig.backend is {type(config.backend).__name__}, expected a backend name")
    if not isinstance(config.extra, dict):
        raise TypeError(f"BenchmarkConfig.extra is {type(config.extra).__name__}, expected a dict")
    info = registry.lookup(config.backend, family)  # type: ignore[arg-type]
    if info is None:
        registry.canonical_name(config.backend)  # raises with the list of valid names if unknown
        raise ValueError(f"{config.backend} is not a {family} backend")
    parse_batch_spec(config.batch_spec)
    try:
        (region,) = options.BY_NAME["timed_region"].value(config.timed_region)
    except options.OptionError as exc:
        raise ValueError(f"BenchmarkConfig.timed_region: {exc}") from None
    case = BenchCase(
        study="api", backend=info, batch_spec=config.batch_spec.strip(),
        shape=make_shape(family, config.model_overrides()), run=config.run_settings(), backend_settings=params,
        timed_region=region)
    try:
        outcome = CaseOutcome.measured(execute(case).record())
    except SkipCase as exc:
        outcome = CaseOutcome.unmeasured(case, SKIPPED, str(exc))
    return BenchmarkResult(config, outcome)


def run_mla_benchmark(backend: str, config: BenchmarkConfig, num_kv_splits: int | None = None,
                      reorder_batch_threshold: int | None = None) -> BenchmarkResult:
    """Time one MLA case; the optional knobs force CUTLASS_MLA's split count or the builder's threshold."""
    _require_config(config)  # before its fields are copied below
    params = {}
    knobs = ((NUM_KV_SPLITS, num_kv_splits, 1), (REORDER_BATCH_THRESHOLD, reorder_batch_threshold, 0))
    for name, value, least in knobs:
        if value is None:
            continue
        try:  # the rule a swept knob value has on the command line and in YAML
            params[name] = options.at_least(least)(options.count(value))
        except options.OptionError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return _run("mla", BenchmarkConfig(**{**config.__dict__, "backend": backend}), params)


def run_attention_benchmark(config: BenchmarkConfig) -> BenchmarkResult:
    """Time one standard-attention case."""
    return _run("attention", config, {})
