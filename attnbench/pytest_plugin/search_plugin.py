"""pytest plugin: the adaptive crossover search of ``decode_vs_prefill`` studies (``--full-grid`` turns it off).

Flow (``attnbench.measure.crossover_search`` holds the logic):

1. ``pytest_collection_modifyitems`` (trylast) orders the pipeline cases by (search level, curve, q,
   pipeline): both pipelines of one q stay adjacent, and every case comes after the lower-level
   cases its decision depends on.
2. ``pytest_runtest_setup`` (tryfirst) decides each case; one not visited is skipped with the one
   reason ``SEARCH_SKIP_REASON``, so ``-ra`` shows them as one line. A case whose decision needs a
   result still running on another xdist worker waits for it (``--search-timeout``, then it runs).
3. ``pytest_runtest_logreport`` feeds the ``attnbench_result`` record of each case to the search, on
   the process that ran it. Processes of one session share results through a directory: each appends
   JSON lines to ``results-<pid>.jsonl`` and reads the others' files.
4. The controlling (or only) process prints the answers per curve and removes the directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pytest

from attnbench.measure.crossover_search import (PIPELINES, Curve, Measurement, SearchState, curve_kv, decide_waiting,
                                        measurement, search_levels, vllm_default)
from attnbench.spec import options
from attnbench.results.outcome import FAILED
from attnbench.pytest_plugin.plugin import STUDY_KEY, case_point
from attnbench.pytest_plugin.reporting_plugin import outcome_of
from grammar import get_batch_stats, parse_batch_spec

SEARCH_SKIP_REASON = "not visited by the adaptive crossover search (--full-grid times it)"
SEARCH_DIR_KEY = "attnbench_search_dir"  # workerinput key: the shared results directory
PLUGIN_NAME = "attnbench-crossover-search"
_INFO_KEY = pytest.StashKey[dict]()

SearchSlot = tuple[str, str, str, str]  # family, backend, batch spec, pipeline: a case's place in a search


@pytest.hookimpl(trylast=True)  # after attnbench.pytest_plugin.plugin has resolved the study
def pytest_configure(config: pytest.Config) -> None:
    study = config.stash.get(STUDY_KEY, None)
    if study is not None and study.mode != "decode_vs_prefill":
        # the search's options do nothing in any other mode: refused, as options that need another are
        timeout_given = config.getoption("search_timeout") != options.DEFAULTS["search_timeout"]
        for flag, given in (("--full-grid", config.getoption("full_grid")), ("--search-timeout", timeout_given)):
            if given:
                raise pytest.UsageError(f"{flag}: only a decode_vs_prefill study searches for its crossover; this "
                                        f"study's mode is {study.mode}")
    if study is None or study.mode != "decode_vs_prefill" or config.getoption("full_grid"):
        return
    config.pluginmanager.register(CrossoverSearch(config), PLUGIN_NAME)


def search_info(item: pytest.Item) -> dict[str, Any] | None:
    """The search's decision for ``item`` (level, reason, bracket, ...) once set up; None outside a search."""
    return item.stash.get(_INFO_KEY, None)


# ------------------------------------------------------------------ curves

def search_slot(item: pytest.Item) -> SearchSlot | None:
    """(family, backend, batch spec, pipeline) of a decode_vs_prefill case; None for any other item."""
    point = case_point(item)
    if point is None or point.pipeline not in PIPELINES:
        return None
    return point.backend.family, point.backend.name, point.batch_spec, point.pipeline


def curve_points(specs: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], tuple[Curve, int]]:
    """(family, backend, spec) -> (curve, q). A curve is (family, backend, batch size, kv length), as in
    ``reporting.analysis.crossover_table``: kv is None when it varies with q, and splits the curve only where one
    batch size holds the same q at several kv lengths."""
    stats: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    for family, backend, spec in set(specs):
        s = get_batch_stats(parse_batch_spec(spec))
        stats[(family, backend, spec)] = int(s["total_requests"]), int(s["max_q_len"]), int(s["max_kv_len"])
    groups: dict[tuple[str, str, int], list[tuple[str, int, int]]] = {}
    for (family, backend, spec), (size, q, kv) in stats.items():
        groups.setdefault((family, backend, size), []).append((spec, q, kv))
    out: dict[tuple[str, str, str], tuple[Curve, int]] = {}
    for (family, backend, size), members in groups.items():
        named = curve_kv((q, kv) for _, q, kv in members)
        for spec, q, kv in members:
            out[(family, backend, spec)] = ((family, backend, size, named[(q, kv)]), q)
    return out


