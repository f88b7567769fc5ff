"""Packet-flow tests, run once per proxy mode: render → trace → assert where packets go.

The rows are in tests/flows.py, written once; each test here runs them in every mode:

* iptables: render → parse the iptables-restore payload → trace (tests/flowhelpers.py);
* nftables: render → load the transaction with `nft -f` into a throwaway network namespace
  (one per module; the table is removed between cases) → `nft -j list table` → trace_nft
  (tests/nfthelpers.py), so the tracer sees the rules as the kernel holds them. These items
  are marked `lab` and skipped where the kernel cannot be used (root, ip, nsenter, nft).

A row's expectation holds in both modes unless the row says how nftables mode differs
(`nftables=Differs(...)`, see flows.Why). Checks of one mode's own rules, chains, sets and
messages are in tests/test_flow_iptables.py and tests/test_flow_nftables.py.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest

import flowhelpers
import flows
from flowhelpers import EXTERNAL, NODE_IP, POD, default_config
from flows import (
    CLUSTER_IP_GENERAL,
    EXTERNAL_TRAFFIC_POLICY_CLUSTER,
    EXTERNAL_TRAFFIC_POLICY_LOCAL,
    EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS,
    HEALTH_CHECK_NODE_PORT,
    HEALTH_CHECK_NODE_PORT_GONE,
    INTERNAL_TRAFFIC_POLICY_CASES,
    IPV6,
    LOAD_BALANCER_SOURCE_RANGES,
    MASQ_ROWS,
    MASQ_VARIANTS,
    MODES,
    NODE_ADDRESS_AS_SERVICE_IP,
    NO_ENDPOINTS_REJECT,
    NODE_PORT_CASES,
    OLDER_LAYOUT,
    ONE_ENDPOINT,
    SIX,
    SIX_SERVICES,
    SIX_SERVICES_UNSERVED,
    THREE_ENDPOINTS,
    NodePortCase,
    Scenario,
    Why,
)
from kubectl_proxyctl.modes.tracing import Verdict
from kubectl_proxyctl.plan.planner import DetectLocalMode, ProxyConfig
from nfthelpers import NFT_SKIP, Scratch, build_nft, scratch_netns

Obj = dict[str, Any]
Build = Callable[..., Any]  # (objects, config=None, nftables_render=None) → something with .trace()


def mode_param(mode: str, *values: Any, id: str | None = None) -> Any:
    """One parametrize entry for `mode`; the nftables ones need the real kernel (`lab`)."""
    marks = [pytest.mark.lab] if mode == "nftables" else []
    return pytest.param(mode, *values, marks=marks, id=id or mode)


ALL_MODES = [mode_param(m) for m in MODES]


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("flow")


@pytest.fixture
def build(mode: str, request: pytest.FixtureRequest) -> Build:
    """Objects (+ config) → what `mode` renders, ready to trace. `nftables_render` are render
    options only nftables mode has (iptables mode ignores them)."""
    if mode == "iptables":
        def build_iptables(objects: Sequence[Obj], config: ProxyConfig | None = None,
                           nftables_render: Mapping[str, Any] | None = None) -> Any:
            return flowhelpers.build(objects, config)
        return build_iptables
    assert mode == "nftables", mode
    scratch: Scratch = request.getfixturevalue("scratch")

    def build_nftables(objects: Sequence[Obj], config: ProxyConfig | None = None,
                       nftables_render: Mapping[str, Any] | None = None) -> Any:
        return build_nft(scratch, objects, config, **dict(nftables_render or {}))
    return build_nftables


def check(build: Build, mode: str, scenario: Scenario) -> Any:
    """Build the scenario in `mode` and check every row (all mismatches reported at once)."""
    built = build(scenario.objects, scenario.config, scenario.nftables_render)
    flowhelpers.check_flows(built, flows.flows(scenario.rows, mode))
    return built


# --- kube-proxy's six services ------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_six_services(build: Build, mode: str) -> None:
    check(build, mode, SIX_SERVICES)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_six_services_ports_their_cluster_ips_do_not_serve(build: Build, mode: str) -> None:
    check(build, mode, SIX_SERVICES_UNSERVED)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_affinity_is_reported(build: Build, mode: str) -> None:
    built = build(SIX)
    sticky = built.trace(EXTERNAL, "5.6.7.8", 80, "external")
    assert sticky.affinity_seconds == 10800
    assert sticky.endpoint_probabilities() == {"10.180.0.3:80": 1.0}
    assert built.trace(POD, "172.30.0.41", 80).affinity_seconds is None


@pytest.mark.parametrize("mode", ALL_MODES)
def test_probabilities_of_three_endpoints(build: Build, mode: str) -> None:
    result = build(THREE_ENDPOINTS).trace(POD, "172.30.0.9", 80)
    assert result.verdict == Verdict.DNAT
    odds = result.endpoint_probabilities()
    assert list(odds) == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    assert all(abs(p - 1 / 3) < 1e-9 for p in odds.values())
    assert abs(sum(o.probability for o in result.outcomes) - 1.0) < 1e-9
    assert result.masquerade is False


# --- TestClusterIPGeneral -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_cluster_ip_general(build: Build, mode: str) -> None:
    check(build, mode, CLUSTER_IP_GENERAL)


# --- TestLoadBalancer -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_load_balancer_source_ranges(build: Build, mode: str) -> None:
    check(build, mode, LOAD_BALANCER_SOURCE_RANGES)


# --- TestNodePorts ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode,case", [mode_param(m, c, id=f"{m}-{c.id}") for c in NODE_PORT_CASES for m in c.modes])
def test_node_ports(build: Build, mode: str, case: NodePortCase) -> None:
    check(build, mode, flows.node_ports(case))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_health_check_node_port(build: Build, mode: str) -> None:
    check(build, mode, HEALTH_CHECK_NODE_PORT)
    check(build, mode, HEALTH_CHECK_NODE_PORT_GONE)


# --- traffic policies ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_external_traffic_policy_local(build: Build, mode: str) -> None:
    check(build, mode, EXTERNAL_TRAFFIC_POLICY_LOCAL)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_external_traffic_policy_local_without_local_endpoints(build: Build, mode: str) -> None:
    check(build, mode, EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_external_traffic_policy_cluster(build: Build, mode: str) -> None:
    check(build, mode, EXTERNAL_TRAFFIC_POLICY_CLUSTER)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_service_ips_that_are_node_addresses_win_over_node_ports(build: Build, mode: str) -> None:
    check(build, mode, NODE_ADDRESS_AS_SERVICE_IP)


@pytest.mark.parametrize(
    "mode,itp,nodes,output",
    [mode_param(m, *case, id=f"{m}-{case[0]}-{'+'.join(case[1])}") for case in INTERNAL_TRAFFIC_POLICY_CASES for m in MODES],
)
def test_internal_traffic_policy(build: Build, mode: str, itp: str, nodes: tuple[str, ...], output: str) -> None:
    with_endpoints, deleted = flows.internal_traffic_policy(itp, nodes, output)
    check(build, mode, with_endpoints)
    check(build, mode, deleted)


@pytest.mark.parametrize("mode,etp", [mode_param(m, etp, id=f"{m}-{etp}") for etp in ("Local", "Cluster") for m in MODES])
def test_terminating_endpoints(build: Build, mode: str, etp: str) -> None:
    for scenario in flows.terminating_endpoints(etp):
        check(build, mode, scenario)


# --- TestInternalExternalMasquerade --------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,masquerade_all,detector,overrides",
    [mode_param(m, masquerade_all, detector, overrides, id=f"{m}-{name}")
     for name, masquerade_all, detector, overrides in MASQ_VARIANTS for m in MODES],
)
def test_internal_external_masquerade(build: Build, mode: str, masquerade_all: bool, detector: bool,
                                      overrides: dict) -> None:
    check(build, mode, flows.internal_external_masquerade(masquerade_all, detector, overrides))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_no_endpoints_reject(build: Build, mode: str) -> None:
    check(build, mode, NO_ENDPOINTS_REJECT)


# --- local-traffic detectors ---------------------------------------------------------------------

# The node's own packet: nftables mode's detector rule reads iifname, which is `lo` for it.
NODE_PACKET = {"iptables": {}, "nftables": {"in_interface": "lo"}}


@pytest.mark.parametrize("mode", ALL_MODES)
def test_bridge_interface_detector_needs_the_interface(build: Build, mode: str) -> None:
    built = build(ONE_ENDPOINT, default_config(detect_local_mode=DetectLocalMode.BridgeInterface, pod_bridge_interface="cbr0"))
    from_pod = built.trace(POD, "172.30.0.9", 80, in_interface="cbr0")
    assert from_pod.verdict == Verdict.DNAT and from_pod.masquerade is False
    from_eth = built.trace(EXTERNAL, "172.30.0.9", 80, "external", in_interface="eth0")
    assert from_eth.verdict == Verdict.DNAT and from_eth.masquerade is True
    unknown = built.trace(POD, "172.30.0.9", 80)
    assert unknown.verdict == Verdict.UNKNOWN
    # the answer depends on the interface: with it, no SNAT; without, SNAT
    assert unknown.notes[0] == "the answer depends on whether the packet arrives on cbr0"
    assert "`ip -json route show`" in unknown.notes[1]
    assert [(c, b.verdict, b.masquerade) for c, b in unknown.branches] == [
        ("the packet arrives on cbr0", Verdict.DNAT, False), ("otherwise", Verdict.DNAT, True)]
    from_node = built.trace(NODE_IP, "172.30.0.9", 80, "node", **NODE_PACKET[mode])
    assert from_node.verdict == Verdict.DNAT and from_node.masquerade is True


# --- IPv6 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_ipv6_flows(build: Build, mode: str) -> None:
    check(build, mode, IPV6)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_summary_mentions_the_path(build: Build, mode: str) -> None:
    text = build(SIX).trace(POD, "172.30.0.44", 80).summary()
    assert "10.180.0.4:80 p=0.5000" in text  # the chains named: in each mode's file


# --- the table itself ------------------------------------------------------------------------------


def test_every_documented_difference_is_a_row() -> None:
    used = {r.nftables.why for _, rows in flows.all_tables() for r in rows if r.nftables is not None}
    assert used == set(Why), set(Why) - used


def test_a_mode_difference_really_differs() -> None:
    same = [f"{table}: {r.name}" for table, rows in flows.all_tables() for r in rows
            if r.nftables is not None and r.expected("nftables") == r.expected("iptables")]
    assert not same, same


def test_row_names_are_unique_in_a_table() -> None:
    for table, rows in flows.all_tables():
        names = [r.name for r in rows]
        assert len(names) == len(set(names)), table


def test_overrides_name_existing_rows() -> None:
    names = {r.name for r in MASQ_ROWS}
    for name, _, _, overrides in MASQ_VARIANTS:
        assert set(overrides) <= names, (name, set(overrides) - names)
    assert set(OLDER_LAYOUT) <= {r.name for r in EXTERNAL_TRAFFIC_POLICY_LOCAL_WITHOUT_LOCAL_ENDPOINTS.rows}
    with pytest.raises(AssertionError):
        flows.overridden(MASQ_ROWS, {"no such row": {"masq": True}})
    with pytest.raises(AssertionError, match="would hide"):
        flows.overridden(MASQ_ROWS, {"localhost to NodePort": {"masq": False}})
