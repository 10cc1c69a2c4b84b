#!/usr/bin/env bash
# MAML-RL on MetaMaze with TRPO as the outer step, inner step 0.5, keeping the
# checkpoint with the best training return after adaptation (the MAML paper's rule),
# then evaluating the kept and the last state on 100 held-out goals, beside the random
# initialisation with the same adaptation. Usage, from the repository root:
#   SEEDS="1 2" STEPS=60 bash experiments/metamaze/trpo.sh
# (seed 0 was run with STEPS=400 and stopped by SIGTERM at iteration 125 (checkpoint
# saved) for the session's time; its commands are in experiments/metamaze/README.md.)
set -euo pipefail
SEEDS=${SEEDS:-"1 2"}
STEPS=${STEPS:-60}
for s in $SEEDS; do
  w=runs/metamaze/maml-trpo-lr05-s$s
  nice -n 10 metajax train metamaze --workdir "$w" --seed "$s" --inner-lr 0.5 --outer-optimizer trpo \
    --steps "$STEPS" --checkpoint-every 5 --keep-best return_post --no-progress \
    > "experiments/metamaze/train_trpo_lr05_s$s.log" 2>&1
  metajax eval metamaze --workdirs "$w/best" "$w" --no-random-init --later-lr-scale 0.5 \
    --out "runs/metamaze/eval_trpo_lr05_s$s" > "experiments/metamaze/eval_trpo_lr05_s$s.log"
  cp "$w/metrics.jsonl" "experiments/metamaze/metrics_maml_trpo_lr05_s$s.jsonl"
  cp "$w/best/best.json" "experiments/metamaze/best_trpo_lr05_s$s.json"
done
