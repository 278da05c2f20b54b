"""Whole studies on every GPU of a host: one pytest-xdist worker per GPU, one crashed case at a time.

pytest-xdist is the engine. On a GPU run the controller starts one worker per GPU, each pinned
to its GPU with ``CUDA_VISIBLE_DEVICES`` through xdist's own ``popen//env:`` spec (a replacement
worker inherits the spec, so it stays on its GPU). Two workers never share a GPU: a plan that
would is a usage error naming the numbers.

Crash isolation is the default for GPU runs because a CUDA fault poisons its process's context:
nothing in that process can be trusted to time again. Each worker keeps a *flight recorder*
(``<dir>/<worker>.events.jsonl`` plus a faulthandler dump) that says which case it was in. When
a worker dies, the controller turns xdist's "worker crashed" report into a FAILED case with its
test id and cause (the CUDA error, the fatal signal, the exit code), and xdist starts a
replacement on the same GPU. A worker whose case left a sticky CUDA error exits on its own
before its next case; that next case never started, so it is handed back to the scheduler.

``--gpus none`` (or ``-n 0``) runs in-process; a crash then ends the run, and the case that
killed it is named on stderr by the flight recorder.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pytest

from attnbench.measure.hardware import cuda_visible_entries
from attnbench.pytest_plugin.plugin import STUDY_KEY
from attnbench.results.outcome import FAILED, CaseOutcome
from attnbench.pytest_plugin.reporting_plugin import attach_outcome, case_for_item, is_xdist_worker

WORKER_GPU = "attnbench_gpu"  # workerinput key: the CUDA_VISIBLE_DEVICES entry a worker is pinned to
RECORDER_DIR = "attnbench_recorder_dir"  # workerinput key: where workers keep their flight recorders
POISONED_EXIT = 75  # a worker that stops itself because its CUDA context holds a sticky error
DEFAULT_MAX_WORKER_RESTART = 1000  # a crash costs one case; xdist's default (4 x workers) would end a study early

# Substrings of errors after which CUDA refuses every further call in the process (sticky errors).
STICKY_CUDA_ERRORS = ("illegal memory access", "illegal address", "an illegal instruction",
                      "unspecified launch failure", "device-side assert", "misaligned address",
                      "cudaErrorIllegalAddress", "cudaErrorLaunchFailure", "CUDA error: unknown error",
                      "uncorrectable ECC error", "hardware stack error")


class PlanError(ValueError):
    """A worker plan that would put two timing workers on one GPU, or contradicts itself."""


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers run the cases and which GPU each is pinned to (None: not pinned)."""

    gpus: tuple[str, ...] | None  # CUDA_VISIBLE_DEVICES entries, one per worker; None = no pinning
    workers: int  # 0 = in-process
    why: str

    @property
    def isolated(self) -> bool:
        return self.workers > 0


def plan_workers(*, device: str, visible_gpus: Sequence[str], numprocesses: int | None, gpus: str | None,
                 xdist_available: bool = True) -> WorkerPlan:
    """The worker plan for this run, from the device, the visible GPUs, ``-n`` and ``--gpus``.

    ``numprocesses`` is ``-n`` after xdist resolved it (None: not given); ``gpus`` is ``--gpus``
    (None: not given; "auto", "none", a count, or a comma list of CUDA_VISIBLE_DEVICES entries).
    """
    on_gpu = device.split(":", 1)[0] == "cuda"
    if gpus == "none" and numprocesses:  # on any device: "none" is a request for no workers at all
        raise PlanError(f"--gpus none runs in-process, but -n {numprocesses} asks for workers: give one of them")
    if not on_gpu or not visible_gpus:
        if gpus not in (None, "auto", "none"):
            raise PlanError(f"--gpus {gpus}: no GPU to pin workers to (device {device}, "
                            f"{len(visible_gpus)} GPU(s) visible)")
        n = numprocesses or 0
        return WorkerPlan(None, n, f"{n} worker(s), not pinned (device {device}, no GPU timing)" if n
                          else "in-process (no GPU timing)")
    if gpus == "none":
        return WorkerPlan(None, 0, "in-process (--gpus none): a crash ends the run")
    if numprocesses == 0 and gpus is None:
        return WorkerPlan(None, 0, "in-process (-n 0): a crash ends the run")
    chosen = _choose_gpus(device, list(visible_gpus), gpus)
    if numprocesses is not None and numprocesses != len(chosen):
        if gpus is None and numprocesses < len(chosen):
            chosen = chosen[:numprocesses]
        else:
            where = f"--gpus {gpus} selects {len(chosen)}" if gpus is not None else f"{len(chosen)} are visible"
            raise PlanError(f"-n {numprocesses} would put more than one timing worker on a GPU ({where}; "
                            f"GPUs: {','.join(chosen)}): use -n {len(chosen)} or --gpus auto")
    if not xdist_available:
        if gpus is not None:
            raise PlanError(f"--gpus {gpus} needs pytest-xdist (pip install pytest-xdist)")
        return WorkerPlan(None, 0, "in-process: pytest-xdist is not installed, so a crash ends the run")
    return WorkerPlan(tuple(chosen), len(chosen),
                      f"{len(chosen)} worker(s), one per GPU ({','.join(chosen)}); a crashed case fails alone")


