"""What one node must do for every service port: the backend-neutral plan.

Theory of operation: `plan(state, config)` is a pure function from the cluster (a ClusterState)
and this node's proxy configuration (a ProxyConfig) to a NodePlan. The plan holds, for each
service port of the configured IP family, every decision kube-proxy's `syncProxyRules` makes
before it writes a single rule:

* the entry points (cluster IP, external IPs, load-balancer IPs, node port) of the family;
* the endpoint sets of `CategorizeEndpoints` (`pkg/proxy/topology.go`): the cluster-policy
  endpoints (Ready, filtered by topology hints, falling back to serving-terminating ones),
  the local-policy endpoints (this node's Ready ones, falling back to its serving-terminating
  ones), their union (the endpoints that get a per-endpoint chain), and whether the service
  has any usable endpoint anywhere;
* what happens when there is nothing to send traffic to: REJECT when the service has no
  endpoints at all, DROP when a Local traffic policy finds none on this node;
* the masquerade decisions, session affinity, source ranges and health-check node port.

A renderer (iptables, nftables, IPVS) turns a NodePlan into its own syntax and never looks at
the ClusterState again; `verify` compares a NodePlan with the rules found on a node. The plan
is sorted (service ports by their ServicePortName string, endpoints by their `ip:port`
string, as kube-proxy sorts them), so equal inputs give equal plans.

The planner never raises on odd cluster data: a service port without a cluster IP of the
family is skipped (and listed in `NodePlan.skipped` with the reason), endpoints of the other
family are ignored, and a service port that cannot be planned for any other reason is skipped
the same way.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Collection, Iterable, Mapping, Sequence

from kubectl_proxyctl.plan.marks import masquerade_mark
from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.model import (
    ClusterState,
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
)

ZONE_LABEL = "topology.kubernetes.io/zone"
PRIMARY = "primary"  # the `--nodeport-addresses primary` keyword


class DetectLocalMode(str, enum.Enum):
    """`--detect-local-mode`: how "traffic from a pod on this node" is recognised."""

    ClusterCIDR = "ClusterCIDR"
    NodeCIDR = "NodeCIDR"
    BridgeInterface = "BridgeInterface"
    InterfaceNamePrefix = "InterfaceNamePrefix"

    def __str__(self) -> str:
        return self.value


class FilterAction(str, enum.Enum):
    """What the filter table does with traffic that has no endpoint to go to."""

    REJECT = "REJECT"  # the service has no usable endpoint anywhere
    DROP = "DROP"  # a Local traffic policy found no endpoint on this node

    def __str__(self) -> str:
        return self.value


class TopologyMode(str, enum.Enum):
    """Which topology filter chose the cluster endpoints ("" = none, all Ready endpoints)."""

    NONE = ""
    PreferSameZone = "PreferSameZone"
    PreferSameNode = "PreferSameNode"

    def __str__(self) -> str:
        return self.value


class EntryKind(str, enum.Enum):
    ClusterIP = "ClusterIP"
    ExternalIP = "ExternalIP"
    LoadBalancerIP = "LoadBalancerIP"
    NodePort = "NodePort"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProxyConfig:
    """This node's proxy configuration: kube-proxy's flags that change the rules.

    `nodeport_addresses`: CIDRs, or `("primary",)`; empty means every local address.
    `node_ips`: the node's own addresses (any family; the planner keeps its family's); the
    first one of the family is the primary node IP. When empty, the Node object's InternalIP
    and ExternalIP addresses are used.
    """

    node_name: str
    family: IPFamily = IPFamily.IPv4
    cluster_cidrs: tuple[str, ...] = ()
    detect_local_mode: DetectLocalMode = DetectLocalMode.ClusterCIDR
    pod_bridge_interface: str = ""
    pod_interface_name_prefix: str = ""
    masquerade_all: bool = False
    masquerade_bit: int = 14
    nodeport_addresses: tuple[str, ...] = ()
    node_ips: tuple[str, ...] = ()
    localhost_nodeports: bool = True
    prefer_same_node: bool = True  # the PreferSameTrafficDistribution gate (GA in 1.33)
    ipvs_scheduler: str = "rr"  # IPVS mode: every virtual server's scheduler
    ipvs_strict_arp: bool = False  # IPVS mode: arp_ignore/arp_announce so kube-ipvs0's addresses stay quiet
    ipvs_exclude_cidrs: tuple[str, ...] = ()  # IPVS mode: virtual servers there are never deleted
    ipvs_tcp_timeout: int = 0  # IPVS mode: the kernel's TCP, TCP FIN and UDP timeouts, seconds (0: leave it)
    ipvs_tcpfin_timeout: int = 0
    ipvs_udp_timeout: int = 0
    bpf_cgroup_path: str = ""  # eBPF mode: the cgroup v2 directory to attach to ("": the hierarchy's root)
    bpf_pin_path: str = ""  # eBPF mode: where maps and program links are pinned ("": /sys/fs/bpf/proxyctl)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "ProxyConfig":
        """Build from a mapping such as a parsed YAML file (snake_case or camelCase keys).

        List fields accept a list or a comma-separated string. Raises ConfigError on unknown
        keys or bad values.
        """
        fields_by_key = {f: f for f in _CONFIG_FIELDS}
        fields_by_key.update({_camel(f): f for f in _CONFIG_FIELDS})
        fields_by_key.update(_CONFIG_ALIASES)
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = fields_by_key.get(str(key))
            if name is None:
                raise ConfigError(f"unknown proxy config field {key!r}")
            values[name] = value
        if not values.get("node_name"):
            raise ConfigError("proxy config needs node_name")
        try:
            if "family" in values:
                values["family"] = IPFamily(str(values["family"]))
            if "detect_local_mode" in values:
                values["detect_local_mode"] = DetectLocalMode(str(values["detect_local_mode"]))
        except ValueError as exc:
            raise ConfigError(f"proxy config: {exc}") from None
        for name in ("cluster_cidrs", "nodeport_addresses", "node_ips", "ipvs_exclude_cidrs"):
            if name in values:
                values[name] = _string_tuple(values[name], name)
        for name in ("masquerade_all", "localhost_nodeports", "prefer_same_node"):
            if name in values and not isinstance(values[name], bool):
                raise ConfigError(f"proxy config: {name} must be true or false")
        if "masquerade_bit" in values:
            bit = values["masquerade_bit"]
            if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31:
                raise ConfigError("proxy config: masquerade_bit must be an integer within 0..31")
        for name in ("node_name", "pod_bridge_interface", "pod_interface_name_prefix"):
            if name in values:
                values[name] = str(values[name])
        return cls(**values)


_CONFIG_FIELDS = tuple(ProxyConfig.__dataclass_fields__)
# kube-proxy's own spellings (KubeProxyConfiguration and flags).
_CONFIG_ALIASES = {
    "clusterCIDR": "cluster_cidrs",
    "clusterCIDRs": "cluster_cidrs",
    "nodePortAddresses": "nodeport_addresses",
    "nodeIPs": "node_ips",
    "localhostNodePorts": "localhost_nodeports",
    "hostnameOverride": "node_name",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _string_tuple(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ConfigError(f"proxy config: {name} must be a list of strings")


_DETECTOR_CRITERIA = {
    DetectLocalMode.ClusterCIDR: "source",
    DetectLocalMode.NodeCIDR: "source",
    DetectLocalMode.BridgeInterface: "interface",
    DetectLocalMode.InterfaceNamePrefix: "interface-prefix",
}


@dataclass(frozen=True)
class LocalDetector:
    """How to tell pod traffic from other traffic (`pkg/proxy/util/localdetector.go`).

    `mode` None is the no-op detector: nothing is known to be local, so the ClusterIP
    masquerade rule and the pod short-circuit for Local external traffic are not written.
    For ClusterCIDR/NodeCIDR `value` is a CIDR; for BridgeInterface an interface name; for
    InterfaceNamePrefix an interface name prefix.
    """

    mode: DetectLocalMode | None = None
    value: str = ""

    @property
    def implemented(self) -> bool:
        return self.mode is not None and bool(self.value)

    @property
    def criterion(self) -> str:
        """What a rule matches, whatever its syntax: "source" (a CIDR), "interface" (a
        name) or "interface-prefix" (a name prefix); "" for the no-op detector."""
        if not self.implemented:
            return ""
        return _DETECTOR_CRITERIA[self.mode]  # type: ignore[index]


@dataclass(frozen=True)
class EntryPoint:
    """One way into a service port: an address (empty for a node port) and a port."""

    kind: EntryKind
    ip: str
    port: int


@dataclass(frozen=True)
class ServicePortPlan:
    """Everything one node does for one service port of one family."""

    name: ServicePortName
    service_port: ServicePort
    protocol: Protocol
    cluster_ip: str
    port: int
    node_port: int
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]  # loadBalancerSourceRanges of the family, normalised
    health_check_node_port: int
    affinity_seconds: int  # ClientIP affinity timeout; 0 when there is no affinity
    internal_policy_local: bool
    external_policy_local: bool
    externally_accessible: bool  # has a node port, an LB IP or an external IP of the family
    uses_cluster_endpoints: bool
    uses_local_endpoints: bool
    endpoints: tuple[Endpoint, ...]  # every endpoint of the family, any condition
    cluster_endpoints: tuple[Endpoint, ...]
    local_endpoints: tuple[Endpoint, ...]
    reachable_endpoints: tuple[Endpoint, ...]  # union of the two; one endpoint chain each
    topology_mode: TopologyMode
    has_any_endpoints: bool
    has_internal_endpoints: bool  # cluster-IP traffic has somewhere to go
    has_external_endpoints: bool  # external traffic from outside has somewhere to go
    uses_cluster_chain: bool  # a KUBE-SVC-style dispatch over cluster_endpoints exists
    uses_local_chain: bool  # a KUBE-SVL-style dispatch over local_endpoints exists
    uses_external_chain: bool  # a KUBE-EXT-style entry for external traffic exists
    uses_firewall: bool  # a KUBE-FW-style source-range filter exists
    firewall_allows_node: bool  # a source range contains the primary node IP
    internal_filter: FilterAction | None  # cluster-IP traffic without endpoints
    external_filter: FilterAction | None  # external traffic without endpoints
    local_ready_endpoints: int  # for the health-check node port

    @property
    def masquerade_external(self) -> bool:
        """All external traffic is masqueraded (ETP Cluster); with ETP Local only node-local
        sources are, and pod sources are short-circuited to the cluster endpoints."""
        return not self.external_policy_local

    @property
    def entry_points(self) -> tuple[EntryPoint, ...]:
        out = [EntryPoint(EntryKind.ClusterIP, self.cluster_ip, self.port)]
        out += [EntryPoint(EntryKind.ExternalIP, ip, self.port) for ip in self.external_ips]
        out += [EntryPoint(EntryKind.LoadBalancerIP, ip, self.port) for ip in self.load_balancer_ips]
        if self.node_port:
            out.append(EntryPoint(EntryKind.NodePort, "", self.node_port))
        return tuple(out)


class InternalMasquerade(str, enum.Enum):
    """Which cluster-IP traffic is masqueraded."""

    ALL = "all"  # --masquerade-all
    NOT_LOCAL = "not-local"  # traffic the local detector does not recognise as pod traffic
    NONE = "none"  # no detector: nothing

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class NodePlan:
    """What this node's proxy programs for one IP family."""

    config: ProxyConfig
    node_name: str
    family: IPFamily
    services: tuple[ServicePortPlan, ...]
    local_detector: LocalDetector
    masquerade_mark: int
    internal_masquerade: InternalMasquerade
    primary_node_ip: str  # "" when unknown
    node_ips: tuple[str, ...]  # this node's addresses of the family
    zone: str
    nodeport_match_all: bool  # node ports on every local address
    nodeport_ips: tuple[str, ...]  # otherwise these addresses (loopback included if selected)
    localhost_nodeports: bool  # effective: IPv4 and enabled
    total_endpoints: int  # over all planned service ports; drives large-cluster mode
    no_local_endpoints_internal: int
    no_local_endpoints_external: int
    skipped: tuple[tuple[ServicePortName, str], ...] = ()
    # the cluster's service ranges of the family (ServiceCIDRs): nftables mode drops traffic
    # to their addresses no Service holds
    service_cidrs: tuple[str, ...] = ()
    _index: Mapping[ServicePortName, ServicePortPlan] = field(default_factory=dict, repr=False, compare=False)
    # sort keys parallel to `services`, and `namespace/name` → its planned port names: what
    # an incremental re-plan needs to splice changed services in without a full pass
    _keys: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)
    _by_service: Mapping[str, tuple[ServicePortName, ...]] = field(default_factory=dict, repr=False, compare=False)

    def service(self, name: ServicePortName) -> ServicePortPlan | None:
        return self._index.get(name)

    def ports_of(self, service_key: str) -> tuple[ServicePortName, ...]:
        """The planned port names of one Service (`namespace/name`)."""
        return self._by_service.get(service_key, ())

    @property
    def health_check_node_ports(self) -> dict[str, int]:
        """`namespace/name` → health-check node port, for LoadBalancer Services with ETP Local."""
        return {
            sp.name.service: sp.health_check_node_port for sp in self.services if sp.health_check_node_port
        }

    def local_ready_endpoints(self) -> dict[str, int]:
        """`namespace/name` → Ready endpoints on this node, summed over the service's ports
        that have a health-check node port (what the health-check server reports)."""
        out: dict[str, int] = {}
        for sp in self.services:
            if sp.health_check_node_port:
                out[sp.name.service] = out.get(sp.name.service, 0) + sp.local_ready_endpoints
        return out


