#!/usr/bin/env bash
# Meta-training with the MAML code's sampler: per task, one environment that restarts
# when an episode ends, until the completed episodes hold 20 x 100 = 2000 steps
# (--sampler steps --envs-per-task 1). Otherwise as the DiCE runs of ../estimator_ab:
# TRPO outer step, loaded-DiCE meta-gradient. Trained to 100 meta-iterations (the
# MAML code's n_itr), evaluated, then resumed to 200 (ours) and evaluated again.
# Each evaluation: 20-episode batches (metajax eval nav2d --sampler episodes) and the
# MAML code's test protocol (../rllab_protocol), later steps at 0.25 x the step size.
# Usage (from the repository root): SEEDS="0" bash experiments/nav2d/step_budget/run.sh
set -euo pipefail
out=experiments/nav2d/step_budget
for seed in ${SEEDS:-0}; do
  wd=runs/nav2d/steps-dice-s${seed}
  for iters in 100 200; do
    start=$(date +%s)
    metajax train nav2d --workdir $wd --outer-optimizer trpo --meta-gradient dice \
      --sampler steps --envs-per-task 1 --seed $seed --steps $iters --checkpoint-every 10 \
      --no-progress >> $out/train_s${seed}.log 2>&1
    echo "seed $seed: trained to $iters meta-iterations, $(( $(date +%s) - start )) s" >> $out/train_s${seed}.log
    cp $wd/metrics.jsonl $out/metrics_s${seed}.jsonl
    metajax eval nav2d --workdirs $wd --no-random-init --sampler episodes --later-lr-scale 0.25 \
      --out runs/nav2d/steps-eval-s${seed}-i${iters} > $out/eval_s${seed}_i${iters}.log 2>&1
    cp runs/nav2d/steps-eval-s${seed}-i${iters}/nav2d_eval.json $out/eval_s${seed}_i${iters}.json
    python experiments/nav2d/rllab_protocol/eval_rllab_protocol.py $wd --later-lr-scale 0.25 \
      > $out/protocol_s${seed}_i${iters}.log 2>&1
  done
  cp runs/nav2d/steps-eval-s${seed}-i200/nav2d_trajectories.png $out/trajectories_s${seed}.png
  cp runs/nav2d/steps-eval-s${seed}-i200/nav2d_training.png $out/training_s${seed}.png
done
