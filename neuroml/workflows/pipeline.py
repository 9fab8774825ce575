"""Steps and YAML pipelines: the one place that maps step names to library functions.

The command line and the YAML pipelines both call :func:`run_step`, so neither holds
logic of its own. A pipeline file is::

    name: demo
    vars:                       # optional; ${name} is substituted in every string
      workdir: ./neuroml-demo
    steps:
      - preprocess: {bids_dir: "${pipeline_dir}/../data_samples", out_dir: "${workdir}/derivatives"}
      - train: {deriv_dir: "${workdir}/derivatives", run_dir: "${workdir}/run"}

``${pipeline_dir}`` is the folder of the YAML file; relative paths in the values of
``*_dir``/``*_path`` keys are resolved against the current working directory.
"""

import importlib
import inspect
import logging
import re
from pathlib import Path

from neuroml._utils.options import closest, look_up_option
from neuroml.errors import ConfigError, InputError

__all__ = [
    "STEPS",
    "run_step",
    "step_parameters",
    "step_default",
    "load_pipeline",
    "iter_pipeline",
    "run_pipeline",
]

log = logging.getLogger("neuroml")

#: Step name -> "module:function" of the library function that does the work.
STEPS = {
    "synth": "neuroml.synth:make_cohort",
    "synth_func": "neuroml.synth.func:make_func_cohort",
    "preprocess": "neuroml.workflows:run_participant_level",
    "preprocess_group": "neuroml.workflows:run_group_level",
    "connectome": "neuroml.training.connectome:connectome_run",
    "train": "neuroml.workflows:train_run",
    "predict": "neuroml.workflows:predict_run",
    "attribute": "neuroml.attribution:attribute_run",
    "report": "neuroml.reports:build_report",
    "deidentify": "neuroml.io.privacy:deidentify_bids",
}


def _resolve(name):
    name = look_up_option("step", name, STEPS)
    module, _, func = STEPS[name].partition(":")
    return getattr(importlib.import_module(module), func)


#: Steps whose function takes ``**kwargs``: "module:attribute" of the mapping whose keys are
#: the names those keyword arguments may have (the function forwards them to a checker of it).
KWARGS_NAMES = {
    "preprocess": "neuroml.preprocessing.t1w:DEFAULT_PARAMS",
}

#: Parameters that hold a mapping of options: (step, parameter) -> "module:attribute" of the
#: mapping whose keys are the valid option names.
NESTED_NAMES = {
    ("preprocess", "func_params"): "neuroml.functional.bold:FUNC_DEFAULT_PARAMS",
}


def _names_of(target):
    module, _, attr = target.partition(":")
    return list(getattr(importlib.import_module(module), attr))


def _unknown(key, allowed, what, prefix):
    close = closest(key, allowed)
    hint = (
        f" Did you mean {close!r}?"
        if close is not None
        else f" Valid: {', '.join(sorted(allowed))}."
    )
    return ConfigError(f"{prefix}unknown {what} {key!r}.{hint}")


