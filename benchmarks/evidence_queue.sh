#!/usr/bin/env bash
# The evidence queue (issue 23): the experiments the README still owes, one at a time (two would only share the
# cores), each script resuming its finished rows, so the queue can be killed and restarted at any point.
#   nohup bash benchmarks/evidence_queue.sh > queue.log 2>&1 &
# JDR_RESULTS: where the tables go (default benchmarks/results of this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=${JDR_RESULTS:-benchmarks/results}
CACHE=${JDR_EMB_CACHE:-.cache/emb}
# 1. zero-label SciFact table (released model, bf16 twin, whitening, 10 training rows)
"$PY" benchmarks/zero_label.py --cache "$CACHE" --out "$RESULTS/zero_label"
