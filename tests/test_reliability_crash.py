"""Crash safety: ``kill -9`` at seeded random points of ``preprocess``, ``train`` and ``attribute``.

Each stage runs once uninterrupted (the reference), then on a fresh folder: killed with
SIGKILL right before or right after a seeded random one of its atomic writes, killed again
after a seeded random delay, and rerun to completion with the same command. After every
kill, every file under a final name must be complete (no half-written file is ever read as
complete); at the end the outputs must equal the reference (voxel arrays, predictions,
metrics, weights), and no temporary file may be left.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _cohorts import make_derivatives
from badcorpus import (
    assert_every_final_file_is_complete,
    assert_no_temporaries,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with the module-level ``os`` of neuroml's atomic writer replaced by a proxy that
# counts renames onto final names and SIGKILLs the process before or after the N-th (N = 0: never).
_KILLER = r"""
import os, signal, sys
n, when, count_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from neuroml._utils import fileio

class _OS:
    count = 0
    def __getattr__(self, name):
        return getattr(os, name)
    def replace(self, src, dst):
        _OS.count += 1
        if _OS.count == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(src, dst)
        if _OS.count == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

fileio.os = _OS()
from neuroml.cli import main
code = main(sys.argv[4:])
with open(count_file, "w") as fh:
    fh.write(str(_OS.count))
