"""The inspector's side of IPVS mode: virtual services (`ipvsadm -Sn` / `-Ln`), the ipsets
(`ipset save`) and the iptables companion rules kube-proxy's IPVS mode keeps: presence, trace,
verify, dump, chain graph. Virtual services carry no names, so explain needs the Service
objects (API or `--from-file`) to know which service ports to trace.
"""

from __future__ import annotations

from typing import Sequence

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import Mode, NodeRules, PortsRead
from kubectl_proxyctl.modes.facts import DumpLine, Edge, Problem
from kubectl_proxyctl.modes.findings import Report
from kubectl_proxyctl.modes.iptables.reader import READER as IPTABLES
from kubectl_proxyctl.modes.ipvs.explain import ipvs_edges, ipvs_lines
from kubectl_proxyctl.modes.ipvs.trace import trace_ipvs
from kubectl_proxyctl.modes.ipvs.verify import verify_ipvs
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult

# Chains only IPVS mode creates (reference §4.3).
IPVS_CHAINS = frozenset({
    "KUBE-LOAD-BALANCER", "KUBE-NODE-PORT", "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
})


IPVS_SETS = frozenset({
    "KUBE-LOOP-BACK", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL", "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-LOCAL", "KUBE-LOAD-BALANCER-FW", "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR", "KUBE-NODE-PORT-TCP", "KUBE-NODE-PORT-UDP", "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-LOCAL-UDP", "KUBE-NODE-PORT-SCTP-HASH", "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT", "KUBE-IPVS-IPS",
})


class IpvsReader:
    mode = Mode.IPVS

    def present(self, rules: NodeRules) -> str:
        evidence = []
        services = rules.ipvs_services()
        if services:
            evidence.append(f"{len(services)} IPVS virtual services")
        sets = sorted(n for n in rules.ipsets if n in IPVS_SETS)
        if sets:
            evidence.append(f"ipsets {', '.join(sets[:3])}{', …' if len(sets) > 3 else ''}")
        rs = rules.ruleset
        if rs is not None:
            chains = sorted({c for t in rs.tables.values() for c in t.chains if c in IPVS_CHAINS})
            if chains:
                evidence.append(f"chains {', '.join(chains)}")
        return "; ".join(evidence)

    def trace(self, rules: NodeRules, packet: Packet, node: LocalNode) -> TraceResult:
        return trace_ipvs(rules, packet, node)

    def verify(self, rules: NodeRules, state: ClusterState, node: NodeContext,
               selector: ServiceSelector | None) -> Report:
        return verify_ipvs(rules, state, node, selector)

    def read_ports(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector,
                   facts: bool = True) -> PortsRead:
        v6 = IPTABLES.read_ports(rules, state, selector, facts=False).v6  # the companion rules tell
        return PortsRead(None, v6, "IPVS virtual services carry no service names: pass --from-file or use "
                                   "cluster access so the Service's addresses are known")

    def layout_problems(self, rules: NodeRules) -> list[Problem]:
        problems = []
        services = rules.ipvs_services()
        nat = rules.ruleset.tables.get("nat") if rules.ruleset is not None else None
        if services and (nat is None or "KUBE-SERVICES" not in nat.chains):
            problems.append(Problem("error", "incomplete input: IPVS virtual servers without kube-proxy's iptables "
                                    "rules (nat KUBE-SERVICES, KUBE-POSTROUTING): add the node's `iptables-save` "
                                    "output to know whether connections are masqueraded or dropped"))
        if services and not rules.ipsets:
            problems.append(Problem("warning", "no `ipset save` output: the iptables rules of IPVS mode match "
                                    "kube-proxy's ipsets (KUBE-CLUSTER-IP, KUBE-LOOP-BACK, …); add it to decide them"))
        return problems

    def dump_lines(self, rules: NodeRules, state: ClusterState | None, node_ips: Sequence[str],
                   selector: ServiceSelector | None) -> list[DumpLine]:
        return ipvs_lines(rules, state, node_ips, selector)

    def edges(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
        return ipvs_edges(rules, state, selector) + IPTABLES.edges(rules, state, selector)


READER = IpvsReader()
