"""`verify`: the node's actual rules against what the API says should be there.

Theory of operation: the desired state is computed exactly as the engine would program it:
`plan(state, config)` → `modes.iptables.render` → parsed. The actual state is the node's
RuleGraph. Both sides are parsed rules, compared semantically, never as text:

* rules are compared by a canonical key (`Rule.key()` without comments, nfacct counters or
  `--random-fully`), so `iptables-save`'s normalisations (`-d IP/32`, `--set-xmark`, `-p`
  moved first) and large-cluster mode's missing comments do not count as drift;
* the top-level chains (KUBE-SERVICES, KUBE-NODEPORTS, the filter chains) are compared per
  service port, as multisets: the order across services follows Go map order in kube-proxy
  and does not matter;
* each service port's own chains (KUBE-SVC/SVL/EXT/FW/SEP) are matched by name and compared
  as multisets of rules; the endpoint odds of each SVC/SVL chain are computed from its
  `statistic` cascade on both sides ("wrong odds"), and its endpoints compared as sets
  (missing and extra endpoints);
* chains nothing owns (no service port of the plan explains them: orphans of deleted
  services or endpoints), the jump rules from the built-in chains, and the fixed chains
  (KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD) are checked too;
* node-wide: rules of another proxy mode (an nft `kube-proxy` table, IPVS virtual services,
  ipsets or chains), and KUBE- chains in both iptables backends (nft and legacy).

The proxy's node-wide flags are read back from the fixed rules when no flag says otherwise
(masquerade bit, `--masquerade-all`, cluster CIDR, localhost node ports, `--nodeport-addresses`,
`--random-fully`, nfacct counters, the INVALID drop), so a node configured differently from
the defaults does not drift on every rule; only Service-level differences do.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kubectl_proxyctl.model import ClusterState, IPFamily
from kubectl_proxyctl.modes.base import Mode, NodeRules
from kubectl_proxyctl.modes.findings import (
    ODDS_TOLERANCE,
    Finding,
    Report,
    multiset_diff,
    sum_odds,
)
from kubectl_proxyctl.modes.iptables.names import (
    ENTRY_CHAINS,
    IptablesNames,
    parse_comment,
    resolve_iptables,
)
from kubectl_proxyctl.modes.iptables.naming import SEP_PREFIX
from kubectl_proxyctl.modes.iptables.parse import (
    Rule,
    Ruleset,
    parse,
    parse_rule_args,
    statistic_cascade,
)
from kubectl_proxyctl.modes.iptables.render import JUMP_RULES, render
from kubectl_proxyctl.modes.iptables.software import detect_layout
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.nodecontext import EXTERNAL_CLIENT_IP, EXTERNAL_CLIENT_IP_V6, NodeContext
from kubectl_proxyctl.modes.tracing import Origin, Packet, TraceResult, Verdict
from kubectl_proxyctl.modes.owners import ServiceSelector, service_of
from kubectl_proxyctl.plan.planner import (
    DetectLocalMode,
    ProxyConfig,
    ServicePortPlan,
    plan,
)

FIXED_CHAINS: tuple[tuple[str, str], ...] = (
    ("nat", "KUBE-POSTROUTING"),
    ("nat", "KUBE-MARK-MASQ"),
    ("filter", "KUBE-FORWARD"),
)


# --- reading the node's flags back -----------------------------------------------------


@dataclass(frozen=True)
class Inferred:
    config: ProxyConfig
    render_options: Mapping[str, Any]
    described: Mapping[str, Any]


def infer_config(actual: Ruleset, node: NodeContext, masquerade_all: bool | None = None) -> Inferred:
    """The proxy's node-wide flags, as far as the fixed rules show them."""
    described: dict[str, Any] = {}
    bit = 14
    mm = actual.chain("nat", "KUBE-MARK-MASQ")
    for rule in mm.rules if mm else ():
        value = rule.target_option("--set-xmark") or rule.target_option("--or-mark")
        if value:
            try:
                mark = int(value.split("/")[0], 0)
                if mark and mark & (mark - 1) == 0:
                    bit = mark.bit_length() - 1
            except ValueError:
                pass
    described["masquerade_bit"] = bit

    masq_all = False
    detector: tuple[DetectLocalMode, str] | None = None
    v6 = False
    nat = actual.table("nat")
    for chain in nat.chains if nat is not None else ():
        if not chain.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-")):
            continue
        first = next(iter(actual.first_rules("nat", chain, 1)), None)
        if first is None:
            continue
        if chain.startswith("KUBE-EXT-"):
            if first.target.startswith(("KUBE-SVC-", "KUBE-SVL-")) and detector is None:
                detector = _detector_of(first)  # the "pod traffic" short-circuit
            continue
        if first.target == "KUBE-MARK-MASQ":
            dst = first.find("-d")
            v6 = v6 or (dst is not None and ":" in dst.value)
            masq_all = first.find("-s") is None and first.find("-i") is None
            detector = _detector_of(first) or detector
            break
    if masquerade_all is not None:
        masq_all = masquerade_all
    described["masquerade_all"] = masq_all

    localhost = True
    nodeport_addresses: list[str] = []
    for _, rule in actual.rules_containing("nat", "KUBE-SERVICES", "KUBE-NODEPORTS"):
        if rule.target != "KUBE-NODEPORTS":
            continue
        dst = rule.find("-d")
        if dst is not None and dst.negated and dst.value.startswith("127."):
            localhost = False
        elif dst is not None and not dst.negated:
            nodeport_addresses.append(dst.value if "/" in dst.value else dst.value + "/32")
    if nodeport_addresses:
        localhost = any(a.startswith("127.") for a in nodeport_addresses)
    described["localhost_nodeports"] = localhost
    described["nodeport_addresses"] = nodeport_addresses

    random_fully = False
    pr = actual.chain("nat", "KUBE-POSTROUTING")
    for rule in pr.rules if pr else ():
        if rule.target == "MASQUERADE":
            random_fully = any(m.option == "--random-fully" for m in rule.target_options)
    fwd = actual.chain("filter", "KUBE-FORWARD")
    fwd_rules = fwd.rules if fwd else ()
    nfacct = any(m.module == "nfacct" for r in fwd_rules for m in r.matches)
    be_liberal = fwd is not None and not any(
        r.target == "DROP" and any(m.option == "--ctstate" and "INVALID" in m.value for m in r.matches)
        for r in fwd_rules
    )
    for rule in actual.first_rules("nat", "KUBE-SERVICES", 1):
        dst = rule.find("-d")
        v6 = v6 or (dst is not None and ":" in dst.value)
    mode, value = detector if detector is not None else (DetectLocalMode.ClusterCIDR, "")
    cidrs = node.cluster_cidrs
    if mode == DetectLocalMode.ClusterCIDR and value and value not in cidrs:
        cidrs = (value, *cidrs)
    described.update(random_fully=random_fully, nfacct=nfacct, tcp_be_liberal=be_liberal,
                     cluster_cidrs=list(cidrs), detect_local_mode=str(mode), family="IPv6" if v6 else "IPv4")
    config = ProxyConfig(
        node_name=node.name or "",
        family=IPFamily.IPv6 if v6 else IPFamily.IPv4,
        cluster_cidrs=cidrs,
        detect_local_mode=mode,
        pod_bridge_interface=value if mode == DetectLocalMode.BridgeInterface else "",
        pod_interface_name_prefix=value if mode == DetectLocalMode.InterfaceNamePrefix else "",
        masquerade_all=masq_all,
        masquerade_bit=bit,
        nodeport_addresses=tuple(nodeport_addresses),
        node_ips=node.ips if node.ips_known else (),
        localhost_nodeports=localhost,
    )
    return Inferred(config, {"random_fully": random_fully, "nfacct": nfacct, "tcp_be_liberal": be_liberal},
                    described)


