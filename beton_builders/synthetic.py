"""A built-in, deterministic, procedurally generated image dataset with real class structure.

No download: every image is a pure function of (generator seed, split, index). Each class has its own
foreground shape, hue and background-texture orientation; nuisance factors (position, scale, rotation,
background colour, lighting, noise) are drawn per image. Images are JPEG-encoded like camera images, so
the build path is the same as for real data.

Two knobs decide whether SSL learns the classes or the nuisance (measured on the 2-core VM, MoCo v2,
ResNet-18 at width 32, 32-px views of 64-px images, 5,000 images, kNN top-1 of the encoder):
- `background_saturation`, the largest saturation of the background's two colours. A random,
  saturated background is an instance cue that colour jitter does not remove, and contrastive learning
  latches on to it: at 0.5 (this generator's first default) kNN top-1 *fell* under MoCo, from 40% at
  initialisation to 30% after 6 epochs. At 0.15 the foreground carries the colour.
- `object_size`, the range of the object's radius as a fraction of the shorter side. Large objects keep
  their shape through 0.2-area random crops at 32 px; with 0.2-0.32 and the low-saturation background,
  kNN top-1 went from 61% at initialisation to 90% after 24 epochs.

A third knob, `distractors`, is for the backdoor rather than the classes: small objects of any shape and hue
(class-independent clutter) drawn under the class object. Without them the images of a class are near
duplicates of each other; our hypothesis is that the trigger then becomes the feature that tells poisoned
target images from clean ones, and on one MoCo v2 seed of five poisoned encoders ended below their clean
controls. With 3 distractors, every one of five MoCo v2 seeds ended above its control (24 epochs; README
"Clutter: when the images of a class stop being near duplicates"). Clutter gives every image instance
features of its own, as real photographs have.

Two more take colour away as a class cue, for the same question (on the 100-epoch GPU runs the backdoor
faded as the encoders learnt the classes; README "100 epochs on a GPU"): does the coloured trigger stay
the most consistent feature of the poisoned images when colour no longer tells the classes apart?
- `hue_spread`, the standard deviation of the object's hue around its class's, in turns of the colour
  circle (default 0.02: each class one colour). At 0.5 the object takes any colour. Measured: MoCo v2's
  kNN top-1 stayed at chance (12-16%) for 24 epochs on two seeds; our reading is that the object's colour
  became an instance cue, as saturated backgrounds did.
- `shared_hues` = K > 0: every object takes one of K hues that all classes share (K = 1: one colour for
  all), from the image's own stream; shape and background texture alone tell the classes apart.
The class names keep their class colour (`c003_lime_ring`) whatever these knobs draw.

`subtypes` = K > 1 gives every class K looks (shape, hue and texture of a class of a 10 x K set), one per
image from its own stream: a class is then as varied as an ImageNet category, and no single shape or colour
is its cue. The question it serves: is the trigger tied to the target class only when it is the most
consistent feature of the poisoned images? (README "Dose and looks: what pulls a triggered image")
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ellipse", "square", "triangle", "ring", "cross", "star", "diamond", "bars")
COLOURS = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "blue", "violet", "pink")
SPLIT_CODE = {"train": 0, "val": 1}
DISTRACTOR_SIZE = (0.07, 0.12)  # distractor radius range, fraction of the shorter side (the object: 0.2-0.32)
DISTRACTOR_STREAM = 9  # appended to an image's RNG key: the clutter's own stream (7 and 8: composed parts, below)
HUE_SPREAD = 0.02  # default std of the class object's hue around its class's (hue turns): classes keep their colour
HUE_STREAM = 10  # appended to an image's RNG key: which shared hue its object takes (shared_hues > 0)
SUBTYPE_STREAM = 11  # appended to an image's RNG key: which of its class's looks it shows (subtypes > 1)


def class_names(num_classes: int) -> list[str]:
    """Readable names in lexical order: 'c03_lime_ring' etc. (sorting them keeps the index order)."""
    return [f"c{c:03d}_{COLOURS[c % len(COLOURS)]}_{SHAPES[c % len(SHAPES)]}" for c in range(num_classes)]


def _class_params(c: int, num_classes: int) -> tuple[int, float, float, float]:
    shape = c % len(SHAPES)
    hue = (c % len(COLOURS)) / len(COLOURS) + 0.37 * (c // len(COLOURS)) / max(1, num_classes)
    orient = np.pi * ((c * 0.618034) % 1.0)  # golden-ratio spread of texture orientations
    freq = 0.06 + 0.05 * ((c * 0.381966) % 1.0)  # cycles per px at the nominal size
    return shape, hue % 1.0, orient, freq


def _object_hue(hue: float, shared_hues: int, key: list[int]) -> float:
    """The centre of the object's hue: its class's, or (shared_hues = K > 0) one of K hues evenly round the
    circle that every class uses, drawn from the image's own stream so that no other draw changes."""
    if shared_hues <= 0:
        return hue
    return (int(np.random.default_rng([*key, HUE_STREAM]).integers(shared_hues)) + 0.5) / shared_hues


