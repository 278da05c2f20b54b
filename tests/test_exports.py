"""CaseOutcome (from every source), CSV/JSON exports, the journal, and loading results back."""

from __future__ import annotations

import csv
import json
import statistics
import re
from pathlib import Path

import pytest

from attnbench.spec import backends
from attnbench.spec.cases import BenchCase
from attnbench.results.exports import (CSV_COLUMNS, SEED_CSV_COLUMNS, Journal, ResultsFileError, from_benchmark_entry,
                               from_seed_record, load_results, merge_results, partial_path)
from attnbench.results.outcome import FAILED, PASSED, SKIPPED, CaseOutcome, case_key
from attnbench.reporting.formatter import ResultsFormatter
from attnbench.spec.study import build_study
from tests.factories import sampled, untimed

DATA = Path(__file__).parent / "data"


def cpu_case(spec: str = "2q16_2q1s64", **model: int) -> BenchCase:
    study = build_study(None, {"device": "cpu", "repeats": 4, "warmup_iters": 0, "profile_memory": True,
                               "model": {"num_q_heads": 8, **model}})
    info = backends.lookup("REFERENCE", "attention")
    assert info is not None
    return BenchCase(study=study.name, backend=info, batch_spec=spec, shape=study.shape_for("attention"),
                     run=study.run)


@pytest.fixture(scope="module")
def measured() -> tuple[BenchCase, object]:
    from attnbench.measure.runner import execute

    case = cpu_case()
    return case, execute(case)


def recorded_entries() -> list[dict]:
    return json.loads((DATA / "cpu_run.json").read_text())["benchmarks"]


# ------------------------------------------------------------------ the model

def test_a_measured_outcome_takes_times_work_and_memory_from_the_record(measured) -> None:
    case, case_result = measured
    result = CaseOutcome.measured(case_result.record())
    samples = case_result.timing.samples
    k, t = result.key, result.times
    assert (k.backend, k.batch_spec, k.family) == ("REFERENCE", "2q16_2q1s64", "attention")
    assert tuple(k.shape[n] for n in ("num_q_heads", "num_kv_heads", "head_dim", "dtype")) == (8, 8, 128, "bfloat16")
    assert t.rounds == len(samples) == 4
    assert t.median == pytest.approx(statistics.median(samples))
    assert t.mean == pytest.approx(statistics.fmean(samples))
    assert t.min == min(samples) and t.max == max(samples)
    assert result.work.flops == case_result.work.flops and result.work.flops > 0
    assert result.work.tflops == pytest.approx(result.work.flops / result.median / 1e12)
    assert result.throughput == pytest.approx(34 / result.median)  # 2x16 + 2x1 new tokens
    assert result.verified is True and result.status == PASSED
    assert result.memory.kv_and_buffers_bytes == case_result.memory["kv_and_buffers_bytes"] > 0  # CPU profile


def test_every_source_of_one_case_gives_the_same_key(measured) -> None:
    case, case_result = measured
    from_case = CaseOutcome.unmeasured(case, SKIPPED, "why")
    from_measurement = CaseOutcome.measured(case_result.record())
    from_record = CaseOutcome.from_json(json.loads(json.dumps(from_measurement.to_json())))
    assert case_key(from_case) == case_key(from_measurement) == case_key(from_record)


def test_key_separates_cases_that_share_a_test_id() -> None:
    # the same test id at another shape (--num-q-heads) is another case
    a = CaseOutcome.unmeasured(cpu_case(num_q_heads=8), PASSED, fullname="t[REFERENCE-q1]")
    b = CaseOutcome.unmeasured(cpu_case(num_q_heads=16), PASSED, fullname="t[REFERENCE-q1]")
    assert case_key(a) != case_key(b)


def test_from_benchmark_entry_reads_samples_when_saved_and_summary_otherwise() -> None:
    entry = recorded_entries()[0]
    with_data = from_benchmark_entry(entry)
    assert list(with_data.times.samples) == entry["stats"]["data"]
    assert with_data.median == pytest.approx(entry["stats"]["median"])
    assert with_data.fullname == entry["fullname"] and with_data.timer == "time.perf_counter"
    summary_only = {**entry, "stats": {k: v for k, v in entry["stats"].items() if k != "data"}}
    without = from_benchmark_entry(summary_only).times
    assert without.samples == ()
    assert (without.median, without.stddev, without.iqr, without.rounds) == (
        entry["stats"]["median"], entry["stats"]["stddev"], entry["stats"]["iqr"], entry["stats"]["rounds"])


