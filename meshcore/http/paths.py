"""Request paths normalised before routing and authorization, so that a rule sees what the upstream will.

A deny on ``/admin`` means nothing if ``/public/../admin``, ``//admin`` or ``/%61dmin``
reach the upstream as ``/admin``: the proxy and the upstream must agree on what a path
names. So the connection manager normalises every request path once, before the route
is matched and before any filter runs, in this order:

1. percent-encodings are checked and made canonical (RFC 3986 section 6.2.2): a ``%``
   not followed by two hex digits, an encoded NUL (``%00``) and encoded bytes that are
   not valid UTF-8 (over-long forms such as ``%C0%AF`` for ``/``) are rejected; an
   encoded *unreserved* character (``A-Z a-z 0-9 - . _ ~``) is decoded (``%61`` is
   ``a``, ``%2E`` is ``.``); every other encoding keeps its meaning, hex upper-cased;
2. an encoded slash or backslash (``%2F``, ``%5C``) is rejected (400), kept as it is, or
   decoded into ``/``, as configured;
3. a literal backslash is a slash (as browsers and Envoy read it);
4. runs of slashes are merged (``//admin`` is ``/admin``), if configured;
5. dot segments are removed (RFC 3986 section 5.2.4): ``/a/./b/../c`` is ``/a/c``, and
   nothing climbs above the root.

The query string is left alone. Case is left alone too: paths are case-sensitive (RFC
3986 section 6.2.2.1); a rule that must also catch ``/ADMIN`` says so itself
(``case_sensitive: false`` on a route). Targets that are not a path (``*``, or an
absolute URI) are left as they came.

Pure functions, no I/O: :class:`PathNormalizer` is built once per Snapshot and called
once per request.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NoReturn

from meshcore.errors import ProtocolError

__all__ = ["EscapedSlashes", "PathNormalizer", "normalize_path", "remove_dot_segments"]

EscapedSlashes = Literal["reject", "keep", "decode"]

_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SHOWN: Final = 200  # characters of a refused path quoted in the error
# An encoded byte: a run of non-ASCII ones (group 1, checked as UTF-8 together), or one ASCII (group 2).
_ENCODED: Final = re.compile(r"((?:%[89a-fA-F][0-9a-fA-F])+)|%([0-7][0-9a-fA-F])")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9a-fA-F]{2})")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def remove_dot_segments(path: str) -> str:
    """``path`` without ``.`` and ``..`` segments (RFC 3986 section 5.2.4); never above the root.

    Args:
        path: an absolute path ("/a/b/../c"), without its query string.
    """
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments[1:], start=1):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")  # "/a/.." is "/", a directory: the trailing slash stays
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _refuse(reason: str, path: str) -> NoReturn:
    shown = path if len(path) <= _SHOWN else path[:_SHOWN] + "..."
    msg = f"{reason} in path {shown!r}"
    raise ProtocolError(msg, status=400)


def _canonical_encodings(path: str, escaped_slashes: EscapedSlashes) -> str:
    """Steps 1 and 2 of the module docstring: canonical percent-encodings, encoded slashes handled."""
    if _BAD_PERCENT.search(path):
        _refuse("a '%' not followed by two hex digits", path)

    def canonical(match: re.Match[str]) -> str:
        run = match.group(1)
        if run is not None:  # encoded non-ASCII bytes: they must spell UTF-8 (no over-long forms)
            try:
                bytes.fromhex(run.replace("%", "")).decode("utf-8")
            except UnicodeDecodeError:
                _refuse("percent-encoded bytes that are not valid UTF-8", path)
            return run.upper()
        char = chr(int(match.group(2), 16))
        if char in _UNRESERVED:
            return char
        if char == "\0":
            _refuse("an encoded NUL (%00)", path)
        if char in "/\\":
            if escaped_slashes == "reject":
                _refuse(
                    f"an encoded {'slash' if char == '/' else 'backslash'} ({match.group(0).upper()})", path
                )
            if escaped_slashes == "decode":
                return "/"
        return match.group(0).upper()

    return _ENCODED.sub(canonical, path)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def normalize_path(
    target: str, *, merge_slashes: bool = True, escaped_slashes: EscapedSlashes = "reject"
) -> str:
    """The normalised form of request target ``target`` (query string kept as it is).

    Args:
        target: the request target, "/path?query".
        merge_slashes: merge runs of ``/`` into one.
        escaped_slashes: what to do with ``%2F`` and ``%5C``: ``reject`` (400), ``keep``
            (left encoded: not a separator), ``decode`` (a ``/``, a separator).

    Raises:
        ProtocolError: (400) the path is malformed or uses an encoding that is refused.
    """
    if not target.startswith(("/", "\\")):
        return target  # "*" (OPTIONS *), or an absolute URI: not a path to normalise
    cut = target.find("?")
    path, query = (target, "") if cut < 0 else (target[:cut], target[cut:])
    if _CONTROL.search(path):
        _refuse("a control character", path)
    if "%" in path:
        path = _canonical_encodings(path, escaped_slashes)
    if "\\" in path:
        path = path.replace("\\", "/")
    if merge_slashes:
        path = _merge_slashes(path)
    return remove_dot_segments(path) + query


class PathNormalizer:
    """A path policy compiled once per Snapshot: ``normalizer(target)`` per request.

    Args:
        merge_slashes: merge runs of slashes.
        escaped_slashes: ``reject``, ``keep`` or ``decode`` ``%2F`` and ``%5C``.
    """

    __slots__ = ("escaped_slashes", "merge_slashes")

    def __init__(self, *, merge_slashes: bool = True, escaped_slashes: EscapedSlashes = "reject") -> None:
        self.merge_slashes = merge_slashes
        self.escaped_slashes = escaped_slashes

    def __call__(self, target: str) -> str:
        """The normalised target; ProtocolError(400) for a refused one."""
        # The common case costs a scan: a plain path with nothing to normalise.
        if (
            "%" not in target
            and "\\" not in target
            and "/." not in target
            and "//" not in target
            and target.isprintable()
        ):
            return target
        return normalize_path(target, merge_slashes=self.merge_slashes, escaped_slashes=self.escaped_slashes)
