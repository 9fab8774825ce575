"""The OpenMP wait policy that the neuroml command sets before torch loads."""

import os
import subprocess
import sys

import pytest

from neuroml._utils.threads import OPENMP_DEFAULTS, configure_openmp
from neuroml.cli import main


@pytest.mark.parametrize("chosen", ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"])
def test_a_user_choice_is_kept(chosen):
    env = {chosen: "PASSIVE" if chosen == "OMP_WAIT_POLICY" else "7", "PATH": "/bin"}
    before = dict(env)
    assert configure_openmp(env) == {}
    assert env == before


def test_defaults_are_a_bounded_spin():
    env = {"PATH": "/bin"}
    assert configure_openmp(env) == OPENMP_DEFAULTS
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
    assert "OMP_WAIT_POLICY" not in env  # PASSIVE would make GNU OpenMP sleep at once


def test_the_command_sets_it_before_torch_loads(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", *OPENMP_DEFAULTS)}
    monkeypatch.setattr(os, "environ", env)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert env["GOMP_SPINCOUNT"] == "1000" and env["KMP_BLOCKTIME"] == "0"
    # the setting only works if the command module does not load torch (and OpenMP) on import
    code = (
        "import sys, neuroml.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.strip() == "[]"


def test_a_run_records_the_policy_it_ran_under(tmp_path, monkeypatch):
    import json

    import torch

    from neuroml.runs.outputs import write_provenance

    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", *OPENMP_DEFAULTS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    write_provenance(tmp_path / "provenance.json", 0, "start", torch.device("cpu"), {}, [])
    doc = json.loads((tmp_path / "provenance.json").read_text())
    assert doc["openmp_env"] == {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "1000"}
    assert doc["torch_threads"] == torch.get_num_threads()
