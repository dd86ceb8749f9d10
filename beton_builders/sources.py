"""Where images come from: an ImageFolder tree, the reference code's file lists, or the synthetic set.

A source is a small picklable object: `classes`, `items(split)` -> [(key, label)], and `read(key)` ->
encoded bytes. Classes are indexed in lexical order of their names, as torchvision's ImageFolder and
the reference code (sorted ImageNet-100 wnid list) do.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from . import synthetic
from .config import ConfigError
from .spec import SourceSpec

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val")


def _read_class_list(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"source.class_list: file not found: {path}")
    names = [ln.split()[0] for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if len(set(names)) != len(names):
        raise ConfigError(f"source.class_list: {path} lists a class twice")
    return sorted(names)


@dataclass
class ImageFolderSource:
    root: str
    classes: list[str]

    @classmethod
    def open(cls, spec: SourceSpec) -> "ImageFolderSource":
        root = Path(spec.root)
        for split in SPLITS:
            if not (root / split).is_dir():
                raise ConfigError(f"source.root: {root} has no {split}/ folder (expected {split}/<class>/<image>)")
        found = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        if spec.class_list:
            wanted = _read_class_list(spec.class_list)
            missing = [c for c in wanted if c not in found]
            if missing:
                raise ConfigError(f"source.class_list: {len(missing)} classes not under {root / 'train'}, "
                                  f"e.g. {missing[:3]}")
            found = wanted
        if not found:
            raise ConfigError(f"source.root: no class folders under {root / 'train'}")
        return cls(str(root), found)

    def items(self, split: str) -> list[tuple[str, int]]:
        out = []
        for label, name in enumerate(self.classes):
            d = Path(self.root) / split / name
            if not d.is_dir():
                continue  # a class may have no val images; eval reports it
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            out.extend((str(p.relative_to(self.root)), label) for p in files)
        return out

    def read(self, key: str) -> bytes:
        return (Path(self.root) / key).read_bytes()


@dataclass
class FileListSource:
    root: str
    lists: dict[str, list[tuple[str, int]]]
    classes: list[str]

    @classmethod
    def open(cls, spec: SourceSpec) -> "FileListSource":
        lists = {}
        for split, path in (("train", spec.train_list), ("val", spec.val_list)):
            lists[split] = _parse_filelist(path, f"source.{split}_list")
        n = 1 + max(lbl for items in lists.values() for _, lbl in items)
        names = _read_class_list(spec.class_list) if spec.class_list else [str(i) for i in range(n)]
        if len(names) < n:
            raise ConfigError(f"source.class_list: lists {len(names)} classes but the file lists use label {n - 1}")
        return cls(spec.root or "", lists, names)

    def items(self, split: str) -> list[tuple[str, int]]:
        return self.lists[split]

    def read(self, key: str) -> bytes:
        p = Path(key)
        return (p if p.is_absolute() or not self.root else Path(self.root) / p).read_bytes()


def _parse_filelist(path: str, field_name: str) -> list[tuple[str, int]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field_name}: file not found: {path}")
    out = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        # The reference lists are "path label", optionally followed by a patch box "x y w h".
        if len(parts) < 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ConfigError(f"{path}:{lineno}: expected 'path label', got {line.strip()!r}")
        out.append((parts[0], int(parts[1])))
    if not out:
        raise ConfigError(f"{field_name}: {path} lists no images")
    return out


@dataclass
class SyntheticSource:
    seed: int
    num_classes: int
    per_split: dict[str, int]
    width: int
    height: int
    size_jitter: float
    quality: int
    classes: list[str]
    background_saturation: float = 0.15
    object_size: tuple[float, float] = (0.2, 0.32)
    distractors: int = 0
    hue_spread: float = synthetic.HUE_SPREAD
    shared_hues: int = 0
    subtypes: int = 1

    @classmethod
    def open(cls, spec: SourceSpec) -> "SyntheticSource":
        s = spec.synthetic
        return cls(s.seed, s.num_classes, {"train": s.train_per_class, "val": s.val_per_class},
                   s.width, s.height, s.size_jitter, s.jpeg_quality, synthetic.class_names(s.num_classes),
                   s.background_saturation, tuple(s.object_size), s.distractors, s.hue_spread, s.shared_hues,
                   s.subtypes)

    def items(self, split: str) -> list[tuple[str, int]]:
        n = self.per_split[split]
        # Interleave classes (i % num_classes) so any prefix is class-balanced.
        return [(f"synthetic/{split}/{i:07d}", i % self.num_classes) for i in range(n * self.num_classes)]

    def read(self, key: str) -> bytes:
        _, split, idx = key.split("/")
        i = int(idx)
        return synthetic.render_jpeg(self.seed, split, i, i % self.num_classes, self.num_classes,
                                     self.width, self.height, self.size_jitter, self.quality,
                                     self.background_saturation, self.object_size, self.distractors,
                                     self.hue_spread, self.shared_hues, self.subtypes)


def open_source(spec: SourceSpec):
    return {"synthetic": SyntheticSource, "imagefolder": ImageFolderSource, "filelist": FileListSource}[spec.kind].open(spec)


def resolve_class(classes: list[str], target: str) -> int:
    """A class index from a name or an index string; unknown names get close suggestions."""
    t = str(target).strip()
    if t in classes:
        return classes.index(t)
    if t.lstrip("-").isdigit():
        i = int(t)
        if 0 <= i < len(classes):
            return i
        raise ConfigError(f"attack.target: index {i} is outside [0, {len(classes) - 1}]")
    close = difflib.get_close_matches(t, classes, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; classes are {classes[:5]}..."
    raise ConfigError(f"attack.target: unknown class {t!r}{hint}")
