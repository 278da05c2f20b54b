"""PNG plots over ``CaseOutcome``s, from a live session (``--plot``) or saved results.

Each figure draws a table of the model: ``tables.time_table`` (bars), ``tables.speedup_tables``
(heatmap) and ``analysis.crossover_table`` (crossover), so a figure and the tables beside it agree
on order, winners and numbers.

* ``backend_bars``    per batch spec, one bar per backend (median time, log scale when the
                      specs span more than 20x), for studies without a sweep.
* ``sweep_heatmap``   per backend, batch spec x sweep value, coloured by speed-up over the
                      default ("auto"; the first value when auto was not run); the best value
                      of each spec is outlined.
* ``crossover_plot``  decode_vs_prefill: one panel per batch size, x = query length, y = time,
                      a solid line for the decode pipeline and a dashed one for prefill per
                      backend, a dotted vertical line at the threshold (``analysis.crossover_table``'s
                      noise-aware answer; shaded where the pipelines are within noise) and a
                      dash-dot one at vLLM's default threshold when it lies inside the panel.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch), so this works in pytest workers and headless machines. ``main`` is the command line:

    python benchmark.py plot RESULTS.json --out DIR
    python -m attnbench.reporting.plots RESULTS.json --out DIR
"""

from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from attnbench.reporting.analysis import crossover_table, group_results
from attnbench.reporting.cells import point_text, significant
from attnbench.reporting.model import FASTEST
from attnbench.reporting.tables import speedup_tables, time_table
from attnbench.results.outcome import SKIPPED, CaseOutcome

_LOG_SCALE_SPAN = 20.0  # use a log time axis when the largest time is more than this many times the smallest
_MAX_WIDTH = 14.0  # inches: backend_bars grows with the number of specs and backends up to this


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def backend_bars(results: Sequence[CaseOutcome], path: str | Path, title: str = "") -> Path | None:
    """Grouped bars: x = batch spec (by size), one bar per backend, y = median µs. None if nothing timed."""
    table = time_table(results)
    rows = [row for row in table.rows if any(cell.value for cell in row[1:])]  # specs with a timing
    if not rows:
        return None
    backends = [c.key for c in table.columns[1:]]
    specs = [row[0].text for row in rows]
    fig = _figure(min(_MAX_WIDTH, max(6.0, 1.0 + len(specs) * (0.35 + 0.25 * len(backends)))), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(backends))
    times = [cell.value * 1e6 for row in rows for cell in row[1:] if cell.value]
    from matplotlib.patches import Patch

    colors = _backend_colors(backends)
    handles = []  # explicit: an empty bar series (a backend skipped everywhere) has no legend colour of its own
    for i, backend in enumerate(backends):
        xs, ys, errs, missing = [], [], [], []
        for x, row in enumerate(rows):
            cell, r = row[i + 1], row[i + 1].result
            offset = x - 0.4 + width * (i + 0.5)
            if cell.value:
                xs.append(offset)
                ys.append(cell.value * 1e6)
                errs.append((r.times.iqr or 0.0) * 1e6 / 2 if r is not None else 0.0)
            elif r is not None:
                missing.append((offset, "skip" if r.status == SKIPPED else r.status))
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=2, color=colors[backend])
        handles.append(Patch(color=colors[backend], label=backend if ys else f"{backend} (not timed)"))
        ax.bar_label(bars, labels=[significant(y) for y in ys], fontsize=7, rotation=90, padding=4)
        for offset, text in missing:
            ax.text(offset, 0.02, text, transform=ax.get_xaxis_transform(), rotation=90, ha="center", va="bottom",
                    fontsize=7, color="grey")
    if max(times) / min(times) > _LOG_SCALE_SPAN:
        ax.set_yscale("log")
    ax.margins(y=0.25)
    ax.set_xlim(-0.5, len(specs) - 0.5)
    ax.set_xticks(range(len(specs)), specs, rotation=30, ha="right")
    ax.set_ylabel("median µs per layer call, IQR whiskers\n(lower is better)")
    ax.set_title(title or "Backends per batch spec")
    ax.legend(handles=handles, fontsize=8)
    return _save(fig, path)


