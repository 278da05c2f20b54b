"""What the machine is: capability gating, measured peaks and provenance for machine_info."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import shutil
import subprocess
from typing import Any

from attnbench.spec.backends import VLLM_VERSION, BackendInfo, capability_skip_reason


def cuda_capability(device: Any = None) -> tuple[int, int] | None:
    """The SM capability of ``device`` (or the current GPU); None without torch or a CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@functools.lru_cache(maxsize=1)
def vllm_version_problem() -> str | None:
    """Why the installed vLLM cannot run this suite's adapters (they drive one release's internals: 0.30 dropped
    fields of CommonAttentionMetadata that they pass), or None. Read once, from the package's metadata, without
    importing vLLM; a vLLM without metadata is taken at its word."""
    installed = package_version("vllm")
    if installed is None or _release(installed) == _release(VLLM_VERSION):
        return None
    return (f"vLLM {installed} is installed; this suite drives vLLM {VLLM_VERSION}'s internals "
            f"(pip install 'vllm=={VLLM_VERSION}')")


def _release(version: str) -> tuple[str, ...]:
    """major.minor: patch releases (0.26.1) and local builds (0.26.0+cu130) keep the internals the adapters use."""
    return tuple(version.split("+")[0].split(".")[:2])


def skip_reason(info: BackendInfo, device: Any) -> str | None:
    """Why ``info`` cannot run on ``device`` here, or None."""
    dev_type = getattr(device, "type", str(device).split(":")[0])
    wrong_vllm = vllm_version_problem() if info.needs_vllm and vllm_installed() else None
    if wrong_vllm:
        return wrong_vllm
    if info.needs_cuda and dev_type != "cuda":
        return f"{info.name} needs a CUDA device (--device {device})"
    if dev_type == "cuda":
        reason = capability_skip_reason(info, cuda_capability(device))
        if reason:
            return reason
    if info.needs_vllm and not vllm_installed():
        return "vllm not installed (pip install -e '.[gpu]')"
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_PEAKS: dict[Any, dict[str, Any]] = {}  # physical GPU (its UUID, else its index) -> the peaks measured on it


def physical_gpu_key(index: int) -> Any:
    """What names GPU ``index`` of this process physically: its UUID, else the index itself (one process
    never sees one GPU under two indices, so the index is unique here too)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else ("index", index)


def device_peaks(device: Any) -> dict[str, Any]:
    """Measured once per physical GPU per process: a large bf16 matmul (TFLOP/s) and a device-to-device copy
    (GB/s). Keyed by the GPU, not by how it was named, so "cuda" and "cuda:0" share one measurement (two
    would disagree slightly and give one case two peaks)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = physical_gpu_key(index)
    if key not in _PEAKS:
        _PEAKS[key] = _measure_peaks(torch.device("cuda", index))
    return dict(_PEAKS[key])  # a copy: a caller that edits its peaks must not edit everyone's


def _measure_peaks(device: Any) -> dict[str, Any]:
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    src = torch.empty(2**30, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)

    def best(fn, reps: int = 20) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        return min(times)

    t_mm = best(lambda: torch.mm(a, b))
    t_cp = best(lambda: dst.copy_(src))
    a = b = src = dst = None  # release the 2.4 GB of probe buffers before the cache is emptied
    torch.cuda.empty_cache()
    return {"peak_bf16_tflops": 2 * n**3 / t_mm / 1e12, "peak_copy_gbps": 2 * 2**30 / t_cp / 1e9,
            "peak_method": "best of 20: torch.mm bf16 8192^3; 1 GiB device-to-device copy (read+write bytes)"}


