"""Packet-flow tests: render → trace → assert where packets go.

The tables follow kube-proxy's packetFlowTest cases (pkg/proxy/iptables/proxier_test.go):
each row is a first packet (source, destination, port, where it comes from) and the expected
result: the DNAT destinations in rule order (each with probability 1/N), or ACCEPT / DROP /
REJECT, or "" when no rule touches it, and whether it is masqueraded. Sources: pods are in
10.0.0.0/8, the node is 192.168.0.2 (also 192.168.1.2), external clients are 203.0.113.x.
"""

from __future__ import annotations

import pytest

from flowhelpers import (
    EXTERNAL,
    EXTERNAL_BLOCKED,
    NODE,
    NODE_IP,
    NODE_IP_ALT,
    POD,
    Flow,
    build,
    check_flows,
    default_config,
    endpoint,
    endpoint_slice,
    node,
    service,
)
from kubectl_proxyctl.engine.plan import DetectLocalMode, ProxyConfig
from kubectl_proxyctl.model import IPFamily, NodeInfo
from kubectl_proxyctl.rules.iptables_text import parse
from kubectl_proxyctl.rules.trace import LocalNode, Origin, Packet, Verdict, trace

# --- kube-proxy's six services ------------------------------------------------------------

SIX = [
    node(),
    service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80}]),
    service("ns2", "svc2", "172.30.0.42", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
            etp="Local", lb_ips=["1.2.3.4"], external_ips=["192.168.99.22"], hc_port=30000),
    service("ns3", "svc3", "172.30.0.43", [{"name": "p80", "port": 80, "nodePort": 3003}], type="NodePort"),
    service("ns4", "svc4", "172.30.0.44", [{"name": "p80", "port": 80}], type="NodePort", external_ips=["192.168.99.33"]),
    service("ns5", "svc5", "172.30.0.45", [{"name": "p80", "port": 80, "nodePort": 3002}], type="LoadBalancer",
            lb_ips=["5.6.7.8"], source_ranges=[" 203.0.113.0/25"], affinity=10800),
    service("ns6", "svc6", "172.30.0.46", [{"name": "p80", "port": 80}]),
    endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1")], [("p80", 80)]),
    endpoint_slice("ns2", "svc2", [endpoint("10.180.0.2")], [("p80", 80)]),
    endpoint_slice("ns3", "svc3", [endpoint("10.180.0.3")], [("p80", 80)]),
    endpoint_slice("ns4", "svc4", [endpoint("10.180.0.4"), endpoint("10.180.0.5", NODE)], [("p80", 80)]),
    endpoint_slice("ns5", "svc5", [endpoint("10.180.0.3")], [("p80", 80)]),
]


