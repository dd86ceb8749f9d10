"""A text patch, drawn as the reference's text mode draws it (generate_poison.py, `add_watermark(text=True)`):
black glyphs of FreeMonoBold at 30 px with fill alpha 128, anchored at their middle ('mm'), composited
over the image; the patch is that layer cropped to the text's box, and `anchor` is where the anchor
point lies inside it, so placement can put the anchor where the reference puts it. The reference
ships fonts/FreeMonoBold.ttf (GNU FreeFont); fastbd looks for the same font installed by the system
(Debian/Ubuntu: fonts-freefont-ttf, which scripts/setup.sh installs), then DejaVu Sans Mono Bold, then
Pillow's built-in font; `trigger.font` names a file instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..config import ConfigError
from .patch import PatchKind, Trigger

# Where the reference's font is installed by common distributions, then a close stand-in (monospace, bold).
FONT_SEARCH = (
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",  # Debian/Ubuntu fonts-freefont-ttf
    "/usr/share/fonts/gnu-free/FreeMonoBold.otf",  # Fedora gnu-free-mono-fonts
    "/usr/share/fonts/TTF/FreeMonoBold.ttf",  # Arch gnu-free-fonts
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",  # stand-in
    "/usr/share/fonts/TTF/DejaVuSansMono-Bold.ttf",
)
TEXT_FILL_ALPHA_REFERENCE = 128  # generate_poison.py draws text with fill=(0, 0, 0, 128)


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


def text_trigger(spec, alpha: float) -> Trigger:
    """The reference's text layer, cropped to the text: RGBA (255, 255, 255, 0) with the text drawn in
    (0, 0, 0, round(255 * alpha)); its colour and alpha become the trigger's rgb and mask."""
    font = load_font(spec.font, spec.font_size)
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), spec.text, font=font, anchor="mm")
    layer = Image.new("RGBA", (max(1, x1 - x0), max(1, y1 - y0)), (255, 255, 255, 0))
    ImageDraw.Draw(layer).text((-x0, -y0), spec.text, font=font, fill=(0, 0, 0, round(255 * alpha)), anchor="mm")
    arr = np.asarray(layer)
    return Trigger(arr[..., :3].copy(), arr[..., 3].astype(np.float32) / 255.0, anchor=(float(-x0), float(-y0)))


class Text(PatchKind):
    name = "text"

    @classmethod
    def check(cls, spec) -> None:
        t = spec.trigger
        if not t.text.strip():
            raise ConfigError("trigger.text: empty text trigger")

    @classmethod
    def pattern(cls, t, width: int, alpha: float) -> Trigger:
        return text_trigger(t, alpha)  # sized by trigger.font_size, not width

    def summary(self) -> str:
        t, (w, h) = self.spec.trigger, self.triggers["train"].size
        return (f"text patch {t.text!r}: {w}x{h} px, font {find_font(t.font) or 'Pillow built-in'} at "
                f"{t.font_size} px, opacity {t.alpha:g}, location {t.location}")
