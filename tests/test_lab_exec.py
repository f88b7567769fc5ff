"""`pods/exec` on the lab API server, the read-only viewer identity, and the lab's proxy pods.

From the wire up: WebSocket frames (websocket.py), the channel protocol and the final Status
(remotecommand.py) over a socket pair, then whole servers driven by the official Python
client and the real kubectl, and last a command that really runs in a node's network
namespace. The expected Status objects are kubelet's, byte for byte.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from apiserver_fixtures import apiserver, exec_runner, kubectl  # noqa: F401 (fixtures)
from apiserver_fixtures import Kubectl, LocalExecRunner, pod, raw_request
from netns import empty_netns, requires_lab

from kubectl_proxyctl.lab.apiserver import websocket
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.resources import PODS
from kubectl_proxyctl.lab.apiserver.remotecommand import (
    V4, V5, CommandNotFound, ExecOptions, ExecSession, choose_protocol, exit_status, go_json, internal_error_status,
)
from kubectl_proxyctl.lab.apiserver.websocket import BINARY, CLOSE, PING, PONG, TEXT, Decoder, ProtocolError, encode_frame
from kubectl_proxyctl.lab.controllers.controllers import LabControllers
from kubectl_proxyctl.lab.controllers.proxypods import LABELS, NAMESPACE, ProxyPods
from kubectl_proxyctl.lab.dataplane.podexec import NetnsExecRunner, pod_netns, resolve
from kubectl_proxyctl.lab.dataplane.runtime import pod_want
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec
from waiting import wait_for

MASK = b"\x37\xfa\x21\x3d"
SCRIPT = "echo out; echo err >&2; exit 3"
EXIT_3 = (b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: '
          b'error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode",'
          b'"details":{"causes":[{"reason":"ExitCode","message":"3"}]}}')


def hostnetwork_pod(name: str, node: str, ip: str, namespace: str = "kube-system") -> dict[str, Any]:
    obj = pod(name, ip, node, namespace)
    obj["spec"]["hostNetwork"] = True
    obj["spec"]["containers"][0]["name"] = "proxyctl"
    obj["status"]["containerStatuses"][0]["name"] = "proxyctl"
    return obj


# --- frames -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, length_form", [
    (0, 0), (125, 125), (126, 126), (65535, 126), (65536, 127), (200_000, 127),
])
def test_a_masked_frame_decodes_to_its_payload_in_each_length_form(size: int, length_form: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = encode_frame(BINARY, payload, mask=MASK)
    assert frame[1] == 0x80 | length_form
    assert payload not in frame or size == 0  # masked on the wire
    assert Decoder().feed(frame) == [websocket.Message(BINARY, payload)]


def test_server_frames_are_unmasked_with_the_shortest_length() -> None:
    assert encode_frame(BINARY, b"\x01hi") == b"\x82\x03\x01hi"
    assert encode_frame(BINARY, b"x" * 300)[:4] == b"\x82\x7e" + struct.pack("!H", 300)
    assert encode_frame(CLOSE, websocket.close_payload()) == b"\x88\x02\x03\xe8"


def test_the_handshake_answer_is_the_rfc_example() -> None:
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert websocket.valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not websocket.valid_key("short") and not websocket.valid_key("")


def test_bytes_arriving_one_at_a_time_still_make_whole_messages() -> None:
    stream = encode_frame(BINARY, b"\x00abc", mask=MASK) + encode_frame(PING, b"p", mask=MASK)
    decoder = Decoder()
    got = [m for i in range(len(stream)) for m in decoder.feed(stream[i:i + 1])]
    assert got == [websocket.Message(BINARY, b"\x00abc"), websocket.Message(PING, b"p")]


def test_a_fragmented_message_comes_out_once_with_a_ping_passed_between() -> None:
    stream = (encode_frame(BINARY, b"\x00hel", fin=False, mask=MASK)
              + encode_frame(PING, b"!", mask=MASK)
              + encode_frame(websocket.CONTINUATION, b"lo ", fin=False, mask=MASK)
              + encode_frame(websocket.CONTINUATION, b"world", mask=MASK))
    assert Decoder().feed(stream) == [websocket.Message(PING, b"!"), websocket.Message(BINARY, b"\x00hello world")]


@pytest.mark.parametrize("frame, why", [
    (encode_frame(BINARY, b"x"), "unmasked"),
    (encode_frame(PING, b"x" * 126, mask=MASK), "control frame too big"),
    (encode_frame(PING, b"x", fin=False, mask=MASK), "fragmented control frame"),
    (encode_frame(websocket.CONTINUATION, b"x", mask=MASK), "continuation without a start"),
    (bytes([0xC2]) + encode_frame(BINARY, b"x", mask=MASK)[1:], "reserved bit"),
    (encode_frame(0x3, b"x", mask=MASK), "unknown opcode"),
])
def test_frames_a_server_must_refuse(frame: bytes, why: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        Decoder().feed(frame)
    assert raised.value.code == websocket.CLOSE_PROTOCOL_ERROR, why


def test_a_message_beyond_the_limit_is_refused_as_too_big() -> None:
    with pytest.raises(ProtocolError) as raised:
        Decoder(max_message=10).feed(encode_frame(BINARY, b"x" * 11, mask=MASK))
    assert raised.value.code == websocket.CLOSE_TOO_BIG


# --- the Status and the subprotocol -------------------------------------------------------------


def test_the_final_status_is_kubelets_byte_for_byte() -> None:
    assert go_json(exit_status(["sh", "-c", "exit 0"], 0)) == b'{"metadata":{},"status":"Success"}'
    assert go_json(exit_status(["sh", "-c", "exit 3"], 3)) == EXIT_3
    assert b"err \\u003e\\u00262" in go_json(exit_status(["sh", "-c", "echo err >&2"], 1))  # Go escapes <>&


def test_a_command_that_cannot_start_is_an_internal_error_like_containerds() -> None:
    with pytest.raises(CommandNotFound) as raised:
        resolve("no-such-tool-here")
    status = internal_error_status(f"failed to exec in container: {raised.value}")
    assert status == {
        "metadata": {}, "status": "Failure",
        "message": 'Internal error occurred: error executing command in container: failed to exec in container: '
                   'exec: "no-such-tool-here": executable file not found in $PATH',
        "reason": "InternalError",
        "details": {"causes": [{"message": 'error executing command in container: failed to exec in container: '
                                           'exec: "no-such-tool-here": executable file not found in $PATH'}]},
        "code": 500,
    }
    with pytest.raises(CommandNotFound, match=r'stat /no/such: no such file or directory'):
        resolve("/no/such")
    assert resolve("sh").endswith("/sh")


def test_the_first_offered_protocol_we_speak_wins() -> None:
    assert choose_protocol("v5.channel.k8s.io, v4.channel.k8s.io") == V5
    assert choose_protocol("base64.channel.k8s.io,v4.channel.k8s.io") == V4
    assert choose_protocol("") == ""  # no offer: v1, and no header in the answer
    assert choose_protocol("v4.base64.channel.k8s.io") is None


# --- a session over a socket pair -------------------------------------------------------------------


class PairTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> int:
        return 0

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class Client:
    """The client end: masked frames out, channel messages in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = Decoder(require_mask=False)
        self.messages: list[tuple[int, bytes]] = []  # (channel, data) of binary messages
        self.close_code: int | None = None

    def send(self, channel: int, data: bytes = b"", opcode: int = BINARY) -> None:
        self.sock.sendall(encode_frame(opcode, bytes([channel]) + data, mask=MASK))

    def read_until_close(self, timeout: float = 10.0) -> None:
        self.sock.settimeout(timeout)
        while self.close_code is None:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection without a close frame"
            for m in self.decoder.feed(data):
                if m.opcode == CLOSE:
                    self.close_code = struct.unpack("!H", m.payload[:2])[0]
                    self.sock.sendall(encode_frame(CLOSE, m.payload[:2], mask=MASK))
                elif m.opcode == BINARY:
                    self.messages.append((m.payload[0], m.payload[1:]))

    def channel(self, number: int) -> bytes:
        return b"".join(data for ch, data in self.messages if ch == number)


