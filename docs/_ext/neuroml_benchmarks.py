"""Sphinx extension: render the recorded benchmark results (``benchmarks/*.json``).

Each JSON file is one benchmark run. A page places it with the ``benchmark`` directive::

    ```{benchmark} bench_training_cpu.json
    :tables: default[balanced_accuracy, wall_s]; shuffled
    What the benchmark measures and how to read it (MyST or reST, as the page).
    ```

The directive makes a section titled with the JSON's ``title`` (anchor: the file's stem,
``#bench-training-cpu``): the prose of its body,
then a field list read from the JSON (``command``, ``machine``, ``commit``, ``date`` are
required; ``time_utc``, ``torch``, ``device`` and ``note`` are shown when present), then one
table per ``:tables:`` entry. An entry is a path into the JSON (keys joined by ``/``, list
indices as numbers), optionally followed by the columns to show in brackets (keys inside
each row, nested keys joined by ``.``). A dict of scalars becomes a two-column table; a dict
of dicts or a list of dicts one row per item. A ``markdown`` entry holding a pipe table is
rendered as that table.

Every string from a JSON file goes into docutils nodes (``nodes.Text``, ``nodes.literal``),
which the HTML writer escapes: nothing is written as raw HTML.

At the end of the build, a JSON file that no page rendered, or one rendered twice, is a
warning (an error under ``-W``), so every recorded benchmark appears exactly once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

REQUIRED = ("command", "machine", "commit", "date")
OPTIONAL = ("time_utc", "device", "torch", "note")
MAX_COLUMNS = 14


def format_value(value) -> str:
    """One table cell or field as text: floats to 4 significant digits, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    return str(value)


def lookup(doc, path: str):
    """The value at ``path`` (keys joined by ``/``; list indices as numbers).

    Paths joined by ``+`` give a dict of their values keyed by path, or, when every value
    is a list, the lists concatenated.
    """
    if "+" in path:
        values = {p.strip(): lookup(doc, p.strip()) for p in path.split("+")}
        if all(isinstance(v, list) for v in values.values()):
            return [item for v in values.values() for item in v]
        return values
    value = doc
    for part in [p for p in path.split("/") if p]:
        if isinstance(value, list):
            value = value[int(part)]
        else:
            value = value[part]
    return value


def flatten(row: dict, prefix: str = "", depth: int = 0) -> dict:
    """Scalar leaves of a row, nested keys joined by ``.`` (two levels; short lists kept)."""
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 2:
            out.update(flatten(value, name + ".", depth + 1))
        elif isinstance(value, list) and (
            len(value) > 4 or any(isinstance(v, (dict, list)) for v in value)
        ):
            continue
        elif not isinstance(value, dict):
            out[name] = value
    return out


def parse_spec(spec: str) -> tuple[str, list[str] | None, bool]:
    """``[~]path[col, col]`` -> (path, [col, col], transposed); ``path`` -> (path, None, False).

    A leading ``~`` transposes a dict of dicts (its inner keys become the rows).
    """
    spec = spec.strip()
    transposed = spec.startswith("~")
    spec = spec.lstrip("~").strip()
    if spec.endswith("]") and "[" in spec:
        path, cols = spec[:-1].split("[", 1)
        return path.strip(), [c.strip() for c in cols.split(",") if c.strip()], transposed
    return spec, None, transposed


def transpose(value: dict) -> dict:
    """``{a: {x: 1}, b: {x: 2}}`` -> ``{x: {a: 1, b: 2}}``."""
    out: dict = {}
    for outer, inner in value.items():
        for key, item in inner.items():
            out.setdefault(key, {})[outer] = item
    return out


def text_table(header: list[str], rows: list[list[str]], caption: str | None = None) -> nodes.table:
    table = nodes.table(classes=["benchmark-table"])
    if caption:
        table += nodes.title(text=caption)
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    thead = nodes.thead()
    group += thead
    thead += _row(header)
    tbody = nodes.tbody()
    group += tbody
    for cells in rows:
        tbody += _row(cells)
    return table


def _row(cells: list[str]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=cell)
        row += entry
    return row


def table_from_value(value, columns: list[str] | None, caption: str) -> nodes.table:
    """A docutils table from a dict of scalars, a dict of dicts or a list of dicts."""

    def plain(v):
        return not isinstance(v, dict)

    if isinstance(value, dict) and (
        all(plain(v) for v in value.values())
        or (columns and all(c in value and plain(value[c]) for c in columns))
    ):
        items = [(k, v) for k, v in value.items() if columns is None or k in columns]
        return text_table(["key", "value"], [[str(k), format_value(v)] for k, v in items], caption)
    if isinstance(value, dict):
        labelled = [(str(k), v) for k, v in value.items() if isinstance(v, dict)]
    elif isinstance(value, list):
        labelled = [(str(i), v) for i, v in enumerate(value) if isinstance(v, dict)]
    else:
        raise ValueError(f"{caption}: a {type(value).__name__}, not a table")
    flat = [(label, flatten(row)) for label, row in labelled]
    if columns is None:
        columns = []
        for _, row in flat:
            columns += [c for c in row if c not in columns]
        columns = columns[:MAX_COLUMNS]
    missing = [c for c in columns if not any(c in row for _, row in flat)]
    if missing:
        raise ValueError(f"{caption}: no row has the column(s) {', '.join(missing)}")
    rows = [[label] + [format_value(row.get(c)) for c in columns] for label, row in flat]
    return text_table([""] + columns, rows, caption)


