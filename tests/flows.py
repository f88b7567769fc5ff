"""The packet-flow table, written once and run in every proxy mode (tests/test_flows.py).

The tables follow kube-proxy's packetFlowTest cases (pkg/proxy/iptables/proxier_test.go and
pkg/proxy/nftables/proxier_test.go): each row is a first packet (source, destination, port,
where it comes from) and the expected result: the DNAT destinations in rule order (each with
probability 1/N), or ACCEPT / DROP / REJECT, or "" when no rule touches it, and whether it is
masqueraded. Sources: pods are in 10.0.0.0/8, the node is 192.168.0.2 (also 192.168.1.2),
external clients are 203.0.113.x.

A row's `output` / `masq` hold for every mode (they are iptables mode's, kube-proxy's
reference tables). Where kube-proxy's nftables mode differs on purpose, the row says so in
place: `nftables=Differs(output, why=Why.X)`, X being one of the documented differences
below (reference §3.7; we follow kube-proxy's nftables layout since 1.34). Differences that
are not about one packet's fate are not rows: render options only nftables mode has
(`Scenario.nftables_render`, the service CIDRs), a node-port configuration checked in
nftables mode only (`NodePortCase.modes`, `--nodeport-addresses primary`), and
LoadBalancerSourceRanges enforced before DNAT (same outcomes in both modes; the chain order
is checked in tests/test_flow_nftables.py).

Only data and small helpers live here; the object builders are in flowhelpers.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator, Mapping, Sequence

from flowhelpers import (
    EXTERNAL,
    EXTERNAL_BLOCKED,
    NODE,
    NODE_IP,
    NODE_IP_ALT,
    POD,
    Flow,
    Obj,
    default_config,
    endpoint,
    endpoint_slice,
    node,
    service,
)
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.plan.planner import ProxyConfig

MODES = ("iptables", "nftables")


class Why(Enum):
    """The deliberate differences of nftables mode that change where a packet goes."""

    NO_LOCALHOST_NODEPORTS = (
        "nftables mode has no localhost NodePorts: 127.0.0.1:<nodePort> is not a node port at all, "
        "whatever localhost_nodeports says (iptables mode DNATs and masquerades it when it is on)")
    NO_HEALTH_CHECK_ACCEPT = (
        "nftables mode writes no rule for health-check node ports (iptables mode ACCEPTs them in "
        "KUBE-NODEPORTS, past the firewall)")
    CLUSTER_IPS_CHECK = (
        "nftables mode's cluster-ips-check REJECTs traffic to a port or protocol a ClusterIP does not "
        "serve (iptables mode: no rule touches it)")
    UNALLOCATED_CLUSTER_IPS = (
        "with the service CIDRs given, nftables mode DROPs traffic to unallocated addresses of the "
        "service range (iptables mode has no such rule)")


@dataclass(frozen=True)
class Differs:
    """What nftables mode does with a row's packet instead, and why."""

    output: str
    why: Why
    masq: bool = False


@dataclass(frozen=True)
class Row:
    """One packet and where it must go (`output` in packetFlowTest notation, see flowhelpers.Flow).

    `nftables` is set only where nftables mode differs on purpose."""

    name: str
    src: str
    dst: str
    port: int
    output: str
    masq: bool = False
    origin: str = "pod"
    protocol: str = "tcp"
    nftables: Differs | None = None

    def expected(self, mode: str) -> tuple[str, bool]:
        assert mode in MODES, mode
        if mode == "nftables" and self.nftables is not None:
            return self.nftables.output, self.nftables.masq
        return self.output, self.masq

    def flow(self, mode: str) -> Flow:
        output, masq = self.expected(mode)
        return Flow(self.name, self.src, self.dst, self.port, output, masq, self.origin, self.protocol)


def flows(rows: Sequence[Row], mode: str) -> list[Flow]:
    """The rows as `mode` must see them (flowhelpers.check_flows' input)."""
    return [r.flow(mode) for r in rows]


def overridden(rows: Sequence[Row], overrides: Mapping[str, Mapping[str, Any]]) -> list[Row]:
    """`rows` with some rows' `output` / `masq` replaced, for a configuration variant (every
    named row must exist, and must not carry a mode difference the override would hide)."""
    names = {r.name for r in rows}
    assert set(overrides) <= names, set(overrides) - names
    out = []
    for r in rows:
        change = overrides.get(r.name)
        if change:
            assert r.nftables is None, f"{r.name}: an override would hide the nftables difference"
            r = dataclasses.replace(r, **change)
        out.append(r)
    return out


