"""A benchmark's axes, each declared once: the one table the parametrization, the test ids and the case point follow.

A benchmark function (``test_mla``, ``test_sparse_mla``, ...) is a function over named axes, as in nvbench. Each
``Axis`` row says where it applies (family, mode, dense or sparse), which values a study gives it, how a value
shows in the test id, and what its count is called when a study is too big. The plugin parametrizes the product
of the rows that apply, in the table's order, and reads an item back into one ``CasePoint``; ``CasePoint.case``
composes the ``BenchCase`` the fixture, the reporting and the crossover search share.

Adding an axis: a row here, a field of ``CasePoint`` (same name as the row's ``field``), and the case's and the
record's field that carries it (``spec/cases.BenchCase``, ``results/record.CaseKey``): the record must name what
it measured. The swept knobs and model dimensions are values of one axis, the sweep point (``spec/sweeps.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from attnbench.results.record import CaseKey, region_label, topk_label
from attnbench.spec import backends as registry
from attnbench.spec import sweeps as sweeping
from attnbench.spec.cases import DECODE, MHA, MQA, PREFILL, BenchCase
from attnbench.spec.study import SPARSE_DEFAULT_SPECS, Study

MAX_CASES = 200_000  # per family and session: a typo in a range must not become hours of collection
PIPELINES = {"decode_vs_prefill": (DECODE, PREFILL), "mha_vs_mqa": (MHA, MQA)}  # mode -> its pipelines


@dataclass(frozen=True)
class Bench:
    """One benchmark function as its ``bench_family`` marker declares it, with the study that fills its axes."""

    study: Study
    family: str  # "attention" or "mla"
    mode: str = "standard"
    kind: str = registry.DENSE  # registry.DENSE or registry.SPARSE: which models the function runs
    notes: list[str] = field(default_factory=list)  # resolving the batch specs says here what it merged

    def backends(self) -> list[registry.BackendInfo]:
        """The study's backends that this function runs."""
        return [b for b in self.study.backends_for(self.family) if registry.runs_kind(b, self.kind)]

    @functools.cached_property
    def specs(self) -> list[str]:
        """The batch specs, resolved once: counting the cases and making them read the same list (and notes)."""
        return self.study.specs_for(self.family, limit=MAX_CASES, notes=self.notes,
                                    defaults=SPARSE_DEFAULT_SPECS if self.kind == registry.SPARSE else None)


def _always(bench: Bench) -> bool:
    return True


def _counted(words: str, always: bool = False) -> Callable[[Bench, int], str]:
    """An axis's share of the too-many-cases message: ``3 timed regions``; shown at 1 only when ``always``."""
    return lambda bench, n: f"{n} {words}" if always or n > 1 else ""


def _sweep_count(bench: Bench, n: int) -> str:
    """``3 sweep values`` for one sweep; ``6 sweep points (3 num_kv_splits x 2 head_dim)`` for several."""
    if len(bench.study.sweeps) == 1:
        return f"{n} sweep values"
    return f"{n} sweep points ({sweeping.sizes(bench.study.sweeps)})"


@dataclass(frozen=True)
class Axis:
    """One named axis of the benchmark functions."""

    argname: str  # the test function's parameter: its key in pytest-benchmark's JSON ``params``
    field: str  # the ``CasePoint`` field it fills
    default: Any  # its value in a benchmark that does not apply it
    values: Callable[[Bench], Sequence[Any]]  # plain data, as the test's parameter holds it
    ident: Callable[[Bench, Any], str]  # the value's part of the test id ("": none, as the layer step's region)
    count_words: Callable[[Bench, int], str]  # its count in the too-many-cases message ("": not shown)
    applies: Callable[[Bench], bool] = _always
    count: Callable[[Bench], int] | None = None  # the number of values without making them (None: len(values))

    def size(self, bench: Bench) -> int:
        return self.count(bench) if self.count is not None else len(self.values(bench))


def _sweep_points(bench: Bench) -> list[tuple[Any, ...]]:
    # one parameter for the whole product: its value is the values in the sweeps' order (readable JSON params)
    return [tuple(s.value for s in point) for point in sweeping.grid(bench.study.sweeps)]