sys.exit(code)
"""


def _env():
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_WAIT_POLICY="PASSIVE",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
    )


def _cmd(args, n=0, when="after", count_file=os.devnull):
    return [sys.executable, "-c", _KILLER, str(n), when, str(count_file), "-q", *map(str, args)]


def run_counted(args, tmp_path, marker):
    """Uninterrupted run: (number of atomic writes, seconds from ``marker`` appearing to the end)."""
    count_file = tmp_path / f"count-{time.monotonic_ns()}.txt"
    proc = subprocess.Popen(
        _cmd(args, 0, "after", count_file),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t_marker = None
    while proc.poll() is None:
        if t_marker is None and Path(marker).exists():
            t_marker = time.monotonic()
        time.sleep(0.02)
    t_end = time.monotonic()
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    return int(count_file.read_text()), t_end - (t_marker or t_end)


def kill_at_write(args, n, when):
    """Run until the ``n``-th atomic write, then SIGKILL (before or after the rename)."""
    out = subprocess.run(
        _cmd(args, n, when), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == -signal.SIGKILL, (n, when, out.returncode, out.stderr[-2000:])


def kill_after_delay(args, marker, delay):
    """Start the command, wait for ``marker``, then ``delay`` seconds, then SIGKILL. True if it was killed."""
    proc = subprocess.Popen(
        _cmd(args),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        alive = proc.poll() is None
        if alive:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return alive


def rerun(args):
    out = subprocess.run(_cmd(args), env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def _files(folder):
    return sorted(
        p.relative_to(folder).as_posix()
        for p in Path(folder).rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )


def assert_same_nifti(a, b):
    ia, ib = nib.load(str(a)), nib.load(str(b))
    np.testing.assert_array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj), err_msg=str(a))
    np.testing.assert_array_equal(ia.affine, ib.affine)


def _drop(d, keys):
    if isinstance(d, dict):
        return {k: _drop(v, keys) for k, v in d.items() if k not in keys}
    if isinstance(d, list):
        return [_drop(v, keys) for v in d]
    return d


def crash_and_resume(args_for, clean_args, tmp_path, marker_for, seed, resume_flag=()):
    """The kill sequence of the module docstring; returns how many kills interrupted the run."""
    n_writes, seconds = run_counted(clean_args, tmp_path, marker_for("clean"))
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, n_writes + 1))
    when = str(rng.choice(["before", "after"]))
    kill_at_write(args_for(), n, when)
    assert_every_final_file_is_complete(marker_for("killed").parent)
    killed = kill_after_delay(
        [*args_for(), *resume_flag], marker_for("killed"), float(rng.uniform(0, seconds))
    )
    assert_every_final_file_is_complete(marker_for("killed").parent)
    rerun([*args_for(), *resume_flag])
    return n_writes, (n, when), killed


# --------------------------------------------------------------------------- preprocess
@pytest.fixture(scope="module")
def raw(synthetic_bids):
    return synthetic_bids  # read-only: preprocessing writes elsewhere


@pytest.mark.parametrize("seed", [11])
def test_preprocess_killed_at_random_points_resumes_to_identical_derivatives(raw, tmp_path, seed):
    clean, killed = tmp_path / "clean", tmp_path / "killed"

    def args(out):
        return ["preprocess", raw, out, "participant", "--resolution", "8"]

    n_writes, point, _ = crash_and_resume(
        lambda: args(killed),
        args(clean),
        tmp_path,
        lambda which: tmp_path / which / "dataset_description.json",
        seed,
    )
    assert n_writes >= 2 * 5  # five files per scan
    assert_no_temporaries(killed)
    assert _files(killed) == _files(clean), point
    for rel in _files(clean):
        a, b = clean / rel, killed / rel
        if rel.endswith(".nii.gz"):
            assert_same_nifti(a, b)
        elif rel.endswith("_T1w.json"):
            assert _drop(json.loads(a.read_text()), {"Timings"}) == _drop(
                json.loads(b.read_text()), {"Timings"}
            )
        else:
            assert a.read_bytes() == b.read_bytes(), rel


# --------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def deriv(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_deriv")
    _, deriv, _ = make_derivatives(root, n=10, res=8.0)
    return deriv


TRAIN = ["--epochs", "4", "--folds", "2", "--batch-size", "2", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def clean_run(deriv, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_clean_run")
    n_writes, seconds = run_counted(
        ["train", deriv, "--run-dir", root / "run", *TRAIN], root, root / "run" / "splits.json"
    )
    return root / "run", n_writes, seconds


def _copy_deriv_without_cache(deriv, dest):
    shutil.copytree(deriv, dest, ignore=shutil.ignore_patterns("cache"))
    return dest


@pytest.mark.parametrize("seed", [5])
def test_train_killed_at_random_points_resumes_to_identical_predictions(
    deriv, clean_run, tmp_path, seed
):
    import torch

    clean, n_writes, seconds = clean_run
    my_deriv = _copy_deriv_without_cache(deriv, tmp_path / "deriv")  # the cache build is killed too
    run = tmp_path / "run"
    args = ["train", my_deriv, "--run-dir", run, *TRAIN]
    rng = np.random.default_rng(seed)
    n, when = int(rng.integers(1, n_writes + 1)), str(rng.choice(["before", "after"]))
    kill_at_write(args, n, when)
    for folder in (run, my_deriv):
        if folder.exists():
            assert_every_final_file_is_complete(folder)
    kill_after_delay([*args, "--resume"], run / "splits.json", float(rng.uniform(0, seconds)))
    assert_every_final_file_is_complete(run)
    rerun([*args, "--resume"])
    assert_no_temporaries(run)
    assert_no_temporaries(my_deriv)

    for name in ("predictions.tsv", "baseline_predictions.tsv", "splits.json"):
        assert (run / name).read_bytes() == (clean / name).read_bytes(), (name, n, when)
    status = {"status"}  # "trained" / "resumed" / "skipped (already trained)": how, not what
    assert _drop(json.loads((run / "metrics.json").read_text()), status) == _drop(
        json.loads((clean / "metrics.json").read_text()), status
    )
    for k in (0, 1):
        a = torch.load(clean / f"fold-{k}" / "model.pt", weights_only=True)
        b = torch.load(run / f"fold-{k}" / "model.pt", weights_only=True)
        assert a["meta"] == b["meta"]
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (k, key)
        assert not (run / f"fold-{k}" / "last.pt").exists()
        ha = pd.read_csv(clean / f"fold-{k}" / "history.tsv", sep="\t").drop(columns="seconds")
        hb = pd.read_csv(run / f"fold-{k}" / "history.tsv", sep="\t").drop(columns="seconds")
        pd.testing.assert_frame_equal(ha, hb)


# --------------------------------------------------------------------------- attribute
@pytest.mark.parametrize("seed", [2])
def test_attribute_killed_at_random_points_resumes_to_identical_maps(
    deriv, clean_run, tmp_path, seed
):
    clean, *_ = clean_run
    runs = {}
    for which in ("clean", "killed"):
        runs[which] = tmp_path / which
        shutil.copytree(clean, runs[which], ignore=shutil.ignore_patterns("attribution"))

    def args(which):
        return ["attribute", runs[which], deriv, "--method", "gradcam"]

    def marker(which):
        return runs[which] / "attribution" / "gradcam"

    crash_and_resume(lambda: args("killed"), args("clean"), tmp_path, marker, seed)
    a_dir, b_dir = marker("clean"), marker("killed")
    assert_no_temporaries(b_dir)
    # the resumed call's checks are its own: the report would show them
    assert (
        json.loads((b_dir / "sanity.json").read_text())["call_id"]
        == json.loads((b_dir / "attribution.json").read_text())["call_id"]
    )
    assert _files(a_dir) == _files(b_dir)
    for rel in _files(a_dir):
        if rel.endswith(".nii.gz"):
            assert_same_nifti(a_dir / rel, b_dir / rel)
        elif rel in ("attribution.json", "sanity.json"):
            # wall-clock fields differ between any two runs; every number computed from the maps must not
            skip = {
                "timing",
                "seconds",
                "skipped",
                "versions",
                "call_id",
            }  # call_id: new in every call
            assert _drop(json.loads((a_dir / rel).read_text()), skip) == _drop(
                json.loads((b_dir / rel).read_text()), skip
            )
        else:
            assert (a_dir / rel).read_bytes() == (b_dir / rel).read_bytes(), rel
