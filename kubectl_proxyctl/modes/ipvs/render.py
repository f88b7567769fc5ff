"""IPVS mode's desired state for one node: virtual servers, ipsets, dummy-link addresses and
the constant-size iptables companion rules, as kube-proxy's IPVS mode lays them out.

Theory of operation: `render(plan, ...)` is pure. Every Service (`namespace/name`) gives one
`ServiceEntries`: its virtual servers with their real servers, its ipset members, the
addresses it binds to `kube-ipvs0` and its KUBE-IPVS-OUT-FILTER rules. `IpvsState` is their
sum, with reference counts, so that a partial render (`previous=`, `changed=`) replaces only
the changed Services' entries and can tell exactly which virtual servers, set members and
addresses appeared, changed or went away (`IpvsState.delta`): a partial sync writes only
those. The iptables payload is rendered whole every time (it has ~40 rules whatever the
cluster size; which of them exist depends only on which sets are empty).

Layout (kube-proxy `pkg/proxy/ipvs/proxier.go`, reference §4):

* one virtual server per ClusterIP, external IP and load-balancer IP and port, and per node
  address and NodePort; scheduler `--ipvs-scheduler`; ClientIP affinity = persistence with
  the Service's timeout; `mh` adds the `mh-port` scheduler flag (kube-proxy's FlagSourceHash);
* real servers: the endpoints, masquerading (`-m`), weight 1. Cluster-IP servers use the
  cluster endpoints (the local ones with internalTrafficPolicy Local, falling back to the
  cluster ones when there is none, as kube-proxy's IPVS mode does); external entries the same
  with externalTrafficPolicy;
* every ClusterIP, and external and LB IPs that are not node addresses, bound to kube-ipvs0;
* the ipsets of `SETS` (KUBE-6- for IPv6, names cut at 31 characters), and the iptables rules
  of `_SET_RULES` for the non-empty ones.

`save_text()` prints it all as the tools print it: `ipvsadm -Sn`, `ipset save`,
`iptables-save` (what `run --dry-run` shows and the golden files hold).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kubectl_proxyctl.model import Endpoint, IPFamily, Protocol
from kubectl_proxyctl.modes.iptables.render import (
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    JumpRule,
    _detector_args,
    _forward_rules,
    _postrouting_rules,
)
from kubectl_proxyctl.plan.marks import format_mark
from kubectl_proxyctl.plan.planner import InternalMasquerade, NodePlan, ServicePortPlan

DUMMY_DEVICE = "kube-ipvs0"
DEFAULT_SCHEDULER = "rr"
# ipvsadm's schedulers (the kernel loads ip_vs_<name> on first use).
# The API's maximum ClientIP timeout: a Service from a file may say more, which the kernel's
# persistence timeout (and `ipvsadm -R`) refuses; capped, as nftables mode caps its set timeouts.
AFFINITY_SECONDS_MAX = 86400

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")

KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"

NAT_CHAINS = (KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ)
FILTER_CHAINS = (KUBE_FORWARD, KUBE_NODE_PORT, KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, KUBE_IPVS_FILTER,
                 KUBE_IPVS_OUT_FILTER)

# Jumps from the built-in chains, kube-proxy's iptablesJumpChain (each inserted at position 1).
JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    JumpRule("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    JumpRule("filter", "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
)

LOOP_BACK = "KUBE-LOOP-BACK"
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_IP = "KUBE-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "KUBE-LOAD-BALANCER"
LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
IPVS_IPS = "KUBE-IPVS-IPS"


@dataclass(frozen=True)
class SetSpec:
    """One of kube-proxy's ipsets (IPv4 name; `set_name` gives the family's)."""

    name: str
    type: str
    comment: str


# kube-proxy's ipsetInfo, in its order (every set is created, empty or not).
SETS: tuple[SetSpec, ...] = (
    SetSpec(LOOP_BACK, "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    SetSpec(CLUSTER_IP, "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    SetSpec(EXTERNAL_IP, "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    SetSpec(EXTERNAL_IP_LOCAL, "hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    SetSpec(LOAD_BALANCER, "hash:ip,port", "Kubernetes service lb portal"),
    SetSpec(LOAD_BALANCER_FW, "hash:ip,port",
            "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    SetSpec(LOAD_BALANCER_LOCAL, "hash:ip,port",
            "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    SetSpec(LOAD_BALANCER_SOURCE_IP, "hash:ip,port,ip",
            "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    SetSpec(LOAD_BALANCER_SOURCE_CIDR, "hash:ip,port,net",
            "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    SetSpec(NODE_PORT_TCP, "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    SetSpec(NODE_PORT_LOCAL_TCP, "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    SetSpec(NODE_PORT_UDP, "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    SetSpec(NODE_PORT_LOCAL_UDP, "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    SetSpec(NODE_PORT_SCTP, "hash:ip,port",
            "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    SetSpec(NODE_PORT_LOCAL_SCTP, "hash:ip,port",
            "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    SetSpec(HEALTH_CHECK_NODE_PORT, "bitmap:port", "Kubernetes health check node port"),
    SetSpec(IPVS_IPS, "hash:ip", "Addresses on the ipvs interface"),
)
SET_BY_NAME: Mapping[str, SetSpec] = {s.name: s for s in SETS}

# kube-proxy's ipsetWithIptablesChain: (set, table, from chain, target, match, protocol),
# in order; a rule is written only when its set is not empty.
_SET_RULES: tuple[tuple[str, str, str, str, str, str], ...] = (
    (LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
    (LOAD_BALANCER_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    (LOAD_BALANCER_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
)

_PROTO_FLAG = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}
# Protocols whose removed real servers drain (weight 0) instead of going at once; UDP and SCTP
# flows are expired by the kernel instead (net/ipv4/vs/expire_nodest_conn=1), as in kube-proxy.
DRAINING_PROTOCOLS = frozenset({"TCP"})


def set_name(name: str, family: IPFamily) -> str:
    """A set's name in `family`: kube-proxy's `KUBE-6-` prefix for IPv6, at most 31 characters."""
    if family == IPFamily.IPv6 and name.startswith("KUBE-"):
        return ("KUBE-6-" + name[len("KUBE-"):])[:31]
    return name


VSKey = tuple[str, str, int]  # (protocol, address, port)


@dataclass(frozen=True)
class Real:
    """A real server: an endpoint, masqueraded."""

    address: str
    port: int
    weight: int = 1

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class VirtualServer:
    """One IPVS virtual server and the real servers it should have."""

    protocol: str  # TCP, UDP, SCTP
    address: str
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    persistent: int = 0  # ClientIP affinity timeout; 0: no persistence
    flags: tuple[str, ...] = ()  # scheduler flags, ipvsadm's `-b` names
    reals: tuple[Real, ...] = ()

    @property
    def key(self) -> VSKey:
        return (self.protocol, self.address, self.port)

    @property
    def where(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def same_service(self, other: "VirtualServer") -> bool:
        """The virtual server's own settings are equal (real servers aside)."""
        return (self.scheduler, self.persistent, self.flags) == (other.scheduler, other.persistent, other.flags)

    def save_lines(self) -> list[str]:
        """`ipvsadm -Sn` lines, addresses spelled as ipvsadm prints them."""
        flag = _PROTO_FLAG[self.protocol]
        where = saved_endpoint(self.address, self.port)
        head = f"-A {flag} {where} -s {self.scheduler}"
        if self.persistent:  # ipvsadm prints the persistence before the scheduler flags
            head += f" -p {self.persistent}"
        if self.flags:
            head += f" -b {','.join(self.flags)}"
        return [head] + [f"-a {flag} {where} -r {saved_endpoint(r.address, r.port)} -m -w {r.weight}"
                         for r in self.reals]


