"""Where a device run's host time went: summed host_seconds per phase against the timed GPU work.

usage: python3 tools/summarize_host_seconds.py RUN.json [RUN.json ...]   (pytest-benchmark JSON)
"""

from __future__ import annotations

import json
import statistics
import sys


def summarize(path: str) -> str:
    benchmarks = json.load(open(path))["benchmarks"]
    if not benchmarks:
        return f"{path}: no timed cases"
    host = [b["extra_info"]["host_seconds"] for b in benchmarks]
    gpu = [b["stats"]["mean"] * b["stats"]["rounds"] * b["extra_info"]["timing"]["calls_per_round"] for b in benchmarks]
    total = [h["total"] for h in host]
    phases = ", ".join(f"{k} {sum(h.get(k, 0) for h in host):.1f}s" for k in ("setup", "verify", "timing", "profile"))
    beyond = [t - g for b, t, g in zip(benchmarks[1:], total[1:], gpu[1:])
              if b["extra_info"].get("pipeline") != "prefill"]
    line = (f"{path}: {len(benchmarks)} timed; host total {sum(total):.1f}s (first case {total[0]:.1f}s); {phases}; "
            f"timed GPU {sum(gpu):.1f}s")
    if beyond:
        line += (f"; host beyond timed GPU per non-prefill case after the first: "
                 f"median {statistics.median(beyond):.3f}s,"
                 f" p90 {sorted(beyond)[int(0.9 * len(beyond))]:.3f}s")
    gpus = sorted({json.dumps(b["extra_info"].get("gpu"), sort_keys=True) for b in benchmarks})
    return line + "\n   GPUs: " + "; ".join(gpus)


if __name__ == "__main__":
    print("\n".join(summarize(p) for p in sys.argv[1:]))
