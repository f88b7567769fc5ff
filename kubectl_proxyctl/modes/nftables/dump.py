"""`dump` for the `kube-proxy` nft tables: every set, map element, chain and rule, annotated with
its service port and endpoint; `raw` is an `nft -f` script per table (the table, its chains and
sets before the rules and elements that refer to them).

A `cluster-ips` element belongs to the service ports whose map elements name the same address.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from kubectl_proxyctl.modes.facts import DumpLine
from kubectl_proxyctl.modes.nftables.names import nft_chain_owner
from kubectl_proxyctl.modes.nftables.parse import (
    NftTable,
    element_text,
    set_declaration,
    value_text,
)
from kubectl_proxyctl.modes.owners import ServiceSelector, parse_comment, selected


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
            if members or (selector is None) or (set_owner and selected(selector, set_owner.service_port)):
                declaration = set_declaration(nset)
                body.append(DumpLine("nftables", title, nset.name, f"{kind} {nset.name} {{ {declaration} }}",
                                     set_owner.service_port if set_owner else "",
                                     set_owner.endpoint if set_owner else "", "set",
                                     f"add {kind} {title} {nset.name} {{ {declaration} ; }}"))
                body += members
        for chain in table.chains.values():
            owner = nft_chain_owner(chain.name)
            service = owner.service_port if owner else ""
            if not selected(selector, service):
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
            out += [replace(ln, indent=_INDENT.get(ln.kind, 0)) for ln in body]
    return out


_INDENT = {"element": 2, "rule": 4}  # the annotated view nests elements in sets, rules in chains


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
