"""The suite's pytest plugin, one entry: registering this package registers its parts.

``plugin`` (options, parametrization, collection), ``bench_shim`` (pytest-benchmark's private internals, in one
module), ``benchmark_feed`` (a case's samples into the benchmark fixture), ``reporting_plugin`` (the terminal
summary, exports, resume) with ``gate`` (the regression gate it runs), ``scaleout`` (xdist workers pinned to
GPUs), ``search_plugin`` (adaptive crossover searches) and ``hookspec`` (the suite's own hooks, registered by
``plugin``). ``PARTS`` is the one list of them: the root ``conftest.py`` registers it for the suite's benchmark
folders. It is not a ``pytest11`` entry point on purpose: an installed entry point would add the suite's options
(``--device``, ``--backends``, ...) and hooks to every pytest run in the environment, other projects' included.
"""

PARTS = ["attnbench.pytest_plugin.plugin", "attnbench.pytest_plugin.bench_shim",
                  "attnbench.pytest_plugin.reporting_plugin", "attnbench.pytest_plugin.scaleout",
                  "attnbench.pytest_plugin.search_plugin"]
