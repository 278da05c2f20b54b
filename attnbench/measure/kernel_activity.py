"""A kernel-only timer from CUPTI's activity records (``--timer cupti``).

A round's time is from its first kernel's start to its last kernel's end, on the device's clock: the graph launch
and the host's part are left out, as FlashInfer's ``bench_gpu_time_with_cupti`` does. Each round runs between two
CUPTI timestamps taken on the host (before the replay, after the synchronize), so a kernel belongs to the one round
whose bracket holds it.

It fails closed. A reference round under collection (never a sample) fixes the round's kernels, by
name and in start order; every timed round must launch exactly those. A kernel outside every bracket, a round with a
kernel missing, extra or out of order (a record CUPTI dropped is a kernel missing), or a record without valid
timestamps is an ``ActivityError`` naming what differs, never a number.

Nothing is excluded: this suite makes L2 cold by rotating buffer sets (``timing.buffer_sets_needed``), which
launches no kernel, so every kernel in a round is the layer's own (and ``--inject-delay``'s spin, which is meant
to be timed). A flush or rotation kernel would have to be named in ``EXCLUDED``, matched exactly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

EXCLUDED: frozenset[str] = frozenset()  # kernel names that are not the timed work (exact match): none here
_BUFFER_BYTES = 8 * 1024 * 1024


class ActivityError(RuntimeError):
    """CUPTI's records do not account for a round exactly: the round has no time."""


class TimerUnavailable(RuntimeError):
    """CUPTI cannot be used here (cupti-python missing, or CUPTI refused): a usage problem, said before timing."""


@dataclass(frozen=True)
class KernelActivity:
    """One kernel as CUPTI recorded it (CONCURRENT_KERNEL), timestamps in ns on CUPTI's clock."""

    name: str
    start_ns: int
    end_ns: int

    @classmethod
    def of(cls, record: Any) -> "KernelActivity":
        return cls(str(record.name), int(record.start), int(record.end))


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
                                f"(start {kernel.start_ns} ns): something else used the GPU while it was timed")
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
                expected: Sequence[str] | None) -> tuple[list[float], tuple[str, ...]]:
    """Each round's span, after checking that every round launched ``expected`` (None: the first round's kernels,
    which then fix it). Returns the spans and the expected names. A record CUPTI dropped shows as a kernel missing
    from its round."""
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
            raise ActivityError(f"round {i}: {problem}")
        spans.append(span_seconds(members))
    return spans, expected


class Collector:
    """CUPTI's CONCURRENT_KERNEL records while it is entered; ``bracket()`` timestamps a round on CUPTI's clock."""

    def __init__(self) -> None:
        try:
            from cupti import cupti  # cupti-python
        except ImportError as exc:
            raise TimerUnavailable(f"--timer cupti needs cupti-python (pip install cupti-python): {exc}") from None
        self._cupti = cupti
        self.kernels: list[KernelActivity] = []
        self.dropped = 0

    def __enter__(self) -> "Collector":
        cupti = self._cupti

        def requested() -> tuple[int, int]:
            return _BUFFER_BYTES, 0

        def completed(activities: list[Any]) -> None:
            for record in activities:
                if record.kind == cupti.ActivityKind.CONCURRENT_KERNEL:
                    self.kernels.append(KernelActivity.of(record))

        try:
            cupti.activity_register_callbacks(requested, completed)
            cupti.activity_enable(cupti.ActivityKind.CONCURRENT_KERNEL)
        except Exception as exc:  # CUPTI in use by another profiler, or not permitted
            raise TimerUnavailable(f"--timer cupti: CUPTI refused to record kernels: {exc}") from None
        return self

    def timestamp(self) -> int:
        return int(self._cupti.get_timestamp())

    def take(self) -> list[KernelActivity]:
        """Every record so far (flushed), handed over once."""
        self._cupti.activity_flush_all(1)
        taken, self.kernels = self.kernels, []
        return taken

    def __exit__(self, *exc: Any) -> None:
        cupti = self._cupti
        try:
            cupti.activity_flush_all(1)
        finally:
            cupti.activity_disable(cupti.ActivityKind.CONCURRENT_KERNEL)
            cupti.finalize()
