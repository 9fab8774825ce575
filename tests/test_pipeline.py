"""YAML pipelines and the command line's error handling (no heavy steps)."""

import subprocess
import sys

import pytest

from neuroml.cli import main
from neuroml.errors import ConfigError, InputError
from neuroml.workflows.pipeline import load_pipeline, run_step


def _write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_variables_are_substituted_with_their_types(tmp_path):
    path = _write(
        tmp_path,
        """
vars:
  workdir: /data/study
  n: 12
steps:
  - synth: {out_dir: "${workdir}/bids", n_subjects: "${n}", seed: 3}
""",
    )
    ((name, params),) = load_pipeline(path)
    assert name == "synth"
    assert params["out_dir"] == "/data/study/bids"
    assert params["n_subjects"] == 12 and isinstance(params["n_subjects"], int)
    ((_, params),) = load_pipeline(path, {"workdir": "/x", "n": "30"})
    assert params["out_dir"] == "/x/bids" and params["n_subjects"] == 30


def test_pipeline_dir_variable(tmp_path):
    path = _write(tmp_path, "steps:\n  - report: {run_dir: '${pipeline_dir}/run'}\n")
    ((_, params),) = load_pipeline(path)
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
    with pytest.raises(
        ConfigError, match="step 'report': unknown parameter 'colour'. Valid: out_path, run_dir"
    ):
        run_step("report", run_dir="r", colour="blue")


@pytest.mark.parametrize(
    "params, match",
    [
        (
            "n_job: 2",
            r"p\.yaml step 2 \(preprocess\): unknown parameter 'n_job'\. Did you mean 'n_jobs'\?",
        ),
        (
            "resolutoin: 3",
            r"p\.yaml step 2 \(preprocess\): unknown parameter 'resolutoin'\. Did you mean 'resolution'",
        ),
        (
            "normalisation: zscore",
            r"unknown parameter 'normalisation'\. Did you mean 'normalization'",
        ),
        (
            "func_params: {confound: simple}",
            r"step 2 \(preprocess\): unknown func_params key 'confound'\. "
            r"Did you mean 'confounds'",
        ),
    ],
)
def test_typos_in_forwarded_parameters_fail_at_load_time(tmp_path, monkeypatch, params, match):
    # preprocess takes **params (forwarded to the T1w checker): a typo must stop the pipeline
    # before the (slow) first step runs, naming the file, the step and the closest valid name
    from neuroml.workflows import pipeline

    path = _write(
        tmp_path,
        "steps:\n  - synth: {out_dir: b}\n"
        f"  - preprocess: {{bids_dir: b, out_dir: d, {params}}}\n",
    )
    ran = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: ran.append(name))
    with pytest.raises(ConfigError, match=match):
        pipeline.run_pipeline(path)
    assert ran == []


def test_forwarded_parameters_that_exist_pass():
    path_params = dict(
        bids_dir="b",
        out_dir="d",
        n4=False,
        normalization="percentile",
        seed=1,
        func_params={"confounds": "scrubbing"},
    )
    from neuroml.workflows.pipeline import _check_params

    _check_params("preprocess", path_params)  # no error


def test_every_kwargs_step_has_its_names_listed():
    import inspect

    from neuroml.workflows.pipeline import KWARGS_NAMES, STEPS, _resolve, step_parameters

    for name in STEPS:
        takes_kwargs = any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(_resolve(name)).parameters.values()
        )
        assert takes_kwargs == (name in KWARGS_NAMES), name
        assert step_parameters(name) and "params" not in step_parameters(name)


def test_overridden_vars_are_set_before_derived_vars_are_expanded(tmp_path):
    path = _write(
        tmp_path,
        """
vars:
  workdir: ./w
  deriv: ${workdir}/derivatives
  n: 12
steps:
  - preprocess_group: {out_dir: "${deriv}"}
  - synth: {out_dir: "${workdir}/bids", n_subjects: "${n}"}
""",
    )
    (_, group), (_, synth) = load_pipeline(path, {"workdir": "/scratch/x", "n": "30"})
    assert group["out_dir"] == "/scratch/x/derivatives"  # derived var follows the override
    assert synth == {"out_dir": "/scratch/x/bids", "n_subjects": 30}
    (_, group), _ = load_pipeline(
        path, {"deriv": "/elsewhere"}
    )  # a derived var itself can be overridden
    assert group["out_dir"] == "/elsewhere"
    (_, group), _ = load_pipeline(path)
    assert group["out_dir"] == "./w/derivatives"


