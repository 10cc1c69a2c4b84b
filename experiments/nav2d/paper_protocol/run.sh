#!/usr/bin/env bash
# The MAML paper's training protocol for RL (appendix A.2): "trained for up to 500
# meta-iterations, and the model with the best average return during training was used
# for evaluation". A DiCE run of the estimator A/B (TRPO, 200 iterations) is copied and
# resumed to 500 with --keep-best return_post: every 10th iteration's state is a
# candidate (iterations 210-500), judged by its meta-batch's return after adaptation.
# The final and the kept state are both evaluated like the A/B runs: the MAML code's
# test protocol (../rllab_protocol) and 20-episode batches, later steps at 0.25 x.
# STEPS (default 500) sets where the resumed run stops. A seed without the A/B's run
# (seed 3 on) first trains its 200 iterations with the A/B's command
# (../estimator_ab/run.sh), without the A/B's evaluations.
# Usage (from the repository root): SEED=0 bash experiments/nav2d/paper_protocol/run.sh
set -euo pipefail
out=experiments/nav2d/paper_protocol
seed=${SEED:-0}
steps=${STEPS:-500}
wd=runs/nav2d/ab-dice-s${seed}-${steps}
start=$(date +%s)
if [ ! -d $wd ] && [ ! -d runs/nav2d/ab-dice-s${seed} ]; then
  metajax train nav2d --workdir runs/nav2d/ab-dice-s${seed} --outer-optimizer trpo \
    --meta-gradient dice --seed $seed --steps 200 --checkpoint-every 10 --no-progress \
    >> $out/train_s${seed}.log 2>&1
  echo "seed $seed: the A/B's 200 meta-iterations in $(( $(date +%s) - start )) s" >> $out/train_s${seed}.log
  start=$(date +%s)
fi
[ -d $wd ] || cp -r runs/nav2d/ab-dice-s${seed} $wd
metajax train nav2d --workdir $wd --outer-optimizer trpo --meta-gradient dice --seed $seed \
  --steps $steps --checkpoint-every 10 --keep-best return_post --no-progress >> $out/train_s${seed}.log 2>&1
echo "seed $seed: resumed to $steps meta-iterations in $(( $(date +%s) - start )) s" >> $out/train_s${seed}.log
cp $wd/metrics.jsonl $out/metrics_s${seed}.jsonl
cp $wd/best/best.json $out/best_s${seed}.json
for which in final best; do
  w=$wd; [ $which = best ] && w=$wd/best
  python experiments/nav2d/rllab_protocol/eval_rllab_protocol.py $w --later-lr-scale 0.25 \
    > $out/protocol_s${seed}_${which}.log 2>&1
  metajax eval nav2d --workdirs $w --no-random-init --later-lr-scale 0.25 \
    --out runs/nav2d/paper-protocol-eval-s${seed}-${which} > $out/eval_s${seed}_${which}.log 2>&1
  cp runs/nav2d/paper-protocol-eval-s${seed}-${which}/nav2d_eval.json $out/eval_s${seed}_${which}.json
done
cp runs/nav2d/paper-protocol-eval-s${seed}-final/nav2d_training.png $out/training_s${seed}.png
