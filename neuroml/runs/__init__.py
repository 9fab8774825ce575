"""The run folder: one module reads and writes it.

A run folder is what ``neuroml train`` writes and every later stage reads: its configuration and
splits, each fold's checkpoint, the predictions tables, the training history and provenance, and
the identities of its training scans. The layout is in ``docs/layout.md``.
"""

from neuroml.runs.checkpoint import load_checkpoint, save_checkpoint
from neuroml.runs.folder import (
    PREDICTION_DTYPES,
    Run,
    check_grid,
    load_run,
    load_splits,
    predictions_table,
    save_splits,
)
from neuroml.runs.outputs import read_history, write_history, write_provenance
from neuroml.runs.sources import source_identity, trained_on, training_twins

__all__ = [
    "Run",
    "load_run",
    "PREDICTION_DTYPES",
    "check_grid",
    "predictions_table",
    "save_splits",
    "load_splits",
    "save_checkpoint",
    "load_checkpoint",
    "read_history",
    "write_history",
    "write_provenance",
    "source_identity",
    "trained_on",
    "training_twins",
]
