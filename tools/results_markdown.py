#!/usr/bin/env python3
"""Render a folder of committed pytest-benchmark baselines as markdown (``attnbench.reporting.markdown``).

    python tools/results_markdown.py baselines/NVIDIA_H100_80GB_HBM3 --out docs/RESULTS_H100.md --plots docs/plots
    python tools/results_markdown.py baselines/NVIDIA_H100_80GB_HBM3 --short      # README tables, to stdout

The pages of this checkout: headings from its studies' descriptions (configs/), paths shown relative to it, and
the three studies whose section is an analysis of its own.
"""

import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing attnbench

from attnbench.reporting import markdown  # noqa: E402

SECTIONS = {"standard_attention": markdown.standard_section, "mla_decode": markdown.mla_decode_section,
            "mla_mixed_batch": markdown.mla_mixed_section}


def main(argv: Sequence[str] | None = None) -> int:
    return markdown.main(argv, configs=ROOT / "configs", root=ROOT, sections_by_study=SECTIONS)


if __name__ == "__main__":
    sys.exit(main())
