"""Packet-flow tests for the nftables backend: render → the real kernel → `nft -j` → trace.

The same flows as tests/test_flow_iptables.py (kube-proxy's packetFlowTest cases), over the
nftables transaction: each case is rendered, loaded with `nft -f` into a throwaway network
namespace (one per module; the table is removed between cases), read back with
`nft -j list table ip kube-proxy` (ip6 for IPv6) and traced with `rules.nft_trace`. So the
tracer sees the rules as the kernel holds them, not as we wrote them.

Expected outcomes are iptables mode's, except where kube-proxy's nftables mode differs on
purpose; each such row says why. The differences (reference §3.7 and the layout we follow,
kube-proxy's since 1.34):

* no localhost NodePorts: `127.0.0.1:<nodePort>` is not a node port at all;
* no ACCEPT rule for health-check node ports (iptables mode accepts them in KUBE-NODEPORTS
  past the firewall; nftables mode writes nothing for them);
* cluster-ips-check rejects traffic to a port a ClusterIP does not serve, and (with the
  service CIDRs given) drops traffic to unallocated addresses of the service range;
* LoadBalancerSourceRanges are enforced in filter-prerouting-pre-dnat / filter-output-pre-dnat
  before DNAT (the outcomes are the same as iptables mode's).

The endpoint checks run after DNAT (filter-input / filter-forward / filter-output at priority
0), so traffic the node itself sends to an externalIP / LB IP of an ETP:Local service with no
local endpoint is short-circuited to the cluster endpoints, as in iptables mode. In the layout
before 1.34 (kubernetes#131765, fixed by kubernetes#132456) filter-output ran before DNAT and
dropped it; test_external_traffic_policy_local_without_local_endpoints traces that layout too.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence, cast

import pytest

import flowhelpers
from flowhelpers import (
    EXTERNAL,
    EXTERNAL_BLOCKED,
    NODE,
    NODE_IP,
    NODE_IP_ALT,
    POD,
    Flow,
    default_config,
    endpoint,
    endpoint_slice,
    service,
)
from kubectl_proxyctl.engine.plan import DetectLocalMode, ProxyConfig
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.rules.trace import Origin, Packet, Verdict
from nfthelpers import NFT_SKIP, BuiltNft, Scratch, build_nft, scratch_netns
from test_flow_iptables import (
    BOTH,
    MASQ_ALL,
    MASQ_FLOWS,
    MASQ_OBJECTS,
    NO_DETECTOR,
    SIX,
    _lb,
    _terminating_cases,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("flow")


def check_flows(built: BuiltNft, flows: Sequence[Flow]) -> None:
    """flowhelpers.check_flows over the kernel's table (it only calls `built.trace`)."""
    flowhelpers.check_flows(cast(Any, built), flows)


def changed(flows: Sequence[Flow], overrides: dict[str, dict[str, Any]]) -> list[Flow]:
    """`flows` with some rows' output / masq replaced (every named row must exist)."""
    assert set(overrides) <= {f.name for f in flows}, set(overrides) - {f.name for f in flows}
    out = []
    for f in flows:
        c = overrides.get(f.name, {})
        out.append(Flow(f.name, f.src, f.dst, f.port, c.get("output", f.output), c.get("masq", f.masq),
                        f.origin, f.protocol))
    return out


# --- kube-proxy's six services ------------------------------------------------------------


