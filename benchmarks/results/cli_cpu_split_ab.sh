# A/B of the metajax CLI's Omniglot training on the CPU split per core (the recipe's new default) and on one device.
# Each arm: a fresh workdir, 60 meta-steps of the default config (5-way 1-shot, conv4-64, meta-batch 32), no validation.
cd "$(dirname "$0")/../.."
for round in 1 2; do
  for arm in one split; do
    [ $((round % 2)) = 0 ] && arm=$([ $arm = one ] && echo split || echo one)
    rm -rf /tmp/cli_ab_$arm
    env=$([ $arm = one ] && echo METAJAX_CPU_DEVICES=0 || echo METAJAX_AB=split)
    start=$(date +%s.%N)
    env $env metajax train omniglot --workdir /tmp/cli_ab_$arm --steps 60 --log-every 10 --eval-every 0 --no-progress > /dev/null 2>&1
    end=$(date +%s.%N)
    python -c "
import json; rows=[json.loads(l) for l in open('/tmp/cli_ab_$arm/metrics.jsonl')]; cfg=json.load(open('/tmp/cli_ab_$arm/config.json'))
print('round $round, arm $arm ($env): cpu_devices in config.json =', cfg.get('cpu_devices'), '| sec_per_step per 10-step window:', [round(r['sec_per_step'],3) for r in rows], '| whole command %.1f s' % ($end-$start), '| meta_loss at 60: %.4f' % rows[-1]['meta_loss'])"
  done
done
