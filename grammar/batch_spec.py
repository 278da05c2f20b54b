"""Batch-spec language: a compact string describing one attention batch.

Grammar (segments joined by a single ``_``)::

    segment := [<count>] q <q_len> [k] [ s <seq_len> [k] ]

* ``count``   -- number of identical requests (default 1, no ``k`` allowed).
* ``q_len``   -- new query tokens of each request.
* ``seq_len`` -- TOTAL kv length (context + new tokens); defaults to ``q_len``.
* ``k``       -- lowercase, multiplies the number right before it by 1024.

Examples: ``q2k`` (one 2048-token prefill), ``8q1s1k`` (8 decodes over a
1024-token cache), ``16q4s1k`` (16 four-token extends, i.e. spec-decode),
``2q2k_32q1s1k`` (mixed).

Decisions the grammar makes where upstream's leaves room (keep tests and docs in sync):

* Leading zeros (``08q1``, ``q01k``) are REJECTED, so each batch has a single
  spelling and spec strings can double as stable benchmark ids.
* Every number, after the ``k`` multiplier, must be <= 2**31 (``MAX_VALUE``).
* A whole spec may describe at most ``MAX_REQUESTS`` (2**20) requests, so a
  typo such as ``2000000000q1`` fails fast instead of allocating a huge list.
* ``format_batch_spec([])`` returns ``""``; ``get_batch_stats([])`` returns
  zeros; ``get_batch_type([])`` and ``to_batch_spec([])`` raise.

Every failure is a ``BatchSpecError`` (a ``ValueError``) with a one-line
message that quotes the spec and the offending segment and says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_REQUESTS",
    "MAX_VALUE",
    "SPEC_DECODE_MAX_Q",
    "BatchRequest",
    "BatchSpecError",
    "format_batch_spec",
    "get_batch_stats",
    "get_batch_type",
    "parse_batch_spec",
    "repeat_batch_spec",
    "to_batch_spec",
]

MAX_VALUE = 2**31
MAX_REQUESTS = 2**20
# Extend batches whose q_len are all this small are speculative-decode verifies.
SPEC_DECODE_MAX_Q = 16

_K = 1024
# [0-9] rather than \d: \d also matches non-ASCII digits such as '٣'.
_SEGMENT_RE = re.compile(r"(?P<count>[0-9]+)?q(?P<q>[0-9]+)(?P<qk>k)?(?:s(?P<s>[0-9]+)(?P<sk>k)?)?")
_FORM = "[<count>]q<q_len>[k][s<seq_len>[k]]"
# Old spellings from earlier vLLM benchmark scripts, recognised only to give hints.
_LEGACY_KV_RE = re.compile(r"(?P<head>[0-9]*q[0-9]+k?)kv(?P<tail>[0-9]+k?)")
_LEGACY_SPEC_RE = re.compile(r"(?P<count>[0-9]*)spec(?P<q>[0-9]+)s(?P<s>[0-9]+k?)")
_LEGACY_DECODE_RE = re.compile(r"(?P<count>[0-9]*)s(?P<s>[0-9]+k?)")
_LEGACY_CHUNK_RE = re.compile(r"[0-9]*chunk[0-9]+")
_MAX_QUOTED_SPEC = 120
# What may surround a spec (a shell or YAML user's spaces, tabs and newlines). str.strip() would also take
# Unicode separators and C0/C1 controls such as '\x1c' and '\x85', which are refused, not stripped.
_SURROUNDING = " \t\r\n"


class BatchSpecError(ValueError):
    """The single error type of the batch-spec grammar (also for bad ranges)."""


Kind = Literal["prefill", "decode", "extend"]


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch: ``q_len`` new tokens over ``kv_len`` total kv."""

    q_len: int
    kv_len: int

    def __post_init__(self) -> None:
        # Validate here too so every constructible request round-trips
        # through to_batch_spec/parse_batch_spec.
        for name in ("q_len", "kv_len"):
            value = getattr(self, name)
            if type(value) is not int:  # bool is an int subclass; reject it
                raise BatchSpecError(f"BatchRequest.{name} must be an int, got {type(value).__name__}")
            if not 1 <= value <= MAX_VALUE:
                raise BatchSpecError(f"BatchRequest.{name} must be in 1..2**31, got {value}")
        if self.kv_len < self.q_len:
            raise BatchSpecError(f"BatchRequest kv_len ({self.kv_len}) must be >= q_len ({self.q_len})")

    @property
    def context_len(self) -> int:
        """Tokens already in the kv cache before this step."""
        return self.kv_len - self.q_len

    @property
    def is_prefill(self) -> bool:
        # No prior context, so even q_len == 1 is a (one-token) prefill.
        return self.context_len == 0

    @property
    def is_decode(self) -> bool:
        return self.q_len == 1 and self.context_len > 0

    @property
    def is_extend(self) -> bool:
        # Chunked prefill continuation and spec-decode verification both land here.
        return self.q_len > 1 and self.context_len > 0

    @property
    def kind(self) -> Kind:
        if self.is_prefill:
            return "prefill"
        if self.is_decode:
            return "decode"
        return "extend"


