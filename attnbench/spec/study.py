"""Studies: what to benchmark, from YAML and the command line.

A ``Study`` is the resolved answer to "which backends x batch specs x points of its sweeps,
at which shape, with which run settings". It is built once per pytest session from
(in order of precedence) explicit command-line options, the YAML file given with
``--bench-config``, and defaults. Every YAML key is checked: an unknown key, a bad
type or a bad batch spec is a ``StudyError`` naming the file and the key. Which keys and
flags exist, their types, defaults and rules: attnbench/spec/options.py; here is the code that
walks a file and merges the surfaces, and the YAML sections no table row can describe.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from attnbench.spec import backends as registry
from attnbench.spec import models
from attnbench.spec import options
from attnbench.spec.options import OptionError
from attnbench.spec.shapes import QUANTIZED_KV_CACHE_DTYPES, Shape, ShapeError, make_shape
from attnbench.spec.sweeps import AUTO, BACKEND_PARAMS, Sweep, SweepError, check_distinct, make_sweep
from grammar import (MAX_REQUESTS, BatchSpecError, generate_batch_specs_from_ranges, parse_batch_spec,
                     repeat_batch_spec, to_batch_spec)

Mode = Literal["standard", "decode_vs_prefill", "mha_vs_mqa"]
_D = options.DEFAULTS  # every user-settable default is a row of attnbench/spec/options.py

DEFAULT_SPECS: dict[str, tuple[str, ...]] = {
    "attention": ("q2k", "8q1s1k", "16q4s1k", "2q2k_32q1s1k"),
    "mla": ("64q1s1k", "32q1s4k", "16q4s1k", "2q2k_32q1s1k"),
}
# Sparse MLA (index_topk 2048): contexts past 2048, where the top-k patterns differ, plus a prefill short enough
# for vLLM's dense-MHA path; q4k_32q1s8k's prefill is longer than top-k, so it runs top-k MQA, causally padded
SPARSE_DEFAULT_SPECS = ("64q1s8k", "16q4s8k", "q4k_32q1s8k", "q2k")
DEFAULT_TOPK_PATTERNS = ("random",)


class StudyError(ValueError):
    """A bad study: names the file (or option) and the key."""


@dataclass(frozen=True)
class RunSettings:
    """How each case is timed. Defaults, flags, YAML keys and rules: the ``run`` rows of attnbench/spec/options.py."""

    device: str = _D["device"]
    repeats: int = _D["repeats"]  # the most timed rounds (graph replays) per case
    warmup_iters: int = _D["warmup_iters"]
    profile_memory: bool = _D["profile_memory"]
    cache_state: Literal["cold", "warm"] = _D["cache_state"]
    noise_target: float = _D["noise_target"]  # stop early once the mean's relative standard error is below this
    placements: int = _D["placements"]  # allocations of the buffers a case is timed on (rounds split between them)
    inject_delay: float = _D["inject_delay"]  # test-only: spin this fraction of a call's time after each call
    timer: Literal["events", "cupti"] = _D["timer"]  # how a GPU round is timed (measure/timing.py)
    min_rounds: int = 10  # not an option: the fewest rounds before noise_target may stop timing
    seed: int = _D["seed"]
    kernel_profile: bool = _D["kernel_profile"]  # one torch.profiler pass per GPU case: kernel durations and roles
    kv_fill: Literal["random", "zeros"] = _D["kv_fill"]  # the K/V data: zeros only to reproduce zero-filled suites
    kv_scales: Literal["calibrated", "unit"] = _D["kv_scales"]  # a quantised cache's scales (recorded, not keyed)


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
    sweeps: tuple[Sweep, ...] = ()  # swept parameters, each once: the cases are their Cartesian product
    timed_region: tuple[str, ...] = _D["timed_region"]  # an axis: one case per region
    # sparse MLA's axis: one case per mock-indexer pattern; None = not given (DEFAULT_TOPK_PATTERNS where a sparse
    # backend is named; without either, no sparse case is collected)
    topk_pattern: tuple[str, ...] | None = _D["topk_pattern"]

    def topk_patterns(self) -> tuple[str, ...]:
        return self.topk_pattern or DEFAULT_TOPK_PATTERNS

    def wants_sparse(self) -> bool:
        """Whether bench_mla's sparse cases are collected: opt-in, so that ``-k REFERENCE`` or ``-k flashmla`` on
        bench_mla keep meaning the dense cases. A study asks by naming a sparse backend or a top-k pattern."""
        if self.topk_pattern is not None:
            return True
        return any(registry.SPARSE in b.kinds and not b.is_reference
                   for b in registry.for_family(list(self.backends or ()), "mla"))
    backend_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    run: RunSettings = field(default_factory=RunSettings)
    output_csv: str | None = None
    output_json: str | None = None
    notes: tuple[str, ...] = ()  # what was merged or dropped while resolving (repeated specs...), to show the user

    def backends_for(self, family: str) -> list[registry.BackendInfo]:
        names = (list(self.backends) if self.backends is not None
                 else registry.default_backends(family))  # type: ignore[arg-type]
        return registry.for_family(names, family)  # type: ignore[arg-type]

    def specs_for(self, family: str, limit: int | None = None, notes: list[str] | None = None,
                  defaults: tuple[str, ...] | None = None) -> list[str]:
        """The family's batch specs (``defaults``, else the family's, where the study names none), each repeated
        per ``batch_sizes``; a StudyError (naming the count) when
        there would be more than ``limit``, checked before anything is expanded. Expansions that repeat a batch
        are run once, and ``notes`` gets a line saying so."""
        specs = list(self.batch_specs) if self.batch_specs is not None else list(defaults or DEFAULT_SPECS[family])
        if not self.batch_sizes:
            return specs
        where = f"{self.source or 'the study'}: key 'batch_sizes'"
        if limit is not None and len(specs) * len(self.batch_sizes) > limit:
            raise StudyError(f"{where}: {len(self.batch_sizes)} batch sizes x {len(specs)} batch specs = "
                             f"{len(specs) * len(self.batch_sizes)} specs, more than the limit {limit}: "
                             f"split the study")
        # decode_vs_prefill style: each spec describes one request group, repeated per batch size.
        out: dict[str, str] = {}  # the expanded spec -> what it came from, for the note on repeats
        repeats = []
        counts = {spec: len(parse_batch_spec(spec)) for spec in specs}
        for size in self.batch_sizes:
            for spec in specs:
                if counts[spec] * size > MAX_REQUESTS:
                    raise StudyError(f"{where}: batch size {size} x {_clip(spec)!r} ({counts[spec]} requests) "
                                     f"makes {counts[spec] * size} requests, more than the limit {MAX_REQUESTS}")
                expanded = repeat_batch_spec(spec, size)
                if expanded in out:
                    repeats.append(f"{size} x {spec} = {out[expanded]}")
                else:
                    out[expanded] = f"{size} x {spec}"
        if repeats and notes is not None:
            note = (f"{where}: {len(repeats)} batch size x spec combination(s) give a batch already listed, "
                    f"each is run once: {_listing(repeats)}")
            if note not in notes:
                notes.append(note)
        return list(out)

    def shape_for(self, family: str) -> Shape:
        return make_shape(family, self.model)


options.check_record(RunSettings, ("run",))
options.check_record(Study, ("study",))


# ---------------------------------------------------------------- YAML schema

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_MAX_SHOWN = 120  # characters of a user's token in a message: a 5,000-character key or spec is cut


def _clip(text: Any) -> str:
    text = str(text)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def shown_key(key: Any) -> str:
    """A YAML key as a message shows it: newlines, escapes and other controls escaped, long ones cut."""
    text = key if isinstance(key, str) else str(key)
    return _clip(text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text)


def _listing(items: list[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _check(cond: bool, where: str, key: str, msg: str) -> None:
    if not cond:
        raise StudyError(f"{where}: key '{shown_key(key)}': {msg}")


def unique_batches(specs: Any, where: str) -> tuple[tuple[str, ...], str | None]:
    """``specs`` (parsed already) with each batch once, judged on the parsed batch as ranges do (``1q1s1k`` is
    ``q1s1k``, ``q1k`` is ``q1024``), the first spelling kept; and a note naming what was dropped, if anything."""
    kept: dict[str, str] = {}
    dropped = []
    for spec in specs:
        spec = spec.strip(" \t\r\n")
        canonical = to_batch_spec(parse_batch_spec(spec))
        if canonical in kept:
            dropped.append(f"{_clip(spec)} (= {_clip(kept[canonical])})")
        else:
            kept[canonical] = spec
    note = (f"{where}: {len(dropped)} batch spec(s) repeat a batch already listed and are run once: "
            f"{_listing(dropped)}") if dropped else None
    return tuple(kept.values()), note


def _repeats_note(opt: options.Option, raw: Any, value: Any, where: str) -> str | None:
    """A note when a list option's value lost entries to merging (``--backends flash FLASH_ATTN``, sizes 1 1)."""
    given = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, (list, tuple)) else []
    if opt.many and len(value) < len(given):
        return (f"{where}: {len(given) - len(value)} repeated value(s) merged, each is run once "
                f"({_listing([_clip(v) for v in given])} -> {_listing([_clip(v) for v in value])})")
    return None


