"""The eBPF mode's programs on the real kernel: socket-level load balancing in a test cgroup.

Set-up (module fixture `lab`): a client namespace holding a bridge (10.250.0.1/24,
fd00:250::1/64) and three backend namespaces b1..b3 on it (10.250.0.11-13,
fd00:250::11-13), each answering on TCP 8080 and UDP 8053 with its name. The maps are
created fresh (not pinned), the programs loaded and attached through bpf links to a cgroup
of our own (`<cgroup2 root>/proxyctl-test-<pid>`) and nowhere else. Clients are separate
processes: a shell moves itself into that cgroup, then `nsenter --net` enters the client
namespace (cgroup membership is inherited, and `ip netns exec` would hide the cgroup2
mount) and runs a small Python client that prints what it saw as JSON. The service
addresses (10.96.250.x, fd00:96::1) exist nowhere and the client namespace has no default
route: a connect that the programs did not rewrite fails with "network unreachable".

Teardown (also on failure): links closed (which detaches the programs), programs and maps
closed, the cgroup removed, namespaces and their processes removed, and a pin directory
made for the dump test unpinned and removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.modes.ebpf import maps, programs
from kubectl_proxyctl.modes.ebpf.asm import R0, Program
from kubectl_proxyctl.system import bpf
from kubectl_proxyctl.system.executor import netns_path
from ebpfhelpers import TCP_PORT, UDP_PORT, Servers, answers, ip, run_client
from netns import kill_netns_processes, lab_skip_reason, new_prefix

pytestmark = [pytest.mark.lab, pytest.mark.skipif(lab_skip_reason("bpftool", "conntrack") is not None,
                                                    reason=lab_skip_reason("bpftool", "conntrack") or "")]

BACKENDS = {"b1": 11, "b2": 12, "b3": 13}  # name → host number in 10.250.0.0/24 and fd00:250::/64
PASS = Program().mov(R0, 1).exit().assemble()  # a connect4 program that changes nothing


def v4(host: int) -> str:
    return f"10.250.0.{host}"


def v6(host: int) -> str:
    return f"fd00:250::{host}"


# Services (address, port, protocol) → (id, slot base). Backends are written per test.
SVC_SPREAD = maps.ServiceKey("10.96.250.1", 80, "TCP")
SVC_AFFINITY = maps.ServiceKey("10.96.250.2", 80, "TCP")
SVC_UDP = maps.ServiceKey("10.96.250.3", 53, "UDP")
SVC_REJECT_TCP = maps.ServiceKey("10.96.250.4", 80, "TCP")
SVC_REJECT_UDP = maps.ServiceKey("10.96.250.4", 53, "UDP")
SVC_SHRINK = maps.ServiceKey("10.96.250.5", 80, "TCP")
SVC_V6 = maps.ServiceKey("fd00:96::1", 80, "TCP")

# --- the set-up ----------------------------------------------------------------------------


@dataclass
class Lab:
    prefix: str
    client: str
    cgroup: str
    maps: dict[str, bpf.BpfMap] = field(default_factory=dict)
    prog_fds: dict[str, int] = field(default_factory=dict)
    link_fds: dict[str, int] = field(default_factory=dict)  # by program name
    namespaces: list[str] = field(default_factory=list)
    servers: Servers | None = None

    def run(self, *ops: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Run the client (in the test cgroup, in the client namespace) over `ops`."""
        return run_client(self.cgroup, self.client, *ops)

    def in_client(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={netns_path(self.client)}", "--", *argv],
                              capture_output=True, text=True, timeout=10, check=False)

    def set_service(self, key: maps.ServiceKey, service_id: int, base: int, backends: list[str],
                    flags: int = 0, affinity: int = 0) -> None:
        """Write the backends' slots first, then the service entry (as the writer does)."""
        fam = key.family
        port = TCP_PORT if key.protocol == "TCP" else UDP_PORT
        addr = v6 if fam == 6 else v4
        slots = [(maps.pack_slot(base + i), maps.Backend(addr(BACKENDS[b]), port).pack())
                 for i, b in enumerate(backends)]
        self.maps[f"backends{fam}"].update_batch(slots)
        value = maps.ServiceValue(service_id, len(backends), flags, base, affinity)
        self.maps[f"services{fam}"].update(key.pack(), value.pack())

    def detach(self) -> None:
        """Close the links (detaching the programs), the programs and the maps."""
        while self.link_fds:
            bpf.close_fd(self.link_fds.popitem()[1])
        for fd in self.prog_fds.values():
            bpf.close_fd(fd)
        self.prog_fds.clear()
        for m in self.maps.values():
            m.close()


