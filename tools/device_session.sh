#!/usr/bin/env bash
# Run a pytest command on the lent GPU machine with real vLLM 0.26.0 (see ../shared/device/README.md).
# usage (device tool, carry [".device"]): bash tools/device_session.sh <pytest args...>
# Unpacks the carried vLLM bundle, restores a carried FlashInfer JIT cache, runs pytest with its log
# under $OUT, and brings the (possibly grown) FlashInfer cache back as $OUT/flashinfer_cache.tar.xz.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
[ -f /tmp/site/vllm/__init__.py ] || { mkdir -p /tmp/site && tar -xJf .device/vllm026_sm90_site.tar.xz -C /tmp/site; } || exit 3
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export FLASHINFER_WORKSPACE_BASE=/tmp/fi
mkdir -p /tmp/fi/.cache
if [ -f .device/flashinfer_cache.tar.xz ] && [ ! -d /tmp/fi/.cache/flashinfer ]; then tar -xJf .device/flashinfer_cache.tar.xz -C /tmp/fi/.cache; fi
before=$(find /tmp/fi/.cache -type f 2>/dev/null | wc -l)
echo "setup $(( $(date +%s) - t0 ))s; flashinfer cache files: $before"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
python3 -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$OUT/${LOG_NAME:-pytest}.log"
rc=${PIPESTATUS[0]}
after=$(find /tmp/fi/.cache -type f 2>/dev/null | wc -l)
if [ "$after" != "$before" ] && [ -d /tmp/fi/.cache/flashinfer ]; then
  tar -cf - -C /tmp/fi/.cache flashinfer | xz -T0 -6 > "$OUT/flashinfer_cache.tar.xz"
  echo "flashinfer cache grew: $before -> $after files"
fi
echo "total $(( $(date +%s) - t0 ))s rc=$rc"
exit $rc
