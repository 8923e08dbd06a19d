"""The token bucket (sans-IO: time comes in as ``now``), shared by rate limits and HTTP/2 budgets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore import TokenBucket


def test_a_bucket_starts_full_and_empties_one_token_at_a_time() -> None:
    bucket = TokenBucket(3, fill_interval=1.0, now=10.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(10.0) == 1.0
    assert bucket.wait(10.25) == 0.75


def test_whole_fills_come_due_and_never_overflow_the_burst() -> None:
    bucket = TokenBucket(5, tokens_per_fill=2, fill_interval=0.5, now=0.0)
    for _ in range(5):
        assert bucket.take(0.0)
    bucket.refill(0.49)
    assert bucket.tokens == 0  # no partial fills
    bucket.refill(0.5)
    assert bucket.tokens == 2
    bucket.refill(100.0)
    assert bucket.tokens == 5


def test_an_infinite_interval_never_refills() -> None:
    bucket = TokenBucket(1, fill_interval=math.inf, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(1e9)
    assert bucket.wait(1e9) == math.inf


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max_tokens": 0, "fill_interval": 1.0}, "max_tokens and tokens_per_fill >= 1, got 0 and 1"),
        ({"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": 1.0}, "got 1 and 0"),
        ({"max_tokens": 1, "fill_interval": 0.0}, "a fill_interval > 0, got 0.0"),
        ({"max_tokens": 1, "fill_interval": math.nan}, "a fill_interval > 0, got nan"),
    ],
)
def test_a_bucket_that_could_not_work_is_refused(args: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(now=0.0, **args)  # type: ignore[arg-type] # the values are the test's point


@settings(database=None)
@given(
    burst=st.integers(1, 50),
    per_fill=st.integers(1, 10),
    interval=st.floats(0.001, 10),
    gaps=st.lists(st.floats(0, 5), max_size=200),
)
def test_no_more_tokens_are_taken_than_the_burst_plus_the_fills_due(
    burst: int, per_fill: int, interval: float, gaps: list[float]
) -> None:
    bucket = TokenBucket(burst, tokens_per_fill=per_fill, fill_interval=interval, now=0.0)
    now = 0.0
    taken = 0
    for gap in gaps:
        now += gap
        taken += bucket.take(now)
        assert 0 <= bucket.tokens <= burst
    assert taken <= burst + int(now / interval) * per_fill
