"""``meshcore ca``: the mesh's certificate authority from the command line.

- ``meshcore ca init DIR``: create the CA (its root) in DIR, print its trust bundle;
- ``meshcore ca issue DIR SPIFFE_ID --out PREFIX``: a key and a CSR made here, signed by
  the CA: PREFIX.pem (chain), PREFIX.key, PREFIX-ca.pem (trust bundle), for a client such as
  curl or openssl, or a listener configured from files;
- ``meshcore ca rotate-root DIR --step prepare|activate|finish``: one step of a root
  rotation with overlap (see docs/security.md); a control plane using DIR takes it on its
  next reload.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meshcore.config import Duration
from meshcore.logs import configure as configure_logging

__all__ = ["add_ca_parser"]


def _open_ca(args: argparse.Namespace) -> Any:
    from meshcore.plugins.ca import CaConfig, LocalCA  # noqa: PLC0415 - only `meshcore ca` needs it

    configure_logging("warning")  # stdout is for what the command makes (a bundle, file names)
    lifetime = (
        Duration.__meshcore_parse__(args.lifetime) if getattr(args, "lifetime", None) else Duration(86400)
    )
    return LocalCA(
        CaConfig(directory=args.directory, trust_domain=args.trust_domain, workload_lifetime=lifetime)
    )


def cmd_init(args: argparse.Namespace) -> int:
    """Create (or open) the CA in DIRECTORY; print its trust bundle."""
    ca = _open_ca(args)
    print(ca.trust_bundle(), end="")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    """Make a key and CSR for SPIFFE_ID, have the CA sign it, write PREFIX.pem, .key, -ca.pem."""
    from meshcore.plugins.ca import CsrRejectedError, make_csr  # noqa: PLC0415

    ca = _open_ca(args)
    csr, key = make_csr(args.spiffe_id)
    try:
        signed = ca.sign(csr, args.spiffe_id)
    except CsrRejectedError as err:
        print(f"meshcore ca issue: {err}", file=sys.stderr)
        return 1
    prefix = Path(args.out)
    key_path = prefix.with_name(prefix.name + ".key")
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    prefix.with_name(prefix.name + ".pem").write_text(signed.certificate_chain, encoding="ascii")
    prefix.with_name(prefix.name + "-ca.pem").write_text(signed.trusted_ca, encoding="ascii")
    print(f"{prefix}.pem {prefix}.key {prefix}-ca.pem: {args.spiffe_id}")
    return 0


def cmd_rotate_root(args: argparse.Namespace) -> int:
    """One step of a root rotation with overlap."""
    ca = _open_ca(args)
    try:
        print(ca.rotation_step(args.step))
    except ValueError as err:
        print(f"meshcore ca rotate-root: {err}", file=sys.stderr)
        return 1
    return 0


def add_ca_parser(commands: Any) -> None:
    """Add ``meshcore ca`` and its subcommands to the CLI's subcommand parser."""
    ca = commands.add_parser(
        "ca",
        help="the mesh's certificate authority: init, issue, rotate-root",
        description=(
            "The mesh's certificate authority, kept in a directory: create its root (init), sign a "
            "new key's CSR for a workload's SPIFFE ID (issue), or take one step of a root rotation "
            "with overlap (rotate-root). See docs/security.md."
        ),
    )
    steps = ca.add_subparsers(dest="ca_command", required=True, metavar="CA_COMMAND", help="what to do")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("directory", metavar="DIR", help="the CA's directory (created if missing)")
        parser.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")

    init = steps.add_parser(
        "init",
        help="create the CA's root in DIR and print the trust bundle",
        description="Create the CA in DIR (its root, on first use) and print its trust bundle (PEM).",
    )
    common(init)
    init.set_defaults(func=cmd_init)
    issue = steps.add_parser(
        "issue",
        help="sign a new key's CSR for a SPIFFE ID (for clients and tests)",
        description="Make a key and a CSR for SPIFFE_ID here, have the CA in DIR sign it, and write the files.",
    )
    common(issue)
    issue.add_argument("spiffe_id", metavar="SPIFFE_ID", help="spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT")
    issue.add_argument(
        "--out", required=True, metavar="PREFIX", help="writes PREFIX.pem, PREFIX.key, PREFIX-ca.pem"
    )
    issue.add_argument("--lifetime", default="24h", help="how long the certificate is valid (default: 24h)")
    issue.set_defaults(func=cmd_issue)
    rotate = steps.add_parser(
        "rotate-root",
        help="one step of a root rotation with overlap",
        description="One step of a root rotation with overlap: prepare, then activate, then finish.",
    )
    common(rotate)
    rotate.add_argument(
        "--step",
        required=True,
        choices=("prepare", "activate", "finish"),
        help="prepare: trust a new root; activate: sign with it; finish: drop the old one",
    )
    rotate.set_defaults(func=cmd_rotate_root)
