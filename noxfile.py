"""Development sessions. ``nox`` runs lint, typecheck and tests; ``nox -s tests -- -k name`` passes args on.

Sessions use the interpreter nox itself runs under (no version pinned here) and
``venv`` environments, so that nothing beyond Python and pip is needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True

ROOT = Path(__file__).resolve().parent
LINT_PATHS = ("meshcore", "filters", "plugins", "testing", "tests", "noxfile.py", "examples", "bench", "fuzz")

# Linters are pinned: a new release adds rules, and CI must not turn red on its own.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
# Stubs for dependencies that ship no types of their own.
TYPE_STUBS = ("types-PyYAML", "types-grpcio")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest; extra arguments go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: the lint rules of pyproject.toml, and formatting."""
    session.install(RUFF)
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *session.posargs, *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy (strict) over the installed package, as users get it, and over tests/.

    filters/, plugins/ and testing/ become meshcore.filters, .plugins and .testing only
    through setuptools' ``package-dir``: an editable install maps them with an import hook
    that mypy cannot follow. So the package is installed as a regular (non-editable) build,
    py.typed markers included, and mypy runs from an empty directory so that the source
    tree is not on its search path and only the installed copy is seen.
    """
    session.install(MYPY, *TYPE_STUBS, ".[test]")
    # setuptools builds in build/ and never deletes from it: a module since moved or removed
    # would still be in the wheel, and checked. So the build starts from nothing.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    # Always rebuild: the version number does not change with every edit.
    session.install("--no-deps", "--force-reinstall", ".")
    config = str(ROOT / "pyproject.toml")
    session.chdir(session.create_tmp())
    session.run("mypy", "--config-file", config, "-p", "meshcore")
    session.run("mypy", "--config-file", config, str(ROOT / "tests"))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs (Sphinx, Markdown through myst-parser), warnings as errors, into docs/_build/html.

    First checks that the generated config reference is current. Not a default session:
    the build itself takes seconds, but the tests session already builds the docs the same
    way (tests/test_docs_build.py) and checks the reference (tests/test_docsgen.py), so
    CI proves them without a second environment; this session is for writing docs.
    """
    session.install("-e", ".[docs]")
    session.run("python", "-m", "meshcore.docsgen", "--check", "docs/reference/config.md")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs
    )
