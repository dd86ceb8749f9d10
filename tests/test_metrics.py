"""Backdoor metrics (fastbd.metrics): hand-checked confusion matrices and the eval output files."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from fastbd.metrics import (
    attack_metrics,
    confusion_matrix,
    save_matrices,
    top1,
    tp_fp,
    write_conf_matrix_csv,
)
from fastbd.plots import heatmap_png
from fastbd.report import report_markdown

# Fixed 3-class example, target class 1. Rows = true label, columns = prediction.
#
# clean val:            patched val:
#   [8, 1, 1]             [2, 7, 1]
#   [0, 9, 1]             [0,10, 0]
#   [1, 0, 9]             [1, 5, 4]
#
# clean:   TP = diag = [8, 9, 9]; column sums = [9, 10, 11]; FP = [1, 1, 2]; top-1 = 26/30
# patched: TP = [2, 10, 4]; column sums = [3, 22, 5]; FP = [1, 12, 1]; top-1 = 16/30
# target FP (patched) = 12 (7 from class 0 + 5 from class 2; the 10 class-1 images are TP)
# non-target patched images = 30 - 10 = 20  ->  ASR = 12 / 20 = 0.6
# max FP over classes = 12 (class 1 itself)  ->  NFP = 12 / 12 = 1.0, max_fp_class = 1
CLEAN = np.array([[8, 1, 1], [0, 9, 1], [1, 0, 9]], dtype=np.int64)
PATCHED = np.array([[2, 7, 1], [0, 10, 0], [1, 5, 4]], dtype=np.int64)
NAMES = ["tench", "goldfish, Carassius auratus", "shark"]


def test_tp_fp_reference_arithmetic():
    tp, fp = tp_fp(PATCHED)
    assert tp.tolist() == [2, 10, 4]
    assert fp.tolist() == [1, 12, 1]
    # the reference: conf_matrix[:, t].sum() - conf_matrix[t][t], on a float matrix too
    ref = PATCHED.astype(np.float64)
    for t in range(3):
        assert fp[t] == ref[:, t].sum() - ref[t][t]
        assert tp[t] == ref[t][t]
    tp_c, fp_c = tp_fp(CLEAN)
    assert tp_c.tolist() == [8, 9, 9] and fp_c.tolist() == [1, 1, 2]


def test_top1():
    assert top1(CLEAN) == pytest.approx(26 / 30)
    assert top1(PATCHED) == pytest.approx(16 / 30)


def test_attack_metrics_fixed_example():
    m = attack_metrics(CLEAN, PATCHED, target=1)
    assert m["clean_top1"] == pytest.approx(26 / 30)
    assert m["patched_top1"] == pytest.approx(16 / 30)
    assert m["patched_error_increase"] == pytest.approx(10 / 30)
    assert m["target_fp_clean"] == 1
    assert m["target_fp"] == 12
    assert m["nontarget_count"] == 20
    assert m["asr"] == pytest.approx(0.6)
    assert m["nfp"] == pytest.approx(1.0)
    assert m["max_fp_class"] == 1
    assert isinstance(m["target_fp"], int) and isinstance(m["max_fp_class"], int)


def test_attack_metrics_target_not_the_most_over_predicted():
    # patched: column sums [3, 14, 13]; TP [2, 10, 8]; FP [1, 4, 5]
    # target 1: FP 4 of 20 non-target -> ASR 0.2; max FP 5 (class 2) -> NFP 0.8
    patched = np.array([[2, 3, 5], [0, 10, 0], [1, 1, 8]])
    m = attack_metrics(CLEAN, patched, target=1)
    assert m["target_fp"] == 4
    assert m["nontarget_count"] == 20
    assert m["asr"] == pytest.approx(0.2)
    assert m["nfp"] == pytest.approx(0.8)
    assert m["max_fp_class"] == 2


def test_target_class_images_never_count_as_fp():
    # every image, target class included, predicted as the target: FP = non-target images only
    patched = np.zeros((3, 3), dtype=np.int64)
    patched[:, 2] = [5, 6, 7]
    m = attack_metrics(patched, patched, target=2)
    assert m["target_fp"] == 11 and m["nontarget_count"] == 11 and m["asr"] == 1.0


def test_untargeted():
    m = attack_metrics(CLEAN, PATCHED, target=None)
    assert m["clean_top1"] == pytest.approx(26 / 30)
    assert m["patched_top1"] == pytest.approx(16 / 30)
    assert m["patched_error_increase"] == pytest.approx(10 / 30)
    for k in ("target_fp_clean", "target_fp", "nontarget_count", "asr", "nfp", "max_fp_class"):
        assert m[k] is None


def test_empty_matrix():
    empty = np.zeros((4, 4), dtype=np.int64)
    assert top1(empty) == 0.0
    assert top1(np.zeros((0, 0))) == 0.0
    m = attack_metrics(empty, empty, target=0)
    assert m["clean_top1"] == 0.0 and m["patched_top1"] == 0.0
    assert m["target_fp"] == 0 and m["nontarget_count"] == 0
    assert m["asr"] == 0.0 and m["nfp"] == 0.0
    assert confusion_matrix([], [], 4).tolist() == empty.tolist()
    assert confusion_matrix([], [], 4).dtype == np.int64


def test_confusion_matrix_small_lists():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 1]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 1, 1]]
    assert cm.sum() == 6 and top1(cm) == pytest.approx(3 / 6)
    # numpy arrays and integral floats work; out-of-range labels do not
    assert confusion_matrix(np.array(y_true), np.array(y_pred, dtype=float), 3).tolist() == cm.tolist()
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)


def test_bad_inputs():
    with pytest.raises(ValueError):
        attack_metrics(CLEAN, PATCHED, target=3)
    with pytest.raises(ValueError):
        attack_metrics(CLEAN, np.zeros((4, 4)), target=0)
    with pytest.raises(ValueError):
        tp_fp(np.zeros((2, 3)))


def test_csv_layout(tmp_path):
    path = tmp_path / "conf_matrix.csv"
    write_conf_matrix_csv(path, CLEAN, PATCHED, NAMES, model="run/encoder", data="val_patched.txt")
    rows = list(csv.reader(open(path, newline="")))
    assert rows[0] == ["Model run/encoder", "", "Clean val", "", "", "", "Pois. val", "", ""]
    assert rows[1] == ["Data val_patched.txt", "", "acc1", "", "", "", "acc1", "", ""]
    assert rows[2] == ["", "", "86.67", "", "", "", "53.33", "", ""]
    assert rows[3] == ["class name", "class id", "TP", "FP", "", "TP", "FP"]
    assert len(rows) == 4 + 3
    # the target row: commas in the name become semicolons, as in the reference; counts are the
    # reference's float64 matrix elements as it prints them (issue 12: "counts as floats")
    assert rows[5] == ["goldfish; Carassius auratus", "1", "9.0", "1.0", "", "10.0", "12.0"]
    assert rows[4] == ["tench", "0", "8.0", "1.0", "", "2.0", "1.0"]
    # no temp files left behind
    assert os.listdir(tmp_path) == ["conf_matrix.csv"]


def test_csv_float_matrices_and_default_names(tmp_path):
    path = tmp_path / "c.csv"
    write_conf_matrix_csv(path, CLEAN.astype(float), PATCHED.astype(float), None)
    rows = list(csv.reader(open(path, newline="")))
    assert rows[6] == ["2", "2", "9.0", "2.0", "", "4.0", "1.0"]  # as the reference prints its float matrix


def _reference_csv(cm_c, cm_p, names, model, data, acc1, acc1_p) -> str:
    """What eval_linear.py's --conf_matrix branch writes, formatted the way it formats (its matrices are
    np.zeros((100, 100)) filled with += 1, so every count is a numpy float64)."""
    out = [f"Model {model},,Clean val,,,,Pois. val,,\n", f"Data {data},,acc1,,,,acc1,,\n",
           ",,{:.2f},,,,{:.2f},,\n".format(acc1, acc1_p), "class name,class id,TP,FP,,TP,FP\n"]
    for t in range(len(names)):
        out.append("{},{},{},{},,".format(names[t].replace(",", ";"), t, cm_c[t][t], cm_c[:, t].sum() - cm_c[t][t]))
        out.append("{},{}\n".format(cm_p[t][t], cm_p[:, t].sum() - cm_p[t][t]))
    return "".join(out)


def test_csv_is_the_references_text(tmp_path):
    """Issue 12: conf_matrix.csv exactly as the reference writes it, from int or float matrices alike."""
    expected = _reference_csv(CLEAN.astype(np.float64), PATCHED.astype(np.float64), NAMES, "a/b/c/enc.pth",
                              "/data/val_poisoned.txt", 100 * 26 / 30, 100 * 16 / 30)
    for cm_c, cm_p in ((CLEAN, PATCHED), (CLEAN.astype(float), PATCHED.astype(float))):
        write_conf_matrix_csv(tmp_path / "c.csv", cm_c, cm_p, NAMES, model="a/b/c/enc.pth",
                              data="/data/val_poisoned.txt")
        assert (tmp_path / "c.csv").read_text() == expected


def test_class_names_from_the_references_metadata_file(tmp_path):
    from fastbd.metrics import read_class_names

    meta = tmp_path / "imagenet_metadata.txt"
    meta.write_text("n01440764\ttench, Tinca tinca\nn01443537\tgoldfish, Carassius auratus\n\nn00000001\tother\n")
    assert read_class_names(meta, ["n01443537", "n01440764"]) == ["goldfish, Carassius auratus", "tench, Tinca tinca"]
    with pytest.raises(ValueError, match=r"imagenet_metadata.txt does not name 1 of the build's 2 classes.*n0999"):
        read_class_names(meta, ["n01443537", "n0999"])
    meta.write_text("n01440764 tench\n")
    with pytest.raises(ValueError, match=r"line 1: expected `<class><TAB><name>`"):
        read_class_names(meta, ["n01440764"])


def test_npy_roundtrip(tmp_path):
    a, b = save_matrices(tmp_path / "eval", CLEAN, PATCHED)
    assert a.name == "conf_matrix_clean.npy" and b.name == "conf_matrix_poisoned.npy"
    assert np.array_equal(np.load(a), CLEAN)
    assert np.array_equal(np.load(b), PATCHED)
    assert sorted(os.listdir(tmp_path / "eval")) == ["conf_matrix_clean.npy",
                                                    "conf_matrix_poisoned.npy"]


@pytest.mark.parametrize("n,highlight", [(3, 1), (25, 7), (100, 42), (1000, 999), (4, None)])
def test_heatmap_png(tmp_path, n, highlight):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, size=(n, n)) + np.eye(n, dtype=np.int64) * 20
    cm[5 % n, :] = 0  # an empty row must not break row normalisation
    names = [f"class {i}, long name {i}" for i in range(n)]
    path = tmp_path / "cm.png"
    heatmap_png(path, cm, names, f"patched val ({n} classes)", highlight)
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        w, h = im.size
    assert 600 <= w <= 900 and 600 <= h <= 900
    assert os.listdir(tmp_path) == ["cm.png"]


def test_heatmap_highlight_column_is_red(tmp_path):
    path = tmp_path / "cm.png"
    heatmap_png(path, PATCHED, NAMES, "t", highlight=1)
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
    assert red.sum() > 500  # the outlined column


def test_report_markdown():
    m = attack_metrics(CLEAN, PATCHED, target=1)
    md = report_markdown([
        {"model": "moco | poisoned", **m, "knn_top1": 0.5123, "knn_target_fp": 9, "knn_target_fp_clean": 2,
         "knn_asr": 0.45, "shift_cos_target": 0.234, "shift_rank_target": 3},
        {"model": "clean"},
    ])
    lines = md.strip().splitlines()
    assert len(lines) == 4
    assert "clean top-1" in lines[0] and "ASR" in lines[0] and "kNN top-1" in lines[0]
    assert "target FP (of N non-target)" in lines[0] and "NFP" in lines[0] and "target FP clean" in lines[0]
    assert "kNN target FP" in lines[0] and "kNN ASR" in lines[0] and "shift cos target (rank)" in lines[0]
    row = [c.strip() for c in lines[2].strip("|").split(" | ")]
    # the target FP on triggered images sits beside the same model's target FP on clean ones (1 here)
    assert row == ["moco \\| poisoned", "86.7", "53.3", "12 / 20", "1", "60.0", "1.00", "51.2", "9 / 20", "2", "45.0",
                   "0.23 (3)"]
    assert lines[3] == "| clean | - | - | - | - | - | - | - | - | - | - | - |"
