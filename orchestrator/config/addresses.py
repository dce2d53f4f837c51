"""Ray cluster addresses: ``host:port`` checks and what counts as loopback."""

from __future__ import annotations

from urllib.parse import urlparse

from orchestrator.errors import ConfigError

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

def split_address(address: str) -> tuple[str, int | None]:
    """(host, port) of ``HOST:PORT``, ``ray://HOST:PORT`` or ``http://HOST:PORT``."""
    text = address.strip()
    if "://" not in text:
        text = "tcp://" + text
    parsed = urlparse(text)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    return parsed.hostname or "", port


def check_address(address: str, key: str = "--address") -> None:
    """A cluster address orch can join: ``auto``, ``HOST:PORT`` of the head's GCS, or ``local``
    (a Ray of the sweep's own, even while ``orch up``'s runs)."""
    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: '{address}' is a dashboard URL; orch sweep joins the cluster's GCS "
                          "(HOST:PORT, usually port 6379) or 'auto'; `orch submit` takes the dashboard URL")
    host, port = split_address(address)
    if not host or port is None or port <= 0 or port > 65535:
        raise ConfigError(f"{key}: '{address}' is not HOST:PORT, 'auto' or 'local'")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    return host in LOOPBACK_HOSTS or host.startswith("127.")
