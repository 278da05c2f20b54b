"""Adaptive search for the decode/prefill crossover of ``decode_vs_prefill`` studies (no torch).

The question of such a study, per curve (backend x batch size): the largest query length q
at which the decode pipeline is still faster than the prefill one, i.e. the
``reorder_batch_threshold`` to pick. Timing every q of the grid answers it, but the answer
only depends on where the faster pipeline changes, so a bisection finds it with far fewer
cases:

* ``search_levels`` gives every grid q a level: 0 = a coarse set (the powers of two in the
  grid plus its ends), L+1 = the midpoints bisection visits next between level <= L points.
  Running the cases in (level, curve, q) order makes every decision depend only on results
  already taken at lower levels.
* ``SearchState`` holds the results and ``decide``s per point: level 0 always; a deeper point
  only inside a bracket (its nearest visited lower-level neighbours) where the winner flips,
  the pipelines are within noise at an end, or an end was not timed.
* ``crossover_answer`` reads the threshold off the timed points of one curve (the full grid's
  or the search's alike).
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable, Mapping, Sequence

from attnbench.spec.cases import DECODE, PREFILL

if TYPE_CHECKING:
    from attnbench.results.outcome import CaseOutcome

TIE = "tie"
PIPELINES = (DECODE, PREFILL)
NOISE_K = 2.0  # a difference within k combined standard errors is a tie
REL_TIE = 0.01  # ... and so is one within 1 % of the faster time: not worth a threshold either way
WAIT_TIMEOUT_S = 600.0

# vLLM 0.26.0's reorder_batch_threshold per backend when nothing forces it. Not in vLLM-free code:
# adapters/vllm_common.py reads it off each metadata builder into backend_info.default_reorder_batch_threshold;
# these are the values recorded on the H100 in baselines/NVIDIA_H100_80GB_HBM3/Linux-CPython-3.12-64bit/
# 0004_speculative_decode.json (also 0005, 0006) and quoted in docs/RESULTS_H100.md. A result's own recorded
# value takes precedence (``vllm_default``); backends never recorded (CUTLASS_MLA, FLASHINFER_MLA) are absent.
DEFAULT_REORDER_BATCH_THRESHOLD: dict[str, int] = {"FLASHMLA": 128, "FLASH_ATTN_MLA": 512, "TRITON_MLA": 1}

Curve = Hashable  # one curve's key, e.g. (family, backend, batch_size, kv_len)


# ------------------------------------------------------------------ levels

def _nearest(qs: Sequence[int], x: float) -> int:
    """The value of sorted ``qs`` nearest to ``x`` (the lower one on a tie)."""
    i = bisect.bisect_left(qs, x)
    if i == 0:
        return qs[0]
    if i == len(qs):
        return qs[-1]
    return qs[i - 1] if x - qs[i - 1] <= qs[i] - x else qs[i]


def curve_kv(points: Iterable[tuple[int, int]]) -> dict[tuple[int, int], int | None]:
    """The KV length that names each (q, kv) point's curve, among the points of one backend and batch size: each
    KV length is a curve of its own where the same q appears at several KV lengths; otherwise one curve, named by
    its KV length if it has one, else None (KV grows with q). The search and the crossover table both read curves
    by this rule (two specs at one (q, kv), as the search may have, count as the same q twice: a split)."""
    listed = list(points)
    qs = [q for q, _ in listed]
    kvs = {kv for _, kv in listed}
    split = len(set(qs)) < len(qs)
    return {(q, kv): kv if split or len(kvs) == 1 else None for q, kv in listed}


def coarse_points(grid: Iterable[int]) -> list[int]:
    """Level 0: the grid's min and max and every power of two inside it, each snapped to the grid."""
    qs = sorted(set(grid))
    if not qs:
        return []
    out = {qs[0], qs[-1]}
    power = 1
    while power <= qs[-1]:
        if power >= qs[0]:
            out.add(_nearest(qs, power))
        power *= 2
    return sorted(out)


def search_levels(grid: Iterable[int]) -> dict[int, int]:
    """q -> search level for every point of ``grid``: 0 = ``coarse_points``; level L+1 = between each pair of
    adjacent level <= L points, the interior grid point nearest their midpoint (bisection at grid resolution)."""
    qs = sorted(set(grid))
    index = {q: i for i, q in enumerate(qs)}
    levels = {q: 0 for q in coarse_points(qs)}
    level = 0
    while len(levels) < len(qs):
        known = sorted(levels)
        level += 1
        for a, b in zip(known, known[1:]):
            inside = qs[index[a] + 1:index[b]]
            if inside:  # interior only, so every pair splits and the loop ends
                levels[_nearest(inside, (a + b) / 2)] = level
    return levels


