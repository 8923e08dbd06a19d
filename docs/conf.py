"""Sphinx configuration of the meshcore docs: Markdown pages read by myst-parser.

Build them as CI does, warnings as errors: ``nox -s docs``, or
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from importlib import metadata

project = "meshcore"
author = "the meshcore authors"
copyright = "the meshcore authors"  # noqa: A001 - the name Sphinx reads
try:
    release = metadata.version("meshcore")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    release = "0+unknown"

extensions = ["myst_parser"]
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
