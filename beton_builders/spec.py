"""The poison spec: one YAML file (overrides only) describing a poisoned experiment's data.

    fastbd build-beton --config configs/poison/demo.yaml --out out/demo attack.rates=[0.5]

Defaults follow Saha et al. (CVPR 2022) and the reference code (UMBCvision/SSL-Backdoor,
poison-generation/generate_poison.py): a 50-px trigger, aspect kept, pasted fully opaque at a random
position with its box inside [0.25, 0.75] of the training image and [0.10, 0.90] of the 224-px
validation crop; half of the target class poisoned. Other attacks are other trigger kinds
(beton_builders/triggers/: CTRL, CorruptEncoder), each with its paper's defaults in `trigger.<kind>`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import ConfigError, load_config
from .triggers import KINDS

SOURCE_KINDS = ("synthetic", "imagefolder", "filelist")
TRIGGER_KINDS = tuple(KINDS)
LOCATIONS = ("random", "center", "grid3x3", "multiple")
RANGES_OF = ("box", "centre")
# attack.rate_mode -> the unit its rates are in (how reports label a poison-rate axis)
RATE_UNITS = {"target_fraction": "fraction of the target class", "dataset_fraction": "fraction of the data",
              "count": "images"}
RATE_MODES = tuple(RATE_UNITS)


@dataclass
class SyntheticSpec:
    num_classes: int = 10  # classes; each has its own shape, colour and texture orientation
    train_per_class: int = 100  # images per class in the train split
    val_per_class: int = 20  # images per class in the val split
    width: int = 96  # px, image width before jitter
    height: int = 96  # px, image height before jitter
    size_jitter: float = 0.0  # fraction; each side drawn in [1-j, 1+j] x nominal (0: all one size)
    jpeg_quality: int = 92  # the generated "camera" JPEGs, before fastbd re-encodes them
    background_saturation: float = 0.15  # HSV saturation, upper bound of the background's colours (see synthetic.py)
    object_size: list[float] = field(default_factory=lambda: [0.2, 0.32])  # object radius range, fraction of the shorter side
    distractors: int = 0  # objects per image: small shapes of any kind and hue under the class object (clutter)
    hue_spread: float = 0.02  # hue turns (1 = the colour circle): std of the object's hue around its class's; >= 0.5: any colour
    shared_hues: int = 0  # hues; K > 0: every object takes one of K hues shared by all classes (colour is no class cue); 0: its class's own
    subtypes: int = 1  # looks per class; K > 1: each image shows one of its class's K looks (own shape, hue, texture)
    seed: int = 0  # generator seed (independent of the poisoning seed)


@dataclass
class SourceSpec:
    kind: str = "synthetic"  # synthetic | imagefolder | filelist
    root: Optional[str] = None  # imagefolder: dir holding train/<class>/*, val/<class>/*; filelist: base for relative paths
    class_list: Optional[str] = None  # file, one class name (wnid) per line: keep only these (ImageNet-100)
    train_list: Optional[str] = None  # filelist: lines "path label" (the reference code's format)
    val_list: Optional[str] = None  # filelist: same for validation
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)


@dataclass
class TriggerFields:
    """The settings every patch kind shares; TriggerSpec adds one section per kind that has its own."""
    kind: str = "htba"  # htba (seeded binary-colour grid) | image | text | ctrl | corruptencoder (beton_builders/triggers/)
    path: Optional[str] = None  # image trigger file (PNG/JPEG; an alpha channel is used as a mask); corruptencoder: its patch (None: the htba pattern)
    text: str = "SSL"  # text trigger: drawn in black, as the reference's text mode draws it
    font: Optional[str] = None  # text: a TTF/OTF file; None: FreeMonoBold (the reference's) if installed, see triggers/text.py
    font_size: int = 30  # px, text: font size (the reference always draws at 30 px)
    grid: int = 4  # htba (and corruptencoder's patch): cells per side of the random colour grid
    seed: int = 10  # htba (and corruptencoder's patch): which pattern (the paper used HTBA triggers 10, 12, 14, 16, 18)
    width: int = 50  # px in the full-resolution training image; height keeps the trigger's aspect (not text)
    alpha: float = 1.0  # opacity in (0, 1]; the reference pastes fully opaque (1.0; its own alpha is 1 - this)
    val_alpha: Optional[float] = None  # opacity on val_poisoned images; None: same as alpha
    location: str = "random"  # random | center | grid3x3 (one of 9 cells, chosen per image) | multiple (all 9)
    val_location: Optional[str] = None  # location on val_poisoned images; None: same as location
    range_of: str = "box"  # random: "box" lies inside [min, max] x image size (reference alpha_composite mode),
    #                        or its "centre" does (the reference's paste and text modes)
    train_min: float = 0.25  # random: the range's low end, fraction of the image size (reference: 0.25)
    train_max: float = 0.75  # (reference: 0.75)
    val_min: float = 0.10  # same for the 224-px validation crop (reference: 0.10)
    val_max: float = 0.90  # (reference: 0.90)


def _compose_trigger_spec() -> type:
    """TriggerSpec: TriggerFields plus a section `trigger.<name>` for every kind in KINDS with a Config."""
    sections = [(name, cls.Config, field(default_factory=cls.Config)) for name, cls in KINDS.items() if cls.Config]
    cls = dataclasses.make_dataclass("TriggerSpec", sections, bases=(TriggerFields,))
    cls.__module__ = __name__  # where it is bound, so pickle finds it
    return cls


TriggerSpec = _compose_trigger_spec()


@dataclass
class AttackSpec:
    targeted: bool = True  # targeted: poison images of `target` only; untargeted: of every class
    target: Optional[str] = "0"  # class name (wnid) or index as a string; ignored when untargeted
    rate_mode: str = "target_fraction"  # target_fraction | dataset_fraction | count
    rates: list[float] = field(default_factory=lambda: [0.5])  # nested poisoned sets, one per rate (paper: 0.5 of the target class)


@dataclass
class StorageSpec:
    max_resolution: int = 512  # px, longest stored side; larger images are downscaled (area) after the paste
    write_mode: str = "jpg"  # jpg | raw (uncompressed RGB; exact pixels, ~10x larger)
    jpeg_quality: int = 90  # for every image fastbd encodes (baseline JPEG)
    chroma: str = "420"  # JPEG chroma subsampling: 420 (as most camera JPEGs) | 444 (keeps small colour triggers sharp)
    reencode: str = "always"  # always | if_needed (copy clean baseline-RGB JPEGs already small enough byte-for-byte)
    val_resize: int = 256  # px, shorter side before the centre crop of val_poisoned (reference: 256); 0: no
    #                         resize or crop, the trigger goes on the full image (the reference's text and paste modes)
    val_crop: int = 224  # px, centre crop of val_poisoned (reference: 224)
    shard_size: int = 10000  # samples per DALI tar shard
    on_error: str = "fail"  # fail | skip: unreadable source images stop the build, or are listed and left out
    exif_transpose: bool = False  # rotate images by their EXIF orientation first; false: ignore it, as the reference does


@dataclass
class PoisonSpec:
    name: str = "default"  # free text, copied to the manifest
    seed: int = 0  # selection and trigger placement; same spec and seed -> byte-identical outputs
    workers: int = 0  # processes; 0 = every available core
    source: SourceSpec = field(default_factory=SourceSpec)
    trigger: TriggerSpec = field(default_factory=TriggerSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    storage: StorageSpec = field(default_factory=StorageSpec)


def _check(ok: bool, field_name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{field_name}: {msg}")


def _in_unit(x: float, name: str, open_low: bool = False) -> None:
    lo_ok = x > 0 if open_low else x >= 0
    _check(lo_ok and x <= 1, name, f"{x} is outside {'(0' if open_low else '[0'}, 1]")


def validate(spec: PoisonSpec) -> PoisonSpec:
    """Check ranges and enums; raise ConfigError naming the field. Returns the spec."""
    s, t, a, st = spec.source, spec.trigger, spec.attack, spec.storage
    _check(s.kind in SOURCE_KINDS, "source.kind", f"{s.kind!r} is not one of {SOURCE_KINDS}")
    if s.kind == "imagefolder":
        _check(bool(s.root), "source.root", "required for an imagefolder source")
    if s.kind == "filelist":
        _check(bool(s.train_list and s.val_list), "source.train_list", "filelist needs train_list and val_list")
    syn = s.synthetic
    _check(syn.num_classes >= 2, "source.synthetic.num_classes", "need at least 2 classes")
    _check(syn.train_per_class >= 1 and syn.val_per_class >= 1, "source.synthetic.train_per_class", "must be >= 1")
    _check(min(syn.width, syn.height) >= 8, "source.synthetic.width", "images must be at least 8 px")
    _check(0 <= syn.size_jitter < 1, "source.synthetic.size_jitter", "must be in [0, 1)")
    _in_unit(syn.background_saturation, "source.synthetic.background_saturation")
    lo_hi = syn.object_size
    _check(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= 0.5, "source.synthetic.object_size",
           f"{lo_hi} must be [min, max] with 0 < min <= max <= 0.5 (radius over the shorter side)")
    _check(0 <= syn.distractors <= 64, "source.synthetic.distractors", f"{syn.distractors}; must be in [0, 64]")
    _check(0 <= syn.shared_hues <= 64, "source.synthetic.shared_hues", f"{syn.shared_hues}; must be in [0, 64]")
    _check(1 <= syn.subtypes <= 16, "source.synthetic.subtypes", f"{syn.subtypes}; must be in [1, 16]")
    _check(0 <= syn.hue_spread <= 1, "source.synthetic.hue_spread", f"{syn.hue_spread}; must be in [0, 1] (hue turns)")
    _check(t.kind in TRIGGER_KINDS, "trigger.kind", f"{t.kind!r} is not one of {TRIGGER_KINDS}")
    _check(t.width >= 1, "trigger.width", f"{t.width} px; must be >= 1")
    _check(t.font_size >= 1, "trigger.font_size", f"{t.font_size} px; must be >= 1")
    if t.font is not None:
        _check(Path(t.font).is_file(), "trigger.font", f"font file not found: {t.font}")
    _check(t.grid >= 1, "trigger.grid", "must be >= 1")
    _in_unit(t.alpha, "trigger.alpha", open_low=True)
    if t.val_alpha is not None:
        _in_unit(t.val_alpha, "trigger.val_alpha", open_low=True)
    _check(t.location in LOCATIONS, "trigger.location", f"{t.location!r} is not one of {LOCATIONS}")
    if t.val_location is not None:
        _check(t.val_location in LOCATIONS, "trigger.val_location", f"{t.val_location!r} is not one of {LOCATIONS}")
    _check(t.range_of in RANGES_OF, "trigger.range_of", f"{t.range_of!r} is not one of {RANGES_OF}")
    for lo, hi, nm in ((t.train_min, t.train_max, "train"), (t.val_min, t.val_max, "val")):
        _in_unit(lo, f"trigger.{nm}_min")
        _in_unit(hi, f"trigger.{nm}_max")
        _check(lo < hi, f"trigger.{nm}_min", f"{lo} must be below trigger.{nm}_max={hi}")
    _check(a.rate_mode in RATE_MODES, "attack.rate_mode", f"{a.rate_mode!r} is not one of {RATE_MODES}")
    _check(len(a.rates) >= 1, "attack.rates", "list at least one rate")
    _check(len(set(a.rates)) == len(a.rates), "attack.rates", f"duplicate rates in {a.rates}")
    for r in a.rates:
        if a.rate_mode == "count":
            _check(r >= 0 and float(r).is_integer(), "attack.rates", f"count {r} must be a whole number >= 0")
        else:
            _in_unit(r, "attack.rates")
    if a.targeted:
        _check(a.target is not None and str(a.target) != "", "attack.target", "a targeted attack needs a target class")
    else:
        _check(a.rate_mode != "target_fraction", "attack.rate_mode",
               "target_fraction has no meaning for an untargeted attack; use dataset_fraction or count")
    _check(st.write_mode in ("jpg", "raw"), "storage.write_mode", f"{st.write_mode!r} is not jpg or raw")
    _check(1 <= st.jpeg_quality <= 100, "storage.jpeg_quality", f"{st.jpeg_quality} is outside [1, 100]")
    _check(st.chroma in ("420", "444"), "storage.chroma", f"{st.chroma!r} is not 420 or 444")
    _check(st.reencode in ("always", "if_needed"), "storage.reencode", f"{st.reencode!r} is not always or if_needed")
    _check(st.max_resolution >= 16, "storage.max_resolution", "must be >= 16 px")
    _check(st.val_resize == 0 or (st.val_crop >= 16 and st.val_resize >= st.val_crop), "storage.val_resize",
           "need val_resize >= val_crop >= 16, or val_resize 0 (no resize or crop)")
    _check(st.shard_size >= 1, "storage.shard_size", "must be >= 1")
    _check(st.on_error in ("fail", "skip"), "storage.on_error", f"{st.on_error!r} is not fail or skip")
    _check(spec.workers >= 0, "workers", "must be >= 0")
    KINDS[t.kind].check(spec)  # the kind's own settings (trigger.<kind>.*) and what it needs of the rest
    return spec


def load_spec(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()) -> PoisonSpec:
    """Load and validate a poison spec; relative paths in it resolve against the YAML file's folder."""
    spec = load_config(PoisonSpec, path, overrides)
    _resolve_paths(spec, Path(path).resolve().parent if path is not None else Path.cwd())
    return validate(spec)


def _resolve_paths(spec: PoisonSpec, base: Path) -> None:
    """Every path that names an existing file or folder (as given, else relative to `base`) becomes its
    resolved absolute path, so that "../triggers/x.png" from configs/poison/, "configs/triggers/x.png" from
    the repo root and the absolute path are one path: the spec (and a sweep's build id, its digest) then
    names the file, not its spelling. A path that exists nowhere stays as given, for validate's message."""
    def fix(p: Optional[str]) -> Optional[str]:
        if p is None:
            return p
        cand = Path(p) if Path(p).is_absolute() or Path(p).exists() else base / p
        return str(cand.resolve()) if cand.exists() else p

    s = spec.source
    s.root, s.class_list, s.train_list, s.val_list = map(fix, (s.root, s.class_list, s.train_list, s.val_list))
    spec.trigger.path = fix(spec.trigger.path)
    spec.trigger.font = fix(spec.trigger.font)
    ce = spec.trigger.corruptencoder
    ce.references, ce.backgrounds, ce.support = map(fix, (ce.references, ce.backgrounds, ce.support))


def rate_label(r: Any) -> str:
    return f"{float(r):g}"