# --- helpers ---------------------------------------------------------------------------


def _is_v6(ip: str) -> bool:
    return ":" in ip


def _canonical_ip(ip: str) -> str | None:
    """The address as kube-proxy writes it (`net.IP.String()`), or None when it is not one.

    IPv4 is checked by hand (the hot path: one cluster IP per service port); leading zeros
    are read as decimal, as Go's ParseIPSloppy does.
    """
    ip = ip.strip()
    if ":" not in ip:
        parts = ip.split(".")
        if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
            return None
        nums = [int(p) for p in parts]
        if max(nums) > 255:
            return None
        canon = "%d.%d.%d.%d" % (nums[0], nums[1], nums[2], nums[3])
        return ip if canon == ip else canon
    try:
        return str(ipaddress.IPv6Address(ip))
    except ValueError:
        return None


def _ips_of_family(ips: Iterable[str], v6: bool) -> tuple[str, ...]:
    out: list[str] = []
    for ip in ips:
        if _is_v6(ip) != v6:
            continue
        canon = _canonical_ip(ip)
        if canon is not None and canon not in out:
            out.append(canon)
    return tuple(out)


def _cidrs_of_family(cidrs: Iterable[str], v6: bool) -> tuple[str, ...]:
    out: list[str] = []
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if (net.version == 6) != v6:
            continue
        canon = str(net)
        if canon not in out:
            out.append(canon)
    return tuple(out)


