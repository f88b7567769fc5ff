"""What every probe should see, by kube-proxy's rules. Pure: ClusterState in, MatrixPlan out.

Theory of operation: for every node the planner (`plan/planner.py`) computes the node's view
of the service port — its endpoints by policy, and what its rules do with traffic that has
nowhere to go (REJECT when the service has no endpoints, DROP when externalTrafficPolicy
Local finds none on the node). From that, per cell:

* **node port, from outside the node** (this machine, or another node: traffic between node
  addresses is not masqueraded, so node B's packet is "external" to node A): open with
  ETP=Cluster; with ETP=Local open only where the node has a local endpoint, dropped
  elsewhere; refused everywhere when the service has no endpoints.
* **node port, from the node itself** (its own address, or 127.0.0.1 in iptables mode for
  IPv4): kube-proxy short-circuits locally originated traffic to all of the service's
  endpoints, so it answers under either policy while any endpoint exists.
* **load-balancer and external IPs**: a node handles traffic it sends to them itself
  (the same short-circuit); from this machine the network delivers it to some node, so it
  is open with ETP=Cluster, and with ETP=Local when at least one node has a local endpoint
  (load balancers send only to nodes whose health check says 200).
  loadBalancerSourceRanges drop load-balancer traffic from sources outside the ranges.
* **health-check node port** (LoadBalancer with ETP=Local): HTTP 200 with
  `localEndpoints` = the node's ready local endpoints, 503 when it has none, from anywhere.

Without cluster data (`--nodes` with `--nodeport`) every cell is expected open.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from kubectl_proxyctl.plan.planner import FilterAction, NodePlan, ProxyConfig, ServicePortPlan, plan
from kubectl_proxyctl.errors import NotFoundError, ProxyctlError
from kubectl_proxyctl.model import ClusterState, IPFamily, Protocol, ServicePort, ip_family
from kubectl_proxyctl.remote.matrix import (
    LOCAL,
    LOCALHOST,
    Column,
    ColumnKind,
    Expectation,
    MatrixPlan,
    Node,
    Section,
    Want,
)
from kubectl_proxyctl.remote.probe import Mode, validate_address

BASIS_CLUSTER = "expectations from the cluster's Services and EndpointSlices"
BASIS_NONE = "no cluster data: every cell is expected open"


@dataclass(frozen=True)
class Probing:
    """How the matrix is probed (from the command line)."""

    sources: tuple[str, ...]  # LOCAL and/or node names
    http_path: str | None = None  # --http PATH: HTTP GET instead of a bare connect
    proxy_mode: str = "iptables"  # localhost node ports exist only in iptables mode (IPv4)
    local_source: str | None = None  # this machine's source address towards the VIPs
    udp_reply: bool = False


def _mode(protocol: Protocol | str, http_path: str | None) -> Mode:
    if str(protocol) == "UDP":
        return Mode.UDP
    return Mode.HTTP if http_path else Mode.TCP


def _localhost(nodes: Sequence[Node], probing: Probing) -> bool:
    return probing.proxy_mode == "iptables" and all(ip_family(n.address) == IPFamily.IPv4 for n in nodes)


def _node_columns(nodes: Sequence[Node], port: int) -> list[Column]:
    return [Column(n.name, ColumnKind.NODE, port, n.address, n.name) for n in nodes]


Rule = Callable[[str, Column], Expectation]  # (source, column) → what the cell should see
PortLookup = Callable[[NodePlan | None], ServicePortPlan | None]  # a node's view of one service port


def _cells(sources: Iterable[str], columns: Sequence[Column], want: Rule) -> dict[tuple[str, str], Expectation]:
    out: dict[tuple[str, str], Expectation] = {}
    for source in sources:
        for column in columns:
            if column.kind == ColumnKind.LOCALHOST and source == LOCAL:
                continue  # this machine's loopback is not a node
            out[(source, column.label)] = want(source, column)
    return out


# --- without cluster data --------------------------------------------------------------------


def plan_without_cluster(nodes: Sequence[Node], port: int, protocol: str, probing: Probing) -> MatrixPlan:
    """`--nodeport PORT --nodes …` with no cluster access: every cell expected open."""
    columns = _node_columns(nodes, port)
    if _localhost(nodes, probing):
        columns.append(Column(LOCALHOST, ColumnKind.LOCALHOST, port))
    open_ = Expectation(Want.OPEN, "no cluster data: expected open")
    section = Section(
        title=f"NodePort {port}/{protocol}", protocol=protocol, mode=_mode(protocol, probing.http_path),
        columns=tuple(columns), expectations=_cells(probing.sources, columns, lambda s, c: open_),
        path=probing.http_path or "/",
    )
    return MatrixPlan((section,), probing.sources, tuple(nodes), BASIS_NONE, udp_reply=probing.udp_reply)


# --- from cluster data -----------------------------------------------------------------------


def _plans(state: ClusterState, nodes: Sequence[Node], service: str) -> dict[str, NodePlan]:
    """Each node's plan of one Service (the planner sees only that Service's ports)."""
    state = state.replace(
        ports={k: v for k, v in state.ports.items() if k.service == service},
        endpoints={k: v for k, v in state.endpoints.items() if k.service == service},
    )
    out: dict[str, NodePlan] = {}
    for node in nodes:
        family = ip_family(node.address)
        out[node.name] = plan(state, ProxyConfig(node_name=node.name, family=family, node_ips=(node.address,)))
    return out


def _endpoint_note(sp: ServicePortPlan) -> str:
    ready = sum(1 for ep in sp.endpoints if ep.ready)
    return f"{ready} ready endpoint{'s' if ready != 1 else ''}"


def _in_ranges(address: str | None, ranges: Sequence[str]) -> bool:
    if address is None:
        return True  # unknown source: assume allowed rather than guess a failure
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(r) for r in ranges if ip_family(r) == ip_family(address))


def _node_port_rule(plans: dict[str, NodePlan], name_of: PortLookup) -> Rule:
    def rule(source: str, column: Column) -> Expectation:
        dst = source if column.kind == ColumnKind.LOCALHOST else column.node
        sp = name_of(plans.get(dst))
        if sp is None:
            return Expectation(Want.CLOSED, "not proxied on this node's IP family")
        if not sp.has_any_endpoints:
            return Expectation(Want.REFUSED, "no ready endpoints: kube-proxy rejects")
        if source == dst:
            if sp.external_policy_local:
                return Expectation(Want.OPEN, "node-local traffic goes to every endpoint (ETP=Local short-circuit)")
            return Expectation(Want.OPEN, f"externalTrafficPolicy=Cluster, {_endpoint_note(sp)}")
        if sp.external_filter == FilterAction.DROP:
            return Expectation(Want.DROPPED, f"externalTrafficPolicy=Local, no local endpoint on {dst}")
        if sp.external_policy_local:
            n = len(sp.local_endpoints)
            return Expectation(Want.OPEN,
                               f"externalTrafficPolicy=Local, {n} local endpoint{'s' if n != 1 else ''} on {dst}")
        return Expectation(Want.OPEN, f"externalTrafficPolicy=Cluster, {_endpoint_note(sp)}")

    return rule


def _vip_rule(plans: dict[str, NodePlan], nodes: Sequence[Node], name_of: PortLookup,
              load_balancer: bool, probing: Probing) -> Rule:
    views = {n.name: name_of(plans.get(n.name)) for n in nodes}
    serving = sorted(name for name, view in views.items() if view is not None and view.local_endpoints)

    def rule(source: str, column: Column) -> Expectation:
        if source == LOCAL:
            sp = next((v for v in views.values() if v is not None), None)
        else:
            sp = views.get(source)
        if sp is None:
            return Expectation(Want.CLOSED, "not proxied on this IP family")
        if not sp.has_any_endpoints:
            return Expectation(Want.REFUSED, "no ready endpoints: kube-proxy rejects")
        if load_balancer and sp.source_ranges:
            address = probing.local_source if source == LOCAL else _address(nodes, source)
            if not _in_ranges(address, sp.source_ranges):
                return Expectation(Want.DROPPED, f"source {address} is outside loadBalancerSourceRanges")
        if source != LOCAL:
            return Expectation(Want.OPEN, f"handled on {source} itself: {_endpoint_note(sp)}")
        if not sp.external_policy_local:
            return Expectation(Want.OPEN, f"externalTrafficPolicy=Cluster, {_endpoint_note(sp)}")
        if serving:
            return Expectation(Want.OPEN, f"externalTrafficPolicy=Local, local endpoints on {', '.join(serving)}")
        return Expectation(Want.DROPPED, "externalTrafficPolicy=Local and no node has a local endpoint")

    return rule


def _health_rule(plans: dict[str, NodePlan], service: str) -> Rule:
    def rule(source: str, column: Column) -> Expectation:
        node_plan = plans.get(column.node)
        local = node_plan.local_ready_endpoints().get(service, 0) if node_plan else 0
        if local:
            return Expectation(Want.OPEN, f"{local} ready local endpoint{'s' if local != 1 else ''} on {column.node}",
                               http_status=200, local_endpoints=local)
        return Expectation(Want.OPEN, f"no ready local endpoint on {column.node}", http_status=503,
                           local_endpoints=0)

    return rule


def _address(nodes: Sequence[Node], name: str) -> str | None:
    return next((n.address for n in nodes if n.name == name), None)


def _lookup(port: ServicePort) -> PortLookup:
    def view(node_plan: NodePlan | None) -> ServicePortPlan | None:
        return node_plan.service(port.name) if node_plan is not None else None

    return view


def _port_sections(
    sp: ServicePort, nodes: Sequence[Node], plans: dict[str, NodePlan], probing: Probing, vips: bool
) -> list[Section]:
    lookup = _lookup(sp)
    proto = str(sp.protocol)
    policy = "Local" if sp.external_policy_local else "Cluster"
    mode = _mode(proto, probing.http_path)
    path = probing.http_path or "/"
    columns: list[Column] = []
    expectations: dict[tuple[str, str], Expectation] = {}
    if sp.node_port:
        node_columns = _node_columns(nodes, sp.node_port)
        if _localhost(nodes, probing):
            node_columns.append(Column(LOCALHOST, ColumnKind.LOCALHOST, sp.node_port))
        columns += node_columns
        expectations.update(_cells(probing.sources, node_columns, _node_port_rule(plans, lookup)))
    if vips:
        for kind, ips, lb in ((ColumnKind.LOAD_BALANCER, sp.load_balancer_ips, True),
                              (ColumnKind.EXTERNAL_IP, sp.external_ips, False)):
            vip_columns = [Column(ip, kind, sp.port, validate_address(ip, str(kind))) for ip in ips
                           if all(ip_family(ip) == ip_family(n.address) for n in nodes)
                           and all(ip != c.label for c in columns)]
            columns += vip_columns
            expectations.update(_cells(probing.sources, vip_columns, _vip_rule(plans, nodes, lookup, lb, probing)))
    if not columns:
        return []
    where = f"NodePort {sp.node_port}/{proto}" if sp.node_port else f"port {sp.port}/{proto}"
    return [Section(
        title=f"{sp.name} {where}", protocol=proto, mode=mode, columns=tuple(columns),
        expectations=expectations, path=path, service=sp.name.service, policy=policy,
    )]


def plan_for_service(
    state: ClusterState, namespace: str, name: str, nodes: Sequence[Node], probing: Probing
) -> MatrixPlan:
    """`probe svc/NAME`: every node port, LB IP and external IP of the Service, and its
    health-check node port."""
    key = f"{namespace}/{name}"
    svc = state.services.get(key)
    if svc is None:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}"')
    if not svc.proxied:
        raise ProxyctlError(f"service {key} is not proxied by kube-proxy: {svc.skip_reason}")
    plans = _plans(state, nodes, key)
    sections: list[Section] = []
    notes: list[str] = []
    health_port = 0
    for sp in svc.ports:
        if sp.protocol not in (Protocol.TCP, Protocol.UDP):
            notes.append(f"{sp.name}: {sp.protocol} is not probed (TCP and UDP only)")
            continue
        found = _port_sections(sp, nodes, plans, probing, vips=True)
        if not found:
            notes.append(f"{sp.name}: no node port, load-balancer IP or external IP to probe")
        sections += found
        health_port = health_port or sp.health_check_node_port
    if health_port:
        columns = tuple(_node_columns(nodes, health_port))
        sections.append(Section(
            title=f"{key} health check {health_port}/TCP", protocol="TCP", mode=Mode.HTTP, columns=columns,
            expectations=_cells(probing.sources, columns, _health_rule(plans, key)), path="/",
            service=key, policy="Local", health_check=True,
        ))
    if not sections:
        raise ProxyctlError(
            f"service {key} has no node port, load-balancer IP or external IP: nothing to probe "
            "from nodes (a ClusterIP service is reachable only inside the cluster)"
        )
    return MatrixPlan(tuple(sections), probing.sources, tuple(nodes), BASIS_CLUSTER, tuple(notes),
                      udp_reply=probing.udp_reply)


def plan_for_node_port(
    state: ClusterState, port: int, protocol: str, nodes: Sequence[Node], probing: Probing
) -> MatrixPlan:
    """`probe --nodeport PORT` with cluster data: the Service port that owns the node port
    sets the expectations; when none does, nothing should answer."""
    owners = [sp for sp in state.ports.values() if sp.node_port == port and str(sp.protocol) == protocol]
    if owners:
        plans = _plans(state, nodes, owners[0].name.service)
        sections = _port_sections(owners[0], nodes, plans, probing, vips=False)
        return MatrixPlan(tuple(sections), probing.sources, tuple(nodes), BASIS_CLUSTER,
                          udp_reply=probing.udp_reply)
    columns = _node_columns(nodes, port)
    if _localhost(nodes, probing):
        columns.append(Column(LOCALHOST, ColumnKind.LOCALHOST, port))
    closed = Expectation(Want.CLOSED, f"no Service has nodePort {port}/{protocol}")
    section = Section(
        title=f"NodePort {port}/{protocol} (no Service)", protocol=protocol,
        mode=_mode(protocol, probing.http_path), columns=tuple(columns),
        expectations=_cells(probing.sources, columns, lambda s, c: closed), path=probing.http_path or "/",
    )
    return MatrixPlan((section,), probing.sources, tuple(nodes), BASIS_CLUSTER,
                      (f"no Service uses nodePort {port}/{protocol}: every cell is expected closed",),
                      udp_reply=probing.udp_reply)