def step_parameters(name):
    """Return the names of the parameters step ``name`` accepts (its ``**kwargs`` spelled out)."""
    sig = inspect.signature(_resolve(name))
    allowed = [
        p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        if name not in KWARGS_NAMES:  # pragma: no cover - tests check every such step is listed
            return None
        allowed += [k for k in _names_of(KWARGS_NAMES[name]) if k not in allowed]
    return allowed


def step_default(name, parameter):
    """Return the default value of ``parameter`` of step ``name``, read from its library function.

    The command line leaves an option unset (None) when the user does not give it and takes
    this value, so that the default has one source.
    """
    return inspect.signature(_resolve(name)).parameters[parameter].default


def _check_params(name, params, where=None):
    """Check the parameter names of step ``name`` (and of its mapping parameters) before any step runs.

    ``where`` (e.g. ``"p.yaml step 2"``) starts the message of the :class:`ConfigError`.
    """
    prefix = f"{where} ({name}): " if where else f"step {name!r}: "
    allowed = step_parameters(name)
    if allowed is None:
        return
    for key in params:
        if key not in allowed:
            raise _unknown(key, allowed, "parameter", prefix)
    for (step, param), target in NESTED_NAMES.items():
        value = params.get(param) if step == name else None
        if isinstance(value, dict):
            names = _names_of(target)
            for key in value:
                if key not in names:
                    raise _unknown(key, names, f"{param} key", prefix)
    sig = inspect.signature(_resolve(name))
    missing = [
        p.name
        for p in sig.parameters.values()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in params
    ]
    if missing:
        raise ConfigError(f"{prefix}missing parameter(s) {', '.join(missing)}")


def run_step(name, **params):
    """Run one named step with keyword parameters; return what the library returns.

    Raises
    ------
    ConfigError
        For an unknown step or parameter (with a "did you mean" hint).
    """
    func = _resolve(name)
    _check_params(name, params)
    log.debug("step %s", name)  # a pipeline logs "pipeline step i/n: NAME"; a command names itself
    return func(**params)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(value, variables, where):
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]  # keep the variable's type (int, float, list)

        def repl(match):
            key = match.group(1)
            if key not in variables:
                raise ConfigError(
                    f"{where}: unknown variable ${{{key}}} (known: {sorted(variables)})"
                )
            if variables[key] is None:  # never "None/bids": an empty --set value or YAML null (~)
                raise ConfigError(
                    f"{where}: variable ${{{key}}} is empty (null) but used in {value!r}; "
                    f"give it a value (--set {key}=VALUE)"
                )
            return str(variables[key])

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    return value


def _references(value):
    """The variable names ``${name}`` used anywhere in a parsed YAML document."""
    if isinstance(value, str):
        return set(_VAR.findall(value))
    if isinstance(value, (list, tuple)):
        return set().union(*map(_references, value)) if value else set()
    if isinstance(value, dict):
        return _references(list(value.values()))
    return set()


def load_pipeline(path, overrides=None):
    """Read and validate a pipeline YAML (safely: ``yaml.safe_load``).

    Parameters
    ----------
    path : str or Path
    overrides : dict, optional
        Values that replace the file's ``vars`` before they are expanded, so variables derived
        from an overridden one follow it (e.g. ``{"workdir": "/scratch/x"}``), or that define
        variables the file uses without a value. Text values are read as YAML scalars.

    Raises
    ------
    InputError
        For a missing or malformed file.
    ConfigError
        For an unknown step, variable or parameter (the message names the file, the step and
        the closest valid name), or an override of a variable the file neither has nor uses.

    Returns
    -------
    list of (str, dict)
        The steps with their substituted parameters.
    """
    path = Path(path)
    doc = _read_document(path)
    given = _read_overrides(overrides)
    _check_overrides(path, doc, given)
    variables = _expand_vars(path, doc.get("vars") or {}, given)
    return [_load_step(path, i, entry, variables) for i, entry in enumerate(doc["steps"])]


