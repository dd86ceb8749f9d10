"""Defenses that read a run and its build and write a defense folder, e.g. a filtered index list to retrain on.

One module per defense, its config beside it, and one entry here. The distillation defense is a training
method instead (fastbd/methods/compress.py with the presets in fastbd/distill.py): it writes a run.

    fastbd defend patchsearch --run RUN --data BUILD [key=value ...]
"""

from __future__ import annotations

import importlib

# name -> (module, config class, entry point `fn(cfg, run: Path, log) -> report dict`)
DEFENSES: dict[str, tuple[str, str, str]] = {
    "patchsearch": ("fastbd.defenses.patchsearch", "PatchSearchConfig", "patchsearch"),
}


def defense(name: str):
    """(config class, entry point) of a registered defense."""
    if name not in DEFENSES:
        raise ValueError(f"defense: {name!r} is not one of {sorted(DEFENSES)}")
    module, cls, fn = DEFENSES[name]
    m = importlib.import_module(module)
    return getattr(m, cls), getattr(m, fn)
