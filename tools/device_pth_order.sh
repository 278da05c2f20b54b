#!/usr/bin/env bash
# Which earlier case in the process slows TRITON_ATTN int8_per_token_head 32q1s4k from ~415 to ~500 us: the same
# three kv_cache_dtypes in other orders, one process each. usage (device tool, carry [".device"]):
# bash tools/device_pth_order.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
n=0
for order in "int8_per_token_head auto fp8" "auto int8_per_token_head" "fp8 int8_per_token_head" \
             "fp8_per_token_head int8_per_token_head"; do
  n=$((n + 1))
  timeout 120 python3 -m pytest -p no:cacheprovider -q bench_attention --backends TRITON_ATTN --batch-specs 32q1s4k \
    --sweep-param kv_cache_dtype --sweep-values $order --repeats 100 --benchmark-json "$OUT/order$n.json" \
    >> "$OUT/order.log" 2>&1
  echo "== order $n [$order] rc=$? ($(( $(date +%s) - t0 ))s)"
  python3 tools/fp8_summary.py "$OUT/order$n.json" | cut -c1-110
done
