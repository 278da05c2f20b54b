"""SM clock, power, temperature and throttle reasons while a case is timed (NVML, by GPU UUID).

Kernel time follows the clocks, and the clocks follow power and temperature (on the H200, MLA steps at
~400-490 W ran power-capped at 1725-1965 MHz; zero-filled K/V drew less power, and FA3 q8k ran 9 % faster
on it although NVML read the same 1935-1980 MHz). So every timed
case samples NVML before timing, once per timed round (while the round runs on the GPU) and after,
and a case whose rounds ran with a throttle reason set (power cap, thermal or hardware slowdown;
as nvbench flags them) says so in its record, its table row and its verdict.

The GPU is found by its UUID (from torch's device properties), never by an index: under
``CUDA_VISIBLE_DEVICES`` a process's ``cuda:0`` is whatever physical GPU it was given. Without
``nvidia-ml-py`` or a driver there is no monitor and the record has no clocks (never made-up ones).
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from attnbench.results.record import Clocks

# NVML clocks-event reason bits (nvml.h nvmlClocksEventReason*) that mean the SM clock was held down
THROTTLE_REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
                    0x80: "hw_power_brake"}
THROTTLE_MASK = sum(THROTTLE_REASONS)


@dataclass(frozen=True)
class ClockSample:
    sm_mhz: int
    power_w: float
    temp_c: int
    reasons: int  # the NVML clocks-event reason bits at this moment


def reason_names(bits: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS.items() if bits & bit)


class ClockMonitor:
    """NVML readings of one physical GPU. ``nvml`` is the pynvml module (injectable for tests)."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml, self._handle = nvml, handle
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        self._reasons = reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons  # the pre-12.5 name
        self.max_sm_mhz = int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))

    @classmethod
    def for_uuid(cls, uuid: str | None, nvml: Any = None) -> "ClockMonitor | None":
        """The monitor of the GPU with this UUID ("GPU-..."); None where NVML cannot be used."""
        if not uuid:
            return None
        nvml = nvml if nvml is not None else _nvml()
        if nvml is None:
            return None
        try:
            return cls(nvml, nvml.nvmlDeviceGetHandleByUUID(uuid))
        except Exception:  # noqa: BLE001 - pynvml raises NVMLError subclasses; no monitor, no clocks
            return None

    def sample(self) -> ClockSample | None:
        nvml, h = self._nvml, self._handle
        try:
            return ClockSample(int(nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)),
                               nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
                               int(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
                               int(self._reasons(h)))
        except Exception:  # noqa: BLE001 - a reading that fails is a missing sample, not a failed case
            return None


@functools.lru_cache(maxsize=1)
def _nvml() -> Any:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no package, no driver: no clocks
        return None


def monitor_for(device: Any) -> ClockMonitor | None:
    """The monitor of the physical GPU behind a torch CUDA device; None on the CPU or without NVML."""
    from attnbench.measure.hardware import gpu_identity

    identity = gpu_identity(device)
    return ClockMonitor.for_uuid(identity["uuid"]) if identity else None


def summarize(before: ClockSample | None, rounds: Sequence[ClockSample | None], after: ClockSample | None,
              max_sm_mhz: int | None) -> Clocks | None:
    """The record's clocks part: before/after, min/median per round, and the rounds that ran throttled."""
    taken = [s for s in rounds if s is not None]
    if not taken:
        return None
    clocks = [s.sm_mhz for s in taken]
    throttled = [s for s in taken if s.reasons & THROTTLE_MASK]
    seen = 0
    for s in throttled:
        seen |= s.reasons
    return Clocks(
        rounds_sampled=len(taken), sm_mhz_min=min(clocks), sm_mhz_median=float(statistics.median(clocks)),
        sm_mhz_max=max(clocks), max_sm_mhz=max_sm_mhz,
        power_w_median=float(statistics.median(s.power_w for s in taken)), power_w_max=max(s.power_w for s in taken),
        temp_c_max=max(s.temp_c for s in taken), throttled_rounds=len(throttled), throttle_reasons=reason_names(seen),
        sm_mhz_before=before.sm_mhz if before else None, sm_mhz_after=after.sm_mhz if after else None,
        power_w_before=before.power_w if before else None, power_w_after=after.power_w if after else None,
        temp_c_before=before.temp_c if before else None, temp_c_after=after.temp_c if after else None)