def test_overrides_may_define_vars_the_file_uses_but_not_unknown_ones(tmp_path):
    path = _write(
        tmp_path,
        "vars:\n  workdir: ./w\n  out: ${workdir}/${site}\n"
        "steps:\n  - report: {run_dir: '${out}'}\n",
    )
    ((_, params),) = load_pipeline(path, {"site": "a"})
    assert params["run_dir"] == "./w/a"
    with pytest.raises(
        ConfigError,
        match=r"p\.yaml: --set wrokdir: the pipeline has no variable 'wrokdir'\. "
        r"Did you mean 'workdir'",
    ):
        load_pipeline(path, {"wrokdir": "/x", "site": "a"})


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
        (["train", "d", "--run-dir", "r", "--n-permutations", "-1"], "integer >= 0, got '-1'"),
        (["train", "d", "--run-dir", "r", "--n-bootstrap", "many"], "integer >= 0, got 'many'"),
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


@pytest.mark.parametrize("value", ["foo", "=x"])
def test_set_without_key_value_is_a_usage_error(tmp_path, capsys, value):
    path = _write(tmp_path, "steps:\n  - report: {run_dir: r}\n")
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--set", value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "neuroml run: error: argument --set: expected KEY=VALUE"
    )


def test_run_reports_a_typo_in_a_yaml_step_with_exit_2(tmp_path, capsys):
    path = _write(tmp_path, "steps:\n  - preprocess: {bids_dir: b, out_dir: d, n_job: 2}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"neuroml run: error: {path} step 1 (preprocess): unknown parameter 'n_job'. "
        "Did you mean 'n_jobs'?"
    ]


def test_synth_default_classes_are_the_same_for_anat_and_func(monkeypatch, tmp_path):
    from neuroml.synth.cohort import DEFAULT_CLASSES
    from neuroml.workflows import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: calls.append((name, kw)))
    for modality in ("anat", "func"):
        assert main(["-q", "synth", str(tmp_path / modality), "--modality", modality]) == 0
    assert [name for name, _ in calls] == ["synth", "synth_func"]
    assert (
        [kw["classes"] for _, kw in calls]
        == [("control", "MDD", "SCZ")] * 2
        == [DEFAULT_CLASSES] * 2
    )
    calls.clear()
    assert (
        main(["-q", "synth", str(tmp_path / "c"), "--modality", "func", "--classes", "HC", "ADHD"])
        == 0
    )
    assert calls[0][1]["classes"] == ("HC", "ADHD")


