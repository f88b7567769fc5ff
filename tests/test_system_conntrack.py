"""UDP conntrack clean-up: the selection rule, the CLI transport against a scripted
executor, and both transports against real flows DNATed inside a namespace topology."""

from __future__ import annotations

import pytest

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.system.conntrack import (
    CLI,
    NETLINK,
    ConntrackSystem,
    Flow,
    parse_conntrack_list,
    stale_udp_flows,
)
from kubectl_proxyctl.system.executor import FakeExecutor, Result
from kubectl_proxyctl.system.iptables import Backend, IptablesSystem

from netns import Topology, netns_factory, requires_lab  # noqa: F401  (fixture)

SVC = "10.96.0.10"


def flow(dst: str, dport: int, reply_src: str, sport: int = 40000, src: str = "10.244.1.10") -> Flow:
    return Flow(src, dst, sport, dport, reply_src, src, dport, sport)


# --- unit --------------------------------------------------------------------------------


def test_stale_flows_follow_kube_proxys_reconciler() -> None:
    flows = [
        flow(SVC, 53, "10.244.1.11", 1),  # served by a serving endpoint: keep
        flow(SVC, 53, "10.244.1.12", 2),  # DNATed to an endpoint that is gone: delete
        flow(SVC, 53, SVC, 3),  # created while the service had no endpoints: delete
        flow("172.18.0.2", 30053, "10.244.1.12", 4),  # NodePort to a gone endpoint: delete
        flow("172.18.0.2", 30053, "10.244.1.11", 5),  # NodePort, serving: keep
        flow("10.244.1.12", 53, "10.244.1.12", 6),  # pod to pod, not a service: keep
        flow("10.96.0.99", 53, "10.96.0.99", 7),  # a service IP we were not told about: keep
    ]
    stale = stale_udp_flows(flows, {SVC: ["10.244.1.11"]}, {30053: {"10.244.1.11"}})
    assert [f.orig_sport for f in stale] == [2, 3, 4]
    # A service with no serving endpoints loses every flow.
    assert [f.orig_sport for f in stale_udp_flows(flows, {SVC: []}, {})] == [1, 2, 3]


def test_stale_flows_compare_ipv6_addresses_canonically() -> None:
    f = Flow("fd00::a", "fd00:0:0::10", 1, 53, "fd00::0:b", "fd00::a", 53, 1)
    assert stale_udp_flows([parse_conntrack_list(_line(f))[0]], {"fd00::10": ["fd00::b"]}, {}) == []
    assert len(stale_udp_flows([parse_conntrack_list(_line(f))[0]], {"fd00::10": ["fd00::c"]}, {})) == 1


def _line(f: Flow) -> str:
    return (
        f"udp      17 29 src={f.orig_src} dst={f.orig_dst} sport={f.orig_sport} dport={f.orig_dport} "
        f"[UNREPLIED] src={f.reply_src} dst={f.reply_dst} sport={f.reply_sport} dport={f.reply_dport} mark=0 use=1"
    )


def test_parse_conntrack_list() -> None:
    text = (
        "udp      17 25 src=10.244.1.10 dst=10.96.0.10 sport=40001 dport=53 src=10.244.1.12 dst=10.244.1.10 "
        "sport=53 dport=40001 [ASSURED] mark=0 use=1\n"
        "udp      17 29 src=172.18.0.100 dst=172.18.0.2 sport=41000 dport=30053 [UNREPLIED] src=10.244.1.11 "
        "dst=172.18.0.100 sport=53 dport=41000 mark=0 zone=3 use=1\n"
        "garbage line\n"
    )
    assert parse_conntrack_list(text) == [
        Flow("10.244.1.10", "10.96.0.10", 40001, 53, "10.244.1.12", "10.244.1.10", 53, 40001),
        Flow("172.18.0.100", "172.18.0.2", 41000, 30053, "10.244.1.11", "172.18.0.100", 53, 41000),
    ]


def test_cli_transport_lists_once_and_deletes_each_stale_entry() -> None:
    flows = [flow(SVC, 53, "10.244.1.11", 1), flow(SVC, 53, "10.244.1.12", 2), flow(SVC, 53, "10.244.1.12", 3)]
    fake = FakeExecutor(default=None)
    fake.script(["conntrack", "-L"], Result(0, "\n".join(_line(f) for f in flows) + "\n",
                                            "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n"))
    fake.script(["conntrack", "-D"],
                Result(0, "", "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been deleted.\n"),
                Result(1, "", "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"))
    ct = ConntrackSystem(fake, netlink=False)
    assert ct.delete_udp_to(SVC, except_reply_sources={"10.244.1.11"}) == 1  # the second one had expired
    assert ct.method == CLI
    assert fake.argvs() == [
        ("conntrack", "-L", "-p", "udp", "-f", "ipv4"),
        ("conntrack", "-D", "-p", "udp", "-f", "ipv4", "--orig-src", "10.244.1.10", "--orig-dst", SVC,
         "--sport", "2", "--dport", "53"),
        ("conntrack", "-D", "-p", "udp", "-f", "ipv4", "--orig-src", "10.244.1.10", "--orig-dst", SVC,
         "--sport", "3", "--dport", "53"),
    ]


