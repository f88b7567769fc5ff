"""The planner: kube-proxy's endpoint selection and per-service decisions, backend-neutral."""

from __future__ import annotations

import pytest

from flowhelpers import NODE, NODE_IP, default_config, endpoint, endpoint_slice, node, service, state_of
from kubectl_proxyctl.plan.planner import (
    DetectLocalMode,
    EntryKind,
    FilterAction,
    InternalMasquerade,
    ProxyConfig,
    TopologyMode,
    categorize_endpoints,
    plan,
)
from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.model import ClusterState, Endpoint, IPFamily, Protocol, ServicePort, ServicePortName


def ep(ip: str, node: str = "", ready: bool = True, serving: bool = True, terminating: bool = False,
       zones: tuple[str, ...] = (), nodes: tuple[str, ...] = ()) -> Endpoint:
    return Endpoint(ip, 80, ready=ready, serving=serving, terminating=terminating, node_name=node,
                    zone_hints=zones, node_hints=nodes)


def addrs(eps: tuple[Endpoint, ...]) -> list[str]:
    return [e.ip for e in eps]


# --- CategorizeEndpoints ----------------------------------------------------------------


def test_cluster_endpoints_are_the_ready_ones() -> None:
    eps = (ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=False), ep("10.0.0.3", ready=False, terminating=True))
    cluster, local, reachable, has_any, mode = categorize_endpoints(eps, True, False, NODE, "")
    assert addrs(cluster) == ["10.0.0.1"]
    assert local == ()
    assert reachable == cluster
    assert has_any and mode == TopologyMode.NONE


def test_cluster_falls_back_to_serving_terminating() -> None:
    eps = (ep("10.0.0.1", ready=False, serving=True, terminating=True),
           ep("10.0.0.2", ready=False, serving=False, terminating=True),
           ep("10.0.0.3", ready=False, serving=True, terminating=False))
    cluster, _, _, has_any, _ = categorize_endpoints(eps, True, False, NODE, "")
    assert addrs(cluster) == ["10.0.0.1"]
    assert has_any


def test_nothing_usable_means_no_endpoints() -> None:
    eps = (ep("10.0.0.1", ready=False, serving=False, terminating=True),)
    cluster, local, reachable, has_any, _ = categorize_endpoints(eps, True, True, NODE, "")
    assert cluster == local == reachable == ()
    assert not has_any


@pytest.mark.parametrize(
    "hints,zone,want,mode",
    [
        # Every ready endpoint hinted, one for our zone: only those.
        ((("a",), ("b",), ("a", "b")), "a", ["10.0.0.1", "10.0.0.3"], TopologyMode.PreferSameZone),
        # One ready endpoint without a hint: topology is ignored.
        ((("a",), (), ("b",)), "a", ["10.0.0.1", "10.0.0.2", "10.0.0.3"], TopologyMode.NONE),
        # Nothing hinted for our zone: ignored.
        ((("b",), ("b",), ("c",)), "a", ["10.0.0.1", "10.0.0.2", "10.0.0.3"], TopologyMode.NONE),
        # The node has no zone label: ignored.
        ((("a",), ("b",), ("a",)), "", ["10.0.0.1", "10.0.0.2", "10.0.0.3"], TopologyMode.NONE),
    ],
)
def test_zone_hints(hints: tuple[tuple[str, ...], ...], zone: str, want: list[str], mode: TopologyMode) -> None:
    eps = tuple(ep(f"10.0.0.{i + 1}", zones=h) for i, h in enumerate(hints))
    cluster, _, _, _, got_mode = categorize_endpoints(eps, True, False, NODE, zone)
    assert addrs(cluster) == want
    assert got_mode == mode


def test_not_ready_endpoints_do_not_count_for_hints() -> None:
    eps = (ep("10.0.0.1", zones=("a",)), ep("10.0.0.2", ready=False, serving=False), ep("10.0.0.3", zones=("b",)))
    cluster, _, _, _, mode = categorize_endpoints(eps, True, False, NODE, "a")
    assert addrs(cluster) == ["10.0.0.1"]
    assert mode == TopologyMode.PreferSameZone


