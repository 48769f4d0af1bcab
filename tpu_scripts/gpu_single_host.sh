#!/usr/bin/env bash
# Train on one machine with all its GPUs (one process; jdr pmaps over every local device).
#
# Usage: gpu_single_host.sh --workdir runs/x [--config configs/default.py] [--dry-run] [-- --config.train.lr=2e-5]
# Restrict GPUs with CUDA_VISIBLE_DEVICES. XLA_PYTHON_CLIENT_MEM_FRACTION (default here .90) sets jax's share of
# GPU memory; the refresh hook's faiss search runs on the CPU. jdr runs under run_restarting.sh: a SIGTERM to jdr
# alone (maintenance, `kill`) saves a checkpoint and reruns it to resume; a SIGTERM to this script too (the
# machine is going down) saves and exits 75 for the machine's restart policy to start the script again.

set -euo pipefail
# shellcheck source=tpu_scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_flags "$@"
require JDR_WORKDIR JDR_CONFIG

set_train_argv
run env JDR_DISTRIBUTED=off XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}" \
  "$JDR_RUN_RESTARTING" jdr "${TRAIN_ARGV[@]}"
