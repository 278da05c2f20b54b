"""The summary tables and the decode/prefill crossover analysis."""

from __future__ import annotations

import re

import pytest

from attnbench.reporting.analysis import crossover_table
from attnbench.reporting.cells import format_time_us
from attnbench.reporting.console import render_summary
from attnbench.results.outcome import FAILED, SKIPPED, CaseOutcome
from tests.factories import timed, untimed


def rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("│")]


# ------------------------------------------------------------------ digits

@pytest.mark.parametrize("seconds, noise, shown", [
    (13.37e-6, 0.02, "13.4"),  # noise 0.27 µs: tenths are the last meaningful digit
    (13.37e-6, 0.002, "13.37"),  # noise 0.027 µs: hundredths
    (13.37e-6, 0.2, "13"),  # noise 2.7 µs: whole µs
    (4567.8e-6, 0.01, "4568"),  # noise 46 µs: never rounded into the tens, no exponent
    (0.5123e-6, None, "0.512"),  # no noise estimate: 3 significant digits
    (13.37e-6, 0.0, "13.4"),
])
def test_time_keeps_the_digits_the_noise_supports(seconds: float, noise: float | None, shown: str) -> None:
    assert format_time_us(seconds, noise) == shown


# ------------------------------------------------------------------ the standard table

def test_rows_are_ordered_by_size_not_by_spelling_or_arrival() -> None:
    results = [timed("A", spec, 1e-5) for spec in ("q2k", "8q1s1k", "q1s4k", "q1s1k", "2q2k_32q1s1k")]
    order = [row.split("│")[1].strip() for row in rows(render_summary(results))]
    # total new tokens, then total kv: q1s1k (1, 1k) < q1s4k (1, 4k) < 8q1s1k (8) < q2k (2048) < mixed (4128)
    assert order == ["q1s1k", "q1s4k", "8q1s1k", "q2k", "2q2k_32q1s1k"]


def test_vs_best_compares_backends_within_a_row() -> None:
    text = render_summary([timed("FAST", "q1s1k", 10e-6), timed("SLOW", "q1s1k", 12.5e-6)])
    [row] = rows(text)
    assert "best" in row and "+25%" in row


def test_rates_come_from_the_result() -> None:
    r = timed("A", "q1s1k", 10e-6, tflops=1.234, gbps=987.6, pct_of_peak=42.0)
    [row] = rows(render_summary([r]))
    assert "1.23" in row and "988" in row and "42" in row


def test_peak_and_memory_columns_only_when_known() -> None:
    plain = render_summary([timed("A", "q1s1k", 10e-6)])
    assert "% peak" not in plain and "MiB" not in plain
    with_both = render_summary([timed("A", "q1s1k", 10e-6, pct_of_peak=50.0, peak_memory_bytes=3 * 2**20)])
    assert "% peak" in with_both and "MiB" in with_both and "3.0" in with_both
    estimate = render_summary([timed("A", "q1s1k", 10e-6, kv_memory_bytes=2**20)])
    assert "~1.0" in estimate  # an estimate (no measured peak) is marked as such


def test_bound_column_shows_the_per_phase_label_of_a_mixed_batch() -> None:
    from attnbench.reporting.tables import rate

    assert "bound" not in render_summary([timed("A", "q1s1k", 10e-6)])
    decode = timed("A", "q1s1k", 10e-6, bound="memory", gbps=900.0, pct_of_peak=30.0)
    mixed = timed("A", "q8k_32q1s1k", 1e-3, bound="compute", tflops=500.0, pct_of_peak=60.0,
                  bound_label="decode:mem+prefill:comp")
    table = rows(render_summary([decode, mixed]))
    assert "memory" in table[0] and "decode:mem+prefill:comp" in table[1]
    assert rate(mixed) == "500 TFLOP/s (60 %) decode:mem+prefill:comp" and rate(decode) == "900 GB/s (30 %)"


def test_skips_share_a_numbered_footnote_with_their_reason() -> None:
    reason = "FLASH_ATTN requires SM80+ (found none)"
    results = [timed("REFERENCE", "q1s1k", 1e-5), timed("REFERENCE", "q2k", 1e-3),
               untimed("FLASH_ATTN", "q1s1k", SKIPPED, reason, family="attention", study="s"),
               untimed("FLASH_ATTN", "q2k", SKIPPED, reason, family="attention", study="s")]
    text = render_summary(results)
    assert all("skip[1]" in row for row in rows(text))
    assert text.count(reason) == 1 and "[1] skipped (2): " + reason in text