def sweep_heatmap(results: Sequence[CaseOutcome], path: str | Path, title: str = "") -> Path | None:
    """Per backend: batch spec x sweep value, colour = speed-up over the default; best value outlined."""
    param, reference, grids = speedup_tables(results)
    if not grids:
        return None
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter

    values = [c.key for c in grids[0].columns[1:]]
    specs = [row[0].text for row in grids[0].rows]
    fig = _figure(max(5.0, 1.5 + 0.9 * len(values)) * len(grids), max(3.0, 1.2 + 0.45 * len(specs)))
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    speedups = [cell.value for grid in grids for row in grid.rows for cell in row[1:] if cell.value is not None]
    # symmetric on a log scale, so 1x sits mid-colour and 2x / 0.5x get the same strength; at least
    # 0.8x..1.25x, so run-to-run noise of a few per cent stays pale
    span = max([1.25] + [max(s, 1 / s) for s in speedups if s > 0])
    norm = LogNorm(vmin=1 / span, vmax=span)
    image = None
    for ax, grid in zip(axes, grids):
        import numpy as np

        data = np.array([[np.nan if c.value is None else c.value for c in row[1:]] for row in grid.rows], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(data), cmap="RdYlGn", norm=norm, aspect="auto")
        cmap = image.get_cmap()
        ax.set_facecolor("#dddddd")  # cells with no timing (skipped, failed, no reference)
        for y, row in enumerate(grid.rows):
            for x, cell in enumerate(row[1:]):
                dark = cell.value is not None and _luminance(cmap(norm(cell.value))) < 0.4  # the deep red / green ends
                ax.text(x, y, cell.text, ha="center", va="center", fontsize=8, color="white" if dark else "black",
                        fontweight="bold" if cell.emphasis == FASTEST else "normal")
                if cell.emphasis == FASTEST:
                    ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
        ax.set_xticks(range(len(values)), [point_text(v) for v in values])
        ax.set_yticks(range(len(specs)), specs)
        ax.set_xlabel(param)
        ax.set_title(grid.title)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), label=f"speed-up vs {point_text(reference)}", shrink=0.9)
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    fig.suptitle(f"{title or 'Sweep'}: speed-up of each {param} over {param}={point_text(reference)} "
                 f"(outlined: fastest per spec)")
    return _save(fig, path)


