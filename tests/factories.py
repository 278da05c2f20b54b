"""Outcomes for reporting tests, built the way the runner and the loaders build them."""

from __future__ import annotations

from typing import Any

from attnbench.results.outcome import PASSED, CaseOutcome, Times
from attnbench.results.record import CaseKey, CaseRecord, Memory, SweptValue, TimingSummary, Verification, Work

_WORK = {f for f in Work.KINDS}
_MEMORY = {"peak_memory_bytes": "peak_allocated_bytes", "kv_memory_bytes": "kv_and_buffers_bytes"}


def _key_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """CaseKey fields; ``sweep_param=``/``sweep_value=`` (one swept parameter) and ``sweep={param: value, ...}``
    (several, in order) become its ``sweep``."""
    if "sweep_param" in fields:
        fields["sweep"] = (SweptValue(fields.pop("sweep_param"), fields.pop("sweep_value")),)
    elif isinstance(fields.get("sweep"), dict):
        fields["sweep"] = tuple(SweptValue(p, v) for p, v in fields["sweep"].items())
    return fields


def key(backend: str, spec: str, **fields: Any) -> CaseKey:
    return CaseKey(backend, spec, **_key_fields(fields))


def timed(backend: str, spec: str, seconds: float, *, noise: float = 0.01, rounds: int = 20, iqr: float | None = None,
          samples: list[float] | None = None, fullname: str | None = None, backend_info: dict | None = None,
          study: str | None = "s", family: str | None = "attention", **fields: Any) -> CaseOutcome:
    """A verified, timed case: times from a summary (or ``samples``); work and memory fields go into its record."""
    work = {k: fields.pop(k) for k in list(fields) if k in _WORK}
    memory = {_MEMORY[k]: fields.pop(k) for k in list(fields) if k in _MEMORY}
    k = CaseKey(backend, spec, family=family, study=study, **_key_fields(fields))
    times = Times.of(samples) if samples else Times(rounds, seconds, seconds, seconds * noise, iqr=iqr)
    record = CaseRecord(k, TimingSummary("host", rounds=times.rounds, samples=tuple(samples or ())),
                        Verification("passed"), Work(**work), backend_info=backend_info or {},
                        memory=Memory(**memory) if memory else None)
    return CaseOutcome(k, PASSED, None, record, times, fullname, "time.perf_counter")


def untimed(backend: str, spec: str, status: str = PASSED, reason: str | None = None, *,
            fullname: str | None = None, **fields: Any) -> CaseOutcome:
    """A case with no record: skipped, failed, or passed without timing."""
    return CaseOutcome(CaseKey(backend, spec, **_key_fields(fields)), status, reason, fullname=fullname)


def sampled(backend: str, spec: str, samples: list[float], *, fullname: str | None = None,
            **fields: Any) -> CaseOutcome:
    """A foreign timed result (no record): a key and its samples."""
    return CaseOutcome(CaseKey(backend, spec, **_key_fields(fields)), PASSED, None, None, Times.of(samples), fullname)
