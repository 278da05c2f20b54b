"""Worked examples for the batch-spec grammar (``grammar`` package)."""

from __future__ import annotations

import re

import pytest

import grammar
import grammar.batch_spec
from grammar import (
    MAX_REQUESTS,
    BatchRequest,
    BatchSpecError,
    format_batch_spec,
    generate_batch_specs_from_ranges,
    get_batch_stats,
    get_batch_type,
    parse_batch_spec,
    to_batch_spec,
)


def seg(text: str) -> str:
    """Regex fragment matching the quoted segment in an error message."""
    return re.escape(repr(text))


# --------------------------------------------------------------------------- #
# public surface
# --------------------------------------------------------------------------- #


def test_api_is_importable_from_both_modules() -> None:
    for name in (
        "BatchSpecError",
        "BatchRequest",
        "parse_batch_spec",
        "get_batch_type",
        "format_batch_spec",
        "get_batch_stats",
        "to_batch_spec",
    ):
        assert getattr(grammar, name) is getattr(grammar.batch_spec, name)
    assert issubclass(BatchSpecError, ValueError)
    from grammar.ranges import generate_batch_specs_from_ranges as g

    assert g is generate_batch_specs_from_ranges


# --------------------------------------------------------------------------- #
# BatchRequest
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("q", "kv", "kind", "ctx"),
    [
        (2048, 2048, "prefill", 0),
        (1, 1, "prefill", 0),  # one-token prefill: no prior context
        (1, 1024, "decode", 1023),
        (4, 1024, "extend", 1020),
        (2048, 4096, "extend", 2048),
    ],
)
def test_request_kind(q: int, kv: int, kind: str, ctx: int) -> None:
    r = BatchRequest(q, kv)
    assert r.kind == kind
    assert r.context_len == ctx
    assert [r.is_prefill, r.is_decode, r.is_extend] == [kind == "prefill", kind == "decode", kind == "extend"]


def test_request_is_frozen_and_validated() -> None:
    r = BatchRequest(1, 2)
    with pytest.raises(AttributeError):
        r.q_len = 3  # type: ignore[misc]
    for bad in [(0, 1), (2, 1), (True, 1), (1.0, 2), (1, 2**31 + 1)]:
        with pytest.raises(BatchSpecError):
            BatchRequest(*bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# parse_batch_spec: accepted forms
# --------------------------------------------------------------------------- #


def test_prefill_q2k() -> None:
    reqs = parse_batch_spec("q2k")
    assert reqs == [BatchRequest(2048, 2048)]
    assert reqs[0].is_prefill
    assert get_batch_type(reqs) == "prefill"


def test_decode_8q1s1k() -> None:
    reqs = parse_batch_spec("8q1s1k")
    assert reqs == [BatchRequest(1, 1024)] * 8
    assert all(r.is_decode for r in reqs)
    assert get_batch_type(reqs) == "decode"


def test_extend_16q4s1k() -> None:
    reqs = parse_batch_spec("16q4s1k")
    assert reqs == [BatchRequest(4, 1024)] * 16
    assert all(r.is_extend for r in reqs)
    assert get_batch_type(reqs) == "spec-decode"


def test_mixed_2q2k_32q1s1k() -> None:
    reqs = parse_batch_spec("2q2k_32q1s1k")
    assert reqs == [BatchRequest(2048, 2048)] * 2 + [BatchRequest(1, 1024)] * 32
    assert get_batch_type(reqs) == "mixed"


def test_q1_is_one_token_prefill() -> None:
    assert parse_batch_spec("q1") == [BatchRequest(1, 1)]
    assert get_batch_type(parse_batch_spec("q1")) == "prefill"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("  q2k  ", [BatchRequest(2048, 2048)]),
        ("\tq2k\n", [BatchRequest(2048, 2048)]),
        ("q1024", [BatchRequest(1024, 1024)]),  # 'k' is optional shorthand
        ("q1ks2k", [BatchRequest(1024, 2048)]),
        ("q100s1000", [BatchRequest(100, 1000)]),
        ("1q1", [BatchRequest(1, 1)]),  # explicit count 1 is fine
        ("q2k_q1s2k_q2k", [BatchRequest(2048, 2048), BatchRequest(1, 2048), BatchRequest(2048, 2048)]),
        ("q2097152k", [BatchRequest(2**31, 2**31)]),  # exactly the 2**31 limit
    ],
)
def test_accepted_forms(spec: str, expected: list[BatchRequest]) -> None:
    assert parse_batch_spec(spec) == expected


