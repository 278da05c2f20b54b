#!/usr/bin/env bash
# Source on the lent GPU machine (device tool, carry [".device"]): unpacks the carried vLLM bundle,
# restores a carried FlashInfer JIT cache and exports the environment every device run needs.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -f /tmp/site/vllm/__init__.py ] || { mkdir -p /tmp/site && tar -xJf .device/vllm026_sm90_site.tar.xz -C /tmp/site; } || return 3
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export FLASHINFER_WORKSPACE_BASE=/tmp/fi
mkdir -p /tmp/fi/.cache
if [ -f .device/flashinfer_cache.tar.xz ] && [ ! -d /tmp/fi/.cache/flashinfer ]; then tar -xJf .device/flashinfer_cache.tar.xz -C /tmp/fi/.cache; fi
FLASHINFER_FILES_BEFORE=$(find /tmp/fi/.cache -type f 2>/dev/null | wc -l)
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader

# Bring a grown FlashInfer cache back as $OUT/flashinfer_cache.tar.xz (call at the end).
save_flashinfer_cache() {
  local after; after=$(find /tmp/fi/.cache -type f 2>/dev/null | wc -l)
  if [ "$after" != "$FLASHINFER_FILES_BEFORE" ] && [ -d /tmp/fi/.cache/flashinfer ]; then
    tar -cf - -C /tmp/fi/.cache flashinfer | xz -T0 -6 > "$OUT/flashinfer_cache.tar.xz"
    echo "flashinfer cache grew: $FLASHINFER_FILES_BEFORE -> $after files"
  fi
}