def test_six_services() -> None:
    # kube-proxy's TestTracePacket cases, over our rendering of its six services.
    check_flows(build(SIX), [
        Flow("no match", "10.0.0.2", "10.0.0.3", 80, ""),
        Flow("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80"),
        Flow("LOCAL, KUBE-MARK-MASQ", NODE_IP, "192.168.99.22", 80, "10.180.0.2:80", masq=True, origin="node"),
        Flow("DROP", EXTERNAL, "192.168.99.22", 80, "DROP", origin="external"),
        Flow("ACCEPT (NodePortHealthCheck)", NODE_IP, NODE_IP, 30000, "ACCEPT", origin="node"),
        Flow("ACCEPT (NodePortHealthCheck) from outside", EXTERNAL, NODE_IP, 30000, "ACCEPT", origin="external"),
        Flow("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
        Flow("REJECT from the node", NODE_IP, "172.30.0.46", 80, "REJECT", origin="node"),
        Flow("LB source range allowed", EXTERNAL, "5.6.7.8", 80, "10.180.0.3:80", masq=True, origin="external"),
        Flow("LB source range blocked", EXTERNAL_BLOCKED, "5.6.7.8", 80, "DROP", origin="external"),
        Flow("NodePort, ETP Cluster", EXTERNAL, NODE_IP, 3003, "10.180.0.3:80", masq=True, origin="external"),
        Flow("NodePort, ETP Local without local endpoints", EXTERNAL, NODE_IP, 3001, "DROP", origin="external"),
        Flow("pod to ETP Local NodePort is short-circuited", POD, NODE_IP, 3001, "10.180.0.2:80"),
    ])


def test_affinity_is_reported() -> None:
    built = build(SIX)
    sticky = built.trace(EXTERNAL, "5.6.7.8", 80, "external")
    assert sticky.affinity_seconds == 10800
    assert sticky.endpoint_probabilities() == {"10.180.0.3:80": 1.0}
    assert not any("--rcheck" in s.rule for s in sticky.rules_traversed)  # a failed check is not a step
    assert built.trace(POD, "172.30.0.41", 80).affinity_seconds is None


def test_probabilities_of_a_three_endpoint_cascade() -> None:
    objs = [service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
            endpoint_slice("ns", "web", [endpoint("10.1.0.1"), endpoint("10.1.0.2"), endpoint("10.1.0.3")], [("http", 8080)])]
    result = build(objs).trace(POD, "172.30.0.9", 80)
    assert result.verdict == Verdict.DNAT
    odds = result.endpoint_probabilities()
    assert list(odds) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    assert all(abs(p - 1 / 3) < 1e-9 for p in odds.values())
    assert abs(sum(o.probability for o in result.outcomes) - 1.0) < 1e-9
    assert result.masquerade is False


# --- TestClusterIPGeneral -------------------------------------------------------------------


def test_cluster_ip_general() -> None:
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
                       [("http", 80), ("https", 8443), ("dns-udp", 53, "UDP"), ("dns-tcp", 5353), ("dns-sctp", 53, "SCTP")]),
    ]
    check_flows(build(objs), [
        Flow("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
        Flow("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
        Flow("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
        Flow("TCP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353"),
        Flow("UDP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="udp"),
        Flow("SCTP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="sctp"),
        Flow("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "", protocol="udp"),
        Flow("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, ""),
        Flow("node to cluster IP is masqueraded", NODE_IP, "172.30.0.41", 80, "10.180.0.1:80", masq=True, origin="node"),
        Flow("external to cluster IP is masqueraded", EXTERNAL, "172.30.0.41", 80, "10.180.0.1:80", masq=True, origin="external"),
    ])


# --- TestLoadBalancer -------------------------------------------------------------------------


def test_load_balancer_source_ranges() -> None:
    objs = [
        service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                lb_ips=["1.2.3.4", "5.6.7.8"], source_ranges=["192.168.0.0/24", " 203.0.113.0/25"]),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1")], [("p80", 80)]),
    ]
    ep = "10.180.0.1:80"
    check_flows(build(objs), [
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


# --- TestNodePorts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family,localhost,addresses,alt_allowed",
    [
        ("IPv4", True, (), True),
        ("IPv4", False, (), True),
        ("IPv4", False, ("192.168.0.0/24", "127.0.0.1/32"), False),
        ("IPv4", False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), True),
        ("IPv6", True, (), True),
        ("IPv6", False, (), True),
        ("IPv6", False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), False),
    ],
)
def test_node_ports(family: str, localhost: bool, addresses: tuple[str, ...], alt_allowed: bool) -> None:
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
    built = build(objs, cfg)
    out = f"[{ep1}]:80, [{ep2}]:80" if v6 else f"{ep1}:80, {ep2}:80"
    flows = [
        Flow("pod to cluster IP", pod, svc_ip, 80, out),
        Flow("external to nodePort", client, node_ip, 3001, out, masq=True, origin="external"),
        Flow("node to nodePort", node_ip, node_ip, 3001, out, masq=True, origin="node"),
    ]
    if not v6 and localhost:
        flows.append(Flow("localhost to nodePort gets masqueraded", lo, lo, 3001, out, masq=True, origin="node"))
    else:
        flows.append(Flow("localhost to nodePort is ignored", lo, lo, 3001, "", origin="node"))
    if alt_allowed:
        flows.append(Flow("external to nodePort on secondary IP", client, alt_ip, 3001, out, masq=True, origin="external"))
    else:
        flows.append(Flow("secondary nodeIP ignores NodePorts", client, alt_ip, 3001, "", origin="external"))
    check_flows(built, flows)
    assert ("-A KUBE-FIREWALL" in built.rendered.text) == (not v6 and localhost)


def test_health_check_node_port() -> None:
    objs = [service("ns1", "svc1", "172.30.0.42", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                    etp="Local", hc_port=30000)]
    check_flows(build(objs, default_config(nodeport_addresses=("127.0.0.0/8",))), [
        Flow("firewall accepts HealthCheckNodePort", "1.2.3.4", NODE_IP, 30000, "ACCEPT", origin="external"),
    ])
    check_flows(build([]), [Flow("no rule once the service is gone", "1.2.3.4", NODE_IP, 30000, "", origin="external")])


# --- traffic policies ---------------------------------------------------------------------------


def _lb(etp: str) -> list[dict]:
    return [
        service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                etp=etp, external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"], hc_port=30000),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1"), endpoint("10.180.2.1", NODE)], [("p80", 80)]),
    ]


BOTH = "10.180.0.1:80, 10.180.2.1:80"


def test_external_traffic_policy_local() -> None:
    check_flows(build(_lb("Local")), [
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


def test_external_traffic_policy_local_without_local_endpoints() -> None:
    objs = _lb("Local")[:1] + [endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1", "elsewhere")], [("p80", 80)])]
    check_flows(build(objs), [
        Flow("external to LB IP is dropped", EXTERNAL, "1.2.3.4", 80, "DROP", origin="external"),
        Flow("external to NodePort is dropped", EXTERNAL, NODE_IP, 3001, "DROP", origin="external"),
        Flow("external to external IP is dropped", EXTERNAL, "192.168.99.11", 80, "DROP", origin="external"),
        Flow("pod to LB IP is short-circuited", POD, "1.2.3.4", 80, "10.180.0.1:80"),
        Flow("node to NodePort is short-circuited", NODE_IP, NODE_IP, 3001, "10.180.0.1:80", masq=True, origin="node"),
        Flow("cluster IP unaffected", POD, "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("health check still accepted", EXTERNAL, NODE_IP, 30000, "ACCEPT", origin="external"),
    ])


def test_external_traffic_policy_cluster() -> None:
    check_flows(build(_lb("Cluster")), [
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
def test_internal_traffic_policy(itp: str, nodes: tuple[str, ...], output: str) -> None:
    objs = [
        service("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80}], itp=itp),
        endpoint_slice("ns1", "svc1", [endpoint(f"10.0.1.{i + 1}", n, ready=True) for i, n in enumerate(nodes)], [("", 80)]),
    ]
    check_flows(build(objs), [Flow("pod to ClusterIP", POD, "172.30.1.1", 80, output)])
    check_flows(build(objs[:1]), [Flow("endpoints deleted", POD, "172.30.1.1", 80, "REJECT")])


def _terminating_cases(etp: str) -> list[tuple[list[dict], list[Flow]]]:
    def slice_(*eps: dict) -> dict:
        return endpoint_slice("ns1", "svc1", list(eps), [("", 80)])

    local_masq = etp == "Cluster"
    ready = lambda ip, n: endpoint(ip, n, ready=True, serving=True, terminating=False)  # noqa: E731
    term = lambda ip, n: endpoint(ip, n, ready=False, serving=True, terminating=True)  # noqa: E731
    gone = lambda ip, n: endpoint(ip, n, ready=False, serving=False, terminating=True)  # noqa: E731
    other = "node-1" if etp == "Local" else "another-node"
    cases = [
        ([ready("10.0.1.1", NODE), ready("10.0.1.2", NODE), term("10.0.1.3", other if etp == "Cluster" else NODE),
          gone("10.0.1.4", other if etp == "Cluster" else NODE), ready("10.0.1.5", other)],
         "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80",
         "10.0.1.1:80, 10.0.1.2:80" if etp == "Local" else "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
        ([term("10.0.1.2", NODE), term("10.0.1.3", NODE), gone("10.0.1.4", NODE if etp == "Local" else other),
          (ready if etp == "Local" else term)("10.0.1.5", other)],
         "10.0.1.5:80" if etp == "Local" else "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80",
         "10.0.1.2:80, 10.0.1.3:80" if etp == "Local" else "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80"),
        ([term("10.0.1.5", "node-1")], "10.0.1.5:80", "DROP" if etp == "Local" else "10.0.1.5:80"),
        ([gone("10.0.1.5", NODE), gone("10.0.1.5", "node-1")], "REJECT", "REJECT"),
    ]
    out = []
    for eps, to_cluster, to_lb in cases:
        out.append(([slice_(*eps)], [
            Flow("pod to clusterIP", POD, "172.30.1.1", 80, to_cluster),
            Flow("external to LB", EXTERNAL, "1.2.3.4", 80, to_lb, masq=local_masq, origin="external"),
        ]))
    return out


@pytest.mark.parametrize("etp", ["Local", "Cluster"])
def test_terminating_endpoints(etp: str) -> None:
    svc = service("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80, "targetPort": 80}], type="LoadBalancer",
                  etp=etp, lb_ips=["1.2.3.4"], hc_port=30000)
    for slices, flows in _terminating_cases(etp):
        check_flows(build([svc, *slices]), flows)
    check_flows(build([svc]), [
        Flow("pod to clusterIP after endpoints deleted", POD, "172.30.1.1", 80, "REJECT"),
        Flow("external to LB after endpoints deleted", EXTERNAL, "1.2.3.4", 80, "REJECT", origin="external"),
    ])


# --- TestInternalExternalMasquerade --------------------------------------------------------------

MASQ_OBJECTS = [
    service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
            lb_ips=["1.2.3.4"], hc_port=30001),
    service("ns2", "svc2", "172.30.0.42", [{"name": "p80", "port": 80, "nodePort": 3002}], type="LoadBalancer",
            etp="Local", lb_ips=["5.6.7.8"], hc_port=30002),
    service("ns3", "svc3", "172.30.0.43", [{"name": "p80", "port": 80, "nodePort": 3003}], type="LoadBalancer",
            itp="Local", lb_ips=["9.10.11.12"], hc_port=30003),
    endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1", NODE), endpoint("10.180.1.1", "remote")], [("p80", 80)]),
    endpoint_slice("ns2", "svc2", [endpoint("10.180.0.2", NODE), endpoint("10.180.1.2", "remote")], [("p80", 80)]),
    endpoint_slice("ns3", "svc3", [endpoint("10.180.0.3", NODE), endpoint("10.180.1.3", "remote")], [("p80", 80)]),
]
S1, S2, S3 = "10.180.0.1:80, 10.180.1.1:80", "10.180.0.2:80, 10.180.1.2:80", "10.180.0.3:80, 10.180.1.3:80"
MASQ_FLOWS = [
    Flow("pod to ClusterIP", POD, "172.30.0.41", 80, S1),
    Flow("pod to NodePort", POD, NODE_IP, 3001, S1, True),
    Flow("pod to LB", POD, "1.2.3.4", 80, S1, True),
    Flow("node to ClusterIP", NODE_IP, "172.30.0.41", 80, S1, True, "node"),
    Flow("node to NodePort", NODE_IP, NODE_IP, 3001, S1, True, "node"),
    Flow("localhost to NodePort", "127.0.0.1", "127.0.0.1", 3001, S1, True, "node"),
    Flow("node to LB", NODE_IP, "1.2.3.4", 80, S1, True, "node"),
    Flow("external to ClusterIP", EXTERNAL, "172.30.0.41", 80, S1, True, "external"),
    Flow("external to NodePort", EXTERNAL, NODE_IP, 3001, S1, True, "external"),
    Flow("external to LB", EXTERNAL, "1.2.3.4", 80, S1, True, "external"),
    Flow("pod to ClusterIP with eTP:Local", POD, "172.30.0.42", 80, S2),
    Flow("pod to NodePort with eTP:Local", POD, NODE_IP, 3002, S2),
    Flow("pod to LB with eTP:Local", POD, "5.6.7.8", 80, S2),
    Flow("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, S2, True, "node"),
    Flow("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, S1, True, "node"),
    Flow("localhost to NodePort with eTP:Local", "127.0.0.1", "127.0.0.1", 3002, S2, True, "node"),
    Flow("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, S2, True, "node"),
    Flow("external to ClusterIP with eTP:Local", EXTERNAL, "172.30.0.42", 80, S2, True, "external"),
    Flow("external to NodePort with eTP:Local", EXTERNAL, NODE_IP, 3002, "10.180.0.2:80", False, "external"),
    Flow("external to LB with eTP:Local", EXTERNAL, "5.6.7.8", 80, "10.180.0.2:80", False, "external"),
    Flow("pod to ClusterIP with iTP:Local", POD, "172.30.0.43", 80, "10.180.0.3:80"),
    Flow("pod to NodePort with iTP:Local", POD, NODE_IP, 3003, S3, True),
    Flow("pod to LB with iTP:Local", POD, "9.10.11.12", 80, S3, True),
    Flow("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80", True, "node"),
    Flow("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, S3, True, "node"),
    Flow("localhost to NodePort with iTP:Local", "127.0.0.1", "127.0.0.1", 3003, S3, True, "node"),
    Flow("node to LB with iTP:Local", NODE_IP, "9.10.11.12", 80, S3, True, "node"),
    Flow("external to ClusterIP with iTP:Local", EXTERNAL, "172.30.0.43", 80, "10.180.0.3:80", True, "external"),
    Flow("external to NodePort with iTP:Local", EXTERNAL, NODE_IP, 3003, S3, True, "external"),
    Flow("external to LB with iTP:Local", EXTERNAL, "9.10.11.12", 80, S3, True, "external"),
]
NO_DETECTOR = {
    # Without a local-traffic detector all ClusterIP traffic counts as pod traffic...
    "node to ClusterIP": {"masq": False},
    "node to ClusterIP with eTP:Local": {"masq": False},
    "node to ClusterIP with iTP:Local": {"masq": False},
    "external to ClusterIP": {"masq": False},
    "external to ClusterIP with eTP:Local": {"masq": False},
    "external to ClusterIP with iTP:Local": {"masq": False},
    # ...and there is no short-circuit for pods, which get only the local endpoints.
    "pod to NodePort with eTP:Local": {"output": "10.180.0.2:80"},
    "pod to LB with eTP:Local": {"output": "10.180.0.2:80"},
}
MASQ_ALL = {
    "pod to ClusterIP": {"masq": True},
    "pod to ClusterIP with eTP:Local": {"masq": True},
    "pod to ClusterIP with iTP:Local": {"masq": True},
}


@pytest.mark.parametrize(
    "name,masquerade_all,detector,overrides",
    [
        ("base", False, True, {}),
        ("no LocalTrafficDetector", False, False, NO_DETECTOR),
        ("masqueradeAll", True, True, MASQ_ALL),
        ("masqueradeAll, no LocalTrafficDetector", True, False,
         {**MASQ_ALL, **{k: v for k, v in NO_DETECTOR.items() if "output" in v}}),
    ],
)
def test_internal_external_masquerade(name: str, masquerade_all: bool, detector: bool, overrides: dict) -> None:
    cfg = default_config(masquerade_all=masquerade_all, cluster_cidrs=("10.0.0.0/8",) if detector else ())
    flows = []
    for f in MASQ_FLOWS:
        change = overrides.get(f.name, {})
        flows.append(Flow(f.name, f.src, f.dst, f.port, change.get("output", f.output), change.get("masq", f.masq),
                          f.origin, f.protocol))
    assert set(overrides) <= {f.name for f in MASQ_FLOWS}
    check_flows(build(MASQ_OBJECTS, cfg), flows)


def test_no_endpoints_reject() -> None:
    objs = [service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                    external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"])]
    check_flows(build(objs), [
        Flow("pod to cluster IP with no endpoints", POD, "172.30.0.41", 80, "REJECT"),
        Flow("external to external IP with no endpoints", EXTERNAL, "192.168.99.11", 80, "REJECT", origin="external"),
        Flow("pod to NodePort with no endpoints", POD, NODE_IP, 3001, "REJECT"),
        Flow("external to NodePort with no endpoints", EXTERNAL, NODE_IP, 3001, "REJECT", origin="external"),
        Flow("pod to LoadBalancer IP with no endpoints", POD, "1.2.3.4", 80, "REJECT"),
        Flow("external to LoadBalancer IP with no endpoints", EXTERNAL, "1.2.3.4", 80, "REJECT", origin="external"),
        Flow("node to cluster IP with no endpoints", NODE_IP, "172.30.0.41", 80, "REJECT", origin="node"),
    ])


def test_bridge_interface_detector_needs_the_interface() -> None:
    objs = [service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
            endpoint_slice("ns", "web", [endpoint("10.1.0.1")], [("http", 80)])]
    built = build(objs, default_config(detect_local_mode=DetectLocalMode.BridgeInterface, pod_bridge_interface="cbr0"))
    from_pod = trace(built.ruleset, Packet(POD, "172.30.0.9", 80, in_interface="cbr0"), built.local_ips)
    assert from_pod.verdict == Verdict.DNAT and from_pod.masquerade is False
    from_eth = trace(built.ruleset, Packet(EXTERNAL, "172.30.0.9", 80, origin=Origin.EXTERNAL, in_interface="eth0"), built.local_ips)
    assert from_eth.verdict == Verdict.DNAT and from_eth.masquerade is True
    unknown = trace(built.ruleset, Packet(POD, "172.30.0.9", 80), built.local_ips)
    assert unknown.verdict == Verdict.UNKNOWN
    assert unknown.notes and "cannot evaluate ! -i cbr0" in unknown.notes[0]
    from_node = trace(built.ruleset, Packet(NODE_IP, "172.30.0.9", 80, origin=Origin.NODE), built.local_ips)
    assert from_node.verdict == Verdict.DNAT and from_node.masquerade is True


def test_ipv6_flows() -> None:
    objs = [
        service("ns1", "svc1", "fd00:172:30::41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                cluster_ips=["fd00:172:30::41"], lb_ips=["2001:db8:ff::1"], source_ranges=["2600:5200::/32"]),
        endpoint_slice("ns1", "svc1", [endpoint("fd00:10:180::1"), endpoint("fd00:10:180::2", NODE)], [("p80", 80)], family="IPv6"),
    ]
    cfg = ProxyConfig(node_name=NODE, family=IPFamily.IPv6, cluster_cidrs=("fd00:10::/48",), node_ips=("2001:db8::1",))
    both = "[fd00:10:180::1]:80, [fd00:10:180::2]:80"
    check_flows(build(objs, cfg), [
        Flow("pod to cluster IP", "fd00:10::2", "fd00:172:30::41", 80, both),
        Flow("external to LB, allowed", "2600:5200::1", "2001:db8:ff::1", 80, both, True, "external"),
        Flow("external to LB, blocked", "2600:5300::1", "2001:db8:ff::1", 80, "DROP", origin="external"),
        Flow("external to NodePort", "2600:5300::1", "2001:db8::1", 3001, both, True, "external"),
        Flow("localhost NodePort is never IPv6", "::1", "::1", 3001, "", origin="node"),
    ])


# --- the tracer on hand-written rules ---------------------------------------------------------

SAVE_DUMP = """\
# A real node's iptables-save (normalised forms: /32, --set-xmark, 11-digit probabilities)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-SERVICES - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-SERVICES -d 172.30.0.50/32 -p tcp -m comment --comment "ns/gone has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-C - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 172.30.0.9/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB ! -s 10.0.0.0/8 -d 172.30.0.9/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.1.0.1:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.1.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B
-A KUBE-SVC-WEB -m comment --comment "ns/web:http -> 10.1.0.3:8080" -j KUBE-SEP-C
-A KUBE-SEP-A -s 10.1.0.1/32 -m comment --comment ns/web:http -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p tcp -m comment --comment ns/web:http -m tcp -j DNAT --to-destination 10.1.0.1:8080
-A KUBE-SEP-B -s 10.1.0.2/32 -m comment --comment ns/web:http -j KUBE-MARK-MASQ
-A KUBE-SEP-B -p tcp -m comment --comment ns/web:http -m tcp -j DNAT --to-destination 10.1.0.2:8080
-A KUBE-SEP-C -s 10.1.0.3/32 -m comment --comment ns/web:http -j KUBE-MARK-MASQ
-A KUBE-SEP-C -p tcp -m comment --comment ns/web:http -m tcp -j DNAT --to-destination 10.1.0.3:8080
COMMIT
"""


def test_trace_iptables_save_output() -> None:
    rs = parse(SAVE_DUMP)
    result = trace(rs, Packet(POD, "172.30.0.9", 80), [NODE_IP])
    assert result.verdict == Verdict.DNAT
    odds = result.endpoint_probabilities()
    assert list(odds) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    assert all(abs(p - 1 / 3) < 1e-6 for p in odds.values())
    assert result.masquerade is False
    external = trace(rs, Packet(EXTERNAL, "172.30.0.9", 80, origin="external"), [NODE_IP])
    assert external.verdict == Verdict.DNAT and external.masquerade is True
    assert trace(rs, Packet(POD, "172.30.0.50", 80), [NODE_IP]).verdict == Verdict.REJECT
    # With a FORWARD policy of DROP, KUBE-FORWARD lets only marked (masqueraded) packets through.
    strict = parse(SAVE_DUMP.replace(":FORWARD ACCEPT", ":FORWARD DROP"))
    dropped = trace(strict, Packet(POD, "172.30.0.9", 80), [NODE_IP])
    assert dropped.verdict == Verdict.DROP
    assert {o.reason for o in dropped.outcomes} == {"policy DROP of filter/FORWARD"}
    assert trace(strict, Packet(EXTERNAL, "172.30.0.9", 80, origin="external"), [NODE_IP]).verdict == Verdict.DNAT
    hairpin = trace(rs, Packet("10.1.0.2", "172.30.0.9", 80), [NODE_IP])
    assert {e.destination: e.masquerade for e in hairpin.endpoints} == {
        "10.1.0.1:8080": False, "10.1.0.2:8080": True, "10.1.0.3:8080": False}
    assert hairpin.masquerade is None  # depends on the endpoint chosen


def _one_chain(rules: str, table: str = "nat", hook: str = "PREROUTING") -> str:
    return f"*{table}\n:{hook} ACCEPT [0:0]\n:X - [0:0]\n:Y - [0:0]\n{rules}COMMIT\n"


def test_unknown_matches_are_reported_not_guessed() -> None:
    rs = parse(_one_chain(
        "-A PREROUTING -m set --match-set SOMESET src -j DNAT --to-destination 10.9.0.1:80\n"
        "-A PREROUTING -j DNAT --to-destination 10.9.0.2:80\n"))
    result = trace(rs, Packet(POD, "172.30.0.1", 80), [])
    assert result.verdict == Verdict.UNKNOWN
    assert result.notes == ("cannot evaluate -m set --match-set SOMESET src (nat/PREROUTING rule 1)",)


def test_a_failing_known_match_makes_unknown_ones_irrelevant() -> None:
    rs = parse(_one_chain(
        "-A PREROUTING -d 10.10.10.10 -m physdev --physdev-is-bridged -j DNAT --to-destination 10.9.0.1:80\n"
        "-A PREROUTING -j DNAT --to-destination 10.9.0.2:80\n"))
    result = trace(rs, Packet(POD, "172.30.0.1", 80), [])
    assert result.verdict == Verdict.DNAT and result.endpoint_probabilities() == {"10.9.0.2:80": 1.0}


def test_goto_does_not_come_back_and_jump_does() -> None:
    rules = ("-A PREROUTING -j X\n"
             "-A PREROUTING -j DNAT --to-destination 10.9.0.9:80\n"
             "-A X -g Y\n"
             "-A X -j DNAT --to-destination 10.9.0.1:80\n"
             "-A Y -j RETURN\n")
    result = trace(parse(_one_chain(rules)), Packet(POD, "172.30.0.1", 80), [])
    # Y returns straight to PREROUTING (X was left by goto), so the second rule there applies.
    assert result.endpoint_probabilities() == {"10.9.0.9:80": 1.0}
    steps = [s.action for s in result.rules_traversed]
    assert steps == ["jump X", "goto Y", "RETURN", "DNAT 10.9.0.9:80"]


def test_marks_and_policies() -> None:
    text = ("*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK --set-xmark 0x10/0xff\nCOMMIT\n"
            "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m mark --mark 0x10/0x10 -j ACCEPT\nCOMMIT\n")
    result = trace(parse(text), Packet(POD, "10.9.9.9", 80), [])
    assert result.verdict == Verdict.ACCEPT
    result = trace(parse(text), Packet(POD, "10.9.9.9", 80, mark=0x1), [])
    assert result.verdict == Verdict.ACCEPT  # set-xmark replaces the masked bits


def test_statistic_negation_and_nth() -> None:
    rules = ("-A PREROUTING -m statistic --mode random ! --probability 0.25 -j DNAT --to-destination 10.9.0.1:80\n"
             "-A PREROUTING -j DNAT --to-destination 10.9.0.2:80\n")
    odds = trace(parse(_one_chain(rules)), Packet(POD, "1.1.1.1", 80), []).endpoint_probabilities()
    assert odds == {"10.9.0.1:80": 0.75, "10.9.0.2:80": 0.25}
    nth = "-A PREROUTING -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 10.9.0.1:80\n"
    assert trace(parse(_one_chain(nth)), Packet(POD, "1.1.1.1", 80), []).verdict == Verdict.UNKNOWN


def test_untracked_packets_skip_nat() -> None:
    text = ("*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 172.30.0.1 -j NOTRACK\nCOMMIT\n"
            + _one_chain("-A PREROUTING -j DNAT --to-destination 10.9.0.1:80\n")
            + "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate UNTRACKED -j DROP\nCOMMIT\n")
    assert trace(parse(text), Packet(POD, "172.30.0.1", 80), []).verdict == Verdict.DROP
    assert trace(parse(text), Packet(POD, "172.30.0.2", 80), []).verdict == Verdict.DNAT


def test_local_node_from_node_info() -> None:
    info = NodeInfo("n1", addresses=(("InternalIP", "172.18.0.2"), ("Hostname", "n1")))
    local = LocalNode.from_node_info(info)
    assert local.is_local("172.18.0.2") and local.is_local("127.0.0.5") and not local.is_local("172.18.0.3")
    rs = parse(_one_chain("-A PREROUTING -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.9.0.1:80\n"))
    assert trace(rs, Packet(EXTERNAL, "172.18.0.2", 30000, origin="external"), info).verdict == Verdict.DNAT
    assert trace(rs, Packet(EXTERNAL, "172.18.0.9", 30000, origin="external"), info).verdict == Verdict.NONE


def test_summary_mentions_the_path() -> None:
    text = build(SIX).trace(POD, "172.30.0.44", 80).summary()
    assert "10.180.0.4:80 p=0.5000" in text and "nat/KUBE-SERVICES" in text and "KUBE-SEP-UKSFD7AGPMPPLUHC" in text