def _node_addresses(node: NodeInfo | None, v6: bool) -> tuple[str, ...]:
    if node is None:
        return ()
    ordered = list(node.addresses_of("InternalIP")) + list(node.addresses_of("ExternalIP"))
    return _ips_of_family(ordered, v6)


def _local_detector(config: ProxyConfig, node: NodeInfo | None, v6: bool) -> LocalDetector:
    mode = config.detect_local_mode
    if mode == DetectLocalMode.ClusterCIDR:
        cidrs = _cidrs_of_family(config.cluster_cidrs, v6)
        return LocalDetector(mode, cidrs[0]) if cidrs else LocalDetector()
    if mode == DetectLocalMode.NodeCIDR:
        cidrs = _cidrs_of_family(node.pod_cidrs if node else (), v6)
        return LocalDetector(mode, cidrs[0]) if cidrs else LocalDetector()
    if mode == DetectLocalMode.BridgeInterface:
        iface = config.pod_bridge_interface
        return LocalDetector(mode, iface) if iface else LocalDetector()
    if mode == DetectLocalMode.InterfaceNamePrefix:
        prefix = config.pod_interface_name_prefix
        return LocalDetector(mode, prefix) if prefix else LocalDetector()
    return LocalDetector()


def _nodeport_addresses(
    config: ProxyConfig, node_ips: Sequence[str], v6: bool
) -> tuple[bool, tuple[str, ...], bool]:
    """(match all, addresses, selects IPv4 loopback): kube-proxy's NodePortAddresses.

    `primary` means the primary node IP. CIDRs are filtered to the family; none left, or a
    zero CIDR among them, means every address. Otherwise the node's addresses (and the
    loopback address, which every node has) inside the CIDRs are used. The last value is
    `ContainsIPv4Loopback`: without it kube-proxy turns localhost node ports off.
    """
    wanted = config.nodeport_addresses
    if tuple(w.lower() for w in wanted) == (PRIMARY,):
        if node_ips:
            return False, tuple(node_ips[:1]), False
        return True, (), not v6
    nets = []
    for text in wanted:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            continue
        if (net.version == 6) != v6:
            continue
        if net.prefixlen == 0:
            return True, (), not v6
        nets.append(net)
    if not nets:
        return True, (), not v6
    loopback = "::1" if v6 else "127.0.0.1"
    candidates = list(node_ips) + [loopback]
    out: list[str] = []
    for ip in candidates:
        addr = ipaddress.ip_address(ip)
        if any(addr in net for net in nets) and ip not in out:
            out.append(ip)
    has_loopback = not v6 and any(
        net.network_address.is_loopback or ipaddress.ip_address("127.0.0.1") in net for net in nets
    )
    return False, tuple(out), has_loopback


