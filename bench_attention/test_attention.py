"""Standard attention benchmarks: one test id per backend x batch spec (x sweep value).

    pytest bench_attention --benchmark-only -k FLASH_ATTN --batch-specs q2k 8q1s1k
"""

import pytest

from attnbench.pytest_plugin.benchmark_feed import run_benchmark

pytestmark = pytest.mark.bench_family("attention")


def test_attention(bench_case, benchmark, request):
    run_benchmark(bench_case, benchmark, request.config)
