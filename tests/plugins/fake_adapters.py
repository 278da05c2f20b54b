"""Test-only adapters (fakes of a backend) that exercise the runner's correctness gates on the CPU.

``FakeReplayDrift``: a backend whose eager calls are right and whose later calls (what the timed
rounds run) go wrong in one request, from call ``wrong_from`` on; the check after timing must fail it.
``FakeOneWrongRequest``: right everywhere except one request, by a relative error just above
tolerance; the per-request gate must fail it while the global error passes.
``FakeQuantised*``: a backend with a per-tensor-scaled fp8 cache, written and read as vLLM's fp8 path
does (calibrated scales, quantising cache write, dequantising attention), with the kernel bugs a
quantised path can have: reading the stored elements without their scale (per tensor, or a per-(token,
head) cache's inline one), or writing unquantised.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from attnbench.measure import buffers
from attnbench.spec.backends import BackendInfo
from attnbench.spec.cases import BenchCase
from attnbench.spec.contract import LayerCall
from attnbench.measure.adapters.reference import PlainTorchAdapter, scales_for
from attnbench.measure.kv_cache import PerTokenHeadFormat, hadamard_rotation, write_stored
from attnbench.measure.oracle import paged_attention
from attnbench.spec.workload import build_layout, resolve_device


class FakeAttentionAdapter(PlainTorchAdapter):
    """The REFERENCE computation, with a hook that spoils the output of some calls."""

    mla_paths = None
    attention_paths = None
    sparse_selections = None
    quantized_query = False

    def __init__(self, case: BenchCase, wrong_from: int | None, wrong_request: int, factor: float) -> None:
        self.case, self.shape = case, case.effective_shape
        self.device = resolve_device(case.run.device)
        self.requests = case.requests
        self.layout = build_layout(self.requests, self.shape.block_size, self.device, case.run.seed)
        self.bytes_per_layer = buffers.attention_buffer_bytes(self.layout, self.shape)
        self.info: dict[str, Any] = {"kernel_path": "fake"}
        self.calls = 0
        self.wrong_from, self.wrong_request, self.factor = wrong_from, wrong_request, factor

    def estimate_bytes(self, num_layer_buffers: int) -> int:
        return num_layer_buffers * self.bytes_per_layer

    jitter = 0.0  # every other call's output of one request off by this fraction
    ignores_scale = False  # the attention reads quantised elements without their scales (per tensor or entry)
    writes_unscaled = False  # the cache write stores the values without dividing by the scale
    wrong_rotation = False

    def make_layer(self, index: int) -> LayerCall:
        layout, shape = self.layout, self.shape
        buf = buffers.make_attention_buffers(layout, shape, self.device, self.case.run.seed + 1 + index,
                                            lambda: buffers.plain_attention_cache(layout, shape, self.device),
                                            calibrate=scales_for(self.case.run.kv_scales))
        scale = shape.head_dim ** -0.5
        start = sum(r.q_len for r in self.requests[:self.wrong_request])
        rows = slice(start, start + self.requests[self.wrong_request].q_len)
        write_scales = (1.0, 1.0) if self.writes_unscaled else (buf.k_scale, buf.v_scale)
        read_scales = (1.0, 1.0) if self.ignores_scale else (buf.k_scale, buf.v_scale)
        read_format = buf.kv_format
        if self.ignores_scale and isinstance(buf.kv_format, PerTokenHeadFormat):
            read_format = ScaleBlindPerTokenHead(buf.kv_format)
        if self.wrong_rotation:  # int4 un-rotated with the other signs
            assert isinstance(buf.kv_format, PerTokenHeadFormat) and buf.kv_format.rotation is not None
            other = hadamard_rotation(-buf.kv_format.rotation[:, 0])
            read_format = dataclasses.replace(buf.kv_format, rotation=other)

        def run() -> None:
            write_stored(buf.kv_format, buf.key_cache, layout.slot_mapping, buf.key, write_scales[0])
            write_stored(buf.kv_format, buf.value_cache, layout.slot_mapping, buf.value, write_scales[1])
            buf.output.copy_(paged_attention(buf.query, buf.key_cache, buf.value_cache, layout.block_table,
                                             layout.query_lens, layout.kv_lens, scale, *read_scales, read_format))
            if self.wrong_from is not None and self.calls >= self.wrong_from:
                buf.output[rows] *= self.factor
            if self.jitter:  # a result that moves between identical calls, well within tolerance (atomics, a race)
                buf.output[rows] *= 1 + self.jitter * (self.calls % 2)
            self.calls += 1

        return LayerCall(run, lambda: buf.output, buffers.attention_oracle(buf, layout, scale),
                         buffers.attention_cache_check(buf, layout),
                         unquantized_oracle=buffers.unquantized_attention_oracle(buf, layout, scale))


class ScaleBlindPerTokenHead:
    """A kernel's reading of a per-(token, head) cache that forgets each entry's inline scale."""

    def __init__(self, fmt: PerTokenHeadFormat) -> None:
        self.fmt = fmt

    def decode(self, stored: torch.Tensor, scale: float) -> torch.Tensor:
        return self.fmt.decode(stored, scale) / self.fmt.entry_scales(stored).unsqueeze(-1)


def make_per_token_head_wrong_rotation(case: BenchCase) -> FakeAttentionAdapter:
    adapter = FakeAttentionAdapter(case, wrong_from=None, wrong_request=0, factor=1.0)
    adapter.wrong_rotation = True
    return adapter


def make_replay_drift(case: BenchCase) -> FakeAttentionAdapter:
    # call 0 is the eager check; every later call (warm-up, timed rounds) doubles request 1's output
    return FakeAttentionAdapter(case, wrong_from=1, wrong_request=1, factor=2.0)


def make_jittery(case: BenchCase) -> FakeAttentionAdapter:
    adapter = FakeAttentionAdapter(case, wrong_from=None, wrong_request=0, factor=1.0)
    adapter.jitter = 1e-2  # above bf16 rounding (2^-8), below the 2e-2 tolerance
    return adapter


def make_replay_differs(case: BenchCase) -> FakeAttentionAdapter:
    # every call after the first (the eager, verified one) 1 % off in one request, the same each time: within the
    # per-request tolerance (2 %), as a graph replay that computes other than eager but steadily would be
    return FakeAttentionAdapter(case, wrong_from=1, wrong_request=0, factor=1.01)


def make_one_wrong_request(case: BenchCase) -> FakeAttentionAdapter:
    # 3 % off in one request: far beyond bf16 tolerance (2 %) there, tiny in the global error of many
    return FakeAttentionAdapter(case, wrong_from=0, wrong_request=0, factor=1.03)


def make_honest(case: BenchCase) -> FakeAttentionAdapter:
    return FakeAttentionAdapter(case, wrong_from=None, wrong_request=0, factor=1.0)


def make_quantised_ignores_scale(case: BenchCase) -> FakeAttentionAdapter:
    adapter = FakeAttentionAdapter(case, wrong_from=None, wrong_request=0, factor=1.0)
    adapter.ignores_scale = True
    return adapter


def make_quantised_writes_unscaled(case: BenchCase) -> FakeAttentionAdapter:
    adapter = FakeAttentionAdapter(case, wrong_from=None, wrong_request=0, factor=1.0)
    adapter.writes_unscaled = True
    return adapter


def fake_backend(factory: str) -> BackendInfo:
    return BackendInfo(f"FAKE_{factory.upper()}", "attention", f"tests.plugins.fake_adapters:make_{factory}",
                       needs_vllm=False, needs_cuda=False)

