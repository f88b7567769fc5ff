"""Whose rules are these? The software that wrote an iptables chain, and the generation of
kube-proxy's layout a node has.

Real nodes hold more than a Service proxy's rules: Docker's, a CNI's (Calico, Cilium,
flannel, the portmap plugin's hostPorts), firewalls'. Each writes chains with its own
prefix, so a chain's name says who owns it (`CHAIN_OWNERS`, a data table, first match
wins). A rule in a built-in chain (PREROUTING, FORWARD, …) belongs to whoever owns the chain
it jumps to, else to whoever its comment names (Calico's `cali:…` comments, kube-proxy's
`kubernetes …` ones).

kube-proxy's iptables layout changed over the releases, and `explain` meets every one of
them on real clusters. `detect_layout` tells them apart by the chains and rules each one has
(`LAYOUTS`, newest first):

* 1.25 and later (this project's layout too): KUBE-PROXY-FIREWALL in filter, KUBE-EXT- and
  KUBE-SVL- chains, no KUBE-MARK-DROP;
* 1.24: KUBE-EXT- chains, but load-balancer source ranges still end in KUBE-MARK-DROP;
* 1.20 to 1.23: KUBE-XLB- chains for externalTrafficPolicy Local, the cluster IP's
  masquerade rule in KUBE-SERVICES, KUBE-FW- chains ending in KUBE-MARK-DROP.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubectl_proxyctl.modes.iptables.parse import Rule, Ruleset
from kubectl_proxyctl.modes.tracing import PROXY_OWNER

BUILT_IN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})

# (chain name prefix, owner), most specific first.
CHAIN_OWNERS: tuple[tuple[str, str], ...] = (
    ("KUBE-ROUTER-", "kube-router"),
    ("KUBE-NWPLCY-", "kube-router"),
    ("KUBE-POD-FW-", "kube-router"),
    ("KUBE-", PROXY_OWNER),
    ("DOCKER", "Docker"),
    ("cali-", "Calico"),
    ("CILIUM_", "Cilium"),
    ("OLD_CILIUM_", "Cilium"),
    ("CNI-HOSTPORT-", "CNI portmap"),
    ("CNI-DN-", "CNI portmap"),
    ("CNI-SN-", "CNI portmap"),
    ("CNI-FORWARD", "CNI firewall"),
    ("CNI-ADMIN", "CNI firewall"),
    ("CNI-", "CNI bridge"),
    ("FLANNEL-", "flannel"),
    ("WEAVE", "Weave Net"),
    ("ANTREA-", "Antrea"),
    ("OVN-KUBE-", "OVN-Kubernetes"),
    ("LIBVIRT_", "libvirt"),
    ("ufw-", "ufw"),
    ("ufw6-", "ufw"),
    ("f2b-", "fail2ban"),
)

# Comment prefixes of rules some software puts straight into built-in chains.
_COMMENT_OWNERS: tuple[tuple[str, str], ...] = (
    ("cali:", "Calico"),
    ("cilium", "Cilium"),
    ("kubernetes ", PROXY_OWNER),
    ("kube-proxy ", PROXY_OWNER),
    ("flanneld ", "flannel"),
)

UNKNOWN_OWNER = "unknown"


def chain_owner(chain: str) -> str:
    """The software a user chain's name says wrote it ("" for a built-in chain, UNKNOWN_OWNER
    for a name nobody claims)."""
    if chain in BUILT_IN:
        return ""
    for prefix, owner in CHAIN_OWNERS:
        if chain.startswith(prefix):
            return owner
    return UNKNOWN_OWNER


def rule_owner(ruleset: Ruleset, rule: Rule) -> str:
    """Who wrote one rule: its chain's owner, or in a built-in chain the owner of the chain it
    jumps to, else the one its comment names, else UNKNOWN_OWNER."""
    owner = chain_owner(rule.chain)
    if owner:
        return owner
    if rule.target and ruleset.policy(rule.table, rule.target) is not None:
        by_target = chain_owner(rule.target)
        if by_target:
            return by_target
    comment = (rule.comment or "").lower()
    for prefix, named in _COMMENT_OWNERS:
        if comment.startswith(prefix):
            return named
    return UNKNOWN_OWNER


def other_software(ruleset: Ruleset) -> list[tuple[str, list[str]]]:
    """The software other than kube-proxy with chains in these rules: (owner, its chains).
    kube-proxy's own chains (tens of thousands on a big node) are passed over in one cheap
    test."""
    found: dict[str, list[str]] = {}
    for table in ruleset.tables.values():
        for chain in [c for c in table.chains if not c.startswith("KUBE-") or c.startswith(_FOREIGN_KUBE)]:
            owner = chain_owner(chain)
            if owner and owner != PROXY_OWNER and chain not in found.get(owner, []):
                found.setdefault(owner, []).append(chain)
    return sorted(found.items())


# KUBE- chains that are not kube-proxy's (kube-router's)
_FOREIGN_KUBE = tuple(prefix for prefix, owner in CHAIN_OWNERS if prefix.startswith("KUBE-") and owner != PROXY_OWNER)


def policy_owner(ruleset: Ruleset, table: str, chain: str, policy: str) -> str:
    """Who set a built-in chain's policy, when it is known: Docker sets filter FORWARD's to
    DROP (its isolation depends on it), so with Docker's chains there that is Docker's."""
    if (table, chain, policy) == ("filter", "FORWARD", "DROP") and ruleset.policy("filter", "DOCKER-USER") is not None:
        return "Docker"
    return ""


@dataclass(frozen=True)
class Layout:
    """A generation of kube-proxy's iptables layout."""

    key: str  # "current", "1.24", "1.20-1.23"
    title: str  # for people: "kube-proxy 1.20–1.23 (KUBE-XLB- chains)"
    evidence: str  # what in the rules showed it

    @property
    def current(self) -> bool:
        return self.key == "current"


