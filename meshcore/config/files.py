"""Config fields that name files: declared with :func:`file_field`, checked before any apply.

A config field that holds the path of a file the plugin will read (a certificate, a key,
a CA bundle, a script, a policy) is declared with :func:`file_field`. Validation
(``meshcore validate``, and every Snapshot before it is applied) then checks that the
file exists, can be read and, with a ``check``, parses, and reports it with the field's
path: ``.../my_filter.ca_file: cannot read '/etc/ca.pem': No such file or directory``.

Declaring reads nothing: the checks run at validation, in :mod:`meshcore.runtime.validation`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "FILE_CHECKS",
    "FileCheck",
    "file_field",
    "pem_certificates",
    "pem_private_key",
    "readable",
    "ssl_reason",
]

FileCheck = Callable[[str], None]
"""Checks the file at a path; raises ValueError (or OSError) with the reason when it is unusable."""

_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")
_SSL_MESSAGE = re.compile(r"^\[[^\]]*\]\s*(.*?)\s*\(_ssl\.c:\d+\)$")


def ssl_reason(err: ssl.SSLError | OSError | ValueError) -> str:
    """OpenSSL's reason in words ("key values mismatch"), without its codes and source line."""
    text = str(err.args[0]) if isinstance(err, ssl.SSLError) and len(err.args) == 1 else str(err)
    if isinstance(err, OSError) and not isinstance(err, ssl.SSLError) and err.strerror:
        return err.strerror
    found = _SSL_MESSAGE.match(text)
    reason = found[1] if found else text
    return "not valid PEM" if reason == "PEM lib" else reason


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        msg = f"cannot read {path!r}: {err.strerror or err}"
        raise ValueError(msg) from None


def readable(path: str) -> None:
    """The file exists and can be read."""
    _read(path)


def pem_certificates(path: str) -> None:
    """The file holds PEM certificates (a certificate chain, a CA bundle), loaded as TLS loads them."""
    _read(path)
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as err:
        msg = f"{path!r} holds no PEM certificate: {ssl_reason(err)}"
        raise ValueError(msg) from None


def pem_private_key(path: str) -> None:
    """The file holds a PEM private key (whether it matches its certificate is checked with both)."""
    if _PRIVATE_KEY.search(_read(path)) is None:
        msg = f"{path!r} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)"
        raise ValueError(msg)


FILE_CHECKS: dict[str, FileCheck] = {
    "readable": readable,
    "pem_certificates": pem_certificates,
    "pem_private_key": pem_private_key,
}
"""The checks :func:`file_field` knows by name."""


def file_field(check: str | FileCheck = "readable", **kwargs: Any) -> Any:
    """An attrs field holding the path of a file that must exist, and parse, for the config to be valid.

    Args:
        check: ``"readable"`` (the default: it exists and can be read),
            ``"pem_certificates"``, ``"pem_private_key"``, or a function of the path that
            raises ValueError with the reason when the file is unusable (it may read it).
        **kwargs: passed to ``attrs.field`` (``default``, ``validator``, ...). A value of None
            is not checked: an optional file that is not given.

    Example::

        @attrs.frozen(kw_only=True)
        class PolicyConfig:
            policy_file: str = meshcore.file_field(check=parse_policy)
            ca_file: str | None = meshcore.file_field("pem_certificates", default=None)
    """
    if isinstance(check, str):
        found = FILE_CHECKS.get(check)
        if found is None:
            msg = f"unknown file check {check!r}; known: {', '.join(FILE_CHECKS)}, or a function of the path"
            raise ValueError(msg)
        check = found
    metadata = {**kwargs.pop("metadata", {}), "file": check}
    return attrs.field(metadata=metadata, **kwargs)
