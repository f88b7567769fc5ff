"""IPVS mode's writer against strict, stateful fakes of the kernel's IPVS table, ipsets,
dummy interface and iptables (the real kernel is tests/vm/, in a VM).

The fakes refuse what the kernel refuses (adding a virtual or real server that exists,
deleting one that does not, a real server for a missing virtual server, a member that does
not fit its set's type, a member of a missing set), and count every write, so a test can
say how much a sync touched. `FakeIpvs.save()` prints the table as `ipvsadm -Sn` does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

import pytest

from fakes import FakeIptables
from kubectl_proxyctl.errors import ApplyError, ConfigError
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.ipvs import writer as ipvs_writer
from kubectl_proxyctl.modes.ipvs.render import Options, render
from kubectl_proxyctl.modes.ipvs.writer import IpvsSystem, IpvsWriter, node_sysctls
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.system.ipvs import KernelReal, KernelService, sched_flag_bits
from enginehelpers import endpoint, endpoint_slice, node, service

NODE_IP = "172.18.0.2"
Key = tuple[str, str, int]


@dataclass
class _VS:
    scheduler: str
    persistent: int
    flags: int
    reals: dict[tuple[str, int], list[int]] = field(default_factory=dict)  # → [weight, active, inactive]


class FakeIpvs:
    def __init__(self) -> None:
        self.table: dict[Key, _VS] = {}
        self.writes: list[tuple[Any, ...]] = []


    def defer(self, on: bool) -> None:
        pass  # a fake applies every write at once

    def flush(self) -> None:
        pass
    def services(self, reals: bool = True) -> list[KernelService]:
        return [KernelService(*k, v.scheduler, v.persistent, v.flags,
                              tuple(KernelReal(a, p, w, act, ina) for (a, p), (w, act, ina) in v.reals.items())
                              if reals else ())
                for k, v in self.table.items()]

    def reals(self, key: Key) -> list[KernelReal]:
        if key not in self.table:
            raise ApplyError(f"no such virtual server {key}")
        return [KernelReal(a, p, w, act, ina) for (a, p), (w, act, ina) in self.table[key].reals.items()]

    def add_service(self, key: Key, scheduler: str, persistent: int, flags: int) -> None:
        if key in self.table:
            raise ApplyError(f"virtual server {key} exists")
        self.writes.append(("add", key))
        self.table[key] = _VS(scheduler, persistent, flags)

    def update_service(self, key: Key, scheduler: str, persistent: int, flags: int) -> None:
        vs = self.table[key]
        self.writes.append(("update", key))
        vs.scheduler, vs.persistent, vs.flags = scheduler, persistent, flags

    def delete_service(self, key: Key) -> None:
        if key not in self.table:
            raise ApplyError(f"no such virtual server {key}")
        self.writes.append(("del", key))
        del self.table[key]

    def add_real(self, key: Key, address: str, port: int, weight: int = 1) -> None:
        reals = self.table[key].reals
        if (address, port) in reals:
            raise ApplyError("real server exists")
        self.writes.append(("add-real", key, address, port))
        reals[(address, port)] = [weight, 0, 0]

    def set_weight(self, key: Key, address: str, port: int, weight: int) -> None:
        self.writes.append(("weight", key, address, port, weight))
        self.table[key].reals[(address, port)][0] = weight

    def delete_real(self, key: Key, address: str, port: int) -> None:
        self.writes.append(("del-real", key, address, port))
        del self.table[key].reals[(address, port)]

    def save(self) -> str:
        """`ipvsadm -Sn`, sorted like the renderer sorts."""
        flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
        lines = []
        for (proto, addr, port), vs in sorted(self.table.items(), key=lambda kv: (
                kv[0][0], ipaddress.ip_address(kv[0][1]).version, ipaddress.ip_address(kv[0][1]).packed, kv[0][2])):
            where = f"{addr}:{port}"
            head = f"-A {flag[proto]} {where} -s {vs.scheduler}"
            if vs.flags:
                head += " -b mh-port"
            if vs.persistent:
                head += f" -p {vs.persistent}"
            lines.append(head)
            for (a, p), (w, _, _) in sorted(vs.reals.items(), key=lambda kv: (ipaddress.ip_address(kv[0][0]).packed,
                                                                               kv[0][1])):
                lines.append(f"-a {flag[proto]} {where} -r {a}:{p} -m -w {w}")
        return "\n".join(lines) + "\n"


class FakeIpset:
    def __init__(self) -> None:
        self.sets: dict[str, tuple[str, set[str]]] = {}
        self.writes = 0


    def defer(self, on: bool) -> None:
        pass  # a fake applies every write at once

    def flush(self) -> None:
        pass
    def exists(self, name: str) -> bool:
        return name in self.sets

    def ensure(self, name: str, type_: str, family: str = "inet") -> bool:
        if name in self.sets:
            return False
        assert len(name) <= 31, name
        self.sets[name] = (type_, set())
        return True

    def members(self, name: str) -> set[str] | None:
        return set(self.sets[name][1]) if name in self.sets else None

    @staticmethod
    def _check(type_: str, member: str) -> None:
        dims = type_.split(":", 1)[1].split(",")
        parts = member.split(",")
        if dims == ["port"]:
            assert member.isdecimal() and 0 <= int(member) <= 65535, member
            return
        assert len(parts) == len(dims), (type_, member)
        for kind, part in zip(dims, parts):
            if kind == "port":
                proto, _, port = part.partition(":")
                assert proto in ("tcp", "udp", "sctp") and port.isdecimal(), member
            elif kind == "net":
                ipaddress.ip_network(part)
            else:
                ipaddress.ip_address(part)

    def add(self, name: str, type_: str, members: Iterable[str], family: str = "inet") -> None:
        if name not in self.sets:
            raise ApplyError(f"no set {name}")
        assert self.sets[name][0] == type_
        for m in members:
            self._check(type_, m)
            self.sets[name][1].add(m)
            self.writes += 1

    def delete(self, name: str, type_: str, members: Iterable[str], family: str = "inet") -> None:
        for m in members:
            self.sets[name][1].discard(m)
            self.writes += 1

    def destroy(self, name: str) -> bool:
        return self.sets.pop(name, None) is not None


class FakeDummy:
    def __init__(self, node_addresses: Iterable[str] = (NODE_IP, "127.0.0.1")) -> None:
        self.present = False
        self.bound: set[str] = set()
        self.node_addresses = list(node_addresses)


    def defer(self, on: bool) -> None:
        pass  # a fake applies every write at once

    def flush(self) -> None:
        pass
    def index(self) -> int | None:
        return 7 if self.present else None

    def ensure(self) -> int:
        self.present = True
        return 7

    def addresses(self) -> set[str]:
        return set(self.bound)

    def bind(self, addresses: Iterable[str]) -> None:
        assert self.present
        for a in addresses:
            assert a not in self.bound, a
            self.bound.add(a)

    def unbind(self, addresses: Iterable[str]) -> None:
        for a in addresses:
            self.bound.remove(a)

    def other_addresses(self) -> list[str]:
        return list(self.node_addresses)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(options: Options = Options()) -> tuple[IpvsWriter, FakeIpvs, FakeIpset, FakeDummy, FakeIptables]:
    ipvs, ipset, dummy, ipt = FakeIpvs(), FakeIpset(), FakeDummy(), FakeIptables()
    return IpvsWriter(IpvsSystem(ipvs, ipset, dummy, ipt), options=options, monotonic=Clock()), ipvs, ipset, dummy, ipt


def cluster(*, web_ips: Iterable[str] = ("10.244.1.5", "10.244.2.6"), dns_ips: Iterable[str] = ("10.244.1.7",),
            affinity: int | None = None, etp: str | None = None, extra: Iterable[dict[str, Any]] = ()) -> NodePlan:
    objects = [
        node("node1", NODE_IP),
        service("web", "10.96.0.10", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort",
                affinity=affinity, etp=etp),
        endpoint_slice("web", [endpoint(ip, "node1" if ip.startswith("10.244.1.") else "node2") for ip in web_ips],
                       [("http", 8080, "TCP")]),
        service("dns", "10.96.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("dns", [endpoint(ip, "node2") for ip in dns_ips], [("dns", 53, "UDP")]),
        *extra,
    ]
    state = state_from_objects(objects, warn=lambda m: None)
    return plan(state, ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)))


def test_a_first_sync_writes_exactly_the_rendered_state() -> None:
    w, ipvs, ipset, dummy, ipt = make()
    p = cluster()
    written = w.sync(p, True, set())
    rendered = render(p, Options(), local_addresses=[NODE_IP])
    want_ipvs = rendered.save_text().split("# ipset save\n")[0].removeprefix("# ipvsadm -Sn\n")
    assert ipvs.save() == want_ipvs
    assert "-A -t 172.18.0.2:30080 -s rr" in want_ipvs  # NodePort on the node address, not on 127.0.0.1
    assert "-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1" in want_ipvs
    assert dummy.bound == {"10.96.0.10", "10.96.0.53"}
    assert ipset.members("KUBE-CLUSTER-IP") == {"10.96.0.10,tcp:80", "10.96.0.53,udp:53"}
    assert ipset.members("KUBE-NODE-PORT-TCP") == {"30080"}
    assert ipset.members("KUBE-LOOP-BACK") == {"10.244.1.5,tcp:8080,10.244.1.5"}
    assert ipset.members("KUBE-IPVS-IPS") == {"10.96.0.10", "10.96.0.53"}
    assert len(ipset.sets) == 17
    nat = ipt.save("nat")
    assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in nat
    assert "--match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ" in nat
    assert "-j KUBE-IPVS-FILTER" in ipt.save("filter")
    assert written.full and written.rules > 0
    assert w.state_missing() == []


def test_an_endpoint_change_touches_only_that_real_server_and_its_sets() -> None:
    w, ipvs, ipset, dummy, ipt = make()
    w.sync(cluster(), True, set())
    ipvs.writes.clear()
    ipset.writes = 0
    payload = ipt.save()
    written = w.sync(cluster(web_ips=("10.244.1.5", "10.244.2.6", "10.244.1.9")), False, {"e2e/web"})
    assert not written.full
    # two virtual servers (ClusterIP, NodePort) gain the endpoint; its loop-back member is added
    assert sorted(ipvs.writes) == [("add-real", ("TCP", "10.96.0.10", 80), "10.244.1.9", 8080),
                                   ("add-real", ("TCP", NODE_IP, 30080), "10.244.1.9", 8080)]
    assert ipset.writes == 1 and "10.244.1.9,tcp:8080,10.244.1.9" in ipset.members("KUBE-LOOP-BACK")
    assert ipt.save() == payload  # the iptables rules did not change, so they were not restored


def test_a_removed_tcp_endpoint_drains_at_weight_zero_and_goes_once_idle() -> None:
    w, ipvs, _, _, _ = make()
    w.sync(cluster(), True, set())
    key = ("TCP", "10.96.0.10", 80)
    ipvs.table[key].reals[("10.244.2.6", 8080)][1] = 3  # three active connections
    w.sync(cluster(web_ips=("10.244.1.5",)), False, {"e2e/web"})
    assert ipvs.table[key].reals[("10.244.2.6", 8080)][0] == 0  # kept, weight 0
    assert ("10.244.2.6", 8080) not in ipvs.table[("TCP", NODE_IP, 30080)].reals or \
        ipvs.table[("TCP", NODE_IP, 30080)].reals[("10.244.2.6", 8080)][0] == 0
    w.before_sync(False, None, "IPv4")
    assert ("10.244.2.6", 8080) in ipvs.table[key].reals  # still busy
    ipvs.table[key].reals[("10.244.2.6", 8080)][1:] = [0, 0]
    w.before_sync(False, None, "IPv4")
    assert ("10.244.2.6", 8080) not in ipvs.table[key].reals
    assert not w.terminating


def test_a_removed_idle_tcp_endpoint_goes_at_once_as_in_kube_proxy() -> None:
    """kube-proxy's GracefulDeleteRS deletes a real server with no connection at once; only a
    busy one drains at weight 0."""
    w, ipvs, _, _, _ = make()
    w.sync(cluster(), True, set())
    key = ("TCP", "10.96.0.10", 80)
    ipvs.table[key].reals[("10.244.2.6", 8080)][2] = 1  # one inactive connection on the ClusterIP only
    w.sync(cluster(web_ips=("10.244.1.5",)), False, {"e2e/web"})
    assert ipvs.table[key].reals[("10.244.2.6", 8080)][0] == 0
    assert ("10.244.2.6", 8080) not in ipvs.table[("TCP", NODE_IP, 30080)].reals
    assert [t[0] for t in w.terminating] == [key]


def test_an_endpoint_back_before_it_drained_gets_weight_one_again() -> None:
    w, ipvs, _, _, _ = make()
    w.sync(cluster(), True, set())
    key = ("TCP", "10.96.0.10", 80)
    ipvs.table[key].reals[("10.244.2.6", 8080)][1] = 1
    w.sync(cluster(web_ips=("10.244.1.5",)), False, {"e2e/web"})
    w.sync(cluster(), False, {"e2e/web"})
    assert ipvs.table[key].reals[("10.244.2.6", 8080)][0] == 1
    assert not [t for t in w.terminating if t[0] == key]


def test_a_removed_udp_endpoint_goes_at_once() -> None:
    w, ipvs, _, _, _ = make()
    w.sync(cluster(dns_ips=("10.244.1.7", "10.244.2.8")), True, set())
    w.sync(cluster(dns_ips=("10.244.1.7",)), False, {"e2e/dns"})
    assert set(ipvs.table[("UDP", "10.96.0.53", 53)].reals) == {("10.244.1.7", 53)}


def test_affinity_is_persistence_and_mh_sets_its_flag() -> None:
    w, ipvs, _, _, _ = make(Options(scheduler="mh"))
    w.sync(cluster(affinity=600), True, set())
    vs = ipvs.table[("TCP", "10.96.0.10", 80)]
    assert (vs.scheduler, vs.persistent, vs.flags) == ("mh", 600, sched_flag_bits(["mh-port"]))
    w.sync(cluster(), False, {"e2e/web"})
    assert ipvs.table[("TCP", "10.96.0.10", 80)].persistent == 0


def test_etp_local_uses_local_endpoints_for_node_ports_and_fills_the_local_sets() -> None:
    w, ipvs, ipset, _, _ = make()
    w.sync(cluster(etp="Local"), True, set())
    assert set(ipvs.table[("TCP", NODE_IP, 30080)].reals) == {("10.244.1.5", 8080)}
    assert set(ipvs.table[("TCP", "10.96.0.10", 80)].reals) == {("10.244.1.5", 8080), ("10.244.2.6", 8080)}
    assert ipset.members("KUBE-NODE-PORT-LOCAL-TCP") == {"30080"}


def test_a_deleted_service_is_removed_and_its_address_unbound() -> None:
    w, ipvs, ipset, dummy, _ = make()
    w.sync(cluster(), True, set())
    objects_plan = cluster()
    without_dns = plan(state_from_objects([o for o in _objects_without("dns")], warn=lambda m: None),
                       objects_plan.config)
    w.sync(without_dns, False, {"e2e/dns"})
    assert ("UDP", "10.96.0.53", 53) not in ipvs.table
    assert "10.96.0.53" not in dummy.bound
    assert ipset.members("KUBE-CLUSTER-IP") == {"10.96.0.10,tcp:80"}


def _objects_without(name: str) -> list[dict[str, Any]]:
    return [node("node1", NODE_IP),
            service("web", "10.96.0.10", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort"),
            endpoint_slice("web", [endpoint("10.244.1.5", "node1"), endpoint("10.244.2.6", "node2")],
                           [("http", 8080, "TCP")])]


def test_a_full_sync_leaves_foreign_virtual_servers_alone_and_removes_our_stale_ones() -> None:
    w, ipvs, _, dummy, _ = make()
    ipvs.add_service(("TCP", "192.0.2.80", 80), "wlc", 0, 0)  # someone else's
    ipvs.add_real(("TCP", "192.0.2.80", 80), "192.0.2.81", 80)
    dummy.ensure()
    dummy.bind(["10.96.9.9"])  # left by an earlier run of ours
    ipvs.add_service(("TCP", "10.96.9.9", 443), "rr", 0, 0)
    w.sync(cluster(), True, set())
    assert ("TCP", "192.0.2.80", 80) in ipvs.table and ipvs.table[("TCP", "192.0.2.80", 80)].reals
    assert ("TCP", "10.96.9.9", 443) not in ipvs.table
    assert "10.96.9.9" not in dummy.bound


def test_ipvsadm_clear_is_noticed_and_a_full_sync_repairs_it() -> None:
    w, ipvs, _, _, _ = make()
    w.sync(cluster(), True, set())
    before = ipvs.save()
    ipvs.table.clear()  # ipvsadm -C
    missing = w.state_missing()
    assert missing and "IPVS virtual servers" in missing[0]
    w.sync(cluster(), True, set())
    assert ipvs.save() == before and w.state_missing() == []


def test_a_flushed_set_and_a_deleted_jump_are_noticed() -> None:
    w, _, ipset, _, ipt = make()
    w.sync(cluster(), True, set())
    del ipset.sets["KUBE-LOOP-BACK"]
    ipt.restore("*nat\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n")
    missing = w.state_missing()
    assert "ipset KUBE-LOOP-BACK" in missing
    assert "the jump from nat PREROUTING to KUBE-SERVICES" in missing


def test_a_kernel_refusal_is_an_apply_error_and_the_next_full_sync_recovers() -> None:
    w, ipvs, _, _, _ = make()
    w.sync(cluster(), True, set())
    ipvs.table[("TCP", "10.96.0.20", 80)] = _VS("rr", 0, 0)  # someone made it meanwhile
    extra = [service("api", "10.96.0.20", [{"name": "http", "port": 80}]),
             endpoint_slice("api", [endpoint("10.244.1.3", "node1")], [("http", 8080, "TCP")])]
    with pytest.raises(ApplyError):
        w.sync(cluster(extra=extra), False, {"e2e/api"})
    w.sync(cluster(extra=extra), True, set())
    assert set(ipvs.table[("TCP", "10.96.0.20", 80)].reals) == {("10.244.1.3", 8080)}


def test_node_sysctls_follow_kube_proxy() -> None:
    keys = dict(node_sysctls("6.1.0-57-amd64", strict_arp=False))
    assert keys["net/ipv4/vs/conntrack"] == 1 and keys["net/ipv4/vs/expire_nodest_conn"] == 1
    assert "net/ipv4/vs/conn_reuse_mode" not in keys and "net/ipv4/conf/all/arp_ignore" not in keys
    old = dict(node_sysctls("5.4.0-100-generic", strict_arp=True))
    assert old["net/ipv4/vs/conn_reuse_mode"] == 0
    assert (old["net/ipv4/conf/all/arp_ignore"], old["net/ipv4/conf/all/arp_announce"]) == (1, 2)


def test_without_ip_vs_the_writer_is_refused_naming_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import kubectl_proxyctl.system.ipvs as system_ipvs

    monkeypatch.setattr(system_ipvs, "PROC_IP_VS", "/nonexistent/ip_vs")
    monkeypatch.setattr(system_ipvs.shutil, "which", lambda name: None)
    monkeypatch.setattr(system_ipvs.os.path, "exists", lambda p: False)
    with pytest.raises(ConfigError, match=r"--mode ipvs: kernel module ip_vs is not loaded"):
        ipvs_writer.make_writer(ProxyConfig(node_name="n"))


def test_ipv6_sets_carry_the_kube_6_prefix() -> None:
    ipvs, ipset, dummy, ipt = FakeIpvs(), FakeIpset(), FakeDummy(["fc00::2"]), FakeIptables()
    w = IpvsWriter(IpvsSystem(ipvs, ipset, dummy, ipt), family=IPFamily.IPv6)
    objects = [node("node1", "fc00::2"),
               {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "v6", "namespace": "e2e"},
                "spec": {"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"], "ipFamilies": ["IPv6"],
                         "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}},
               {**endpoint_slice("v6", [endpoint("fd00:244::5", "node1")], [("p", 8080, "TCP")]),
                "addressType": "IPv6"}]
    p = plan(state_from_objects(objects, warn=lambda m: None),
             ProxyConfig(node_name="node1", family=IPFamily.IPv6))
    w.sync(p, True, set())
    assert ipset.members("KUBE-6-CLUSTER-IP") == {"fd00::10,tcp:80"}
    assert "KUBE-6-LOAD-BALANCER-SOURCE-CID" in ipset.sets  # cut at 31 characters
    assert set(ipvs.table[("TCP", "fd00::10", 80)].reals) == {("fd00:244::5", 8080)}


def test_excluded_virtual_servers_survive_a_full_sync_and_others_of_ours_do_not() -> None:
    ipvs, ipset, dummy, ipt = FakeIpvs(), FakeIpset(), FakeDummy(), FakeIptables()
    w = IpvsWriter(IpvsSystem(ipvs, ipset, dummy, ipt), exclude_cidrs=("10.96.9.0/28", "fd00::/8"))
    dummy.ensure()
    dummy.bind(["10.96.9.9", "10.96.8.8"])  # addresses of ours: their virtual servers look stale
    ipvs.add_service(("TCP", "10.96.9.9", 443), "wlc", 0, 0)  # in an excluded range
    ipvs.add_service(("TCP", "10.96.8.8", 443), "rr", 0, 0)
    w.sync(cluster(), True, set())
    assert ("TCP", "10.96.9.9", 443) in ipvs.table
    assert ("TCP", "10.96.8.8", 443) not in ipvs.table


def test_an_excluded_virtual_server_stays_when_its_service_goes() -> None:
    ipvs, ipset, dummy, ipt = FakeIpvs(), FakeIpset(), FakeDummy(), FakeIptables()
    w = IpvsWriter(IpvsSystem(ipvs, ipset, dummy, ipt), exclude_cidrs=("10.96.0.53/32",))
    config = ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",))
    w.sync(cluster(), True, set())
    w.sync(plan(state_from_objects(_objects_without("dns"), warn=lambda m: None), config), False, {"e2e/dns"})
    assert ("UDP", "10.96.0.53", 53) in ipvs.table
    assert "10.96.0.53" not in dummy.bound and ipset.members("KUBE-CLUSTER-IP") == {"10.96.0.10,tcp:80"}
    w.sync(plan(state_from_objects(_objects_without("dns"), warn=lambda m: None), config), True, set())
    assert ("UDP", "10.96.0.53", 53) in ipvs.table


class RecordingIpvs:
    """Only the timeouts call; refuses when told to, as a kernel without IPVS config support would."""

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def set_timeouts(self, tcp: int, tcp_fin: int, udp: int) -> None:
        if self.refuse:
            raise ApplyError("cannot set the IPVS timeouts: Operation not permitted")
        self.calls.append((tcp, tcp_fin, udp))


def test_timeouts_are_set_only_when_given_and_a_refusal_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    ipvs = RecordingIpvs()
    assert not ipvs_writer.apply_timeouts(ipvs, ProxyConfig(node_name="n"))
    assert ipvs.calls == []
    assert ipvs_writer.apply_timeouts(ipvs, ProxyConfig(node_name="n", ipvs_tcp_timeout=900, ipvs_udp_timeout=300))
    assert ipvs.calls == [(900, 0, 300)]  # 0: the kernel keeps its TCP FIN timeout
    assert not ipvs_writer.apply_timeouts(RecordingIpvs(refuse=True), ProxyConfig(node_name="n", ipvs_tcp_timeout=1))
    assert "cannot set the IPVS timeouts" in caplog.text


def test_the_timeouts_request_is_ipvs_set_config_with_u32_seconds() -> None:
    from pyroute2.netlink.generic import ipvs as genl_ipvs

    from kubectl_proxyctl.system.ipvs import IpvsKernel

    sent: list[Any] = []

    class Socket:
        class asyncore:
            _do_request = object()

        @staticmethod
        def _run_with_cleanup(fn: Any, msg: Any, msg_flags: int) -> None:
            sent.append(msg)

    kernel = IpvsKernel.__new__(IpvsKernel)
    kernel._ipvs = Socket()
    kernel.set_timeouts(900, 120, 0)
    (msg,) = sent
    msg.encode()
    assert msg["cmd"] == genl_ipvs.IPVS_CMD_SET_CONFIG
    # the attributes are the kernel's u32 seconds, as bytes (pyroute2 types them as raw data)
    assert msg.data.endswith(bytes.fromhex("0800040084030000" "0800050078000000" "0800060000000000"))


def test_dry_run_shows_the_timeouts_as_ipvsadm_set() -> None:
    p = cluster()
    assert "--set" not in ipvs_writer.dry_run(p)[0]
    timed = dataclasses.replace(p, config=dataclasses.replace(p.config, ipvs_tcp_timeout=900, ipvs_udp_timeout=300))
    text = ipvs_writer.dry_run(timed)[0]
    assert text.startswith("# ipvsadm -Sn\n--set 900 0 300\n-A -t ")


def test_affinity_timeouts_beyond_the_api_maximum_are_capped() -> None:
    objects = [node("node1", NODE_IP), service("s", "10.96.0.9", [{"name": "http", "port": 80}], affinity=2**40),
               endpoint_slice("s", [endpoint("10.244.1.5", "node1")], [("http", 80, "TCP")])]
    p = plan(state_from_objects(objects, warn=lambda m: None), ProxyConfig(node_name="node1"))
    assert "-A -t 10.96.0.9:80 -s rr -p 86400" in ipvs_writer.dry_run(p)[0]
