#!/usr/bin/env bash
# The estimator A/B's DiCE runs (runs/nav2d/ab-dice-s{0,1,2}, made by
# experiments/nav2d/estimator_ab/run.sh) measured with the MAML code's test protocol.
# Usage (from the repository root): bash experiments/nav2d/rllab_protocol/run.sh
set -euo pipefail
out=experiments/nav2d/rllab_protocol
for seed in ${SEEDS-0 1 2}; do
  for scale in 0.25 0.5; do
    for baseline in current previous; do
      python $out/eval_rllab_protocol.py runs/nav2d/ab-dice-s${seed} --later-lr-scale $scale \
        --baseline $baseline > $out/dice_s${seed}_x${scale}_${baseline}.log
    done
  done
done

# The same protocol through the library: metajax eval nav2d with rllab's sampler
# (--sampler steps: 40 lockstep environments, 40 x 100 = 4000 steps per batch), the mean
# over each batch's episodes reported. Beside the three DiCE policies: a policy pretrained
# on all tasks with the same TRPO step and iteration count, and a random initialisation.
# Usage: LIBRARY=1 bash experiments/nav2d/rllab_protocol/run.sh
if [ -n "${LIBRARY:-}" ]; then
  [ -d runs/nav2d/pretrain-trpo-200 ] || metajax train nav2d --algorithm pretrain \
    --workdir runs/nav2d/pretrain-trpo-200 --outer-optimizer trpo --steps 200 \
    --checkpoint-every 10 --no-progress
  cp runs/nav2d/pretrain-trpo-200/metrics.jsonl $out/metrics_pretrain_trpo_200.jsonl
  for scale in 0.25 0.5; do
    metajax eval nav2d --workdirs runs/nav2d/ab-dice-s0 runs/nav2d/ab-dice-s1 runs/nav2d/ab-dice-s2 \
      runs/nav2d/pretrain-trpo-200 --sampler steps --envs-per-task 40 --num-trajectories 40 \
      --later-lr-scale $scale --out runs/nav2d/protocol-eval-x${scale} > $out/library_x${scale}.log 2>&1
    cp runs/nav2d/protocol-eval-x${scale}/nav2d_eval.json $out/library_x${scale}.json
  done
  cp runs/nav2d/protocol-eval-x0.25/nav2d_returns.png $out/returns_x0.25.png
  cp runs/nav2d/protocol-eval-x0.25/nav2d_trajectories.png $out/trajectories_x0.25.png
fi
