"""The mesh resource reference, generated from the plugins so that it cannot drift.

``python -m meshcore.meshdocs > docs/reference/mesh.md`` writes the page (``--check FILE``
tells whether a file is current; a test fails when it is not). For every kind of mesh
resource a plugin registers: its ``apiVersion`` values, and every field some translator or
discovery backend handles (with the values it supports, where only some are), and which
plugin. Any other field Istio defines is refused by the control plane as "not supported by
meshcore yet". Built with plugin autoload off: installed third-party plugins stay out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from meshcore.plugin import MeshKindType
from meshcore.registry import Registry, build_registry

__all__ = ["REGENERATE", "main", "render_mesh_reference"]

REGENERATE = "python -m meshcore.meshdocs > docs/reference/mesh.md"

_INTRO = """\
# Mesh resources

The kinds of mesh resources the control plane reads, and the fields of each that meshcore
gives meaning to. Field names are Istio's, camelCase as in Istio's YAML, and every field
Istio defines is checked (type, allowed values, what must come together). A field that a
resource sets and that no plugin below handles is **refused** by the control plane and by
`meshcore analyze` with the message "not supported by meshcore yet: no translator handles
KIND.field", so that nothing is silently ignored; a plugin that gives it meaning lifts the
refusal by declaring it (`handles`, see {doc}`../control-plane`).

A field is handled with everything below it unless a more precise line says otherwise;
"values" lists the only values supported where not all are.

Generated from the registered plugins: `{regenerate}`.
"""


def _claims(registry: Registry) -> list[tuple[str, str, str]]:
    """``(path, values, plugin)`` of every claim of every translator and discovery backend."""
    out = []
    for kind in ("discovery", "translator"):
        for name, plugin in registry.types(kind).items():
            for claim in getattr(plugin, "handles", ()):
                path, _, values = claim.partition("=")
                out.append((path, ", ".join(values.split("|")) if values else "", f"{kind} `{name}`"))
    return sorted(out)


def render_mesh_reference(registry: Registry | None = None) -> str:
    """The whole page, as Markdown."""
    registry = registry or build_registry(autoload=False)
    claims = _claims(registry)
    out = [_INTRO.replace("{regenerate}", REGENERATE)]
    for name in sorted(registry.names("mesh_kind")):
        kind = registry.get("mesh_kind", name)
        assert isinstance(kind, MeshKindType)  # noqa: S101 - the registry checks descriptors
        owner = registry.owner("mesh_kind", name)
        out += [f"## {name}", "", f"{kind.description[:1].upper()}{kind.description[1:]}.", ""]
        out += [
            f"`apiVersion`: {', '.join(f'`{v}`' for v in kind.api_versions)}; from `{owner.name if owner else '?'}`.",
            "",
        ]
        mine = [
            (path, values, who) for path, values, who in claims if path == name or path.startswith(name + ".")
        ]
        if not mine:
            out += ["Not supported by meshcore yet: no plugin handles any of its fields.", ""]
            continue
        out += ["| field | values | handled by |", "| --- | --- | --- |"]
        for path, values, who in mine:
            field = "the whole kind" if path == name else f"`{path[len(name) + 1 :]}`"
            out.append(f"| {field} | {values or 'any'} | {who} |")
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m meshcore.meshdocs``: print the page, or ``--check FILE`` against it."""
    parser = argparse.ArgumentParser(prog="python -m meshcore.meshdocs", description=main.__doc__)
    parser.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated page")
    args = parser.parse_args(argv)
    text = render_mesh_reference()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return 0
    sys.stderr.write(f"{path} is out of date with the plugins; regenerate it: {REGENERATE}\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
