"""Typed node configuration, loaded once from one TOML file and validated.

Every error names the file and the key (``node.toml: [limits] max_message_bytes: …``).
Relative paths are resolved against the folder of the configuration file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation import divisions
from federation.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """Limits applied to every call and envelope."""

    #: Largest envelope accepted or sent, in bytes (also the gRPC message size limit).
    max_message_bytes: int = 4 * 1024 * 1024
    #: How far a sender's clock may run ahead of ours.
    max_clock_skew_seconds: int = 300
    #: Oldest created_at accepted (messages can wait in an outbox while a peer is down).
    max_message_age_seconds: int = 30 * 24 * 3600
    #: Deadline of every outgoing call.
    call_timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Delivery:
    """Outbox delivery worker settings."""

    #: First retry delay; doubles per attempt with full jitter.
    retry_initial_seconds: float = 0.5
    #: Cap of the retry delay.
    retry_max_seconds: float = 60.0
    #: How long a claimed (sending) row is reserved for this replica before another may take it.
    lease_seconds: float = 30.0
    #: Messages in flight at once per node.
    concurrency: int = 32
    #: Idle poll interval of the worker when nothing is due.
    poll_seconds: float = 0.5
    #: Send several messages to a peer in one DeliverBatch call (False: one call per message).
    batch: bool = True


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    code: str
    listen: str
    store_url: str
    ca_cert: Path
    tls_cert: Path
    tls_key: Path
    sign_cert: Path
    sign_key: Path
    manifest: Path
    limits: Limits = field(default_factory=Limits)
    delivery: Delivery = field(default_factory=Delivery)
    #: Replica name, unique among processes sharing one database.
    replica: str = ""
    #: Seconds between manifest refreshes (file and peers).
    manifest_refresh_seconds: float = 5.0
    #: Address of the Prometheus metrics endpoint ("" = off).
    metrics_listen: str = ""
    #: Log line format of ``cccfed node serve``: "text" or "json" (one JSON object a line).
    log_format: str = "text"
    #: Local overrides of peers' manifest endpoints (member code -> host:port), e.g. to reach a
    #: peer through a relay or proxy. TLS still checks the peer's pinned certificate.
    peer_endpoints: dict[str, str] = field(default_factory=dict)
    #: Days before a reply's due date at which a reminder is produced (and once overdue).
    reminder_days: tuple[int, ...] = (3, 1)


def _get(
    table: dict[str, Any], section: str, key: str, typ: type, path: Path, default: Any = ...
) -> Any:
    where = f"{path}: [{section}] {key}"
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: missing", reason="CONFIG_MISSING")
        return default
    value = table[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool) != (typ is bool):
        raise ConfigError(
            f"{where}: expected {typ.__name__}, got {type(value).__name__}", reason="CONFIG_TYPE"
        )
    return value


def _section(doc: dict[str, Any], name: str, path: Path, required: bool = True) -> dict[str, Any]:
    sec = doc.get(name)
    if sec is None:
        if required:
            raise ConfigError(f"{path}: [{name}]: missing section", reason="CONFIG_MISSING")
        return {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{path}: [{name}]: must be a table", reason="CONFIG_TYPE")
    return sec


_KNOWN = {
    "node": {"code", "listen", "store_url", "replica", "metrics_listen", "log_format"},
    "peers": set(divisions.PROVINCES),
    "tls": {"ca_cert", "cert", "key"},
    "signing": {"cert", "key"},
    "manifest": {"path", "refresh_seconds"},
    "limits": {
        "max_message_bytes",
        "max_clock_skew_seconds",
        "max_message_age_seconds",
        "call_timeout_seconds",
    },
    "obligations": {"reminder_days"},
    "delivery": {
        "retry_initial_seconds",
        "retry_max_seconds",
        "lease_seconds",
        "concurrency",
        "poll_seconds",
        "batch",
    },
}


def _positive(value: float, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where}: must be positive, got {value}", reason="CONFIG_RANGE")


def _host_port(value: str, where: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {value!r} is not host:port", reason="CONFIG_RANGE")


def load_config(path: Path | str) -> NodeConfig:
    """Load and validate a node configuration file."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file", reason="CONFIG_MISSING") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}", reason="CONFIG_SYNTAX") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", reason="CONFIG_SYNTAX") from e
    for name, value in doc.items():
        if name not in _KNOWN:
            raise ConfigError(f"{path}: [{name}]: unknown section", reason="CONFIG_UNKNOWN")
        if isinstance(value, dict):
            for key in value:
                if key not in _KNOWN[name]:
                    raise ConfigError(
                        f"{path}: [{name}] {key}: unknown key", reason="CONFIG_UNKNOWN"
                    )
    base = path.parent.resolve()

    def p(sec: dict[str, Any], section: str, key: str) -> Path:
        value = Path(_get(sec, section, key, str, path))
        return value if value.is_absolute() else (base / value)

    node = _section(doc, "node", path)
    code = _get(node, "node", "code", str, path)
    if code not in divisions.PROVINCES:
        raise ConfigError(
            f"{path}: [node] code: {code!r} is not a Delta province code "
            f"({', '.join(sorted(divisions.PROVINCES))})",
            reason="CONFIG_RANGE",
        )
    listen = _get(node, "node", "listen", str, path)
    _host_port(listen, f"{path}: [node] listen")
    store_url = _get(node, "node", "store_url", str, path)
    if store_url.startswith("sqlite:///") and not store_url.startswith("sqlite:////"):
        rel = store_url.removeprefix("sqlite:///")
        store_url = f"sqlite:///{base / rel}"
    elif not store_url.startswith(("sqlite:", "postgresql")):
        raise ConfigError(
            f"{path}: [node] store_url: {store_url!r} must be sqlite:///FILE or postgresql+psycopg://…",
            reason="CONFIG_RANGE",
        )
    tls = _section(doc, "tls", path)
    signing = _section(doc, "signing", path)
    manifest = _section(doc, "manifest", path)
    lim = _section(doc, "limits", path, required=False)
    dl = _section(doc, "delivery", path, required=False)
    d = Limits()
    limits = Limits(
        max_message_bytes=_get(lim, "limits", "max_message_bytes", int, path, d.max_message_bytes),
        max_clock_skew_seconds=_get(
            lim, "limits", "max_clock_skew_seconds", int, path, d.max_clock_skew_seconds
        ),
        max_message_age_seconds=_get(
            lim, "limits", "max_message_age_seconds", int, path, d.max_message_age_seconds
        ),
        call_timeout_seconds=_get(
            lim, "limits", "call_timeout_seconds", float, path, d.call_timeout_seconds
        ),
    )
    for key in (
        "max_message_bytes",
        "max_clock_skew_seconds",
        "max_message_age_seconds",
        "call_timeout_seconds",
    ):
        _positive(getattr(limits, key), f"{path}: [limits] {key}")
    dd = Delivery()
    delivery = Delivery(
        retry_initial_seconds=_get(
            dl, "delivery", "retry_initial_seconds", float, path, dd.retry_initial_seconds
        ),
        retry_max_seconds=_get(
            dl, "delivery", "retry_max_seconds", float, path, dd.retry_max_seconds
        ),
        lease_seconds=_get(dl, "delivery", "lease_seconds", float, path, dd.lease_seconds),
        concurrency=_get(dl, "delivery", "concurrency", int, path, dd.concurrency),
        poll_seconds=_get(dl, "delivery", "poll_seconds", float, path, dd.poll_seconds),
        batch=_get(dl, "delivery", "batch", bool, path, dd.batch),
    )
    for key in (
        "retry_initial_seconds",
        "retry_max_seconds",
        "lease_seconds",
        "concurrency",
        "poll_seconds",
    ):
        _positive(getattr(delivery, key), f"{path}: [delivery] {key}")
    ob = _section(doc, "obligations", path, required=False)
    days = ob.get("reminder_days", [3, 1])
    where = f"{path}: [obligations] reminder_days"
    if not isinstance(days, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 365 for d in days
    ):
        raise ConfigError(
            f"{where}: must be a list of whole days between 0 and 365, e.g. [3, 1]",
            reason="CONFIG_TYPE",
        )
    log_format = _get(node, "node", "log_format", str, path, "text")
    if log_format not in ("text", "json"):
        raise ConfigError(
            f'{path}: [node] log_format: {log_format!r} must be "text" or "json"',
            reason="CONFIG_RANGE",
        )
    peer_endpoints: dict[str, str] = {}
    peers = _section(doc, "peers", path, required=False)
    for peer in peers:
        endpoint = _get(peers, "peers", peer, str, path)
        _host_port(endpoint, f"{path}: [peers] {peer}")
        if peer == code:
            raise ConfigError(f"{path}: [peers] {peer}: is this node itself", reason="CONFIG_RANGE")
        peer_endpoints[peer] = endpoint
    return NodeConfig(
        path=path,
        code=code,
        listen=listen,
        store_url=store_url,
        ca_cert=p(tls, "tls", "ca_cert"),
        tls_cert=p(tls, "tls", "cert"),
        tls_key=p(tls, "tls", "key"),
        sign_cert=p(signing, "signing", "cert"),
        sign_key=p(signing, "signing", "key"),
        manifest=p(manifest, "manifest", "path"),
        limits=limits,
        delivery=delivery,
        replica=_get(node, "node", "replica", str, path, ""),
        manifest_refresh_seconds=_get(manifest, "manifest", "refresh_seconds", float, path, 5.0),
        metrics_listen=_get(node, "node", "metrics_listen", str, path, ""),
        reminder_days=tuple(days),
        log_format=log_format,
        peer_endpoints=peer_endpoints,
    )
