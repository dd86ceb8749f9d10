"""What this machine and this installation are: the usable cores and the installed fastbd version.

Both sides use these (the compiler's process pool, eval's DataLoader, the sweep's CPU slots, the benchmarks),
so that "never more processes than cores" and "which version wrote this" are answered in one place.
"""

from __future__ import annotations

import importlib.metadata
import os


def cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or taskset share), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cap_workers(n: int) -> int:
    """`n` worker processes or threads, but never more than there are cores (0 stays 0: in-process)."""
    return min(int(n), cores())


def fastbd_version() -> str:
    """The installed distribution's version (pyproject.toml is the one source of it)."""
    try:
        return importlib.metadata.version("fastbd")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