CURRENT = "current"


def detect_layout(ruleset: Ruleset) -> Layout | None:
    """Which kube-proxy layout these rules have (None: no kube-proxy service rules)."""
    nat = ruleset.table("nat")
    filt = ruleset.table("filter")
    nat_chains = nat.chains if nat is not None else {}
    filter_chains = filt.chains if filt is not None else {}
    # one pass over the (possibly tens of thousands of) chain names, in C where it can be
    service_chains = [c for c in nat_chains if c.startswith(("KUBE-SVC-", "KUBE-SEP-", "KUBE-SVL-", "KUBE-XLB-",
                                                             "KUBE-FW-", "KUBE-EXT-"))]
    if not service_chains and "KUBE-SERVICES" not in nat_chains:
        return None
    xlb = next((c for c in service_chains if c.startswith("KUBE-XLB-")), "")
    if xlb:
        return Layout("1.20-1.23", "kube-proxy 1.20–1.23", f"KUBE-XLB- chains, e.g. {xlb}")
    marked_drop = _firewall_marks_drop(ruleset, [c for c in service_chains if c.startswith("KUBE-FW-")])
    if marked_drop:
        return Layout("1.24", "kube-proxy 1.24", f"{marked_drop} ends in -j KUBE-MARK-DROP")
    if "KUBE-PROXY-FIREWALL" in filter_chains:
        evidence = "KUBE-PROXY-FIREWALL in filter"
    elif any(c.startswith(("KUBE-EXT-", "KUBE-SVL-")) for c in service_chains):
        evidence = "KUBE-EXT-/KUBE-SVL- chains"
    elif _cluster_ip_masquerade_in_services(ruleset):
        return Layout("1.20-1.23", "kube-proxy 1.20–1.23", "the cluster IP's masquerade rule is in KUBE-SERVICES")
    else:
        evidence = "KUBE-SVC- chains without the older layouts' marks"
    return Layout(CURRENT, "kube-proxy 1.25 or later (also kubectl proxyctl's)", evidence)


def _firewall_marks_drop(ruleset: Ruleset, firewall_chains: list[str]) -> str:
    """The first KUBE-FW- chain that drops by KUBE-MARK-DROP (kube-proxy ≤ 1.24)."""
    for name in sorted(firewall_chains):
        chain = ruleset.chain("nat", name)
        if chain is not None and any(r.target == "KUBE-MARK-DROP" for r in chain.rules):
            return name
    return ""


_SCANNED = 64  # KUBE-SERVICES rules looked at: every service of that layout has one near the top


def _cluster_ip_masquerade_in_services(ruleset: Ruleset) -> bool:
    """kube-proxy ≤ 1.23 marks off-cluster sources for masquerade in KUBE-SERVICES itself."""
    for rule in ruleset.first_rules("nat", "KUBE-SERVICES", _SCANNED):
        if rule.target == "KUBE-MARK-MASQ" and rule.find("-d") is not None:
            comment = rule.comment or ""
            if comment.endswith("cluster IP"):
                return True
    return False
