"""Studies: what to benchmark, from YAML and the command line.

A ``Study`` is the resolved answer to "which backends x batch specs x sweep values,
at which shape, with which run settings". It is built once per pytest session from
(in order of precedence) explicit command-line options, the YAML file given with
``--bench-config``, and defaults. Every YAML key is checked: an unknown key, a bad
type or a bad batch spec is a ``StudyError`` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml

from attnbench import backends as registry
import re

from attnbench.shapes import ATTENTION_KEYS, MLA_KEYS, Shape, ShapeError, make_shape, sweepable_keys
from grammar import BatchSpecError, generate_batch_specs_from_ranges, parse_batch_spec, to_batch_spec

Mode = Literal["standard", "decode_vs_prefill"]
MODES = ("standard", "decode_vs_prefill")
AUTO = "auto"

DEFAULT_SPECS: dict[str, tuple[str, ...]] = {
    "attention": ("q2k", "8q1s1k", "16q4s1k", "2q2k_32q1s1k"),
    "mla": ("64q1s1k", "32q1s4k", "16q4s1k", "2q2k_32q1s1k"),
}


class StudyError(ValueError):
    """A bad study: names the file (or option) and the key."""


@dataclass(frozen=True)
class Sweep:
    """One swept parameter: a backend knob (num_kv_splits, reorder_batch_threshold) or a model dim."""

    param: str
    values: tuple[Any, ...]
    include_auto: bool = False

    def points(self) -> list[Any]:
        pts: list[Any] = [AUTO] if self.include_auto else []
        return pts + [v for v in self.values if v not in pts]


BACKEND_PARAMS = (registry.NUM_KV_SPLITS, registry.REORDER_BATCH_THRESHOLD)


@dataclass(frozen=True)
class RunSettings:
    device: str = "cuda"
    repeats: int = 100  # the most timed rounds (graph replays) per case
    warmup_iters: int = 10
    profile_memory: bool = False
    cache_state: Literal["cold", "warm"] = "cold"
    noise_target: float = 0.005  # stop early once the mean's relative standard error is below this; 0 = never
    min_rounds: int = 10
    seed: int = 0
    kernel_profile: bool = True  # one torch.profiler pass per GPU case: kernel durations and roles (--no-kernel-profile)


@dataclass(frozen=True)
class Study:
    name: str
    description: str = ""
    source: str | None = None
    backends: tuple[str, ...] | None = None  # canonical names; None = every backend of the family
    batch_specs: tuple[str, ...] | None = None  # None = the family's defaults
    mode: Mode = "standard"
    batch_sizes: tuple[int, ...] = ()
    model: dict[str, Any] = field(default_factory=dict)
    sweep: Sweep | None = None
    backend_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: RunSettings = field(default_factory=RunSettings)
    output_csv: str | None = None
    output_json: str | None = None

    def backends_for(self, family: str) -> list[registry.BackendInfo]:
        names = list(self.backends) if self.backends is not None else registry.default_backends(family)  # type: ignore[arg-type]
        return registry.for_family(names, family)  # type: ignore[arg-type]

    def specs_for(self, family: str) -> list[str]:
        specs = list(self.batch_specs) if self.batch_specs is not None else list(DEFAULT_SPECS[family])
        if not self.batch_sizes:
            return specs
        # decode_vs_prefill style: each spec describes one request group, repeated per batch size.
        out: list[str] = []
        for size in self.batch_sizes:
            for spec in specs:
                out.append(to_batch_spec(parse_batch_spec(spec) * size))
        return list(dict.fromkeys(out))

    def shape_for(self, family: str) -> Shape:
        return make_shape(family, self.model)


# ---------------------------------------------------------------- YAML schema

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(cond: bool, where: str, key: str, msg: str) -> None:
    if not cond:
        raise StudyError(f"{where}: key '{key}': {msg}")


_MODEL_KEYS = (ATTENTION_KEYS | MLA_KEYS | {"name"})
_BENCH_KEYS = {"device": str, "repeats": int, "warmup_iters": int, "profile_memory": bool, "kernel_profile": bool}
_TOP_KEYS = {
    "name", "description", "backends", "backend", "batch_specs", "batch_spec_ranges", "batch_sizes", "mode",
    "model", "parameter_sweep", "model_parameter_sweep", "output", "warmup_iters", "repeats", "profile_memory",
    "kv_cache_dtype", "device", "benchmark", "cache_state", "noise_target",
}


def load_study_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML study; returns the normalised fields of ``Study`` it sets."""
    p = Path(path)
    where = str(path)
    if not p.is_file():
        raise StudyError(f"{where}: no such study file")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise StudyError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: the top level must be a mapping of keys")
    return parse_study_dict(raw, where, default_name=p.stem)


