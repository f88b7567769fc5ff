"""Packet-flow checks of iptables mode only.

The flow table shared by both modes (kube-proxy's packetFlowTest cases) is tests/flows.py,
run in every mode by tests/test_flows.py. Here: what only iptables mode has — its rule and
chain names in traces, the localhost node-port firewall chain — and the tracer on
hand-written iptables-save text.
"""

from __future__ import annotations

import pytest

import flows
from flowhelpers import EXTERNAL, NODE_IP, POD, build, default_config
from flows import NODE_PORT_CASES, ONE_ENDPOINT, SIX, NodePortCase
from kubectl_proxyctl.model import NodeInfo
from kubectl_proxyctl.modes.iptables.parse import parse
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.tracing import LocalNode, Origin, Packet, Verdict
from kubectl_proxyctl.plan.planner import DetectLocalMode

# --- iptables-only checks of the shared flows (tests/test_flows.py) ---------------------------


def test_affinity_failed_rcheck_is_not_a_step() -> None:
    sticky = build(SIX).trace(EXTERNAL, "5.6.7.8", 80, "external")
    assert sticky.affinity_seconds == 10800
    assert not any("--rcheck" in s.rule for s in sticky.rules_traversed)  # a failed check is not a step


@pytest.mark.parametrize("case", [c for c in NODE_PORT_CASES if "iptables" in c.modes], ids=lambda c: c.id)
def test_node_ports_localhost_firewall_chain(case: NodePortCase) -> None:
    scenario = flows.node_ports(case)
    built = build(scenario.objects, scenario.config)
    assert ("-A KUBE-FIREWALL" in built.rendered.text) == (case.family != "IPv6" and case.localhost)


def test_bridge_interface_detector_answer_depends_on_the_input_interface_until_routes_tell() -> None:
    built = build(ONE_ENDPOINT, default_config(detect_local_mode=DetectLocalMode.BridgeInterface,
                                               pod_bridge_interface="cbr0"))
    unknown = trace(built.ruleset, Packet(POD, "172.30.0.9", 80), built.local_ips)
    assert unknown.verdict == Verdict.UNKNOWN
    assert unknown.notes[0] == "the answer depends on whether the packet arrives on cbr0"
    assert "`ip -json route show`" in unknown.notes[1]
    assert [(c, b.verdict, b.masquerade) for c, b in unknown.branches] == [
        ("the packet arrives on cbr0", Verdict.DNAT, False), ("otherwise", Verdict.DNAT, True)]
    routes = LocalNode(tuple(built.local_ips), routes=(("10.0.0.0/24", "cbr0"), ("default", "eth0")))
    on_bridge = trace(built.ruleset, Packet(POD, "172.30.0.9", 80), routes)
    assert on_bridge.verdict == Verdict.DNAT and on_bridge.masquerade is False and not on_bridge.settled
    outside = trace(built.ruleset, Packet(EXTERNAL, "172.30.0.9", 80, origin=Origin.EXTERNAL), routes)
    assert outside.verdict == Verdict.DNAT and outside.masquerade is True
    from_node = trace(built.ruleset, Packet(NODE_IP, "172.30.0.9", 80, origin=Origin.NODE), built.local_ips)
    assert from_node.verdict == Verdict.DNAT and from_node.masquerade is True


def test_summary_names_the_iptables_chains() -> None:
    text = build(SIX).trace(POD, "172.30.0.44", 80).summary()
    assert "10.180.0.4:80 p=0.5000" in text and "nat/KUBE-SERVICES" in text and "KUBE-SEP-UKSFD7AGPMPPLUHC" in text


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
    assert result.notes == ("the answer depends on whether the source is in ipset SOMESET",
                            "ipset SOMESET is not in the input: `ipset save` output (--rules-file, or collected "
                            "from the node) settles it")
    assert [(c, b.endpoint_probabilities()) for c, b in result.branches] == [
        ("the source is in ipset SOMESET", {"10.9.0.1:80": 1.0}), ("otherwise", {"10.9.0.2:80": 1.0})]


def test_an_open_condition_every_world_answers_alike_is_settled() -> None:
    rs = parse(_one_chain(
        "-A PREROUTING -i docker0 -j X\n"
        "-A PREROUTING -j DNAT --to-destination 10.9.0.2:80\n"
        "-A X -j RETURN\n"))
    result = trace(rs, Packet(POD, "172.30.0.1", 80), [])
    assert result.verdict == Verdict.DNAT and result.endpoint_probabilities() == {"10.9.0.2:80": 1.0}
    assert result.settled == ("the packet arrives on docker0",) and not result.branches
    assert sum(o.probability for o in result.outcomes) == pytest.approx(1.0)


def test_one_interface_assumed_decides_the_others() -> None:
    rs = parse(_one_chain(
        "-A PREROUTING -i docker0 -j DNAT --to-destination 10.9.0.1:80\n"
        "-A PREROUTING -i cali+ -j DNAT --to-destination 10.9.0.3:80\n"
        "-A PREROUTING -i caliabc -j DNAT --to-destination 10.9.0.4:80\n"
        "-A PREROUTING -j DNAT --to-destination 10.9.0.2:80\n"))
    result = trace(rs, Packet(POD, "172.30.0.1", 80), [])
    answers = {c: tuple(b.endpoint_probabilities()) for c, b in result.branches}
    # docker0 never meets cali+ in one world; caliabc is only ever reached inside cali+.
    assert answers == {"the packet arrives on docker0": ("10.9.0.1:80",),
                       "the packet arrives on cali+": ("10.9.0.3:80",),
                       "otherwise": ("10.9.0.2:80",)}


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
