#!/usr/bin/env bash
# Run a pytest command on the lent GPU machine with real vLLM 0.26.0 (see ../shared/device/README.md).
# usage (device tool, carry [".device"]): bash tools/device_session.sh <pytest args...>
# Runs pytest with its log under $OUT and brings a grown FlashInfer cache back (tools/device_env.sh).
set -uo pipefail
t0=$(date +%s)
source tools/device_env.sh || exit 3
echo "setup $(( $(date +%s) - t0 ))s; flashinfer cache files: $FLASHINFER_FILES_BEFORE"
python3 -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$OUT/${LOG_NAME:-pytest}.log"
rc=${PIPESTATUS[0]}
save_flashinfer_cache
echo "total $(( $(date +%s) - t0 ))s rc=$rc"
exit $rc
