"""A kernel-only timer from CUPTI's activity records (``--timer cupti``).

A round's time is from its first activity's start to its last one's end, on the device's clock (kernels, memcpys
and memsets): the graph launch and the host's part are left out, as FlashInfer's ``bench_gpu_time_with_cupti``
does. Each round runs between two CUPTI timestamps taken on the host (before the replay, after the synchronize),
so an activity belongs to the one round whose bracket holds it. CUPTI sees this process only: another process on
the GPU is not in the records (the events' median beside it, ``timing.events_median_s``, and the clocks are the
check for that).

It fails closed. A reference round under collection (never a sample) fixes the round's activities, by name and in
start order, for every placement of the case; every later round must launch exactly those. An activity of this
process that started before a round and ran into it, a round with one missing, extra or out of order (a record
CUPTI dropped is one missing), or a record without valid timestamps is an ``ActivityError`` naming the round and
what differs, never a number.

Nothing is excluded: this suite makes L2 cold by rotating buffer sets (``timing.buffer_sets_needed``), which
launches no kernel, so every activity in a round is the layer's own (and ``--inject-delay``'s spin, which is meant
to be timed). A flush or rotation kernel would have to be named in ``EXCLUDED``, matched exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

EXCLUDED: frozenset[str] = frozenset()  # kernel names that are not the timed work (exact match): none here
_BUFFER_BYTES = 8 * 1024 * 1024


class ActivityError(RuntimeError):
    """CUPTI's records do not account for a round exactly: the round has no time."""


class TimerUnavailable(RuntimeError):
    """CUPTI cannot be used here (cupti-python missing, or CUPTI refused): a usage problem, said before timing."""


@dataclass(frozen=True)
class KernelActivity:
    """One activity as CUPTI recorded it: a kernel by its name, or a "memcpy" / "memset"; timestamps in ns on
    CUPTI's clock."""

    name: str
    start_ns: int
    end_ns: int


def _short(name: str) -> str:
    return name if len(name) <= 80 else name[:77] + "..."


def assign(kernels: Iterable[KernelActivity], brackets: Sequence[tuple[int, int]]) -> list[list[KernelActivity]]:
    """The kernels of each round, in start order. ``brackets`` are the rounds' (start, end) host timestamps, in
    order and apart; a kernel that is not inside exactly one of them is an error."""
    starts = [b[0] for b in brackets]
    for (_, end), (start, _) in zip(brackets, brackets[1:]):
        if start < end:
            raise ActivityError("the rounds' timestamps overlap: a round started before the last one ended")
    rounds: list[list[KernelActivity]] = [[] for _ in brackets]
    for kernel in kernels:
        if kernel.name in EXCLUDED:
            continue
        if not 0 < kernel.start_ns <= kernel.end_ns:
            raise ActivityError(f"kernel {_short(kernel.name)!r} has no valid timestamps "
                                f"(start {kernel.start_ns}, end {kernel.end_ns})")
        i = bisect.bisect_right(starts, kernel.start_ns) - 1
        if i < 0 or kernel.end_ns > brackets[i][1]:
            raise ActivityError(f"kernel {_short(kernel.name)!r} ran outside every timed round "
                                f"(start {kernel.start_ns} ns): work queued before the round ran into it")
        rounds[i].append(kernel)
    for members in rounds:
        members.sort(key=lambda k: (k.start_ns, k.end_ns))
    return rounds


def difference(expected: Sequence[str], got: Sequence[str]) -> str | None:
    """What tells ``got`` (a round's kernel names) from ``expected``, in words; None when they are the same."""
    if list(got) == list(expected):
        return None
    if len(got) < len(expected):
        missing = _first_surplus(expected, got)
        return f"{len(expected) - len(got)} kernel(s) missing (expected {len(expected)}, first missing {missing!r})"
    if len(got) > len(expected):
        extra = _first_surplus(got, expected)
        return f"{len(got) - len(expected)} extra kernel(s) (expected {len(expected)}, first extra {extra!r})"
    at = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
    if sorted(got) == sorted(expected):
        return f"kernels out of order at #{at}: {_short(got[at])!r} where {_short(expected[at])!r} ran before"
    return f"kernel #{at} is {_short(got[at])!r}, expected {_short(expected[at])!r}"


