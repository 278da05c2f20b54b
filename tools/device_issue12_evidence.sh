#!/usr/bin/env bash
# Issue 12's evidence in one device call: the fp8 KV-cache study saved as storage, sparse MLA (bf16 cache, three
# top-k patterns) saved as storage, FLASHMLA_SPARSE's fp8_ds_mla cache, and a reduced mha_vs_mqa study saved as
# storage. Each step is bounded (STEP_S) so one that hangs leaves time for the rest. At most 8 files under $OUT.
# usage (device tool, carry [".device"]): bash tools/device_issue12_evidence.sh [steps: fp8 sparse dsmla mha]
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
S="file://$OUT/storage"
LOG="$OUT/evidence.log"
steps=${*:-fp8 sparse dsmla mha}
q() {  # name, timeout, pytest args: appends to the log, prints the outcome line
  local name=$1 limit=$2; shift 2
  echo "===== $name: pytest $*" >> "$LOG"
  timeout "$limit" python3 -m pytest -p no:cacheprovider -q -rfEs --tb=short "$@" >> "$LOG" 2>&1
  echo "== $name rc=$? ($(( $(date +%s) - t0 ))s): $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$LOG" | tail -1)"
}
SPARSE=(--backends FLASHMLA_SPARSE FLASH_ATTN_MLA_SPARSE)
for step in $steps; do case $step in
  fp8) q fp8_kv_cache 260 bench_attention bench_mla --bench-config configs/fp8_kv_cache.yaml \
         --benchmark-save fp8_kv_cache --benchmark-storage "$S" --benchmark-save-data ;;
  sparse) q sparse_mla 170 bench_mla/test_sparse_mla.py --bench-config configs/sparse_mla.yaml \
         --batch-specs 32q1s1k 64q1s4k 64q1s8k 16q4s8k q2k_32q1s8k --benchmark-save sparse_mla \
         --benchmark-storage "$S" --benchmark-save-data ;;
  dsmla) q fp8_ds_mla 90 bench_mla/test_sparse_mla.py "${SPARSE[@]}" --kv-cache-dtype fp8 --topk-pattern random \
         --batch-specs 64q1s8k 16q4s8k q2k_32q1s8k --timed-region layer attention \
         --benchmark-json "$OUT/fp8_ds_mla.json" ;;
  mha) q mha_vs_mqa 170 bench_mla/test_sparse_mla.py --bench-config configs/mha_vs_mqa_quick.yaml \
         --benchmark-save mha_vs_mqa --benchmark-storage "$S" --benchmark-save-data ;;
esac; done
grep -E "^(FAILED|ERROR)|Error:|Failed:" "$LOG" | cut -c1-300 | sort | uniq -c | sort -rn | head -25
grep -E "^SKIPPED" "$LOG" | cut -c1-250 | sort | uniq -c | head -12
ls -la "$OUT"/storage/*/ 2>/dev/null
save_flashinfer_cache
echo "total $(( $(date +%s) - t0 ))s"
