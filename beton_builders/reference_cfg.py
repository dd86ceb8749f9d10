"""The reference code's poison config (an INI `.cfg`), translated key by key into a fastbd spec.

    fastbd build-beton --config poison-generation/cfg/HTBA_trigger_10_targeted_n02106550.cfg \\
        --out out/htba10 source.root=/data/imagenet100

UMBCvision/SSL-Backdoor's poison-generation/generate_poison.py reads `[experiment] ID` and 21 keys of
`[poison_generation]`, and requires every one. Each is translated below, the translation is printed,
and a key or value fastbd cannot reproduce is refused with its name (ConfigError): none is dropped
silently. key=value overrides given after the config apply on top of the translation. What the keys
mean in the reference (read from its code, not its comments), and where they go:

  data_root              ImageFolder root with train/<wnid>/ and val/<wnid>/  -> source.root; the classes are
                         those of scripts/imagenet100_classes.txt in its working folder (-> source.class_list
                         when that file is found), indexed in sorted order
  text, trigger          text=true: `trigger` is a string drawn in black FreeMonoBold, fill alpha 128 of 255
                         (-> trigger.kind=text); else an image file (-> trigger.kind=image, trigger.path)
  fntsize                read but never passed to add_watermark: text is always 30 px (-> trigger.font_size=30)
  alpha_composite        image triggers only. true: the image's alpha in the trigger's box is multiplied by
                         train_alpha/val_alpha and the image is composited over the trigger, so 0 is an
                         opaque trigger (-> trigger.alpha = 1 - floor(255 a) / 255, the uint8 truncation
                         included); val images are resized to 256 and centre-cropped to 224 first.
                         false: the trigger is pasted with its own alpha channel as the mask (-> alpha 1);
                         train_alpha, val_alpha and the min/max keys are unused and val images keep their size
  train_location, val_location   random | center | multiple (9 copies, anchors at 0.25/0.5/0.75 of each side)
  *_location_min, *_max  random, alpha_composite: the whole box inside [min, max] of the image (range_of=box);
                         paste and text modes ignore them: the trigger's centre in [0.25, 0.75] (range_of=centre)
  watermark_width        px, the image trigger's width; height keeps its aspect (-> trigger.width)
  targeted, target_wnid, poison_injection_rate   targeted: int(rate x the target class's train images)
                         are poisoned (-> rate_mode target_fraction); untargeted: int(rate x all of them)
                         (-> dataset_fraction)
  splits                 which of train, val_poisoned to write ('val' writes nothing); fastbd builds all three
  patch_params           write each poisoned box into the train file list (its own code path fails on a
                         format string); fastbd's manifest always records the boxes, and
                         `fastbd export-reference --patch-params` writes them into the list
  poison_savedir, logfile    where the reference writes; fastbd writes to --out
The reference draws its selection and placements from an unseeded RNG; fastbd's are seeded (`seed`).
"""

from __future__ import annotations

import configparser
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .config import ConfigError

from .spec import PoisonSpec, load_spec
from .triggers import TEXT_FILL_ALPHA_REFERENCE, find_font

KEYS = ("data_root", "text", "fntsize", "trigger", "alpha_composite", "train_location", "train_location_min",
        "train_location_max", "train_alpha", "watermark_width", "targeted", "patch_params", "target_wnid",
        "poison_injection_rate", "val_location", "val_location_min", "val_location_max", "val_alpha",
        "poison_savedir", "logfile", "splits")
LOCATIONS = ("random", "center", "multiple")
SPLITS = ("train", "val", "val_poisoned")
REFERENCE_TEXT_PX = 30  # add_watermark's default fntsize, the only size the reference ever draws at
CLASS_LIST = "scripts/imagenet100_classes.txt"  # read by generate_poison.py from its working folder
FONT = "fonts/FreeMonoBold.ttf"