def _topology_mode(
    endpoints: Sequence[Endpoint], node_name: str, zone: str, prefer_same_node: bool
) -> TopologyMode:
    """kube-proxy's topologyModeFromHints: only Ready endpoints count."""
    has_for_node = False
    all_node_hints = True
    has_for_zone = False
    all_zone_hints = True
    for ep in endpoints:
        if not ep.ready:
            continue
        if not ep.node_hints:
            all_node_hints = False
        elif node_name in ep.node_hints:
            has_for_node = True
        if not ep.zone_hints:
            all_zone_hints = False
        elif zone in ep.zone_hints:
            has_for_zone = True
    if prefer_same_node and all_node_hints and has_for_node:
        return TopologyMode.PreferSameNode
    if all_zone_hints and has_for_zone:
        return TopologyMode.PreferSameZone
    return TopologyMode.NONE


_by_address = attrgetter("address")


def categorize_endpoints(
    endpoints: Sequence[Endpoint],
    uses_cluster: bool,
    uses_local: bool,
    node_name: str,
    zone: str,
    prefer_same_node: bool = True,
) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...], tuple[Endpoint, ...], bool, TopologyMode]:
    """kube-proxy's CategorizeEndpoints.

    Returns (cluster endpoints, local endpoints, reachable endpoints, has any endpoints,
    topology mode). `endpoints` must be sorted by address; so are the results.
    """
    cluster: tuple[Endpoint, ...] = ()
    local: tuple[Endpoint, ...] = ()
    has_any = False
    mode = TopologyMode.NONE
    use_serving_terminating = False

    if uses_cluster:
        mode = _topology_mode(endpoints, node_name, zone, prefer_same_node)
        if mode == TopologyMode.NONE:
            cluster = tuple(ep for ep in endpoints if ep.ready)
        elif mode == TopologyMode.PreferSameNode:
            cluster = tuple(ep for ep in endpoints if ep.ready and node_name in ep.node_hints)
        else:
            cluster = tuple(ep for ep in endpoints if ep.ready and zone in ep.zone_hints)
        if not cluster:
            # No Ready endpoint anywhere (topology never filters every Ready one away).
            cluster = tuple(ep for ep in endpoints if ep.serving and ep.terminating)
        if cluster:
            has_any = True

    if not uses_local:
        return cluster, local, cluster, has_any, mode

    local_ready = False
    local_serving_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            if ep.node_name == node_name:
                local_ready = True
        elif ep.serving and ep.terminating:
            has_any = True
            if ep.node_name == node_name:
                local_serving_terminating = True
    if local_ready:
        local = tuple(ep for ep in endpoints if ep.ready and ep.node_name == node_name)
    elif local_serving_terminating:
        use_serving_terminating = True
        local = tuple(
            ep for ep in endpoints if ep.node_name == node_name and ep.serving and ep.terminating
        )

    if not uses_cluster:
        return cluster, local, local, has_any, mode
    if mode == TopologyMode.NONE and not use_serving_terminating:
        # cluster holds every Ready endpoint, local only Ready ones: a superset already.
        return cluster, local, cluster, has_any, mode
    merged = {ep.address: ep for ep in cluster}
    for ep in local:
        merged.setdefault(ep.address, ep)
    reachable = tuple(merged[k] for k in sorted(merged))
    return cluster, local, reachable, has_any, mode