def test_record_round_trip_is_lossless(measured) -> None:
    result = CaseOutcome.measured(measured[1].record(), fullname="x::y")
    assert CaseOutcome.from_json(json.loads(json.dumps(result.to_json()))) == result


@pytest.mark.parametrize("status", [PASSED, SKIPPED])
def test_a_row_keeps_the_timed_region_and_the_kv_fill(status) -> None:
    # what the journal, --output-json and an xdist worker's report carry: an attention-only, zero-filled case must
    # not come back as the layer step on random data (it would then share the layer step's case key)
    from dataclasses import replace

    from tests.factories import timed

    fields = {"timed_region": "attention", "kv_fill": "zeros"}
    if status == PASSED:  # the factory reads timed_region as the work model's; the key's is set here
        result = timed("A", "q1s1k", 1e-5)
        key = replace(result.key, **fields)
        result = replace(result, key=key, record=replace(result.record, key=key))
    else:
        result = untimed("A", "q1s1k", status, "r", **fields)
    back = CaseOutcome.from_json(json.loads(json.dumps(result.to_json())))
    assert (back.key.timed_region, back.key.kv_fill) == ("attention", "zeros") and back.key == result.key
    assert case_key(back) != case_key(timed("A", "q1s1k", 1e-5))


def test_record_carries_the_seed_keys() -> None:
    from tests.factories import timed

    result = timed("FLASH_ATTN", "q2k", 1e-3, shape={"num_layers": 1}, peak_memory_bytes=3 * 2**20)
    record = result.to_json()
    assert record["config"]["backend"] == "FLASH_ATTN" and record["config"]["num_layers"] == 1
    assert record["memory_allocated_mb"] == 3.0
    assert "throughput_tokens_per_sec" in record


# ------------------------------------------------------------------ CSV / JSON

def test_csv_has_the_seed_columns_first_and_one_row_per_case(tmp_path: Path, measured) -> None:
    passed = CaseOutcome.measured(measured[1].record())
    skipped = CaseOutcome.unmeasured(measured[0], SKIPPED, "FLASH_ATTN needs a CUDA device")
    path = ResultsFormatter().save_csv([passed, skipped], tmp_path / "out" / "r.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys())[:len(SEED_CSV_COLUMNS)] == SEED_CSV_COLUMNS
    assert len(rows) == 2
    assert float(rows[0]["mean_time"]) == pytest.approx(passed.times.mean)
    assert rows[0]["status"] == "passed" and rows[1]["status"] == "skipped"
    assert rows[1]["error"] == "FLASH_ATTN needs a CUDA device"
    assert rows[1]["mean_time"] == ""  # unknown stays empty, never a fake 0
    assert int(rows[0]["kv_memory_bytes"]) == passed.memory.kv_and_buffers_bytes


def test_json_adds_machine_info_and_loads_back(tmp_path: Path, measured) -> None:
    result = CaseOutcome.measured(measured[1].record())
    info = {"attnbench": {"gpu": {"name": "NVIDIA H100 80GB HBM3"}}}
    path = ResultsFormatter(machine_info=info).save_json([result], tmp_path / "r.json")
    doc = json.loads(path.read_text())
    assert doc["machine_info"] == info and doc["schema"].startswith("attnbench.results/")
    loaded = load_results(path)
    assert loaded.kind == "attnbench-json" and loaded.machine_info == info
    assert loaded.results == [result]


def test_loads_seed_json_and_pytest_benchmark_json(tmp_path: Path) -> None:
    seed = [{"config": {"backend": "flash", "batch_spec": "q2k", "num_layers": 10}, "mean_time": 0.001,
             "std_time": 1e-5, "min_time": 0.0009, "max_time": 0.0011, "throughput_tokens_per_sec": 2e6,
             "error": None}]
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    [r] = load_results(tmp_path / "seed.json").results
    assert (r.key.backend, r.key.batch_spec, r.key.shape["num_layers"], r.times.mean, r.status) == (
        "flash", "q2k", 10, 0.001, PASSED)
    bench = load_results(DATA / "cpu_run.json")
    assert bench.kind == "pytest-benchmark" and len(bench.results) == len(recorded_entries())
    assert bench.machine_info["attnbench"]["torch"]


def test_unreadable_results_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"neither": 1}')
    with pytest.raises(ResultsFileError, match="bad.json"):
        load_results(tmp_path / "bad.json")
    with pytest.raises(ResultsFileError, match="no such results file"):
        load_results(tmp_path / "missing.json")


