#!/usr/bin/env bash
# The MAML code's 2D-navigation configuration end to end (maml_examples/maml_trpo_point.py
# and test_maml_point.py in github.com/cbfinn/maml_rl, read from a stored copy):
# meta-training with inner lr 0.5, its sampler (one environment per task, 2000 steps),
# TRPO (KL 0.01), 20 tasks, 100 iterations; tested with its protocol: 4000-step batches
# from 40 environments, AverageReturn, step size 0.5 then 0.25 (--later-lr-scale 0.5).
# GRADS picks the meta-gradient: maml (the code's estimator) and/or dice (ours).
# Usage (from the repository root): SEEDS="0" GRADS="maml dice" bash experiments/nav2d/code_config/run.sh
set -euo pipefail
out=experiments/nav2d/code_config
for seed in ${SEEDS:-0}; do
  for grad in ${GRADS:-maml}; do
    wd=runs/nav2d/code-config-${grad}-s${seed}
    start=$(date +%s)
    metajax train nav2d --workdir $wd --outer-optimizer trpo --meta-gradient $grad \
      --inner-lr 0.5 --sampler steps --envs-per-task 1 --seed $seed --steps 100 \
      --checkpoint-every 10 --no-progress
    echo "$grad seed $seed: 100 meta-iterations in $(( $(date +%s) - start )) s" >> $out/train.log
    cp $wd/metrics.jsonl $out/metrics_${grad}_s${seed}.jsonl
    for scale in 0.5 0.25; do
      metajax eval nav2d --workdirs $wd --no-random-init --sampler steps --envs-per-task 40 \
        --num-trajectories 40 --later-lr-scale $scale \
        --out runs/nav2d/code-config-eval-${grad}-s${seed}-x${scale} > $out/eval_${grad}_s${seed}_x${scale}.log 2>&1
    done
    cp runs/nav2d/code-config-eval-${grad}-s${seed}-x0.5/nav2d_trajectories.png $out/trajectories_${grad}_s${seed}_x0.5.png
  done
done
