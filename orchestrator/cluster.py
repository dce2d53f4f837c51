"""Ray clusters: addresses, the auth token, loopback-only clusters, and ``ray start`` for orch's nodes.

Two Ray habits need care here:

- Ray replaces a loopback address (``--node-ip-address 127.0.0.1``, a cluster address such as
  ``127.0.0.1:6379``) by the machine's outward address, so a cluster meant to stay on one machine
  would talk over its network interface. :func:`keep_loopback` keeps loopback addresses as given,
  in orch's drivers and in the node scripts under ``deploy/`` (which run ``python -m
  orchestrator.cluster ray-start ...``).
- Token authentication is on: every client of a cluster needs its token. :func:`auth_token` finds
  it where Ray looks (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.errors import ConfigError, UserError

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


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
    """A cluster address orch can join: ``auto``, or ``HOST:PORT`` of the head's GCS."""
    if address == "auto":
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: '{address}' is a dashboard URL; orch sweep joins the cluster's GCS "
                          "(HOST:PORT, usually port 6379) or 'auto'; `orch submit` takes the dashboard URL")
    host, port = split_address(address)
    if not host or port is None or port <= 0 or port > 65535:
        raise ConfigError(f"{key}: '{address}' is not HOST:PORT or 'auto'")


def is_loopback(host: str | None) -> bool:
    return bool(host) and (host in LOOPBACK_HOSTS or host.startswith("127."))


def keep_loopback() -> None:
    """Make Ray keep loopback addresses as given instead of swapping in the machine's outward one.

    Idempotent. Only loopback hosts are affected: a cluster on a real network behaves as Ray's own.
    """
    from ray._private import services

    if getattr(services, "_orch_keeps_loopback", False):
        return
    resolve = services.resolve_ip_for_localhost

    def resolve_keeping_loopback(host: str) -> str:
        if host in ("localhost", "127.0.0.1"):
            return "127.0.0.1"
        return host if is_loopback(host) else resolve(host)

    services.resolve_ip_for_localhost = resolve_keeping_loopback
    services._orch_keeps_loopback = True


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise a one-line UserError unless something listens at ``address`` (HOST:PORT)."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(f"cannot reach the Ray cluster at {address}: {reason} "
                        "(is its head running? deploy/ray-head starts one)") from None


# -- the token ------------------------------------------------------------------------------------


def auth_token() -> str | None:
    """The cluster token this process would present, where Ray itself looks for it."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path)] if path else [Path.home() / ".ray" / "auth_token"]
    for candidate in candidates:
        try:
            text = candidate.expanduser().read_text().strip()
        except OSError:
            if path:
                raise UserError(f"RAY_AUTH_TOKEN_PATH: cannot read the token file {path}") from None
            continue
        if text:
            return text
    return None


def use_token() -> None:
    """Present the token (if this machine has one) to the cluster this process joins.

    ``ray start`` turns token authentication on when it finds a token; ``ray.init(address=...)``
    does not, and without it a driver waits forever on a cluster that requires one.
    """
    if os.environ.get("RAY_AUTH_MODE") or not auth_token():
        return
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def dashboard_address(address: str | None) -> str:
    """The dashboard (Jobs API) URL: ``address``, else $RAY_API_SERVER_ADDRESS, else 127.0.0.1:8265."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_DASHBOARD
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address: '{address}' is not the dashboard's http://HOST:PORT")
    host, port = split_address(address)
    if not host or port == -1:
        raise UserError(f"--address: '{address}' is not the dashboard's http://HOST:PORT")
    return address.rstrip("/")


# -- ray start, for the node scripts --------------------------------------------------------------


def ray_start(argv: list[str]) -> None:
    """``ray start ARGV`` with loopback addresses kept as given (see the module's docstring)."""
    keep_loopback()
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", "start", *argv]
    ray_main()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "ray-start":
        sys.stderr.write("usage: python -m orchestrator.cluster ray-start [ray start arguments]\n")
        sys.exit(2)
    ray_start(argv[1:])


if __name__ == "__main__":
    main()