def _curve_order(curve: Curve) -> tuple:
    family, backend, size, kv = curve  # type: ignore[misc]
    return family, backend, size, kv or 0


# ------------------------------------------------------------------ shared results

class SharedLog:
    """JSON lines shared by the processes of one session on one host: each appends to its own
    ``results-<pid>.jsonl`` (flushed and fsynced per line) and reads everyone's, only the bytes
    added since it last looked."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.own = self.dir / f"results-{os.getpid()}.jsonl"
        self._offsets: dict[Path, int] = {}
        self._file: Any = None

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.own, "a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # another worker decides from it; a crash must not lose it

    def read_new(self, include_own: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in sorted(self.dir.glob("results-*.jsonl")):
            if path == self.own and not include_own:
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            start = self._offsets.get(path, 0)
            if size <= start:  # unchanged since the last look: no read at all
                continue
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read(size - start)
            complete = chunk.rfind(b"\n") + 1  # a line still being written is read next time
            self._offsets[path] = start + complete
            out += [json.loads(line) for line in chunk[:complete].splitlines() if line.strip()]
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ------------------------------------------------------------------ the session

@dataclass(eq=False)  # a plugin object must stay hashable
class CrossoverSearch:
    config: pytest.Config
    role: str = "serial"  # "serial", "controller" (xdist, runs nothing) or "worker"
    directory: Path = field(init=False)
    owns_directory: bool = False
    keys: dict[str, tuple[Curve, int, str]] = field(default_factory=dict)  # nodeid -> (curve, q, pipeline)
    where: dict[tuple[str, str, str], tuple[Curve, int]] = field(default_factory=dict)  # (family, backend, spec)
    grids: dict[Curve, list[int]] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # nodeid -> search_info, this process's
    state: SearchState | None = None
    log: SharedLog = field(init=False)
    timeout: float = 0.0  # seconds a decision waits for another worker's result
    rows: list[dict[str, Any]] = field(default_factory=list)  # the summary, built at sessionfinish
    totals: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        worker_input = getattr(self.config, "workerinput", None)
        if worker_input is not None:
            self.role = "worker"
        elif self.config.getoption("dist", "no") != "no":
            self.role = "controller"
        given = (worker_input or {}).get(SEARCH_DIR_KEY)
        self.owns_directory = given is None
        self.directory = Path(given or tempfile.mkdtemp(prefix="attnbench-search-"))
        self.log = SharedLog(self.directory)
        # serially, every result a decision needs has been reported before it is asked: never wait
        self.timeout = self.config.getoption("search_timeout") if self.role == "worker" else 0.0

    @pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without xdist
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[SEARCH_DIR_KEY] = str(self.directory)

    # ------------------------------------------------------------ collection

    @pytest.hookimpl(trylast=True)  # after attnbench.pytest_plugin.plugin dropped the unused benchmarks
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        slots = [(i, item, key) for i, item in enumerate(items) if (key := search_slot(item)) is not None]
        if not slots:
            return
        self.where = curve_points((f, b, s) for _, _, (f, b, s, _) in slots)
        grids: dict[Curve, set[int]] = {}
        for _, item, (family, backend, spec, pipeline) in slots:
            curve, q = self.where[(family, backend, spec)]
            self.keys[item.nodeid] = (curve, q, pipeline)
            grids.setdefault(curve, set()).add(q)
        self.grids = {c: sorted(grids[c]) for c in sorted(grids, key=_curve_order)}
        levels = {c: search_levels(qs) for c, qs in self.grids.items()}
        rank = {c: i for i, c in enumerate(self.grids)}

        def order(entry: tuple[int, pytest.Item, SearchSlot]) -> tuple:
            curve, q, pipeline = self.keys[entry[1].nodeid]
            return levels[curve][q], rank[curve], q, PIPELINES.index(pipeline)

        # the search's cases take the slots they had, in search order; other items stay where they were
        for (index, _, _), (_, item, _) in zip(slots, sorted(slots, key=order)):
            items[index] = item

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.keys:
            return
        running = {self.keys[item.nodeid] for item in session.items if item.nodeid in self.keys}
        self.state = SearchState(self.grids, present=lambda curve, q, pipeline: (curve, q, pipeline) in running)
        specs: dict[Curve, dict[str, int]] = {}
        for (_family, _backend, spec), (curve, q) in self.where.items():
            specs.setdefault(curve, {})[spec] = q
        for curve, qs in self.grids.items():  # the controller's summary (and crash feed) reads these
            self.log.append({"kind": "grid", "curve": list(curve), "qs": qs,  # type: ignore[call-overload]
                             "specs": specs.get(curve, {})})
        self._carry_resumed(running)

    def _carry_resumed(self, running: set[tuple[Curve, int, str]]) -> None:
        """Cases ``--resume`` deselected were timed in the resumed file: the search decides from those rows."""
        reporting = self.config.pluginmanager.get_plugin("attnbench-reporting-session")
        resumed = getattr(getattr(reporting, "resumed", None), "results", None) or []
        for r in resumed:
            hit = self.where.get((r.family, r.backend, r.batch_spec))
            if hit is not None and r.pipeline in PIPELINES and (*hit, r.pipeline) not in running:
                self._record(hit[0], hit[1], r.pipeline, vars(r), "carried from --resume", None)

    # ------------------------------------------------------------ running

    def _refresh(self) -> None:
        assert self.state is not None
        for rec in self.log.read_new():
            if rec.get("kind") == "result":
                self.state.tell(tuple(rec["curve"]), rec["q"], rec["pipeline"], rec["seconds"], rec["rel_stderr"],
                                rec["status"])

    @pytest.hookimpl(tryfirst=True)  # before the hardware gate: a point not visited is not set up at all
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        key = self.keys.get(item.nodeid)
        if key is None or self.state is None:
            return
        curve, q, _pipeline = key
        decision = decide_waiting(self.state, curve, q, self._refresh, timeout=self.timeout)
        family, backend, size, kv = curve  # type: ignore[misc]
        info = {**decision.as_dict(), "curve": {"backend": backend, "batch_size": size, "kv_len": kv}, "q": q}
        item.stash[_INFO_KEY] = self.decisions[item.nodeid] = info
        if not decision.visit:
            pytest.skip(SEARCH_SKIP_REASON)
        item.user_properties.append(("attnbench_search", info))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        try:
            return (yield)
        finally:
            info, bench = search_info(item), getattr(item, "funcargs", {}).get("benchmark")
            # only into a recording's extra_info: an extra_info of just this key would read as a recording
            if info is not None and info["visit"] and getattr(bench, "extra_info", None):
                bench.extra_info["search"] = info

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.role == "controller":
            self._feed_crash(report)
            return
        if self.state is None:
            return
        key, info = self.keys.get(report.nodeid), self.decisions.get(report.nodeid)
        if key is None or info is None or not info["visit"]:
            return  # not a search case, or one the search skipped: no result to learn from
        curve, q, pipeline = key
        outcome = outcome_of(report)
        if outcome is not None:
            self._record(curve, q, pipeline, measurement(outcome),
                         outcome.info("backend_info", "default_reorder_batch_threshold"), info["reason"], info["level"])
        elif report.when == "teardown" and not self.state.known(curve, q, pipeline):
            # it ran without a record (no reporting plugin): untimed, so no other case waits for it
            self._record(curve, q, pipeline, Measurement(None, status="unknown"), None, info["reason"], info["level"])

    def _feed_crash(self, report: pytest.TestReport) -> None:
        """The controller runs nothing, so each worker feeds the search the cases it ran; but a case whose worker
        died (``scaleout`` fails it here) has no worker left to report it, and others would wait for it."""
        outcome = outcome_of(report)
        if outcome is None or outcome.status != FAILED or outcome.key.pipeline not in PIPELINES:
            return
        for rec in self.log.read_new():
            if rec.get("kind") == "grid":
                curve = tuple(rec["curve"])
                for spec, q in (rec.get("specs") or {}).items():
                    self.where[(curve[0], curve[1], spec)] = (curve, q)
        hit = self.where.get((outcome.key.family, outcome.key.backend, outcome.key.batch_spec))
        if hit is not None:
            self.log.append({"kind": "result", "curve": list(hit[0]), "q": hit[1],  # type: ignore[call-overload]
                             "pipeline": outcome.key.pipeline, "seconds": None, "rel_stderr": None,
                             "status": "failed", "level": None, "reason": "reported by the controller"})

    def _record(self, curve: Curve, q: int, pipeline: str, m: Measurement, default: Any, reason: str | None,
                level: int | None) -> None:
        assert self.state is not None
        self.state.tell(curve, q, pipeline, m.seconds, m.rel_stderr, m.status)
        self.log.append({"kind": "result", "curve": list(curve), "q": q,  # type: ignore[call-overload]
                         "pipeline": pipeline,
                         "seconds": m.seconds, "rel_stderr": m.rel_stderr, "status": m.status,
                         "level": level, "reason": reason,
                         "default": default})

    # ------------------------------------------------------------ the end

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.log.close()
        if self.role == "worker":
            return
        try:
            self.rows, self.totals = summarize(SharedLog(self.directory).read_new(include_own=True))
        finally:
            if self.owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.role == "worker" or not self.rows:
            return
        from attnbench.reporting.console import render_renderables

        writer = self.config.get_terminal_writer()
        terminalreporter.write_sep("=", "attnbench crossover search")
        terminalreporter.write(render_renderables([summary_table(self.rows)], writer.fullwidth, writer.hasmarkup))
        t = self.totals
        line = (f"visited {t['visited']} of {t['points']} query lengths (x2 pipelines), {t['timed']} timed; "
                f"{t['skipped']} cases not visited (--full-grid times every one)")
        if t["gave_up"]:
            line += f"; {t['gave_up']} case(s) timed after waiting --search-timeout for another worker"
        terminalreporter.write_line(line)


def summarize(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Summary rows (one per curve) and totals from the shared log's records."""
    grids: dict[Curve, set[int]] = {}
    results = []
    for rec in records:
        if rec.get("kind") == "grid":
            grids.setdefault(tuple(rec["curve"]), set()).update(rec["qs"])
        elif rec.get("kind") == "result":
            results.append(rec)
    state = SearchState({c: grids[c] for c in sorted(grids, key=_curve_order)})
    visits: dict[Curve, list[int]] = {c: [] for c in state.grids}
    defaults: dict[Curve, Any] = {}
    gave_up = 0
    for rec in results:
        curve = tuple(rec["curve"])
        if curve not in state.grids:
            continue
        state.tell(curve, rec["q"], rec["pipeline"], rec["seconds"], rec["rel_stderr"], rec["status"])
        if rec["q"] not in visits[curve]:
            visits[curve].append(rec["q"])
        defaults[curve] = rec.get("default") if rec.get("default") is not None else defaults.get(curve)
        gave_up += str(rec.get("reason") or "").startswith("gave up")
    rows = []
    for curve, qs in state.grids.items():
        family, backend, size, kv = curve  # type: ignore[misc]
        answer = state.answer(curve, vllm_default(backend, defaults.get(curve)))
        deeper = [q for q in visits[curve] if state.levels[curve][q] > 0]
        rows.append({"backend": backend, "batch_size": size, "kv_len": kv, "answer": answer,
                     "visited": len(visits[curve]), "grid": len(qs), "bisection": deeper})
    visited = sum(r["visited"] for r in rows)
    points = sum(r["grid"] for r in rows)
    timed = sum(r["answer"].points_timed for r in rows)
    return rows, {"visited": visited, "timed": timed, "points": points, "skipped": 2 * (points - visited),
                  "gave_up": gave_up}


def summary_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Crossover search: reorder_batch_threshold = largest q where decode is faster",
                  title_justify="left")
    show_kv = any(r["kv_len"] is not None for r in rows)
    names = ["backend", "batch size"] + (["kv"] if show_kv else []) + [
        "decode faster up to q", "vLLM default", "q timed", "flips", "bisection visits / note"]
    for name in names:
        table.add_column(name, justify="left" if name in ("backend", "bisection visits / note") else "right")
    for r in rows:
        a = r["answer"]
        note = ", ".join(map(str, r["bisection"][:12])) + (" ..." if len(r["bisection"]) > 12 else "")
        if a.note():
            note = f"{note}; {a.note()}" if note else a.note()
        cells = [r["backend"], str(r["batch_size"])] + ([str(r["kv_len"] or "varies")] if show_kv else []) + [
            a.label(), "–" if a.vllm_default is None else str(a.vllm_default),
            f"{a.points_timed}/{r['grid']}" + (f" ({r['visited']} visited)" if r["visited"] != a.points_timed else ""),
            str(a.flips), note]
        table.add_row(*cells)
    return table
