"""The suite's extension points, as pytest hooks (registered by ``plugin.pytest_addhooks``).

A plugin of the user's (a conftest.py, or a module given with ``-p``) implements them to take the suite's
results where pytest-benchmark's JSON is not enough: a dashboard that wants each case as it finishes, a CI job
that posts the verdicts to a pull request. They are called on the process that reports (the xdist controller),
with the same typed objects the suite's own outputs are written from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pytest

if TYPE_CHECKING:
    from attnbench.results.outcome import CaseOutcome
    from attnbench.reporting.verdicts import Verdict

hookspec = pytest.hookspec


@hookspec
def pytest_attnbench_case_done(config: pytest.Config, outcome: "CaseOutcome") -> None:
    """A benchmark case finished: timed (``outcome.record`` holds everything measured), skipped or failed
    (``outcome.status``, ``outcome.reason``). Called once per case, in the order they finish."""


@hookspec
def pytest_attnbench_verdicts(config: pytest.Config, verdicts: "Sequence[Verdict]") -> None:
    """The verdicts against ``--baseline-json`` (re-checks included), before ``--fail-on-regression`` sets the
    exit status."""
