#!/usr/bin/env bash
# The MAML code's meta-gradient estimator against loaded DiCE, TRPO outer step,
# 200 meta-iterations; each run evaluated on the 100 held-out goals (seed 12345)
# with the later steps' step size at 0.25 and 0.5 of the first.
# Usage (from the repository root): SEEDS="0" GRADS="maml dice" bash experiments/nav2d/estimator_ab/run.sh
set -euo pipefail
out=experiments/nav2d/estimator_ab
for seed in ${SEEDS:-0}; do
  for grad in ${GRADS:-maml dice}; do
    wd=runs/nav2d/ab-${grad}-s${seed}
    metajax train nav2d --workdir $wd --outer-optimizer trpo --meta-gradient $grad \
      --seed $seed --steps 200 --checkpoint-every 10 --no-progress
    cp $wd/metrics.jsonl $out/metrics_${grad}_s${seed}.jsonl
    for scale in 0.25 0.5; do
      metajax eval nav2d --workdirs $wd --no-random-init --later-lr-scale $scale \
        --out runs/nav2d/ab-eval-${grad}-s${seed}-x${scale} > $out/eval_${grad}_s${seed}_x${scale}.log 2>&1
      cp runs/nav2d/ab-eval-${grad}-s${seed}-x${scale}/nav2d_eval.json $out/eval_${grad}_s${seed}_x${scale}.json
      cp runs/nav2d/ab-eval-${grad}-s${seed}-x${scale}/nav2d_eval.md $out/eval_${grad}_s${seed}_x${scale}.md
      python experiments/nav2d/diagnose_noise.py $wd --later-lr-scale $scale > $out/noise_${grad}_s${seed}_x${scale}.log
    done
    cp runs/nav2d/ab-eval-${grad}-s${seed}-x0.25/nav2d_trajectories.png $out/trajectories_${grad}_s${seed}_x0.25.png
    cp runs/nav2d/ab-eval-${grad}-s${seed}-x0.25/nav2d_training.png $out/training_${grad}_s${seed}.png
  done
done
