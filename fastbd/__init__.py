"""fastbd: a fast, reproducible workbench for backdoor attacks on self-supervised learning.

Implements the data side of Saha et al., "Backdoor Attacks on Self-Supervised Learning" (CVPR 2022;
reference code UMBCvision/SSL-Backdoor). Import the pieces from a notebook:

    from beton_builders import load_spec, build
    manifest = build(load_spec("configs/poison/demo.yaml"), "out/demo")
"""

from beton_builders.host import fastbd_version

__version__ = fastbd_version()
