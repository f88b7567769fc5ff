"""`explain ADDRESS`: which Service port owns an address, and which way in it is.

An address names a way in: `10.96.1.1:80` (a cluster IP's port), `172.18.0.3:30080/tcp` (a
node port on a node's address), `[fd00:10:96::1]:53/udp`, or a bare `10.96.1.1` (every port
the address serves). `parse_destination` reads one strictly: anything else is a ConfigError
naming what is wrong, so no odd string goes further than this module.

`find_owners` looks for the owner where the facts are. With the Service objects (the API or
--from-file): their cluster IPs, external IPs and load-balancer ingress IPs, and their node
ports on the addresses of the cluster's Nodes and of the node the rules belong to. With the
rules alone: the Services the rules name (kube-proxy's comments in iptables mode, chain names
and map elements in nftables mode), narrowed first to the lines that mention the address or
the port, then read back as each Service's entry points. IPVS virtual services carry no
names, so IPVS mode needs the Service objects.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from kubectl_proxyctl.errors import ConfigError, NotFoundError
from kubectl_proxyctl.inspect.explain import WayIn, address_text
from kubectl_proxyctl.inspect.graph import RuleGraph
from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes import reader
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector, service_of

PROTOCOLS = ("TCP", "UDP", "SCTP")
KIND_WORDS = {"ClusterIP": "cluster IP", "NodePort": "node port", "ExternalIP": "external IP",
              "LoadBalancer": "load-balancer IP"}
_PORT = re.compile(r"[0-9]{1,5}\Z")
_FORM = "IP, IP:PORT or IP:PORT/PROTOCOL, e.g. 10.96.0.10:53/udp or [fd00::10]:443"
_MAX_LENGTH = 80  # the longest IPv6 address in brackets, a port and a protocol fit


@dataclass(frozen=True)
class Destination:
    """Where a client connects to: an address, and a port and protocol when given."""

    ip: str
    port: int | None = None
    protocol: str | None = None  # TCP, UDP or SCTP; None: any

    def __str__(self) -> str:
        text = address_text(self.ip, self.port) if self.port is not None else self.ip
        return text + (f"/{self.protocol}" if self.protocol else "")


def is_address(target: str) -> bool:
    """Does `target` mean an address rather than a Service? Service names never hold a ':'
    and never start with a digit and a dot; `svc/…` is always a Service."""
    kind, sep, _ = target.partition("/")
    if sep and kind.lower() in ("svc", "service", "services"):
        return False
    return ":" in target or target.startswith("[") or re.match(r"[0-9]+\.", target) is not None


def parse_destination(text: str) -> Destination:
    """`IP`, `IP/PROTOCOL`, `IP:PORT`, `IP:PORT/PROTOCOL` (IPv6 in brackets when a port
    follows) → Destination; ConfigError for anything else."""
    if len(text) > _MAX_LENGTH or not text.isprintable() or any(c.isspace() for c in text):
        raise ConfigError(f"{text[:_MAX_LENGTH]!r}: not an address (want {_FORM})")
    rest, protocol = text, None
    if "/" in text:
        rest, _, word = text.rpartition("/")
        protocol = word.upper()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{text!r}: {word!r} is not a protocol (tcp, udp or sctp)")
    port_text: str | None = None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(f"{text!r}: not an address (want {_FORM})")
        port_text = after[1:] if after else None
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host = rest  # an IPv4 address, or an IPv6 one without a port
    try:
        if "%" in host:
            raise ValueError(host)
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{text!r}: {host!r} is not an IP address (want {_FORM})") from None
    port: int | None = None
    if port_text is not None:
        if not _PORT.match(port_text) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{text!r}: {port_text!r} is not a port (1-65535)")
        port = int(port_text)
    return Destination(str(ip), port, protocol)


@dataclass(frozen=True)
class Owned:
    """A way in of one Service port that a destination names."""

    service: str  # ns/name
    port_name: str  # the service port's name, "" when unnamed
    way: WayIn
    node: str = ""  # a node port on another node's address: that node's name

    def words(self) -> str:
        """`default/nginx port http (cluster IP)`."""
        name = self.port_name or (str(self.way.port) if self.way.kind != "NodePort" else "")
        port = f" port {name}" if name else ""
        return f"{self.service}{port} ({KIND_WORDS.get(self.way.kind, self.way.kind)})"


@dataclass(frozen=True)
class Lookup:
    owners: tuple[Owned, ...]
    node: str = ""  # the Node whose address the destination is, if it is one


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def find_owners(dest: Destination, graph: RuleGraph, mode: Mode, state: ClusterState | None,
                node: NodeContext) -> Lookup:
    """Every way in that `dest` names, from the Service objects when there are any, else from
    the rules (NotFoundError when the rules cannot name Services: IPVS)."""
    nodes = _node_addresses(state, node)
    node_name = next((name for ip, name in nodes if _same(ip, dest.ip)), "")
    is_node = bool(node_name) or any(_same(ip, dest.ip) for ip in node.ips)
    if state is not None and state.services:
        owners = _owners_in_state(dest, state, node, node_name if is_node else None)
    else:
        owners = _owners_in_rules(dest, graph, mode, node, is_node or not node.ips_known, node_name)
    return Lookup(tuple(owners), node_name)


def _node_addresses(state: ClusterState | None, node: NodeContext) -> list[tuple[str, str]]:
    out = [(ip, node.name or "") for ip in node.ips if node.ips_known]
    for info in (state.nodes.values() if state is not None else ()):
        out += [(ip, info.name) for kind, ip in info.addresses if kind in ("InternalIP", "ExternalIP")]
    return out


def _node_port_way(dest: Destination, port: int, protocol: str, node: NodeContext,
                   node_name: str) -> tuple[WayIn, str]:
    """A node port on `dest.ip`: on this node's own address, or on another node's (explained
    with this node's rules on its own addresses, and that node named)."""
    here = any(_same(ip, dest.ip) for ip in node.ips) or not node.ips_known
    if here:
        return WayIn("NodePort", dest.ip if node.ips_known else None, port, protocol), ""
    return WayIn("NodePort", None, port, protocol), node_name


def _owners_in_state(dest: Destination, state: ClusterState, node: NodeContext,
                     node_name: str | None) -> list[Owned]:
    out: list[Owned] = []
    for svc in sorted(state.services.values(), key=lambda s: s.key):
        for sp in svc.ports:
            protocol = sp.protocol.value
            if dest.protocol and protocol != dest.protocol:
                continue
            ways = [("ClusterIP", ip) for ip in sp.cluster_ips] + [("ExternalIP", ip) for ip in sp.external_ips]
            ways += [("LoadBalancer", ip) for ip in sp.load_balancer_ips]
            for kind, ip in ways:
                if _same(ip, dest.ip) and dest.port in (None, sp.port):
                    out.append(Owned(svc.key, sp.name.port, WayIn(kind, ip, sp.port, protocol)))
            if node_name is not None and sp.node_port and dest.port == sp.node_port:
                way, elsewhere = _node_port_way(dest, sp.node_port, protocol, node, node_name)
                out.append(Owned(svc.key, sp.name.port, way, elsewhere))
    return out


def _owners_in_rules(dest: Destination, graph: RuleGraph, mode: Mode, node: NodeContext,
                     maybe_node_port: bool, node_name: str) -> list[Owned]:
    mode_reader = reader(mode)
    probe = mode_reader.read_ports(graph, None, ServiceSelector("default", "-"), facts=True)
    if probe.facts is None and probe.unnamed:
        raise NotFoundError(f"cannot tell which Service owns {dest}: {probe.unnamed}")
    port_word = str(dest.port) if dest.port is not None else None
    candidates: dict[str, None] = {}
    for line in mode_reader.dump_lines(graph, None, node.ips, None):
        if line.service and (dest.ip in line.text or (maybe_node_port and port_word and port_word in line.text)):
            candidates[service_of(line.service)] = None
    out: list[Owned] = []
    for key in sorted(candidates):
        namespace, _, name = key.partition("/")
        facts = mode_reader.read_ports(graph, None, ServiceSelector(namespace, name), facts=True).facts or []
        for f in facts:
            if dest.protocol and f.protocol.upper() != dest.protocol:
                continue
            for entry in f.entries:
                if entry.kind == "NodePort":
                    if maybe_node_port and dest.port == entry.port:
                        way, elsewhere = _node_port_way(dest, entry.port, f.protocol.upper(), node, node_name)
                        out.append(Owned(key, f.name, way, elsewhere))
                elif entry.address is not None and _same(entry.address, dest.ip) and dest.port in (None, entry.port):
                    out.append(Owned(key, f.name, WayIn(entry.kind, entry.address, entry.port, f.protocol.upper())))
    return list(dict.fromkeys(out))