# ------------------------------------------------------------------ journal

def test_journal_line_is_on_disk_as_soon_as_it_is_appended(tmp_path: Path) -> None:
    path = partial_path(tmp_path / "results.json")
    assert path.name == "results.json.partial.jsonl"
    journal = Journal(path)
    journal.append(sampled("A", "q1s1k", [1e-5] * 3))
    # read while the writer is still open: nothing is waiting in a buffer
    assert [r.key.backend for r in load_results(path).results] == ["A"]
    journal.append(untimed("B", "q1s1k", FAILED, "boom"))
    assert [r.reason for r in load_results(path).results] == [None, "boom"]
    journal.close()


def test_journal_tolerates_a_line_cut_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "r.partial.jsonl"
    journal = Journal(path)
    journal.append(untimed("A", "q1s1k"))
    journal.close()
    with open(path, "a") as f:
        f.write('{"backend": "B", "batch_sp')  # the process died mid-write
    with pytest.warns(UserWarning, match="unreadable line"):
        loaded = load_results(path)
    assert [r.key.backend for r in loaded.results] == ["A"]


def test_journal_seeded_from_itself_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.partial.jsonl"
    first = Journal(path)
    first.append(untimed("A", "q1s1k"))
    first.close()
    carried = load_results(path).results
    second = Journal(path, carried=carried)  # resuming from the very file being rewritten
    second.append(untimed("B", "q1s1k"))
    second.close()
    assert [r.key.backend for r in load_results(path).results] == ["A", "B"]


def test_merge_keeps_one_result_per_case_the_latest() -> None:
    old = untimed("A", "q1s1k", FAILED, "flaky")
    other = sampled("B", "q1s1k", [2e-5])
    new = sampled("A", "q1s1k", [1e-5])
    merged = merge_results([old, other, new])
    assert merged == [new, other]


def test_csv_columns_are_unique() -> None:
    assert len(CSV_COLUMNS) == len(set(CSV_COLUMNS))


# ------------------------------------------------------------------ malformed files

def _pytest_benchmark_doc(**stats_changes) -> dict:
    doc = json.loads((DATA / "cpu_run.json").read_text())
    entry = doc["benchmarks"][0]
    entry["stats"] = {k: v for k, v in entry["stats"].items() if k != "data"}
    entry["stats"].update(stats_changes)
    return doc


MALFORMED = [
    ("list.json", "[1, 2]", r"record 1 of 2: record is a number, expected an object"),
    ("foo.json", '{"results": [{"foo": 1}]}', r"results\[0\]: record has no 'backend' \(keys: foo\)"),
    ("results_not_list.json", '{"results": 5}', r"'results' is a JSON int, expected a list"),
    ("mistyped.json", '{"results": [{"backend": "A", "batch_spec": "q1", "median_time": "x"}]}',
     r"results\[0\]: median_time is \"x\", expected a number"),
    ("median.json", json.dumps(_pytest_benchmark_doc(median="x")),
     r"benchmarks\[0\]: stats\.median is \"x\", expected a number"),
    ("data.json", json.dumps(_pytest_benchmark_doc(data=[1e-5, "x"])),
     r"benchmarks\[0\]: stats\.data\[1\] is \"x\", expected a number"),
    ("entry.json", '{"benchmarks": [3]}', r"benchmarks\[0\]: benchmark entry is a number, expected an object"),
    ("machine.json", '{"results": [], "machine_info": [1]}', r"machine_info is a JSON list"),
    ("lines.jsonl", '{"a": 1}\n{"b": 2}\n', r"line 1: record has no 'backend'"),
    ("oneline.jsonl", '{"backend": 3, "batch_spec": "q1"}\n', r"line 1: backend is 3, expected a string"),
    ("scalar.json", '"hello"', r"neither attnbench results.*found a JSON str"),
]


@pytest.mark.parametrize("name, content, problem", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_results_file_is_a_results_file_error_naming_file_and_problem(tmp_path: Path, name, content,
                                                                               problem) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ResultsFileError, match=problem) as info:
        load_results(path)
    assert str(info.value).startswith(f"{path}: ")


