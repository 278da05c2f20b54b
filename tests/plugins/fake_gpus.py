"""Test-only plugin: pretend this host has GPUs, and record which one each xdist worker was pinned to.

    ATTNBENCH_FAKE_GPUS=0,1,2 ATTNBENCH_FAKE_GPUS_OUT=DIR pytest -p tests.plugins.fake_gpus ...

A FAKE for the CPU: the controller plans workers as for three visible GPUs; each worker writes the
``CUDA_VISIBLE_DEVICES`` it was started with to ``DIR/<worker>.txt``. No CUDA is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnbench.pytest_plugin import scaleout

_FAKE = [g for g in os.environ.get("ATTNBENCH_FAKE_GPUS", "").split(",") if g]
if _FAKE and not os.environ.get("PYTEST_XDIST_WORKER"):
    scaleout.visible_gpu_entries = lambda: list(_FAKE)  # the controller's view of the host


def pytest_configure(config: pytest.Config) -> None:
    out = os.environ.get("ATTNBENCH_FAKE_GPUS_OUT")
    worker = getattr(config, "workerinput", None)
    if out and worker is not None:
        Path(out, f"{worker['workerid']}.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
