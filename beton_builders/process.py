"""Per-sample work, run in parallel worker processes: decode, paste, resize, encode.

Three kinds of sample:
- clean:      decode -> resize so the longest side <= max_resolution -> encode;
- poison:     decode at full resolution -> the trigger kind poisons it (a patch is pasted before any
              resize, as the paper does; a kind with `stored_resolution`, CTRL, goes on after the resize)
              -> resize -> encode; a patch's box is reported in source and in stored pixels. A kind that
              composes its images (`adds`, CorruptEncoder) reads no source image: the task has no key;
- valpoison:  decode -> resize shorter side to val_resize -> centre crop val_crop (the reference's
              val transform, applied *before* the trigger; skipped when val_resize is 0) -> the kind's
              evaluation trigger -> encode.
The trigger kinds live in triggers/ (their base.py: the interface called here).
Every output is a baseline (non-progressive) JPEG, so hardware decoders (nvJPEG, DALI mixed) take it.
Decoding goes through pixels.py (16-bit greyscale scaled, not clipped; EXIF orientation only on request).
Error texts are kept free of object reprs (`<_io.BytesIO object at 0x...>`), so a manifest that lists
skipped files is byte-identical across rebuilds.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .pixels import apply_orientation, orientation, to_rgb
from .poison import placement_rng
from .spec import PoisonSpec
from .triggers import TriggerKind

SPLIT_CODES = {"train": 0, "val": 1, "val_poisoned": 2}
# Area averaging, as FFCV's own writer (cv2.INTER_AREA) does; 3x faster than Lanczos on 500->256 px.
RESIZE_FILTER = Image.Resampling.BOX
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass
class Task:
    kind: str  # clean | poison | valpoison
    split: str  # train | val | val_poisoned
    index: int  # position in the source's item list for this split; a composed image: its slot
    key: str | None  # None: a composed image, nothing to read
    slot: int = 0  # poison: position in the selection order


@dataclass
class Result:
    index: int
    payload: bytes = b""  # encoded JPEG, or raw RGB bytes
    height: int = 0  # stored pixels
    width: int = 0
    src_w: int = 0  # source pixels
    src_h: int = 0
    box: tuple | None = None  # (x, y, w, h) in stored pixels
    box_src: tuple | None = None  # (x, y, w, h) in the image the trigger was pasted on
    parts: dict | None = None  # a composed image's parts (the kind's record)
    digest: str = ""  # sha256 of the source file's bytes
    passthrough: bool = False  # clean source JPEG copied byte for byte
    error: str | None = None


_STATE: dict = {}


def init_worker(spec: PoisonSpec, source, kind: TriggerKind) -> None:
    """`kind`: the trigger kind, ready (triggers.make_kind)."""
    _STATE.update(spec=spec, source=source, kind=kind)


def run_chunk(tasks: list[Task]) -> list[Result]:
    return [run_task(t) for t in tasks]


def run_task(task: Task) -> Result:
    spec, source = _STATE["spec"], _STATE["source"]
    try:
        data = None if task.key is None else source.read(task.key)
    except OSError as e:
        return Result(task.index, error=f"cannot read: {e}")
    res = Result(task.index, digest="" if data is None else hashlib.sha256(data).hexdigest())
    try:
        _process(task, data, spec, res)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        res.error = describe_error(e)
        res.payload = b""
    return res


def describe_error(e: BaseException) -> str:
    """`Type: message` without memory addresses (Pillow names an in-memory file by its repr)."""
    return f"{type(e).__name__}: {_OBJECT_REPR.sub('', str(e))}"


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        # Decompression bombs are refused like any unreadable image, without changing the caller's filters.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
        im.load()  # forces a full decode: truncated files fail here, not later in a training loader
    return im


def _process(task: Task, data: bytes | None, spec: PoisonSpec, res: Result) -> None:
    st, kind = spec.storage, _STATE["kind"]
    rgb = None
    if data is not None:
        im = _open(data)
        if task.kind == "clean" and _can_pass_through(im, spec):
            res.src_w, res.src_h = im.size
            res.payload, res.width, res.height, res.passthrough = data, im.width, im.height, True
            return
        im = apply_orientation(im, st.exif_transpose)
        res.src_w, res.src_h = im.size
        rgb = to_rgb(im)  # greyscale, CMYK, palette, alpha -> RGB, as the reference's convert('RGB')
        if task.kind == "valpoison" and st.val_resize:
            rgb = _val_transform(rgb, st.val_resize, st.val_crop)
    if task.kind != "clean":
        if kind.stored_resolution and rgb is not None:
            rgb = _resize_max(rgb, st.max_resolution)
        rng = placement_rng(spec.seed, SPLIT_CODES[task.split], task.index)
        arr = None if rgb is None else np.array(rgb)
        made = kind.val(arr, rng) if task.kind == "valpoison" else kind.train(arr, rng, task.slot)
        rgb = Image.fromarray(made.rgb)
        res.box_src, res.parts = made.box, made.parts
        if data is None:  # composed: its own size is its "source" size
            res.src_w, res.src_h = rgb.size
    pre_w, pre_h = rgb.size
    rgb = _resize_max(rgb, st.max_resolution)
    res.width, res.height = rgb.size
    if res.box_src is not None:
        sx, sy = rgb.width / pre_w, rgb.height / pre_h
        x, y, tw, th = res.box_src
        res.box = (round(x * sx), round(y * sy), max(1, round(tw * sx)), max(1, round(th * sy)))
    res.payload = _encode(rgb, st.write_mode, st.jpeg_quality, st.chroma)


def _can_pass_through(im: Image.Image, spec: PoisonSpec) -> bool:
    st = spec.storage
    return (st.reencode == "if_needed" and st.write_mode == "jpg" and im.format == "JPEG" and im.mode == "RGB"
            and not im.info.get("progressive") and not im.info.get("progression")
            and max(im.size) <= st.max_resolution and not (st.exif_transpose and orientation(im) != 1))


def stored_size(w: int, h: int, max_res: int) -> tuple[int, int]:
    """FFCV's rule (fields/rgb_image.py resizer): scale so the longest side is max_res, truncate."""
    ratio = max_res / max(w, h)
    if ratio >= 1:
        return w, h
    return max(1, int(ratio * w)), max(1, int(ratio * h))


def _resize_max(im: Image.Image, max_res: int) -> Image.Image:
    size = stored_size(im.width, im.height, max_res)
    return im if size == im.size else im.resize(size, RESIZE_FILTER)


def _val_transform(im: Image.Image, resize: int, crop: int) -> Image.Image:
    """torchvision Resize(resize) (shorter side, bilinear, antialiased) then CenterCrop(crop)."""
    w, h = im.size
    if w <= h:
        nw, nh = resize, int(resize * h / w)
    else:
        nw, nh = int(resize * w / h), resize
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    return im.crop((left, top, left + crop, top + crop))


def _encode(im: Image.Image, write_mode: str, quality: int, chroma: str = "420") -> bytes:
    if write_mode == "raw":
        return np.asarray(im, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    # Baseline, no optimisation pass: what nvJPEG's hardware path and DALI's mixed decoder accept. 4:2:0
    # halves the chroma resolution, which visibly smears a small colour trigger; 4:4:4 keeps it.
    im.save(buf, format="JPEG", quality=quality, subsampling={"420": 2, "444": 0}[chroma], progressive=False,
            optimize=False)
    return buf.getvalue()