def test_node_hints_win_over_zone_hints() -> None:
    eps = (ep("10.0.0.1", zones=("a",), nodes=(NODE,)), ep("10.0.0.2", zones=("a",), nodes=("other",)))
    cluster, _, _, _, mode = categorize_endpoints(eps, True, False, NODE, "a")
    assert addrs(cluster) == ["10.0.0.1"] and mode == TopologyMode.PreferSameNode
    cluster, _, _, _, mode = categorize_endpoints(eps, True, False, NODE, "a", prefer_same_node=False)
    assert addrs(cluster) == ["10.0.0.1", "10.0.0.2"] and mode == TopologyMode.PreferSameZone


def test_local_endpoints_prefer_ready_then_serving_terminating() -> None:
    eps = (ep("10.0.0.1", NODE), ep("10.0.0.2", NODE, ready=False, terminating=True), ep("10.0.0.3", "other"))
    cluster, local, reachable, has_any, _ = categorize_endpoints(eps, True, True, NODE, "")
    assert addrs(local) == ["10.0.0.1"]
    assert addrs(reachable) == ["10.0.0.1", "10.0.0.3"]
    eps = (ep("10.0.0.2", NODE, ready=False, terminating=True), ep("10.0.0.3", "other"))
    cluster, local, reachable, has_any, _ = categorize_endpoints(eps, True, True, NODE, "")
    assert addrs(cluster) == ["10.0.0.3"]
    assert addrs(local) == ["10.0.0.2"]
    # The terminating local one is reachable too: it gets an endpoint chain.
    assert addrs(reachable) == ["10.0.0.2", "10.0.0.3"]


def test_local_only_service() -> None:
    eps = (ep("10.0.0.1", NODE), ep("10.0.0.3", "other"))
    cluster, local, reachable, has_any, _ = categorize_endpoints(eps, False, True, NODE, "")
    assert cluster == () and addrs(local) == ["10.0.0.1"] and reachable == local and has_any
    eps = (ep("10.0.0.3", "other"),)
    cluster, local, reachable, has_any, _ = categorize_endpoints(eps, False, True, NODE, "")
    assert local == () and reachable == () and has_any


def test_topology_filtered_local_endpoints_stay_reachable() -> None:
    eps = (ep("10.0.0.1", NODE, zones=("b",)), ep("10.0.0.2", "other", zones=("a",)))
    cluster, local, reachable, _, _ = categorize_endpoints(eps, True, True, NODE, "a")
    assert addrs(cluster) == ["10.0.0.2"]
    assert addrs(local) == ["10.0.0.1"]
    assert addrs(reachable) == ["10.0.0.1", "10.0.0.2"]


# --- plan() -------------------------------------------------------------------------------


def _objects_basic() -> list[dict]:
    return [
        node(),
        service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80}]),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.2"), endpoint("10.180.0.10")], [("p80", 80)]),
        service("ns0", "empty", "172.30.0.40", [{"name": "", "port": 8080}]),
    ]


def test_plan_sorts_services_and_endpoints() -> None:
    p = plan(state_of(_objects_basic()), default_config())
    assert [str(sp.name) for sp in p.services] == ["ns0/empty", "ns1/svc1:p80"]
    svc1 = p.services[1]
    # kube-proxy sorts by the ip:port *string*.
    assert addrs(svc1.cluster_endpoints) == ["10.180.0.10", "10.180.0.2"]
    assert p.service(svc1.name) is svc1


def test_no_endpoints_rejects() -> None:
    p = plan(state_of(_objects_basic()), default_config())
    empty = p.services[0]
    assert not empty.has_any_endpoints
    assert empty.internal_filter == FilterAction.REJECT
    assert empty.external_filter == FilterAction.REJECT
    assert not empty.uses_cluster_chain and not empty.uses_external_chain
    assert p.no_local_endpoints_internal == 0 and p.no_local_endpoints_external == 0


