"""Studies: what to benchmark, from YAML and the command line.

A ``Study`` is the resolved answer to "which backends x batch specs x sweep values,
at which shape, with which run settings". It is built once per pytest session from
(in order of precedence) explicit command-line options, the YAML file given with
``--bench-config``, and defaults. Every YAML key is checked: an unknown key, a bad
type or a bad batch spec is a ``StudyError`` naming the file and the key. Which keys and
flags exist, their types, defaults and rules: attnbench/options.py; here is the code that
walks a file and merges the surfaces, and the YAML sections no table row can describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from attnbench import backends as registry
from attnbench import options
from attnbench.options import OptionError
from attnbench.shapes import Shape, ShapeError, make_shape, sweepable_keys
from grammar import BatchSpecError, generate_batch_specs_from_ranges, parse_batch_spec, to_batch_spec

Mode = Literal["standard", "decode_vs_prefill"]
AUTO = "auto"
_D = options.DEFAULTS  # every user-settable default is a row of attnbench/options.py

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
    """How each case is timed. Defaults, flags, YAML keys and rules: the ``run`` rows of attnbench/options.py."""

    device: str = _D["device"]
    repeats: int = _D["repeats"]  # the most timed rounds (graph replays) per case
    warmup_iters: int = _D["warmup_iters"]
    profile_memory: bool = _D["profile_memory"]
    cache_state: Literal["cold", "warm"] = _D["cache_state"]
    noise_target: float = _D["noise_target"]  # stop early once the mean's relative standard error is below this
    min_rounds: int = 10  # not an option: the fewest rounds before noise_target may stop timing
    seed: int = _D["seed"]
    kernel_profile: bool = _D["kernel_profile"]  # one torch.profiler pass per GPU case: kernel durations and roles
    kv_fill: Literal["random", "zeros"] = _D["kv_fill"]  # the K/V data: zeros only to reproduce zero-filled suites


@dataclass(frozen=True)
class Study:
    name: str
    description: str = _D["description"]
    source: str | None = None
    backends: tuple[str, ...] | None = None  # canonical names; None = every backend of the family
    batch_specs: tuple[str, ...] | None = None  # None = the family's defaults
    mode: Mode = _D["mode"]
    batch_sizes: tuple[int, ...] = _D["batch_sizes"]
    model: dict[str, Any] = field(default_factory=dict)
    sweep: Sweep | None = None
    timed_region: tuple[str, ...] = _D["timed_region"]  # an axis: one case per region
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


options.check_record(RunSettings, ("run",))
options.check_record(Study, ("study",))


# ---------------------------------------------------------------- YAML schema

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(cond: bool, where: str, key: str, msg: str) -> None:
    if not cond:
        raise StudyError(f"{where}: key '{key}': {msg}")


# YAML keys that need code of their own (below); every other key is a row of attnbench/options.py
_SPECIAL_KEYS = ("batch_spec_ranges", "parameter_sweep", "model_parameter_sweep")
_LABELS = ("model.name",)  # for people; the dimensions are what is run
_SECTIONS: dict[str, list[str]] = {}
for _key in (*options.BY_YAML, *_LABELS):
    if "." in _key:
        _SECTIONS.setdefault(_key.split(".")[0], []).append(_key.split(".", 1)[1])
_TOP_KEYS = sorted({k for k in options.BY_YAML if "." not in k} | set(_SECTIONS) | set(_SPECIAL_KEYS))


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
    """Check a study mapping key by key; returns Study fields, with "run" and "model" as dicts of what it sets."""
    out: dict[str, Any] = {"name": default_name, "source": where}
    parts: dict[str, dict[str, Any]] = {"study": out, "run": {}, "model": {}}
    ranges: tuple[str, ...] = ()

    def take(key: str, value: Any) -> None:
        opt = options.BY_YAML[key]
        try:
            parts[opt.to][opt.name] = opt.value(value)
        except OptionError as exc:
            raise StudyError(f"{where}: key '{key}': {exc}") from None

    backend_names = set(registry.all_names())
    for key, value in raw.items():
        if key in backend_names or _maybe_backend(key):
            out.setdefault("backend_settings", {})[registry.canonical_name(key)] = _backend_section(value, where, key)
        elif key in _SECTIONS:
            _check(isinstance(value, dict), where, key, f"must be a mapping (valid keys: {', '.join(_SECTIONS[key])})")
            for sub, v in value.items():
                spelled = f"{key}.{sub}"
                _check(sub in _SECTIONS[key], where, spelled, f"unknown key (valid: {', '.join(sorted(_SECTIONS[key]))})")
                if spelled not in _LABELS:
                    take(spelled, v)
        elif key in options.BY_YAML:
            take(key, value)
        elif key == "batch_spec_ranges":
            _check(isinstance(value, list) and all(isinstance(r, dict) for r in value), where, key,
                   "must be a list of mappings with a 'template'")
            try:
                ranges += tuple(generate_batch_specs_from_ranges(value))
            except BatchSpecError as exc:
                raise StudyError(f"{where}: key '{key}': {exc}") from None
        elif key in ("parameter_sweep", "model_parameter_sweep"):
            out["sweep"] = _sweep_section(value, where, key)
        else:
            _check(False, where, key, f"unknown key (valid: {', '.join(_TOP_KEYS)}, or a backend name)")
    if ranges:  # generated specs join the listed ones, after them
        out["batch_specs"] = tuple(dict.fromkeys(out.get("batch_specs", ()) + ranges))
    problem = _mode_problem(out)
    if problem:
        raise StudyError(f"{where}: key '{problem[0]}': {problem[1]}")
    return {**out, "run": parts["run"], "model": parts["model"]}


def _mode_problem(fields_: dict[str, Any]) -> tuple[str, str] | None:
    """The cross-option rules of decode_vs_prefill, as (YAML key, why): it already sweeps the pipeline, and it
    compares whole layer steps (the decode path's projection GEMMs are part of what the threshold trades)."""
    if fields_.get("mode") != "decode_vs_prefill":
        return None
    if fields_.get("sweep") is not None:
        return "parameter_sweep", "decode_vs_prefill mode already sweeps the pipeline"
    if tuple(fields_.get("timed_region", ("layer",))) != ("layer",):
        return "timed_region", ("decode_vs_prefill mode compares whole layer steps (the decode path's W_UK/W_UV "
                                "GEMMs are part of the trade): only the layer region applies")
    return None


def _maybe_backend(key: Any) -> bool:
    if not isinstance(key, str):
        return False  # YAML keys like 123 or `on` (True) fall through to the unknown-key error
    try:
        registry.canonical_name(key)
    except registry.UnknownBackendError:
        return False
    return key.isupper()  # per-backend sections are spelled like the enum (CUTLASS_MLA:)


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
        if isinstance(v, str) and v.strip().lower() == AUTO:
            include_auto = True
            continue
        try:
            parsed.append(options.count(v))
        except OptionError:
            raise StudyError(f"sweep value {v!r} for {param} must be a non-negative integer or 'auto'") from None
    return Sweep(param, tuple(dict.fromkeys(parsed)), include_auto)


def _backend_section(value: Any, where: str, key: str) -> dict[str, Any]:
    _check(isinstance(value, dict), where, key, "a per-backend section must be a mapping")
    name = registry.canonical_name(key)
    rows = [b for b in registry.BACKENDS if b.name == name]  # REFERENCE has a row per family
    knobs = set().union(*(b.sweep_params for b in rows))
    for k, v in value.items():
        _check(k in BACKEND_PARAMS, where, f"{key}.{k}", f"unknown key (valid: {', '.join(BACKEND_PARAMS)})")
        problem = None if k in knobs else registry.knob_problem(rows[0], k)
        _check(problem is None, where, f"{key}.{k}", f"{problem} (its knobs: {', '.join(sorted(knobs)) or 'none'})")
        _check(v == AUTO or (_is_int(v) and 0 <= v <= options.INT_MAX), where, f"{key}.{k}",
               "must be a non-negative integer or auto")
    return {k: v for k, v in value.items() if v != AUTO}


# ------------------------------------------------------------ CLI precedence

def build_study(yaml_fields: dict[str, Any] | None, cli: dict[str, Any]) -> Study:
    """Merge: explicit command line > YAML > defaults. ``cli`` holds the options the user gave (None = not given):
    a value is checked by its options.py row and blamed on its flag; CLI text may spell a number."""
    y = dict(yaml_fields or {})
    parts: dict[str, dict[str, Any]] = {"run": dict(y.pop("run", {})), "model": dict(y.pop("model", {})),
                                        "study": {"name": _D["name"], **y}, "sweep": {}}
    for opt in options.OPTIONS:
        raw = options.given(cli, opt)
        if raw is None or not opt.flags or opt.to not in parts:
            continue
        try:
            parts[opt.to][opt.name] = opt.value(raw, cli=True)
        except OptionError as exc:
            raise StudyError(f"{opt.flags[0]}: {exc}") from None
    fields_, sweep = parts["study"], parts["sweep"]
    if sweep.get("sweep_param") or sweep.get("sweep_values"):
        if not (sweep.get("sweep_param") and sweep.get("sweep_values")):
            raise StudyError("--sweep-param and --sweep-values must be given together")
        fields_["sweep"] = make_sweep(sweep["sweep_param"], list(sweep["sweep_values"]),
                                      bool(sweep.get("sweep_include_auto")))
    elif sweep.get("sweep_include_auto"):
        if fields_.get("sweep") is None:
            raise StudyError("--sweep-include-auto needs a sweep (--sweep-param/--sweep-values, or parameter_sweep "
                             "in the YAML)")
        fields_["sweep"] = Sweep(fields_["sweep"].param, fields_["sweep"].values, True)
    problem = _mode_problem(fields_)
    if problem:  # the YAML alone passed parse_study_dict, so the conflict came from here
        flag = {"parameter_sweep": "--sweep-param", "timed_region": "--timed-region"}[problem[0]]
        raise StudyError(f"{flag}: {problem[1]}")
    return Study(**fields_, model=parts["model"], run=RunSettings(**parts["run"]))


def check_shape(study: Study, family: str) -> Shape:
    try:
        return study.shape_for(family)
    except (ShapeError, TypeError) as exc:
        where = study.source or "command line"
        raise StudyError(f"{where}: model: {exc}") from None