class _StudyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error, not the last one silently winning."""


def _construct_mapping(loader: _StudyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: keys after it override, as YAML says
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # a list or mapping as a key; the constructor below says so with its position
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{shown_key(key)}' is given twice (first on line {first.line + 1}); give it once",
                key_node.start_mark)
        seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StudyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what, at which line and column."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}: {what}" if context and what and "given twice" not in what else what
    text = " ".join(str(text).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {text}" if mark is not None else text


# YAML keys that need code of their own (below); every other key is a row of attnbench/spec/options.py
SWEEP_KEYS = ("parameter_sweep", "model_parameter_sweep", "parameter_sweeps")  # one sweep (upstream's), or a list
_SPECIAL_KEYS = ("batch_spec_ranges", *SWEEP_KEYS)
_SECTIONS: dict[str, list[str]] = {}
for _key in options.BY_YAML:
    if "." in _key:
        _SECTIONS.setdefault(_key.split(".")[0], []).append(_key.split(".", 1)[1])
_TOP_KEYS = sorted({k for k in options.BY_YAML if "." not in k} | set(_SECTIONS) | set(_SPECIAL_KEYS))


def load_study_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML study; returns the normalised fields of ``Study`` it sets."""
    p = Path(path)
    where = str(path)
    if not where.strip():
        raise StudyError("--bench-config: an empty path names no study file")
    if not p.is_file():
        raise StudyError(f"{where}: " + ("a directory, not a study file" if p.is_dir() else "no such study file"))
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_StudyLoader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise StudyError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise StudyError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise StudyError(f"{where}: not a study: nested too deeply") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: the top level must be a mapping of keys")
    return parse_study_dict(raw, where, default_name=p.stem)


