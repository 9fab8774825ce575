"""Reports: one self-contained HTML file per run (:func:`build_report`), pictures in
``neuroml.reports.figures``, the model card in ``neuroml.reports.model_card``."""

from neuroml.reports.html import build_report

__all__ = ["build_report"]