@dataclass(frozen=True)
class Scenario:
    """Cluster objects, a proxy config and the rows to trace through what the mode renders."""

    objects: Sequence[Obj]
    rows: Sequence[Row]
    config: ProxyConfig | None = None  # None: flowhelpers.default_config()
    nftables_render: Mapping[str, Any] = field(default_factory=dict)  # options only nftables mode has


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

# kube-proxy's TestTracePacket cases, over our rendering of its six services.
SIX_SERVICES = Scenario(SIX, [
    Row("no match", "10.0.0.2", "10.0.0.3", 80, ""),
    Row("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
    Row("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80"),
    # ("LOCAL, KUBE-MARK-MASQ" upstream.) svc2 is ETP:Local without a local endpoint: the node's
    # own connection to its external IP is short-circuited to the cluster endpoints (in nftables
    # mode nat-output does it before service-endpoints-check, in filter-output after DNAT, could
    # drop it).
    Row("LOCAL, to an ETP:Local external IP without local endpoints", NODE_IP, "192.168.99.22", 80, "10.180.0.2:80",
        masq=True, origin="node"),
    Row("DROP", EXTERNAL, "192.168.99.22", 80, "DROP", origin="external"),
    Row("ACCEPT (NodePortHealthCheck)", NODE_IP, NODE_IP, 30000, "ACCEPT", origin="node",
        nftables=Differs("", Why.NO_HEALTH_CHECK_ACCEPT)),
    Row("ACCEPT (NodePortHealthCheck) from outside", EXTERNAL, NODE_IP, 30000, "ACCEPT", origin="external",
        nftables=Differs("", Why.NO_HEALTH_CHECK_ACCEPT)),
    Row("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
    Row("REJECT from the node", NODE_IP, "172.30.0.46", 80, "REJECT", origin="node"),
    Row("LB source range allowed", EXTERNAL, "5.6.7.8", 80, "10.180.0.3:80", masq=True, origin="external"),
    Row("LB source range blocked", EXTERNAL_BLOCKED, "5.6.7.8", 80, "DROP", origin="external"),
    Row("NodePort, ETP Cluster", EXTERNAL, NODE_IP, 3003, "10.180.0.3:80", masq=True, origin="external"),
    Row("NodePort, ETP Local without local endpoints", EXTERNAL, NODE_IP, 3001, "DROP", origin="external"),
    Row("pod to ETP Local NodePort is short-circuited", POD, NODE_IP, 3001, "10.180.0.2:80"),
])

# The six services again: ports and protocols their ClusterIPs do not serve.
SIX_SERVICES_UNSERVED = Scenario(SIX, [
    Row("wrong port of a ClusterIP", POD, "172.30.0.41", 81, "",
        nftables=Differs("REJECT", Why.CLUSTER_IPS_CHECK)),
    Row("wrong protocol of a ClusterIP", POD, "172.30.0.41", 80, "", protocol="udp",
        nftables=Differs("REJECT", Why.CLUSTER_IPS_CHECK)),
    Row("wrong port of a ClusterIP from the node", NODE_IP, "172.30.0.44", 8080, "", origin="node",
        nftables=Differs("REJECT", Why.CLUSTER_IPS_CHECK)),
    Row("unallocated ClusterIP without service CIDRs", POD, "172.30.0.50", 80, ""),
])

# One service, three endpoints: 1/3 each.
THREE_ENDPOINTS = [
    service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
    endpoint_slice("ns", "web", [endpoint("10.1.0.1"), endpoint("10.1.0.2"), endpoint("10.1.0.3")], [("http", 8080)]),
]

# One service, one endpoint (the local-traffic detector tests).
ONE_ENDPOINT = [
    service("ns", "web", "172.30.0.9", [{"name": "http", "port": 80}]),
    endpoint_slice("ns", "web", [endpoint("10.1.0.1")], [("http", 80)]),
]

# --- TestClusterIPGeneral -------------------------------------------------------------------

CLUSTER_IP_GENERAL = Scenario(
    [
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
    ],
    [
        Row("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Row("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", masq=True),
        Row("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
        Row("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
        Row("TCP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:5353, 10.180.2.1:5353"),
        Row("UDP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="udp"),
        Row("SCTP on a shared port", "10.180.0.2", "172.30.0.42", 53, "10.180.0.1:53, 10.180.2.1:53", protocol="sctp"),
        Row("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "", protocol="udp",
            nftables=Differs("REJECT", Why.CLUSTER_IPS_CHECK)),
        Row("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, "",
            nftables=Differs("REJECT", Why.CLUSTER_IPS_CHECK)),
        Row("packet to unallocated cluster ip", "10.180.0.2", "172.30.0.50", 80, "",
            nftables=Differs("DROP", Why.UNALLOCATED_CLUSTER_IPS)),
        Row("node to cluster IP is masqueraded", NODE_IP, "172.30.0.41", 80, "10.180.0.1:80", masq=True, origin="node"),
        Row("external to cluster IP is masqueraded", EXTERNAL, "172.30.0.41", 80, "10.180.0.1:80", masq=True,
            origin="external"),
    ],
    nftables_render={"service_cidrs": ("172.30.0.0/16",)},
)

# --- TestLoadBalancer -------------------------------------------------------------------------

_LB_EP = "10.180.0.1:80"
# nftables mode enforces the ranges in filter-prerouting-pre-dnat / filter-output-pre-dnat,
# before DNAT; the outcomes are iptables mode's.
LOAD_BALANCER_SOURCE_RANGES = Scenario(
    [
        service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                lb_ips=["1.2.3.4", "5.6.7.8"], source_ranges=["192.168.0.0/24", " 203.0.113.0/25"]),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1")], [("p80", 80)]),
    ],
    [
        Row("pod to cluster IP", POD, "172.30.0.41", 80, _LB_EP),
        Row("external to nodePort", EXTERNAL, NODE_IP, 3001, _LB_EP, masq=True, origin="external"),
        Row("nodePort bypasses LoadBalancerSourceRanges", EXTERNAL_BLOCKED, NODE_IP, 3001, _LB_EP, masq=True,
            origin="external"),
        Row("accepted external to LB1", EXTERNAL, "1.2.3.4", 80, _LB_EP, masq=True, origin="external"),
        Row("accepted external to LB2", EXTERNAL, "5.6.7.8", 80, _LB_EP, masq=True, origin="external"),
        Row("blocked external to LB1", EXTERNAL_BLOCKED, "1.2.3.4", 80, "DROP", origin="external"),
        Row("blocked external to LB2", EXTERNAL_BLOCKED, "5.6.7.8", 80, "DROP", origin="external"),
        Row("pod to LB1 (blocked by LoadBalancerSourceRanges)", POD, "1.2.3.4", 80, "DROP"),
        Row("pod to LB2 (blocked by LoadBalancerSourceRanges)", POD, "5.6.7.8", 80, "DROP"),
        Row("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, _LB_EP, masq=True, origin="node"),
        Row("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, _LB_EP, masq=True, origin="node"),
        Row("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, _LB_EP, masq=True,
            origin="node"),
        Row("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, _LB_EP, masq=True,
            origin="node"),
    ],
)

# --- TestNodePorts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePortCase:
    family: str
    localhost: bool  # ProxyConfig.localhost_nodeports
    addresses: tuple[str, ...]  # ProxyConfig.nodeport_addresses
    alt_allowed: bool  # the node's second IP answers node ports
    modes: tuple[str, ...] = MODES

    @property
    def id(self) -> str:
        return f"{self.family}-{'localhost' if self.localhost else 'no-localhost'}-{'+'.join(self.addresses) or 'all'}"


NODE_PORT_CASES = [
    NodePortCase("IPv4", True, (), True),
    NodePortCase("IPv4", False, (), True),
    NodePortCase("IPv4", False, ("192.168.0.0/24", "127.0.0.1/32"), False),
    NodePortCase("IPv4", False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), True),
    # `--nodeport-addresses primary`, nftables mode's default: only the primary node IP.
    NodePortCase("IPv4", True, ("primary",), False, modes=("nftables",)),
    NodePortCase("IPv6", True, (), True),
    NodePortCase("IPv6", False, (), True),
    NodePortCase("IPv6", False, ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), False),
]


def node_ports(case: NodePortCase) -> Scenario:
    v6 = case.family == "IPv6"
    svc_ip, ep1, ep2 = ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1") if v6 else ("172.30.0.41", "10.180.0.1", "10.180.2.1")
    pod, client, node_ip, alt_ip, lo = (
        ("fd00:10::2", "2600:5200::1", "2001:db8::1", "2001:db8:1::2", "::1") if v6
        else (POD, EXTERNAL, NODE_IP, NODE_IP_ALT, "127.0.0.1")
    )
    objs = [
        service("ns1", "svc1", svc_ip, [{"name": "p80", "port": 80, "nodePort": 3001}], type="NodePort"),
        endpoint_slice("ns1", "svc1", [endpoint(ep1), endpoint(ep2, NODE)], [("p80", 80)], family=case.family),
    ]
    cfg = ProxyConfig(
        node_name=NODE, family=IPFamily(case.family), cluster_cidrs=("fd00:10::/64" if v6 else "10.0.0.0/8",),
        node_ips=(node_ip, alt_ip), localhost_nodeports=case.localhost, nodeport_addresses=case.addresses,
    )
    out = f"[{ep1}]:80, [{ep2}]:80" if v6 else f"{ep1}:80, {ep2}:80"
    rows = [
        Row("pod to cluster IP", pod, svc_ip, 80, out),
        Row("external to nodePort", client, node_ip, 3001, out, masq=True, origin="external"),
        Row("node to nodePort", node_ip, node_ip, 3001, out, masq=True, origin="node"),
    ]
    if not v6 and case.localhost:
        rows.append(Row("localhost to nodePort gets masqueraded", lo, lo, 3001, out, masq=True, origin="node",
                        nftables=Differs("", Why.NO_LOCALHOST_NODEPORTS)))
    else:
        rows.append(Row("localhost to nodePort is ignored", lo, lo, 3001, "", origin="node"))
    if case.alt_allowed:
        rows.append(Row("external to nodePort on secondary IP", client, alt_ip, 3001, out, masq=True, origin="external"))
    else:
        rows.append(Row("secondary nodeIP ignores NodePorts", client, alt_ip, 3001, "", origin="external"))
    return Scenario(objs, rows, cfg)


HEALTH_CHECK_NODE_PORT = Scenario(
    [service("ns1", "svc1", "172.30.0.42", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
             etp="Local", hc_port=30000)],
    [Row("firewall accepts HealthCheckNodePort", "1.2.3.4", NODE_IP, 30000, "ACCEPT", origin="external",
         nftables=Differs("", Why.NO_HEALTH_CHECK_ACCEPT))],
    default_config(nodeport_addresses=("127.0.0.0/8",)),
)
HEALTH_CHECK_NODE_PORT_GONE = Scenario(
    [], [Row("no rule once the service is gone", "1.2.3.4", NODE_IP, 30000, "", origin="external")])

# --- traffic policies ---------------------------------------------------------------------------


def lb(etp: str) -> list[Obj]:
    return [
        service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                etp=etp, external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"], hc_port=30000),
        endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1"), endpoint("10.180.2.1", NODE)], [("p80", 80)]),
    ]


BOTH = "10.180.0.1:80, 10.180.2.1:80"

EXTERNAL_TRAFFIC_POLICY_LOCAL = Scenario(lb("Local"), [
    Row("pod to cluster IP hits both endpoints, unmasqueraded", POD, "172.30.0.41", 80, BOTH),
    Row("pod to external IP hits both endpoints, unmasqueraded", POD, "192.168.99.11", 80, BOTH),
    Row("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL, "192.168.99.11", 80,
        "10.180.2.1:80", origin="external"),
    Row("pod to LB IP hits both endpoints, unmasqueraded", POD, "1.2.3.4", 80, BOTH),
    Row("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL, "1.2.3.4", 80, "10.180.2.1:80",
        origin="external"),
    Row("pod to NodePort hits both endpoints, unmasqueraded", POD, NODE_IP, 3001, BOTH),
    Row("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL, NODE_IP, 3001, "10.180.2.1:80",
        origin="external"),
    Row("node to LB IP hits both endpoints, masqueraded", NODE_IP, "1.2.3.4", 80, BOTH, masq=True, origin="node"),
])

# The node's own connections to the LB IP / external IP are short-circuited to the cluster
# endpoints (in nftables mode by nat-output, before service-endpoints-check in filter-output at
# priority 0 sees them). In nftables mode's layout before 1.34 that check ran at priority -110,
# before DNAT, and dropped them (kubernetes#131765): OLDER_LAYOUT, traced in nftables mode only.
EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS = Scenario(
    lb("Local")[:1] + [endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1", "elsewhere")], [("p80", 80)])],
    [
        Row("external to LB IP is dropped", EXTERNAL, "1.2.3.4", 80, "DROP", origin="external"),
        Row("external to NodePort is dropped", EXTERNAL, NODE_IP, 3001, "DROP", origin="external"),
        Row("external to external IP is dropped", EXTERNAL, "192.168.99.11", 80, "DROP", origin="external"),
        Row("pod to LB IP is short-circuited", POD, "1.2.3.4", 80, "10.180.0.1:80"),
        Row("pod to external IP is short-circuited", POD, "192.168.99.11", 80, "10.180.0.1:80"),
        Row("node to NodePort is short-circuited", NODE_IP, NODE_IP, 3001, "10.180.0.1:80", masq=True, origin="node"),
        Row("node to LB IP is short-circuited", NODE_IP, "1.2.3.4", 80, "10.180.0.1:80", masq=True, origin="node"),
        Row("node to external IP is short-circuited", NODE_IP, "192.168.99.11", 80, "10.180.0.1:80", masq=True,
            origin="node"),
        Row("cluster IP unaffected", POD, "172.30.0.41", 80, "10.180.0.1:80"),
        Row("health check still accepted", EXTERNAL, NODE_IP, 30000, "ACCEPT", origin="external",
            nftables=Differs("", Why.NO_HEALTH_CHECK_ACCEPT)),
    ],
)
OLDER_LAYOUT = {
    "node to LB IP is short-circuited": {"output": "DROP", "masq": False},
    "node to external IP is short-circuited": {"output": "DROP", "masq": False},
}

EXTERNAL_TRAFFIC_POLICY_CLUSTER = Scenario(lb("Cluster"), [
    Row("pod to cluster IP hits both endpoints, unmasqueraded", POD, "172.30.0.41", 80, BOTH),
    Row("pod to external IP hits both endpoints, masqueraded", POD, "192.168.99.11", 80, BOTH, masq=True),
    Row("external to external IP hits both endpoints, masqueraded", EXTERNAL, "192.168.99.11", 80, BOTH, masq=True,
        origin="external"),
    Row("pod to LB IP hits both endpoints, masqueraded", POD, "1.2.3.4", 80, BOTH, masq=True),
    Row("external to LB IP hits both endpoints, masqueraded", EXTERNAL, "1.2.3.4", 80, BOTH, masq=True, origin="external"),
    Row("pod to NodePort hits both endpoints, masqueraded", POD, NODE_IP, 3001, BOTH, masq=True),
    Row("external to NodePort hits both endpoints, masqueraded", EXTERNAL, NODE_IP, 3001, BOTH, masq=True,
        origin="external"),
])

# An external IP and an LB IP that are node addresses, on ports that are also other services'
# NodePorts: the service-IP rules must win. kube-proxy writes the jump to the node ports as the
# last rule of KUBE-SERVICES for this (nftables mode: the service-ips map before the node-port
# dispatch); were it first, these packets would go to the NodePort services.
NODE_ADDRESS_AS_SERVICE_IP = Scenario(
    [
        service("ns1", "ext", "172.30.0.51", [{"name": "p", "port": 3005}], external_ips=[NODE_IP]),
        service("ns1", "lb", "172.30.0.52", [{"name": "p", "port": 3006, "nodePort": 3007}], type="LoadBalancer",
                lb_ips=[NODE_IP_ALT]),
        service("ns2", "np", "172.30.0.53", [{"name": "p", "port": 80, "nodePort": 3005}], type="NodePort"),
        service("ns2", "np2", "172.30.0.54", [{"name": "p", "port": 80, "nodePort": 3006}], type="NodePort"),
        endpoint_slice("ns1", "ext", [endpoint("10.180.0.51")], [("p", 8080)]),
        endpoint_slice("ns1", "lb", [endpoint("10.180.0.52")], [("p", 8080)]),
        endpoint_slice("ns2", "np", [endpoint("10.180.0.53")], [("p", 80)]),
        endpoint_slice("ns2", "np2", [endpoint("10.180.0.54")], [("p", 80)]),
    ],
    [
        Row("external IP that is a node address wins over a NodePort", EXTERNAL, NODE_IP, 3005, "10.180.0.51:8080",
            masq=True, origin="external"),
        Row("LB IP that is a node address wins over a NodePort", EXTERNAL, NODE_IP_ALT, 3006, "10.180.0.52:8080",
            masq=True, origin="external"),
        Row("pod to the external IP that is a node address", POD, NODE_IP, 3005, "10.180.0.51:8080", masq=True),
        Row("node to the LB IP that is its own address", NODE_IP, NODE_IP_ALT, 3006, "10.180.0.52:8080", masq=True,
            origin="node"),
        Row("the NodePort on the other node address", EXTERNAL, NODE_IP_ALT, 3005, "10.180.0.53:80", masq=True,
            origin="external"),
        Row("the other NodePort on the first node address", EXTERNAL, NODE_IP, 3006, "10.180.0.54:80", masq=True,
            origin="external"),
    ],
)

# (internalTrafficPolicy, the endpoints' nodes, pod to ClusterIP's output)
INTERNAL_TRAFFIC_POLICY_CASES = [
    ("Cluster", (NODE, "node1", "node2"), "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80"),
    ("Local", (NODE, "node1", "node2"), "10.0.1.1:80"),
    ("Local", (NODE, NODE, "node2"), "10.0.1.1:80, 10.0.1.2:80"),
    ("Local", ("node0", "node1", "node2"), "DROP"),
]


def internal_traffic_policy(itp: str, nodes: Sequence[str], output: str) -> tuple[Scenario, Scenario]:
    """The service with its endpoints, and the service once they are deleted."""
    svc = service("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80}], itp=itp)
    eps = endpoint_slice("ns1", "svc1", [endpoint(f"10.0.1.{i + 1}", n, ready=True) for i, n in enumerate(nodes)], [("", 80)])
    return (Scenario([svc, eps], [Row("pod to ClusterIP", POD, "172.30.1.1", 80, output)]),
            Scenario([svc], [Row("endpoints deleted", POD, "172.30.1.1", 80, "REJECT")]))


def terminating_endpoints(etp: str) -> list[Scenario]:
    """kube-proxy's TestEndpointSliceWithTerminatingEndpoints*: the endpoint sets in turn,
    then the endpoints deleted."""
    svc = service("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80, "targetPort": 80}], type="LoadBalancer",
                  etp=etp, lb_ips=["1.2.3.4"], hc_port=30000)

    def slice_(*eps: Obj) -> Obj:
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
    out = [Scenario([svc, slice_(*eps)], [
        Row("pod to clusterIP", POD, "172.30.1.1", 80, to_cluster),
        Row("external to LB", EXTERNAL, "1.2.3.4", 80, to_lb, masq=local_masq, origin="external"),
    ]) for eps, to_cluster, to_lb in cases]
    out.append(Scenario([svc], [
        Row("pod to clusterIP after endpoints deleted", POD, "172.30.1.1", 80, "REJECT"),
        Row("external to LB after endpoints deleted", EXTERNAL, "1.2.3.4", 80, "REJECT", origin="external"),
    ]))
    return out


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
_NO_LOCALHOST = Differs("", Why.NO_LOCALHOST_NODEPORTS)
MASQ_ROWS = [
    Row("pod to ClusterIP", POD, "172.30.0.41", 80, S1),
    Row("pod to NodePort", POD, NODE_IP, 3001, S1, True),
    Row("pod to LB", POD, "1.2.3.4", 80, S1, True),
    Row("node to ClusterIP", NODE_IP, "172.30.0.41", 80, S1, True, "node"),
    Row("node to NodePort", NODE_IP, NODE_IP, 3001, S1, True, "node"),
    Row("localhost to NodePort", "127.0.0.1", "127.0.0.1", 3001, S1, True, "node", nftables=_NO_LOCALHOST),
    Row("node to LB", NODE_IP, "1.2.3.4", 80, S1, True, "node"),
    Row("external to ClusterIP", EXTERNAL, "172.30.0.41", 80, S1, True, "external"),
    Row("external to NodePort", EXTERNAL, NODE_IP, 3001, S1, True, "external"),
    Row("external to LB", EXTERNAL, "1.2.3.4", 80, S1, True, "external"),
    Row("pod to ClusterIP with eTP:Local", POD, "172.30.0.42", 80, S2),
    Row("pod to NodePort with eTP:Local", POD, NODE_IP, 3002, S2),
    Row("pod to LB with eTP:Local", POD, "5.6.7.8", 80, S2),
    Row("node to ClusterIP with eTP:Local", NODE_IP, "172.30.0.42", 80, S2, True, "node"),
    Row("node to NodePort with eTP:Local", NODE_IP, NODE_IP, 3001, S1, True, "node"),
    Row("localhost to NodePort with eTP:Local", "127.0.0.1", "127.0.0.1", 3002, S2, True, "node",
        nftables=_NO_LOCALHOST),
    Row("node to LB with eTP:Local", NODE_IP, "5.6.7.8", 80, S2, True, "node"),
    Row("external to ClusterIP with eTP:Local", EXTERNAL, "172.30.0.42", 80, S2, True, "external"),
    Row("external to NodePort with eTP:Local", EXTERNAL, NODE_IP, 3002, "10.180.0.2:80", False, "external"),
    Row("external to LB with eTP:Local", EXTERNAL, "5.6.7.8", 80, "10.180.0.2:80", False, "external"),
    Row("pod to ClusterIP with iTP:Local", POD, "172.30.0.43", 80, "10.180.0.3:80"),
    Row("pod to NodePort with iTP:Local", POD, NODE_IP, 3003, S3, True),
    Row("pod to LB with iTP:Local", POD, "9.10.11.12", 80, S3, True),
    Row("node to ClusterIP with iTP:Local", NODE_IP, "172.30.0.43", 80, "10.180.0.3:80", True, "node"),
    Row("node to NodePort with iTP:Local", NODE_IP, NODE_IP, 3003, S3, True, "node"),
    Row("localhost to NodePort with iTP:Local", "127.0.0.1", "127.0.0.1", 3003, S3, True, "node",
        nftables=_NO_LOCALHOST),
    Row("node to LB with iTP:Local", NODE_IP, "9.10.11.12", 80, S3, True, "node"),
    Row("external to ClusterIP with iTP:Local", EXTERNAL, "172.30.0.43", 80, "10.180.0.3:80", True, "external"),
    Row("external to NodePort with iTP:Local", EXTERNAL, NODE_IP, 3003, S3, True, "external"),
    Row("external to LB with iTP:Local", EXTERNAL, "9.10.11.12", 80, S3, True, "external"),
]
NO_DETECTOR: dict[str, dict[str, Any]] = {
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
MASQ_ALL: dict[str, dict[str, Any]] = {
    "pod to ClusterIP": {"masq": True},
    "pod to ClusterIP with eTP:Local": {"masq": True},
    "pod to ClusterIP with iTP:Local": {"masq": True},
}
# (name, masquerade_all, a local-traffic detector, overrides of MASQ_ROWS)
MASQ_VARIANTS: list[tuple[str, bool, bool, dict[str, dict[str, Any]]]] = [
    ("base", False, True, {}),
    ("no LocalTrafficDetector", False, False, NO_DETECTOR),
    ("masqueradeAll", True, True, MASQ_ALL),
    ("masqueradeAll, no LocalTrafficDetector", True, False,
     {**MASQ_ALL, **{k: v for k, v in NO_DETECTOR.items() if "output" in v}}),
]


def internal_external_masquerade(masquerade_all: bool, detector: bool, overrides: Mapping[str, Mapping[str, Any]]) -> Scenario:
    cfg = default_config(masquerade_all=masquerade_all, cluster_cidrs=("10.0.0.0/8",) if detector else ())
    return Scenario(MASQ_OBJECTS, overridden(MASQ_ROWS, overrides), cfg)


NO_ENDPOINTS_REJECT = Scenario(
    [service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
             external_ips=["192.168.99.11"], lb_ips=["1.2.3.4"])],
    [
        Row("pod to cluster IP with no endpoints", POD, "172.30.0.41", 80, "REJECT"),
        Row("external to external IP with no endpoints", EXTERNAL, "192.168.99.11", 80, "REJECT", origin="external"),
        Row("pod to NodePort with no endpoints", POD, NODE_IP, 3001, "REJECT"),
        Row("external to NodePort with no endpoints", EXTERNAL, NODE_IP, 3001, "REJECT", origin="external"),
        Row("pod to LoadBalancer IP with no endpoints", POD, "1.2.3.4", 80, "REJECT"),
        Row("external to LoadBalancer IP with no endpoints", EXTERNAL, "1.2.3.4", 80, "REJECT", origin="external"),
        Row("node to cluster IP with no endpoints", NODE_IP, "172.30.0.41", 80, "REJECT", origin="node"),
    ],
)

# --- IPv6 ----------------------------------------------------------------------------------------

_V6_BOTH = "[fd00:10:180::1]:80, [fd00:10:180::2]:80"
IPV6 = Scenario(
    [
        service("ns1", "svc1", "fd00:172:30::41", [{"name": "p80", "port": 80, "nodePort": 3001}], type="LoadBalancer",
                cluster_ips=["fd00:172:30::41"], lb_ips=["2001:db8:ff::1"], source_ranges=["2600:5200::/32"]),
        endpoint_slice("ns1", "svc1", [endpoint("fd00:10:180::1"), endpoint("fd00:10:180::2", NODE)], [("p80", 80)],
                       family="IPv6"),
    ],
    [
        Row("pod to cluster IP", "fd00:10::2", "fd00:172:30::41", 80, _V6_BOTH),
        Row("external to LB, allowed", "2600:5200::1", "2001:db8:ff::1", 80, _V6_BOTH, True, "external"),
        Row("external to LB, blocked", "2600:5300::1", "2001:db8:ff::1", 80, "DROP", origin="external"),
        Row("external to NodePort", "2600:5300::1", "2001:db8::1", 3001, _V6_BOTH, True, "external"),
        Row("localhost NodePort is never IPv6", "::1", "::1", 3001, "", origin="node"),
        Row("wrong port of the cluster IP", "fd00:10::2", "fd00:172:30::41", 81, "",
            nftables=Differs("REJECT", Why.CLUSTER_IPS_CHECK)),
        Row("unallocated cluster IP", "fd00:10::2", "fd00:172:30::99", 80, "",
            nftables=Differs("DROP", Why.UNALLOCATED_CLUSTER_IPS)),
    ],
    ProxyConfig(node_name=NODE, family=IPFamily.IPv6, cluster_cidrs=("fd00:10::/48",), node_ips=("2001:db8::1",)),
    nftables_render={"service_cidrs": ("fd00:172:30::/112",)},
)


# --- every table, for the checks of the table itself ----------------------------------------------


def all_tables() -> Iterator[tuple[str, Sequence[Row]]]:
    """(name, rows) of every table above, the generated ones included."""
    fixed = {
        "six services": SIX_SERVICES,
        "six services, unserved ports": SIX_SERVICES_UNSERVED,
        "cluster IP general": CLUSTER_IP_GENERAL,
        "load balancer source ranges": LOAD_BALANCER_SOURCE_RANGES,
        "health check node port": HEALTH_CHECK_NODE_PORT,
        "health check node port, service gone": HEALTH_CHECK_NODE_PORT_GONE,
        "eTP Local": EXTERNAL_TRAFFIC_POLICY_LOCAL,
        "eTP Local without local endpoints": EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS,
        "eTP Cluster": EXTERNAL_TRAFFIC_POLICY_CLUSTER,
        "no endpoints": NO_ENDPOINTS_REJECT,
        "IPv6": IPV6,
    }
    for name, scenario in fixed.items():
        yield name, scenario.rows
    yield ("eTP Local without local endpoints, older layout",
           overridden(EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS.rows, OLDER_LAYOUT))
    for case in NODE_PORT_CASES:
        yield f"node ports {case.id}", node_ports(case).rows
    for itp, nodes, output in INTERNAL_TRAFFIC_POLICY_CASES:
        for i, scenario in enumerate(internal_traffic_policy(itp, nodes, output)):
            yield f"iTP {itp} {nodes} #{i}", scenario.rows
    for etp in ("Local", "Cluster"):
        for i, scenario in enumerate(terminating_endpoints(etp)):
            yield f"terminating eTP {etp} #{i}", scenario.rows
    for name, masquerade_all, detector, overrides in MASQ_VARIANTS:
        yield f"masquerade {name}", internal_external_masquerade(masquerade_all, detector, overrides).rows