def test_local_policies_without_local_endpoints_drop_and_count() -> None:
    objs = [
        node(),
        service("ns", "itp", "172.30.0.1", [{"name": "p", "port": 80}], itp="Local"),
        endpoint_slice("ns", "itp", [endpoint("10.1.0.1", "other")], [("p", 80)]),
        service("ns", "etp", "172.30.0.2", [{"name": "p", "port": 80, "nodePort": 30001}], type="LoadBalancer",
                etp="Local", lb_ips=["1.2.3.4"], hc_port=30000),
        endpoint_slice("ns", "etp", [endpoint("10.1.0.2", "other")], [("p", 80)]),
    ]
    p = plan(state_of(objs), default_config())
    etp, itp = p.services
    assert itp.internal_filter == FilterAction.DROP and itp.external_filter is None
    assert not itp.has_internal_endpoints and itp.has_any_endpoints
    assert etp.external_filter == FilterAction.DROP and etp.internal_filter is None
    assert etp.uses_external_chain and not etp.uses_local_chain and etp.uses_cluster_chain
    assert etp.health_check_node_port == 30000 and etp.local_ready_endpoints == 0
    assert p.no_local_endpoints_internal == 1 and p.no_local_endpoints_external == 1
    assert p.health_check_node_ports == {"ns/etp": 30000}
    assert p.local_ready_endpoints() == {"ns/etp": 0}


def test_health_check_port_needs_etp_local() -> None:
    sp = ServicePort(ServicePortName("ns", "lb", "p"), 80, Protocol.TCP, cluster_ips=("172.30.0.9",),
                     node_port=30009, health_check_node_port=30000)
    p = plan(ClusterState(ports={sp.name: sp}), default_config())
    assert p.services[0].health_check_node_port == 0


def test_entry_points_and_affinity() -> None:
    objs = [
        service("ns", "lb", "172.30.0.5", [{"name": "p", "port": 80, "nodePort": 30005}], type="LoadBalancer",
                external_ips=["192.168.99.1", "fd00::99"], lb_ips=["1.2.3.4", "fd00::1:2"], affinity=60),
        endpoint_slice("ns", "lb", [endpoint("10.1.0.5")], [("p", 8080)]),
    ]
    sp = plan(state_of(objs), default_config()).services[0]
    assert [(e.kind, e.ip, e.port) for e in sp.entry_points] == [
        (EntryKind.ClusterIP, "172.30.0.5", 80),
        (EntryKind.ExternalIP, "192.168.99.1", 80),
        (EntryKind.LoadBalancerIP, "1.2.3.4", 80),
        (EntryKind.NodePort, "", 30005),
    ]
    assert sp.affinity_seconds == 60
    assert sp.masquerade_external


def test_ipv6_plan_takes_only_ipv6() -> None:
    objs = [
        node(ips=[NODE_IP, "2001:db8::1"]),
        service("ns", "dual", "172.30.0.7", [{"name": "p", "port": 80}], cluster_ips=["172.30.0.7", "fd00:172:30::7"]),
        service("ns", "v4only", "172.30.0.8", [{"name": "p", "port": 80}]),
        endpoint_slice("ns", "dual", [endpoint("10.1.0.7")], [("p", 80)]),
        endpoint_slice("ns", "dual", [endpoint("fd00:10::0007")], [("p", 80)], name="dual-v6", family="IPv6"),
    ]
    p = plan(state_of(objs), ProxyConfig(node_name=NODE, family=IPFamily.IPv6, cluster_cidrs=("10.0.0.0/8", "fd00:10::/64")))
    assert [str(sp.name) for sp in p.services] == ["ns/dual:p"]
    sp = p.services[0]
    assert sp.cluster_ip == "fd00:172:30::7"
    assert addrs(sp.endpoints) == ["fd00:10::7"]  # normalised, other family ignored
    assert p.skipped == ((ServicePortName("ns", "v4only", "p"), "no IPv6 cluster IP"),)
    assert p.node_ips == ("2001:db8::1",) and p.primary_node_ip == "2001:db8::1"
    assert p.local_detector.value == "fd00:10::/64"
    assert not p.localhost_nodeports


