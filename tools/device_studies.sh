#!/usr/bin/env bash
# Run whole studies on the GPU machine and save each as a pytest-benchmark run under
# $OUT/storage (copy it to baselines/<gpu>/ afterwards). usage: bash tools/device_studies.sh STUDY... [-- extra pytest args]
studies=(); extra=()
while [ $# -gt 0 ]; do if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi; studies+=("$1"); shift; done
rc=0
for s in "${studies[@]}"; do
  LOG_NAME=$s bash tools/device_session.sh bench_attention bench_mla --bench-config "configs/$s.yaml" \
    --benchmark-save "$s" --benchmark-storage "file://${OUT:-/tmp/out}/storage" -q -rs --tb=short "${extra[@]}" || rc=1
done
exit $rc
