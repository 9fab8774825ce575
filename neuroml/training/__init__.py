"""Training: subject-level cross-validation of MONAI networks, metrics, a classical baseline,
reading runs back and predicting new subjects, and a scikit-learn style classifier."""

from neuroml.training.checkpoint import load_checkpoint, save_checkpoint
from neuroml.training.estimator import NeuroClassifier
from neuroml.training.metrics import (
    balanced_accuracy,
    bootstrap_ci,
    classification_report,
    confusion_matrix,
    permutation_pvalue,
    roc_auc_ovr,
    roc_curves,
    sensitivity_specificity,
)
from neuroml.training.predict import predict_run
from neuroml.training.run import Run, load_run, train_run
from neuroml.training.splits import make_splits
from neuroml.training.trainer import FitResult, TrainSettings, fit

__all__ = [
    "train_run",
    "load_run",
    "Run",
    "predict_run",
    "NeuroClassifier",
    "fit",
    "TrainSettings",
    "FitResult",
    "make_splits",
    "save_checkpoint",
    "load_checkpoint",
    "classification_report",
    "balanced_accuracy",
    "confusion_matrix",
    "sensitivity_specificity",
    "roc_auc_ovr",
    "roc_curves",
    "bootstrap_ci",
    "permutation_pvalue",
]