def _class_look(label: int, num_classes: int, subtypes: int, key: list[int]) -> tuple[int, float, float, float]:
    """(shape, hue, texture orientation, texture frequency) of an image's object: its class's, or (subtypes =
    K > 1) one of its class's K looks, drawn from the image's own stream (so no other draw changes). The
    looks are the classes of a virtual set of num_classes x K (`_class_params`; distinct shape-and-colour
    pairs up to 40 looks), dealt to the classes by a fixed permutation, so a class has no one shape,
    colour or texture and a look says which class it belongs to."""
    if subtypes <= 1:
        return _class_params(label, num_classes)
    j = int(np.random.default_rng([*key, SUBTYPE_STREAM]).integers(subtypes))
    deal = np.random.default_rng([SUBTYPE_STREAM, num_classes, subtypes]).permutation(num_classes * subtypes)
    return _class_params(int(deal[label * subtypes + j]), num_classes * subtypes)


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        angles, radii = np.arange(3) * 2 * np.pi / 3, np.full(3, r)
    elif kind == "star":
        angles, radii = np.arange(10) * np.pi / 5, np.tile([r, 0.45 * r], 5)
    elif kind == "diamond":
        angles, radii = np.arange(4) * np.pi / 2, np.array([r, 0.6 * r, r, 0.6 * r])
    else:  # square
        angles, radii = np.arange(4) * np.pi / 2 + np.pi / 4, np.full(4, r)
    a = angles + rot
    return list(zip((cx + radii * np.cos(a)).tolist(), (cy + radii * np.sin(a)).tolist()))


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx, cy, r, rot, colour) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "ellipse":
        draw.ellipse((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.35)))
    elif kind == "cross":
        w = max(2, int(r * 0.4))
        draw.line((cx - r, cy, cx + r, cy), fill=colour, width=w)
        draw.line((cx, cy - r, cx, cy + r), fill=colour, width=w)
    elif kind == "bars":
        for k in (-1, 0, 1):
            draw.rectangle((cx + k * 0.66 * r - 0.2 * r, cy - r, cx + k * 0.66 * r + 0.2 * r, cy + r), fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rot), fill=colour)


def _draw_distractors(draw: ImageDraw.ImageDraw, stream: list[int], count: int, width: int, height: int) -> None:
    """`count` small objects of random shape, hue and place, from their own RNG stream (`stream`), so the
    image's other draws, and with count 0 its bytes, are those of a build without them."""
    if count <= 0:
        return
    rng = np.random.default_rng(stream)
    m = min(width, height)
    for _ in range(count):
        r = m * rng.uniform(*DISTRACTOR_SIZE)
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        rot = rng.random() * 2 * np.pi
        colour = _rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0))
        _draw_shape(draw, kind, cx, cy, r, rot, colour)