def parse_study_dict(raw: dict[str, Any], where: str, default_name: str = "study") -> dict[str, Any]:
    out: dict[str, Any] = {"name": default_name, "source": where}
    run: dict[str, Any] = {}
    backend_names = set(registry.all_names())
    for key, value in raw.items():
        if key in backend_names or _maybe_backend(key):
            out.setdefault("backend_settings", {})[registry.canonical_name(key)] = _backend_section(value, where, key)
            continue
        _check(key in _TOP_KEYS, where, key, f"unknown key (valid: {', '.join(sorted(_TOP_KEYS))}, or a backend name)")
        if key == "name":
            _check(isinstance(value, str) and value, where, key, "must be a non-empty string")
            out["name"] = value
        elif key == "description":
            _check(isinstance(value, str), where, key, "must be a string")
            out["description"] = value
        elif key in ("backends", "backend"):
            names = [value] if isinstance(value, str) else value
            _check(isinstance(names, list) and names and all(isinstance(n, str) for n in names),
                   where, key, "must be a backend name or a non-empty list of names")
            try:
                out["backends"] = tuple(dict.fromkeys(registry.canonical_name(n) for n in names))
            except registry.UnknownBackendError as exc:
                raise StudyError(f"{where}: key '{key}': {exc}") from None
        elif key == "batch_specs":
            _check(isinstance(value, list) and value and all(isinstance(s, str) for s in value),
                   where, key, "must be a non-empty list of batch-spec strings")
            specs = out.get("batch_specs", ()) + tuple(_checked_spec(s, where, key) for s in value)
            out["batch_specs"] = tuple(dict.fromkeys(specs))  # a repeated spec is one case, not two ids
        elif key == "batch_spec_ranges":
            _check(isinstance(value, list) and all(isinstance(r, dict) for r in value), where, key,
                   "must be a list of mappings with a 'template'")
            try:
                specs = generate_batch_specs_from_ranges(value)
            except BatchSpecError as exc:
                raise StudyError(f"{where}: key '{key}': {exc}") from None
            out["batch_specs"] = tuple(dict.fromkeys(out.get("batch_specs", ()) + tuple(specs)))
        elif key == "batch_sizes":
            _check(isinstance(value, list) and value and all(_is_int(v) and v > 0 for v in value),
                   where, key, "must be a non-empty list of positive integers")
            out["batch_sizes"] = tuple(value)
        elif key == "mode":
            _check(value in MODES, where, key, f"must be one of {', '.join(MODES)}")
            out["mode"] = value
        elif key == "model":
            out["model"] = _model_section(value, where)
        elif key in ("parameter_sweep", "model_parameter_sweep"):
            out["sweep"] = _sweep_section(value, where, key)
        elif key == "output":
            _check(isinstance(value, dict), where, key, "must be a mapping with csv and/or json")
            for sub, path in value.items():
                _check(sub in ("csv", "json"), where, f"output.{sub}", "unknown key (valid: csv, json)")
                _check(isinstance(path, str) and path, where, f"output.{sub}", "must be a file path")
                out[f"output_{sub}"] = path
        elif key == "benchmark":
            _check(isinstance(value, dict), where, key, "must be a mapping")
            for sub, v in value.items():
                _check(sub in _BENCH_KEYS, where, f"benchmark.{sub}", f"unknown key (valid: {', '.join(_BENCH_KEYS)})")
                run[sub] = _typed(v, _BENCH_KEYS[sub], where, f"benchmark.{sub}")
        elif key == "kv_cache_dtype":
            _check(isinstance(value, str), where, key, "must be a string")
            out.setdefault("model", {})["kv_cache_dtype"] = value
        elif key == "cache_state":
            _check(value in ("cold", "warm"), where, key, "must be cold or warm")
            run[key] = value
        elif key == "noise_target":
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, where, key,
                   "must be a number >= 0")
            run[key] = float(value)
        else:  # device, repeats, warmup_iters, profile_memory at the top level
            run[key] = _typed(value, _BENCH_KEYS[key], where, key)
    for k, v in run.items():
        problem = run_value_problem(k, v)
        if problem:
            raise StudyError(f"{where}: key '{k if k in raw else 'benchmark.' + k}': {problem}")
    if out.get("mode") == "decode_vs_prefill" and "sweep" in out:
        raise StudyError(f"{where}: key 'parameter_sweep': decode_vs_prefill mode already sweeps the pipeline")
    out["run"] = run
    return out


