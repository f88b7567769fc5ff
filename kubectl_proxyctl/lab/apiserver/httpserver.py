"""The socket side of the lab API server: a threaded HTTPS server on the stdlib.

`APIRequestHandler` is a thin adapter around `rest.Dispatcher`: the TLS handshake happens
in the connection's own thread (a slow client cannot stall the accept loop), requests are
parsed into `rest.Request`, answers written with Content-Length, and watches streamed with
chunked transfer encoding. A `pods/exec` request that rest.py accepted is answered with
`101 Switching Protocols` and the connection is then the exec session's (remotecommand.py)
until the command ends; it is closed afterwards. Clients that go away mid-stream end their
stream quietly.

`LabHTTPServer` tracks every connection and its thread, so that stopping the server
closes idle keep-alive connections and open watches at once and joins every thread.
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from kubectl_proxyctl.lab.apiserver import websocket
from kubectl_proxyctl.lab.apiserver.remotecommand import ExecSession
from kubectl_proxyctl.lab.apiserver.rest import JSON, Dispatcher, Request, Response
from kubectl_proxyctl.lab.apiserver.watch import WatchStream

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0


class APIRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "proxyctl-lab-apiserver"
    timeout = IDLE_TIMEOUT
    server: LabHTTPServer

    def setup(self) -> None:
        raw = self.request
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(HANDSHAKE_TIMEOUT)
        self.request = self.server.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self.server.untrack(raw)
        try:
            self.server.track(self.request)
            self.request.do_handshake()
        except BaseException:
            self.server.untrack(self.request)
            self.request.close()
            raise
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.request)
            self.request.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return b""
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    def _serve(self) -> None:
        path, _, query_string = self.path.partition("?")
        repeated = parse_qs(query_string, keep_blank_values=True)
        req = Request(
            self.command, unquote(path.rstrip("/")) or "/", {k: v[-1] for k, v in repeated.items()},
            {k.lower(): v for k, v in self.headers.items()}, self._read_body(), repeated,
        )
        result = self.server.dispatcher.handle(req)
        if isinstance(result, WatchStream):
            self._stream(result)
        elif isinstance(result, ExecSession):
            self._upgrade(result, req.headers.get("sec-websocket-key", ""))
        else:
            self._respond(result)

    def _respond(self, resp: Response) -> None:
        self.send_response(resp.code)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(resp.body)

    def _stream(self, stream: WatchStream) -> None:
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

        def send(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        try:
            stream.run(send, self._client_gone)
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, ValueError):  # the client went away mid-stream
            self.close_connection = True

    def _upgrade(self, session: ExecSession, key: str) -> None:
        """Switch the connection to a WebSocket and give it to the exec session; it is not
        reused for HTTP afterwards."""
        self.close_connection = True
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket.accept_key(key))
        if session.protocol:
            self.send_header("Sec-WebSocket-Protocol", session.protocol)
        self.end_headers()
        self.wfile.flush()
        session.run(_WebSocketTransport(self.connection))

    def _client_gone(self) -> bool:
        """A watching client sends nothing: a readable socket means it closed (or misbehaves)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            readable = [True]
        if readable:
            self.close_connection = True
        return bool(readable)


class _WebSocketTransport:
    """The upgraded TLS connection as an exec session reads and writes it (one thread only).

    The handler's buffered reader holds nothing past the request: a client sends no frame
    before it has the server's handshake (RFC 6455, 4.1), so reading the socket directly
    misses nothing. TLS may hold decrypted bytes that the socket's readiness does not show:
    `pending()` reports them."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn

    def fileno(self) -> int:
        return self._conn.fileno()

    def pending(self) -> int:
        return self._conn.pending() if isinstance(self._conn, ssl.SSLSocket) else 0

    def recv(self, size: int) -> bytes:
        try:
            return self._conn.recv(size)
        except (OSError, ValueError):
            return b""

    def send(self, data: bytes) -> None:
        self._conn.sendall(data)


class LabHTTPServer(ThreadingHTTPServer):
    """One thread per connection; `close_connections()` + `server_close()` end and join them all."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, tls: ssl.SSLContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.dispatcher = dispatcher
        self.tls = tls
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()
        self._closing = False
        super().__init__(address, APIRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Track the socket before its thread starts, so close_connections() reaches it even
        # during the TLS handshake; track the (daemon) thread so server_close() can join it.
        worker = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._connections_lock:
            self._connections.add(request)
            self._workers = {w for w in self._workers if w.is_alive()}
            self._workers.add(worker)
        worker.start()

    def shutdown_request(self, request: Any) -> None:
        self.untrack(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._connections_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout=HANDSHAKE_TIMEOUT)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            if self._closing:
                raise ConnectionAbortedError("the server is stopping")
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Unblock every handler thread (idle keep-alive reads, watches) by shutting its socket."""
        with self._connections_lock:
            self._closing = True
            conns = list(self._connections)
        for conn in conns:
            try:
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):  # handshake failures, resets, closed sockets
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("request from %s failed", client_address)
