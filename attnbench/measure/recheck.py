"""Cases timed again in a fresh process, for the regression gate.

One process can carry an offset of its own: its CUDA context, where its allocator history puts the buffers,
the state the GPU was in while it ran. The baseline runs measure that offset between processes, but one
process of the new code still has one. So a case whose first verdict leans slower is timed again here, in a new
interpreter (``python -m attnbench.measure.recheck``), and its verdict counts both processes
(``reporting.verdicts.needs_recheck``, ``compare_runs(rechecks=)``).

The cases travel to the child and the outcomes back as pickles in a private temporary directory: both sides are
this same code. The child runs ``runner.execute`` as the plugin does; a case that raises is a FAILED outcome, one
that skips is SKIPPED, and a child that dies leaves the cases it did not finish without an outcome.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import SkipCase
from attnbench.results.outcome import FAILED, SKIPPED, CaseOutcome


def in_fresh_process(cases: Sequence[BenchCase], *, gpu_uuid: str | None = None,
                     timeout_s: float | None = None) -> tuple[list[CaseOutcome | None], str | None]:
    """Each case timed again, in order, in one new process: (an outcome per case, None where the child did not
    get to it; a note when the child failed). ``gpu_uuid`` pins the child to that GPU (the one the first
    process used), for cases that name no GPU index of their own."""
    if not cases:
        return [], None
    env = dict(os.environ)
    # the child imports this checkout, as the parent did, whether or not it is installed
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if gpu_uuid and all(c.run.device == "cuda" for c in cases):
        env["CUDA_VISIBLE_DEVICES"] = gpu_uuid
    with tempfile.TemporaryDirectory(prefix="attnbench_recheck_") as tmp:
        cases_path, out_path = Path(tmp) / "cases.pkl", Path(tmp) / "outcomes.pkl"
        cases_path.write_bytes(pickle.dumps(list(cases)))
        try:
            done = subprocess.run([sys.executable, "-m", "attnbench.measure.recheck", str(cases_path), str(out_path)],
                                  env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return [None] * len(cases), f"the re-timing process ran past {timeout_s:.0f} s"
        try:
            outcomes: list[CaseOutcome | None] = pickle.loads(out_path.read_bytes()) if out_path.exists() else []
        except (OSError, pickle.UnpicklingError, EOFError):
            outcomes = []
        outcomes += [None] * (len(cases) - len(outcomes))
        note = None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            note = f"the re-timing process exited with {done.returncode}: {tail[0][:200]}"
        return outcomes, note


def _time(case: BenchCase) -> CaseOutcome:
    from attnbench.measure.runner import execute  # here, not at import: the parent never times anything itself

    try:
        return CaseOutcome.measured(execute(case).record())
    except SkipCase as exc:
        return CaseOutcome.unmeasured(case, SKIPPED, str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed re-timing is reported, never raised into the gate
        return CaseOutcome.unmeasured(case, FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0])


def main(argv: Sequence[str] | None = None) -> int:
    cases_path, out_path = (argv if argv is not None else sys.argv[1:])
    cases: list[BenchCase] = pickle.loads(Path(cases_path).read_bytes())
    outcomes: list[CaseOutcome] = []
    for case in cases:
        outcomes.append(_time(case))
        partial = Path(f"{out_path}.partial")
        partial.write_bytes(pickle.dumps(outcomes))
        os.replace(partial, out_path)  # after each case, whole: a crash keeps what was done
        if outcomes[-1].status == FAILED and "CUDA" in (outcomes[-1].reason or ""):
            return 1  # a CUDA error poisons this process: nothing after it could be trusted
    return 0


if __name__ == "__main__":
    sys.exit(main())
