"""`dump`: a node's rules, each annotated with the service port and endpoint it serves.

Theory of operation: the rules are listed in the order the tools printed them, one record per
line (an iptables chain declaration or rule, an nft set element or rule, an IPVS virtual or
real server, an ipset member), with the owner `rules.names` found for it. With a selector
only the lines of that Service are kept: its own chains, its entry rules in the shared
chains, its map elements, and (with the Service objects) its virtual services.

Views: `render_annotated` (the rules in their own syntax, an `# ns/svc:port → endpoint`
note after each), `render_raw` (exactly the tools' syntax, nothing added: iptables-save
blocks that `iptables-restore` accepts, an `nft -f` script per nft table (the table, chains
and sets declared first, then rules and map elements, so a whole table loads back as it
was), `ipvsadm -S` and `ipset save` lines), and `records` (TABLE CHAIN SERVICE ENDPOINT
RULE, for `-o table` and `-o json`).

In the nft table, a `cluster-ips` element belongs to the service ports whose map elements
send that address to a service-/local- chain or to a no-endpoints verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.rules.graph import IptablesDump, ProxyMode, RuleGraph
from kubectl_proxyctl.rules.names import (
    ServiceSelector,
    ipvs_owner,
    nft_chain_owner,
    parse_comment,
    resolve_iptables,
)
from kubectl_proxyctl.rules.nft_json import NftTable, element_text, set_declaration, value_text


@dataclass(frozen=True)
class DumpLine:
    backend: str  # iptables (nft), iptables (legacy), nftables, ipvs, ipset
    table: str
    chain: str  # chain, set/map, or virtual service
    text: str  # the line in the tool's own syntax
    service: str = ""  # service port name
    endpoint: str = ""
    kind: str = "rule"  # table, chain, rule, commit, element, set, virtual-service, real-server, member
    raw: str = ""  # nftables: the line as an `nft -f` command (add table/chain/set/map/rule/element)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "table": self.table, "chain": self.chain,
                "service": self.service or None, "endpoint": self.endpoint or None, "rule": self.text}


def _wanted(selector: ServiceSelector | None, service: str) -> bool:
    return selector is None or (bool(service) and selector.matches(service))


def iptables_lines(dump: IptablesDump, label: str, state: ClusterState | None,
                   selector: ServiceSelector | None) -> list[DumpLine]:
    rs = dump.ruleset
    names = resolve_iptables(rs, state, selector)
    out: list[DumpLine] = []
    for table_name, table in rs.tables.items():
        body: list[DumpLine] = []
        if selector is None:
            chains = list(table.chains)
        else:
            owned = set(names.chains_of(selector)) if table_name == "nat" else set()
            entry = {e.chain for e in names.entries if e.table == table_name}
            chains = [c for c in table.chains if c in owned or c in entry]
        for chain in chains:
            owner = names.owner(chain) if table_name == "nat" else None
            if selector is None or owner is not None:
                policy = table.policy(chain) or "-"
                body.append(DumpLine(label, table_name, chain, f":{chain} {policy} [0:0]",
                                     owner.service_port if owner else "", owner.endpoint if owner else "", "chain"))
        for chain in chains:
            if selector is not None and names.owner(chain) is None:
                found = [r for _, r in rs.rules_containing(table_name, chain, selector.key)]
            else:
                c = table.chains[chain]
                found = list(c.rules)
            for rule in found:
                service, endpoint = names.rule_owner(table_name, chain, rule)
                if not _wanted(selector, service):
                    continue
                body.append(DumpLine(label, table_name, chain, str(rule), service, endpoint))
        if body or selector is None:
            out.append(DumpLine(label, table_name, "", f"*{table_name}", kind="table"))
            out += body
            out.append(DumpLine(label, table_name, "", "COMMIT", kind="commit"))
    return out


def nft_lines(tables: Iterable[NftTable], selector: ServiceSelector | None) -> list[DumpLine]:
    out: list[DumpLine] = []
    for table in tables:
        title = table.title
        body: list[DumpLine] = []
        cluster_ips = _cluster_ip_owners(table)
        for nset in table.sets.values():
            set_owner = nft_chain_owner(nset.name)
            kind = "map" if nset.is_map else "set"
            members: list[DumpLine] = []
            for element in nset.elements:
                target = _target(element.value)
                owner = nft_chain_owner(target) if target else set_owner
                services = [owner.service_port] if owner else []
                if not services and element.comment and parse_comment(element.comment):
                    services = [element.comment]
                if not services and nset.name == "cluster-ips":
                    services = cluster_ips.get(value_text(element.key), [])
                if selector is None or any(selector.matches(sp) for sp in services):
                    text = element_text(element)
                    members.append(DumpLine("nftables", title, nset.name, text, ", ".join(services),
                                            owner.endpoint if owner else "", "element",
                                            f"add element {title} {nset.name} {{ {text} }}"))
            if members or (selector is None) or (set_owner and _wanted(selector, set_owner.service_port)):
                declaration = set_declaration(nset)
                body.append(DumpLine("nftables", title, nset.name, f"{kind} {nset.name} {{ {declaration} }}",
                                     set_owner.service_port if set_owner else "",
                                     set_owner.endpoint if set_owner else "", "set",
                                     f"add {kind} {title} {nset.name} {{ {declaration} ; }}"))
                body += members
        for chain in table.chains.values():
            owner = nft_chain_owner(chain.name)
            service = owner.service_port if owner else ""
            if not _wanted(selector, service):
                continue
            head = f"chain {chain.name}" + (f" {{ type {chain.type} hook {chain.hook} priority {chain.priority}; }}"
                                             if chain.hook else "")
            raw = f"add chain {title} {chain.name}"
            if chain.hook:
                raw += (f" {{ type {chain.type} hook {chain.hook} priority {chain.priority} ; "
                        f"policy {chain.policy or 'accept'} ; }}")
            body.append(DumpLine("nftables", title, chain.name, head, service, owner.endpoint if owner else "",
                                 "chain", raw))
            for rule in chain.rules:
                text = rule.text
                body.append(DumpLine("nftables", title, chain.name, text, service,
                                     owner.endpoint if owner else "", "rule", f"add rule {title} {chain.name} {text}"))
        if body:
            out.append(DumpLine("nftables", title, "", f"table {title}", kind="table", raw=f"add table {title}"))
            out += body
    return out


def _cluster_ip_owners(table: NftTable) -> dict[str, list[str]]:
    """Cluster IP → the service ports behind it, from the maps (the `cluster-ips` set says
    nothing itself): service-ips elements that lead to a service-/local- chain, and
    no-endpoint-services elements (with the service port in their comment) for an address
    that is a cluster IP."""
    known = {value_text(e.key) for e in table.sets["cluster-ips"].elements} if "cluster-ips" in table.sets else set()
    out: dict[str, list[str]] = {}
    for name in ("service-ips", "no-endpoint-services"):
        nmap = table.sets.get(name)
        for element in nmap.elements if nmap else ():
            parts = element.key.get("concat") if isinstance(element.key, dict) else None
            if not isinstance(parts, list) or not parts:
                continue
            ip = value_text(parts[0])
            if ip not in known:
                continue
            target = _target(element.value)
            owner = nft_chain_owner(target) if target else None
            if owner is not None and owner.role in ("cluster", "local"):
                spn = owner.service_port
            elif owner is None and element.comment and parse_comment(element.comment):
                spn = element.comment
            else:
                continue
            if spn not in out.setdefault(ip, []):
                out[ip].append(spn)
    return out


def _target(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        k, x = next(iter(value.items()))
        if k in ("goto", "jump") and isinstance(x, dict):
            return str(x.get("target", ""))
    return ""


def ipvs_lines(graph: RuleGraph, state: ClusterState | None, node_ips: Sequence[str],
               selector: ServiceSelector | None) -> list[DumpLine]:
    out: list[DumpLine] = []
    for vs in graph.ipvs_services():
        owners = ipvs_owner(vs, state, node_ips)
        service = ", ".join(o.service_port for o, _ in owners)
        if selector is not None and not any(selector.matches(o.service_port) for o, _ in owners):
            continue
        lines = vs.save_lines()
        out.append(DumpLine("ipvs", "ipvs", vs.key, lines[0], service, kind="virtual-service"))
        for real, line in zip(vs.reals, lines[1:]):
            out.append(DumpLine("ipvs", "ipvs", vs.key, line, service, real.endpoint, "real-server"))
    if selector is None:
        for ipset in graph.ipsets.values():
            lines = ipset.save_lines()
            out.append(DumpLine("ipset", "ipset", ipset.name, lines[0], kind="set"))
            out += [DumpLine("ipset", "ipset", ipset.name, line, kind="member") for line in lines[1:]]
    return out


def dump_lines(graph: RuleGraph, mode: ProxyMode, state: ClusterState | None, node_ips: Sequence[str],
               selector: ServiceSelector | None) -> list[DumpLine]:
    """Every line of the node's proxy rules (all modes found; `mode`'s first)."""
    out: list[DumpLine] = []
    parts: list[list[DumpLine]] = []
    several = len({d.backend for d in graph.iptables}) > 1 or len(graph.iptables) > 1
    for dump in graph.iptables:
        label = f"iptables ({dump.backend})" if several and dump.backend else "iptables"
        parts.append(iptables_lines(dump, label, state, selector))
    nft = nft_lines(graph.nft_tables(), selector)
    ipvs = ipvs_lines(graph, state, node_ips, selector)
    if mode == ProxyMode.NFTABLES:
        parts.insert(0, nft)
    else:
        parts.append(nft)
    if mode == ProxyMode.IPVS:
        parts.insert(0, ipvs)
    else:
        parts.append(ipvs)
    for p in parts:
        out += p
    return out


def _note(line: DumpLine) -> str:
    if not line.service:
        return ""
    return f"  # {line.service}" + (f" → {line.endpoint}" if line.endpoint else "")


def render_annotated(lines: Sequence[DumpLine]) -> str:
    out: list[str] = []
    backend = None
    for line in lines:
        if line.backend != backend:
            if out:
                out.append("")
            out.append(f"# --- {line.backend} ---")
            backend = line.backend
        indent = "  " if line.kind in ("rule", "element") and line.backend == "nftables" else ""
        indent = "    " if line.kind == "rule" and line.backend == "nftables" else indent
        out.append(f"{indent}{line.text}{_note(line)}")
    return "\n".join(out) + ("\n" if out else "")


def render_raw(lines: Sequence[DumpLine]) -> str:
    out: list[str] = []
    nft: list[DumpLine] = []

    def flush() -> None:
        # One `nft -f` script per table: the table, its chains and sets before the rules and
        # map elements that refer to them.
        order = {"table": 0, "chain": 1, "set": 2, "rule": 3, "element": 4}
        out.extend(ln.raw for ln in sorted(nft, key=lambda ln: order.get(ln.kind, 5)) if ln.raw)
        nft.clear()

    for line in lines:
        if line.backend == "nftables":
            if line.kind == "table":
                flush()
            nft.append(line)
            continue
        flush()
        out.append(line.text)
    flush()
    return "\n".join(out) + ("\n" if out else "")


def records(lines: Sequence[DumpLine]) -> list[DumpLine]:
    """The lines that are rules or elements (not table/chain headers)."""
    return [ln for ln in lines if ln.kind in ("rule", "element", "real-server", "virtual-service", "member")]
