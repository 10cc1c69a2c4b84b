#!/usr/bin/env bash
# The command that produced the files in this folder, as sent to the lent H200 (one line
# there; the same tokens here). Working tree: commit 6602fb4, where conv4's "auto" meant
# XLA convolutions on a GPU (now im2col: 4.3x faster there). .whl and .gpu carried as in
# benchmarks/gpu_session.sh. Five runs shared the one GPU, 120 s each, then were evaluated.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 METAJAX_DATA_DIR=$PWD/.gpu/data XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p r
for a in "maml-5w5s --ways 5 --shots 5" "maml-20w1s --ways 20 --shots 1" "maml-20w5s --ways 20 --shots 5" \
         "mamlpp-5w1s --algorithm maml++" "imaml-5w1s --algorithm imaml"; do
  set -- $a; n=$1; shift
  (timeout -s TERM -k 15 120 python3 -m metajax.cli train omniglot --workdir r/$n --steps 60000 \
     --checkpoint-every 2000 --no-progress "$@" > r/train_$n.log 2>&1
   echo "exit $?" >> r/train_$n.log
   timeout 35 python3 -m metajax.cli eval omniglot --workdir r/$n --episodes 600 > r/eval_$n.log 2>&1) &
done
wait $(jobs -p)
tar czf $OUT/runs.tar.gz r
