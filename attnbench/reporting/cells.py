"""Ordering and formatting of table cells, shared by every renderer (each rule written once here).

Ordering: batch specs by size (``CaseKey.size_key``), sweep values with the backend default
first (points of several swept parameters value by value), backends in the order the results name them.
A sweep's column is its point (``sweep_point``): the bare value of a single sweep, whose parameter the title
names, or the values of several, shown "2 · 64" under a title naming "num_kv_splits × head_dim". Formatting: µs
with significant digits (or the digits the measured noise supports), shares and changes as percentages, speed-ups,
MiB.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from attnbench.results.outcome import CaseOutcome
from attnbench.results.record import CaseKey
from attnbench.spec.sweeps import AUTO

NO_VALUE = "–"  # what a cell shows when there is nothing to show: no timing, no data
_MAX_TIME_DECIMALS = 3


# ------------------------------------------------------------------ ordering

def spec_order(results: Iterable[CaseOutcome]) -> list[str]:
    """Batch specs by size (total new tokens, then total KV); an unparsable spec from a foreign file sorts last."""
    keys: dict[str, tuple[Any, ...]] = {}
    for r in results:
        spec = r.key.batch_spec
        if spec not in keys:
            try:
                keys[spec] = r.key.size_key
            except ValueError:
                keys[spec] = (math.inf, math.inf, spec)
    return sorted(keys, key=keys.__getitem__)


def sweep_order(values: Iterable[Any]) -> list[Any]:
    """Distinct sweep values (or pipelines): "auto" first, then numbers ascending, then the rest by spelling; points
    of several swept parameters (tuples) by their values in turn, each by that rule."""
    def rank(v: Any) -> tuple[Any, ...]:
        return (v != AUTO, not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else 0, str(v))

    unique = list(dict.fromkeys(values))
    return sorted(unique, key=lambda v: tuple(rank(x) for x in v) if isinstance(v, tuple) else (rank(v),))


def sweep_point(key: CaseKey) -> Any:
    """What a case's column in a sweep table stands for: its one swept value, or the tuple of its several."""
    values = key.sweep_values
    return values[0] if len(values) == 1 else values


def point_text(point: Any) -> str:
    """A sweep point as a column shows it: "4", "auto", "2 · 64"."""
    return " · ".join(map(str, point)) if isinstance(point, tuple) else str(point)


def is_default_point(point: Any) -> bool:
    """The point that runs every swept parameter at its default ("auto", or "auto" for each of several)."""
    return point == AUTO or (isinstance(point, tuple) and bool(point) and all(v == AUTO for v in point))


def sweep_axis(results: Iterable[CaseOutcome]) -> str:
    """The swept parameters of ``results``, for titles: "num_kv_splits", "num_kv_splits × head_dim"."""
    return " × ".join(dict.fromkeys(p for r in results for p in r.key.sweep_params))


def backend_order(results: Iterable[CaseOutcome]) -> list[str]:
    """Backends in the order the results first name them: the run's own order, no list of names kept here."""
    return list(dict.fromkeys(r.key.backend for r in results))


# ------------------------------------------------------------------ numbers

def significant(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits in fixed point, never an exponent: 0.512, 23.5, 108, and whole numbers once
    the integer part is longer (1012)."""
    if value is None or not math.isfinite(value):
        return NO_VALUE
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if decimals and len(text.replace("-", "").replace(".", "").lstrip("0")) > digits:  # 99.95 rounded up to 100.0
        text = f"{value:.{decimals - 1}f}"
    return text


def us(seconds: float | None, digits: int = 3) -> str:
    """Seconds as µs with ``digits`` significant digits."""
    return NO_VALUE if seconds is None else significant(seconds * 1e6, digits)


def median_us(result: CaseOutcome | None) -> str:
    """A result's median in µs (3 significant digits), or NO_VALUE when it has no timing."""
    return us(result.median) if result is not None and result.timed else NO_VALUE


def format_time_us(seconds: float, rel_noise: float | None) -> str:
    """``seconds`` in µs, keeping only the digits the noise supports.

    The last digit kept is the one of the noise's first significant digit: noise 2 % of
    13.37 µs is 0.27 µs, so one decimal: "13.4". Without a noise estimate, 3 significant digits.
    """
    value = seconds * 1e6
    if value <= 0:
        return f"{value:.0f}"
    if not rel_noise or rel_noise <= 0:
        return significant(value)
    decimals = min(max(-math.floor(math.log10(value * rel_noise)), 0), _MAX_TIME_DECIMALS)
    return f"{value:.{decimals}f}"


def change(ratio: float, decimals: int = 1) -> str:
    """A time ratio as a signed change: 1.25 -> "+25.0%"."""
    return f"{(ratio - 1) * 100:+.{decimals}f}%"


def behind_best(seconds: float, best: float) -> str:
    """How much slower than the row's best: "+2.5%", whole per cent from +10% (the decimals stop mattering)."""
    pct = (seconds / best - 1) * 100
    return change(seconds / best, 1 if pct < 10 else 0)


def percent(fraction: float | None) -> str:
    """A share of a whole: 0.716 -> "72 %"."""
    return NO_VALUE if fraction is None else f"{fraction * 100:.0f} %"


def ratio(value: float | None) -> str:
    """A plain ratio, two decimals: 1.03."""
    return NO_VALUE if value is None else f"{value:.2f}"


def speedup(value: float | None, sign: str = "×") -> str:
    """A speed-up factor: 2.95×. Figures pass an ASCII "x", the sign their colour-bar ticks use."""
    return NO_VALUE if value is None else f"{ratio(value)}{sign}"


def mib(nbytes: int | None) -> str:
    return NO_VALUE if nbytes is None else f"{nbytes / 2**20:.1f}"
