set -x
cd /work/main
metajax train text-mlm --algorithm pretrain --seed 1 --steps 500 --eval-every 250 --checkpoint-every 250 --workdir runs/language/seed1/text-mlm/pretrain --no-progress
cp -r runs/language/seed1/text-mlm/pretrain runs/language/seed1/text-mlm/pretrain-700
metajax train text-mlm --algorithm pretrain --seed 1 --steps 700 --eval-every 250 --checkpoint-every 100 --workdir runs/language/seed1/text-mlm/pretrain-700 --no-progress
metajax train smlmt --algorithm protonet --seed 1 --init-from runs/language/seed1/text-mlm/pretrain --steps 200 --eval-every 100 --checkpoint-every 100 --workdir runs/language/seed1/smlmt/protonet --no-progress
metajax eval intents --workdirs runs/language/seed1/text-mlm/pretrain-700@prototypes runs/language/seed1/smlmt/protonet@prototypes --out runs/language/seed1/intents/control_vs_protonet
date