# The table. Its order is the test id's: FLASHMLA-64q1s1k[-attention-only][-num_kv_splits=4][-topk=random][-decode].
# Ids of saved baselines depend on it: an axis that is new to a benchmark adds no id part at its default.
AXES: tuple[Axis, ...] = (
    Axis("bench_backend", "backend", None,
         values=lambda bench: [b.name for b in bench.backends()],  # the name; the point resolves it in the registry
         ident=lambda bench, name: name, count_words=_counted("backends", always=True)),
    Axis("bench_spec", "batch_spec", None, values=lambda bench: bench.specs, ident=lambda bench, spec: spec,
         count_words=_counted("batch specs", always=True)),
    Axis("bench_region", "timed_region", "layer", values=lambda bench: list(bench.study.timed_region),
         ident=lambda bench, region: region_label(region), count_words=_counted("timed regions")),
    Axis("bench_sweep_values", "sweep_values", (), values=_sweep_points,
         ident=lambda bench, values: sweeping.point_id(sweeping.point_of(bench.study.sweeps, values)),
         count_words=_sweep_count, applies=lambda bench: bool(bench.study.sweeps),
         count=lambda bench: sweeping.point_count(bench.study.sweeps)),
    Axis("bench_topk", "topk_pattern", None, values=lambda bench: list(bench.study.topk_patterns()),
         ident=lambda bench, pattern: topk_label(pattern), count_words=_counted("top-k patterns"),
         applies=lambda bench: bench.kind == registry.SPARSE),  # a dense case has no mock indexer
    Axis("bench_pipeline", "pipeline", None, values=lambda bench: list(PIPELINES[bench.mode]),
         ident=lambda bench, pipeline: pipeline, count_words=_counted("pipelines"),
         applies=lambda bench: bench.mode in PIPELINES),
)
ARGNAMES = tuple(axis.argname for axis in AXES)
BACKEND = AXES[0]  # the first axis, always applied: a case's backend (the plugin marks each case by it)


def axes_of(bench: Bench) -> list[Axis]:
    """The axes that ``bench`` applies, in the table's order."""
    return [axis for axis in AXES if axis.applies(bench)]


def case_count(bench: Bench) -> tuple[int, str]:
    """How many cases ``bench`` has, and their factors for a message (``1 backends x 3 batch specs``), counted
    before the product is made."""
    sizes = [(axis, axis.size(bench)) for axis in axes_of(bench)]
    words = [axis.count_words(bench, n) for axis, n in sizes]
    return math.prod(n for _, n in sizes), " x ".join(w for w in words if w)


def labelled_values(bench: Bench, axes: Sequence[Axis]) -> list[list[tuple[Any, str]]]:
    """Each axis's values with their parts of the test id, each made once (the product reuses them)."""
    return [[(value, axis.ident(bench, value)) for value in axis.values(bench)] for axis in axes]


def joined_id(parts: Iterable[str]) -> str:
    """One case's test id from its axes' parts, in the table's order: joined by ``-``, empty parts left out."""
    return "-".join(part for part in parts if part)


@dataclass(frozen=True)
class CasePoint:
    """A benchmark item's axes as its test id holds them, one field per ``AXES`` row. ``CasePoint.of`` is the one
    reader of an item's parameters: the ``bench_case`` fixture, the reporting and the crossover search start there."""

    backend: registry.BackendInfo
    batch_spec: str
    timed_region: str = "layer"
    sweep_values: tuple[Any, ...] = ()  # one value per sweep of the study, in its order
    topk_pattern: str | None = None
    pipeline: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, Any], family: str | None) -> CasePoint | None:
        """The point a test's parameters name (None: not a benchmark case). The backend is its name, resolved in
        ``family``'s registry (the ``bench_family`` marker's), or a registry row itself."""
        value = {axis.field: params.get(axis.argname, axis.default) for axis in AXES}
        backend = value["backend"]
        if isinstance(backend, str):
            backend = registry.lookup(backend, family) if family else None  # type: ignore[arg-type]
        if not isinstance(backend, registry.BackendInfo) or not isinstance(value["batch_spec"], str):
            return None
        return cls(**{**value, "backend": backend, "sweep_values": tuple(value["sweep_values"])})

    def case(self, study: Study) -> BenchCase:
        return compose_case(study, self.backend, self.batch_spec, sweep_values=self.sweep_values,
                            pipeline=self.pipeline, timed_region=self.timed_region, topk_pattern=self.topk_pattern)


def compose_case(study: Study, backend: registry.BackendInfo, batch_spec: str, sweep_values: Any = (),
                 pipeline: str | None = None, timed_region: str = "layer", topk_pattern: str | None = None
                 ) -> BenchCase:
    """The one place a test id's axes and the study become a ``BenchCase`` (fixture and reporting);
    ``sweep_values`` are the ``bench_sweep_values`` parameter: one value per sweep of the study, in its order."""
    return BenchCase(
        study=study.name, backend=backend, batch_spec=batch_spec, shape=study.shape_for(backend.family),
        run=study.run, sweep=sweeping.point_of(study.sweeps, sweep_values),
        pipeline=pipeline, backend_settings=study.backend_settings.get(backend.name, {}),
        timed_region=timed_region, topk_pattern=topk_pattern, model=study.model.get("model"),
    )


def case_of_key(study: Study, key: CaseKey) -> BenchCase | None:
    """The case a record's key names, composed as its test id's was (None when this study cannot make it again:
    another backend registry, a changed study). Re-timing it must measure the same thing, so the key is checked."""
    backend = registry.lookup(key.backend, key.family) if key.family else None  # type: ignore[arg-type]
    if backend is None:
        return None
    try:
        case = CasePoint(backend, key.batch_spec, timed_region=key.timed_region,
                         sweep_values=tuple(s.value for s in key.sweep), topk_pattern=key.topk_pattern,
                         pipeline=key.pipeline).case(study)
    except (ValueError, KeyError):
        return None
    return case if case.key() == key else None

