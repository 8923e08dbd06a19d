"""Body.at_hand: whether read() returns at once, so a sender can send what is here without a task.

A sender trusts it to read in the task that has the body; a wrong True would stall that
task (and what it has not yet written), so a body whose source cannot say is never at hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from meshcore.http.messages import Body


async def test_a_body_of_known_bytes_is_at_hand_to_its_end() -> None:
    body = Body.from_bytes(b"abc")
    assert body.at_hand()
    assert await body.read() == b"abc"
    assert body.at_hand()
    assert await body.read() == b""
    assert body.at_hand()


async def test_a_body_whose_source_cannot_say_is_not_at_hand_until_it_ended() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"one"

    body = Body.from_iterable(chunks())
    assert not body.at_hand()
    assert await body.read() == b"one"
    assert not body.at_hand()
    assert await body.read() == b""
    assert body.at_hand()  # ended: read() returns b"" at once


async def test_a_body_follows_its_sources_word_and_a_closed_one_is_at_hand() -> None:
    buffered: list[bytes] = []

    async def read() -> bytes:
        return buffered.pop(0) if buffered else b""

    body = Body(read, ready=lambda: bool(buffered))
    assert not body.at_hand()
    buffered.append(b"here")
    assert body.at_hand()
    assert await body.read() == b"here"
    body.close()
    assert body.at_hand()
    assert await body.read() == b""