def saved_endpoint(address: str, port: int) -> str:
    """`ADDRESS:PORT` as `ipvsadm -Sn` prints it: IPv6 in brackets and in inet_ntop's spelling,
    which writes an IPv4-mapped address's last 32 bits dotted (`::ffff:240.237.11.100`, where
    Python writes `::ffff:f0ed:b64`)."""
    if ":" not in address:
        return f"{address}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, ipaddress.ip_address(address).packed)}]:{port}"


@dataclass(frozen=True)
class ServiceEntries:
    """What one Service contributes to the node's IPVS state."""

    vservers: tuple[VirtualServer, ...] = ()
    members: tuple[tuple[str, str], ...] = ()  # (IPv4 set name, member in `ipset save` spelling)
    bound: tuple[str, ...] = ()  # addresses on kube-ipvs0
    out_filter: tuple[str, ...] = ()  # KUBE-IPVS-OUT-FILTER rules


@dataclass
class Delta:
    """What changed between two states, for the changed Services only: keys with their value
    before and after (None: absent)."""

    vservers: dict[VSKey, tuple[VirtualServer | None, VirtualServer | None]] = field(default_factory=dict)
    members: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)  # set → (added, removed)
    bind: set[str] = field(default_factory=set)
    unbind: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.vservers or any(a or r for a, r in self.members.values()) or self.bind or self.unbind)


