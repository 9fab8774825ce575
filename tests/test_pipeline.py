"""YAML pipelines and the command line's error handling (no heavy steps)."""

import subprocess
import sys

import pytest

from neuroml.cli import main
from neuroml.errors import ConfigError, InputError
from neuroml.pipeline import load_pipeline, run_step


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_variables_are_substituted_with_their_types(tmp_path):
    path = _write(tmp_path, """
vars:
  workdir: /data/study
  n: 12
steps:
  - synth: {out_dir: "${workdir}/bids", n_subjects: "${n}", seed: 3}
""")
    (name, params), = load_pipeline(path)
    assert name == "synth"
    assert params["out_dir"] == "/data/study/bids"
    assert params["n_subjects"] == 12 and isinstance(params["n_subjects"], int)
    (_, params), = load_pipeline(path, {"workdir": "/x", "n": "30"})
    assert params["out_dir"] == "/x/bids" and params["n_subjects"] == 30


def test_pipeline_dir_variable(tmp_path):
    path = _write(tmp_path, "steps:\n  - report: {run_dir: '${pipeline_dir}/run'}\n")
    (_, params), = load_pipeline(path)
    assert params["run_dir"] == f"{tmp_path.resolve()}/run"


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("steps:\n  - trian: {deriv_dir: d, run_dir: r}\n", ConfigError, "Did you mean 'train'"),
        ("steps:\n  - report: {run_dri: r}\n", ConfigError, "Did you mean 'run_dir'"),
        ("steps:\n  - report: {run_dir: '${nope}'}\n", ConfigError, "unknown variable"),
        ("steps: []\n", InputError, "non-empty 'steps'"),
        ("steps:\n  - report: [1, 2]\n", InputError, "parameters must be a mapping"),
        ("steps: [\n", InputError, "not valid YAML"),
        ("stpes:\n  - report: {run_dir: r}\n", InputError, "non-empty 'steps'"),
    ],
)
def test_pipeline_errors(tmp_path, text, error, match):
    with pytest.raises(error, match=match):
        load_pipeline(_write(tmp_path, text))


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_pipeline(path)
    assert not marker.exists()


def test_run_step_unknown_parameter():
    with pytest.raises(ConfigError, match="'report parameter'"):
        run_step("report", run_dir="r", colour="blue")


def test_shipped_pipelines_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipelines"
    files = sorted(root.glob("*.yaml"))
    assert files, "no pipelines shipped"
    for f in files:
        steps = load_pipeline(f, {"workdir": "/tmp/w"})
        assert steps and all(isinstance(p, dict) for _, p in steps)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "x"], "required: --run-dir"),
        (["preprocess", "a", "b", "subject"], "invalid choice"),
        (["synth", "out", "--n-subjects", "0"], "positive integer"),
        (["preprocess", "a", "b", "participant", "--resolution", "20"], "between 0.5 and 8"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_library_errors_are_one_line(tmp_path, capsys):
    code = main(["run", str(tmp_path / "missing.yaml")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pipeline file not found" in err[0] and "missing.yaml" in err[0]
    assert "Traceback" not in "".join(err)


def test_every_command_has_help():
    for cmd in ["synth", "preprocess", "train", "predict", "attribute", "report", "run", "demo"]:
        out = subprocess.run([sys.executable, "-m", "neuroml", cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: neuroml " + cmd in out.stdout


def test_quiet_pipelines_turn_off_progress_bars_of_the_steps_that_have_them(tmp_path, monkeypatch):
    from neuroml import pipeline

    path = _write(tmp_path, "steps:\n  - synth: {out_dir: b, n_subjects: 2}\n"
                            "  - synth: {out_dir: c, n_subjects: 2, show_progress: true}\n"
                            "  - report: {run_dir: r}\n")
    calls = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: calls.append((name, kw)))
    pipeline.run_pipeline(path, show_progress=False)
    assert [kw.get("show_progress") for _, kw in calls] == [False, True, None]  # report takes none; YAML wins
    calls.clear()
    pipeline.run_pipeline(path)
    assert "show_progress" not in calls[0][1]