def test_cli_transport_errors_and_ipv6_family() -> None:
    fake = FakeExecutor(default=Result(1, "", "conntrack v1.4.7 (conntrack-tools): Operation not permitted\n"))
    with pytest.raises(ProxyctlError, match="conntrack -L failed: .*Operation not permitted"):
        ConntrackSystem(fake, IPFamily.IPv6, netlink=False).reconcile_udp({"fd00::10": []}, {})
    assert fake.argvs() == [("conntrack", "-L", "-p", "udp", "-f", "ipv6")]
    with pytest.raises(ProxyctlError, match="conntrack not found: install the conntrack package"):
        ConntrackSystem(FakeExecutor(missing={"conntrack"}), netlink=False).udp_flows()
    with pytest.raises(ValueError):
        ConntrackSystem(FakeExecutor(), netlink=False).delete_udp_to()


# --- lab ---------------------------------------------------------------------------------

NODEPORT = 30053
# Service 10.96.0.10:53 and NodePort 30053 are DNATed by client source port, so the test
# decides which pod each flow lands on: sports 4x001-4x002 → pod-c (the "old" endpoint),
# 4x003-4x004 → pod-b (the serving one).
DNAT_RULES = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:PXT-SVC - [0:0]
-A PREROUTING -d {SVC}/32 -p udp -m udp --dport 53 -j PXT-SVC
-A PREROUTING -d 172.18.0.2/32 -p udp -m udp --dport {NODEPORT} -j PXT-SVC
-A PXT-SVC -p udp -m udp --sport 40001:40002 -j DNAT --to-destination 10.244.1.12:53
-A PXT-SVC -p udp -m udp --sport 41001:41002 -j DNAT --to-destination 10.244.1.12:53
-A PXT-SVC -p udp -j DNAT --to-destination 10.244.1.11:53
COMMIT
"""


def make_flows(topo: Topology) -> None:
    IptablesSystem(executor=topo.executor("node"), backend=Backend.NFT).restore(DNAT_RULES)
    for sport, expected in ((40001, "pod-c"), (40002, "pod-c"), (40003, "pod-b"), (40004, "pod-b")):
        assert topo.udp_request("pod-a", SVC, 53, sport=sport) == expected
    assert topo.udp_request("pod-a", "10.244.1.12", 53, sport=40005) == "pod-c"  # no service involved
    assert topo.node_ip is not None
    for sport, expected in ((41001, "pod-c"), (41003, "pod-b")):
        assert topo.udp_request("client", topo.node_ip, NODEPORT, sport=sport) == expected


def listed_sports(topo: Topology) -> set[int]:
    out = topo.exec("node", ["conntrack", "-L", "-p", "udp"]).stdout
    return {f.orig_sport for f in parse_conntrack_list(out)}


TRANSPORTS = [pytest.param(True, id="netlink"), pytest.param(False, id="cli")]


@pytest.mark.lab
@requires_lab("conntrack", "iptables-nft-restore")
@pytest.mark.parametrize("netlink", TRANSPORTS)
def test_delete_udp_to_a_service_ip_keeps_flows_of_serving_endpoints(
    netns_factory, netlink: bool  # noqa: F811
) -> None:
    topo = netns_factory(pods=3, client=True)
    make_flows(topo)
    assert listed_sports(topo) == {40001, 40002, 40003, 40004, 40005, 41001, 41003}
    ct = ConntrackSystem(topo.executor("node"), netlink=netlink)
    before = {f.orig_sport: f for f in ct.udp_flows()}
    assert before[40001].reply_src == "10.244.1.12" and before[40003].reply_src == "10.244.1.11"
    assert ct.delete_udp_to(SVC, except_reply_sources={"10.244.1.11"}) == 2
    assert ct.method == (NETLINK if netlink else CLI)
    assert listed_sports(topo) == {40003, 40004, 40005, 41001, 41003}
    assert ct.delete_udp_to(SVC, except_reply_sources={"10.244.1.11"}) == 0
    # Traffic on a deleted 5-tuple is steered afresh: now (rules unchanged) to pod-c again,
    # which shows that the kernel really forgot the entry rather than hiding it.
    assert topo.udp_request("pod-a", SVC, 53, sport=40001) == "pod-c"


@pytest.mark.lab
@requires_lab("conntrack", "iptables-nft-restore")
@pytest.mark.parametrize("netlink", TRANSPORTS)
def test_reconcile_udp_covers_service_ips_and_node_ports(netns_factory, netlink: bool) -> None:  # noqa: F811
    topo = netns_factory(pods=3, client=True)
    make_flows(topo)
    ct = ConntrackSystem(topo.executor("node"), netlink=netlink)
    deleted = ct.reconcile_udp({SVC: {"10.244.1.11"}}, {NODEPORT: ["10.244.1.11"]})
    assert deleted == 3
    assert listed_sports(topo) == {40003, 40004, 40005, 41003}
    # The conntrack table of the host is not touched: the flows exist only in the node netns.
    assert not any(f.orig_dst == SVC for f in ConntrackSystem(netlink=netlink).udp_flows())
