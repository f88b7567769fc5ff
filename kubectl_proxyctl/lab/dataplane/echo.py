"""The lab pods' server: answers on every container port with the pod's name and the client
address it saw.

    python -m kubectl_proxyctl.lab.dataplane.echo --name nginx-abcde --tcp 80 --tcp 8080 --udp 53

* TCP ports speak HTTP/1.1 (keep-alive, any method and path): the body is one line
  `pod=NAME client=IP:PORT` and the header `X-Pod-Name: NAME` names the pod.
* UDP ports answer every datagram with the same line.

That line is what the lab's demos and tests read to see where a Service sent a request and
whether the source address was rewritten on the way (SNAT). One thread per TCP connection,
one per UDP port. The module uses the standard library only and avoids `http.server` (and
the email package it pulls in), so a pod's process starts in tens of milliseconds and stays
small; the runtime may run this file directly with `python -S`. It binds the wildcard
address of the network namespace it is started in, and exits at SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import sys
import threading
from typing import Sequence

LISTEN_BACKLOG = 1024
MAX_HEADER_LINES = 100
IDLE_TIMEOUT = 60.0


def answer(pod: str, client: tuple[str, int]) -> bytes:
    return f"pod={pod} client={client[0]}:{client[1]}\n".encode()


class HTTPHandler(socketserver.StreamRequestHandler):
    """A tiny HTTP/1.1 server: every request gets 200 and the answer line."""

    server: EchoTCPServer
    timeout = IDLE_TIMEOUT

    def handle(self) -> None:
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            request_line = self.rfile.readline(8192)
        except OSError:
            return False
        parts = request_line.split()
        if len(parts) != 3:
            return False
        method, version = parts[0].upper(), parts[2].upper()
        length, keep_alive = 0, version == b"HTTP/1.1"
        for _ in range(MAX_HEADER_LINES):
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"connection":
                keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
        if length:
            self.rfile.read(length)
        body = answer(self.server.pod, self.client_address)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nX-Pod-Name: {self.server.pod}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        try:
            self.wfile.write(head if method == b"HEAD" else head + body)
        except OSError:
            return False
        return keep_alive


class EchoTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, port: int, pod: str) -> None:
        self.pod = pod
        super().__init__(("0.0.0.0", port), HTTPHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that went away is not worth a traceback."""


def serve_udp(sock: socket.socket, pod: str) -> None:
    while True:
        try:
            _, client = sock.recvfrom(65535)
            sock.sendto(answer(pod, client), client)
        except OSError:  # e.g. an ICMP error for an earlier reply: keep serving
            continue


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kubectl_proxyctl.lab.dataplane.echo",
        description="Answer on TCP (HTTP/1.1) and UDP ports with the pod's name and the client address.",
    )
    parser.add_argument("--name", required=True, help="the pod name to answer with")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT",
                        help="an HTTP port (repeatable; default 80 when no port is given)")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT",
                        help="a UDP port (repeatable)")
    args = parser.parse_args(argv)
    if not args.tcp and not args.udp:
        args.tcp = [80]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        servers = [EchoTCPServer(port, args.name) for port in dict.fromkeys(args.tcp)]
        udp = []
        for port in dict.fromkeys(args.udp):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            udp.append(sock)
    except OSError as exc:
        print(f"echo: cannot listen: {exc}", file=sys.stderr)
        return 1
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    for sock in udp:
        threading.Thread(target=serve_udp, args=(sock, args.name), daemon=True).start()
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
