"""Upstream's formatter interface over ``CaseOutcome``s: a table on the console, and the CSV / JSON exports.

The files' columns and keys are ``attnbench.results.exports``'s (its module doc); this module adds what needs the
reporting floor: the console's tables, and the decode_vs_prefill crossover answers written beside the per-case rows.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO, Any

from attnbench.results.exports import CSV_COLUMNS, SCHEMA, atomic_write, csv_row, now, sweep_columns
from attnbench.results.outcome import CaseOutcome
from attnbench.spec.cases import DECODE, PREFILL
from attnbench.reporting.analysis import crossover_records


class ResultsFormatter:
    """Upstream's formatter interface: a table on the console, and CSV / JSON files, over ``CaseOutcome``s.

    ``crossovers`` (``crossover_rows``) may be given when a caller writes both files, so they are computed once."""

    def __init__(self, console: Any = None, machine_info: dict[str, Any] | None = None):
        self.console = console
        self.machine_info = machine_info

    def print_table(self, results: list[CaseOutcome], backends: list[str] | None = None) -> None:
        from rich.console import Console

        from attnbench.reporting.console import summary_renderables

        console = self.console or Console()
        chosen = [r for r in results if backends is None or r.key.backend in backends]
        for renderable in summary_renderables(chosen):
            console.print(renderable)

    def save_csv(self, results: list[CaseOutcome], path: str | os.PathLike[str],
                 crossovers: list[dict[str, Any]] | None = None) -> Path:
        columns = CSV_COLUMNS + sweep_columns(results)

        def write(f: IO[str]) -> None:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            for result in results:
                writer.writerow(csv_row(result, columns))

        crossovers = crossover_rows(results) if crossovers is None else crossovers
        if crossovers:  # decode_vs_prefill: the answer per backend x batch size, beside the per-case rows
            def write_crossovers(f: IO[str]) -> None:
                writer = csv.DictWriter(f, fieldnames=list(crossovers[0]))
                writer.writeheader()
                for row in crossovers:
                    writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})

            atomic_write(crossover_csv_path(path), write_crossovers, newline="")
        return atomic_write(Path(path), write, newline="")

    def save_json(self, results: list[CaseOutcome], path: str | os.PathLike[str],
                  crossovers: list[dict[str, Any]] | None = None) -> Path:
        doc = {"schema": SCHEMA, "created": now(), "machine_info": self.machine_info or {},
               "results": [r.to_json() for r in results]}
        crossovers = crossover_rows(results) if crossovers is None else crossovers
        if crossovers:  # decode_vs_prefill: the answer per backend x batch size
            doc["crossovers"] = crossovers
        return atomic_write(Path(path), lambda f: json.dump(doc, f, indent=1, default=str))


def crossover_csv_path(path: str | os.PathLike[str]) -> Path:
    """Where save_csv puts the crossover answers: ``results.csv`` -> ``results.crossover.csv``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.crossover{p.suffix or '.csv'}")


def crossover_rows(results: list[CaseOutcome]) -> list[dict[str, Any]]:
    """The decode_vs_prefill answers as plain rows (empty for any other study)."""
    if not any(r.key.pipeline in (DECODE, PREFILL) for r in results):
        return []
    return crossover_records(results)
