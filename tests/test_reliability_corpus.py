"""The bad-input corpus (tests/badcorpus.py) through the library API and the ``neuroml`` command.

Every case must give a one-line error naming the file and the problem (no traceback), the
other subjects of a batch must complete, and nothing may be written outside the output folder.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from _cohorts import copy_cohort
from badcorpus import (
    IMAGE_CASES,
    make_bids_corpus,
    make_image_corpus,
    make_participants_corpus,
    snapshot,
)

from neuroml.cli import main
from neuroml.errors import InputError
from neuroml.io import check_img, find_scans, read_participants
from neuroml.io.bids import check_label
from neuroml.workflows import read_failures, run_participant_level

REPO = Path(__file__).resolve().parents[1]
RES = 6.0


def cli(*args, cwd=None, timeout=300):
    """Run ``python -m neuroml -q ARGS`` in a subprocess; return (exit code, stdout, stderr lines)."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        OMP_WAIT_POLICY="PASSIVE",
        OMP_NUM_THREADS="1",
    )
    out = subprocess.run(
        [sys.executable, "-m", "neuroml", "-q", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    return out.returncode, out.stdout, [line for line in out.stderr.splitlines() if line.strip()]


def assert_one_line_error(lines, *needles):
    assert len(lines) == 1, lines
    assert (
        "Traceback" not in lines[0] and lines[0].startswith("neuroml ") and ": error: " in lines[0]
    )
    for needle in needles:
        assert re.search(needle, lines[0]), (needle, lines[0])


# --------------------------------------------------------------------------- single images, API
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return {c.name: c for c in make_image_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.mark.parametrize("name", IMAGE_CASES)
def test_every_bad_image_gives_a_one_line_error_naming_the_file(corpus, name):
    case = corpus[name]
    with pytest.raises(InputError) as info:
        check_img(case.path)
    msg = str(info.value)
    assert msg.startswith(f"{case.path}: ") and "\n" not in msg, msg
    assert re.search(case.match, msg), msg
    assert info.value.path == str(case.path)


def test_corpus_is_reproducible(tmp_path):
    a = make_image_corpus(tmp_path / "a", seed=3)
    b = make_image_corpus(tmp_path / "b", seed=3)
    for ca, cb in zip(a, b):
        if ca.path.is_file() and not ca.path.is_symlink():
            assert ca.path.read_bytes() == cb.path.read_bytes(), ca.name


# --------------------------------------------------------------------------- a batch, CLI and API
@pytest.fixture(scope="module")
def bids_corpus(synthetic_bids, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    good = nib.load(str(synthetic_bids / "sub-001" / "anat" / "sub-001_T1w.nii.gz"))
    bids, cases = make_bids_corpus(root / "bids", good)
    out = root / "work" / "deriv"
    before = snapshot(root, exclude=[out])
    code, stdout, err = cli(
        "preprocess", bids, out, "participant", "--resolution", RES, cwd=root / "bids"
    )
    after = snapshot(root, exclude=[out])
    return {
        "root": root,
        "bids": bids,
        "cases": cases,
        "out": out,
        "code": code,
        "stdout": stdout,
        "err": err,
        "before": before,
        "after": after,
    }


def test_cli_batch_completes_the_good_subject(bids_corpus):
    b = bids_corpus
    assert b["code"] == 1, b["err"][-5:]
    assert f"1 processed, 0 already done, {len(b['cases'])} failed" in b["stdout"]
    anat = b["out"] / "sub-good" / "anat"
    assert len(list(anat.glob("*_desc-preproc_T1w.json"))) == 1
    assert len(list(anat.glob("*_desc-preproc_T1w.nii.gz"))) == 1
    for case in b["cases"]:  # a failed scan leaves no outputs
        assert not (b["out"] / f"sub-{case.name}" / "anat").exists() or not list(
            (b["out"] / f"sub-{case.name}" / "anat").glob("*desc-preproc*")
        ), case.name


def test_cli_batch_names_each_bad_file_on_one_line(bids_corpus):
    b = bids_corpus
    err = b["err"]
    assert not any("Traceback" in line for line in err), "\n".join(err)
    for line in err:  # only log lines, FAILED lines and the pointer to failures.tsv
        assert line.startswith(("WARNING: ", "  FAILED ", "see ")), line
    for case in b["cases"]:
        name = f"sub-{case.name}/anat/{case.path.name}"
        lines = [line for line in err if line.startswith("WARNING: ") and name in line]
        assert len(lines) == 1, (case.name, err)
        assert re.search(case.match, lines[0]), (case.name, lines[0])


def test_failures_tsv_has_one_row_per_bad_file(bids_corpus):
    b = bids_corpus
    rows = {r["participant_id"]: r for r in read_failures(b["out"])}
    assert set(rows) == {f"sub-{c.name}" for c in b["cases"]}
    for case in b["cases"]:
        row = rows[f"sub-{case.name}"]
        assert row["file"] == f"sub-{case.name}/anat/{case.path.name}"
        assert re.search(case.match, row["reason"]) and "\n" not in row["reason"], row


def test_nothing_is_written_outside_the_output_folder(bids_corpus):
    b = bids_corpus
    assert b["before"] == b["after"]
    assert not list(b["out"].rglob(".*.tmp*")), "temporary files left behind"


def test_api_rerun_skips_the_good_subject_and_reports_the_rest(bids_corpus):
    b = bids_corpus
    before = snapshot(b["root"], exclude=[b["out"]])
    result = run_participant_level(b["bids"], b["out"], resolution=RES, show_progress=False)
    assert result.n_skipped == 1 and result.n_done == 0
    assert sorted(f.participant_id for f in result.failures) == sorted(
        f"sub-{c.name}" for c in b["cases"]
    )
    for f in result.failures:
        assert "\n" not in f.reason and "Traceback" not in f.reason
    assert snapshot(b["root"], exclude=[b["out"]]) == before


# --------------------------------------------------------------------------- labels and paths
@pytest.mark.parametrize(
    "label", ["../x", "..", "a/b", "a\\b", "/abs", "sub-../../etc", "sub-a/b", "", "a b", "é1"]
)
def test_unsafe_participant_labels_cli_and_api(tmp_path, capsys, label):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")
    with pytest.raises(InputError, match="invalid participant label"):
        check_label(label)
    with pytest.raises(InputError, match="invalid participant label"):
        find_scans(bids, participant_labels=[label])
    out = tmp_path / "out"
    code = main(
        ["-q", "preprocess", str(bids), str(out), "participant", "--participant-label", label]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert_one_line_error(err, "invalid participant label")
    assert not out.exists()


def test_unsafe_label_subprocess(tmp_path):
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")
    before = snapshot(tmp_path)
    code, _, err = cli(
        "preprocess", bids, tmp_path / "out", "participant", "--participant-label", "../../x"
    )
    assert code == 2
    assert_one_line_error(err, r"invalid participant label '\.\./\.\./x'")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- participants.tsv
@pytest.fixture(scope="module")
def labelled(synthetic_derivatives, tmp_path_factory):
    # a copy of the session's derivatives: training writes the cache into it
    root = copy_cohort(synthetic_derivatives[0].parent, tmp_path_factory.mktemp("labelled") / "c")
    raw, deriv, ids = root / "raw", root / "deriv", synthetic_derivatives[2]
    cases = make_participants_corpus(root / "tsv", ids)
    return root, raw, deriv, ids, {c.name: c for c in cases}


PARTICIPANTS_CASES = [
    "missing",
    "empty",
    "binary",
    "nocolumn",
    "noid",
    "ragged",
    "duplicate",
    "traversal",
    "separator",
    "nolabels",
    "unknown",
    "oneclass",
]


@pytest.mark.parametrize("name", PARTICIPANTS_CASES)
def test_broken_participants_tsv_api_and_cli(labelled, tmp_path, capsys, name):
    from neuroml.workflows import train_run

    root, _, deriv, _, cases = labelled
    case = cases[name]
    run_dir = tmp_path / "run"
    with pytest.raises(InputError) as info:
        train_run(deriv, run_dir, participants=case.path, epochs=1, folds=2, show_progress=False)
    msg = str(info.value)
    assert re.search(case.match, msg) and str(case.path) in msg and "\n" not in msg, msg
    before = snapshot(root, exclude=[deriv / "cache"])
    code = main(
        [
            "-q",
            "train",
            str(deriv),
            "--run-dir",
            str(run_dir),
            "--participants",
            str(case.path),
            "--epochs",
            "1",
            "--folds",
            "2",
        ]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert_one_line_error(err, re.escape(str(case.path)), case.match)
    assert not run_dir.exists()
    assert snapshot(root, exclude=[deriv / "cache"]) == before


def test_read_participants_names_the_file(labelled):
    *_, cases = labelled
    for name in ("duplicate", "traversal", "separator", "ragged", "noid"):
        with pytest.raises(InputError, match=re.escape(str(cases[name].path))):
            read_participants(cases[name].path)


def test_labels_for_missing_images_warn_and_train(labelled, tmp_path, caplog):
    from neuroml.workflows import train_run

    _, _, deriv, ids, cases = labelled
    with caplog.at_level("WARNING", logger="neuroml"):
        summary = train_run(
            deriv,
            tmp_path / "run",
            participants=cases["extralabels"].path,
            epochs=1,
            folds=2,
            show_progress=False,
            n_bootstrap=10,
            baseline=False,
        )
    assert summary["n_participants"] == len(ids)
    warned = [r.getMessage() for r in caplog.records if "sub-ghost1" in r.getMessage()]
    assert (
        len(warned) == 1
        and "sub-ghost2" in warned[0]
        and str(cases["extralabels"].path) in warned[0]
    )


def test_subprocess_cli_on_a_duplicate_participants_file(labelled, tmp_path):
    root, _, deriv, _, cases = labelled
    before = snapshot(root, exclude=[deriv / "cache"])
    code, _, err = cli(
        "train",
        deriv,
        "--run-dir",
        tmp_path / "run",
        "--participants",
        cases["duplicate"].path,
        "--epochs",
        "1",
        "--folds",
        "2",
    )
    assert code == 2
    assert_one_line_error(err, re.escape(str(cases["duplicate"].path)), "listed more than once")
    assert snapshot(root, exclude=[deriv / "cache"]) == before and not (tmp_path / "run").exists()


def test_missing_participants_file_of_the_raw_dataset(labelled, tmp_path, capsys):
    _, raw, deriv, _, _ = labelled
    import shutil

    copy = tmp_path / "deriv"
    shutil.copytree(deriv, copy)
    desc = copy / "dataset_description.json"
    desc.write_text(desc.read_text().replace(raw.resolve().as_uri(), (tmp_path / "noraw").as_uri()))
    code = main(["-q", "train", str(copy), "--run-dir", str(tmp_path / "run"), "--epochs", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert_one_line_error(err, "participants")
