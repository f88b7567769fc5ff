"""eBPF mode's render and writer against a strict, stateful fake of the pinned maps.

The fake maps refuse what the kernel refuses (deleting a key that is not there, a key or
value of the wrong size) and count every write. The fake kernel also checks, at every
write of the services map, that each service entry's slot range is whole in the backends
map: that is the "a connect() never sees half a service" promise of the writer.
"""

from __future__ import annotations

from typing import Any, Iterable

import pytest

from enginehelpers import endpoint, endpoint_slice, node, service
from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.render import render
from kubectl_proxyctl.modes.ebpf.writer import EbpfWriter, dry_run
from kubectl_proxyctl.plan.planner import EntryKind, NodePlan, ProxyConfig, plan

NODE_IP = "172.18.0.2"


class FakeMap:
    def __init__(self, spec: maps.MapSpec, kernel: "FakeKernel") -> None:
        self.spec = spec
        self.data: dict[bytes, bytes] = {}
        self.kernel = kernel
        self.writes = 0

    def _check(self, key: bytes, value: bytes | None = None) -> None:
        if len(key) != self.spec.key_size or (value is not None and len(value) != self.spec.value_size):
            raise ApplyError(f"{self.spec.name}: wrong key/value size")

    def lookup(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def update(self, key: bytes, value: bytes) -> None:
        self.update_batch([(key, value)])

    def update_batch(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        items = list(items)
        for k, v in items:
            self._check(k, v)
        for k, v in items:
            self.data[k] = v
            self.writes += 1
        if self.spec.name.startswith("services"):
            self.kernel.check_whole()

    def delete(self, key: bytes) -> bool:
        return self.data.pop(key, None) is not None

    def delete_batch(self, keys: Iterable[bytes]) -> None:
        for k in keys:
            if k not in self.data:
                raise ApplyError(f"{self.spec.name}: no such key")
            del self.data[k]
            self.writes += 1

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.data.items())


class FakeKernel:
    def __init__(self) -> None:
        self.maps = {name: FakeMap(spec, self) for name, spec in maps.MAPS.items()}
        self.attached = False
        self.attach_calls = 0

    def map(self, name: str) -> FakeMap:
        return self.maps[name]

    def attach(self) -> list[str]:
        self.attach_calls += 1
        new, self.attached = not self.attached, True
        return [p.name for p in maps.PROGRAMS] if new else []

    def missing(self) -> list[str]:
        return [] if self.attached else ["the programs"]

    def check_whole(self) -> None:
        for fam in (4, 6):
            backends = self.maps[f"backends{fam}"].data
            for v in self.maps[f"services{fam}"].data.values():
                sv = maps.ServiceValue.unpack(v)
                for i in range(sv.count):
                    assert maps.pack_slot(sv.slot_base + i) in backends, "a service entry points at a missing slot"

    def writes(self) -> dict[str, int]:
        return {n: m.writes for n, m in self.maps.items() if m.writes}

    def reset_counts(self) -> None:
        for m in self.maps.values():
            m.writes = 0

    def held(self, fam: int = 4) -> dict[str, tuple[str, ...]]:
        """"ip:port/PROTO" → its backends (or ("reject",)), as a connect() would see them."""
        backends = {maps.unpack_slot(k): maps.Backend.unpack(v) for k, v in self.maps[f"backends{fam}"].data.items()}
        out = {}
        for k, v in self.maps[f"services{fam}"].data.items():
            key, sv = maps.ServiceKey.unpack(k), maps.ServiceValue.unpack(v)
            out[str(key)] = (("reject",) if sv.reject else
                             tuple(str(backends[sv.slot_base + i]) for i in range(sv.count)))
        return out


def cluster(*, web_ips: Iterable[str] = ("10.244.1.5", "10.244.2.6"), affinity: int | None = None,
            itp_local: bool = False, extra: Iterable[dict[str, Any]] = ()) -> NodePlan:
    web = service("web", "10.96.0.10", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort",
                  affinity=affinity, external_ips=("192.0.2.10",))
    if itp_local:
        web["spec"]["internalTrafficPolicy"] = "Local"
    objects = [
        node("node1", NODE_IP),
        web,
        endpoint_slice("web", [endpoint(ip, "node1" if ip.startswith("10.244.1.") else "node2") for ip in web_ips],
                       [("http", 8080, "TCP")]),
        service("dns", "10.96.0.53", [{"name": "dns", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("dns", [endpoint("10.244.2.7", "node2")], [("dns", 53, "UDP")]),
        *extra,
    ]
    state = state_from_objects(objects, warn=lambda m: None)
    return plan(state, ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",), nodeport_addresses=("primary",)))


def make() -> tuple[EbpfWriter, FakeKernel]:
    kernel = FakeKernel()
    return EbpfWriter(kernel, IPFamily.IPv4), kernel


WEB = ("10.244.1.5:8080", "10.244.2.6:8080")


def test_render_gives_every_address_a_socket_can_connect_to() -> None:
    entries = render(cluster())
    kinds = {str(k): (e.kind, e.name) for k, e in entries.items()}
    assert kinds == {
        "10.96.0.10:80/TCP": (EntryKind.ClusterIP, "e2e/web:http/TCP"),
        "192.0.2.10:80/TCP": (EntryKind.ExternalIP, "e2e/web:http/TCP"),
        f"{NODE_IP}:30080/TCP": (EntryKind.NodePort, "e2e/web:http/TCP"),
        "10.96.0.53:53/UDP": (EntryKind.ClusterIP, "e2e/dns:dns/UDP"),
    }
    node_port = entries[maps.ServiceKey(NODE_IP, 30080, "TCP")]
    assert node_port.flags == maps.F_EXTERNAL | maps.F_NODEPORT
    assert [b.flags for b in node_port.backends] == [maps.B_LOCAL, 0]


def test_render_refuses_where_nothing_serves_and_keeps_local_only_for_itp_local() -> None:
    entries = render(cluster(web_ips=("10.244.2.6",), itp_local=True))
    cluster_ip = entries[maps.ServiceKey("10.96.0.10", 80, "TCP")]
    assert cluster_ip.flags == maps.F_LOCAL | maps.F_REJECT and cluster_ip.backends == ()
    # from this node, external addresses reach the cluster-wide endpoints (kube-proxy's short-circuit)
    assert [str(b) for b in entries[maps.ServiceKey("192.0.2.10", 80, "TCP")].backends] == ["10.244.2.6:8080"]


def test_render_leaves_load_balancer_ips_with_source_ranges_to_the_nftables_table() -> None:
    lb = service("lb", "10.96.0.20", [{"name": "http", "port": 80, "nodePort": 30090}], type="LoadBalancer",
                 lb_ips=("203.0.113.5",), source_ranges=("198.51.100.0/24",))
    lb_open = service("lbo", "10.96.0.21", [{"name": "http", "port": 80, "nodePort": 30091}], type="LoadBalancer",
                      lb_ips=("203.0.113.6",))
    eps = [endpoint_slice(n, [endpoint("10.244.1.9", "node1")], [("http", 80, "TCP")]) for n in ("lb", "lbo")]
    keys = {str(k) for k in render(cluster(extra=[lb, lb_open, *eps]))}
    assert "203.0.113.6:80/TCP" in keys and "203.0.113.5:80/TCP" not in keys
    assert "10.96.0.20:80/TCP" in keys


def test_a_first_sync_writes_the_rendered_state_whole_then_attaches() -> None:
    w, k = make()
    written = w.sync(cluster(), True, set())
    assert written.full and k.attach_calls == 1
    assert k.held() == {"10.96.0.10:80/TCP": WEB, "192.0.2.10:80/TCP": WEB, f"{NODE_IP}:30080/TCP": WEB,
                        "10.96.0.53:53/UDP": ("10.244.2.7:53",)}
    # the service port's three entries share one slot range
    assert len(k.maps["backends4"].data) == 3
    names = {maps.unpack_name(v) for v in k.maps["names"].data.values()}
    assert names == {"e2e/web:http/TCP", "e2e/dns:dns/UDP"}


def test_a_restarted_engine_reads_the_maps_back_and_writes_nothing() -> None:
    w, k = make()
    w.sync(cluster(), True, set())
    k.reset_counts()
    again = EbpfWriter(k, IPFamily.IPv4)
    again.sync(cluster(), True, set())
    assert k.writes() == {}
    # and a change after the restart is a small partial write
    again.sync(cluster(web_ips=("10.244.1.5",)), False, {"e2e/web"})
    assert k.held()["10.96.0.10:80/TCP"] == ("10.244.1.5:8080",)


def test_an_endpoint_change_writes_one_fresh_range_flips_the_entries_and_frees_the_old_slots() -> None:
    w, k = make()
    w.sync(cluster(), True, set())
    k.reset_counts()
    w.sync(cluster(web_ips=("10.244.1.5", "10.244.2.6", "10.244.2.8")), False, {"e2e/web"})
    assert k.held()["10.96.0.10:80/TCP"] == (*WEB, "10.244.2.8:8080")
    # 3 new slots, 3 service entries flipped, 2 old slots freed; dns untouched
    assert k.writes() == {"backends4": 5, "services4": 3}
    assert len(k.maps["backends4"].data) == 4


def test_a_deleted_service_leaves_no_entry_slot_or_name() -> None:
    w, k = make()
    w.sync(cluster(), True, set())
    p = plan(state_from_objects([node("node1", NODE_IP)], warn=lambda m: None),
             ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)))
    w.sync(p, False, {"e2e/web", "e2e/dns"})
    assert k.held() == {} and k.maps["backends4"].data == {}
    assert set(k.maps["names"].data) == set()


def test_affinity_to_a_removed_backend_is_forgotten_and_to_a_survivor_kept() -> None:
    w, k = make()
    w.sync(cluster(affinity=600), True, set())
    sid = maps.ServiceValue.unpack(k.maps["services4"].data[maps.ServiceKey("10.96.0.10", 80, "TCP").pack()]).service_id
    aff = k.maps["affinity4"]
    aff.update(maps.AffinityKey(11, sid).pack(), maps.AffinityValue("10.244.1.5", 8080, 1).pack())
    aff.update(maps.AffinityKey(12, sid).pack(), maps.AffinityValue("10.244.2.6", 8080, 1).pack())
    w.sync(cluster(affinity=600, web_ips=("10.244.1.5",)), False, {"e2e/web"})
    assert [maps.AffinityKey.unpack(key).netns_cookie for key in aff.data] == [11]
    assert maps.ServiceValue.unpack(k.maps["services4"].data[maps.ServiceKey("10.96.0.10", 80, "TCP").pack()]
                                    ).affinity_seconds == 600


def test_a_full_sync_repairs_what_someone_deleted_from_the_maps() -> None:
    w, k = make()
    w.sync(cluster(), True, set())
    backends = k.maps["backends4"].data
    del backends[next(iter(backends))]  # `bpftool map delete` of one slot
    del k.maps["services4"].data[maps.ServiceKey("10.96.0.53", 53, "UDP").pack()]
    k.maps["services4"].data[maps.ServiceKey("10.96.9.9", 9, "TCP").pack()] = maps.ServiceValue(77, 0, 1, 0, 0).pack()
    w.sync(cluster(), True, set())
    assert k.held() == {"10.96.0.10:80/TCP": WEB, "192.0.2.10:80/TCP": WEB, f"{NODE_IP}:30080/TCP": WEB,
                        "10.96.0.53:53/UDP": ("10.244.2.7:53",)}
    assert len(backends) == 3  # the broken range's survivors are gone too


def test_a_failed_write_leaves_whole_entries_and_the_next_full_sync_finishes_it() -> None:
    w, k = make()
    w.sync(cluster(), True, set())

    def refuse(items: Any) -> None:
        raise ApplyError("bpf(BPF_MAP_UPDATE_BATCH services4): E2BIG")

    k.maps["services4"].update_batch = refuse  # type: ignore[method-assign]
    with pytest.raises(ApplyError):
        w.sync(cluster(web_ips=("10.244.2.6",)), False, {"e2e/web"})
    assert k.held()["10.96.0.10:80/TCP"] == WEB  # the old backends still serve
    del k.maps["services4"].update_batch
    w.sync(cluster(web_ips=("10.244.2.6",)), True, set())
    assert k.held()["10.96.0.10:80/TCP"] == ("10.244.2.6:8080",)
    assert len(k.maps["backends4"].data) == 2  # the failed sync's orphan range was freed


def test_two_families_share_the_names_map_without_meeting() -> None:
    k = FakeKernel()
    v4 = EbpfWriter(k, IPFamily.IPv4)
    v6 = EbpfWriter(k, IPFamily.IPv6)
    v4.sync(cluster(), True, set())
    six = service("web6", "fd00::10", [{"name": "http", "port": 80}])
    eps = endpoint_slice("web6", [endpoint("fd00:244::5", "node1")], [("http", 8080, "TCP")])
    eps["addressType"] = "IPv6"
    six["spec"]["ipFamilies"] = ["IPv6"]
    p6 = plan(state_from_objects([node("node1", "fd00::2"), six, eps], warn=lambda m: None),
              ProxyConfig(node_name="node1", family=IPFamily.IPv6))
    v6.sync(p6, True, set())
    assert k.held(6) == {"[fd00::10]:80/TCP": ("[fd00:244::5]:8080",)}
    v4.sync(cluster(), True, set())  # reads the shared names map: the IPv6 names are not its own
    assert len(k.maps["names"].data) == 3
    assert k.held(6) == {"[fd00::10]:80/TCP": ("[fd00:244::5]:8080",)}


def test_state_missing_names_detached_programs_and_the_next_sync_attaches_again() -> None:
    w, k = make()
    w.sync(cluster(), True, set())
    assert w.state_missing() == []
    k.attached = False
    assert w.state_missing() == ["the programs"]
    w.sync(cluster(), True, set())
    assert k.attach_calls == 2 and w.state_missing() == []


def test_dry_run_prints_the_entries_and_the_entry_point_table() -> None:
    text, summary = dry_run(cluster())
    assert "10.96.0.10:80/TCP e2e/web:http/TCP ClusterIP -> 10.244.1.5:8080 10.244.2.6:8080" in text
    assert "add table ip proxyctl-ebpf" in text
    table = text.split("add table", 1)[1]
    assert "10.96.0.10 . tcp" not in table and "192.0.2.10 . tcp . 80" in table  # no cluster IP element
    assert "4 service entries" in summary
