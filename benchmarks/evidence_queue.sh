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
# 5. SPANN: the memory-size sweep to 1 M (SciFact MiniLM vectors, cached) and the 1 M-vector simulation
if [ ! -f "$CACHE/minilm_f32/queries/ids.txt" ]; then
  "$PY" -m jdr.cli encode --model minilm --input ../shared/data/scifact/queries.jsonl --output "$CACHE/minilm_f32/queries" --tower query
fi
[ -f "$RESULTS/memory_size_1m.json" ] || "$PY" benchmarks/memory_size.py --corpus-emb "$CACHE/minilm_f32/corpus" \
  --query-emb "$CACHE/minilm_f32/queries" --sizes 0,100000,1000000 --out "$RESULTS/memory_size_1m" --load-note "queue, shared machine"
[ -f "$RESULTS/spann_sim_1m.json" ] || "$PY" benchmarks/spann_sim.py --out "$RESULTS/spann_sim_1m" --load-note "queue, shared machine"
# 6. mixture-of-memories negatives (configs/memory_exp/)
"$PY" benchmarks/memory_negatives.py --root runs/memory_experiment --out "$RESULTS/memory_negatives"
# 2 + 3. the ANCE experiment with room to learn: 4 epochs, the ANN refresh every epoch, the corrected BM25 (lucene
# preset) for the BM25 negatives and the sparse reference; the denoised and LTRe rows beside them. The table is
# rewritten as each row lands.
"$PY" benchmarks/ance_experiment.py --epochs 4 --set negatives.bm25_preset=lucene --root runs/ance_4ep \
  --out "$RESULTS/ance_experiment_4ep"
# issue 24: the cross-encoder experiment (reranker, distillation rows, cross-encoder-denoised ANCE); the dense run it
# reranks is the best dense row (by dev) of the 4-epoch ANCE experiment above
BEST=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['best_dense'])" "$RESULTS/ance_experiment_4ep.json")
"$PY" benchmarks/cross_encoder_experiment.py --root runs/ce_experiment --dense-run "runs/ance_4ep/$BEST/seed0/test_run.trec" \
  --out "$RESULTS/cross_encoder_experiment"
