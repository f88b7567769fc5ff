"""NodePlan → the `nft -f` transaction kube-proxy's nftables mode would run.

Theory of operation: `render(plan, previous=None)` is pure. It returns the text of one atomic
`nft -f -` transaction and the `NftState` the kernel holds once that transaction committed.
The layout is kube-proxy's (`pkg/proxy/nftables/proxier.go`, GA in 1.33): one private table
`kube-proxy` in the `ip` (or `ip6`) family; base chains named `<type>-<hook>`; fixed regular
chains; the verdict maps and sets that make dispatch O(1) (`service-ips`,
`service-nodeports`, `no-endpoint-services`, `no-endpoint-nodeports`, `firewall-ips`,
`cluster-ips`, `nodeport-ips`); and per service port the chains `service-`, `local-`,
`external-`, `firewall-` and one `endpoint-` per reachable endpoint, named by an 8-character
hash and the readable `ns/name/proto/port` string (`ULMVA6XW-ns1/svc1/tcp/p80`).

* A **full** transaction (`previous` None) creates the table, re-creates the base chains
  (on the first run of a process each is added and deleted first, so a changed priority
  applies), flushes and refills every fixed chain, flushes every map and set and adds all
  their elements, and adds + flushes + refills every service chain. Service chains that
  exist in the kernel (`existing_chains`) but are no longer used are flushed and recorded as
  stale; affinity sets no longer used are deleted.
* A **partial** transaction (`previous` given, `changed` naming ServicePortNames or
  `namespace/name` Services) touches only the changed services: their chains are flushed
  and refilled, and map/set elements are added, replaced (delete + add) or deleted by
  comparing with `previous.elements`. The transaction is O(changed objects).
* **Stale chains** are flushed in the sync that stops using them and deleted by a later
  one at least `STALE_CHAIN_DELAY` seconds after (kernels before 6.2 notice late that a map
  element no longer references a chain). `stale_deletion(state, now)` renders that
  separate, small transaction.

Elements of one container are written in one `add element` statement (comma-separated):
nft parses one big statement much faster than thousands of small ones, and the result in
the kernel is the same. Per service port the output is cached in the state (`ServiceOut`),
so a partial render does no work for unchanged services.

Deliberate differences from kube-proxy 1.34, all documented in the README and named in
tests/reference/oracle.py (where the real kube-proxy checks this module): the "unallocated
ClusterIPs" drop rule is written when `service_cidrs` are passed (the engine passes the
cluster's ServiceCIDRs, as kube-proxy watches them). The local-traffic
detector for `BridgeInterface`/`InterfaceNamePrefix` matches `iifname`, as kube-proxy 1.34
writes it too (`iif` would be refused for an interface that does not exist yet and for a
prefix).
"""

from __future__ import annotations

import functools
import hashlib
from base64 import b32encode
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

from kubectl_proxyctl.model import IPFamily, Protocol, ServicePortName
from kubectl_proxyctl.plan.marks import format_mark
from kubectl_proxyctl.plan.planner import (
    FilterAction,
    InternalMasquerade,
    LocalDetector,
    NodePlan,
    ServicePortPlan,
)
from kubectl_proxyctl.system.nftables import KUBE_PROXY_TABLE, family_word

TABLE = KUBE_PROXY_TABLE
TABLE_COMMENT = "rules for kube-proxy"
# eBPF mode's table: kube-proxy's layout, with the entry points reached from outside only
ENTRY_POINTS_TABLE_COMMENT = "kubectl proxyctl eBPF mode: entry points from outside the node"


def table_comment(entry_points_only: bool) -> str:
    return ENTRY_POINTS_TABLE_COMMENT if entry_points_only else TABLE_COMMENT
STALE_CHAIN_DELAY = 1.0  # seconds a stale chain stays (flushed) before it is deleted
NAME_LENGTH_MAX = 256  # knftables.NameLengthMax
_BASE_LENGTH_MAX = NAME_LENGTH_MAX - 16  # chainNameBaseLengthMax
COMMENT_LENGTH_MAX = 128  # knftables.CommentLengthMax: nft refuses longer comments
AFFINITY_SECONDS_MAX = 86400  # the API's maximum ClientIP timeout; nft refuses far larger ones

# --- fixed structure -------------------------------------------------------------------

FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
# Base chains of kube-proxy's layout before 1.34 (filter chains all at dstnat-10, plus
# filter-output-post-dnat): a first transaction deletes them, so a node that ran that
# layout does not keep hooks of it.
FILTER_PREROUTING_LEGACY = "filter-prerouting"
FILTER_OUTPUT_POST_DNAT = "filter-output-post-dnat"
LEGACY_BASE_CHAINS = (FILTER_PREROUTING_LEGACY, FILTER_OUTPUT_POST_DNAT)

SERVICES = "services"
MASQUERADING = "masquerading"
MARK_FOR_MASQUERADE = "mark-for-masquerade"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
FIREWALL_CHECK = "firewall-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
REJECT_CHAIN = "reject-chain"

CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"