def _detector_of(rule: Rule) -> tuple[DetectLocalMode, str] | None:
    """The local-traffic detector a masquerade or short-circuit rule uses."""
    src = rule.find("-s")
    if src is not None and "/" in src.value:
        return DetectLocalMode.ClusterCIDR, src.value
    iface = rule.find("-i")
    if iface is not None:
        if iface.value.endswith("+"):
            return DetectLocalMode.InterfaceNamePrefix, iface.value[:-1]
        return DetectLocalMode.BridgeInterface, iface.value
    return None


# --- canonical rules -------------------------------------------------------------------


def rule_key(rule: Rule) -> str:
    """Rule.key() without what does not change where a packet goes."""
    matches = tuple(m for m in rule.matches if m.module not in ("comment", "nfacct"))
    options = tuple(m for m in rule.target_options if m.option != "--random-fully")
    if matches != rule.matches or options != rule.target_options:
        rule = dataclasses.replace(rule, matches=matches, target_options=options)
    return rule.key()


def _line(rule: Rule) -> str:
    return f"-A {rule.chain} {rule.text}".rstrip()


def _diff(expected: Sequence[Rule], actual: Sequence[Rule]) -> tuple[list[str], list[str]]:
    """(missing, extra) rules between two multisets."""
    return multiset_diff(expected, actual, rule_key, _line)


