"""pytest hooks of the reporting layer: per-case results, journal, exports, resume, verdicts, plots.

Flow of one session:

1. ``pytest_runtest_makereport`` (on the process that ran the test, an xdist worker too)
   turns each benchmark case into a ``CaseOutcome``: the runner's record with its samples,
   else the ``bench_case`` (skips and failures), and attaches its JSON to the report
   (``attnbench_result``, read back by ``outcome_of``) so it crosses xdist's process
   boundary with the report.
2. ``pytest_runtest_logreport`` (in the controlling process) appends it to the journal
   ``<output>.partial.jsonl`` (fsync per line) and to the session's list.
3. ``pytest_sessionfinish`` writes the final CSV/JSON from the journal, the plots, and has the gate
   (``gate.RegressionGate``) judge the run against ``--baseline-json`` (failing it on SLOWER with
   ``--fail-on-regression``).
4. ``pytest_terminal_summary`` prints the tables.

``--resume FILE`` deselects cases FILE already timed (matched by ``case_key``) and carries
FILE's rows into the outputs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from attnbench.pytest_plugin.bench_shim import (STDOUT, BenchmarkView, add_to_session, benchmark_json_emptied,
                                                benchmark_json_path, recorded_samples)
from attnbench.pytest_plugin.gate import RegressionGate
from attnbench.spec.cases import BenchCase
from attnbench.reporting.verdicts import recorded_gpu
from attnbench.results.exports import (NOT_TIMED_SCHEMA, Journal, LoadedResults, ResultsFileError, load_results,
                                       merge_results, partial_path, path_conflict, unusable_folder_reason,
                                       unwritable_reason)
from attnbench.reporting.formatter import ResultsFormatter, crossover_csv_path, crossover_rows
from attnbench.results.outcome import FAILED, PASSED, SKIPPED, CaseOutcome, case_key, describe_key, devicekind_of
from attnbench.pytest_plugin.plugin import STUDY_KEY, case_point
from attnbench.results.record import SCHEMA as RECORD_SCHEMA
from attnbench.results.record import CaseRecord, timer_name
from attnbench.pytest_plugin.benchmark_feed import CASE_RESULT_ATTRIBUTE
from attnbench.spec.study import Study

REPORT_ATTRIBUTE = "attnbench_result"  # the case's CaseOutcome JSON, carried on a TestReport
VIEW_ATTRIBUTE = "attnbench_benchmark"  # a worker's case as pytest-benchmark stores it (xdist only)


@pytest.hookimpl(trylast=True)  # after attnbench.pytest_plugin.plugin has resolved the study
def pytest_configure(config: pytest.Config) -> None:
    study = config.stash.get(STUDY_KEY, None)
    if study is None:
        return
    config.pluginmanager.register(ReportingSession(config, study), "attnbench-reporting-session")


def is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def case_for_item(item: pytest.Item) -> BenchCase | None:
    """The case a benchmark item stands for; None for items that are not benchmark cases.

    Uses the ``bench_case`` fixture value once set up; before that (collection, or a skip at
    setup) it composes the case from the item's axes exactly as that fixture does."""
    case = getattr(item, "funcargs", {}).get("bench_case")
    if isinstance(case, BenchCase):
        return case
    point = case_point(item)
    return point.case(item.config.stash[STUDY_KEY]) if point else None


def result_for(item: pytest.Item, call: pytest.CallInfo[Any], report: pytest.TestReport) -> CaseOutcome | None:
    """The case's outcome from this phase's report: setup (skips, errors) or call (everything else)."""
    if call.when == "teardown" or (call.when == "setup" and report.passed):
        return None
    case = case_for_item(item)
    if case is None:
        return None
    if report.skipped:
        return CaseOutcome.unmeasured(case, SKIPPED, _skip_reason(call, report), fullname=item.nodeid)
    if report.failed:
        message = call.excinfo.exconly() if call.excinfo else str(report.longrepr)
        return CaseOutcome.unmeasured(case, FAILED, message, fullname=item.nodeid)
    bench = getattr(item, "funcargs", {}).get("benchmark")
    info = dict(getattr(bench, "extra_info", None) or {})
    if info.get("schema") != RECORD_SCHEMA:  # the test passed without recording (not a run_benchmark body)
        return CaseOutcome.unmeasured(case, PASSED, fullname=item.nodeid)
    # extra_info is the runner's record (with the search's note, when it searched); the samples are the runner's
    # own (a worker's fixture is off under xdist), else pytest-benchmark's
    measured = getattr(bench, CASE_RESULT_ATTRIBUTE, None)
    samples = list(measured.timing.samples) if measured is not None else recorded_samples(bench)
    return CaseOutcome.measured(CaseRecord.from_json(info, samples=samples or None), fullname=item.nodeid)


