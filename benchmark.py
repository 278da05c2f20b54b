#!/usr/bin/env python3
"""Upstream's command line, unchanged, as one pytest run of this suite.

    python benchmark.py --config configs/mla_decode.yaml
    python benchmark.py --backends flash flashinfer --batch-specs q2k 8q1s1k --output-csv results.csv
    python benchmark.py --backend cutlass_mla --batch-specs 64q1s4k --sweep-param num_kv_splits --sweep-values 1 2 4
    python benchmark.py compare BASELINE.json NEW.json      # noise-aware verdict per case, exit 1 on SLOWER
    python benchmark.py plot RESULTS.json --out plots/

Everything after upstream's own flags is passed to pytest (e.g. -k, --benchmark-json).
Which flags upstream had and what each becomes: the ``upstream`` spellings in attnbench/spec/options.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pytest

from attnbench.spec.options import OPTIONS

HERE = Path(__file__).resolve().parent
_UPSTREAM = [opt for opt in OPTIONS if opt.upstream]


def _parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix of an upstream flag is not that flag, so pytest's own short spellings
    # (--co, --sw, --lf, ...) pass through instead of being swallowed as --config / ambiguous --sweep-*
    from attnbench.reporting.command_line import Once, OneLineParser

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    for opt in _UPSTREAM:  # values stay text: the plugin checks them, so both entry points refuse the same things
        # --num-layers 2 --num-layers 3 is refused here (cli.Once), not the last one silently
        p.add_argument(*opt.upstream, **opt.pytest_kwargs(upstream=True, once=Once))
    return p


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--noise-target -inf`` as ``--noise-target=-inf``: argparse takes a value that starts with one ``-`` (and is
    not a plain negative number) for an option, and would blame the wrong flag (``-q1`` as pytest's ``-q``); joined,
    the value reaches the suite's own check, which names the flag."""
    takes_value = {flag for opt in _UPSTREAM if opt.const is None for flag in opt.upstream}
    out: list[str] = []
    for token in argv:
        if out and out[-1] in takes_value and token.startswith("-") and not token.startswith("--") and len(token) > 1:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def to_pytest_args(argv: Sequence[str]) -> list[str]:
    """Translate an upstream command line into this suite's pytest arguments."""
    args, passthrough = _parser().parse_known_args(_join_dash_values(argv))
    out: list[str] = [str(HERE / "bench_attention"), str(HERE / "bench_mla"), "-p", "no:cacheprovider",
                      "--rootdir", str(HERE), "-c", str(HERE / "pytest.ini")]
    for opt in _UPSTREAM:
        value = getattr(args, opt.name)
        if opt.const is not None:
            out += [opt.flags[0]] if value else []
        elif value is not None and opt.to == "sweep":  # each given one, in order: the pairing is by position
            for one in value:
                out += [opt.flags[0], *(one if opt.many else [one])]
        elif value is not None:
            values = [str(v) for v in (value if opt.many else [value])]
            # a lone value that starts with "-" joined to its flag, so that pytest reads "-q1" as the value it is
            joined = len(values) == 1 and values[0].startswith("-")
            out += [f"{opt.flags[0]}={values[0]}"] if joined else [opt.flags[0], *values]
    # list options swallow what follows them, so pytest's own arguments go behind a separator-free flag set
    return out + ["-rs"] + passthrough


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from attnbench.reporting.verdicts import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["plot"]:
        from attnbench.reporting.plots import main as plot_main

        return plot_main(argv[1:])
    return int(pytest.main(to_pytest_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
