"""The regression gate inside a pytest session: ``--baseline-json`` runs read and checked before any case, the
verdicts of the finished session against them (with cases that lean slower re-timed in fresh processes,
``--recheck``), ``--verdict-json``, and ``--fail-on-regression``. ``reporting_plugin.ReportingSession`` owns one
when baselines are given, and shows its table and lines in the summary. The statistics are
``reporting/verdicts.py``'s; docs/REGRESSION_GATE.md says what they can see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from attnbench.measure import recheck
from attnbench.reporting.verdicts import (SLOWER, GpuMismatch, Verdict, check_gpu, compare_rechecked, counts,
                                          recorded_gpu, tally_line, verdict_table, write_verdict_json)
from attnbench.results.exports import LoadedResults, ResultsFileError, load_results
from attnbench.results.outcome import CaseOutcome, case_key, describe_key
from attnbench.spec.axes import case_of_key
from attnbench.spec.cases import BenchCase
from attnbench.spec.study import Study


@dataclass
class RegressionGate:
    """One session's gate: its baselines, and once the session is done, its verdicts. ``notes`` and ``warnings``
    are the summary's lines (the reporting session's lists, shared)."""

    config: pytest.Config
    study: Study
    new_gpu: str | None
    notes: list[str]  # the summary's lines: the session's lists, shared, so that the order of lines is one
    warnings: list[str]
    baselines: list[LoadedResults] = field(default_factory=list)  # one per run of the baseline code
    baseline_gpu: str | None = None
    verdicts: list[Verdict] | None = None

    def load(self, paths: list[str]) -> None:
        """Every --baseline-json file, read and checked before any case runs: a mismatch found after hours of
        measuring helps nobody."""
        for path in paths:
            try:
                loaded = load_results(path)
            except ResultsFileError as exc:
                raise pytest.UsageError(f"--baseline-json: {exc}") from None
            gpu = recorded_gpu(loaded)
            try:
                warning = check_gpu(gpu, self.new_gpu, self.config.getoption("allow_gpu_mismatch"))
            except GpuMismatch as exc:
                raise pytest.UsageError(f"--baseline-json {path}: {exc}") from None
            if warning and warning not in self.warnings:
                self.warnings.append(warning)
            self.baselines.append(loaded)
            self.baseline_gpu = self.baseline_gpu or gpu

    def judge(self, final: list[CaseOutcome], session: pytest.Session) -> None:
        """The verdicts of ``final`` (the session's outcomes); SLOWER fails the run with --fail-on-regression."""
        opt = self.config.getoption
        threshold = opt("verdict_threshold")
        self.verdicts = compare_rechecked([b.results for b in self.baselines], final,
                                          lambda leaning: self._recheck(final, leaning, opt("recheck")),
                                          threshold=threshold)
        self.config.hook.pytest_attnbench_verdicts(config=self.config, verdicts=self.verdicts)
        baseline = " ".join(opt("baseline_json"))
        if opt("verdict_json"):
            path = write_verdict_json(opt("verdict_json"), self.verdicts, baseline=baseline,
                                      new="(this pytest session)", threshold=threshold, confidence=0.95,
                                      baseline_gpu=self.baseline_gpu, new_gpu=self.new_gpu, warnings=self.warnings)
            self.notes.append(f"wrote verdicts to {path}")
        slower = counts(self.verdicts)[SLOWER]
        if slower and opt("fail_on_regression"):
            self.warnings.append(f"{slower} case(s) SLOWER than {baseline}: failing the run "
                                 f"(--fail-on-regression)")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _recheck(self, final: list[CaseOutcome], suspects: set[tuple], processes: int
                 ) -> dict[tuple, list[CaseOutcome]]:
        """The cases of ``suspects`` (``case_key``s whose first verdict leans slower), timed again in ``processes``
        fresh processes each (one process per GPU the first run used, one after another), by ``case_key``."""
        by_gpu: dict[str | None, list[tuple[tuple, BenchCase]]] = {}
        for outcome in final:
            key = case_key(outcome)
            if key not in suspects or outcome.record is None:
                continue
            case = case_of_key(self.study, outcome.key)
            if case is None:
                self.warnings.append(f"--recheck: cannot rebuild {describe_key(outcome)} from its record; "
                                     "its verdict rests on this process alone")
                continue
            gpu = outcome.record.gpu.uuid if outcome.record.gpu else None
            by_gpu.setdefault(gpu, []).append((key, case))
        found: dict[tuple, list[CaseOutcome]] = {}
        started = time.perf_counter()
        for _ in range(processes):
            for gpu, group in by_gpu.items():
                outcomes, note = recheck.in_fresh_process([case for _, case in group], gpu_uuid=gpu)
                if note:
                    self.warnings.append(f"--recheck: {note}")
                for (key, _), again in zip(group, outcomes):
                    if again is not None:
                        found.setdefault(key, []).append(again)
        if processes:
            count = sum(len(g) for g in by_gpu.values())
            self.notes.append(f"--recheck: re-timed {count} case(s) that leaned slower in {processes} fresh "
                              f"process(es) each ({time.perf_counter() - started:.0f} s)")
        return found

    def write_summary(self, terminalreporter: Any, render: Callable[[list[Any]], str]) -> None:
        """The verdict table and its tally, once the verdicts exist."""
        if self.verdicts is None:
            return
        threshold = 100 * self.config.getoption("verdict_threshold")
        title = f"Verdicts vs {' '.join(self.config.getoption('baseline_json'))} (threshold ±{threshold:g}%)"
        terminalreporter.write(render([verdict_table(self.verdicts, title)]))
        tally = counts(self.verdicts)
        terminalreporter.write_line(tally_line(self.verdicts), red=bool(tally[SLOWER]), green=not tally[SLOWER])
