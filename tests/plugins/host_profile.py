"""Test-only plugin: cProfile over every benchmark case's call, summed, written at the end.

    pytest -p tests.plugins.host_profile --host-profile prof.txt ...

For finding where a case's host time goes (``extra_info.host_seconds`` says how much per phase).
cProfile slows Python code down, so its numbers are for ranking, not for the README.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from typing import Any

import pytest

_PROFILE = cProfile.Profile()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--host-profile", metavar="FILE", help="test only: write summed cProfile stats of the cases")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    if not item.config.getoption("host_profile"):
        return (yield)
    _PROFILE.enable()
    try:
        return (yield)
    finally:
        _PROFILE.disable()


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("host_profile")
    if not path:
        return
    text = io.StringIO()
    stats = pstats.Stats(_PROFILE, stream=text)
    stats.sort_stats("cumulative").print_stats(70)
    stats.sort_stats("tottime").print_stats(40)
    with open(path, "w") as f:
        f.write(text.getvalue())
