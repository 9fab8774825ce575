"""The ``neuroml`` command: BIDS-App style faces of the library.

Each subcommand turns its arguments into parameters of one library step
(:func:`neuroml.workflows.pipeline.run_step`); no processing happens here.
"""

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from neuroml._utils.threads import configure_openmp
from neuroml._version import __version__
from neuroml.errors import ConfigError, InputError, NeuromlError

__all__ = ["main", "build_parser", "parse_args"]

log = logging.getLogger("neuroml")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _input_pool(text):
    if text == "auto":
        return text
    if text not in ("1", "2", "4"):
        raise argparse.ArgumentTypeError(f"expected auto, 1, 2 or 4, got {text!r}")
    return int(text)


def _int_at_least(low, what):
    """An argparse type: an integer >= ``low``, else a one-line error saying ``what`` was expected."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _resolution(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a voxel size in mm, got {text!r}") from None
    if not 0.5 <= value <= 8:
        raise argparse.ArgumentTypeError(f"voxel size must be between 0.5 and 8 mm, got {text!r}")
    return value


def build_parser():
    """Build the argument parser of the ``neuroml`` command."""
    p = _Parser(
        prog="neuroml",
        description="BIDS MRI to 3D CNN classification and region attribution reports.",
    )
    p.add_argument("--version", action="version", version=f"neuroml {__version__}")
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors (no progress bars)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add_command in _COMMANDS:
        add_command(sub)
    for s in sub.choices.values():
        _add_verbosity(s)
    return p


def _add_verbosity(s):
    """``-v``/``-q`` after the command too; :func:`parse_args` adds them to those before it."""
    s.add_argument(
        "-v",
        "--verbose",
        dest="sub_verbose",
        action="count",
        default=0,
        help="more log output (-vv for debug)",
    )
    s.add_argument(
        "-q",
        "--quiet",
        dest="sub_quiet",
        action="store_true",
        help="only warnings and errors (no progress bars)",
    )


def _add_synth(sub):
    s = sub.add_parser("synth", help="write a synthetic BIDS cohort with ground truth")
    s.set_defaults(handler=_cmd_synth)
    s.add_argument("out_bids", type=Path, help="output BIDS folder")
    s.add_argument("--n-subjects", type=_positive_int, default=30)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--classes",
        nargs="+",
        action="extend",
        default=None,  # None: neuroml.synth.DEFAULT_CLASSES
        help="class labels, healthy class first (default: control MDD SCZ, for anat and func)",
    )
    s.add_argument(
        "--voxel-scale",
        type=float,
        default=1.0,
        help="anat only: multiply every site's voxel size (2 = coarser, smaller files)",
    )
    s.add_argument("--n-jobs", type=_positive_int, default=1, help="anat only: parallel subjects")
    s.add_argument(
        "--n-volumes",
        type=_positive_int,
        default=100,
        help="func only: BOLD volumes per run (TR 2 s)",
    )
    s.add_argument(
        "--func-resolution", type=float, default=4.0, help="func only: voxel size in mm (default 4)"
    )
    s.add_argument(
        "--modality",
        default="anat",
        choices=["anat", "func"],
        help="anat: T1w scans; func: resting-state BOLD in fMRIPrep style with confounds",
    )
    s.add_argument(
        "--func-layout",
        default="fmriprep",
        choices=["fmriprep", "raw"],
        help="func only: fMRIPrep outputs in MNI space, or plain BOLD off MNI without confounds",
    )


def _add_preprocess(sub):
    s = sub.add_parser(
        "preprocess", help="T1w and/or BOLD to MNI space (BIDS-App: participant or group level)"
    )
    s.set_defaults(handler=_cmd_preprocess)
    s.add_argument("bids_dir", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("analysis_level", choices=["participant", "group"])
    s.add_argument("--participant-label", nargs="+", action="extend", default=None, metavar="LABEL")
    s.add_argument("--n-jobs", type=_positive_int, default=1)
    s.add_argument(
        "--resolution",
        type=_resolution,
        default=2.0,
        help="target grid voxel size in mm (default 2)",
    )
    s.add_argument("--normalization", default="zscore", help="zscore or percentile")
    s.add_argument(
        "--modality",
        default="anat",
        choices=["anat", "func", "both"],
        help="T1w scans, BOLD series (maps on the same MNI grid), or both (default anat)",
    )
    s.add_argument(
        "--confounds",
        default="auto",
        help="BOLD confounds: auto (simple with an fMRIPrep table, none without), simple, "
        "scrubbing, compcor, none",
    )


def _add_train(sub):
    s = sub.add_parser("train", help="train a 3D CNN with subject-level cross-validation")
    s.set_defaults(handler=_cmd_train)
    s.add_argument("deriv_dir", type=Path)
    s.add_argument("--run-dir", type=Path, required=True)
    s.add_argument(
        "--label-column",
        default="diagnosis",
        help="participants.tsv column of the labels (default diagnosis)",
    )
    s.add_argument(
        "--participants",
        type=Path,
        default=None,
        help="participants.tsv (default: the raw dataset's)",
    )
    _add_train_fitting(s)
    _add_train_evaluation(s)


def _add_train_fitting(s):
    """The options of ``train`` that choose the network and how it is fitted."""
    s.add_argument(
        "--model",
        default="compact",
        help="compact (default), densenet121, resnet10, resnet18, resnet34",
    )
    s.add_argument(
        "--input-pool",
        default="auto",
        type=_input_pool,
        metavar="{auto,1,2,4}",
        help="compact network: average-pool the input by this factor (default auto: 2x on the 2 mm "
        "grid: a CPU training step ~3.6x cheaper; 1 keeps the full resolution)",
    )
    s.add_argument(
        "--epochs", type=_positive_int, default=20, help="most epochs per fold (default 20)"
    )
    s.add_argument(
        "--folds",
        type=_positive_int,
        default=None,
        help="cross-validation folds (default 3; not with --leave-one-site-out, one fold per site)",
    )
    s.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4,
        help="volumes per batch and process (default 4)",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of splits, weights, shuffling, augmentation (default 0)",
    )
    s.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="default auto: cuda if present",
    )
    s.add_argument("--resume", action="store_true", help="continue an interrupted run in RUN")
    s.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    s.add_argument(
        "--grad-accum", type=_positive_int, default=1, help="batches per optimiser step (default 1)"
    )
    s.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)"
    )
    s.add_argument(
        "--precision",
        default="bf16",
        choices=["bf16", "fp32"],
        help="CUDA: bf16 autocast (default) or plain fp32; the CPU always trains in fp32",
    )
    s.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (pays off on long GPU runs)",
    )


def _add_train_evaluation(s):
    """The options of ``train`` that shape the folds, the inputs and the statistics."""
    s.add_argument(
        "--leave-one-site-out",
        nargs="?",
        const="site",
        default=None,
        metavar="COLUMN",
        help="leave-one-site-out folds on this participants.tsv column (default column: site)",
    )
    s.add_argument(
        "--harmonize",
        default=None,
        choices=["combat"],
        help="ComBat fitted on each fold's training participants: harmonizes the CNN's input voxels "
        "(saved per fold for predict/attribute) and a second baseline's region means",
    )
    s.add_argument(
        "--audit-column",
        nargs="+",
        action="extend",
        default=[],
        metavar="COLUMN",
        help="more participants.tsv columns for the bias audit (sex, age, site always)",
    )
    s.add_argument(
        "--inputs",
        nargs="+",
        action="extend",
        default=None,
        metavar="INPUT",
        help="input channels: T1w and/or BOLD map desc labels (alff falff reho mean conn<name>); "
        "default T1w",
    )
    s.add_argument(
        "--n-bootstrap",
        type=_non_negative_int,
        default=1000,
        help="bootstrap resamples for the 95%% intervals of every metric (default 1000; 0: none)",
    )
    s.add_argument(
        "--n-permutations",
        type=_non_negative_int,
        default=0,
        help="label permutations of the out-of-fold predictions for a p-value of the balanced "
        "accuracy, CNN and baseline (default 0: none; e.g. 1000)",
    )


def _add_harmonization_participants(s):
    """``--participants`` of the commands that apply a run's harmonization to new subjects."""
    s.add_argument(
        "--participants",
        type=Path,
        default=None,
        help="participants.tsv with the subjects' site (age, sex) for a run trained with --harmonize "
        "(default: the raw dataset's)",
    )


