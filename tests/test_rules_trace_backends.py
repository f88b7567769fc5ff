"""Packet flows through nftables and IPVS rules: render-free, straight from the tools' output.

The nft ruleset is kube-proxy.nft (hand-written after reference §3) as `nft -j` printed it;
the IPVS node is IPVS mode's iptables rules and ipsets (real iptables-save / ipset save)
plus hand-written ipvsadm output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubectl_proxyctl.inspect.graph import RuleGraph, load_texts
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.inspect.paths import trace_packet
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult, Verdict

DATA = Path(__file__).parent / "data" / "rules"
NODE = LocalNode(("192.168.0.2",))
POD, EXTERNAL, BLOCKED = "10.0.1.7", "203.0.113.2", "203.0.113.130"

NFT = load_texts([("nft", (DATA / "kube-proxy.nft.json").read_text())])
IPVS = load_texts([(name, (DATA / name).read_text()) for name in ("ipvs-node.iptables-ipset.txt", "ipvsadm-save.txt")])


def flow(graph: RuleGraph, src: str, dst: str, port: int, origin: str = "pod") -> TraceResult:
    assert graph.mode is not None
    return trace_packet(graph, graph.mode, Packet(src, dst, port, "tcp", origin), NODE)


def outcome(r: TraceResult) -> str:
    if r.verdict == Verdict.DNAT:
        return ", ".join(f"{e.destination}={e.probability:.2f}" for e in r.endpoints)
    return str(r.verdict)


@pytest.mark.parametrize("src,dst,port,origin,want,masq", [
    (POD, "172.30.0.41", 80, "pod", "10.180.0.1:80=0.50, 10.180.0.2:80=0.50", False),
    ("192.168.0.2", "172.30.0.41", 80, "node", "10.180.0.1:80=0.50, 10.180.0.2:80=0.50", True),
    (EXTERNAL, "172.30.0.41", 80, "external", "10.180.0.1:80=0.50, 10.180.0.2:80=0.50", True),
    (POD, "172.30.0.46", 80, "pod", "REJECT", False),  # no endpoints
    (POD, "172.30.0.41", 81, "pod", "REJECT", False),  # cluster-ips-check: an unused port of a ClusterIP
    (EXTERNAL, "192.168.0.2", 3001, "external", "DROP", False),  # ETP Local, no endpoint here
    (POD, "192.168.0.2", 3001, "pod", "10.180.0.2:80=1.00", False),  # pods are short-circuited
    (EXTERNAL, "1.2.3.4", 80, "external", "DROP", False),
    (EXTERNAL, "5.6.7.8", 80, "external", "10.180.0.3:80=1.00", True),  # inside the source ranges
    (BLOCKED, "5.6.7.8", 80, "external", "DROP", False),  # outside them
    (POD, "10.99.0.1", 80, "pod", "NONE", False),
])
def test_nftables_flows(src: str, dst: str, port: int, origin: str, want: str, masq: bool) -> None:
    r = flow(NFT, src, dst, port, origin)
    assert outcome(r) == want, r.summary()
    if r.verdict == Verdict.DNAT:
        assert r.masquerade is masq, r.summary()


def test_nftables_affinity_and_steps() -> None:
    r = flow(NFT, EXTERNAL, "5.6.7.8", 80, "external")
    assert r.affinity_seconds == 10800
    chains = [s.chain for s in r.outcomes[0].steps]
    assert chains[:2] == ["filter-prerouting", "firewall-check"]
    assert "goto firewall-HVFWP5L3-ns5/svc5/tcp/p80" in [s.action for s in r.outcomes[0].steps]
    assert chains[-1] == "masquerading"
    assert all(s.table == "ip kube-proxy" for s in r.outcomes[0].steps)


def test_nftables_unknown_expressions_are_not_guessed() -> None:
    text = (DATA / "kube-proxy.nft.json").read_text().replace('"key": "l4proto"}}, "right": "tcp"',
                                                              '"key": "skuid"}}, "right": "eth0"', 1)
    graph = load_texts([("nft", text)])
    r = flow(graph, POD, "172.30.0.41", 80)
    assert r.verdict == Verdict.UNKNOWN and "cannot evaluate meta skuid" in r.notes[0]


def test_nftables_an_interface_nobody_named_is_assumed_both_ways() -> None:
    text = (DATA / "kube-proxy.nft.json").read_text().replace('"key": "l4proto"}}, "right": "tcp"',
                                                              '"key": "iifname"}}, "right": "eth*"', 1)
    graph = load_texts([("nft", text)])
    r = flow(graph, POD, "172.30.0.41", 80)
    assert r.verdict == Verdict.UNKNOWN and r.notes[0] == "the answer depends on whether the packet arrives on eth+"
    assert [c for c, _ in r.branches] == ["the packet arrives on eth+", "otherwise"]


@pytest.mark.parametrize("src,dst,port,origin,want,masq", [
    (POD, "172.30.0.41", 80, "pod", "10.180.0.1:80=0.50, 10.180.0.2:80=0.50", False),
    ("192.168.0.2", "172.30.0.41", 80, "node", "10.180.0.1:80=0.50, 10.180.0.2:80=0.50", True),
    ("10.180.0.1", "172.30.0.41", 80, "pod", "10.180.0.1:80=0.50, 10.180.0.2:80=0.50", None),  # hairpin
    (EXTERNAL, "192.168.0.2", 3003, "external", "10.180.0.3:80=1.00", True),
    (POD, "192.168.0.2", 3003, "pod", "10.180.0.3:80=1.00", True),  # every NodePort is masqueraded
    (POD, "172.30.0.46", 80, "pod", "REJECT", False),  # a virtual service without real servers
    (POD, "172.30.0.46", 81, "pod", "REJECT", False),  # KUBE-IPVS-FILTER: a VIP's other ports
])
def test_ipvs_flows(src: str, dst: str, port: int, origin: str, want: str, masq: bool | None) -> None:
    assert IPVS.mode == Mode.IPVS
    r = flow(IPVS, src, dst, port, origin)
    assert outcome(r) == want, r.summary()
    if r.verdict == Verdict.DNAT:
        assert r.masquerade is masq, r.summary()


def test_ipvs_weights_and_persistence() -> None:
    graph = load_texts([(n, (DATA / n).read_text()) for n in ("ipvs-node.iptables-ipset.txt", "ipvsadm-list.txt")])
    r = flow(graph, POD, "172.30.0.41", 80)
    assert outcome(r) == "10.180.0.1:80=0.50, 10.180.0.2:80=0.50"  # weight 0: no new connections
    assert any("round" in n or "in turn" in n for n in r.notes)
    assert flow(graph, POD, "172.30.0.43", 80).affinity_seconds == 10800
