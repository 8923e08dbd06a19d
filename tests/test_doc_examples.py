"""The guides show code inline, so that they read well as raw Markdown, and it is the real code.

Before a code block that shows part of an example file, an HTML comment says which part
(invisible on GitHub and in the built docs):

    <!-- example: examples/plugin-hello/src/meshcore_hello/__init__.py pyobject=HelloConfig -->

``pyobject=NAME`` is a top-level class or function (its decorators included);
``start-at="TEXT"`` / ``end-at="TEXT"`` / ``end-before="TEXT"`` cut by the first lines
that contain those texts; nothing: the whole file. This test fails when a block and its
part differ. After editing an example, rewrite the blocks with
``python tests/test_doc_examples.py --fix``.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = sorted((ROOT / "docs").rglob("*.md"))
MARKER = re.compile(
    r"^<!-- example: (?P<spec>.+?) -->\n+(?P<fence>```+)(?P<info>[^\n]*)\n(?P<code>.*?)\n(?P=fence)$",
    re.MULTILINE | re.DOTALL,
)


@attrs.frozen
class Shown:
    """One code block of a guide that shows part of an example file."""

    page: Path
    line: int
    file: str
    options: dict[str, str]
    code: str
    span: tuple[int, int]

    def expected(self) -> str:
        """The part of the example file the block must show."""
        return extract((ROOT / self.file).read_text(encoding="utf-8"), self.options)

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {self.file} {self.options}"


def blocks(page: Path) -> list[Shown]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in MARKER.finditer(text):
        file, *pairs = shlex.split(match["spec"])
        options = dict(pair.split("=", 1) for pair in pairs)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Shown(page, line, file, options, match["code"], match.span("code")))
    return found


def extract(source: str, options: dict[str, str]) -> str:
    """The lines of ``source`` that ``options`` select (see the module docstring)."""
    lines = source.splitlines()
    unknown = set(options) - {"pyobject", "start-at", "end-at", "end-before"}
    assert not unknown, f"unknown options {sorted(unknown)}"
    if "pyobject" in options:
        name = options["pyobject"]
        kinds = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        node = next(n for n in ast.parse(source).body if isinstance(n, kinds) and n.name == name)
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        assert node.end_lineno is not None
        lines = lines[first - 1 : node.end_lineno]
    if "start-at" in options:
        lines = lines[next(i for i, line in enumerate(lines) if options["start-at"] in line) :]
    if "end-at" in options:
        lines = lines[: next(i for i, line in enumerate(lines) if options["end-at"] in line) + 1]
    if "end-before" in options:
        lines = lines[: next(i for i, line in enumerate(lines) if options["end-before"] in line)]
    return "\n".join(lines).strip("\n")


def test_the_guides_show_example_code_inline() -> None:
    shown = [block for page in GUIDES for block in blocks(page)]
    assert len(shown) >= 20, "the markers are not found: the pattern or the guides changed"
    leftover = [
        str(page.relative_to(ROOT))
        for page in GUIDES
        if "{literalinclude}" in page.read_text(encoding="utf-8")
    ]
    assert not leftover, (
        f"show the code inline (with an example marker) instead of literalinclude: {leftover}"
    )


@pytest.mark.parametrize("block", [b for page in GUIDES for b in blocks(page)], ids=str)
def test_each_block_is_the_example_file_s_code(block: Shown) -> None:
    assert block.code.strip("\n") == block.expected(), (
        f"{block} differs from the file: run python tests/test_doc_examples.py --fix"
    )


def fix() -> int:
    """Rewrite every marked block from its example file; print what changed."""
    changed = 0
    for page in GUIDES:
        text = page.read_text(encoding="utf-8")
        for block in reversed(blocks(page)):
            expected = block.expected()
            if block.code.strip("\n") != expected:
                start, end = block.span
                text = text[:start] + expected + text[end:]
                print(f"rewrote {block}")  # noqa: T201 - a command for people
                changed += 1
        page.write_text(text, encoding="utf-8")
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--fix"]:
        sys.exit("usage: python tests/test_doc_examples.py --fix")
    fix()