def parse_study_dict(raw: dict[str, Any], where: str, default_name: str = "study") -> dict[str, Any]:
    """Check a study mapping key by key; returns Study fields, with "run" and "model" as dicts of what it sets."""
    out: dict[str, Any] = {"name": default_name, "source": where}
    parts: dict[str, dict[str, Any]] = {"study": out, "run": {}, "model": {}}
    ranges: tuple[str, ...] = ()
    spelled_as: dict[str, str] = {}  # option name -> the key that set it: two spellings of one option are refused
    notes: dict[str, list[str]] = {}  # option name -> what was merged

    def once(name: str, key: str) -> None:
        if name in spelled_as:
            raise StudyError(f"{where}: key '{shown_key(key)}': sets the same thing as key '{spelled_as[name]}'; "
                             f"give one of them")
        spelled_as[name] = key

    def take(key: str, value: Any) -> None:
        opt = options.BY_YAML[key]
        once(opt.name, key)
        try:
            parts[opt.to][opt.name] = v = opt.value(value)
        except OptionError as exc:
            raise StudyError(f"{where}: key '{key}': {exc}") from None
        if opt.name == "batch_specs":
            parts[opt.to][opt.name], note = unique_batches(value, f"{where}: key '{key}'")
        else:
            note = _repeats_note(opt, value, v, f"{where}: key '{key}'")
        if note:
            notes.setdefault(opt.name, []).append(note)

    backend_names = set(registry.all_names())
    for key, value in raw.items():
        if key in backend_names or _maybe_backend(key):
            out.setdefault("backend_settings", {})[registry.canonical_name(key)] = _backend_section(value, where, key)
        elif key in _SECTIONS:
            _check(isinstance(value, dict), where, key, f"must be a mapping (valid keys: {', '.join(_SECTIONS[key])})")
            for sub, v in value.items():
                spelled = f"{key}.{sub}"
                _check(sub in _SECTIONS[key], where, spelled,
                       f"unknown key (valid: {', '.join(sorted(_SECTIONS[key]))})")
                take(spelled, v)
        elif key in options.BY_YAML:
            take(key, value)
        elif key == "batch_spec_ranges":
            _check(isinstance(value, list) and all(isinstance(r, dict) for r in value), where, key,
                   "must be a list of mappings with a 'template'")
            repeated: list[str] = []
            try:
                ranges += tuple(generate_batch_specs_from_ranges(value, repeated))
            except BatchSpecError as exc:
                raise StudyError(f"{where}: key '{key}': {exc}") from None
            if repeated:
                notes.setdefault("batch_specs", []).append(
                    f"{where}: key '{key}': {len(repeated)} generated spec(s) repeat a batch already generated and "
                    f"are run once: {_listing(repeated)}")
        elif key in SWEEP_KEYS:
            once("sweep", key)
            sweep_notes: list[str] = []
            out["sweeps"] = (_sweeps_section(value, where, key, sweep_notes) if key == "parameter_sweeps"
                             else (_sweep_section(value, where, key, sweep_notes),))
            if sweep_notes:
                notes["sweep"] = sweep_notes
        else:
            _check(False, where, key, f"unknown key (valid: {', '.join(_TOP_KEYS)}, or a backend name)")
    if ranges:  # generated specs join the listed ones, after them; a batch in both is run once
        listed = out.get("batch_specs", ())
        origin = (f"{where}: keys 'batch_specs' and 'batch_spec_ranges'" if listed
                  else f"{where}: key 'batch_spec_ranges'")
        out["batch_specs"], note = unique_batches(listed + ranges, origin)
        if note and listed:
            notes.setdefault("batch_specs", []).append(note)
    problem = _mode_problem(out)
    if problem:
        key = spelled_as.get("sweep", "parameter_sweep") if problem[0] == "sweeps" else problem[0]
        raise StudyError(f"{where}: key '{key}': {problem[1]}")
    return {**out, "notes": notes, "run": parts["run"], "model": parts["model"]}


