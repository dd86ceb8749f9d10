#!/usr/bin/env bash
# The one-call GPU check (benchmarks/GPU_CHECK.md): installs DALI and FFCV from the offline bundle if its
# parts are in ~/bundle/parts, makes the synthetic data, times MoCo v2 and BYOL (ResNet-18) with every
# loader backend, eager and compiled, and two packed runs; writes gpu_check.{json,md,log} into OUT.
#
#   bash benchmarks/gpu_check.sh OUT                                # on the GPU machine, with its python3
#   FASTBD_GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh /tmp/x      # rehearsal on the CPU, tiny sizes
#
# PYTHON picks the interpreter (default python3: on the GPU machine the one that holds torch). The steps,
# their caps, the budget and the environment switches are described in benchmarks/gpu_check.py.
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$OUT"