def search_order(levels: Mapping[Curve, Mapping[int, int]]) -> list[tuple[int, Curve, int]]:
    """(level, curve, q) for every point, level first; curves keep their order in ``levels``."""
    rank = {curve: i for i, curve in enumerate(levels)}
    items = [(lv, curve, q) for curve, by_q in levels.items() for q, lv in by_q.items()]
    return sorted(items, key=lambda t: (t[0], rank[t[1]], t[2]))


# ------------------------------------------------------------------ measurements

@dataclass(frozen=True)
class Measurement:
    """One pipeline at one q: its median seconds and the relative standard error of that estimate."""

    seconds: float | None
    rel_stderr: float | None = None
    status: str = "passed"

    @property
    def timed(self) -> bool:
        return self.status == "passed" and self.seconds is not None and self.seconds > 0


def measurement(outcome: "CaseOutcome") -> Measurement:
    """One case's median with the runner's rel_stderr when it recorded one, else std / mean / sqrt(rounds)."""
    t = outcome.times
    err = outcome.record.timing.rel_stderr if outcome.record is not None else None
    if err is None and t.stddev is not None and t.mean and t.rounds >= 2:
        err = t.stddev / t.mean / math.sqrt(t.rounds)
    return Measurement(t.median, err, outcome.status)


def compare(decode: Measurement, prefill: Measurement, k: float = NOISE_K, rel_tie: float = REL_TIE) -> str:
    """DECODE or PREFILL (the faster one), or TIE when they are within noise; both must be timed."""
    if decode.seconds is None or prefill.seconds is None:
        raise ValueError("compare needs both pipelines timed")
    td, tp = decode.seconds, prefill.seconds
    noise = k * math.hypot(td * (decode.rel_stderr or 0.0), tp * (prefill.rel_stderr or 0.0))
    if abs(td - tp) <= max(noise, rel_tie * min(td, tp)):
        return TIE
    return DECODE if td < tp else PREFILL


@dataclass(frozen=True)
class Point:
    """Both pipelines at one q (either may be missing or untimed)."""

    q: int
    decode: Measurement | None = None
    prefill: Measurement | None = None

    @property
    def timed(self) -> bool:
        return self.decode is not None and self.prefill is not None and self.decode.timed and self.prefill.timed

    def outcome(self, k: float = NOISE_K, rel_tie: float = REL_TIE) -> str | None:
        """DECODE, PREFILL or TIE; None when not both pipelines were timed."""
        if not self.timed or self.decode is None or self.prefill is None:
            return None
        return compare(self.decode, self.prefill, k, rel_tie)


# ------------------------------------------------------------------ the answer

CROSSOVER, DECODE_EVERYWHERE, PREFILL_EVERYWHERE, WITHIN_NOISE, NO_DATA = (
    "crossover", "decode wins everywhere", "prefill wins everywhere", "within noise everywhere", "no data")


@dataclass(frozen=True)
class CrossoverAnswer:
    """The threshold of one curve: decode is faster up to ``lo`` and no slower (within noise) up to ``hi``,
    both before prefill first wins (at ``prefill_from``). ``lo == hi``: a point answer."""

    kind: str
    lo: int | None
    hi: int | None
    prefill_from: int | None
    flip_brackets: tuple[tuple[int, int], ...] = ()  # (last q of the old winner, first q of the new one)
    points_timed: int = 0
    vllm_default: int | None = None

    @property
    def threshold(self) -> int | None:
        return self.lo

    @property
    def interval(self) -> bool:
        return self.hi is not None and self.lo != self.hi

    @property
    def flips(self) -> int:
        return len(self.flip_brackets)

    @property
    def flip_points(self) -> list[int]:
        return [b for _, b in self.flip_brackets]

    def label(self) -> str:
        """'64', '64–72' (within noise between), 'never', or '–' (nothing timed)."""
        if self.kind == NO_DATA:
            return "–"
        if not self.interval:
            return "never" if self.lo is None else str(self.lo)
        return f"{'never' if self.lo is None else self.lo}–{self.hi}"

    def note(self) -> str:
        parts = []
        if self.interval:
            parts.append("within noise in the interval")
        if self.kind in (DECODE_EVERYWHERE, PREFILL_EVERYWHERE, WITHIN_NOISE):
            parts.append(self.kind)
        if self.flips > 1:
            parts.append(f"{self.flips} flips (at q {', '.join(map(str, self.flip_points))}): noisy or non-monotonic")
        return "; ".join(parts)


