#!/usr/bin/env bash
# Prepare, on a machine with network, what the GPU check carries to the offline GPU machine
# (benchmarks/GPU_CHECK.md): the offline bundle (DALI, FFCV's sdist and build inputs) in .gpu-bundle/p0..p4,
# and the pure-Python wheels fastbd imports that the GPU image lacks in .gpu-bundle/wheels. .gpu-bundle/ is
# in .gitignore; run from anywhere, it writes into the repository root.
#
#   bash benchmarks/gpu_prepare.sh            # PYTHON=... picks the pip to use (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
MAKE=${FASTBD_MAKE_BUNDLE:-../shared/offline-gpu/make-bundle.sh}
[ -f "$MAKE" ] || { echo "error: no $MAKE (the shared offline-bundle script; set FASTBD_MAKE_BUNDLE)" >&2; exit 2; }
PYTHON=$py bash "$MAKE" .gpu-bundle
# fastbd's imports missing from the GPU image (its package list: /work/.library/device/KINDS.md): omegaconf
# only; pure Python, so one universal wheel. 2.4 needs PyYAML alone (the image has it).
mkdir -p .gpu-bundle/wheels
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu-bundle/wheels \
  "${FASTBD_OMEGACONF:-omegaconf==2.4.0}" 2>&1 | grep -v '^WARNING: Location' || true
ls .gpu-bundle/wheels/omegaconf-*.whl >/dev/null
du -sh .gpu-bundle/p* .gpu-bundle/wheels
echo "ready: carry .gpu-bundle/p0 .. p3 one per call, then .gpu-bundle/p4 and .gpu-bundle/wheels with the check"
