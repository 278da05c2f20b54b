"""argparse for the offline commands (``benchmark.py compare`` / ``plot``): every error is one line.

A bad command line prints ``error: ...`` on stderr and exits 2, as the commands' own checks do (argparse's
default is a usage dump before the message); an option given twice with different values is refused,
not silently the last one; numbers are finite and in ASCII digits (``float("٠.٥")`` is 0.5 in Python).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from attnbench.spec.options import OptionError, number


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}\n")


class Once(argparse.Action):
    """``store``, refusing a second, different value (``--out a --out b``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any,
                 option_string: str | None = None) -> None:
        seen = namespace.__dict__.setdefault("_given_once", {})
        if self.dest in seen and seen[self.dest] != values:
            parser.error(f"{option_string}: given twice ({seen[self.dest]!r}, {values!r}); give it once")
        seen[self.dest] = values
        setattr(namespace, self.dest, values)


def finite_number(text: str) -> float:
    """argparse ``type``: a finite number in ASCII digits."""
    try:
        return float(number(text))
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fail(message: str) -> int:
    """Print the one-line error and return the commands' exit code for bad input."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2
