"""Sparse MLA benchmarks (DeepSeek-V3.2: a top-k indexer picks index_topk keys per query): the whole MLA layer
step per sparse backend x batch spec x top-k pattern, the indices written by a mock indexer we control.

Opt-in (the study names a sparse backend or a top-k pattern):

    pytest bench_mla --backends flashmla_sparse --collect-only -q
    # test_sparse_mla[FLASHMLA_SPARSE-64q1s8k-topk=random] ...
    pytest bench_mla --bench-config configs/sparse_mla.yaml
    pytest bench_mla --bench-config configs/mha_vs_mqa.yaml   # dense MHA vs top-k MQA for sparse prefill rows
"""

import pytest

from attnbench.pytest_plugin.benchmark_feed import run_benchmark


@pytest.mark.bench_family("mla", sparse=True)
def test_sparse_mla(bench_case, benchmark, request):
    run_benchmark(bench_case, benchmark, request.config)


@pytest.mark.bench_family("mla", mode="mha_vs_mqa", sparse=True)
def test_sparse_mla_mha_vs_mqa(bench_case, benchmark, request):
    run_benchmark(bench_case, benchmark, request.config)
