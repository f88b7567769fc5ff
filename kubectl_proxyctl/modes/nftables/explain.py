"""What `explain` needs from the `kube-proxy` nft tables: the service ports and entry points
read back from the verdict maps and chain names, the graph of one Service, layout trouble.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from kubectl_proxyctl.modes.facts import KINDS, Edge, EntryFacts, PortFacts, Problem
from kubectl_proxyctl.modes.nftables.names import NftNames, nft_chain_owner, resolve_nft
from kubectl_proxyctl.modes.nftables.parse import NftTable, value_text
from kubectl_proxyctl.modes.nftables.trace import base_chains
from kubectl_proxyctl.modes.nftables.verify import missing_jumps
from kubectl_proxyctl.modes.owners import Owner, ServiceSelector


def owners_by_name(tables: Sequence[NftTable]) -> Callable[[str], Owner | None]:
    """`resolve_nft(tables).owners.get`, worked out only for the names asked about (a table
    of 60,000 chains need not have every name hashed to explain one Service)."""
    found: dict[str, Owner | None] = {}

    def owner(name: str) -> Owner | None:
        if name not in found:
            known = any(name in t.chains or name in t.sets for t in tables)
            found[name] = nft_chain_owner(name) if known else None
        return found[name]

    return owner


def facts_from_nft(tables: Sequence[NftTable], names: NftNames | None, selector: ServiceSelector) -> list[PortFacts]:
    """Ports and entry points read back from the kube-proxy table's maps and chain names
    (`names`: the tables' names resolved already, None: resolved as needed).

    A map element belongs to the Service when its target chain's name or else its comment
    names a port of it: either holds the Service's `namespace/name` (up to any colon) in
    clear, so elements without it are passed over before any name is resolved."""
    ports: dict[str, PortFacts] = {}
    owner_of = names.owners.get if names is not None else owners_by_name(tables)
    needle = selector.key.partition(":")[0]

    def port_of(spn: str, proto: str) -> PortFacts:
        if spn not in ports:
            _, _, name = spn.partition(":")
            ports[spn] = PortFacts(spn, name, proto.upper(), None)
        return ports[spn]

    for table in tables:
        cluster_ips: set[str] | None = None
        firewall = table.sets.get("firewall-ips")
        firewall_chains = {value_text(e.key): _verdict_target(e.value) for e in (firewall.elements if firewall else ())}
        lb_ips = {k.split(" . ", 1)[0] for k in firewall_chains}
        for map_name in ("service-ips", "no-endpoint-services", "service-nodeports", "no-endpoint-nodeports"):
            nmap = table.sets.get(map_name)
            for element in nmap.elements if nmap else ():
                target = _verdict_target(element.value)
                if needle not in target and needle not in element.comment:
                    continue
                owner = owner_of(target) if target else None
                spn = owner.service_port if owner else element.comment
                if not spn or not selector.matches(spn):
                    continue
                parts = element.key.get("concat") if isinstance(element.key, dict) else None
                if not isinstance(parts, list):
                    continue
                values = [value_text(v) for v in parts]
                if map_name.endswith("nodeports") and len(values) == 2:
                    proto, port = values
                    p = port_of(spn, proto)
                    p.entries.append(EntryFacts("NodePort", None, int(port)))
                    continue
                if len(values) != 3:
                    continue
                ip, proto, port = values
                p = port_of(spn, proto)
                role = owner.role if owner else ""
                if role not in ("cluster", "local") and cluster_ips is None:
                    cluster_ips = {value_text(e.key) for e in table.sets["cluster-ips"].elements} \
                        if "cluster-ips" in table.sets else set()
                if role in ("cluster", "local") or ip in (cluster_ips or ()):
                    p.port = p.port or int(port)
                    p.entries.append(EntryFacts("ClusterIP", ip, int(port)))
                elif value_text(element.key) in firewall_chains:
                    ranges = _nft_source_ranges(table, firewall_chains[value_text(element.key)], lb_ips)
                    p.entries.append(EntryFacts("LoadBalancer", ip, int(port), ranges))
                else:
                    p.entries.append(EntryFacts("ExternalIP", ip, int(port)))
    for p in ports.values():
        unique = {(e.kind, e.address, e.port): e for e in p.entries}
        p.entries = sorted(unique.values(), key=lambda e: KINDS.index(e.kind))
    return list(ports.values())


def _nft_source_ranges(table: NftTable, chain_name: str, lb_ips: set[str]) -> tuple[str, ...]:
    """loadBalancerSourceRanges from a firewall- chain's `ip saddr != { … } drop` rule. The
    proxy adds the load-balancer IPs themselves to the set when a range holds the node's
    address; those are left out (they are not ranges the Service asked for)."""
    chain = table.chains.get(chain_name)
    out: list[str] = []
    for rule in chain.rules if chain else ():
        for stmt in rule.expr:
            m = stmt.get("match") if isinstance(stmt, dict) else None
            if not isinstance(m, dict) or m.get("op") != "!=":
                continue
            left = m.get("left")
            if not (isinstance(left, dict) and left.get("payload", {}).get("field") == "saddr"):
                continue
            right = m.get("right")
            items = right["set"] if isinstance(right, dict) and isinstance(right.get("set"), list) else [right]
            for item in items:
                text = value_text(item)
                if text not in lb_ips and text not in out:
                    out.append(text)
    return tuple(out)


def _verdict_target(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        k, x = next(iter(value.items()))
        if k in ("goto", "jump") and isinstance(x, dict):
            return str(x.get("target", ""))
    return ""


def nft_edges(tables: Sequence[NftTable], selector: ServiceSelector) -> list[Edge]:
    names = resolve_nft(tables)
    mine = set(names.chains_of(selector))
    edges: list[Edge] = []
    for table in tables:
        for nset in table.sets.values():
            for element in nset.elements if nset.is_map else ():
                target = _verdict_target(element.value)
                if target in mine or (element.comment and selector.matches(element.comment)):
                    edges.append(Edge(f"map {nset.name}", target or value_text(element.value),
                                      value_text(element.key)))
        for name in mine:
            chain = table.chains.get(name)
            for rule in chain.rules if chain else ():
                for stmt in rule.expr:
                    edges += _nft_stmt_edges(name, stmt)
    return edges


def _nft_stmt_edges(chain: str, stmt: Any) -> list[Edge]:
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return []
    k, x = next(iter(stmt.items()))
    if k in ("jump", "goto"):
        return [Edge(chain, str(x.get("target")), "", dashed=x.get("target") == "mark-for-masquerade")]
    if k == "dnat":
        port = f":{x['port']}" if "port" in x else ""
        return [Edge(chain, f"{value_text(x.get('addr'))}{port}", "DNAT")]
    if k == "vmap":
        data = x.get("data")
        key = x.get("key")
        items = data.get("set", []) if isinstance(data, dict) else []
        mod = key.get("numgen", {}).get("mod") if isinstance(key, dict) and "numgen" in key else None
        out = []
        for item in items:
            if isinstance(item, list) and len(item) == 2:
                label = f"1/{mod}" if mod else value_text(item[0])
                out.append(Edge(chain, _verdict_target(item[1]) or value_text(item[1]), label))
        return out
    return []


def hook_problems(tables: Sequence[NftTable]) -> list[Problem]:
    """Base chains that do not jump where kube-proxy's layout needs them to (only the base
    chains are read: a table read in place does not read its service chains for this)."""
    return [Problem("warning", f"{table.title}: no {jump.where()} jumps to {jump.target}: {jump.consequence}")
            for table in tables
            for jump, _ in missing_jumps(replace(table, chains={c.name: c for c in base_chains(table)}))]
