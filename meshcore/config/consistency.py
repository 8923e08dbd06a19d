r"""Rules across the objects of a Snapshot that no one field can check: pure, no I/O.

Each is something that would otherwise fail, or silently misbehave, once the Snapshot is
applied; here it is a problem with its field path, found by ``meshcore validate``:

- a route table: a domain served by two virtual hosts, a route with both
  ``prefix_rewrite`` and ``regex_rewrite``, a ``regex_rewrite`` substitution that refers
  to a group its pattern lacks (``\2`` of a pattern with one group);
- addresses: two listeners on one address, or the admin server on a listener's address
  (the same port, and the same host or a wildcard covering it: ``0.0.0.0`` takes every
  IPv4 address, ``::`` every address, IPv4 included). Port 0 is always free.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from meshcore.config.model import RouteConfiguration, Snapshot
from meshcore.config.units import Address
from meshcore.errors import ConfigProblem

__all__ = ["addresses_overlap", "consistency_problems", "route_config_problems", "substitution_problem"]

_IPV4_ANY = ipaddress.ip_address("0.0.0.0")  # noqa: S104 - the wildcard, compared with, not bound
_IPV6_ANY = ipaddress.ip_address("::")


def consistency_problems(snapshot: Snapshot) -> list[ConfigProblem]:
    """Every problem of ``snapshot`` across its objects (route tables, addresses)."""
    problems = []
    for i, route_config in enumerate(snapshot.route_configs):
        problems += [_prefixed(f"route_configs[{i}]", p) for p in route_config_problems(route_config)]
    problems += list(_address_problems(snapshot))
    return problems


def _prefixed(prefix: str, problem: ConfigProblem) -> ConfigProblem:
    return ConfigProblem(path=f"{prefix}.{problem.path}" if problem.path else prefix, message=problem.message)


# -- route tables ---------------------------------------------------------------------------------


def route_config_problems(config: RouteConfiguration) -> list[ConfigProblem]:
    """What would keep ``config`` from compiling, with paths relative to it (``virtual_hosts[0]...``)."""
    problems = []
    served: dict[str, tuple[str, int, int]] = {}  # domain -> (virtual host, its index, domain index)
    for i, vhost in enumerate(config.virtual_hosts):
        for k, domain in enumerate(vhost.domains):
            taken = served.setdefault(domain.lower(), (vhost.name, i, k))
            if taken[1] != i:
                name, vi, di = taken
                message = (
                    f"domain {domain!r} is already served by virtual host {name!r} "
                    f"(virtual_hosts[{vi}].domains[{di}])"
                )
                problems.append(ConfigProblem(path=f"virtual_hosts[{i}].domains[{k}]", message=message))
        for j, route in enumerate(vhost.routes):
            where = f"virtual_hosts[{i}].routes[{j}]"
            if route.prefix_rewrite is not None and route.regex_rewrite is not None:
                message = "takes one of prefix_rewrite, regex_rewrite, got both"
                problems.append(ConfigProblem(path=f"{where}.regex_rewrite", message=message))
            elif route.regex_rewrite is not None:
                reason = substitution_problem(*route.regex_rewrite)
                if reason is not None:
                    problems.append(ConfigProblem(path=f"{where}.regex_rewrite[1]", message=reason))
    return problems


def substitution_problem(pattern: str, substitution: str) -> str | None:
    r"""Why ``substitution`` cannot replace matches of ``pattern`` (``re.sub``), or None if it can.

    A reference to a group the pattern lacks (``\2``, ``\g<name>``), a bad escape. The
    pattern itself is checked where it is given (``Route.regex_rewrite``). Both are quoted
    as written, backslashes single.
    """
    try:
        compiled = re.compile(pattern)
    except re.error:
        return None  # reported with the pattern
    try:
        compiled.sub(substitution, "")  # parses the template whether or not anything matches
    except IndexError as err:  # an unknown group name: \g<name>
        name = str(err).rpartition(" ")[2]
        names = ", ".join(repr(n) for n in compiled.groupindex) or "none"
        return f"'{substitution}' refers to group {name}, which pattern '{pattern}' does not name (its names: {names})"
    except re.error as err:
        number = re.fullmatch(r"invalid group reference (\d+)", err.msg)
        if number is None:
            return f"'{substitution}' is not a valid substitution: {err}"
        groups = compiled.groups
        has = f"{groups} group{'s' if groups != 1 else ''}" if groups else "no groups"
        return f"'{substitution}' refers to group {number[1]}, which pattern '{pattern}' lacks (it has {has})"
    return None


# -- addresses ------------------------------------------------------------------------------------


def addresses_overlap(a: Address, b: Address) -> bool:
    """Whether two listening sockets on ``a`` and ``b`` would take the same connections.

    The same port (not 0) and the same host, or a wildcard covering the other: ``0.0.0.0``
    every IPv4 address, ``::`` every address (sockets are dual-stack). A host name counts as
    IPv4 (it is bound as one) and equals only itself.
    """
    if a.port != b.port or a.port == 0:
        return False
    x, y = _host(a.host), _host(b.host)
    if x == y:
        return True
    return _covers(x, y) or _covers(y, x)


def _host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()


def _covers(wildcard: object, other: object) -> bool:
    if wildcard == _IPV6_ANY:
        return True
    return wildcard == _IPV4_ANY and not isinstance(other, ipaddress.IPv6Address)


def _clash(address: Address, name: str, other: Address, where: str) -> str:
    """Why ``address`` cannot be bound next to listener ``name`` on ``other`` (at ``where``)."""
    if _host(address.host) == _host(other.host):
        return f"{address} is already the address of listener {name!r} ({where})"
    wildcard = address if _covers(_host(address.host), _host(other.host)) else other
    every = "every" if _host(wildcard.host) == _IPV6_ANY else "every IPv4"
    return (
        f"{address} overlaps listener {name!r} on {other} ({where}): "
        f"{wildcard.host} takes {every} address on port {wildcard.port}"
    )


def _address_problems(snapshot: Snapshot) -> Iterator[ConfigProblem]:
    listeners = snapshot.listeners
    for i, listener in enumerate(listeners):
        j = next((j for j in range(i) if addresses_overlap(listener.address, listeners[j].address)), None)
        if j is not None:
            owner = listeners[j]
            message = _clash(listener.address, owner.name, owner.address, f"listeners[{j}].address")
            yield ConfigProblem(path=f"listeners[{i}].address", message=message)
    admin = snapshot.admin
    if not admin.enabled:
        return
    for j, listener in enumerate(listeners):
        if addresses_overlap(admin.address, listener.address):
            message = _clash(admin.address, listener.name, listener.address, f"listeners[{j}].address")
            yield ConfigProblem(path="admin.address", message=f"{message}; the admin server needs its own")
            return