def endpoint_odds(rules: Sequence[Rule], sep_endpoint: Mapping[str, str]) -> dict[str, float]:
    """Endpoint → share of new connections, from an SVC/SVL chain's `statistic` cascade."""
    return sum_odds((sep_endpoint.get(rules[i].target, rules[i].target), share)
                    for i, share in statistic_cascade(rules).items())


# --- iptables --------------------------------------------------------------------------


def _group_entry_rules(ruleset: Ruleset, names: IptablesNames | None,
                       selector: ServiceSelector | None) -> dict[tuple[str, str, str], list[Rule]]:
    """(table, chain, service port) → the top-level rules of that service port."""
    out: dict[tuple[str, str, str], list[Rule]] = {}
    for table, chain in ENTRY_CHAINS:
        if selector is not None:
            found = [r for _, r in ruleset.rules_containing(table, chain, selector.key)]
        else:
            c = ruleset.chain(table, chain)
            found = list(c.rules) if c else []
        for rule in found:
            parsed = parse_comment(rule.comment)
            spn = parsed[0] if parsed is not None else ""
            if not spn and names is not None:
                owner = names.owner(rule.target)
                spn = owner.service_port if owner else ""
            if selector is not None and not selector.matches(spn):
                continue
            out.setdefault((table, chain, spn), []).append(rule)
    return out


