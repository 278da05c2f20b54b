"""Root conftest: the suite's pytest plugin lives in the attnbench package."""

pytest_plugins = ["attnbench.plugin", "attnbench.reporting_plugin"]
