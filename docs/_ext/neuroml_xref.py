"""Sphinx extension: resolve Python cross-references through the objects they name.

The API reference documents each object once, under the public package that exports it
(``neuroml.io.check_img``), while docstrings may name it by the module that defines it
(``neuroml.io.image.check_img``) or relative to the page's module. For a Python reference
that Sphinx cannot resolve, this handler imports the name, finds the documented entry that is
the same object, and links there. Names that import to no documented object stay unresolved
(a warning under ``-n``); a name that imports to an object outside the public API (a
private helper, another library's function) is shown as code without a link.
"""

from __future__ import annotations

import importlib

from sphinx.util import logging

logger = logging.getLogger(__name__)


def import_name(name: str):
    """The object at a dotted ``name`` (module, then attributes), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # noqa: BLE001 - any import failure means "not this prefix"
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _documented(env) -> dict[int, tuple[str, str]]:
    cache = getattr(env, "_neuroml_xref_index", None)
    if cache is None:
        cache = {}
        for name, entry in env.get_domain("py").objects.items():
            obj = import_name(name)
            if obj is not None and not isinstance(obj, (str, int, float, bool, type(None))):
                cache.setdefault(id(obj), (name, entry.objtype))
        env._neuroml_xref_index = cache
    return cache


def resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    module = node.get("py:module") or ""
    cls = node.get("py:class") or ""
    candidates = [target]
    if module:
        candidates.insert(0, f"{module}.{target}")
        if cls:
            candidates.insert(0, f"{module}.{cls}.{target}")
    # The module that defines the object documented on this page (a docstring's bare names
    # are relative to it), e.g. neuroml.models.factory for generated/neuroml.models.build_model.
    page_obj = import_name(node.get("refdoc", "").rsplit("/", 1)[-1])
    defining = getattr(page_obj, "__module__", None)
    if defining:
        candidates.append(f"{defining}.{target}")
    index = _documented(env)
    domain = env.get_domain("py")
    if "." not in target:
        # An unqualified name documented exactly once (e.g. in a package summary line).
        matches = [n for n in domain.objects if n.rsplit(".", 1)[-1] == target]
        if len(matches) == 1:
            candidates.append(matches[0])
    importable = False
    for candidate in candidates:
        obj = import_name(candidate)
        if obj is None:
            continue
        importable = True
        found = index.get(id(obj))
        if found is None:
            continue
        name, objtype = found
        for reftype in (node["reftype"], "obj"):
            ref = domain.resolve_xref(
                env, node.get("refdoc", ""), app.builder, reftype, name, node, contnode
            )
            if ref is not None:
                return ref
    if importable:
        # A real object outside the public API (a private helper, another library):
        # shown as code, without a link.
        return contnode
    return None


def reset(app, env, docnames):
    env._neuroml_xref_index = None
    return []


def setup(app):
    app.connect("missing-reference", resolve)
    app.connect("env-before-read-docs", reset)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