@pytest.mark.parametrize(
    "addresses,match_all,ips,localhost",
    [
        ((), True, (), True),
        (("primary",), False, (NODE_IP,), False),
        (("192.168.0.0/24", "127.0.0.1/32"), False, (NODE_IP, "127.0.0.1"), True),
        (("192.168.0.0/16",), False, (NODE_IP, "192.168.1.2"), False),
        (("0.0.0.0/0",), True, (), True),
        (("2001:db8::/64",), True, (), True),  # none of the family: every address
        (("bogus", "192.168.1.0/24"), False, ("192.168.1.2",), False),
    ],
)
def test_nodeport_addresses(addresses: tuple[str, ...], match_all: bool, ips: tuple[str, ...], localhost: bool) -> None:
    p = plan(ClusterState(), default_config(nodeport_addresses=addresses))
    assert p.nodeport_match_all is match_all
    assert p.nodeport_ips == ips
    assert p.localhost_nodeports is localhost


def test_local_detector_modes() -> None:
    state = state_of([node(pod_cidrs=["10.244.1.0/24", "fd00:244:1::/64"])])
    cases = [
        (dict(detect_local_mode=DetectLocalMode.ClusterCIDR), "10.0.0.0/8"),
        (dict(detect_local_mode=DetectLocalMode.NodeCIDR), "10.244.1.0/24"),
        (dict(detect_local_mode=DetectLocalMode.BridgeInterface, pod_bridge_interface="cbr0"), "cbr0"),
        (dict(detect_local_mode=DetectLocalMode.InterfaceNamePrefix, pod_interface_name_prefix="veth"), "veth"),
    ]
    for overrides, value in cases:
        p = plan(state, default_config(**overrides))
        assert p.local_detector.value == value and p.local_detector.implemented
        assert p.internal_masquerade == InternalMasquerade.NOT_LOCAL
    p = plan(state, default_config(cluster_cidrs=()))
    assert not p.local_detector.implemented and p.internal_masquerade == InternalMasquerade.NONE
    p = plan(state, default_config(masquerade_all=True))
    assert p.internal_masquerade == InternalMasquerade.ALL


def test_node_ips_default_to_the_node_object() -> None:
    p = plan(state_of([node(ips=["172.18.0.2"])]), ProxyConfig(node_name=NODE))
    assert p.node_ips == ("172.18.0.2",) and p.primary_node_ip == "172.18.0.2"
    p = plan(ClusterState(), ProxyConfig(node_name="nowhere"))
    assert p.node_ips == () and p.primary_node_ip == ""


def test_source_ranges_and_node_allowance() -> None:
    objs = [
        service("ns", "lb", "172.30.0.5", [{"name": "p", "port": 80}], type="LoadBalancer", lb_ips=["1.2.3.4"],
                source_ranges=["192.168.0.0/24", " 203.0.113.0/25", "fd00::/8"]),
        endpoint_slice("ns", "lb", [endpoint("10.1.0.5")], [("p", 80)]),
    ]
    sp = plan(state_of(objs), default_config()).services[0]
    assert sp.source_ranges == ("192.168.0.0/24", "203.0.113.0/25")
    assert sp.uses_firewall and sp.firewall_allows_node


def test_firewall_needs_endpoints() -> None:
    objs = [service("ns", "lb", "172.30.0.5", [{"name": "p", "port": 80}], type="LoadBalancer", lb_ips=["1.2.3.4"],
                    source_ranges=["203.0.113.0/25"])]
    sp = plan(state_of(objs), default_config()).services[0]
    assert not sp.uses_firewall and sp.external_filter == FilterAction.REJECT


