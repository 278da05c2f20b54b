"""PNG plots from CaseOutcomes (live or saved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from attnbench.results.exports import load_results  # noqa: E402
from attnbench.reporting.formatter import ResultsFormatter  # noqa: E402
from attnbench.reporting import plots  # noqa: E402
from attnbench.results.outcome import SKIPPED, CaseOutcome  # noqa: E402
from tests import factories  # noqa: E402

DATA = Path(__file__).parent / "data"


def timed(backend: str, spec: str, seconds: float, **fields) -> CaseOutcome:
    fields.setdefault("family", "mla")
    return factories.timed(backend, spec, seconds, iqr=seconds * 0.01, rounds=10, **fields)


def image(path: Path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def assert_drawn(path: Path) -> None:
    pixels = image(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def sweep_results() -> list[CaseOutcome]:
    out = []
    for spec, base in (("64q1s1k", 40e-6), ("8q1s16k", 150e-6)):
        for value, factor in (("auto", 1.0), (1, 1.3), (4, 0.9)):
            out.append(timed("CUTLASS_MLA", spec, base * factor, sweep_param="num_kv_splits", sweep_value=value))
        out.append(factories.untimed("FLASHINFER_MLA", spec, SKIPPED, "no knob", family="mla", study="s",
                                     sweep_param="num_kv_splits", sweep_value=4))
    return out


def pipeline_results() -> list[CaseOutcome]:
    out = []
    for batch in (1, 16):
        for q in (1, 2, 4, 8, 16, 32, 64):
            spec = (f"{batch}" if batch > 1 else "") + f"q{q}s1k"
            out.append(timed("FLASHMLA", spec, 10e-6 * batch * q, pipeline="decode"))
            out.append(timed("FLASHMLA", spec, 40e-6 * batch + 2e-6 * batch * q, pipeline="prefill"))
    return out


def test_backend_bars_from_recorded_run(tmp_path: Path) -> None:
    results = load_results(DATA / "cpu_run.json").results
    attention = [r for r in results if r.key.family == "attention"]
    path = plots.backend_bars(attention, tmp_path / "bars.png", title="cpu run")
    assert path == tmp_path / "bars.png"
    assert_drawn(path)


def test_sweep_heatmap(tmp_path: Path) -> None:
    path = plots.sweep_heatmap(sweep_results(), tmp_path / "sweep.png")
    assert_drawn(path)


def test_crossover_plot(tmp_path: Path) -> None:
    path = plots.crossover_plot(pipeline_results(), tmp_path / "cross.png")
    assert_drawn(path)


def test_plots_that_do_not_apply_draw_nothing(tmp_path: Path) -> None:
    standard = load_results(DATA / "cpu_run.json").results
    assert plots.sweep_heatmap(standard, tmp_path / "a.png") is None
    assert plots.crossover_plot(standard, tmp_path / "b.png") is None
    assert plots.backend_bars(pipeline_results(), tmp_path / "c.png") is None  # every result has a pipeline
    assert plots.backend_bars([factories.untimed("A", "q1s1k", SKIPPED)], tmp_path / "d.png") is None
    assert not list(tmp_path.iterdir())


def test_make_plots_names_files_per_study_family_and_kind(tmp_path: Path) -> None:
    results = sweep_results() + [timed("A", "q1s1k", 1e-5, study="other study", family="attention")]
    written = plots.make_plots(results, tmp_path, stem="run")
    assert sorted(p.name for p in written) == ["run.other_study.attention.bars.png", "run.s.mla.sweep.png"]


def test_plot_command_on_saved_json(tmp_path: Path, capsys) -> None:
    saved = ResultsFormatter().save_json(pipeline_results() + sweep_results(), tmp_path / "results.json")
    assert plots.main([str(saved), "--out", str(tmp_path / "png")]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["results.s.mla.crossover.png", "results.s.mla.sweep.png"]
    for p in printed:
        assert_drawn(Path(p))


def test_plot_command_with_nothing_to_plot(tmp_path: Path, capsys) -> None:
    path = tmp_path / "skips.json"
    ResultsFormatter().save_json([factories.untimed("A", "q1s1k", SKIPPED, "x")], path)
    assert plots.main([str(path), "--out", str(tmp_path)]) == 1
    assert "nothing to plot" in capsys.readouterr().err
    assert json.loads(path.read_text())["results"]


@pytest.fixture
def figures(monkeypatch) -> list:
    """The matplotlib Figures the plots save, in order."""
    saved: list = []
    real_save = plots._save

    def keep(fig, path):
        saved.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_backend_bars_width_is_capped(tmp_path: Path, figures) -> None:
    many = [timed(b, f"{n}q1s1k", n * 1e-6) for n in range(1, 41) for b in ("A", "B", "C")]
    pixels = image(plots.backend_bars(many, tmp_path / "wide.png"))
    assert figures[0].get_figwidth() == plots._MAX_WIDTH
    assert pixels.shape[1] == round(plots._MAX_WIDTH * figures[0].dpi)
    plots.backend_bars(many[:6], tmp_path / "narrow.png")
    assert figures[1].get_figwidth() < plots._MAX_WIDTH


def test_sweep_heatmap_colours_noise_pale_and_is_symmetric_in_log(tmp_path: Path, figures) -> None:
    from matplotlib.colors import LogNorm

    noise = [timed("A", spec, base * factor, sweep_param="p", sweep_value=value)
             for spec, base in (("q1s1k", 1e-5), ("q1s2k", 2e-5)) for value, factor in (("auto", 1.0), (2, 0.99))]
    plots.sweep_heatmap(noise, tmp_path / "noise.png")
    norm = figures[0].axes[0].images[0].norm
    assert isinstance(norm, LogNorm)
    assert norm.vmax == pytest.approx(1.25) and norm.vmin == pytest.approx(1 / 1.25)  # 1.01x stays near the middle
    plots.sweep_heatmap(sweep_results(), tmp_path / "sweep.png")
    norm = figures[1].axes[0].images[0].norm
    assert norm.vmax == pytest.approx(1.3)  # the 1/1.3x cell sets the span
    assert norm.vmin * norm.vmax == pytest.approx(1.0)
    colourbar = figures[1].axes[-1]
    assert any(t.get_text().endswith("x") for t in colourbar.get_yticklabels())


def test_crossover_plot_has_one_figure_legend_below_the_panels(tmp_path: Path, figures) -> None:
    results = pipeline_results() + [timed("FLASH_ATTN_MLA", r.key.batch_spec, r.median * 0.8, pipeline=r.key.pipeline)
                                    for r in pipeline_results()]
    plots.crossover_plot(results, tmp_path / "cross.png")
    fig = figures[0]
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "FLASHMLA decode", "FLASHMLA prefill", "FLASH_ATTN_MLA decode", "FLASH_ATTN_MLA prefill"]
    renderer = fig.canvas.get_renderer()
    legend_box = legend.get_window_extent(renderer)
    assert all(legend_box.y1 <= ax.get_tightbbox(renderer).y0 + 1 for ax in fig.axes if ax.get_visible())
    assert sum(len(ax.texts) for ax in fig.axes) == 2 * 2  # both backends cross over in both panels
    for ax in fig.axes:  # the "decode ≤ q" labels stay inside their panel and apart from each other
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        frame = ax.get_window_extent(renderer)
        for box in boxes:
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1:])
