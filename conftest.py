"""Root conftest: the suite's pytest plugins live in the attnbench package."""

pytest_plugins = ["attnbench.plugin", "attnbench.bench_shim", "attnbench.reporting_plugin", "attnbench.scaleout",
                  "attnbench.search_plugin"]
