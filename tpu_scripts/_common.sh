# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings below are read by the scripts that source this file
# Shared helpers for the launch scripts in this directory; sourced, never run.
#
# Every setting is a flag or an environment variable (flag wins):
#   --project / JDR_PROJECT            GCP project (default: gcloud's configured project)
#   --zone / JDR_ZONE                  GCP zone, e.g. us-central2-b
#   --accelerator-type / JDR_ACCELERATOR_TYPE   e.g. v4-32 (default v4-8)
#   --runtime-version / JDR_RUNTIME_VERSION     TPU VM image (default tpu-ubuntu2204-base)
#   --tpu-name / JDR_TPU_NAME          TPU VM name (default jdr-tpu)
#   --workdir / JDR_WORKDIR            training workdir, gs://bucket/path on TPU
#   --config / JDR_CONFIG              config file (default configs/default.py)
#   --worker / JDR_WORKER              which TPU worker(s) ssh targets (default all)
#   --repo-url / JDR_REPO_URL          git URL the TPU workers clone (default: ship the local git HEAD)
#   --repo-ref / JDR_REPO_REF          branch or tag of --repo-url (default main)
#   --jax-version / JDR_JAX_VERSION    jax[tpu] version installed on TPU workers (default 0.10.2)
#   --spot                             create a Spot TPU VM
#   --dry-run / JDR_DRY_RUN=1          print each command (shell-quoted, one a line, on stdout), run nothing
# Anything after `--` is passed on to `jdr train` (e.g. --config.train.lr=2e-5).

JDR_PROJECT="${JDR_PROJECT:-}"
JDR_ZONE="${JDR_ZONE:-}"
JDR_ACCELERATOR_TYPE="${JDR_ACCELERATOR_TYPE:-v4-8}"
JDR_RUNTIME_VERSION="${JDR_RUNTIME_VERSION:-tpu-ubuntu2204-base}"
JDR_TPU_NAME="${JDR_TPU_NAME:-jdr-tpu}"
JDR_WORKDIR="${JDR_WORKDIR:-}"
JDR_CONFIG="${JDR_CONFIG:-configs/default.py}"
JDR_WORKER="${JDR_WORKER:-all}"
JDR_REPO_URL="${JDR_REPO_URL:-}"
JDR_REPO_REF="${JDR_REPO_REF:-main}"
JDR_JAX_VERSION="${JDR_JAX_VERSION:-0.10.2}"
JDR_DRY_RUN="${JDR_DRY_RUN:-0}"
JDR_SPOT=0
JDR_LINES=100
JDR_FOLLOW=1
JDR_EXTRA_ARGS=()

# `jdr train` exits with this after saving a preemption checkpoint: "run me again" (jdr.train.preemption).
JDR_EXIT_RESTART=75
# The wrapper that reruns jdr on that exit code (on TPU workers: tpu_scripts/run_restarting.sh inside ~/jdr).
JDR_RUN_RESTARTING="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/run_restarting.sh"

# Paths on the TPU workers (home directory of the ssh user).
JDR_REMOTE_REPO="jdr"
JDR_REMOTE_VENV="jdr-venv"
JDR_REMOTE_LOG="jdr-train.log"

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

info() {
  echo "$(basename "$0"): $*" >&2
}

# Parse the shared flags; scripts call `parse_flags "$@"` then `require` what they use.
parse_flags() {
  while (($#)); do
    case "$1" in
      --project) JDR_PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --zone) JDR_ZONE="${2:?--zone needs a value}"; shift 2 ;;
      --accelerator-type) JDR_ACCELERATOR_TYPE="${2:?--accelerator-type needs a value}"; shift 2 ;;
      --runtime-version) JDR_RUNTIME_VERSION="${2:?--runtime-version needs a value}"; shift 2 ;;
      --tpu-name) JDR_TPU_NAME="${2:?--tpu-name needs a value}"; shift 2 ;;
      --workdir) JDR_WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
      --config) JDR_CONFIG="${2:?--config needs a value}"; shift 2 ;;
      --worker) JDR_WORKER="${2:?--worker needs a value}"; shift 2 ;;
      --repo-url) JDR_REPO_URL="${2:?--repo-url needs a value}"; shift 2 ;;
      --repo-ref) JDR_REPO_REF="${2:?--repo-ref needs a value}"; shift 2 ;;
      --jax-version) JDR_JAX_VERSION="${2:?--jax-version needs a value}"; shift 2 ;;
      --lines) JDR_LINES="${2:?--lines needs a value}"; shift 2 ;;
      --no-follow) JDR_FOLLOW=0; shift ;;
      --spot) JDR_SPOT=1; shift ;;
      --dry-run) JDR_DRY_RUN=1; shift ;;
      -h | --help) usage; exit 0 ;;
      --) shift; JDR_EXTRA_ARGS=("$@"); break ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
}

# Print the header comment of the calling script (up to its first command or #SBATCH line) as its help text.
usage() {
  awk 'NR > 1 && (!/^#/ || /^#SBATCH/) { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

# require NAME...: fail with the flag to set when a setting is empty.
require() {
  local var flag
  for var in "$@"; do
    if [[ -z "${!var}" ]]; then
      flag="--$(echo "${var#JDR_}" | tr '[:upper:]_' '[:lower:]-')"
      die "$flag (or \$$var) is required"
    fi
  done
}

# Shell-quote arguments into one string (for the remote --command and for dry-run output).
quote() {
  local out
  printf -v out '%q ' "$@"
  echo "${out% }"
}

# run CMD ARGS...: execute, or with --dry-run print the quoted command line on stdout.
run() {
  if [[ "$JDR_DRY_RUN" == 1 ]]; then
    quote "$@"
  else
    "$@"
  fi
}

# --zone/--project arguments for gcloud (project falls back to gcloud's default configuration).
gcloud_location() {
  GCLOUD_LOCATION=(--zone="$JDR_ZONE")
  if [[ -n "$JDR_PROJECT" ]]; then
    GCLOUD_LOCATION+=(--project="$JDR_PROJECT")
  fi
}

# tpu_ssh REMOTE_COMMAND: run a shell command on the selected TPU worker(s).
tpu_ssh() {
  gcloud_location
  run gcloud compute tpus tpu-vm ssh "$JDR_TPU_NAME" "${GCLOUD_LOCATION[@]}" \
    --worker="$JDR_WORKER" --command="$1"
}

# tpu_scp SRC DEST: copy a local file to every TPU worker.
tpu_scp() {
  gcloud_location
  run gcloud compute tpus tpu-vm scp "$1" "$JDR_TPU_NAME:$2" "${GCLOUD_LOCATION[@]}" --worker="$JDR_WORKER"
}

# The `jdr train` arguments (config, workdir, pass-through overrides) as the array TRAIN_ARGV.
set_train_argv() {
  TRAIN_ARGV=(train --config "$JDR_CONFIG" --workdir "$JDR_WORKDIR" "${JDR_EXTRA_ARGS[@]}")
}
