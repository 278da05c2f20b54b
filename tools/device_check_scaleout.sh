#!/usr/bin/env bash
# Device check of the scale-out layer: host overhead per case on a reorder subset (one worker pinned
# to the GPU, the default), where host time goes (cProfile, in-process), and a real CUDA fault.
# usage (device tool, carry [".device"]): bash tools/device_check_scaleout.sh
set -uo pipefail
source tools/device_env.sh || exit 3
run() { local name=$1; shift; local t=$(date +%s)
  python3 -m pytest -p no:cacheprovider "$@" -q -rfEs --tb=line 2>&1 | tee "$OUT/$name.log" | grep -v "^SKIPPED" | tail -25
  echo "== $name: wall $(( $(date +%s) - t ))s"; }
EIGHT=(bench_mla -k test_mla --backends FLASHMLA FLASH_ATTN_MLA --batch-specs 8q1s1k 64q1s1k 16q4s1k q256s1k --no-kernel-profile)
# 1. the issue's 54-case subset (FLASH_ATTN_MLA, 3 q x 9 batch sizes x 2 pipelines)
run subset bench_mla --bench-config configs/reorder_threshold.yaml --full-grid -k FLASH_ATTN_MLA \
  --batch-specs q1s1k q64s1k q256s1k --benchmark-json "$OUT/subset.json"
# 2. the same 8 cases in-process under cProfile (device times unaffected: graph replays)
run serial8 "${EIGHT[@]}" --gpus none -p tests.plugins.host_profile --host-profile "$OUT/host_profile.txt" \
  --benchmark-json "$OUT/serial8.json"
# 3. the 8 cases in the default mode, one of them faulting with a real illegal address
run crash8 "${EIGHT[@]}" -p tests.plugins.fault_injection --inject-fault cuda-illegal-address@FLASHMLA-16q4s1k \
  --benchmark-json "$OUT/crash8.json" --output-json "$OUT/crash8_out.json"
python3 tools/summarize_host_seconds.py "$OUT/subset.json" "$OUT/serial8.json" "$OUT/crash8.json"
python3 - "$OUT" <<'PY'
import json, sys
load = lambda n: {b["name"]: b["stats"]["median"] for b in json.load(open(f"{sys.argv[1]}/{n}.json"))["benchmarks"]}
a, b = load("serial8"), load("crash8")
for k in sorted(set(a) & set(b)):
    print(f"  {k}: in-process {a[k]*1e6:.1f} us, worker {b[k]*1e6:.1f} us ({100*(b[k]/a[k]-1):+.1f}%)")
PY
