#!/usr/bin/env bash
# The sparse-reward PointRobot runs again with TRPO as the outer step (KL 0.01, the
# nav2d runs' setting) instead of Adam: MAML (DiCE) and pretraining, 200 meta-iterations
# each, evaluated like run.sh on 100 held-out goals (seed 12345), later steps halved.
# Usage: bash experiments/pointrobot/sparse/trpo.sh  (from the repository root)
set -euo pipefail
out=experiments/pointrobot/sparse
for a in maml pretrain; do
  start=$(date +%s)
  metajax train pointrobot --env pointrobot-sparse --algorithm $a --outer-optimizer trpo \
    --workdir runs/pointrobot/sparse-$a-trpo --steps 200 --checkpoint-every 10 --no-progress
  echo "$a: 200 TRPO meta-iterations in $(( $(date +%s) - start )) s" >> $out/train_trpo.log
  cp runs/pointrobot/sparse-$a-trpo/metrics.jsonl $out/metrics_${a}_trpo.jsonl
  cp runs/pointrobot/sparse-$a-trpo/config.json $out/config_${a}_trpo.json
done
metajax eval pointrobot --workdirs runs/pointrobot/sparse-maml-trpo runs/pointrobot/sparse-pretrain-trpo \
  --later-lr-scale 0.5 --out runs/pointrobot/sparse-eval-trpo > $out/eval_half_trpo.log 2>&1
for f in runs/pointrobot/sparse-eval-trpo/*; do
  b=$(basename $f); cp $f $out/${b%.*}_trpo.${b##*.}
done