def cuda_visible_entries() -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` (indices, or UUIDs as given); None when it is not set."""
    import os

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if env is None else [e.strip() for e in env.split(",") if e.strip()]


def gpu_identity(device: Any) -> dict[str, Any] | None:
    """Which physical GPU ``device`` is: its index on the host, name and UUID, and the xdist worker."""
    import os

    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    visible = cuda_visible_entries() or []
    host_index: Any = visible[index] if index < len(visible) else index
    if isinstance(host_index, str) and host_index.isdigit():
        host_index = int(host_index)
    uuid = getattr(props, "uuid", None)
    return {"index": host_index, "name": props.name, "uuid": f"GPU-{uuid}" if uuid is not None else None,
            "worker": os.environ.get("PYTEST_XDIST_WORKER")}


def host_available_bytes() -> int | None:
    """Memory the host can still give a process (Linux MemAvailable; None where unknown)."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_smi(fields: str, gpu: str) -> list[str] | None:
    """``nvidia-smi`` fields of one GPU, named by its UUID: an index would be the host's GPU 0, not the one a
    worker given ``CUDA_VISIBLE_DEVICES=3`` runs on."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", gpu],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [f.strip() for f in out.strip().splitlines()[0].split(",")] if out.strip() else None


def machine_info(device: str = "cuda") -> dict[str, Any]:
    """GPU and software provenance for pytest-benchmark's machine_info."""
    info: dict[str, Any] = {
        "torch": package_version("torch"), "triton": package_version("triton"),
        "vllm": package_version("vllm"), "flashinfer": package_version("flashinfer-python"),
        "pytest_benchmark": package_version("pytest-benchmark"),
    }
    try:
        import torch
    except ImportError:
        return info
    info["cuda_runtime"] = torch.version.cuda
    if not device.startswith("cuda") or not torch.cuda.is_available():
        info["gpu"] = None
        return info
    dev = torch.device(device)
    props = torch.cuda.get_device_properties(dev)
    info["gpu"] = {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_bytes": getattr(props, "L2_cache_size", None),
    }
    identity = gpu_identity(dev)
    smi = (_nvidia_smi("driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit", identity["uuid"])
           if identity and identity["uuid"] else None)
    if smi:
        keys = ("driver", "sm_clock_mhz", "max_sm_clock_mhz", "mem_clock_mhz", "max_mem_clock_mhz", "power_limit_w")
        info["gpu"].update(dict(zip(keys, smi)))
    info["peaks"] = device_peaks(dev)
    return info


# What makes two runs' numbers incomparable, in machine_info["attnbench"]: the GPU model and its driver, and the
# software that builds or picks the kernels. Not: what is measured or read at the start of each run (peaks, clocks,
# power limit), which GPUs ran the cases, SM count/memory/L2 (the model's), host, CPU, Python, pytest-benchmark.
COMPARED_VERSIONS = (("cuda_runtime", "CUDA runtime"), ("torch", "torch"), ("triton", "triton"), ("vllm", "vllm"),
                     ("flashinfer", "flashinfer"))


def machine_differences(current: Any, saved: Any) -> list[str]:
    """What differs between two runs' ``machine_info["attnbench"]`` (this run's first) that matters when comparing
    their numbers, one ``GPU 'NVIDIA H100 80GB HBM3' vs 'NVIDIA H200'`` / ``vllm 0.26.0 vs 0.27.0`` each; a key
    one of them does not have (a run saved before the key existed) is not a difference."""
    if not isinstance(current, dict) or not isinstance(saved, dict):
        if isinstance(current, dict) != isinstance(saved, dict):
            which = "this run" if not isinstance(current, dict) else "the saved run"
            return [f"{which} has no attnbench machine_info (GPU and versions unknown)"]
        return []
    out = []
    if "gpu" in current and "gpu" in saved:
        now, then = current["gpu"] or {}, saved["gpu"] or {}
        now_name, then_name = now.get("name") or "none (CPU)", then.get("name") or "none (CPU)"
        if now_name != then_name:
            out.append(f"GPU {now_name!r} vs {then_name!r}")
        if now.get("driver") and then.get("driver") and now["driver"] != then["driver"]:
            out.append(f"driver {now['driver']} vs {then['driver']}")
    for key, label in COMPARED_VERSIONS:
        if key in current and key in saved and current[key] != saved[key]:
            out.append(f"{label} {current[key] or 'none'} vs {saved[key] or 'none'}")
    return out
