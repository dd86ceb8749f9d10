#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh Debian/Ubuntu machine for fastbd:
# system libraries FFCV compiles against, a virtualenv in .venv, torch, ffcv, DALI, fastbd (editable).
#   bash scripts/setup.sh          (the Quickstart's `make demo` / `make test` call this for you)
# Re-running is cheap: a stamp file records the hash of this script and pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FASTBD_VENV:-.venv}
STAMP="$VENV/.fastbd-setup-$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)"
[ -f "$STAMP" ] && exit 0

# FFCV's C extension links OpenCV and libjpeg-turbo and finds them through pkg-config; FreeMonoBold
# (fonts-freefont-ttf) is the reference code's text-trigger font.
need_apt=0
for p in libopencv-dev libturbojpeg0-dev pkg-config fonts-freefont-ttf; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopencv-dev libturbojpeg0-dev pkg-config \
    fonts-freefont-ttf >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel setuptools
# Pinned torch: the pair that is known to import together; an unpinned torch pulls gigabytes.
$PIP install -q "torch==${FASTBD_TORCH:-2.14.1}" "torchvision==${FASTBD_TORCHVISION:-0.29.1}"
# ffcv 1.0.2 builds from source and imports Pillow/numba/cupy-free pieces without declaring them all.
$PIP install -q numpy Pillow numba opencv-python-headless
$PIP install -q --no-build-isolation "ffcv==1.0.2"
$PIP install -q -e ".[dali,slurm,benchmarks,dev]"
touch "$STAMP"
