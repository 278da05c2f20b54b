"""Expand YAML ``batch_spec_ranges`` into concrete batch specs.

Each entry is a dict with a ``template`` (``str.format`` syntax with named
fields, e.g. ``"{batch}q{q_len}s1k"``) plus one key per field. A field value is

* a fixed ``int`` or ``str``;
* a list of explicit ``int``/``str`` values;
* a range dict ``{start, stop, step=1, end_inclusive=False}`` (ints).

The cartesian product over the fields (in key order, last key varying
fastest) is formatted into the template; every produced spec is validated
with ``parse_batch_spec``; duplicates are dropped keeping the first
occurrence, across all entries in order. Duplicates are judged on the parsed
batch (so ``1q1s1k`` duplicates ``q1s1k``), and the first spelling is kept.

Decisions: a key the template never uses is an error (it is almost always a
typo), and one entry may expand to at most ``MAX_COMBINATIONS`` specs so a
mistyped step cannot hang config loading.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

from .batch_spec import BatchSpecError, parse_batch_spec, to_batch_spec

__all__ = ["MAX_COMBINATIONS", "MAX_SPECS", "generate_batch_specs_from_ranges"]

MAX_COMBINATIONS = 100_000
MAX_SPECS = 100_000  # all entries together: 100 entries under the per-entry limit must not make 10^7 specs
_RANGE_KEYS = frozenset({"start", "stop", "step", "end_inclusive"})


def _is_int(value: object) -> bool:
    # YAML 'true' loads as bool, which is an int subclass; never a size.
    return isinstance(value, int) and not isinstance(value, bool)


def _template_fields(where: str, template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # unbalanced braces etc.
        raise BatchSpecError(f"{where}: key 'template': invalid template {template!r}: {exc}") from None
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            # Positional '{}'/'{0}' and '{a.b}'/'{a[0]}' have no key to bind to.
            raise BatchSpecError(
                f"{where}: key 'template': field {{{name}}} in {template!r} must be a plain name like {{q_len}}"
            )
        if name not in fields:
            fields.append(name)
    return fields


def _range_values(where: str, key: str, spec: Mapping[Any, Any]) -> list[int]:
    unknown = sorted(str(k) for k in spec if k not in _RANGE_KEYS)
    if unknown:
        raise BatchSpecError(
            f"{where}: key {key!r}: unknown range key(s) {unknown}; allowed: start, stop, step, end_inclusive"
        )
    for required in ("start", "stop"):
        if required not in spec:
            raise BatchSpecError(f"{where}: key {key!r}: range is missing {required!r}")
    start, stop, step = spec["start"], spec["stop"], spec.get("step", 1)
    inclusive = spec.get("end_inclusive", False)
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if not _is_int(value):
            raise BatchSpecError(f"{where}: key {key!r}: range {name} must be an int, got {value!r}")
    if not isinstance(inclusive, bool):
        raise BatchSpecError(f"{where}: key {key!r}: end_inclusive must be true/false, got {inclusive!r}")
    if step <= 0:
        raise BatchSpecError(f"{where}: key {key!r}: step must be > 0, got {step}")
    values = range(start, stop + 1 if inclusive else stop, step)
    if len(values) == 0:
        bound = "<=" if inclusive else "<"
        raise BatchSpecError(f"{where}: key {key!r}: empty range (no value with {start} <= v {bound} {stop})")
    if len(values) > MAX_COMBINATIONS:
        raise BatchSpecError(f"{where}: key {key!r}: range has {len(values)} values, limit {MAX_COMBINATIONS}")
    return list(values)


def _field_values(where: str, key: str, value: object) -> list[int | str]:
    if _is_int(value) or isinstance(value, str):
        return [value]  # type: ignore[list-item]
    if isinstance(value, Mapping):
        return list(_range_values(where, key, value))
    if isinstance(value, Sequence):  # list/tuple of explicit values (str handled above)
        if len(value) == 0:
            raise BatchSpecError(f"{where}: key {key!r}: empty range (empty list of values)")
        for item in value:
            if not (_is_int(item) or isinstance(item, str)):
                raise BatchSpecError(f"{where}: key {key!r}: list items must be int or str, got {item!r}")
        return list(value)
    raise BatchSpecError(
        f"{where}: key {key!r}: value must be an int, a str, a list or a range dict, got {type(value).__name__}"
    )


def generate_batch_specs_from_ranges(ranges: list[dict[str, Any]], dropped: list[str] | None = None) -> list[str]:
    """Expand ``batch_spec_ranges`` entries into validated, de-duplicated specs; ``dropped``, when given, gets
    each spelling left out as a repeat, as ``"spec (= first spelling)"``."""
    if isinstance(ranges, (str, bytes, Mapping)) or not isinstance(ranges, Sequence):
        raise BatchSpecError(f"batch_spec_ranges must be a list of dicts, got {type(ranges).__name__}")
    specs: dict[str, str] = {}  # canonical spec -> first spelling seen (insertion-ordered)
    expanded = 0  # specs the entries so far expand to, before de-duplication
    for index, entry in enumerate(ranges):
        where = f"batch_spec_ranges[{index}]"
        if not isinstance(entry, Mapping):
            raise BatchSpecError(f"{where}: must be a dict, got {type(entry).__name__}")
        if "template" not in entry:
            raise BatchSpecError(f"{where}: key 'template' is missing")
        template = entry["template"]
        if not isinstance(template, str):
            raise BatchSpecError(f"{where}: key 'template' must be a str, got {type(template).__name__}")
        fields = _template_fields(where, template)
        keys = [k for k in entry if k != "template"]
        for key in keys:
            if not isinstance(key, str):
                raise BatchSpecError(f"{where}: key {key!r} must be a str")
        for name in fields:
            if name not in entry:
                raise BatchSpecError(
                    f"{where}: key {name!r}: template {template!r} uses {{{name}}} but no value is given"
                )
        for key in keys:
            if key not in fields:
                raise BatchSpecError(f"{where}: key {key!r} is not used by template {template!r}")
        axes = [_field_values(where, key, entry[key]) for key in keys]
        total = math.prod(len(axis) for axis in axes)
        if total > MAX_COMBINATIONS:
            raise BatchSpecError(f"{where}: expands to {total} specs, limit {MAX_COMBINATIONS}")
        expanded += total
        if expanded > MAX_SPECS:
            raise BatchSpecError(f"{where}: entries 0..{index} expand to {expanded} specs, more than the limit "
                                 f"{MAX_SPECS} for all entries together")
        for combo in itertools.product(*axes):
            values = dict(zip(keys, combo))
            try:
                spec = template.format(**values)
            except (ValueError, TypeError, IndexError, KeyError) as exc:  # e.g. '{q:d}' given a str
                raise BatchSpecError(
                    f"{where}: key 'template': cannot format {template!r} with {values}: {exc}"
                ) from None
            try:
                requests = parse_batch_spec(spec)
            except BatchSpecError as exc:
                raise BatchSpecError(f"{where}: template {template!r} with {values}: {exc}") from None
            # Dedupe on the canonical form so '1q1s1k' and 'q1s1k' (same batch)
            # do not become two benchmark cases; the first spelling is kept.
            canonical = to_batch_spec(requests)
            if canonical in specs:
                if dropped is not None:
                    dropped.append(f"{spec.strip(' ')} (= {specs[canonical]})")
            else:
                specs[canonical] = spec.strip(" \t\r\n")
    return list(specs.values())