def crossover_answer(points: Iterable[Point], vllm_default: int | None = None, k: float = NOISE_K,
                     rel_tie: float = REL_TIE) -> CrossoverAnswer:
    """The threshold from the timed points of one curve: the largest q where decode is decisively faster
    before prefill first wins, widened to an interval over the ties that follow it."""
    outcomes = [(p.q, p.outcome(k, rel_tie)) for p in sorted(points, key=lambda p: p.q) if p.timed]
    if not outcomes:
        return CrossoverAnswer(NO_DATA, None, None, None, vllm_default=vllm_default)
    decisive = [(q, o) for q, o in outcomes if o != TIE]
    brackets = tuple((a, b) for (a, oa), (b, ob) in zip(decisive, decisive[1:]) if oa != ob)
    prefill_from = next((q for q, o in decisive if o == PREFILL), None)
    before = [(q, o) for q, o in outcomes if prefill_from is None or q < prefill_from]
    lo = max((q for q, o in before if o == DECODE), default=None)
    hi = before[-1][0] if before else None
    winners = {o for _, o in decisive}
    kind = (CROSSOVER if winners == {DECODE, PREFILL} else DECODE_EVERYWHERE if winners == {DECODE}
            else PREFILL_EVERYWHERE if winners == {PREFILL} else WITHIN_NOISE)
    return CrossoverAnswer(kind, lo, hi, prefill_from, brackets, len(outcomes), vllm_default)


def vllm_default(backend: str, recorded: Any = None) -> int | None:
    """The backend's default threshold: the one a result recorded, else ``DEFAULT_REORDER_BATCH_THRESHOLD``."""
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    return DEFAULT_REORDER_BATCH_THRESHOLD.get(backend)


# ------------------------------------------------------------------ the search

@dataclass(frozen=True)
class Decision:
    """Whether to time a point, and why. ``wait``: an end it depends on is still running elsewhere."""

    visit: bool
    reason: str
    level: int
    bracket: tuple[int | None, int | None] | None = None
    wait: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"visit": self.visit, "reason": self.reason, "level": self.level,
                "bracket": list(self.bracket) if self.bracket else None}


_WAIT = object()
_UNTIMED = "untimed"


