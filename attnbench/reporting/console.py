"""The terminal: ``model.Table``s as rich tables, and the session summary (``tables.summary_tables``).

Each emphasis has one colour here (the row's fastest green, failures red, skips dim, ...);
without colour the text alone carries the meaning ("best", "FAILED[1]", "skip[2]").
"""

from __future__ import annotations

from io import StringIO
from typing import Any, Callable, Sequence

from attnbench.reporting import model
from attnbench.reporting.tables import summary_tables
from attnbench.results.outcome import CaseOutcome
from attnbench.results.record import UNSTABLE_SPREAD_PCT

STYLES = {model.FASTEST: "bold green", model.GOOD: "bold green", model.BAD: "bold red", model.DOUBT: "yellow",
          model.ADDED: "cyan", model.GONE: "magenta", model.MUTED: "dim"}
_GROUP_STYLES = ("cyan", "magenta")  # alternate backends' header colours, so a backend's columns read as one
_MAX_TABLE_WIDTH = 1000


def to_rich(table: model.Table) -> list[Any]:
    """The rich Table, then its notes (when it has any) as dim or red text."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=table.title or None, title_justify="left")
    for c in table.columns:
        style = {} if c.group is None else {
            "header_style": ("bold " if c.lead else "") + _GROUP_STYLES[c.group % len(_GROUP_STYLES)]}
        justify = "right" if c.right else "left"
        out.add_column(c.header, justify=justify, no_wrap=not c.wrap, **style)  # type: ignore[arg-type]
    for row in table.rows:
        out.add_row(*(_text(cell) for cell in row))
    if not table.notes:
        return [out]
    notes = Text()
    for note in table.notes:
        notes.append(note.text + "\n", style=STYLES.get(note.emphasis or "", ""))
    return [out, notes]


def _text(cell: model.Cell) -> Any:
    from rich.text import Text

    text = Text()
    for i, line in enumerate(cell.lines()):
        text.append(("\n" if i else "") + line.text, style=STYLES.get(line.emphasis or "", ""))
    return text


def summary_renderables(results: Sequence[CaseOutcome]) -> list[Any]:
    """Rich tables (and footnotes) for ``results``: one per study x family, plus crossovers and best sweep values."""
    return [r for table in summary_tables(results) for r in to_rich(table)]


def render_summary(results: Sequence[CaseOutcome], width: int = 160, color: bool = False) -> str:
    """The summary as text (ANSI-coloured when ``color``), for a terminal reporter or a file."""
    return render_renderables(summary_renderables(results), width, color)


def render_renderables(renderables: Sequence[Any], width: int = 160, color: bool = False) -> str:
    """Render ``model.Table``s or rich renderables to text. A table wider than ``width`` keeps its natural width
    (the terminal wraps the lines) rather than being squeezed into truncated cells: a number cut to "0.…" is
    worse than a long line."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    buffer = StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False, soft_wrap=False)
    for renderable in [r for item in renderables for r in (to_rich(item) if isinstance(item, model.Table) else [item])]:
        if isinstance(renderable, Table):
            natural = Measurement.get(console, console.options.update(width=_MAX_TABLE_WIDTH), renderable).maximum
            console.width = max(width, min(natural, _MAX_TABLE_WIDTH))
        else:
            console.width = width
        console.print(renderable)
    return buffer.getvalue()


def time_spent_line(results: Sequence[CaseOutcome]) -> str | None:
    """Where the run's host time went, summed over the cases that recorded it, against the timed calls themselves (each
    timed round's calls x their time): a slow study says whether setup, verification or the timing loop was slow."""
    recorded = [r for r in results if r.record is not None and r.record.host_seconds is not None]
    if not recorded:
        return None
    spent = [r.record.host_seconds for r in recorded]
    phases = {name: sum(getattr(s, name) for s in spent) for name in ("setup", "verify", "timing", "profile")}
    calls = sum(r.record.timing.calls_per_round * sum(r.times.samples) for r in recorded)
    shown = ", ".join(f"{name} {seconds:.1f} s" + (f" (the timed calls themselves {calls:.1f} s)"
                                                   if name == "timing" else "") for name, seconds in phases.items())
    total = sum(s.total for s in spent)
    return f"where the time went, {len(recorded)} case{'s' if len(recorded) != 1 else ''}: host {total:.1f} s = {shown}"


def _named(cases: Sequence[CaseOutcome], detail: Callable[[CaseOutcome], str]) -> str:
    shown = ", ".join(f"{r.key.backend} {r.key.batch_spec}{detail(r)}" for r in cases[:8])
    return shown + (f", and {len(cases) - 8} more" if len(cases) > 8 else "")


def warning_lines(results: Sequence[CaseOutcome]) -> list[str]:
    """What a reader of the numbers must know about some cases: timings that spread too far for their median to be
    one number (≈ in the tables), outputs that one more identical call did not reproduce exactly, and timed outputs
    that are not exactly the first (eager) call's."""
    recorded = [r for r in results if r.record is not None]
    lines = []
    unstable = [r for r in recorded if r.unstable]
    if unstable:
        lines.append(f"{len(unstable)} case{'s' if len(unstable) != 1 else ''} timed unstable (rounds' p10 to p90 over "
                     f"{UNSTABLE_SPREAD_PCT:g} % of the median): "
                     + _named(unstable, lambda r: f" {r.record.timing.spread_pct:.0f} %"))
    moving = [r for r in recorded if (r.record.verification.after_timing or {}).get("rerun_identical") is False]
    if moving:
        lines.append(f"{len(moving)} case{'s' if len(moving) != 1 else ''} gave another output on one more identical "
                     f"call (verified within tolerance both times; verification.after_timing.rerun_max_abs_diff): "
                     + _named(moving, lambda r: f" {r.record.verification.after_timing['rerun_max_abs_diff']:.2g}"))
    replayed = [r for r in recorded
                if (r.record.verification.after_timing or {}).get("timed_identical_to_first_call") is False]
    if replayed:
        lines.append(f"{len(replayed)} case{'s' if len(replayed) != 1 else ''} timed an output other than the first, "
                     f"eager call's (a graph replay's, under the graph timer; verified within tolerance both times; "
                     f"verification.after_timing.timed_first_call_max_abs_diff): "
                     + _named(replayed, lambda r:
                              f" {r.record.verification.after_timing['timed_first_call_max_abs_diff']:.2g}"))
    return lines
