"""fastbd: a fast, reproducible workbench for backdoor attacks on self-supervised learning.

Implements the data side of Saha et al., "Backdoor Attacks on Self-Supervised Learning" (CVPR 2022;
reference code UMBCvision/SSL-Backdoor). Import the pieces from a notebook:

    from beton_builders import load_spec, build
    manifest = build(load_spec("configs/poison/demo.yaml"), "out/demo")
"""

import os

# Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise. libgomp (torch's CPU
# threads) reads this once, when torch is first imported, so it must be set before that. On a busy 2-core
# machine a 2-thread ResNet step spun away 5x its useful CPU time and ran 8x slower with the default policy
# (measured 2026-11-26, README "CPU training"); with PASSIVE it slows down in proportion to the load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from beton_builders.host import fastbd_version  # noqa: E402

__version__ = fastbd_version()
