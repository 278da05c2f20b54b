#!/usr/bin/env python3
"""The seed's command line, unchanged, as one pytest run of this suite.

    python benchmark.py --config configs/mla_decode.yaml
    python benchmark.py --backends flash flashinfer --batch-specs q2k 8q1s1k --output-csv results.csv
    python benchmark.py --backend cutlass_mla --batch-specs 64q1s4k --sweep-param num_kv_splits --sweep-values 1 2 4
    python benchmark.py compare BASELINE.json NEW.json      # noise-aware verdict per case, exit 1 on SLOWER
    python benchmark.py plot RESULTS.json --out plots/

Everything after the seed's own flags is passed to pytest (e.g. -k, --benchmark-json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pytest

HERE = Path(__file__).resolve().parent

# seed flag -> pytest option of this suite (same spelling unless noted)
_VALUE_FLAGS = ("--num-layers", "--head-dim", "--num-q-heads", "--num-kv-heads", "--block-size", "--device",
                "--repeats", "--warmup-iters", "--sweep-param", "--output-csv", "--output-json", "--kv-cache-dtype",
                "--kv-lora-rank", "--qk-nope-head-dim", "--qk-rope-head-dim", "--v-head-dim", "--cache-state",
                "--dtype", "--seed", "--noise-target")
_LIST_FLAGS = ("--backends", "--batch-specs", "--sweep-values")


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix of a seed flag is not that flag, so pytest's own short spellings
    # (--co, --sw, --lf, ...) pass through instead of being swallowed as --config / ambiguous --sweep-*
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--config", help="YAML study (pytest: --bench-config)")
    p.add_argument("--backends", "--backend", nargs="+", dest="backends")
    p.add_argument("--batch-specs", nargs="+")
    p.add_argument("--sweep-values", nargs="+")
    for flag in _VALUE_FLAGS:
        p.add_argument(flag)
    p.add_argument("--profile-memory", action="store_true")
    p.add_argument("--include-auto", action="store_true", help="with a sweep, also run the backend's default")
    return p


def to_pytest_args(argv: Sequence[str]) -> list[str]:
    """Translate a seed command line into this suite's pytest arguments."""
    args, passthrough = _parser().parse_known_args(list(argv))
    out: list[str] = [str(HERE / "bench_attention"), str(HERE / "bench_mla"), "-p", "no:cacheprovider",
                      "--rootdir", str(HERE), "-c", str(HERE / "pytest.ini")]
    if args.config:
        out += ["--bench-config", args.config]
    for flag in _LIST_FLAGS:
        values = getattr(args, flag[2:].replace("-", "_"))
        if values:
            out += [flag, *values]
    for flag in _VALUE_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out += [flag, value]
    if args.profile_memory:
        out.append("--profile-memory")
    if args.include_auto:
        out.append("--sweep-include-auto")
    # list options swallow what follows them, so pytest's own arguments go behind a separator-free flag set
    return out + ["-rs"] + passthrough


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from attnbench.compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["plot"]:
        from attnbench.plots import main as plot_main

        return plot_main(argv[1:])
    return int(pytest.main(to_pytest_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