def _mode_problem(fields_: dict[str, Any]) -> tuple[str, str] | None:
    """The cross-option rules of the pipeline modes (decode_vs_prefill, mha_vs_mqa), as (Study field, why): they
    already sweep the pipeline (mha_vs_mqa may sweep num_q_heads beside it, as upstream emulates tensor-parallel
    degrees), and they compare whole layer steps (the MQA path's projection GEMMs are part of what the choice
    trades)."""
    mode = fields_.get("mode")
    if mode not in ("decode_vs_prefill", "mha_vs_mqa"):
        return None
    swept = sorted({s.param for s in fields_.get("sweeps") or ()})
    if mode == "decode_vs_prefill" and swept:
        return "sweeps", f"{mode} mode already sweeps the pipeline"
    if mode == "mha_vs_mqa" and swept not in ([], ["num_q_heads"]):
        return "sweeps", (f"{mode} mode sweeps only num_q_heads (one GPU's share of the heads at each tensor-parallel "
                          f"degree), got {', '.join(swept)}")
    if tuple(fields_.get("timed_region", ("layer",))) != ("layer",):
        return "timed_region", (f"{mode} mode compares whole layer steps (the MQA path's W_UK/W_UV GEMMs are part "
                                "of the trade): only the layer region applies")
    return None


def _maybe_backend(key: Any) -> bool:
    if not isinstance(key, str):
        return False  # YAML keys like 123 or `on` (True) fall through to the unknown-key error
    try:
        registry.canonical_name(key)
    except registry.UnknownBackendError:
        return False
    return key.isupper()  # per-backend sections are spelled like the enum (CUTLASS_MLA:)


def _sweep_section(value: Any, where: str, key: str, notes: list[str] | None = None) -> Sweep:
    """``parameter_sweep`` / ``model_parameter_sweep``: upstream's one sweep, ``{param_name, values, include_auto}``."""
    _check(isinstance(value, dict), where, key, "must be a mapping with param_name and values")
    allowed = {"param_name", "values", "include_auto", "label_format"}  # label_format: upstream's, for its plots
    for k in value:
        _check(k in allowed, where, f"{key}.{k}", f"unknown key (valid: {', '.join(sorted(allowed))})")
    return _one_sweep(value, value.get("param_name"), where, key, "param_name", notes)


