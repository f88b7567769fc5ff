"""`explain -o dot` and `dump` for IPVS: virtual services and their real servers (and the
ipsets IPVS mode keeps), named by the Service objects.
"""

from __future__ import annotations

from typing import Sequence

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import NodeRules
from kubectl_proxyctl.modes.facts import DumpLine, Edge
from kubectl_proxyctl.modes.ipvs.names import ipvs_owner
from kubectl_proxyctl.modes.owners import ServiceSelector


def ipvs_edges(graph: NodeRules, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
    if state is None:
        return []
    wanted = set()
    for sp in state.service_ports(selector.key):
        for ip in (*sp.cluster_ips, *sp.external_ips, *sp.load_balancer_ips):
            wanted.add((sp.protocol.value, ip, sp.port))
        if sp.node_port:
            wanted.add((sp.protocol.value, "", sp.node_port))
    edges = []
    for vs in graph.ipvs_services():
        if (vs.protocol, vs.address, vs.port) not in wanted and (vs.protocol, "", vs.port) not in wanted:
            continue
        for real in vs.reals:
            edges.append(Edge(f"ipvs {vs.key}", real.endpoint, f"weight {real.weight} ({vs.scheduler})"))
    return edges


def ipvs_lines(graph: NodeRules, state: ClusterState | None, node_ips: Sequence[str],
               selector: ServiceSelector | None) -> list[DumpLine]:
    out: list[DumpLine] = []
    for vs in graph.ipvs_services():
        owners = ipvs_owner(vs, state, node_ips)
        service = ", ".join(o.service_port for o, _ in owners)
        if selector is not None and not any(selector.matches(o.service_port) for o, _ in owners):
            continue
        lines = vs.save_lines()
        out.append(DumpLine("ipvs", "ipvs", vs.key, lines[0], service, kind="virtual-service"))
        for real, line in zip(vs.reals, lines[1:]):
            out.append(DumpLine("ipvs", "ipvs", vs.key, line, service, real.endpoint, "real-server"))
    if selector is None:
        for ipset in graph.ipsets.values():
            lines = ipset.save_lines()
            out.append(DumpLine("ipset", "ipset", ipset.name, lines[0], kind="set"))
            out += [DumpLine("ipset", "ipset", ipset.name, line, kind="member") for line in lines[1:]]
    return out