def test_odd_input_never_raises() -> None:
    name = ServicePortName("ns", "odd", "p")
    ports = {
        name: ServicePort(name, 80, Protocol.TCP, cluster_ips=("not-an-ip",)),
        ServicePortName("ns", "ok", "p"): ServicePort(
            ServicePortName("ns", "ok", "p"), 80, Protocol.TCP, cluster_ips=("172.30.0.010",),
            external_ips=("garbage",), load_balancer_source_ranges=("nope",), node_port=99999,
        ),
        ServicePortName("ns", "none", "p"): ServicePort(ServicePortName("ns", "none", "p"), 80, Protocol.TCP),
    }
    endpoints = {
        ServicePortName("ns", "ok", "p"): (
            Endpoint("", 80), Endpoint("10.1.0.1", 0), Endpoint("fd00::1", 80), Endpoint("10.1.0.2", 80),
        ),
        ServicePortName("ns", "ghost", "p"): (Endpoint("10.1.0.9", 80),),
    }
    p = plan(ClusterState(ports=ports, endpoints=endpoints), default_config(masquerade_bit=99))
    assert [str(sp.name) for sp in p.services] == ["ns/ok:p"]
    ok = p.services[0]
    assert ok.cluster_ip == "172.30.0.10"  # Go reads leading zeros as decimal
    assert ok.external_ips == () and ok.source_ranges == () and ok.node_port == 0
    assert addrs(ok.endpoints) == ["10.1.0.2"]
    assert {str(n): why for n, why in p.skipped} == {
        "ns/none:p": "no IPv4 cluster IP",
        "ns/odd:p": "cluster IP 'not-an-ip' is not an IP address",
    }
    assert p.masquerade_mark == 0x4000


def test_total_endpoints_counts_every_endpoint_of_the_family() -> None:
    objs = [
        service("ns", "a", "172.30.0.1", [{"name": "p", "port": 80}]),
        endpoint_slice("ns", "a", [endpoint("10.1.0.1"), endpoint("10.1.0.2", ready=False, serving=False)], [("p", 80)]),
    ]
    assert plan(state_of(objs), default_config()).total_endpoints == 2


def test_plan_is_deterministic() -> None:
    state = state_of(_objects_basic())
    assert plan(state, default_config()) == plan(state, default_config())


def test_config_from_mapping() -> None:
    want = ProxyConfig(
        node_name="n1", family=IPFamily.IPv6, cluster_cidrs=("fd00::/64", "10.0.0.0/8"),
        detect_local_mode=DetectLocalMode.InterfaceNamePrefix, pod_interface_name_prefix="veth",
        masquerade_bit=12, nodeport_addresses=("primary",), localhost_nodeports=False,
        node_ips=("2001:db8::1",),
    )
    snake = ProxyConfig.from_mapping({
        "node_name": "n1", "family": "IPv6", "cluster_cidrs": "fd00::/64, 10.0.0.0/8",
        "detect_local_mode": "InterfaceNamePrefix", "pod_interface_name_prefix": "veth",
        "masquerade_bit": 12, "nodeport_addresses": ["primary"], "localhost_nodeports": False,
        "node_ips": ["2001:db8::1"],
    })
    camel = ProxyConfig.from_mapping({
        "nodeName": "n1", "family": "IPv6", "clusterCIDR": "fd00::/64,10.0.0.0/8",
        "detectLocalMode": "InterfaceNamePrefix", "podInterfaceNamePrefix": "veth",
        "masqueradeBit": 12, "nodePortAddresses": "primary", "localhostNodePorts": False,
        "nodeIPs": "2001:db8::1",
    })
    assert snake == want and camel == want


@pytest.mark.parametrize(
    "data,message",
    [
        ({"family": "IPv4"}, "needs node_name"),
        ({"node_name": "n", "bogus": 1}, "unknown proxy config field 'bogus'"),
        ({"node_name": "n", "family": "IPv5"}, "IPv5"),
        ({"node_name": "n", "masquerade_bit": 40}, "masquerade_bit"),
        ({"node_name": "n", "masquerade_all": "yes"}, "masquerade_all"),
        ({"node_name": "n", "node_ips": [1, 2]}, "node_ips"),
    ],
)
def test_config_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ProxyConfig.from_mapping(data)