def _family_endpoints(eps: Sequence[Endpoint], v6: bool) -> tuple[Endpoint, ...]:
    """Endpoints of the family with a usable address and port, sorted by `ip:port` string."""
    out: list[Endpoint] = []
    for ep in eps:
        ip = ep.ip
        if not ip or (":" in ip) != v6 or not 0 < ep.port <= 65535:
            continue
        if v6:
            canon = _canonical_ip(ip)
            if canon is None:
                continue
            if canon != ip:
                ep = _replace_ip(ep, canon)
        out.append(ep)
    if len(out) > 1:
        out.sort(key=_by_address)
    return tuple(out)


def _replace_ip(ep: Endpoint, ip: str) -> Endpoint:
    return dataclasses.replace(ep, ip=ip)


def _plan_port(
    sp: ServicePort,
    eps: Sequence[Endpoint],
    config: ProxyConfig,
    v6: bool,
    family: IPFamily,
    zone: str,
    primary_ip: str,
) -> ServicePortPlan | str:
    """One service port → its plan, or a reason string when it is skipped."""
    raw_cip = next((ip for ip in sp.cluster_ips if (":" in ip) == v6), None)
    if not raw_cip:
        return f"no {family} cluster IP"
    cluster_ip = _canonical_ip(raw_cip)
    if cluster_ip is None:
        return f"cluster IP {raw_cip!r} is not an IP address"
    external_ips = _ips_of_family(sp.external_ips, v6)
    lb_ips = _ips_of_family(sp.load_balancer_ips, v6)
    source_ranges = _cidrs_of_family(sp.load_balancer_source_ranges, v6)
    node_port = sp.node_port if 0 < sp.node_port <= 65535 else 0
    accessible = bool(node_port or lb_ips or external_ips)
    itp_local = sp.internal_policy_local
    etp_local = sp.external_policy_local
    uses_cluster = (not itp_local) or accessible
    uses_local = itp_local or (etp_local and accessible)

    endpoints = _family_endpoints(eps, v6)
    cluster, local, reachable, has_any, mode = categorize_endpoints(
        endpoints, uses_cluster, uses_local, config.node_name, zone, config.prefer_same_node
    )

    uses_cluster_chain = bool(cluster) and uses_cluster
    uses_local_chain = bool(local) and uses_local
    has_internal = has_any
    if itp_local and not local:
        has_internal = False
    has_external = has_any
    if etp_local and not local:
        has_external = False
    uses_firewall = has_any and bool(lb_ips) and bool(source_ranges)

    internal_filter: FilterAction | None = None
    external_filter: FilterAction | None = None
    if not has_any:
        internal_filter = FilterAction.REJECT
        external_filter = FilterAction.REJECT
    else:
        if not has_internal:
            internal_filter = FilterAction.DROP
        if not has_external:
            external_filter = FilterAction.DROP

    allows_node = False
    if uses_firewall and primary_ip:
        node_addr = ipaddress.ip_address(primary_ip)
        allows_node = any(node_addr in ipaddress.ip_network(c) for c in source_ranges)

    hc_port = sp.health_check_node_port if etp_local and 0 < sp.health_check_node_port <= 65535 else 0
    affinity = sp.sticky_max_age_seconds if sp.session_affinity else 0
    if sp.session_affinity and affinity <= 0:
        affinity = 10800
    node_name = config.node_name
    local_ready = sum(1 for ep in endpoints if ep.ready and ep.node_name == node_name)

    return ServicePortPlan(
        name=sp.name,
        service_port=sp,
        protocol=sp.protocol,
        cluster_ip=cluster_ip,
        port=sp.port,
        node_port=node_port,
        external_ips=external_ips,
        load_balancer_ips=lb_ips,
        source_ranges=source_ranges,
        health_check_node_port=hc_port,
        affinity_seconds=affinity,
        internal_policy_local=itp_local,
        external_policy_local=etp_local,
        externally_accessible=accessible,
        uses_cluster_endpoints=uses_cluster,
        uses_local_endpoints=uses_local,
        endpoints=endpoints,
        cluster_endpoints=cluster,
        local_endpoints=local,
        reachable_endpoints=reachable,
        topology_mode=mode,
        has_any_endpoints=has_any,
        has_internal_endpoints=has_internal,
        has_external_endpoints=has_external,
        uses_cluster_chain=uses_cluster_chain,
        uses_local_chain=uses_local_chain,
        uses_external_chain=has_any and accessible,
        uses_firewall=uses_firewall,
        firewall_allows_node=allows_node,
        internal_filter=internal_filter,
        external_filter=external_filter,
        local_ready_endpoints=local_ready,
    )