def _add_predict(sub):
    s = sub.add_parser("predict", help="predict new subjects with the run's fold ensemble")
    s.set_defaults(handler=_cmd_predict)
    s.add_argument("run_dir", type=Path)
    s.add_argument("deriv_dir", type=Path)
    s.add_argument(
        "--out",
        type=Path,
        default=None,
        help="predictions TSV (default RUN/predict/predictions.tsv)",
    )
    s.add_argument(
        "--participant-label",
        nargs="+",
        action="extend",
        default=None,
        metavar="LABEL",
        help="only these participants (default: every participant in DERIV_DIR)",
    )
    s.add_argument(
        "--force", action="store_true", help="also predict subjects the model was trained on"
    )
    _add_harmonization_participants(s)


def _add_attribute(sub):
    s = sub.add_parser("attribute", help="attribution maps and region tables")
    s.set_defaults(handler=_cmd_attribute)
    s.add_argument("run_dir", type=Path)
    s.add_argument("deriv_dir", type=Path)
    s.add_argument(
        "--method",
        default="region_occlusion",
        help="region_occlusion (default: each atlas region hidden in turn), gradcam, gradcampp, hirescam, "
        "saliency, integrated_gradients, smoothgrad, occlusion",
    )
    s.add_argument("--atlas", default="aal")
    s.add_argument("--target", default="predicted", help="predicted, true, or a class name")
    s.add_argument(
        "--participant-label",
        nargs="+",
        action="extend",
        default=None,
        metavar="LABEL",
        help="explain only these participants (default: all); the others already in the folder are "
        "kept while their maps are valid",
    )
    s.add_argument("--force", action="store_true", help="allow subjects a model was trained on")
    s.add_argument("--no-sanity", action="store_true", help="skip the trust checks (sanity.json)")
    s.add_argument(
        "--n-sanity",
        type=_positive_int,
        default=None,
        help="subjects explained again for the randomization and deletion checks (default 8; not with "
        "--no-sanity)",
    )
    s.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="cpu (default), cuda, or auto (cuda when available)",
    )
    _add_harmonization_participants(s)
    s.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write maps, group maps, tables, sanity.json and attribution.json to DIR (default "
        "RUN/attribution/<method>, which holds one derivatives folder's attribution; "
        "`neuroml report` reads that one)",
    )


