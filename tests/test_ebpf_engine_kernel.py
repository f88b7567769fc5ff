"""`run --mode ebpf` on the real kernel: the engine's maps, programs and entry-point table.

Set-up (module fixture `node`): a node namespace with a pod bridge (10.250.1.1/24) and
three backend namespaces b1..b3 on it (10.250.1.11-13, answering TCP 8080 and UDP 8053
with their names), an outside client namespace on a second link (10.250.2.2 → the node's
address 10.250.2.1, its Node object's InternalIP), and a cgroup of our own whose processes
play the node's pods. The engine runs `--once` inside the node namespace (through `nsenter`,
so it sees the cgroup2 and bpffs mounts) with `--cgroup-path` that cgroup and
`--bpf-pin-path` a directory of our own: it programs nothing else on this machine.

Teardown (also on failure): `run --cleanup` for our pin path, then whatever is left is
unpinned, the namespaces and their processes are removed and the cgroup is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from ebpfhelpers import TCP_PORT, UDP_PORT, Servers, answers, ip, run_client
from enginehelpers import endpoint, endpoint_slice, engine_command, node, service, write_objects
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.system import bpf
from kubectl_proxyctl.system.executor import netns_path
from netns import kill_netns_processes, lab_skip_reason, new_prefix

_SKIP = lab_skip_reason("bpftool", "conntrack", "nft")
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

BACKENDS = {"b1": "10.250.1.11", "b2": "10.250.1.12", "b3": "10.250.1.13"}
NODE_IP, CLIENT_IP = "10.250.2.1", "10.250.2.2"
WEB, STICKY, EMPTY, DNS = "10.96.251.1", "10.96.251.2", "10.96.251.3", "10.96.251.4"
NODE_PORT = 30080


def objects(web: tuple[str, ...] = ("b1", "b2", "b3")) -> list[dict[str, Any]]:
    def eps(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [endpoint(BACKENDS[n], "node1", pod=n) for n in names]

    return [
        node("node1", NODE_IP),
        service("web", WEB, [{"name": "http", "port": 80, "nodePort": NODE_PORT}], type="NodePort"),
        endpoint_slice("web", eps(web), [("http", TCP_PORT, "TCP")]),
        service("sticky", STICKY, [{"name": "http", "port": 80}], affinity=600),
        endpoint_slice("sticky", eps(("b1", "b2", "b3")), [("http", TCP_PORT, "TCP")]),
        service("empty", EMPTY, [{"name": "http", "port": 80}]),
        service("dns", DNS, [{"name": "dns", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("dns", eps(("b1", "b2", "b3")), [("dns", UDP_PORT, "UDP")]),
    ]


@dataclass
class Node:
    prefix: str
    ns: str
    outside: str
    cgroup: str
    pins: str
    workdir: str
    servers: Servers

    def engine(self, *args: str, objs: list[dict[str, Any]] | None = None,
               mode: str = "ebpf") -> subprocess.CompletedProcess[str]:
        path = write_objects(os.path.join(self.workdir, "objects.json"), objs if objs is not None else objects())
        argv = ["nsenter", f"--net={netns_path(self.ns)}", "--", *engine_command(), "run", "--mode", mode,
                "--from-file", path, "--node-name", "node1", "--cluster-cidr", "10.250.1.0/24",
                "--cgroup-path", self.cgroup, "--bpf-pin-path", self.pins, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def sync(self, objs: list[dict[str, Any]] | None = None) -> str:
        done = self.engine("--once", objs=objs)
        assert done.returncode == 0, done.stderr
        return done.stderr

    def pod(self, *ops: dict[str, Any], timeout: float = 40) -> list[list[dict[str, Any]]]:
        """A process of the node's pods (in the cgroup, in the node namespace)."""
        return run_client(self.cgroup, self.ns, *ops, timeout=timeout)

    def in_ns(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={netns_path(ns)}", "--", *argv],
                              capture_output=True, text=True, timeout=20, check=False)

    def attached(self) -> list[str]:
        out = subprocess.run(["bpftool", "-j", "cgroup", "show", self.cgroup],
                             capture_output=True, text=True, check=True).stdout.strip()
        return sorted(p["name"] for p in json.loads(out or "[]"))


