"""Packet-flow checks of nftables mode only: render → the real kernel → `nft -j` → trace.

The flow table shared by both modes (kube-proxy's packetFlowTest cases, with nftables mode's
deliberate differences marked in its rows) is tests/flows.py, run in every mode by
tests/test_flows.py. Here: what only nftables mode has — the service CIDRs' "unallocated
ClusterIPs" rule, LoadBalancerSourceRanges enforced before DNAT (filter-prerouting-pre-dnat /
filter-output-pre-dnat), the nodeport-ips set, the ip6 table, its chain names in traces, the
interface-prefix detector and the base-chain layout before 1.34.

Each case is rendered, loaded with `nft -f` into a throwaway network namespace (one per
module; the table is removed between cases), read back with `nft -j list table ip
kube-proxy` (ip6 for IPv6) and traced with `modes.nftables.trace`. So the tracer sees the
rules as the kernel holds them, not as we wrote them.

In the layout before 1.34 (kubernetes#131765, fixed by kubernetes#132456) filter-output ran
before DNAT and dropped the node's own connections to an externalIP / LB IP of an ETP:Local
service with no local endpoint; test_external_traffic_policy_local_without_local_endpoints_older_layout
traces that layout.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence, cast

import pytest

import flowhelpers
import flows
from flowhelpers import EXTERNAL, EXTERNAL_BLOCKED, NODE_IP, POD, Flow, default_config
from flows import (
    EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS,
    IPV6,
    LOAD_BALANCER_SOURCE_RANGES,
    NODE_PORT_CASES,
    OLDER_LAYOUT,
    ONE_ENDPOINT,
    SIX,
    NodePortCase,
)
from kubectl_proxyctl.modes.tracing import Origin, Packet, Verdict
from kubectl_proxyctl.plan.planner import DetectLocalMode
from nfthelpers import NFT_SKIP, BuiltNft, Scratch, build_nft, scratch_netns

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("flow")


def check_flows(built: BuiltNft, table: Sequence[Flow]) -> None:
    """flowhelpers.check_flows over the kernel's table (it only calls `built.trace`)."""
    flowhelpers.check_flows(cast(Any, built), table)


# --- kube-proxy's six services ------------------------------------------------------------


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


def test_affinity_failed_lookup_is_not_a_step(scratch: Scratch) -> None:
    sticky = build_nft(scratch, SIX).trace(EXTERNAL, "5.6.7.8", 80, "external")
    assert sticky.affinity_seconds == 10800
    assert not any("@affinity-" in s.rule and s.action.startswith("goto") for s in sticky.rules_traversed)


# --- TestLoadBalancer -------------------------------------------------------------------------


def test_load_balancer_source_ranges_are_checked_before_dnat(scratch: Scratch) -> None:
    # nftables enforces the ranges in filter-prerouting-pre-dnat / filter-output-pre-dnat,
    # before DNAT (the outcomes, iptables mode's, are in tests/test_flows.py).
    built = build_nft(scratch, LOAD_BALANCER_SOURCE_RANGES.objects)
    blocked = built.trace(EXTERNAL_BLOCKED, "1.2.3.4", 80, "external")
    assert [s.chain for s in blocked.outcomes[0].steps][:2] == ["filter-prerouting-pre-dnat", "firewall-check"]
    assert not any(s.action.startswith("DNAT") for s in blocked.outcomes[0].steps)
    from_pod = built.trace(POD, "1.2.3.4", 80)
    assert [s.chain for s in from_pod.outcomes[0].steps][:2] == ["filter-prerouting-pre-dnat", "firewall-check"]
    from_node = built.trace(NODE_IP, "1.2.3.4", 80, "node")
    assert [s.chain for s in from_node.outcomes[0].steps][:3] == ["filter-output-pre-dnat", "firewall-check", "nat-output"]


# --- TestNodePorts ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in NODE_PORT_CASES if "nftables" in c.modes], ids=lambda c: c.id)
def test_node_ports_nodeport_ips_set(scratch: Scratch, case: NodePortCase) -> None:
    scenario = flows.node_ports(case)
    built = build_nft(scratch, scenario.objects, scenario.config)
    nodeport_ips = built.table.sets.get("nodeport-ips")
    if built.plan.nodeport_match_all:
        assert nodeport_ips is None  # deleted: `fib daddr type local` decides
    else:
        assert nodeport_ips is not None
        assert {e.key for e in nodeport_ips.elements} == {ip for ip in built.plan.nodeport_ips if ip not in ("127.0.0.1", "::1")}


# --- traffic policies ---------------------------------------------------------------------------


def test_external_traffic_policy_local_without_local_endpoints_older_layout(scratch: Scratch) -> None:
    # The node's own connections to the LB IP / external IP: in the layout before 1.34
    # service-endpoints-check ran in filter-output at priority -110, before DNAT, and dropped
    # them (kubernetes#131765); the current layout is traced in tests/test_flows.py.
    scenario = EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS
    check_flows(build_nft(scratch, scenario.objects, older=True),
                flows.flows(flows.overridden(scenario.rows, OLDER_LAYOUT), "nftables"))


# --- local-traffic detectors ---------------------------------------------------------------------


def test_bridge_interface_detector_answer_depends_on_the_interface(scratch: Scratch) -> None:
    built = build_nft(scratch, ONE_ENDPOINT, default_config(detect_local_mode=DetectLocalMode.BridgeInterface,
                                                            pod_bridge_interface="cbr0"))
    unknown = built.trace(POD, "172.30.0.9", 80)
    assert unknown.verdict == Verdict.UNKNOWN
    assert unknown.notes[0] == "the answer depends on whether the packet arrives on cbr0"
    from_node = built.trace(NODE_IP, "172.30.0.9", 80, "node", in_interface="lo")
    assert from_node.verdict == Verdict.DNAT and from_node.masquerade is True


def test_interface_prefix_detector(scratch: Scratch) -> None:
    built = build_nft(scratch, ONE_ENDPOINT, default_config(detect_local_mode=DetectLocalMode.InterfaceNamePrefix,
                                                            pod_interface_name_prefix="veth"))
    assert built.trace(POD, "172.30.0.9", 80, in_interface="veth12ab").masquerade is False
    assert built.trace(EXTERNAL, "172.30.0.9", 80, "external", in_interface="eth0").masquerade is True


# --- IPv6 ----------------------------------------------------------------------------------------


def test_ipv6_uses_the_ip6_table_only(scratch: Scratch) -> None:
    built = build_nft(scratch, IPV6.objects, IPV6.config, **IPV6.nftables_render)
    assert built.table.family == "ip6"
    # The IPv4 table does not exist, so IPv4 packets meet no rule of ours.
    assert built.trace(POD, "172.30.0.41", 80).verdict == Verdict.NONE


# --- the tracer on the kernel's table --------------------------------------------------------------


def test_summary_names_the_nft_chains(scratch: Scratch) -> None:
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
    assert isinstance(built, BuiltNft)


def test_a_packet_handed_to_the_tracer_directly(scratch: Scratch) -> None:
    """trace_nft on the kernel's table behaves as BuiltNft.trace."""
    from kubectl_proxyctl.modes.nftables.trace import trace_nft

    built = build_nft(scratch, SIX)
    result = built.trace(POD, "172.30.0.41", 80, origin=Origin.POD)
    assert result.endpoint_probabilities() == {"10.180.0.1:80": 1.0}
    direct = trace_nft([built.table], Packet(POD, "172.30.0.41", 80), built.local)
    assert direct.endpoint_probabilities() == result.endpoint_probabilities()
