"""A workload's certificate, kept fresh by the proxy that uses it: key and CSR made here, renewed at half-life.

:func:`keep_certificate` is what a sidecar runs beside its proxy: it makes a new private
key and a CSR for the workload's SPIFFE ID (the key never leaves the process), has it
signed (by the control plane, which asks its CA), hands the result to ``install`` (which
turns it into the ``TlsSecret`` the proxy's listeners and clusters use), and starts again
at about half of the certificate's lifetime, so that a certificate is replaced long before
it expires and a failed renewal has time for its retries. Failures are retried with
exponential backoff (never past the point where half the remaining time is left).

The schedule is a pure function (:func:`renewal_delay`); the loop sleeps on trio's clock,
so a test with trio's autojump clock runs through many renewals in no time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import structlog
import trio

__all__ = ["SignedLike", "WorkloadCertificate", "keep_certificate", "renewal_delay"]

log = structlog.get_logger("meshcore.certificates")

RENEW_AT = 0.5
"""The fraction of a certificate's lifetime after which it is renewed."""
JITTER = 0.1
"""Up to this fraction of the delay is taken off at random, so that proxies do not renew in step."""


class SignedLike(Protocol):
    """What a signer answers: the control plane's ``SignedCertificate``."""

    certificate_chain: str
    trusted_ca: str
    not_after: float


@attrs.frozen
class WorkloadCertificate:
    """A workload's certificate and its key, as PEM, ready to be a ``TlsSecret``.

    Attributes:
        certificate_chain: the certificate, then its intermediates.
        private_key: the key made for it (never sent anywhere).
        trusted_ca: the trust bundle (every trusted root).
        issued_at: when it was received (POSIX time).
        not_after: when it expires (POSIX time).
    """

    certificate_chain: str
    private_key: str
    trusted_ca: str
    issued_at: float
    not_after: float


def renewal_delay(
    issued_at: float, not_after: float, now: float, *, at: float = RENEW_AT, jitter: float = 0.0
) -> float:
    """Seconds from ``now`` until a certificate valid from ``issued_at`` to ``not_after`` is renewed.

    At ``at`` of its lifetime, less up to ``jitter`` of that, never negative.
    """
    due = issued_at + (not_after - issued_at) * at
    return max(0.0, (due - now) * (1 - jitter))


async def keep_certificate(
    spiffe_id: str,
    sign: Callable[[bytes], Awaitable[SignedLike]],
    install: Callable[[WorkloadCertificate], None],
    *,
    renew_at: float = RENEW_AT,
    retry: tuple[float, float] = (0.5, 30.0),
    rng: random.Random | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a certificate for ``spiffe_id`` installed and fresh, until cancelled.

    Args:
        spiffe_id: the workload's identity.
        sign: sends a CSR (PEM) to be signed; raises if it is refused or cannot be sent.
        install: takes each new certificate (it must not block: it swaps a secret in).
        renew_at: the fraction of a lifetime after which a certificate is renewed.
        retry: the first and the longest wait between failed attempts.
        rng: the random source of the jitter (tests pass a seeded one).
        task_status: reports the first certificate once it is installed.
    """
    from meshcore.plugins.ca_x509 import make_csr  # noqa: PLC0415 - cryptography loads with the first certificate

    rng = rng or random.Random()  # noqa: S311 - spreading renewals, not cryptography
    started = False
    current: WorkloadCertificate | None = None
    backoff = retry[0]
    while True:
        csr, key = make_csr(spiffe_id)
        try:
            signed = await sign(csr)
        except Exception as err:  # noqa: BLE001 - whatever the signer's failure, retry it
            wait = backoff
            if current is not None:  # never wait past half the time the current one has left
                wait = min(wait, max(0.05, (current.not_after - time.time()) / 2))
            log.warning(
                "certificate_renewal_failed", spiffe_id=spiffe_id, reason=str(err), retry_in=round(wait, 3)
            )
            await trio.sleep(wait)
            backoff = min(backoff * 2, retry[1])
            continue
        backoff = retry[0]
        now = time.time()
        current = WorkloadCertificate(
            certificate_chain=signed.certificate_chain,
            private_key=key.decode("ascii"),
            trusted_ca=signed.trusted_ca,
            issued_at=now,
            not_after=signed.not_after,
        )
        install(current)
        delay = renewal_delay(now, signed.not_after, now, at=renew_at, jitter=JITTER * rng.random())
        log.info(
            "certificate_installed", spiffe_id=spiffe_id, not_after=signed.not_after, renew_in=round(delay, 3)
        )
        if not started:
            started = True
            task_status.started(current)
        await trio.sleep(delay)