def _choose_gpus(device: str, visible: list[str], gpus: str | None) -> list[str]:
    if gpus in (None, "auto"):
        index = device.split(":", 1)[1] if ":" in device else None
        if index is None:
            return visible
        if not index.isascii() or not index.isdigit() or int(index) >= len(visible):
            raise PlanError(f"--device {device}: only {len(visible)} GPU(s) visible")
        return [visible[int(index)]]
    if gpus.isascii() and gpus.isdigit():
        count = int(gpus)
        if not 1 <= count <= len(visible):
            raise PlanError(f"--gpus {gpus}: {len(visible)} GPU(s) visible")
        return visible[:count]
    chosen = [g.strip() for g in gpus.split(",")]
    for g in chosen:
        if not g or g not in visible:
            raise PlanError(f"--gpus {gpus}: '{g}' is not a visible GPU (visible: {','.join(visible)})")
    if len(set(chosen)) != len(chosen):
        raise PlanError(f"--gpus {gpus}: a GPU is listed twice (two workers would time on it)")
    return chosen


def visible_gpu_entries() -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries of the GPUs this process sees (indices, or UUIDs as given)."""
    try:
        import torch
    except ImportError:
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    entries = cuda_visible_entries()
    return [str(i) for i in range(count)] if entries is None else entries[:count]


def _xdist_available(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("xdist")


# ---------------------------------------------------------------- the plugin

PLAN_KEY = pytest.StashKey[WorkerPlan]()
RECORDER_KEY = pytest.StashKey["FlightRecorder"]()
CRASH_DIR_KEY = pytest.StashKey[Path]()
POISONED_KEY = pytest.StashKey[str]()  # in-process: the case whose sticky CUDA error poisoned the process
RESCHEDULED_KEY = pytest.StashKey[dict]()  # nodeid -> how often a worker died before it began
MAX_RESCHEDULES = 3  # a case whose workers keep dying before it starts is failed, not retried forever


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` on a GPU run: one worker per visible GPU, not per CPU core."""
    study = config.stash.get(STUDY_KEY, None)
    device = study.run.device if study else (config.getoption("device") or "cuda")
    if str(device).startswith("cuda"):
        gpus = visible_gpu_entries()
        if gpus:
            return len(gpus)
    return None


# Plain priority: after attnbench.pytest_plugin.plugin (tryfirst) resolved the study, before xdist's trylast configure.
def pytest_configure(config: pytest.Config) -> None:
    """Controller: decide the worker plan before xdist builds its session. Worker: pin."""
    if is_xdist_worker(config):
        _configure_worker(config)
        return
    study = config.stash.get(STUDY_KEY, None)
    if study is None or config.getoption("collectonly") or config.getoption("usepdb", False):
        return
    numprocesses = config.getoption("numprocesses", None)
    gpus = config.getoption("gpus")
    device = study.run.device
    visible = visible_gpu_entries() if device.startswith("cuda") else []
    try:
        plan = plan_workers(device=device, visible_gpus=visible, numprocesses=numprocesses, gpus=gpus,
                            xdist_available=_xdist_available(config))
    except PlanError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[PLAN_KEY] = plan
    if plan.gpus is None:
        return  # xdist as the user asked (CPU or no GPU), or in-process
    config.option.dist = "load" if config.option.dist == "no" else config.option.dist
    config.option.tx = [f"popen//env:CUDA_VISIBLE_DEVICES={gpu}" for gpu in plan.gpus]
    config.option.numprocesses = plan.workers
    if config.option.maxworkerrestart is None:
        config.option.maxworkerrestart = str(DEFAULT_MAX_WORKER_RESTART)