# (name, type, hook, priority): kube-proxy's nftablesBaseChains (1.34+, back-ported to
# 1.33): the firewall check runs before DNAT (dstnat - 10) so it sees the load-balancer IP;
# the endpoint checks run in the ordinary filter chains (priority 0), after DNAT, so traffic
# the node itself sends to an ETP Local address, which nat-output short-circuits to the
# cluster endpoints, is not dropped as "no local endpoints" (kubernetes#131765).
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    (FILTER_PREROUTING_PRE_DNAT, "filter", "prerouting", -110),
    (FILTER_OUTPUT_PRE_DNAT, "filter", "output", -110),
    (FILTER_INPUT, "filter", "input", 0),
    (FILTER_FORWARD, "filter", "forward", 0),
    (FILTER_OUTPUT, "filter", "output", 0),
    (NAT_PREROUTING, "nat", "prerouting", -100),
    (NAT_OUTPUT, "nat", "output", -100),
    (NAT_POSTROUTING, "nat", "postrouting", 100),
)

# (destination chain, base chain, match): kube-proxy's nftablesJumpChains, in its order.
JUMP_CHAINS: tuple[tuple[str, str, str], ...] = (
    (NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT, "ct state new"),
    (FIREWALL_CHECK, FILTER_PREROUTING_PRE_DNAT, "ct state new"),
    (FIREWALL_CHECK, FILTER_OUTPUT_PRE_DNAT, "ct state new"),
    (SERVICES, NAT_OUTPUT, ""),
    (SERVICES, NAT_PREROUTING, ""),
    (MASQUERADING, NAT_POSTROUTING, ""),
    (CLUSTER_IPS_CHECK, FILTER_FORWARD, "ct state new"),
    (CLUSTER_IPS_CHECK, FILTER_OUTPUT, "ct state new"),
)

# Element containers: name → (kind, key type with {addr} for the family's address type, comment).
CONTAINERS: Mapping[str, tuple[str, str, str]] = {
    CLUSTER_IPS: ("set", "{addr}", "Active ClusterIPs"),
    SERVICE_IPS: ("map", "{addr} . inet_proto . inet_service : verdict",
                  "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    SERVICE_NODEPORTS: ("map", "inet_proto . inet_service : verdict", "NodePort traffic"),
    NO_ENDPOINT_SERVICES: ("map", "{addr} . inet_proto . inet_service : verdict",
                           "vmap to drop or reject packets to services with no endpoints"),
    NO_ENDPOINT_NODEPORTS: ("map", "inet_proto . inet_service : verdict",
                            "vmap to drop or reject packets to service nodeports with no endpoints"),
    FIREWALL_IPS: ("map", "{addr} . inet_proto . inet_service : verdict",
                   "destinations that are subject to LoadBalancerSourceRanges"),
}
# The order a transaction writes elements in (sets and maps must exist first; chains too).
CONTAINER_ORDER: tuple[str, ...] = (
    CLUSTER_IPS, SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, FIREWALL_IPS,
)

SERVICE_PREFIX = "service-"
LOCAL_PREFIX = "local-"
EXTERNAL_PREFIX = "external-"
FIREWALL_PREFIX = "firewall-"
ENDPOINT_PREFIX = "endpoint-"
AFFINITY_PREFIX = "affinity-"

_PROTO: Mapping[Protocol, str] = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}