def verify_iptables(
    graph: NodeRules,
    state: ClusterState,
    node: NodeContext,
    selector: ServiceSelector | None = None,
) -> Report:
    actual = graph.ruleset
    report = Report(node.name, Mode.IPTABLES)
    if actual is None:
        report.findings.append(Finding("no-rules", "error", "no iptables rules were found on this node"))
        return report
    inferred = infer_config(actual, node)
    report.config = inferred.described
    desired_plan = plan(state, inferred.config)
    if selector is not None:
        # Render only this Service (node-wide facts such as large-cluster mode stay the plan's).
        desired_plan = dataclasses.replace(
            desired_plan, services=tuple(sp for sp in desired_plan.services if selector.matches(str(sp.name))))
    rendered = render(desired_plan, **inferred.render_options)
    expected = parse(rendered.text, lazy=True).with_jump_rules(rendered.jump_rules)

    layout = detect_layout(actual)
    if layout is not None and not layout.current:
        # An older kube-proxy writes other chains for the same Services: compare where the
        # packets go, not the rules.
        report.notes.append(f"rules of {layout.title} ({layout.evidence}): compared by behaviour (where each "
                            "service port's new connections go, per client), not rule by rule")
        report.services_checked = len(desired_plan.services)
        _check_behaviour(report, actual, expected, graph, desired_plan.services, node)
        return report

    services = list(desired_plan.services)
    report.services_checked = len(services)
    names = resolve_iptables(actual, state, selector)
    exp_names = resolve_iptables(expected, state, selector)

    want_groups = _group_entry_rules(expected, exp_names, selector)
    have_groups = _group_entry_rules(actual, names, selector)
    planned = {str(sp.name) for sp in services}

    # Service ports with no rules at all on the node.
    have_any: set[str] = {spn for (_, _, spn) in have_groups} | {o.service_port for o in names.owners.values()}
    missing_services = {spn for spn in planned if spn not in have_any}
    for sp in services:
        spn = str(sp.name)
        if spn in missing_services:
            report.findings.append(Finding(
                "missing-service", "error", f"{spn} has no rules on this node (the plan has "
                f"{_describe_plan(sp)})", sp.name.service, spn))

    # Top-level chains, per service port.
    for key in sorted(set(want_groups) | set(have_groups)):
        table, chain, spn = key
        if spn in missing_services:
            continue
        if spn and spn not in planned:
            rules = have_groups.get(key, [])
            report.findings.append(Finding(
                "stale-service", "error", f"{table} {chain} still has {len(rules)} rule(s) for {spn}, which the "
                "API does not have (a deleted Service or port)", service_of(spn), spn, chain,
                extra=tuple(_line(r) for r in rules)))
            continue
        if not spn:
            continue  # fixed rules (the KUBE-NODEPORTS jump): checked with the fixed chains
        missing, extra = _diff(want_groups.get(key, []), have_groups.get(key, []))
        if missing or extra:
            report.findings.append(Finding(
                "rules-differ", "error", f"{table} {chain}: the rules for {spn} differ from the plan",
                service_of(spn), spn, chain, tuple(missing), tuple(extra)))

    # Per-service chains.
    _check_service_chains(report, actual, expected, names, exp_names, services, missing_services, rendered.chains_by_service)

    if selector is None:
        _check_orphans(report, names, planned)
        _check_fixed(report, actual, expected, have_groups)
        _check_jumps(report, actual)
    return report


# --- behaviour, for the older layouts -----------------------------------------------------


Client = tuple[Origin, str]


def _ways_in(sp: ServicePortPlan, node: NodeContext) -> list[tuple[str, str, int, tuple[Client, ...]]]:
    """(kind, address, port, clients) of every way into a service port; the clients are a pod
    of this node, the node itself and an outside client (plus, for a load-balancer IP with
    source ranges, one inside the ranges)."""
    v6 = ":" in sp.cluster_ip
    clients: tuple[Client, ...] = (
        (Origin.POD, node.pod_source([e.ip for e in sp.endpoints], v6)), (Origin.NODE, node.node_ip(v6)),
        (Origin.EXTERNAL, EXTERNAL_CLIENT_IP_V6 if v6 else EXTERNAL_CLIENT_IP))
    ways = [("cluster IP", sp.cluster_ip, sp.port, clients)]
    if sp.node_port:
        ways.append(("node port", node.node_ip(v6), sp.node_port, clients))
    ways += [("external IP", ip, sp.port, clients) for ip in sp.external_ips]
    allowed = tuple((Origin.EXTERNAL, a) for a in (_first_address(c) for c in sp.source_ranges) if a)
    ways += [("load-balancer IP", ip, sp.port, clients + allowed) for ip in sp.load_balancer_ips]
    return ways


def _first_address(cidr: str) -> str:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return ""
    return str(net.network_address + 1) if net.num_addresses > 2 else str(net.network_address)


def _behaviour(result: TraceResult) -> str:
    """Where new connections go, as verify shows it."""
    if result.verdict != Verdict.DNAT:
        return result.verdict.value
    odds = ", ".join(f"{e.destination} {e.probability * 100:.1f} %" for e in
                     sorted(result.endpoints, key=lambda e: e.destination))
    snat = {True: "SNAT", False: "no SNAT", None: "SNAT on some paths"}[result.masquerade]
    return f"DNAT to {odds}, {snat}"


