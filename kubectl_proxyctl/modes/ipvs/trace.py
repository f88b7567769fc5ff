"""One packet through an IPVS node.

The iptables rules IPVS mode keeps (reference §4.3) decide filtering and the
masquerade mark, then the virtual service for (protocol, destination, port) picks a real
server. Every VIP is on the `kube-ipvs0` dummy interface, so it counts as a local address.
A real server's share is its weight over the sum of weights (weight 0: no new
connections); that is exact over time for `rr`/`wrr`, and the long-run expectation for
connection-count schedulers (`lc`, `wlc`, `sed`, `nq`) with equal load; for hashing
schedulers (`sh`, `dh`, `mh`) one client always gets the same real server, and the share
is over many clients. The result notes which. A virtual service without a usable real
server answers "port unreachable" (IPVS's ip_vs_leave), so it counts as REJECT.
Masquerading happens when the packet carries the masquerade mark (KUBE-MARK-MASQ's value)
into POSTROUTING (a packet the node sends has been through POSTROUTING already), or when
the real server is the client itself (hairpin, the KUBE-LOOP-BACK set).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from kubectl_proxyctl.modes.base import NodeRules
from kubectl_proxyctl.modes.iptables.parse import parse_mark
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.ipvs.parse import VirtualService
from kubectl_proxyctl.modes.tracing import (
    LocalNode,
    Outcome,
    Packet,
    Step,
    TraceResult,
    Verdict,
    summarize,
)

DEFAULT_MASQUERADE_MARK = 0x4000


_HASHING_SCHEDULERS = frozenset({"sh", "dh", "mh"})


_COUNTING_SCHEDULERS = frozenset({"lc", "wlc", "sed", "nq", "lblc", "lblcr", "fo", "ovf"})


def masquerade_mark(graph: NodeRules) -> int:
    """The mark KUBE-MARK-MASQ sets (the masquerade bit), 0x4000 when it cannot be read."""
    rs = graph.ruleset
    chain = rs.chain("nat", "KUBE-MARK-MASQ") if rs else None
    for rule in chain.rules if chain else ():
        for option in ("--set-xmark", "--or-mark", "--set-mark"):
            value = rule.target_option(option)
            if value:
                try:
                    return parse_mark(value)[0] or DEFAULT_MASQUERADE_MARK
                except ValueError:
                    return DEFAULT_MASQUERADE_MARK
    return DEFAULT_MASQUERADE_MARK


def scheduler_note(vs: VirtualService) -> str:
    if vs.scheduler in _HASHING_SCHEDULERS:
        return (f"IPVS scheduler {vs.scheduler} hashes the {'source' if vs.scheduler != 'dh' else 'destination'}: "
                "one client always reaches the same real server; the shares are over many clients")
    if vs.scheduler in _COUNTING_SCHEDULERS:
        return (f"IPVS scheduler {vs.scheduler} follows open connections: the shares are what equal load "
                "gives, by weight")
    return f"IPVS scheduler {vs.scheduler}: new connections go to the real servers in turn, by weight"


INCOMPLETE = "IPVS mode's iptables rules are not in the input (see the problems)"


def trace_ipvs(graph: NodeRules, packet: Packet, node: LocalNode) -> TraceResult:
    vips = tuple(dict.fromkeys(vs.address for vs in graph.ipvs_services() if vs.address))
    local = LocalNode(node.addresses + vips, node.name)
    ruleset = graph.ruleset
    base = trace(ruleset, packet, local, graph.ipsets) if ruleset is not None else summarize(packet, [])
    vs = graph.ipvs.find(packet.protocol.upper(), packet.dst, packet.dport) if graph.ipvs else None
    if vs is None or not local.is_local(packet.dst):
        return base
    if ruleset is None:
        # IPVS alone does not tell: kube-proxy's iptables rules decide masquerading, source
        # ranges and drops before and after it. Say what is missing rather than guess.
        step = Step("ipvs", vs.key, 0, f"virtual server {vs.key} ({len(vs.reals)} real servers)", "?", 1.0)
        result = summarize(packet, [Outcome(Verdict.UNKNOWN, 1.0, "", False, (), (step,), INCOMPLETE)])
        return replace(result, notes=result.notes or (INCOMPLETE,))
    mark = masquerade_mark(graph)
    weights = sum(max(r.weight, 0) for r in vs.reals)
    outcomes: list[Outcome] = []
    for o in base.outcomes:
        if o.verdict not in (Verdict.NONE, Verdict.ACCEPT):
            outcomes.append(o)
            continue
        if weights <= 0:
            # ip_vs_leave: no destination, so ICMP port unreachable and the packet dropped.
            step = Step("ipvs", vs.key, 0, "no real server with a weight above 0", "REJECT", o.probability)
            outcomes.append(replace(o, verdict=Verdict.REJECT, steps=o.steps + (step,),
                                    reason=f"IPVS {vs.key} has no usable real server"))
            continue
        affinity = o.affinity + ((f"ipvs {vs.key}", vs.persistent),) if vs.persistent else o.affinity
        for index, real in enumerate(vs.reals, start=1):
            if real.weight <= 0:
                continue
            share = o.probability * real.weight / weights
            masq = o.masquerade or bool(o.mark & mark) or _same_ip(real.address, packet.src)
            step = Step("ipvs", vs.key, index, f"-r {real.endpoint} -w {real.weight} ({vs.scheduler})",
                        f"DNAT {real.endpoint}", share)
            outcomes.append(Outcome(Verdict.DNAT, share, real.endpoint, masq, affinity, o.steps + (step,),
                                    f"IPVS to {real.endpoint}", o.mark))
    result = summarize(packet, outcomes)
    return replace(result, notes=result.notes + (scheduler_note(vs),))


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False
