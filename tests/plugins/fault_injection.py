"""Test-only plugin: ends (or poisons) the process inside one chosen benchmark case.

    pytest -p tests.plugins.fault_injection --inject-fault segfault@q1s256 ...

KIND@TEXT: the first test id containing TEXT gets the fault, once per process. Kinds:
``segfault`` (SIGSEGV), ``abort`` (SIGABRT, as a C++ terminate after a CUDA error), ``exit``
(``os._exit(3)``), ``sigkill`` (what the OOM killer sends), ``fake-sticky-cuda`` (raises the text
of a sticky CUDA error, so the worker must treat its context as poisoned; a fake, for CPU CI) and
``cuda-illegal-address`` (a real out-of-bounds store from a Triton kernel: GPU only).
This exists to test the harness; it is never loaded unless named with ``-p``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import pytest

FAKE_STICKY_TEXT = "CUDA error: an illegal memory access was encountered (fake, injected by fault_injection)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--inject-fault", metavar="KIND@TEXT", help="test only: fault the case whose id contains TEXT")


def _illegal_address() -> None:
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def store_far(ptr):
        tl.store(ptr + (1 << 40), 1.0)  # a terabyte past a tiny tensor: an illegal address on the GPU

    buf = torch.zeros(1, device="cuda")
    store_far[(1,)](buf)  # asynchronous: the case's own next synchronisation meets the sticky error


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    spec = item.config.getoption("inject_fault")
    if not spec or getattr(pytest_runtest_call, "done", False):
        return
    kind, _, text = spec.partition("@")
    if text not in item.nodeid:
        return
    pytest_runtest_call.done = True  # type: ignore[attr-defined]
    if kind == "segfault":
        ctypes.string_at(0)
    elif kind == "abort":
        os.abort()
    elif kind == "exit":
        os._exit(3)
    elif kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "fake-sticky-cuda":
        raise RuntimeError(FAKE_STICKY_TEXT)
    elif kind == "cuda-illegal-address":
        _illegal_address()
    else:
        raise pytest.UsageError(f"--inject-fault {spec}: unknown kind {kind!r}")
