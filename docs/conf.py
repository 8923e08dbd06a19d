"""Sphinx configuration of the meshcore docs: Markdown pages read by myst-parser.

Build them as CI does, warnings as errors: ``nox -s docs``, or
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import importlib
import inspect
import re
from importlib import metadata
from typing import Any

project = "meshcore"
author = "the meshcore authors"
copyright = "the meshcore authors"  # noqa: A001 - the name Sphinx reads
try:
    release = metadata.version("meshcore")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    release = "0+unknown"

# The API reference (reference/api.md) is autodoc over the public API; the docstrings are
# Google style (napoleon).
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# The guides show the example plugin's code inline, so that they read well as raw Markdown;
# tests/test_doc_examples.py keeps each block equal to its file.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "alabaster"
version = release
html_title = f"meshcore {release}"
# Wide enough for the example code (110-character lines) without horizontal scrolling.
html_theme_options = {
    "description": "a service mesh framework in Python, made of plugins",
    "page_width": "1240px",
    "body_max_width": "none",
}


# -- the rest of the public API, so that the reference is never missing a name -------------------

_REST = re.compile(r"<!-- api: the rest of (?P<module>[\w.]+)\.__all__ -->")


def _directive(value: Any) -> str:
    if inspect.isclass(value):
        return "autoclass"
    return "autofunction" if inspect.isfunction(value) else "autodata"


def _the_rest(match: re.Match[str], text: str) -> str:
    """Directives for every name of the module's ``__all__`` that the page does not show yet."""
    name = match["module"]
    module = importlib.import_module(name)
    shown = set(re.findall(rf"\.\. auto\w+:: {re.escape(name)}\.(\w+)", text))
    rest = [n for n in module.__all__ if n not in shown and not n.startswith("_")]
    blocks = []
    for item in rest:
        directive = _directive(getattr(module, item))
        options = "   :members:\n" if directive == "autoclass" else ""
        blocks.append(f"```{{eval-rst}}\n.. {directive}:: {name}.{item}\n{options}```")
    return "\n\n".join(blocks) or "Nothing else."


def _api_page(_app: Any, docname: str, source: list[str]) -> None:
    if docname == "reference/api":
        text = source[0]
        source[0] = _REST.sub(lambda match: _the_rest(match, text), text)


def setup(app: Any) -> dict[str, bool]:
    """Complete the API reference with the public names no section shows."""
    app.connect("source-read", _api_page)
    return {"parallel_read_safe": True}