def _build(lab: Lab) -> None:
    for name in [lab.client, *(f"{lab.prefix}-{b}" for b in BACKENDS)]:
        ip("netns", "add", name)
        lab.namespaces.append(name)
    c = lab.client
    ip("-n", c, "link", "set", "lo", "up")
    ip("-n", c, "link", "add", "br0", "type", "bridge")
    ip("-n", c, "addr", "add", "10.250.0.1/24", "dev", "br0")
    ip("-n", c, "addr", "add", "fd00:250::1/64", "dev", "br0", "nodad")
    ip("-n", c, "link", "set", "br0", "up")
    lab.servers = Servers()
    for name, host in BACKENDS.items():
        ns = f"{lab.prefix}-{name}"
        ip("-n", c, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", c, "link", "set", f"v{name}", "master", "br0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{v4(host)}/24", "dev", "eth0")
        ip("-n", ns, "addr", "add", f"{v6(host)}/64", "dev", "eth0", "nodad")
        ip("-n", ns, "link", "set", "eth0", "up")
        lab.servers.add(name, ns)
    lab.servers.thread.start()
    # Conntrack only tracks a namespace whose rules use it: one `ct state` rule turns it on,
    # so the conntrack check below sees the backend flows (and must not see the service).
    if shutil.which("nft"):
        script = ("table inet pxtest {\n chain out {\n type filter hook output priority 0\n"
                  " ct state new counter\n }\n}\n")
        subprocess.run(["nsenter", f"--net={netns_path(c)}", "--", "nft", "-f", "-"], input=script,
                       text=True, capture_output=True, check=True)

    os.mkdir(lab.cgroup)
    lab.maps.update({name: bpf.BpfMap.create(spec) for name, spec in maps.MAPS.items()})
    lab.prog_fds.update(programs.load({name: m.fd for name, m in lab.maps.items()}))
    cgroup_fd = bpf.open_cgroup(lab.cgroup)
    try:
        for spec in maps.PROGRAMS:
            lab.link_fds[spec.name] = bpf.link_create(lab.prog_fds[spec.name], cgroup_fd, spec.attach_type)
    finally:
        bpf.close_fd(cgroup_fd)

    lab.set_service(SVC_SPREAD, 1, 0, ["b1", "b2", "b3"])
    lab.set_service(SVC_AFFINITY, 2, 10, ["b1", "b2", "b3"], affinity=10800)
    lab.set_service(SVC_UDP, 3, 20, ["b1", "b2", "b3"])
    lab.set_service(SVC_REJECT_TCP, 4, 0, [], flags=maps.F_REJECT)
    lab.set_service(SVC_REJECT_UDP, 5, 0, [], flags=maps.F_REJECT)
    lab.set_service(SVC_SHRINK, 6, 30, ["b1", "b2", "b3"])
    lab.set_service(SVC_V6, 7, 0, ["b1", "b2", "b3"])


def _teardown(lab: Lab) -> None:
    lab.detach()
    if lab.servers is not None:
        lab.servers.close()
    for name in reversed(lab.namespaces):
        kill_netns_processes(name)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
    if os.path.isdir(lab.cgroup):
        with open(f"{lab.cgroup}/cgroup.procs", encoding="ascii") as procs:
            stuck = procs.read().split()  # clients that hung
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(lab.cgroup)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = new_prefix()
    lab = Lab(prefix=prefix, client=f"{prefix}-client",
              cgroup=os.path.join(bpf.cgroup2_root(), f"proxyctl-test-{os.getpid()}"))
    try:
        _build(lab)
        yield lab
    finally:
        _teardown(lab)


# --- the maps --------------------------------------------------------------------------------


def test_update_batch_of_70000_entries_is_fast_and_reads_back() -> None:
    spec = maps.MAPS["backends4"]
    items = [(maps.pack_slot(i), maps.Backend(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 8080).pack())
             for i in range(70_000)]
    with bpf.BpfMap.create(spec) as m:
        start = time.perf_counter()
        assert m.update_batch(items) == 70_000
        elapsed = time.perf_counter() - start
        assert elapsed < 0.3, f"update_batch of 70,000 entries took {elapsed:.3f} s"
        assert dict(m.items()) == dict(items)
        gone = [k for k, _ in items[:1000]]
        assert m.delete_batch([maps.pack_slot(999_999), *gone, maps.pack_slot(999_998)]) == 1000
        assert m.lookup(gone[0]) is None and m.lookup(items[1000][0]) == items[1000][1]
        assert m.delete(items[1000][0]) and not m.delete(items[1000][0])
        with pytest.raises(ApplyError, match="key of 3 bytes"):
            m.update(b"abc", items[0][1])


def test_map_dump_json_is_bpftools_and_open_pinned_checks_the_layout() -> None:
    root = bpf.bpffs_root()
    pin_dir = os.path.join(root, f"proxyctl-test-{os.getpid()}")
    os.mkdir(pin_dir)
    path = os.path.join(pin_dir, "services4")
    try:
        with bpf.BpfMap.create(maps.MAPS["services4"]) as m:
            for i in range(5):
                m.update(maps.ServiceKey(f"10.96.0.{i}", 53, "UDP").pack(), maps.ServiceValue(i, 2, 0, i * 2, 0).pack())
            m.pin(path)
        real = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path],
                                         capture_output=True, text=True, check=True).stdout)
        ours = bpf.map_dump_json(path)
        assert sorted(map(json.dumps, ours)) == sorted(map(json.dumps, real)) and len(ours) == 5
        with bpf.BpfMap.open_pinned(path, maps.MAPS["services4"]) as again:
            assert again.name == "pxc_services4" and len(list(again.items())) == 5
        with pytest.raises(ApplyError, match="does not have the layout of services6"):
            bpf.BpfMap.open_pinned(path, maps.MAPS["services6"])
        prog = bpf.load_program("cgroup_sock_addr", "cgroup_inet4_connect", PASS, "pxc_test")
        try:
            bpf.pin(prog, os.path.join(pin_dir, "prog"))
        finally:
            bpf.close_fd(prog)
        with pytest.raises(ApplyError, match="is not a pinned map"):
            bpf.BpfMap.open_pinned(os.path.join(pin_dir, "prog"))
    finally:
        for name in ("services4", "prog"):
            bpf.unpin(os.path.join(pin_dir, name))
        os.rmdir(pin_dir)


