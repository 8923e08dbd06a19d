"""The delivery protocol, sans-IO: bytes and messages in, events out, both ends.

A control-plane session and a proxy session talk to each other through lists of
messages, no sockets: subscribing with the versions held, pushes of changed types with
a nonce each, ACKs, NACKs with the proxy's error, stale answers ignored, CSRs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from meshcore.control.messages import MAX_MESSAGE_SIZE, FrameDecoder, encode, encode_resources
from meshcore.control.protocol import (
    Acked,
    CertificateAnswered,
    CertificateRequested,
    ClientSession,
    Nacked,
    Push,
    ServerSession,
    Status,
    Subscribed,
    TypeUpdate,
)
from meshcore.control.translate import ProxyIdentity
from meshcore.errors import ProtocolError

NODE = ProxyIdentity(
    id="frontend-1",
    workload="frontend",
    namespace="shop",
    version="1.0",
    metadata={"http_proxy": "127.0.0.1:15001"},
)


def relay(messages: list[dict[str, Any]], to: ServerSession | ClientSession) -> list[Any]:
    """Deliver messages through the real framing, as the stream would."""
    decoder = FrameDecoder()
    wire = b"".join(encode(m) for m in messages)
    events = []
    for i in range(0, len(wire), 7):  # in awkward pieces
        for message in decoder.feed(wire[i : i + 7]):
            events.extend(to.receive(message))
    assert decoder.pending == 0
    return events


def status(session: ServerSession) -> Status:
    """The session's status now (a call: mypy would narrow a property read twice)."""
    return session.status


def connected(versions: dict[str, str] | None = None) -> tuple[ServerSession, ClientSession, Subscribed]:
    server, client = ServerSession(), ClientSession(NODE, versions)
    (event,) = relay(client.start(), server)
    assert isinstance(event, Subscribed)
    return server, client, event


def updates(version: str = "v1") -> list[TypeUpdate]:
    return [
        TypeUpdate(type_url="listeners", version=version, resources={"l": {"name": "l"}}),
        TypeUpdate(type_url="clusters", version=version, resources={"c": {"name": "c"}}),
    ]


