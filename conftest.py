"""Root conftest: registers the suite's pytest plugin, whose parts ``attnbench.pytest_plugin.PARTS`` lists."""

from attnbench.pytest_plugin import PARTS

pytest_plugins = PARTS
