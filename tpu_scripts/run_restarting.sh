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

# `wait -p` (bash >= 5.1) names the child only when it returns the child's status: a wait cut short by the trapped
# SIGTERM is then told apart by the wait itself, not by a flag the signal may also set just after the status was
# collected (waiting again for a child already reaped returns 127 in POSIX mode: the run would end 127).
if wait -p _ 2> /dev/null; then wait_names_child=1; else wait_names_child=0; fi

# The child's exit status into rc, however the SIGTERM trap interleaves with the wait.
collect_status() {
  local waited again
  if ((wait_names_child)); then
    while true; do
      unset waited
      rc=0
      wait -p waited "$child" || rc=$?
      if [[ -n "${waited:-}" ]] || ((rc <= 128)); then
        return 0
      fi
    done
  fi
  # Older bash: wait again while the trap says it interrupted us; a second wait that finds no such child (127: the
  # signal landed after the status was collected) keeps the status already collected.
  interrupted=0
  rc=0
  wait "$child" || rc=$?
  while ((interrupted)); do
    interrupted=0
    again=0
    wait "$child" || again=$?
    ((again == 127)) || rc=$again
  done
}

restarts=0
while true; do
  "$@" &
  child=$!
  collect_status
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
