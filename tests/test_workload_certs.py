"""The sidecar's certificate agent: a key and a CSR of its own, renewed at about half the lifetime."""

from __future__ import annotations

import functools
import itertools
import random
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA, SignedCertificate
from meshcore.plugins.workload_certs import WorkloadCertificate, keep_certificate, renewal_delay

ID = "spiffe://cluster.local/ns/shop/sa/frontend"


def test_renewal_is_due_at_half_the_lifetime() -> None:
    assert renewal_delay(100.0, 200.0, 100.0) == 50.0
    assert renewal_delay(100.0, 200.0, 140.0) == 10.0
    assert renewal_delay(100.0, 200.0, 180.0) == 0.0  # overdue: now
    assert renewal_delay(100.0, 200.0, 100.0, jitter=0.1) == pytest.approx(45.0)
    assert renewal_delay(0.0, 10.0, 0.0, at=0.8) == 8.0


async def test_certificates_are_renewed_with_new_keys_before_they_expire(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ca = LocalCA(CaConfig(directory=str(tmp_path), workload_lifetime=Duration(4)))
    csrs: list[bytes] = []

    async def sign(csr: bytes) -> SignedCertificate:
        csrs.append(csr)
        return ca.sign(csr, ID)

    installed: list[WorkloadCertificate] = []
    six = trio.Event()

    def install(cert: WorkloadCertificate) -> None:
        installed.append(cert)
        if len(installed) == 6:
            six.set()

    async with trio.open_nursery() as nursery:
        first = await nursery.start(keep_certificate, ID, sign, install)
        with trio.fail_after(10):  # trio's clock: five renewals of a 4 s certificate take about 10 s
            await six.wait()
        nursery.cancel_scope.cancel()
    assert installed[0] == first
    keys = {cert.private_key for cert in installed}
    assert len(keys) == len(installed)  # a new key each time
    for cert in installed:
        leaf = x509.load_pem_x509_certificates(cert.certificate_chain.encode())[0]
        key = serialization.load_pem_private_key(cert.private_key.encode(), password=None)
        assert leaf.public_key() == key.public_key()  # the key made here is the one certified
    assert all(ID.encode() not in c and b"PRIVATE KEY" not in c for c in csrs)  # CSRs carry no key
    assert autojump_clock.current_time() < 10


async def test_a_failing_signer_is_retried_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    async def sign(_csr: bytes) -> SignedCertificate:
        attempts.append(trio.current_time())
        if len(attempts) < 4:
            msg = "control plane unreachable"
            raise ConnectionError(msg)
        return SignedCertificate(certificate_chain="chain", trusted_ca="ca", not_after=4e9)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            seeded = random.Random(1)  # noqa: S311 - a seeded jitter
            keep = functools.partial(keep_certificate, retry=(1.0, 4.0), rng=seeded)
            first = await nursery.start(keep, ID, sign, lambda _c: None)
            nursery.cancel_scope.cancel()
    waits = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert waits == [1.0, 2.0, 4.0]
    assert first.certificate_chain == "chain"
    assert autojump_clock.current_time() == pytest.approx(7.0)
