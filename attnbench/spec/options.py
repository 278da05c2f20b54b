"""Every study option, declared once.

One ``Option`` row says what an option is called on each surface and which values it takes:
its pytest flag(s) (``plugin.pytest_addoption`` adds them), its YAML key(s) (``study.parse_study_dict``
checks a file against them), upstream's ``benchmark.py`` spelling (``benchmark.py`` translates it),
where the value lands (``study.build_study`` merges command line > YAML > default) and the one
validator every surface runs. The typed records that carry the values (``study.RunSettings``,
``study.Study``, ``api.BenchmarkConfig``) take their defaults from here and are checked against
the rows at import (``check_record``), so they cannot drift.

A newcomer adds an option by adding one row to ``OPTIONS``; if it is a run setting or a Study
field, the typed record also needs the field its consumers read, and ``check_record`` names it at
import. YAML sections that need real code stay in study.py: ``batch_spec_ranges``,
``parameter_sweep``, per-backend sections (``CUTLASS_MLA:``); the ``--sweep-*`` rows are combined there.

The "session" rows are settings of one pytest run (reporting, resume, baselines, plots, workers, the
crossover search): pytest flags only, since a study file says what to measure, not where a run
reports or how it spreads. ``session_values`` checks them at configure time.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from attnbench.spec import backends as registry
from attnbench.spec import models
from attnbench.spec.contract import TIMED_REGIONS, TOPK_PATTERNS
from attnbench.spec.shapes import DTYPES
from grammar import BatchSpecError, parse_batch_spec

# Counts, dimensions and seeds are int64 downstream (torch seeds, C counters); a larger number is a typo,
# refused when the study is resolved rather than overflowing inside a kernel or torch.manual_seed.
INT_MAX = 2**63 - 1
MODES = ("standard", "decode_vs_prefill", "mha_vs_mqa")


class OptionError(ValueError):
    """Why a value is refused, without where it came from: the caller prefixes the flag or the YAML key."""


Check = Callable[[Any], Any]  # takes a value of the option's kind, returns it normalised or raises OptionError


@dataclass(frozen=True)
class Option:
    name: str  # the pytest dest, build_study's ``cli`` key and the field it fills
    kind: type  # of one value: int, float, str or bool
    help: str
    # where the value lands: "run" (RunSettings), "model" (shape override), "study" (a Study field);
    # "sweep" (the three --sweep-* flags, combined by study.build_study), "file" (--bench-config itself),
    # "session" (a pytest-run setting: see the module doc)
    to: str = "study"
    flags: tuple[str, ...] = ()  # pytest spellings, canonical first; () = YAML only
    yaml: tuple[str, ...] = ()  # "repeats", "benchmark.repeats", "model.num_q_heads", "output.csv"; () = CLI only
    upstream: tuple[str, ...] = ()  # upstream's benchmark.py spellings, translated to flags[0]
    default: Any = None  # None = unset (a model dimension: the family's shape default)
    many: bool = False  # a non-empty list (nargs="+")
    lone: bool = False  # with many: a single YAML string is a list of one (`backend: cutlass_mla`)
    const: Any = None  # a flag that takes no value sets this
    metavar: str | None = None
    choices: tuple[Any, ...] = ()
    check: Check | None = None
    examples: tuple[Any, Any] = ()  # two valid, distinct values (tests/test_options.py runs each row with them)
    expected: str | None = None  # what it takes, in words: any refusal says "must be <expected>, got <value>"
    needs: str | None = None  # a session row that does nothing without this other row set: given alone, refused

    def value(self, raw: Any, cli: bool = False) -> Any:
        """``raw`` typed, range-checked and normalised; ``cli``: text from argv may spell a number."""
        if self.expected is None:
            return self._value(raw, cli)
        try:
            return self._value(raw, cli)
        except OptionError:
            raise OptionError(f"must be {self.expected}, got {raw!r}") from None

    def _value(self, raw: Any, cli: bool) -> Any:
        if self.many:
            if isinstance(raw, str) and self.lone:
                raw = [raw]
            if not (isinstance(raw, (list, tuple)) and raw):
                raise OptionError(f"must be a non-empty list of {_NOUN[self.kind]}s")
            v: Any = tuple(_typed(self.kind, x, cli) for x in raw)
        else:
            v = _typed(self.kind, raw, cli)
        if self.choices and v not in self.choices:
            raise OptionError(f"must be one of {', '.join(map(str, self.choices))}, got {v!r}")
        return self.check(v) if self.check else v

    def pytest_kwargs(self, upstream: bool = False, once: Any = None) -> dict[str, Any]:
        """``Parser.addoption`` keywords (``upstream``: benchmark.py's argparse). Every value arrives as text and is
        checked by ``value``, so a bad one is a one-line usage error naming the flag, not argparse's usage dump.

        A flag given again: one ``--sweep-param``/``--sweep-values`` per swept parameter (appended); a list option
        extends (``--batch-specs q1 --batch-specs q2`` is both); a one-value option takes the caller's ``once``
        action (each surface decides what a second, different value means)."""
        notes = [f"default {self.default}"] if self.default is not None and self.const is None else []
        notes += [f"YAML {self.yaml[0]}"] if self.yaml else []
        if self.upstream and self.flags[0] not in self.upstream:  # spelled differently on the other surface
            notes.append(f"pytest {self.flags[0]}" if upstream else f"benchmark.py {self.upstream[0]}")
        text = self.help + (f" ({'; '.join(notes)})" if notes else "")
        if self.const is not None:
            return {"dest": self.name, "action": "store_true" if upstream else "store_const",
                    **({} if upstream else {"const": self.const}), "help": text}
        metavar = self.metavar or ("|".join(map(str, self.choices)) if self.choices else None)
        action = "append" if self.to == "sweep" else "extend" if self.many else once
        return {"dest": self.name, "nargs": "+" if self.many else None, "metavar": metavar, "help": text,
                **({"action": action} if action else {})}


_NOUN = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
# argv text: ASCII only, since int("٣") == 3 and float("١.٥") == 1.5 in Python
_TEXT = {int: re.compile(r"[+-]?[0-9]+"), float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}


def _typed(kind: type, v: Any, cli: bool) -> Any:
    if cli and isinstance(v, str) and kind in _TEXT:
        text = v.strip(" \t\r\n")  # not str.strip(), which also takes '\x1c' and '\x85'
        if not _TEXT[kind].fullmatch(text):
            raise OptionError(f"must be {_NOUN[kind]} in ASCII digits, got {v if len(v) <= 120 else v[:120] + '...'!r}")
        if kind is int and len(text.lstrip("+-0")) > 4000:  # int() refuses 4,300+ digits with a ValueError of its own
            raise OptionError(f"must be < 2**63, got a {len(text.lstrip('+-0'))}-digit number")
        v = kind(text)
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        v = float(v) if ok else v
    else:
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
    if not ok:
        raise OptionError(f"must be {_NOUN[kind]}, got {type(v).__name__} {v!r}")
    return v


# ------------------------------------------------------------------ validators (each rule in one place)

def at_least(lo: float, note: str = "", hi: float = INT_MAX) -> Check:
    def check(v: Any) -> Any:
        if v < lo:
            raise OptionError(f"must be >= {lo}{note}, got {v}")
        if v > hi:
            raise OptionError(f"must be < 2**63, got {v}" if hi == INT_MAX else f"must be <= {hi}, got {v}")
        return v
    return check


def fraction(v: float) -> float:
    """A share in [0, 1): a threshold of 1 (100 %) would call every change the same."""
    if not 0 <= v < 1:
        raise OptionError(f"must be in [0, 1), got {v}")
    return v


def number(v: Any, kind: type = float) -> Any:
    """A finite ``kind`` from YAML or argv text in ASCII digits, for the few numbers outside this table
    (--verdict-threshold, --search-timeout, compare --threshold); raises OptionError."""
    return _typed(kind, v, cli=isinstance(v, str))


def each(check: Check) -> Check:
    return lambda values: tuple(check(v) for v in values)


def count(v: Any) -> int:
    """A non-negative int64 (a knob value, a sweep point), from YAML or argv text."""
    return at_least(0)(_typed(int, v, cli=isinstance(v, str)))


def _non_empty(v: str) -> str:
    if not v:
        raise OptionError("must be a non-empty string")
    return v


def _model(v: str) -> str:
    try:
        models.lookup(_non_empty(v))
    except models.ModelError as exc:
        raise OptionError(str(exc)) from None
    return v


_DEVICE = re.compile(r"cpu|cuda(:\d+)?", re.ASCII)


MAX_DEVICE_INDEX = 127  # torch keeps a device index in 8 bits: torch.device("cuda:300") is GPU 44


def _device(v: str) -> str:
    if not _DEVICE.fullmatch(v):
        raise OptionError(f"must be cpu, cuda or cuda:N, got {v[:120]!r}")
    index = v.partition(":")[2]
    if index and (len(index) > 3 or int(index) > MAX_DEVICE_INDEX):
        raise OptionError(f"the GPU index must be at most {MAX_DEVICE_INDEX}, got {v[:120]!r}")
    return v


KV_FILLS = ("random", "zeros")
KV_SCALES = ("calibrated", "unit")


def _patterns(values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        if v not in TOPK_PATTERNS:
            raise OptionError(f"must be {', '.join(TOPK_PATTERNS[:-1])} or {TOPK_PATTERNS[-1]}, got {v[:120]!r}")
    return tuple(dict.fromkeys(values))


def _regions(values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        if v not in TIMED_REGIONS:
            raise OptionError(f"must be {' or '.join(TIMED_REGIONS)}, got {v!r}")
    return tuple(dict.fromkeys(values))


def canonical_backends(names: Iterable[str]) -> tuple[str, ...]:
    """AttentionBackendEnum spellings, aliases collapsed, in the order given."""
    try:
        return tuple(dict.fromkeys(registry.canonical_name(n) for n in names))
    except registry.UnknownBackendError as exc:
        raise OptionError(str(exc)) from None


def checked_specs(specs: Iterable[str]) -> tuple[str, ...]:
    """Batch specs, parsed, stripped; a repeated spec is one case, not two ids."""
    out = []
    for spec in specs:
        try:
            parse_batch_spec(spec)
        except BatchSpecError as exc:
            raise OptionError(str(exc)) from None
        out.append(spec.strip())
    return tuple(dict.fromkeys(out))


# ------------------------------------------------------------------------------------- the table

def _spell(name: str) -> str:
    return "--" + name.replace("_", "-")


def _run(name: str, kind: type, default: Any, help: str, upstream: bool = True, **kw: Any) -> Option:
    """A run setting: --flag, top-level and benchmark.<name> YAML keys, a RunSettings field."""
    flags = kw.pop("flags", (_spell(name),))
    return Option(name, kind, help, "run", flags, (name, f"benchmark.{name}"), flags if upstream else (),
                  default, **kw)


def _dim(name: str, kind: type = int, examples: tuple[Any, Any] = (2, 4), yaml: tuple[str, ...] = (),
         help: str = "model dimension; ") -> Option:
    """A model dimension: --flag and model.<name>; unset = the family's default (shapes.py checks the shape)."""
    metavar = "N" if kind is int else "NAME"
    return Option(name, kind, help + "unset: the family's default", "model", (_spell(name),), (f"model.{name}", *yaml),
                  (_spell(name),), metavar=metavar, check=at_least(1) if kind is int else None, examples=examples)


def _session(name: str, kind: type, help: str, *, const: Any = None, default: Any = None,
             examples: tuple[Any, Any] = ("a", "b"), **kw: Any) -> Option:
    """A pytest-run setting: its flag only; a flag without a value switches it on."""
    if const is not None:
        default, examples = False, (True, False)
    return Option(name, kind, help, "session", (_spell(name),), (), (), default, const=const, examples=examples,
                  **kw)


OPTIONS: tuple[Option, ...] = (
    Option("bench_config", str, "YAML study", "file", ("--bench-config",), (), ("--config",),
           metavar="FILE", check=_non_empty, examples=("a.yaml", "b.yaml")),
    Option("name", str, "study name (default: the YAML file's stem)", yaml=("name",), default="cli",
           check=_non_empty, examples=("one", "two")),
    Option("description", str, "what the study is for", yaml=("description",), default="", examples=("a", "b")),
    Option("mode", str, "standard; decode_vs_prefill (each case run through MLA's decode and its prefill pipeline); "
           "mha_vs_mqa (sparse MLA: each case's rows through dense MHA and through top-k MQA)",
           yaml=("mode",), default="standard", choices=MODES, examples=("decode_vs_prefill", "standard")),
    Option("backends", str, "backends, as AttentionBackendEnum spells them or lowercase aliases",
           flags=("--backends", "--backend"), yaml=("backends", "backend"), upstream=("--backends", "--backend"),
           many=True, lone=True, metavar="NAME", check=canonical_backends,
           examples=(["flash", "flashmla"], ["CUTLASS_MLA"])),
    Option("batch_specs", str, "batch specs, e.g. q2k 8q1s1k 2q2k_32q1s1k", flags=("--batch-specs",),
           yaml=("batch_specs",), upstream=("--batch-specs",), many=True, metavar="SPEC", check=checked_specs,
           examples=(["q2k", " 8q1s1k "], ["q1s1k"])),
    Option("batch_sizes", int, "repeat each spec's requests this many times (one case per size)",
           yaml=("batch_sizes",), default=(), many=True, check=each(at_least(1)), examples=([2, 4], [8])),
    Option("model", str, "a model's attention dimensions: a shipped name (llama-3-8b, llama-3-70b, qwen2.5-7b, "
           "qwen3-32b, deepseek-v3, deepseek-v3.2, glm-5) or a local config.json; dimensions given beside it override "
           "its own", "model", ("--model",), ("model.name",), ("--model",), metavar="NAME|CONFIG", check=_model,
           examples=("llama-3-8b", "llama-3-70b")),
    *(_dim(name) for name in ("num_layers", "head_dim", "num_q_heads", "num_kv_heads", "block_size",
                              "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")),
    _dim("dtype", str, ("float16", "float32"), help=f"{', '.join(DTYPES)}; "),
    _dim("kv_cache_dtype", str, ("auto", "fp8"), yaml=("kv_cache_dtype",),
         help="auto = the model dtype; fp8 (= fp8_e4m3), fp8_e4m3 or fp8_e5m2: a per-tensor-scaled fp8 cache; "
              "int8_per_token_head, fp8_per_token_head or int4_per_token_head: TRITON_ATTN's per-(token, head) "
              "scaled cache; "),
    _run("device", str, "cuda", "cuda, cuda:N or cpu", check=_device, examples=("cpu", "cuda:1")),
    _run("repeats", int, 100, "most timed rounds per case", metavar="N", check=at_least(1), examples=(3, 7)),
    _run("warmup_iters", int, 10, "untimed rounds before timing", metavar="N", check=at_least(0), examples=(0, 2)),
    # a relative standard error target above 1 (100%) is a typo, not a request to stop after min_rounds
    _run("noise_target", float, 0.005, "stop timing once the mean's relative standard error is below F (0 = never)",
         metavar="F", check=at_least(0, " (0 = never stop early)", hi=1), examples=(0.0, 0.02)),
    _run("cache_state", str, "cold", "cold L2 or warm", choices=("cold", "warm"), examples=("warm", "cold")),
    # where a case's buffers land in device memory moves its time (up to 14 % on an H100, docs/REGRESSION_GATE.md);
    # each placement re-allocates them, and the verdicts compare the fastest placements (reporting/verdicts.py)
    _run("placements", int, 16, "time each case on N allocations of its buffers (rounds split between them), so "
         "that its number and its spread cover where the buffers land in memory", upstream=False, metavar="N",
         check=at_least(1, hi=64), examples=(1, 3)),
    # testing the regression gate: a known slowdown inside the timed region (recorded in timing.injected_delay_s)
    _run("inject_delay", float, 0.0, "test the regression gate: spin F x the case's own time after every timed "
         "call (0.03: three percent slower); recorded in the case's timing", upstream=False, metavar="F",
         check=at_least(0, hi=10), examples=(0.0, 0.03)),
    # the GPU timer: CUDA events around each round, or CUPTI's kernel records (measure/kernel_activity.py)
    _run("timer", str, "events", "how a GPU round is timed: events (CUDA events around the graph replay) or cupti "
         "(CUPTI's kernel records, first kernel's start to last kernel's end; needs cupti-python; fails closed "
         "on any kernel it cannot account for); the record names it", upstream=False,
         choices=("events", "cupti"), examples=("cupti", "events")),
    # the timed region is an axis (one case per region); layer keeps the historic test ids
    Option("timed_region", str, "what one timed call is: layer (vLLM's layer step: KV-cache write + attention, "
           "MLA projections included) or attention (the backend's attention call alone on an already written cache)",
           flags=("--timed-region",), yaml=("timed_region", "benchmark.timed_region"), default=("layer",),
           many=True, lone=True, metavar="layer|attention", check=_regions,
           examples=(["attention"], ["layer", "attention"])),
    # sparse MLA's mock indexer: an axis (one case per pattern) of bench_mla's test_sparse_mla; upstream's YAML
    # spells one pattern as sparse_mla_topk_pattern. Unset: random, and sparse cases are collected only where the
    # study names a sparse backend or a pattern (plugin.sparse_opt_in)
    Option("topk_pattern", str, "sparse MLA: which index_topk keys the mock indexer selects per query: random, "
           "prefix or sliding_window (causal, inside each request's context, -1 padded); giving it collects "
           "bench_mla's sparse cases (default: random, where a sparse backend is named)",
           flags=("--topk-pattern",), yaml=("topk_pattern", "sparse_mla_topk_pattern"),
           many=True, lone=True, metavar="random|prefix|sliding_window", check=_patterns,
           examples=(["prefix"], ["random", "sliding_window"])),
    _run("kv_fill", str, "random", "K/V data: random (the default; what a model's cache holds) or zeros (as "
         "zero-filled benchmarks do: faster on compute-bound kernels, and verification cannot see wrong weights)",
         upstream=False, choices=KV_FILLS, examples=("zeros", "random")),
    _run("kv_scales", str, "calibrated", "a quantised (fp8) cache's per-tensor scales: calibrated (the layer's "
         "calc_kv_scales on the step's inputs, as vLLM's calculate_kv_scales sets q/k/v scales) or unit (1.0, vLLM's "
         "default for a checkpoint without scales)", upstream=False, choices=KV_SCALES,
         examples=("unit", "calibrated")),
    _run("profile_memory", bool, False, "record peak device memory per case", const=True, examples=(True, False)),
    _run("seed", int, 0, "seed for every random input", metavar="N", check=at_least(0), examples=(3, 7)),
    _run("kernel_profile", bool, True, "skip the per-case torch.profiler pass (kernel durations, attention share)",
         upstream=False, flags=("--no-kernel-profile",), const=False, examples=(False, True)),
    # the --sweep-* flags may be repeated, one --sweep-param/--sweep-values pair per swept parameter, paired in
    # order (plugin.py and benchmark.py append them; study.build_study pairs them); the cases are the product
    Option("sweep_param", str, "num_kv_splits, reorder_batch_threshold, a model dimension or kv_cache_dtype; give "
           "--sweep-param/--sweep-values once per swept parameter (the cases are their product)", "sweep",
           ("--sweep-param",), (), ("--sweep-param",), metavar="NAME", examples=("num_kv_splits", "head_dim")),
    Option("sweep_values", str, "values of the matching --sweep-param: integers, kv_cache_dtype names ('auto' = "
           "backend default)", "sweep", ("--sweep-values",),
           (), ("--sweep-values",), many=True, metavar="V", examples=(["1", "2"], ["auto", "4"])),
    Option("sweep_include_auto", bool, "also run the backend's default, in every sweep", "sweep",
           ("--sweep-include-auto",), (), ("--include-auto",), const=True, examples=(True, False)),
    Option("output_csv", str, "write one CSV row per case", flags=("--output-csv",), yaml=("output.csv",),
           upstream=("--output-csv",), metavar="FILE", check=_non_empty, examples=("a.csv", "b.csv")),
    Option("output_json", str, "write one JSON record per case", flags=("--output-json",), yaml=("output.json",),
           upstream=("--output-json",), metavar="FILE", check=_non_empty, examples=("a.json", "b.json")),
    # the pytest run's own settings (module doc); their consumers are named after each row
    _session("resume", str, "skip cases already timed in FILE (a .partial.jsonl journal or an --output-json file) "
             "and carry its rows into the outputs", metavar="FILE", check=_non_empty),  # reporting_plugin
    _session("baseline_json", str, "compare this run against FILE (pytest-benchmark JSON, or attnbench JSON) at "
             "the end; several FILEs are separate runs of the baseline code, whose spread the verdicts count as "
             "noise between processes", metavar="FILE", many=True,
             examples=(["a.json"], ["a.json", "b.json"])),  # reporting_plugin, reporting.verdicts
    _session("verdict_json", str, "write the baseline verdicts to FILE (needs --baseline-json)", metavar="FILE",
             check=_non_empty, needs="baseline_json"),
    _session("verdict_threshold", float, "practical threshold for SAME/SLOWER/FASTER as a fraction", default=0.005,
             metavar="F", check=fraction, examples=(0.02, 0.05), expected="a fraction between 0 and 1 (0.05 = 5 %)",
             needs="baseline_json"),
    _session("recheck", int, "time a case whose first verdict leans slower (SLOWER, or UNSURE above the threshold) "
             "again in N fresh processes; its verdict then counts every process of the new code (0: never)",
             default=1, metavar="N", check=at_least(0, hi=8), examples=(0, 2), needs="baseline_json"),
    _session("fail_on_regression", bool, "exit non-zero when a case is SLOWER than --baseline-json (needs it)",
             const=True, needs="baseline_json"),
    _session("allow_untimed", bool, "a benchmark run (--benchmark-only, or only benchmark cases selected) that "
             "times no case exits 0 instead of failing", const=True),
    _session("allow_gpu_mismatch", bool, "compare against a baseline from another GPU model (a warning instead of "
             "an error)", const=True, needs="baseline_json"),
    _session("plot", bool, "write PNG plots next to the outputs", const=True),  # reporting.plots
    _session("plot_dir", str, "folder for --plot (default: next to --output-json/-csv, else ./results)",
             metavar="DIR", check=_non_empty, needs="plot"),
    _session("no_bench_summary", bool, "do not print the attnbench summary table", const=True),
    # scaleout.plan_workers checks it, against the GPUs it sees
    _session("gpus", str, "one xdist worker per GPU, each pinned to its GPU: 'auto' (the default for GPU runs: "
             "every visible GPU), a count, or CUDA_VISIBLE_DEVICES entries '0,2'; 'none' runs in-process (a crash "
             "then ends the run)", metavar="auto|none|N|LIST", examples=("auto", "0,2")),
    _session("full_grid", bool, "decode_vs_prefill: time every query length instead of bisecting for the crossover",
             const=True),  # search_plugin
    _session("search_timeout", float, "how long an xdist worker waits for another worker's result the search needs "
             "before timing the case anyway", default=600.0, metavar="S", check=at_least(0), examples=(600.0, 5.0),
             expected="a finite number of seconds >= 0"),
)

BY_NAME = {o.name: o for o in OPTIONS}
BY_YAML = {key: o for o in OPTIONS for key in o.yaml}  # every YAML spelling, top-level and "section.key"
DEFAULTS = {o.name: o.default for o in OPTIONS}


def given(cli: dict[str, Any], opt: Option) -> Any:
    """What ``cli`` (build_study's) sets for ``opt``, None if nothing: model dimensions sit under "model"."""
    return (cli.get("model") or {}).get(opt.name) if opt.to == "model" else cli.get(opt.name)


def cli_values(get: Callable[[str], Any]) -> dict[str, Any]:
    """``build_study``'s ``cli`` from a getter of parsed pytest options (``config.getoption``)."""
    out: dict[str, Any] = {"model": {}}
    for opt in OPTIONS:
        if opt.flags and opt.to != "session":
            (out["model"] if opt.to == "model" else out)[opt.name] = get(opt.name)
    return out


def session_values(get: Callable[[str], Any]) -> dict[str, Any]:
    """The session rows' values from parsed pytest options (``config.getoption``), typed and checked; unset ones
    their default. Raises ``OptionError`` prefixed with the flag."""
    out, given = {}, set()
    for opt in OPTIONS:
        if opt.to != "session":
            continue
        raw = get(opt.name)
        if raw is not None and raw is not False:
            given.add(opt.name)
        try:
            out[opt.name] = opt.default if raw is None else opt.value(raw, cli=True)
        except OptionError as exc:
            raise OptionError(f"{opt.flags[0]}: {exc}") from None
    for opt in OPTIONS:
        if opt.needs and opt.name in given and not out.get(opt.needs):
            raise OptionError(f"{opt.flags[0]}: needs {BY_NAME[opt.needs].flags[0]} (alone it would do nothing, "
                              f"silently)")
    return out


def check_record(cls: type, targets: tuple[str, ...]) -> None:
    """Raise unless dataclass ``cls`` has a field for every option landing in ``targets``, with its default."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for opt in OPTIONS:
        if opt.to not in targets:
            continue
        f = by_name.get(opt.name)
        if f is None:
            raise TypeError(f"{cls.__qualname__} has no field {opt.name!r}, which attnbench/spec/options.py declares")
        if f.default is not dataclasses.MISSING and f.default != opt.default:
            raise TypeError(f"{cls.__qualname__}.{opt.name} defaults to {f.default!r}, options.py says {opt.default!r}")