# one entry of parameter_sweeps; param_name too, so an upstream parameter_sweep mapping may be listed as it is
_LISTED_SWEEP_KEYS = ("param", "param_name", "values", "include_auto")


def _sweeps_section(value: Any, where: str, key: str, notes: list[str] | None = None) -> tuple[Sweep, ...]:
    """``parameter_sweeps``: a list of ``{param, values, include_auto}``, each parameter once; the cases are the
    product of them."""
    _check(isinstance(value, list) and value and all(isinstance(v, dict) for v in value), where, key,
           "must be a non-empty list of mappings with param and values")
    sweeps: list[Sweep] = []
    for i, entry in enumerate(value):
        at = f"{key}[{i}]"
        for k in entry:
            _check(k in _LISTED_SWEEP_KEYS, where, f"{at}.{k}", f"unknown key (valid: {', '.join(_LISTED_SWEEP_KEYS)})")
        _check(not ("param" in entry and "param_name" in entry), where, f"{at}.param_name",
               "sets the same thing as key 'param'; give one of them")
        spelled = "param_name" if "param_name" in entry else "param"
        sweep = _one_sweep(entry, entry.get(spelled), where, at, spelled, notes)
        first = next((j for j, s in enumerate(sweeps) if s.param == sweep.param), None)
        _check(first is None, where, f"{at}.{spelled}", f"{sweep.param} is swept already by {key}[{first}]; sweep "
                                                        f"each parameter once (merge the values into one entry)")
        sweeps.append(sweep)
    return tuple(sweeps)


def _one_sweep(value: dict[str, Any], param: Any, where: str, key: str, param_key: str,
               notes: list[str] | None) -> Sweep:
    _check(isinstance(param, str), where, f"{key}.{param_key}", "is required and must be a string")
    values = value.get("values")
    _check(isinstance(values, list) and values, where, f"{key}.values", "must be a non-empty list")
    include_auto = value.get("include_auto", False)
    _check(isinstance(include_auto, bool), where, f"{key}.include_auto", f"must be true or false, got {include_auto!r}")
    try:
        return make_sweep(param, values, include_auto, origin=f"{where}: key '{key}.values'", notes=notes)
    except SweepError as exc:
        raise StudyError(f"{where}: key '{key}': {exc}") from None


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
    notes: dict[str, list[str]] = dict(y.pop("notes", None) or {})  # option name -> notes; the CLI replaces them
    parts: dict[str, dict[str, Any]] = {"run": dict(y.pop("run", {})), "model": dict(y.pop("model", {})),
                                        "study": {"name": _D["name"], **y}}
    if options.given(cli, options.BY_NAME["model"]) is not None:  # the command line's model replaces the file's
        parts["model"] = {k: v for k, v in parts["model"].items() if k not in models.DIMENSIONS}
    for opt in options.OPTIONS:
        raw = options.given(cli, opt)
        if raw is None or not opt.flags or opt.to not in parts:  # the --sweep-* rows: _cli_sweeps, below
            continue
        try:
            parts[opt.to][opt.name] = value = opt.value(raw, cli=True)
        except OptionError as exc:
            raise StudyError(f"{opt.flags[0]}: {exc}") from None
        if opt.name == "batch_specs":
            parts[opt.to][opt.name], note = unique_batches(raw, opt.flags[0])
        else:
            note = _repeats_note(opt, raw, value, opt.flags[0])
        notes[opt.name] = [note] if note else []
    fields_ = parts["study"]
    include_auto = bool(cli.get("sweep_include_auto"))
    sweep_notes: list[str] = []
    given = _cli_sweeps(cli.get("sweep_param"), cli.get("sweep_values"), include_auto, sweep_notes)
    if given:  # the command line's sweeps replace the YAML's, as every option does
        fields_["sweeps"], notes["sweep"] = given, sweep_notes
    elif include_auto:
        if not fields_.get("sweeps"):
            raise StudyError("--sweep-include-auto needs a sweep (--sweep-param/--sweep-values, or parameter_sweep(s) "
                             "in the YAML)")
        fields_["sweeps"] = tuple(replace(s, include_auto=True) for s in fields_["sweeps"])
    problem = _mode_problem(fields_)
    if problem:  # the YAML alone passed parse_study_dict, so the conflict came from here
        flag = {"sweeps": "--sweep-param", "timed_region": "--timed-region"}[problem[0]]
        raise StudyError(f"{flag}: {problem[1]}")
    unused_scales = _unused_kv_scales(parts, fields_.get("sweeps") or (), cli)
    if unused_scales:
        notes.setdefault("kv_scales", []).append(unused_scales)
    fields_["notes"] = tuple(n for group in notes.values() for n in group)
    run = RunSettings(**parts["run"])
    if run.timer == "cupti":  # said here, before any case, rather than by every case as it fails
        origin = "--timer" if options.given(cli, options.BY_NAME["timer"]) is not None else "key 'timer'"
        if run.device == "cpu":
            raise StudyError(f"{origin} cupti: CUPTI times GPU kernels, and the device is cpu (time it with "
                             f"--timer events, or run on a GPU)")
        if cupti_missing():
            raise StudyError(f"{origin} cupti: needs cupti-python, which is not installed (pip install cupti-python)")
    return Study(**fields_, model=parts["model"], run=run)


