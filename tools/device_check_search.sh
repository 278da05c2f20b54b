#!/usr/bin/env bash
# Cross-check of the adaptive crossover search against the full grid on one curve (FLASH_ATTN_MLA,
# batch size 8: 280 q x 2 pipelines), and a standard-attention check of the round sizing against the
# profiler's kernel sum. usage (device tool, carry [".device"]): bash tools/device_check_search.sh
set -uo pipefail
source tools/device_env.sh || exit 3
t=$(date +%s)
timeout 400 python3 -m pytest -p no:cacheprovider bench_mla --bench-config configs/reorder_threshold.yaml --full-grid \
  -k "FLASH_ATTN_MLA-8q" --benchmark-save full_grid_bs8 --benchmark-storage "file://$OUT/storage" \
  --output-json "$OUT/full_grid_bs8.json" -q -rfE --tb=line 2>&1 | tee "$OUT/full_grid_bs8.log" | grep -v "^SKIPPED" | tail -4
echo "== full grid wall $(( $(date +%s) - t ))s"; t=$(date +%s)
timeout 150 python3 -m pytest -p no:cacheprovider bench_attention --backends FLASH_ATTN TRITON_ATTN \
  --batch-specs q2k 8q1s1k 16q4s1k 2q2k_32q1s1k --benchmark-save standard_check --benchmark-storage "file://$OUT/storage" \
  -q -rfE --tb=line 2>&1 | tee "$OUT/standard_check.log" | grep -v "^SKIPPED" | tail -30
echo "== standard wall $(( $(date +%s) - t ))s"
python3 - "$OUT" <<'PY'
import glob, json, sys
for p in sorted(glob.glob(f"{sys.argv[1]}/storage/*/*standard_check.json")):
    for b in json.load(open(p))["benchmarks"]:
        e = b["extra_info"]; k = e.get("kernels") or {}
        print(f'{b["name"]:42s} median {b["stats"]["median"]*1e6:8.1f} us  calls/round {e["timing"]["calls_per_round"]:3d} '
              f'rounds {e["timing"]["rounds"]:3d}  timed/kernel-sum {k.get("timed_over_kernel_sum", float("nan")):.3f}  '
              f'host {e["host_seconds"]["total"]:.2f}s')
PY
