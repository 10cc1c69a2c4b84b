#!/usr/bin/env bash
# Prepares, on this machine (online, no GPU needed), what benchmarks/gpu_session.sh needs
# on a lent GPU machine that reaches nothing outside it:
#   .whl/       wheels for Python 3.12 x86-64: what metajax and the peers need beyond
#               that machine's image (tyro and its needs; higher, TorchOpt and theirs)
#   .gpu/data/  the Omniglot arrays and splits, copied from the data directory
#   .gpu/l2l/   learn2learn's MAML files only (benchmarks/peers/make_minimal_l2l.py),
#               since learn2learn 0.2.0 has no wheel
# and keeps all three out of git (.git/info/exclude). Then, with the device tool, one call:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".gpu"], timeout_s=600)
#
#   bash benchmarks/prepare_gpu_session.sh            # data from $METAJAX_DATA_DIR or ../shared/data
#
# Needs the peers extra installed here (for make_minimal_l2l.py) and pip reaching PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${METAJAX_DATA_DIR:-../shared/data}
# Pinned to what the 2026-11-29 session carried (jax 0.11 image, Python 3.12) and what the
# peers extra pins; the image already has torch, numpy, typing-extensions, jax, flax, optax,
# chex, orbax-checkpoint, tqdm, matplotlib and pillow.
WHEELS=(tyro==1.0.17 typeguard==4.6.1 docstring_parser==0.18.0
        higher==0.2.1 torchopt==0.7.3 optree==0.20.0 graphviz==0.21)

exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.gpu/; do
  grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >> "$exclude"
done

rm -rf .whl && mkdir -p .whl
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for wheel in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$wheel"
done

if [ ! -d "$DATA/omniglot" ]; then
  echo "no Omniglot under $DATA (set METAJAX_DATA_DIR); see metajax/data/omniglot.py" >&2
  exit 1
fi
rm -rf .gpu && mkdir -p .gpu/data/omniglot
# The 28x28 arrays and the class splits are what training and evaluation read (6-7 MB);
# the PNG sets stay behind.
for item in omniglot28 splits SHA256SUMS README.md LICENSE alphabets.csv; do
  cp -r "$DATA/omniglot/$item" .gpu/data/omniglot/
done
python3 benchmarks/peers/make_minimal_l2l.py .gpu/l2l

ls .whl
du -sh .whl .gpu
echo "carry .whl and .gpu (64 MiB at most travel with the working tree)"
