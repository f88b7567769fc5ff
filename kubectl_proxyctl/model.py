"""The cluster model every part of kubectl proxyctl shares.

Theory of operation: raw API objects (plain dicts, from the API server or a file) are converted
once, in `kube/convert.py`, into these frozen dataclasses. Nothing downstream (planner,
renderers, inspector, output) ever sees an API payload. The semantics are kube-proxy's
(`pkg/proxy/serviceport.go`, `endpointslicecache.go`, `types.go`):

* The unit of work is a *service port*, identified by a ServicePortName
  (namespace, name, port name, protocol). Its string form is `ns/name:port`, or `ns/name`
  when the port is unnamed; the protocol is not part of the string.
* Each ServicePort carries the cluster IPs of both families; a single-family consumer asks
  for `cluster_ip(family)`, `external_ips_for(family)` and so on.
* Endpoints of a service port are already merged over all its EndpointSlices, de-duplicated
  by `ip:port` (a non-terminating copy wins) and sorted by the *string* `ip:port`, as
  kube-proxy sorts them.

All collections are tuples, so every object is hashable and safe to share between threads.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping


class Protocol(str, enum.Enum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    def __str__(self) -> str:
        return self.value


class IPFamily(str, enum.Enum):
    IPv4 = "IPv4"
    IPv6 = "IPv6"

    def __str__(self) -> str:
        return self.value


def ip_family(ip: str) -> IPFamily:
    """The family of an IP address or CIDR string. Raises ValueError when it is neither."""
    text = ip.split("/", 1)[0]
    return IPFamily.IPv6 if ipaddress.ip_address(text).version == 6 else IPFamily.IPv4


def join_host_port(ip: str, port: int) -> str:
    """Go's net.JoinHostPort: `1.2.3.4:80`, `[fd00::1]:80`."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class ServiceType(str, enum.Enum):
    ClusterIP = "ClusterIP"
    NodePort = "NodePort"
    LoadBalancer = "LoadBalancer"
    ExternalName = "ExternalName"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, order=True)
class ServicePortName:
    """kube-proxy's proxy.ServicePortName."""

    namespace: str
    name: str
    port: str  # the port's name; "" when unnamed
    protocol: Protocol = Protocol.TCP

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    # Hash and `service` are cached on the instance (outside the dataclass fields, so equality,
    # ordering and repr are unchanged): a sync hashes the same names tens of thousands of times.
    def __hash__(self) -> int:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.namespace, self.name, self.port, self.protocol))
            object.__setattr__(self, "_hash", cached)
        return cached

    @property
    def service(self) -> str:
        """`namespace/name` of the owning Service."""
        cached = self.__dict__.get("_service")
        if cached is None:
            cached = f"{self.namespace}/{self.name}"
            object.__setattr__(self, "_service", cached)
        return cached

    def __getstate__(self) -> dict[str, object]:
        # never carry the cached hash into another process (string hashes are salted)
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass(frozen=True)
class ServicePort:
    """One port of one proxied Service, with everything a proxy needs to program it."""

    name: ServicePortName
    port: int
    protocol: Protocol
    type: ServiceType = ServiceType.ClusterIP
    cluster_ips: tuple[str, ...] = ()
    target_port: int | str = 0
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip, ipMode Proxy skipped
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: bool = False  # ClientIP
    sticky_max_age_seconds: int = 0  # only meaningful with session_affinity
    external_policy_local: bool = False  # externalTrafficPolicy: Local on an externally accessible Service
    internal_policy_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0  # only for type LoadBalancer with ETP Local
    traffic_distribution: str = ""

    def cluster_ip(self, family: IPFamily) -> str | None:
        for ip in self.cluster_ips:
            if ip_family(ip) == family:
                return ip
        return None

    def external_ips_for(self, family: IPFamily) -> tuple[str, ...]:
        return tuple(ip for ip in self.external_ips if ip_family(ip) == family)

    def load_balancer_ips_for(self, family: IPFamily) -> tuple[str, ...]:
        return tuple(ip for ip in self.load_balancer_ips if ip_family(ip) == family)

    def source_ranges_for(self, family: IPFamily) -> tuple[str, ...]:
        return tuple(c for c in self.load_balancer_source_ranges if ip_family(c) == family)

    @property
    def externally_accessible(self) -> bool:
        """Has a NodePort, an LB VIP or an external IP (kube-proxy's ExternallyAccessible)."""
        return bool(self.node_port or self.load_balancer_ips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        return (not self.internal_policy_local) or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or (
            self.external_policy_local and self.externally_accessible
        )


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of one service port, after merging all slices."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    target_ref: str = ""  # "Pod/name" (namespace is the service's), or "" when absent
    slice_name: str = ""

    @property
    def address(self) -> str:
        """The `ip:port` string kube-proxy sorts and hashes by."""
        return join_host_port(self.ip, self.port)

    @property
    def family(self) -> IPFamily:
        return ip_family(self.ip)

    @property
    def pod_name(self) -> str:
        kind, _, name = self.target_ref.partition("/")
        return name if kind == "Pod" else ""


@dataclass(frozen=True)
class Service:
    """An API Service after conversion, proxied or not.

    `proxied_reason` is "" for a Service kube-proxy programs, else why it is skipped
    (headless, ExternalName, a foreign service-proxy-name). The `endpoints` command still
    shows skipped Services, with that reason.
    """

    namespace: str
    name: str
    type: ServiceType
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...] = ()
    skip_reason: str = ""
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def proxied(self) -> bool:
        return not self.skip_reason


