"""The one table model the renderers read: a title, columns, rows of cells, notes under the table.

A cell holds its text, the number behind it, an emphasis saying what is special about it (the
row's fastest, a failure, ...) and the result it shows. Tables are built from results in
``tables``, ``analysis`` and ``verdicts``; a renderer decides only how each emphasis looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from attnbench.results.outcome import CaseOutcome

# emphasis: what a cell is, not how it looks (the console colours them, markdown bolds FASTEST)
FASTEST = "fastest"  # the best time of its row
GOOD = "good"  # better than the baseline
BAD = "bad"  # a failure, or worse than the baseline
DOUBT = "doubt"  # cannot tell
ADDED = "added"  # not in the baseline
GONE = "gone"  # in the baseline, without a new timing
MUTED = "muted"  # skipped, not timed, captions


@dataclass(frozen=True)
class Cell:
    text: str = ""
    value: float | None = None  # the number shown (seconds for a time, the factor for a speed-up)
    emphasis: str | None = None
    result: CaseOutcome | None = None  # the result the cell shows, for a renderer that draws more of it
    below: tuple[Cell, ...] = ()  # further lines of the same cell

    def lines(self) -> list[Cell]:
        return [self, *self.below]


@dataclass(frozen=True)
class Column:
    header: str  # a "\n" makes a two-line header where the renderer has room for one
    right: bool = True  # right-aligned (numbers)
    key: Any = None  # what the column is about (a backend, a sweep value), for renderers that need it
    group: int | None = None  # columns of one backend share a group number (the console colours groups apart)
    lead: bool = False  # the first column of its group
    wrap: bool = True


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[Cell] = field(default_factory=list)  # lines under the table: caption, footnotes

    def add(self, *cells: Cell | str) -> None:
        self.rows.append([c if isinstance(c, Cell) else Cell(c) for c in cells])


def simple_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool] | None = None,
                 title: str = "") -> Table:
    """A table of plain text; ``right[i]`` right-aligns column i (default: all but the first)."""
    right = list(right) if right is not None else [False] + [True] * (len(headers) - 1)
    table = Table(title, [Column(h, r) for h, r in zip(headers, right)])
    for row in rows:
        table.add(*row)
    return table