def _check_behaviour(report: Report, actual: Ruleset, expected: Ruleset, graph: NodeRules,
                     services: Sequence[ServicePortPlan], node: NodeContext) -> None:
    """Each service port's ways in, per client kind: the node's rules must send new
    connections where the plan's rules do (verdict, endpoints and odds, SNAT)."""
    local = node.local
    for sp in services:
        spn = str(sp.name)
        for kind, address, port, clients in _ways_in(sp, node):
            for origin, src in dict.fromkeys(clients):
                packet = Packet(src, address, port, sp.protocol.value.lower(), origin)
                want = _behaviour(trace(expected, packet, local))
                have = _behaviour(trace(actual, packet, local, graph.ipsets))
                if want != have and not have.startswith("UNKNOWN"):
                    report.findings.append(Finding(
                        "behaviour-differs", "error", f"{spn}: {kind} {address}:{port} from {origin} {src}: the "
                        f"node's rules give {have}; the API says {want}", sp.name.service, spn))


def _describe_plan(sp: ServicePortPlan) -> str:
    if sp.has_internal_endpoints:
        return f"{len(sp.cluster_endpoints)} endpoint(s) behind {sp.cluster_ip}:{sp.port}"
    return f"{sp.internal_filter or 'REJECT'} for {sp.cluster_ip}:{sp.port}"


def _check_service_chains(report: Report, actual: Ruleset, expected: Ruleset, names: IptablesNames,
                          exp_names: IptablesNames, services: Sequence[ServicePortPlan],
                          missing_services: set[str], chains_by_service: Mapping[Any, tuple[str, ...]]) -> None:
    actual_nat = actual.table("nat")
    actual_chains = actual_nat.chains if actual_nat is not None else {}
    owned: dict[tuple[str, str], list[str]] = {}
    for chain, owner in names.owners.items():
        owned.setdefault((owner.service_port, owner.protocol), []).append(chain)
    exp_sep = {c: o.endpoint for c, o in exp_names.owners.items() if o.role == "endpoint"}
    # A jump to a SEP chain that is gone still names its endpoint through the plan.
    act_sep = {**exp_sep, **{c: o.endpoint for c, o in names.owners.items() if o.role == "endpoint"}}
    for sp in services:
        spn = str(sp.name)
        if spn in missing_services:
            continue
        service = sp.name.service
        wanted = chains_by_service.get(sp.name, ())
        have = owned.get((spn, sp.protocol.value.lower()), []) + owned.get((spn, ""), [])
        reported: set[str] = set()
        for chain in wanted:
            if chain in actual_chains:
                continue
            planned_owner = exp_names.owner(chain)
            if chain.startswith(SEP_PREFIX):
                endpoint = planned_owner.endpoint if planned_owner else "?"
                reported.add(endpoint)
                report.findings.append(Finding(
                    "missing-endpoint", "error", f"{spn}: endpoint {endpoint} has no {chain} chain on this node",
                    service, spn, chain))
            else:
                report.findings.append(Finding(
                    "missing-chain", "error", f"{spn}: chain {chain} is missing", service, spn, chain))
        for chain in wanted:
            if chain not in actual_chains:
                continue
            exp_chain = expected.chain("nat", chain)
            act_chain = actual.chain("nat", chain)
            exp_rules = exp_chain.rules if exp_chain else ()
            act_rules = act_chain.rules if act_chain else ()
            if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
                want_odds = endpoint_odds(exp_rules, exp_sep)
                have_odds = endpoint_odds(act_rules, act_sep)
                for ep in sorted(set(want_odds) - set(have_odds) - reported):
                    report.findings.append(Finding(
                        "missing-endpoint", "error", f"{spn}: {chain} does not send traffic to endpoint {ep}",
                        service, spn, chain))
                for ep in sorted(set(have_odds) - set(want_odds)):
                    report.findings.append(Finding(
                        "extra-endpoint", "error", f"{spn}: {chain} still sends {have_odds[ep] * 100:.1f} % of new "
                        f"connections to {ep}, which is not a usable endpoint in the API", service, spn, chain))
                # With the same endpoints on both sides, their odds must match too (when the
                # endpoints differ, the odds shift with them and say nothing more).
                same = set(want_odds) == set(have_odds)
                wrong = [ep for ep in sorted(want_odds) if same and abs(want_odds[ep] - have_odds[ep]) > ODDS_TOLERANCE]
                if wrong:
                    detail = ", ".join(f"{ep} {have_odds[ep] * 100:.1f} % (want {want_odds[ep] * 100:.1f} %)"
                                       for ep in wrong)
                    report.findings.append(Finding("wrong-odds", "error", f"{spn}: {chain}: {detail}",
                                                   service, spn, chain))
                if set(want_odds) != set(have_odds) or wrong:
                    continue  # the rule lists differ for reasons already named
            missing, extra = _diff(exp_rules, act_rules)
            if missing or extra:
                report.findings.append(Finding(
                    "rules-differ", "error", f"{spn}: chain {chain} differs from the plan", service, spn, chain,
                    tuple(missing), tuple(extra)))
        for chain in have:
            if chain in wanted:
                continue
            leftover = names.owner(chain)
            what = f"endpoint {leftover.endpoint}" if leftover and leftover.endpoint else "a chain"
            report.findings.append(Finding(
                "stale-chain", "warning", f"{spn}: {chain} ({what}) is left over: the plan has no use for it",
                service, spn, chain))


