#!/usr/bin/env bash
# Seeds 1-4 beside the committed seed-0 runs: the 5-armed Bernoulli bandit (Adam 1e-2),
# gymnax's Gaussian bandit with Adam 1e-2 (seed 0 collapsed) and 1e-3, and gymnax's
# Bernoulli bandit; each evaluated on the same 1000 held-out bandits (seed 12345).
# Usage: bash experiments/bandit/seeds/run.sh  (from the repository root)
set -euo pipefail
out=experiments/bandit/seeds
for seed in 1 2 3 4; do
  for spec in "bernoulli:0.01" "gymnax-bernoulli:0.01" "gymnax-gaussian:0.01" "gymnax-gaussian:0.001"; do
    env=${spec%%:*}; lr=${spec##*:}
    name=${env}-lr${lr}-s${seed}
    wd=runs/bandit/seeds/$name
    metajax train bandit --env $env --outer-lr $lr --seed $seed --workdir $wd --no-progress
    metajax eval bandit --workdir $wd > $out/eval_${name}.log 2>&1
    cp $wd/metrics.jsonl $out/metrics_${name}.jsonl
    cp $wd/bandit_eval.json $out/eval_${name}.json
  done
done
