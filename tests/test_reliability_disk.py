"""Disk full and read-only output folders: a clear one-line error, never a corrupted folder.

A full disk is simulated by making the atomic writer's ``fsync`` (or the writer itself) raise
``OSError(ENOSPC)`` after a number of successful writes; a read-only folder by ``chmod`` (when
not running as root, where chmod does not stop writes) or by ``OSError(EROFS)`` from the
temporary-file creation. After the error, every file under a final name must read back
completely, no temporary file may be left, older versions of a file must be untouched, and a
rerun once the problem is gone must finish the work.
"""

import errno
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from _cohorts import copy_cohort
from badcorpus import (
    assert_every_final_file_is_complete,
    assert_no_temporaries,
)

from neuroml._utils import fileio
from neuroml.cli import main
from neuroml.errors import OutputError
from neuroml.runs.checkpoint import save_checkpoint


class _FullDisk:
    """Stands in for the ``os`` module of the atomic writer: ``fsync`` fails after ``ok`` writes."""

    def __init__(self, ok=0, code=errno.ENOSPC):
        self.ok, self.code, self.calls = ok, code, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):  # the folder fsync after a rename
            return os.fsync(fd)
        self.calls += 1
        if self.calls > self.ok:
            raise OSError(self.code, os.strerror(self.code))
        return os.fsync(fd)


def _writers(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    return {
        "text": (lambda p: fileio.write_text_atomic(p, "new\n"), "a.txt"),
        "json": (lambda p: fileio.write_json_atomic(p, {"new": 1}), "a.json"),
        "nifti": (lambda p: fileio.save_nifti_atomic(img, p), "a.nii.gz"),
        "npy": (lambda p: fileio.save_npy_atomic(np.ones(3), p), "a.npy"),
        "checkpoint": (lambda p: save_checkpoint({"w": torch.ones(2)}, p), "a.pt"),
    }


@pytest.mark.parametrize("kind", ["text", "json", "nifti", "npy", "checkpoint"])
@pytest.mark.parametrize(
    "code, words",
    [(errno.ENOSPC, "disk is full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only")],
)
def test_a_failed_write_keeps_the_old_file_and_names_the_new_one(
    tmp_path, monkeypatch, kind, code, words
):
    write, name = _writers(tmp_path)[kind]
    path = tmp_path / name
    path.write_bytes(b"old version")
    monkeypatch.setattr(fileio, "os", _FullDisk(0, code))
    with pytest.raises(OutputError) as info:
        write(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: cannot write: ") and words in msg and "\n" not in msg, msg
    assert info.value.errno == code and isinstance(info.value, OSError)
    assert path.read_bytes() == b"old version"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_torch_reports_a_full_disk_as_runtime_error(tmp_path, monkeypatch):
    def failing_save(obj, f):
        raise RuntimeError(
            "[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(fileio, "_disk_full", lambda folder: True)
    with pytest.raises(OutputError, match="disk is full"):
        save_checkpoint({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_creation(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"a\.json: cannot write: the file system is read-only"):
        fileio.write_json_atomic(tmp_path / "a.json", {})


# --------------------------------------------------------------------------- preprocess
@pytest.fixture(scope="module")
def raw(synthetic_bids):
    return synthetic_bids  # read-only: preprocessing writes elsewhere


def test_preprocess_disk_full_stops_with_one_line_then_resumes(raw, tmp_path, monkeypatch, capsys):
    from neuroml.workflows import read_failures, run_participant_level

    out = tmp_path / "deriv"
    disk = _FullDisk(ok=1 + 5 + 2)  # dataset_description, the first scan, part of the second
    monkeypatch.setattr(fileio, "os", disk)
    code = main(["-q", "preprocess", str(raw), str(out), "participant", "--resolution", "8"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert (
        err[0].startswith("neuroml preprocess: error: ")
        and "cannot write: the disk is full" in err[0]
    )
    assert str(out) in err[0] and "rerun the same command" in err[0]
    assert disk.calls == 1 + 5 + 3  # stopped at the first failed write: the batch did not go on
    assert_every_final_file_is_complete(out)
    assert_no_temporaries(out)
    assert read_failures(out) == []  # a full disk is not the scans' fault
    assert len(list(out.glob("sub-*/anat/*_desc-preproc_T1w.json"))) == 1
    monkeypatch.undo()
    result = run_participant_level(raw, out, resolution=8.0, show_progress=False)
    assert (result.n_skipped, result.n_done, result.failures) == (1, 1, [])
    assert len(list(out.glob("sub-*/anat/*_desc-preproc_T1w.json"))) == 2


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod does not stop writes (the EROFS tests cover it)",
)
def test_read_only_output_folder_chmod(raw, tmp_path, capsys):
    out = tmp_path / "deriv"
    out.mkdir()
    out.chmod(0o555)
    try:
        code = main(["-q", "preprocess", str(raw), str(out), "participant", "--resolution", "8"])
    finally:
        out.chmod(0o755)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "permission denied" in err[0].lower(), err
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- train and report
@pytest.fixture(scope="module")
def deriv(synthetic_derivatives, tmp_path_factory):
    """A copy of the session's derivatives: this module's training writes the cache into it."""
    root = tmp_path_factory.mktemp("disk_deriv") / "cohort"
    return copy_cohort(synthetic_derivatives[0].parent, root) / "deriv"


def test_train_disk_full_then_resume(deriv, tmp_path, monkeypatch):
    from neuroml.runs import load_run
    from neuroml.workflows import train_run

    kwargs = dict(
        epochs=2, folds=2, batch_size=2, n_bootstrap=20, show_progress=False, device="cpu"
    )
    train_run(
        deriv, tmp_path / "warm", **kwargs
    )  # builds the cache: the writes below are the run's own
    run = tmp_path / "run"
    monkeypatch.setattr(fileio, "os", _FullDisk(ok=6))
    with pytest.raises(OutputError, match="cannot write: the disk is full"):
        train_run(deriv, run, **kwargs)
    assert_every_final_file_is_complete(run)
    assert_no_temporaries(run)
    assert not (run / "predictions.tsv").exists()
    monkeypatch.undo()
    train_run(deriv, run, resume=True, **kwargs)
    assert len(load_run(run).predictions()) == 8
    assert (run / "predictions.tsv").read_bytes() == (
        tmp_path / "warm" / "predictions.tsv"
    ).read_bytes()


def test_report_on_a_read_only_run_folder(trained_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run[2], run)  # the session's 1-epoch 2-fold run
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    code = main(["-q", "report", str(run)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "report.html: cannot write: the file system is read-only" in err[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_advisory_lock_excludes_other_holders_and_degrades_without_locks(tmp_path, monkeypatch):
    import fcntl
    import threading

    lock, order = tmp_path / "sub" / ".x.lock", []

    def other_holder():
        with fileio.advisory_lock(lock):
            order.append("other")

    with fileio.advisory_lock(lock):  # creates its folder and file
        other = threading.Thread(target=other_holder)
        other.start()
        other.join(0.3)
        order.append("first")  # the other holder is still waiting for the lock
    other.join(5)
    assert order == ["first", "other"]

    def no_locks(fh, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # NFS without lockd: the block runs unlocked
    with fileio.advisory_lock(tmp_path / ".y.lock"):
        order.append("unlocked")
    (tmp_path / "a-file").write_text("")
    with fileio.advisory_lock(tmp_path / "a-file" / ".z.lock"):  # cannot be created: no lock
        order.append("no file")
    assert order[-2:] == ["unlocked", "no file"]
