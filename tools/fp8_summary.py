"""One line per timed case of --benchmark-json files: time, error against the stored values, accuracy cost
against the unquantised K/V, tolerance, the check after timing, whether q was read as fp8, the kernel path.

usage: python tools/fp8_summary.py RUN.json [RUN.json ...]   (pytest-benchmark JSON; any KV-cache dtype)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    for path in paths:
        if not Path(path).is_file() or not Path(path).stat().st_size:
            print(f"{path}: no results")
            continue
        for bench in json.loads(Path(path).read_text())["benchmarks"]:
            info = bench["extra_info"]
            v, shape, backend = info.get("verification", {}), info.get("shape", {}), info.get("backend_info", {})
            cost = v.get("unquantized_rel_error")
            print(f"{bench['name']:<58} {shape.get('kv_cache_dtype', '?'):>19} {bench['stats']['median'] * 1e6:9.1f} us"
                  f"  err {v.get('rel_error', float('nan')):.2e}  cost {cost if cost is not None else float('nan'):.2e}"
                  f"  tol {v.get('rel_tol', float('nan')):.1e}  after {v.get('after_timing', {}).get('status')}"
                  f"  scales {backend.get('kv_scales', '-')}  qq {backend.get('quantized_query', '-')}"
                  f"  {str(backend.get('kernel_path', ''))[:48]}")


if __name__ == "__main__":
    main(sys.argv[1:])
