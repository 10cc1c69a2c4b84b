#!/usr/bin/env bash
# The sparse-reward PointRobot runs again with TRPO as the outer step (KL 0.01, the
# nav2d runs' setting) instead of Adam: MAML (DiCE) and pretraining, 200 meta-iterations
# each, evaluated like run.sh on 100 held-out goals (seed 12345), later steps halved.
# SEEDS picks the training seeds (default 0); seed 0 writes the unsuffixed files, seed s
# writes files and workdirs with the suffix _s<s> / -s<s>.
# Usage: SEEDS="0 1 2" bash experiments/pointrobot/sparse/trpo.sh  (from the repository root)
set -euo pipefail
out=experiments/pointrobot/sparse
for seed in ${SEEDS:-0}; do
  if [ "$seed" = 0 ]; then wsuf=""; fsuf=""; else wsuf="-s$seed"; fsuf="_s$seed"; fi
  for a in maml pretrain; do
    wd=runs/pointrobot/sparse-$a-trpo$wsuf
    start=$(date +%s)
    metajax train pointrobot --env pointrobot-sparse --algorithm $a --outer-optimizer trpo \
      --seed $seed --workdir $wd --steps 200 --checkpoint-every 10 --no-progress
    echo "$a seed $seed: 200 TRPO meta-iterations in $(( $(date +%s) - start )) s" >> $out/train_trpo.log
    cp $wd/metrics.jsonl $out/metrics_${a}_trpo$fsuf.jsonl
    cp $wd/config.json $out/config_${a}_trpo$fsuf.json
  done
  metajax eval pointrobot --workdirs runs/pointrobot/sparse-maml-trpo$wsuf runs/pointrobot/sparse-pretrain-trpo$wsuf \
    --later-lr-scale 0.5 --out runs/pointrobot/sparse-eval-trpo$wsuf > $out/eval_half_trpo$fsuf.log 2>&1
  for f in runs/pointrobot/sparse-eval-trpo$wsuf/*; do
    b=$(basename $f); cp $f $out/${b%.*}_trpo$fsuf.${b##*.}
  done
done
