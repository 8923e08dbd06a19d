"""Mesh analysis: cross-resource problems, each with a stable code (``MC0001``...).

Analyzers are plugins (``meshcore_mesh_analyzers``): each looks at the whole model and
reports :class:`Finding` objects. ``meshcore analyze FILES...`` prints them offline; the
control plane runs them on every edit and refuses an edit with an ERROR finding (a route
to a subset that does not exist), as it refuses one that does not validate. Every code is
documented in docs/mesh-analysis.md.
"""

from __future__ import annotations

import enum

import attrs
import structlog

from meshcore.control.model import MeshModel
from meshcore.control.resources import MeshResource
from meshcore.errors import ConfigProblem
from meshcore.plugin import MeshAnalyzerType
from meshcore.registry import Registry

__all__ = ["Finding", "Severity", "analyze", "finding"]

log = structlog.get_logger("meshcore.control.analyze")


class Severity(enum.IntEnum):
    """How bad a finding is. An ERROR refuses a mesh edit at the control plane."""

    INFO = 0
    WARNING = 1
    ERROR = 2


@attrs.frozen(kw_only=True)
class Finding:
    """One problem an analyzer found.

    Attributes:
        code: its stable code (``MC0002``).
        severity: ERROR, WARNING or INFO.
        message: what is wrong, with names.
        resource: the resource at fault (``VirtualService default/reviews``), "" for the mesh.
        path: the field in it (``spec.http[0].route[0].destination.subset``), "" if none.
        file: the file of that resource, if known.
        line: its line, if known.
    """

    code: str
    severity: Severity
    message: str
    resource: str = ""
    path: str = ""
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = (
            f"{self.file}:{self.line}: " if self.file and self.line else f"{self.file}: " if self.file else ""
        )
        subject = f"{self.resource}: " if self.resource else ""
        field = f"{self.path}: " if self.path else ""
        return f"{where}{self.severity.name.capitalize()} [{self.code}] {subject}{field}{self.message}"

    def as_problem(self) -> ConfigProblem:
        """This finding as a config problem (file, line, resource and field, reason with its code)."""
        path = f"{self.resource}: {self.path}" if self.resource and self.path else self.resource or self.path
        return ConfigProblem(
            path=path, message=f"{self.message} [{self.code}]", file=self.file, line=self.line
        )


def finding(
    code: str, severity: Severity, message: str, resource: MeshResource | None = None, path: str = ""
) -> Finding:
    """A finding about ``resource`` (located in its file), or about the mesh as a whole."""
    if resource is None:
        return Finding(code=code, severity=severity, message=message, path=path)
    return Finding(
        code=code,
        severity=severity,
        message=message,
        resource=resource.ref,
        path=path,
        file=resource.file,
        line=resource.line,
    )


def analyze(model: MeshModel, registry: Registry) -> list[Finding]:
    """Every analyzer's findings, worst first, then by file and line.

    An analyzer that raises reports that as an ERROR finding of its own (code MC0000)
    instead of taking the caller down.
    """
    found: list[Finding] = []
    for analyzer in registry.types("mesh_analyzer").values():
        assert isinstance(analyzer, MeshAnalyzerType)  # noqa: S101 - the registry checks descriptors
        try:
            found.extend(analyzer.factory(model))
        except Exception as err:
            log.exception("analyzer_failed", analyzer=analyzer.name)
            found.append(
                Finding(
                    code="MC0000",
                    severity=Severity.ERROR,
                    message=f"analyzer {analyzer.name!r} failed: {type(err).__name__}: {err}",
                )
            )
    return sorted(found, key=lambda f: (-f.severity, f.file or "", f.line or 0, f.code))
