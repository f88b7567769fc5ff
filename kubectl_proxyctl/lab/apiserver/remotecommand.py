"""`pods/exec`: a command in a pod, streamed over a WebSocket with the Kubernetes channel protocols.

What a kubelet serves for `kubectl exec` (the lab has no kubelets, so its API server serves
it itself). The request is validated in rest.py and, once the connection is upgraded,
httpserver.py hands it to `ExecSession.run`, which owns the connection until the command ends.

Protocol
--------
The client offers subprotocols in `Sec-WebSocket-Protocol`; the first it lists that we
speak is chosen: `v5.channel.k8s.io`, `v4.channel.k8s.io`, or `channel.k8s.io` (v1, also
what an empty offer means). Every binary message starts with a channel byte::

    0 stdin (client → server)    1 stdout    2 stderr    3 error (server → client)
    4 resize (ignored: no TTY)   255 close (v5, client → server: [255, 0] = end of stdin)

The server first sends an empty message on its lowest open channel (stdout, else stderr,
else error), as kubelets do, then the command's output as it comes. When the command has
ended and its output is drained, v4 and v5 send one `metav1.Status` on the error channel,
serialized as kubelets serialize it::

    {"metadata":{},"status":"Success"}
    {"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code:
     error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode",
     "details":{"causes":[{"reason":"ExitCode","message":"3"}]}}

A command that cannot start (no such executable) is a runtime error, as containerd reports
it: an InternalError Status whose message says `exec: "foo": executable file not found in
$PATH`, which kubectl prints as `error: Internal error occurred: ...` (exit 1). v1 sends the
failure's message as text and nothing on success. Then the server closes the WebSocket
normally (1000) and waits briefly for the client's close frame.

What runs
---------
The server does not start processes itself: an `ExecRunner` (given to the APIServer; the
lab's control plane gives it one that enters the pod's network namespace) starts the argv,
never through a shell, and returns a Popen-like process in its own process group. When the
client goes away (EOF, a close frame, a broken connection, the server stopping) the group
is killed. A TTY is not emulated: `tty=true` runs the command on pipes and sends its stderr
on the stdout channel, as a TTY would merge them; resize messages are ignored.

One thread serves one session: it multiplexes the socket and the process's pipes with
`selectors`, so no two threads ever read and write the TLS connection at once.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import time
from dataclasses import dataclass
from typing import IO, Any, Protocol, Sequence

from kubectl_proxyctl.lab.apiserver import websocket
from kubectl_proxyctl.lab.apiserver.websocket import Decoder, ProtocolError, encode_frame

log = logging.getLogger(__name__)

V5, V4, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"
PROTOCOLS = (V5, V4, V1)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

READ_SIZE = 64 * 1024
DRAIN_GRACE = 2.0  # output still open this long after the command exited belongs to its orphans
CLOSE_WAIT = 1.0  # how long to wait for the client's close frame after ours
POLL = 0.05


class CommandNotFound(Exception):
    """The runtime found no executable for argv[0]; the message says so as runc does
    (`exec: "foo": executable file not found in $PATH`, see `not_found_message`)."""


def not_found_message(command: str) -> str:
    """What runc says of an argv[0] it cannot find (Go's exec.LookPath, or a stat of a path)."""
    if "/" in command:
        return f'exec: "{command}": stat {command}: no such file or directory'
    return f'exec: "{command}": executable file not found in $PATH'


class ExecProcess(Protocol):
    """What a runner returns: a started process (subprocess.Popen fits)."""

    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class ExecRunner(Protocol):
    """Starts `argv` in `container` of `pod` with stdout and stderr on pipes (stdin on a pipe
    when `stdin`, else /dev/null), in a new process group. Raises CommandNotFound when there
    is no such executable, OSError when the process cannot be started."""

    def __call__(self, pod: dict[str, Any], container: str, argv: Sequence[str], stdin: bool) -> ExecProcess: ...


class Transport(Protocol):
    """The upgraded connection, as the session uses it."""

    def fileno(self) -> int: ...

    def pending(self) -> int: ...  # bytes already received but not yet read (TLS buffers)

    def recv(self, size: int) -> bytes: ...  # b"" at EOF

    def send(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class ExecOptions:
    """The query of a `pods/exec` request (core/v1 PodExecOptions)."""

    command: tuple[str, ...]
    container: str
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


def choose_protocol(offered: str) -> str | None:
    """The subprotocol to answer for a `Sec-WebSocket-Protocol` offer: the first offered
    that we speak, "" (v1, no header in the answer) for no offer, None if none fits."""
    names = [p.strip() for p in offered.split(",") if p.strip()]
    if not names:
        return ""
    for name in names:
        if name in PROTOCOLS:
            return name
    return None


# --- the final Status, as a kubelet writes it (json.Marshal of metav1.Status) -------------------


def go_json(obj: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, with <, > and & escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(argv: Sequence[str], code: int) -> dict[str, Any]:
    """The Status of a command that ran and exited with `code` (0: success)."""
    if code == 0:
        return success_status()
    cause = f"error executing command [{' '.join(argv)}], exit code {code}"
    return {
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: {cause}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error_status(error: str) -> dict[str, Any]:
    """The Status of a command the runtime could not run (apierrors.NewInternalError)."""
    cause = f"error executing command in container: {error}"
    return {
        "metadata": {}, "status": "Failure",
        "message": f"Internal error occurred: {cause}",
        "reason": "InternalError",
        "details": {"causes": [{"message": cause}]},
        "code": 500,
    }


def exit_code(returncode: int) -> int:
    """A Popen return code as a runtime reports it: killed by signal N → 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def kill_process_group(proc: ExecProcess) -> None:
    """Kill the command and whatever it started in its process group, then reap it."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


class _ClientGone(Exception):
    """The client closed the connection, sent a close frame, or broke the protocol."""


class ExecSession:
    """One `pods/exec` stream: start the command, relay the channels, report the Status."""

    def __init__(self, pod: dict[str, Any], options: ExecOptions, protocol: str, runner: ExecRunner) -> None:
        self.pod = pod
        self.options = options
        self.protocol = protocol
        self.runner = runner

    def run(self, transport: Transport) -> None:
        opts = self.options
        self._transport = transport
        self._decoder = Decoder(require_mask=True)
        self._closed = False
        try:
            self._send(STDOUT if opts.stdout else STDERR if opts.stderr else ERROR, b"")
            try:
                proc = self.runner(self.pod, opts.container, list(opts.command), opts.stdin)
            except CommandNotFound as exc:
                status = internal_error_status(f"failed to exec in container: {exc}")
            except FileNotFoundError:
                status = internal_error_status(f"failed to exec in container: {not_found_message(opts.command[0])}")
            except OSError as exc:
                status = internal_error_status(f"failed to exec in container: {exc.strerror or exc}")
            else:
                try:
                    status = exit_status(opts.command, exit_code(self._relay(proc)))
                finally:
                    if proc.poll() is None:
                        kill_process_group(proc)
                    for pipe in (proc.stdin, proc.stdout, proc.stderr):
                        if pipe is not None:
                            try:
                                pipe.close()
                            except OSError:
                                pass
            self._send_status(status)
            self._close(websocket.CLOSE_NORMAL)
            self._await_close()
        except _ClientGone:
            log.debug("exec %s: the client went away", " ".join(opts.command))
        except (OSError, ValueError) as exc:  # the connection broke (or was closed) under us
            log.debug("exec %s: %s", " ".join(opts.command), exc)

    # --- output -----------------------------------------------------------------------------------

    def _send(self, channel: int, data: bytes) -> None:
        self._transport.send(encode_frame(websocket.BINARY, bytes([channel]) + data))

    def _send_status(self, status: dict[str, Any]) -> None:
        if self.protocol in (V4, V5):
            self._send(ERROR, go_json(status))
        elif status["status"] != "Success":
            self._send(ERROR, str(status.get("message", "")).encode())

    def _close(self, code: int) -> None:
        if not self._closed:
            self._closed = True
            self._transport.send(encode_frame(websocket.CLOSE, websocket.close_payload(code)))

    def _await_close(self) -> None:
        """After our close frame, read (and drop) what the client still sends until its close
        frame or EOF, for at most CLOSE_WAIT seconds."""
        deadline = time.monotonic() + CLOSE_WAIT
        with selectors.DefaultSelector() as sel:
            sel.register(self._transport.fileno(), selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not self._transport.pending() and not sel.select(left):
                    return
                data = self._transport.recv(READ_SIZE)
                if not data:
                    return
                try:
                    if any(m.opcode == websocket.CLOSE for m in self._decoder.feed(data)):
                        return
                except ProtocolError:
                    return

    # --- the relay --------------------------------------------------------------------------------

    def _relay(self, proc: ExecProcess) -> int:
        """Relay stdin to the process and its output to the client until it exited and its
        output is drained. Returns its return code; raises _ClientGone (the process is then
        killed by the caller)."""
        opts = self.options
        outputs: dict[int, int] = {}
        for pipe, channel in ((proc.stdout, STDOUT), (proc.stderr, STDERR)):
            if pipe is not None:
                fd = pipe.fileno()
                os.set_blocking(fd, False)
                outputs[fd] = channel
        self._stdin = proc.stdin
        self._stdin_buffer = bytearray()
        self._stdin_eof = False
        if self._stdin is not None:
            os.set_blocking(self._stdin.fileno(), False)
        sock = self._transport.fileno()
        exited_at: float | None = None
        with selectors.DefaultSelector() as sel:
            self._selector = sel
            sel.register(sock, selectors.EVENT_READ)
            for fd in outputs:
                sel.register(fd, selectors.EVENT_READ)
            while True:
                if exited_at is None and proc.poll() is not None:
                    exited_at = time.monotonic()
                if exited_at is not None and (not outputs or time.monotonic() - exited_at > DRAIN_GRACE):
                    break
                ready = [key.fd for key, _ in sel.select(0 if self._transport.pending() else POLL)]
                if self._transport.pending() and sock not in ready:
                    ready.append(sock)
                for fd in ready:
                    if fd == sock:
                        self._receive()
                    elif fd in outputs:
                        chunk = self._read(fd)
                        if chunk is None:
                            continue
                        if not chunk:
                            sel.unregister(fd)
                            del outputs[fd]
                            continue
                        channel = STDOUT if opts.tty else outputs[fd]
                        if (opts.stdout if channel == STDOUT else opts.stderr):
                            self._send(channel, chunk)
                    elif self._stdin is not None and fd == self._stdin.fileno():
                        self._write_stdin()
        return proc.wait()

    @staticmethod
    def _read(fd: int) -> bytes | None:
        """What the pipe holds; b"" at EOF, None when nothing is there yet."""
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _receive(self) -> None:
        data = self._transport.recv(READ_SIZE)
        if not data:
            raise _ClientGone()
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._close(exc.code)
            raise _ClientGone() from exc
        for message in messages:
            if message.opcode == websocket.CLOSE:
                self._close(websocket.CLOSE_NORMAL)
                raise _ClientGone()
            if message.opcode == websocket.PING:
                self._transport.send(encode_frame(websocket.PONG, message.payload))
            elif message.opcode in websocket.DATA_OPCODES and message.payload:
                self._on_channel(message.payload[0], message.payload[1:])

    def _on_channel(self, channel: int, data: bytes) -> None:
        if channel == STDIN and data and self._stdin is not None and not self._stdin_eof:
            if not self._stdin_buffer:
                self._selector.register(self._stdin.fileno(), selectors.EVENT_WRITE)
            self._stdin_buffer += data
        elif channel == CLOSE and self.protocol == V5 and data[:1] == bytes([STDIN]):
            self._stdin_eof = True
            if not self._stdin_buffer:
                self._close_stdin()

    def _write_stdin(self) -> None:
        assert self._stdin is not None
        try:
            written = os.write(self._stdin.fileno(), self._stdin_buffer)
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin or exited: drop what it will never read
            written = len(self._stdin_buffer)
        del self._stdin_buffer[:written]
        if not self._stdin_buffer:
            self._selector.unregister(self._stdin.fileno())
            if self._stdin_eof:
                self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            try:
                self._stdin.close()
            except OSError:
                pass
            self._stdin = None
