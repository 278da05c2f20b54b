"""The axis table (attnbench/spec/axes.py): what it declares is what the parametrization, the ids and the case
point do."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from attnbench.pytest_plugin import plugin
from attnbench.spec import axes
from attnbench.spec import backends as registry
from attnbench.spec.axes import AXES, Bench, CasePoint, case_count, case_of_key, joined_id, labelled_values
from attnbench.spec.study import StudyError, build_study


def case_id(bench: Bench, used, values) -> str:
    """A case's test id from its axes' values, as the plugin joins them."""
    return joined_id(axis.ident(bench, value) for axis, value in zip(used, values))


def _bench(family: str = "attention", mode: str = "standard", kind: str = registry.DENSE, yaml=None, **cli) -> Bench:
    return Bench(build_study(yaml, {"device": "cpu", **cli}), family, mode, kind)


def test_case_point_has_one_field_per_axis_in_the_tables_order():
    assert [f.name for f in dataclasses.fields(CasePoint)] == [axis.field for axis in AXES]
    assert len({axis.argname for axis in AXES}) == len(AXES)


def test_every_axis_is_a_fixture_that_bench_case_takes(request):
    # parametrize may name only fixtures the test takes: bench_case's signature is the table's argnames, and each
    # is a registered fixture whose value, where a benchmark does not apply the axis, is the row's default
    taken = list(inspect.signature(plugin._bench_case).parameters)
    assert taken == ["request", "bench_study", *axes.ARGNAMES]
    assert [request.getfixturevalue(axis.argname) for axis in AXES] == [axis.default for axis in AXES]


def test_the_axes_that_apply_follow_family_mode_and_kind():
    names = lambda bench: [a.field for a in axes.axes_of(bench)]  # noqa: E731
    assert names(_bench()) == ["backend", "batch_spec", "timed_region"]
    assert names(_bench("mla", "mha_vs_mqa", registry.SPARSE, backends=("FLASHMLA_SPARSE",))) == [
        "backend", "batch_spec", "timed_region", "topk_pattern", "pipeline"]
    swept = _bench(sweep_param="num_kv_splits", sweep_values=["2", "4"], backends=("REFERENCE",))
    assert names(swept) == ["backend", "batch_spec", "timed_region", "sweep_values"]


def test_ids_leave_out_the_default_region_and_join_the_rest_in_table_order():
    bench = _bench("mla", "decode_vs_prefill", backends=("FLASHMLA",))
    used = axes.axes_of(bench)
    assert [a.field for a in used] == ["backend", "batch_spec", "timed_region", "pipeline"]
    assert case_id(bench, used, ("FLASHMLA", "8q1s1k", "layer", "decode")) == "FLASHMLA-8q1s1k-decode"
    assert case_id(bench, used, ("FLASHMLA", "8q1s1k", "attention", "prefill")) == \
        "FLASHMLA-8q1s1k-attention-only-prefill"


def test_labelled_values_give_the_parts_that_the_id_joins():
    bench = _bench(backends=("REFERENCE",), batch_specs=("q1s1k",), timed_region=("layer", "attention"))
    used = axes.axes_of(bench)
    labelled = labelled_values(bench, used)
    assert labelled[2] == [("layer", ""), ("attention", "attention-only")]
    assert joined_id(part for _, part in (labelled[0][0], labelled[1][0], labelled[2][1])) == \
        case_id(bench, used, ("REFERENCE", "q1s1k", "attention")) == "REFERENCE-q1s1k-attention-only"


def test_case_count_is_the_product_and_names_its_factors():
    bench = _bench(backends=("REFERENCE",), batch_specs=("q1s1k", "q2s1k"), timed_region=("layer", "attention"),
                   sweep_param="num_kv_splits", sweep_values=["1", "2", "4"])
    count, factors = case_count(bench)
    assert count == 1 * 2 * 2 * 3
    assert factors == "1 backends x 2 batch specs x 2 timed regions x 3 sweep values"


def test_the_sweep_product_is_counted_without_being_made(monkeypatch):
    bench = _bench(backends=("REFERENCE",), sweep_param=["num_kv_splits", "reorder_batch_threshold"],
                   sweep_values=[[str(i) for i in range(1, 1001)]] * 2)
    monkeypatch.setattr(axes.sweeping, "grid", lambda sweeps: pytest.fail("the product was made to count it"))
    assert case_count(bench)[0] > axes.MAX_CASES


def test_the_specs_are_resolved_once_so_their_notes_are_said_once():
    bench = _bench(backends=("REFERENCE",), batch_specs=("q1s64", "2q1s64"), yaml={"batch_sizes": [2, 1]})
    case_count(bench)
    first = list(bench.notes)
    assert first, "repeating 2 x q1s64 = 2q1s64 is noted"
    assert bench.specs == bench.specs and bench.notes == first


def test_a_point_read_from_params_composes_the_case_its_key_names():
    bench = _bench(backends=("REFERENCE",), batch_specs=("2q16_2q1s64",), sweep_param="num_kv_splits",
                   sweep_values=["2"])
    point = CasePoint.of({"bench_backend": "REFERENCE", "bench_spec": "2q16_2q1s64", "bench_sweep_values": [2]},
                         "attention")
    assert point is not None and point.backend.name == "REFERENCE" and point.sweep_values == (2,)
    case = point.case(bench.study)
    assert case_of_key(bench.study, case.key()) == case


def test_params_without_a_backend_or_spec_are_not_a_case():
    assert CasePoint.of({}, "attention") is None
    assert CasePoint.of({"bench_backend": "REFERENCE"}, "attention") is None
    assert CasePoint.of({"bench_backend": "NOT_A_BACKEND", "bench_spec": "q1"}, "attention") is None
    assert CasePoint.of({"bench_backend": "REFERENCE", "bench_spec": "q1"}, None) is None  # no family to look in


def test_counting_a_study_with_too_many_batch_specs_is_refused_before_they_expand():
    bench = _bench(backends=("REFERENCE",), batch_specs=("q1", "q2", "q3"),
                   yaml={"batch_sizes": list(range(1, 100_001))})
    with pytest.raises(StudyError, match="300000 specs, more than the limit"):
        case_count(bench)
