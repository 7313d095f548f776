#!/usr/bin/env bash
# Search vs best-of-N (issue 24): a Q-model on the 60% training split of builtin:reviews, then
# examples/research/search_vs_bon.py on the 41 held-out prompts x seeds 0 1 2, with and without it (two processes).
# Usage: bash examples/research/search.sh LATENT_DIR [RUNS_DIR]
set -u
LATENT=${1:?latent model dir}; RUNS=${2:-/work/runs/research/search}; mkdir -p "$RUNS"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
REINLM=${REINLM:-/work/main/.venv/bin/reinlm}; PY=${PY:-/work/main/.venv/bin/python}
HERE=$(dirname "$0")
[ -f "$RUNS/q/q_result.json" ] || nice -n 19 timeout 2400 $REINLM latent train-q --latent "$LATENT" --reward sentiment \
  --prompts builtin:reviews --prompts-held-out-fraction 0.4 --num-prompts 61 --samples-per-prompt 4 \
  --max-new-tokens 16 --epochs 10 --seed 0 --progress false --out "$RUNS/q" > "$RUNS/q.log" 2>&1
# two processes: searches without and with the Q-model (budget 192 world-model forwards, texts of at most 16 tokens)
for which in without with; do
  nice -n 19 timeout ${TIMEOUT:-5400} $PY "$HERE/search_vs_bon.py" --latent "$LATENT" --q "$RUNS/q" --which $which \
    --budget ${BUDGET:-192} --max-depth 16 --out "$RUNS/rows-$which.jsonl" --seeds ${SEEDS:-0 1 2} >> "$RUNS/search-$which.log" 2>&1 &
done
wait
$PY "$HERE/search_vs_bon.py" --analyze "$RUNS/rows-without.jsonl" "$RUNS/rows-with.jsonl" | tee "$RUNS/analysis.md"
