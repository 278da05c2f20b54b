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
python3 - "$OUT" <<'PY'
import glob, json, statistics as st, sys
paths = glob.glob(f"{sys.argv[1]}/storage/*/*.json")
if not paths:
    sys.exit("no saved run")
bs = json.load(open(paths[0]))["benchmarks"]
hs = [b["extra_info"]["host_seconds"] for b in bs]
gpu = [b["stats"]["mean"] * b["stats"]["rounds"] * b["extra_info"]["timing"]["calls_per_round"] for b in bs]
tot = [h["total"] for h in hs]
print(f"{len(bs)} timed cases; summed host_seconds.total {sum(tot):.1f}s (first {tot[0]:.1f}s); "
      + ", ".join(f"{k} {sum(h.get(k, 0) for h in hs):.1f}s" for k in ("setup", "verify", "timing", "profile"))
      + f"; timed GPU {sum(gpu):.1f}s")
dec = [(t - g) for b, t, g in zip(bs[1:], tot[1:], gpu[1:]) if b["extra_info"].get("pipeline") == "decode"]
print(f"host beyond timed GPU, decode-pipeline cases after the first: median {st.median(dec):.3f}s, "
      f"p90 {sorted(dec)[int(0.9 * len(dec))]:.3f}s, max {max(dec):.3f}s")
PY