def _read_document(path):
    """The parsed pipeline file, with its top-level keys, ``steps`` and ``vars`` checked."""
    import yaml

    if not path.is_file():
        raise InputError(
            "is a folder, not a pipeline file (PIPELINE.yaml)"
            if path.is_dir()
            else "pipeline file not found",
            path,
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise InputError("a pipeline needs a non-empty 'steps' list", path)
    for key in doc:
        try:
            look_up_option("pipeline key", key, ["name", "description", "vars", "steps"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(doc.get("vars") or {}, dict):
        raise InputError("'vars' must be a mapping", path)
    return doc


def _read_overrides(overrides):
    """The override values; text (from the command line) is read as a YAML scalar ("90" -> 90)."""
    import yaml

    given = {}
    for key, value in (overrides or {}).items():
        try:
            given[key] = yaml.safe_load(value) if isinstance(value, str) else value
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--set {key}=...: not a valid YAML value ({str(exc).splitlines()[0]})"
            ) from None
    return given


def _check_overrides(path, doc, given):
    """Refuse an override of a variable the file neither defines nor uses."""
    file_vars = doc.get("vars") or {}
    used = _references(doc)
    for key in given:
        if key not in file_vars and key != "pipeline_dir" and key not in used:
            known = sorted({*file_vars, *used})
            close = closest(key, known)
            hint = (
                f" Did you mean {close!r}?"
                if close is not None
                else f" Its variables: {', '.join(known) or 'none'}."
            )
            raise ConfigError(f"{path}: --set {key}: the pipeline has no variable {key!r}.{hint}")


def _expand_vars(path, file_vars, given):
    """The pipeline's variables: ``pipeline_dir``, the overrides, then the file's ``vars`` in order.

    Overrides replace the file's values before anything is expanded, so derived variables
    (``derivatives: ${workdir}/derivatives``) follow an overridden ``workdir``.
    """
    variables = {"pipeline_dir": str(path.resolve().parent)}
    variables.update({k: v for k, v in given.items() if k not in file_vars})
    for key, value in file_vars.items():
        if key in given:
            variables[key] = given[key]
            continue
        late = sorted(r for r in _references(value) if r not in variables and r in file_vars)
        if late:  # "unknown variable" would be wrong: the file has it, below (or it is the variable itself)
            raise ConfigError(
                f"{path}: vars: {key!r} uses ${{{late[0]}}}, which is not defined above it "
                "(vars are expanded in order; define a variable before those built from it)"
            )
        variables[key] = _substitute(value, variables, str(path))
    return variables


def _load_step(path, i, entry, variables):
    """Step ``i`` (from 0) of the file as ``(name, params)``, substituted and checked."""
    where = f"{path} step {i + 1}"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise InputError(f"step {i + 1} must be a mapping with one key, the step name", path)
    ((name, params),) = entry.items()
    try:
        name = look_up_option("step", name, STEPS)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    params = params or {}
    if not isinstance(params, dict):
        raise InputError(f"step {i + 1} ({name}): parameters must be a mapping", path)
    params = _substitute(params, variables, where)
    _check_params(name, params, where)
    return name, params


def iter_pipeline(path, overrides=None, show_progress=None):
    """Run every step of a pipeline YAML in order, yielding ``(name, result)`` after each step.

    The whole file is checked (:func:`load_pipeline`) before the first step runs.
    ``show_progress`` (True/False) is given to every step that takes it and whose YAML does
    not set it (``neuroml -q run`` passes False); None leaves the steps' defaults.

    Raises
    ------
    ConfigError
        For an invalid parameter value met by a step; the message starts with the file and
        the step (``p.yaml step 2 (train): ...``).
    """
    steps = load_pipeline(path, overrides)
    for i, (name, params) in enumerate(steps, 1):
        if (
            show_progress is not None
            and "show_progress" not in params
            and "show_progress" in inspect.signature(_resolve(name)).parameters
        ):
            params = {**params, "show_progress": bool(show_progress)}
        log.info("pipeline step %d/%d: %s", i, len(steps), name)
        try:
            result = run_step(name, **params)
        except ConfigError as exc:  # a value the step refuses: say which file and step holds it
            raise ConfigError(f"{path} step {i} ({name}): {exc}") from None
        failures = getattr(result, "failures", None)
        if failures:
            log.warning(
                "step %s: %d scan(s) failed (see failures.tsv); continuing with the rest",
                name,
                len(failures),
            )
        yield name, result


def run_pipeline(path, overrides=None, show_progress=None):
    """Run every step of a pipeline YAML in order; return the last step's result.

    See :func:`iter_pipeline` for ``show_progress`` and the errors.
    """
    result = None
    for _, result in iter_pipeline(path, overrides, show_progress):  # noqa: B007 (the last step's)
        pass
    return result
