"""Sweeps: which parameters a study varies, the values each takes, and the Cartesian product that becomes cases.

A study sweeps any number of parameters, each a ``Sweep``: a builder knob (num_kv_splits,
reorder_batch_threshold), an integer model dimension (head_dim, num_q_heads, ...) or ``kv_cache_dtype``,
whose values are names (``shapes.KV_CACHE_DTYPES``). Its cases are the product of every sweep's points
(``grid``), the first sweep varying slowest. One case's point is a tuple of ``record.SweptValue``, one per
sweep in the study's order; the case key carries it as it is, never as a joined string.

A point's test id is its ``param=value`` parts joined by "-" (``point_id``): a study of one sweep keeps the
ids it always had (``CUTLASS_MLA-64q1s4k-num_kv_splits=4``), so stored baselines still compare.

"auto" of a knob is the backend's default and "auto" of an integer dimension the study's own shape; both leave
the case as it is. ``kv_cache_dtype``'s "auto" is a value of its own (the model dtype), applied like any other.

Every check raises ``SweepError`` naming the offending token; study.py prefixes where it was given.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from attnbench.spec import options
from attnbench.spec.backends import NUM_KV_SPLITS, REORDER_BATCH_THRESHOLD
from attnbench.spec.options import OptionError
from attnbench.results.record import SweptValue
from attnbench.spec.shapes import KV_CACHE_DTYPES, Shape, ShapeError, sweepable_keys, with_value

AUTO = "auto"
BACKEND_PARAMS = (NUM_KV_SPLITS, REORDER_BATCH_THRESHOLD)
# Model dimensions whose values are names, with the names each takes; every other swept dimension is an integer.
NAMED_DIMS: dict[str, tuple[str, ...]] = {"kv_cache_dtype": KV_CACHE_DTYPES}

Point = tuple[SweptValue, ...]  # one case's values, one per sweep of the study, in its order
_MAX_SHOWN = 120  # characters of a user's token in a message


class SweepError(ValueError):
    """A bad sweep: names the parameter or value; the caller prefixes the flag or the YAML key."""


def model_params(family: str) -> set[str]:
    """The model dimensions of ``family`` a sweep may vary: its integer ones and the named ones (kv_cache_dtype)."""
    return sweepable_keys(family) | set(NAMED_DIMS)


ALL_MODEL_PARAMS = model_params("attention") | model_params("mla")


def is_knob(param: str) -> bool:
    """A builder knob (forced on the backend), rather than a model dimension (applied to the shape)."""
    return param in BACKEND_PARAMS


def overrides(swept: SweptValue) -> bool:
    """Whether ``swept`` changes its case: every value does except "auto" of a knob or an integer dimension."""
    return swept.value != AUTO or swept.param in NAMED_DIMS


@dataclass(frozen=True)
class Sweep:
    """One swept parameter and its values (ints; names for kv_cache_dtype), each once, in the order given."""

    param: str
    values: tuple[int | str, ...]
    include_auto: bool = False
    # where it was given, for messages about its values: "--sweep-values" or "FILE: key 'parameter_sweep.values'"
    origin: str = field(default="--sweep-values", compare=False)

    def points(self) -> list[int | str]:
        """The values the cases take: "auto" first when included, then the values."""
        pts: list[int | str] = [AUTO] if self.include_auto else []
        return pts + [v for v in self.values if v not in pts]

    def applies_to(self, family: str) -> bool:
        """Knobs apply to every family (a backend without the knob skips, saying so); a dimension to its own."""
        return is_knob(self.param) or self.param in model_params(family)


def make_sweep(param: str, values: Sequence[Any], include_auto: bool, origin: str = "--sweep-values",
               notes: list[str] | None = None) -> Sweep:
    """The sweep of ``param`` over ``values`` (YAML values, or argv text); ``origin`` names where the values were
    given, in messages about them later. "auto" among the values includes it; a value given twice is swept once
    and ``notes`` gets a line saying so. Raises SweepError naming the parameter or the value."""
    if not isinstance(param, str) or (not is_knob(param) and param not in ALL_MODEL_PARAMS):
        raise SweepError(f"unknown sweep parameter {_shown(param)} (valid: {', '.join(BACKEND_PARAMS)}, "
                         f"or a model dimension: {', '.join(sorted(ALL_MODEL_PARAMS))})")
    parsed: list[int | str] = []
    autos = 0
    for v in values:
        if isinstance(v, str) and v.strip(" \t\r\n").lower() == AUTO:
            include_auto, autos = True, autos + 1
            continue
        parsed.append(_value(param, v))
    unique = tuple(dict.fromkeys(parsed))
    if notes is not None and (len(unique) < len(parsed) or autos > 1):
        notes.append(f"{origin}: {len(parsed) - len(unique) + max(autos - 1, 0)} repeated sweep value(s) merged, "
                     f"each is run once ({', '.join(_clip(v) for v in values)})")
    return Sweep(param, unique, include_auto, origin)


def _value(param: str, v: Any) -> int | str:
    """One value of ``param``, typed: a name of a named dimension, else a non-negative int64."""
    names = NAMED_DIMS.get(param)
    if names is not None:
        name = v.strip(" \t\r\n") if isinstance(v, str) else v
        if name in names:
            return name
        hint = (f" (did you mean {name.lower()!r}?)" if isinstance(name, str) and name.lower() in names else "")
        raise SweepError(f"sweep value {_shown(v)} for {param} must be one of {', '.join(names)}{hint}")
    try:
        return options.count(v)
    except OptionError:
        raise SweepError(f"sweep value {_shown(v)} for {param} must be a non-negative integer or 'auto'") from None


def check_distinct(sweeps: Sequence[Sweep]) -> None:
    """Each parameter swept once: a second sweep of it would make cases that differ in nothing."""
    seen: dict[str, Sweep] = {}
    for sweep in sweeps:
        first = seen.setdefault(sweep.param, sweep)
        if first is not sweep:
            raise SweepError(f"{sweep.param} is swept twice; sweep each parameter once (merge the values into one "
                             f"sweep)")


def point_count(sweeps: Sequence[Sweep]) -> int:
    """How many points the product has, without making it (a study's size is checked before anything grows)."""
    return math.prod(len(s.points()) for s in sweeps)


def sizes(sweeps: Sequence[Sweep]) -> str:
    """The product's factors, for messages: ``3 num_kv_splits x 2 head_dim``."""
    return " x ".join(f"{len(s.points())} {s.param}" for s in sweeps)


def grid(sweeps: Sequence[Sweep]) -> list[Point]:
    """Every point of the product, the first sweep varying slowest; ``[()]`` (one point, nothing swept) for none."""
    return [tuple(SweptValue(s.param, v) for s, v in zip(sweeps, values))
            for values in itertools.product(*(s.points() for s in sweeps))]


def point_id(point: Point) -> str:
    """A point's part of the test id: ``num_kv_splits=2-head_dim=64``."""
    return "-".join(s.label for s in point)


def point_of(sweeps: Sequence[Sweep], values: Iterable[Any]) -> Point:
    """The point whose values (in the sweeps' order) are ``values``: what a test id's parameter holds."""
    values = tuple(values)
    if len(values) != len(sweeps):
        raise SweepError(f"{len(values)} sweep value(s) {values!r} for {len(sweeps)} swept parameter(s)")
    return tuple(SweptValue(s.param, v) for s, v in zip(sweeps, values))


def apply_to_shape(shape: Shape, point: Point) -> Shape:
    """``shape`` with the point's model dimensions applied (knobs and leaving "auto" aside); validated."""
    for swept in point:
        if not is_knob(swept.param) and overrides(swept):
            shape = with_value(shape, swept.param, swept.value)
    return shape


def check_shapes(sweeps: Sequence[Sweep], shape: Shape) -> None:
    """Every value of the model-dimension sweeps valid at ``shape``, alone and, with several, in each combination
    (num_q_heads=8 with num_kv_heads=3 is no GQA shape). Raises SweepError naming where the values were given and
    the values; call it after ``point_count`` is known to be bounded."""
    dims = [s for s in sweeps if not is_knob(s.param)]
    for sweep in dims:
        for swept in grid([sweep]):
            _check_shape(shape, swept, sweep.origin)
    if len(dims) > 1:
        origins = " and ".join(dict.fromkeys(s.origin for s in dims))
        for point in grid(dims):
            _check_shape(shape, point, origins)


def _check_shape(shape: Shape, point: Point, origin: str) -> None:
    try:
        apply_to_shape(shape, point)
    except ShapeError as exc:
        raise SweepError(f"{origin}: {', '.join(s.label for s in point)}: {exc}") from None


def _clip(text: Any) -> str:
    text = str(text)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _shown(value: Any) -> str:
    return repr(_clip(value)) if isinstance(value, str) else repr(value)