# --- names -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 18)
def hash_and_truncate(name: str) -> str:
    """kube-proxy's hashAndTruncate: 8 base32 characters of sha256(name), `-`, the name;
    cut to 240 characters (237 + `...`)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    out = b32encode(digest[:5]).decode("ascii") + "-" + name
    if len(out) > _BASE_LENGTH_MAX:
        out = out[: _BASE_LENGTH_MAX - 3] + "..."
    return out


def service_base(spn: ServicePortName) -> str:
    """`HASH-namespace/name/protocol/portname` (an unnamed port leaves a trailing `/`)."""
    return hash_and_truncate(f"{spn.namespace}/{spn.name}/{_PROTO[spn.protocol]}/{spn.port}")


def endpoint_base(spn: ServicePortName, ip: str, port: int) -> str:
    """`HASH-namespace/name/protocol/portname__ip/port`; IPv6 colons become dots."""
    return hash_and_truncate(
        f"{spn.namespace}/{spn.name}/{_PROTO[spn.protocol]}/{spn.port}__{ip.replace(':', '.')}/{port}"
    )


@dataclass(frozen=True)
class NftServiceChains:
    service: str
    local: str
    external: str
    firewall: str


def service_chains(spn: ServicePortName) -> NftServiceChains:
    base = service_base(spn)
    return NftServiceChains(SERVICE_PREFIX + base, LOCAL_PREFIX + base, EXTERNAL_PREFIX + base,
                            FIREWALL_PREFIX + base)


def endpoint_chain(spn: ServicePortName, ip: str, port: int) -> str:
    return ENDPOINT_PREFIX + endpoint_base(spn, ip, port)


def affinity_set(spn: ServicePortName, ip: str, port: int) -> str:
    return AFFINITY_PREFIX + endpoint_base(spn, ip, port)


def is_service_chain(name: str) -> bool:
    """Per-service and per-endpoint chains always contain a `/`; fixed chains never do."""
    return "/" in name


def is_affinity_set(name: str) -> bool:
    return name.startswith(AFFINITY_PREFIX)


# --- state -----------------------------------------------------------------------------

Element = tuple[str, str, str, str]  # (container, key, value, comment); value "" in a set


@dataclass(frozen=True)
class ServiceOut:
    """Everything one service port contributes to the table."""

    chains: tuple[tuple[str, tuple[str, ...]], ...]  # (chain, its rules) in writing order
    elements: tuple[Element, ...]
    affinity_sets: tuple[tuple[str, int], ...]  # (set, timeout seconds)

    @property
    def chain_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.chains)

    @property
    def rule_count(self) -> int:
        return sum(len(r) for _, r in self.chains)


@dataclass
class NftState:
    """What the kernel's table holds after a transaction committed (kube-proxy keeps the
    same in memory: element storage, stale chains)."""

    family: IPFamily
    services: dict[ServicePortName, ServiceOut] = field(default_factory=dict)
    # container → key → (value, comment, owning service port)
    elements: dict[str, dict[str, tuple[str, str, ServicePortName | None]]] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)  # service chains present (active + stale)
    stale: dict[str, float] = field(default_factory=dict)  # stale chain → when it became stale
    affinity_sets: set[str] = field(default_factory=set)
    fixed_signature: str = ""  # the fixed part; a change needs a full transaction
    table: str = TABLE  # the table's name (eBPF mode keeps its entry points in its own)

    # (container, key) → every service port claiming that element key, for the rare keys
    # claimed by more than one (e.g. two Services sharing an externalIP and port)
    contested: dict[tuple[str, str], tuple[ServicePortName, ...]] = field(default_factory=dict, repr=False)
    # `namespace/name` → the service ports in `services` (tuples, so a copy can be shallow)
    by_service: dict[str, tuple[ServicePortName, ...]] = field(default_factory=dict, repr=False)

    def ports_of(self, service_key: str) -> tuple[ServicePortName, ...]:
        """The service ports of one Service (`namespace/name`) the table holds."""
        return self.by_service.get(service_key, ())

    def put(self, name: ServicePortName, out: ServiceOut) -> None:
        if name not in self.services:
            self.by_service[name.service] = self.by_service.get(name.service, ()) + (name,)
        self.services[name] = out

    def drop(self, name: ServicePortName) -> ServiceOut | None:
        out = self.services.pop(name, None)
        if out is not None:
            left = tuple(n for n in self.by_service.get(name.service, ()) if n != name)
            if left:
                self.by_service[name.service] = left
            else:
                self.by_service.pop(name.service, None)
        return out

    def copy(self) -> "NftState":
        return NftState(
            family=self.family,
            services=dict(self.services),
            elements={k: dict(v) for k, v in self.elements.items()},
            chains=set(self.chains),
            stale=dict(self.stale),
            affinity_sets=set(self.affinity_sets),
            fixed_signature=self.fixed_signature,
            table=self.table,
            by_service=dict(self.by_service),
            contested=dict(self.contested),
        )

    @property
    def active_chains(self) -> set[str]:
        out: set[str] = set()
        for so in self.services.values():
            out.update(so.chain_names)
        return out

    @property
    def rule_count(self) -> int:
        return sum(so.rule_count for so in self.services.values())

    @property
    def element_count(self) -> int:
        return sum(len(v) for v in self.elements.values())


@dataclass(frozen=True)
class RenderedNft:
    """One `nft -f` transaction and the state it leaves."""

    text: str
    family: IPFamily
    state: NftState
    partial: bool
    rules_written: int
    elements_written: int  # add + delete element operations
    chains_written: tuple[str, ...]
    stale_flushed: tuple[str, ...]
    affinity_deleted: tuple[str, ...]

    def __str__(self) -> str:
        return self.text


# --- rendering -------------------------------------------------------------------------


# (is-local match, is-not-local match) per detector criterion, `{v}` the detector's value and
# `{ipx}` the family's address keyword.
_DETECTOR_SYNTAX = {
    "": ("", ""),
    "source": ("{ipx} saddr {v}", "{ipx} saddr != {v}"),
    "interface": ('iifname "{v}"', 'iifname != "{v}"'),
    "interface-prefix": ('iifname "{v}*"', 'iifname != "{v}*"'),
}


def _detector(detector: LocalDetector, ipx: str) -> tuple[str, str]:
    """(is-local match, is-not-local match) in nft syntax, or ("", "") when not implemented."""
    local, not_local = _DETECTOR_SYNTAX[detector.criterion]
    return local.format(v=detector.value, ipx=ipx), not_local.format(v=detector.value, ipx=ipx)


@dataclass(frozen=True)
class _Ctx:
    ipx: str  # `ip` / `ip6`: the table's family and the address match keyword
    addr: str  # `ipv4_addr` / `ipv6_addr`: the address type of sets and map keys
    masq_all: bool
    if_local: str
    if_not_local: str
    # Only the entry points from outside the node (node ports, external and load-balancer
    # IPs): eBPF mode serves cluster IPs at connect() and leaves the rest to this table.
    entry_points_only: bool = False


def _context(plan: NodePlan, entry_points_only: bool = False) -> _Ctx:
    ipx = family_word(plan.family)
    if_local, if_not_local = _detector(plan.local_detector, ipx)
    addr = "ipv6_addr" if ipx == "ip6" else "ipv4_addr"
    return _Ctx(ipx, addr, plan.internal_masquerade == InternalMasquerade.ALL, if_local, if_not_local,
                entry_points_only)


def service_out(sp: ServicePortPlan, ctx: _Ctx) -> ServiceOut:
    """The chains, rules, elements and affinity sets of one service port (kube-proxy's loop
    body in syncProxyRules)."""
    spn = sp.name
    if ctx.entry_points_only and not sp.externally_accessible:
        return ServiceOut((), (), ())  # reached through its cluster IP only: not this table's
    # Element comments are cut to what nft accepts: valid names can be longer (63 + 63 + 15).
    spn_text = str(spn)[:COMMENT_LENGTH_MAX]
    proto = _PROTO[sp.protocol]
    names = service_chains(spn)
    ipx = ctx.ipx
    port = sp.port
    has_any = sp.has_any_endpoints

    ep_chain: dict[int, str] = {}
    ep_affinity: dict[int, str] = {}
    for ep in sp.reachable_endpoints:
        base = endpoint_base(spn, ep.ip, ep.port)
        ep_chain[id(ep)] = ENDPOINT_PREFIX + base
        ep_affinity[id(ep)] = AFFINITY_PREFIX + base

    internal_chain = names.local if sp.internal_policy_local else names.service
    external_policy_chain = names.local if sp.external_policy_local else names.service

    elements: list[Element] = []
    if ctx.entry_points_only:
        pass  # no cluster-IP elements: nothing from outside is sent to a cluster IP
    elif sp.has_internal_endpoints:
        elements.append((CLUSTER_IPS, sp.cluster_ip, "", ""))
        elements.append((SERVICE_IPS, f"{sp.cluster_ip} . {proto} . {port}", f"goto {internal_chain}", ""))
    else:
        elements.append((CLUSTER_IPS, sp.cluster_ip, "", ""))
        verdict = f"goto {REJECT_CHAIN}" if (sp.internal_filter or FilterAction.REJECT) == FilterAction.REJECT else "drop"
        elements.append((NO_ENDPOINT_SERVICES, f"{sp.cluster_ip} . {proto} . {port}", verdict, spn_text))
    ext_verdict = ""
    if sp.external_filter is not None:
        ext_verdict = f"goto {REJECT_CHAIN}" if sp.external_filter == FilterAction.REJECT else "drop"
    has_external = sp.has_external_endpoints
    for eip in sp.external_ips:
        if has_any:
            elements.append((SERVICE_IPS, f"{eip} . {proto} . {port}", f"goto {names.external}", ""))
        if not has_external:
            elements.append((NO_ENDPOINT_SERVICES, f"{eip} . {proto} . {port}", ext_verdict, spn_text))
    for lbip in sp.load_balancer_ips:
        if has_any:
            elements.append((SERVICE_IPS, f"{lbip} . {proto} . {port}", f"goto {names.external}", ""))
        if sp.uses_firewall:
            elements.append((FIREWALL_IPS, f"{lbip} . {proto} . {port}", f"goto {names.firewall}", ""))
    if not has_external:
        for lbip in sp.load_balancer_ips:
            elements.append((NO_ENDPOINT_SERVICES, f"{lbip} . {proto} . {port}", ext_verdict, spn_text))
    if sp.node_port:
        if has_any:
            elements.append((SERVICE_NODEPORTS, f"{proto} . {sp.node_port}", f"goto {names.external}", ""))
        if not has_external:
            elements.append((NO_ENDPOINT_NODEPORTS, f"{proto} . {sp.node_port}", ext_verdict, spn_text))

    chains: list[tuple[str, tuple[str, ...]]] = []
    internal_rules: list[str] = []
    if sp.has_internal_endpoints:
        # No protocol or port match: a packet in this chain came through service-ips, which
        # matched them already (kube-proxy 1.34, kubernetes#131492; 1.33 wrote `tcp dport N`).
        if ctx.entry_points_only:
            pass  # no cluster IP reaches this table
        elif ctx.masq_all:
            internal_rules.append(f"{ipx} daddr {sp.cluster_ip} jump {MARK_FOR_MASQUERADE}")
        elif ctx.if_not_local:
            internal_rules.append(f"{ipx} daddr {sp.cluster_ip} {ctx.if_not_local} jump {MARK_FOR_MASQUERADE}")

    affinity = min(sp.affinity_seconds, AFFINITY_SECONDS_MAX)
    affinity_sets: list[tuple[str, int]] = []
    if affinity:
        affinity_sets = [(ep_affinity[id(ep)], affinity) for ep in sp.reachable_endpoints]

    def dispatch(endpoints: Iterable) -> list[str]:
        eps = list(endpoints)
        out: list[str] = []
        if affinity:
            for ep in eps:
                out.append(f"{ipx} saddr @{ep_affinity[id(ep)]} goto {ep_chain[id(ep)]}")
        arms = " , ".join(f"{i} : goto {ep_chain[id(ep)]}" for i, ep in enumerate(eps))
        out.append(f"numgen random mod {len(eps)} vmap {{ {arms} }}")
        return out

    service_rules: dict[str, list[str]] = {}
    if sp.uses_cluster_chain:
        rules = dispatch(sp.cluster_endpoints)
        if internal_chain == names.service:
            rules = internal_rules + rules
        service_rules[names.service] = rules
    if sp.uses_local_chain:
        rules = dispatch(sp.local_endpoints)
        if internal_chain == names.local:
            rules = internal_rules + rules
        service_rules[names.local] = rules

    if names.service in service_rules:
        chains.append((names.service, tuple(service_rules[names.service])))
    if names.local in service_rules:
        chains.append((names.local, tuple(service_rules[names.local])))

    if sp.uses_external_chain:
        ext_rules: list[str] = []
        if not sp.external_policy_local:
            ext_rules.append(f"jump {MARK_FOR_MASQUERADE}")
        else:
            if ctx.if_local:
                ext_rules.append(f'{ctx.if_local} goto {names.service} comment "short-circuit pod traffic"')
            ext_rules.append(f'fib saddr type local jump {MARK_FOR_MASQUERADE} comment "masquerade local traffic"')
            ext_rules.append(f'fib saddr type local goto {names.service} comment "short-circuit local traffic"')
        if has_external:
            ext_rules.append(f"goto {external_policy_chain}")
        chains.append((names.external, tuple(ext_rules)))

    for ep in sp.reachable_endpoints:
        rules = [f"{ipx} saddr {ep.ip} jump {MARK_FOR_MASQUERADE}"]
        if affinity:
            rules.append(f"update @{ep_affinity[id(ep)]} {{ {ipx} saddr }}")
        target = f"[{ep.ip}]:{ep.port}" if ":" in ep.ip else f"{ep.ip}:{ep.port}"
        rules.append(f"meta l4proto {proto} dnat to {target}")
        chains.append((ep_chain[id(ep)], tuple(rules)))

    if sp.uses_firewall:
        sources = list(sp.source_ranges)
        if sp.firewall_allows_node:
            sources += list(sp.load_balancer_ips)
        chains.append((names.firewall, (f"{ipx} saddr != {{ {', '.join(sources)} }} drop",)))

    return ServiceOut(tuple(chains), tuple(elements), tuple(affinity_sets))


def _fixed_part(plan: NodePlan, ctx: _Ctx, t: str, service_cidrs: tuple[str, ...],
                first: bool) -> tuple[list[str], str]:
    """The table, base chains, fixed chains and their rules, sets and maps (flushed).

    Returns (lines, signature); the signature changes when anything here would."""
    addr = ctx.addr
    ipx = ctx.ipx
    mark = format_mark(plan.masquerade_mark)
    no_localhost = "ip6 daddr != ::1" if ipx == "ip6" else "ip daddr != 127.0.0.0/8"
    nodeport_ips = [ip for ip in plan.nodeport_ips if not _is_loopback(ip)]
    match_all = plan.nodeport_match_all

    out = [f'add table {t} {{ comment "{table_comment(ctx.entry_points_only)}" ; }}']
    if first:
        for name in (*(b[0] for b in BASE_CHAINS), *LEGACY_BASE_CHAINS):
            out.append(f"add chain {t} {name}")
            out.append(f"delete chain {t} {name}")
    for name, typ, hook, prio in BASE_CHAINS:
        out.append(f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
        out.append(f"flush chain {t} {name}")
    created: list[str] = []
    for dst, _, _ in JUMP_CHAINS:
        if dst not in created:
            created.append(dst)
    for extra in (SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_FOR_MASQUERADE, FIREWALL_CHECK):
        if extra not in created:
            created.append(extra)
    for name in created:
        out.append(f"add chain {t} {name}")
        out.append(f"flush chain {t} {name}")
    out.append(f'add chain {t} {REJECT_CHAIN} {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
    out.append(f"flush chain {t} {REJECT_CHAIN}")

    for name in CONTAINER_ORDER:
        kind, typ, comment = CONTAINERS[name]
        out.append(f'add {kind} {t} {name} {{ type {typ.format(addr=addr)} ; comment "{comment}" ; }}')
        out.append(f"flush {kind} {t} {name}")
    out.append(f'add set {t} {NODEPORT_IPS} {{ type {addr} ; comment "IPs that accept NodePort traffic" ; }}')
    if match_all:
        out.append(f"delete set {t} {NODEPORT_IPS}")
    else:
        out.append(f"flush set {t} {NODEPORT_IPS}")
        if nodeport_ips:
            out.append(f"add element {t} {NODEPORT_IPS} {{ {', '.join(nodeport_ips)} }}")

    for dst, src, match in JUMP_CHAINS:
        out.append(f"add rule {t} {src} {match + ' ' if match else ''}jump {dst}")
    out.append(f"add rule {t} {MARK_FOR_MASQUERADE} mark set mark or {mark}")
    out.append(f"add rule {t} {MASQUERADING} mark and {mark} == 0 return")
    out.append(f"add rule {t} {MASQUERADING} mark set mark xor {mark}")
    out.append(f"add rule {t} {MASQUERADING} masquerade fully-random")
    out.append(f'add rule {t} {CLUSTER_IPS_CHECK} {ipx} daddr @{CLUSTER_IPS} reject '
               f'comment "Reject traffic to invalid ports of ClusterIPs"')
    if service_cidrs:
        out.append(f'add rule {t} {CLUSTER_IPS_CHECK} {ipx} daddr {{ {", ".join(service_cidrs)} }} drop '
                   f'comment "Drop traffic to unallocated ClusterIPs"')
    out.append(f"add rule {t} {REJECT_CHAIN} reject")
    out.append(f"add rule {t} {SERVICE_ENDPOINTS_CHECK} {ipx} daddr . meta l4proto . th dport "
               f"vmap @{NO_ENDPOINT_SERVICES}")
    if match_all:
        out.append(f"add rule {t} {NODEPORT_ENDPOINTS_CHECK} {no_localhost} meta l4proto . th dport "
                   f"vmap @{NO_ENDPOINT_NODEPORTS}")
    else:
        out.append(f"add rule {t} {NODEPORT_ENDPOINTS_CHECK} {ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport "
                   f"vmap @{NO_ENDPOINT_NODEPORTS}")
    out.append(f"add rule {t} {FIREWALL_CHECK} {ipx} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}")
    out.append(f"add rule {t} {SERVICES} {ipx} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")
    if match_all:
        out.append(f"add rule {t} {SERVICES} fib daddr type local {no_localhost} meta l4proto . th dport "
                   f"vmap @{SERVICE_NODEPORTS}")
    else:
        out.append(f"add rule {t} {SERVICES} {ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport "
                   f"vmap @{SERVICE_NODEPORTS}")
    signature = "\n".join(line for line in out if not line.startswith(("add chain", "delete chain")) or "{" in line)
    return out, signature


def _is_loopback(ip: str) -> bool:
    return ip == "::1" or ip.startswith("127.")


def _affinity_set_line(t: str, name: str, timeout: int, ctx: _Ctx) -> str:
    return f"add set {t} {name} {{ type {ctx.addr} ; flags dynamic,timeout ; timeout {timeout}s ; }}"


def _write_chains(t: str, out: ServiceOut, chain_lines: list[str], rule_lines: list[str],
                  written: list[str]) -> None:
    """Create (or keep), flush and refill every chain of one service port."""
    for chain, rules in out.chains:
        chain_lines.append(f"add chain {t} {chain}")
        chain_lines.append(f"flush chain {t} {chain}")
        written.append(chain)
        for rule in rules:
            rule_lines.append(f"add rule {t} {chain} {rule}")


def _element_text(key: str, value: str, comment: str) -> str:
    text = key
    if comment:
        text += f' comment "{comment}"'
    if value:
        text += f" : {value}"
    return text


def _write_elements(out: list[str], t: str, adds: Mapping[str, list[str]], deletes: Mapping[str, list[str]]) -> int:
    n = 0
    for name in CONTAINER_ORDER:
        keys = deletes.get(name)
        if keys:
            out.append(f"delete element {t} {name} {{ {', '.join(keys)} }}")
            n += len(keys)
    for name in CONTAINER_ORDER:
        items = adds.get(name)
        if items:
            out.append(f"add element {t} {name} {{ {', '.join(items)} }}")
            n += len(items)
    return n


def render(
    plan: NodePlan,
    *,
    previous: NftState | None = None,
    changed: Collection[ServicePortName | str] | None = None,
    existing_chains: Collection[str] | None = None,
    existing_affinity_sets: Collection[str] | None = None,
    first: bool = False,
    now: float = 0.0,
    service_cidrs: Iterable[str] = (),
    table: str = TABLE,
    entry_points_only: bool = False,
    state_only: bool = False,
) -> RenderedNft:
    """Render one transaction for `plan`.

    previous: the state after the last successful transaction; None renders a full one.
    changed: for a partial transaction, the service ports (or `namespace/name` Services)
        whose chains must be rewritten; elements are diffed for these only.
    existing_chains / existing_affinity_sets: for a full transaction, the service chains and
        affinity sets the kernel's table holds now (stale ones are flushed / deleted).
    first: the first transaction of this process (base chains are re-created).
    now: the time stale chains are stamped with.
    service_cidrs: the cluster's service CIDRs of the family, for the unallocated-IP drop.
    table: the table's name.
    entry_points_only: leave out every cluster IP (eBPF mode's table for traffic from outside).
    state_only: for a full transaction, only the state it leaves (the text stays empty): what
        a reconciliation (`reconcile.py`) compares the kernel's table with.
    """
    ctx = _context(plan, entry_points_only)
    t = f"{ctx.ipx} {table}"
    cidrs = tuple(service_cidrs)
    fixed, signature = _fixed_part(plan, ctx, t, cidrs, first)
    if previous is not None and (previous.fixed_signature != signature or previous.family != plan.family
                                 or previous.table != table):
        # The fixed part changed (node IPs, flags): only a full transaction fits; what the
        # kernel holds is what the previous state says.
        return _full(plan, ctx, t, fixed, signature, previous.chains, previous.affinity_sets, now,
                     previous.stale)
    if previous is None:
        return _full(plan, ctx, t, fixed, signature, existing_chains, existing_affinity_sets, now,
                     with_text=not state_only)
    return _partial(plan, ctx, t, previous, changed, now)


def fixed_lines(plan: NodePlan, *, service_cidrs: Iterable[str] = (), table: str = TABLE,
                entry_points_only: bool = False) -> list[str]:
    """The fixed part of a full transaction (the table, base and fixed chains with their
    rules, sets and maps, each flushed), as `render` writes it when not `first`."""
    ctx = _context(plan, entry_points_only)
    return _fixed_part(plan, ctx, f"{ctx.ipx} {table}", tuple(service_cidrs), False)[0]


def _full(plan: NodePlan, ctx: _Ctx, t: str, fixed: list[str], signature: str,
          existing_chains: Collection[str] | None, existing_affinity: Collection[str] | None,
          now: float, stale_since: Mapping[str, float] | None = None, with_text: bool = True) -> RenderedNft:
    state = NftState(family=plan.family, fixed_signature=signature, table=t.split(" ", 1)[1])
    out = list(fixed)
    chain_lines: list[str] = []
    rule_lines: list[str] = []
    set_lines: list[str] = []
    adds: dict[str, list[str]] = {}
    written: list[str] = []
    elements = state.elements
    for name in CONTAINER_ORDER:
        elements[name] = {}
    for sp in plan.services:
        if ctx.entry_points_only and not sp.externally_accessible:
            continue  # nothing of it in this table (nor in its state: partial syncs stay small)
        so = service_out(sp, ctx)
        state.put(sp.name, so)
        for set_name, timeout in so.affinity_sets:
            set_lines.append(_affinity_set_line(t, set_name, timeout, ctx))
            state.affinity_sets.add(set_name)
        if with_text:
            _write_chains(t, so, chain_lines, rule_lines, written)
        else:
            written.extend(so.chain_names)
        for container, key, value, comment in so.elements:
            store = elements[container]
            held = store.get(key)
            if held is not None:
                # first writer wins, as kube-proxy's element storage keeps one value; the
                # other claim is remembered so a partial transaction can hand the key over
                _contest(state.contested, (container, key), held[2], sp.name)
                continue
            store[key] = (value, comment, sp.name)
    for container in CONTAINER_ORDER if with_text else ():
        adds[container] = [_element_text(k, v, c) for k, (v, c, _) in elements[container].items()]
    active = set(written)
    state.chains = set(active)
    stale: list[str] = []
    for chain in sorted(set(existing_chains or ()) - active):
        if is_service_chain(chain):
            chain_lines.append(f"flush chain {t} {chain}")
            state.chains.add(chain)
            state.stale[chain] = (stale_since or {}).get(chain, now)
            stale.append(chain)
    deleted_affinity = sorted(set(existing_affinity or ()) - state.affinity_sets)
    out += set_lines
    out += chain_lines
    out += rule_lines
    n_elements = _write_elements(out, t, adds, {})
    for name in deleted_affinity:
        out.append(f"delete set {t} {name}")
    return RenderedNft(
        text="\n".join(out) + "\n" if with_text else "", family=plan.family, state=state, partial=False,
        rules_written=len(rule_lines), elements_written=n_elements, chains_written=tuple(written),
        stale_flushed=tuple(stale), affinity_deleted=tuple(deleted_affinity),
    )


def _partial(plan: NodePlan, ctx: _Ctx, t: str, previous: NftState,
             changed: Collection[ServicePortName | str] | None, now: float) -> RenderedNft:
    changed_set = frozenset(changed or ())
    state = previous.copy()
    # The service ports to rewrite: those named in `changed`, and every port (old or new) of
    # a Service named there; found through the plan's and the state's per-Service indexes, so
    # the cost does not grow with the number of unchanged services.
    touched: list[ServicePortName] = []
    for item in changed_set:
        if isinstance(item, ServicePortName):
            touched.append(item)
        else:
            touched.extend(plan.ports_of(item))
            touched.extend(previous.ports_of(item))
    # In the plan's order: the transaction text is deterministic, and of two touched ports
    # claiming one element key the first wins, as in a full transaction.
    touched = sorted(set(touched), key=lambda n: (str(n), n.protocol.value))

    chain_lines: list[str] = []
    rule_lines: list[str] = []
    set_lines: list[str] = []
    written: list[str] = []
    removed_chains: set[str] = set()
    removed_affinity: set[str] = set()
    outs: dict[ServicePortName, tuple[ServiceOut | None, ServiceOut | None]] = {}

    for name in touched:
        old = state.drop(name)
        sp = plan.service(name)
        if sp is not None and ctx.entry_points_only and not sp.externally_accessible:
            sp = None  # not in this table
        new = service_out(sp, ctx) if sp is not None else None
        if new is not None:
            state.put(name, new)
        outs[name] = (old, new)
        removed_chains |= set(old.chain_names if old else ()) - set(new.chain_names if new else ())
        removed_affinity |= ({s for s, _ in old.affinity_sets} if old else set()) - (
            {s for s, _ in new.affinity_sets} if new else set())
        if new is None:
            continue
        old_timeouts = dict(old.affinity_sets) if old else {}
        for set_name, timeout in new.affinity_sets:
            # A new set, or a new timeout for an existing one (`add set` updates it).
            if set_name not in state.affinity_sets or old_timeouts.get(set_name) != timeout:
                set_lines.append(_affinity_set_line(t, set_name, timeout, ctx))
                state.affinity_sets.add(set_name)
        _write_chains(t, new, chain_lines, rule_lines, written)
        for chain in new.chain_names:
            state.chains.add(chain)
            state.stale.pop(chain, None)

    # Elements in three passes, so a key that moves between service ports is neither lost
    # nor rewritten: drop what the touched ports held (and their claims on contested keys),
    # add what they want now (a key another port holds stays with it, the claim is noted),
    # then hand every released key that another port still claims to the first such port in
    # plan order, as a full transaction would. Only the net change is written.
    before: dict[tuple[str, str], tuple[str, str, ServicePortName | None] | None] = {}
    contested = state.contested
    for name, (old, _) in outs.items():
        for container, key, _, _ in (old.elements if old else ()):
            ck = (container, key)
            claimants = contested.get(ck)
            if claimants is not None:  # pruned below, once released keys were handed over
                contested[ck] = tuple(n for n in claimants if n != name)
            store = state.elements[container]
            held = store.get(key)
            if held is not None and held[2] == name:
                before.setdefault(ck, held)
                del store[key]
    for name, (_, new) in outs.items():
        for container, key, value, comment in (new.elements if new else ()):
            store = state.elements[container]
            held = store.get(key)
            if held is None:
                before.setdefault((container, key), None)
                store[key] = (value, comment, name)
            elif held[2] != name:
                _contest(contested, (container, key), held[2], name)
    for (container, key), was in list(before.items()):
        store = state.elements[container]
        if was is None or key in store:
            continue
        for claimant in _plan_ordered(contested.get((container, key), ()) + (
                () if was[2] is None else (was[2],))):
            claimed = _claimed(state.services.get(claimant), container, key)
            if claimed is not None:
                store[key] = (claimed[0], claimed[1], claimant)
                break
    for ck in [ck for ck, claimants in contested.items() if len(claimants) < 2]:
        del contested[ck]
    adds: dict[str, list[str]] = {}
    deletes: dict[str, list[str]] = {}
    for (container, key), was in before.items():
        now_held = state.elements[container].get(key)
        if was is not None and now_held is not None and was[:2] == now_held[:2]:
            continue
        if was is not None:
            deletes.setdefault(container, []).append(key)
        if now_held is not None:
            adds.setdefault(container, []).append(_element_text(key, now_held[0], now_held[1]))

    # Chain names embed the service port (and endpoint), so a chain one port stopped using
    # cannot be in use by another port: every removed chain is stale.
    stale: list[str] = []
    for chain in sorted(removed_chains):
        if chain in state.chains and chain not in state.stale:
            chain_lines.append(f"flush chain {t} {chain}")
            state.stale[chain] = now
            stale.append(chain)
    deleted_affinity = sorted(removed_affinity & state.affinity_sets)
    state.affinity_sets.difference_update(deleted_affinity)

    out: list[str] = []
    out += set_lines
    out += chain_lines
    out += rule_lines
    n_elements = _write_elements(out, t, adds, deletes)
    for name in deleted_affinity:
        out.append(f"delete set {t} {name}")
    return RenderedNft(
        text="\n".join(out) + ("\n" if out else ""), family=plan.family, state=state, partial=True,
        rules_written=len(rule_lines), elements_written=n_elements, chains_written=tuple(written),
        stale_flushed=tuple(stale), affinity_deleted=tuple(deleted_affinity),
    )


def _contest(contested: dict[tuple[str, str], tuple[ServicePortName, ...]], ck: tuple[str, str],
             holder: ServicePortName | None, claimant: ServicePortName) -> None:
    claimants = contested.get(ck) or ((holder,) if holder is not None else ())
    if claimant not in claimants:
        claimants = claimants + (claimant,)
    contested[ck] = claimants


def _plan_ordered(names: Iterable[ServicePortName]) -> list[ServicePortName]:
    return sorted(set(names), key=lambda n: (str(n), n.protocol.value))


def _claimed(out: ServiceOut | None, container: str, key: str) -> tuple[str, str] | None:
    """(value, comment) `out` wants for the element key, or None when it does not claim it."""
    for c, k, value, comment in (out.elements if out else ()):
        if c == container and k == key:
            return value, comment
    return None


def stale_deletion(state: NftState, now: float, delay: float = STALE_CHAIN_DELAY) -> tuple[str, tuple[str, ...]]:
    """(transaction text, chains) deleting the stale chains that have been stale long enough.

    The caller runs it before the sync's main transaction and, when it succeeded, calls
    `forget_chains(state, chains)`; an empty text means there is nothing to delete."""
    due = tuple(sorted(c for c, since in state.stale.items() if now - since >= delay))
    if not due:
        return "", ()
    text = "".join(f"delete chain {family_word(state.family)} {state.table} {c}\n" for c in due)
    return text, due


def forget_chains(state: NftState, chains: Iterable[str]) -> None:
    for chain in chains:
        state.stale.pop(chain, None)
        state.chains.discard(chain)


def cleanup_script(family: IPFamily, table: str = TABLE) -> str:
    """Delete our table (no error when it does not exist: it is added first)."""
    fam = family_word(family)
    return f"add table {fam} {table}\ndelete table {fam} {table}\n"
