"""Several "nodes" with a real sshd each, in network namespaces on one bridge: the harness
for `probe` and SSH tests (and the probe benchmark).

Topology (`build_ssh_cluster`, or the `ssh_cluster` context manager)::

    <prefix>-net:  bridge br0 (no address) ─┬─ <prefix>-node1   172.18.0.2/24  sshd :22
                                             ├─ <prefix>-node2   172.18.0.3/24  sshd :22
                                             ├─ ...
                                             ├─ <prefix>-client  172.18.0.100/24 ("this machine")
                                             └─ <prefix>-bastion 172.18.0.250/24 sshd :22   (optional)
                                                   └─ eth1 10.99.0.1/24 ── <prefix>-hidden 10.99.0.2/24 sshd :22

The hidden node is reachable only through the bastion (which does not forward), so only an
SSH ProxyJump gets there. Every sshd listens on its namespace's address, port 22, with a
generated ed25519 host key, key authentication only (`UsePAM no`, `StrictModes no`), as
root; each runs as `/usr/sbin/sshd -D -e -f CONFIG` and is stopped by its PID.

The work directory holds the client key, `known_hosts` (every host key, by address), and
`ssh_config`: one `Host nodeN` / `bastion` / `hidden` block each (HostName = address;
`hidden` has `ProxyJump bastion`), then `Host *` with User root, the client key,
IdentitiesOnly, no agent, the known_hosts file and StrictHostKeyChecking yes — so the
user's own ~/.ssh and agent are never used.

"NodePort" servers (`listen`): sockets created inside a namespace, accepted by one thread of
the test process and answered by a small pool. TCP: read the request and answer it with
`HTTP/1.0 200 OK`, `X-Pod-Name: <pod>` and body `pod=<pod>` (or a fixed health-check reply;
a bare connect gets nothing), close. UDP: answer every datagram with `pod=<pod>`. `drop_external(node, port)`
adds an iptables rule in the node that drops the port's traffic unless it arrives on `lo`
(what kube-proxy does for ETP=Local without a local endpoint, while the node's own traffic
is short-circuited).

"This machine" is the client namespace: `in_client(fn)` runs `fn` in a thread there, and
every thread, socket and subprocess it starts stays there, so the product under test (CLI
included) sends traffic only to addresses inside the namespaces created here.

Clean-up (`SSHCluster.close`, run by the context manager and by the tests' fixtures, also
when a test or the build itself fails): stop the servers and every sshd by PID, kill
whatever else runs in the namespaces, delete the namespaces and the work directory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pytest

from kubectl_proxyctl.system.executor import netns_path
from kubectl_proxyctl.system.netns import call_in_netns, socket_in_netns
from netns import kill_netns_processes, lab_skip_reason, new_prefix
from waiting import TIMEOUT  # bounds how long sshd may take to listen

T = TypeVar("T")

SUBNET = "172.18.0"
PREFIXLEN = 24
CLIENT_IP = f"{SUBNET}.100"
BASTION_IP = f"{SUBNET}.250"
BASTION_INNER_IP = "10.99.0.1"
HIDDEN_IP = "10.99.0.2"
SSHD = "/usr/sbin/sshd"
TOOLS = ("ssh", "ssh-keygen", SSHD)


def ssh_skip_reason(*tools: str) -> str | None:
    """Why an sshd-in-namespaces test cannot run here, or None."""
    return lab_skip_reason(*TOOLS, *tools)


def requires_sshd(*tools: str) -> pytest.MarkDecorator:
    reason = ssh_skip_reason(*tools)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _ip_batch(netns: str | None, lines: Sequence[str]) -> None:
    _run(["ip", *(["-n", netns] if netns else []), "-batch", "-"], "\n".join(lines) + "\n")


# --- servers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    netns: str
    port: int
    protocol: str  # "tcp" | "udp"


class _Servers:
    """Every listener of the cluster: one selector thread accepts and receives, a small pool
    answers TCP connections (so a slow client never stalls the others)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._sockets: dict[Listener, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="nodeport-answer")
        self._thread = threading.Thread(target=self._serve, name="nodeport-servers", daemon=True)
        self._thread.start()

    def add(self, listener: Listener, reply: bytes) -> None:
        kind = socket.SOCK_STREAM if listener.protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket_in_netns(listener.netns, socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", listener.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(256)
        sock.setblocking(False)
        with self._lock:
            self._sockets[listener] = sock
            self._selector.register(sock, selectors.EVENT_READ, (listener.protocol, reply))
        self._wake_w.send(b"x")

    def remove(self, listener: Listener) -> None:
        with self._lock:
            sock = self._sockets.pop(listener)
            self._selector.unregister(sock)
        sock.close()

    @staticmethod
    def _answer(conn: socket.socket, reply: bytes) -> None:
        with conn:
            conn.settimeout(1.0)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            with contextlib.suppress(OSError):
                if data:
                    conn.sendall(reply)
                conn.shutdown(socket.SHUT_WR)

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=0.5):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                protocol, reply = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    if protocol == "tcp":
                        conn, _ = sock.accept()
                        conn.setblocking(True)
                        self._pool.submit(self._answer, conn, reply)
                    else:
                        _, peer = sock.recvfrom(65535)
                        sock.sendto(reply.split(b"\r\n\r\n", 1)[-1], peer)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def pod_reply(pod: str) -> bytes:
    return f"HTTP/1.0 200 OK\r\nX-Pod-Name: {pod}\r\nContent-Type: text/plain\r\n\r\npod={pod}\n".encode()


