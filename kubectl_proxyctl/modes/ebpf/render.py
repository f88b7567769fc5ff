"""eBPF mode's desired state: the service entries a node's sockets can connect to (pure).

`render(plan)` turns a `NodePlan` into one `ServiceEntry` per (address, port, protocol) a
process on this node may connect() to, with the backends that connection may be sent to.
kube-proxy's rules decide the same question per packet; here it is decided once per socket,
so the backend set is the one kube-proxy's chains give traffic *from this node*:

* a **cluster IP** gets the internal-policy endpoints: this node's endpoints when
  internalTrafficPolicy is Local, else the cluster-policy ones (topology and the
  terminating fallback are the planner's, as for every mode);
* an **external IP, load-balancer IP or node port** reached from this node gets what
  kube-proxy's KUBE-EXT chain gives pod- and host-originated traffic: the cluster-policy
  endpoints (the "short-circuit" for externalTrafficPolicy Local), or this node's endpoints
  when no cluster-policy set exists;
* node ports are entered on every node address the plan lists for them (and 127.0.0.1 when
  localhost node ports are on);
* a load-balancer IP with loadBalancerSourceRanges gets no entry: the source is unknown at
  connect(), so the nftables entry-point table, which checks it, decides;
* nothing to send to → `F_REJECT`: connect() fails with ECONNREFUSED at once. Where
  kube-proxy would DROP (traffic policy Local without local endpoints) the socket is refused
  too: a dropped SYN has no equivalent at connect().

When two service ports claim one key (two Services sharing an external IP and port), the
first in the plan's order keeps it, as in the other modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from kubectl_proxyctl.model import Endpoint, ServicePortName
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.plan.planner import EntryKind, NodePlan, ServicePortPlan


@dataclass(frozen=True)
class ServiceEntry:
    key: maps.ServiceKey  # what a socket connects to
    name: str  # maps.service_name(...), as the `names` map holds it
    spn: ServicePortName
    kind: EntryKind
    backends: tuple[maps.Backend, ...]  # in slot order; () with F_REJECT when nothing serves
    flags: int  # maps.F_*
    affinity_seconds: int  # 0: no ClientIP affinity


def name_of(sp: ServicePortPlan) -> str:
    spn = sp.name
    return maps.service_name(spn.namespace, spn.name, spn.port, sp.protocol.value)


def nodeport_addresses(plan: NodePlan) -> tuple[str, ...]:
    """The node addresses a node port is connected to on this node."""
    if plan.nodeport_match_all:
        addrs = list(plan.node_ips)
    else:
        addrs = [ip for ip in plan.nodeport_ips if not ip.startswith("127.") and ip != "::1"]
    if plan.localhost_nodeports and ":" not in (plan.primary_node_ip or "0.0.0.0"):
        addrs.append("127.0.0.1")
    return tuple(dict.fromkeys(addrs))


def _backends(endpoints: Iterable[Endpoint], node_name: str) -> tuple[maps.Backend, ...]:
    backend = maps.Backend
    return tuple(backend(ep.ip, ep.port, (maps.B_LOCAL if node_name and ep.node_name == node_name else 0)
                         | (maps.B_TERMINATING if ep.terminating else 0))
                 for ep in endpoints)


def port_entries(sp: ServicePortPlan, plan: NodePlan,
                 nodeport_addrs: tuple[str, ...] | None = None) -> list[ServiceEntry]:
    """Every entry of one service port."""
    name = name_of(sp)
    proto = sp.protocol.value
    affinity = sp.affinity_seconds
    node = plan.node_name

    internal = sp.local_endpoints if sp.internal_policy_local else sp.cluster_endpoints
    internal_flags = maps.F_LOCAL if sp.internal_policy_local else 0
    if not sp.has_internal_endpoints or not internal:
        internal, internal_flags = (), internal_flags | maps.F_REJECT
    out = [ServiceEntry(maps.ServiceKey(sp.cluster_ip, sp.port, proto), name, sp.name, EntryKind.ClusterIP,
                        _backends(internal, node), internal_flags, affinity)]

    if not (sp.external_ips or sp.load_balancer_ips or sp.node_port):
        return out
    if sp.uses_cluster_chain and sp.cluster_endpoints:
        external, ext_flags = sp.cluster_endpoints, maps.F_EXTERNAL
    elif sp.local_endpoints:
        external, ext_flags = sp.local_endpoints, maps.F_EXTERNAL | maps.F_LOCAL
    else:
        external, ext_flags = (), maps.F_EXTERNAL | maps.F_REJECT
    ext_backends = out[0].backends if external is internal else _backends(external, node)

    def entry(ip: str, port: int, kind: EntryKind, extra: int = 0) -> ServiceEntry:
        return ServiceEntry(maps.ServiceKey(ip, port, proto), name, sp.name, kind, ext_backends,
                            ext_flags | extra, affinity)

    out += [entry(ip, sp.port, EntryKind.ExternalIP) for ip in sp.external_ips]
    if not sp.source_ranges:
        out += [entry(ip, sp.port, EntryKind.LoadBalancerIP) for ip in sp.load_balancer_ips]
    if sp.node_port:
        addrs = nodeport_addresses(plan) if nodeport_addrs is None else nodeport_addrs
        out += [entry(ip, sp.node_port, EntryKind.NodePort, maps.F_NODEPORT) for ip in addrs]
    return out


def render(plan: NodePlan) -> dict[maps.ServiceKey, ServiceEntry]:
    """Every service entry of the plan's family, by key (the first claim of a key wins)."""
    addrs = nodeport_addresses(plan)
    out: dict[maps.ServiceKey, ServiceEntry] = {}
    for sp in plan.services:
        for e in port_entries(sp, plan, addrs):
            out.setdefault(e.key, e)
    return out


def render_ports(plan: NodePlan, names: Iterable[ServicePortName]) -> dict[maps.ServiceKey, ServiceEntry]:
    """The entries of some service ports only (a partial sync)."""
    addrs = nodeport_addresses(plan)
    out: dict[maps.ServiceKey, ServiceEntry] = {}
    for spn in names:
        sp = plan.service(spn)
        if sp is not None:
            for e in port_entries(sp, plan, addrs):
                out.setdefault(e.key, e)
    return out
