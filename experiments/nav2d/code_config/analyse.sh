#!/usr/bin/env bash
# Per-goal spread and the inside of the overshooting steps, for the code_config runs and
# the estimator A/B's DiCE runs (inner lr 0.1), on three goal sets: our 100 held-out
# goals, the MAML code's 40 test goals, and the one goal its stored test script keeps
# (40 times, each with its own episode keys). Run after run.sh and
# experiments/nav2d/estimator_ab/run.sh.
# Usage (from the repository root): bash experiments/nav2d/code_config/analyse.sh
set -euo pipefail
out=experiments/nav2d/code_config
code="runs/nav2d/code-config-maml-s0 runs/nav2d/code-config-maml-s1 runs/nav2d/code-config-maml-s2 runs/nav2d/code-config-dice-s0"
ours="runs/nav2d/ab-dice-s0 runs/nav2d/ab-dice-s1 runs/nav2d/ab-dice-s2"
for scale in 0.5 0.25; do
  for goals in held-out code code-6; do
    n=100; [ $goals = code-6 ] && n=40
    python $out/per_goal.py $code $ours --later-lr-scale $scale --goals $goals --num-tasks $n \
      > $out/per_goal_${goals}_x${scale}.log
  done
done
python $out/overshoot.py $code $ours --later-lr-scale 0.5 > $out/overshoot_x0.5.log
