"""Helpers shared by the report's pages: escaping, tables, pictures, reading run files."""

import base64
import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from neuroml._utils.fileio import read_json
from neuroml.errors import InputError
from neuroml.reports.checks import fmt_num as _num

log = logging.getLogger("neuroml")


def _e(value):
    """Escape any value for HTML text or attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _table(headers, rows, numeric=()):
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(_num(c))}</td>'
            if i in numeric or isinstance(c, (float, np.floating))
            else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png, alt):
    return (
        f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def _load_json(path, kinds=(dict,), reader="report"):
    """The JSON document at ``path``, or None when it is absent, unreadable or not one of ``kinds``
    (a file of another tool under the same name): a warning names the file and the ``reader``
    (the report, the model card), which goes on without it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = read_json(path)
    except InputError as exc:
        log.warning("%s: skipping %s", reader, exc)
        return None
    if not isinstance(doc, kinds):
        log.warning(
            "%s: skipping %s: not a neuroml %s (a JSON %s)",
            reader,
            path,
            path.name,
            type(doc).__name__,
        )
        return None
    return doc


def _load_tsv(path):
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        log.warning("report: skipping %s (%s)", path, exc)
        return None


def _inputs_text(config):
    """The maps the CNN read, one channel each (a run without "inputs" read the T1w)."""
    inputs = config.get("inputs")
    if not inputs:
        return "T1w (1 channel)"
    if isinstance(inputs, str):
        inputs = [inputs]
    names = [str(i) for i in inputs]
    return f"{', '.join(names)} ({len(names)} channel{'s' if len(names) != 1 else ''})"