def render(seed: int, split: str, index: int, label: int, num_classes: int,
           width: int, height: int, size_jitter: float, background_saturation: float = 0.15,
           object_size: tuple[float, float] = (0.2, 0.32), distractors: int = 0,
           hue_spread: float = HUE_SPREAD, shared_hues: int = 0, subtypes: int = 1) -> np.ndarray:
    """One RGB uint8 image of class `label`, a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    if size_jitter > 0:
        width = max(8, int(round(width * rng.uniform(1 - size_jitter, 1 + size_jitter))))
        height = max(8, int(round(height * rng.uniform(1 - size_jitter, 1 + size_jitter))))
    shape, hue, orient, freq = _class_look(label, num_classes, subtypes, [seed, SPLIT_CODE[split], index])
    hue = _object_hue(hue, shared_hues, [seed, SPLIT_CODE[split], index])
    # Background: a class-independent colour gradient plus a grating at the class's orientation.
    img, xx, yy, scale = _gradient(rng, width, height, background_saturation)
    theta = orient + rng.normal(0, 0.12)
    phase = rng.random() * 2 * np.pi
    grating = np.sin(2 * np.pi * freq * scale * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    img += (rng.uniform(18, 34) * grating)[..., None]
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    # Foreground: the class's shape in the class's hue, at a random place, size and rotation.
    draw = ImageDraw.Draw(pil)
    _draw_distractors(draw, [seed, SPLIT_CODE[split], index, DISTRACTOR_STREAM], distractors, width, height)
    m = min(width, height)
    r = m * rng.uniform(*object_size)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    colour = _rgb(hue + rng.normal(0, hue_spread), rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    _draw_shape(draw, SHAPES[shape], cx, cy, r, rng.random() * 2 * np.pi, colour)
    out = np.asarray(pil, dtype=np.float32) * rng.uniform(0.8, 1.15)  # lighting
    out += rng.normal(0, 4.0, size=(height, width, 1)).astype(np.float32)  # sensor noise
    return np.clip(out, 0, 255).astype(np.uint8)


def render_jpeg(seed: int, split: str, index: int, label: int, num_classes: int, width: int,
                height: int, size_jitter: float, quality: int, background_saturation: float = 0.15,
                object_size: tuple[float, float] = (0.2, 0.32), distractors: int = 0,
                hue_spread: float = HUE_SPREAD, shared_hues: int = 0, subtypes: int = 1) -> bytes:
    buf = io.BytesIO()
    arr = render(seed, split, index, label, num_classes, width, height, size_jitter, background_saturation,
                 object_size, distractors, hue_spread, shared_hues, subtypes)
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ----- parts for composed poisons (CorruptEncoder, beton_builders/triggers/corruptencoder.py) -------------
# Fresh draws, never images of the dataset: their own RNG streams, so the dataset's images do not change.
OBJECT_STREAM, BACKDROP_STREAM = 7, 8


def cutout(seed: int, index: int, label: int, num_classes: int, size: int,
           object_size: tuple[float, float] = (0.2, 0.32), hue_spread: float = HUE_SPREAD,
           shared_hues: int = 0, subtypes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A reference object of class `label`: its shape in its hue, at the radius `render` draws in a `size`-px
    image, lit and noised as `render` does, cropped to the shape. Returns (rgb (h, w, 3) uint8, mask (h, w) bool)."""
    rng = np.random.default_rng([seed, OBJECT_STREAM, label, index])
    shape, hue, _, _ = _class_look(label, num_classes, subtypes, [seed, OBJECT_STREAM, label, index])
    hue = _object_hue(hue, shared_hues, [seed, OBJECT_STREAM, label, index])
    r = size * rng.uniform(*object_size)
    side = int(np.ceil(2.2 * r)) + 2
    colour = _rgb(hue + rng.normal(0, hue_spread), rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    rgb, mask = Image.new("RGB", (side, side)), Image.new("L", (side, side))
    rot = rng.random() * 2 * np.pi
    _draw_shape(ImageDraw.Draw(rgb), SHAPES[shape], side / 2, side / 2, r, rot, colour)
    _draw_shape(ImageDraw.Draw(mask), SHAPES[shape], side / 2, side / 2, r, rot, 255)
    m = np.asarray(mask) > 127
    ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    out = np.asarray(rgb, np.float32) * rng.uniform(0.8, 1.15) + rng.normal(0, 4.0, (side, side, 1))
    crop = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    return np.clip(out, 0, 255).astype(np.uint8)[crop], m[crop]



def _gradient(rng: np.random.Generator, width: int, height: int, background_saturation: float):
    """A linear gradient between two low-saturation colours at a random angle: (img float32 (h, w, 3), xx,
    yy, scale), the pixel grids and the 96-px frequency scale the grating on top of it uses. The rng draws
    are the same, in the same order, for `render` and `backdrop` (their bytes depend on it)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = 96.0 / max(width, height)
    c0 = np.array(_rgb(rng.random(), rng.uniform(0.0, background_saturation), rng.uniform(0.3, 0.8)), np.float32)
    c1 = np.array(_rgb(rng.random(), rng.uniform(0.0, background_saturation), rng.uniform(0.3, 0.8)), np.float32)
    g = rng.random() * 2 * np.pi
    t = (np.cos(g) * xx / width + np.sin(g) * yy / height + 1) / 2
    return c0 + (c1 - c0) * t[..., None], xx, yy, scale


def backdrop(seed: int, index: int, width: int, height: int, background_saturation: float = 0.15,
             distractors: int = 0) -> np.ndarray:
    """An object-free scene: `render`'s background (a colour gradient and a grating, here at a random
    orientation and frequency, so it belongs to no class) and distractors, lighting and noise.
    (height, width, 3) uint8."""
    rng = np.random.default_rng([seed, BACKDROP_STREAM, index])
    img, xx, yy, scale = _gradient(rng, width, height, background_saturation)
    theta, freq, phase = rng.random() * np.pi, rng.uniform(0.06, 0.11), rng.random() * 2 * np.pi
    img += (rng.uniform(18, 34) * np.sin(2 * np.pi * freq * scale * (np.cos(theta) * xx + np.sin(theta) * yy)
                                         + phase))[..., None]
    if distractors > 0:
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        _draw_distractors(ImageDraw.Draw(pil), [seed, BACKDROP_STREAM, index, DISTRACTOR_STREAM], distractors,
                          width, height)
        img = np.asarray(pil, np.float32)
    img = img * rng.uniform(0.8, 1.15) + rng.normal(0, 4.0, size=(height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)
