"""Human units in config: Duration, ByteSize, Address and SecretStr.

They parse what people write, and reject everything else with a reason in the house style
("must be ..., got ...").
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore import Address, ByteSize, Duration, SecretStr
from meshcore.config import format_duration

# No example database: tests must not write into the source tree.
NO_DATABASE = settings(database=None)

# -- Duration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("10us", 1e-5),
        ("10µs", 1e-5),
        (" 3 s ", 3.0),
        ("0s", 0.0),
        (5, 5.0),
        (0.5, 0.5),
    ],
)
def test_duration_parses(text: Any, seconds: float) -> None:
    duration = Duration.__meshcore_parse__(text)
    assert isinstance(duration, Duration)
    assert duration == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-5s", "must be >= 0, got '-5s'"),
        (-1, "must be >= 0, got -1"),
        ("5", 'must be a duration such as "250ms" or "2s", got \'5\''),
        ("5 sec", 'must be a duration such as "250ms" or "2s", got \'5 sec\''),
        ("1d", 'must be a duration such as "250ms" or "2s", got \'1d\''),
        ("", 'must be a duration such as "250ms" or "2s", got \'\''),
        (True, 'must be a duration such as "250ms" or "2s", got True'),
        ([1], 'must be a duration such as "250ms" or "2s", got list'),
        (None, 'must be a duration such as "250ms" or "2s", got NoneType'),
    ],
)
def test_duration_rejects(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        Duration.__meshcore_parse__(value)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, 10**400, "9" * 400 + "s"], ids=["nan", "inf", "int", "str"]
)
def test_duration_rejects_non_finite(value: Any) -> None:
    # YAML's `.nan` and `.inf` (JSON's NaN, Infinity) arrive as floats: no timer can be set to them.
    with pytest.raises(ValueError, match=r"^must be a finite duration, got "):
        Duration.__meshcore_parse__(value)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@NO_DATABASE
@given(amount=st.integers(min_value=0, max_value=10**9), unit=st.sampled_from(sorted(_UNITS)))
def test_duration_round_trips_through_its_rendering(amount: int, unit: str) -> None:
    """What a user writes, parsed, rendered (repr, config dump) and parsed again, is unchanged."""
    parsed = Duration.__meshcore_parse__(f"{amount}{unit}")
    assert parsed == pytest.approx(amount * _UNITS[unit], rel=1e-12)
    rendered = format_duration(parsed)
    assert Duration.__meshcore_parse__(rendered) == pytest.approx(parsed, rel=1e-12), rendered


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (2.0, "2s"), (0.0, "0s"), (1e-5, "10us"), (90.0, "90s"), (1_000_000.0, "1000000s")],
)
def test_duration_renders_as_written(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert repr(Duration(seconds)) == f"Duration({text!r})"


# -- ByteSize ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("10MiB", 10 * 1024**2),
        ("60KiB", 60 * 1024),
        ("1GiB", 1024**3),
        ("512B", 512),
        ("2KB", 2000),
        ("3MB", 3_000_000),
        ("1GB", 10**9),
        ("100", 100),
        (4096, 4096),
        (0, 0),
    ],
)
def test_byte_size_parses(value: Any, size: int) -> None:
    parsed = ByteSize.__meshcore_parse__(value)
    assert isinstance(parsed, ByteSize)
    assert parsed == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-1KiB", "must be >= 0, got '-1KiB'"),
        (-1, "must be >= 0, got -1"),
        ("1.5MiB", 'must be a size such as "64KiB" or "10MiB", got \'1.5MiB\''),
        ("10mb", 'must be a size such as "64KiB" or "10MiB", got \'10mb\''),
        (False, 'must be a size such as "64KiB" or "10MiB", got False'),
        (1.5, 'must be a size such as "64KiB" or "10MiB", got float'),
    ],
)
def test_byte_size_rejects(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        ByteSize.__meshcore_parse__(value)


@NO_DATABASE
@given(amount=st.integers(min_value=0, max_value=2**40), unit=st.sampled_from(["", "B", "KiB", "MiB", "KB"]))
def test_byte_size_is_exact(amount: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "KB": 1000}[unit]
    assert ByteSize.__meshcore_parse__(f"{amount}{unit}") == amount * factor


# -- Address ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("localhost:0", "localhost", 0),
        ("backend.default.svc:65535", "backend.default.svc", 65535),
        ("[::1]:9901", "::1", 9901),
        ("[2001:db8::5]:443", "2001:db8::5", 443),
    ],
)
def test_address_parses_and_renders(text: str, host: str, port: int) -> None:
    address = Address.__meshcore_parse__(text)
    assert address == Address(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("127.0.0.1", "must be an address \"host:port\", got '127.0.0.1'"),
        (":8080", "must be an address \"host:port\", got ':8080'"),
        ("host:http", "must be an address \"host:port\", got 'host:http'"),
        ("host:-1", "must be an address \"host:port\", got 'host:-1'"),
        ("host:99999", "port must be between 0 and 65535, got 99999"),
        ("::1:80", "must put an IPv6 address in brackets (\"[::1]:8080\"), got '::1:80'"),
        ("[::1:80", "must be an address \"host:port\", got '[::1:80'"),
        ("[not-ip]:80", "has an invalid IPv6 address 'not-ip'"),
        ("host:\uff18\uff10", "must be an address \"host:port\", got 'host:\uff18\uff10'"),
        ("host:²", "must be an address \"host:port\", got 'host:²'"),
        (8080, 'must be an address "host:port", got int'),
        (None, 'must be an address "host:port", got NoneType'),
    ],
)
def test_address_rejects(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(reason)}$"):
        Address.__meshcore_parse__(value)


@NO_DATABASE
@given(
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    ),
    port=st.integers(min_value=0, max_value=65535),
)
def test_address_round_trips(host: str, port: int) -> None:
    address = Address(host, port)
    assert Address.__meshcore_parse__(str(address)) == address


# -- SecretStr --------------------------------------------------------------------------------


def test_secret_str_parses_a_string_into_a_secret() -> None:
    key = SecretStr.__meshcore_parse__("sk-123")
    assert type(key) is SecretStr
    assert key == "sk-123"
    assert repr(key) == "SecretStr('[redacted]')"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (5, "must be a string, got int"),
        (None, "must be a string, got NoneType"),
        ([], "must be a string, got list"),
    ],
)
def test_secret_str_rejects_what_is_not_a_string(value: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        SecretStr.__meshcore_parse__(value)
