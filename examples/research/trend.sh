#!/usr/bin/env bash
# Data-size trend point: pretrain on N tokens of the Python docs' reST sources, then the QD protocol of
# docs/latent.md (8 held-out prefixes of 12 tokens, 6 samples of 16 tokens, greedy and sampled WM tokens).
# Usage: bash examples/research/trend.sh N [RUNS_DIR]   (re-running resumes; nice 19, 100 min timeout per step)
#        PRESET=cola bash examples/research/trend.sh N     (CoLA's head architecture: --preset cola; out trend-cola-N)
set -u
N=${1:?corpus tokens}; RUNS=${2:-/work/runs/research}
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
REINLM=${REINLM:-/work/main/.venv/bin/reinlm}
CORPUS=${CORPUS:-/work/data/pydocs.jsonl}   # built by examples/research/make_pydocs.py
PRESET=${PRESET:-cpu}
OUT=$RUNS/trend-$N; [ "$PRESET" = cpu ] || OUT=$RUNS/trend-$PRESET-$N; mkdir -p "$OUT"
nice -n 19 timeout ${TIMEOUT:-6000} $REINLM latent pretrain --backbone smollm2-135m --corpus "$CORPUS" \
  --corpus-tokens "$N" --preset "$PRESET" --hidden-cache on --out "$OUT" --save-every 100 --progress false --threads 2 --seed 0 \
  || { echo "pretrain stopped (rc $?); re-run to resume"; exit 1; }
for wm in greedy sample; do
  nice -n 19 timeout 3000 $REINLM latent qd --latent "$OUT" --num-prefixes 8 --samples 6 --new-tokens 16 \
    --prefix-tokens 12 --wm-tokens $wm --json > "$OUT/qd-$wm.json"
done