@dataclass
class IpvsState:
    """The sum of every Service's entries, with reference counts (see the module docstring)."""

    family: IPFamily
    entries: dict[str, ServiceEntries] = field(default_factory=dict)
    vservers: dict[VSKey, VirtualServer] = field(default_factory=dict)
    vs_refs: Counter[VSKey] = field(default_factory=Counter)
    members: dict[str, Counter[str]] = field(default_factory=lambda: {s.name: Counter() for s in SETS})
    bound: Counter[str] = field(default_factory=Counter)
    out_filter: Counter[str] = field(default_factory=Counter)

    def copy(self) -> "IpvsState":
        return IpvsState(self.family, dict(self.entries), dict(self.vservers), Counter(self.vs_refs),
                         {k: Counter(v) for k, v in self.members.items()}, Counter(self.bound),
                         Counter(self.out_filter))

    def add(self, key: str, entries: ServiceEntries) -> None:
        self.entries[key] = entries
        for vs in entries.vservers:
            self.vs_refs[vs.key] += 1
            self.vservers[vs.key] = vs
        for name, member in entries.members:
            self.members[name][member] += 1
        self.bound.update(entries.bound)
        self.out_filter.update(entries.out_filter)

    def remove(self, key: str) -> None:
        entries = self.entries.pop(key, None)
        if entries is None:
            return
        for vs in entries.vservers:
            self.vs_refs[vs.key] -= 1
            if self.vs_refs[vs.key] <= 0:
                del self.vs_refs[vs.key]
                del self.vservers[vs.key]
        for name, member in entries.members:
            counts = self.members[name]
            counts[member] -= 1
            if counts[member] <= 0:
                del counts[member]
        for ip in entries.bound:
            self.bound[ip] -= 1
            if self.bound[ip] <= 0:
                del self.bound[ip]
        for rule in entries.out_filter:
            self.out_filter[rule] -= 1
            if self.out_filter[rule] <= 0:
                del self.out_filter[rule]

    def set_members(self, name: str) -> set[str]:
        return set(self.members[name])

    def delta(self, before: "IpvsState", keys: Iterable[str]) -> Delta:
        """What differs from `before` in what the Services `keys` contribute."""
        out = Delta()
        vs_keys: set[VSKey] = set()
        members: dict[str, set[str]] = {}
        addresses: set[str] = set()
        for key in keys:
            for entries in (before.entries.get(key), self.entries.get(key)):
                if entries is None:
                    continue
                vs_keys.update(vs.key for vs in entries.vservers)
                for name, member in entries.members:
                    members.setdefault(name, set()).add(member)
                addresses.update(entries.bound)
        for k in vs_keys:
            old, new = before.vservers.get(k), self.vservers.get(k)
            if old != new:
                out.vservers[k] = (old, new)
        for name, candidates in members.items():
            had, has = before.members[name], self.members[name]
            added = {m for m in candidates if m in has and m not in had}
            removed = {m for m in candidates if m in had and m not in has}
            if added or removed:
                out.members[name] = (added, removed)
        out.bind = {a for a in addresses if a in self.bound and a not in before.bound}
        out.unbind = {a for a in addresses if a in before.bound and a not in self.bound}
        return out


@dataclass(frozen=True)
class Options:
    """IPVS mode's own settings (`run --ipvs-scheduler` ...)."""

    scheduler: str = DEFAULT_SCHEDULER
    random_fully: bool = True


