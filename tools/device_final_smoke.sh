#!/usr/bin/env bash
# The session's last device call: the merged tree's dense backends at bf16 (a regression smoke), FLASHMLA_SPARSE's
# fp8_ds_mla mixed batch after the MHA-row reference fix, and the support drift test with the sparse rows.
# usage (device tool, carry [".device"]): bash tools/device_final_smoke.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
q() { python3 -m pytest -p no:cacheprovider -q -rfEs --tb=short "$@"; }
q tests/test_vllm_support.py > "$OUT/final_smoke.log" 2>&1; echo "== support drift rc=$? $(tail -1 "$OUT/final_smoke.log")"
q bench_attention bench_mla --backends FLASH_ATTN TRITON_ATTN FLASHINFER FLASHMLA FLASH_ATTN_MLA TRITON_MLA \
  --batch-specs 16q4s1k 2q2k_32q1s1k --benchmark-json "$OUT/dense_bf16.json" >> "$OUT/final_smoke.log" 2>&1
echo "== dense bf16 rc=$? $(tail -1 "$OUT/final_smoke.log")"
q bench_mla/test_sparse_mla.py --backends FLASHMLA_SPARSE --kv-cache-dtype fp8 --topk-pattern random prefix \
  --batch-specs q2k_32q1s8k 64q1s8k --benchmark-json "$OUT/fp8_ds_mla_fixed.json" >> "$OUT/final_smoke.log" 2>&1
echo "== fp8_ds_mla rc=$? $(tail -1 "$OUT/final_smoke.log")"
python3 tools/fp8_summary.py "$OUT/dense_bf16.json" "$OUT/fp8_ds_mla_fixed.json"
grep -E "^(FAILED|ERROR)" "$OUT/final_smoke.log" | cut -c1-300 | head
echo "total $(( $(date +%s) - t0 ))s"
