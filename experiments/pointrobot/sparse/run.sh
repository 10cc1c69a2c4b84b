#!/usr/bin/env bash
# gymnax PointRobot with gymnax's default sparse reward (1 on reaching the goal radius,
# which ends the episode, so an episode's return is whether it reached the goal): MAML
# (500 meta-iterations) and pretraining (300), with the dense run's settings (Adam),
# evaluated on 100 held-out goals (seed 12345) with the later steps' step size halved.
# Usage: bash experiments/pointrobot/sparse/run.sh  (from the repository root)
set -euo pipefail
out=experiments/pointrobot/sparse
metajax train pointrobot --env pointrobot-sparse --workdir runs/pointrobot/sparse-maml \
  --steps 500 --checkpoint-every 10 --no-progress
metajax train pointrobot --env pointrobot-sparse --algorithm pretrain --workdir runs/pointrobot/sparse-pretrain \
  --steps 300 --checkpoint-every 10 --outer-lr 5e-3 --no-progress
for a in maml pretrain; do
  cp runs/pointrobot/sparse-$a/metrics.jsonl $out/metrics_$a.jsonl
  cp runs/pointrobot/sparse-$a/config.json $out/config_$a.json
done
metajax eval pointrobot --workdirs runs/pointrobot/sparse-maml runs/pointrobot/sparse-pretrain \
  --later-lr-scale 0.5 --out runs/pointrobot/sparse-eval-half > $out/eval_half.log 2>&1
for f in runs/pointrobot/sparse-eval-half/*; do cp $f $out/; done