def pytest_report_header(config: pytest.Config) -> str | None:
    plan = config.stash.get(PLAN_KEY, None)
    return f"attnbench workers: {plan.why}" if plan is not None else None


# ---------------------------------------------------------------- controller side

@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell each new worker (a replacement too) its GPU and where its flight recorder goes."""
    config = node.config
    if CRASH_DIR_KEY not in config.stash:
        config.stash[CRASH_DIR_KEY] = Path(tempfile.mkdtemp(prefix="attnbench-workers-"))
    node.workerinput[RECORDER_DIR] = str(config.stash[CRASH_DIR_KEY])
    spec_env = getattr(getattr(node.gateway, "spec", None), "env", None) or {}
    node.workerinput[WORKER_GPU] = spec_env.get("CUDA_VISIBLE_DEVICES")


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """A worker died: fail the case it was running with the cause, or reschedule one it never began."""
    node = getattr(report, "node", None)
    if node is None:
        return
    crash_dir = node.config.stash.get(CRASH_DIR_KEY, None)
    worker_id = node.workerinput.get("workerid", "?")
    story = read_flight_recorder(crash_dir, worker_id) if crash_dir else FlightStory()
    exit_text = describe_exit(_exit_status(node))
    gpu = node.workerinput.get(WORKER_GPU)
    where = f"worker {worker_id}" + (f" (GPU {gpu})" if gpu is not None else "")
    tries = node.config.stash.setdefault(RESCHEDULED_KEY, {})
    if story.current != crashitem and tries.get(crashitem, 0) < MAX_RESCHEDULES:
        # It never started: the worker stopped before it (a poisoned context exiting on purpose, or a
        # crash between cases). Hand it back; the replacement worker runs it.
        tries[crashitem] = tries.get(crashitem, 0) + 1
        sched.mark_test_pending(crashitem)
        report.outcome = "rerun"  # type: ignore[assignment]
        report.longrepr = f"{where} stopped before {crashitem} began ({exit_text}); rescheduled"
        report.attnbench_rescheduled = True  # type: ignore[attr-defined]
        return
    cause = story.cause(exit_text)
    if story.current != crashitem:
        cause = f"workers died {MAX_RESCHEDULES + 1} times before it began; last: {cause}"
    report.longrepr = f"{where} died while running {crashitem}: {cause}"
    report.when = "call"  # type: ignore[assignment]
    if story.record is not None:
        died = dataclasses.replace(CaseOutcome.from_json(story.record), reason=f"process died: {cause}")
        attach_outcome(report, died)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    if getattr(report, "attnbench_rescheduled", False):
        return "rescheduled", "R", ("RESCHEDULED", {"yellow": True})
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    recorder = session.config.stash.get(RECORDER_KEY, None)
    if recorder is not None:
        recorder.arm()


def pytest_sessionfinish(session: pytest.Session) -> None:
    crash_dir = session.config.stash.get(CRASH_DIR_KEY, None)
    if crash_dir is not None and not is_xdist_worker(session.config):
        shutil.rmtree(crash_dir, ignore_errors=True)


def _exit_status(node: Any) -> int | None:
    """The dead worker's exit status from execnet's Popen (negative: killed by that signal)."""
    popen = getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)
    if popen is None:
        return None
    for _ in range(50):  # the channel closes a moment before the process is reaped
        status = popen.poll()
        if status is not None:
            return status
        time.sleep(0.1)
    return None


def describe_exit(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if status == POISONED_EXIT:
        return f"exit {status}: stopped itself after a sticky CUDA error"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        hint = " (the kernel's OOM killer sends SIGKILL: see dmesg)" if -status == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {status}"


# ---------------------------------------------------------------- the flight recorder

@dataclass
class FlightStory:
    """What a dead worker's recorder says: the case it was in and the last words."""

    current: str | None = None  # nodeid of a case started and not finished
    record: dict[str, Any] | None = None  # that case's failed CaseOutcome, as JSON
    errors: list[str] = dataclasses.field(default_factory=list)  # exception lines seen in that case
    fault: str = ""  # faulthandler's dump (fatal signal + Python stack)

    def cause(self, exit_text: str) -> str:
        parts = []
        cuda = next((e for e in self.errors if "CUDA" in e or "cuda" in e), None)
        if cuda:
            parts.append(cuda)
        elif self.errors:
            parts.append(self.errors[-1])
        fatal = next((line.strip() for line in self.fault.splitlines() if line.startswith("Fatal Python error")), None)
        if fatal:
            parts.append(fatal)
        parts.append(exit_text)
        return "; ".join(parts)