def test_framing_survives_any_split_and_refuses_garbage() -> None:
    decoder = FrameDecoder()
    frames = encode({"a": {"x": 1}}) + encode({"b": {"y": "é"}})
    assert [decoder.feed(frames[i : i + 1]) for i in range(len(frames))][-1] == [{"b": {"y": "é"}}]
    with pytest.raises(ProtocolError, match="compressed or unknown frame flags 0x1"):
        FrameDecoder().feed(b"\x01\x00\x00\x00\x02{}")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameDecoder().feed(b"\x00" + (MAX_MESSAGE_SIZE + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="not JSON"):
        FrameDecoder().feed(b"\x00\x00\x00\x00\x03{x}")
    with pytest.raises(ProtocolError, match="one key naming its kind"):
        FrameDecoder().feed(encode({"a": 1, "b": 2}))


def test_the_first_request_says_who_and_what_the_proxy_has() -> None:
    _, _, event = connected({"listeners": "v0", "bogus": "x"})
    assert event.node == NODE
    assert event.versions == {"listeners": "v0"}


def test_a_push_is_applied_whole_then_every_response_acked() -> None:
    server, client, _ = connected()
    assert status(server) is Status.STALE
    responses = server.push(updates())
    assert [json.loads(json.dumps(r))["discovery_response"]["type_url"] for r in responses] == [
        "clusters",
        "listeners",
    ]
    (push,) = relay(responses, client)
    assert isinstance(push, Push)
    assert [u.type_url for u in push.updates] == ["clusters", "listeners"]
    assert push.updates[1].resources == {"l": {"name": "l"}}
    assert status(server) is Status.STALE, "sent, not yet applied"
    events = relay(client.ack(push), server)
    assert events == [Acked("clusters", "v1"), Acked("listeners", "v1")]
    assert status(server) is Status.SYNCED
    assert client.versions == {"clusters": "v1", "listeners": "v1"}


def test_a_nack_keeps_the_old_version_and_carries_the_proxys_message() -> None:
    server, client, _ = connected()
    (push,) = relay(server.push(updates("v1")), client)
    relay(client.ack(push), server)
    (push,) = relay(server.push(updates("v2")), client)
    events = relay(
        client.nack(push, "listeners[0].address: cannot listen on 127.0.0.1:80: Permission denied"), server
    )
    assert events[0] == Nacked(
        "clusters", "v1", "v2", "listeners[0].address: cannot listen on 127.0.0.1:80: Permission denied"
    )
    assert status(server) is Status.NACKED
    assert server.nack_message.endswith("Permission denied")
    assert server.acked_versions() == {"clusters": "v1", "listeners": "v1"}
    (push,) = relay(server.push(updates("v3")), client)
    relay(client.ack(push), server)
    assert status(server) is Status.SYNCED
    assert server.nack_message == ""


def test_an_answer_to_an_older_push_is_ignored() -> None:
    server, client, _ = connected()
    (first,) = relay(server.push(updates("v1")), client)
    (second,) = relay(server.push(updates("v2")), client)
    assert relay(client.ack(first), server) == []
    assert status(server) is Status.STALE
    assert relay(client.ack(second), server) == [Acked("clusters", "v2"), Acked("listeners", "v2")]


def test_endpoint_deltas_carry_only_what_changed() -> None:
    server, client, _ = connected()
    delta = TypeUpdate(
        type_url="endpoints",
        version="e2",
        resources={"c": [{"address": "10.0.0.2:80"}]},
        removed=("gone",),
        incremental=True,
    )
    (push,) = relay(server.push([delta]), client)
    assert push.updates == (delta,)


def test_an_ack_of_a_version_never_sent_breaks_the_protocol() -> None:
    server, client, _ = connected()
    (push,) = relay(server.push(updates("v1")), client)
    forged = client.ack(push)
    forged[0]["discovery_request"]["version_info"] = "v9"
    with pytest.raises(ProtocolError, match="carried 'v1'"):
        relay(forged, server)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            {"discovery_request": {"type_url": "listeners", "node": {"id": "x"}}},
            'must subscribe to every type ("*")',
        ),
        ({"discovery_request": {"type_url": "*"}}, "must carry the node"),
        ({"discovery_request": {"type_url": "*", "node": {"id": 5}}}, "id must be str, got int"),
        (
            {"discovery_request": {"type_url": "*", "node": {"metadata": {"a": 1}}}},
            "metadata must map strings to strings",
        ),
        ({"certificate_request": {"request_id": 1, "csr": "x"}}, "before the proxy said who it is"),
        ({"hello": {}}, "unknown message 'hello'"),
        ({"discovery_request": []}, "must be an object"),
    ],
)
def test_the_control_plane_refuses_bad_messages(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(error)):
        ServerSession().receive(message)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            {"discovery_response": {"type_url": "widgets", "version_info": "1", "nonce": "n"}},
            "unknown resource type",
        ),
        ({"discovery_response": {"type_url": "listeners", "nonce": "n"}}, "version_info is required"),
        (
            {
                "discovery_response": {
                    "type_url": "listeners",
                    "version_info": "1",
                    "nonce": "n",
                    "resources": [{"x": 1}],
                }
            },
            "must be an object with name and resource",
        ),
        (
            {
                "discovery_response": {
                    "type_url": "listeners",
                    "version_info": "1",
                    "nonce": "n",
                    "last": "yes",
                }
            },
            "last must be bool",
        ),
    ],
)
def test_the_proxy_refuses_bad_messages(message: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        ClientSession(NODE).receive(message)


def test_certificate_requests_and_answers() -> None:
    server, client, _ = connected()
    request_id, message = client.certificate_request("-----BEGIN CERTIFICATE REQUEST-----\n...")
    (event,) = relay([message], server)
    assert event == CertificateRequested(request_id, "-----BEGIN CERTIFICATE REQUEST-----\n...")
    answer = server.certificate_response(CertificateAnswered(request_id, error="no CA configured"))
    assert relay([answer], client) == [CertificateAnswered(request_id, error="no CA configured")]
    signed = CertificateAnswered(request_id, certificate_chain="CERT", trusted_ca="CA", not_after=1.5e9)
    assert relay([server.certificate_response(signed)], client) == [signed]


@pytest.mark.parametrize("preencoded", [False, True])
def test_framed_pushes_are_the_messages_encoded(preencoded: bool) -> None:
    """``push_frames`` (resources encoded once for many proxies) sends exactly what ``push`` says."""
    resources = {"c": {"name": "c", "é": [1, 2.5, None, True]}, "d": {"name": "d"}}
    delta = TypeUpdate(
        type_url="endpoints", version="v2", resources={"c": []}, removed=("x",), incremental=True
    )
    full = TypeUpdate(
        type_url="clusters",
        version='v"1',
        resources=resources,
        resources_json=encode_resources(resources) if preencoded else None,
    )
    messages, frames = ServerSession().push([delta, full]), ServerSession().push_frames([delta, full])
    assert frames == b"".join(encode(m) for m in messages)
    decoder = FrameDecoder()
    assert decoder.feed(frames) == messages