def test_incremental_plan_equals_full_plan() -> None:
    """Re-planning only the changed Services gives exactly the full plan of the new state."""
    import dataclasses as dc

    from kubectl_proxyctl.kube.convert import state_from_objects
    from kubectl_proxyctl.plan.planner import ProxyConfig, plan as make_plan

    def objects(ready_b: bool, with_c: bool) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for i, name in enumerate(["a", "b", "c"]):
            if name == "c" and not with_c:
                continue
            out.append({"kind": "Service", "metadata": {"name": name, "namespace": "ns"},
                        "spec": {"clusterIP": f"10.96.0.{i + 1}", "ports": [{"name": "p", "port": 80}]}})
            ready = ready_b if name == "b" else True
            out.append({"kind": "EndpointSlice",
                        "metadata": {"name": f"{name}-1", "namespace": "ns",
                                     "labels": {"kubernetes.io/service-name": name}},
                        "ports": [{"name": "p", "port": 8080}],
                        "endpoints": [{"addresses": [f"10.244.{i}.1"], "conditions": {"ready": ready}}]})
        return out

    config = ProxyConfig(node_name="n1", cluster_cidrs=("10.244.0.0/16",))
    before = make_plan(state_from_objects(objects(True, True)), config)
    after_state = state_from_objects(objects(False, False))
    full = make_plan(after_state, config)
    incremental = make_plan(after_state, config, previous=before, changed={"ns/b", "ns/c"})
    assert incremental == full
    assert incremental.services[0] is before.services[0]  # ns/a was reused, not re-planned
    # a changed config re-plans everything
    other = dc.replace(config, masquerade_all=True)
    assert make_plan(after_state, other, previous=before, changed=set()) == make_plan(after_state, other)


def test_incremental_plans_over_random_change_sequences_equal_full_plans() -> None:
    """Many rounds of random adds, deletes, port renames and endpoint changes: after every
    round the spliced plan equals a full plan, including the internal sort keys and the
    per-Service index a later splice relies on."""
    import random

    from kubectl_proxyctl.plan.planner import ProxyConfig, plan as make_plan
    from kubectl_proxyctl.kube.convert import state_from_objects

    rng = random.Random(7)
    config = ProxyConfig(node_name="n1", cluster_cidrs=("10.244.0.0/16",))

    def objects(spec: dict[str, tuple[int, int, bool]]) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for name, (ports, eps, broken) in spec.items():
            i = int(name[1:])
            out.append({"kind": "Service", "metadata": {"name": name, "namespace": f"ns{i % 3}"},
                        "spec": {"clusterIP": "" if broken else f"10.96.{i // 250}.{i % 250 + 1}",
                                 "ports": [{"name": f"p{j}", "port": 80 + j} for j in range(ports)]}})
            out.append({"kind": "EndpointSlice",
                        "metadata": {"name": f"{name}-1", "namespace": f"ns{i % 3}",
                                     "labels": {"kubernetes.io/service-name": name}},
                        "ports": [{"name": f"p{j}", "port": 8080 + j} for j in range(ports)],
                        "endpoints": [{"addresses": [f"10.244.{i % 200}.{k + 1}"]} for k in range(eps)]})
        return out

    spec = {f"s{i}": (rng.randint(1, 3), rng.randint(0, 3), False) for i in range(40)}
    previous = make_plan(state_from_objects(objects(spec)), config)
    for _ in range(30):
        changed: set[str] = set()
        for _ in range(rng.randint(1, 6)):
            name = f"s{rng.randint(0, 60)}"
            if name in spec and rng.random() < 0.3:
                del spec[name]
            else:
                spec[name] = (rng.randint(1, 3), rng.randint(0, 3), rng.random() < 0.1)
            changed.add(f"ns{int(name[1:]) % 3}/{name}")
        state = state_from_objects(objects(spec))
        full = make_plan(state, config)
        incremental = make_plan(state, config, previous=previous, changed=changed)
        assert incremental == full
        assert incremental._keys == full._keys and dict(incremental._by_service) == dict(full._by_service)
        assert dict(incremental._index) == dict(full._index)
        previous = incremental


def test_service_cidrs_of_the_family_and_a_change_of_them_plans_everything_again() -> None:
    state = state_of([node(), service("ns", "a", "172.30.0.1", [{"name": "p", "port": 80}])]).replace(
        service_cidrs=("172.30.0.0/16", "fd00:30::/112"))
    v4 = plan(state, default_config())
    assert v4.service_cidrs == ("172.30.0.0/16",)
    assert plan(state, default_config(family=IPFamily.IPv6)).service_cidrs == ("fd00:30::/112",)
    wider = state.replace(service_cidrs=("172.30.0.0/15",))
    again = plan(wider, default_config(), previous=v4, changed=())
    assert again.service_cidrs == ("172.30.0.0/15",) and again == plan(wider, default_config())
