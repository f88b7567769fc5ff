"""IPVS mode against a real kernel: runs INSIDE the VM (tests/test_ipvs_vm.py boots it once).

Not collected on the host (the file name does not start with `test_`): the host's kernel has
no IP_VS and no dummy links. The VM's root network namespace is the node `node1`
(172.18.0.2); pods are network namespaces on the bridge `cbr0` (10.244.1.0/24), each
answering TCP 8080 with its name and then echoing (a thread of this process, listening
in the pod's namespace); the `client` namespace (172.18.0.100) is
an outside user. The engine is the real `kubectl-proxyctl run --mode ipvs`, started once per
scenario set from an objects file, with a 2 s sync period; traffic is plain sockets.

Scenario set 1 (one engine): ClusterIP, NodePort, the round-robin spread over 1,000
connections, ClientIP affinity, externalTrafficPolicy Local, a foreign virtual server left
alone, repair after `ipvsadm -C`. Set 2 (a second engine, one endpoint fewer): graceful
termination. Set 3: `run --cleanup`. With PROXYCTL_IPVS_CAPTURE=1 the steady state of set 1
is saved as tests/data/ipvs-vm/*.txt (what tests/vm/regenerate-data does).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from enginehelpers import endpoint, endpoint_slice, node, service  # noqa: E402
from kubectl_proxyctl.system.netns import call_in_netns  # noqa: E402

NODE_IP, CLIENT_IP = "172.18.0.2", "172.18.0.100"
PODS = {"pod-a": "10.244.1.10", "pod-b": "10.244.1.11", "pod-c": "10.244.1.12"}
REMOTE = "10.244.2.20"  # an endpoint on node2: listed, never reached
FOREIGN = ("192.0.2.50", 80)
CAPTURE = os.environ.get("PROXYCTL_IPVS_CAPTURE") == "1"
DATA = ROOT / "tests" / "data" / "ipvs-vm"

WEB, STICKY, LOCAL, GRACE = "10.96.0.10", "10.96.0.20", "10.96.0.30", "10.96.0.40"


def sh(*argv: str, check: bool = True, netns: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result.stdout


def wait(condition: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def objects(grace_endpoints: tuple[str, ...] = ("pod-a", "pod-b")) -> list[dict[str, Any]]:
    def eps(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [endpoint(PODS[n], "node1", n) for n in names]

    return [
        node("node1", NODE_IP),
        service("web", WEB, [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"),
        endpoint_slice("web", eps(("pod-a", "pod-b", "pod-c")), [("http", 8080, "TCP")]),
        service("sticky", STICKY, [{"name": "http", "port": 80}], affinity=600),
        endpoint_slice("sticky", eps(("pod-a", "pod-b", "pod-c")), [("http", 8080, "TCP")]),
        service("local", LOCAL, [{"name": "http", "port": 80, "nodePort": 30081}], type="NodePort", etp="Local"),
        endpoint_slice("local", eps(("pod-c",)) + [endpoint(REMOTE, "node2")], [("http", 8080, "TCP")]),
        service("grace", GRACE, [{"name": "http", "port": 80}]),
        endpoint_slice("grace", eps(grace_endpoints), [("http", 8080, "TCP")]),
    ]


def connect(ip: str, port: int, timeout: float = 5.0) -> socket.socket:
    def work() -> socket.socket:
        s = socket.create_connection((ip, port), timeout=timeout)
        return s

    return call_in_netns("client", work)


def ask(ip: str, port: int) -> str:
    """One connection from the client: the name of the pod that answered ("error" if none)."""
    try:
        with connect(ip, port) as s:
            data = b""
            while b"\n" not in data:
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip() or "error"
    except OSError:
        return "error"


def burst(ip: str, port: int, count: int) -> Counter[str]:
    def work() -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            try:
                with socket.create_connection((ip, port), timeout=5.0) as s:
                    seen[s.recv(100).decode().strip() or "error"] += 1
            except OSError:
                seen["error"] += 1
        return seen

    return call_in_netns("client", work)


def ipvsadm_save() -> str:
    return sh("ipvsadm", "-Sn")


def reals_of(vip: str, port: int) -> dict[str, int]:
    """Real server → weight of one TCP virtual server, from `ipvsadm -Sn`."""
    out: dict[str, int] = {}
    for line in ipvsadm_save().splitlines():
        words = line.split()
        if words[:3] == ["-a", "-t", f"{vip}:{port}"]:
            out[words[4]] = int(words[words.index("-w") + 1])
    return out


@pytest.fixture(scope="module")
def topology() -> Iterator[None]:
    sh("ip", "link", "add", "cbr0", "type", "bridge")
    sh("ip", "addr", "add", "10.244.1.1/24", "dev", "cbr0")
    sh("ip", "link", "set", "cbr0", "up")
    sh("ip", "link", "set", "lo", "up")
    servers = []
    for i, (name, ip) in enumerate(PODS.items()):
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", f"veth{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", f"veth{i}", "master", "cbr0", "up")
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", netns=name)
        sh("ip", "link", "set", "eth0", "up", netns=name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        sh("ip", "route", "add", "default", "via", "10.244.1.1", netns=name)
        servers.append(call_in_netns(name, lambda name=name: _EchoServer(name)))
    sh("ip", "netns", "add", "client")
    sh("ip", "link", "add", "client0", "type", "veth", "peer", "name", "eth0", "netns", "client")
    sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", "client0")
    sh("ip", "link", "set", "client0", "up")
    sh("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0", netns="client")
    sh("ip", "link", "set", "eth0", "up", netns="client")
    sh("ip", "link", "set", "lo", "up", netns="client")
    sh("ip", "route", "add", "default", "via", NODE_IP, netns="client")
    # someone else's virtual server, which the engine must never touch
    sh("ipvsadm", "-A", "-t", f"{FOREIGN[0]}:{FOREIGN[1]}", "-s", "wlc")
    sh("ipvsadm", "-a", "-t", f"{FOREIGN[0]}:{FOREIGN[1]}", "-r", "192.0.2.51:80", "-m")
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield
    for server in servers:
        server.shutdown()
    # Leave the VM as it booted for the suites after this one (the lab's nodes are 172.18.0.x too).
    for name in (*PODS, "client"):
        sh("ip", "netns", "del", name, check=False)
    for link in ("cbr0", "client0"):
        sh("ip", "link", "del", link, check=False)
    sh("ipvsadm", "-C", check=False)


class _Echo(socketserver.BaseRequestHandler):
    """A pod's server: its name on a line, then an echo of whatever comes."""

    def handle(self) -> None:
        try:
            self.request.sendall(f"{self.server.pod}\n".encode())  # type: ignore[attr-defined]
            while data := self.request.recv(4096):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    """Made inside the pod's namespace (the listening socket stays there); one thread per
    connection, so a held connection does not stop the others (in-process: a fork and exec per
    connection costs ~0.1 s under emulation)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, pod: str) -> None:
        self.pod = pod
        super().__init__(("0.0.0.0", 8080), _Echo)


class Engine:
    """`kubectl-proxyctl run --mode ipvs` on the node, from an objects file."""

    def __init__(self, tmp: Path, objs: list[dict[str, Any]], *extra: str) -> None:
        path = tmp / f"objects-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
        self.log = tmp / f"engine-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubectl_proxyctl", "run", "--mode", "ipvs", "--from-file", str(path),
             "--node-name", "node1", "--cluster-cidr", "10.244.0.0/16", "--sync-period", "2s",
             "--min-sync-period", "0s", "--healthz-bind-address", "", "--metrics-bind-address", "", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"), cwd=ROOT)

    def wait_synced(self, count: int = 1) -> None:
        wait(lambda: self.text().count("sync full") + self.text().count("sync partial") >= count
             or self.proc.poll() is not None, "the engine's sync", timeout=120)
        assert self.proc.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ipvs")


@pytest.fixture(scope="module")
def engine(topology: None, tmp: Path) -> Iterator[Engine]:
    e = Engine(tmp, objects())
    e.wait_synced()
    yield e
    e.stop()


def test_a_cluster_ip_reaches_the_pods_and_the_state_is_kube_proxys(engine: Engine) -> None:
    assert ask(WEB, 80) in PODS
    save = ipvsadm_save()
    assert f"-A -t {WEB}:80 -s rr" in save
    assert f"-a -t {WEB}:80 -r 10.244.1.10:8080 -m -w 1" in save
    assert "kube-ipvs0" in sh("ip", "-o", "link", "show", "kube-ipvs0")
    assert f"inet {WEB}/32" in sh("ip", "-o", "addr", "show", "dev", "kube-ipvs0")
    assert f"add KUBE-CLUSTER-IP {WEB},tcp:80" in sh("ipset", "save")
    assert "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT" in sh("iptables-save", "-t", "nat")
    for key in ("conntrack", "expire_nodest_conn"):
        assert Path(f"/proc/sys/net/ipv4/vs/{key}").read_text().strip() == "1"


def test_a_node_port_reaches_the_pods_from_outside(engine: Engine) -> None:
    assert ask(NODE_IP, 30080) in PODS
    assert f"-A -t {NODE_IP}:30080 -s rr" in ipvsadm_save()


def test_round_robin_spreads_1000_connections_within_5_points(engine: Engine) -> None:
    seen = burst(WEB, 80, 1000)
    assert seen["error"] == 0, seen
    for pod in PODS:
        assert abs(seen[pod] / 1000 - 1 / 3) <= 0.05, seen


def test_client_ip_affinity_keeps_one_pod(engine: Engine) -> None:
    assert "-p 600" in next(line for line in ipvsadm_save().splitlines() if line.startswith(f"-A -t {STICKY}:80"))
    seen = burst(STICKY, 80, 20)
    assert len(seen) == 1 and next(iter(seen)) in PODS, seen


def test_external_traffic_policy_local_node_port_uses_only_the_local_pod(engine: Engine) -> None:
    assert reals_of(NODE_IP, 30081) == {"10.244.1.12:8080": 1}
    assert set(reals_of(LOCAL, 80)) == {"10.244.1.12:8080", f"{REMOTE}:8080"}
    assert burst(NODE_IP, 30081, 10) == Counter({"pod-c": 10})
    assert "add KUBE-NODE-PORT-LOCAL-TCP 30081" in sh("ipset", "save")


def test_a_foreign_virtual_server_is_left_alone(engine: Engine) -> None:
    save = ipvsadm_save()
    assert f"-A -t {FOREIGN[0]}:{FOREIGN[1]} -s wlc" in save
    assert f"-a -t {FOREIGN[0]}:{FOREIGN[1]} -r 192.0.2.51:80 -m -w 1" in save
    if CAPTURE:  # tests/vm/regenerate-data: the steady state, with the foreign virtual server in place
        capture_the_steady_state()


def capture_the_steady_state() -> None:
    """tests/data/ipvs-vm/: what the tools print for this node, and the objects it serves."""
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "ipvsadm-save.txt").write_text(ipvsadm_save())
    (DATA / "ipvsadm-list.txt").write_text(sh("ipvsadm", "-Ln"))
    (DATA / "ipset-save.txt").write_text(sh("ipset", "save"))
    (DATA / "iptables-save.txt").write_text(sh("iptables-save"))
    (DATA / "kube-ipvs0.json").write_text(sh("ip", "-json", "address", "show", "dev", "kube-ipvs0"))
    (DATA / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects()}, indent=1)
                                       + "\n")


def test_ipvsadm_clear_is_repaired(engine: Engine) -> None:
    before = set(ipvsadm_save().splitlines())
    sh("ipvsadm", "-C")  # which clears the foreign one too: put it back, the engine must leave it
    sh("ipvsadm", "-A", "-t", f"{FOREIGN[0]}:{FOREIGN[1]}", "-s", "wlc")
    sh("ipvsadm", "-a", "-t", f"{FOREIGN[0]}:{FOREIGN[1]}", "-r", "192.0.2.51:80", "-m")
    wait(lambda: set(ipvsadm_save().splitlines()) == before,
         "the engine to rewrite the virtual servers")
    assert "someone flushed our rules" in engine.text()
    assert ask(WEB, 80) in PODS


def test_graceful_termination_drains_then_deletes(engine: Engine, tmp: Path) -> None:
    # a connection held open to pod-b through the grace service
    held = None
    for _ in range(6):
        s = connect(GRACE, 80)
        if s.recv(100).decode().strip() == "pod-b":
            held = s
            break
        s.close()
    assert held is not None
    engine.stop()
    second = Engine(tmp, objects(grace_endpoints=("pod-a",)))
    try:
        second.wait_synced()
        assert reals_of(GRACE, 80) == {"10.244.1.10:8080": 1, "10.244.1.11:8080": 0}  # draining
        held.sendall(b"still there\n")
        assert held.recv(100) == b"still there\n"  # the open connection goes on
        assert burst(GRACE, 80, 6) == Counter({"pod-a": 6})  # new ones avoid it
        held.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        held.close()  # a reset: the connection's IPVS entry expires in seconds
        wait(lambda: "10.244.1.11:8080" not in reals_of(GRACE, 80), "the drained real server's deletion",
             timeout=60)
        assert "drained real servers" in second.text()
    finally:
        second.stop()


def test_cleanup_removes_ours_and_only_ours(topology: None) -> None:
    result = subprocess.run([sys.executable, "-m", "kubectl_proxyctl", "run", "--cleanup"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    save = ipvsadm_save()
    assert save.splitlines() == [f"-A -t {FOREIGN[0]}:{FOREIGN[1]} -s wlc",
                                 f"-a -t {FOREIGN[0]}:{FOREIGN[1]} -r 192.0.2.51:80 -m -w 1"]
    assert sh("ip", "link", "show", "kube-ipvs0", check=False) == ""
    assert "KUBE-" not in sh("ipset", "list", "-n")
    assert "KUBE-IPVS-FILTER" not in sh("iptables-save") and "KUBE-SERVICES" not in sh("iptables-save")