_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def run_value_problem(key: str, value: Any) -> str | None:
    """Why a run setting is out of range, or None; one rule for YAML and the command line."""
    if key == "device" and not _DEVICE.fullmatch(str(value)):
        return f"must be cpu, cuda or cuda:N, got {value!r}"
    if key == "repeats" and value < 1:
        return f"must be at least 1, got {value}"
    if key == "warmup_iters" and value < 0:
        return f"must be >= 0, got {value}"
    if key == "noise_target" and value < 0:
        return f"must be >= 0 (0 = never stop early), got {value}"
    return None


def _maybe_backend(key: Any) -> bool:
    if not isinstance(key, str):
        return False  # YAML keys like 123 or `on` (True) fall through to the unknown-key error
    try:
        registry.canonical_name(key)
    except registry.UnknownBackendError:
        return False
    return key.isupper()  # per-backend sections are spelled like the enum (CUTLASS_MLA:)


def _typed(value: Any, kind: type, where: str, key: str) -> Any:
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    _check(ok, where, key, f"must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _checked_spec(spec: str, where: str, key: str) -> str:
    try:
        parse_batch_spec(spec)
    except BatchSpecError as exc:
        raise StudyError(f"{where}: key '{key}': {exc}") from None
    return spec.strip()


def _model_section(value: Any, where: str) -> dict[str, Any]:
    _check(isinstance(value, dict), where, "model", "must be a mapping")
    model: dict[str, Any] = {}
    for k, v in value.items():
        _check(k in _MODEL_KEYS, where, f"model.{k}", f"unknown key (valid: {', '.join(sorted(_MODEL_KEYS))})")
        if k == "name":
            continue  # a label for people; the dimensions below are what is run
        if k in ("dtype", "kv_cache_dtype"):
            _check(isinstance(v, str), where, f"model.{k}", "must be a string")
        else:
            _check(_is_int(v) and v > 0, where, f"model.{k}", f"must be a positive integer, got {v!r}")
        model[k] = v
    return model


def _sweep_section(value: Any, where: str, key: str) -> Sweep:
    _check(isinstance(value, dict), where, key, "must be a mapping with param_name and values")
    allowed = {"param_name", "values", "include_auto", "label_format"}
    for k in value:
        _check(k in allowed, where, f"{key}.{k}", f"unknown key (valid: {', '.join(sorted(allowed))})")
    param = value.get("param_name")
    _check(isinstance(param, str), where, f"{key}.param_name", "is required and must be a string")
    values = value.get("values")
    _check(isinstance(values, list) and values, where, f"{key}.values", "must be a non-empty list")
    include_auto = value.get("include_auto", False)
    _check(isinstance(include_auto, bool), where, f"{key}.include_auto", f"must be true or false, got {include_auto!r}")
    try:
        return make_sweep(param, values, include_auto)
    except StudyError as exc:
        raise StudyError(f"{where}: key '{key}': {exc}") from None


def make_sweep(param: str, values: list[Any], include_auto: bool) -> Sweep:
    dims = sweepable_keys("attention") | sweepable_keys("mla")
    if param not in BACKEND_PARAMS and param not in dims:
        raise StudyError(f"unknown sweep parameter {param!r} (valid: {', '.join(BACKEND_PARAMS)}, "
                         f"or a model dimension: {', '.join(sorted(dims))})")
    parsed: list[Any] = []
    for v in values:
        if v == AUTO or (isinstance(v, str) and v.lower() == AUTO):
            include_auto = True
            continue
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if not (_is_int(v) and v >= 0):
            raise StudyError(f"sweep value {v!r} for {param} must be a non-negative integer or 'auto'")
        parsed.append(v)
    return Sweep(param, tuple(dict.fromkeys(parsed)), include_auto)


def _backend_section(value: Any, where: str, key: str) -> dict[str, Any]:
    _check(isinstance(value, dict), where, key, "a per-backend section must be a mapping")
    name = registry.canonical_name(key)
    knobs = set().union(*(b.sweep_params for b in registry.BACKENDS if b.name == name))
    for k, v in value.items():
        _check(k in BACKEND_PARAMS, where, f"{key}.{k}", f"unknown key (valid: {', '.join(BACKEND_PARAMS)})")
        _check(k in knobs, where, f"{key}.{k}", f"{name} has no {k} knob in vLLM 0.26.0 "
                                                  f"(its knobs: {', '.join(sorted(knobs)) or 'none'})")
        _check(v == AUTO or (_is_int(v) and v >= 0), where, f"{key}.{k}", "must be a non-negative integer or auto")
    return {k: v for k, v in value.items() if v != AUTO}


# ------------------------------------------------------------ CLI precedence

def build_study(yaml_fields: dict[str, Any] | None, cli: dict[str, Any],
                check_spec: Callable[[str], str] | None = None) -> Study:
    """Merge: explicit command line > YAML > defaults. ``cli`` holds only options the user gave."""
    y = dict(yaml_fields or {})
    run_fields = {**y.pop("run", {})}
    if cli.get("no_kernel_profile"):
        run_fields["kernel_profile"] = False
    for key in ("device", "repeats", "warmup_iters", "profile_memory", "cache_state", "noise_target", "seed"):
        if cli.get(key) is not None:
            problem = run_value_problem(key, cli[key])
            if problem:
                raise StudyError(f"--{key.replace('_', '-')}: {problem}")
            run_fields[key] = cli[key]
    model = dict(y.pop("model", {}))
    for key, value in (cli.get("model") or {}).items():
        if value is not None:
            model[key] = value
    fields_: dict[str, Any] = {"name": "cli", **y, "model": model, "run": RunSettings(**run_fields)}
    if cli.get("backends"):
        try:
            fields_["backends"] = tuple(dict.fromkeys(registry.canonical_name(n) for n in cli["backends"]))
        except registry.UnknownBackendError as exc:
            raise StudyError(f"--backends: {exc}") from None
    if cli.get("batch_specs"):
        specs = []
        for spec in cli["batch_specs"]:
            try:
                parse_batch_spec(spec)
            except BatchSpecError as exc:
                raise StudyError(f"--batch-specs: {exc}") from None
            specs.append(spec.strip())
        fields_["batch_specs"] = tuple(dict.fromkeys(specs))  # a repeated spec is one case, not two ids
    if cli.get("sweep_param") or cli.get("sweep_values"):
        if not (cli.get("sweep_param") and cli.get("sweep_values")):
            raise StudyError("--sweep-param and --sweep-values must be given together")
        fields_["sweep"] = make_sweep(cli["sweep_param"], list(cli["sweep_values"]), bool(cli.get("sweep_include_auto")))
    elif cli.get("sweep_include_auto"):
        if fields_.get("sweep") is None:
            raise StudyError("--sweep-include-auto needs a sweep (--sweep-param/--sweep-values, or parameter_sweep "
                             "in the YAML)")
        fields_["sweep"] = Sweep(fields_["sweep"].param, fields_["sweep"].values, True)
    for key in ("output_csv", "output_json"):
        if cli.get(key):
            fields_[key] = cli[key]
    if fields_.get("mode") == "decode_vs_prefill" and fields_.get("sweep") is not None:
        raise StudyError("--sweep-param: decode_vs_prefill mode already sweeps the pipeline")
    return Study(**fields_)


def check_shape(study: Study, family: str) -> Shape:
    try:
        return study.shape_for(family)
    except (ShapeError, TypeError) as exc:
        where = study.source or "command line"
        raise StudyError(f"{where}: model: {exc}") from None
