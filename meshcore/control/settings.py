"""The control plane's own config: where it listens, who may connect, how it pushes.

Written as YAML, TOML or JSON (``meshcore control-plane --config FILE``) and checked by the
same structurer as everything else; every field has a default, so a control plane runs
with none (``meshcore control-plane -c mesh/``).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path

import attrs

from meshcore.config import Address, CertificateAuthorityRef, Duration, at_least, non_empty
from meshcore.config.loader import parse_document, parse_path
from meshcore.config.structure import Structurer
from meshcore.control.discovery import DiscoveryRef
from meshcore.control.model import MeshSettings, OpenTelemetryProvider, TracingProvider
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.registry import Registry

__all__ = ["BootstrapToken", "ControlPlaneConfig", "ServerTls", "Tokens", "load_settings"]


@attrs.frozen(kw_only=True)
class BootstrapToken:
    """A token proxies present on their first connection, and the identities it lets them claim.

    Exactly one of ``token`` and ``token_file``.
    """

    token: str | None = None
    token_file: str | None = None
    """A file holding the token (surrounding whitespace ignored)."""
    namespace: str = attrs.field(validator=non_empty)
    """The namespace the proxies' workloads must be in."""
    workloads: tuple[str, ...] = ("*",)
    """The workloads they may claim ("*": any of the namespace)."""

    def __attrs_post_init__(self) -> None:
        if (self.token is None) == (self.token_file is None):
            msg = "needs exactly one of token, token_file"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class ServerTls:
    """The certificate the control plane presents to proxies."""

    certificate_file: str = attrs.field(validator=non_empty)
    private_key_file: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class ControlPlaneConfig:
    """Config of ``meshcore control-plane``."""

    mesh: tuple[str, ...] = ()
    """Files and folders of mesh resources (``-c`` adds more)."""
    listen: Address = Address("127.0.0.1", 15010)
    """Where proxies connect (HTTP/2; TLS when ``tls`` is set)."""
    tls: ServerTls | None = None
    """TLS for proxies' connections. Without it, only loopback addresses may be listened on."""
    admin: Address = Address("127.0.0.1", 15014)
    """The admin server: readiness, stats, proxies, the mesh model."""
    bootstrap_tokens: tuple[BootstrapToken, ...] = ()
    allow_any_identity: bool = False
    """Let proxies without a token claim any identity (for a mesh on one trusted machine)."""
    debounce: Duration = Duration(0.1)
    """How long changes may keep coming before they are pushed together."""
    max_debounce: Duration = attrs.field(default=Duration(1), validator=at_least(0))
    """The longest a push waits for changes to stop coming."""
    poll_interval: Duration = Duration(1)
    """How often the mesh files are checked for changes (0: only on SIGHUP)."""
    discovery: tuple[DiscoveryRef, ...] = (DiscoveryRef(name="static"), DiscoveryRef(name="dns"))
    """Discovery backends, in order."""
    trust_domain: str = attrs.field(default="cluster.local", validator=non_empty)
    domain_suffix: str = attrs.field(default="cluster.local", validator=non_empty)
    root_namespace: str = attrs.field(default="istio-system", validator=non_empty)
    proxy_retention: Duration = Duration(300)
    """How long a proxy that went away stays listed (as STALE)."""
    tracing_providers: tuple[TracingProvider, ...] = ()
    """Where sidecars may send spans, by name, for Telemetry resources to name (Istio's
    ``extensionProviders``): ``[{name: otel, opentelemetry: {endpoint:
    http://127.0.0.1:4318/v1/traces}}]``. The provider ``meshcore``, the control plane's own
    receiver (``/v1/traces`` of its admin server, shown by its dashboard), is always there
    unless one of that name is given or the admin port is 0."""
    default_tracing_providers: tuple[str, ...] = ("meshcore",)
    """The providers of a Telemetry ``tracing`` that names none (Istio's ``defaultProviders``)."""
    ca: CertificateAuthorityRef | None = None
    """The certificate authority that signs the sidecars' workload certificates
    (``ca: {meshcore: {directory: ca/}}``). With one, sidecars get certificates through
    their delivery stream and talk mutual TLS as PeerAuthentication says; its relative
    ``directory`` and ``*_file`` names are read from the settings file's folder."""

    @property
    def mesh_settings(self) -> MeshSettings:
        """The mesh-wide settings for the model."""
        return MeshSettings(
            trust_domain=self.trust_domain,
            domain_suffix=self.domain_suffix,
            root_namespace=self.root_namespace,
            mtls=self.ca is not None,
            tracing_providers=self._tracing_providers(),
            default_tracing_providers=self.default_tracing_providers,
        )

    def _tracing_providers(self) -> tuple[TracingProvider, ...]:
        providers = self.tracing_providers
        if self.admin.port and all(p.name != "meshcore" for p in providers):
            host = f"[{self.admin.host}]" if ":" in self.admin.host else self.admin.host
            own = OpenTelemetryProvider(endpoint=f"http://{host}:{self.admin.port}/v1/traces")
            providers = (*providers, TracingProvider(name="meshcore", opentelemetry=own))
        return providers