def _sort_key(name: ServicePortName) -> tuple[str, str]:
    return (str(name), name.protocol.value)


def plan(
    state: ClusterState,
    config: ProxyConfig,
    previous: NodePlan | None = None,
    changed: Collection[str] | None = None,
) -> NodePlan:
    """The NodePlan of `config.node_name` for `config.family`. Pure and deterministic.

    Incremental form: with `previous` (the plan of an earlier state) and `changed` (the
    `namespace/name` of every Service whose Service object or endpoints changed since), only
    those Services' ports are planned again and the others are taken from `previous`. The
    result equals a full plan of `state` provided `changed` is complete. When anything
    node-wide differs (config, node addresses, zone, local-traffic detection), everything is
    planned again.
    """
    family = config.family
    v6 = family == IPFamily.IPv6
    node = state.nodes.get(config.node_name)
    zone = node.label(ZONE_LABEL) if node else ""

    node_ips = _ips_of_family(config.node_ips, v6) or _node_addresses(node, v6)
    primary_ip = node_ips[0] if node_ips else ""
    detector = _local_detector(config, node, v6)
    match_all, np_ips, np_loopback = _nodeport_addresses(config, node_ips, v6)
    try:
        mark = masquerade_mark(config.masquerade_bit)
    except ValueError:
        mark = masquerade_mark(14)
    if config.masquerade_all:
        internal_masq = InternalMasquerade.ALL
    elif detector.implemented:
        internal_masq = InternalMasquerade.NOT_LOCAL
    else:
        internal_masq = InternalMasquerade.NONE

    service_cidrs = tuple(c for c in state.service_cidrs if (":" in c) == v6)
    if (
        previous is not None and changed is not None and previous.config == config
        and previous.node_ips == node_ips and previous.zone == zone and previous.local_detector == detector
        and previous.service_cidrs == service_cidrs and len(previous._keys) == len(previous.services)
    ):
        return _replan(previous, state, frozenset(changed), config, v6, family, zone, primary_ip)

    services: list[ServicePortPlan] = []
    skipped: list[tuple[ServicePortName, str]] = []
    total_endpoints = 0
    no_local_internal = 0
    no_local_external = 0
    for name in sorted(state.ports, key=_sort_key):
        result = _plan_one(state, name, config, v6, family, zone, primary_ip)
        if isinstance(result, str):
            skipped.append((name, result))
            continue
        services.append(result)
        total_endpoints += len(result.endpoints)
        if result.internal_filter == FilterAction.DROP:
            no_local_internal += 1
        if result.external_filter == FilterAction.DROP:
            no_local_external += 1

    return NodePlan(
        config=config,
        node_name=config.node_name,
        family=family,
        services=tuple(services),
        local_detector=detector,
        masquerade_mark=mark,
        internal_masquerade=internal_masq,
        primary_node_ip=primary_ip,
        node_ips=node_ips,
        zone=zone,
        nodeport_match_all=match_all,
        nodeport_ips=np_ips,
        localhost_nodeports=config.localhost_nodeports and not v6 and np_loopback,
        total_endpoints=total_endpoints,
        no_local_endpoints_internal=no_local_internal,
        no_local_endpoints_external=no_local_external,
        skipped=tuple(skipped),
        service_cidrs=service_cidrs,
        _index={sp.name: sp for sp in services},
        _keys=tuple(_sort_key(sp.name) for sp in services),
        _by_service=_by_service(services),
    )


