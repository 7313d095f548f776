#!/usr/bin/env bash
# Why does the latent policy collapse in `reinlm bench reward-hacking`? The stress test's latent recipe
# (reinforce, embedding_similarity:target=Hi there!, builtin:neutral, steps of 2 x 4, 20 tokens, eval 4 x 4 here
# (the stress test: 15 steps, eval 6 x 4; STEPS=10 EVAL_PROMPTS=4 by default to fit a shared 2-core CPU),
# no KL, lr 3e-2) trained with `reinlm train` directly, once per hypothesis and seed, each step logging the
# action entropy (policy/entropy), distinct actions (latent/distinct_actions), exact KL to the BC policy
# (kl/mean), distinct-2 and the samples' perplexity under the backbone (--log-frozen-perplexity).
# Usage: bash examples/research/collapse.sh LATENT_DIR [RUNS_DIR] [CONFIGS] [SEEDS]
#   then: python examples/research/collapse_summary.py RUNS_DIR
set -u
LATENT=${1:?latent model dir}; RUNS=${2:-/work/runs/research/collapse}
CONFIGS=${3:-"base lr3e-3 kl0.01 ent0.01"}; SEEDS=${4:-"0 1 2"}
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
REINLM=${REINLM:-/work/main/.venv/bin/reinlm}
flags_of() {  # hypothesis -> the flags that differ from the stress test's latent side
  case $1 in
    base) echo "" ;;                                  # the stress test as it is: lr 3e-2, no KL, no entropy bonus
    lr*) echo "--lr ${1#lr}" ;;                       # H1: the 64-way head's learning rate
    klloss*) echo "--kl-coef ${1#klloss} --kl-in loss" ;;  # H2b: the same exact KL as a loss term (a reward
                                                      # penalty that is equal for every sample cancels in the baseline)
    kl*) echo "--kl-coef ${1#kl}" ;;                  # H2: the KL to the BC policy CoLA keeps (0.01, in the reward)
    ent*) echo "--entropy-coef ${1#ent}" ;;           # H3: an entropy bonus on the action distribution
    *) echo "unknown config $1" >&2; exit 2 ;;
  esac
}
for seed in $SEEDS; do for c in $CONFIGS; do
  out=$RUNS/$c-seed$seed
  [ -f "$out/train_eval.json" ] && { echo "done: $out"; continue; }
  echo "$(date -u +%T) run $c seed $seed (load $(cut -d' ' -f1-3 /proc/loadavg))"
  nice -n 19 timeout ${TIMEOUT:-1500} $REINLM train --space latent --latent "$LATENT" --algo reinforce \
    --reward "embedding_similarity:target=Hi there!" --prompts builtin:neutral --steps ${STEPS:-10} --batch-prompts 2 \
    --samples-per-prompt 4 --max-new-tokens 20 --lr 3e-2 --kl-coef 0 --eval-prompts ${EVAL_PROMPTS:-4} --eval-samples 4 \
    --sample-every 1 --log-frozen-perplexity --progress false --log none --overwrite --seed $seed \
    $(flags_of $c) --out "$out" > "$RUNS/$c-seed$seed.log" 2>&1 || echo "  failed (rc $?): see $RUNS/$c-seed$seed.log"
done; done
