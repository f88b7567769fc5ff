"""Probes from this machine: the same ProbeSpecs a node runs, made with Python sockets.

Results mean what they mean on a node: a completed connect is `open` (for HTTP the request
is sent and up to RESPONSE_BYTES of the answer read), a refusal or an ICMP unreachable is
`closed`, silence until the timeout is `timeout`; a UDP datagram is answered (`open`),
refused by ICMP (`closed`), or met with silence (`sent`). Latency is the connect time (UDP:
the round trip to the reply).
"""

from __future__ import annotations

import errno
import socket
import time

from kubectl_proxyctl.remote.probe import (
    RESPONSE_BYTES,
    Mode,
    Observation,
    ProbeSpec,
    Seen,
    backend_of,
    http_observation,
)

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _failed(exc: OSError) -> Observation:
    if isinstance(exc, ConnectionRefusedError):
        return Observation(Seen.CLOSED, detail="connection refused")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return Observation(Seen.TIMEOUT)
    if exc.errno in _UNREACHABLE:
        return Observation(Seen.CLOSED, detail=exc.strerror or "unreachable")
    return Observation(Seen.ERROR, detail=f"local probe failed: {exc.strerror or exc}")


def probe(spec: ProbeSpec, timeout: float) -> Observation:
    """Run one probe from this machine (never raises for network failures)."""
    if spec.mode == Mode.UDP:
        return _udp(spec, timeout)
    sock = socket.socket(_family(spec.address), socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        start = time.monotonic()
        try:
            sock.connect((spec.address, spec.port))
        except OSError as exc:
            return _failed(exc)
        latency = (time.monotonic() - start) * 1000.0
        if spec.mode == Mode.TCP:
            return Observation(Seen.OPEN, latency)
        host = f"[{spec.address}]" if ":" in spec.address else spec.address
        request = (f"GET {spec.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: kubectl-proxyctl\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            sock.sendall(request.encode("ascii"))
            while len(data) < RESPONSE_BYTES:
                chunk = sock.recv(RESPONSE_BYTES - len(data))
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, socket.timeout):
            if not data:
                return Observation(Seen.OPEN, latency, detail="connected; no HTTP response within the timeout")
        except OSError:
            if not data:
                return Observation(Seen.OPEN, latency, detail="connected; the connection was reset")
        return http_observation(data, latency)


def _udp(spec: ProbeSpec, timeout: float) -> Observation:
    sock = socket.socket(_family(spec.address), socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        start = time.monotonic()
        try:
            sock.connect((spec.address, spec.port))
            sock.send(b"proxyctl-probe\n")
            reply = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return Observation(Seen.SENT, detail="no reply within the timeout")
        except OSError as exc:
            return _failed(exc)
        return Observation(Seen.OPEN, (time.monotonic() - start) * 1000.0,
                           backend=backend_of({}, reply[:RESPONSE_BYTES]), detail="reply received")


def source_address(destination: str) -> str | None:
    """The address this machine sends from towards `destination` (no packet is sent), or
    None when there is no route."""
    sock = socket.socket(_family(destination), socket.SOCK_DGRAM)
    with sock:
        try:
            sock.connect((destination, 9))
            return str(sock.getsockname()[0])
        except OSError:
            return None
