#!/usr/bin/env bash
# The reorder_threshold study (adaptive crossover search, FLASH_ATTN_MLA and FLASHMLA, 9 batch sizes,
# both pipelines) on the lent GPU, saved as pytest-benchmark storage under $OUT/storage.
# usage (device tool, carry [".device"]): bash tools/device_reorder_study.sh [extra pytest args]
set -uo pipefail
source tools/device_env.sh || exit 3
t=$(date +%s)
timeout "${STUDY_TIMEOUT:-560}" python3 -m pytest -p no:cacheprovider bench_mla --bench-config configs/reorder_threshold.yaml \
  --benchmark-save reorder_threshold --benchmark-storage "file://$OUT/storage" \
  --output-json "$OUT/reorder_out.json" --output-csv "$OUT/reorder_out.csv" -q -rfE --tb=line "$@" 2>&1 \
  | tee "$OUT/reorder.log" | grep -v "^SKIPPED" | tail -80
echo "== study wall $(( $(date +%s) - t ))s"
python3 tools/summarize_host_seconds.py "$OUT"/storage/*/*.json