def _build(n: Node, namespaces: list[str]) -> None:
    for name in [n.ns, n.outside, *(f"{n.prefix}-{b}" for b in BACKENDS)]:
        ip("netns", "add", name)
        namespaces.append(name)
    ip("-n", n.ns, "link", "set", "lo", "up")
    ip("-n", n.ns, "link", "add", "cbr0", "type", "bridge")
    ip("-n", n.ns, "addr", "add", "10.250.1.1/24", "dev", "cbr0")
    ip("-n", n.ns, "link", "set", "cbr0", "up")
    for name, addr in BACKENDS.items():
        ns = f"{n.prefix}-{name}"
        ip("-n", n.ns, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", n.ns, "link", "set", f"v{name}", "master", "cbr0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", "10.250.1.1")
        n.servers.add(name, ns)
    n.servers.thread.start()
    ip("-n", n.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n.outside)
    ip("-n", n.ns, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    ip("-n", n.ns, "link", "set", "eth0", "up")
    ip("-n", n.outside, "link", "set", "lo", "up")
    ip("-n", n.outside, "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
    ip("-n", n.outside, "link", "set", "eth0", "up")
    n.in_ns(n.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    os.mkdir(n.cgroup)


def _teardown(n: Node, namespaces: list[str]) -> None:
    with contextlib.suppress(Exception):
        n.engine("--cleanup")
    if os.path.isdir(n.pins):
        for root, dirs, files in os.walk(n.pins, topdown=False):
            for f in files:
                bpf.unpin(os.path.join(root, f))
            for d in dirs:
                os.rmdir(os.path.join(root, d))
        os.rmdir(n.pins)
    n.servers.close()
    for name in reversed(namespaces):
        kill_netns_processes(name)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    if os.path.isdir(n.cgroup):
        with open(os.path.join(n.cgroup, "cgroup.procs"), encoding="ascii") as procs:
            for pid in procs.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(n.cgroup)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    shutil.rmtree(n.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    prefix = new_prefix()
    n = Node(prefix=prefix, ns=f"{prefix}-node", outside=f"{prefix}-out",
             cgroup=os.path.join(bpf.cgroup2_root(), f"proxyctl-test-{prefix}"),
             pins=os.path.join(bpf.bpffs_root(), f"proxyctl-test-{prefix}"),
             workdir=str(tmp_path_factory.mktemp("ebpf-engine")), servers=Servers())
    namespaces: list[str] = []
    try:
        _build(n, namespaces)
        n.sync()
        yield n
    finally:
        _teardown(n, namespaces)


def test_the_engine_attaches_every_program_to_the_cgroup_only(box: Node) -> None:
    # both families' hooks: an IPv6 socket reaches IPv4 services by their mapped addresses
    assert box.attached() == sorted(p.name for p in maps.PROGRAMS)
    assert sorted(os.listdir(os.path.join(box.pins, "links"))) == box.attached()


def test_a_thousand_connections_from_a_pod_spread_evenly_without_nat(box: Node) -> None:
    (results,) = box.pod({"kind": "tcp", "ip": WEB, "port": 80, "count": 1000})
    got = answers(results)
    assert set(got) == set(BACKENDS), got
    for name in BACKENDS:
        assert abs(got[name] / 10 - 100 / 3) <= 5, got
    assert {tuple(r["peer"]) for r in results} == {(WEB, 80)}
    # the node namespace tracks connections (its nftables table has nat chains) but none
    # ever carried the service address
    assert box.in_ns(box.ns, "conntrack", "-L", "-d", WEB).stdout.strip() == ""
    assert f"dport={TCP_PORT}" in box.in_ns(box.ns, "conntrack", "-L", "-d", BACKENDS["b1"]).stdout


def test_affinity_keeps_a_pod_on_one_backend(box: Node) -> None:
    (results,) = box.pod({"kind": "tcp", "ip": STICKY, "port": 80, "count": 40})
    assert len(answers(results)) == 1 and set(answers(results)) <= set(BACKENDS), answers(results)


def test_udp_request_and_reply_through_the_service_address(box: Node) -> None:
    (results,) = box.pod({"kind": "udp", "ip": DNS, "port": 53, "connected": False, "count": 60})
    assert set(answers(results)) == set(BACKENDS), answers(results)
    assert {tuple(r["source"]) for r in results} == {(DNS, 53)}


def test_a_service_without_endpoints_refuses_at_once(box: Node) -> None:
    (results,) = box.pod({"kind": "tcp", "ip": EMPTY, "port": 80, "count": 3})
    assert {r.get("errno") for r in results} == {errno.ECONNREFUSED}, results
    assert max(r["seconds"] for r in results) < 0.2


def test_the_node_port_from_outside_goes_through_the_entry_point_table(box: Node) -> None:
    def work() -> list[list[dict[str, Any]]]:
        return run_client("", box.outside, {"kind": "tcp", "ip": NODE_IP, "port": NODE_PORT, "count": 60})

    (results,) = work()
    assert set(answers(results)) == set(BACKENDS), answers(results)
    table = box.in_ns(box.ns, "nft", "list", "table", "ip", "proxyctl-ebpf").stdout
    assert f"{NODE_PORT}" in table and WEB not in table.split("map service-ips")[1].split("}")[0]


def test_a_restart_finds_its_pinned_maps_and_keeps_serving_during_an_endpoint_change(box: Node) -> None:
    def map_id() -> int:
        shown = subprocess.run(["bpftool", "-j", "map", "show", "pinned", os.path.join(box.pins, "services4")],
                               capture_output=True, text=True, check=True).stdout
        return int(json.loads(shown)["id"])

    before = map_id()
    results: list[list[dict[str, Any]]] = []
    stop = os.path.join(box.workdir, "stop-load")
    load = threading.Thread(target=lambda: results.extend(
        box.pod({"kind": "tcp", "ip": WEB, "port": 80, "until": stop, "stamp": True}, timeout=90)))
    load.start()
    time.sleep(0.5)
    try:
        box.sync(objects(web=("b1", "b2")))  # b3 leaves while the pod keeps connecting
        synced = time.time()
        time.sleep(1.0)
    finally:
        open(stop, "w").close()
        load.join(timeout=90)
    try:
        (done,) = results
        assert not [r for r in done if "answer" not in r], "connections failed during the change"
        after = answers([r for r in done if r["t"] > synced + 0.05])
        assert after and set(after) == {"b1", "b2"}, after
        assert map_id() == before  # the restarted engine kept the pinned map (and its entries)
    finally:
        box.sync()


def test_dump_explain_and_verify_read_the_node(box: Node) -> None:
    cmd = ["nsenter", f"--net={netns_path(box.ns)}", "--", *engine_command()]
    objs = write_objects(os.path.join(box.workdir, "inspect.json"), objects())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args, "--bpf-pin-path", box.pins, "--from-file", objs, "--node-name", "node1"],
                              capture_output=True, text=True, timeout=60, check=False)

    dump = run("dump")
    assert dump.returncode == 0, dump.stderr
    assert WEB in dump.stdout and "e2e/web" in dump.stdout and "pxc_connect4" in dump.stdout
    explain = run("explain", "svc/web", "-n", "e2e")
    assert explain.returncode == 0, explain.stderr
    assert "rewritten" in explain.stdout and "no NAT" in explain.stdout, explain.stdout
    verify = run("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # a stale entry someone left in the map is drift
    subprocess.run(["bpftool", "map", "update", "pinned", os.path.join(box.pins, "services4"),
                    "key", "10", "96", "251", "99", "0", "80", "6", "0",
                    "value", "1", "0", "0", "0", "1", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0"],
                   check=True, capture_output=True)
    try:
        drift = run("verify")
        assert drift.returncode != 0 and "10.96.251.99" in drift.stdout + drift.stderr, drift.stdout
    finally:
        box.sync()  # a full sync removes the stale entry again
    assert run("verify").returncode == 0


def test_switching_modes_and_cleanup_leave_no_program_pin_or_table(box: Node) -> None:
    try:
        done = box.engine("--once", mode="nftables")
        assert done.returncode == 0, done.stderr
        assert box.attached() == [] and not os.path.exists(box.pins)
        assert "proxyctl-ebpf" not in box.in_ns(box.ns, "nft", "list", "tables").stdout
    finally:
        box.sync()
    assert box.attached()
    done = box.engine("--cleanup")
    assert done.returncode == 0, done.stderr
    assert box.attached() == [] and not os.path.exists(box.pins)
    tables = box.in_ns(box.ns, "nft", "list", "tables").stdout
    assert "proxyctl-ebpf" not in tables and "kube-proxy" not in tables
    box.sync()  # for whoever runs after


def test_a_bad_cgroup_path_is_one_line_and_changes_nothing(box: Node) -> None:
    done = box.engine("--once", "--cgroup-path", "/nonexistent/cg")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--cgroup-path /nonexistent/cg" in done.stderr
    assert box.attached()  # the running state is untouched
