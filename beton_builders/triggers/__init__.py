"""Trigger kinds by name (`trigger.kind`); base.py says what a kind is and how the build drives it.

Adding a kind: a module beside these (a `TriggerKind` subclass, with its settings as a `Config` dataclass
when it has any, every field with its unit in a comment) and one entry in KINDS below; its section
`trigger.<name>` appears in the poison spec by itself (spec.py composes TriggerSpec from KINDS).
"""

from __future__ import annotations

from .base import Made, TriggerKind
from .corruptencoder import CorruptEncoder
from .ctrl import Ctrl
from .htba import Htba, htba_pattern
from .image import ImageTrigger
from .patch import PatchKind, Trigger
from .text import FONT_SEARCH, TEXT_FILL_ALPHA_REFERENCE, Text, find_font, load_font, text_trigger

KINDS: dict[str, type[TriggerKind]] = {
    "htba": Htba,  # Saha et al. 2022: the Hidden-Trigger-Backdoor colour-grid patch
    "image": ImageTrigger,  # a patch from an image file
    "text": Text,  # the reference's text patch
    "ctrl": Ctrl,  # Li et al. 2023: an image-wide frequency-domain trigger
    "corruptencoder": CorruptEncoder,  # Zhang et al. 2024: composed object + background + patch images
}


def make_kind(spec, source, target: int | None) -> TriggerKind:
    """The configured kind, ready to poison (spec: a validated PoisonSpec; target: the class index)."""
    return KINDS[spec.trigger.kind](spec, source, target)


def make_trigger(spec, width: int | None = None, alpha: float | None = None) -> Trigger:
    """A patch kind's patch at `width` px (default `spec.width`; text: `spec.font_size`), aspect kept, at
    opacity `alpha` (default `spec.alpha`); spec: the TriggerSpec."""
    cls = KINDS[spec.kind]
    if not issubclass(cls, PatchKind):
        raise ValueError(f"trigger.kind: {spec.kind} is not a patch; it has no single pattern to draw")
    return cls.pattern(spec, width or spec.width, spec.alpha if alpha is None else alpha)


def make_triggers(spec) -> dict[str, Trigger]:
    """{"train": ..., "val": ...}: the same patch, at `alpha` and at `val_alpha` (if set)."""
    train = make_trigger(spec)
    same = spec.val_alpha is None or spec.val_alpha == spec.alpha
    return {"train": train, "val": train if same else make_trigger(spec, alpha=spec.val_alpha)}


__all__ = ["FONT_SEARCH", "KINDS", "Made", "TEXT_FILL_ALPHA_REFERENCE", "Trigger", "TriggerKind", "find_font",
           "htba_pattern", "load_font", "make_kind", "make_trigger", "make_triggers", "text_trigger"]
