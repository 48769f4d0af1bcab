#!/usr/bin/env bash
# Install jdr on every worker of a TPU VM: a venv with jax[tpu], gcsfs and the repo (pip install -e).
#
# Usage: tpu_pod_setup.sh --zone Z [--project P] [--tpu-name N] [--repo-url URL [--repo-ref main]]
#          [--jax-version 0.10.2] [--dry-run]
# Without --repo-url the local git HEAD is shipped (git archive + scp), so commit what the workers should run.
# Run once after tpu_pod_create.sh; re-run after changing the code.

set -euo pipefail
# shellcheck source=tpu_scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
parse_flags "$@"
require JDR_ZONE JDR_TPU_NAME JDR_JAX_VERSION

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "$JDR_REPO_URL" ]]; then
  fetch="rm -rf $JDR_REMOTE_REPO && git clone --depth 1 --branch $(quote "$JDR_REPO_REF") \
$(quote "$JDR_REPO_URL") $JDR_REMOTE_REPO"
else
  archive="${TMPDIR:-/tmp}/jdr-src.$$.tar.gz"
  trap 'rm -f "$archive"' EXIT
  run git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
  tpu_scp "$archive" "jdr-src.tar.gz"
  fetch="rm -rf $JDR_REMOTE_REPO && mkdir $JDR_REMOTE_REPO && tar -xzf jdr-src.tar.gz -C $JDR_REMOTE_REPO"
fi

# python3-venv is missing from the base TPU image; libtpu comes with the jax[tpu] extra; gcsfs lets jdr (etils.epath)
# write the gs:// workdir (orbax's checkpoint arrays go through tensorstore's own GCS driver).
tpu_ssh "set -euo pipefail; cd ~; $fetch; \
(python3 -m venv $JDR_REMOTE_VENV || (sudo apt-get update -q && sudo apt-get install -y -q python3-venv \
&& python3 -m venv $JDR_REMOTE_VENV)); \
$JDR_REMOTE_VENV/bin/pip install -q -U pip; \
$JDR_REMOTE_VENV/bin/pip install -q $(quote "jax[tpu]==$JDR_JAX_VERSION") gcsfs; \
$JDR_REMOTE_VENV/bin/pip install -q -e $JDR_REMOTE_REPO; \
$JDR_REMOTE_VENV/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
