#!/usr/bin/env bash
# MetaMaze with a 20-step horizon, where one policy cannot sweep the maze (at 100 steps a
# policy pretrained on all tasks tours it and reaches 86-89% of goals without adapting:
# README, "A pretrained baseline"). The same recipe as trpo.sh (TRPO outer step, inner
# step 0.5, the best training return after adaptation kept), MAML on five seeds beside a
# policy pretrained on all tasks with TRPO (best training return kept), all evaluated on
# the same 100 held-out goals with the same adaptation, beside the random initialisation.
# Usage, from the repository root: bash experiments/metamaze/horizon20.sh
# (Run first with three seeds, whose evaluation is eval.log / metamaze_eval.{json,md};
# seeds 3 and 4 were trained later with the same command, and the evaluation and the
# goal-by-goal differences of all five are eval_5seeds.log, metamaze_eval_5seeds.json,
# paired.md. The evaluation is deterministic: the first three seeds' rows are the same.)
set -euo pipefail
out=experiments/metamaze/horizon20
mkdir -p $out
SEEDS=${SEEDS:-"0 1 2 3 4"}
STEPS=${STEPS:-100}
for s in $SEEDS; do
  w=runs/metamaze/h20-maml-trpo-lr05-s$s
  start=$(date +%s)
  metajax train metamaze --workdir "$w" --seed "$s" --horizon 20 --inner-lr 0.5 \
    --outer-optimizer trpo --steps "$STEPS" --checkpoint-every 5 --keep-best return_post \
    --no-progress > "$out/train_maml_s$s.log" 2>&1
  echo "seed $s: $STEPS meta-iterations in $(( $(date +%s) - start )) s" >> "$out/train_maml_s$s.log"
  cp "$w/metrics.jsonl" "$out/metrics_maml_s$s.jsonl"
  cp "$w/best/best.json" "$out/best_maml_s$s.json"
done
w=runs/metamaze/h20-pretrain-trpo-lr05
start=$(date +%s)
metajax train metamaze --algorithm pretrain --workdir $w --seed 0 --horizon 20 --inner-lr 0.5 \
  --outer-optimizer trpo --steps 125 --checkpoint-every 5 --keep-best return_pre \
  --no-progress > $out/train_pretrain.log 2>&1
echo "pretrain: 125 iterations in $(( $(date +%s) - start )) s" >> $out/train_pretrain.log
cp $w/metrics.jsonl $out/metrics_pretrain.jsonl
cp $w/best/best.json $out/best_pretrain.json
dirs=""
for s in $SEEDS; do dirs="$dirs runs/metamaze/h20-maml-trpo-lr05-s$s/best"; done
metajax eval metamaze --workdirs $dirs $w/best $w runs/metamaze/h20-maml-trpo-lr05-s0 \
  --later-lr-scale 0.5 --out runs/metamaze/h20-eval-5seeds > $out/eval_5seeds.log 2>&1
cp runs/metamaze/h20-eval-5seeds/metamaze_eval.json $out/metamaze_eval_5seeds.json
cp runs/metamaze/h20-eval-5seeds/metamaze_returns.png $out/metamaze_returns_5seeds.png
python experiments/metamaze/paired.py $out/metamaze_eval_5seeds.json \
  --a $(for r in $dirs; do echo $r@1; done) mean@1 \
  --b $w/best@0 $w@0 "random init@1" --mean $dirs > $out/paired.md
