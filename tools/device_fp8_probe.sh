#!/usr/bin/env bash
# FP8 KV caches and the added backends on the lent GPU, one call: the support drift test, fp8 / fp8_e5m2 on every
# Hopper backend that may take it (both timed regions), FLEX_ATTENTION and HPC_ATTN at bf16. Prints one line
# per case (time, error against the stored values, accuracy cost against the unquantised K/V, tolerance).
# usage (device tool, carry [".device"]): bash tools/device_fp8_probe.sh [extra pytest args]
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
q() { python3 -m pytest -p no:cacheprovider -q -rfEs --tb=line "$@"; }
summary() { python3 tools/fp8_summary.py "$@"; }  # one line per timed case of a --benchmark-json file
q tests/test_vllm_support.py > "$OUT/probe.log" 2>&1; echo "== support drift rc=$? $(tail -1 "$OUT/probe.log")"
q bench_attention --backends FLASH_ATTN TRITON_ATTN FLASHINFER --kv-cache-dtype fp8 \
  --batch-specs 8q1s1k 16q4s1k 2q2k_32q1s1k q2k --timed-region layer attention \
  --benchmark-json "$OUT/attention_fp8.json" "$@" >> "$OUT/probe.log" 2>&1
echo "== attention fp8 rc=$? $(tail -1 "$OUT/probe.log")"; summary "$OUT/attention_fp8.json"
q bench_attention --backends FLASH_ATTN TRITON_ATTN FLASHINFER --kv-cache-dtype fp8_e5m2 \
  --batch-specs 8q1s1k 2q2k_32q1s1k --benchmark-json "$OUT/attention_e5m2.json" "$@" >> "$OUT/probe.log" 2>&1
echo "== attention fp8_e5m2 rc=$? $(tail -1 "$OUT/probe.log")"; summary "$OUT/attention_e5m2.json"
q bench_mla --backends FLASHMLA TRITON_MLA FLASH_ATTN_MLA --kv-cache-dtype fp8 \
  --batch-specs 64q1s1k 16q4s1k 2q2k_32q1s1k --timed-region layer attention \
  --benchmark-json "$OUT/mla_fp8.json" "$@" >> "$OUT/probe.log" 2>&1
echo "== mla fp8 rc=$? $(tail -1 "$OUT/probe.log")"; summary "$OUT/mla_fp8.json"
q bench_attention --backends FLEX_ATTENTION HPC_ATTN --batch-specs 8q1s1k 16q4s1k 2q2k_32q1s1k q2k \
  --benchmark-json "$OUT/flex.json" "$@" >> "$OUT/probe.log" 2>&1
echo "== flex/hpc rc=$? $(tail -1 "$OUT/probe.log")"; summary "$OUT/flex.json"
grep -E "^(SKIPPED|FAILED|ERROR)" "$OUT/probe.log" | cut -c1-400 | sort | uniq -c | head -40
save_flashinfer_cache
echo "total $(( $(date +%s) - t0 ))s"