def test_library_errors_are_one_line(tmp_path, capsys):
    code = main(["run", str(tmp_path / "missing.yaml")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pipeline file not found" in err[0] and "missing.yaml" in err[0]
    assert "Traceback" not in "".join(err)


def test_every_command_has_help():
    for cmd in ["synth", "preprocess", "train", "predict", "attribute", "report", "run", "demo"]:
        out = subprocess.run(
            [sys.executable, "-m", "neuroml", cmd, "--help"], capture_output=True, text=True
        )
        assert out.returncode == 0 and "usage: neuroml " + cmd in out.stdout


def test_quiet_pipelines_turn_off_progress_bars_of_the_steps_that_have_them(tmp_path, monkeypatch):
    from neuroml.workflows import pipeline

    path = _write(
        tmp_path,
        "steps:\n  - synth: {out_dir: b, n_subjects: 2}\n"
        "  - synth: {out_dir: c, n_subjects: 2, show_progress: true}\n"
        "  - report: {run_dir: r}\n",
    )
    calls = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: calls.append((name, kw)))
    pipeline.run_pipeline(path, show_progress=False)
    assert [kw.get("show_progress") for _, kw in calls] == [
        False,
        True,
        None,
    ]  # report takes none; YAML wins
    calls.clear()
    pipeline.run_pipeline(path)
    assert "show_progress" not in calls[0][1]


def test_a_value_a_step_refuses_names_the_pipeline_file_and_step(tmp_path, capsys):
    out = tmp_path / "bids"
    path = _write(tmp_path, f"steps:\n  - synth: {{out_dir: {out}, n_subjects: abc}}\n")
    assert main(["-q", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"neuroml run: error: {path} step 1 (synth): ")
    assert "n_subjects" in err[0]


def test_run_exits_1_when_a_step_reports_failed_scans(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from neuroml.workflows import pipeline

    path = _write(
        tmp_path, "steps:\n  - preprocess: {bids_dir: b, out_dir: d}\n  - report: {run_dir: r}\n"
    )
    results = {
        "preprocess": SimpleNamespace(failures=["sub-02 anat/sub-02_T1w.nii.gz: truncated"]),
        "report": "r/report.html",
    }
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: results[name])
    assert main(["-q", "run", str(path)]) == 1  # the later steps still ran
    captured = capsys.readouterr()
    assert captured.out.strip() == "r/report.html"
    assert "sub-02" in captured.err and "failures.tsv" in captured.err
    results["preprocess"] = SimpleNamespace(failures=[])
    assert main(["-q", "run", str(path)]) == 0


def test_failed_scans_are_listed_when_a_later_step_stops_the_pipeline(
    tmp_path, monkeypatch, capsys
):
    from types import SimpleNamespace

    from neuroml.errors import InputError
    from neuroml.workflows import pipeline

    path = _write(
        tmp_path,
        "steps:\n  - preprocess: {bids_dir: b, out_dir: d}\n  - train: {deriv_dir: d, run_dir: r}\n",
    )

    def step(name, **kw):
        if name == "train":
            raise InputError("no preprocessed images", tmp_path / "d")
        return SimpleNamespace(failures=["sub-02 anat/sub-02_T1w.nii.gz: truncated"])

    monkeypatch.setattr(pipeline, "run_step", step)
    assert main(["-q", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "FAILED (preprocess) sub-02" in err and "no preprocessed images" in err
    assert err.index("sub-02") < err.index("no preprocessed images")


def test_an_os_error_names_the_file_then_the_problem(tmp_path, monkeypatch, capsys):
    import errno

    from neuroml.workflows import pipeline

    path = tmp_path / "a-file"

    def fail(name, **kw):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path / "run"))

    monkeypatch.setattr(pipeline, "run_step", fail)
    assert main(["report", str(path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"neuroml report: error: {path / 'run'}: Not a directory"]


def test_folds_with_leave_one_site_out_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    from neuroml.workflows import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: calls.append(kw))
    argv = ["-q", "train", str(tmp_path / "d"), "--run-dir", str(tmp_path / "r")]
    assert main(argv + ["--folds", "5", "--leave-one-site-out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--folds 5 and --leave-one-site-out conflict" in err[0] and not calls
    assert main(argv + ["--leave-one-site-out", "scanner"]) == 0
    assert main(argv) == 0 and main(argv + ["--folds", "5"]) == 0
    assert [(kw["site_column"], kw["folds"]) for kw in calls] == [
        ("scanner", 3),
        (None, 3),
        (None, 5),
    ]


@pytest.mark.parametrize(
    "vars_text, used", [("  a: ${b}/x\n  b: /data\n", "b"), ("  a: ${a}/x\n", "a")]
)
def test_a_var_built_from_one_defined_below_it_is_named_not_unknown(tmp_path, vars_text, used):
    path = _write(tmp_path, "vars:\n" + vars_text + "steps:\n  - report: {run_dir: '${a}'}\n")
    with pytest.raises(
        ConfigError, match=rf"'a' uses \$\{{{used}\}}, which is not defined above it"
    ) as info:
        load_pipeline(path)
    assert "unknown variable" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("value", ["", "~", "null"])
def test_an_empty_variable_is_refused_inside_a_path_not_written_as_none(tmp_path, value):
    path = _write(
        tmp_path,
        "vars:\n  workdir: /w\n  n: 3\nsteps:\n"
        "  - synth: {out_dir: '${workdir}/bids', n_subjects: '${n}'}\n",
    )
    with pytest.raises(ConfigError, match=r"\$\{workdir\} is empty .*--set workdir=VALUE"):
        load_pipeline(path, {"workdir": value})
    ((_, params),) = load_pipeline(path, {"n": value})  # a whole-value variable keeps its null
    assert params == {"out_dir": "/w/bids", "n_subjects": None}


def test_n_sanity_with_no_sanity_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    from neuroml.workflows import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: calls.append(kw))
    argv = ["-q", "attribute", str(tmp_path / "r"), str(tmp_path / "d")]
    assert main(argv + ["--no-sanity", "--n-sanity", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--n-sanity 12 and --no-sanity conflict" in err[0] and not calls
    assert (
        main(argv + ["--no-sanity"]) == 0
        and main(argv) == 0
        and main(argv + ["--n-sanity", "12"]) == 0
    )
    assert [(kw["sanity"], kw["n_sanity"]) for kw in calls] == [(False, 8), (True, 8), (True, 12)]


def test_an_unknown_top_level_key_names_the_pipeline_file(tmp_path):
    path = _write(tmp_path, "name: x\nvar:\n  workdir: /w\nsteps:\n  - report: {run_dir: r}\n")
    with pytest.raises(ConfigError, match=r"Did you mean 'vars'") as info:
        load_pipeline(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_folder_given_as_the_pipeline_is_named_as_a_folder(tmp_path):
    with pytest.raises(InputError, match=r"is a folder, not a pipeline file") as info:
        load_pipeline(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: ")


def test_repeated_set_options_all_apply(tmp_path, monkeypatch):
    # `--set workdir=X --set n=Y` is the natural way to write two overrides: the first one must not
    # be dropped (the pipeline then wrote into its default workdir, under the current folder)
    import neuroml.cli

    seen = []
    monkeypatch.setattr(
        neuroml.cli,
        "_run_pipeline",
        lambda path, overrides, quiet: seen.append(overrides) or (None, []),
    )
    path = _write(
        tmp_path, "vars: {workdir: ./w, n: 1}\nsteps:\n  - report: {run_dir: '${workdir}'}\n"
    )
    assert main(["run", str(path), "--set", "workdir=/x", "--set", "n=2"]) == 0
    assert main(["run", str(path), "--set", "workdir=/x", "n=2"]) == 0
    assert seen[0] == seen[1] and seen[0]["workdir"] == "/x" and str(seen[0]["n"]) == "2"


@pytest.mark.parametrize(
    "argv, dest",
    [
        (["preprocess", "b", "o", "participant"], "participant_label"),
        (["predict", "r", "d"], "participant_label"),
        (["attribute", "r", "d"], "participant_label"),
    ],
)
def test_a_repeated_list_option_keeps_every_value(argv, dest):
    # `--participant-label 01 --participant-label 02` (as other BIDS apps accept it) processed only 02
    from neuroml.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        argv + ["--participant-label", "01", "--participant-label", "02", "03"]
    )
    assert getattr(args, dest) == ["01", "02", "03"]
    assert getattr(parser.parse_args(argv), dest) is None


def test_repeated_column_and_input_options_keep_every_value():
    from neuroml.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "d",
            "--run-dir",
            "r",
            "--audit-column",
            "a",
            "--audit-column",
            "b",
            "--inputs",
            "alff",
            "--inputs",
            "reho",
        ]
    )
    assert args.audit_column == ["a", "b"] and args.inputs == ["alff", "reho"]
    args = parser.parse_args(["deidentify", "b", "o", "--keep-columns", "x", "--keep-columns", "y"])
    assert args.keep_columns == ["x", "y"]
    assert parser.parse_args(["train", "d", "--run-dir", "r"]).audit_column == []


def test_each_pipeline_step_is_announced_once(tmp_path, monkeypatch, neuroml_log):
    # "pipeline step 1/2: report" followed by "step report" said the same thing twice per step
    import neuroml.workflows.pipeline
    from neuroml.workflows.pipeline import run_pipeline

    monkeypatch.setattr(neuroml.workflows.pipeline, "_resolve", lambda name: lambda **params: None)
    path = _write(tmp_path, "steps:\n  - report: {run_dir: a}\n  - report: {run_dir: b}\n")
    run_pipeline(path)
    infos = [r.getMessage() for r in neuroml_log.records if r.levelname == "INFO"]
    assert "pipeline step 1/2: report" in infos and "pipeline step 2/2: report" in infos
    assert "step report" not in infos


def test_progress_bars_in_a_log_file_update_rarely(monkeypatch):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}
    monkeypatch.setattr(os, "environ", env)
    with pytest.raises(SystemExit):
        main(["--help"])  # pytest's stderr is not a terminal
    assert env["TQDM_MININTERVAL"] == "30"
    env["TQDM_MININTERVAL"] = "5"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert env["TQDM_MININTERVAL"] == "5"  # the user's choice
    # what tqdm then writes to a file: the first and last state, not ten updates a second
    code = (
        "import time, sys; from neuroml.cli import _progress_for_logs; {}; from tqdm import tqdm\n"
        "for _ in tqdm(range(12)): time.sleep(0.05)"
    )
    clean = {k: v for k, v in env.items() if k != "TQDM_MININTERVAL"}
    clean["PYTHONPATH"] = os.pathsep.join(sys.path)
    writes = [
        subprocess.run(
            [sys.executable, "-c", code.format(call)],
            capture_output=True,  # bytes: keep \r
            env=clean,
            check=True,
        ).stderr.count(b"\r")
        for call in ("_progress_for_logs()", "None")
    ]
    assert writes[0] <= 2 < writes[1], writes


def test_repeated_synth_classes_all_apply_and_the_default_is_kept(tmp_path, monkeypatch):
    from neuroml.synth import DEFAULT_CLASSES
    from neuroml.workflows import pipeline

    calls = []
    monkeypatch.setattr(pipeline, "run_step", lambda name, **kw: calls.append(kw) or {})
    out = str(tmp_path / "b")
    assert main(["-q", "synth", out, "--classes", "control", "--classes", "MDD", "BD"]) == 0
    assert main(["-q", "synth", out]) == 0
    assert calls[0]["classes"] == ("control", "MDD", "BD")  # the first --classes was dropped before
    assert calls[1]["classes"] == tuple(DEFAULT_CLASSES)


def test_a_log_line_never_continues_a_progress_bar_line_in_a_log_file():
    import os
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "from neuroml.cli import _progress_for_logs, _setup_logging\n"
        "from types import SimpleNamespace\n"
        "_progress_for_logs()\n"
        "_setup_logging(SimpleNamespace(quiet=False, verbose=0))\n"
        "from tqdm.auto import tqdm\n"
        "bar = tqdm(total=3)\n"
        "bar.update(1)\n"
        "logging.getLogger('neuroml').warning('scan sub-02 failed')\n"
        "bar.update(2)\n"
        "bar.close()\n"
        "logging.getLogger('neuroml').info('done')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    err = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, check=True
    ).stderr.decode()
    lines = err.split("\n")
    assert (
        "WARNING: scan sub-02 failed" in lines and "INFO: done" in lines
    )  # each a line of its own


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [
        (["report", "r"], False, 0),
        (["-q", "report", "r"], True, 0),
        (["report", "r", "-q"], True, 0),
        (["report", "--quiet", "r"], True, 0),
        (["-v", "report", "r"], False, 1),
        (["report", "r", "-vv"], False, 2),
        (["-q", "train", "d", "--run-dir", "r", "--epochs", "2"], True, 0),
        (["train", "d", "--run-dir", "r", "-q", "--epochs", "2"], True, 0),
        (["-vv", "report", "r", "-v"], False, 3),
        (["-v", "train", "d", "--run-dir", "r", "-v"], False, 2),
        (["-q", "report", "r", "-v"], True, 1),
    ],
)
def test_quiet_and_verbose_go_before_or_after_the_command(argv, quiet, verbose):
    from neuroml.cli import parse_args

    args = parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)
    assert not hasattr(args, "sub_verbose") and not hasattr(args, "sub_quiet")


def test_run_prints_one_line_for_the_last_step(tmp_path):
    import dataclasses

    import pandas as pd

    from neuroml.cli import _result_line

    assert _result_line(tmp_path / "report.html") == str(tmp_path / "report.html")
    summary = {
        "run_dir": "/runs/a",
        "balanced_accuracy": 0.9,
        "folds": [{"fold": i} for i in range(5)],
    }
    assert _result_line(summary) == "/runs/a"  # not the whole training summary
    assert _result_line({"out_dir": "/bids", "participants": [{}] * 90}) == "/bids"
    assert _result_line({"balanced_accuracy": 0.75, "model": "tangent"}) == "balanced accuracy 0.75"

    @dataclasses.dataclass
    class Batch:
        n_done: int = 3
        n_skipped: int = 9
        failures: list = dataclasses.field(default_factory=lambda: ["x"])

    assert _result_line(Batch()) == "3 processed, 9 already done, 1 failed"
    table = pd.DataFrame({"participant_id": ["sub-01"] * 40, "predicted_label": ["MDD"] * 40})
    assert _result_line(table) == "40 rows: participant_id, predicted_label"

    class Long:
        def __str__(self):
            return "first line\nsecond line"

    assert _result_line(Long()) == "first line ..." and _result_line(7) == "7"
