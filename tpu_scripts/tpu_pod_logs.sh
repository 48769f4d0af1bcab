#!/usr/bin/env bash
# Show the training log of TPU worker(s) (default worker 0, the primary process; --worker all for every worker).
#
# Usage: tpu_pod_logs.sh --zone Z [--tpu-name N] [--project P] [--worker 0|all|0,2] [--lines 100] [--no-follow]
#          [--dry-run]

set -euo pipefail
JDR_WORKER="${JDR_WORKER:-0}"
# shellcheck source=tpu_scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_flags "$@"
require JDR_ZONE JDR_TPU_NAME

follow=""
if ((JDR_FOLLOW)); then
  follow="-F"
fi
tpu_ssh "tail -n $(quote "$JDR_LINES") $follow ~/$JDR_REMOTE_LOG"
