#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice) for jdr training.
#
# Usage: tpu_pod_create.sh --zone us-central2-b [--project P] [--tpu-name jdr-tpu]
#          [--accelerator-type v4-32] [--runtime-version tpu-ubuntu2204-base] [--spot] [--dry-run]
# Flags and their JDR_* environment variables are listed in _common.sh.

set -euo pipefail
# shellcheck source=tpu_scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_flags "$@"
require JDR_ZONE JDR_TPU_NAME JDR_ACCELERATOR_TYPE JDR_RUNTIME_VERSION

gcloud_location
extra=()
if ((JDR_SPOT)); then
  extra+=(--spot)
fi
run gcloud compute tpus tpu-vm create "$JDR_TPU_NAME" "${GCLOUD_LOCATION[@]}" \
  --accelerator-type="$JDR_ACCELERATOR_TYPE" --version="$JDR_RUNTIME_VERSION" "${extra[@]}"