def _by_service(services: Iterable[ServicePortPlan]) -> dict[str, tuple[ServicePortName, ...]]:
    out: dict[str, list[ServicePortName]] = {}
    for sp in services:
        out.setdefault(sp.name.service, []).append(sp.name)
    return {k: tuple(v) for k, v in out.items()}


def _plan_one(state: ClusterState, name: ServicePortName, config: ProxyConfig, v6: bool, family: IPFamily,
              zone: str, primary_ip: str) -> ServicePortPlan | str:
    try:
        return _plan_port(state.ports[name], state.endpoints.get(name, ()), config, v6, family, zone, primary_ip)
    except (ValueError, TypeError, AttributeError) as exc:  # odd data never stops a sync
        return f"cannot plan: {exc}"


def _replan(previous: NodePlan, state: ClusterState, dirty: frozenset[str], config: ProxyConfig, v6: bool,
            family: IPFamily, zone: str, primary_ip: str) -> NodePlan:
    """`previous` with the ports of the `dirty` Services planned again and spliced into the
    sorted order: O(changed) work plus a few C-level list/dict copies, and equal to a full plan
    of `state` when `dirty` names every Service that changed."""
    services = list(previous.services)
    keys = list(previous._keys)
    index = dict(previous._index)
    by_service = dict(previous._by_service)
    skipped = dict(previous.skipped)
    total = previous.total_endpoints
    no_local_internal = previous.no_local_endpoints_internal
    no_local_external = previous.no_local_endpoints_external

    def count(sp: ServicePortPlan, sign: int) -> None:
        nonlocal total, no_local_internal, no_local_external
        total += sign * len(sp.endpoints)
        if sp.internal_filter == FilterAction.DROP:
            no_local_internal += sign
        if sp.external_filter == FilterAction.DROP:
            no_local_external += sign

    for svc_key in dirty:
        for name in by_service.pop(svc_key, ()):
            old = index.pop(name, None)
            if old is not None:
                pos = bisect.bisect_left(keys, _sort_key(name))
                del keys[pos]
                del services[pos]
                count(old, -1)
        for name in [n for n in skipped if n.service == svc_key]:
            del skipped[name]
        svc = state.services.get(svc_key)
        names = [p.name for p in svc.ports if p.name in state.ports] if svc is not None else []
        planned: list[ServicePortName] = []
        for name in sorted(names, key=_sort_key):
            result = _plan_one(state, name, config, v6, family, zone, primary_ip)
            if isinstance(result, str):
                skipped[name] = result
                continue
            key = _sort_key(name)
            pos = bisect.bisect_left(keys, key)
            keys.insert(pos, key)
            services.insert(pos, result)
            index[name] = result
            planned.append(name)
            count(result, +1)
        if planned:
            by_service[svc_key] = tuple(planned)

    return dataclasses.replace(
        previous,
        services=tuple(services),
        total_endpoints=total,
        no_local_endpoints_internal=no_local_internal,
        no_local_endpoints_external=no_local_external,
        skipped=tuple(sorted(skipped.items(), key=lambda item: _sort_key(item[0]))),
        _index=index,
        _keys=tuple(keys),
        _by_service=by_service,
    )
