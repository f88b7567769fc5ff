"""The inspector's side of iptables mode: kube-proxy's iptables layout read back from
`iptables-save` (either backend): presence, trace, verify, explain facts, dump, chain graph.
"""

from __future__ import annotations

from typing import Any, Sequence

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import Mode, NodeRules, PortsRead
from kubectl_proxyctl.modes.facts import DumpLine, Edge, Problem
from kubectl_proxyctl.modes.findings import Report
from kubectl_proxyctl.modes.iptables import explain
from kubectl_proxyctl.modes.iptables.dump import iptables_lines
from kubectl_proxyctl.modes.iptables.names import resolve_iptables
from kubectl_proxyctl.modes.iptables.naming import SERVICE_CHAIN_PREFIXES
from kubectl_proxyctl.modes.iptables.software import detect_layout, other_software
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.iptables.verify import verify_iptables
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult, summarize


class IptablesReader:
    mode = Mode.IPTABLES

    def present(self, rules: NodeRules) -> str:
        rs, dump = rules.ruleset, rules.iptables_dump
        if rs is None or dump is None or not dump.holds_services():
            return ""
        nat = rs.table("nat")
        count = sum(1 for c in nat.chains if c.startswith(SERVICE_CHAIN_PREFIXES)) if nat else 0
        return f"{count} KUBE-SVC/SVL/EXT/FW/SEP chains"

    def trace(self, rules: NodeRules, packet: Packet, node: LocalNode) -> TraceResult:
        ruleset = rules.ruleset
        if ruleset is None:
            return summarize(packet, [])
        return trace(ruleset, packet, node, rules.ipsets)

    def verify(self, rules: NodeRules, state: ClusterState, node: NodeContext,
               selector: ServiceSelector | None) -> Report:
        return verify_iptables(rules, state, node, selector)

    def read_ports(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector,
                   facts: bool = True) -> PortsRead:
        rs = rules.ruleset
        if rs is None:
            return PortsRead(None, False)
        names = resolve_iptables(rs, state, selector)
        return PortsRead(explain.facts_from_iptables(names, rs) if facts else None, explain.family_v6(names))

    def layout_problems(self, rules: NodeRules) -> list[Problem]:
        rs = rules.ruleset
        if rs is None:
            return []
        out = explain.hook_problems(rs)
        missing = [t for t in ("nat", "filter") if rs.table(t) is None]
        if len(missing) == 1:
            out.append(Problem("warning", f"the {missing[0]} table is not in the input (an `iptables-save -t` of one "
                                          f"table?): its rules are not followed, so verdicts may be missing; the "
                                          "whole `iptables-save` output settles it"))
        layout = detect_layout(rs)
        if layout is not None and not layout.current:
            out.append(Problem("note", f"these are the rules of {layout.title} ({layout.evidence}): explained as "
                                       "that layout works"))
        others = other_software(rs)
        if others:
            out.append(Problem("note", "other software's rules on this node: " + "; ".join(
                f"{owner} ({', '.join(chains[:3])}{', …' if len(chains) > 3 else ''})" for owner, chains in others)))
        return out

    def dump_lines(self, rules: NodeRules, state: ClusterState | None, node_ips: Sequence[str],
                   selector: ServiceSelector | None) -> list[DumpLine]:
        dumps: Sequence[Any] = rules.iptables
        several = len({d.backend for d in dumps}) > 1 or len(dumps) > 1
        out: list[DumpLine] = []
        for dump in dumps:
            label = f"iptables ({dump.backend})" if several and dump.backend else "iptables"
            out += iptables_lines(dump.ruleset, label, state, selector)
        return out

    def edges(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
        rs = rules.ruleset
        return explain.iptables_edges(rs, state, selector) if rs is not None else []


READER = IptablesReader()
