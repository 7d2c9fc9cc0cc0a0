#!/usr/bin/env bash
# The prepared GPU benchmark of issue 8: under 8 minutes on one H100 / H200.
#
#   ADVROBUST_DATA=<data> benchmarks/gpu.sh OUT_DIR [MODELS_DIR [gpu_bench.py options]]
#
# Runs from the repository root with a python3 that has a CUDA build of torch (PYTHON overrides it);
# advrobust is taken from src/ (no install). Packages the machine lacks (the peers: torchattacks, ART, foolbox
# and its needs, pyautoattack) can travel as wheels in .whl/ (see benchmarks/README.md). Writes
# OUT_DIR/gpu.json, gpu.log, gpu.txt. MODELS_DIR (benchmarks/train_models.py's runs) and ADVROBUST_DATA
# (holding mnist/) add the MNIST peer rows; without them those rows are skipped.
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [MODELS_DIR [gpu_bench.py options]]}
models=${2:-}
shift $(($# < 2 ? $# : 2))
py=${PYTHON:-python3}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/advrobust-site .whl/*.whl
    export PYTHONPATH=/tmp/advrobust-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
} | tee "$out/gpu.txt"
# --budget stops the peer cases in time for the torch.compile section and the tables (the whole run stays
# under 8 minutes, the hard limit below).
timeout 470 "$py" benchmarks/gpu_bench.py --device cuda --out "$out/gpu.json" --budget 400 \
    --compile-reserve 90 ${models:+--models "$models"} "$@" 2>&1 | tee "$out/gpu.log"
