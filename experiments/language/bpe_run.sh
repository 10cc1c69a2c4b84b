#!/usr/bin/env bash
# The BPE-vocabulary runs of experiments/language/README.md, in order, on the shared CPU.
# Run from the repository root; logs go to runs/language/logs/.
set -euo pipefail
M="nice -n 10 python -m metajax.cli"
mkdir -p runs/language/logs
$M train text-mlm --algorithm pretrain --tokenizer bpe --vocab-size 3000 --steps 500 \
  --eval-every 250 --checkpoint-every 250 --workdir runs/language/text-mlm/pretrain-bpe \
  --no-progress > runs/language/logs/text-mlm-pretrain-bpe.log 2>&1
$M train smlmt --algorithm protonet --init-from runs/language/text-mlm/pretrain-bpe --steps 200 \
  --eval-every 100 --checkpoint-every 100 --workdir runs/language/smlmt/protonet-bpe \
  --no-progress > runs/language/logs/smlmt-protonet-bpe.log 2>&1
$M eval intents --workdirs runs/language/text-mlm/pretrain-bpe@prototypes \
  runs/language/smlmt/protonet-bpe@prototypes \
  --baseline runs/language/text-mlm/pretrain-bpe@prototypes \
  --out runs/language/intents/bpe > runs/language/logs/eval-intents-bpe.log 2>&1