def is_reference_cfg(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix.lower() in (".cfg", ".ini")


@dataclass
class Row:
    source: str  # the reference keys and values, e.g. "train_alpha=0.00"
    overrides: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Translation:
    path: Path
    rows: list[Row]

    @property
    def overrides(self) -> list[str]:
        return [o for r in self.rows for o in r.overrides]

    def text(self) -> str:
        out = [f"reference config {self.path} (UMBCvision/SSL-Backdoor generate_poison.py), translated:"]
        for r in self.rows:
            out.append(f"  {r.source}")
            out.append("      -> " + (" ".join(r.overrides) if r.overrides else "(no fastbd setting)"))
            if r.note:
                out.append(f"      note: {r.note}")
        return "\n".join(out)


def load_reference_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                        cwd: str | Path | None = None) -> tuple[PoisonSpec, Translation]:
    tr = translate(path, cwd)
    return load_spec(None, [*tr.overrides, *overrides]), tr


def _q(v) -> str:
    """A dotlist value: strings JSON-quoted (valid YAML), so paths and texts are never re-typed."""
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _set(key: str, v) -> str:
    return f"{key}={_q(v)}"


class _Cfg:
    """Typed reads of [poison_generation] with the reference's own conversions, errors naming the key."""

    def __init__(self, path: Path, sec: configparser.SectionProxy):
        self.path, self.sec = path, sec

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: [poison_generation] {key}: {msg}")

    def raw(self, key: str) -> str:
        return self.sec[key]

    def bool(self, key: str) -> bool:
        try:
            return self.sec.getboolean(key)
        except ValueError:
            raise self.fail(key, f"{self.sec[key]!r} is not a boolean (true/false, yes/no, on/off, 1/0)") from None

    def num(self, key: str, kind=float):
        try:
            v = kind(self.sec[key])
        except ValueError:
            raise self.fail(key, f"{self.sec[key]!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(v):
            raise self.fail(key, f"{v} is not finite")
        return v

    def s(self, *keys: str) -> str:
        return ", ".join(f"{k}={self.sec[k]}" for k in keys)


def _read(path: Path) -> tuple[configparser.ConfigParser, str]:
    if not path.is_file():
        raise ConfigError(f"reference config not found: {path}")
    cp = configparser.ConfigParser()  # what generate_poison.py uses, with its defaults (keys case-insensitive)
    try:
        cp.read_string(path.read_text(), source=str(path))
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable INI file: {str(e).splitlines()[0]}") from None
    extra = [s for s in cp.sections() if s not in ("experiment", "poison_generation")]
    if extra:
        raise ConfigError(f"{path}: section [{extra[0]}] is not read by generate_poison.py; refusing to ignore it")
    for sec, keys in (("experiment", ("id",)), ("poison_generation", KEYS)):
        if not cp.has_section(sec):
            raise ConfigError(f"{path}: no [{sec}] section (generate_poison.py needs it)")
        unknown = [k for k in cp[sec] if k not in keys]
        if unknown:
            raise ConfigError(f"{path}: [{sec}] {unknown[0]}: not a key of generate_poison.py; refusing to ignore it")
        missing = [k for k in keys if k not in cp[sec]]
        if missing:
            raise ConfigError(f"{path}: [{sec}] lacks {missing[0]} (generate_poison.py reads every key)")
    try:  # interpolation ('%') errors surface on access, as they would in the reference
        return cp, cp["experiment"]["id"]
    except configparser.Error as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


def _find(rel: str, bases: list[Path]) -> Path | None:
    p = Path(rel)
    if p.is_absolute():
        return p if p.exists() else None
    return next((b / p for b in bases if (b / p).exists()), None)


def translate(path: str | Path, cwd: str | Path | None = None) -> Translation:
    """Read a reference `.cfg` and translate every key; raises ConfigError on any key it cannot honour.

    Relative paths resolve as the reference resolves them, against its working folder (`cwd`, default
    the current one), then against the cfg's parent folder (poison-generation/ for cfg/*.cfg) and its own."""
    path = Path(path)
    cp, exp_id = _read(path)
    try:
        return _translate(path, _Cfg(path, cp["poison_generation"]), exp_id, cwd)
    except configparser.Error as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


def _translate(path: Path, c: _Cfg, exp_id: str, cwd) -> Translation:
    bases = [Path(cwd or Path.cwd()).absolute(), path.absolute().parent.parent, path.absolute().parent]
    rows = [Row(f"[experiment] ID={exp_id}", [_set("name", exp_id)])]

    root = c.raw("data_root")
    found = _find(root, bases)
    placeholder = root.startswith("<") and root.endswith(">")
    rows.append(Row(c.s("data_root"), ["source.kind=imagefolder", _set("source.root", str(found or root))],
                    "a placeholder: add source.root=DIR after the config" if placeholder else ""))
    cl = _find(CLASS_LIST, bases)
    rows.append(Row(f"({CLASS_LIST}, read from the reference's working folder)",
                    [_set("source.class_list", str(cl))] if cl else [],
                    "" if cl else "not found: every class folder under data_root/train is used; "
                                  "add source.class_list=FILE to keep the reference's 100 classes"))

    text = c.bool("text")
    alpha_composite = c.bool("alpha_composite")
    fnt = c.num("fntsize", int)
    trig = c.raw("trigger")
    if text:
        if not trig.strip():
            raise c.fail("trigger", "empty text")
        font = _find(FONT, bases)
        used = str(font) if font else (find_font(None) or "Pillow's built-in font")
        ov = ["trigger.kind=text", _set("trigger.text", trig), _set("trigger.font_size", REFERENCE_TEXT_PX)]
        ov += [_set("trigger.font", str(font))] if font else []
        note = (f"fntsize is read but never passed on: the reference draws text at {REFERENCE_TEXT_PX} px"
                + (f", not {fnt}" if fnt != REFERENCE_TEXT_PX else "") + f"; font {used}"
                + ("" if "FreeMonoBold" in used else " (substitute: the reference's FreeMonoBold was not found)")
                + "; the reference renders text on val_poisoned only (its train branch fails unpacking the "
                  "result), fastbd on both")
        rows.append(Row(c.s("text", "trigger", "fntsize"), ov, note))
    else:
        tp = _find(trig, bases)
        rows.append(Row(c.s("text", "trigger", "fntsize"),
                        ["trigger.kind=image", _set("trigger.path", str(tp or trig))],
                        ("" if tp else "file not found; add trigger.path=FILE; ") + "fntsize unused (text=false)"))

    mode = "text" if text else ("alpha_composite" if alpha_composite else "paste")
    rows.append(_alphas(c, mode, tp if not text else None))
    if text:
        rows.append(Row(c.s("watermark_width"), [], "unused in text mode (size from the font)"))
    else:
        w = c.num("watermark_width", int)
        if w < 1:
            raise c.fail("watermark_width", f"{w} px; must be >= 1")
        rows.append(Row(c.s("watermark_width"), [_set("trigger.width", w)]))

    rows += _locations(c, mode)

    targeted = c.bool("targeted")
    rate = c.num("poison_injection_rate")
    if not 0 <= rate <= 1:
        raise c.fail("poison_injection_rate", f"{rate} is outside [0, 1]")
    if targeted:
        rows.append(Row(c.s("targeted", "target_wnid", "poison_injection_rate"),
                        ["attack.targeted=true", _set("attack.target", c.raw("target_wnid")),
                         "attack.rate_mode=target_fraction", f"attack.rates=[{rate!r}]"],
                        f"int({rate:g} x the target class's training images) poisoned"))
    else:
        rows.append(Row(c.s("targeted", "target_wnid", "poison_injection_rate"),
                        ["attack.targeted=false", "attack.rate_mode=dataset_fraction", f"attack.rates=[{rate!r}]"],
                        f"int({rate:g} x all training images) poisoned; target_wnid unused (untargeted)"))

    splits = c.raw("splits").split(",")  # the reference does not strip spaces either
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise c.fail("splits", f"{bad[0]!r} is not one of {SPLITS} (the reference exits on it)")
    rows.append(Row(c.s("splits"), [], "fastbd always builds train, val and val_poisoned"
                    + ("" if "train" in splits else " (the reference would write no training set here)")))
    rows.append(Row(c.s("patch_params"), [], "manifest.json records every box; `fastbd export-reference "
                                             "--patch-params` writes them into the train file list"))
    rows.append(Row(c.s("poison_savedir", "logfile"), [], "fastbd writes to --out (log to stderr)"))
    rows.append(Row("(selection and placement)", [], "the reference's RNG is unseeded; fastbd's uses `seed` (0)"))
    return Translation(path, rows)


def _alphas(c: _Cfg, mode: str, trigger_file: Path | None) -> Row:
    src = c.s("alpha_composite", "train_alpha", "val_alpha")
    if mode == "text":
        a = TEXT_FILL_ALPHA_REFERENCE / 255
        return Row(src, [_set("trigger.alpha", a)],
                   "text mode: fill alpha 128 of 255 (fastbd opacity 128/255); the other keys unused")
    if mode == "paste":
        return Row(src, ["trigger.alpha=1.0"], "paste mode: the trigger's alpha channel is its mask; "
                                               "train_alpha and val_alpha unused")
    if trigger_file is not None:
        try:
            with Image.open(trigger_file) as im:
                rgba = im.convert("RGBA") if "A" in im.getbands() or "transparency" in im.info else None
        except (OSError, UnidentifiedImageError):
            rgba = None  # an unreadable trigger is named when the trigger is made
        if rgba is not None and rgba.getextrema()[3][0] < 255:
            raise c.fail("alpha_composite", f"true with a trigger that has transparent pixels ({trigger_file}): "
                                            "the reference then ignores the trigger's alpha at train_alpha=0 and "
                                            "blends it non-linearly otherwise, which fastbd does not reproduce; "
                                            "use an opaque trigger or alpha_composite=false")
    ov, parts = [], []
    for key, name in (("train_alpha", "trigger.alpha"), ("val_alpha", "trigger.val_alpha")):
        a = c.num(key)
        if not 0 <= a < 1:
            raise c.fail(key, f"{a} is outside [0, 1): it is the image's weight under the trigger, so "
                              f"{a:g} leaves {'no trigger' if a >= 1 else 'an undefined blend'}")
        opacity = (255 - math.floor(255 * a)) / 255  # uint8 truncation of the image's alpha, 255 * a
        if key == "train_alpha" or opacity != (255 - math.floor(255 * c.num("train_alpha"))) / 255:
            ov.append(_set(name, opacity))
        parts.append(f"{key} {a:g} -> opacity {opacity:.6g}")
    return Row(src, ov, "the reference's alpha is the weight of the image under the trigger (0 = opaque "
                        "trigger), fastbd's the trigger's opacity: 1 - floor(255 a) / 255; " + ", ".join(parts))


def _locations(c: _Cfg, mode: str) -> list[Row]:
    rows = []
    train_loc = c.raw("train_location")
    for split in ("train", "val"):
        loc = c.raw(f"{split}_location")
        keys = (f"{split}_location", f"{split}_location_min", f"{split}_location_max")
        if loc not in LOCATIONS:
            raise c.fail(keys[0], f"{loc!r} is not one of {LOCATIONS} (the reference fails on it)")
        ov = [_set("trigger.location" if split == "train" else "trigger.val_location", loc)] \
            if split == "train" or loc != train_loc else []
        lo, hi = c.num(keys[1]), c.num(keys[2])
        if loc != "random":
            note = f"{keys[1]}/max unused with {loc}"
        elif mode == "alpha_composite":
            if not 0 <= lo < hi <= 1:
                raise c.fail(keys[1], f"[{lo:g}, {hi:g}] is not a range inside [0, 1]")
            ov += ["trigger.range_of=box", _set(f"trigger.{split}_min", lo), _set(f"trigger.{split}_max", hi)]
            note = "the whole box inside [min, max] of the image"
        else:
            ov += ["trigger.range_of=centre", _set(f"trigger.{split}_min", 0.25), _set(f"trigger.{split}_max", 0.75)]
            note = f"{mode} mode ignores {keys[1]}/max: the trigger's centre lies in [0.25, 0.75]"
        if split == "val":
            if mode == "alpha_composite":
                ov += ["storage.val_resize=256", "storage.val_crop=224"]
                note += "; val images resized to 256 and centre-cropped to 224 before the paste"
            else:
                ov += ["storage.val_resize=0"]
                note += f"; {mode} mode triggers val images at full size (no resize or crop)"
        rows.append(Row(c.s(*keys), ov, note))
    return rows
