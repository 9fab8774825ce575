"""scripts/slurm_preprocess.sh: who gets a task, and what each task runs (sbatch faked)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_preprocess.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _bids(root, folders=("01", "03"), tsv="participant_id\tage\r\nsub-01\t30\r\nsub-05\t40\r\n"):
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    for label in folders:
        (root / f"sub-{label}" / "anat").mkdir(parents=True)
    if tsv is not None:
        (root / "participants.tsv").write_text(tsv)
    return root


def _run(*args, env=None):
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_list_takes_every_folder_and_skips_tsv_rows_without_one(tmp_path):
    # sub-03 has a folder but no participants.tsv row; sub-05 a row but no folder
    bids = _bids(tmp_path / "bids")
    (bids / "sub-02").write_text("a file, not a participant")
    (bids / "sub-x_y").mkdir()
    proc = _run("--list", bids)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["01", "03"]
    assert "participants.tsv lists sub-05 but there is no folder" in proc.stderr
    assert "sub-x_y: not a BIDS participant folder" in proc.stderr
    assert "sub-01" not in proc.stderr and "sub-03" not in proc.stderr


def test_list_without_participants_tsv(tmp_path):
    bids = _bids(tmp_path / "bids", folders=("b", "a10", "a2"), tsv=None)
    proc = _run("--list", bids)
    assert proc.returncode == 0 and proc.stdout.split() == ["a10", "a2", "b"] and proc.stderr == ""


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda root: _bids(root, folders=()), "no participants found"),
        (lambda root: _bids(root, tsv="id\tage\nsub-01\t3\n"), "has no participant_id column"),
        (lambda root: root.mkdir(), "not a BIDS dataset"),
        (lambda root: None, "BIDS folder not found"),
    ],
)
def test_list_errors_exit_2(tmp_path, setup, match):
    root = tmp_path / "bids"
    setup(root)
    proc = _run("--list", root)
    assert proc.returncode == 2 and match in proc.stderr and proc.stdout == ""


def test_submission_passes_options_after_dashdash_to_every_task(tmp_path):
    bids = _bids(tmp_path / "bids")
    out = tmp_path / "out dir"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    # fake sbatch: records its arguments and the job script, prints a job id
    (bin_dir / "sbatch").write_text(
        '#!/usr/bin/env bash\nn=$(ls "$JOBS" | grep -c args)\n'
        '{ printf "%s\\n" "$@" > "$JOBS/args$n"; cat > "$JOBS/script$n"; }\necho $((100 + n))\n'
    )
    # fake neuroml: records the arguments a task gives it
    (bin_dir / "neuroml").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$CALLED"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "JOBS": str(jobs), "NEUROML_RESOLUTION": "3"}
    proc = _run(
        bids, out, "--partition=short", "--", "--modality", "both", "--confounds", "a b", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 participants listed" in proc.stdout and "sub-05" in proc.stderr
    assert (out / "logs" / "participants.txt").read_text().split() == ["01", "03"]
    array_args = (jobs / "args0").read_text().splitlines()
    assert "--array=1-2%50" in array_args and "--partition=short" in array_args
    assert "--modality" not in array_args
    assert "--partition=short" in (jobs / "args1").read_text().splitlines()
    assert "--dependency=afterany:100" in (jobs / "args1").read_text().splitlines()
    # run task 2 of the array job script as SLURM would
    called = tmp_path / "called.txt"
    task = subprocess.run(
        ["bash", str(jobs / "script0")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env, "SLURM_ARRAY_TASK_ID": "2", "CALLED": str(called)},
    )
    assert task.returncode == 0, task.stderr
    assert called.read_text().splitlines() == [
        "preprocess",
        str(bids.resolve()),
        str(out.resolve()),
        "participant",
        "--participant-label",
        "03",
        "--resolution",
        "3",
        "--normalization",
        "zscore",
        "--modality",
        "both",
        "--confounds",
        "a b",
    ]
    subprocess.run(
        ["bash", str(jobs / "script1")],
        env={**os.environ, **env, "CALLED": str(called)},
        check=True,
        timeout=60,
    )
    assert called.read_text().splitlines() == [
        "preprocess",
        str(bids.resolve()),
        str(out.resolve()),
        "group",
    ]


def test_help_and_usage(tmp_path):
    proc = _run("--help")
    assert (
        proc.returncode == 0
        and "--list BIDS" in proc.stdout
        and "-- neuroml preprocess options" in proc.stdout
    )
    assert "set -euo" not in proc.stdout
    proc = _run(tmp_path)
    assert proc.returncode == 2 and "Usage" in proc.stderr