def crossover_plot(results: Sequence[CaseOutcome], path: str | Path, title: str = "") -> Path | None:
    """decode_vs_prefill: one panel per batch size, time against q for both pipelines of each backend."""
    crossovers = crossover_table(results)
    if not crossovers:
        return None
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 16, not 2^4 or 16.0
    panels: dict[tuple[int, Any], list] = defaultdict(list)
    for c in crossovers:
        panels[(c.batch_size, c.kv_len)].append(c)
    keys = sorted(panels, key=lambda k: (k[0], k[1] or 0))
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = _figure(4.6 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _backend_colors(c.backend for c in crossovers)
    order = {b: i for i, b in enumerate(colors)}  # stacks each backend's "decode ≤ q" label at its own height
    legend: dict[str, Any] = {}  # label -> handle, over all panels (a backend may be missing from some)
    for ax, key in zip(axes, keys):
        batch_size, kv = key
        qs_all = sorted({q for c in panels[key] for q in c.q_lens})
        q_mid = (qs_all[0] * qs_all[-1]) ** 0.5  # geometric: the x axis is log when q spans widely
        for c in panels[key]:
            qs = c.q_lens
            color = colors[c.backend]
            ax.plot(qs, [c.times[q][0] * 1e6 for q in qs], "-o", color=color, markersize=3,
                    label=f"{c.backend} decode")
            ax.plot(qs, [c.times[q][1] * 1e6 for q in qs], "--s", color=color, markersize=3,
                    label=f"{c.backend} prefill")
            a = c.answer
            if a is not None and a.vllm_default is not None and qs_all[0] <= a.vllm_default <= qs_all[-1]:
                ax.axvline(a.vllm_default, color=color, linestyle="-.", linewidth=0.8, alpha=0.5)
            if a is not None and _marked(a):
                q = a.lo if a.lo is not None else qs_all[0]
                ax.axvline(q, color=color, linestyle=":", linewidth=1)
                if a.interval:  # within noise between lo and hi: shade it, the threshold may be anywhere in it
                    ax.axvspan(q, a.hi, color=color, alpha=0.12, linewidth=0)
                text = f"decode ≤ q{a.label()}" + (f" · vLLM {a.vllm_default}" if a.vllm_default is not None else "")
                if a.flips > 1:
                    text += f" · {a.flips} flips"
                right = q > q_mid  # label to the left of the line, so it stays inside the axes
                ax.annotate(text, (q, 0), xycoords=("data", "axes fraction"),
                            xytext=(-3 if right else 3, 4 + 10 * order[c.backend]), textcoords="offset points",
                            ha="right" if right else "left", va="bottom", fontsize=7, color=color,
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
        if len(qs_all) > 1 and qs_all[-1] / qs_all[0] > 16:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(plain)
        times = [t * 1e6 for c in panels[key] for pair in c.times.values() for t in pair]
        if max(times) / min(times) > _LOG_SCALE_SPAN:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
        labelled = [order[c.backend] for c in panels[key] if _marked(c.answer)]
        if labelled:  # lower the y axis so the stacked "decode ≤ q" labels sit below every data point
            band = (4 + 10 * max(labelled) + 12) / (72 * 3.6 - 80)  # label band / plot height (~200 pt)
            _lower_bottom(ax, min(times), band)
        ax.set_xlabel("query length q")
        ax.set_ylabel("median µs per layer call")
        ax.set_title(f"batch size {batch_size}" + (f", kv {kv}" if kv else ""))
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    # one legend for the figure, below the panels (the figure is constrained, so "outside" makes room)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(4, len(legend)), fontsize=8)
    fig.suptitle(title or "Decode vs prefill pipeline")
    return _save(fig, path)


def _marked(answer: Any) -> bool:
    """Whether the plot draws a threshold line and label for a crossover answer."""
    return answer is not None and (answer.lo is not None or answer.interval)


PLOTS: dict[str, Callable[..., Path | None]] = {"bars": backend_bars, "sweep": sweep_heatmap,
                                                "crossover": crossover_plot}


def make_plots(results: Sequence[CaseOutcome], out_dir: str | Path, stem: str = "attnbench") -> list[Path]:
    """Every plot that applies, per study x family: ``<out_dir>/<stem>.<study>.<family>.<kind>.png``."""
    written = []
    for (study, family), group in group_results(results).items():
        for kind, plot in PLOTS.items():
            name = f"{stem}.{_slug(study)}.{_slug(family)}.{kind}.png"
            path = plot(group, Path(out_dir) / name, title=f"{study} · {family}")
            if path is not None:
                written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``plot RESULTS --out DIR``: write every applicable PNG; exit 1 if the file has nothing to plot."""
    from attnbench.reporting.command_line import Once, OneLineParser
    from attnbench.results.exports import ResultsFileError, load_results, unusable_folder_reason

    parser = OneLineParser(prog="benchmark.py plot", description="Plot saved attnbench results.")
    parser.add_argument("results",
                        help="attnbench JSON/JSONL, upstream attention_benchmarks JSON or pytest-benchmark JSON")
    parser.add_argument("--out", default=".", metavar="DIR", action=Once, help="folder for the PNGs (default: .)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    reason = unusable_folder_reason(args.out)
    if reason is not None:  # checked before any work: one line, no traceback
        print(f"error: --out {args.out}: cannot write plots there: {reason}", file=sys.stderr)
        return 2
    try:
        loaded = load_results(args.results)
    except ResultsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stem = Path(args.results).name.split(".")[0] or "attnbench"
    written = make_plots(loaded.results, args.out, stem)
    for path in written:
        print(path)
    if not written:
        print(f"nothing to plot in {args.results}: no timed results", file=sys.stderr)
        return 1
    return 0


def _lower_bottom(ax: Any, lowest: float, band: float) -> None:
    """Lower the y axis' bottom so ``lowest`` sits ``band`` (a fraction of the height) above it."""
    log = ax.get_yscale() == "log"
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    unscale = (lambda v: 10 ** v) if log else (lambda v: v)
    bottom, top = (scale(v) for v in ax.get_ylim())
    wanted = (scale(lowest) - band * top) / (1 - band)
    if wanted < bottom:
        ax.set_ylim(unscale(wanted), unscale(top))


def _luminance(rgba: Sequence[float]) -> float:
    red, green, blue = rgba[:3]
    return 0.299 * red + 0.587 * green + 0.114 * blue


def _backend_colors(backends: Any) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {b: palette(i % 10) for i, b in enumerate(dict.fromkeys(backends))}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


if __name__ == "__main__":
    sys.exit(main())