def test_a_pinned_link_keeps_its_program_attached_and_swaps_it_atomically() -> None:
    cgroup = os.path.join(bpf.cgroup2_root(), f"proxyctl-test-{os.getpid()}-links")
    pin_dir = os.path.join(bpf.bpffs_root(), f"proxyctl-test-{os.getpid()}-links")
    link_path = os.path.join(pin_dir, "connect4")
    os.mkdir(cgroup)
    os.mkdir(pin_dir)
    progs = [bpf.load_program("cgroup_sock_addr", "cgroup_inet4_connect", PASS, name)
             for name in ("pxc_test_a", "pxc_test_b")]
    try:
        cgroup_fd = bpf.open_cgroup(cgroup)
        link = bpf.link_create(progs[0], cgroup_fd, "cgroup_inet4_connect")
        bpf.close_fd(cgroup_fd)
        bpf.pin(link, link_path)
        bpf.close_fd(link)  # the pin holds it
        assert [p["name"] for p in bpf.cgroup_programs(cgroup)] == ["pxc_test_a"]
        link = bpf.obj_get(link_path)
        info = bpf.link_info(link)
        assert info["attach_type"] == "cgroup_inet4_connect" and info["prog_id"] == bpf.prog_info(progs[0])["id"]
        bpf.link_update(link, progs[1])
        assert [(p["name"], p["attach_type"]) for p in bpf.cgroup_programs(cgroup)] == [
            ("pxc_test_b", "cgroup_inet4_connect")]
        bpf.link_detach(link)
        bpf.close_fd(link)
        assert bpf.cgroup_programs(cgroup) == []
    finally:
        bpf.unpin(link_path)
        for fd in progs:
            bpf.close_fd(fd)
        os.rmdir(pin_dir)
        os.rmdir(cgroup)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_the_capability_the_error_says_so_in_one_line() -> None:
    code = ("from kubectl_proxyctl.system import bpf\n"
            "from kubectl_proxyctl.modes.ebpf import maps\n"
            "try:\n    bpf.BpfMap.create(maps.MAPS['services4'])\n"
            "except bpf.BpfError as exc:\n    print(exc)\n")
    done = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code],
                          capture_output=True, text=True, check=True)
    assert done.stdout == "bpf(BPF_MAP_CREATE pxc_services4): EPERM (need CAP_BPF/root)\n"


