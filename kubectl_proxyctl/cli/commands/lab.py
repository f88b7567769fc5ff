"""`kubectl proxyctl lab …`: a real multi-node Service data plane on this machine."""

from __future__ import annotations

import ipaddress

import click

from kubectl_proxyctl.cli.options import DURATION, common_options
from kubectl_proxyctl.errors import ConfigError


@click.group("lab")
@common_options
def lab() -> None:
    """A real multi-node Service data plane on this machine (network namespaces)."""


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[IPv6]:PORT` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"invalid --listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:6443")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid --listen {text!r}: port {port} is out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid --listen {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"invalid --listen {text!r}: write IPv6 addresses in brackets, e.g. [::1]:6443")
    return host or "0.0.0.0", port


@lab.command("apiserver", short_help="Run the lab's Kubernetes-compatible API server.")
@click.option(
    "--listen", default="127.0.0.1:6443", show_default=True, metavar="HOST:PORT",
    help="Address to serve HTTPS on (port 0 picks a free port).",
)
@click.option(
    "--state-dir", required=True, metavar="DIR",
    type=click.Path(file_okay=False, writable=True),
    help="Where objects, the CA, the serving certificate, the token and the kubeconfig live.",
)
@click.option(
    "--token", metavar="T", help="Bearer token clients must send (default: generated once, kept in DIR)."
)
@click.option(
    "--san", "sans", multiple=True, metavar="IP_OR_NAME",
    help="Extra IP address or DNS name for the serving certificate (repeatable).",
)
@click.option(
    "--history", default=10000, show_default=True, type=click.IntRange(min=1),
    help="Watch events kept; watches from older resource versions get 410 Expired.",
)
@click.option(
    "--bookmark-interval", type=DURATION, default="5s", show_default=True,
    help="How often watches that allow bookmarks receive one.",
)
@common_options
def apiserver(
    listen: str, state_dir: str, token: str | None, sans: tuple[str, ...], history: int,
    bookmark_interval: float,
) -> None:
    """Serve the lab's Kubernetes-compatible API server until interrupted.

    Namespaces, Services, Endpoints, Nodes, Pods and EndpointSlices, with the real REST
    protocol: discovery, list/watch with resource versions and bookmarks, server-side
    tables, strategic merge patches. kubectl and the official client libraries work against
    it unmodified. Objects and resource versions persist in DIR across restarts.

    Writes ca.crt, apiserver.crt, apiserver.key, token and kubeconfig into DIR, prints the
    kubeconfig path, and serves until SIGINT or SIGTERM.

    \b
    Examples:
      kubectl proxyctl lab apiserver --state-dir /var/lib/proxyctl-lab
      kubectl proxyctl lab apiserver --listen 0.0.0.0:6443 --state-dir ./lab --san 172.18.0.1
      KUBECONFIG=./lab/kubeconfig kubectl get svc -A
    """
    import signal
    import sqlite3
    import threading

    from kubectl_proxyctl.lab.apiserver import APIServer

    host, port = parse_listen(listen)
    try:
        server = APIServer(
            host, port, state_dir=state_dir, token=token, history=history,
            bookmark_interval=bookmark_interval, extra_sans=sans,
        )
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot use --state-dir {state_dir}: {reason}") from exc
    try:
        server.start()
    except OSError as exc:
        server.stop()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(f"serving {server.url}")
        click.echo(f"kubeconfig: {server.kubeconfig_path}")
        click.echo(f"try: KUBECONFIG={server.kubeconfig_path} kubectl get svc -A", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
