"""The inspector's side of nftables mode: the `kube-proxy` tables read back from `nft -j list
ruleset` (ours or kube-proxy's, either base-chain layout): presence, trace, verify, explain
facts, dump, chain graph.
"""

from __future__ import annotations

from typing import Sequence

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import Mode, NodeRules, PortsRead
from kubectl_proxyctl.modes.facts import DumpLine, Edge, Problem
from kubectl_proxyctl.modes.findings import Report
from kubectl_proxyctl.modes.nftables import explain
from kubectl_proxyctl.modes.nftables.dump import nft_lines
from kubectl_proxyctl.modes.nftables.trace import family_tables, trace_nft
from kubectl_proxyctl.modes.nftables.verify import verify_nft
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult


class NftablesReader:
    mode = Mode.NFTABLES

    def present(self, rules: NodeRules) -> str:
        return ", ".join(f"table {t.title}" for t in rules.nft_tables())

    def trace(self, rules: NodeRules, packet: Packet, node: LocalNode) -> TraceResult:
        return trace_nft(family_tables(rules.nft, ":" in packet.dst) if rules.nft else (), packet, node)

    def verify(self, rules: NodeRules, state: ClusterState, node: NodeContext,
               selector: ServiceSelector | None) -> Report:
        return verify_nft(rules, state, node, selector)

    def read_ports(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector,
                   facts: bool = True) -> PortsRead:
        tables = rules.nft_tables()
        v6 = any(t.family == "ip6" for t in tables) and not any(t.family == "ip" for t in tables)
        if not facts:
            return PortsRead(None, v6)
        return PortsRead(explain.facts_from_nft(tables, None, selector), v6)

    def layout_problems(self, rules: NodeRules) -> list[Problem]:
        return explain.hook_problems(rules.nft_tables())

    def dump_lines(self, rules: NodeRules, state: ClusterState | None, node_ips: Sequence[str],
                   selector: ServiceSelector | None) -> list[DumpLine]:
        return nft_lines(rules.nft_tables(), selector)

    def edges(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
        return explain.nft_edges(rules.nft_tables(), selector)


READER = NftablesReader()