def test_the_mounts_are_found() -> None:
    with open("/proc/mounts", encoding="utf-8") as f:
        mounts = {tuple(line.split()[1:3]) for line in f}
    assert (bpf.bpffs_root(), "bpf") in mounts
    assert (bpf.cgroup2_root(), "cgroup2") in mounts


# --- the programs ----------------------------------------------------------------------------


def test_connections_spread_evenly_over_three_backends(lab: Lab) -> None:
    (results,) = lab.run({"kind": "tcp", "ip": SVC_SPREAD.ip, "port": 80, "count": 1000})
    got = answers(results)
    assert set(got) == set(BACKENDS), got
    for name in BACKENDS:
        assert abs(got[name] / 10 - 33.3) <= 5, got
    # getpeername names the service, not the backend
    assert {tuple(r["peer"]) for r in results} == {(SVC_SPREAD.ip, 80)}


def test_addresses_that_are_no_service_are_left_alone(lab: Lab) -> None:
    (direct,), (nowhere,) = lab.run({"kind": "tcp", "ip": v4(12), "port": TCP_PORT},
                                    {"kind": "tcp", "ip": "10.96.250.99", "port": 80})
    assert direct["answer"] == "b2" and direct["peer"] == [v4(12), TCP_PORT]
    assert nowhere["errno"] == errno.ENETUNREACH


def test_clientip_affinity_keeps_one_backend(lab: Lab) -> None:
    (results,) = lab.run({"kind": "tcp", "ip": SVC_AFFINITY.ip, "port": 80, "count": 50})
    got = answers(results)
    assert len(got) == 1 and set(got) <= set(BACKENDS), got
    entries = list(lab.maps["affinity4"].items())
    assert len(entries) == 1
    value = maps.AffinityValue.unpack(entries[0][1])
    assert (value.ip, value.port) == (v4(BACKENDS[next(iter(got))]), TCP_PORT)
    assert maps.AffinityKey.unpack(entries[0][0]).service_id == 2


def test_udp_replies_come_from_the_service_address(lab: Lab) -> None:
    unconnected, connected = lab.run(
        {"kind": "udp", "ip": SVC_UDP.ip, "port": 53, "connected": False, "count": 60},
        {"kind": "udp", "ip": SVC_UDP.ip, "port": 53, "connected": True, "count": 30})
    assert set(answers(unconnected)) == set(BACKENDS), answers(unconnected)
    assert {tuple(r["source"]) for r in unconnected} == {(SVC_UDP.ip, 53)}
    assert set(answers(connected)) <= set(BACKENDS) and len(answers(connected)) > 1
    assert {tuple(r["peer"]) for r in connected} == {(SVC_UDP.ip, 53)}
    assert {tuple(r["source"]) for r in connected} == {(SVC_UDP.ip, 53)}


def test_a_service_without_endpoints_refuses_at_once(lab: Lab) -> None:
    tcp, udp = lab.run({"kind": "tcp", "ip": SVC_REJECT_TCP.ip, "port": 80, "count": 5},
                       {"kind": "udp", "ip": SVC_REJECT_UDP.ip, "port": 53, "connected": False})
    assert all(r.get("errno") == errno.ECONNREFUSED for r in tcp), tcp  # not EPERM
    assert {r["error"] for r in tcp} == {"ConnectionRefusedError"}
    assert max(r["seconds"] for r in tcp) < 0.2
    assert udp[0].get("errno") == errno.ECONNREFUSED