def test_failures_are_red_with_their_error() -> None:
    error = "AssertionError: FLASH_ATTN q1s1k: output does not match REFERENCE: rel_error=3.1e-01"
    results = [timed("REFERENCE", "q1s1k", 1e-5),
               untimed("FLASH_ATTN", "q1s1k", FAILED, error, family="attention", study="s")]
    plain = render_summary(results)
    assert "FAILED[1]" in plain and error in plain
    colored = render_summary(results, color=True)
    red_failed = re.search(r"\x1b\[[0-9;]*31m[^\x1b]*FAILED\[1\]", colored)
    red_error = re.search(r"\x1b\[[0-9;]*31m[^\x1b]*rel_error=3\.1e-01", colored)
    assert red_failed and red_error


def test_grouping_uses_structured_fields_not_test_ids() -> None:
    # misleading ids must not matter: the study and family fields decide the tables
    a = timed("REFERENCE", "q1s1k", 1e-5, study="alpha", family="attention", fullname="test_mla[x]")
    b = timed("REFERENCE", "q1s1k", 2e-5, study="beta", family="mla", fullname="test_attention[x]")
    text = render_summary([a, b])
    assert "alpha · attention" in text and "beta · mla" in text
    assert len(rows(text)) == 2  # one row in each table, not two backends in one


def test_not_timed_results_say_so() -> None:
    r = untimed("REFERENCE", "q1s1k", family="attention", study="s")  # --benchmark-disable / xdist
    assert "not timed" in render_summary([r])


# ------------------------------------------------------------------ sweeps and pipelines

def test_sweep_table_has_a_column_per_backend_and_value_and_drops_all_skipped_columns() -> None:
    results = []
    for value, seconds in (("auto", 10e-6), (1, 14e-6), (4, 8e-6)):
        results.append(timed("CUTLASS_MLA", "q1s1k", seconds, sweep_param="num_kv_splits", sweep_value=value))
    results.append(timed("FLASHINFER_MLA", "q1s1k", 11e-6, sweep_param="num_kv_splits", sweep_value="auto"))
    results.append(untimed("FLASHINFER_MLA", "q1s1k", SKIPPED, "no num_kv_splits knob", family="attention", study="s",
                           sweep_param="num_kv_splits", sweep_value=4))
    text = render_summary(results)
    header = "\n".join(line for line in text.splitlines() if line.startswith("┃"))
    assert header.count("CUTLASS_MLA") == 3 and header.count("FLASHINFER_MLA") == 1
    assert "sweep of num_kv_splits" in text and "no num_kv_splits knob" in text
    assert "best" in text and "+75%" in text  # 14 µs vs the best, 8 µs


# ------------------------------------------------------------------ crossover

def pipelines(backend: str, batch_size: int, times: dict[int, tuple[float, float]], kv: int = 1024,
              study: str = "reorder") -> list[CaseOutcome]:
    out = []
    for q, (decode, prefill) in times.items():
        spec = (f"{batch_size}" if batch_size > 1 else "") + f"q{q}s{kv}"
        out.append(timed(backend, spec, decode, pipeline="decode", study=study, family="mla"))
        out.append(timed(backend, spec, prefill, pipeline="prefill", study=study, family="mla"))
    return out


def test_crossover_finds_the_largest_q_where_decode_wins_and_both_speedups() -> None:
    results = pipelines("FLASHMLA", 4, {1: (10e-6, 40e-6), 2: (20e-6, 40e-6), 4: (30e-6, 36e-6),
                                        8: (60e-6, 40e-6), 16: (120e-6, 40e-6)})
    [c] = crossover_table(results)
    assert (c.backend, c.batch_size, c.kv_len, c.q_lens) == ("FLASHMLA", 4, 1024, [1, 2, 4, 8, 16])
    assert (c.decode_up_to, c.prefill_from, c.flips) == (4, 8, 1)
    assert c.decode_speedup == pytest.approx((4.0 * 2.0 * 1.2) ** (1 / 3))  # geometric mean over q <= 4
    assert c.prefill_speedup == pytest.approx((1.5 * 3.0) ** 0.5)  # over q > 4


def test_crossover_when_one_pipeline_always_wins() -> None:
    always_prefill = pipelines("FLASHMLA", 64, {1: (50e-6, 40e-6), 2: (90e-6, 45e-6)})
    always_decode = pipelines("FLASHMLA", 1, {1: (5e-6, 40e-6), 2: (6e-6, 41e-6)})
    by_size = {c.batch_size: c for c in crossover_table(always_prefill + always_decode)}
    assert by_size[64].decode_up_to is None and by_size[64].prefill_from == 1
    assert by_size[64].decode_speedup is None and by_size[64].prefill_speedup == pytest.approx((1.25 * 2) ** 0.5)
    assert by_size[1].decode_up_to == 2 and by_size[1].prefill_from is None and by_size[1].prefill_speedup is None