def cupti_missing() -> bool:
    """Whether cupti-python (``--timer cupti``'s CUPTI bindings) is missing from this environment."""
    return importlib.util.find_spec("cupti") is None


def _unused_kv_scales(parts: dict[str, dict[str, Any]], sweeps: Sequence[Sweep], cli: dict[str, Any]) -> str | None:
    """The note for a --kv-scales that no case of the study reads: scales exist only for a quantised (fp8) cache."""
    if "kv_scales" not in parts["run"]:
        return None
    cache_dtypes = {parts["model"].get("kv_cache_dtype") or "auto"}
    for sweep in sweeps:
        if sweep.param == "kv_cache_dtype":
            cache_dtypes = {str(v) for v in sweep.points()}
    if any(d in QUANTIZED_KV_CACHE_DTYPES for d in cache_dtypes):
        return None
    origin = "--kv-scales" if options.given(cli, options.BY_NAME["kv_scales"]) is not None else "kv_scales"
    return (f"{origin} {parts['run']['kv_scales']} changes nothing here: scales belong to a quantised (fp8) cache, and "
            f"this study's KV cache is {', '.join(sorted(cache_dtypes))} (give --kv-cache-dtype fp8 to use them)")


def _cli_sweeps(params: Any, values: Any, include_auto: bool, notes: list[str]) -> tuple[Sweep, ...]:
    """The sweeps of the command line. ``--sweep-param NAME`` and ``--sweep-values V...`` are given once per swept
    parameter and paired in order: the i-th ``--sweep-values`` are the i-th ``--sweep-param``'s values. pytest
    hands over a list of names and a list of value lists; a caller of ``build_study`` may give one name and one
    list. ``--sweep-include-auto`` applies to every sweep."""
    names = [params] if isinstance(params, str) else list(params or ())
    groups = [values] if values and all(isinstance(v, str) for v in values) else [list(g) for g in values or ()]
    if len(names) > len(groups):
        raise StudyError(f"--sweep-param {_clip(names[len(groups)])}: has no --sweep-values of its own "
                         f"({len(names)} --sweep-param, {len(groups)} --sweep-values; the i-th --sweep-values are the "
                         f"values of the i-th --sweep-param)")
    if len(groups) > len(names):
        shown = " ".join(_clip(v) for v in groups[len(names)][:6]) + (" ..." if len(groups[len(names)]) > 6 else "")
        raise StudyError(f"--sweep-values {shown}: has no --sweep-param of its own ({len(names)} --sweep-param, "
                         f"{len(groups)} --sweep-values; give --sweep-param NAME for each)")
    sweeps = []
    for name, group in zip(names, groups):
        try:
            sweeps.append(make_sweep(name, group, include_auto, notes=notes))
        except SweepError as exc:
            flag = "--sweep-param" if str(exc).startswith("unknown sweep parameter") else "--sweep-values"
            raise StudyError(f"{flag}: {exc}") from None
    try:
        check_distinct(sweeps)
    except SweepError as exc:
        raise StudyError(f"--sweep-param: {exc}") from None
    return tuple(sweeps)


def check_shape(study: Study, family: str) -> Shape:
    try:
        return study.shape_for(family)
    except (ShapeError, TypeError) as exc:
        where = study.source or "command line"
        raise StudyError(f"{where}: model: {exc}") from None
