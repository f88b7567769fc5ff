"""`verify` for IPVS nodes: the node's virtual servers and ipsets against what IPVS mode
would write for the same cluster (modes/ipvs/render.py, the engine's own renderer).

Per Service: every virtual server it should have (ClusterIP, external and LB IPs, the node
port on each node address), with its real servers (the endpoints the traffic policies pick:
local ones for a Local policy when there are any, as kube-proxy's IPVS mode does), equal
weights, the scheduler the node uses, and persistence for ClientIP affinity; and, when the
input has `ipset save` output, each of its entries in kube-proxy's ipsets (KUBE-CLUSTER-IP,
KUBE-LOOP-BACK, KUBE-NODE-PORT-*, …), and, when the input has the node's addresses (`ip -json
address show`, collected on live nodes), each service address on kube-ipvs0. Virtual servers no Service owns are reported as
warnings (another program's, or stale). Real servers at weight 0 are draining (graceful
termination): they take no new connections and are not counted.
"""

from __future__ import annotations

from collections import Counter

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.base import Mode, NodeRules
from kubectl_proxyctl.modes.findings import Finding, Report
from kubectl_proxyctl.modes.ipvs.render import Options, VirtualServer, nodeport_addresses, service_entries
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.plan.planner import ProxyConfig, ServicePortPlan, plan

DUMMY = "kube-ipvs0"


def _scheduler(graph: NodeRules) -> str:
    """The scheduler most of the node's virtual servers use (the engine's --ipvs-scheduler)."""
    counts = Counter(vs.scheduler for vs in graph.ipvs_services())
    return counts.most_common(1)[0][0] if counts else "rr"


def verify_ipvs(graph: NodeRules, state: ClusterState, node: NodeContext,
                selector: ServiceSelector | None = None) -> Report:
    """Each Service's virtual servers, real servers and ipset entries, against the render."""
    report = Report(node.name, Mode.IPVS)
    desired = plan(state, ProxyConfig(node_name=node.name or "", cluster_cidrs=node.cluster_cidrs,
                                      node_ips=node.ips if node.ips_known else ()))
    options = Options(scheduler=_scheduler(graph))
    # NodePorts listen on every local address but kube-ipvs0's (pod bridges' too, as kube-proxy
    # does): the node's IPs, and every address the input shows it has (live: `ip address`).
    local: tuple[str, ...] | None = node.ips if node.ips_known else None
    if node.local_addresses:
        local = (*(local or ()), *node.local_addresses)
    if graph.links is not None:
        local = (*(local or ()), *(ip for link, ips in graph.links.items() if link != DUMMY for ip in ips))
    addresses = nodeport_addresses(desired, local)
    by_service: dict[str, list[ServicePortPlan]] = {}
    for sp in desired.services:
        if selector is None or selector.matches(str(sp.name)):
            by_service.setdefault(sp.name.service, []).append(sp)
    report.services_checked = sum(len(sps) for sps in by_service.values())
    seen: set[str] = set()
    ipsets = graph.ipsets or {}
    links = graph.links  # None: the input has no `ip -json address` output
    if links is not None and graph.ipvs_services() and DUMMY not in links:
        report.findings.append(Finding("missing-link", "error", f"there is no {DUMMY} interface: no service address "
                                       "is local to the node, so IPVS takes no connection to a cluster IP"))
        links = None
    for key, sps in sorted(by_service.items()):
        entries = service_entries(sps, desired, addresses, options)
        spn_of = {(sp.protocol.value, sp.cluster_ip, sp.port): str(sp.name) for sp in sps}
        for want in entries.vservers:
            spn = _owner(want, sps) or key
            have = graph.ipvs.find(want.protocol, want.address, want.port) if graph.ipvs else None
            where = f"{want.protocol} {want.address}:{want.port}"
            if have is None:
                report.findings.append(Finding("missing-service", "error", f"{spn}: no IPVS virtual service {where}",
                                               key, spn))
                continue
            seen.add(have.key)
            report.findings += _compare(want, have, key, spn)
        if links is not None:
            bound = set(links.get(DUMMY, ()))
            for ip in entries.bound:
                if ip not in bound:
                    report.findings.append(Finding("missing-address", "error", f"{key}: {ip} is not on {DUMMY}: "
                                                   "the node does not take connections to it, so IPVS never sees "
                                                   "them", key, next(iter(spn_of.values()), key)))
        if ipsets:
            for set_name, member in entries.members:
                ipset = ipsets.get(set_name)
                if ipset is None or member not in ipset.members:
                    spn = next(iter(spn_of.values()), key)
                    report.findings.append(Finding(
                        "missing-set-member", "error",
                        f"{key}: ipset {set_name} lacks {member}" + ("" if ipset else f" (no set {set_name} at all)"),
                        key, spn))
    if selector is None:
        for vs in graph.ipvs_services():
            if vs.key not in seen:
                report.findings.append(Finding("stale-service", "warning", f"IPVS virtual service {vs.key} belongs "
                                               "to no Service port of the API (another program's, or stale)"))
    return report


def _owner(vs: VirtualServer, sps: list[ServicePortPlan]) -> str:
    for sp in sps:
        if sp.protocol.value == vs.protocol and vs.port in (sp.port, sp.node_port):
            return str(sp.name)
    return ""


def _compare(want: VirtualServer, have: object, service: str, spn: str) -> list[Finding]:
    findings: list[Finding] = []
    key = getattr(have, "key")
    wanted = {f"{r.address}:{r.port}" if ":" not in r.address else f"[{r.address}]:{r.port}" for r in want.reals}
    reals = getattr(have, "reals")
    active = {r.endpoint for r in reals if r.weight > 0}
    for ep in sorted(wanted - active):
        findings.append(Finding("missing-endpoint", "error", f"{spn}: {key} has no real server {ep} "
                                "(or its weight is 0)", service, spn))
    for ep in sorted(active - wanted):
        findings.append(Finding("extra-endpoint", "error", f"{spn}: {key} still sends new connections to {ep}",
                                service, spn))
    weights = {r.weight for r in reals if r.weight > 0}
    if len(weights) > 1:
        findings.append(Finding("wrong-odds", "error", f"{spn}: {key} has unequal weights {sorted(weights)}",
                                service, spn))
    persistent = getattr(have, "persistent") or 0
    if persistent != want.persistent:
        said = f"persistence {persistent} s" if persistent else "no persistence"
        findings.append(Finding("wrong-affinity", "error", f"{spn}: {key} has {said}, the Service asks for "
                                + (f"ClientIP affinity of {want.persistent} s" if want.persistent else "none"),
                                service, spn))
    return findings
