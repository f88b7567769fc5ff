"""A throw-away node, its pods and an outside client, in network namespaces: the harness
for every test that sends real packets through real netfilter rules.

Topology (`build_topology`, `topology()`, or the `netns_factory` fixture)::

    client netns  172.18.0.100/24 (eth0) ── veth ── node netns eth0 172.18.0.2/24
    (optional)    default via 172.18.0.2             cbr0 10.244.1.1/24 (bridge)
                                                     ├─ veth0 ── pod netns eth0 10.244.1.10/24
                                                     ├─ veth1 ── pod netns eth0 10.244.1.11/24
                                                     └─ ...      (default via 10.244.1.1)

Every namespace is named `<prefix>-<role>` with a fresh random prefix (`pxt` + 6 hex
digits), so tests never collide, also with other test runs on the same machine. The node
has `net.ipv4.ip_forward=1`, `net.bridge.bridge-nf-call-iptables=1` (without it the
replies of a DNATed pod-to-pod connection on one bridge skip conntrack),
`net.ipv4.icmp_ratelimit=0` (so many REJECTs in a row all arrive) and a default route
(via the client when there is one, else out of cbr0), which locally originated traffic to
a service IP needs before nat OUTPUT rewrites it. The namespaces are connected only to
each other, never to the host, so test traffic cannot reach anything the harness did not
create.

Pods answer on their TCP ports with one line `<pod name> <client ip>:<client port>` and
close; on their UDP ports they answer every datagram with the same line. The servers are
sockets created inside each pod's namespace but served by one thread of the test
process, so a 3-pod topology is up in well under 100 ms and nothing needs to be waited
for. Clients (`tcp_request`, `udp_request`) likewise open their socket inside the
client's namespace from the test process; they return the answering pod's name, or what
went wrong: "refused", "timeout", "unreachable", "reset" or "error". The `*_exchange`
forms return the whole `Exchange`, with the client address the pod saw (to check SNAT).

`empty_netns()` gives a lone namespace with only `lo` (for rule-programming tests).

Clean-up (`Topology.close`, run by the context manager and the fixture even when the test
fails or the build itself fails half-way): stop the servers, stop processes started
with `spawn`, kill whatever else still runs in the namespaces (`ip netns pids`), delete
the namespaces; their veths and bridge go with them.

REJECT and ICMP rate limits: with the kernel's default `icmp_ratelimit` (1000 ms per
destination host) the "port unreachable" for a client's first SYN was seen suppressed:
the first connect from the client namespace timed out even after 5 s, the next one was
refused only on a SYN retransmit (~1 s). With the limit at 0, as the harness sets it in
the node, every REJECT is answered at once, from pods, the node and the client alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pytest

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.system.executor import SubprocessExecutor, netns_path, package_hint, require_binary
from kubectl_proxyctl.system.netns import call_in_netns, socket_in_netns
from kubectl_proxyctl.system.sysctl import BRIDGE_NF_CALL_IPTABLES, ICMP_RATELIMIT, IP_FORWARD, Sysctl

PREFIX_ROOT = "pxt"
BRIDGE = "cbr0"
BRIDGE_IP = "10.244.1.1"
POD_PREFIXLEN = 24
FIRST_POD_HOST = 10
NODE_IP = "172.18.0.2"
CLIENT_IP = "172.18.0.100"
UNDERLAY_PREFIXLEN = 24
DEFAULT_TCP_PORTS = (80,)
DEFAULT_UDP_PORTS = (53,)
BASE_TOOLS = ("ip", "nsenter")

ERROR_KINDS = ("refused", "timeout", "unreachable", "reset", "error")


# --- skipping ----------------------------------------------------------------------------


def lab_skip_reason(*tools: str) -> str | None:
    """Why a real-kernel test cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, netfilter)"
    missing = []
    for tool in (*BASE_TOOLS, *tools):
        try:
            require_binary(tool)
        except ProxyctlError:
            missing.append(tool)
    if missing:
        packages = sorted({package_hint(t) for t in missing})
        return f"needs {', '.join(missing)} (install: {' '.join(packages)})"
    return None


def requires_lab(*tools: str) -> pytest.MarkDecorator:
    """`@requires_lab("iptables-nft-restore")`: skip with the reason when not runnable."""
    reason = lab_skip_reason(*tools)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# --- namespaces --------------------------------------------------------------------------


def _ip(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}\n{stdin or ''}")