@dataclass
class RenderedIpvs:
    """A render: the whole desired state, the changes of a partial one, the iptables payload."""

    state: IpvsState
    iptables: str  # for `iptables-restore --noflush`
    jump_rules: tuple[JumpRule, ...]
    delta: Delta | None  # None: a full render
    nodeport_addresses: tuple[str, ...]

    @property
    def partial(self) -> bool:
        return self.delta is not None

    def save_text(self, timeouts: tuple[int, int, int] = (0, 0, 0)) -> str:
        """The state as `ipvsadm -Sn`, `ipset save` and `iptables-save` print it, in that order.
        Non-zero `timeouts` (TCP, TCP FIN, UDP seconds) head the IPVS part as the `--set` line
        `ipvsadm -R` takes, since `ipvsadm -Sn` itself never prints them."""
        lines = ["# ipvsadm -Sn"]
        if any(timeouts):
            lines.append(timeouts_line(*timeouts))
        for key in sorted(self.state.vservers, key=_vs_sort_key):
            lines += self.state.vservers[key].save_lines()
        lines.append("# ipset save")
        for spec in SETS:
            lines += ipset_lines(spec, self.state.family, sorted(self.state.members[spec.name], key=_member_key))
        lines.append("# iptables-save")
        return "\n".join(lines) + "\n" + self.iptables

    @property
    def counts(self) -> tuple[int, int, int]:
        """(virtual servers, real servers, set members)."""
        reals = sum(len(vs.reals) for vs in self.state.vservers.values())
        return len(self.state.vservers), reals, sum(len(c) for c in self.state.members.values())


def timeouts_line(tcp: int, tcp_fin: int, udp: int) -> str:
    """`ipvsadm --set` arguments: 0 keeps the kernel's value, as with kube-proxy's timeout flags."""
    return f"--set {tcp} {tcp_fin} {udp}"


def ipset_lines(spec: SetSpec, family: IPFamily, members: Iterable[str]) -> list[str]:
    """`ipset save` lines of one set (kube-proxy's create options: hashsize 1024, maxelem
    65536, or the whole port range for bitmaps)."""
    name = set_name(spec.name, family)
    if spec.type.startswith("bitmap:"):
        head = f"create {name} {spec.type} range 0-65535"
    else:
        head = f"create {name} {spec.type} family {'inet6' if family == IPFamily.IPv6 else 'inet'} " \
               "hashsize 1024 maxelem 65536"
    return [head] + [f"add {name} {m}" for m in members]


def _vs_sort_key(key: VSKey) -> tuple[str, int, bytes, int]:
    protocol, address, port = key
    ip = ipaddress.ip_address(address)
    return (protocol, ip.version, ip.packed, port)


def _member_key(member: str) -> tuple[int, str]:
    return (len(member), member) if member.isdecimal() else (0, member)


def _host_port(ip: str, protocol: str, port: int) -> str:
    return f"{ip},{protocol.lower()}:{port}"


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def nodeport_addresses(plan: NodePlan, local_addresses: Iterable[str] | None) -> tuple[str, ...]:
    """The node addresses NodePort virtual servers listen on: every local address of the
    family but kube-ipvs0's (`local_addresses`, default the plan's node IPs) when NodePorts match
    all addresses, else the selected node addresses; never loopback (as kube-proxy)."""
    v6 = plan.family == IPFamily.IPv6
    if plan.nodeport_match_all:
        pool = list(local_addresses) if local_addresses is not None else list(plan.node_ips)
    else:
        pool = list(plan.nodeport_ips)
    out: list[str] = []
    for ip in pool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if (addr.version == 6) == v6 and not addr.is_loopback and not addr.is_link_local and str(addr) not in out:
            out.append(str(addr))
    return tuple(sorted(out, key=lambda a: ipaddress.ip_address(a).packed))


def _storable(ip: str) -> bool:
    """Whether a service address fits the hash sets: the kernel refuses the unspecified address
    (0.0.0.0, ::) in them, and one refused member would fail every sync, so such an address
    (no API server hands one out) gets no virtual server, set member or binding."""
    return not ipaddress.ip_address(ip).is_unspecified


def _set_nets(cidr: str) -> tuple[str, ...]:
    """A source range as `hash:ip,port,net` members: the kernel takes prefixes of 1 and more
    only, so a whole-family range is its two halves (same addresses)."""
    net = ipaddress.ip_network(cidr, strict=False)
    return tuple(str(half) for half in net.subnets()) if net.prefixlen == 0 else (cidr,)


def _reals(endpoints: Iterable[Endpoint]) -> tuple[Real, ...]:
    return tuple(sorted({Real(e.ip, e.port) for e in endpoints}, key=lambda r: (ipaddress.ip_address(r.address).packed,
                                                                                 r.port)))