@dataclass(frozen=True)
class NodeInfo:
    name: str
    addresses: tuple[tuple[str, str], ...] = ()  # (type, address), e.g. ("InternalIP", "172.18.0.2")
    labels: tuple[tuple[str, str], ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    unschedulable: bool = False
    deleting: bool = False
    taints: tuple[str, ...] = ()  # taint keys

    @property
    def zone(self) -> str:
        return self.label("topology.kubernetes.io/zone")

    def label(self, key: str) -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return ""

    def addresses_of(self, kind: str) -> tuple[str, ...]:
        return tuple(a for t, a in self.addresses if t == kind)


@dataclass(frozen=True)
class Pod:
    """The few Pod facts the inspector uses to explain missing endpoints."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    ip: str = ""
    node_name: str = ""
    ready: bool = False
    container_ports: tuple[tuple[str, int, Protocol], ...] = ()  # (name, port, protocol)


@dataclass(frozen=True)
class IgnoredSlice:
    namespace: str
    name: str
    service: str
    reason: str


@dataclass(frozen=True)
class ClusterState:
    """Everything known about the cluster at one moment.

    `services` holds every converted Service by `ns/name`; `ports` only the service ports of
    proxied ones, by ServicePortName; `endpoints` the merged, sorted endpoints of each
    ServicePortName that any slice mentions (a port may have endpoints and no Service yet,
    as during creation). `pods` is empty unless pods were listed.
    """

    services: Mapping[str, Service] = field(default_factory=dict)
    ports: Mapping[ServicePortName, ServicePort] = field(default_factory=dict)
    endpoints: Mapping[ServicePortName, tuple[Endpoint, ...]] = field(default_factory=dict)
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    pods: Mapping[str, Pod] = field(default_factory=dict)
    ignored_slices: tuple[IgnoredSlice, ...] = ()
    slices_by_service: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    has_pods: bool = False
    # the cluster's service IP ranges (ServiceCIDR objects' spec.cidrs), sorted
    service_cidrs: tuple[str, ...] = ()

    def endpoints_of(self, name: ServicePortName) -> tuple[Endpoint, ...]:
        return self.endpoints.get(name, ())

    def service_ports(self, service_key: str) -> tuple[ServicePort, ...]:
        svc = self.services.get(service_key)
        return svc.ports if svc else ()

    def replace(self, **changes: object) -> "ClusterState":
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
