"""Derive the verdict test pairs from a real CPU recording, editing only the numbers.

``cpu_run.json`` was recorded with

    python -m pytest bench_attention bench_mla -k "REFERENCE and not decode_vs_prefill" --device cpu \
        --batch-specs q1s1k 8q1s256 2q64_4q1s128 q256 --repeats 5 --num-q-heads 8 \
        --benchmark-json tests/data/cpu_run.json

This script keeps its structure (machine_info, extra_info, options) and replaces each case's
per-round samples with seeded draws of a chosen median and noise, recomputing every stats
field with pytest-benchmark's own ``Stats``. Run from the repository root:

    python tests/data/make_verdict_pairs.py

Cases (attention unless noted), new vs baseline, and what each verdict rule says:

    q1s1k          +0.4 %, 0.5 % noise, 40 rounds   noise-aware SAME     5 % rule: ok
    8q1s256        +6 %,   15 % noise,  15 rounds   noise-aware UNSURE   5 % rule: REGRESSION
    2q64_4q1s128   +3 %,   0.3 % noise, 50 rounds   noise-aware SLOWER   5 % rule: ok
    q256           -10 %,  0.5 % noise, 40 rounds   noise-aware FASTER   5 % rule: faster
    mla q1s1k      baseline only                    MISSING
    mla 8q1s256    new only                         NEW
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

from pytest_benchmark.stats import Stats

HERE = Path(__file__).parent
H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132, "memory_bytes": 85045231616,
        "l2_bytes": 52428800}
H200 = {"name": "NVIDIA H200", "capability": "9.0", "sm_count": 132, "memory_bytes": 150754820096,
        "l2_bytes": 62914560}

# (family, spec) -> (baseline median s, change, relative noise, rounds)
PLAN = {
    ("attention", "q1s1k"): (40e-6, 0.004, 0.005, 40),
    ("attention", "8q1s256"): (55e-6, 0.06, 0.15, 15),
    ("attention", "2q64_4q1s128"): (70e-6, 0.03, 0.003, 50),
    ("attention", "q256"): (120e-6, -0.10, 0.005, 40),
    ("mla", "q1s1k"): (90e-6, 0.0, 0.01, 30),
    ("mla", "8q1s256"): (150e-6, 0.0, 0.01, 30),
}
BASELINE_ONLY = {("mla", "q1s1k")}
NEW_ONLY = {("mla", "8q1s256")}


def samples(median: float, noise: float, rounds: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    draws = [rng.lognormvariate(0.0, noise) for _ in range(rounds)]
    draws.sort()
    mid = draws[len(draws) // 2] if len(draws) % 2 else (draws[len(draws) // 2 - 1] + draws[len(draws) // 2]) / 2
    rng.shuffle(draws)
    return [median * d / mid for d in draws]  # exactly the planned median


def set_samples(entry: dict, data: list[float]) -> None:
    stats = Stats()
    for value in data:
        stats.update(value)
    entry["stats"] = {**stats.as_dict(), "data": data, "iterations": 1}
    info = entry["extra_info"]
    median = stats.median
    info["tflops"] = info["flops"] / median / 1e12
    info["gbps"] = info["bytes"] / median / 1e9
    info["timing"].update(rounds=len(data), rel_noise=stats.stddev / stats.mean,
                          rel_stderr=stats.stddev / stats.mean / len(data) ** 0.5)
    entry["options"]["min_rounds"] = len(data)


def derive(run: dict, side: str, gpu: dict) -> dict:
    doc = copy.deepcopy(run)
    doc["machine_info"]["attnbench"]["gpu"] = gpu
    kept = []
    for i, entry in enumerate(doc["benchmarks"]):
        key = (entry["extra_info"]["family"], entry["extra_info"]["batch_spec"])
        if key not in PLAN or (side == "new" and key in BASELINE_ONLY) or (side == "baseline" and key in NEW_ONLY):
            continue
        median, change, noise, rounds = PLAN[key]
        if side == "new":
            median *= 1 + change
        set_samples(entry, samples(median, noise, rounds, seed=i * 7919 + (side == "new")))
        kept.append(entry)
    doc["benchmarks"] = kept
    return doc


def without_data(doc: dict) -> dict:
    """What ``--benchmark-save`` writes without ``--benchmark-save-data``: summary stats only."""
    out = copy.deepcopy(doc)
    for entry in out["benchmarks"]:
        entry["stats"].pop("data", None)
    return out


def main() -> None:
    run = json.loads((HERE / "cpu_run.json").read_text())
    outputs = {
        "verdict_baseline.json": derive(run, "baseline", H100),
        "verdict_new.json": derive(run, "new", H100),
        "verdict_new_other_gpu.json": derive(run, "new", H200),
    }
    outputs["verdict_baseline_saved.json"] = without_data(outputs["verdict_baseline.json"])
    outputs["verdict_new_saved.json"] = without_data(outputs["verdict_new.json"])
    for name, doc in outputs.items():
        (HERE / name).write_text(json.dumps(doc, indent=1) + "\n")
        print(HERE / name)


if __name__ == "__main__":
    main()