def _first_surplus(longer: Sequence[str], shorter: Sequence[str]) -> str:
    remaining = list(shorter)
    for name in longer:
        if name in remaining:
            remaining.remove(name)
        else:
            return _short(name)
    return _short(longer[-1])


def span_seconds(kernels: Sequence[KernelActivity]) -> float:
    """First kernel's start to last kernel's end."""
    return (max(k.end_ns for k in kernels) - min(k.start_ns for k in kernels)) / 1e9


def round_spans(kernels: Iterable[KernelActivity], brackets: Sequence[tuple[int, int]],
                expected: Sequence[str] | None, first: int = 0) -> tuple[list[float], tuple[str, ...]]:
    """Each round's span, after checking that every round launched ``expected`` (None: the first round's kernels,
    which then fix it). Returns the spans and the expected names; rounds are numbered from ``first`` in errors. A
    record CUPTI dropped shows as a kernel missing from its round."""
    rounds = assign(kernels, brackets)
    if expected is None and rounds:
        expected = tuple(k.name for k in rounds[0])
    expected = tuple(expected or ())
    if not expected:
        raise ActivityError("no kernel was recorded in the round: CUPTI saw nothing to time")
    spans = []
    for i, members in enumerate(rounds):
        problem = difference(expected, [k.name for k in members])
        if problem is not None:
            raise ActivityError(f"round {first + i}: {problem}")
        spans.append(span_seconds(members))
    return spans, expected


class Collector:
    """CUPTI's records of one case's timed rounds (kernels, memcpys and memsets), on while it is entered.

    One per case, across its placements: the reference round of the first placement fixes the round's activities
    for all of them. ``time_round`` brackets one round with CUPTI timestamps and returns its span."""

    def __init__(self) -> None:
        try:
            from cupti import cupti  # cupti-python
        except ImportError as exc:
            raise TimerUnavailable(f"--timer cupti needs cupti-python (pip install cupti-python): {exc}") from None
        self._cupti = cupti
        self._kinds = {cupti.ActivityKind.CONCURRENT_KERNEL: None, cupti.ActivityKind.MEMCPY: "memcpy",
                       cupti.ActivityKind.MEMSET: "memset"}  # kind -> the name a record shows as (None: its own)
        self._records: list[KernelActivity] = []
        self._enabled: list[Any] = []
        self.expected: tuple[str, ...] | None = None  # the reference round's activities, by name in start order
        self.rounds = 0  # rounds bracketed so far (the reference round is round 0)

    def __enter__(self) -> "Collector":
        cupti = self._cupti

        def requested() -> tuple[int, int]:
            return _BUFFER_BYTES, 0

        def completed(activities: list[Any]) -> None:
            for record in activities:
                if record.kind in self._kinds:
                    name = self._kinds[record.kind] or str(record.name)
                    self._records.append(KernelActivity(name, int(record.start), int(record.end)))

        try:
            cupti.activity_register_callbacks(requested, completed)
            for kind in self._kinds:
                cupti.activity_enable(kind)
                self._enabled.append(kind)
        except Exception as exc:  # CUPTI in use by another profiler, or not permitted
            self._close()
            raise TimerUnavailable(f"--timer cupti: CUPTI refused to record kernels: {exc}") from None
        return self

    def _take(self) -> list[KernelActivity]:
        self._cupti.activity_flush_all(1)
        taken, self._records = self._records, []
        return taken

    def time_round(self, run: Callable[[], Any]) -> float:
        """Seconds from the first activity's start to the last one's end while ``run()`` (which returns once the
        round is done on the device) ran; checked against the reference round (the first, when there is none)."""
        self._take()  # work between rounds (verification, a new placement's buffers) is not the round's
        begin = int(self._cupti.get_timestamp())
        run()
        bracket = (begin, int(self._cupti.get_timestamp()))
        spans, self.expected = round_spans(self._take(), [bracket], self.expected, first=self.rounds)
        self.rounds += 1
        return spans[0]

    def _close(self) -> None:
        cupti = self._cupti
        try:
            cupti.activity_flush_all(1)
        finally:
            for kind in reversed(self._enabled):
                cupti.activity_disable(kind)
            self._enabled.clear()
            cupti.finalize()

    def __exit__(self, *exc: Any) -> None:
        self._close()
