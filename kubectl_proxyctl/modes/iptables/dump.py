"""`dump` for iptables rules: every table, chain and rule, annotated with its service port and
endpoint (`raw` gives blocks `iptables-restore` accepts).
"""

from __future__ import annotations

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.facts import DumpLine
from kubectl_proxyctl.modes.iptables.names import resolve_iptables
from kubectl_proxyctl.modes.iptables.parse import Ruleset
from kubectl_proxyctl.modes.owners import ServiceSelector, selected


def iptables_lines(rs: Ruleset, label: str, state: ClusterState | None,
                   selector: ServiceSelector | None) -> list[DumpLine]:
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
                if not selected(selector, service):
                    continue
                body.append(DumpLine(label, table_name, chain, str(rule), service, endpoint))
        if body or selector is None:
            out.append(DumpLine(label, table_name, "", f"*{table_name}", kind="table"))
            out += body
            out.append(DumpLine(label, table_name, "", "COMMIT", kind="commit"))
    return out