@pytest.fixture
def session_pair() -> Iterator[Any]:
    runners: list[LocalExecRunner] = []
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []

    def start(argv: list[str], protocol: str = V5, **options: Any) -> tuple[Client, LocalExecRunner, threading.Thread]:
        server_end, client_end = socket.socketpair()
        sockets.extend((server_end, client_end))
        runner = LocalExecRunner()
        runners.append(runner)
        session = ExecSession(pod("web", "10.244.1.2", "node1"), ExecOptions(tuple(argv), "web", **options),
                              protocol, runner)
        thread = threading.Thread(target=session.run, args=(PairTransport(server_end),), daemon=True)
        thread.start()
        threads.append(thread)
        return Client(client_end), runner, thread

    try:
        yield start
    finally:
        for sock in sockets:
            sock.close()
        for thread in threads:
            thread.join(timeout=10)
        for runner in runners:
            runner.close()


def test_stdout_and_stderr_arrive_on_their_channels_then_the_status_then_a_normal_close(session_pair: Any) -> None:
    client, runner, thread = session_pair(["sh", "-c", SCRIPT])
    client.read_until_close()
    assert client.messages[0] == (1, b"")  # the empty message that opens the stream, as kubelets send
    assert client.channel(1) == b"out\n" and client.channel(2) == b"err\n"
    assert json.loads(client.channel(3))["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert client.messages[-1][0] == 3  # the Status comes last
    assert client.close_code == websocket.CLOSE_NORMAL
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_big_output_arrives_whole_and_in_order(session_pair: Any) -> None:
    client, _, _ = session_pair(["sh", "-c", "seq 1 200000"])
    client.read_until_close()
    assert client.channel(1) == "".join(f"{i}\n" for i in range(1, 200001)).encode()
    assert client.channel(3) == b'{"metadata":{},"status":"Success"}'


def test_stdin_reaches_the_command_and_the_v5_close_signal_ends_it(session_pair: Any) -> None:
    client, runner, _ = session_pair(["cat"], stdin=True)
    client.send(0, b"hello ")
    client.sock.sendall(encode_frame(BINARY, b"\x00world", fin=False, mask=MASK)
                        + encode_frame(PING, b"ping?", mask=MASK)
                        + encode_frame(websocket.CONTINUATION, b"\n", mask=MASK))
    client.send(4, b'{"Width":80,"Height":24}')  # resize: ignored
    client.send(255, b"\x00")  # v5: no more stdin
    client.read_until_close()
    assert client.channel(1) == b"hello world\n"
    assert client.channel(3) == b'{"metadata":{},"status":"Success"}'
    assert runner.calls == [("default/web", "web", ["cat"], True)]


def test_a_ping_is_answered_with_its_payload(session_pair: Any) -> None:
    client, _, _ = session_pair(["sh", "-c", "read line; echo $line"], stdin=True)
    client.sock.sendall(encode_frame(PING, b"are you there", mask=MASK))
    client.sock.settimeout(10)
    pong = None
    while pong is None:
        for m in client.decoder.feed(client.sock.recv(65536)):
            if m.opcode == PONG:
                pong = m.payload
    assert pong == b"are you there"
    client.send(0, b"done\n", opcode=TEXT)
    client.read_until_close()
    assert client.channel(1) == b"done\n"


def test_v4_has_no_close_signal_and_v1_reports_failure_as_text(session_pair: Any) -> None:
    client, _, _ = session_pair(["sh", "-c", "exit 3"], protocol=V4)
    client.read_until_close()
    assert client.channel(3) == EXIT_3
    client, _, _ = session_pair(["sh", "-c", "exit 3"], protocol="")
    client.read_until_close()
    assert client.channel(3) == (b"command terminated with non-zero exit code: "
                                 b"error executing command [sh -c exit 3], exit code 3")


def test_tty_merges_stderr_into_stdout(session_pair: Any) -> None:
    client, _, _ = session_pair(["sh", "-c", SCRIPT], tty=True)
    client.read_until_close()
    assert sorted(client.channel(1).splitlines()) == [b"err", b"out"] and client.channel(2) == b""


def test_a_client_that_goes_away_gets_its_command_killed(session_pair: Any) -> None:
    client, runner, thread = session_pair(["sleep", "60"])
    wait_for(lambda: runner.processes, what="the command to start")
    client.sock.close()
    wait_for(lambda: runner.processes[0].poll() is not None, timeout=10, what="the command to be killed")
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_close_frame_from_the_client_kills_the_command_too(session_pair: Any) -> None:
    client, runner, _ = session_pair(["sleep", "60"])
    wait_for(lambda: runner.processes, what="the command to start")
    client.sock.sendall(encode_frame(CLOSE, websocket.close_payload(websocket.CLOSE_GOING_AWAY), mask=MASK))
    client.read_until_close()
    assert client.close_code == websocket.CLOSE_NORMAL
    wait_for(lambda: runner.processes[0].poll() is not None, timeout=10, what="the command to be killed")


# --- the API server with the official Python client ---------------------------------------------


@pytest.fixture
def core(apiserver: APIServer) -> Iterator[Any]:
    from kubernetes import config
    from kubernetes.client import CoreV1Api

    client = config.new_client_from_config(config_file=str(apiserver.kubeconfig_path), persist_config=False)
    try:
        yield CoreV1Api(client)
    finally:
        client.close()


def python_exec(core: Any, name: str, namespace: str, argv: list[str]) -> Any:
    from kubernetes.stream import stream

    ws = stream(core.connect_get_namespaced_pod_exec, name, namespace, command=argv,
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=10)
    return ws


def test_the_python_client_gets_stdout_stderr_and_the_exit_code(apiserver: APIServer, exec_runner: LocalExecRunner,
                                                                core: Any) -> None:
    apiserver.create(hostnetwork_pod("proxyctl-node1", "node1", "172.18.0.2"))
    ws = python_exec(core, "proxyctl-node1", "kube-system", ["sh", "-c", SCRIPT])
    assert ws.subprotocol == V5
    assert (ws.read_stdout(), ws.read_stderr(), ws.returncode) == ("out\n", "err\n", 3)
    ws = python_exec(core, "proxyctl-node1", "kube-system", ["true"])
    assert ws.returncode == 0
    assert exec_runner.calls[0] == ("kube-system/proxyctl-node1", "proxyctl", ["sh", "-c", SCRIPT], False)


def test_argv_is_passed_literally_never_to_a_shell(apiserver: APIServer, exec_runner: LocalExecRunner,
                                                   core: Any) -> None:
    from kubernetes.stream import stream

    apiserver.create(pod("web", "10.244.1.2", "node1"))
    out = stream(core.connect_get_namespaced_pod_exec, "web", "default", command=["echo", "$(id);x", "a b", "*"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "$(id);x a b *\n"


def test_a_missing_executable_is_reported_on_the_error_channel(apiserver: APIServer, exec_runner: LocalExecRunner,
                                                               core: Any) -> None:
    apiserver.create(pod("web", "10.244.1.2", "node1"))
    ws = python_exec(core, "web", "default", ["no-such-tool-here", "-x"])
    status = json.loads(ws.read_channel(3))
    assert status["reason"] == "InternalError" and status["code"] == 500
    assert status["message"].endswith('exec: "no-such-tool-here": executable file not found in $PATH')


def test_stopping_the_server_ends_running_commands() -> None:
    runner = LocalExecRunner()
    server = APIServer(exec_runner=runner).start()
    try:
        from kubernetes import config
        from kubernetes.client import CoreV1Api
        from kubernetes.stream import stream

        server.create(pod("web", "10.244.1.2", "node1"))
        client = config.new_client_from_config(config_file=str(server.kubeconfig_path), persist_config=False)
        ws = stream(CoreV1Api(client).connect_get_namespaced_pod_exec, "web", "default", command=["sleep", "60"],
                    stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
        wait_for(lambda: runner.processes, what="the command to start")
        server.stop()
        assert runner.processes[0].wait(timeout=10) == -9
        ws.close()
        client.close()
    finally:
        server.stop()
        runner.close()


# --- refusals before the upgrade ----------------------------------------------------------------


EXEC_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": V5}


def exec_request(server: APIServer, path: str, token: str | None = "", headers: dict[str, str] | None = None) -> Any:
    return raw_request(server, "GET", path, token=token, headers={**EXEC_HEADERS, **(headers or {})})


def test_exec_refusals_are_statuses_before_any_upgrade(apiserver: APIServer, exec_runner: LocalExecRunner) -> None:
    apiserver.create(pod("web", "10.244.1.2", "node1"))
    pending = pod("starting", "10.244.1.3", "node1")
    pending["status"] = {"phase": "Pending"}
    apiserver.create(pending)
    cases = {
        "/api/v1/namespaces/default/pods/gone/exec?command=true": (404, "NotFound", 'pods "gone" not found'),
        "/api/v1/namespaces/default/pods/starting/exec?command=true": (
            400, "BadRequest", 'container not found ("web")'),
        "/api/v1/namespaces/default/pods/web/exec?command=true&container=db": (
            400, "BadRequest", "container db is not valid for pod web"),
        "/api/v1/namespaces/default/pods/web/exec?stdout=true": (
            400, "BadRequest", "you must specify at least one command for the container"),
        "/api/v1/namespaces/default/pods/web/exec?command=true&stdout=false&stderr=false": (
            400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr"),
    }
    for path, (code, reason, message) in cases.items():
        resp = exec_request(apiserver, path)
        assert (resp.status, resp.json()["reason"], resp.json()["message"]) == (code, reason, message), path
    spdy = exec_request(apiserver, "/api/v1/namespaces/default/pods/web/exec?command=true",
                        headers={"Upgrade": "SPDY/3.1"})
    assert (spdy.status, spdy.json()["message"]) == (400, "Upgrade request required")
    assert exec_runner.calls == []


def test_without_a_runtime_exec_says_so(apiserver: APIServer) -> None:
    apiserver.create(pod("web", "10.244.1.2", "node1"))
    resp = exec_request(apiserver, "/api/v1/namespaces/default/pods/web/exec?command=true")
    assert resp.status == 400
    assert resp.json()["message"] == "cannot exec in pod web: this API server has no container runtime to run commands in"


# --- the viewer -------------------------------------------------------------------------------------


def test_the_viewer_reads_everything_and_may_do_nothing_else(apiserver: APIServer,
                                                             exec_runner: LocalExecRunner) -> None:
    apiserver.create(hostnetwork_pod("proxyctl-node1", "node1", "172.18.0.2"))
    viewer = apiserver.viewer_token
    assert viewer != apiserver.token
    assert raw_request(apiserver, "GET", "/api/v1/pods", token=viewer).status == 200
    assert raw_request(apiserver, "GET", "/api/v1/namespaces/kube-system/pods/proxyctl-node1", token=viewer).status == 200
    assert raw_request(apiserver, "GET", "/api/v1/pods?watch=true&timeoutSeconds=1", token=viewer).status == 200

    resp = exec_request(apiserver, "/api/v1/namespaces/kube-system/pods/proxyctl-node1/exec?command=true",
                        token=viewer)
    assert resp.status == 403
    assert resp.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "proxyctl-node1" is forbidden: User "lab-viewer" cannot create resource "pods/exec" '
                   'in API group "" in the namespace "kube-system"',
        "reason": "Forbidden", "details": {"name": "proxyctl-node1", "kind": "pods"}, "code": 403,
    }
    writes = {
        ("POST", "/api/v1/namespaces/default/pods"):
            'pods is forbidden: User "lab-viewer" cannot create resource "pods" in API group "" in the namespace "default"',
        ("DELETE", "/api/v1/namespaces/kube-system/pods/proxyctl-node1"):
            'pods "proxyctl-node1" is forbidden: User "lab-viewer" cannot delete resource "pods" in API group "" '
            'in the namespace "kube-system"',
        ("DELETE", "/api/v1/namespaces/default/services"):
            'services is forbidden: User "lab-viewer" cannot deletecollection resource "services" in API group "" '
            'in the namespace "default"',
        ("PUT", "/api/v1/nodes/node1/status"):
            'nodes "node1" is forbidden: User "lab-viewer" cannot update resource "nodes/status" in API group "" '
            'at the cluster scope',
        ("PATCH", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-1"):
            'endpointslices.discovery.k8s.io "web-1" is forbidden: User "lab-viewer" cannot patch resource '
            '"endpointslices" in API group "discovery.k8s.io" in the namespace "default"',
    }
    for (method, path), message in writes.items():
        resp = raw_request(apiserver, method, path, body={}, token=viewer)
        assert (resp.status, resp.json()["message"]) == (403, message), (method, path)
    assert exec_runner.calls == []
    assert apiserver.get("pods", "proxyctl-node1", "kube-system") is not None


def test_the_viewer_token_and_kubeconfig_are_kept_in_the_state_dir(tmp_path: Path) -> None:
    with APIServer(state_dir=tmp_path) as first:
        token = first.viewer_token
        written = yaml.safe_load(first.viewer_kubeconfig_path.read_text())
        assert written == first.kubeconfig(user="viewer")
        assert written["users"] == [{"name": "proxyctl-lab-viewer", "user": {"token": token}}]
        assert written["current-context"] == "proxyctl-lab-viewer"
        assert (tmp_path / "viewer-token").stat().st_mode & 0o077 == 0
    with APIServer(state_dir=tmp_path) as second:
        assert second.viewer_token == token
    with pytest.raises(ValueError):
        second.kubeconfig(user="root")


# --- the real kubectl -------------------------------------------------------------------------------


@pytest.mark.kubectl
def test_kubectl_exec_prints_both_streams_and_exits_with_the_commands_code(
        apiserver: APIServer, exec_runner: LocalExecRunner, kubectl: Kubectl) -> None:
    apiserver.create(hostnetwork_pod("proxyctl-node1", "node1", "172.18.0.2"))
    done = kubectl.run("exec", "-n", "kube-system", "proxyctl-node1", "--", "sh", "-c", SCRIPT, check=False)
    assert (done.returncode, done.stdout) == (3, "out\n")
    assert done.stderr == "err\ncommand terminated with exit code 3\n"
    literal = kubectl.run("exec", "-n", "kube-system", "proxyctl-node1", "--", "echo", "$(id);x")
    assert literal.stdout == "$(id);x\n"
    piped = kubectl.run("exec", "-i", "-n", "kube-system", "proxyctl-node1", "--", "wc", "-l", input="a\nb\n")
    assert piped.stdout.strip() == "2"


@pytest.mark.kubectl
def test_kubectl_exec_refusals(apiserver: APIServer, exec_runner: LocalExecRunner, kubectl: Kubectl) -> None:
    apiserver.create(hostnetwork_pod("proxyctl-node1", "node1", "172.18.0.2"))
    missing = kubectl.run("exec", "-n", "kube-system", "proxyctl-node9", "--", "true", check=False)
    assert (missing.returncode, missing.stderr) == (
        1, 'Error from server (NotFound): pods "proxyctl-node9" not found\n')
    viewer = kubectl.run("--kubeconfig", str(apiserver.viewer_kubeconfig_path), "exec", "-n", "kube-system",
                         "proxyctl-node1", "--", "true", check=False)
    assert (viewer.returncode, viewer.stderr) == (
        1, 'Error from server (Forbidden): pods "proxyctl-node1" is forbidden: User "lab-viewer" cannot create '
           'resource "pods/exec" in API group "" in the namespace "kube-system"\n')
    listed = kubectl.run("--kubeconfig", str(apiserver.viewer_kubeconfig_path), "get", "pods", "-A")
    assert "proxyctl-node1" in listed.stdout
    no_tool = kubectl.run("exec", "-n", "kube-system", "proxyctl-node1", "--", "no-such-tool-here", check=False)
    assert no_tool.returncode == 1
    assert no_tool.stderr.startswith("error: Internal error occurred: error executing command in container: ")
    assert no_tool.stderr.endswith('exec: "no-such-tool-here": executable file not found in $PATH\n')
    assert [call[2] for call in exec_runner.calls] == [["no-such-tool-here"]]


# --- the lab's proxy pods and runner ------------------------------------------------------------------


def lab_spec(name: str = "lab", nodes: int = 2) -> LabSpec:
    return LabSpec(name=name, nodes=tuple(
        NodeSpec(f"node{i}", i, f"172.18.0.{i + 1}", f"10.244.{i}.0/24") for i in range(1, nodes + 1)))


def test_each_node_gets_one_ready_hostnetwork_proxy_pod_recreated_when_deleted(apiserver: APIServer) -> None:
    spec = lab_spec()
    with LabControllers(apiserver, spec, grace_period_default=0.1), ProxyPods(apiserver, spec):
        pods = {p["metadata"]["name"]: p for p in apiserver.list("pods", NAMESPACE)}
        assert sorted(pods) == ["proxyctl-node1", "proxyctl-node2"]
        one = pods["proxyctl-node1"]
        assert one["metadata"]["labels"] == LABELS
        assert (one["spec"]["nodeName"], one["spec"]["hostNetwork"]) == ("node1", True)
        assert [c["name"] for c in one["spec"]["containers"]] == ["proxyctl"]
        assert (one["status"]["phase"], one["status"]["podIP"], one["status"]["hostIP"]) == (
            "Running", "172.18.0.2", "172.18.0.2")
        assert {"type": "Ready", "status": "True"}.items() <= next(
            c for c in one["status"]["conditions"] if c["type"] == "Ready").items()
        assert pod_want(spec, one) is None  # the pod runtime makes no namespace or process for it
        assert pod_netns(spec, one) == "lab-node1"

        with ProxyPods(apiserver, spec):  # a restarted control plane: nothing new
            assert apiserver.get("pods", "proxyctl-node1", NAMESPACE)["metadata"]["uid"] == one["metadata"]["uid"]
        apiserver.registry.delete(PODS, NAMESPACE, "proxyctl-node1", grace_period=0)
        again = wait_for(lambda: apiserver.get("pods", "proxyctl-node1", NAMESPACE), timeout=10,
                         what="the proxy pod to be created again")
        assert again["metadata"]["uid"] != one["metadata"]["uid"]
        wait_for(lambda: apiserver.get("pods", "proxyctl-node1", NAMESPACE)["status"]["phase"] == "Running",
                 timeout=10, what="the new proxy pod to run")


def test_a_pod_without_host_network_execs_in_its_own_namespace() -> None:
    spec = lab_spec("lab")
    assert pod_netns(spec, pod("web", "10.244.1.2", "node1")) == "lab-pod-default-web"
    stray = hostnetwork_pod("proxyctl-node9", "node9", "172.18.0.10")
    with pytest.raises(OSError, match="not on a node of lab lab"):
        pod_netns(spec, stray)


@pytest.mark.lab
@requires_lab("ip", "nsenter")
def test_exec_in_a_hostnetwork_pod_runs_in_its_nodes_network_namespace(apiserver: APIServer, core: Any) -> None:
    prefix = f"pxe{os.urandom(3).hex()}"  # at most 9 characters, like the harness's prefixes
    spec = LabSpec(name=prefix, nodes=(NodeSpec("node1", 1, "172.18.0.2", "10.244.1.0/24"),))
    with empty_netns(role="node1", prefix=prefix) as node_ns:
        assert node_ns == spec.node_ns("node1")
        subprocess.run(["ip", "-n", node_ns, "link", "add", f"{prefix}a", "type", "veth", "peer", "name",
                        f"{prefix}b"], check=True)
        apiserver.exec_runner = NetnsExecRunner(spec)
        apiserver.create(hostnetwork_pod("proxyctl-node1", "node1", "172.18.0.2"))
        ws = python_exec(core, "proxyctl-node1", "kube-system", ["ip", "-o", "link"])
        names = {line.split(":")[1].strip().split("@")[0] for line in ws.read_stdout().splitlines()}
        assert names == {"lo", f"{prefix}a", f"{prefix}b"}
        assert ws.returncode == 0
        host = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert f"{prefix}a" not in host
        missing = python_exec(core, "proxyctl-node1", "kube-system", ["no-such-tool-here"])
        assert json.loads(missing.read_channel(3))["message"].endswith(
            'exec: "no-such-tool-here": executable file not found in $PATH')
        assert python_exec(core, "proxyctl-node1", "kube-system", ["sh", "-c", "exit 7"]).returncode == 7