def _add_connectome(sub):
    s = sub.add_parser(
        "connectome", help="connectome baseline (BOLD) in the folds of a training run"
    )
    s.set_defaults(handler=_cmd_connectome)
    s.add_argument("run_dir", type=Path)
    s.add_argument(
        "deriv_dir", type=Path, help="derivatives of `neuroml preprocess --modality func`"
    )
    s.add_argument("--atlas", default="aal")
    s.add_argument(
        "--kind",
        default="tangent",
        help="tangent, correlation, partial correlation, covariance, precision",
    )


def _add_report(sub):
    s = sub.add_parser("report", help="one self-contained HTML report of a run")
    s.set_defaults(handler=_cmd_report)
    s.add_argument("run_dir", type=Path)


def _add_deidentify(sub):
    s = sub.add_parser(
        "deidentify",
        help="de-identified copy of a BIDS dataset (keyed pseudonyms, scrubbed headers)",
    )
    s.set_defaults(handler=_cmd_deidentify)
    s.add_argument("bids_dir", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="file holding the secret key (default: $NEUROML_PSEUDONYM_KEY); never written anywhere",
    )
    s.add_argument(
        "--keep-ids",
        action="store_true",
        help="scrub headers and sidecars but keep participant labels",
    )
    s.add_argument(
        "--keep-columns",
        nargs="+",
        action="extend",
        default=[],
        metavar="COLUMN",
        help="more participants.tsv columns to keep (default: participant_id, diagnosis, label, group, "
        "site, scanner, age, sex, gender, handedness; all others are dropped)",
    )


