"""Backdoor metrics and eval output files (numpy only).

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
    ``conf_matrix.csv`` exactly as the reference writes it: three header lines (model, data, top-1 for
    clean and patched val), then ``class name,class id,TP,FP,,TP,FP`` and one row per class, with the
    counts as floats (the reference's matrix is ``np.zeros``, so it writes ``12.0``).
read_class_names
    Human-readable names from a ``<wnid>\t<name>`` file, the reference's ``imagenet_metadata.txt``.
save_matrices
    ``conf_matrix_clean.npy`` and ``conf_matrix_poisoned.npy`` (reference names).
The heatmap of a matrix and the markdown table of several models are drawn in fastbd/plots.py and fastbd/report.py, the one
home of tables and plots.

Every file is written to a temporary name in the same folder and renamed, so a crash never
leaves a torn file.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from beton_builders.files import atomic_write_bytes, save_npy

__all__ = [
    "confusion_matrix",
    "tp_fp",
    "top1",
    "attack_metrics",
    "write_conf_matrix_csv",
    "read_class_names",
    "save_matrices",
]


# ----------------------------------------------------------------------------- metrics


def check_cm(cm: np.ndarray, name: str = "cm") -> np.ndarray:
    """`cm` as an array, checked to be a square 2-D matrix."""
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
    cm = check_cm(cm)
    tp = np.diagonal(cm).copy()
    fp = cm.sum(axis=0) - tp
    return tp, fp


def top1(cm) -> float:
    """Top-1 accuracy as a fraction: trace / total (0.0 for an empty matrix)."""
    cm = check_cm(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else 0.0


def as_count(x) -> int | float:
    """A count as a Python int when integral (reference matrices are float arrays)."""
    x = x.item() if hasattr(x, "item") else x
    return int(x) if float(x).is_integer() else float(x)


def attack_metrics(cm_clean, cm_patched, target: int | None) -> dict:
    """Backdoor metrics from the clean-val and patched-val confusion matrices.

    Keys: clean_top1, patched_top1, patched_error_increase, target_fp_clean, target_fp,
    nontarget_count, asr, nfp, max_fp_class. With ``target=None`` (untargeted attack) every
    FP-based key is None.
    """
    cm_clean = check_cm(cm_clean, "cm_clean")
    cm_patched = check_cm(cm_patched, "cm_patched")
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
    target_fp = as_count(fp_patched[target])
    nontarget = as_count(cm_patched.sum() - cm_patched[target].sum())
    max_fp = fp_patched.max() if fp_patched.size else 0
    out.update(
        target_fp_clean=as_count(fp_clean[target]),
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

    Top-1 is a percentage with two decimals and the counts are floats (``9.0``), as the reference writes
    its float matrix. Commas inside names become semicolons (as in the reference). ``class_names``
    defaults to the class ids.
    """
    cm_clean = check_cm(cm_clean, "cm_clean")
    cm_patched = check_cm(cm_patched, "cm_patched")
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
        lines.append(f"{_csv_text(class_names[c])},{c},{_ref_count(tp_c[c])},{_ref_count(fp_c[c])},,"
                     f"{_ref_count(tp_p[c])},{_ref_count(fp_p[c])}")
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _ref_count(x) -> str:
    """A count as the reference prints an element of its float64 matrix: `9.0`."""
    return str(float(x))


def read_class_names(path, classes: Sequence[str]) -> list[str]:
    """The human-readable name of each class from a file of ``<class>\t<name>`` lines (the reference's
    ``imagenet_metadata.txt``: ``n01440764<TAB>tench, Tinca tinca``), in the order of ``classes``. A
    malformed line or a class the file does not name is a ValueError naming the file."""
    names: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"class_names: cannot read {path}: {e.strerror}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, tab, name = line.rstrip("\r").partition("\t")
        if not tab:
            raise ValueError(f"class_names: {path}, line {n}: expected `<class><TAB><name>`, got {line[:60]!r}")
        names[key.strip()] = name.strip()
    missing = [c for c in classes if c not in names]
    if missing:
        raise ValueError(f"class_names: {path} does not name {len(missing)} of the build's {len(classes)} "
                         f"classes, e.g. {missing[:3]}")
    return [names[c] for c in classes]


def read_conf_matrix_csv(path) -> list[list[str]]:
    """The rows of a ``conf_matrix.csv`` as lists of strings (a small helper for tests/tools)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def save_matrices(folder, cm_clean, cm_patched) -> tuple[Path, Path]:
    """Write ``conf_matrix_clean.npy`` and ``conf_matrix_poisoned.npy`` into ``folder``."""
    folder = Path(folder)
    return (save_npy(folder / "conf_matrix_clean.npy", cm_clean),
            save_npy(folder / "conf_matrix_poisoned.npy", cm_patched))


def knn_columns(report: dict) -> dict:
    """The kNN part of a results row (report.md, `fastbd compare`, the sweep's CSV) from a report.json: the
    first k's metrics (`knn_k{k}_lf{f}` entries; reports from before they existed give the top-1 only)."""
    m = next((v for k, v in report.items() if k.startswith("knn_k") and isinstance(v, dict)), {})
    top1 = m.get("clean_top1", next((v for k, v in report.items() if k.startswith("knn_") and k.endswith("_top1")), None))
    return {"knn_top1": top1, "knn_target_fp": m.get("target_fp"), "knn_target_fp_clean": m.get("target_fp_clean"),
            "knn_asr": m.get("asr")}


def shift_columns(ts: dict | None) -> dict:
    """The `shift_*` columns of an evaluate.trigger_shift result, for a results row and the training
    monitor's checks (all None for reports from before it, or when val and val_poisoned do not pair row by
    row). A rank of 1: the target is the class the trigger moves features towards most."""
    ts = ts or {}
    return {f"shift_{k}": ts.get(k) for k in ("cos_target", "rank_target", "length", "nearest_class")}


def report_row(report: dict) -> dict:
    """One results row from a report.json: the probe's metrics (its protocol's entry), the kNN's and the
    trigger shift's."""
    return {**report[report["protocol"]], **knn_columns(report), **shift_columns(report.get("trigger_shift"))}


# --- result rows: numbers and labels shared by the tables (report.py) and the figures (plots.py) ---

def _num(v: Any) -> float | None:
    """A metric value as float, or None when missing; NaN counts as missing so one bad run does not turn
    a whole group's mean into NaN."""
    if v is None:
        return None
    x = float(v)
    return None if math.isnan(x) else x


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1: with 2-5 seeds the population std understates the spread)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) >= 2 else None)


def defense_label(defense: str | None, clean_fraction: float | None) -> str:
    """"distill 25%" for a distilled student with a known clean fraction, the defense name otherwise."""
    if defense in (None, "none"):
        return "none"
    if clean_fraction is None:
        return str(defense)
    return f"{defense} {clean_fraction * 100:g}%"
