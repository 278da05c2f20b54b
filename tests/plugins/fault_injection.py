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
    parser.addoption("--inject-fault-at", choices=("setup", "call"), default="call",
                     help="test only: the phase the fault happens in (setup: before a skip could happen)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.config.getoption("inject_fault_at") == "setup":
        _maybe_fault(item)


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
    if item.config.getoption("inject_fault_at") == "call":
        _maybe_fault(item)


_DONE: list[str] = []  # once per process


def _maybe_fault(item: pytest.Item) -> None:
    spec = item.config.getoption("inject_fault")
    if not spec or _DONE:
        return
    kind, _, text = spec.partition("@")
    if text not in item.nodeid:
        return
    _DONE.append(item.nodeid)
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