def attach_outcome(report: pytest.TestReport, outcome: CaseOutcome) -> None:
    # plain JSON: xdist serialises every report attribute, so it reaches the controller
    setattr(report, REPORT_ATTRIBUTE, outcome.to_json())


def outcome_of(report: pytest.TestReport) -> CaseOutcome | None:
    """The outcome ``pytest_runtest_makereport`` attached to ``report`` (on any process), or None."""
    data = getattr(report, REPORT_ATTRIBUTE, None)
    return CaseOutcome.from_json(data) if data is not None else None


def benchmark_view(item: pytest.Item) -> BenchmarkView | None:
    """The pytest-benchmark view of a case measured in this worker, for the controller's session."""
    bench = getattr(item, "funcargs", {}).get("benchmark")
    measured = getattr(bench, CASE_RESULT_ATTRIBUTE, None)
    if measured is None or not measured.timing.samples:
        return None
    t = measured.timing
    return BenchmarkView.of(bench, t.samples, timer_name(t.mode, t.timer), t.rounds, t.warmup_rounds)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    result = result_for(item, call, report)
    if result is not None:
        attach_outcome(report, result)
        if call.when == "call" and is_xdist_worker(item.config):
            view = benchmark_view(item)
            if view is not None:
                setattr(report, VIEW_ATTRIBUTE, view.to_dict())
    return report


def _skip_reason(call: pytest.CallInfo[Any], report: pytest.TestReport) -> str:
    value = call.excinfo.value if call.excinfo else None
    if getattr(value, "msg", None):
        return str(value.msg)
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


