#!/usr/bin/env bash
# Second fp8 device call: FlashInfer's fp8 prefill with calibrated vs unit scales, FLEX_ATTENTION at bf16, the MLA
# fp8 mixed batch after the forward_mha reference fix, and (if present) the sparse
# MLA probe. usage (device tool, carry [".device"]): bash tools/device_fp8_check.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
q() { python3 -m pytest -p no:cacheprovider -q -rfEs --tb=line "$@"; }
summary() { python3 tools/fp8_summary.py "$@"; }
for scales in calibrated unit; do
  q bench_attention --backends FLASHINFER FLASH_ATTN --kv-cache-dtype fp8 --kv-scales $scales \
    --batch-specs q2k 2q2k_32q1s1k 16q4s1k --benchmark-json "$OUT/fi_$scales.json" >> "$OUT/check.log" 2>&1
  echo "== flashinfer fp8 $scales rc=$? $(tail -1 "$OUT/check.log")"; summary "$OUT/fi_$scales.json"
done
q bench_attention --backends FLEX_ATTENTION --batch-specs 8q1s1k 16q4s1k 2q2k_32q1s1k q2k \
  --benchmark-json "$OUT/flex.json" >> "$OUT/check.log" 2>&1
echo "== flex rc=$? $(tail -1 "$OUT/check.log")"; summary "$OUT/flex.json"
q bench_mla --backends FLASHMLA TRITON_MLA --kv-cache-dtype fp8 --batch-specs 2q2k_32q1s1k q1ks4k_16q1s4k \
  --benchmark-json "$OUT/mla_fp8.json" >> "$OUT/check.log" 2>&1
echo "== mla fp8 rc=$? $(tail -1 "$OUT/check.log")"; summary "$OUT/mla_fp8.json"
grep -E "^(SKIPPED|FAILED|ERROR)|CaseFailed|VerificationFailed" "$OUT/check.log" | cut -c1-300 | sort | uniq -c | head -30
if [ -x tools/device_sparse_probe.sh ]; then bash tools/device_sparse_probe.sh; fi
save_flashinfer_cache
echo "total $(( $(date +%s) - t0 ))s"
