#!/usr/bin/env bash
# The last device call of a session: the standard-attention study saved with its samples, a smoke of both
# timed regions on every Hopper backend, and the same study (mla_decode) run twice on one machine, which is
# what a regression gate sees when nothing changed. Writes at most 8 files under $OUT.
# usage (device tool, carry [".device"]): bash tools/device_final_check.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t0=$(date +%s)
S="file://$OUT/storage"
q() { python3 -m pytest -p no:cacheprovider -q -rfEs --tb=short "$@"; }
q bench_attention --bench-config configs/standard_attention.yaml --benchmark-save standard_attention \
  --benchmark-storage "$S" --benchmark-save-data > "$OUT/standard_attention.log" 2>&1
echo "== standard_attention rc=$? $(tail -1 "$OUT/standard_attention.log")"
q bench_attention bench_mla --backends FLASH_ATTN TRITON_ATTN FLASHINFER FLASHMLA FLASH_ATTN_MLA TRITON_MLA \
  --batch-specs 16q4s1k 2q2k_32q1s1k --timed-region layer attention --benchmark-json "$OUT/final_smoke.json" \
  > "$OUT/final_smoke.log" 2>&1
echo "== smoke rc=$? $(tail -1 "$OUT/final_smoke.log")"
for run in 1 2; do
  q bench_mla --bench-config configs/mla_decode.yaml --benchmark-save "mla_decode_rerun$run" --benchmark-storage "$S" \
    --benchmark-save-data >> "$OUT/mla_decode_reruns.log" 2>&1
  echo "== mla_decode rerun $run rc=$?"
done
ls "$OUT"/storage/*/
echo "total $(( $(date +%s) - t0 ))s"
