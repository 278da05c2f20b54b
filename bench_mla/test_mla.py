"""MLA benchmarks: the whole MLA layer step per backend x batch spec (x sweep value).

    pytest bench_mla --benchmark-only -k flashmla
    pytest bench_mla --bench-config configs/reorder_threshold.yaml   # decode vs prefill pipelines
"""

import pytest

from attnbench.pytest_plugin.benchmark_feed import run_benchmark


@pytest.mark.bench_family("mla")
def test_mla(bench_case, benchmark, request):
    run_benchmark(bench_case, benchmark, request.config)


@pytest.mark.bench_family("mla", mode="decode_vs_prefill")
def test_mla_decode_vs_prefill(bench_case, benchmark, request):
    run_benchmark(bench_case, benchmark, request.config)