def list_netns(prefix: str = "") -> list[str]:
    """Names under /run/netns starting with `prefix`."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def netns_pids(name: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]


def kill_netns_processes(name: str, grace: float = 1.0) -> None:
    """SIGTERM every process in the namespace, SIGKILL those still there after `grace`."""
    pids = netns_pids(name)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = netns_pids(name)
        if not pids:
            return


# --- servers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    netns: str
    ip: str


class _EchoServers:
    """One thread answering every pod's TCP and UDP sockets."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._sockets: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="pod-echo", daemon=True)
        self._thread.start()

    def add_pod(self, pod: Pod, tcp_ports: Sequence[int], udp_ports: Sequence[int]) -> None:
        def make() -> list[tuple[socket.socket, str]]:
            made: list[tuple[socket.socket, str]] = []
            for port in tcp_ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                s.listen(128)
                made.append((s, "tcp"))
            for port in udp_ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("0.0.0.0", port))
                made.append((s, "udp"))
            return made

        for sock, kind in call_in_netns(pod.netns, make):
            sock.setblocking(False)
            self._sockets.append(sock)
            self._selector.register(sock, selectors.EVENT_READ, (pod.name, kind))
        self._wake_w.send(b"x")

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                name, kind = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    if kind == "tcp":
                        conn, (ip, port) = sock.accept()
                        with conn:
                            conn.settimeout(1.0)
                            conn.sendall(f"{name} {ip}:{port}\n".encode())
                            conn.shutdown(socket.SHUT_WR)
                    else:
                        _, (ip, port) = sock.recvfrom(65535)
                        sock.sendto(f"{name} {ip}:{port}\n".encode(), (ip, port))

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


# --- clients -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """The outcome of one request: `kind` is "ok" or one of ERROR_KINDS."""

    kind: str
    pod: str | None = None
    seen_client: str | None = None  # "ip:port" as the pod saw it
    detail: str = ""

    @property
    def answer(self) -> str:
        return self.pod if self.kind == "ok" and self.pod else self.kind

    @property
    def seen_ip(self) -> str | None:
        return self.seen_client.rsplit(":", 1)[0] if self.seen_client else None