def test_without_set_retval_a_refusal_is_eperm(lab: Lab) -> None:
    """What kernels before 5.18 give (programs.load falls back to this build there); the
    swap goes through link_update while the links stay attached."""
    fds = {name: m.fd for name, m in lab.maps.items()}
    old = programs.balance(programs.LAYOUTS[4], fds, set_retval=False)
    prog = bpf.load_program(programs.PROG_TYPE, "cgroup_inet4_connect", old, "pxc_connect4", programs.LICENSE)
    link = lab.link_fds["pxc_connect4"]
    try:
        bpf.link_update(link, prog)
        (tcp,) = lab.run({"kind": "tcp", "ip": SVC_REJECT_TCP.ip, "port": 80})
        assert tcp[0].get("errno") == errno.EPERM, tcp
    finally:
        bpf.link_update(link, lab.prog_fds["pxc_connect4"])
        bpf.close_fd(prog)
    (tcp,) = lab.run({"kind": "tcp", "ip": SVC_REJECT_TCP.ip, "port": 80})
    assert tcp[0].get("errno") == errno.ECONNREFUSED


def test_a_removed_backend_gets_no_new_connections(lab: Lab) -> None:
    (before,) = lab.run({"kind": "tcp", "ip": SVC_SHRINK.ip, "port": 80, "count": 60})
    assert set(answers(before)) == set(BACKENDS)
    lab.set_service(SVC_SHRINK, 6, 40, ["b1", "b3"])  # a fresh slot range, then the flip
    lab.maps["backends4"].delete_batch([maps.pack_slot(s) for s in (30, 31, 32)])
    (after,) = lab.run({"kind": "tcp", "ip": SVC_SHRINK.ip, "port": 80, "count": 200})
    assert set(answers(after)) == {"b1", "b3"}, answers(after)


def test_conntrack_never_sees_the_service_address(lab: Lab) -> None:
    lab.run({"kind": "tcp", "ip": SVC_SPREAD.ip, "port": 80, "count": 10},
            {"kind": "udp", "ip": SVC_UDP.ip, "port": 53, "connected": False, "count": 5})
    service = lab.in_client("conntrack", "-L", "-d", SVC_SPREAD.ip)
    udp = lab.in_client("conntrack", "-L", "-d", SVC_UDP.ip)
    assert service.stdout.strip() == "" and udp.stdout.strip() == "", service.stdout + udp.stdout
    if shutil.which("nft"):  # conntrack is on in the client namespace: the flows are there, to backends
        backend = lab.in_client("conntrack", "-L", "-d", v4(11))
        assert f"dport={TCP_PORT}" in backend.stdout, backend.stdout + backend.stderr


def test_an_ipv6_service_balances_tcp(lab: Lab) -> None:
    (results,) = lab.run({"kind": "tcp", "ip": SVC_V6.ip, "port": 80, "count": 60})
    assert set(answers(results)) == set(BACKENDS), answers(results)
    assert {tuple(r["peer"]) for r in results} == {(SVC_V6.ip, 80)}


def test_a_dual_stack_socket_reaches_an_ipv4_service_by_its_mapped_address(lab: Lab) -> None:
    mapped_tcp, mapped_udp = f"::ffff:{SVC_SPREAD.ip}", f"::ffff:{SVC_UDP.ip}"
    tcp, udp = lab.run({"kind": "tcp", "ip": mapped_tcp, "port": 80, "count": 30},
                       {"kind": "udp", "ip": mapped_udp, "port": 53, "connected": False, "count": 30})
    assert set(answers(tcp)) == set(BACKENDS), answers(tcp)
    assert {tuple(r["peer"]) for r in tcp} == {(mapped_tcp, 80)}
    assert set(answers(udp)) == set(BACKENDS), answers(udp)
    assert {tuple(r["source"]) for r in udp} == {(mapped_udp, 53)}


def test_cgroup_programs_are_bpftools_and_teardown_leaves_the_cgroup_empty(lab: Lab) -> None:
    def bpftool_show() -> list[dict[str, Any]]:
        done = subprocess.run(["bpftool", "-j", "cgroup", "show", lab.cgroup],
                              capture_output=True, text=True, check=True)
        shown: list[dict[str, Any]] = json.loads(done.stdout.strip() or "[]")  # nothing at all when empty
        return shown

    keys = ("id", "attach_type", "attach_flags", "name")
    ours = bpf.cgroup_programs(lab.cgroup)
    assert [{k: e[k] for k in keys} for e in bpftool_show()] == ours
    assert sorted((e["name"], e["attach_type"]) for e in ours) == sorted(
        (spec.name, spec.attach_type) for spec in maps.PROGRAMS)
    lab.detach()
    assert bpftool_show() == [] and bpf.cgroup_programs(lab.cgroup) == []
