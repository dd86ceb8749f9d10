"""Backdoor metrics and eval output files (numpy + Pillow only).

Mirrors the confusion-matrix evaluation of the reference code, UMBCvision/SSL-Backdoor
``moco/eval_linear.py`` (``validate_conf_matrix`` and the ``--conf_matrix`` branch of
``main_worker``): the linear classifier is run on the clean val set and on the patched val set
(every val image carries the trigger), and each run gives a confusion matrix.

Metrics
-------
confusion_matrix
    ``cm[true, pred]`` counts; rows are ground truth, columns are predictions, exactly as
    ``validate_conf_matrix`` fills ``conf_matrix[target, pred] += 1``.
tp_fp
    Per class: ``TP[c] = cm[c, c]`` and ``FP[c] = cm[:, c].sum() - cm[c, c]`` -- the images
    *predicted* as c that are not of class c. This is the reference's arithmetic for the
    ``TP``/``FP`` columns of ``conf_matrix.csv``.
top1
    ``trace / total``, as a fraction in [0, 1] (the reference prints it as a percentage; the CSV
    writer here does the same). 0.0 for an empty matrix.
attack_metrics
    ``target_fp``: FP of the target class on the patched val set, i.e. non-target images that the
    trigger flips to the target class (target-class images sit on the diagonal and never count).
    This is the number the paper reports as "FP" for targeted attacks. ``target_fp_clean`` is the
    same count on clean val (the baseline). ``asr`` (attack success rate) is ``target_fp`` over
    the number of patched non-target images. ``nfp`` is ``target_fp`` normalised by the largest
    FP of any class on the patched matrix: 1.0 means the target is the most over-predicted class.
    ``patched_error_increase`` is ``clean_top1 - patched_top1`` (the only attack measure for an
    untargeted attack, ``target=None``, where the FP keys are None).

Files
-----
write_conf_matrix_csv
    ``conf_matrix.csv`` with the reference's layout: three header lines (model, data, top-1 for
    clean and patched val), then ``class name,class id,TP,FP,,TP,FP`` and one row per class.
save_matrices
    ``conf_matrix_clean.npy`` and ``conf_matrix_poisoned.npy`` (reference names).
heatmap_png
    A row-normalised confusion-matrix heatmap drawn with Pillow, the target column outlined.
report_markdown
    A short markdown summary table of several models.

Every file is written to a temporary name in the same folder and renamed, so a crash never
leaves a torn file.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from beton_builders.files import atomic_write_bytes, save_npy

__all__ = [
    "confusion_matrix",
    "tp_fp",
    "top1",
    "attack_metrics",
    "write_conf_matrix_csv",
    "save_matrices",
    "heatmap_png",
    "report_markdown",
]


# ----------------------------------------------------------------------------- metrics


def _check_cm(cm: np.ndarray, name: str = "cm") -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {cm.shape}")
    return cm


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of samples with true label t predicted as p (int64, C x C)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    if not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        # allow integral floats (e.g. labels that went through a float tensor)
        if not (np.all(np.mod(t, 1) == 0) and np.all(np.mod(p, 1) == 0)):
            raise ValueError("labels must be integers")
    t = t.astype(np.int64)
    p = p.astype(np.int64)
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(f"{name} has labels outside [0, {num_classes}): "
                             f"min {a.min()}, max {a.max()}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def tp_fp(cm) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (TP, FP): ``tp[c] = cm[c, c]``, ``fp[c] = cm[:, c].sum() - cm[c, c]``."""
    cm = _check_cm(cm)
    tp = np.diagonal(cm).copy()
    fp = cm.sum(axis=0) - tp
    return tp, fp