def load_settings(path: str | None, registry: Registry) -> ControlPlaneConfig:
    """The control plane's config from ``path`` (defaults when None); ConfigError with every problem."""
    if path is None:
        config = ControlPlaneConfig()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError([ConfigProblem(path="", message=f"cannot read: {err}", file=path)]) from err
        data, lines = parse_document(text, path)
        structurer = Structurer(registry)
        found = structurer.structure(data, ControlPlaneConfig)
        if structurer.problems or not isinstance(found, ControlPlaneConfig):
            raise ConfigError(
                [
                    attrs.evolve(p, file=path, line=lines.line_for(parse_path(p.path)) if lines else None)
                    for p in structurer.problems
                ]
            )
        config = _relative_to(found, Path(path).parent)
    tls_needed = config.listen.host not in ("127.0.0.1", "::1", "localhost") and config.tls is None
    if tls_needed:
        msg = f"listening on {config.listen} needs tls (plaintext is for loopback addresses only)"
        raise ConfigError([ConfigProblem(path="listen", message=msg, file=path)])
    return config


def _relative_to(config: ControlPlaneConfig, base: Path) -> ControlPlaneConfig:
    """Relative file names in a settings file are read from the file's folder."""

    def resolve(name: str | None) -> str | None:
        return None if name is None or Path(name).is_absolute() else str(base / name)

    tls = config.tls
    if tls is not None:
        tls = ServerTls(
            certificate_file=resolve(tls.certificate_file) or "",
            private_key_file=resolve(tls.private_key_file) or "",
        )
    tokens = tuple(attrs.evolve(t, token_file=resolve(t.token_file)) for t in config.bootstrap_tokens)
    mesh = tuple(resolve(m) or m for m in config.mesh)
    ca = config.ca
    if ca is not None and attrs.has(type(ca.config)):
        paths = {
            f.name: resolve(getattr(ca.config, f.name))
            for f in attrs.fields(type(ca.config))
            if (f.name == "directory" or f.name.endswith("_file"))
            and isinstance(getattr(ca.config, f.name), str)
        }
        ca = attrs.evolve(ca, config=attrs.evolve(ca.config, **{k: v for k, v in paths.items() if v}))
    return attrs.evolve(config, tls=tls, bootstrap_tokens=tokens, mesh=mesh, ca=ca)


class Tokens:
    """Bootstrap tokens, read once, and the identities each lets a proxy claim."""

    def __init__(
        self, entries: Sequence[BootstrapToken], *, allow_any: bool = False, base: Path | None = None
    ) -> None:
        self.allow_any = allow_any
        self.entries: list[tuple[bytes, BootstrapToken]] = []
        problems = []
        for i, entry in enumerate(entries):
            if entry.token is not None:
                secret = entry.token
            else:
                file = Path(entry.token_file or "")
                file = file if file.is_absolute() or base is None else base / file
                try:
                    secret = file.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as err:
                    problems.append(
                        ConfigProblem(
                            path=f"bootstrap_tokens[{i}].token_file", message=f"cannot read {file}: {err}"
                        )
                    )
                    continue
            if not secret:
                problems.append(ConfigProblem(path=f"bootstrap_tokens[{i}]", message="the token is empty"))
                continue
            self.entries.append((secret.encode(), entry))
        if problems:
            raise ConfigError(problems)

    def check(self, token: str | None, namespace: str, workload: str) -> str | None:
        """None if ``token`` may claim ``namespace/workload``; else why not."""
        if token is None:
            return None if self.allow_any else "no bootstrap token (authorization: Bearer TOKEN)"
        matched = [entry for secret, entry in self.entries if hmac.compare_digest(secret, token.encode())]
        if not matched:
            return "unknown bootstrap token"
        for entry in matched:
            if entry.namespace == namespace and ("*" in entry.workloads or workload in entry.workloads):
                return None
        return f"this bootstrap token may not claim workload {namespace}/{workload or '(none)'}"