def test_six_services(scratch: Scratch) -> None:
    check_flows(build_nft(scratch, SIX), [
        Flow("no match", "10.0.0.2", "10.0.0.3", 80, ""),
        Flow("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80"),
        # svc2 is ETP:Local without a local endpoint: nat-output short-circuits the node's own
        # connection to its external IP before service-endpoints-check (filter-output, after
        # DNAT) could drop it, as iptables mode does.
        Flow("LOCAL, to an ETP:Local external IP without local endpoints", NODE_IP, "192.168.99.22", 80,
             "10.180.0.2:80", masq=True, origin="node"),
        Flow("DROP", EXTERNAL, "192.168.99.22", 80, "DROP", origin="external"),
        # nftables: no ACCEPT rule for the health-check node port (iptables mode: ACCEPT).
        Flow("NodePortHealthCheck is not touched", NODE_IP, NODE_IP, 30000, "", origin="node"),
        Flow("NodePortHealthCheck from outside is not touched", EXTERNAL, NODE_IP, 30000, "", origin="external"),
        Flow("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
        Flow("REJECT from the node", NODE_IP, "172.30.0.46", 80, "REJECT", origin="node"),
        Flow("LB source range allowed", EXTERNAL, "5.6.7.8", 80, "10.180.0.3:80", masq=True, origin="external"),
        Flow("LB source range blocked", EXTERNAL_BLOCKED, "5.6.7.8", 80, "DROP", origin="external"),
        Flow("NodePort, ETP Cluster", EXTERNAL, NODE_IP, 3003, "10.180.0.3:80", masq=True, origin="external"),
        Flow("NodePort, ETP Local without local endpoints", EXTERNAL, NODE_IP, 3001, "DROP", origin="external"),
        Flow("pod to ETP Local NodePort is short-circuited", POD, NODE_IP, 3001, "10.180.0.2:80"),
        # nftables only: cluster-ips-check.
        Flow("wrong port of a ClusterIP", POD, "172.30.0.41", 81, "REJECT"),
        Flow("wrong protocol of a ClusterIP", POD, "172.30.0.41", 80, "REJECT", protocol="udp"),
        Flow("wrong port of a ClusterIP from the node", NODE_IP, "172.30.0.44", 8080, "REJECT", origin="node"),
        Flow("unallocated ClusterIP without service CIDRs", POD, "172.30.0.50", 80, ""),
    ])


def test_six_services_with_service_cidrs(scratch: Scratch) -> None:
    check_flows(build_nft(scratch, SIX, service_cidrs=("172.30.0.0/16",)), [
        # nftables only: the "unallocated ClusterIPs" drop rule.
        Flow("unallocated ClusterIP", POD, "172.30.0.50", 80, "DROP"),
        Flow("unallocated ClusterIP from the node", NODE_IP, "172.30.0.50", 80, "DROP", origin="node"),
        Flow("wrong port of a ClusterIP", POD, "172.30.0.41", 81, "REJECT"),
        Flow("no endpoints", POD, "172.30.0.46", 80, "REJECT"),
        Flow("single endpoint", POD, "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("outside the service range", POD, "10.0.0.3", 80, ""),
    ])


def test_affinity_is_reported(scratch: Scratch) -> None:
    built = build_nft(scratch, SIX)
    sticky = built.trace(EXTERNAL, "5.6.7.8", 80, "external")
    assert sticky.affinity_seconds == 10800
    assert sticky.endpoint_probabilities() == {"10.180.0.3:80": 1.0}
    assert not any("@affinity-" in s.rule and s.action.startswith("goto") for s in sticky.rules_traversed)
    assert built.trace(POD, "172.30.0.41", 80).affinity_seconds is None


def test_probabilities_of_three_endpoints(scratch: Scratch) -> None:
    objs = [service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
            endpoint_slice("ns", "web", [endpoint("10.1.0.1"), endpoint("10.1.0.2"), endpoint("10.1.0.3")], [("http", 8080)])]
    result = build_nft(scratch, objs).trace(POD, "172.30.0.9", 80)
    assert result.verdict == Verdict.DNAT
    odds = result.endpoint_probabilities()
    assert list(odds) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    assert all(abs(p - 1 / 3) < 1e-9 for p in odds.values())
    assert abs(sum(o.probability for o in result.outcomes) - 1.0) < 1e-9
    assert result.masquerade is False


# --- TestClusterIPGeneral -------------------------------------------------------------------


def test_cluster_ip_general(scratch: Scratch) -> None:
    objs = [
        service("ns1", "svc1", "172.30.0.41", [{"name": "http", "port": 80}]),
        service("ns2", "svc2", "172.30.0.42", [
            {"name": "http", "port": 80},
            {"name": "https", "port": 443, "targetPort": 8443},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "targetPort": 5353},
            {"name": "dns-sctp", "port": 53, "protocol": "SCTP"},
        ]),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1", NODE)], [("http", 80)]),
        endpoint_slice("ns2", "svc2", [endpoint("10.180.0.1", NODE), endpoint("10.180.2.1", "node2")],
                       [("http", 80, "TCP"), ("https", 8443, "TCP"), ("dns-udp", 53, "UDP"), ("dns-tcp", 5353, "TCP"),
                        ("dns-sctp", 53, "SCTP")]),
    ]
    check_flows(build_nft(scratch, objs, service_cidrs=("172.30.0.0/16",)), [
        Flow("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
        Flow("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
        Flow("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
        Flow("TCP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353"),
        Flow("UDP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="udp"),
        Flow("SCTP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="sctp"),
        # nftables: cluster-ips-check rejects the ports a ClusterIP does not serve (iptables: "").
        Flow("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "REJECT", protocol="udp"),
        Flow("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, "REJECT"),
        # nftables only: unallocated addresses of the service CIDR are dropped.
        Flow("packet to unallocated cluster ip", "10.180.0.2", "172.30.0.50", 80, "DROP"),
        Flow("node to cluster IP is masqueraded", NODE_IP, "172.30.0.41", 80, "10.180.0.1:80", masq=True, origin="node"),
        Flow("external to cluster IP is masqueraded", EXTERNAL, "172.30.0.41", 80, "10.180.0.1:80", masq=True,
             origin="external"),
    ])


# --- TestLoadBalancer -------------------------------------------------------------------------


def test_load_balancer_source_ranges(scratch: Scratch) -> None:
    # nftables enforces the ranges in filter-prerouting-pre-dnat / filter-output-pre-dnat,
    # before DNAT; the outcomes are iptables mode's.
    objs = [
        service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                lb_ips=["1.2.3.4", "5.6.7.8"], source_ranges=["192.168.0.0/24", " 203.0.113.0/25"]),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1")], [("p80", 80)]),
    ]
    ep = "10.180.0.1:80"
    built = build_nft(scratch, objs)
    check_flows(built, [
        Flow("pod to cluster IP", POD, "172.30.0.41", 80, ep),
        Flow("external to nodePort", EXTERNAL, NODE_IP, 3001, ep, masq=True, origin="external"),
        Flow("nodePort bypasses LoadBalancerSourceRanges", EXTERNAL_BLOCKED, NODE_IP, 3001, ep, masq=True, origin="external"),
        Flow("accepted external to LB1", EXTERNAL, "1.2.3.4", 80, ep, masq=True, origin="external"),
        Flow("accepted external to LB2", EXTERNAL, "5.6.7.8", 80, ep, masq=True, origin="external"),
        Flow("blocked external to LB1", EXTERNAL_BLOCKED, "1.2.3.4", 80, "DROP", origin="external"),
        Flow("blocked external to LB2", EXTERNAL_BLOCKED, "5.6.7.8", 80, "DROP", origin="external"),
        Flow("pod to LB1 (blocked by LoadBalancerSourceRanges)", POD, "1.2.3.4", 80, "DROP"),
        Flow("pod to LB2 (blocked by LoadBalancerSourceRanges)", POD, "5.6.7.8", 80, "DROP"),
        Flow("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, ep, masq=True, origin="node"),
        Flow("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, ep, masq=True, origin="node"),
        Flow("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, ep, masq=True, origin="node"),
        Flow("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, ep, masq=True, origin="node"),
    ])
    blocked = built.trace(EXTERNAL_BLOCKED, "1.2.3.4", 80, "external")
    assert [s.chain for s in blocked.outcomes[0].steps][:2] == ["filter-prerouting-pre-dnat", "firewall-check"]
    assert not any(s.action.startswith("DNAT") for s in blocked.outcomes[0].steps)
    from_pod = built.trace(POD, "1.2.3.4", 80)
    assert [s.chain for s in from_pod.outcomes[0].steps][:2] == ["filter-prerouting-pre-dnat", "firewall-check"]
    from_node = built.trace(NODE_IP, "1.2.3.4", 80, "node")
    assert [s.chain for s in from_node.outcomes[0].steps][:3] == ["filter-output-pre-dnat", "firewall-check", "nat-output"]


# --- TestNodePorts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family,localhost,addresses,alt_allowed",
    [
        ("IPv4", True, (), True),
        ("IPv4", False, (), True),
        ("IPv4", False, ("192.168.0.0/24", "127.0.0.1/32"), False),
        ("IPv4", False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), True),
        ("IPv4", True, ("primary",), False),  # nftables mode's default
        ("IPv6", True, (), True),
        ("IPv6", False, (), True),
        ("IPv6", False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), False),
    ],
)
def test_node_ports(scratch: Scratch, family: str, localhost: bool, addresses: tuple[str, ...], alt_allowed: bool) -> None:
    v6 = family == "IPv6"
    svc_ip, ep1, ep2 = ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1") if v6 else ("172.30.0.41", "10.180.0.1", "10.180.2.1")
    pod, client, node_ip, alt_ip, lo = (
        ("fd00:10::2", "2600:5200::1", "2001:db8::1", "2001:db8:1::2", "::1") if v6
        else (POD, EXTERNAL, NODE_IP, NODE_IP_ALT, "127.0.0.1")
    )
    objs = [
        service("ns1", "svc1", svc_ip, [{"name": "p80", "port": 80, "nodePort": 3001}], type="NodePort"),
        endpoint_slice("ns1", "svc1", [endpoint(ep1), endpoint(ep2, NODE)], [("p80", 80)], family=family),
    ]
    cfg = ProxyConfig(
        node_name=NODE, family=IPFamily(family), cluster_cidrs=("fd00:10::/64" if v6 else "10.0.0.0/8",),
        node_ips=(node_ip, alt_ip), localhost_nodeports=localhost, nodeport_addresses=addresses,
    )
    built = build_nft(scratch, objs, cfg)
    out = f"[{ep1}]:80, [{ep2}]:80" if v6 else f"{ep1}:80, {ep2}:80"
    flows = [
        Flow("pod to cluster IP", pod, svc_ip, 80, out),
        Flow("external to nodePort", client, node_ip, 3001, out, masq=True, origin="external"),
        Flow("node to nodePort", node_ip, node_ip, 3001, out, masq=True, origin="node"),
        # nftables: no localhost NodePorts, whatever localhost_nodeports says (iptables mode
        # DNATs 127.0.0.1:3001 when it is on).
        Flow("localhost to nodePort is ignored", lo, lo, 3001, "", origin="node"),
    ]
    if alt_allowed:
        flows.append(Flow("external to nodePort on secondary IP", client, alt_ip, 3001, out, masq=True, origin="external"))
    else:
        flows.append(Flow("secondary nodeIP ignores NodePorts", client, alt_ip, 3001, "", origin="external"))
    check_flows(built, flows)
    nodeport_ips = built.table.sets.get("nodeport-ips")
    if built.plan.nodeport_match_all:
        assert nodeport_ips is None  # deleted: `fib daddr type local` decides
    else:
        assert nodeport_ips is not None
        assert {e.key for e in nodeport_ips.elements} == {ip for ip in built.plan.nodeport_ips if ip not in ("127.0.0.1", "::1")}


def test_health_check_node_port(scratch: Scratch) -> None:
    objs = [service("ns1", "svc1", "172.30.0.42", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                    etp="Local", hc_port=30000)]
    # nftables: no rule for health-check node ports (iptables mode: ACCEPT).
    check_flows(build_nft(scratch, objs, default_config(nodeport_addresses=("127.0.0.0/8",))), [
        Flow("HealthCheckNodePort is not touched", "1.2.3.4", NODE_IP, 30000, "", origin="external"),
    ])
    check_flows(build_nft(scratch, []), [Flow("no rule once the service is gone", "1.2.3.4", NODE_IP, 30000, "",
                                              origin="external")])


# --- traffic policies ---------------------------------------------------------------------------


def test_external_traffic_policy_local(scratch: Scratch) -> None:
    check_flows(build_nft(scratch, _lb("Local")), [
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", POD, "172.30.0.41", 80, BOTH),
        Flow("pod to external IP hits both endpoints, unmasqueraded", POD, "192.168.99.11", 80, BOTH),
        Flow("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL, "192.168.99.11", 80,
             "10.180.2.1:80", origin="external"),
        Flow("pod to LB IP hits both endpoints, unmasqueraded", POD, "1.2.3.4", 80, BOTH),
        Flow("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL, "1.2.3.4", 80, "10.180.2.1:80",
             origin="external"),
        Flow("pod to NodePort hits both endpoints, unmasqueraded", POD, NODE_IP, 3001, BOTH),
        Flow("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL, NODE_IP, 3001, "10.180.2.1:80",
             origin="external"),
        Flow("node to LB IP hits both endpoints, masqueraded", NODE_IP, "1.2.3.4", 80, BOTH, masq=True, origin="node"),
    ])


@pytest.mark.parametrize("older", [False, True], ids=["current-layout", "older-layout"])
def test_external_traffic_policy_local_without_local_endpoints(scratch: Scratch, older: bool) -> None:
    objs = _lb("Local")[:1] + [endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1", "elsewhere")], [("p80", 80)])]
    # The node's own connections to the LB IP / external IP: nat-output short-circuits them to
    # the cluster endpoints before service-endpoints-check (filter-output, priority 0) sees
    # them, as in iptables mode. In the layout before 1.34 that check ran in filter-output at
    # priority -110, before DNAT, and dropped them (kubernetes#131765).
    from_node = "DROP" if older else "10.180.0.1:80"
    check_flows(build_nft(scratch, objs, older=older), [
        Flow("external to LB IP is dropped", EXTERNAL, "1.2.3.4", 80, "DROP", origin="external"),
        Flow("external to NodePort is dropped", EXTERNAL, NODE_IP, 3001, "DROP", origin="external"),
        Flow("external to external IP is dropped", EXTERNAL, "192.168.99.11", 80, "DROP", origin="external"),
        Flow("pod to LB IP is short-circuited", POD, "1.2.3.4", 80, "10.180.0.1:80"),
        Flow("pod to external IP is short-circuited", POD, "192.168.99.11", 80, "10.180.0.1:80"),
        Flow("node to NodePort is short-circuited", NODE_IP, NODE_IP, 3001, "10.180.0.1:80", masq=True, origin="node"),
        Flow("node to LB IP is short-circuited", NODE_IP, "1.2.3.4", 80, from_node, masq=not older, origin="node"),
        Flow("node to external IP is short-circuited", NODE_IP, "192.168.99.11", 80, from_node, masq=not older,
             origin="node"),
        Flow("cluster IP unaffected", POD, "172.30.0.41", 80, "10.180.0.1:80"),
        # nftables: nothing for the health-check node port (iptables mode: ACCEPT).
        Flow("health check not touched", EXTERNAL, NODE_IP, 30000, "", origin="external"),
    ])


def test_external_traffic_policy_cluster(scratch: Scratch) -> None:
    check_flows(build_nft(scratch, _lb("Cluster")), [
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", POD, "172.30.0.41", 80, BOTH),
        Flow("pod to external IP hits both endpoints, masqueraded", POD, "192.168.99.11", 80, BOTH, masq=True),
        Flow("external to external IP hits both endpoints, masqueraded", EXTERNAL, "192.168.99.11", 80, BOTH, masq=True,
             origin="external"),
        Flow("pod to LB IP hits both endpoints, masqueraded", POD, "1.2.3.4", 80, BOTH, masq=True),
        Flow("external to LB IP hits both endpoints, masqueraded", EXTERNAL, "1.2.3.4", 80, BOTH, masq=True, origin="external"),
        Flow("pod to NodePort hits both endpoints, masqueraded", POD, NODE_IP, 3001, BOTH, masq=True),
        Flow("external to NodePort hits both endpoints, masqueraded", EXTERNAL, NODE_IP, 3001, BOTH, masq=True,
             origin="external"),
    ])


@pytest.mark.parametrize(
    "itp,nodes,output",
    [
        ("Cluster", (NODE, "node1", "node2"), "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
        ("Local", (NODE, "node1", "node2"), "10.0.1.1:80"),
        ("Local", (NODE, NODE, "node2"), "10.0.1.1:80, 10.0.1.2:80"),
        ("Local", ("node0", "node1", "node2"), "DROP"),
    ],
)
def test_internal_traffic_policy(scratch: Scratch, itp: str, nodes: tuple[str, ...], output: str) -> None:
    objs = [
        service("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80}], itp=itp),
        endpoint_slice("ns1", "svc1", [endpoint(f"10.0.1.{i + 1}", n, ready=True) for i, n in enumerate(nodes)], [("", 80)]),
    ]
    check_flows(build_nft(scratch, objs), [Flow("pod to ClusterIP", POD, "172.30.1.1", 80, output)])
    check_flows(build_nft(scratch, objs[:1]), [Flow("endpoints deleted", POD, "172.30.1.1", 80, "REJECT")])


@pytest.mark.parametrize("etp", ["Local", "Cluster"])
def test_terminating_endpoints(scratch: Scratch, etp: str) -> None:
    svc = service("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80, "targetPort": 80}], type="LoadBalancer",
                  etp=etp, lb_ips=["1.2.3.4"], hc_port=30000)
    for slices, flows in _terminating_cases(etp):
        check_flows(build_nft(scratch, [svc, *slices]), flows)
    check_flows(build_nft(scratch, [svc]), [
        Flow("pod to clusterIP after endpoints deleted", POD, "172.30.1.1", 80, "REJECT"),
        Flow("external to LB after endpoints deleted", EXTERNAL, "1.2.3.4", 80, "REJECT", origin="external"),
    ])


# --- TestInternalExternalMasquerade --------------------------------------------------------------

# nftables: no localhost NodePorts (iptables mode: DNATed and masqueraded).
NO_LOCALHOST_NODEPORTS = {
    name: {"output": "", "masq": False} for name in
    ("localhost to NodePort", "localhost to NodePort with eTP:Local", "localhost to NodePort with iTP:Local")
}


@pytest.mark.parametrize(
    "name,masquerade_all,detector,overrides",
    [
        ("base", False, True, {}),
        ("no LocalTrafficDetector", False, False, NO_DETECTOR),
        ("masqueradeAll", True, True, MASQ_ALL),
        ("masqueradeAll, no LocalTrafficDetector", True, False,
         {**MASQ_ALL, **{k: v for k, v in NO_DETECTOR.items() if "output" in cast(dict, v)}}),
    ],
)
def test_internal_external_masquerade(scratch: Scratch, name: str, masquerade_all: bool, detector: bool,
                                      overrides: dict) -> None:
    cfg = default_config(masquerade_all=masquerade_all, cluster_cidrs=("10.0.0.0/8",) if detector else ())
    flows = changed(changed(MASQ_FLOWS, overrides), NO_LOCALHOST_NODEPORTS)
    check_flows(build_nft(scratch, MASQ_OBJECTS, cfg), flows)


def test_no_endpoints_reject(scratch: Scratch) -> None:
    objs = [service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                    external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"])]
    check_flows(build_nft(scratch, objs), [
        Flow("pod to cluster IP with no endpoints", POD, "172.30.0.41", 80, "REJECT"),
        Flow("external to external IP with no endpoints", EXTERNAL, "192.168.99.11", 80, "REJECT", origin="external"),
        Flow("pod to NodePort with no endpoints", POD, NODE_IP, 3001, "REJECT"),
        Flow("external to NodePort with no endpoints", EXTERNAL, NODE_IP, 3001, "REJECT", origin="external"),
        Flow("pod to LoadBalancer IP with no endpoints", POD, "1.2.3.4", 80, "REJECT"),
        Flow("external to LoadBalancer IP with no endpoints", EXTERNAL, "1.2.3.4", 80, "REJECT", origin="external"),
        Flow("node to cluster IP with no endpoints", NODE_IP, "172.30.0.41", 80, "REJECT", origin="node"),
    ])


def test_bridge_interface_detector_needs_the_interface(scratch: Scratch) -> None:
    objs = [service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
            endpoint_slice("ns", "web", [endpoint("10.1.0.1")], [("http", 80)])]
    built = build_nft(scratch, objs, default_config(detect_local_mode=DetectLocalMode.BridgeInterface,
                                                    pod_bridge_interface="cbr0"))
    from_pod = built.trace(POD, "172.30.0.9", 80, in_interface="cbr0")
    assert from_pod.verdict == Verdict.DNAT and from_pod.masquerade is False
    from_eth = built.trace(EXTERNAL, "172.30.0.9", 80, "external", in_interface="eth0")
    assert from_eth.verdict == Verdict.DNAT and from_eth.masquerade is True
    unknown = built.trace(POD, "172.30.0.9", 80)
    assert unknown.verdict == Verdict.UNKNOWN
    assert unknown.notes and "cannot evaluate meta iifname" in unknown.notes[0]
    from_node = built.trace(NODE_IP, "172.30.0.9", 80, "node", in_interface="lo")
    assert from_node.verdict == Verdict.DNAT and from_node.masquerade is True


def test_interface_prefix_detector(scratch: Scratch) -> None:
    objs = [service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
            endpoint_slice("ns", "web", [endpoint("10.1.0.1")], [("http", 80)])]
    built = build_nft(scratch, objs, default_config(detect_local_mode=DetectLocalMode.InterfaceNamePrefix,
                                                    pod_interface_name_prefix="veth"))
    assert built.trace(POD, "172.30.0.9", 80, in_interface="veth12ab").masquerade is False
    assert built.trace(EXTERNAL, "172.30.0.9", 80, "external", in_interface="eth0").masquerade is True


def test_ipv6_flows(scratch: Scratch) -> None:
    objs = [
        service("ns1", "svc1", "fd00:172:30::41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                cluster_ips=["fd00:172:30::41"], lb_ips=["2001:db8:ff::1"], source_ranges=["2600:5200::/32"]),
        endpoint_slice("ns1", "svc1", [endpoint("fd00:10:180::1"), endpoint("fd00:10:180::2", NODE)], [("p80", 80)], family="IPv6"),
    ]
    cfg = ProxyConfig(node_name=NODE, family=IPFamily.IPv6, cluster_cidrs=("fd00:10::/48",), node_ips=("2001:db8::1",))
    both = "[fd00:10:180::1]:80, [fd00:10:180::2]:80"
    built = build_nft(scratch, objs, cfg, service_cidrs=("fd00:172:30::/112",))
    assert built.table.family == "ip6"
    check_flows(built, [
        Flow("pod to cluster IP", "fd00:10::2", "fd00:172:30::41", 80, both),
        Flow("external to LB, allowed", "2600:5200::1", "2001:db8:ff::1", 80, both, True, "external"),
        Flow("external to LB, blocked", "2600:5300::1", "2001:db8:ff::1", 80, "DROP", origin="external"),
        Flow("external to NodePort", "2600:5300::1", "2001:db8::1", 3001, both, True, "external"),
        Flow("localhost NodePort is never IPv6", "::1", "::1", 3001, "", origin="node"),
        # nftables only: cluster-ips-check.
        Flow("wrong port of the cluster IP", "fd00:10::2", "fd00:172:30::41", 81, "REJECT"),
        Flow("unallocated cluster IP", "fd00:10::2", "fd00:172:30::99", 80, "DROP"),
    ])
    # The IPv4 table does not exist, so IPv4 packets meet no rule of ours.
    assert built.trace(POD, "172.30.0.41", 80).verdict == Verdict.NONE


def test_summary_mentions_the_path(scratch: Scratch) -> None:
    built = build_nft(scratch, SIX)
    text = built.trace(POD, "172.30.0.44", 80).summary()
    assert "10.180.0.4:80 p=0.5000" in text and "ip kube-proxy/services" in text
    assert "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80" in text


def test_rules_as_the_kernel_holds_them(scratch: Scratch) -> None:
    """The tracer reads the kernel's version: what nft -j prints, not our text."""
    built = build_nft(scratch, SIX)
    chain = built.table.chains["service-LAUZTJTB-ns4/svc4/tcp/p80"]
    assert len(chain.rules) == 2 and "numgen random mod 2" in chain.rules[1].text
    assert (built.table.chains["filter-output-pre-dnat"].priority, built.table.chains["filter-output"].priority) \
        == (-110, 0)
    assert "filter-output-post-dnat" not in built.table.chains and "filter-prerouting" not in built.table.chains
    assert built.trace(NODE_IP, "172.30.0.41", 80, "node").verdict == Verdict.DNAT
    result = built.trace(POD, "172.30.0.41", 80, origin=Origin.POD)
    assert result.endpoint_probabilities() == {"10.180.0.1:80": 1.0}
    # A packet the tracer is handed directly behaves the same.
    from kubectl_proxyctl.rules.nft_trace import trace_nft
    direct = trace_nft([built.table], Packet(POD, "172.30.0.41", 80), built.local)
    assert direct.endpoint_probabilities() == result.endpoint_probabilities()
    assert isinstance(built, BuiltNft)