# --------------------------------------------------------------------------- #
# parsing
# --------------------------------------------------------------------------- #


def _quote(text: str) -> str:
    # repr() quotes and escapes newlines/control chars, keeping messages one line.
    return repr(text)


def _spec_prefix(spec: str) -> str:
    return f"batch spec {_quote(_clip(spec))}"


def _clip(text: str) -> str:
    """``text`` cut to ``_MAX_QUOTED_SPEC`` characters, so a 5,000-character token keeps a message short."""
    return text if len(text) <= _MAX_QUOTED_SPEC else text[:_MAX_QUOTED_SPEC] + "..."


def _segment_error(spec: str, segment: str, why: str) -> BatchSpecError:
    return BatchSpecError(f"{_spec_prefix(spec)}: segment {_quote(_clip(segment))}: {why}")


def _number(spec: str, segment: str, field: str, digits: str, times_k: bool) -> int:
    """Convert one digit run, enforcing >= 1, no leading zeros and <= 2**31."""
    significant = digits.lstrip("0")
    # Guard before int(): huge digit strings are slow and can hit Python's
    # int-max-str-digits ValueError, which must not escape as a non-BatchSpecError.
    if significant and len(significant) > len(str(MAX_VALUE)):
        shown = digits[:20] + ("..." if len(digits) > 20 else "")
        raise _segment_error(spec, segment, f"{field} {shown} is too large (limit 2**31 = {MAX_VALUE})")
    value = int(significant) if significant else 0
    if value == 0:
        raise _segment_error(spec, segment, f"{field} must be >= 1, got 0")
    if digits[0] == "0":
        raise _segment_error(spec, segment, f"{field} {digits!r} has leading zeros (write {value})")
    scaled = value * _K if times_k else value
    if scaled > MAX_VALUE:
        spelled = f"{digits}k = {scaled}" if times_k else digits
        raise _segment_error(spec, segment, f"{field} {spelled} is too large (limit 2**31 = {MAX_VALUE})")
    return scaled


def _parse_segment(spec: str, segment: str) -> tuple[int, BatchRequest]:
    """Parse one non-empty segment into (count, request) without expanding it."""
    m = _SEGMENT_RE.fullmatch(segment)
    if m is None:
        raise _diagnose(spec, segment)
    count = _number(spec, segment, "count", m["count"], False) if m["count"] is not None else 1
    q_len = _number(spec, segment, "q_len", m["q"], m["qk"] is not None)
    kv_len = _number(spec, segment, "seq_len", m["s"], m["sk"] is not None) if m["s"] is not None else q_len
    if kv_len < q_len:
        raise _segment_error(
            spec, segment, f"seq_len ({kv_len}) < q_len ({q_len}); s is the TOTAL kv length and must be >= q"
        )
    return count, BatchRequest(q_len, kv_len)


def _is_valid_segment(segment: str) -> bool:
    if not _SEGMENT_RE.fullmatch(segment):  # cheap pre-check; also avoids re-diagnosing
        return False
    try:
        count, _ = _parse_segment(segment, segment)
    except BatchSpecError:
        return False
    return count <= MAX_REQUESTS


def _did_you_mean(suggestion: str) -> str:
    # Never suggest a spelling that would itself be rejected.
    return f" (did you mean {_quote(_clip(suggestion))}?)" if _is_valid_segment(suggestion) else ""


def _legacy_hint(segment: str) -> str | None:
    """Explain an old-grammar segment and suggest its modern spelling."""
    m = _LEGACY_KV_RE.fullmatch(segment)
    if m:
        return "legacy 'kv<kv_len>' form; write the total kv length as s<seq_len>" + _did_you_mean(
            m["head"] + "s" + m["tail"]
        )
    m = _LEGACY_SPEC_RE.fullmatch(segment)
    if m:
        return (
            "legacy 'spec<n>s<seq_len>' form; a spec-decode is just an extend, write <count>q<n>s<seq_len>"
            + _did_you_mean(m["count"] + "q" + m["q"] + "s" + m["s"])
        )
    m = _LEGACY_DECODE_RE.fullmatch(segment)
    if m:
        return "legacy decode form '<count>s<seq_len>' has no q_len; write <count>q1s<seq_len>" + _did_you_mean(
            m["count"] + "q1s" + m["s"]
        )
    if _LEGACY_CHUNK_RE.match(segment):
        return "legacy 'chunk<size>' form is not supported; write each chunk as an extend q<chunk>s<seq_len>"
    if "kv" in segment:
        return "legacy 'kv' marker; write the total kv length as s<seq_len>"
    if "spec" in segment:
        return "legacy 'spec' marker; a spec-decode is written <count>q<n>s<seq_len>"
    return None


