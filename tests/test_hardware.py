"""Measured peaks: once per physical GPU, whatever the device is called (no GPU needed: CUDA is faked)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attnbench import hardware


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
