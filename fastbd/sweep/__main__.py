"""`python -m fastbd.sweep SWEEP_DIR RUN_ID [--nproc N]`: run one run of a sweep (what the local executor spawns)."""

import sys

from fastbd.sweep.stages import main

sys.exit(main())
