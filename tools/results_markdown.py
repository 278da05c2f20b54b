#!/usr/bin/env python3
"""Render a folder of committed pytest-benchmark baselines as markdown (``attnbench.reporting.markdown``).

    python tools/results_markdown.py baselines/NVIDIA_H100_80GB_HBM3 --out docs/RESULTS_H100.md --plots docs/plots
    python tools/results_markdown.py baselines/NVIDIA_H100_80GB_HBM3 --short      # README tables, to stdout
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing attnbench

from attnbench.reporting.markdown import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
