"""Hypothesis properties of the batch-spec grammar."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grammar import (
    MAX_REQUESTS,
    BatchRequest,
    BatchSpecError,
    format_batch_spec,
    get_batch_stats,
    get_batch_type,
    parse_batch_spec,
    repeat_batch_spec,
    to_batch_spec,
)

# The grammar's properties are pure Python, so CI runs each at 10,000 examples (profile "grammar-ci", the
# default; about a minute of one core for the whole file). ATTNBENCH_GRAMMAR_PROFILE=grammar-dev runs 250 while
# editing.
settings.register_profile("grammar-ci", max_examples=10_000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("grammar-dev", max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GRAMMAR_PROFILE = os.environ.get("ATTNBENCH_GRAMMAR_PROFILE", "grammar-ci")
FAST = settings(settings.get_profile(GRAMMAR_PROFILE))
# the bad-input properties (controls, repeat_batch_spec, message length) at a tenth of that
EXTRA = settings(FAST, max_examples=max(FAST.max_examples // 10, 100))


def test_ci_runs_the_grammar_properties_at_10000_examples() -> None:
    if GRAMMAR_PROFILE == "grammar-ci":
        assert FAST.max_examples >= 10_000

K = 1024

requests_st = st.builds(
    lambda q, ctx: BatchRequest(q, q + ctx),
    st.integers(1, 70_000),
    # Bias toward prefills (ctx 0) and k-multiples so every branch is hit.
    st.one_of(st.just(0), st.integers(1, 70_000), st.integers(1, 68).map(lambda n: n * K)),
)
# Runs of repeats exercise the count-merging in to_batch_spec.
request_lists_st = st.lists(st.tuples(requests_st, st.integers(1, 4)), min_size=1, max_size=12).map(
    lambda runs: [r for r, n in runs for _ in range(n)]
)


# --------------------------------------------------------------------------- #
# (1) round trip
# --------------------------------------------------------------------------- #


@FAST
@given(request_lists_st)
def test_round_trip(reqs: list[BatchRequest]) -> None:
    spec = to_batch_spec(reqs)
    assert parse_batch_spec(spec) == reqs
    # The canonical spelling is a fixed point.
    assert to_batch_spec(parse_batch_spec(spec)) == spec


# --------------------------------------------------------------------------- #
# (2) stats / type / format agree with an independent computation
# --------------------------------------------------------------------------- #


@FAST
@given(request_lists_st)
def test_stats_agree(reqs: list[BatchRequest]) -> None:
    stats = get_batch_stats(reqs)
    pairs = [(r.q_len, r.kv_len) for r in reqs]
    n = len(pairs)
    decodes = sum(1 for q, kv in pairs if q == 1 and kv > q)
    prefills = sum(1 for q, kv in pairs if kv == q)
    extends = sum(1 for q, kv in pairs if q > 1 and kv > q)
    assert stats == {
        "total_requests": n,
        "num_decode": decodes,
        "num_prefill": prefills,
        "num_extend": extends,
        "total_tokens": sum(q for q, _ in pairs),
        "total_kv_cache": sum(kv for _, kv in pairs),
        "max_q_len": max(q for q, _ in pairs),
        "max_kv_len": max(kv for _, kv in pairs),
        "avg_q_len": pytest.approx(sum(q for q, _ in pairs) / n),
        "avg_kv_len": pytest.approx(sum(kv for _, kv in pairs) / n),
    }
    assert decodes + prefills + extends == n

    kinds = {"decode" if q == 1 and kv > q else "prefill" if kv == q else "extend" for q, kv in pairs}
    label = get_batch_type(reqs)
    if len(kinds) > 1:
        assert label == "mixed"
    elif kinds == {"extend"}:
        assert label == ("spec-decode" if max(q for q, _ in pairs) <= 16 else "extend")
    else:
        assert label == kinds.pop()

    # Group headline counts in format_batch_spec match the stats.
    text = format_batch_spec(reqs)
    for kind, count in (("prefill", prefills), ("extend", extends), ("decode", decodes)):
        assert (f"{count} {kind} (" in text) == (count > 0)


# --------------------------------------------------------------------------- #
# (3) every mutation of a valid spec into an invalid one is rejected, naming the segment
# --------------------------------------------------------------------------- #


def _num(n: int, allow_k: bool) -> str:
    return f"{n // K}k" if allow_k and n % K == 0 else str(n)


@dataclass(frozen=True)
class Seg:
    """A valid segment, kept as parts so mutations can target one part."""

    count: int | None
    q: int
    s: int | None
    q_k: bool
    s_k: bool

    def text(self, count: str | None = None, q: str | None = None, s: str | None = None) -> str:
        c = count if count is not None else ("" if self.count is None else str(self.count))
        qq = q if q is not None else _num(self.q, self.q_k)
        out = f"{c}q{qq}"
        if self.s is not None or s is not None:
            out += "s" + (s if s is not None else _num(self.s or 0, self.s_k))
        return out


@st.composite
def segs(draw: st.DrawFn) -> Seg:
    count = draw(st.none() | st.integers(1, 64))
    q_k = draw(st.booleans())
    q = draw(st.integers(1, 64)) * (K if q_k else 1)
    if draw(st.booleans()):
        return Seg(count, q, None, q_k, False)
    s_k = draw(st.booleans())
    s = draw(st.integers(1, 128)) * K if s_k else draw(st.integers(q, q + 5000))
    if s < q:
        s, s_k = q, False
    return Seg(count, q, s, q_k, s_k)


MUTATIONS = [
    "uppercase",
    "inner_space",
    "double_underscore",
    "unknown_letter",
    "zero_count",
    "zero_q",
    "s_below_q",
    "suffix_x",
    "suffix_kk",
    "leading_zero",
]


@FAST
@given(st.lists(segs(), min_size=1, max_size=4), st.data())
def test_mutations_rejected(seg_list: list[Seg], data: st.DataObject) -> None:
    texts = [s.text() for s in seg_list]
    assert parse_batch_spec("_".join(texts))  # the unmutated spec is valid
    i = data.draw(st.integers(0, len(texts) - 1), label="segment")
    seg, text = seg_list[i], texts[i]
    mutation = data.draw(st.sampled_from(MUTATIONS), label="mutation")

    if mutation == "double_underscore":
        # Either between two segments or a dangling leading/trailing '_'.
        where = data.draw(st.integers(0, len(texts)), label="gap")
        spec = "_".join(texts[:where]) + "__" + "_".join(texts[where:]) if 0 < where < len(texts) else None
        if spec is None:
            spec = "_" + "_".join(texts) if where == 0 else "_".join(texts) + "_"
        with pytest.raises(BatchSpecError, match=r"is empty") as info:
            parse_batch_spec(spec)
        assert repr(spec) in str(info.value)
        return

    if mutation == "uppercase":
        letters = [j for j, c in enumerate(text) if c.isalpha()]
        j = data.draw(st.sampled_from(letters), label="letter")
        bad = text[:j] + text[j].upper() + text[j + 1 :]
        reason = "uppercase"
    elif mutation == "inner_space":
        j = data.draw(st.integers(1, len(text) - 1), label="pos")  # strictly inside the segment
        ws = data.draw(st.sampled_from([" ", "\t", "\n", "\u00a0"]), label="ws")
        bad = text[:j] + ws + text[j:]
        reason = "whitespace"
    elif mutation == "unknown_letter":
        j = data.draw(st.integers(0, len(text)), label="pos")
        letter = data.draw(st.sampled_from("abcdefghijlmnoprtuvwxyz"), label="letter")
        bad = text[:j] + letter + text[j:]
        reason = ""  # could be 'unknown letter' or a legacy hint ('kv', ...)
    elif mutation == "zero_count":
        bad = seg.text(count="0")
        reason = "count must be >= 1"
    elif mutation == "zero_q":
        bad = seg.text(q="0")
        reason = "q_len must be >= 1"
    elif mutation == "s_below_q":
        if seg.q < 2:
            bad = seg.text(q="2", s="1")
        else:
            below = data.draw(st.integers(1, seg.q - 1), label="s")
            bad = seg.text(s=str(below))
        reason = r"seq_len"
    elif mutation == "suffix_x":
        bad = text + "x"
        reason = "unknown letter 'x'"
    elif mutation == "suffix_kk":
        bad = text + "kk"
        reason = "'k'"
    else:  # leading_zero on one of the numbers present
        part = data.draw(st.sampled_from(["count", "q"] + (["s"] if seg.s is not None else [])), label="part")
        if part == "count":
            bad = seg.text(count="0" + ("" if seg.count is None else str(seg.count)))
            # '0q..' (no count before) is a zero count rather than a leading zero.
            reason = "must be >= 1" if seg.count is None else "leading zeros"
        elif part == "q":
            bad = seg.text(q="0" + _num(seg.q, seg.q_k))
            reason = "leading zeros"
        else:
            bad = seg.text(s="0" + _num(seg.s or 0, seg.s_k))
            reason = "leading zeros"

    spec = "_".join(texts[:i] + [bad] + texts[i + 1 :])
    with pytest.raises(BatchSpecError) as info:
        parse_batch_spec(spec)
    msg = str(info.value)
    assert f"segment {bad!r}: " in msg, msg
    assert reason in msg, msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- #
# (4) arbitrary text: only BatchSpecError, and successes round-trip
# --------------------------------------------------------------------------- #


def _check_arbitrary(text: str) -> None:
    try:
        reqs = parse_batch_spec(text)
    except BatchSpecError as exc:
        assert "\n" not in str(exc)
        return
    assert reqs
    assert parse_batch_spec(to_batch_spec(reqs)) == reqs


@FAST
@given(st.text())
def test_arbitrary_text_only_batch_spec_error(text: str) -> None:
    _check_arbitrary(text)


# Same property over the grammar's own alphabet, so successes are common.
@FAST
@given(st.text(alphabet="0123456789qskQSK_ xv", max_size=20))
def test_near_grammar_text_only_batch_spec_error(text: str) -> None:
    _check_arbitrary(text)


@FAST
@given(st.from_type(object))
def test_arbitrary_objects_only_batch_spec_error(value: object) -> None:
    try:
        parse_batch_spec(value)  # type: ignore[arg-type]
    except BatchSpecError:
        pass


# --------------------------------------------------------------------------- #
# (5) only ASCII spaces, tabs and newlines may surround a spec; controls are refused, not stripped
# --------------------------------------------------------------------------- #

# every character str.strip() takes that is not a plain space, tab or newline (C0/C1 controls, Unicode spaces)
_STRIPPED_BY_PYTHON = [c for c in map(chr, range(0x3000 + 1)) if c.isspace() and c not in " \t\r\n"]


@EXTRA
@given(request_lists_st, st.sampled_from(_STRIPPED_BY_PYTHON), st.booleans())
def test_control_characters_around_a_spec_are_refused(reqs: list[BatchRequest], c: str, lead: bool) -> None:
    spec = to_batch_spec(reqs)
    assert parse_batch_spec(f" \t{spec}\n ") == reqs  # the plain ones are stripped
    bad = c + spec if lead else spec + c
    with pytest.raises(BatchSpecError) as info:
        parse_batch_spec(bad)
    assert repr(c)[1:-1] in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- #
# (6) repeat_batch_spec is to_batch_spec(parse(spec) * times), worked out on runs
# --------------------------------------------------------------------------- #


@EXTRA
@given(st.lists(st.tuples(st.sampled_from([BatchRequest(1, 1024), BatchRequest(4, 1024), BatchRequest(2048, 2048)]),
                          st.integers(1, 3)), min_size=1, max_size=6), st.integers(1, 40))
def test_repeat_batch_spec_matches_the_expansion(runs: list[tuple[BatchRequest, int]], times: int) -> None:
    reqs = [r for r, n in runs for _ in range(n)]
    spec = to_batch_spec(reqs)
    assert repeat_batch_spec(spec, times) == to_batch_spec(reqs * times)


@EXTRA
@given(st.integers(1, 4096), st.integers(1, 2**21))
def test_repeat_batch_spec_refuses_more_than_max_requests(count: int, times: int) -> None:
    spec = f"{count}q1s1k" if count > 1 else "q1s1k"
    if count * times > MAX_REQUESTS:
        with pytest.raises(BatchSpecError, match="more than the limit"):
            repeat_batch_spec(spec, times)
    else:
        assert repeat_batch_spec(spec, times) == (f"{count * times}q1s1k" if count * times > 1 else "q1s1k")


@EXTRA
@given(st.text(max_size=6000))
def test_every_message_is_one_short_line(text: str) -> None:
    try:
        parse_batch_spec(text)
    except BatchSpecError as exc:
        assert "\n" not in str(exc)
        assert len(str(exc)) < 1200, len(str(exc))  # a 5,000-character spec is cut in its message