def test_binary_results_file_is_a_results_file_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(b'{"results": []}\xff\xfe\x00\x80 binary')
    with pytest.raises(ResultsFileError, match=r"results\.json: not a text results file \(byte 15 is not UTF-8"):
        load_results(path)
    with pytest.raises(ResultsFileError, match="is a directory"):
        load_results(tmp_path)


def test_record_builders_reject_malformed_input_with_a_value_error() -> None:
    from attnbench.results.record import RecordError

    for bad in (1, [], {"foo": 1}, {"backend": "A"}, {"backend": "A", "batch_spec": "q1", "rounds": "3"},
                {"backend": "A", "batch_spec": "q1", "status": "exploded"}, {"config": {"backend": "x"}},
                {"config": [1]}):
        with pytest.raises(RecordError):
            from_seed_record(bad)  # a list's record: upstream's or ours
    entry = recorded_entries()[0]
    for bad_entry in (None, {**entry, "stats": 5}, {**entry, "extra_info": []},
                      {**entry, "extra_info": {**entry["extra_info"], "flops": "many"}},
                      {**entry, "extra_info": {**entry["extra_info"], "shape": {"num_q_heads": "8"}}},
                      {**entry, "stats": {"median": [1]}}):
        with pytest.raises(RecordError):
            from_benchmark_entry(bad_entry)
    assert issubclass(RecordError, ValueError) and issubclass(ResultsFileError, ValueError)


def test_journal_skips_a_malformed_record_line_among_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "r.partial.jsonl"
    good = json.dumps(untimed("A", "q1s1k").to_json())
    path.write_text(good + '\n{"backend": "B", "batch_spec": "q1s1k", "median_time": "slow"}\n')
    with pytest.warns(UserWarning, match=r"r\.partial\.jsonl:2: unreadable line skipped \(median_time"):
        loaded = load_results(path)
    assert [r.key.backend for r in loaded.results] == ["A"]


# ------------------------------------------------------------------ unwritable outputs

