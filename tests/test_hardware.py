"""Measured peaks: once per physical GPU, whatever the device is called (no GPU needed: CUDA is faked)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attnbench.measure import hardware


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two fake GPUs (UUIDs aaaa, bbbb), GPU 0 current; returns the devices each measurement ran on."""
    measured: list[torch.device] = []

    def measure(device):
        measured.append(device)
        return {"peak_bf16_tflops": 900.0 + device.index, "peak_copy_gbps": 4000.0 + len(measured)}

    uuids = {0: "aaaa", 1: "bbbb"}
    monkeypatch.setattr(hardware, "_PEAKS", {})
    monkeypatch.setattr(hardware, "_measure_peaks", measure)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="fake", uuid=uuids[i]))
    return measured


def test_cuda_and_cuda_0_measure_once(fake_gpus):
    first = hardware.device_peaks("cuda")
    assert hardware.device_peaks("cuda:0") == first == hardware.device_peaks(torch.device("cuda", 0))
    assert fake_gpus == [torch.device("cuda", 0)]
    assert first == {"peak_bf16_tflops": 900.0, "peak_copy_gbps": 4001.0}
    assert set(hardware._PEAKS) == {"GPU-aaaa"}


def test_another_gpu_is_measured_and_plain_cuda_follows_the_current_device(fake_gpus, monkeypatch):
    hardware.device_peaks("cuda:0")
    second = hardware.device_peaks("cuda:1")
    assert second == {"peak_bf16_tflops": 901.0, "peak_copy_gbps": 4002.0}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert hardware.device_peaks("cuda") == second  # GPU 1, already measured
    assert fake_gpus == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_a_callers_edit_does_not_change_the_cached_peaks(fake_gpus):
    hardware.device_peaks("cuda")["peak_bf16_tflops"] = 0.0
    assert hardware.device_peaks("cuda:0")["peak_bf16_tflops"] == 900.0


def test_without_a_uuid_the_index_names_the_gpu(fake_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="old torch"))
    hardware.device_peaks("cuda")
    hardware.device_peaks("cuda:0")
    assert len(fake_gpus) == 1 and set(hardware._PEAKS) == {("index", 0)}


def test_the_cpu_has_no_peaks(fake_gpus):
    assert hardware.device_peaks("cpu") == {} and fake_gpus == []


# ------------------------------------------------------------------ --benchmark-compare's machine check

H100 = {"torch": "2.11.0", "triton": "3.5.0", "vllm": "0.26.0", "flashinfer": "0.5.3", "pytest_benchmark": "5.2.3",
        "cuda_runtime": "12.9",
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132, "memory_bytes": 85e9,
                "l2_bytes": 52428800, "driver": "580.65.06", "sm_clock_mhz": "1980", "max_sm_clock_mhz": "1980",
                "mem_clock_mhz": "2619", "max_mem_clock_mhz": "2619", "power_limit_w": "700.00"},
        "peaks": {"peak_bf16_tflops": 760.1, "peak_copy_gbps": 2890.5},
        "gpus_used": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa"}]}


def _changed(info: dict, **changes) -> dict:
    """``info`` with ``changes``: gpu_name is the GPU's name, the GPU's other keys are the GPU's."""
    out = {**info, "gpu": dict(info["gpu"])}
    for key, value in changes.items():
        if key == "gpu_name":
            out["gpu"]["name"] = value
        elif key in out["gpu"]:
            out["gpu"][key] = value
        else:
            out[key] = value
    return out


def test_what_any_two_runs_differ_in_is_no_machine_difference() -> None:
    other = _changed(H100, sm_clock_mhz="1755", mem_clock_mhz="1593", power_limit_w="500.00", pytest_benchmark="5.3.1",
                     peaks={"peak_bf16_tflops": 700.0, "peak_copy_gbps": 2500.0},
                     gpus_used=[{"index": 3, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-bbbb"}])
    assert hardware.machine_differences(other, H100) == []
    del other["gpus_used"], other["peaks"]  # what this run has at start-up: no case has run yet
    assert hardware.machine_differences(other, H100) == []


def test_each_difference_that_matters_is_named_with_both_values() -> None:
    h200 = _changed(H100, gpu_name="NVIDIA H200", driver="590.10", vllm="0.27.0", torch="2.12.0")
    assert hardware.machine_differences(h200, H100) == [
        "GPU 'NVIDIA H200' vs 'NVIDIA H100 80GB HBM3'", "driver 590.10 vs 580.65.06", "torch 2.12.0 vs 2.11.0",
        "vllm 0.27.0 vs 0.26.0"]
    assert hardware.machine_differences(_changed(H100, flashinfer=None, cuda_runtime="13.0", triton="3.6.0"),
                                        H100) == ["CUDA runtime 13.0 vs 12.9", "triton 3.6.0 vs 3.5.0",
                                                  "flashinfer none vs 0.5.3"]


def test_a_cpu_run_against_a_gpu_run_and_keys_a_run_lacks() -> None:
    cpu = {"torch": "2.13.0+cpu", "triton": None, "vllm": None, "flashinfer": None, "cuda_runtime": None, "gpu": None}
    assert hardware.machine_differences(cpu, cpu) == []
    assert hardware.machine_differences(cpu, H100)[0] == "GPU 'none (CPU)' vs 'NVIDIA H100 80GB HBM3'"
    older = {k: v for k, v in H100.items() if k not in ("triton", "cuda_runtime")}  # saved before those keys
    older["gpu"] = {k: v for k, v in H100["gpu"].items() if k != "driver"}  # nvidia-smi gave nothing
    assert hardware.machine_differences(H100, older) == []
    assert hardware.machine_differences(H100, None) == ["the saved run has no attnbench machine_info "
                                                        "(GPU and versions unknown)"]
    assert hardware.machine_differences(None, None) == []