def table_from_markdown(text: str, caption: str) -> nodes.table:
    """A docutils table from a Markdown pipe table (header, separator, rows)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    cells = [row for row in cells if not all(set(c) <= set("-: ") for c in row)]
    if len(cells) < 2:
        raise ValueError(f"{caption}: not a Markdown table")
    width = len(cells[0])
    rows = [(row + [""] * width)[:width] for row in cells[1:]]
    return text_table(cells[0], rows, caption)


class BenchmarkDirective(SphinxDirective):
    """``benchmark FILE.json``: one benchmark run as a section (see the module docstring)."""

    required_arguments = 1
    final_argument_whitespace = False
    has_content = True
    option_spec = {"tables": directives.unchanged, "title": directives.unchanged}

    def run(self):
        name = self.arguments[0]
        folder = Path(self.config.neuroml_benchmarks_dir)
        path = folder / name
        self.env.note_dependency(str(path))
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self.error(f"benchmark {name}: cannot read {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise self.error(f"benchmark {name}: {path} does not hold a JSON object")
        seen = self.env.__dict__.setdefault("neuroml_benchmarks", {})
        seen.setdefault(name, []).append(self.env.docname)

        title = self.options.get("title") or doc.get("title") or name
        section = nodes.section(
            ids=[nodes.make_id(Path(name).stem)], names=[nodes.fully_normalize_name(title)]
        )
        section += nodes.title(text=title)
        self.state.document.note_implicit_target(section)

        body = nodes.container(classes=["benchmark-prose"])
        self.state.nested_parse(self.content, self.content_offset, body)
        section += body.children

        fields = nodes.field_list(classes=["benchmark-fields"])
        for key in REQUIRED + OPTIONAL:
            if key not in doc and key == "command" and "commands" in doc:
                value = doc["commands"]
            elif key not in doc:
                if key in REQUIRED:
                    logger.warning(
                        f"benchmark {name}: the JSON has no {key!r} field (add it to {path.name})",
                        location=self.get_location(),
                    )
                continue
            else:
                value = doc[key]
            field = nodes.field()
            field += nodes.field_name(text=key.replace("_", " "))
            content = nodes.field_body()
            commands = value if isinstance(value, list) else [value]
            para = nodes.paragraph()
            for i, item in enumerate(commands):
                if i:
                    para += nodes.Text("; ")
                if key == "command":
                    para += nodes.literal(text=str(item))
                else:
                    para += nodes.Text(format_value(item))
            content += para
            field += content
            fields += field
        field = nodes.field()
        field += nodes.field_name(text="data")
        data_body = nodes.field_body()
        data_body += nodes.paragraph("", "", nodes.literal(text=f"benchmarks/{name}"))
        field += data_body
        fields += field
        section += fields

        specs = [s for s in self.options.get("tables", "").split(";") if s.strip()]
        for spec in specs:
            key, columns, transposed = parse_spec(spec)
            try:
                value = lookup(doc, key)
                if transposed:
                    value = transpose(value)
                if isinstance(value, str):
                    section += table_from_markdown(value, key)
                else:
                    section += table_from_value(value, columns, key)
            except (KeyError, IndexError, ValueError) as exc:
                logger.warning(
                    f"benchmark {name}: table {spec.strip()!r}: {exc}", location=self.get_location()
                )
        return [section]


def purge(app, env, docname):
    seen = env.__dict__.get("neuroml_benchmarks", {})
    for name in list(seen):
        seen[name] = [d for d in seen[name] if d != docname]


def merge(app, env, docnames, other):
    seen = env.__dict__.setdefault("neuroml_benchmarks", {})
    for name, docs in other.__dict__.get("neuroml_benchmarks", {}).items():
        seen.setdefault(name, []).extend(docs)


def check_all_rendered(app, env):
    folder = Path(app.config.neuroml_benchmarks_dir)
    seen = env.__dict__.get("neuroml_benchmarks", {})
    for path in sorted(folder.glob("*.json")):
        count = len(seen.get(path.name, []))
        if count == 0:
            logger.warning(
                f"benchmarks/{path.name} is not rendered by any page (add a benchmark directive)"
            )
        elif count > 1:
            logger.warning(
                f"benchmarks/{path.name} is rendered {count} times ({', '.join(seen[path.name])})"
            )
    return []


def setup(app):
    app.add_config_value("neuroml_benchmarks_dir", "benchmarks", "env")
    app.add_directive("benchmark", BenchmarkDirective)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.connect("env-check-consistency", check_all_rendered)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