def _diagnose(spec: str, segment: str) -> BatchSpecError:
    """Explain why ``segment`` failed the segment regex (most specific reason first)."""
    if any(c.isspace() for c in segment):
        return _segment_error(spec, segment, "whitespace is not allowed inside a batch spec")
    if any("A" <= c <= "Z" for c in segment):
        lowered = segment.lower()
        return _segment_error(spec, segment, "uppercase letters are not allowed" + _did_you_mean(lowered))
    legacy = _legacy_hint(segment)
    if legacy:
        return _segment_error(spec, segment, legacy)
    for c in segment:
        if not ("0" <= c <= "9" or c in "qsk"):
            what = "letter" if c.isalpha() else "character"
            return _segment_error(spec, segment, f"unknown {what} {c!r}; expected {_FORM}")
    # Only digits and q/s/k remain: the structure is wrong.
    if "kk" in segment:
        return _segment_error(spec, segment, "repeated 'k' suffix; 'k' (x1024) may appear once per number")
    if "q" not in segment:
        return _segment_error(spec, segment, f"missing 'q<q_len>'; expected {_FORM}")
    if segment.count("q") > 1 or segment.count("s") > 1:
        why = f"'q' and 's' may each appear once; use '_' to join segments ({_FORM})"
        return _segment_error(spec, segment, why)
    if re.search(r"[qs](?![0-9])", segment):
        return _segment_error(spec, segment, f"'q' and 's' must be followed by a number; expected {_FORM}")
    if "s" in segment and segment.index("s") < segment.index("q"):
        return _segment_error(spec, segment, f"'s<seq_len>' must come after 'q<q_len>'; expected {_FORM}")
    if segment.startswith("k") or re.search(r"[0-9]kq", segment) or re.search(r"(?<![0-9])k", segment):
        return _segment_error(spec, segment, "'k' (x1024) is only allowed right after q_len or seq_len")
    prefix = _SEGMENT_RE.match(segment)
    if prefix and prefix.end() > 0:
        extra = segment[prefix.end() :]
        why = f"unexpected {_quote(_clip(extra))} after {_quote(_clip(segment[: prefix.end()]))}; expected {_FORM}"
        return _segment_error(spec, segment, why)
    return _segment_error(spec, segment, f"does not match {_FORM}")


def parse_batch_spec(spec: str) -> list[BatchRequest]:
    """Parse a batch spec into its requests, in spec order.

    Raises ``BatchSpecError`` (and nothing else) for any rejected input.
    """
    if not isinstance(spec, str):
        raise BatchSpecError(f"batch spec must be a str, got {type(spec).__name__}")
    stripped = spec.strip(_SURROUNDING)
    if not stripped:
        raise BatchSpecError(f"{_spec_prefix(spec)}: empty batch spec; expected e.g. 'q2k' or '8q1s1k'")
    segments = stripped.split("_")
    requests: list[BatchRequest] = []
    for index, segment in enumerate(segments):
        if not segment:
            # Name the neighbours: the empty segment itself has no text to quote.
            before = _quote(_clip(segments[index - 1])) if index > 0 else "start"
            after = _quote(_clip(segments[index + 1])) if index + 1 < len(segments) else "end"
            raise BatchSpecError(
                f"{_spec_prefix(stripped)}: segment {index + 1} of {len(segments)} is empty "
                f"(between {before} and {after}); join segments with a single '_'"
            )
        count, request = _parse_segment(stripped, segment)
        if len(requests) + count > MAX_REQUESTS:
            raise _segment_error(
                stripped,
                segment,
                f"batch would have {len(requests) + count} requests, more than the limit {MAX_REQUESTS}",
            )
        requests.extend([request] * count)
    return requests


# --------------------------------------------------------------------------- #
# describing request lists
# --------------------------------------------------------------------------- #


def _size(n: int) -> str:
    return f"{n // _K}k" if n % _K == 0 else str(n)


def _check_requests(requests: Iterable[BatchRequest], what: str) -> list[BatchRequest]:
    items = list(requests)
    for r in items:
        if not isinstance(r, BatchRequest):
            raise BatchSpecError(f"{what}: expected BatchRequest items, got {type(r).__name__}")
    return items


