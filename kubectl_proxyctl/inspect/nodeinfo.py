"""Which node a set of rules belongs to, and which sources are pods.

Theory of operation: the tracer needs the node's own addresses (NodePort entries, `addrtype
LOCAL`, `fib daddr type local`) and a pod address for "a pod on this node calls the
service". They come, in order of preference, from the flags (`--node-name`, `--node-ip`,
`--cluster-cidr`), from the Node object (API or `--from-file`), from the live node's
interfaces, then from eBPF mode's node-port entries (keyed by the node's addresses), and for
the pod range from the rules themselves: kube-proxy's local-traffic
detector writes the cluster CIDR into every KUBE-SVC masquerade rule (`! -s CIDR -j
KUBE-MARK-MASQ`), into KUBE-EXT's "pod traffic" rule (`-s CIDR`) and into nftables'
`ip saddr != CIDR jump mark-for-masquerade`. When the node's address is unknown, a stand-in
from the benchmarking range (198.18.0.0/15) is used and the explanation says so.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.inspect.graph import RuleGraph
from kubectl_proxyctl.model import ClusterState, NodeInfo
from kubectl_proxyctl.modes.nodecontext import (  # noqa: F401 (re-exported for the commands)
    EXTERNAL_CLIENT_IP,
    EXTERNAL_CLIENT_IP_V6,
    STAND_IN_NODE_IP,
    STAND_IN_NODE_IP_V6,
    NodeContext,
)


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
    # eBPF mode's node-port entries are keyed by the node's addresses: the rules name them
    from_rules = graph.ebpf.node_addresses() if graph.ebpf is not None else ()
    addresses = given or from_node or live or from_rules
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
        routes=graph.routes,
        local_addresses=live,
    )


NODES_LISTED = 5  # Node names an "unknown node" error lists before "and N more"


def node_list_text(nodes: Iterable[str]) -> str:
    """`a, b, c, d, e and 7 more`: enough to spot a typo without flooding the line."""
    names = sorted(nodes)
    if not names:
        return "the cluster has no Nodes"
    shown = ", ".join(names[:NODES_LISTED])
    rest = len(names) - NODES_LISTED
    return f"nodes: {shown}" + (f" and {rest} more" if rest > 0 else "")


def resolve_node(
    nodes: Mapping[str, NodeInfo], name: str, origin: str, addresses: Iterable[str] = (),
) -> str:
    """The Node the rules belong to, checked against the cluster's Nodes.

    `origin` says where `name` came from: "--node-name" must name a Node; "--node" (an SSH
    host) and "hostname" (the live host's $NODE_NAME or hostname) may also match a Node by
    address — the Node whose Hostname or IP addresses include the SSH host, or one of the
    addresses this host has — because host names and Node names often differ (a lab node's
    namespace shares the machine's hostname). An unknown node is a ConfigError listing the
    cluster's Nodes.
    """
    if name in nodes:
        return name
    if origin != "--node-name":
        wanted = {name, *(a for a in addresses if a and not a.startswith("127.") and a != "::1")}
        matches = sorted(n.name for n in nodes.values() if any(a in wanted for _, a in n.addresses))
        if len(matches) == 1:
            return matches[0]
    source = {"--node-name": "--node-name", "--node": "the --node host",
              "hostname": "this host's name ($NODE_NAME or the hostname)"}.get(origin, origin)
    return _unknown(nodes, name, source)


def _unknown(nodes: Mapping[str, NodeInfo], name: str, source: str) -> str:
    hint = "pass --node-name with one of them" if nodes else "check --from-file / the context"
    raise ConfigError(f"node {name!r} ({source}) is not a Node of the cluster ({node_list_text(nodes)}); {hint}")
