#!/usr/bin/env bash
# Run the suite on a GPU machine that has no package index.
#
# A bundle (a .tar.xz of a site-packages tree holding vLLM 0.26.0 and the packages the machine lacks,
# built elsewhere: docs/OFFLINE_GPU.md) is unpacked into a site directory that goes first on PYTHONPATH,
# the environment is made offline, FlashInfer's JIT cache is restored (and saved again if it grew),
# and `python3 -m pytest ARGS...` runs. The exit status is pytest's (3: the bundle could not be unpacked).
#
# usage (from the repository root):
#   bash tools/offline_gpu.sh [--bundle PATH] [pytest args...]
#   bash tools/offline_gpu.sh bench_mla --bench-config configs/mla_decode.yaml --benchmark-save mla_decode
#
# environment:
#   ATTNBENCH_BUNDLE             the bundle, if --bundle is not given (default: bundle/vllm_site.tar.xz)
#   ATTNBENCH_SITE               unpack here and keep it; a directory that already holds vllm/ is reused
#                                as it is (default: a temporary directory, removed at exit)
#   ATTNBENCH_FLASHINFER_CACHE   a .tar.xz of FlashInfer's JIT cache: restored before pytest and rewritten
#                                after it when pytest compiled new kernels (default:
#                                bundle/flashinfer_cache.tar.xz; empty: no restore, no save). Ignored when
#                                FLASHINFER_WORKSPACE_BASE is set: that directory is used as it is.
#   PYTHON                       the interpreter (default: python3); it must match the bundle's Python
set -uo pipefail

BUNDLE=${ATTNBENCH_BUNDLE:-bundle/vllm_site.tar.xz}
if [ "${1:-}" = "--bundle" ]; then
  [ $# -ge 2 ] || { echo "offline_gpu.sh: --bundle needs a path" >&2; exit 4; }
  BUNDLE=$2; shift 2
fi
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/attnbench_offline.XXXXXX") || exit 3
trap 'rm -rf "$TMP"' EXIT

# 1. the bundle -> a site directory
SITE=${ATTNBENCH_SITE:-$TMP/site}
if [ ! -f "$SITE/vllm/__init__.py" ]; then
  [ -f "$BUNDLE" ] || { echo "offline_gpu.sh: no bundle at $BUNDLE (set ATTNBENCH_BUNDLE or pass --bundle)" >&2; exit 3; }
  mkdir -p "$SITE" && tar -xf "$BUNDLE" -C "$SITE" || { echo "offline_gpu.sh: cannot unpack $BUNDLE" >&2; exit 3; }
  [ -f "$SITE/vllm/__init__.py" ] || { echo "offline_gpu.sh: $BUNDLE holds no vllm/ at its top level" >&2; exit 3; }
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1} PYTHONUNBUFFERED=1

# 2. FlashInfer's JIT cache (it compiles its kernels at first use: minutes on an empty cache)
FI_CACHE=${ATTNBENCH_FLASHINFER_CACHE-bundle/flashinfer_cache.tar.xz}
FI_SAVE=""
if [ -z "${FLASHINFER_WORKSPACE_BASE:-}" ]; then
  export FLASHINFER_WORKSPACE_BASE=$TMP/flashinfer
  mkdir -p "$FLASHINFER_WORKSPACE_BASE/.cache"
  if [ -n "$FI_CACHE" ]; then
    FI_SAVE=$FI_CACHE
    if [ -f "$FI_CACHE" ]; then
      tar -xf "$FI_CACHE" -C "$FLASHINFER_WORKSPACE_BASE/.cache" || echo "offline_gpu.sh: could not restore $FI_CACHE" >&2
    fi
  fi
fi
count_fi_files() { find "$FLASHINFER_WORKSPACE_BASE/.cache" -type f 2>/dev/null | wc -l; }
FI_BEFORE=$(count_fi_files)

# 3. which GPU, then pytest
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
else
  echo "offline_gpu.sh: nvidia-smi not found" >&2
fi
"$PYTHON" -m pytest "$@"
rc=$?

# 4. bring a grown FlashInfer cache back for the next run
if [ -n "$FI_SAVE" ] && [ "$(count_fi_files)" != "$FI_BEFORE" ] && [ -d "$FLASHINFER_WORKSPACE_BASE/.cache/flashinfer" ]; then
  mkdir -p "$(dirname "$FI_SAVE")"
  if tar -cf - -C "$FLASHINFER_WORKSPACE_BASE/.cache" flashinfer | xz -T0 -6 > "$FI_SAVE.tmp" && mv "$FI_SAVE.tmp" "$FI_SAVE"; then
    echo "offline_gpu.sh: FlashInfer JIT cache saved to $FI_SAVE ($FI_BEFORE -> $(count_fi_files) files)"
  else
    rm -f "$FI_SAVE.tmp"; echo "offline_gpu.sh: could not save the FlashInfer cache to $FI_SAVE" >&2
  fi
fi
exit $rc
