"""`verify` on an nftables node: the `kube-proxy` table against the plan, by meaning.

Theory of operation: the desired table is what the engine writes on this node:
`plan(state, config)` → `modes.nftables.render`, whose state lists every service port's
chains with their rules, its map and set elements and its affinity sets, and whose script
holds the fixed chains. The actual table is the parsed `nft -j` output. Rules, element keys
and verdicts of both sides are reduced with `nft_json.canonical` (nft prints back what it
was given in its own spelling: `mark or 0x4000` as `meta mark | 16384`, `{ 10.0.0.0/8 }`
as `10.0.0.0/8`), then compared:

* per service port: every map and set element it owns (service-ips, service-nodeports,
  no-endpoint-services, no-endpoint-nodeports, firewall-ips, cluster-ips) by key, with its
  verdict; every chain by name and its rules as a multiset. A service-/local- chain's
  endpoints and their odds are read from its `numgen random mod N vmap` (missing, extra
  endpoints, wrong odds) rather than compared as text; an endpoint chain's DNAT target is
  named when it differs; an emptied chain is called flushed; the affinity sets and their
  timeouts are checked. Chains, sets and elements the plan has no use for are reported
  (stale), except flushed service chains, which the proxy itself leaves for a moment
  before it deletes them;
* for the whole table (without a selector): the verdict maps and sets exist, the fixed
  chains (`services`, `masquerading`, `mark-for-masquerade`, the `*-check` chains,
  `reject-chain`) hold the planned rules, `nodeport-ips` the planned addresses, and the
  base chains hook the fixed chains in where they must run. The base chains are checked
  by what they do, not by name, because kube-proxy versions lay them out differently: up
  to 1.32 the filter chains run at priority -110 (before DNAT) with `filter-output-post-dnat`
  at -90, later ones have `filter-prerouting-pre-dnat` / `filter-output-pre-dnat` at -110 and
  `filter-input` / `filter-forward` / `filter-output` at 0 (after DNAT). Either way
  `firewall-check` must run before DNAT, `cluster-ips-check` (on output) after it, and the
  rest where their hook puts them (`JUMPS`).

The node-wide flags that change rules are read back from the table, as `verify` does for
iptables: the masquerade bit (`mark-for-masquerade`), `--masquerade-all` and the
local-traffic detector (a service chain's masquerade rule, or an external chain's pod
short-circuit), the node-port addresses (`nodeport-ips`, or `fib daddr type local` for
all), the service CIDRs (the drop rule in `cluster-ips-check`). The node's addresses come
from the node context, completed with `nodeport-ips` (they are node addresses).

Every table found is checked with the plan of its family (`ip` IPv4, `ip6` IPv6); the
report's `config` holds the flags read back (keyed by family, `ip` and `ip6`, when a ruleset
holds both tables).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from kubectl_proxyctl.model import ClusterState, IPFamily, ServicePortName
from kubectl_proxyctl.modes.base import Mode, NodeRules
from kubectl_proxyctl.modes.findings import (
    ODDS_TOLERANCE,
    Finding,
    Report,
    multiset_diff,
    sum_odds,
)
from kubectl_proxyctl.modes.nftables import render as nftr
from kubectl_proxyctl.modes.nftables.names import nft_chain_owner
from kubectl_proxyctl.modes.nftables.parse import (
    NftChain,
    NftTable,
    canonical,
    value_text,
)
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import Owner, ServiceSelector, parse_comment
from kubectl_proxyctl.plan.planner import (
    DetectLocalMode,
    ProxyConfig,
    ServicePortPlan,
    plan,
)

FIXED_CHAINS: tuple[str, ...] = (
    nftr.SERVICES, nftr.MASQUERADING, nftr.MARK_FOR_MASQUERADE, nftr.SERVICE_ENDPOINTS_CHECK,
    nftr.NODEPORT_ENDPOINTS_CHECK, nftr.FIREWALL_CHECK, nftr.CLUSTER_IPS_CHECK, nftr.REJECT_CHAIN,
)
DNAT_PRIORITY = -100


@dataclass(frozen=True)
class Jump:
    """A fixed chain that a base chain of this type and hook must jump to. `stage`: where
    the base chain must run relative to DNAT (priority -100): "pre-dnat", "post-dnat" or ""
    (either)."""

    type: str
    hook: str
    stage: str
    target: str
    consequence: str

    @property
    def match(self) -> str:
        return "ct state new" if self.type == "filter" else ""

    @property
    def rule(self) -> str:
        return f"{self.match} jump {self.target}".strip()

    def fits(self, chain: NftChain) -> bool:
        if chain.type != self.type or chain.hook != self.hook:
            return False
        prio = chain.priority if chain.priority is not None else 0
        if self.stage == "pre-dnat":
            return prio < DNAT_PRIORITY
        if self.stage == "post-dnat":
            return prio > DNAT_PRIORITY
        return True

    def where(self) -> str:
        stage = {"pre-dnat": " running before DNAT (priority below -100)",
                 "post-dnat": " running after DNAT (priority above -100)"}.get(self.stage, "")
        return f"{self.type} {self.hook} base chain{stage}"


JUMPS: tuple[Jump, ...] = (
    Jump("filter", "prerouting", "pre-dnat", nftr.FIREWALL_CHECK,
         "loadBalancerSourceRanges are not enforced for arriving packets"),
    Jump("filter", "output", "pre-dnat", nftr.FIREWALL_CHECK,
         "loadBalancerSourceRanges are not enforced for packets the node sends"),
    Jump("filter", "input", "", nftr.NODEPORT_ENDPOINTS_CHECK,
         "connections to node ports without endpoints are neither rejected nor dropped"),
    Jump("filter", "input", "", nftr.SERVICE_ENDPOINTS_CHECK,
         "connections to services without endpoints are neither rejected nor dropped (input)"),
    Jump("filter", "forward", "", nftr.SERVICE_ENDPOINTS_CHECK,
         "connections to services without endpoints are neither rejected nor dropped (forward)"),
    Jump("filter", "output", "", nftr.SERVICE_ENDPOINTS_CHECK,
         "connections the node opens to services without endpoints are neither rejected nor dropped"),
    Jump("filter", "forward", "", nftr.CLUSTER_IPS_CHECK,
         "connections to unused ports of cluster IPs are not rejected (forward)"),
    Jump("filter", "output", "post-dnat", nftr.CLUSTER_IPS_CHECK,
         "connections the node opens to unused ports of cluster IPs are not rejected"),
    Jump("nat", "prerouting", "", nftr.SERVICES, "no Service works for packets arriving at this node"),
    Jump("nat", "output", "", nftr.SERVICES, "no Service works for connections the node itself opens"),
    Jump("nat", "postrouting", "", nftr.MASQUERADING, "connections marked for masquerading are not SNATed"),
)

_CONSEQUENCE = {
    nftr.SERVICE_IPS: "new connections to it are not sent to the service's chains",
    nftr.SERVICE_NODEPORTS: "new connections to the node port are not sent to the service's chains",
    nftr.FIREWALL_IPS: "loadBalancerSourceRanges are not enforced for it",
    nftr.CLUSTER_IPS: "connections to other ports of the cluster IP are not rejected",
}


def layout_of(table: NftTable) -> str:
    """Which base-chain layout the table has (see the module notes)."""
    names = {c.name for c in table.chains.values() if c.hook}
    if nftr.FILTER_OUTPUT_POST_DNAT in names:
        return "filter-output-post-dnat"
    if any(n.endswith("-pre-dnat") for n in names):
        return "pre-dnat"
    return "unknown" if names else "none"


# --- the node's flags, read back -------------------------------------------------------


@dataclass(frozen=True)
class NftInferred:
    config: ProxyConfig
    service_cidrs: tuple[str, ...]
    described: Mapping[str, Any]


def _texts(chain: NftChain | None) -> list[str]:
    return [canonical(r.text) for r in chain.rules] if chain else []


def infer_nft_config(table: NftTable, node: NodeContext) -> NftInferred:
    """The proxy's flags for this table's family, as far as the table shows them."""
    v6 = table.family == "ip6"
    family = IPFamily.IPv6 if v6 else IPFamily.IPv4
    bit = 14
    for text in _texts(table.chains.get(nftr.MARK_FOR_MASQUERADE)):
        m = re.search(r"meta mark set meta mark \| (\d+)$", text)
        if m is not None:
            mark = int(m.group(1))
            if mark and mark & (mark - 1) == 0:
                bit = mark.bit_length() - 1

    masq_all: bool | None = None
    detector: tuple[DetectLocalMode, str] | None = None
    short_circuit: tuple[DetectLocalMode, str] | None = None
    for name, chain in table.chains.items():
        owner = nft_chain_owner(name)
        if owner is None or owner.role not in ("cluster", "local", "external") or not chain.rules:
            continue
        first = canonical(chain.rules[0].text)
        if owner.role == "external":
            # The "short-circuit pod traffic" rule of a Local external policy.
            short_circuit = short_circuit or _detector_of(first, negated=False)
        elif masq_all is None and " daddr " in first and first.endswith(f"jump {nftr.MARK_FOR_MASQUERADE}"):
            detector = _detector_of(first, negated=True)  # the masquerade rule: none with --masquerade-all
            masq_all = detector is None
        if masq_all is not None and (detector is not None or short_circuit is not None):
            break
    detector = detector or short_circuit
    masq_all = bool(masq_all)
    mode, value = detector if detector is not None else (DetectLocalMode.ClusterCIDR, "")
    cidrs = node.cluster_cidrs
    if mode == DetectLocalMode.ClusterCIDR and value and value not in cidrs:
        cidrs = (value, *cidrs)

    np_set = table.sets.get(nftr.NODEPORT_IPS)
    nodeport_ips = [value_text(e.key) for e in np_set.elements] if np_set is not None else []
    host = "/128" if v6 else "/32"
    if np_set is not None:
        # An empty set: addresses were asked for, and none of the node's matched.
        nodeport_addresses = tuple(ip + host for ip in nodeport_ips) or (("::/128",) if v6 else ("0.0.0.0/32",))
    else:
        nodeport_addresses = ()  # every local address (`fib daddr type local`)
    known = node.ips if node.ips_known else ()
    node_ips = tuple(dict.fromkeys((*known, *nodeport_ips)))

    service_cidrs = _service_cidrs(table.chains.get(nftr.CLUSTER_IPS_CHECK))
    described: dict[str, Any] = {
        "family": family.value,
        "layout": layout_of(table),
        "masquerade_bit": bit,
        "masquerade_all": masq_all,
        "detect_local_mode": str(mode),
        "cluster_cidrs": list(cidrs),
        "nodeport_addresses": list(nodeport_addresses),
        "nodeport_all_local_addresses": np_set is None,
        "service_cidrs": list(service_cidrs),
    }
    config = ProxyConfig(
        node_name=node.name or "",
        family=family,
        cluster_cidrs=cidrs,
        detect_local_mode=mode,
        pod_bridge_interface=value if mode == DetectLocalMode.BridgeInterface else "",
        pod_interface_name_prefix=value if mode == DetectLocalMode.InterfaceNamePrefix else "",
        masquerade_all=masq_all,
        masquerade_bit=bit,
        nodeport_addresses=nodeport_addresses,
        node_ips=node_ips,
    )
    return NftInferred(config, service_cidrs, described)


def _detector_of(text: str, negated: bool) -> tuple[DetectLocalMode, str] | None:
    """The local-traffic detector in a canonical rule: `ip saddr != CIDR` / `meta iifname !=
    NAME` (the masquerade rule), `ip saddr CIDR` / `meta iifname NAME` (the short-circuit)."""
    op = "!= " if negated else ""
    m = re.search(rf"\bip6? saddr {op}(\S+/\d+) ", text)
    if m is not None:
        return DetectLocalMode.ClusterCIDR, m.group(1)
    m = re.search(rf"\bmeta iifname {op}(\S+) ", text)
    if m is not None:
        name = m.group(1)
        if name.endswith("*"):
            return DetectLocalMode.InterfaceNamePrefix, name[:-1]
        return DetectLocalMode.BridgeInterface, name
    return None


def _service_cidrs(chain: NftChain | None) -> tuple[str, ...]:
    """The service CIDRs of the "Drop traffic to unallocated ClusterIPs" rule."""
    out: list[str] = []
    for rule in chain.rules if chain else ():
        if not any(isinstance(s, dict) and "drop" in s for s in rule.expr):
            continue
        for stmt in rule.expr:
            m = stmt.get("match") if isinstance(stmt, dict) else None
            if not isinstance(m, dict):
                continue
            left = m.get("left")
            if not (isinstance(left, dict) and left.get("payload", {}).get("field") == "daddr"):
                continue
            right = m.get("right")
            items = right["set"] if isinstance(right, dict) and isinstance(right.get("set"), list) else [right]
            for item in items:
                if value_text(item) not in out:
                    out.append(value_text(item))
    return tuple(out)


# --- the two sides ---------------------------------------------------------------------


@dataclass
class _Expected:
    """What the plan puts into one table."""

    fixed: dict[str, list[str]] = field(default_factory=dict)  # fixed chain → rules (script text)
    nodeport_ips: list[str] | None = None  # None: the set is not used (every local address)
    services: dict[ServicePortName, nftr.ServiceOut] = field(default_factory=dict)
    elements: dict[str, dict[str, "_Want"]] = field(default_factory=dict)  # container → canonical key → element
    chains: set[str] = field(default_factory=set)
    affinity_sets: set[str] = field(default_factory=set)


_RULE_LINE = re.compile(r"^add rule \S+ \S+ (\S+) (.*)$")
_NODEPORT_LINE = re.compile(rf"^add element \S+ \S+ {nftr.NODEPORT_IPS} \{{ (.*) \}}$")


def _expected(rendered: nftr.RenderedNft) -> _Expected:
    exp = _Expected()
    base = {name for name, _, _, _ in nftr.BASE_CHAINS}
    has_set = False
    for line in rendered.text.splitlines():
        m = _RULE_LINE.match(line)
        if m is not None and not nftr.is_service_chain(m.group(1)) and m.group(1) not in base:
            exp.fixed.setdefault(m.group(1), []).append(m.group(2))
            continue
        m = _NODEPORT_LINE.match(line)
        if m is not None:
            exp.nodeport_ips = [ip.strip() for ip in m.group(1).split(",") if ip.strip()]
        elif line.startswith("flush set ") and line.endswith(f" {nftr.NODEPORT_IPS}"):
            has_set = True
    if has_set and exp.nodeport_ips is None:
        exp.nodeport_ips = []
    for name in FIXED_CHAINS:
        exp.fixed.setdefault(name, [])
    exp.services = dict(rendered.state.services)
    for container, store in rendered.state.elements.items():
        exp.elements[container] = {
            canonical(key): _Want(key, comment, value, canonical(value), owner)
            for key, (value, comment, owner) in store.items()
        }
    exp.chains = set(rendered.state.active_chains)
    exp.affinity_sets = set(rendered.state.affinity_sets)
    return exp


@dataclass(frozen=True)
class _Want:
    """A planned element."""

    key: str
    comment: str
    value: str  # as the script writes it ("" in a set)
    value_c: str  # canonical
    owner: ServicePortName | None

    @property
    def written(self) -> str:
        text = self.key + (f' comment "{self.comment}"' if self.comment else "")
        return f"{text} : {self.value}" if self.value else text


@dataclass(frozen=True)
class _Element:
    key: str  # as nft printed it
    value: str  # canonical verdict ("" in a set)
    shown: str  # the verdict as nft printed it
    service_port: str  # the owner: from the verdict's chain, else the comment


def _actual_elements(table: NftTable) -> dict[str, dict[str, _Element]]:
    out: dict[str, dict[str, _Element]] = {}
    for name in nftr.CONTAINER_ORDER:
        nset = table.sets.get(name)
        store: dict[str, _Element] = {}
        for e in nset.elements if nset else ():
            key = value_text(e.key)
            shown = value_text(e.value) if e.value is not None else ""
            owner = _verdict_owner(e.value)
            spn = owner.service_port if owner else ""
            if not spn and e.comment and parse_comment(e.comment):
                spn = e.comment
            store[canonical(key)] = _Element(key, canonical(shown), shown, spn)
        out[name] = store
    return out


def _verdict_owner(value: Any) -> Owner | None:
    if isinstance(value, dict) and len(value) == 1:
        k, x = next(iter(value.items()))
        if k in ("goto", "jump") and isinstance(x, dict):
            return nft_chain_owner(str(x.get("target", "")))
    return None


# --- comparing -------------------------------------------------------------------------


def _diff(expected: Sequence[str], actual: Sequence[str]) -> tuple[list[str], list[str]]:
    """(missing, extra) between two multisets of rules, shown as written."""
    return multiset_diff(expected, actual, canonical, str)


_MASQUERADE_MATCH = re.compile(r"^(ip6? daddr (\S+)) (tcp|udp|sctp) dport (\d+) (.*jump mark-for-masquerade)$")


def _as_written_since_134(rule: str, sp: ServicePortPlan) -> str:
    """kube-proxy up to 1.33 matched the service's protocol and port again in the ClusterIP
    masquerade rule; 1.34 does not (service-ips matched them already, kubernetes#131492).
    The older form of *this* service port's rule is read as the newer one: both are in sync."""
    m = _MASQUERADE_MATCH.match(canonical(rule))
    if m is not None and m.group(2) == sp.cluster_ip and m.group(3) == sp.protocol.value.lower() \
            and int(m.group(4)) == sp.port:
        return f"{m.group(1)} {m.group(5)}"
    return rule


_NUMGEN = re.compile(r"^numgen random mod (\d+) vmap \{ (.*) \}$")


def endpoint_odds(rules: Iterable[str]) -> dict[str, float]:
    """Endpoint → share of new connections, from the `numgen random mod N vmap` rule of a
    service-/local- chain (canonical or written rules)."""
    return sum_odds(_numgen_branches(rules))


def _numgen_branches(rules: Iterable[str]) -> Iterable[tuple[str, float]]:
    for rule in rules:
        m = _NUMGEN.match(canonical(rule))
        if m is None:
            continue
        mod = int(m.group(1))
        for item in m.group(2).split(", "):
            _, _, verdict = item.partition(" : ")
            target = verdict.split(" ", 1)[-1]
            owner = nft_chain_owner(target)
            if owner is not None and owner.endpoint and mod:
                yield owner.endpoint, 1.0 / mod


def _is_numgen(rule: str) -> bool:
    return _NUMGEN.match(canonical(rule)) is not None


def _dnat(rules: Iterable[str]) -> str:
    for rule in rules:
        m = re.search(r"\bdnat to (\S+)$", canonical(rule))
        if m is not None:
            return m.group(1)
    return ""


class _TableCheck:
    """One table against the plan of its family."""

    def __init__(self, report: Report, table: NftTable, state: ClusterState, node: NodeContext,
                 selector: ServiceSelector | None, entry_points_only: bool = False) -> None:
        self.report = report
        self.table = table
        self.title = table.title
        self.selector = selector
        self.inferred = infer_nft_config(table, node)
        self.plan = plan(state, self.inferred.config)
        rendered = nftr.render(self.plan, service_cidrs=self.inferred.service_cidrs, table=table.name,
                               entry_points_only=entry_points_only)
        self.exp = _expected(rendered)
        self.act = _actual_elements(table)
        self.services = [sp for sp in self.plan.services if (selector is None or selector.matches(str(sp.name)))
                         and (sp.externally_accessible or not entry_points_only)]
        self.planned = {str(sp.name) for sp in self.plan.services}

    def add(self, kind: str, severity: str, message: str, spn: str = "", chain: str = "",
            missing: Iterable[str] = (), extra: Iterable[str] = ()) -> None:
        service = spn.split(":", 1)[0] if spn else ""
        self.report.findings.append(Finding(kind, severity, message, service, spn, chain, tuple(missing),
                                            tuple(extra)))

    def line(self, chain: str, rule: str) -> str:
        return f"add rule {self.title} {chain} {rule}"

    def run(self) -> None:
        self.report.services_checked += len(self.services)
        for sp in self.services:
            self.check_service(sp)
        self.check_leftovers()
        if self.selector is None:
            self.check_structure()
            self.check_jumps()
            self.check_fixed()

    # -- per service port --

    def _wanted(self, spn: str) -> bool:
        return self.selector is None or (bool(spn) and self.selector.matches(spn))

    def check_service(self, sp: ServicePortPlan) -> None:
        spn = str(sp.name)
        out = self.exp.services.get(sp.name)
        if out is None:
            return
        owned = [(c, ck, w) for c, store in self.exp.elements.items() for ck, w in store.items() if w.owner == sp.name]
        chains = self.table.chains
        if not any(name in chains for name in out.chain_names) and not any(
                ck in self.act.get(c, {}) for c, ck, _ in owned):
            self.add("missing-service", "error", f"{spn} has no rules in {self.title} (the plan has "
                     f"{_describe(sp)})", spn)
            return
        for container, ck, want in owned:
            have = self.act.get(container, {}).get(ck)
            planned = f"add element {self.title} {container} {{ {want.written} }}"
            if have is None:
                self.add("missing-element", "error", f"{spn}: {container} has no element {want.key}: "
                         f"{_consequence(container, want.value_c)}", spn, container, missing=(planned,))
            elif have.value != want.value_c:
                self.add("rules-differ", "error", f"{spn}: {container} sends {want.key} to {have.shown or 'nothing'}, "
                         f"not to {want.value}", spn, container, missing=(planned,),
                         extra=(f"add element {self.title} {container} {{ {_element(have.key, have.shown)} }}",))
        reported: set[str] = set()
        for name, rules in out.chains:
            owner = nft_chain_owner(name)
            if owner is not None and owner.role == "endpoint" and name not in chains:
                reported.add(owner.endpoint)
                self.add("missing-endpoint", "error", f"{spn}: endpoint {owner.endpoint} has no {name} chain "
                         f"in {self.title}", spn, name)
        for name, rules in out.chains:
            if name in chains:
                self.check_chain(sp, name, list(rules), reported)
            elif not name.startswith(nftr.ENDPOINT_PREFIX):
                self.add("missing-chain", "error", f"{spn}: chain {name} is missing from {self.title}", spn, name)
        for set_name, timeout in out.affinity_sets:
            have_set = self.table.sets.get(set_name)
            if have_set is None:
                self.add("missing-set", "error", f"{spn}: affinity set {set_name} is missing from {self.title}: "
                         "sessionAffinity does not hold", spn, set_name)
            elif have_set.timeout != timeout:
                self.add("rules-differ", "error", f"{spn}: affinity set {set_name} keeps a client "
                         f"{have_set.timeout if have_set.timeout is not None else 'forever'} s, the plan says "
                         f"{timeout} s", spn, set_name)

    def check_chain(self, sp: ServicePortPlan, name: str, rules: list[str], reported: set[str]) -> None:
        spn = str(sp.name)
        chain = self.table.chains[name]
        have = [_as_written_since_134(r.text, sp) for r in chain.rules]
        owner = nft_chain_owner(name)
        role = owner.role if owner else ""
        if rules and not have:
            what = {
                "cluster": "new connections to this service port reach no endpoint",
                "local": "new connections to this service port reach no local endpoint",
                "external": "traffic from outside the cluster reaches no endpoint",
                "firewall": "loadBalancerSourceRanges are not enforced",
                "endpoint": f"connections sent to endpoint {owner.endpoint if owner else '?'} are not DNATed",
            }.get(role, "it does nothing")
            self.add("flushed", "error", f"{spn}: chain {name} is empty (flushed): {what}", spn, name,
                     missing=[self.line(name, r) for r in rules])
            return
        if role in ("cluster", "local"):
            want_odds, have_odds = endpoint_odds(rules), endpoint_odds(have)
            for ep in sorted(set(want_odds) - set(have_odds) - reported):
                self.add("missing-endpoint", "error", f"{spn}: {name} does not send traffic to endpoint {ep}",
                         spn, name)
            for ep in sorted(set(have_odds) - set(want_odds)):
                self.add("extra-endpoint", "error", f"{spn}: {name} still sends {have_odds[ep] * 100:.1f} % of "
                         f"new connections to {ep}, which is not a usable endpoint in the API", spn, name)
            same = set(want_odds) == set(have_odds)
            wrong = [ep for ep in sorted(want_odds) if same and abs(want_odds[ep] - have_odds[ep]) > ODDS_TOLERANCE]
            if wrong:
                detail = ", ".join(f"{ep} {have_odds[ep] * 100:.1f} % (want {want_odds[ep] * 100:.1f} %)"
                                   for ep in wrong)
                self.add("wrong-odds", "error", f"{spn}: {name}: {detail}", spn, name)
            if not same or wrong:
                return  # the rule lists differ for reasons already named
            rules = [r for r in rules if not _is_numgen(r)]
            have = [r for r in have if not _is_numgen(r)]
        if role == "endpoint":
            want_dnat, have_dnat = _dnat(rules), _dnat(have)
            if want_dnat and have_dnat and want_dnat != have_dnat:
                self.add("rules-differ", "error", f"{spn}: {name} DNATs to {have_dnat}, not to {want_dnat} (the "
                         f"endpoint its name says)", spn, name,
                         missing=[self.line(name, r) for r in rules if _dnat([r])],
                         extra=[self.line(name, r) for r in have if _dnat([r])])
                rules = [r for r in rules if not _dnat([r])]
                have = [r for r in have if not _dnat([r])]
        missing, extra = _diff(rules, have)
        if missing or extra:
            self.add("rules-differ", "error", f"{spn}: chain {name} differs from the plan", spn, name,
                     [self.line(name, r) for r in missing], [self.line(name, r) for r in extra])

    # -- what the plan has no use for --

    def check_leftovers(self) -> None:
        for container, store in self.act.items():
            expected = self.exp.elements.get(container, {})
            for ck, e in store.items():
                if ck in expected or not self._wanted(e.service_port):
                    continue
                if container == nftr.CLUSTER_IPS:
                    if self.selector is None:
                        self.add("stale-service", "warning", f"{self.title} {container} still holds {e.key}, "
                                 "which is no cluster IP of the plan: connections to it are rejected", chain=container,
                                 extra=(f"add element {self.title} {container} {{ {e.key} }}",))
                    continue
                whose = f" ({e.service_port})" if e.service_port else ""
                gone = e.service_port and e.service_port not in self.planned
                self.add("stale-service", "error", f"{self.title} {container} still maps {e.key} to {e.shown}{whose}"
                         + (", which the API does not have" if gone else ", which the plan does not have"),
                         e.service_port, container,
                         extra=(f"add element {self.title} {container} {{ {_element(e.key, e.shown)} }}",))
        for name, chain in self.table.chains.items():
            if not nftr.is_service_chain(name) or name in self.exp.chains:
                continue
            owner = nft_chain_owner(name)
            if owner is None or not owner.verified:
                if self.selector is None:
                    self.add("orphan-chain", "warning", f"{self.title} {name}: a service chain whose name does not "
                             "check out (its hash is not that of the service port it names)", chain=name)
                continue
            if not self._wanted(owner.service_port) or not chain.rules:
                continue  # flushed: the proxy deletes stale chains a moment after it stops using them
            what = f"endpoint {owner.endpoint}" if owner.endpoint else "a chain"
            why = ("which the API does not have" if owner.service_port not in self.planned
                   else "the plan has no use for it")
            self.add("stale-chain", "warning", f"{owner.service_port}: {name} ({what}) is left over in "
                     f"{self.title}: {why}", owner.service_port, name)
        for name in self.table.sets:
            if not nftr.is_affinity_set(name) or name in self.exp.affinity_sets:
                continue
            owner = nft_chain_owner(name)
            if owner is not None and self._wanted(owner.service_port):
                self.add("stale-chain", "warning", f"{owner.service_port}: affinity set {name} is left over in "
                         f"{self.title}: the plan has no use for it", owner.service_port, name)

    # -- the whole table --

    def check_structure(self) -> None:
        for name in nftr.CONTAINER_ORDER:
            kind = nftr.CONTAINERS[name][0]
            have = self.table.sets.get(name)
            if have is None:
                self.add("missing-set", "error", f"{self.title}: {kind} {name} is missing", chain=name)
            elif have.is_map != (kind == "map"):
                self.add("rules-differ", "error", f"{self.title}: {name} is a {'map' if have.is_map else 'set'}, "
                         f"not a {kind}", chain=name)
        have_np = self.table.sets.get(nftr.NODEPORT_IPS)
        want_np = self.exp.nodeport_ips
        if want_np is not None and have_np is not None:
            missing, extra = _diff(want_np, [value_text(e.key) for e in have_np.elements])
            if missing or extra:
                self.add("rules-differ", "error", f"{self.title}: {nftr.NODEPORT_IPS} (the addresses that accept "
                         "node ports) differs from the plan", chain=nftr.NODEPORT_IPS,
                         missing=[f"add element {self.title} {nftr.NODEPORT_IPS} {{ {ip} }}" for ip in missing],
                         extra=[f"add element {self.title} {nftr.NODEPORT_IPS} {{ {ip} }}" for ip in extra])

    def check_jumps(self) -> None:
        missing = missing_jumps(self.table)
        for jump, where in missing:
            self.add("missing-jump", "error", f"{self.title}: no {jump.where()} jumps to {jump.target}: "
                     f"{jump.consequence}", chain=where, missing=(self.line(where, jump.rule),))
        for chain in self.table.chains.values():
            if not chain.hook:
                continue
            extra = [rule.text for rule in chain.rules if not _is_jump_of(chain, rule.text)]
            if extra:
                self.add("rules-differ", "error", f"{self.title}: base chain {chain.name} ({chain.type} hook "
                         f"{chain.hook} priority {chain.priority}) has rules the proxy's layout does not have",
                         chain=chain.name, extra=[self.line(chain.name, r) for r in extra])

    def check_fixed(self) -> None:
        for name in FIXED_CHAINS:
            rules = self.exp.fixed.get(name, [])
            chain = self.table.chains.get(name)
            if chain is None:
                self.add("missing-chain", "error", f"{self.title}: chain {name} is missing", chain=name,
                         missing=[self.line(name, r) for r in rules])
                continue
            have = [r.text for r in chain.rules]
            if name == nftr.SERVICES and rules and not have:
                self.add("flushed", "error", f"{self.title}: chain {name} is empty: no Service works on this node "
                         "(flushed by hand, or the proxy is not running)", chain=name,
                         missing=[self.line(name, r) for r in rules])
                continue
            missing, extra = _diff(rules, have)
            if missing or extra:
                self.add("rules-differ", "error", f"{self.title}: chain {name} differs from the plan", chain=name,
                         missing=[self.line(name, r) for r in missing], extra=[self.line(name, r) for r in extra])


def missing_jumps(table: NftTable) -> list[tuple[Jump, str]]:
    """The JUMPS no base chain of the table makes, each with the base chain that should (one
    of the fitting type, hook and stage, else a placeholder)."""
    base = [c for c in table.chains.values() if c.hook]
    out: list[tuple[Jump, str]] = []
    for jump in JUMPS:
        want = canonical(jump.rule)
        fitting = [c for c in base if jump.fits(c)]
        if not any(canonical(rule.text) == want for c in fitting for rule in c.rules):
            out.append((jump, fitting[0].name if fitting else f"<{jump.type} {jump.hook} base chain>"))
    return out


def _is_jump_of(chain: NftChain, rule: str) -> bool:
    """Is this base-chain rule one of the JUMPS, in a base chain where it belongs?"""
    text = canonical(rule)
    return any(jump.fits(chain) and canonical(jump.rule) == text for jump in JUMPS)


def _describe(sp: ServicePortPlan) -> str:
    if sp.has_internal_endpoints:
        return f"{len(sp.cluster_endpoints)} endpoint(s) behind {sp.cluster_ip}:{sp.port}"
    return f"{sp.internal_filter or 'REJECT'} for {sp.cluster_ip}:{sp.port}"


def _consequence(container: str, value: str) -> str:
    if container in (nftr.NO_ENDPOINT_SERVICES, nftr.NO_ENDPOINT_NODEPORTS):
        verdict = "rejected" if "reject" in value else "dropped"
        return f"connections to it are not {verdict} (there are no usable endpoints for them)"
    return _CONSEQUENCE.get(container, "it is not handled")


def _element(key: str, value: str) -> str:
    return f"{key} : {value}" if value else key


def verify_entry_table(report: Report, table: NftTable, state: ClusterState, node: NodeContext,
                       selector: ServiceSelector | None = None) -> Mapping[str, Any]:
    """A table of kube-proxy's layout that holds only the entry points reached from outside
    the node (eBPF mode's `proxyctl-ebpf`): checked like the `kube-proxy` table, against the
    render with `entry_points_only`, its findings added to `report`; returns the flags read
    back. Only the service ports reachable from outside the node are checked (and counted)."""
    check = _TableCheck(report, table, state, node, selector, entry_points_only=True)
    check.run()
    return dict(check.inferred.described)


def verify_nft(graph: NodeRules, state: ClusterState, node: NodeContext,
               selector: ServiceSelector | None = None) -> Report:
    """The node's `kube-proxy` tables against the plan (see the module notes)."""
    report = Report(node.name, Mode.NFTABLES)
    tables = [t for t in graph.nft_tables() if t.family in ("ip", "ip6")]
    if not tables:
        report.findings.append(Finding("no-rules", "error", "no nft table `kube-proxy` (family ip or ip6) was found "
                                       "on this node"))
        return report
    described: dict[str, Any] = {}
    for table in tables:
        check = _TableCheck(report, table, state, node, selector)
        check.run()
        described[table.family] = dict(check.inferred.described)
    report.config = described[tables[0].family] if len(described) == 1 else described
    return report
