#!/usr/bin/env bash
# TRITON_ATTN's per-(token, head) KV caches on the GPU in one device call: the study (configs/
# per_token_head_kv_cache.yaml) saved as storage, the attention region and a prefill, and the other backends'
# answers (vLLM's skip reasons). Each step is bounded so one that hangs leaves time for the rest.
# usage (device tool, carry [".device"]): bash tools/device_pth_evidence.sh [steps: study region skips]
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
S="file://$OUT/storage"
LOG="$OUT/pth.log"
steps=${*:-study region skips context tf32}
PTH=(--sweep-param kv_cache_dtype --sweep-values int8_per_token_head fp8_per_token_head int4_per_token_head)
q() {  # name, timeout, pytest args: appends to the log, prints the outcome line
  local name=$1 limit=$2; shift 2
  echo "===== $name: pytest $*" >> "$LOG"
  timeout "$limit" python3 -m pytest -p no:cacheprovider -q -rfEs --tb=short "$@" >> "$LOG" 2>&1
  echo "== $name rc=$? ($(( $(date +%s) - t0 ))s): $(grep -E '[0-9]+ (passed|failed|skipped|error)' "$LOG" | tail -1)"
}
for step in $steps; do case $step in
  study) q per_token_head_kv_cache 320 bench_attention --bench-config configs/per_token_head_kv_cache.yaml \
           --benchmark-save per_token_head_kv_cache --benchmark-storage "$S" --benchmark-save-data \
           --benchmark-json "$OUT/study.json" ;;
  region) q attention_region 150 bench_attention --backends TRITON_ATTN "${PTH[@]}" --timed-region attention layer \
           --batch-specs q2k 32q1s4k 16q4s4k 2q2k_32q1s1k --repeats 30 --benchmark-json "$OUT/region.json" ;;
  # int4's error against its stored values by context length, and with fp32 dots in full precision
  # (TRITON_F32_DEFAULT=ieee: Triton's default for fp32 tl.dot is TF32)
  context) q int4_context 150 bench_attention --backends TRITON_ATTN --kv-cache-dtype int4_per_token_head \
           --batch-specs 32q1s1k 32q1s4k 32q1s16k 16q1s32k 8q1s64k --repeats 20 --benchmark-json "$OUT/context.json" ;;
  tf32) export TRITON_F32_DEFAULT=ieee; q int4_ieee 150 bench_attention --backends TRITON_ATTN \
           --kv-cache-dtype int4_per_token_head --batch-specs 32q1s4k 32q1s16k 8q1s64k --repeats 20 \
           --benchmark-json "$OUT/ieee.json"; unset TRITON_F32_DEFAULT ;;
  skips) q other_backends 120 bench_attention --backends FLASH_ATTN FLASHINFER FLEX_ATTENTION "${PTH[@]}" \
           --batch-specs 8q1s1k --repeats 5 ;;
esac; done
for f in "$OUT"/*.json; do echo "--- $f"; python3 tools/fp8_summary.py "$f"; done
grep -E "^E  .*(Error|Failed):" "$LOG" | cut -c1-300 | sort | uniq -c | sort -rn | head -25
grep -E "^SKIPPED" "$LOG" | cut -c1-300 | sort | uniq -c | head -12
ls -la "$OUT"/storage/*/ 2>/dev/null
save_flashinfer_cache
echo "total $(( $(date +%s) - t0 ))s"
