"""The node a set of rules belongs to, as the readers need it: its addresses (or a stand-in),
its pod ranges, and a pod address to send from. `inspect.nodeinfo` works out which node it is.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from kubectl_proxyctl.modes.tracing import LocalNode

STAND_IN_NODE_IP = "198.18.0.2"
STAND_IN_NODE_IP_V6 = "2001:2::2"  # the IPv6 benchmarking range
EXTERNAL_CLIENT_IP = "203.0.113.10"  # TEST-NET-3: an address outside any cluster
EXTERNAL_CLIENT_IP_V6 = "2001:db8::10"  # the IPv6 documentation range
FALLBACK_POD_CIDRS = ("10.244.0.0/16", "fd00:10:244::/64")


@dataclass(frozen=True)
class NodeContext:
    name: str | None
    ips: tuple[str, ...]  # the node's own addresses, primary first
    ips_known: bool  # False: `ips` is the stand-in
    cluster_cidrs: tuple[str, ...]
    cidrs_from: str  # "flag", "rules", "node" or "" (unknown)
    pod_cidrs: tuple[str, ...] = ()  # this node's own pod range (Node.spec.podCIDRs)
    routes: tuple[tuple[str, str], ...] = ()  # the node's routes, (CIDR or "default", interface), when read
    local_addresses: tuple[str, ...] = ()  # every global address the node has (kube-ipvs0's aside), when read

    @property
    def local(self) -> LocalNode:
        return LocalNode(self.ips, self.name or "", self.routes)

    def node_ip(self, v6: bool = False) -> str:
        """The node's first address of the family (the stand-in when none is known)."""
        for ip in self.ips:
            if (":" in ip) == v6:
                return ip
        return STAND_IN_NODE_IP_V6 if v6 else STAND_IN_NODE_IP

    def pod_source(self, avoid: Iterable[str], v6: bool = False) -> str:
        """An address of a pod on this node, of the family, that is not one of `avoid` (the
        endpoints)."""
        taken = set(avoid)
        for cidr in (*self.pod_cidrs, *self.cluster_cidrs, *FALLBACK_POD_CIDRS):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            if (net.version == 6) != v6:
                continue
            offsets = range(250, 314) if net.num_addresses > 320 else range(2, net.num_addresses - 1)
            for offset in offsets:
                ip = str(net.network_address + offset)
                if ip not in taken and ip not in self.ips:
                    return ip
        return "fd00:10:244::fa" if v6 else "10.244.0.250"
