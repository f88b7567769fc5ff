"""Hashed chain names back to services and endpoints.

Theory of operation. kube-proxy names its per-service chains by hashes (reference §2.2,
§3.4), so `KUBE-SEP-SXIVWICOYRO3J4NJ` says nothing by itself. Three sources give the names
back, and each answer says which one it came from and whether it was checked:

* **Comments.** Every rule in nat KUBE-SERVICES / KUBE-NODEPORTS and in the filter chains
  carries `"<ns>/<svc>:<port> cluster IP"` and the like; SVC/SVL endpoint rules carry
  `"<spn> -> <ip:port>"` and SEP rules `<spn>`. Above 1000 endpoints kube-proxy drops the
  comments of SVC/SVL endpoint rules and SEP rules ("large cluster mode"), but never those of
  the entry rules.
* **The graph.** From an entry rule's comment the walk follows the jumps: KUBE-FW → KUBE-EXT →
  KUBE-SVC/SVL → KUBE-SEP, each child inheriting its parent's service port; a SEP chain's
  endpoint is its DNAT `--to-destination`. So large-cluster dumps resolve fully without a
  single SVC or SEP comment.
* **Hashes.** Every answer is checked by recomputing the name (`modes.iptables.naming`) from the
  service port, protocol and endpoint: `verified` says the chain really is what the comment or
  the walk claims. With the Service objects (API or `--from-file`), names are also computed
  directly for every service port and endpoint, which finds chains no rule leads to.

A chain with a service prefix that none of this explains is "owned by nothing": an orphan
(verify reports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes.iptables.naming import (
    EXT_PREFIX,
    FW_PREFIX,
    SEP_PREFIX,
    SERVICE_CHAIN_PREFIXES,
    SVC_PREFIX,
    SVL_PREFIX,
    endpoint_chain_for,
    port_proto_hash,
)
from kubectl_proxyctl.modes.iptables.parse import Rule, Ruleset
from kubectl_proxyctl.modes.owners import (
    PROTOCOLS,
    Owner,
    ServiceSelector,
    parse_comment,
)

ROLE_BY_PREFIX: Mapping[str, str] = {
    SVC_PREFIX: "cluster",
    SVL_PREFIX: "local",
    EXT_PREFIX: "external",
    FW_PREFIX: "firewall",
    SEP_PREFIX: "endpoint",
}
# Chains at the top of kube-proxy's iptables layout: their rules are grouped by comment.
ENTRY_CHAINS: tuple[tuple[str, str], ...] = (
    ("nat", "KUBE-SERVICES"),
    ("nat", "KUBE-NODEPORTS"),
    ("filter", "KUBE-SERVICES"),
    ("filter", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "KUBE-NODEPORTS"),
    ("filter", "KUBE-PROXY-FIREWALL"),
)

def _hash_of(chain: str) -> str:
    for prefix in SERVICE_CHAIN_PREFIXES:
        if chain.startswith(prefix):
            return chain[len(prefix):]
    return ""


def _role_of(chain: str) -> str:
    for prefix, role in ROLE_BY_PREFIX.items():
        if chain.startswith(prefix):
            return role
    return ""


def _rule_protocol(rule: Rule) -> str:
    m = rule.find("-p")
    return m.value.lower() if m is not None and not m.negated else ""


def _dnat_destination(rules: Iterable[Rule]) -> tuple[str, str]:
    """(endpoint, protocol) of a SEP chain's DNAT rule."""
    for r in rules:
        if r.target == "DNAT":
            return r.target_option("--to-destination") or "", _rule_protocol(r)
    return "", ""


def _service_protocol(spn: str, chain: str, hint: str) -> tuple[str, bool]:
    """The protocol whose hash names `chain` for `spn` (hint first); (hint, False) if none."""
    suffix = _hash_of(chain)
    for proto in ([hint] if hint else []) + [p for p in PROTOCOLS if p != hint]:
        if port_proto_hash(spn, proto) == suffix:
            return proto, True
    return hint, False


def _endpoint_protocol(spn: str, endpoint: str, chain: str, hint: str) -> tuple[str, bool]:
    for proto in ([hint] if hint else []) + [p for p in PROTOCOLS if p != hint]:
        if endpoint_chain_for(spn, proto, endpoint) == chain:
            return proto, True
    return hint, False


@dataclass
class EntryRule:
    """A rule of a top-level chain that belongs to a service port (by its comment)."""

    table: str
    chain: str
    position: int
    rule: Rule
    service_port: str
    kind: str  # the comment kind (parse_comment)
    protocol: str


@dataclass
class IptablesNames:
    """Owners of the nat service chains of one iptables ruleset, and the entry rules."""

    owners: dict[str, Owner] = field(default_factory=dict)
    entries: list[EntryRule] = field(default_factory=list)
    expected: dict[str, Owner] = field(default_factory=dict)  # names computed from Service objects
    unowned: list[str] = field(default_factory=list)  # service chains nothing explains (full mode)

    def owner(self, chain: str) -> Owner | None:
        return self.owners.get(chain)

    def chains_of(self, selector: ServiceSelector) -> list[str]:
        return [c for c, o in self.owners.items() if selector.matches(o.service_port)]

    def rule_owner(self, table: str, chain: str, rule: Rule) -> tuple[str, str]:
        """(service port, endpoint) a rule belongs to; ("", "") when none."""
        owner = self.owners.get(chain) if table == "nat" else None
        if owner is not None:
            endpoint = owner.endpoint
            if not endpoint:
                target = self.owners.get(rule.target)
                if target is not None and target.role == "endpoint":
                    endpoint = target.endpoint
            return owner.service_port, endpoint
        parsed = parse_comment(rule.comment)
        if parsed is not None:
            spn, kind, extra = parsed
            return spn, extra if kind == "endpoint" else ""
        target = self.owners.get(rule.target) if table == "nat" else None
        if target is not None:
            return target.service_port, target.endpoint
        return "", ""


