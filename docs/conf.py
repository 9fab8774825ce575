"""Sphinx configuration of the neuroml documentation.

Build from the repository root (the package is imported from this checkout)::

    PYTHONPATH=. sphinx-build -W --keep-going -n -b html docs docs/_build/html

or ``bash .ci/docs``, which also checks every internal link and anchor.
"""

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import neuroml  # noqa: E402

project = "neuroml"
author = "The neuroml developers"
copyright = "The neuroml developers, Apache-2.0"
release = neuroml.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "neuroml_benchmarks",
    "neuroml_xref",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "examples",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "**/*.codeobj.json",
]
templates_path = ["_templates"]

# MyST: heading anchors so that pages link to each other's sections (``page.md#section``).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference: each public package's own ``__all__``.
autosummary_generate = True
autosummary_ignore_module_all = False
autosummary_imported_members = True
autodoc_typehints = "none"
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# numpydoc's docstring validation is left to the linters; the build only renders.
nitpick_ignore_regex = [
    # Types of third-party libraries named in docstrings; no intersphinx (no network at build time).
    (
        r"py:.*",
        r"(numpy|np|nibabel|nib|torch|pandas|pd|SimpleITK|sitk|sklearn|monai|pathlib|os)(\..*)?",
    ),
    (r"py:.*", r"(Path|ndarray|DataFrame|Nifti1Image)"),
]
# Summary lines (autosummary tables) that name a private helper or a method by its bare name:
# autosummary resolves them on the package's page, where they do not exist.
nitpick_ignore = [
    ("py:meth", "open"),
    ("py:func", "write_transform"),
    ("py:func", "n4_bias_correct_sitk"),
    ("py:data", "INPUT_POOLS"),
]
# Docstrings write |rho| for an absolute correlation: keep it as text, not a substitution.
rst_prolog = r"""
.. |rho| replace:: \|rho\|
"""

# Gallery: examples run at build time on data_samples/ or small generated volumes.
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "plot_gallery": "True",
}

# Benchmarks page: benchmarks/*.json rendered by _ext/neuroml_benchmarks.py.
neuroml_benchmarks_dir = str(ROOT / "benchmarks")

html_theme = "alabaster"
html_title = f"neuroml {release}"
html_theme_options = {
    "description": "BIDS MRI and fMRI to 3D CNN classification, attribution maps and reports",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}
html_static_path = []
html_show_sourcelink = False
html_show_sphinx = False
