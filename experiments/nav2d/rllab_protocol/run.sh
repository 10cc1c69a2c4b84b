#!/usr/bin/env bash
# The estimator A/B's DiCE runs (runs/nav2d/ab-dice-s{0,1,2}, made by
# experiments/nav2d/estimator_ab/run.sh) measured with the MAML code's test protocol.
# Usage (from the repository root): bash experiments/nav2d/rllab_protocol/run.sh
set -euo pipefail
out=experiments/nav2d/rllab_protocol
for seed in ${SEEDS:-0 1 2}; do
  for scale in 0.25 0.5; do
    for baseline in current previous; do
      python $out/eval_rllab_protocol.py runs/nav2d/ab-dice-s${seed} --later-lr-scale $scale \
        --baseline $baseline > $out/dice_s${seed}_x${scale}_${baseline}.log
    done
  done
done
