"""Free loopback ports for tests that start processes which bind them themselves."""

from __future__ import annotations

import socket


def free_ports(names: list[str]) -> dict[str, int]:
    """A free loopback port for each name, all different (the sockets are held until all are chosen)."""
    sockets = [socket.socket() for _ in names]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return {name: int(sock.getsockname()[1]) for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A free loopback port (free when asked: the process that binds it may find it taken)."""
    return free_ports(["port"])["port"]
