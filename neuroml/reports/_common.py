"""Helpers shared by the report's pages: escaping, tables, pictures, reading run files."""

import base64
import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from neuroml._utils.fileio import read_json
from neuroml.errors import InputError
from neuroml.reports.checks import fmt_num

__all__ = [
    "escape",
    "html_table",
    "img_tag",
    "picture",
    "ci_text",
    "load_json",
    "load_tsv",
    "inputs_text",
]

log = logging.getLogger("neuroml")


def escape(value):
    """Escape any value for HTML text or attribute (None gives the empty string)."""
    return html.escape("" if value is None else str(value), quote=True)


def html_table(headers, rows, numeric=()):
    """An HTML table of escaped cells.

    Parameters
    ----------
    headers : sequence of str
    rows : iterable of sequence
        One sequence of cells per row.
    numeric : collection of int, optional
        Columns right-aligned and formatted as numbers; float cells always are.

    Returns
    -------
    str
    """
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{escape(fmt_num(c))}</td>'
            if i in numeric or isinstance(c, (float, np.floating))
            else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def img_tag(png, alt):
    """An ``<img>`` holding the PNG bytes ``png`` as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def ci_text(ci):
    """A 95% interval as ``[low, high]`` with 3 decimals, or ``n/a`` when not two numbers."""
    if (
        isinstance(ci, (list, tuple))
        and len(ci) == 2
        and all(isinstance(v, (int, float)) for v in ci)
    ):
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return "n/a"


def load_json(path, kinds=(dict,), reader="report"):
    """The JSON document at ``path``, or None when it is absent, unreadable or not one of ``kinds``.

    A file that cannot be used (of another tool under the same name) gives a warning naming the
    file and the ``reader`` (the report, the model card), which goes on without it.
    """
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


def load_tsv(path):
    """The TSV table at ``path`` as strings, or None (with a warning) when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        log.warning("report: skipping %s (%s)", path, exc)
        return None


def inputs_text(config):
    """The maps the CNN read, one channel each (no "inputs" in ``config`` means the T1w)."""
    inputs = config.get("inputs")
    if not inputs:
        return "T1w (1 channel)"
    if isinstance(inputs, str):
        inputs = [inputs]
    names = [str(i) for i in inputs]
    return f"{', '.join(names)} ({len(names)} channel{'s' if len(names) != 1 else ''})"


def picture(make, alt, *args, **kwargs):
    """``<img>`` of the PNG ``make(*args, **kwargs)`` draws, described by ``alt``.

    A failure becomes a note saying so instead of a broken report.
    """
    try:
        png = make(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a picture must never sink the report
        log.warning("report: figure %s failed: %s", make.__name__, exc)
        return (
            f'<p class="warn">Figure not drawn ({escape(type(exc).__name__)}: '
            f"{escape(str(exc)[:200])}).</p>"
        )
    return img_tag(png, alt)
