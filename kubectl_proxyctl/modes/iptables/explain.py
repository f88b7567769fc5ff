"""What `explain` needs from iptables rules: the service ports and entry points read back from
the entry rules' comments, the chain graph of one Service, and layout trouble.
"""

from __future__ import annotations

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.facts import Edge, EntryFacts, PortFacts, Problem
from kubectl_proxyctl.modes.iptables.names import (
    EntryRule,
    IptablesNames,
    resolve_iptables,
)
from kubectl_proxyctl.modes.iptables.parse import Rule, Ruleset, statistic_cascade
from kubectl_proxyctl.modes.owners import ServiceSelector


def _address_of(rule: Rule) -> str | None:
    m = rule.find("-d")
    if m is None or m.negated:
        return None
    value = m.value
    for suffix in ("/32", "/128"):
        if value.endswith(suffix):
            value = value[: -len(suffix)]
    return value


def _dport_of(rule: Rule) -> int | None:
    for m in rule.matches:
        if m.option == "--dport" and not m.negated:
            try:
                return int(m.value)
            except ValueError:
                return None
    return None


def facts_from_iptables(names: IptablesNames, ruleset: Ruleset) -> list[PortFacts]:
    """Ports and entry points read back from the entry rules' comments."""
    ports: dict[tuple[str, str], PortFacts] = {}

    def port_of(e: EntryRule) -> PortFacts:
        key = (e.service_port, e.protocol)
        if key not in ports:
            _, _, name = e.service_port.partition(":")
            ports[key] = PortFacts(e.service_port, name, (e.protocol or "tcp").upper(), None)
        return ports[key]

    def add(p: PortFacts, entry: EntryFacts) -> None:
        for known in p.entries:
            if (known.kind, known.address, known.port) == (entry.kind, entry.address, entry.port):
                return
            if known.address == entry.address and known.port == entry.port and entry.address is not None:
                return  # the same destination under another (ambiguous) kind
        p.entries.append(entry)

    def rank(e: EntryRule) -> int:
        if e.kind == "cluster-ip" or (e.table, e.chain) == ("filter", "KUBE-SERVICES"):
            return 0  # the cluster IP and the port number first
        return 1 if e.table == "nat" else 2  # nat rules say which kind an address is; filter twins may not

    ordered = sorted(names.entries, key=rank)
    for e in ordered:
        p = port_of(e)
        addr = _address_of(e.rule)
        dport = _dport_of(e.rule)
        if dport is None:
            continue
        if e.kind == "cluster-ip" or (e.table == "filter" and e.chain == "KUBE-SERVICES"
                                      and e.kind in ("no-endpoints", "no-local-endpoints")):
            p.port = p.port or dport
            if addr:
                add(p, EntryFacts("ClusterIP", addr, dport))
        elif e.kind == "external-ip" and addr:
            add(p, EntryFacts("ExternalIP", addr, dport))
        elif e.kind == "loadbalancer-ip" and addr:
            add(p, EntryFacts("LoadBalancer", addr, dport, _source_ranges(ruleset, e.rule.target)))
        elif e.kind == "firewall-drop" and addr:
            fw = ruleset.chain("nat", e.rule.comment.rsplit(" ", 1)[-1]) if e.rule.comment else None
            ranges = _source_ranges(ruleset, fw.name) if fw else ()
            add(p, EntryFacts("LoadBalancer", addr, dport, ranges))
        elif e.kind == "service" and e.chain == "KUBE-NODEPORTS" and e.table == "nat":
            if addr is None or not addr.startswith("127."):
                add(p, EntryFacts("NodePort", None, dport))
        elif e.table == "filter" and e.chain == "KUBE-EXTERNAL-SERVICES":
            if addr is None and e.rule.find("--dst-type", "addrtype") is not None:
                add(p, EntryFacts("NodePort", None, dport))
            elif addr:
                # Without the Service object an external IP and a load-balancer IP of a port
                # without endpoints look the same.
                add(p, EntryFacts("ExternalIP", addr, dport))
    return list(ports.values())


def _source_ranges(ruleset: Ruleset, chain: str) -> tuple[str, ...]:
    if not chain.startswith("KUBE-FW-"):
        return ()
    c = ruleset.chain("nat", chain)
    out = []
    for rule in c.rules if c else ():
        src = rule.find("-s")
        # the allowed sources' rules lead on (KUBE-EXT-; KUBE-XLB-/KUBE-SVC- before 1.24)
        if src is not None and not src.negated and rule.target.startswith(("KUBE-EXT-", "KUBE-XLB-", "KUBE-SVC-")):
            out.append(src.value)
    return tuple(out)


def _condition(rule: Rule) -> str:
    """A short label for what a rule checks (no comments, no protocol noise)."""
    parts = [str(m) for m in rule.matches
             if m.module not in ("comment", "tcp", "udp", "sctp") and m.option not in ("-p", "--mode")]
    return " ".join(parts)


def iptables_edges(rs: Ruleset, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
    """The Service's chain graph: entry rules → KUBE-SVC/SVL/EXT/FW → KUBE-SEP → endpoints."""
    edges: list[Edge] = []
    names = resolve_iptables(rs, state, selector)
    for e in names.entries:
        dst = e.rule.target or "(count)"
        where = _address_of(e.rule)
        dport = _dport_of(e.rule)
        label = f"{where or '*'}:{dport}" if dport else (where or "")
        edges.append(Edge(f"{e.table} {e.chain}", dst if dst.startswith("KUBE-") else f"{dst} ({e.table})", label))
    for chain in names.chains_of(selector):
        c = rs.chain("nat", chain)
        if c is None:
            continue
        shares = statistic_cascade(c.rules)
        for i, rule in enumerate(c.rules):
            if not rule.target:
                continue
            if rule.target == "DNAT":
                edges.append(Edge(chain, rule.target_option("--to-destination") or "?", "DNAT"))
                continue
            label = f"{shares[i] * 100:.1f} %" if i in shares else _condition(rule)
            edges.append(Edge(chain, rule.target, label, dashed=rule.target == "KUBE-MARK-MASQ"))
    return edges


def hook_problems(rs: Ruleset) -> list[Problem]:
    """The built-in chains must jump to KUBE-SERVICES, or no packet reaches the rules."""
    hooked = any(r.target == "KUBE-SERVICES" for hook in ("PREROUTING", "OUTPUT")
                 for _, r in (rs.candidates("nat", hook, None) or ()))
    if hooked:
        return []
    return [Problem("warning", "nat PREROUTING/OUTPUT do not jump to KUBE-SERVICES: no packet reaches "
                               "these rules (a restore payload without its jump rules, or a broken node)")]


def family_v6(names: IptablesNames) -> bool:
    """IPv6 rules (ip6tables)? Told by the first entry rule with an address."""
    for e in names.entries:
        addr = _address_of(e.rule)
        if addr:
            return ":" in addr
    return False