def test_atomic_writer_removes_its_temporary_file_when_the_write_fails(tmp_path: Path) -> None:
    from attnbench.results.exports import atomic_write

    def boom(f) -> None:
        f.write("half a fi")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(tmp_path / "r.json", boom)
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_removes_its_temporary_file_when_the_rename_fails(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty directory where the file should go
    result = untimed("A", "q1s1k")
    with pytest.raises(OSError):
        ResultsFormatter().save_csv([result], target)
    with pytest.raises(OSError):
        ResultsFormatter().save_json([result], target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_unwritable_reason(tmp_path: Path) -> None:
    from attnbench.results.exports import unwritable_reason

    assert unwritable_reason(tmp_path) == "it is a directory"
    assert "cannot create a file in /proc" in unwritable_reason("/proc/nope.json")
    (tmp_path / "file").write_text("x")
    assert unwritable_reason(tmp_path / "file" / "sub" / "r.json") == f"{tmp_path / 'file'} is not a directory"
    assert unwritable_reason(tmp_path / "r.json") is None
    assert unwritable_reason(tmp_path / "new" / "deeper" / "r.json") is None  # folders are made when writing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe left nothing, made no folder


# ------------------------------------------------------------------ case identity: device

def test_key_separates_devices_but_not_device_indices() -> None:
    def on(device: str | None) -> CaseOutcome:
        return sampled("FLASH_ATTN", "q1s1k", [1e-5] * 3, family="attention", device=device)

    assert case_key(on("cpu")) != case_key(on("cuda"))
    assert case_key(on("cuda")) == case_key(on("cuda:0")) == case_key(on("cuda:1"))
    assert case_key(on(None)) != case_key(on("cuda"))
    # a CPU run of a case and a GPU run of it are two results, not one replacing the other
    assert len(merge_results([on("cpu"), on("cuda")])) == 2


def test_the_runner_writes_one_typed_record_that_round_trips(measured) -> None:
    from attnbench.results.record import SCHEMA, CaseRecord

    _case, case_result = measured
    record = case_result.record()
    data = record.to_json()
    assert data["schema"] == SCHEMA and data["backend"] == "REFERENCE" and data["verified"] is True
    again = CaseRecord.from_json(json.loads(json.dumps(data)))
    assert again == record
    assert again.timing.rounds == len(again.samples) and again.host_seconds.total > 0
    # pytest-benchmark's extra_info is the record without its samples (they are the stats)
    extra = case_result.extra_info()
    assert "samples" not in extra["timing"]
    assert CaseRecord.from_json(extra, samples=list(record.samples)) == record
    # the outcome carries the same typed record, and its times are the record's samples
    outcome = CaseOutcome.measured(record)
    assert outcome.record == record and outcome.median == statistics.median(record.samples)


@pytest.mark.parametrize("path, value, message", [
    (("timing", "rounds"), "3", r'timing.rounds is "3", expected an integer'),
    (("work", "flops"), float("nan"), r"work.flops is NaN, expected an integer"),
    (("work", "tflops"), float("inf"), r"work.tflops is Infinity, expected a finite number"),
    (("verification", "status"), 1, r"verification.status is 1, expected a string"),
    (("host_seconds", "wall"), 1.0, r"host_seconds: unknown key\(s\) wall"),
    (("schema",), 1, r"record schema is 1, expected 2"),
])
def test_a_malformed_record_names_the_field(measured, path, value, message) -> None:
    from attnbench.results.record import CaseRecord, RecordError

    data = measured[1].record().to_json()
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(RecordError, match=message.replace(".", r"\.")):
        CaseRecord.from_json(data)


def test_a_malformed_not_timed_block_is_one_error_naming_the_file(tmp_path):
    import json as _json

    from attnbench.results.exports import ResultsFileError, load_results

    path = tmp_path / "b.json"
    path.write_text(_json.dumps({"benchmarks": [], "machine_info": {}, "attnbench": {
        "schema": 3,
        "not_timed": [{"status": "skipped", "reason": "r", "cases": ["t[a]"], "keys": [{"backend": 3}]}]}}))
    with pytest.raises(ResultsFileError, match=r"b\.json: attnbench\.not_timed\[0\]\.keys"):
        load_results(path, allow_empty=True)
    path.write_text(_json.dumps({"benchmarks": [], "attnbench": {"schema": 3, "not_timed": [
        {"status": "skipped", "reason": "no GPU", "cases": ["t[a]"],
         "keys": [{"backend": "FLASHMLA", "batch_spec": "q1", "family": "mla"}]}]}}))
    (skip,) = load_results(path).results
    assert (skip.status, skip.reason, skip.key.backend, skip.fullname) == ("skipped", "no GPU", "FLASHMLA", "t[a]")


def test_an_output_on_a_device_or_fifo_is_refused_and_the_node_kept(tmp_path):
    """``--output-json /dev/null`` or a FIFO: refused before anything runs, and never replaced by a file."""
    import os
    import stat

    from attnbench.results.exports import atomic_write, unwritable_reason

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for node in (fifo, Path("/dev/null")):
        assert "not a regular file" in unwritable_reason(node)
        with pytest.raises(OSError, match="not a regular file"):
            atomic_write(node, lambda f: f.write("x"))
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(Path("/dev/null").stat().st_mode)


def test_an_output_through_a_symlink_rewrites_its_target_and_keeps_the_link(tmp_path):
    from attnbench.results.exports import atomic_write

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write(link, lambda f: f.write("new"))
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.parametrize("edit, said", [
    (lambda doc: doc["benchmarks"][0]["extra_info"].pop("schema"),
     "benchmarks[0]: extra_info is an attnbench record without a schema"),
    (lambda doc: doc.update(attnbench={"schema": 2, "not_timed": []}), "attnbench.schema is 2, expected 3"),
], ids=["flat-record-without-schema", "not-timed-block-without-keys"])
def test_formats_this_suite_no_longer_writes_are_one_error(tmp_path, edit, said):
    """The flat records and the key-less not-timed lists of 2026-11 were converted in the committed files and are
    not read any more: a file that still has them is refused by name, not read as a plain pytest-benchmark test."""
    import json as _json

    from attnbench.results.exports import ResultsFileError, load_results

    doc = _json.loads((Path(__file__).parent / "data" / "verdict_new.json").read_text())
    edit(doc)
    path = tmp_path / "old.json"
    path.write_text(_json.dumps(doc))
    with pytest.raises(ResultsFileError, match=re.escape(said)):
        load_results(path)