def test_extend_with_large_q_is_extend_not_spec_decode() -> None:
    assert get_batch_type(parse_batch_spec("4q2ks4k")) == "extend"
    assert get_batch_type(parse_batch_spec("q16s1k")) == "spec-decode"
    assert get_batch_type(parse_batch_spec("q17s1k")) == "extend"
    # One big extend spoils "spec-decode" for the whole homogeneous batch.
    assert get_batch_type(parse_batch_spec("q4s1k_q64s1k")) == "extend"


def test_get_batch_type_empty_raises() -> None:
    with pytest.raises(BatchSpecError, match="empty"):
        get_batch_type([])


# --------------------------------------------------------------------------- #
# parse_batch_spec: rejections name the segment and the reason
# --------------------------------------------------------------------------- #


def test_uppercase_message_exact() -> None:
    with pytest.raises(BatchSpecError) as info:
        parse_batch_spec("8q1S1k")
    assert str(info.value) == (
        "batch spec '8q1S1k': segment '8q1S1k': uppercase letters are not allowed (did you mean '8q1s1k'?)"
    )


@pytest.mark.parametrize(
    ("spec", "segment", "reason"),
    [
        # uppercase, with and without a lowercase hint
        ("q2k_8Q1S1K", "8Q1S1K", r"uppercase letters are not allowed \(did you mean '8q1s1k'\?\)"),
        ("Q0", "Q0", r"uppercase letters are not allowed$"),
        # zeros
        ("0q1s1k", "0q1s1k", r"count must be >= 1"),
        ("q1_q0", "q0", r"q_len must be >= 1"),
        ("q0k", "q0k", r"q_len must be >= 1"),
        ("q1s0", "q1s0", r"seq_len must be >= 1"),
        # s is the total kv length
        ("q2ks1k", "q2ks1k", r"seq_len \(1024\) < q_len \(2048\)"),
        # whitespace inside
        ("q1 _q2", "q1 ", r"whitespace"),
        ("q 1", "q 1", r"whitespace"),
        ("q1\t_q2", "q1\t", r"whitespace"),
        # unknown letters / suffixes
        ("q1x", "q1x", r"unknown letter 'x'"),
        ("q2k_q1s1m", "q1s1m", r"unknown letter 'm'"),
        ("q1-2", "q1-2", r"unknown character '-'"),
        ("q1é", "q1é", r"unknown letter 'é'"),
        ("q٣", "q٣", r"unknown character"),  # non-ASCII digit
        ("q1kk", "q1kk", r"repeated 'k'"),
        ("q1k0", "q1k0", r"unexpected '0' after 'q1k'"),
        ("8kq1", "8kq1", r"'k' \(x1024\) is only allowed"),
        ("q", "q", r"followed by a number"),
        ("q1s", "q1s", r"followed by a number"),
        ("123", "123", r"missing 'q<q_len>'"),
        ("q1q2", "q1q2", r"may each appear once"),
        ("s1kq1", "s1kq1", r"must come after"),
        # legacy spellings get a hint
        ("q1kkv2k", "q1kkv2k", r"legacy 'kv<kv_len>'.*s<seq_len>.*did you mean 'q1ks2k'"),
        ("8q1kv1k", "8q1kv1k", r"did you mean '8q1s1k'"),
        ("8s1k", "8s1k", r"legacy decode form.*did you mean '8q1s1k'"),
        ("2q1k_32s1k", "32s1k", r"did you mean '32q1s1k'"),
        ("spec4s1k", "spec4s1k", r"legacy 'spec.*did you mean 'q4s1k'"),
        ("8spec8s2k", "8spec8s2k", r"did you mean '8q8s2k'"),
        ("chunk8q16k", "chunk8q16k", r"legacy 'chunk"),
        # absurd numbers
        ("q3000000k", "q3000000k", r"too large"),
        ("q2147483649", "q2147483649", r"too large"),
        ("q1s99999999999999999999999", "q1s99999999999999999999999", r"too large"),
        ("2000000000q1", "2000000000q1", r"more than the limit"),
        # leading zeros are rejected (one spelling per batch)
        ("08q1", "08q1", r"leading zeros"),
        ("q01k", "q01k", r"leading zeros"),
        ("q1s001k", "q1s001k", r"leading zeros"),
    ],
)
def test_rejections_name_segment(spec: str, segment: str, reason: str) -> None:
    with pytest.raises(BatchSpecError, match=rf"segment {seg(segment)}: .*{reason}") as info:
        parse_batch_spec(spec)
    assert "\n" not in str(info.value)  # one line, even for specs holding newlines


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ("q1__q2", r"segment 2 of 3 is empty \(between 'q1' and 'q2'\)"),
        ("_q1", r"segment 1 of 2 is empty \(between start and 'q1'\)"),
        ("q1_", r"segment 2 of 2 is empty \(between 'q1' and end\)"),
        ("_", r"segment 1 of 2 is empty"),
    ],
)
def test_empty_segment(spec: str, where: str) -> None:
    with pytest.raises(BatchSpecError, match=rf"batch spec {seg(spec)}: {where}"):
        parse_batch_spec(spec)