class SearchState:
    """Results of the curves so far, and the visit decision for each point.

    ``present(curve, q, pipeline)`` says whether that case will run in this session at all: a needed
    result that is absent (deselected) counts as untimed instead of being waited for."""

    def __init__(self, grids: Mapping[Curve, Iterable[int]], *, k: float = NOISE_K, rel_tie: float = REL_TIE,
                 present: Callable[[Curve, int, str], bool] | None = None) -> None:
        self.grids = {curve: sorted(set(qs)) for curve, qs in grids.items()}
        self.levels = {curve: search_levels(qs) for curve, qs in self.grids.items()}
        self._index = {curve: {q: i for i, q in enumerate(qs)} for curve, qs in self.grids.items()}
        self.k, self.rel_tie = k, rel_tie
        self.present = present or (lambda curve, q, pipeline: True)
        self._results: dict[tuple[Curve, int], dict[str, Measurement]] = {}
        self._decided: dict[tuple[Curve, int], Decision] = {}  # final decisions only (never a wait)

    def tell(self, curve: Curve, q: int, pipeline: str, seconds: float | None, rel_stderr: float | None = None,
             status: str = "passed") -> None:
        """Record one pipeline's result at (curve, q)."""
        self._results.setdefault((curve, q), {})[pipeline] = Measurement(seconds, rel_stderr, status)

    def known(self, curve: Curve, q: int, pipeline: str) -> bool:
        return pipeline in self._results.get((curve, q), {})

    def point(self, curve: Curve, q: int) -> Point:
        got = self._results.get((curve, q), {})
        return Point(q, got.get(DECODE), got.get(PREFILL))

    def points(self, curve: Curve) -> list[Point]:
        """Every point of ``curve`` with a result, ascending q."""
        return sorted((self.point(c, q) for c, q in self._results if c == curve), key=lambda p: p.q)

    def answer(self, curve: Curve, default: int | None = None) -> CrossoverAnswer:
        return crossover_answer(self.points(curve), default, self.k, self.rel_tie)

    def decide(self, curve: Curve, q: int) -> Decision:
        """Visit (curve, q)? Level 0 always; deeper points when their bracket may hold the crossover."""
        done = self._decided.get((curve, q))
        if done is not None:
            return done
        level = self.levels[curve][q]
        if level == 0:
            decision = Decision(True, "level 0 (coarse grid)", 0)
        else:
            ends = [self._neighbour(curve, q, level, step) for step in (-1, 1)]
            waiting = next((e for e in ends if isinstance(e, Decision)), None)
            if waiting is not None:
                return Decision(False, waiting.reason, level, None, wait=True)
            decision = self._bracket_decision(curve, level, ends[0], ends[1])  # type: ignore[arg-type]
        if not decision.wait:
            self._decided[(curve, q)] = decision
        return decision

    def _neighbour(self, curve: Curve, q: int, level: int, step: int) -> int | None | Decision:
        """The nearest visited point of a lower level on one side (None: there is none), or a wait."""
        qs, levels = self.grids[curve], self.levels[curve]
        i = self._index[curve][q] + step
        while 0 <= i < len(qs):
            other = qs[i]
            if levels[other] < level:
                decision = self.decide(curve, other)
                if decision.wait:
                    return decision
                if decision.visit:
                    return other
            i += step
        return None

    def _state(self, curve: Curve, q: int | None) -> str | Decision:
        """An end's outcome (DECODE/PREFILL/TIE), _UNTIMED, or a wait for a result still to come."""
        if q is None:
            return _UNTIMED
        got = self._results.get((curve, q), {})
        for pipeline in PIPELINES:
            if pipeline not in got and self.present(curve, q, pipeline):
                return Decision(False, f"waiting for q{q} {pipeline}", self.levels[curve][q], wait=True)
        return self.point(curve, q).outcome(self.k, self.rel_tie) or _UNTIMED

    def _bracket_decision(self, curve: Curve, level: int, a: int | None, b: int | None) -> Decision:
        sa, sb = self._state(curve, a), self._state(curve, b)
        for s in (sa, sb):
            if isinstance(s, Decision):
                return Decision(False, s.reason, level, (a, b), wait=True)
        bracket = (a, b)
        if sa == _UNTIMED and sb == _UNTIMED:
            return Decision(False, f"neither q{a} nor q{b} timed", level, bracket)
        if _UNTIMED in (sa, sb):
            missing = a if sa == _UNTIMED else b
            return Decision(True, f"q{missing} not timed (failed or skipped)", level, bracket)
        if TIE in (sa, sb):
            return Decision(True, f"within noise at q{a if sa == TIE else b}", level, bracket)
        if sa != sb:
            return Decision(True, f"winner flips between q{a} and q{b}", level, bracket)
        return Decision(False, f"{sa} wins at both q{a} and q{b}", level, bracket)


def decide_waiting(state: SearchState, curve: Curve, q: int, refresh: Callable[[], Any] = lambda: None,
                   timeout: float = WAIT_TIMEOUT_S, poll: float = 0.25,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Any] = time.sleep) -> Decision:
    """``state.decide``, calling ``refresh`` (read others' results) and polling while it says wait; after
    ``timeout`` seconds the point is visited: an extra case costs less than a wrong answer."""
    deadline = clock() + timeout
    while True:
        refresh()
        decision = state.decide(curve, q)
        if not decision.wait:
            return decision
        if clock() >= deadline:
            return Decision(True, f"gave up {decision.reason} after {timeout:g} s; visited to be safe",
                            decision.level, decision.bracket)
        sleep(poll)


def run_search(grids: Mapping[Curve, Iterable[int]], measure: Callable[[Curve, int, str], Measurement],
               **options: Any) -> tuple[SearchState, list[tuple[Curve, int]]]:
    """The search run serially offline: ``measure`` is called for both pipelines of every visited point.
    Returns the state and the visited (curve, q) in visit order."""
    state = SearchState(grids, **options)
    visited: list[tuple[Curve, int]] = []
    for _level, curve, q in search_order(state.levels):
        if state.decide(curve, q).visit:
            visited.append((curve, q))
            for pipeline in PIPELINES:
                m = measure(curve, q, pipeline)
                state.tell(curve, q, pipeline, m.seconds, m.rel_stderr, m.status)
    return state, visited
