"""Which node a set of rules belongs to, and which sources are pods.

Theory of operation: the tracer needs the node's own addresses (NodePort entries, `addrtype
LOCAL`, `fib daddr type local`) and a pod address for "a pod on this node calls the
service". They come, in order of preference, from the flags (`--node-name`, `--node-ip`,
`--cluster-cidr`), from the Node object (API or `--from-file`), from the live node's
interfaces, and for the pod range from the rules themselves: kube-proxy's local-traffic
detector writes the cluster CIDR into every KUBE-SVC masquerade rule (`! -s CIDR -j
KUBE-MARK-MASQ`), into KUBE-EXT's "pod traffic" rule (`-s CIDR`) and into nftables'
`ip saddr != CIDR jump mark-for-masquerade`. When the node's address is unknown, a stand-in
from the benchmarking range (198.18.0.0/15) is used and the explanation says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.rules.graph import RuleGraph
from kubectl_proxyctl.rules.trace import LocalNode

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

    @property
    def local(self) -> LocalNode:
        return LocalNode(self.ips, self.name or "")

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


def cidrs_from_rules(graph: RuleGraph) -> tuple[str, ...]:
    """The cluster CIDRs kube-proxy's local-traffic detector wrote into the rules."""
    found: list[str] = []
    rs = graph.ruleset
    if rs is not None:
        nat = rs.table("nat")
        for chain in nat.chains if nat is not None else ():
            if not chain.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-")):
                continue
            c = rs.chain("nat", chain)
            for rule in c.rules[:1] if c else ():
                src = rule.find("-s")
                if src is not None and "/" in src.value and src.value not in found:
                    found.append(src.value)
            if found:
                break
    for table in graph.nft_tables():
        table_found: list[str] = []
        for name, nft_chain in table.chains.items():
            # service-/local- chains start with the masquerade rule (`ip saddr != CIDR`), an
            # external- chain of a Local policy with the pod short-circuit (`ip saddr CIDR`).
            if not name.startswith(("service-", "local-", "external-")) or "/" not in name:
                continue
            for nft_rule in nft_chain.rules[:1]:
                for stmt in nft_rule.expr:
                    m = stmt.get("match") if isinstance(stmt, dict) else None
                    right = m.get("right") if isinstance(m, dict) else None
                    left = m.get("left") if isinstance(m, dict) else None
                    if (isinstance(right, dict) and "prefix" in right and isinstance(left, dict)
                            and left.get("payload", {}).get("field") == "saddr"
                            and left.get("payload", {}).get("protocol") in ("ip", "ip6")):
                        cidr = f"{right['prefix']['addr']}/{right['prefix']['len']}"
                        if cidr not in found:
                            table_found.append(cidr)
                            found.append(cidr)
            if table_found:
                break
    return tuple(found)


def node_context(
    graph: RuleGraph,
    state: ClusterState | None,
    name: str | None,
    ips: Iterable[str] = (),
    cluster_cidrs: Iterable[str] = (),
    live_addresses: Iterable[str] = (),
) -> NodeContext:
    """Put together what is known about the node the rules belong to."""
    node = state.nodes.get(name) if state is not None and name else None
    given = tuple(ips)
    from_node = tuple(a for kind, a in node.addresses if kind in ("InternalIP", "ExternalIP")) if node else ()
    live = tuple(a for a in live_addresses if not a.startswith("127.") and a != "::1")
    addresses = given or from_node or live
    cidrs = tuple(cluster_cidrs)
    cidrs_from = "flag" if cidrs else ""
    if not cidrs:
        cidrs = cidrs_from_rules(graph)
        cidrs_from = "rules" if cidrs else ""
    pod_cidrs = node.pod_cidrs if node is not None else ()
    if not cidrs and pod_cidrs:
        cidrs, cidrs_from = pod_cidrs, "node"
    return NodeContext(
        name=name,
        ips=addresses or (STAND_IN_NODE_IP,),
        ips_known=bool(addresses),
        cluster_cidrs=cidrs,
        cidrs_from=cidrs_from,
        pod_cidrs=pod_cidrs,
    )