def _add_run(sub):
    s = sub.add_parser("run", help="run a YAML pipeline")
    s.set_defaults(handler=_cmd_run)
    s.add_argument("pipeline", type=Path)
    s.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="override pipeline vars (before they are expanded: vars derived from KEY follow it)",
    )


def _add_demo(sub):
    s = sub.add_parser(
        "demo", help="run pipelines/demo.yaml on data_samples/ and print the report path"
    )
    s.set_defaults(handler=_cmd_demo)
    s.add_argument("--workdir", type=Path, default=Path("neuroml-demo"))


#: The subcommands, in the order ``neuroml --help`` lists them.
_COMMANDS = (
    _add_synth,
    _add_preprocess,
    _add_train,
    _add_predict,
    _add_attribute,
    _add_connectome,
    _add_report,
    _add_deidentify,
    _add_run,
    _add_demo,
)


def parse_args(argv=None):
    """The ``neuroml`` command's arguments, with ``-v``/``-q`` counted before and after the command."""
    args = build_parser().parse_args(argv)
    args.verbose += args.__dict__.pop("sub_verbose", 0)
    sub_quiet = args.__dict__.pop("sub_quiet", False)
    args.quiet = args.quiet or sub_quiet
    return args


class _BarSafeHandler(logging.Handler):
    """Writes log lines to stderr through ``tqdm.write``, so that a line never lands inside a
    progress bar's line: in a terminal the bars are redrawn below it, and in a log file (SLURM)
    it starts a line of its own, so ``grep ^WARNING`` finds it."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            msg = self.format(record)
            isatty = getattr(sys.stderr, "isatty", None)
            if getattr(tqdm, "_instances", None) and not (isatty and isatty()):
                msg = "\n" + msg  # a bar's text (written without a newline) is on the current line
            tqdm.write(msg, file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


def _setup_logging(args):
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    handler = _BarSafeHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    warnings.showwarning = _warning_as_log_line


def _warning_as_log_line(message, category, filename, lineno, file=None, line=None):
    """Show a Python warning as one log line (no source line), so stderr stays readable."""
    text = " ".join(str(message).split())
    log.warning("%s: %s", category.__name__, text)


def _key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _repo_file(*parts):
    return Path(__file__).resolve().parents[1].joinpath(*parts)


def _run_pipeline(path, overrides, quiet):
    """Run a pipeline; return its last step's result and the failed scans of all its steps
    (each also listed on stderr), so the command can exit with status 1 as ``preprocess`` does."""
    from neuroml.workflows.pipeline import iter_pipeline

    result, failed = None, []
    try:
        for name, result in iter_pipeline(path, overrides, show_progress=False if quiet else None):
            failed += [(name, f) for f in list(getattr(result, "failures", None) or [])]
    finally:  # also when a later step stops the pipeline: its error follows the list
        for name, f in failed[:20]:
            print(f"  FAILED ({name}) {f}", file=sys.stderr)
        if failed:
            print(
                f"{len(failed)} scan(s) failed: see failures.tsv in the output folder of each step above",
                file=sys.stderr,
            )
    return result, failed


def _result_line(result):
    """One line for the last step of a pipeline: its output (a report, a run or a derivatives
    folder), a preprocessing count, or the result itself when it is short (a whole training
    summary or predictions table would fill the terminal)."""
    if isinstance(result, (str, os.PathLike)):
        return str(result)
    if isinstance(result, dict):
        for key in ("report", "run_dir", "out_dir", "path"):
            if result.get(key) is not None:
                return str(result[key])
        if "balanced_accuracy" in result:
            return f"balanced accuracy {result['balanced_accuracy']}"
    if all(hasattr(result, k) for k in ("n_done", "n_skipped", "failures")):
        return f"{result.n_done} processed, {result.n_skipped} already done, {len(result.failures)} failed"
    if hasattr(result, "columns") and hasattr(result, "__len__"):  # a predictions table
        return f"{len(result)} rows: {', '.join(map(str, result.columns))}"
    lines = str(result).splitlines() or [""]
    return lines[0][:200] + (" ..." if len(lines) > 1 or len(lines[0]) > 200 else "")


def _run_step(name, **params):
    """Run one library step (:func:`neuroml.workflows.pipeline.run_step`)."""
    from neuroml.workflows import pipeline

    return pipeline.run_step(name, **params)


def _default(step, parameter, given):
    """``given``, or the library's default of ``parameter`` of ``step`` when it is None."""
    from neuroml.workflows.pipeline import step_default

    return step_default(step, parameter) if given is None else given