@pytest.mark.parametrize("spec", ["", "   ", "\n"])
def test_empty_spec(spec: str) -> None:
    with pytest.raises(BatchSpecError, match="empty batch spec"):
        parse_batch_spec(spec)


@pytest.mark.parametrize("value", [None, 5, b"q1", ["q1"]])
def test_non_str_is_batch_spec_error(value: object) -> None:
    with pytest.raises(BatchSpecError, match="must be a str"):
        parse_batch_spec(value)  # type: ignore[arg-type]


def test_huge_digit_string_is_batch_spec_error() -> None:
    # Past Python's int-max-str-digits limit int() raises ValueError; we must not.
    with pytest.raises(BatchSpecError, match="too large"):
        parse_batch_spec("q" + "9" * 5000)
    with pytest.raises(BatchSpecError, match="must be >= 1"):
        parse_batch_spec("q" + "0" * 5000)


def test_long_spec_is_truncated_in_message_but_segment_kept() -> None:
    spec = "_".join(["q1"] * 200) + "_qx"
    with pytest.raises(BatchSpecError) as info:
        parse_batch_spec(spec)
    msg = str(info.value)
    assert "...': segment 'qx'" in msg
    assert len(msg) < 400


# --------------------------------------------------------------------------- #
# format / stats / canonical spec
# --------------------------------------------------------------------------- #


def test_format_example() -> None:
    reqs = parse_batch_spec("2q2k_q4s1k_32q1s1k")
    assert format_batch_spec(reqs) == "2 prefill (2x2k), 1 extend (1xq4kv1k), 32 decode (32x1k)"


def test_format_groups_order_and_item_counting() -> None:
    # Spec order is decode, prefill, extend, decode; output is grouped
    # prefill, extend, decode with identical sizes counted together.
    reqs = parse_batch_spec("4q1s1k_q100_q1ks3000_2q1s2k_q1s1k_q2k")
    assert format_batch_spec(reqs) == (
        "2 prefill (1x100, 1x2k), 1 extend (1xq1kkv3000), 7 decode (5x1k, 2x2k)"
    )


def test_format_empty() -> None:
    assert format_batch_spec([]) == ""


def test_stats_mixed() -> None:
    stats = get_batch_stats(parse_batch_spec("2q2k_q4s1k_32q1s1k"))
    assert stats == {
        "total_requests": 35,
        "num_decode": 32,
        "num_prefill": 2,
        "num_extend": 1,
        "total_tokens": 2 * 2048 + 4 + 32,
        "total_kv_cache": 2 * 2048 + 1024 + 32 * 1024,
        "max_q_len": 2048,
        "max_kv_len": 2048,
        "avg_q_len": pytest.approx((2 * 2048 + 4 + 32) / 35),
        "avg_kv_len": pytest.approx((2 * 2048 + 1024 + 32 * 1024) / 35),
    }
    assert isinstance(stats["avg_q_len"], float)
    assert list(stats) == [
        "total_requests",
        "num_decode",
        "num_prefill",
        "num_extend",
        "total_tokens",
        "total_kv_cache",
        "max_q_len",
        "max_kv_len",
        "avg_q_len",
        "avg_kv_len",
    ]


def test_stats_empty_is_zero() -> None:
    stats = get_batch_stats([])
    assert stats["total_requests"] == 0 and stats["avg_q_len"] == 0.0


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("q2k", "q2k"),
        ("q2048s2048", "q2k"),
        ("1q1", "q1"),
        ("8q1s1024", "8q1s1k"),
        ("q1s1k_q1s1k_q2k_q1s1k", "2q1s1k_q2k_q1s1k"),  # only consecutive runs merge
        ("q1000s1500", "q1000s1500"),
        ("  2q2k_32q1s1k ", "2q2k_32q1s1k"),
    ],
)
def test_to_batch_spec_canonical(spec: str, canonical: str) -> None:
    reqs = parse_batch_spec(spec)
    assert to_batch_spec(reqs) == canonical
    assert parse_batch_spec(canonical) == reqs


def test_to_batch_spec_empty_raises() -> None:
    with pytest.raises(BatchSpecError, match="empty"):
        to_batch_spec([])


