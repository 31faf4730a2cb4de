#!/usr/bin/env bash
# The replay grid (6 ratios x 3 seeds) on SmolLM2-135M: experiment=forgetting_smollm2.
#   experiments/forgetting_replay/smollm2_grid.sh            # GPU when nvidia-smi sees one, else CPU
#   experiments/forgetting_replay/smollm2_grid.sh --cpu      # force the CPU budget
# GPU (bf16-mixed): 320 steps x 32 x 256 = 2.6M tokens per job, 18 jobs; estimated ~10 minutes
# on one H100/H200-class GPU (NOT measured: no GPU was lent when this was written).
# CPU (fp32, one thread per job, the shared 2-core machine): 16 steps x 4 x 64 = 4,096 tokens per
# job, ChoiceEval on 64 items per set; about 2-3 minutes a job, so about 45 minutes for the
# 18 jobs. At that budget r = 0.01 is one block (not the study's bar); see README.md.
# Extra arguments are passed to tunelab.train (e.g. seed=1 data.replay_ratio=0,0.25).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
STAMP=$(date -u +%Y%m%d-%H%M%S)
if [[ "${1:-}" != "--cpu" ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  OUT=logs/forgetting_smollm2/gpu-$STAMP
  "$PY" -m tunelab.train -m experiment=forgetting_smollm2 hparams_search=forgetting_tiny_replay \
    task_name=forgetting_smollm2 hydra.sweep.dir="$OUT" "$@"
else
  [[ "${1:-}" == "--cpu" ]] && shift
  OUT=logs/forgetting_smollm2/cpu-$STAMP
  OMP_NUM_THREADS=1 "$PY" -m tunelab.train -m experiment=forgetting_smollm2 \
    hparams_search=forgetting_tiny_replay task_name=forgetting_smollm2 trainer=cpu \
    data.block_len=64 data.batch_size=4 data.train_batches=16 data.val_blocks=16 \
    trainer.val_check_interval=null callbacks.choice_eval.limit=64 \
    callbacks.choice_eval.batch_size=8 hydra.sweep.dir="$OUT" "$@"
fi
"$PY" experiments/forgetting_replay/report.py "$OUT" --old-set prose_cloze \
  --new-set python_semantics --out "$OUT/report"