def read_flight_recorder(folder: Path, worker_id: str) -> FlightStory:
    story = FlightStory()
    events = folder / f"{worker_id}.events.jsonl"
    if events.exists():
        for line in events.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            kind = event.get("event")
            if kind == "start":
                story.current, story.record, story.errors = event.get("nodeid"), event.get("record"), []
            elif kind == "done" and event.get("nodeid") == story.current:
                story.current, story.record, story.errors = None, None, []
            elif kind == "error" and event.get("nodeid") == story.current:
                story.errors.append(str(event.get("text", "")))
    fault = folder / f"{worker_id}.fault.txt"
    if fault.exists():
        story.fault = fault.read_text(encoding="utf-8", errors="replace")[-4000:]
    return story


class FlightRecorder:
    """Per worker process: which case is running, its errors, and a faulthandler dump on a fatal signal."""

    def __init__(self, folder: Path, worker_id: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._events = open(folder / f"{worker_id}.events.jsonl", "a", encoding="utf-8")
        self._fault = open(folder / f"{worker_id}.fault.txt", "a", encoding="utf-8")
        self.poisoned: str | None = None  # the sticky CUDA error this process holds, if any

    def arm(self) -> None:
        """Send faulthandler's dump of a fatal signal here (after pytest's own plugin pointed it at stderr)."""
        faulthandler.enable(file=self._fault, all_threads=False)

    def write(self, **event: Any) -> None:
        self._events.write(json.dumps(event, default=str) + "\n")
        self._events.flush()  # in the kernel's page cache now: it outlives this process, whatever kills it


def _configure_worker(config: pytest.Config) -> None:
    folder = config.workerinput.get(RECORDER_DIR)
    if folder:
        config.stash[RECORDER_KEY] = FlightRecorder(Path(folder), config.workerinput["workerid"])
    gpu = config.workerinput.get(WORKER_GPU)
    study = config.stash.get(STUDY_KEY, None)
    if gpu is not None and study is not None and study.run.device != "cuda":
        # pinned by CUDA_VISIBLE_DEVICES: this worker's only GPU is cuda:0, whatever the controller's index
        config.stash[STUDY_KEY] = dataclasses.replace(study, run=dataclasses.replace(study.run, device="cuda"))


def sticky_cuda_error(text: str) -> bool:
    return any(needle.lower() in text.lower() for needle in STICKY_CUDA_ERRORS)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    recorder = item.config.stash.get(RECORDER_KEY, None)
    if recorder is None:
        return (yield)
    if recorder.poisoned:
        # This process's CUDA context is dead; stop before this case starts so the controller
        # reschedules it on a replacement worker (same GPU, fresh context).
        sys.stderr.write(f"attnbench: worker stops before {item.nodeid}: CUDA context poisoned "
                         f"({recorder.poisoned})\n")
        sys.stderr.flush()
        os._exit(POISONED_EXIT)
    case = case_for_item(item)
    record = CaseOutcome.unmeasured(case, FAILED, fullname=item.nodeid).to_json() if case else None
    recorder.write(event="start", nodeid=item.nodeid, record=record)
    result = yield
    recorder.write(event="done", nodeid=item.nodeid)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """Note a case's errors in the recorder; a sticky CUDA error poisons the process."""
    report = yield
    if call.excinfo is None or "bench_case" not in getattr(item, "fixturenames", ()):
        return report
    lines = call.excinfo.exconly().strip().splitlines()
    first = lines[0] if lines else ""
    recorder = item.config.stash.get(RECORDER_KEY, None)
    if recorder is not None:
        recorder.write(event="error", nodeid=item.nodeid, text=first[:500])
    # An assertion (a wrong result) never poisons; the runner's errors carry the CUDA text on their first line.
    sticky = first if sticky_cuda_error(first) and not call.excinfo.errisinstance(AssertionError) else None
    if sticky:
        if recorder is not None:
            recorder.poisoned = sticky[:300]
        else:
            item.config.stash[POISONED_KEY] = f"{item.nodeid}: {sticky[:300]}"
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """In-process runs: after a sticky CUDA error nothing more is timed in this process."""
    poisoned = item.config.stash.get(POISONED_KEY, None)
    if poisoned and "bench_case" in getattr(item, "fixturenames", ()):
        pytest.skip(f"CUDA context poisoned by {poisoned}; nothing more can be timed in this process "
                    f"(run with --gpus auto, the default on a GPU, to isolate cases)")