def test_crossover_flags_a_noisy_boundary() -> None:
    # decode wins at 1, loses at 2, wins again at 4: the threshold is the last q before prefill first wins (1),
    # and 3 flips say the boundary is noisy or non-monotonic
    [c] = crossover_table(pipelines("FLASHMLA", 2, {1: (10e-6, 20e-6), 2: (21e-6, 20e-6), 4: (19e-6, 20e-6),
                                                     8: (40e-6, 20e-6)}))
    assert (c.decode_up_to, c.prefill_from, c.flips) == (1, 2, 3)
    assert c.answer is not None and c.answer.flip_points == [2, 4, 8]


def test_crossover_splits_kv_lengths_and_ignores_unpaired_or_untimed_cases() -> None:
    results = pipelines("FLASHMLA", 2, {1: (1e-5, 2e-5), 8: (3e-5, 2e-5)}, kv=1024)
    results += pipelines("FLASHMLA", 2, {1: (1e-5, 2e-5), 8: (1e-5, 2e-5)}, kv=4096)
    results.append(timed("FLASHMLA", "2q16s1024", 1e-5, pipeline="decode", study="reorder", family="mla"))
    results.append(untimed("FLASHMLA", "2q32s1024", SKIPPED, "x", family="mla", study="reorder", pipeline="decode"))
    rows_ = crossover_table(results)
    assert [(c.kv_len, c.q_lens, c.decode_up_to) for c in rows_] == [(1024, [1, 8], 1), (4096, [1, 8], 8)]


def test_crossover_appears_under_the_pipeline_table() -> None:
    text = render_summary(pipelines("FLASHMLA", 4, {1: (1e-5, 4e-5), 8: (6e-5, 4e-5)}))
    assert "decode vs prefill" in text and "Decode vs prefill crossover" in text
    [crossover_row] = [r for r in rows(text) if r.split("│")[1].strip() == "FLASHMLA"]
    cells = [c.strip() for c in crossover_row.split("│")[1:-1]]
    assert cells[1:3] == ["4", "1024"] and cells[4] == "1" and cells[6] == "8"


def test_best_sweep_value_per_spec_against_auto():
    from attnbench.reporting.analysis import best_sweep_values
    def r(backend, spec, value, us):
        return timed(backend, spec, us * 1e-6, noise=0.0, rounds=10, family="mla", study="s",
                     sweep_param="reorder_batch_threshold", sweep_value=value)

    rows = best_sweep_values([r("FLASHMLA", "16q4s1k", "auto", 110.0), r("FLASHMLA", "16q4s1k", 1, 7000.0),
                              r("FLASHMLA", "16q4s1k", 8, 100.0), r("FLASH_ATTN_MLA", "16q4s1k", "auto", 75.0),
                              r("FLASH_ATTN_MLA", "16q4s1k", 1, 7100.0)])
    by_backend = {b.backend: b for b in rows}
    assert by_backend["FLASHMLA"].best_value == 8
    assert by_backend["FLASHMLA"].speedup_over_auto == pytest.approx(1.1)
    assert by_backend["FLASH_ATTN_MLA"].best_value == "auto"
    assert by_backend["FLASH_ATTN_MLA"].values_timed == 2


def test_best_sweep_value_within_noise_is_flagged():
    from attnbench.reporting.analysis import BestSweepValue

    close = BestSweepValue("FLASHMLA", "16q4s1k", "reorder_batch_threshold", 8, 100e-6, 101e-6, 3, noise=0.01)
    clear = BestSweepValue("FLASHMLA", "16q4s1k", "reorder_batch_threshold", 8, 100e-6, 120e-6, 3, noise=0.01)
    assert close.within_noise and not clear.within_noise