def health_reply(namespace: str, name: str, local_endpoints: int) -> bytes:
    """What kube-proxy's health-check node port answers."""
    status = "200 OK" if local_endpoints else "503 Service Unavailable"
    body = ('{"service":{"namespace":"%s","name":"%s"},"localEndpoints":%d,"serviceProxyHealthy":true}'
            % (namespace, name, local_endpoints))
    return (f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\r\n"
            f"{body}\n").encode()


# --- the cluster -----------------------------------------------------------------------------


@dataclass
class SSHNode:
    name: str
    netns: str
    address: str
    workdir: str
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> str:
        return os.path.join(self.workdir, f"{self.name}_host_ed25519")

    @property
    def sshd_config(self) -> str:
        return os.path.join(self.workdir, f"{self.name}_sshd_config")

    @property
    def sshd_log(self) -> str:
        return os.path.join(self.workdir, f"{self.name}_sshd.log")


@dataclass
class SSHCluster:
    prefix: str
    workdir: str
    nodes: list[SSHNode]
    client: str
    bastion: SSHNode | None = None
    hidden: SSHNode | None = None
    namespaces: list[str] = field(default_factory=list)
    _servers: _Servers | None = None
    _closed: bool = False

    # paths ---------------------------------------------------------------------------------

    @property
    def client_key(self) -> str:
        return os.path.join(self.workdir, "client_ed25519")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.workdir, "known_hosts")

    @property
    def ssh_config(self) -> str:
        return os.path.join(self.workdir, "ssh_config")

    def node(self, name: str) -> SSHNode:
        for node in self.all_hosts():
            if node.name == name:
                return node
        raise KeyError(name)

    def all_hosts(self) -> list[SSHNode]:
        return [*self.nodes, *(h for h in (self.bastion, self.hidden) if h is not None)]

    def node_list(self, names: Sequence[str] | None = None) -> str:
        """`--nodes` text: `node1=172.18.0.2,...`."""
        chosen = [self.node(n) for n in names] if names else self.nodes
        return ",".join(f"{n.name}={n.address}" for n in chosen)

    # sshd ----------------------------------------------------------------------------------

    def start_sshd(self, node: SSHNode, timeout: float = TIMEOUT) -> None:
        log = open(node.sshd_log, "ab")
        try:
            node.sshd = subprocess.Popen(
                ["nsenter", f"--net={netns_path(node.netns)}", "--", SSHD, "-D", "-e", "-f", node.sshd_config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            probe = socket_in_netns(node.netns)
            with probe:
                probe.settimeout(0.5)
                try:
                    probe.connect((node.address, 22))
                    return
                except OSError:
                    if node.sshd.poll() is not None or time.monotonic() > deadline:
                        with open(node.sshd_log, encoding="utf-8", errors="replace") as fh:
                            raise RuntimeError(f"sshd for {node.name} did not start:\n{fh.read()}") from None
            time.sleep(0.02)

    def stop_sshd(self, node: SSHNode) -> None:
        proc, node.sshd = node.sshd, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # servers -------------------------------------------------------------------------------

    def listen(self, node: str, port: int, reply: bytes | None = None, protocol: str = "tcp") -> None:
        """Answer on `node`'s port (default: as pod `<node>-pod`)."""
        assert self._servers is not None
        listener = Listener(self.node(node).netns, port, protocol)
        self._servers.add(listener, reply if reply is not None else pod_reply(f"{node}-pod"))

    def unlisten(self, node: str, port: int, protocol: str = "tcp") -> None:
        assert self._servers is not None
        listener = Listener(self.node(node).netns, port, protocol)
        self._servers.remove(listener)

    def drop_external(self, node: str, port: int) -> None:
        """Drop TCP traffic to `port` on `node` unless it comes from the node itself."""
        ns = self.node(node).netns
        _run(["nsenter", f"--net={netns_path(ns)}", "--", "iptables", "-w", "-I", "INPUT", "-p", "tcp",
              "--dport", str(port), "!", "-i", "lo", "-j", "DROP"])

    # running "this machine" ----------------------------------------------------------------

    def in_client(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a thread inside the client namespace ("this machine")."""
        return call_in_netns(self.client, fn)

    # teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this cluster created; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._servers is not None:
            self._servers.close()
        for node in self.all_hosts():
            self.stop_sshd(node)
        for name in reversed(self.namespaces):
            kill_netns_processes(name)
        for name in reversed(self.namespaces):
            if os.path.exists(netns_path(name)):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _sshd_config(node: SSHNode, authorized_keys: str) -> str:
    return "\n".join([
        "# sshd of a probe-test node: its namespace's address only, key auth only, as root",
        f"ListenAddress {node.address}:22",
        f"HostKey {node.host_key}",
        f"PidFile {os.path.join(node.workdir, node.name + '_sshd.pid')}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "AllowTcpForwarding yes",
        "UseDNS no",
        "PrintMotd no",
        "MaxStartups 200:30:400",
        "MaxSessions 64",
        "LogLevel VERBOSE",
        "",
    ])


def _client_config(cluster: SSHCluster) -> str:
    lines = ["# ssh client config for probe tests: never the user's own keys, agent or known_hosts"]
    for node in cluster.all_hosts():
        lines += [f"Host {node.name}", f"  HostName {node.address}"]
        if node is cluster.hidden:
            lines.append("  ProxyJump bastion")
    lines += [
        "Host *",
        "  User root",
        f"  IdentityFile {cluster.client_key}",
        "  IdentitiesOnly yes",
        "  IdentityAgent none",
        f"  UserKnownHostsFile {cluster.known_hosts}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  ConnectTimeout 5",
        "",
    ]
    return "\n".join(lines)


def build_ssh_cluster(nodes: int = 3, bastion: bool = False, prefix: str | None = None) -> SSHCluster:
    """Create the namespaces, links, keys, configs and sshds. The caller owns the result and
    must `close()` it; a failure half-way removes what was created."""
    if not 1 <= nodes <= 90:
        raise ValueError("between 1 and 90 nodes")
    prefix = prefix or new_prefix()
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-ssh-")
    cluster = SSHCluster(
        prefix=prefix,
        workdir=workdir,
        nodes=[SSHNode(f"node{i + 1}", f"{prefix}-node{i + 1}", f"{SUBNET}.{i + 2}", workdir) for i in range(nodes)],
        client=f"{prefix}-client",
    )
    if bastion:
        cluster.bastion = SSHNode("bastion", f"{prefix}-bastion", BASTION_IP, workdir)
        cluster.hidden = SSHNode("hidden", f"{prefix}-hidden", HIDDEN_IP, workdir)
    try:
        net = f"{prefix}-net"
        for name in [net, cluster.client, *(n.netns for n in cluster.all_hosts())]:
            _run(["ip", "netns", "add", name])
            cluster.namespaces.append(name)
        bridge = ["link set lo up", "link add br0 type bridge", "link set br0 up"]
        members = [(cluster.client, CLIENT_IP)] + [(n.netns, n.address) for n in cluster.nodes]
        if cluster.bastion is not None:
            members.append((cluster.bastion.netns, cluster.bastion.address))
        for i, (ns, _address) in enumerate(members):
            bridge += [f"link add p{i} type veth peer name eth0 netns {ns}", f"link set p{i} master br0 up"]
        _ip_batch(net, bridge)
        for ns, address in members:
            _ip_batch(ns, ["link set lo up", f"addr add {address}/{PREFIXLEN} dev eth0", "link set eth0 up"])
        if cluster.bastion is not None and cluster.hidden is not None:
            _ip_batch(cluster.bastion.netns, [
                f"link add eth1 type veth peer name eth0 netns {cluster.hidden.netns}",
                f"addr add {BASTION_INNER_IP}/24 dev eth1", "link set eth1 up"])
            _ip_batch(cluster.hidden.netns, [
                "link set lo up", f"addr add {HIDDEN_IP}/24 dev eth0", "link set eth0 up"])

        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "probe-test-client", "-f", cluster.client_key])
        authorized = os.path.join(workdir, "authorized_keys")
        shutil.copyfile(cluster.client_key + ".pub", authorized)
        known: list[str] = []
        for node in cluster.all_hosts():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", node.name, "-f", node.host_key])
            with open(node.host_key + ".pub", encoding="ascii") as fh:
                kind, blob = fh.read().split()[:2]
            known.append(f"{node.address} {kind} {blob}")
            with open(node.sshd_config, "w", encoding="ascii") as fh:
                fh.write(_sshd_config(node, authorized))
        with open(cluster.known_hosts, "w", encoding="ascii") as fh:
            fh.write("\n".join(known) + "\n")
        with open(cluster.ssh_config, "w", encoding="ascii") as fh:
            fh.write(_client_config(cluster))
        cluster._servers = _Servers()
        for node in cluster.all_hosts():
            cluster.start_sshd(node)
    except BaseException:
        cluster.close()
        raise
    return cluster


@contextlib.contextmanager
def ssh_cluster(**kwargs: Any) -> Iterator[SSHCluster]:
    """`with ssh_cluster(nodes=3) as c: ...`; everything is removed afterwards."""
    cluster = build_ssh_cluster(**kwargs)
    try:
        yield cluster
    finally:
        cluster.close()
