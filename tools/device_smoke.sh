#!/usr/bin/env bash
# Quick device check of the committed code: every Hopper backend but FlashInfer (its JIT costs minutes
# on a cold cache) in the default mode (one worker per GPU), the refusal of two workers on one GPU,
# and one in-process case. usage (device tool, carry [".device"]): bash tools/device_smoke.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t=$(date +%s)
python3 -m pytest -p no:cacheprovider bench_attention bench_mla --backends FLASH_ATTN TRITON_ATTN FLASHMLA FLASH_ATTN_MLA \
  TRITON_MLA --batch-specs 8q1s1k 16q4s1k 2q2k_32q1s1k --benchmark-json "$OUT/smoke.json" -q -rfEs --tb=short 2>&1 \
  | tee "$OUT/smoke.log" | tail -45
echo "== smoke wall $(( $(date +%s) - t ))s"
python3 -m pytest -p no:cacheprovider bench_mla --backends FLASHMLA --batch-specs 8q1s1k -n 2 -q 2>&1 | tail -3
echo "== -n 2 on one GPU: rc ${PIPESTATUS[0]} (4 = usage error)"
python3 -m pytest -p no:cacheprovider bench_mla --backends FLASHMLA --batch-specs 8q1s1k --gpus none -q 2>&1 | tail -2
python3 tools/summarize_host_seconds.py "$OUT/smoke.json"