def test_crossover_answers_reach_the_json_and_a_sibling_csv(tmp_path) -> None:
    import csv as _csv
    import json as _json

    from attnbench.reporting.formatter import ResultsFormatter, crossover_csv_path

    results = pipelines("FLASHMLA", 4, {1: (10e-6, 40e-6), 2: (20e-6, 40e-6), 4: (30e-6, 36e-6),
                                        8: (60e-6, 40e-6), 16: (120e-6, 40e-6)})
    results += pipelines("FLASH_ATTN_MLA", 2, {1: (10e-6, 40e-6), 2: (50e-6, 40e-6)})
    formatter = ResultsFormatter()
    formatter.save_json(results, tmp_path / "r.json")
    formatter.save_csv(results, tmp_path / "r.csv")
    doc = _json.loads((tmp_path / "r.json").read_text())
    answers = {(c["backend"], c["batch_size"]): c for c in doc["crossovers"]}
    assert answers[("FLASHMLA", 4)]["reorder_batch_threshold"] == 4 and answers[("FLASHMLA", 4)]["prefill_from"] == 8
    assert answers[("FLASHMLA", 4)]["vllm_default"] == 128 and answers[("FLASHMLA", 4)]["flips"] == 1
    assert answers[("FLASH_ATTN_MLA", 2)]["reorder_batch_threshold"] == 1
    with open(crossover_csv_path(tmp_path / "r.csv"), newline="") as f:
        rows = list(_csv.DictReader(f))
    assert crossover_csv_path(tmp_path / "r.csv").name == "r.crossover.csv"
    assert {(r["backend"], r["batch_size"], r["reorder_batch_threshold"]) for r in rows} == {
        ("FLASHMLA", "4", "4"), ("FLASH_ATTN_MLA", "2", "1")}
    plain = [r for r in results if r.key.pipeline is None]
    formatter.save_json(plain, tmp_path / "p.json")
    assert "crossovers" not in _json.loads((tmp_path / "p.json").read_text())


def test_mha_vs_mqa_over_a_num_q_heads_sweep_has_a_column_per_heads_and_pipeline() -> None:
    """Upstream emulates tensor-parallel degrees with a num_q_heads sweep beside the pipelines: each (heads, pipeline)
    is its own column, none overwriting another."""
    results = [timed("FLASHMLA_SPARSE", "q1s512", t, family="mla", study="m", pipeline=p,
                     sweep_param="num_q_heads", sweep_value=h)
               for h, p, t in ((16, "mha", 1e-5), (16, "mqa", 2e-5), (128, "mha", 3e-5), (128, "mqa", 4e-5))]
    text = render_summary(results)
    assert "mha vs mqa · sweep of num_q_heads" in text
    [row] = [r for r in rows(text) if r.split("│")[1].strip() == "q1s512"]
    times = [c.strip().split()[0] for c in row.split("│")[2:-1] if c.strip()]
    assert times == [format_time_us(t, 0.01).split()[0] for t in (1e-5, 2e-5, 3e-5, 4e-5)]


def test_an_unstable_case_is_marked_and_named_with_its_spread() -> None:
    from dataclasses import replace

    from attnbench.reporting.console import warning_lines

    steady = timed("FLASH_ATTN", "q1s512", 1e-5)
    wide = timed("TRITON_ATTN", "q1s512", 2e-5)
    wide = replace(wide, record=replace(wide.record, timing=replace(wide.record.timing, spread_pct=23.0)))
    text = render_summary([steady, wide])
    [row] = [r for r in rows(text) if r.split("│")[1].strip() == "q1s512"]
    fast, slow = (next(c for c in row.split("│") if c.strip().startswith(format_time_us(t, 0.01).split()[0]))
                  for t in (1e-5, 2e-5))
    assert "≈" not in fast and "≈" in slow
    assert "≈ unstable: its rounds spread over more than 10 % of the median" in " ".join(text.split())
    assert warning_lines([steady, wide]) == ["1 case timed unstable (rounds' p10 to p90 over 10 % of the median): "
                                             "TRITON_ATTN q1s512 23 %"]
    assert warning_lines([steady]) == []
    moving = replace(steady, record=replace(steady.record, verification=replace(
        steady.record.verification, after_timing={"status": "passed", "rerun_identical": False,
                                                  "rerun_max_abs_diff": 0.004})))
    assert warning_lines([moving]) == ["1 case gave another output on one more identical call (verified within "
                                       "tolerance both times; verification.after_timing.rerun_max_abs_diff): "
                                       "FLASH_ATTN q1s512 0.004"]
    replayed = replace(steady, record=replace(steady.record, verification=replace(
        steady.record.verification, after_timing={"status": "passed", "rerun_identical": True,
                                                  "timed_identical_to_first_call": False,
                                                  "timed_first_call_max_abs_diff": 0.002})))
    assert warning_lines([replayed]) == ["1 case timed an output other than the first, eager call's (a graph "
                                         "replay's, under the graph timer; verified within tolerance both times; "
                                         "verification.after_timing.timed_first_call_max_abs_diff): "
                                         "FLASH_ATTN q1s512 0.002"]