def _cmd_synth(args):
    from neuroml.synth import DEFAULT_CLASSES

    params = dict(
        out_dir=args.out_bids,
        n_subjects=args.n_subjects,
        seed=args.seed,
        classes=tuple(args.classes or DEFAULT_CLASSES),
        show_progress=not args.quiet,
    )
    if args.modality == "func":
        if args.voxel_scale != 1.0 or args.n_jobs != 1:
            raise ConfigError(
                "--voxel-scale and --n-jobs apply to --modality anat only; "
                "use --func-resolution and --n-volumes for func"
            )
        _run_step(
            "synth_func",
            layout=args.func_layout,
            n_volumes=args.n_volumes,
            resolution=args.func_resolution,
            **params,
        )
    else:
        _run_step("synth", voxel_scale=args.voxel_scale, n_jobs=args.n_jobs, **params)
    print(args.out_bids)
    return 0


def _cmd_preprocess(args):
    if args.analysis_level == "group":
        print(_run_step("preprocess_group", out_dir=args.out_dir))
        return 0
    func_params = (
        {"func_params": {"confounds": args.confounds}}
        if args.modality != "anat" or args.confounds != "auto"
        else {}
    )
    result = _run_step(
        "preprocess",
        bids_dir=args.bids_dir,
        out_dir=args.out_dir,
        participant_labels=args.participant_label,
        n_jobs=args.n_jobs,
        resolution=args.resolution,
        normalization=args.normalization,
        show_progress=not args.quiet,
        modality=args.modality,
        **func_params,
    )
    failures = list(getattr(result, "failures", []) or [])
    print(f"{result.n_done} processed, {result.n_skipped} already done, {len(failures)} failed")
    if not failures:
        return 0
    for f in failures[:20]:
        print(f"  FAILED {f}", file=sys.stderr)
    print(f"see {args.out_dir / 'failures.tsv'}", file=sys.stderr)
    return 1


def _cmd_train(args):
    if args.folds is not None and args.leave_one_site_out:
        raise ConfigError(
            f"--folds {args.folds} and --leave-one-site-out conflict: leave-one-site-out makes "
            "one fold per site; drop one of them"
        )
    _run_step(
        "train",
        deriv_dir=args.deriv_dir,
        run_dir=args.run_dir,
        label_column=args.label_column,
        participants=args.participants,
        model=args.model,
        input_pool=args.input_pool,
        epochs=args.epochs,
        folds=_default("train", "folds", args.folds),
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        lr=args.lr,
        grad_accum=args.grad_accum,
        num_workers=args.num_workers,
        amp=args.precision == "bf16",
        compile=args.compile,
        site_column=args.leave_one_site_out,
        harmonize=args.harmonize,
        audit_columns=args.audit_column,
        n_bootstrap=args.n_bootstrap,
        n_permutations=args.n_permutations,
        show_progress=not args.quiet,
        **({"inputs": args.inputs} if args.inputs else {}),
    )
    print(args.run_dir)
    return 0


def _cmd_predict(args):
    out = args.out or args.run_dir / "predict" / "predictions.tsv"
    _run_step(
        "predict",
        run_dir=args.run_dir,
        deriv_dir=args.deriv_dir,
        out_path=out,
        force=args.force,
        participant_labels=args.participant_label,
        participants=args.participants,
    )
    print(out)
    return 0


def _cmd_attribute(args):
    if args.no_sanity and args.n_sanity is not None:
        raise ConfigError(
            f"--n-sanity {args.n_sanity} and --no-sanity conflict: --no-sanity skips the checks "
            "that --n-sanity sizes; drop one of them"
        )
    out_dir = _run_step(
        "attribute",
        run_dir=args.run_dir,
        deriv_dir=args.deriv_dir,
        method=args.method,
        atlas=args.atlas,
        target=args.target,
        participant_labels=args.participant_label,
        force=args.force,
        sanity=not args.no_sanity,
        n_sanity=_default("attribute", "n_sanity", args.n_sanity),
        device=args.device,
        show_progress=not args.quiet,
        participants=args.participants,
        out_dir=args.out,
    )
    print(out_dir)
    return 0


