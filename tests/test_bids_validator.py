"""The official BIDS validator (npm ``bids-validator@1.15.0``) accepts the synthetic cohorts.

CI installs it with ``npm install --prefix .ci/node bids-validator@1.15.0``; the
``NEUROML_BIDS_VALIDATOR`` environment variable may point at another executable.
Warnings are allowed (sites differ on purpose: INCONSISTENT_PARAMETERS); errors are not.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from neuroml.synth import make_cohort

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples"


def _validator():
    env = os.environ.get("NEUROML_BIDS_VALIDATOR")
    if env:
        path = shutil.which(env) or env
        if not Path(path).exists():
            pytest.fail(f"NEUROML_BIDS_VALIDATOR={env!r} does not exist")
        return str(path)
    local = REPO / ".ci" / "node" / "node_modules" / ".bin" / "bids-validator"
    if local.exists():
        return str(local)
    pytest.skip(
        "BIDS validator not installed: run `npm install --prefix .ci/node bids-validator@1.15.0` "
        "or set NEUROML_BIDS_VALIDATOR"
    )


def _validate(dataset):
    proc = subprocess.run(
        [_validator(), str(dataset), "--json"], capture_output=True, text=True, timeout=600
    )
    start = proc.stdout.find("{")
    assert start >= 0, (
        f"validator gave no JSON (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    )
    report = json.loads(proc.stdout[start:])
    errors = report["issues"]["errors"]
    text = "\n".join(
        f"{e['key']}: {e.get('reason', '')} "
        f"{[(f.get('file') or {}).get('relativePath') for f in e.get('files', [])][:5]}"
        for e in errors
    )
    assert not errors, f"BIDS validator errors in {dataset}:\n{text}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return report


def test_data_samples_is_valid_bids():
    if not (SAMPLE / "dataset_description.json").exists():
        pytest.fail("data_samples/ is missing: run python scripts/make_sample_data.py")
    report = _validate(SAMPLE)
    assert len(report["summary"]["subjects"]) == 12
    assert report["summary"]["dataTypes"] == ["T1w"]


def test_fresh_cohort_is_valid_bids(tmp_path):
    _validator()  # skip before generating anything
    out = tmp_path / "cohort"
    make_cohort(out, n_subjects=4, seed=7, voxel_scale=4.0)
    report = _validate(out)
    assert report["summary"]["subjects"] == ["001", "002", "003", "004"]