def get_batch_type(requests: Sequence[BatchRequest]) -> str:
    """One label: prefill / decode / extend / spec-decode (small-q extend) / mixed."""
    items = _check_requests(requests, "get_batch_type")
    if not items:
        raise BatchSpecError("get_batch_type: empty request list has no batch type")
    kinds = {r.kind for r in items}
    if len(kinds) > 1:
        return "mixed"
    kind = kinds.pop()
    if kind == "extend" and all(r.q_len <= SPEC_DECODE_MAX_Q for r in items):
        return "spec-decode"
    return kind


def format_batch_spec(requests: Sequence[BatchRequest]) -> str:
    """Human summary, e.g. ``2 prefill (2x2k), 1 extend (1xq4kv1k), 32 decode (32x1k)``.

    Groups appear in the order prefill, extend, decode; an empty list gives ``""``.
    """
    items = _check_requests(requests, "format_batch_spec")
    groups: dict[str, dict[str, int]] = {"prefill": {}, "extend": {}, "decode": {}}
    for r in items:
        if r.kind == "prefill":
            label = _size(r.q_len)
        elif r.kind == "decode":
            label = _size(r.kv_len)
        else:
            label = f"q{_size(r.q_len)}kv{_size(r.kv_len)}"
        bucket = groups[r.kind]
        bucket[label] = bucket.get(label, 0) + 1  # dicts keep first-seen order
    parts = []
    for kind, bucket in groups.items():
        if bucket:
            inner = ", ".join(f"{cnt}x{label}" for label, cnt in bucket.items())
            parts.append(f"{sum(bucket.values())} {kind} ({inner})")
    return ", ".join(parts)


def get_batch_stats(requests: Sequence[BatchRequest]) -> dict[str, int | float]:
    """Aggregate numbers for a batch; an empty list gives zeros (averages 0.0)."""
    items = _check_requests(requests, "get_batch_stats")
    n = len(items)
    total_q = sum(r.q_len for r in items)
    total_kv = sum(r.kv_len for r in items)
    return {
        "total_requests": n,
        "num_decode": sum(r.is_decode for r in items),
        "num_prefill": sum(r.is_prefill for r in items),
        "num_extend": sum(r.is_extend for r in items),
        "total_tokens": total_q,
        "total_kv_cache": total_kv,
        "max_q_len": max((r.q_len for r in items), default=0),
        "max_kv_len": max((r.kv_len for r in items), default=0),
        "avg_q_len": total_q / n if n else 0.0,
        "avg_kv_len": total_kv / n if n else 0.0,
    }


def to_batch_spec(requests: Sequence[BatchRequest]) -> str:
    """Canonical spec for ``requests``; ``parse_batch_spec`` inverts it exactly."""
    items = _check_requests(requests, "to_batch_spec")
    if not items:
        raise BatchSpecError("to_batch_spec: empty request list cannot be written as a batch spec")
    if len(items) > MAX_REQUESTS:
        raise BatchSpecError(f"to_batch_spec: {len(items)} requests exceed the limit {MAX_REQUESTS}")
    return _format_runs(_runs(items))


def _runs(items: Sequence[BatchRequest]) -> list[tuple[BatchRequest, int]]:
    """Runs of equal consecutive requests (only consecutive ones, so order is preserved)."""
    runs: list[tuple[BatchRequest, int]] = []
    for r in items:
        if runs and runs[-1][0] == r:
            runs[-1] = (r, runs[-1][1] + 1)
        else:
            runs.append((r, 1))
    return runs


def _format_runs(runs: Sequence[tuple[BatchRequest, int]]) -> str:
    segments = []
    for r, count in runs:
        seg = f"{count if count > 1 else ''}q{_size(r.q_len)}"
        if r.kv_len != r.q_len:
            seg += f"s{_size(r.kv_len)}"
        segments.append(seg)
    return "_".join(segments)


def repeat_batch_spec(spec: str, times: int) -> str:
    """The canonical spec of ``spec``'s requests repeated ``times`` times (``to_batch_spec(parse(spec) * times)``),
    worked out on runs, so a large ``times`` costs nothing; raises when the batch would exceed ``MAX_REQUESTS``."""
    if type(times) is not int or times < 1:
        raise BatchSpecError(f"repeat_batch_spec: times must be an int >= 1, got {times!r}")
    runs = _runs(parse_batch_spec(spec))
    total = sum(count for _, count in runs) * times
    if total > MAX_REQUESTS:
        raise BatchSpecError(f"{_spec_prefix(spec)} x {times}: {total} requests, more than the limit {MAX_REQUESTS}")
    if len(runs) == 1:
        return _format_runs([(runs[0][0], runs[0][1] * times)])
    out = list(runs)
    for _ in range(times - 1):
        if out[-1][0] == runs[0][0]:  # the copy's first run continues the last one
            out[-1] = (out[-1][0], out[-1][1] + runs[0][1])
            out.extend(runs[1:])
        else:
            out.extend(runs)
    return _format_runs(out)
