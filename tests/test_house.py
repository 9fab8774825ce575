"""The house rules, measured: short functions, one-way layers, no history in the code."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def _code_lines(node):
    """Lines from ``def`` to the function's end, its docstring left out (documentation is not
    length to read through)."""
    n = node.end_lineno - node.lineno + 1
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        n -= body[0].end_lineno - body[0].lineno + 1
    return n


def _functions(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_code_lines_counts_the_body_without_the_docstring():
    src = 'def f():\n    """Doc.\n\n    More.\n    """\n    a = 1\n    return a\n'
    (node,) = ast.parse(src).body
    assert _code_lines(node) == 3


def test_no_library_function_is_longer_than_80_lines():
    long = [
        f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({_code_lines(node)} lines)"
        for p in sorted((ROOT / "neuroml").rglob("*.py"))
        for node in _functions(p)
        if _code_lines(node) > MAX_FUNCTION_LINES
    ]
    assert not long, "split these functions:\n" + "\n".join(long)


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_the_layering_contract_holds():
    out = subprocess.run(
        ["lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout


_HISTORY = re.compile(
    r"\b(since|on|as of|until|before) (20\d\d-\d\d-\d\d|\d{1,2} (jan|feb|mar|apr|may|jun|jul|aug"
    r"|sep|oct|nov|dec)[a-z]* 20\d\d)",
    re.IGNORECASE,
)


def test_no_dated_history_in_code_or_docs():
    files = [*(ROOT / "neuroml").rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").rglob("*.rst")]
    files += [*(ROOT / "docs").glob("*.md")]
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}"
        for p in files
        if p.is_file()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if _HISTORY.search(line)
    ]
    assert not hits, "history belongs in CHANGELOG.md:\n" + "\n".join(hits)


def test_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert any('pip install -e ".[test]" && pytest' in line for line in lines)


def test_the_preprocessing_batch_does_not_import_torch_or_sklearn():
    """Each preprocessing worker (and each SLURM task) imports the batch module: it must not pay
    for the training stack."""
    code = (
        "import sys, neuroml.workflows.bids_app, neuroml.workflows.pipeline; "
        "print(sorted(m for m in ('torch', 'sklearn', 'monai') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
