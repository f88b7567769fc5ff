"""The inspector's side of eBPF mode: the pinned maps and the programs attached to the cgroup
(read with bpftool into one document, `maps.document`), plus the `proxyctl-ebpf` nft table
for entry points reached from outside the node: presence, trace, verify, explain facts, dump,
graph. The maps name their own entries (the `names` map), so explain works from a dump alone.
"""

from __future__ import annotations

from typing import Sequence

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import Mode, NodeRules, PortsRead
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.explain import ebpf_edges, ebpf_lines, facts_from_maps, families_of, layout_problems
from kubectl_proxyctl.modes.ebpf.parse import EbpfState
from kubectl_proxyctl.modes.ebpf.trace import entry_tables, trace_ebpf
from kubectl_proxyctl.modes.ebpf.verify import verify_ebpf
from kubectl_proxyctl.modes.facts import DumpLine, Edge, Problem
from kubectl_proxyctl.modes.findings import Report
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult


class EbpfReader:
    mode = Mode.EBPF

    def present(self, rules: NodeRules) -> str:
        ebpf: EbpfState | None = rules.ebpf
        if ebpf is None:
            return ""
        evidence = []
        count = ebpf.service_count()
        if count:
            evidence.append(f"{count} eBPF service entries")
        attached = [p for p in ebpf.programs or () if any(p.name == s.name for s in maps.PROGRAMS)]
        if attached:
            evidence.append(f"{len(attached)} programs on {ebpf.cgroup or 'a cgroup'}")
        if not evidence and ebpf.marker is not None:
            evidence.append(f"maps under {ebpf.pin_path}")
        if not evidence and not ebpf.maps_read and ebpf.notes:
            evidence.append(f"maps pinned under {ebpf.pin_path}, not read ({ebpf.notes[0]})")
        tables = entry_tables(rules)
        if evidence and tables:
            evidence.append(", ".join(f"table {t.title}" for t in tables))
        return "; ".join(evidence)

    def trace(self, rules: NodeRules, packet: Packet, node: LocalNode) -> TraceResult:
        return trace_ebpf(rules, packet, node)

    def verify(self, rules: NodeRules, state: ClusterState, node: NodeContext,
               selector: ServiceSelector | None) -> Report:
        return verify_ebpf(rules, state, node, selector)

    def read_ports(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector,
                   facts: bool = True) -> PortsRead:
        ebpf: EbpfState | None = rules.ebpf
        families = families_of(ebpf, selector) if ebpf is not None else set()
        if not families and ebpf is not None:
            families = families_of(ebpf, None)
        if not families:
            families = {6} if entry_tables(rules, True) and not entry_tables(rules, False) else {4}
        v6 = families == {6}
        if not facts:
            return PortsRead(None, v6)
        named = ebpf is None or any(r.name for f in ebpf.families.values() for r in f.services.values())
        if ebpf is not None and ebpf.service_count() and not named:
            return PortsRead(None, v6, "the eBPF names map is empty or was not read, so the entries carry no service "
                                       "names: pass --from-file or use cluster access so the Service's addresses "
                                       "are known")
        return PortsRead(facts_from_maps(rules, selector, v6), v6)

    def layout_problems(self, rules: NodeRules) -> list[Problem]:
        return layout_problems(rules)

    def dump_lines(self, rules: NodeRules, state: ClusterState | None, node_ips: Sequence[str],
                   selector: ServiceSelector | None) -> list[DumpLine]:
        if rules.ebpf is None:
            return []
        return ebpf_lines(rules, state, node_ips, selector)

    def edges(self, rules: NodeRules, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
        return ebpf_edges(rules, state, selector)


READER = EbpfReader()
