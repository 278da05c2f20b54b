"""Workloads: a parsed batch turned into a physically honest paged batch.

Backend-independent: the block table, slot mapping and sequence metadata that every
layer of one case shares (as in a model, all layers share one block table). Each
request owns its own randomly permuted physical blocks; block 0 is kept as the null
block that pads block tables, as vLLM does. Tensors are built on the target device
from a seeded generator; nothing here is timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from grammar import BatchRequest

NULL_BLOCK = 0


@dataclass(frozen=True)
class BatchLayout:
    requests: tuple[BatchRequest, ...]  # in execution order
    block_size: int
    num_blocks: int  # physical blocks in every layer's cache, the null block included
    query_start_loc: torch.Tensor  # int32 [B+1], on device
    seq_lens: torch.Tensor  # int32 [B], on device
    block_table: torch.Tensor  # int32 [B, max_blocks_per_req], on device, padded with NULL_BLOCK
    slot_mapping: torch.Tensor  # int64 [T], on device: where each new token's K/V goes

    @property
    def num_reqs(self) -> int:
        return len(self.requests)

    @property
    def num_tokens(self) -> int:
        return sum(r.q_len for r in self.requests)

    @property
    def query_lens(self) -> list[int]:
        return [r.q_len for r in self.requests]

    @property
    def kv_lens(self) -> list[int]:
        return [r.kv_len for r in self.requests]

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens)

    @property
    def max_seq_len(self) -> int:
        return max(self.kv_lens)


@dataclass(frozen=True)
class LayoutSize:
    """What ``build_layout`` would make, counted without making it: the buffer-size formulas of
    attnbench.measure.buffers read only these fields, so a case can be sized before anything is allocated."""

    requests: tuple[BatchRequest, ...]
    block_size: int
    num_blocks: int  # the null block included
    num_tokens: int

    @property
    def host_bytes(self) -> int:
        """Host memory ``build_layout`` itself needs: the permutation as a tensor and a Python list (~48 B a block),
        the block table, and the slot list (~40 B a new token)."""
        width = max(math.ceil(r.kv_len / self.block_size) for r in self.requests)
        return 48 * self.num_blocks + 4 * len(self.requests) * width + 40 * self.num_tokens


def layout_size(requests: Sequence[BatchRequest], block_size: int) -> LayoutSize:
    blocks = sum(math.ceil(r.kv_len / block_size) for r in requests)
    return LayoutSize(tuple(requests), block_size, blocks + 1, sum(r.q_len for r in requests))


def build_layout(requests: Sequence[BatchRequest], block_size: int, device: str | torch.device,
                 seed: int = 0) -> BatchLayout:
    """Give every request its own randomly placed physical blocks and map new tokens to their slots."""
    gen = torch.Generator().manual_seed(seed)
    per_req = [math.ceil(r.kv_len / block_size) for r in requests]
    total = sum(per_req)
    physical = (torch.randperm(total, generator=gen) + 1).tolist()  # +1: block 0 is the null block
    width = max(per_req)
    table = torch.full((len(requests), width), NULL_BLOCK, dtype=torch.int32)
    slots: list[int] = []
    start = 0
    for i, (req, n) in enumerate(zip(requests, per_req)):
        mine = physical[start:start + n]
        start += n
        table[i, :n] = torch.tensor(mine, dtype=torch.int32)
        for pos in range(req.context_len, req.kv_len):  # the new tokens sit at the end of the sequence
            slots.append(mine[pos // block_size] * block_size + pos % block_size)
    qsl = [0]
    for r in requests:
        qsl.append(qsl[-1] + r.q_len)
    return BatchLayout(
        requests=tuple(requests),
        block_size=block_size,
        num_blocks=total + 1,
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor([r.kv_len for r in requests], dtype=torch.int32, device=device),
        block_table=table.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
    )


def scheduler_order(requests: Sequence[BatchRequest], threshold: int | None) -> list[BatchRequest]:
    """Order a batch exactly as vLLM 0.26.0's model runner does for a builder's ``reorder_batch_threshold``.

    Mirrors ``reorder_batch_to_split_decodes_and_prefills``: regions decode (has context,
    q <= threshold; spec-decode extends included), long extend (has context, q > threshold), then
    pure prefill (no context, whatever q). Rows already in their target region stay where they
    are; the misplaced rows fill the misplaced slots in region order (stable), which is what
    vLLM's swap cycles produce. No threshold (FLASH_ATTN, TRITON_ATTN): vLLM does not reorder.
    """
    if threshold is None:
        return list(requests)

    def region(r: BatchRequest) -> int:
        if r.is_prefill:
            return 2
        return 0 if r.q_len <= threshold else 1

    regions = [region(r) for r in requests]
    target = sorted(regions)
    misplaced = [i for i, (have, want) in enumerate(zip(regions, target)) if have != want]
    sources = sorted(misplaced, key=lambda i: regions[i])
    ordered = list(requests)
    for src, dst in zip(sources, misplaced):
        ordered[dst] = requests[src]
    return ordered


def generator(device: str | torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def random_tensor(shape: Sequence[int], dtype: torch.dtype, device: str | torch.device,
                  gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal data made on ``device`` (``gen`` must live there too)."""
    return (torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)


def fill_random_(tensor: torch.Tensor, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Fill an existing (possibly strided) cache tensor with seeded random data, never zeros."""
    tensor.copy_(random_tensor(tensor.shape, tensor.dtype, tensor.device, gen, scale))
    return tensor


def resolve_device(name: str) -> torch.device:
    """``cuda`` means the current GPU, with its index (vLLM builders and set_device want one)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def torch_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
