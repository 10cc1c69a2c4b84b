#!/usr/bin/env bash
# W2's step on the split CPU (as the CLI runs it) beside this host's float32 matmul peak,
# alternating in one session: three rounds of (peak, W2). Run from the repository root:
#   bash benchmarks/results/w2_fraction_of_peak_2026-12-07.sh > benchmarks/results/w2_fraction_of_peak_2026-12-07.log 2>&1
set -eu
echo "# $(date -u '+%F %H:%M'), commit $(git rev-parse --short HEAD), load average $(cut -d' ' -f1 /proc/loadavg)"
python -c 'import sys; sys.path.insert(0, "benchmarks"); import _host; print("#", _host.describe())'
for r in 1 2 3; do
  python -c 'import sys; sys.path.insert(0, "benchmarks"); import _bench; print("round '$r' matmul peak:", _bench.matmul_peak_gflops())'
  python benchmarks/omniglot_vs_peers.py --workloads W2-so-1step --peers --iters 10 --warmup 2 \
    --task-parallel map --xla-cpu tuned --cpu-devices 2 --out /tmp/w2_fraction_round$r.jsonl 2>&1 \
    | grep -o '"sec_per_step_median": [0-9.]*' | sed "s/^/round $r W2 split CPU /"
done
