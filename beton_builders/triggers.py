"""Trigger patches: an image file, an HTBA-style random colour grid, or rendered text.

A trigger is an RGB uint8 array (h, w, 3) plus an opacity mask (h, w) float32 in [0, 1] (the file's
alpha channel times `trigger.alpha`). Its width is `trigger.width` px and its height keeps the source
aspect, as the reference code does (`int(h * 50 / w)`, generate_poison.py).

Text is drawn as the reference's text mode draws it (generate_poison.py, `add_watermark(text=True)`):
black glyphs of FreeMonoBold at 30 px with fill alpha 128, anchored at their middle ('mm'), composited
over the image; the trigger is that layer cropped to the text's box, and `anchor` is where the anchor
point lies inside it, so placement can put the anchor where the reference puts it. The reference
ships fonts/FreeMonoBold.ttf (GNU FreeFont); fastbd looks for the same font installed by the system
(Debian/Ubuntu: fonts-freefont-ttf, which scripts/setup.sh installs), then DejaVu Sans Mono Bold, then
Pillow's built-in font; `trigger.font` names a file instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .config import ConfigError
from .pixels import to_rgb
from .spec import TriggerSpec

# Where the reference's font is installed by common distributions, then a close stand-in (monospace, bold).
FONT_SEARCH = (
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",  # Debian/Ubuntu fonts-freefont-ttf
    "/usr/share/fonts/gnu-free/FreeMonoBold.otf",  # Fedora gnu-free-mono-fonts
    "/usr/share/fonts/TTF/FreeMonoBold.ttf",  # Arch gnu-free-fonts
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",  # stand-in
    "/usr/share/fonts/TTF/DejaVuSansMono-Bold.ttf",
)
TEXT_FILL_ALPHA_REFERENCE = 128  # generate_poison.py draws text with fill=(0, 0, 0, 128)


@dataclass
class Trigger:
    rgb: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) float32 in [0, 1]; 1 = trigger pixel fully replaces the image pixel
    anchor: tuple[float, float] | None = None  # px inside the box placed at a "centre"; None: (w / 2, h / 2)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]  # (w, h)

    @property
    def opaque(self) -> bool:
        return bool((self.mask == 1.0).all())


def htba_pattern(seed: int, grid: int) -> Image.Image:
    """A seeded grid of binary colours (each channel 0 or 255), as in the Hidden-Trigger-Backdoor patches."""
    rng = np.random.default_rng([seed, grid])
    cells = (rng.integers(0, 2, size=(grid, grid, 3)) * 255).astype(np.uint8)
    return Image.fromarray(cells, "RGB")


def find_font(path: str | None) -> str | None:
    """The font file a text trigger uses: `path`, else the first of FONT_SEARCH present, else None (Pillow's own)."""
    if path:
        return path
    return next((p for p in FONT_SEARCH if Path(p).is_file()), None)


def load_font(path: str | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    found = find_font(path)
    try:
        return ImageFont.truetype(found, size) if found else ImageFont.load_default(size=size)
    except OSError as e:
        raise ConfigError(f"trigger.font: cannot load font {found}: {e}") from None


def text_trigger(spec: TriggerSpec, alpha: float) -> Trigger:
    """The reference's text layer, cropped to the text: RGBA (255, 255, 255, 0) with the text drawn in
    (0, 0, 0, round(255 * alpha)); its colour and alpha become the trigger's rgb and mask."""
    font = load_font(spec.font, spec.font_size)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), spec.text, font=font, anchor="mm")
    layer = Image.new("RGBA", (max(1, x1 - x0), max(1, y1 - y0)), (255, 255, 255, 0))
    ImageDraw.Draw(layer).text((-x0, -y0), spec.text, font=font, fill=(0, 0, 0, round(255 * alpha)), anchor="mm")
    arr = np.asarray(layer)
    return Trigger(arr[..., :3].copy(), arr[..., 3].astype(np.float32) / 255.0, anchor=(float(-x0), float(-y0)))


def _load_image_trigger(path: str) -> tuple[Image.Image, np.ndarray | None]:
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            rgba = im.convert("RGBA") if has_alpha else None
            rgb = to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"trigger.path: cannot read trigger image {path}: {e}") from None
    alpha = None if rgba is None else np.asarray(rgba)[..., 3]
    return rgb, alpha


def make_trigger(spec: TriggerSpec, width: int | None = None, alpha: float | None = None) -> Trigger:
    """Build the trigger at `width` px (default `spec.width`; text: `spec.font_size`), aspect kept, at
    opacity `alpha` (default `spec.alpha`)."""
    width = width or spec.width
    alpha = spec.alpha if alpha is None else alpha
    alpha_img = None
    if spec.kind == "text":
        return text_trigger(spec, alpha)
    if spec.kind == "htba":
        base = htba_pattern(spec.seed, spec.grid)
        smooth = Image.Resampling.BILINEAR  # "upsampled smoothly": bilinear between the grid's cells
    else:
        base, alpha_img = _load_image_trigger(spec.path)
        smooth = Image.Resampling.BICUBIC  # what the reference's plain img.resize uses (Pillow >= 7)
    w0, h0 = base.size
    height = max(1, int(h0 * width / w0))
    if alpha_img is None:
        rgb = np.asarray(base.resize((width, height), smooth), dtype=np.uint8).copy()
        mask = np.ones((height, width), np.float32)
    else:
        # Resized as one RGBA image, as the reference does (Pillow premultiplies alpha while resampling,
        # so the colour of transparent pixels does not bleed into the trigger's edges).
        rgba = Image.fromarray(np.dstack([np.asarray(base), alpha_img]), "RGBA").resize((width, height), smooth)
        arr = np.asarray(rgba)
        rgb, mask = arr[..., :3].copy(), arr[..., 3].astype(np.float32) / 255.0
    return Trigger(rgb, mask * np.float32(alpha))


def make_triggers(spec: TriggerSpec) -> dict[str, Trigger]:
    """{"train": ..., "val": ...}: the same pattern, at `alpha` and at `val_alpha` (if set)."""
    train = make_trigger(spec)
    same = spec.val_alpha is None or spec.val_alpha == spec.alpha
    return {"train": train, "val": train if same else make_trigger(spec, alpha=spec.val_alpha)}
