"""Running a command in a pod through the API server: `pods/exec` over a websocket.

Theory of operation: this is the websocket-client adapter, and one more `Executor` beside the
local one (system.executor) and SSH (remote.ssh): `PodExecutor(api, namespace, pod).run(argv)`
opens `GET /api/v1/namespaces/NS/pods/POD/exec?command=…` with the caller's own credentials
(the same kubeconfig, token, client certificate or exec plugin as every other request, so the
user's RBAC decides), upgrades to a websocket speaking `v5.channel.k8s.io` (falling back on
`v4.channel.k8s.io`, what the API server offers to older clients), and demultiplexes the
binary messages by their first byte::

    0 stdin   1 stdout   2 stderr   3 error (a metav1.Status when the command ends)
    4 resize  255 close (v5: "no more stdin")

The command's exit status comes from the final Status: Success → 0; reason NonZeroExitCode →
the code in details.causes[ExitCode]. A runtime that cannot find the binary (kubelet reports
"executable file not found in $PATH") becomes exit 127, as a shell would say, so collectors
treat the tool as not installed, exactly as they do locally.

The argv travels as repeated `command=` query parameters and is never given to a shell, so
metacharacters in it are just bytes. `timeout` bounds the whole exchange (connect, handshake,
output); when it passes the websocket is closed, which makes the kubelet kill the process.

Failures leave as `ClusterError` (exit 3) with one line: refused handshakes carry the API
server's own Status message (403: "pods "x" is forbidden: User "u" cannot create resource
"pods/exec" …"), so a token without exec rights says exactly that.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Sequence

from kubectl_proxyctl.errors import ClusterError, NotFoundError
from kubectl_proxyctl.system.executor import DEFAULT_TIMEOUT, Result

if TYPE_CHECKING:
    from kubectl_proxyctl.kube.client import KubeAPI

log = logging.getLogger(__name__)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
NOT_FOUND_EXIT = 127
_NOT_FOUND_HINTS = ("executable file not found", "no such file or directory")


def exec_path(namespace: str, pod: str, argv: Sequence[str], container: str | None, stdin: bool) -> str:
    """The exec subresource's path and query for one command (argv as repeated `command=`)."""
    query: list[tuple[str, str]] = [("command", a) for a in argv]
    query += [("stdout", "true"), ("stderr", "true"), ("stdin", "true" if stdin else "false")]
    if container:
        query.append(("container", container))
    return (f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/pods/"
            f"{urllib.parse.quote(pod, safe='')}/exec?{urllib.parse.urlencode(query)}")


def exit_code_of(status: dict[str, Any]) -> tuple[int, str]:
    """(exit code, message) from the error channel's final Status.

    Raises ClusterError for a Status that is neither success nor a command's own failure."""
    if status.get("status") == "Success":
        return 0, ""
    message = str(status.get("message") or "")
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message")), message
                except (TypeError, ValueError):
                    break
        return 1, message
    if any(hint in message.lower() for hint in _NOT_FOUND_HINTS):
        return NOT_FOUND_EXIT, message
    raise ClusterError(f"exec failed: {' '.join(message.split()) or status}")


