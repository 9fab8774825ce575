"""Untrusted files: pickled checkpoints are refused, YAML is loaded safely, HTML is escaped.

The malicious payloads would create a file when executed; the tests check that the file is
never created and that the refusal is a one-line error naming the file.
"""

import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _cohorts import copy_cohort

from neuroml.cli import main
from neuroml.errors import InputError
from neuroml.runs.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates the folder ``target``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def _stderr(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(trained_run):
    """The session's tiny run (conftest ``trained_run``): ``(root, deriv, run)``, read-only."""
    return trained_run


def _evil_checkpoints(target, good_bytes):
    legacy = pickle.dumps({"state_dict": {}, "meta": Payload(target)})
    bio = io.BytesIO()
    torch.save({"state_dict": {}, "meta": Payload(target)}, bio)
    top = io.BytesIO()
    torch.save(Payload(target), top)
    junk_zip = io.BytesIO()
    with zipfile.ZipFile(junk_zip, "w") as z:
        z.writestr("a.txt", "x")
    return {
        "zip_payload": (bio.getvalue(), "refusing to load"),
        "zip_payload_top": (top.getvalue(), "refusing to load"),
        "legacy_payload": (legacy, "refusing to load"),
        "legacy_payload_protocol0": (pickle.dumps(Payload(target), protocol=0), "refusing to load"),
        "random": (np.random.default_rng(0).bytes(3000), "refusing to load|not a readable"),
        "text": (b"hello\n", "not a readable torch checkpoint"),
        "empty": (b"", "not a readable torch checkpoint"),
        "truncated": (good_bytes[: len(good_bytes) // 2], "not a readable torch checkpoint"),
        "other_zip": (junk_zip.getvalue(), "not a readable torch checkpoint"),
    }


def test_hostile_checkpoints_are_refused_without_running_code(tmp_path):
    target = tmp_path / "pwned"
    save_checkpoint({"state_dict": {"w": torch.ones(2)}, "meta": {}}, tmp_path / "good.pt")
    for name, (content, match) in _evil_checkpoints(
        target, (tmp_path / "good.pt").read_bytes()
    ).items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(InputError, match=match) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, (name, msg)
        assert not target.exists(), name


def test_predict_with_a_tampered_fold_model_cli(trained, tmp_path, capsys):
    root, deriv, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    target = tmp_path / "pwned"
    torch.save({"state_dict": {}, "meta": Payload(target)}, copy / "fold-1" / "model.pt")
    code = main(["-q", "predict", str(copy), str(deriv), "--force"])
    err = [line for line in _stderr(capsys) if not line.startswith("WARNING: ")]  # --force warns
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert f"{copy / 'fold-1' / 'model.pt'}: refusing to load" in err[0]
    assert not target.exists()
    assert not (copy / "predict").exists()


def test_tampered_checkpoint_subprocess(trained, tmp_path):
    root, deriv, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    target = tmp_path / "pwned"
    (copy / "fold-0" / "model.pt").write_bytes(
        pickle.dumps({"state_dict": {}, "meta": Payload(target)})
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    out = subprocess.run(
        [sys.executable, "-m", "neuroml", "-q", "attribute", str(copy), str(deriv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    err = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(err) == 1, out.stderr
    assert (
        "refusing to load" in err[0]
        and "fold-0/model.pt" in err[0]
        and "Traceback" not in out.stderr
    )
    assert not target.exists()


def test_tampered_epoch_checkpoint_on_resume(trained, tmp_path, capsys):
    _, deriv, _ = trained
    run = tmp_path / "run"
    target = tmp_path / "pwned"
    (run / "fold-0").mkdir(parents=True)
    torch.save({"model": Payload(target)}, run / "fold-0" / "last.pt")
    code = main(
        [
            "-q",
            "train",
            str(deriv),
            "--run-dir",
            str(run),
            "--epochs",
            "1",
            "--folds",
            "2",
            "--batch-size",
            "2",
            "--resume",
        ]
    )
    err = _stderr(capsys)
    assert code == 2 and len(err) == 1 and "last.pt: refusing to load" in err[0], err
    assert not target.exists()


def test_a_pickled_tensor_cache_is_never_unpickled(trained, tmp_path):
    from neuroml.data import build_cache

    _, deriv, _ = trained
    copy = tmp_path / "deriv"
    shutil.copytree(deriv, copy)
    target = tmp_path / "pwned"
    npy = next((copy / "cache").glob("res-*_T1w.npy"))
    np.save(npy, np.array([Payload(target)], dtype=object), allow_pickle=True)
    cache = build_cache(copy)  # the bad array is detected and rebuilt, never unpickled
    assert cache.data.dtype == np.float16 and not target.exists()


# --------------------------------------------------------------------------- YAML
YAML_PAYLOADS = [
    '!!python/object/apply:os.makedirs ["{target}"]',
    '!!python/object/new:os.makedirs ["{target}"]',
    "!!python/name:os.system",
    "!!python/module:os",
]


@pytest.mark.parametrize("payload", YAML_PAYLOADS)
def test_yaml_python_tags_are_refused(tmp_path, capsys, payload):
    target = tmp_path / "pwned"
    text = payload.format(target=target)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: evil\nvars:\n  x: {text}\nsteps:\n  - report: {{run_dir: /nowhere}}\n"
    )
    code = main(["-q", "run", str(pipeline)])
    err = _stderr(capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{pipeline}: not valid YAML" in err[0] and "Traceback" not in err[0]
    assert not target.exists()


def test_yaml_tag_in_a_set_override_is_refused(tmp_path, capsys):
    target = tmp_path / "pwned"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: ok\nvars:\n  run: /nowhere\nsteps:\n  - report: {run_dir: '${run}'}\n"
    )
    code = main(
        ["-q", "run", str(pipeline), "--set", f'run=!!python/object/apply:os.makedirs ["{target}"]']
    )
    err = _stderr(capsys)
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert "--set" in err[0] or "YAML" in err[0]
    assert not target.exists()


# --------------------------------------------------------------------------- HTML
EVIL = "<script>alert(1)</script>"
EVIL_COLUMN = "<img src=x onerror=alert(2)>"


def test_report_of_a_real_run_escapes_hostile_labels(synthetic_derivatives, tmp_path, capsys):
    from neuroml.attribution import attribute_run
    from neuroml.workflows import train_run

    ids = synthetic_derivatives[2]
    deriv = copy_cohort(synthetic_derivatives[0].parent, tmp_path / "data") / "deriv"
    tsv = tmp_path / "participants.tsv"
    tsv.write_text(
        f"participant_id\t{EVIL_COLUMN}\n"
        + "".join(f"{p}\t{['control', EVIL][i % 2]}\n" for i, p in enumerate(ids))
    )
    run = tmp_path / "run"
    train_run(
        deriv,
        run,
        label_column=EVIL_COLUMN,
        participants=tsv,
        epochs=1,
        folds=2,
        batch_size=2,
        n_bootstrap=10,
        show_progress=False,
        device="cpu",
    )
    attribute_run(run, deriv, method="saliency", show_progress=False)
    for path in (run / "attribution").rglob("*"):  # file names stay BIDS-safe
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+", path.name), path.name
    code = main(["-q", "report", str(run)])
    assert code == 0, capsys.readouterr().err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert EVIL not in html and EVIL_COLUMN not in html
    assert "<script" not in html.lower() and "<img src=x" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
