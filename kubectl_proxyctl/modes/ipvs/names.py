"""IPVS virtual services back to Service ports.

Virtual services have no names at all: they are matched to the Service objects (API or
`--from-file`) by address, port and protocol, and stay unnamed without them.
"""

from __future__ import annotations

from typing import Iterable

from kubectl_proxyctl.model import ClusterState, ServicePort
from kubectl_proxyctl.modes.ipvs.parse import VirtualService
from kubectl_proxyctl.modes.owners import Owner


def ipvs_owner(vs: VirtualService, state: ClusterState | None, node_ips: Iterable[str]) -> list[tuple[Owner, str]]:
    """Service ports a virtual service serves, with the entry kind, matched by address."""
    if state is None:
        return []
    out: list[tuple[Owner, str]] = []
    nodes = set(node_ips)
    for spn, sp in state.ports.items():
        if sp.protocol.value != vs.protocol:
            continue
        kind = _ipvs_kind(sp, vs, nodes)
        if kind:
            out.append((Owner(str(spn), sp.protocol.value.lower(), "virtual-service", "", "address", True), kind))
    return out


def _ipvs_kind(sp: ServicePort, vs: VirtualService, node_ips: set[str]) -> str:
    if vs.port == sp.port and vs.address in sp.cluster_ips:
        return "ClusterIP"
    if vs.port == sp.port and vs.address in sp.external_ips:
        return "ExternalIP"
    if vs.port == sp.port and vs.address in sp.load_balancer_ips:
        return "LoadBalancer"
    if sp.node_port and vs.port == sp.node_port and (vs.address in node_ips or not node_ips):
        return "NodePort"
    return ""