def resolve_iptables(
    ruleset: Ruleset,
    state: ClusterState | None = None,
    selector: ServiceSelector | None = None,
) -> IptablesNames:
    """Name the service chains of `ruleset` (all, or one Service's with `selector`)."""
    names = IptablesNames()
    nat = ruleset.table("nat")
    nat_chains = nat.chains if nat is not None else {}

    # 1. Names computed from the Service objects.
    if state is not None:
        for spn_obj, sp in state.ports.items():
            spn = str(spn_obj)
            if selector is not None and not selector.matches(spn):
                continue
            proto = sp.protocol.value.lower()
            h = port_proto_hash(spn, proto)
            for prefix, role in ROLE_BY_PREFIX.items():
                if prefix != SEP_PREFIX:
                    names.expected[prefix + h] = Owner(spn, proto, role, "", "hash", True)
            for ep in state.endpoints_of(spn_obj):
                chain = endpoint_chain_for(spn, proto, ep.address)
                names.expected[chain] = Owner(spn, proto, "endpoint", ep.address, "hash", True)

    # 2. Entry rules, by comment; their targets get owners.
    queue: list[str] = []
    needle = selector.key if selector is not None else None
    for table, chain in ENTRY_CHAINS:
        if needle is not None:
            found = ruleset.rules_containing(table, chain, needle)
        else:
            entry_chain = ruleset.chain(table, chain)
            found = list(enumerate(entry_chain.rules if entry_chain else (), 1))
        for position, rule in found:
            parsed = parse_comment(rule.comment)
            if parsed is None:
                continue
            spn, kind, _ = parsed
            if selector is not None and not selector.matches(spn):
                continue
            proto = _rule_protocol(rule)
            names.entries.append(EntryRule(table, chain, position, rule, spn, kind, proto))
            target = rule.target
            if table == "nat" and target.startswith(SERVICE_CHAIN_PREFIXES) and target not in names.owners:
                if target in nat_chains:
                    proto2, ok = _service_protocol(spn, target, proto)
                    names.owners[target] = Owner(spn, proto2, _role_of(target), "", "comment", ok)
                    queue.append(target)

    # Service objects name chains no entry rule leads to (e.g. after a flushed KUBE-SERVICES).
    for chain, owner in names.expected.items():
        if chain in nat_chains and chain not in names.owners:
            names.owners[chain] = owner
            queue.append(chain)

    # 3. Walk down the jumps.
    done: set[str] = set()
    while queue:
        chain = queue.pop()
        if chain in done:
            continue
        done.add(chain)
        owner = names.owners[chain]
        c = ruleset.chain("nat", chain)
        if c is None or owner.role == "endpoint":
            continue
        for rule in c.rules:
            target = rule.target
            if not target.startswith(SERVICE_CHAIN_PREFIXES) or target not in nat_chains:
                continue
            known = names.owners.get(target)
            if known is not None and known.verified:
                continue
            role = _role_of(target)
            if role == "endpoint":
                sep = ruleset.chain("nat", target)
                endpoint, hint = _dnat_destination(sep.rules if sep else ())
                parsed = parse_comment(rule.comment)
                if not endpoint and parsed is not None and parsed[1] == "endpoint":
                    endpoint = parsed[2]
                proto, ok = _endpoint_protocol(owner.service_port, endpoint, target, hint or owner.protocol)
                names.owners[target] = Owner(owner.service_port, proto, role, endpoint, "graph", ok)
            else:
                proto, ok = _service_protocol(owner.service_port, target, owner.protocol)
                names.owners[target] = Owner(owner.service_port, proto, role, "", "graph", ok)
                queue.append(target)

    if selector is not None:
        return names

    # 4. Everything else with a service prefix: its own comments, else nothing owns it.
    for chain in nat_chains:
        if not chain.startswith(SERVICE_CHAIN_PREFIXES) or chain in names.owners:
            continue
        own = _owner_from_own_rules(ruleset, chain)
        if own is not None:
            names.owners[chain] = own
        else:
            names.unowned.append(chain)
    return names


def _owner_from_own_rules(ruleset: Ruleset, chain: str) -> Owner | None:
    c = ruleset.chain("nat", chain)
    if c is None:
        return None
    role = _role_of(chain)
    for rule in c.rules:
        parsed = parse_comment(rule.comment)
        if parsed is None:
            continue
        spn = parsed[0]
        if role == "endpoint":
            endpoint, hint = _dnat_destination(c.rules)
            proto, ok = _endpoint_protocol(spn, endpoint, chain, hint)
            return Owner(spn, proto, role, endpoint, "comment", ok)
        proto, ok = _service_protocol(spn, chain, _rule_protocol(rule))
        return Owner(spn, proto, role, "", "comment", ok)
    return None
