"""tools/results_markdown.py over the committed H100 baselines.

Expected numbers are derived here straight from the pytest-benchmark JSON (``json`` + ``stats.median``),
not through attnbench's loaders, so a parsing or merging slip in the tool shows up as a mismatch.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from attnbench.reporting import markdown

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "results_markdown.py"
BASELINE = ROOT / "baselines" / "NVIDIA_H100_80GB_HBM3"
JSON_DIR = BASELINE / "Linux-CPython-3.12-64bit"
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]

pytestmark = pytest.mark.skipif(not JSON_DIR.is_dir(), reason="the H100 baselines are not in this checkout")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    """tools/results_markdown.py itself: it gives the library this checkout's studies and sections."""
    spec = importlib.util.spec_from_file_location("results_markdown", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("md") / "RESULTS.md"
    assert tool.main([str(BASELINE), "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def short(tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("md") / "SHORT.md"
    assert tool.main([str(BASELINE), "--short", "--out", str(out)]) == 0
    return out.read_text(encoding="utf-8")


# ------------------------------------------------------------------ independent reading of the JSON

def entries(name: str) -> list[dict[str, Any]]:
    [path] = JSON_DIR.glob(f"*_{name}.json")
    return json.loads(path.read_text())["benchmarks"]


def median_us(benchmarks: list[dict[str, Any]], backend: str, spec: str, **match: Any) -> float:
    [entry] = [b for b in benchmarks if b["extra_info"]["backend"] == backend and b["extra_info"]["batch_spec"] == spec
               and all(b["extra_info"].get(k) == v for k, v in match.items())]
    return entry["stats"]["median"] * 1e6


def three_digits(us: float) -> str:
    """The page's rounding: 3 significant digits below 1000 µs, whole µs above."""
    return f"{us:.{max(0, 2 - math.floor(math.log10(us)))}f}"


def tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every markdown table as a list of rows keyed by header (bold markers stripped)."""
    out, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(:?-+:?\|)+", lines[i + 1]):
            headers = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip().replace("**", "") for c in row.strip().strip("|").split(" | ")]
                rows.append(dict(zip(headers, cells, strict=True)))  # a stray '|' fails here
            out.append(rows)
    return out


def table_with(markdown: str, header: str) -> list[dict[str, str]]:
    found = [t for t in tables(markdown) if t and header in t[0]]
    assert found, f"no table with a {header!r} column"
    return found[0]


# ------------------------------------------------------------------ the page

def test_header_names_the_machine_and_the_method(page: str) -> None:
    info = json.loads(next(JSON_DIR.glob("0001_*.json")).read_text())["machine_info"]["attnbench"]
    head = page.split("## Standard attention")[0]
    for expected in (info["gpu"]["name"], info["gpu"]["driver"], f"SM {info['gpu']['sm_clock_mhz']} MHz",
                     f"vLLM {info['vllm']}", f"FlashInfer {info['flashinfer']}", f"torch {info['torch']}",
                     "cuda-graph", "cold", "device seconds per attention call"):
        assert expected in head, expected
    every = [b for path in JSON_DIR.glob("*.json") for b in json.loads(path.read_text())["benchmarks"]]
    assert all(b["extra_info"]["verified"] for b in every)
    assert re.search(r"(\d+)/\1 cases verified against the REFERENCE", head)


def test_standard_attention_medians_and_fastest_come_from_the_json(page: str) -> None:
    benchmarks = entries("standard_attention")
    rows = {r["batch spec"]: r for r in table_with(page, "FLASH_ATTN µs")}
    assert rows["q2k"]["FLASH_ATTN µs"] == three_digits(median_us(benchmarks, "FLASH_ATTN", "q2k")) == "93.4"
    specs = {b["extra_info"]["batch_spec"] for b in benchmarks}
    assert set(rows) == specs
    for spec in specs:
        times = {b: median_us(benchmarks, b, spec) for b in ("FLASH_ATTN", "TRITON_ATTN", "FLASHINFER")}
        for backend, us in times.items():
            assert rows[spec][f"{backend} µs"] == three_digits(us), (spec, backend)
        assert rows[spec]["fastest"] == min(times, key=times.__getitem__), spec
    fa_q8k = next(b for b in benchmarks if b["extra_info"]["backend"] == "FLASH_ATTN"
                  and b["extra_info"]["batch_spec"] == "q8k")["extra_info"]
    assert rows["q8k"]["FLASH_ATTN graph/kernel-sum"] == f"{fa_q8k['kernels']['timed_over_kernel_sum']:.2f}"
    assert rows["q8k"]["rate of fastest (% peak)"].startswith(f"{fa_q8k['work']['tflops']:.0f} TFLOP/s")
    assert rows["8q1s1k"]["TRITON_ATTN path"] == "3D split-softmax"


def test_mla_tables_carry_times_splits_and_attention_share(page: str) -> None:
    decode = {r["batch spec"]: r for r in table_with(page, "FLASHMLA attention share")}
    benchmarks = entries("mla_decode")
    assert decode["32q1s8k"]["FLASHMLA µs"] == three_digits(median_us(benchmarks, "FLASHMLA", "32q1s8k"))
    share = next(b for b in benchmarks if b["extra_info"]["backend"] == "FLASH_ATTN_MLA"
                 and b["extra_info"]["batch_spec"] == "128q1s8k")["extra_info"]["kernels"]["attention_share"]
    assert decode["128q1s8k"]["FLASH_ATTN_MLA attention share"] == f"{share * 100:.0f} %"

    mixed = {r["batch spec"]: r for r in table_with(page, "FLASHMLA split · attention share")}
    info = next(b for b in entries("mla_mixed_batch") if b["extra_info"]["backend"] == "FLASH_ATTN_MLA"
                and b["extra_info"]["batch_spec"] == "q512_32q1s1k")["extra_info"]["backend_info"]
    assert mixed["q512_32q1s1k"]["FLASH_ATTN_MLA split · attention share"].startswith(
        f"{info['num_decodes']} d + {info['num_prefills']} p")
    assert "FLASHMLA 8q16s1k_32q1s1k: 40 requests have q ≤ its threshold 128, but only 8" in page


def test_speculative_table_has_backend_by_threshold_columns(page: str) -> None:
    rows = {r["batch spec"]: r for r in table_with(page, "FLASHMLA auto (=128)")}
    benchmarks = entries("speculative_decode")
    expected = median_us(benchmarks, "FLASH_ATTN_MLA", "64q8s4k", sweep_value=8)
    assert rows["64q8s4k"]["FLASH_ATTN_MLA 8"] == three_digits(expected)
    assert rows["16q2s1k"]["TRITON_MLA 8"] == "–¹"  # skipped on the GPU: not in the JSON
    assert rows["path"]["FLASHMLA 1"] == "prefill" and rows["path"]["FLASHMLA auto (=128)"] == "decode"


def reorder_times() -> dict[tuple[str, int, int], dict[str, float]]:
    """(backend, batch size, q) -> {pipeline: median s} from the committed files; later files replace earlier ones."""
    times: dict[tuple[str, int, int], dict[str, float]] = defaultdict(dict)
    for path in sorted(JSON_DIR.glob("*_reorder_threshold*.json")):
        for b in json.loads(path.read_text())["benchmarks"]:
            e = b["extra_info"]
            n, q = re.fullmatch(r"(\d*)q(\d+)s1k", e["batch_spec"]).groups()  # type: ignore[union-attr]
            times[(e["backend"], int(n or 1), int(q))][e["pipeline"]] = b["stats"]["median"]
    return times


def test_crossover_rows_for_every_batch_size_and_backend(page: str) -> None:
    rows = table_with(page, "decode faster up to q")
    times = reorder_times()
    for backend in ("FLASH_ATTN_MLA", "FLASHMLA"):
        mine = {int(r["batch size"]): r for r in rows if r["backend"] == backend}
        assert sorted(mine) == BATCH_SIZES, backend
        for n, row in mine.items():
            assert row["q tested"] == "1..256 (9)", (backend, n)  # FLASHMLA 256: the 0007 rerun fills q=256
            t = {q: v for (b, size, q), v in times.items() if (b, size) == (backend, n)}
            lo = int(row["decode faster up to q"].split("–")[0])
            # the threshold is a q where decode won, below every q where prefill won before it
            assert t[lo]["decode"] < t[lo]["prefill"], (backend, n)
            prefill_from = row["prefill faster from q"]
            if prefill_from != "never":
                assert int(prefill_from) > lo and t[int(prefill_from)]["prefill"] < t[int(prefill_from)]["decode"]
    flashmla_256 = next(r for r in rows if r["backend"] == "FLASHMLA" and r["batch size"] == "256")
    assert flashmla_256["prefill faster from q"] == "256"


def test_skipped_and_failed_cases_come_from_the_logs(page: str) -> None:
    section = page.split("## Skipped and failed cases")[1].split("\n## ")[0]
    assert "CUTLASS_MLA requires SM100+" in section and "FLASHINFER_MLA requires SM100+" in section
    assert "Not runnable on this GPU: CUTLASS_MLA, FLASHINFER_MLA" in section
    failed = [line for line in section.splitlines() if "256q256s1k" in line]
    assert len(failed) == 2 and all("rerun passed" in line and "0007_" in line for line in failed)


def test_short_mode_is_the_two_readme_tables(short: str) -> None:
    found = tables(short)
    assert len(found) == 2
    standard, crossover = found
    assert {r["batch spec"]: r["FLASH_ATTN µs"] for r in standard}["q2k"] == "93.4"
    assert [int(r["batch size"]) for r in crossover] == BATCH_SIZES
    assert {r["batch size"]: r["FLASHMLA"] for r in crossover}["2"].startswith("q ≤ 64 ")


# ------------------------------------------------------------------ errors

def test_missing_directory_fails_with_a_clear_message(tool: ModuleType, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_gpu"
    assert tool.main([str(missing), "--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "no such baseline directory" in err
    assert not (tmp_path / "x.md").exists()

    assert tool.main([str(tmp_path)]) == 2  # a folder, but no JSON in it
    assert "no pytest-benchmark JSON files" in capsys.readouterr().err


def test_runs_as_a_script_from_the_checkout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no such baseline directory" in done.stderr and "Traceback" not in done.stderr
