"""Reports: one self-contained HTML file per run (:func:`build_report`), pictures in :mod:`.figures`."""

from neuroml.reports.html import build_report

__all__ = ["build_report"]