def _cmd_connectome(args):
    out = _run_step(
        "connectome",
        run_dir=args.run_dir,
        deriv_dir=args.deriv_dir,
        atlas=args.atlas,
        kind=args.kind,
    )
    print(
        f"connectome baseline ({args.kind}): balanced accuracy {out['balanced_accuracy']:.3f} "
        f"-> {args.run_dir / 'connectome_metrics.json'}"
    )
    return 0


def _cmd_report(args):
    print(_run_step("report", run_dir=args.run_dir))
    return 0


def _cmd_deidentify(args):
    result = _run_step(
        "deidentify",
        bids_dir=args.bids_dir,
        out_dir=args.out_dir,
        key_file=args.key_file,
        pseudonymize=not args.keep_ids,
        keep_columns=args.keep_columns,
    )
    print(result["out_dir"])
    return 0


def _cmd_run(args):
    result, failed = _run_pipeline(args.pipeline, dict(args.set), args.quiet)
    if result is not None:
        print(_result_line(result))
    return 1 if failed else 0


def _cmd_demo(args):
    pipeline = _repo_file("pipelines", "demo.yaml")
    if not pipeline.is_file():
        raise InputError(
            "the demo needs the source checkout (pipelines/ and data_samples/); "
            "clone the repository and `pip install -e .`",
            pipeline,
        )
    report, failed = _run_pipeline(pipeline, {"workdir": str(args.workdir.resolve())}, args.quiet)
    print(f"report: {report}")
    return 1 if failed else 0


def _dispatch(args):
    return args.handler(args)


def _quiet_threads_after_interrupt():
    """After Ctrl-C, threads that fail while the command winds down (joblib's process-pool
    manager, whose own child `pgrep` got the same SIGINT) are logged at debug level instead of
    printing a traceback under the one-line message."""
    import threading

    def hook(args):
        if args.exc_type is not SystemExit:
            log.debug(
                "after the interrupt, thread %s: %s: %s",
                getattr(args.thread, "name", "?"),
                args.exc_type.__name__,
                args.exc_value,
            )

    threading.excepthook = hook
    warnings.filterwarnings("ignore", message="Failed to kill subprocesses")


#: Seconds between progress-bar updates when stderr is not a terminal (a SLURM log, a redirect).
LOG_PROGRESS_INTERVAL = "30"


def _progress_for_logs():
    """Progress bars written to a file (stderr not a terminal) update at most every
    :data:`LOG_PROGRESS_INTERVAL` seconds instead of several times a second, unless the user set
    ``TQDM_MININTERVAL``; tqdm reads it when it is imported, so this runs first."""
    isatty = getattr(sys.stderr, "isatty", None)
    if not (isatty and isatty()):
        os.environ.setdefault("TQDM_MININTERVAL", LOG_PROGRESS_INTERVAL)


def main(argv=None):
    """Entry point of the ``neuroml`` console script; returns the exit status."""
    configure_openmp()  # before anything loads torch
    _progress_for_logs()  # before anything loads tqdm
    args = parse_args(argv)
    shown = warnings.showwarning
    _setup_logging(args)
    try:
        return _dispatch(args)
    except NeuromlError as exc:
        text = " ".join(str(exc).splitlines())  # one line, whatever the message holds
        print(f"neuroml {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "train" and not getattr(args, "resume", False):
            # without --resume the interrupted fold starts again (finished folds are kept)
            hint = "rerun the same command with --resume to continue the interrupted fold from its last epoch"
        else:
            hint = "rerun the same command to resume"
        print(f"neuroml: interrupted; {hint}", file=sys.stderr)
        _quiet_threads_after_interrupt()
        return 130
    except OSError as exc:  # disk full, read-only folder, permissions
        name = f" {exc.filename}:" if getattr(exc, "filename", None) else ""
        print(f"neuroml {args.command}: error:{name} {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
