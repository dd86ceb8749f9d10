"""The parts CorruptEncoder composes: reference objects (image + mask), support images, background files,
from folders the user gives or, for the synthetic source, from the generator itself.

Reference folders hold either the reference code's labelme layout, `<name>/img.png` (or .jpg) beside
`<name>/label.png` (or mask.png), where every nonzero pixel of the label is object (the reference keeps
label red == 128, labelme's colour of the first class); or RGBA cut-outs `<name>.png`, where alpha >= 128
is object. Objects are cropped to their mask's bounding box (the reference: of its largest connected
region; with one object per mask these agree). Support and background folders hold plain images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import synthetic
from ..config import ConfigError
from ..pixels import to_rgb

SCENE_INDEX = 1 << 40  # backdrop indices of the reference images, far from the composites' (0, 1, ...)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Part:
    name: str  # how the manifest names it: a path relative to its folder, or synthetic/...
    image: np.ndarray  # (H, W, 3) uint8: the whole image (a support image, or the reference image)
    mask: np.ndarray | None = None  # (h, w) bool, cropped with object_rgb; references only
    object_rgb: np.ndarray | None = None  # (h, w, 3) uint8: the object cut to its mask's bounding box
    sha256: str = ""  # of the file(s) it came from, or of its pixels when drawn

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "size": [int(self.image.shape[1]), int(self.image.shape[0])]}


def read_rgb(path: str | Path, field: str = "trigger.corruptencoder") -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(to_rgb(im))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"{field}: cannot read image {path}: {e}") from None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _folder(path: str, field: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{field}: folder not found: {path}")
    return p


def _sha(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def with_object(name: str, image: np.ndarray, mask: np.ndarray, sha: str, field: str) -> Part:
    if mask.shape != image.shape[:2]:
        raise ConfigError(f"{field}: {name}: mask is {mask.shape[1]}x{mask.shape[0]} px, image "
                          f"{image.shape[1]}x{image.shape[0]} px")
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(ys):
        raise ConfigError(f"{field}: {name}: the mask marks no object pixel")
    crop = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    return Part(name, image, mask[crop].copy(), image[crop].copy(), sha)


def load_references(path: str, n: int, field: str) -> list[Part]:
    """The first `n` reference objects of a folder, by name."""
    root = _folder(path, field)
    found: list[Part] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = [p for p in _images(sub) if p.stem.lower() not in ("label", "mask")]
        masks = [p for p in _images(sub) if p.stem.lower() in ("label", "mask")]
        if len(imgs) != 1 or len(masks) != 1:
            raise ConfigError(f"{field}: {sub} must hold one image and one label.png (or mask.png)")
        try:
            with Image.open(masks[0]) as m:
                mask = np.asarray(m.convert("RGB")).any(-1)
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"{field}: cannot read mask {masks[0]}: {e}") from None
        found.append(with_object(sub.name, read_rgb(imgs[0], field), mask, _sha(imgs[0], masks[0]), field))
    for p in _images(root):
        try:
            with Image.open(p) as im:
                im.load()
                if im.mode not in ("RGBA", "LA", "PA") and not (im.mode == "P" and "transparency" in im.info):
                    raise ConfigError(f"{field}: {p} has no alpha channel; a cut-out needs one (or use "
                                      "<name>/img.png + <name>/label.png)")
                rgba = np.asarray(im.convert("RGBA"))
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"{field}: cannot read reference {p}: {e}") from None
        found.append(with_object(p.name, rgba[..., :3].copy(), rgba[..., 3] >= 128, _sha(p), field))
    found.sort(key=lambda r: r.name)
    if len(found) < n:
        raise ConfigError(f"{field}: {path} holds {len(found)} reference objects; "
                          f"trigger.corruptencoder.num_references asks for {n}")
    return found[:n]


def load_supports(path: str, field: str) -> list[Part]:
    files = _images(_folder(path, field))
    if not files:
        raise ConfigError(f"{field}: no images in {path}")
    return [Part(p.name, read_rgb(p, field), sha256=_sha(p)) for p in files]


def background_files(path: str, field: str) -> list[tuple[str, str]]:
    """(name, path) of every image in the folder, by name; read one by one while composing."""
    files = _images(_folder(path, field))
    if not files:
        raise ConfigError(f"{field}: no images in {path}")
    return [(p.name, str(p)) for p in files]


def folder_digest(files: list[tuple[str, str]]) -> str:
    """sha256 over every file's name and content hash: a changed background folder changes it."""
    h = hashlib.sha256()
    for name, path in files:
        h.update(f"{name}\t{_sha(Path(path))}\n".encode())
    return h.hexdigest()


def synthetic_parts(spec, target: int) -> dict[str, list[Part]]:
    """Reference objects and support images of the target class drawn by the synthetic generator: fresh
    draws, never images of the dataset (support renders take indices past the training set's)."""
    s, c = spec.source.synthetic, spec.trigger.corruptencoder
    size = min(s.width, s.height)
    refs = []
    for k in range(c.num_references):
        obj, mask = synthetic.cutout(s.seed, k, target, s.num_classes, size, tuple(s.object_size), s.hue_spread,
                                     s.shared_hues, s.subtypes)
        side = max(size, *obj.shape[:2])
        # the whole reference image (what a support poison shows): the object in a scene
        scene = synthetic.backdrop(s.seed, SCENE_INDEX + k, side, side, s.background_saturation, s.distractors)
        y, x = (side - obj.shape[0]) // 2, (side - obj.shape[1]) // 2
        region = scene[y:y + obj.shape[0], x:x + obj.shape[1]]
        region[mask] = obj[mask]
        h = hashlib.sha256(obj.tobytes() + mask.tobytes()).hexdigest()
        refs.append(Part(f"synthetic/object/{k}", scene, mask, obj, h))
    first = s.train_per_class * s.num_classes
    supports = []
    for k in range(c.num_support):
        img = synthetic.render(s.seed, "train", first + k, target, s.num_classes, s.width, s.height, s.size_jitter,
                               s.background_saturation, tuple(s.object_size), s.distractors, s.hue_spread,
                               s.shared_hues, s.subtypes)
        supports.append(Part(f"synthetic/train/{first + k:07d}", img, sha256=hashlib.sha256(img.tobytes()).hexdigest()))
    return {"references": refs, "supports": supports}
