"""Workflows: the stages put together, as the command line and the YAML pipelines run them.

:func:`run_participant_level` and :func:`run_group_level` are the BIDS-App batch (resumable,
parallel, one bad scan never stops it); :func:`train_run` trains and evaluates a network with
subject-level cross-validation and writes the run folder and its model card; :func:`predict_run`
predicts new subjects; :func:`run_pipeline` runs a YAML pipeline of these steps.

:func:`train_run` and :func:`predict_run` are imported on first use (module ``__getattr__``):
the preprocessing batch and its worker processes import this package, and must not pay for
torch and scikit-learn, which only training and prediction need.
"""

import importlib
from typing import TYPE_CHECKING, Any

from neuroml.workflows.bids_app import (
    BatchResult,
    Failure,
    read_failures,
    run_group_level,
    run_participant_level,
    write_dataset_description,
)
from neuroml.workflows.pipeline import (
    STEPS,
    iter_pipeline,
    load_pipeline,
    run_pipeline,
    run_step,
    step_parameters,
)

if TYPE_CHECKING:
    from neuroml.workflows.predict import predict_run
    from neuroml.workflows.train import train_run

_LAZY = {"train_run": "neuroml.workflows.train", "predict_run": "neuroml.workflows.predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BatchResult",
    "Failure",
    "read_failures",
    "run_group_level",
    "run_participant_level",
    "write_dataset_description",
    "train_run",
    "predict_run",
    "STEPS",
    "iter_pipeline",
    "load_pipeline",
    "run_pipeline",
    "run_step",
    "step_parameters",
]
