"""`verify` for IPVS nodes, at the level that mode has: per service port, a virtual service
per entry point (ClusterIP, each node address for a NodePort, external and LB IPs) whose real
servers are the endpoints, with equal weights.
"""

from __future__ import annotations

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import Mode, NodeRules
from kubectl_proxyctl.modes.findings import Finding, Report
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.plan.planner import ProxyConfig, ServicePortPlan, plan


def _expected_entries(sp: ServicePortPlan) -> list[tuple[str, str, int]]:
    """(kind, address, port) of a planned service port ("" address for the node port)."""
    out = [("ClusterIP", sp.cluster_ip, sp.port)]
    out += [("ExternalIP", ip, sp.port) for ip in sp.external_ips]
    out += [("LoadBalancer", ip, sp.port) for ip in sp.load_balancer_ips]
    if sp.node_port:
        out.append(("NodePort", "", sp.node_port))
    return out


def verify_ipvs(graph: NodeRules, state: ClusterState, node: NodeContext,
                selector: ServiceSelector | None = None) -> Report:
    """Per service port: a virtual service per entry point, real servers = endpoints."""
    report = Report(node.name, Mode.IPVS)
    desired = plan(state, ProxyConfig(node_name=node.name or "", cluster_cidrs=node.cluster_cidrs,
                                      node_ips=node.ips if node.ips_known else ()))
    services = [sp for sp in desired.services if selector is None or selector.matches(str(sp.name))]
    report.services_checked = len(services)
    seen: set[str] = set()
    for sp in services:
        spn = str(sp.name)
        # IPVS mode falls back to cluster endpoints when a Local policy finds none here.
        want = {e.address for e in (sp.cluster_endpoints or sp.local_endpoints)}
        for kind, address, port in _expected_entries(sp):
            addresses = [address] if address else list(desired.node_ips)
            for ip in addresses:
                vs = graph.ipvs.find(sp.protocol.value, ip, port) if graph.ipvs else None
                if vs is None:
                    report.findings.append(Finding("missing-service", "error", f"{spn}: no IPVS virtual service "
                                                   f"for {kind} {ip}:{port}/{sp.protocol.value}", sp.name.service,
                                                   spn))
                    continue
                seen.add(vs.key)
                have = {r.endpoint for r in vs.reals if r.weight > 0}
                for ep in sorted(want - have):
                    report.findings.append(Finding("missing-endpoint", "error", f"{spn}: {vs.key} has no real "
                                                   f"server {ep} (or its weight is 0)", sp.name.service, spn))
                for ep in sorted(have - want):
                    report.findings.append(Finding("extra-endpoint", "error", f"{spn}: {vs.key} still sends new "
                                                   f"connections to {ep}", sp.name.service, spn))
                weights = {r.weight for r in vs.reals if r.weight > 0}
                if len(weights) > 1:
                    report.findings.append(Finding("wrong-odds", "error", f"{spn}: {vs.key} has unequal weights "
                                                   f"{sorted(weights)}", sp.name.service, spn))
    if selector is None:
        for vs in graph.ipvs_services():
            if vs.key not in seen:
                report.findings.append(Finding("stale-service", "warning", f"IPVS virtual service {vs.key} belongs "
                                               "to no Service port of the API"))
    return report
