#!/usr/bin/env bash
# One lent-GPU session, as one prepared script: the benchmark suite, the peers on the
# same GPU, and the Omniglot Table 1 runs (stopped by SIGTERM at their time budget,
# checkpointed, then evaluated). Everything lands in $OUT as a few archives.
#
# Run from the repository root on a machine with JAX for CUDA (what the device tool
# lends: Python 3.12, jax 0.11 with CUDA 13, torch + torchvision, no learn2learn,
# higher or TorchOpt, no internet). Prepared here beforehand by
# `bash benchmarks/prepare_gpu_session.sh`, and carried:
#   .whl/       tyro, typeguard, docstring_parser, higher, torchopt, optree, graphviz wheels
#   .gpu/data/  omniglot/{omniglot28,splits,...} copied from ../shared/data
#   .gpu/l2l/   python benchmarks/peers/make_minimal_l2l.py .gpu/l2l
# Each benchmark has its own time limit; the training runs get what is left before
# DEADLINE (seconds after the start, default 560) less EVAL_S for the evaluations.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }

stamp "setup"
if [ -z "${DRY_RUN:-}" ]; then  # DRY_RUN=1: check the flow on a CPU machine (no installs, no benchmarks)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD:/tmp/site:$PWD/.gpu/l2l"
export PYTHONUNBUFFERED=1
export METAJAX_DATA_DIR="$PWD/.gpu/data"
export METAJAX_CACHE_DIR=/tmp/metajax_xla
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several processes share the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, jaxlib, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.get_device_name())"
python3 -c "
import jax, jax.numpy as jnp, metajax as mj
from metajax.models import conv4
print('metajax imports; conv auto ->', conv4.resolve_conv('auto'))
"

R=$OUT/bench
mkdir -p "$R"
DEADLINE=${DEADLINE:-560}  # seconds from the start by which everything has ended
EVAL_S=${EVAL_S:-50}
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }

if [ -z "${DRY_RUN:-}" ]; then
# Most needed first: the 2026-11-29 session measured the rest but lost these to a limit.
stamp "Omniglot W1/W2 beside the peers, same GPU"
timeout 150 python3 benchmarks/omniglot_vs_peers.py --device cuda \
  --workloads W1-so-1step W2-so-1step --peers learn2learn higher torchopt \
  --peer-allocator default --warmup 3 --iters 10 --out "$R/omniglot_vs_peers_gpu.jsonl"

stamp "W3 sinusoid beside the peers, same GPU (5 inner steps)"
timeout 60 python3 benchmarks/sinusoid_vs_peers.py --device cuda --rounds 1 \
  --workloads W3-so-5step --metajax metajax-plain metajax-fused \
  --peers learn2learn torchopt --peer-iters 20 \
  --out "$R/sinusoid_vs_peers_gpu.jsonl" --md "$R/sinusoid_vs_peers_gpu.md"

stamp "task-parallel modes, W1 (conv auto: im2col)"
timeout 70 python3 benchmarks/task_parallel.py --workloads W1 --modes vmap map 4 \
  --out "$R/task_parallel_gpu.jsonl" --md "$R/task_parallel_gpu.md"

stamp "suite: conv4-64, one axis at a time"
timeout 90 python3 benchmarks/suite.py --models conv4 --conv4-channels 64 \
  --meta-batch 32 128 --inner-steps 1 5 --remat off on \
  --out "$R/suite_gpu.jsonl" --md "$R/suite_gpu.md"
fi
tar czf "$OUT/bench.tar.gz" -C "$OUT" bench

TRAIN_S=$(( $(left) - EVAL_S - 15 ))
stamp "Omniglot runs (Table 1 rows, MAML++, iMAML), concurrently on the one GPU, ${TRAIN_S} s each"
mkdir -p runs_gpu
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 20 > runs_gpu/gpu_usage.csv &
SMI=$!
train() {  # name, options...
  local name=$1; shift
  timeout -s TERM -k 30 "$TRAIN_S" python3 -m metajax.cli train omniglot --workdir "runs_gpu/$name" \
    --steps 60000 --checkpoint-every 2000 --no-progress "$@" > "runs_gpu/train_$name.log" 2>&1
  echo "train $name exit $?" >> "runs_gpu/train_$name.log"
}
# Wait on these PIDs only: a bare `wait` would also wait for the `tee` behind this
# script's output (a process substitution) and never return.
pids=()
train maml-5w5s --ways 5 --shots 5 & pids+=($!)
train maml-20w1s --ways 20 --shots 1 & pids+=($!)
train maml-20w5s --ways 20 --shots 5 & pids+=($!)
train mamlpp-5w1s --algorithm maml++ --ways 5 --shots 1 & pids+=($!)
train imaml-5w1s --algorithm imaml --ways 5 --shots 1 & pids+=($!)
wait "${pids[@]}"
kill $SMI
stamp "evaluation, 600 test episodes each"
pids=()
for name in maml-5w5s maml-20w1s maml-20w5s mamlpp-5w1s imaml-5w1s; do
  timeout "$EVAL_S" python3 -m metajax.cli eval omniglot --workdir "runs_gpu/$name" \
    --episodes 600 > "runs_gpu/eval_$name.log" 2>&1 & pids+=($!)
done
wait "${pids[@]}"
for f in runs_gpu/*.log; do echo "== $f"; tail -n 3 "$f"; done
tar czf "$OUT/runs.tar.gz" runs_gpu
stamp "done"
