"""Training: the fit loop of MONAI networks, subject-level splits, metrics, a classical baseline,
the connectome baseline, and a scikit-learn style classifier."""

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
from neuroml.training.splits import make_splits
from neuroml.training.trainer import FitResult, TrainSettings, fit

__all__ = [
    "NeuroClassifier",
    "fit",
    "TrainSettings",
    "FitResult",
    "make_splits",
    "classification_report",
    "balanced_accuracy",
    "confusion_matrix",
    "sensitivity_specificity",
    "roc_auc_ovr",
    "roc_curves",
    "bootstrap_ci",
    "permutation_pvalue",
]
