#!/usr/bin/env bash
# Delete a TPU VM (stops billing). The gs:// workdir is kept.
#
# Usage: tpu_pod_delete.sh --zone Z [--tpu-name N] [--project P] [--dry-run]

set -euo pipefail
# shellcheck source=tpu_scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_flags "$@"
require JDR_ZONE JDR_TPU_NAME

gcloud_location
run gcloud compute tpus tpu-vm delete "$JDR_TPU_NAME" "${GCLOUD_LOCATION[@]}" --quiet