class PodExecutor:
    """The Executor protocol through `pods/exec` of one pod (one websocket per command)."""

    def __init__(self, api: "KubeAPI", namespace: str, pod: str, container: str | None = None) -> None:
        self.netns: str | None = None
        self.api = api
        self.namespace = namespace
        self.pod = pod
        self.container = container

    def __repr__(self) -> str:
        return f"PodExecutor({self.namespace}/{self.pod})"

    @property
    def where(self) -> str:
        return f"pod {self.namespace}/{self.pod}"

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        import websocket

        if not argv:
            raise ValueError("empty command")
        deadline = time.monotonic() + timeout
        path = exec_path(self.namespace, self.pod, argv, self.container, stdin is not None)
        url = self.api.host.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + path
        headers = [f"{k}: {v}" for k, v in self.api.auth_headers().items()]
        try:
            ws = websocket.create_connection(url, timeout=max(timeout, 0.1), header=headers,
                                             subprotocols=list(PROTOCOLS), sslopt=self._sslopt(),
                                             enable_multithread=False)
        except websocket.WebSocketBadStatusException as exc:
            raise self._refused(exc.status_code, exc.resp_body or b"") from exc
        except websocket.WebSocketTimeoutException as exc:
            raise ClusterError(f"exec in {self.where}: {argv[0]} timed out after {timeout:g} s") from exc
        except (websocket.WebSocketException, OSError, ssl.SSLError) as exc:
            raise ClusterError(f"cannot exec in {self.where} through {self.api.host}: "
                               f"{' '.join(str(exc).split()) or type(exc).__name__}") from exc
        try:
            return self._exchange(ws, argv, stdin, deadline, timeout)
        finally:
            try:
                ws.close(timeout=0.2)
            except Exception:  # the peer may have gone already; nothing to clean up then
                log.debug("closing the exec websocket failed", exc_info=True)

    def _exchange(self, ws: Any, argv: Sequence[str], stdin: str | None, deadline: float, timeout: float) -> Result:
        import websocket

        v5 = (ws.getsubprotocol() or "").lower() == PROTOCOLS[0]
        if stdin is not None:
            if stdin:
                ws.send_binary(bytes([STDIN]) + stdin.encode())
            if v5:
                ws.send_binary(bytes([CLOSE, STDIN]))
        out: list[bytes] = []
        err: list[bytes] = []
        status: dict[str, Any] | None = None
        error_text = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterError(f"exec in {self.where}: {argv[0]} timed out after {timeout:g} s")
            ws.settimeout(left)
            try:
                opcode, data = ws.recv_data(control_frame=False)
            except websocket.WebSocketTimeoutException as exc:
                raise ClusterError(f"exec in {self.where}: {argv[0]} timed out after {timeout:g} s") from exc
            except websocket.WebSocketConnectionClosedException:
                break
            except (websocket.WebSocketException, OSError) as exc:
                raise ClusterError(f"exec in {self.where}: the connection broke: {exc}") from exc
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDOUT:
                out.append(payload)
            elif channel == STDERR:
                err.append(payload)
            elif channel == ERROR:
                error_text += payload
        if error_text:
            try:
                status = json.loads(error_text)
            except ValueError:  # channel v1 style: plain text means failure
                raise ClusterError(f"exec in {self.where} failed: {error_text.decode(errors='replace').strip()}") from None
        if status is None:
            raise ClusterError(f"exec in {self.where}: the connection closed before {argv[0]} finished")
        code, message = exit_code_of(status)
        stderr = b"".join(err).decode(errors="replace")
        if code == NOT_FOUND_EXIT and not stderr:
            stderr = message
        return Result(code, b"".join(out).decode(errors="replace"), stderr)

    def _sslopt(self) -> dict[str, Any]:
        cfg = self.api.configuration
        opt: dict[str, Any] = {}
        if cfg.verify_ssl:
            opt["cert_reqs"] = ssl.CERT_REQUIRED
            if cfg.ssl_ca_cert:
                opt["ca_certs"] = cfg.ssl_ca_cert
            if getattr(cfg, "tls_server_name", None):
                opt["server_hostname"] = cfg.tls_server_name
            opt["check_hostname"] = bool(getattr(cfg, "assert_hostname", None) is not False)
        else:
            opt["cert_reqs"] = ssl.CERT_NONE
            opt["check_hostname"] = False
        if cfg.cert_file:
            opt["certfile"] = cfg.cert_file
        if cfg.key_file:
            opt["keyfile"] = cfg.key_file
        return opt

    def _refused(self, status: int, body: bytes) -> ClusterError:
        message = ""
        try:
            doc = json.loads(body)
            if isinstance(doc, dict):
                message = str(doc.get("message") or "")
        except (ValueError, UnicodeDecodeError):
            message = body.decode("utf-8", "replace").strip()[:200]
        message = " ".join(message.split()) or f"HTTP {status}"
        if status == 404:
            return NotFoundError(f"exec in {self.where}: {message}")
        if status in (401, 403):
            return ClusterError(f"{message} (exec needs the pods/exec permission in namespace {self.namespace})",
                                status)
        return ClusterError(f"exec in {self.where} refused: {message}", status)
