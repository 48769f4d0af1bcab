#!/usr/bin/env bash
# Start `jdr train` on every worker of a TPU VM, detached (nohup), logging to ~/jdr-train.log on each worker.
#
# Usage: tpu_pod_train.sh --zone Z --workdir gs://bucket/run [--config configs/default.py] [--tpu-name N]
#          [--project P] [--dry-run] [-- --config.train.lr=2e-5 ...]
# JDR_DISTRIBUTED=auto makes jdr.distributed.initialize let jax find the pod's other workers. The workdir must be
# a gs:// path every worker can reach: checkpoints and exports are written there (by process 0 where shared).
# Each worker runs jdr under tpu_scripts/run_restarting.sh: on a preemption notice (SIGTERM) every worker saves
# the same step and exits 75, and is started again to resume (a deleted spot VM needs create/setup/train again).

set -euo pipefail
# shellcheck source=tpu_scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_flags "$@"
require JDR_ZONE JDR_TPU_NAME JDR_WORKDIR JDR_CONFIG
if [[ "$JDR_WORKDIR" != gs://* ]]; then
  info "warning: --workdir $JDR_WORKDIR is not a gs:// path; each worker will write its own local copy"
fi

set_train_argv
tpu_ssh "cd ~/$JDR_REMOTE_REPO && JDR_DISTRIBUTED=auto nohup tpu_scripts/run_restarting.sh ~/$JDR_REMOTE_VENV/bin/jdr \
$(quote "${TRAIN_ARGV[@]}") \
> ~/$JDR_REMOTE_LOG 2>&1 < /dev/null & echo \"started jdr train on \$(hostname), log ~/$JDR_REMOTE_LOG\""