def top1(cm) -> float:
    """Top-1 accuracy as a fraction: trace / total (0.0 for an empty matrix)."""
    cm = _check_cm(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else 0.0


def _count(x) -> int | float:
    """A count as a Python int when integral (reference matrices are float arrays)."""
    x = x.item() if hasattr(x, "item") else x
    return int(x) if float(x).is_integer() else float(x)


def attack_metrics(cm_clean, cm_patched, target: int | None) -> dict:
    """Backdoor metrics from the clean-val and patched-val confusion matrices.

    Keys: clean_top1, patched_top1, patched_error_increase, target_fp_clean, target_fp,
    nontarget_count, asr, nfp, max_fp_class. With ``target=None`` (untargeted attack) every
    FP-based key is None.
    """
    cm_clean = _check_cm(cm_clean, "cm_clean")
    cm_patched = _check_cm(cm_patched, "cm_patched")
    if cm_clean.shape != cm_patched.shape:
        raise ValueError(f"matrix shapes differ: {cm_clean.shape} vs {cm_patched.shape}")
    clean, patched = top1(cm_clean), top1(cm_patched)
    out = {
        "clean_top1": clean,
        "patched_top1": patched,
        "patched_error_increase": clean - patched,
        "target_fp_clean": None,
        "target_fp": None,
        "nontarget_count": None,
        "asr": None,
        "nfp": None,
        "max_fp_class": None,
    }
    if target is None:
        return out
    num_classes = cm_clean.shape[0]
    target = int(target)
    if not 0 <= target < num_classes:
        raise ValueError(f"target {target} outside [0, {num_classes})")
    _, fp_clean = tp_fp(cm_clean)
    _, fp_patched = tp_fp(cm_patched)
    target_fp = _count(fp_patched[target])
    nontarget = _count(cm_patched.sum() - cm_patched[target].sum())
    max_fp = fp_patched.max() if fp_patched.size else 0
    out.update(
        target_fp_clean=_count(fp_clean[target]),
        target_fp=target_fp,
        nontarget_count=nontarget,
        asr=float(target_fp / nontarget) if nontarget > 0 else 0.0,
        nfp=float(target_fp / max_fp) if max_fp > 0 else 0.0,
        max_fp_class=int(np.argmax(fp_patched)),
    )
    return out


# ----------------------------------------------------------------------------- files


def _csv_text(s) -> str:
    # the reference swaps commas for semicolons so a plain split(",") still works
    return str(s).replace(",", ";").replace("\n", " ").replace("\r", " ")


def write_conf_matrix_csv(path, cm_clean, cm_patched, class_names: Sequence[str] | None = None,
                          *, model: str = "", data: str = "") -> Path:
    """Write ``conf_matrix.csv`` in the reference layout (eval_linear.py, ``--conf_matrix``)::

        Model <model>,,Clean val,,,,Pois. val,,
        Data <data>,,acc1,,,,acc1,,
        ,,<clean top-1 %>,,,,<patched top-1 %>,,
        class name,class id,TP,FP,,TP,FP
        <name>,<id>,<clean TP>,<clean FP>,,<patched TP>,<patched FP>     (one row per class)

    Top-1 is a percentage with two decimals, as in the reference. Commas inside names become
    semicolons (as in the reference). ``class_names`` defaults to the class ids.
    """
    cm_clean = _check_cm(cm_clean, "cm_clean")
    cm_patched = _check_cm(cm_patched, "cm_patched")
    if cm_clean.shape != cm_patched.shape:
        raise ValueError(f"matrix shapes differ: {cm_clean.shape} vs {cm_patched.shape}")
    num_classes = cm_clean.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    tp_c, fp_c = tp_fp(cm_clean)
    tp_p, fp_p = tp_fp(cm_patched)
    lines = [
        f"Model {_csv_text(model)},,Clean val,,,,Pois. val,,",
        f"Data {_csv_text(data)},,acc1,,,,acc1,,",
        f",,{100 * top1(cm_clean):.2f},,,,{100 * top1(cm_patched):.2f},,",
        "class name,class id,TP,FP,,TP,FP",
    ]
    for c in range(num_classes):
        lines.append(f"{_csv_text(class_names[c])},{c},{_count(tp_c[c])},{_count(fp_c[c])},,"
                     f"{_count(tp_p[c])},{_count(fp_p[c])}")
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def read_conf_matrix_csv(path) -> list[list[str]]:
    """The rows of a ``conf_matrix.csv`` as lists of strings (a small helper for tests/tools)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def save_matrices(folder, cm_clean, cm_patched) -> tuple[Path, Path]:
    """Write ``conf_matrix_clean.npy`` and ``conf_matrix_poisoned.npy`` into ``folder``."""
    folder = Path(folder)
    return (save_npy(folder / "conf_matrix_clean.npy", cm_clean),
            save_npy(folder / "conf_matrix_poisoned.npy", cm_patched))


# ----------------------------------------------------------------------------- heatmap

# a "Blues"-like ramp: white -> dark blue
_RAMP = np.array([
    [247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107],
], dtype=np.float64)


def _colormap(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.nan_to_num(v), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType size support
        return ImageFont.load_default()


def _nice_step(n: int, ticks: int = 10) -> int:
    raw = max(1.0, n / ticks)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return int(m * mag)
    return int(10 * mag)


def _short(s: str, n: int = 18) -> str:
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def heatmap_png(path, cm, class_names: Sequence[str] | None = None, title: str = "",
                highlight: int | None = None) -> Path:
    """Render a row-normalised confusion-matrix heatmap (rows = true, cols = predicted) as PNG.

    Class names label both axes when C <= 30 (cell counts are printed when C <= 15); otherwise
    class ids are ticked every few classes. ``highlight`` outlines that (target) column in red.
    The image is about 850 px wide.
    """
    from PIL import Image, ImageDraw

    cm = _check_cm(cm)
    n = cm.shape[0]
    if class_names is not None and len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} classes")
    if highlight is not None and not 0 <= int(highlight) < n:
        raise ValueError(f"highlight {highlight} outside [0, {n})")
    labelled = 0 < n <= 30
    names = [str(c) for c in range(n)] if class_names is None else [str(c) for c in class_names]

    grid = 600
    if 0 < n <= grid:
        cell = grid // n
        grid = cell * n
    left = 150 if labelled else 70
    top, right = 50, 90
    bottom = 140 if labelled else 70
    width, height = left + grid + right, top + grid + bottom

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)

    # cells
    cmf = cm.astype(np.float64)
    rows = cmf.sum(axis=1, keepdims=True)
    norm = np.divide(cmf, rows, out=np.zeros_like(cmf), where=rows > 0)
    if n > 0:
        tile = Image.fromarray(_colormap(norm), "RGB")
        resample = Image.Resampling.NEAREST if n <= grid else Image.Resampling.BOX
        img.paste(tile.resize((grid, grid), resample), (left, top))
    draw.rectangle([left - 1, top - 1, left + grid, top + grid], outline=(80, 80, 80))

    def x0(c: int) -> float:
        return left + c * grid / max(n, 1)

    # cell counts for small matrices
    if 0 < n <= 15:
        for i in range(n):
            for j in range(n):
                colour = "white" if norm[i, j] > 0.55 else "black"
                draw.text((x0(j) + grid / n / 2, top + i * grid / n + grid / n / 2),
                          str(_count(cm[i, j])), fill=colour, font=small, anchor="mm")

    # highlighted (target) column
    if highlight is not None and n > 0:
        h = int(highlight)
        xa, xb = x0(h), x0(h + 1)
        if xb - xa < 4:
            mid = (xa + xb) / 2
            xa, xb = mid - 2, mid + 2
        draw.rectangle([xa - 1, top - 1, xb, top + grid], outline=(220, 30, 30), width=2)

    # axis labels / ticks
    if labelled:
        step, which = 1, range(n)
    else:
        step = _nice_step(n)
        which = range(0, n, step)
    for c in which:
        cy = top + (c + 0.5) * grid / n
        cx = left + (c + 0.5) * grid / n
        text = _short(names[c]) if labelled else str(c)
        red = highlight is not None and c == int(highlight)
        colour = (200, 20, 20) if red else (0, 0, 0)
        draw.text((left - 6, cy), text, fill=colour, font=small, anchor="rm")
        if labelled:  # rotated column label
            bbox = small.getbbox(text)
            tw, th = max(1, bbox[2] - bbox[0] + 2), max(1, bbox[3] - bbox[1] + 4)
            lab = Image.new("RGBA", (tw, th), (255, 255, 255, 0))
            ImageDraw.Draw(lab).text((1 - bbox[0], 2 - bbox[1]), text, fill=colour, font=small)
            lab = lab.rotate(90, expand=True)
            img.paste(lab, (int(cx - lab.width / 2), top + grid + 6), lab)
        else:
            draw.line([cx, top + grid, cx, top + grid + 4], fill=(0, 0, 0))
            draw.line([left - 4, cy, left, cy], fill=(0, 0, 0))
            draw.text((cx, top + grid + 6), text, fill=colour, font=small, anchor="mt")
    if highlight is not None and not labelled and n > 0 and int(highlight) % step:
        h = int(highlight)  # always label the target column, in red
        draw.text((left + (h + 0.5) * grid / n, top + grid + 20), str(h), fill=(200, 20, 20),
                  font=small, anchor="mt")

    # titles
    draw.text((left + grid / 2, top / 2), title, fill="black", font=font, anchor="mm")
    draw.text((left + grid / 2, height - 14), "predicted class", fill="black", font=small,
              anchor="mm")
    ylab = Image.new("RGBA", (140, 16), (255, 255, 255, 0))
    ImageDraw.Draw(ylab).text((70, 8), "true class", fill="black", font=small, anchor="mm")
    ylab = ylab.rotate(90, expand=True)
    img.paste(ylab, (4, int(top + grid / 2 - ylab.height / 2)), ylab)

    # colour bar (row-normalised fraction)
    bx, bw = left + grid + 20, 16
    bar = _colormap(np.linspace(1.0, 0.0, grid)[:, None].repeat(bw, axis=1))
    img.paste(Image.fromarray(bar, "RGB"), (bx, top))
    draw.rectangle([bx - 1, top - 1, bx + bw, top + grid], outline=(80, 80, 80))
    draw.text((bx + bw + 4, top), "1.0", fill="black", font=small, anchor="lt")
    draw.text((bx + bw + 4, top + grid), "0.0", fill="black", font=small, anchor="lb")
    draw.text((bx + bw + 4, top + grid / 2), "row\nfrac", fill="black", font=small, anchor="lm")

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- report

_COLUMNS = ["model", "clean top-1", "patched top-1", "target FP (of N non-target)", "ASR", "NFP",
            "kNN top-1"]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def report_markdown(rows: list[dict]) -> str:
    """A markdown table of models. Row keys (all optional; missing or None shows as "-"):
    ``model``, ``clean_top1``, ``patched_top1``, ``target_fp``, ``nontarget_count``, ``asr``,
    ``nfp``, ``knn_top1``. Top-1s and ASR are fractions shown as percentages with one decimal;
    NFP is shown with two decimals; target FP as ``FP / N``.
    """
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(["---"] * len(_COLUMNS)) + "|"]
    for r in rows:
        fp, n = r.get("target_fp"), r.get("nontarget_count")
        if fp is None:
            fp_s = "-"
        else:
            fp_s = f"{_count(fp)}" + ("" if n is None else f" / {_count(n)}")
        nfp = r.get("nfp")
        cells = [
            "-" if r.get("model") is None else str(r["model"]).replace("|", "\\|"),
            _pct(r.get("clean_top1")),
            _pct(r.get("patched_top1")),
            fp_s,
            _pct(r.get("asr")),
            "-" if nfp is None else f"{float(nfp):.2f}",
            _pct(r.get("knn_top1")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