def test_parse_result_too_many_requests() -> None:
    assert len(parse_batch_spec(f"{MAX_REQUESTS}q1")) == MAX_REQUESTS
    with pytest.raises(BatchSpecError, match="more than the limit"):
        parse_batch_spec(f"{MAX_REQUESTS}q1_q1")


# --------------------------------------------------------------------------- #
# generate_batch_specs_from_ranges
# --------------------------------------------------------------------------- #


def test_ranges_template_product_in_key_order() -> None:
    specs = generate_batch_specs_from_ranges(
        [{"template": "{batch}q{q_len}s1k", "batch": {"start": 1, "stop": 3}, "q_len": [1, 4]}]
    )
    # Last key varies fastest.
    assert specs == ["1q1s1k", "1q4s1k", "2q1s1k", "2q4s1k"]


def test_ranges_end_inclusive_and_step() -> None:
    specs = generate_batch_specs_from_ranges(
        [{"template": "{b}q1s{kv}k", "b": 8, "kv": {"start": 1, "stop": 4, "step": 1, "end_inclusive": True}}]
    )
    assert specs == ["8q1s1k", "8q1s2k", "8q1s3k", "8q1s4k"]
    specs = generate_batch_specs_from_ranges([{"template": "q{q}", "q": {"start": 2, "stop": 8, "step": 3}}])
    assert specs == ["q2", "q5"]
    specs = generate_batch_specs_from_ranges(
        [{"template": "q{q}", "q": {"start": 2, "stop": 8, "step": 3, "end_inclusive": True}}]
    )
    assert specs == ["q2", "q5", "q8"]


def test_ranges_dedupe_across_entries_keeps_first() -> None:
    specs = generate_batch_specs_from_ranges(
        [
            {"template": "q{q}", "q": [2, 1, 2]},
            {"template": "{n}q1s1k", "n": ["", 2]},  # str values, '' = no count
            {"template": "q1"},  # already produced; fixed template without fields
            {"template": "1q1s{kv}", "kv": "1k"},  # same batch as 'q1s1k'
        ]
    )
    assert specs == ["q2", "q1", "q1s1k", "2q1s1k"]


def test_ranges_invalid_spec_names_entry_and_segment() -> None:
    with pytest.raises(BatchSpecError, match=r"batch_spec_ranges\[0\].*segment 'q2s1'.*seq_len"):
        generate_batch_specs_from_ranges([{"template": "q{q}s1", "q": [1, 2]}])


@pytest.mark.parametrize(
    ("ranges", "match"),
    [
        ([{"q": 1}], r"\[0\]: key 'template' is missing"),
        ([{"template": "q1"}, {"template": 5}], r"\[1\]: key 'template' must be a str"),
        ([{"template": "q{q}"}], r"key 'q': .*no value"),
        ([{"template": "q{q}", "q": {"start": 1, "stop": 4, "stpe": 1}}], r"key 'q': unknown range key.*stpe"),
        ([{"template": "q{q}", "q": {"start": 1, "stop": 4, "step": 0}}], r"key 'q': step must be > 0"),
        ([{"template": "q{q}", "q": {"start": 1, "stop": 4, "step": -1}}], r"key 'q': step must be > 0"),
        ([{"template": "q{q}", "q": {"start": 4, "stop": 4}}], r"key 'q': empty range"),
        ([{"template": "q{q}", "q": []}], r"key 'q': empty range"),
        ([{"template": "q{q}", "q": {"stop": 4}}], r"key 'q': range is missing 'start'"),
        ([{"template": "q{q}", "q": {"start": 1, "stop": "4"}}], r"key 'q': range stop must be an int"),
        ([{"template": "q{q}", "q": {"start": 1, "stop": 4, "end_inclusive": "yes"}}], r"key 'q': end_inclusive"),
        ([{"template": "q{q}", "q": 1.5}], r"key 'q': value must be"),
        ([{"template": "q{q}", "q": [1, None]}], r"key 'q': list items"),
        ([{"template": "q{q}", "q": 1, "extra": 2}], r"key 'extra' is not used"),
        ([{"template": "q{}"}], r"key 'template': field"),
        ([{"template": "q{q"}], r"key 'template': invalid template"),
        ([{"template": "q{a}{b}", "a": {"start": 1, "stop": 1000}, "b": {"start": 1, "stop": 1000}}], r"limit"),
        ("q1", r"must be a list"),
        (["q1"], r"\[0\]: must be a dict"),
    ],
)
def test_ranges_errors(ranges: object, match: str) -> None:
    with pytest.raises(BatchSpecError, match=match):
        generate_batch_specs_from_ranges(ranges)  # type: ignore[arg-type]


def test_ranges_empty_list_gives_no_specs() -> None:
    assert generate_batch_specs_from_ranges([]) == []
