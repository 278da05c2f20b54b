"""Support is decided by vLLM: the adapter asks the backend class (``validate_configuration``), and the registry's
declared capability ranges, which gate collection without vLLM, must agree with vLLM's own answers."""

from __future__ import annotations

import sys
import types
from typing import Any, NamedTuple

import pytest

torch = pytest.importorskip("torch")

from attnbench.spec import backends as registry  # noqa: E402
from attnbench.spec.shapes import AttentionShape, MLAShape  # noqa: E402


class FakeCapability(NamedTuple):  # test-only stand-in for vllm.platforms.interface.DeviceCapability
    major: int
    minor: int


class FakeSelectorConfig(NamedTuple):  # test-only stand-in for vllm.v1.attention.selector.AttentionSelectorConfig
    head_size: int
    dtype: Any
    kv_cache_dtype: Any
    block_size: Any
    use_mla: bool = False


@pytest.fixture
def fake_vllm(monkeypatch):
    """Just the two vLLM names support_problems imports, and a GPU of capability 9.0."""
    interface = types.ModuleType("vllm.platforms.interface")
    interface.DeviceCapability = FakeCapability
    selector = types.ModuleType("vllm.v1.attention.selector")
    selector.AttentionSelectorConfig = FakeSelectorConfig
    for name in ("vllm", "vllm.platforms", "vllm.v1", "vllm.v1.attention"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.platforms.interface", interface)
    monkeypatch.setitem(sys.modules, "vllm.v1.attention.selector", selector)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


class FakeBackend:
    """A backend class that records what it was asked and answers like vLLM's base class."""

    asked: dict[str, Any] = {}

    @classmethod
    def validate_configuration(cls, device_capability: Any, **config: Any) -> list[str]:
        cls.asked = {"device_capability": device_capability, **config}
        reasons = []
        if config["block_size"] % 64:
            reasons.append("block_size not supported")
        if device_capability.major != 10:
            reasons.append("compute capability not supported")
        return reasons


@pytest.mark.parametrize("shape, use_mla", [(AttentionShape(), False), (MLAShape(), True)])
def test_the_adapter_asks_vllm_with_the_cases_own_values(fake_vllm, shape, use_mla):
    from attnbench.measure.adapters.vllm_common import support_problems

    problems = support_problems(FakeBackend, shape, torch.device("cuda:0"))
    asked = FakeBackend.asked
    assert asked["device_capability"] == (9, 0)
    assert (asked["head_size"], asked["dtype"], asked["kv_cache_dtype"], asked["block_size"], asked["use_mla"]) == (
        shape.head_dim, torch.bfloat16, "auto", shape.block_size, use_mla)
    assert "compute capability not supported" in problems
    assert ("block_size not supported" in problems) == (shape.block_size % 64 != 0)


CAPABILITIES = [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)]


def test_the_declared_capability_table_matches_vllms_answers():
    """Drift check: runs wherever vLLM imports (the GPU machine); CI has no vLLM and skips it."""
    pytest.importorskip("vllm")
    try:
        from vllm.platforms.interface import DeviceCapability
        from vllm.v1.attention.backends.registry import AttentionBackendEnum
    except ImportError as exc:
        pytest.skip(f"vLLM does not import here: {exc}")
    disagreements = []
    for info in registry.BACKENDS:
        if not info.needs_vllm:
            continue
        cls = AttentionBackendEnum[info.name].get_class()
        for cap in CAPABILITIES:
            declared = registry.capability_skip_reason(info, cap) is None
            if declared != bool(cls.supports_compute_capability(DeviceCapability(*cap))):
                disagreements.append(f"{info.name} SM{cap[0]}{cap[1]}: table says {'yes' if declared else 'no'}")
    assert not disagreements, "; ".join(disagreements)


def _stand_in_vllm(folder, version: str):
    """A package that is vLLM only by name and version (its metadata), nothing else."""
    (folder / "vllm").mkdir()
    (folder / "vllm" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = folder / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")


def test_another_vllm_release_skips_every_vllm_case_in_one_line_naming_both_versions(tmp_path):
    """The adapters drive vLLM 0.26's internals: with another release installed, each vLLM case is skipped before
    it builds anything, with one reason naming both versions (pytest's -rs lists it once, with the count)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    _stand_in_vllm(tmp_path, "0.30.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)]), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "pytest", str(root / "bench_attention"),
                           "-c", str(root / "pytest.ini"), "--rootdir", str(root), "-p", "no:cacheprovider",
                           "--benchmark-only", "-rs",
                           "--backends", "FLASH_ATTN", "TRITON_ATTN", "REFERENCE", "--batch-specs", "q1s64", "8q1s1k",
                           "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    said = "vLLM 0.30.0 is installed; this suite drives vLLM 0.26.0's internals (pip install 'vllm==0.26.0')"
    assert f"SKIPPED [4] " in out and said in out, out
    assert "2 passed" in out and "Traceback" not in out, out  # REFERENCE needs no vLLM and still runs


@pytest.mark.parametrize("version, problem", [("0.26.0", False), ("0.26.1", False), ("0.26.0+cu130", False),
                                              ("0.30.0", True), ("1.26.0", True)])
def test_the_vllm_release_check_reads_major_and_minor(monkeypatch, version, problem):
    from attnbench.measure import hardware

    monkeypatch.setattr(hardware, "package_version", lambda name: version)
    hardware.vllm_version_problem.cache_clear()
    try:
        assert (hardware.vllm_version_problem() is not None) == problem
    finally:
        hardware.vllm_version_problem.cache_clear()
