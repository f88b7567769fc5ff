"""`verify`: the node's actual state against what the API says should be there.

Theory of operation: the desired state is computed exactly as the engine would program it,
`plan(state, config)` then the mode's renderer, and compared by meaning with what the mode's
Reader parsed from the node (`modes/<mode>/verify.py`: iptables rules per service port as
multisets under a canonical key, nftables chains, rules, map and set elements and base
chains, IPVS virtual services and real servers). The node's flags are read back from its
fixed rules, so a node configured differently from the defaults does not drift on every rule.

This module adds what is the same for every mode: node-wide findings (rules of another proxy
mode still on the node, KUBE- chains in both iptables backends) and the desired summary
`explain` shows next to what it found.
"""

from __future__ import annotations

from typing import Any

from kubectl_proxyctl.inspect.graph import RuleGraph
from kubectl_proxyctl.model import ClusterState, IPFamily
from kubectl_proxyctl.modes import reader
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.findings import Finding, Report
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan


def _check_node_wide(report: Report, graph: RuleGraph, mode: Mode) -> None:
    for other, evidence in graph.modes_present().items():
        if other != mode:
            report.findings.append(Finding(
                "other-mode", "error", f"rules of kube-proxy's {other} mode are on this node ({evidence}); "
                f"the node runs {mode} mode: leftovers of another proxy mode still match packets and break Services"))
    backends = {d.backend: d.kube_chains() for d in graph.iptables if d.backend and d.kube_chains()}
    if "nft" in backends and "legacy" in backends:
        report.findings.append(Finding(
            "backend-split", "error", f"both iptables backends hold KUBE- chains (nft: {backends['nft']}, legacy: "
            f"{backends['legacy']}); the rules of the backend not in use still match packets"))
    for note in graph.notes:
        if "both iptables backends" in note and not any(f.kind == "backend-split" for f in report.findings):
            report.findings.append(Finding("backend-split", "error", note))


def verify(graph: RuleGraph, mode: Mode, state: ClusterState, node: NodeContext,
           selector: ServiceSelector | None = None) -> Report:
    """The node's `mode` state against the API's, plus (for the whole node) leftovers of other
    modes and split iptables backends."""
    report = reader(mode).verify(graph, state, node, selector)
    if selector is None and not any(f.kind == "no-rules" for f in report.findings):
        _check_node_wide(report, graph, mode)
    return report


def desired_summary(state: ClusterState, node: NodeContext, selector: ServiceSelector,
                    v6: bool = False) -> dict[str, dict[str, Any]]:
    """Service port → what the plan wants on this node (for `explain`'s desired section), for
    the rules' address family."""
    desired: NodePlan = plan(state, ProxyConfig(node_name=node.name or "", cluster_cidrs=node.cluster_cidrs,
                                                family=IPFamily.IPv6 if v6 else IPFamily.IPv4,
                                                node_ips=node.ips if node.ips_known else ()))
    out: dict[str, dict[str, Any]] = {}
    for sp in desired.services:
        spn = str(sp.name)
        if not selector.matches(spn):
            continue
        cluster = [e.address for e in sp.cluster_endpoints]
        local = [e.address for e in sp.local_endpoints]
        if sp.has_internal_endpoints:
            summary = f"cluster IP → {len(cluster if not sp.internal_policy_local else local)} endpoint(s)"
        else:
            summary = f"cluster IP → {sp.internal_filter}"
        if sp.externally_accessible:
            summary += (f"; external → {len(local if sp.external_policy_local else cluster)} endpoint(s)"
                        if sp.has_external_endpoints else f"; external → {sp.external_filter}")
        out[spn] = {
            "cluster_endpoints": cluster,
            "local_endpoints": local,
            "internal": "DNAT" if sp.has_internal_endpoints else str(sp.internal_filter),
            "external": ("DNAT" if sp.has_external_endpoints else str(sp.external_filter))
            if sp.externally_accessible else None,
            "summary": summary,
        }
    return out


__all__ = ["Finding", "Report", "desired_summary", "verify"]
