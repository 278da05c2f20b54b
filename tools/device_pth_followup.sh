#!/usr/bin/env bash
# Follow-up device call: where the study's 503 us for TRITON_ATTN int8_per_token_head 32q1s4k (layer step) and the
# region probe's 414-421 us come from (the case alone, repeats 100 vs 30, after the study's earlier cases), plus a
# smoke of the per-tensor fp8 and sparse MLA paths after the cache-format refactor.
# usage (device tool, carry [".device"]): bash tools/device_pth_followup.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
LOG="$OUT/followup.log"
q() {  # name, pytest args
  local name=$1; shift
  echo "===== $name: pytest $*" >> "$LOG"
  timeout 150 python3 -m pytest -p no:cacheprovider -q -rfEs --tb=short "$@" --benchmark-json "$OUT/$name.json" >> "$LOG" 2>&1
  echo "== $name rc=$? ($(( $(date +%s) - t0 ))s): $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$LOG" | tail -1)"
  python3 tools/fp8_summary.py "$OUT/$name.json" | cut -c1-150
}
T=(bench_attention --backends TRITON_ATTN --batch-specs 32q1s4k)
q alone_r100 "${T[@]}" --kv-cache-dtype int8_per_token_head --repeats 100
q alone_r30 "${T[@]}" --kv-cache-dtype int8_per_token_head --repeats 30
q after_auto_fp8 "${T[@]}" --sweep-param kv_cache_dtype --sweep-values auto fp8 int8_per_token_head --repeats 100
q smoke bench_attention bench_mla --backends FLASH_ATTN FLASHMLA TRITON_MLA --kv-cache-dtype fp8 \
  --batch-specs 32q1s4k 2q2k_32q1s1k --repeats 20
q sparse bench_mla/test_sparse_mla.py --backends FLASHMLA_SPARSE --topk-pattern random --batch-specs 64q1s4k --repeats 20
grep -E "^E  .*(Error|Failed):" "$LOG" | cut -c1-300 | sort | uniq -c | head
echo "total $(( $(date +%s) - t0 ))s"
