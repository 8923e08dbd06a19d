"""Path normalisation (meshcore/http/paths.py): RFC 3986 cases, refusals, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore import ProtocolError
from meshcore.http.paths import PathNormalizer, normalize_path, remove_dot_segments


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # RFC 3986 section 5.4 (the path parts of its examples) and section 5.2.4.
        ("/a/b/c/./../../g", "/a/g"),
        ("/mid/content=5/../6", "/mid/6"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../..", "/"),
        ("/../../g", "/g"),
        ("/b/c/g.", "/b/c/g."),
        ("/b/c/.g", "/b/c/.g"),
        ("/b/c/..g", "/b/c/..g"),
        ("/", "/"),
        ("/a", "/a"),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/public/../admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin//x", "/admin/x"),
        ("/%61dmin", "/admin"),
        ("/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/x\\..\\admin", "/admin"),
        ("/%7euser", "/~user"),
        ("/a%20b", "/a%20b"),  # reserved or not unreserved: kept, hex upper-cased
        ("/a%3fb", "/a%3Fb"),
        ("/%2561dmin", "/%2561dmin"),  # "%25" is "%": decoding once more is the upstream's bug
        ("/caf%c3%a9", "/caf%C3%A9"),  # valid UTF-8: kept encoded
        ("/ADMIN", "/ADMIN"),  # case is left alone
        ("/a/b?x=/../y&z=%2F", "/a/b?x=/../y&z=%2F"),  # the query is left alone
        ("*", "*"),
        ("http://example.com/../x", "http://example.com/../x"),
    ],
)
def test_normalize_path(target: str, expected: str) -> None:
    assert normalize_path(target) == expected
    assert PathNormalizer()(target) == expected


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/a%2fb", "an encoded slash (%2F)"),
        ("/a%5Cb", "an encoded backslash (%5C)"),
        ("/%00", "an encoded NUL"),
        ("/admin%00.html", "an encoded NUL"),
        ("/%C0%AFadmin", "not valid UTF-8"),  # over-long "/"
        ("/%E0%80%AFadmin", "not valid UTF-8"),
        ("/%c0%ae%c0%ae/admin", "not valid UTF-8"),  # over-long ".."
        ("/%ff", "not valid UTF-8"),
        ("/%zz", "not followed by two hex digits"),
        ("/a%4", "not followed by two hex digits"),
        ("/a%", "not followed by two hex digits"),
        ("/a\x01b", "a control character"),
        ("/a\x7fb", "a control character"),
    ],
)
def test_refused_paths_are_400(target: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        normalize_path(target)
    assert caught.value.status == 400
    assert reason in str(caught.value)


def test_escaped_slashes_kept_or_decoded_as_configured() -> None:
    assert normalize_path("/a%2fb/../c", escaped_slashes="keep") == "/c"  # "a%2Fb" is one segment
    assert normalize_path("/a%2fb", escaped_slashes="keep") == "/a%2Fb"
    assert normalize_path("/public%2F..%2Fadmin", escaped_slashes="decode") == "/admin"
    assert normalize_path("/a%5cb", escaped_slashes="decode") == "/a/b"


def test_merge_slashes_off_keeps_empty_segments() -> None:
    assert normalize_path("//admin", merge_slashes=False) == "//admin"
    assert normalize_path("/a//../b", merge_slashes=False) == "/a/b"


def test_plain_paths_take_the_fast_path_unchanged() -> None:
    normalizer = PathNormalizer()
    for target in ("/", "/api/v1/items?id=3", "/static/app.js", "/caf\u00e9"):
        assert normalizer(target) is target


SEGMENT = st.sampled_from(["a", "B", ".", "..", "", "%2e", "%2E%2e", "%61", "x%20y", "~", "\\"])


@given(st.lists(SEGMENT, max_size=12))
def test_normalised_paths_are_stable_and_have_no_dot_or_empty_segments(segments: list[str]) -> None:
    target = "/" + "/".join(segments)
    once = normalize_path(target)
    assert normalize_path(once) == once  # idempotent: the upstream sees what was checked
    assert once.startswith("/")
    parts = once.split("/")[1:]
    assert "." not in parts
    assert ".." not in parts
    assert "" not in parts[:-1]  # no empty segment but a trailing slash
    assert "\\" not in once