@dataclass(eq=False)  # a plugin object must stay hashable
class ReportingSession:
    """The reporting state of one pytest session, registered as a plugin object."""

    config: pytest.Config
    study: Study
    results: list[CaseOutcome] = field(default_factory=list)  # this session's, in completion order
    resume_path: str | None = None
    resumed: LoadedResults | None = None
    done_keys: set[tuple] = field(default_factory=set)
    gate: RegressionGate | None = None  # --baseline-json given
    journal: Journal | None = None
    other_tests: bool = False  # a test that is not a benchmark case reported
    final: list[CaseOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines for the summary: files written, warnings
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        opt = self.config.getoption  # the run settings, checked by pytest_plugin.plugin (options.session_values)
        if not is_xdist_worker(self.config):
            self._check_outputs_writable()  # pytest-benchmark's storage: pytest_plugin.plugin, before it configures
        self.resume_path = opt("resume")
        if self.resume_path:
            try:
                self.resumed = load_results(self.resume_path)
            except ResultsFileError as exc:
                raise pytest.UsageError(f"--resume: {exc}") from None
            self._keep_rows_of_this_study()
            self.done_keys = {case_key(r) for r in self.resumed.results if r.timed}
        if opt("baseline_json") and not is_xdist_worker(self.config):
            self.gate = RegressionGate(self.config, self.study, current_gpu_name(self.study), self.notes, self.warnings)
            self.gate.load(opt("baseline_json"))

    def _keep_rows_of_this_study(self) -> None:
        """--resume carries only rows of this study measured on this GPU (another study's journal must not slip its
        rows into this one's outputs): the others are left out, and said so; a file with none is refused."""
        assert self.resumed is not None
        rows, here = self.resumed.results, current_gpu_name(self.study)
        file_gpu = recorded_gpu(self.resumed)
        other_study: dict[str, int] = {}
        other_gpu: dict[str, int] = {}
        kept = []
        for r in rows:
            gpu = "none (CPU)" if devicekind_of(r.key.device) == "cpu" else (
                r.record.gpu.name if r.record is not None and r.record.gpu else file_gpu)
            if r.key.study is not None and r.key.study != self.study.name:
                other_study[r.key.study] = other_study.get(r.key.study, 0) + 1
            elif gpu is not None and gpu != here:
                other_gpu[gpu] = other_gpu.get(gpu, 0) + 1
            else:
                kept.append(r)
        if len(kept) == len(rows):
            return
        why = [f"{n} of study {name!r}" for name, n in other_study.items()]
        why += [f"{n} measured on {gpu!r}" for gpu, n in other_gpu.items()]
        what = f"this study is {self.study.name!r} on {here!r}"
        if not kept:
            raise pytest.UsageError(f"--resume {self.resume_path}: none of its {len(rows)} rows is of this study on "
                                    f"this GPU ({', '.join(why)}; {what})")
        self.resumed.results = kept
        self.notes.append(f"--resume {self.resume_path}: took {len(kept)} of its {len(rows)} rows; left out "
                          f"{', '.join(why)} ({what})")

    def _check_outputs_writable(self) -> None:
        """Every output path is checked now, not after every case has run: writable, and no two files of the
        session (outputs, their journal, the crossover CSV, inputs) on one path."""
        opt = self.config.getoption

        def where(option: str) -> str:  # the flag, or the YAML key it came from
            given = opt(option[2:].replace("-", "_"))
            return option if given else f"{self.study.source or 'the study file'}: output.{option[9:]}"

        files = [(where(o), p) for o, p in (("--output-json", self.study.output_json),
                                             ("--output-csv", self.study.output_csv)) if p]
        for label, path in files:
            reason = unwritable_reason(path)
            if reason is not None:
                raise pytest.UsageError(f"{label} {path}: cannot write the results there: {reason}")
        bench_json = benchmark_json_path(self.config)
        if bench_json is not None and bench_json != STDOUT:
            inputs_named = [*(("--baseline-json", b) for b in opt("baseline_json") or ()), ("--resume", opt("resume"))]
            for label, path in inputs_named:
                if path and Path(path).exists() and _same_path(path, bench_json):
                    emptied = benchmark_json_emptied(self.config)
                    why = ("pytest-benchmark emptied it when it read the command line: pytest.ini's -p "
                           "attnbench.pytest_plugin.bench_shim prevents that" if emptied else
                           "pytest-benchmark would overwrite it")
                    raise pytest.UsageError(f"--benchmark-json {bench_json}: the same file as {label} {path} ({why})")
            # pytest-benchmark opens it when it writes, after the run: it makes no folder
            folder = Path(bench_json).parent
            reason = unwritable_reason(bench_json) if folder.is_dir() else f"no folder {folder}"
            if reason is not None:
                raise pytest.UsageError(f"--benchmark-json {bench_json}: cannot write the JSON there: {reason}")
            files.append(("--benchmark-json", bench_json))
        if opt("verdict_json"):
            reason = unwritable_reason(opt("verdict_json"))
            if reason is not None:
                raise pytest.UsageError(f"--verdict-json {opt('verdict_json')}: cannot write the verdicts there: "
                                        f"{reason}")
            files.append(("--verdict-json", opt("verdict_json")))
        if opt("plot") or opt("plot_dir"):
            folder = opt("plot_dir") or (str(Path(self.output_path).parent) if self.output_path else "results")
            reason = unusable_folder_reason(folder)
            if reason is not None:
                raise pytest.UsageError(f"--plot-dir {folder}: cannot write plots there: {reason}")
        derived = []  # files the session writes beside the named ones: named first, so a clash names the option
        if self.output_path:
            derived.append(("the journal", str(partial_path(self.output_path))))
        if self.study.output_csv:
            derived.append(("the crossover CSV", str(crossover_csv_path(self.study.output_csv))))
        outputs = derived + files
        # --resume may name this session's own --output-json: its rows are carried into the rewritten file
        inputs = [("--baseline-json", path) for path in opt("baseline_json") or ()]
        resume = opt("resume")
        if resume and not (self.study.output_json and _same_path(resume, self.study.output_json)) \
                and not (self.output_path and _same_path(resume, partial_path(self.output_path))):
            inputs.append(("--resume", resume))
        clash = path_conflict(outputs, inputs)
        if clash:
            raise pytest.UsageError(clash)

    @property
    def output_path(self) -> str | None:
        return self.study.output_json or self.study.output_csv

    # ------------------------------------------------------------ collection

    @pytest.hookimpl(trylast=True)  # after attnbench.pytest_plugin.plugin dropped the unused benchmarks
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if not self.done_keys:
            return
        done = []
        for item in items:
            case = case_for_item(item)
            if case is not None and case_key(CaseOutcome.unmeasured(case, PASSED)) in self.done_keys:
                done.append(item)
        if done:
            done_ids = {id(item) for item in done}
            items[:] = [item for item in items if id(item) not in done_ids]
            config.hook.pytest_deselected(items=done)
            self.notes.append(f"--resume: {len(done)} case(s) already done in {self.resume_path} were deselected; "
                              f"their rows are carried into the outputs")

    # ------------------------------------------------------------ running

    def _journal(self) -> Journal | None:
        """The journal, opened at the first result: a session that measures nothing (--collect-only,
        a usage error, an empty selection) leaves no files behind."""
        if self.journal is None and self.output_path and not is_xdist_worker(self.config):
            path = partial_path(self.output_path)
            if path.exists() and not _same_file(path, self.resume_path):
                kept = path.with_name(f"{path.name.removesuffix('.jsonl')}.{_stamp()}.jsonl")
                os.replace(path, kept)
                self.notes.append(f"an unfinished journal from an earlier run was kept as {kept} "
                                  f"(--resume {kept} reuses its rows)")
            self.journal = Journal(path, carried=self.resumed.results if self.resumed else ())
        return self.journal

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if is_xdist_worker(self.config):
            return
        result = outcome_of(report)
        if result is None:
            if report.when == "call" or (report.when == "setup" and not report.passed):
                self.other_tests = True  # a plain test ran (or was skipped): not a benchmark-only run
            return
        self.results.append(result)
        self.config.hook.pytest_attnbench_case_done(config=self.config, outcome=result)
        view = getattr(report, VIEW_ATTRIBUTE, None)
        if view is not None:  # a worker measured it: pytest-benchmark's session here has not seen it
            add_to_session(self.config, BenchmarkView.from_dict(view))
        journal = self._journal()
        if journal is not None:
            journal.append(result)

    # ------------------------------------------------------------ pytest-benchmark's JSON

    def gpus_used(self) -> list[dict[str, Any]]:
        """Every GPU that timed a case of this session (index, name, UUID), from the cases' records."""
        seen: dict[str, dict[str, Any]] = {}
        for result in self.results:
            gpu = result.record.gpu if result.record is not None else None
            if gpu is not None:
                seen.setdefault(str(gpu.uuid or gpu.index), dataclasses.asdict(gpu))
        return sorted(seen.values(), key=lambda g: str(g["index"]))

    @pytest.hookimpl(trylast=True)  # after attnbench.pytest_plugin.plugin filled machine_info["attnbench"]
    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        gpus = self.gpus_used()
        if gpus and isinstance(machine_info.get("attnbench"), dict):
            machine_info["attnbench"]["gpus_used"] = gpus

    def pytest_benchmark_update_json(self, config: pytest.Config, benchmarks: list, output_json: dict) -> None:
        """Skipped and failed cases beside pytest-benchmark's timed ones, grouped by status and reason
        (a crossover search skips thousands of cases for one reason)."""
        output_json["attnbench"] = {"schema": NOT_TIMED_SCHEMA,
                                    "not_timed": group_not_timed(merge_results(self.results))}

    # ------------------------------------------------------------ the end

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if is_xdist_worker(self.config):
            return
        carried = self.resumed.results if self.resumed else []
        self.final = merge_results([*carried, *self.results])
        if carried and not self.config.option.collectonly and session.exitstatus != pytest.ExitCode.USAGE_ERROR:
            self._journal()  # every case was already done: the outputs still get the carried rows
        if self.journal is not None:
            self.journal.close()
            self._write_outputs()
        if self.config.getoption("plot") and any(r.timed for r in self.final):
            self._write_plots()
        if self.gate is not None:
            self.gate.judge(self.final, session)
        self._fail_if_nothing_timed(session)

    def _fail_if_nothing_timed(self, session: pytest.Session) -> None:
        """A benchmark run (--benchmark-only, or only benchmark cases selected) that times no case fails: a GPU job
        that landed on a machine without a GPU must not pass as if nothing had got slower."""
        config = self.config
        if config.option.collectonly or session.exitstatus not in (pytest.ExitCode.OK,
                                                                    pytest.ExitCode.NO_TESTS_COLLECTED):
            return
        benchmark_run = bool(config.getoption("benchmark_only", False)) or (bool(self.results) and
                                                                           not self.other_tests)
        if not benchmark_run or any(r.timed for r in self.final) or config.getoption("allow_untimed"):
            return
        skipped = [r for r in self.final if r.status == SKIPPED]
        reasons = sorted({str(r.reason) for r in skipped if r.reason})
        why = f"{len(skipped)} skipped ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})" \
            if skipped else "no benchmark case selected"
        self.warnings.append(f"no case was timed: {why}; failing the run (pass --allow-untimed if that is expected)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _write_outputs(self) -> None:
        assert self.journal is not None
        rows = merge_results(load_results(self.journal.path, allow_empty=True).results)  # the record of truth
        formatter = ResultsFormatter(machine_info=session_machine_info(self.study))
        crossovers = crossover_rows(rows)  # once, for both files
        written = []
        if self.study.output_csv:
            written.append(formatter.save_csv(rows, self.study.output_csv, crossovers))
        if self.study.output_json:
            written.append(formatter.save_json(rows, self.study.output_json, crossovers))
        if self.study.output_json:
            self.journal.path.unlink()  # everything in it is in the JSON, which --resume reads too
        else:
            self.notes.append(f"journal kept at {self.journal.path} (--resume reads it; it cannot read CSV)")
        self.notes.append(f"wrote {len(rows)} result(s) to {', '.join(map(str, written))}")

    def _write_plots(self) -> None:
        from attnbench.reporting.plots import make_plots

        out = self.config.getoption("plot_dir")
        stem = "attnbench"
        if out is None and self.output_path:
            out, stem = str(Path(self.output_path).parent), Path(self.output_path).name.split(".")[0] or stem
        paths = make_plots(self.final, out or "results", stem)
        self.notes.append(f"wrote {len(paths)} plot(s): {', '.join(map(str, paths))}" if paths else
                          "--plot: nothing to plot")

    @pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's, which may raise on --benchmark-compare-fail
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if is_xdist_worker(self.config):
            return
        writer = self.config.get_terminal_writer()
        from attnbench.reporting.console import render_summary

        shown = self.final or self.results
        ran = [r for r in shown if r.status != SKIPPED]
        if shown and not self.config.getoption("no_bench_summary"):
            terminalreporter.write_sep("=", "attnbench summary")
            if ran:
                terminalreporter.write(render_summary(shown, width=writer.fullwidth, color=writer.hasmarkup))
            else:
                terminalreporter.write_line(f"no benchmark case ran: {len(shown)} skipped "
                                            f"(their reasons are in pytest's short summary, -rs)")
        if ran:
            from attnbench.reporting.console import time_spent_line, warning_lines

            spent = time_spent_line(ran)
            if spent:
                terminalreporter.write_line(f"attnbench: {spent}")
            for line in warning_lines(ran):
                terminalreporter.write_line(f"attnbench: warning: {line}", yellow=True)
        if self.gate is not None:
            from attnbench.reporting.console import render_renderables

            self.gate.write_summary(terminalreporter,
                                    lambda parts: render_renderables(parts, writer.fullwidth, writer.hasmarkup))
        for line in self.notes:
            terminalreporter.write_line(f"attnbench: {line}")
        for line in self.warnings:
            terminalreporter.write_line(f"attnbench WARNING: {line}", yellow=True, bold=True)


def group_not_timed(results: list[CaseOutcome]) -> list[dict[str, Any]]:
    """``[{"status", "reason", "count", "cases": [fullname, ...], "keys": [case key, ...]}]`` for the cases that
    have no timing: ``exports.load_results`` reads them back as outcomes, so no report scrapes a pytest log."""
    groups: dict[tuple[str, str], list[CaseOutcome]] = {}
    for r in results:
        if not r.timed:
            groups.setdefault((r.status, r.reason or ""), []).append(r)
    return [{"status": status, "reason": reason, "count": len(group),
             "cases": [r.fullname or describe_key(r) for r in group],
             "keys": [r.key.to_json() for r in group]}
            for (status, reason), group in groups.items()]


def current_gpu_name(study: Study) -> str:
    """This machine's GPU model as ``reporting.verdicts.gpu_name`` reads it from machine_info."""
    if not study.run.device.startswith("cuda"):
        return "none (CPU)"
    import torch

    if not torch.cuda.is_available():
        return "none (CPU)"
    return torch.cuda.get_device_properties(torch.device(study.run.device)).name


def session_machine_info(study: Study) -> dict[str, Any]:
    from attnbench.measure.hardware import machine_info

    return {"node": platform.node(), "python": platform.python_version(), "system": platform.system(),
            "attnbench": machine_info(study.run.device)}


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _same_file(path: Path, other: str | None) -> bool:
    return other is not None and Path(other).exists() and os.path.samefile(path, other)


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
