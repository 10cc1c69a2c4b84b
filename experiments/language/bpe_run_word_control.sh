#!/usr/bin/env bash
# After bpe_run.sh: the word-vocabulary runs of the README's section (b) again (same
# commands), so the tokenizers can be compared on the same 600 episodes with paired CIs.
set -euo pipefail
M="nice -n 10 python -m metajax.cli"
mkdir -p runs/language/logs
$M train text-mlm --algorithm pretrain --steps 500 --eval-every 250 --checkpoint-every 250 \
  --workdir runs/language/text-mlm/pretrain --no-progress > runs/language/logs/text-mlm-pretrain.log 2>&1
$M train smlmt --algorithm protonet --init-from runs/language/text-mlm/pretrain --steps 200 \
  --eval-every 100 --checkpoint-every 100 --workdir runs/language/smlmt/protonet \
  --no-progress > runs/language/logs/smlmt-protonet.log 2>&1
$M eval intents --workdirs runs/language/text-mlm/pretrain@prototypes \
  runs/language/smlmt/protonet@prototypes runs/language/text-mlm/pretrain-bpe@prototypes \
  runs/language/smlmt/protonet-bpe@prototypes --out runs/language/intents/word_vs_bpe \
  > runs/language/logs/eval-intents-word_vs_bpe.log 2>&1
