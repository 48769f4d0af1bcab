#!/usr/bin/env bash
# Run a `jdr train` command, and run it again each time it exits with 75: on a preemption notice (SIGTERM) jdr
# saves a checkpoint of the step every process reached and exits 75 ("restart me"); the rerun resumes from it.
#
# Usage: run_restarting.sh COMMAND [ARGS...]        (JDR_MAX_RESTARTS, default 100, bounds the reruns)
# Exits with the command's last exit code. When this script itself gets SIGTERM (the machine or the whole job is
# going down) it passes the signal on, lets the command save, and exits 75 without rerunning, so an outer
# scheduler (SLURM requeue, a VM's restart policy) can start the run again.

set -euo pipefail
readonly EXIT_RESTART=75
max_restarts="${JDR_MAX_RESTARTS:-100}"
if (($# == 0)) || [[ "$1" == -h || "$1" == --help ]]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  (($# > 0)) || exit 2
  exit 0
fi

terminating=0
interrupted=0
child=""
on_term() {
  terminating=1
  interrupted=1
  if [[ -n "$child" ]]; then
    kill -TERM "$child" 2> /dev/null || true
  fi
}
trap on_term TERM

restarts=0
while true; do
  "$@" &
  child=$!
  rc=0
  wait "$child" || rc=$?
  # A trapped signal makes `wait` return 128+n at once; the child's own exit status is collected by waiting again
  # (bash keeps it until it is waited for, even if the child has already exited).
  while ((interrupted)); do
    interrupted=0
    rc=0
    wait "$child" || rc=$?
  done
  child=""
  if ((rc != EXIT_RESTART || terminating)); then
    exit "$rc"
  fi
  restarts=$((restarts + 1))
  if ((restarts > max_restarts)); then
    echo "$(basename "$0"): exit $rc again after $max_restarts restarts; giving up" >&2
    exit "$rc"
  fi
  echo "$(basename "$0"): preempted (exit $rc, checkpoint saved); restart $restarts" >&2
done