def service_entries(sps: Iterable[ServicePortPlan], plan: NodePlan, node_addresses: tuple[str, ...],
                    options: Options) -> ServiceEntries:
    """What the ports `sps` of one Service contribute (kube-proxy's per-service loop)."""
    vservers: list[VirtualServer] = []
    members: list[tuple[str, str]] = []
    bound: list[str] = []
    out_filter: list[str] = []
    node_set = set(node_addresses)
    flags = ("mh-port",) if options.scheduler == "mh" else ()
    for sp in sps:
        proto = sp.protocol.value
        lower = proto.lower()
        local = tuple(e for e in sp.endpoints if e.node_name == plan.node_name)
        for e in local:
            members.append((LOOP_BACK, f"{e.ip},{lower}:{e.port},{e.ip}"))

        def vs(address: str, port: int, local_policy: bool) -> VirtualServer:
            endpoints = sp.local_endpoints if local_policy and sp.local_endpoints else sp.cluster_endpoints
            return VirtualServer(proto, address, port, options.scheduler, min(sp.affinity_seconds, AFFINITY_SECONDS_MAX),
                                 flags, _reals(endpoints))

        if _storable(sp.cluster_ip):
            members.append((CLUSTER_IP, _host_port(sp.cluster_ip, proto, sp.port)))
            vservers.append(vs(sp.cluster_ip, sp.port, sp.internal_policy_local))
            bound.append(sp.cluster_ip)
        for ip in filter(_storable, sp.external_ips):
            members.append((EXTERNAL_IP_LOCAL if sp.external_policy_local else EXTERNAL_IP,
                            _host_port(ip, proto, sp.port)))
            vservers.append(vs(ip, sp.port, sp.external_policy_local))
            if ip not in node_set:
                bound.append(ip)
        for ip in filter(_storable, sp.load_balancer_ips):
            entry = _host_port(ip, proto, sp.port)
            members.append((LOAD_BALANCER, entry))
            if sp.external_policy_local:
                members.append((LOAD_BALANCER_LOCAL, entry))
            if sp.source_ranges:
                members.append((LOAD_BALANCER_FW, entry))
                members += [(LOAD_BALANCER_SOURCE_CIDR, f"{entry},{net}") for cidr in sp.source_ranges
                            for net in _set_nets(cidr)]
                if sp.firewall_allows_node:
                    members.append((LOAD_BALANCER_SOURCE_IP, f"{entry},{ip}"))
                else:  # the node itself is outside every range: it must not reach the LB IP either
                    out_filter.append(f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {lower} "
                                      f"--vport {sp.port} -j DROP")
            vservers.append(vs(ip, sp.port, sp.external_policy_local))
            if ip not in node_set:
                bound.append(ip)
        if sp.node_port and node_addresses:
            if sp.protocol == Protocol.SCTP:
                entries = [(NODE_PORT_SCTP, _host_port(ip, proto, sp.node_port)) for ip in node_addresses]
                local_set = NODE_PORT_LOCAL_SCTP
            else:
                entries = [(NODE_PORT_TCP if sp.protocol == Protocol.TCP else NODE_PORT_UDP, str(sp.node_port))]
                local_set = NODE_PORT_LOCAL_TCP if sp.protocol == Protocol.TCP else NODE_PORT_LOCAL_UDP
            members += entries
            if sp.external_policy_local:
                members += [(local_set, m) for _, m in entries]
            vservers += [vs(ip, sp.node_port, sp.external_policy_local) for ip in node_addresses]
        if sp.health_check_node_port:
            members.append((HEALTH_CHECK_NODE_PORT, str(sp.health_check_node_port)))
    return ServiceEntries(tuple(vservers), tuple(members), tuple(bound), tuple(out_filter))