def _check_orphans(report: Report, names: IptablesNames, planned: set[str]) -> None:
    for chain in names.unowned:
        report.findings.append(Finding(
            "orphan-chain", "warning", f"nat {chain}: a KUBE- service chain that nothing owns (no comment, no "
            "Service hash and no rule leading to it explains it)", chain=chain))
    for chain, owner in names.owners.items():
        if owner.service_port not in planned:
            report.findings.append(Finding(
                "stale-chain", "warning", f"nat {chain} belongs to {owner.service_port}"
                f"{' endpoint ' + owner.endpoint if owner.endpoint else ''}, which the API does not have",
                owner.service, owner.service_port, chain))


def _check_fixed(report: Report, actual: Ruleset, expected: Ruleset,
                 have_groups: Mapping[tuple[str, str, str], list[Rule]]) -> None:
    for table, chain in FIXED_CHAINS:
        exp = expected.chain(table, chain)
        act = actual.chain(table, chain)
        if act is None:
            report.findings.append(Finding("missing-chain", "error", f"{table} {chain} is missing", chain=chain))
            continue
        missing, extra = _diff(exp.rules if exp else (), act.rules)
        if missing or extra:
            report.findings.append(Finding("rules-differ", "error", f"{table} {chain} differs from the plan",
                                           chain=chain, missing=tuple(missing), extra=tuple(extra)))
    exp_services = expected.chain("nat", "KUBE-SERVICES")
    exp_last = [r for r in (exp_services.rules if exp_services else ()) if r.target == "KUBE-NODEPORTS"]
    act_last = have_groups.get(("nat", "KUBE-SERVICES", ""), [])
    missing, extra = _diff(exp_last, [r for r in act_last if r.target == "KUBE-NODEPORTS"])
    if missing or extra:
        report.findings.append(Finding("rules-differ", "error", "nat KUBE-SERVICES: the jump to KUBE-NODEPORTS "
                                       "differs from the plan", chain="KUBE-SERVICES", missing=tuple(missing),
                                       extra=tuple(extra)))
    ks = actual.chain("nat", "KUBE-SERVICES")
    if ks is None or not ks.rules:
        report.findings.append(Finding("flushed", "error", "nat KUBE-SERVICES is empty or missing: no Service "
                                       "works on this node (flushed by hand, or the proxy is not running)",
                                       chain="KUBE-SERVICES"))


def _check_jumps(report: Report, actual: Ruleset) -> None:
    for jump in JUMP_RULES:
        if jump.target == "KUBE-FIREWALL":
            continue  # kubelet's chain: kube-proxy only duplicates the jump
        want = rule_key(parse_rule_args(jump.table, jump.chain, list(jump.args())))
        candidates = actual.candidates(jump.table, jump.chain, None) or ()
        if not any(rule_key(r) == want for _, r in candidates):
            report.findings.append(Finding(
                "missing-jump", "error", f"{jump.table} {jump.chain} does not jump to {jump.target}: "
                "packets never reach the proxy's rules there", chain=jump.chain,
                missing=(jump.restore_line(),)))


