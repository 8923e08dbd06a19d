"""Load-balancing policies: pure logic over hosts with weights and active requests."""

from __future__ import annotations

import collections
import itertools

import attrs
import pytest

from meshcore.filters.load_balancers import LeastRequest, LeastRequestConfig, RoundRobin


@attrs.define
class FakeHost:
    name: str
    weight: int = 1
    active_requests: int = 0


def test_round_robin_visits_every_host_in_turn() -> None:
    hosts = [FakeHost("a"), FakeHost("b"), FakeHost("c")]
    picker = RoundRobin()
    picks = [picker.pick(hosts).name for _ in range(9)]
    assert collections.Counter(picks) == {"a": 3, "b": 3, "c": 3}
    # In turn: no host twice in a row.
    assert all(x != y for x, y in itertools.pairwise(picks))


def test_round_robin_honours_weights_smoothly() -> None:
    hosts = [FakeHost("heavy", weight=5), FakeHost("light", weight=1)]
    picker = RoundRobin()
    picks = [picker.pick(hosts).name for _ in range(60)]
    assert collections.Counter(picks) == {"heavy": 50, "light": 10}
    # Smooth: the light host is never starved for a whole cycle of six.
    assert all("light" in picks[i : i + 6] for i in range(0, 60, 6))


def test_least_request_prefers_the_idle_host() -> None:
    busy, idle = FakeHost("busy", active_requests=10), FakeHost("idle")
    picker = LeastRequest(LeastRequestConfig(choice_count=2))
    # With two hosts and two choices, both are always sampled: the idle one wins.
    assert {picker.pick([busy, idle]).name for _ in range(50)} == {"idle"}


def test_least_request_spreads_load_over_equal_hosts() -> None:
    hosts = [FakeHost(str(i)) for i in range(4)]
    picker = LeastRequest()
    counts = collections.Counter(picker.pick(hosts).name for _ in range(4000))
    assert set(counts) == {"0", "1", "2", "3"}
    assert all(800 < n < 1200 for n in counts.values())


def test_least_request_weighs_active_requests_by_weight() -> None:
    big = FakeHost("big", weight=4, active_requests=4)  # 1 per weight unit
    small = FakeHost("small", weight=1, active_requests=2)  # 2 per weight unit
    picker = LeastRequest()
    assert {picker.pick([big, small]).name for _ in range(20)} == {"big"}


def test_a_single_host_is_always_picked() -> None:
    host = FakeHost("only")
    assert LeastRequest().pick([host]) is host
    assert RoundRobin().pick([host]) is host


def test_choice_count_must_be_at_least_two() -> None:
    with pytest.raises(ValueError, match="must be >= 2, got 1"):
        LeastRequestConfig(choice_count=1)