def render(plan: NodePlan, options: Options = Options(), *, local_addresses: Iterable[str] | None = None,
           previous: RenderedIpvs | None = None, changed: Iterable[str] | None = None) -> RenderedIpvs:
    """The desired state for `plan` (see the module docstring). With `previous` and
    `changed` ("namespace/name" keys), only those Services are rendered again and the result
    carries the `delta` from `previous`; a change of the NodePort addresses makes it full."""
    node_addresses = nodeport_addresses(plan, local_addresses)
    by_service: dict[str, list[ServicePortPlan]] = {}
    partial = previous is not None and changed is not None and previous.nodeport_addresses == node_addresses
    if partial:
        assert previous is not None and changed is not None
        keys = set(changed)
        state = previous.state.copy()
        for key in keys:
            state.remove(key)
            sps = [sp for name in plan.ports_of(key) if (sp := plan.service(name)) is not None]
            if sps:
                state.add(key, service_entries(sps, plan, node_addresses, options))
        delta: Delta | None = state.delta(previous.state, keys)
    else:
        for sp in plan.services:
            by_service.setdefault(sp.name.service, []).append(sp)
        state = IpvsState(plan.family)
        for key, sps in by_service.items():
            state.add(key, service_entries(sps, plan, node_addresses, options))
        delta = None
    state.members[IPVS_IPS] = Counter({ip: 1 for ip in state.bound})
    if delta is not None and previous is not None:
        had = set(previous.state.members[IPVS_IPS])
        has = set(state.members[IPVS_IPS])
        if had != has:
            delta.members[IPVS_IPS] = (has - had, had - has)
    return RenderedIpvs(state, iptables_payload(plan, state, options), JUMP_RULES, delta, node_addresses)


def iptables_payload(plan: NodePlan, state: IpvsState, options: Options) -> str:
    """The companion rules, in kube-proxy's order (writeIptablesRules)."""
    v6 = plan.family == IPFamily.IPv6
    fam = plan.family
    mark = format_mark(plan.masquerade_mark)
    nonempty = {name for name, counts in state.members.items() if counts}
    nat = [f"-A {KUBE_SERVICES} -s {'::1/128' if v6 else '127.0.0.0/8'} -j RETURN"]
    filt: list[str] = []

    def match(name: str, how: str) -> str:
        return f'-m comment --comment "{SET_BY_NAME[name].comment}" -m set --match-set {set_name(name, fam)} {how}'

    for name, table, chain, target, how, proto in _SET_RULES:
        if name in nonempty:
            line = f"-A {chain}{f' -p {proto}' if proto else ''} {match(name, how)} -j {target}"
            (nat if table == "nat" else filt).append(line)
    if CLUSTER_IP in nonempty:
        base = f"-A {KUBE_SERVICES} {match(CLUSTER_IP, '')}".rstrip()
        _, not_local = _detector_args(plan.local_detector)
        if plan.internal_masquerade == InternalMasquerade.ALL:
            nat.append(f"{base} dst,dst -j {KUBE_MARK_MASQ}")
        elif not_local:
            nat.append(f"{base} dst,dst {not_local} -j {KUBE_MARK_MASQ}")
        else:
            nat.append(f"{base} src,dst -j {KUBE_MARK_MASQ}")
    for name, masquerade in ((EXTERNAL_IP, True), (EXTERNAL_IP_LOCAL, False)):
        if name in nonempty:
            base = f"-A {KUBE_SERVICES} {match(name, 'dst,dst')}"
            if masquerade:
                nat.append(f"{base} -j {KUBE_MARK_MASQ}")
            nat.append(f"{base} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat.append(f"{base} -m addrtype --dst-type LOCAL -j ACCEPT")
    nat.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
    nat.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
    filt.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
    filt += sorted(state.out_filter)
    for name in (CLUSTER_IP, LOAD_BALANCER):
        if name in nonempty:
            nat.append(f"-A {KUBE_SERVICES} -m set --match-set {set_name(name, fam)} dst,dst -j ACCEPT")
    filt += _forward_rules(mark, tcp_be_liberal=True, nfacct=False)
    filt.append(f"-A {KUBE_NODE_PORT} {match(HEALTH_CHECK_NODE_PORT, 'dst')} -j ACCEPT")
    for name, how in ((LOAD_BALANCER, "dst,dst"), (CLUSTER_IP, "dst,dst"), (EXTERNAL_IP, "dst,dst"),
                      (EXTERNAL_IP_LOCAL, "dst,dst"), (HEALTH_CHECK_NODE_PORT, "dst")):
        filt.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {set_name(name, fam)} {how} -j RETURN")
    filt.append(f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW -m set --match-set {set_name(IPVS_IPS, fam)} dst "
                "-j REJECT")
    nat += _postrouting_rules(mark, options.random_fully)
    lines = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *nat, "COMMIT",
             "*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *filt, "COMMIT"]
    return "\n".join(lines) + "\n"


def with_weight(vs: VirtualServer, reals: Iterable[Real]) -> VirtualServer:
    return dataclasses.replace(vs, reals=tuple(reals))
