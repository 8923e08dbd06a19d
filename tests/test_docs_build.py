"""The docs build with Sphinx, warnings as errors, as ``nox -s docs`` builds them.

A broken cross-reference, a docstring the API reference cannot render, a page left out
of every toctree: each is a Sphinx warning, so each fails this test. (The guides show the
example plugin's real code inline; test_doc_examples.py keeps it equal to the files.)
"""

from __future__ import annotations

import ast
import html
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meshcore
import meshcore.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HELLO = ROOT / "examples" / "plugin-hello" / "src" / "meshcore_hello" / "__init__.py"
BUILD_TIMEOUT = 300  # seconds; a clean build takes a few
PAGES = (
    "index",
    "getting-started",
    "concepts",
    "tutorial",
    "testing",
    "sources",
    "applying",
    "traffic-management",
    "reference/config",
    "reference/api",
    "response-flags",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML docs, built from scratch into a temporary directory."""
    missing = [name for name in ("sphinx", "myst_parser") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[test]' (or '.[docs]')")
    out = tmp_path_factory.mktemp("docs-html")
    start = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    took = time.monotonic() - start
    assert done.returncode == 0, f"the docs build failed ({took:.1f} s):\n{done.stderr}\n{done.stdout}"
    assert done.stderr == "", f"the docs build warned:\n{done.stderr}"
    return out


def test_the_docs_build_without_warnings(built: Path) -> None:
    for page in PAGES:
        assert (built / f"{page}.html").is_file(), f"{page}.md was not built"


def page_text(path: Path) -> str:
    """The text of an HTML page, tags stripped (code is split into highlighting spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def test_the_tutorial_shows_the_example_plugin_s_real_code(built: Path) -> None:
    text = page_text(built / "tutorial.html")
    source = HELLO.read_text(encoding="utf-8")
    tree = ast.parse(source)
    shown = {"HelloConfig", "HelloFilter", "_factory", "meshcore_http_filters"}
    nodes = [
        node for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in shown
    ]
    assert {node.name for node in nodes} == shown
    lines = source.splitlines()
    for node in nodes:
        for line in lines[node.lineno - 1 : node.end_lineno]:
            assert line.strip() in text, f"tutorial.html lacks {line.strip()!r} of {node.name}"


def test_every_link_of_the_reference_lands_on_its_page(built: Path) -> None:
    page = (built / "reference" / "config.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', page))
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert "config-http-filter-router" in ids
    assert "config-meshcore-config-model-cluster" in links
    assert links <= ids, f"links to nowhere: {sorted(links - ids)}"
    assert "{ref}" not in page  # every role was parsed, none left as text


def test_the_api_reference_documents_every_public_name(built: Path) -> None:
    page = (built / "reference" / "api.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', page))
    public = [f"meshcore.{name}" for name in meshcore.__all__ if name != "__version__"]
    public += [f"meshcore.testing.{name}" for name in meshcore.testing.__all__]
    assert len(public) > 80
    missing = [name for name in public if name not in ids]
    assert not missing, f"reference/api.md documents none of {missing}"
    # Members come from the docstrings too, not just the names.
    assert {
        "meshcore.Request.path_only",
        "meshcore.Stats.counter",
        "meshcore.testing.FilterHarness.request",
    } <= ids
    text = page_text(built / "reference" / "api.html")
    assert "An HTTP request as filters see it, whatever protocol carried it." in text
