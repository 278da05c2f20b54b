#!/usr/bin/env bash
# Reconcile this suite's numbers with vLLM's attention_benchmarks on the lent GPU (issue: "numbers a
# kernel engineer can reconcile"). Three runs of the upstream suite's batch specs, one difference at a time:
#   A  layer + attention regions, random K/V, cold L2  (this suite's defaults, plus the attention-only region)
#   B  attention region, zero-filled K/V, cold L2      (the data effect)
#   C  attention region, zero-filled K/V, warm L2      (the L2 effect: upstream flushes nothing)
# C is upstream's setting except for its unreordered batches and unwritten new tokens (README says why).
# Each run's --benchmark-json lands in $OUT/reconcile_{A,B,C}.json with its log.
# usage (device tool, carry [".device"]): RUNS="A B C" bash tools/device_reconcile.sh
#   BACKENDS (run A) and BACKENDS_BC (runs B, C) name the backends; FlashInfer's first cases JIT-compile.
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
STD_SPECS="q2k 8q1s1k 16q4s1k 2q2k_32q1s1k 64q1s2k q8k"
MLA_SPECS="64q1s1k 64q1s4k 8q16s1k_32q1s1k 32q1s1k_8q16s1k"
BACKENDS_A=${BACKENDS:-FLASH_ATTN TRITON_ATTN FLASHINFER FLASHMLA FLASH_ATTN_MLA TRITON_MLA}
BACKENDS_BC=${BACKENDS_BC:-FLASH_ATTN FLASHINFER FLASHMLA FLASH_ATTN_MLA}
RUNS=${RUNS:-A B C}
run() {  # name, backends, extra args...
  local name=$1 BACKENDS=$2; shift 2
  local t=$(date +%s)
  python3 -m pytest -p no:cacheprovider bench_attention bench_mla --backends $BACKENDS \
    --batch-specs $STD_SPECS $MLA_SPECS "$@" --benchmark-json "$OUT/reconcile_$name.json" -q -rfEs --tb=short \
    > "$OUT/reconcile_$name.log" 2>&1
  echo "== run $name rc=$? wall $(( $(date +%s) - t ))s"; tail -4 "$OUT/reconcile_$name.log"
}
# standard specs only for standard attention, MLA specs only for MLA: -k keeps the upstream pairs
SEL='(test_attention and not (64q1s1k or 64q1s4k or 8q16s1k_32q1s1k or 32q1s1k_8q16s1k)) or (test_mla and (64q1s1k or 64q1s4k or 8q16s1k_32q1s1k or 32q1s1k_8q16s1k))'
for r in $RUNS; do case $r in
  A) run A "$BACKENDS_A" --timed-region layer attention -k "$SEL" ;;
  B) run B "$BACKENDS_BC" --timed-region attention --kv-fill zeros -k "$SEL" ;;
  C) run C "$BACKENDS_BC" --timed-region attention --kv-fill zeros --cache-state warm -k "$SEL" ;;
esac; done
save_flashinfer_cache
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = {}
for run in "ABC":
    path = os.path.join(out, f"reconcile_{run}.json")
    if not os.path.exists(path):
        continue
    for b in json.load(open(path))["benchmarks"]:
        i = b["extra_info"]
        key = (i["backend"], i["batch_spec"])
        k = i.get("kernels") or {}
        c = i.get("clocks") or {}
        rows.setdefault(key, {})[f"{run}-{i['timed_region']}"] = (
            b["stats"]["median"] * 1e6, (k.get("kernel_sum_s") or 0) * 1e6, c.get("sm_mhz_median"), c.get("power_w_median"),
            (i.get("verification") or {}).get("after_timing", {}).get("status"))
cols = ["A-layer", "A-attention", "B-attention", "C-attention"]
print(f"{'backend':16s} {'spec':18s} " + " ".join(f"{c:>30s}" for c in cols))
for (backend, spec), r in sorted(rows.items()):
    cells = []
    for c in cols:
        v = r.get(c)
        cells.append(f"{v[0]:8.1f}us k{v[1]:7.1f} {v[2] or 0:5.0f}MHz {v[3] or 0:4.0f}W" if v else f"{'-':>30s}")
    print(f"{backend:16s} {spec:18s} " + " ".join(f"{x:>30s}" for x in cells))
PY
echo "total $(( $(date +%s) - t0 ))s"
