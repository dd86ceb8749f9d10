"""The one atomic-write helper (beton_builders/files.py): modes that follow the umask, no torn or stray files."""

import os
import stat

import numpy as np
import pytest

from beton_builders.files import atomic_write, atomic_write_bytes, save_npy, staged_folder, write_json
from fastbd import metrics as M
from fastbd import report as R


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_files_follow_the_umask_not_0600(tmp_path, umask_022):
    """Results on a shared cluster folder stay readable by the group and others (mkstemp would give 0600)."""
    cm = np.eye(3, dtype=np.int64)
    written = [atomic_write_bytes(tmp_path / "a.bin", b"x"), write_json(tmp_path / "sub" / "b.json", {"k": 1}),
               save_npy(tmp_path / "c.npy", np.arange(3)),
               M.write_conf_matrix_csv(tmp_path / "eval" / "conf_matrix.csv", cm, cm),
               *M.save_matrices(tmp_path / "eval", cm, cm),
               *R.write_report(tmp_path / "rep", [], "empty")]
    assert {p.name: mode(p) for p in written} == {p.name: 0o644 for p in written}
    os.umask(0o027)
    assert mode(atomic_write_bytes(tmp_path / "d.bin", b"y")) == 0o640
    assert np.load(tmp_path / "c.npy").tolist() == [0, 1, 2]  # the .npy kept its name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "f.txt", b"old")

    def half(p):
        p.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]


def test_staged_folder_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out) as tmp:
        (tmp / "one").write_text("1")
    assert sorted(os.listdir(out)) == ["one"]
    with pytest.raises(RuntimeError):
        with staged_folder(out) as tmp:
            (tmp / "two").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(out)) == ["one"] and sorted(os.listdir(tmp_path)) == ["out"]
    (tmp_path / ".out.partial-dead").mkdir()  # left by a killed process: cleared by the next attempt
    with staged_folder(out) as tmp:
        (tmp / "three").write_text("3")
    assert sorted(os.listdir(out)) == ["three"] and sorted(os.listdir(tmp_path)) == ["out"]