def _classify(exc: BaseException) -> Exchange:
    if isinstance(exc, ConnectionRefusedError):
        return Exchange("refused", detail=str(exc))
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return Exchange("timeout", detail=str(exc))
    if isinstance(exc, ConnectionResetError):
        return Exchange("reset", detail=str(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Exchange("unreachable", detail=str(exc))
    return Exchange("error", detail=repr(exc))


def _parse_answer(data: bytes) -> Exchange:
    parts = data.decode(errors="replace").split()
    if len(parts) != 2:
        return Exchange("error", detail=f"unexpected answer {data!r}")
    return Exchange("ok", pod=parts[0], seen_client=parts[1])


# --- the topology ------------------------------------------------------------------------


@dataclass
class Topology:
    prefix: str
    node: str
    pods: list[Pod]
    client: str | None
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    bridge_ip: str = BRIDGE_IP
    node_ip: str | None = None
    client_ip: str | None = None
    namespaces: list[str] = field(default_factory=list)  # every namespace created, in order
    _servers: _EchoServers | None = None
    _processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    _closed: bool = False

    # names --------------------------------------------------------------------------

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(name)

    def netns(self, ns: str) -> str:
        """"node", "client", a pod name, or one of our namespace names → namespace name."""
        roles = {"node": self.node, **{p.name: p.netns for p in self.pods}}
        if self.client:
            roles["client"] = self.client
        if ns in roles:
            return roles[ns]
        if ns in self.namespaces:
            return ns
        raise ValueError(f"{ns!r} is not a namespace of this topology ({self.prefix})")

    # processes ----------------------------------------------------------------------

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 10.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace `ns`; CalledProcessError when check and it fails."""
        cmd = ["nsenter", f"--net={netns_path(self.netns(ns))}", "--", *argv]
        done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, list(argv), done.stdout, done.stderr)
        return done

    def spawn(self, ns: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start a long-running command inside `ns`; it is stopped by `close()`."""
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(["nsenter", f"--net={netns_path(self.netns(ns))}", "--", *argv], **popen)
        self._processes.append(proc)
        return proc

    def executor(self, ns: str) -> SubprocessExecutor:
        return SubprocessExecutor(netns=self.netns(ns))

    def sysctl(self, ns: str) -> Sysctl:
        return Sysctl(netns=self.netns(ns))

    # traffic ------------------------------------------------------------------------

    def tcp_exchange(self, ns: str, ip: str, port: int, timeout: float = 2.0, sport: int | None = None) -> Exchange:
        sock = socket_in_netns(self.netns(ns), socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout)
            try:
                if sport is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("0.0.0.0", sport))
                sock.connect((ip, port))
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError as exc:
                return _classify(exc)
        return _parse_answer(data)

    def tcp_request(self, ns: str, ip: str, port: int, timeout: float = 2.0) -> str:
        """The answering pod's name, or "refused" / "timeout" / "unreachable" / ..."""
        return self.tcp_exchange(ns, ip, port, timeout).answer

    def udp_exchange(self, ns: str, ip: str, port: int, timeout: float = 1.0, sport: int | None = None) -> Exchange:
        sock = socket_in_netns(self.netns(ns), socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(timeout)
            try:
                if sport is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("0.0.0.0", sport))
                sock.connect((ip, port))
                sock.send(b"ping\n")
                data = sock.recv(65535)
            except OSError as exc:
                return _classify(exc)
        return _parse_answer(data)

    def udp_request(self, ns: str, ip: str, port: int, timeout: float = 1.0, sport: int | None = None) -> str:
        return self.udp_exchange(ns, ip, port, timeout, sport).answer

    # teardown -----------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this topology created; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._servers is not None:
            self._servers.close()
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._processes:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in reversed(self.namespaces):
            kill_netns_processes(name)
        for name in reversed(self.namespaces):
            if os.path.exists(netns_path(name)):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def new_prefix() -> str:
    return f"{PREFIX_ROOT}{secrets.token_hex(3)}"


def build_topology(
    pods: int | Sequence[str] = 3,
    client: bool = False,
    tcp_ports: Sequence[int] = DEFAULT_TCP_PORTS,
    udp_ports: Sequence[int] = DEFAULT_UDP_PORTS,
    prefix: str | None = None,
) -> Topology:
    """Create the namespaces, links, addresses, sysctls and pod servers. The caller owns
    the result and must `close()` it; a failure half-way removes what was created."""
    names = [f"pod-{chr(ord('a') + i)}" for i in range(pods)] if isinstance(pods, int) else list(pods)
    if len(names) > 200:
        raise ValueError("at most 200 pods")
    prefix = prefix or new_prefix()
    topo = Topology(
        prefix=prefix,
        node=f"{prefix}-node",
        pods=[
            Pod(name, f"{prefix}-{name}", f"10.244.1.{FIRST_POD_HOST + i}") for i, name in enumerate(names)
        ],
        client=f"{prefix}-client" if client else None,
        tcp_ports=tuple(tcp_ports),
        udp_ports=tuple(udp_ports),
        node_ip=NODE_IP if client else None,
        client_ip=CLIENT_IP if client else None,
    )
    try:
        for name in [topo.node, *(p.netns for p in topo.pods), *([topo.client] if topo.client else [])]:
            _ip("netns", "add", name)
            topo.namespaces.append(name)
        node = ["link set lo up", f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up",
                f"addr add {BRIDGE_IP}/{POD_PREFIXLEN} dev {BRIDGE}"]
        for i, pod in enumerate(topo.pods):
            node += [f"link add veth{i} type veth peer name eth0 netns {pod.netns}",
                     f"link set veth{i} master {BRIDGE} up"]
        if topo.client:
            node += [f"link add eth0 type veth peer name eth0 netns {topo.client}",
                     f"addr add {NODE_IP}/{UNDERLAY_PREFIXLEN} dev eth0", "link set eth0 up",
                     f"route add default via {CLIENT_IP}"]
        else:
            node += [f"route add default dev {BRIDGE}"]
        _ip("-n", topo.node, "-batch", "-", stdin="\n".join(node) + "\n")
        for pod in topo.pods:
            _ip("-n", pod.netns, "-batch", "-", stdin="\n".join([
                "link set lo up", f"addr add {pod.ip}/{POD_PREFIXLEN} dev eth0", "link set eth0 up",
                f"route add default via {BRIDGE_IP}"]) + "\n")
        if topo.client:
            _ip("-n", topo.client, "-batch", "-", stdin="\n".join([
                "link set lo up", f"addr add {CLIENT_IP}/{UNDERLAY_PREFIXLEN} dev eth0", "link set eth0 up",
                f"route add default via {NODE_IP}"]) + "\n")
        sysctl = Sysctl(netns=topo.node)
        for key, value in ((IP_FORWARD, 1), (BRIDGE_NF_CALL_IPTABLES, 1), (ICMP_RATELIMIT, 0)):
            sysctl.set(key, value)
        topo._servers = _EchoServers()
        for pod in topo.pods:
            topo._servers.add_pod(pod, topo.tcp_ports, topo.udp_ports)
    except BaseException:
        topo.close()
        raise
    return topo


@contextlib.contextmanager
def topology(**kwargs: Any) -> Iterator[Topology]:
    """`with topology(pods=3, client=True) as t: ...`; everything is removed afterwards."""
    topo = build_topology(**kwargs)
    try:
        yield topo
    finally:
        topo.close()


def exec_in(netns: str, *args: str) -> str:
    """`args` run inside `netns` (`ip netns exec`): its standard output; an AssertionError
    with its standard error when it fails."""
    result = subprocess.run(["ip", "netns", "exec", netns, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)} in {netns}: {result.stderr.strip()}"
    return result.stdout


def lone_netns(role: str, skip_reason: str | None) -> Iterator[str]:
    """For a fixture: skip with `skip_reason` when there is one, else an `empty_netns`."""
    if skip_reason:
        pytest.skip(skip_reason)
    with empty_netns(role) as name:
        yield name


@contextlib.contextmanager
def empty_netns(role: str = "ns", prefix: str | None = None) -> Iterator[str]:
    """A lone namespace `<prefix>-<role>` with only `lo` up, for tests that need a clean
    netfilter state and no traffic; removed (with its processes) afterwards."""
    name = f"{prefix or new_prefix()}-{role}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        kill_netns_processes(name)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@pytest.fixture
def netns_factory() -> Iterator[Callable[..., Topology]]:
    """A factory fixture: `t = netns_factory(pods=2, client=True)`; all torn down after the test."""
    built: list[Topology] = []

    def make(**kwargs: Any) -> Topology:
        topo = build_topology(**kwargs)
        built.append(topo)
        return topo

    try:
        yield make
    finally:
        for topo in reversed(built):
            topo.close()
