"""`explain svc/NAME`: where a new connection to a Service goes on one node, and why.

Theory of operation: for every port of the Service and every way in (the cluster IP, the
node port on each node address, external IPs, load-balancer IPs) and every kind of client (a
pod on this node, the node itself, a client outside the cluster), build the first packet of
a connection and trace it through the node's real rules (each mode's Reader, `inspect.paths`). Each path becomes
one plain sentence ("pod → 10.96.0.10:80 → 1 of 3 endpoints, 33.3 % each, no SNAT") and the
list of rules it crossed. A path a socket hook decided (eBPF mode: the pod's or the node's
connect() rewritten, or refused, before any packet exists) says so instead: "connect() is
rewritten to 1 of 3 endpoints, 33.3 % each, no NAT: the socket was rewritten".

The Service facts (cluster IP, ports, node port, external and load-balancer IPs, source
ranges) come from the Service object when there is one (API or `--from-file`); with only a
rules dump they are read back from the rules: kube-proxy's entry-rule comments in iptables
mode (`"ns/svc:port cluster IP"`, `loadbalancer IP`, `external IP`, the node-port rules,
the filter REJECT/DROP twins for ports without endpoints), the maps and chain names in
nftables mode, the `names` map in eBPF mode. IPVS virtual services carry no names, so IPVS
needs the Service objects.

Then the classic traps are named, from the traces rather than from the API (the rules are
what packets meet): no endpoints (REJECT), a Local traffic policy without a local endpoint on
this node (DROP for outside clients), load-balancer source ranges (other sources dropped,
pods included), ClientIP affinity, hairpin traffic of endpoints on this node, a ruleset not
hooked into the built-in chains, rules the tracer cannot evaluate.

A Request may narrow the work to some ports, clients and ways in (`WayIn`: what
`explain ADDRESS` asks about, see `inspect.addresses`). `as_dict` (the `-o json` contract) and
`render_dot` (the chain graph, for Graphviz) are views here; the text view, the answer first
and the rule walk on demand, is `inspect.explaintext`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from kubectl_proxyctl.inspect.graph import RuleGraph
from kubectl_proxyctl.model import ClusterState, Endpoint, ServicePort
from kubectl_proxyctl.modes import reader
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.facts import Edge, EntryFacts, PortFacts, Problem
from kubectl_proxyctl.modes.findings import Finding
from kubectl_proxyctl.modes.iptables.names import parse_comment
from kubectl_proxyctl.modes.nodecontext import (
    EXTERNAL_CLIENT_IP,
    EXTERNAL_CLIENT_IP_V6,
    NodeContext,
)
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.modes.tracing import (
    PROXY_OWNER,
    SOCKET_HOOK,
    Origin,
    Packet,
    Step,
    TraceResult,
    Verdict,
    foreign_step,
)

CLIENTS = ("pod", "node", "external")


@dataclass
class PathResult:
    client: str
    source: str
    result: TraceResult
    sentence: str

    def rules(self) -> list[str]:
        return [step_text(s) for s in self.steps()]

    def steps(self) -> list[Step]:
        """The rules that mattered, first appearance first (`crossed` of every outcome).
        An nft verdict map that forks the walk (`numgen random mod N vmap { … }`) is listed
        once, not once per endpoint: the endpoints and their odds say where it sends."""
        seen: set[tuple[str, str, int, str]] = set()
        out: list[Step] = []
        for outcome in self.result.outcomes:
            for step in crossed(outcome.steps):
                key = (step.table, step.chain, step.index, "" if " vmap " in step.rule else step.action)
                if key not in seen:
                    seen.add(key)
                    out.append(step)
        return out

    def as_dict(self) -> dict[str, Any]:
        r = self.result
        doc = {
            "client": self.client,
            "source": self.source,
            "verdict": r.verdict.value,
            "masquerade": r.masquerade,
            "affinity_seconds": r.affinity_seconds,
            "endpoints": endpoints_doc(r),
            "rules": self.rules(),
            "sentence": self.sentence,
            "notes": list(r.notes),
            "steps": [
                {"table": s.table, "chain": s.chain, "position": s.index, "rule": s.rule, "action": s.action,
                 "probability": round(s.probability, 6), "owner": s.owner or None}
                for s in self.steps()
            ],
            # the answer under each alternative, when it depends on something the rules leave open
            "depends_on": [{"condition": condition, "verdict": b.verdict.value, "masquerade": b.masquerade,
                            "endpoints": endpoints_doc(b), "sentence": outcome_phrase(b)}
                           for condition, b in r.branches],
            "settled": list(r.settled),  # open conditions every alternative answers alike
        }
        return doc


def endpoints_doc(r: TraceResult) -> list[dict[str, Any]]:
    """A path's destinations for `-o json`: `dnat_by` names who rewrote it (kube-proxy, or
    other software such as a CNI's hostPort, whose destination is no Service endpoint)."""
    out = []
    for e in r.endpoints:
        ip, port = _split_endpoint(e.destination)
        out.append({"ip": ip, "port": port, "probability": round(e.probability, 6), "masquerade": e.masquerade,
                    "dnat_by": e.dnat_by or PROXY_OWNER})
    return out


def crossed(steps: Sequence[Step]) -> list[Step]:
    """The steps of one way through the rules that mattered: a jump into a chain where no
    rule matched (e.g. FORWARD → KUBE-PROXY-FIREWALL for an allowed packet) is left out."""
    out: list[Step] = []
    for i, step in enumerate(steps):
        verb, _, target = step.action.partition(" ")
        if verb in ("jump", "goto") and not any(s.chain == target for s in steps[i + 1:]):
            continue
        out.append(step)
    return out


@dataclass
class EntryResult:
    facts: EntryFacts
    paths: list[PathResult] = field(default_factory=list)


@dataclass
class PortResult:
    facts: PortFacts
    entries: list[EntryResult] = field(default_factory=list)
    desired: dict[str, Any] | None = None  # from the plan, with cluster access


@dataclass
class Explanation:
    service: str
    node: str | None
    mode: Mode
    ports: list[PortResult]
    problems: list[Problem]
    sources: tuple[str, ...] = ()
    service_type: str = ""  # ClusterIP, NodePort, LoadBalancer (from the rules: the widest way in found)
    target: str = ""  # `explain ADDRESS`: which Service port owns the address, in words
    client: str = ""  # `--from pod/NAME`: the client pod, in words
    # other software's rules that take or stop the Service's packets (foreign-dnat, foreign-drop, …)
    findings: list[Finding] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        ports = []
        for p in self.ports:
            entry_dicts = []
            for e in p.entries:
                entry_dicts.append({
                    "kind": e.facts.kind,
                    "address": e.facts.address,
                    "port": e.facts.port,
                    "paths": [path.as_dict() for path in e.paths],
                })
            port: dict[str, Any] = {
                "name": p.facts.name,
                "protocol": p.facts.protocol,
                "port": p.facts.port,
                "service_port": p.facts.service_port,
                "facts_from": p.facts.source,
                "entries": entry_dicts,
            }
            if p.desired is not None:
                port["desired"] = p.desired
            ports.append(port)
        doc: dict[str, Any] = {
            "service": self.service,
            "type": self.service_type or None,
            "node": self.node,
            "backend": self.mode.value,
            "ports": ports,
            "problems": [p.as_dict() for p in self.problems],
            "findings": [f.as_dict() for f in self.findings],
            "sources": list(self.sources),
        }
        if self.target:
            doc["target"] = self.target
        if self.client:
            doc["client"] = self.client
        return doc


# --- helpers ---------------------------------------------------------------------------


def _split_endpoint(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    return host, int(port)


def step_text(step: Step) -> str:
    """A traversed rule as people write it: `-A CHAIN …`, `add rule ip kube-proxy CHAIN …`
    (an nft step's table is `family name`), `ipvs VS: -r …`, `bpf PROGRAM: MAP …` (a socket
    hook's map lookup)."""
    if step.table == "ipvs":
        return f"ipvs {step.chain}: {step.rule}"
    if step.table == SOCKET_HOOK:
        return f"bpf {step.chain}: {step.rule}"
    if " " in step.table:
        return f"add rule {step.table} {step.chain} {step.rule}"
    if step.index == 0:
        return f":{step.chain} {step.action}"
    return f"-A {step.chain} {step.rule}".rstrip()


def address_text(ip: str | None, port: int) -> str:
    if ip is None:
        return f"<node>:{port}"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def percent(p: float) -> str:
    return f"{p * 100:.1f} %"


def sentence(client: str, entry: EntryFacts, r: TraceResult) -> str:
    """One path in one line: "pod → 10.96.0.10:80 → 1 of 3 endpoints, 33.3 % each, no SNAT"."""
    return f"{client} → {address_text(entry.address, entry.port)} → {outcome_phrase(r)}"


def outcome_phrase(r: TraceResult, name: Callable[[str], str] = str, of: int = 0) -> str:
    """Where the packet ends up, with the odds: the part of a sentence after the address.
    `name` turns an `ip:port` into what to call the endpoint (e.g. its pod); `of` is how many
    endpoints the service port has, when the path reaches only some of them (0: unknown)."""
    if r.branches:
        return "; ".join(f"if {c}: {outcome_phrase(b, name, of)}" if c != "otherwise" else
                         f"otherwise: {outcome_phrase(b, name, of)}" for c, b in r.branches)
    by_socket = r.verdict in (Verdict.DNAT, Verdict.REJECT) and socket_rewrite(r)
    call = "connect() or sendmsg()" if r.packet.protocol == "udp" else "connect()"
    taken = _foreign_phrase(r)
    if taken:
        return taken
    if r.verdict == Verdict.DNAT:
        what = _endpoints_phrase(r, name, of)
        if by_socket:
            text = f"{call} is rewritten to {what}, no NAT: the socket was rewritten"
            if r.affinity_seconds:
                text += f", sticky per pod network namespace for {r.affinity_seconds} s"
            return text
        if r.masquerade is True:
            snat = "SNAT to the node"
        elif r.masquerade is False:
            snat = "no SNAT"
        else:
            snat = "SNAT on some paths"
        text = f"{what}, {snat}"
        if r.affinity_seconds:
            text += f", sticky per client IP for {r.affinity_seconds} s"
        return text
    if r.verdict == Verdict.REJECT:
        return f"{call} fails with ECONNREFUSED (no endpoints)" if by_socket else \
            "REJECT (connection refused at once)"
    if r.verdict == Verdict.DROP:
        return f"DROP{_after_foreign_dnat(r)} (the connection times out)"
    if r.verdict == Verdict.ACCEPT:
        return "ACCEPT (for the node itself, not rewritten)"
    if r.verdict == Verdict.NONE:
        return "no service rule matches: the packet goes on unchanged"
    return "cannot tell: " + "; ".join(r.notes)


def _foreign_phrase(r: TraceResult) -> str:
    """Other software's rule decided every way through: say whose, and never call its
    destination a Service endpoint."""
    steps = [foreign_step(o) for o in r.outcomes]
    if not steps or any(s is None for s in steps):
        return ""
    first = steps[0]
    assert first is not None
    where = f"{first.owner}'s rule in {first.table}/{first.chain}"
    if r.verdict == Verdict.DNAT:
        targets = ", ".join(e.destination for e in r.endpoints)
        snat = "SNAT to the node" if r.masquerade else "no SNAT" if r.masquerade is False else "SNAT on some paths"
        return f"{targets}, rewritten by {where}: not an endpoint of the Service, {snat}"
    if r.verdict in (Verdict.DROP, Verdict.REJECT):
        how = f"{first.table}/{first.chain} policy" if first.index == 0 else f"rule in {first.table}/{first.chain}"
        return f"{r.verdict.value} by {first.owner}'s {how}" + _after_foreign_dnat(r) + (
            " (the connection times out)" if r.verdict == Verdict.DROP else " (connection refused at once)")
    return ""


def _after_foreign_dnat(r: TraceResult) -> str:
    """", after CNI portmap's rule in nat/CNI-DN-… rewrote it to …" when one did."""
    for o in r.outcomes:
        for s in o.steps:
            if s.action.startswith("DNAT") and s.foreign:
                return (f", after {s.owner}'s rule in {s.table}/{s.chain} rewrote it to "
                        f"{s.action.partition(' ')[2]} (not an endpoint of the Service)")
    return ""


def _endpoints_phrase(r: TraceResult, name: Callable[[str], str], of: int) -> str:
    """Which endpoints a DNAT path reaches, with the odds ("1 of 3 endpoints, 33.3 % each")."""
    eps = r.endpoints
    if any(e.foreign for e in eps):
        plain = name

        def name(destination: str) -> str:  # noqa: F811 — the foreign ones say who sent them there
            by = next((e.dnat_by for e in eps if e.destination == destination and e.foreign), "")
            return f"{plain(destination)} (rewritten by {by}, not a Service endpoint)" if by else plain(destination)
    total = sum(e.probability for e in eps)
    probs = [e.probability for e in eps]
    if len(eps) == 1:
        what = f"endpoint {name(eps[0].destination)}"
        if total < 0.9999:
            what += f" ({percent(total)}; the rest: {_other_verdicts(r)})"
    elif max(probs) - min(probs) < 1e-6:
        what = f"1 of {len(eps)} endpoints, {percent(probs[0])} each"
        if len(eps) < of:
            what = f"1 of {len(eps)} endpoints ({', '.join(name(e.destination) for e in eps)}), " \
                   f"{percent(probs[0])} each"
        if total < 0.9999:
            what += f" (the rest: {_other_verdicts(r)})"
    else:
        what = ", ".join(f"{name(e.destination)} {percent(e.probability)}" for e in eps)
    return what


def socket_rewrite(r: TraceResult) -> bool:
    """Did a socket hook decide this path (eBPF mode: connect() rewritten or refused, no
    packet rewritten, no NAT)?"""
    decided = [o for o in r.outcomes if o.verdict in (Verdict.DNAT, Verdict.REJECT)]
    return bool(decided) and all(o.steps and o.steps[-1].table == SOCKET_HOOK for o in decided)


def _other_verdicts(r: TraceResult) -> str:
    parts = [f"{o.verdict.value} {percent(o.probability)}" for o in r.outcomes if o.verdict != Verdict.DNAT]
    return ", ".join(parts) or "none"


# --- Service facts ---------------------------------------------------------------------


def facts_from_state(state: ClusterState, selector: ServiceSelector, family_v6: bool) -> list[PortFacts]:
    out: list[PortFacts] = []
    for sp in state.service_ports(selector.key):
        out.append(_facts_of_port(sp, state.endpoints_of(sp.name), family_v6))
    return out


def _same_family(ip: str, v6: bool) -> bool:
    return (":" in ip) == v6


def _facts_of_port(sp: ServicePort, endpoints: Sequence[Endpoint], v6: bool) -> PortFacts:
    facts = PortFacts(str(sp.name), sp.name.port, sp.protocol.value, sp.port, source="api",
                      endpoints=tuple(e for e in endpoints if _same_family(e.ip, v6)))
    for ip in sp.cluster_ips:
        if _same_family(ip, v6):
            facts.entries.append(EntryFacts("ClusterIP", ip, sp.port))
    if sp.node_port:
        facts.entries.append(EntryFacts("NodePort", None, sp.node_port))
    for ip in sp.external_ips:
        if _same_family(ip, v6):
            facts.entries.append(EntryFacts("ExternalIP", ip, sp.port))
    ranges = tuple(c for c in sp.load_balancer_source_ranges if _same_family(c, v6))
    for ip in sp.load_balancer_ips:
        if _same_family(ip, v6):
            facts.entries.append(EntryFacts("LoadBalancer", ip, sp.port, ranges))
    return facts


# --- the explanation -------------------------------------------------------------------


@dataclass(frozen=True)
class WayIn:
    """One way into a service port: a kind of entry point, its address and port. `address`
    None is the node port on every address of the node the rules belong to."""

    kind: str  # ClusterIP, NodePort, ExternalIP, LoadBalancer
    address: str | None
    port: int
    protocol: str  # TCP, UDP, SCTP

    def admits(self, entry: EntryFacts, protocol: str) -> bool:
        if (entry.kind, entry.port, protocol.upper()) != (self.kind, self.port, self.protocol.upper()):
            return False
        return self.address is None or _same_address(entry.address, self.address)


def _same_address(a: str | None, b: str) -> bool:
    try:
        return a is not None and ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


@dataclass(frozen=True)
class Request:
    selector: ServiceSelector
    ports: tuple[str, ...] = ()  # port names or numbers; empty: all
    clients: tuple[str, ...] = CLIENTS
    source: str | None = None
    ways_in: tuple[WayIn, ...] = ()  # only these entry points; empty: all


def _wanted(p: PortFacts, ports: Sequence[str]) -> bool:
    if not ports:
        return True
    return any(w == p.name or (w.isdecimal() and p.port == int(w)) or w.lower() == p.name.lower() for w in ports)


def explain(
    graph: RuleGraph,
    mode: Mode,
    request: Request,
    node: NodeContext,
    state: ClusterState | None = None,
) -> Explanation:
    """Trace every port, entry point and client of one Service on one node (those the
    request asks for: some ports, clients, or ways in)."""
    selector = request.selector
    problems: list[Problem] = []
    mode_reader = reader(mode)
    known = state is not None and selector.key in state.services
    found = mode_reader.read_ports(graph, state, selector, facts=not known)
    v6 = found.v6
    if state is not None and known:
        facts = facts_from_state(state, selector, v6)
        svc = state.services[selector.key]
        if not svc.proxied:
            problems.append(Problem("warning", f"the proxy skips this Service: {svc.skip_reason}"))
    elif found.facts is not None:
        facts = found.facts
    else:
        facts = []
        if found.unnamed:
            problems.append(Problem("error", found.unnamed))
    if not facts and not any(p.severity == "error" for p in problems):
        problems.append(Problem("error", f"no rules for {selector.key} on this node ({mode} mode): the Service "
                                         "does not exist, has no ports, or the proxy has not programmed it"))
    facts = [f for f in facts if _wanted(f, request.ports)]
    if request.ports and not facts:
        problems.append(Problem("error", f"{selector.key} has no port {', '.join(request.ports)}"))

    problems += _layout_problems(graph, mode)
    if not node.ips_known:
        problems.append(Problem("warning", f"the node's address is unknown (pass --node-ip): NodePort paths use "
                                           f"{node.node_ip(v6)} as a stand-in"))

    results: list[PortResult] = []
    for f in facts:
        port = PortResult(f)
        endpoint_ips = [e.ip for e in f.endpoints or ()]
        port_v6 = any(":" in (e.address or "") for e in f.entries)
        for entry in f.entries:
            addresses: Iterable[str | None] = [entry.address]
            if entry.kind == "NodePort" and entry.address is None:
                addresses = [ip for ip in node.ips if (":" in ip) == port_v6] if node.ips_known else [None]
            for address in addresses:
                e = EntryFacts(entry.kind, address, entry.port, entry.source_ranges)
                if request.ways_in and not any(w.admits(e, f.protocol) for w in request.ways_in):
                    continue
                er = EntryResult(e)
                for client in request.clients:
                    er.paths += _paths(graph, mode, f, e, client, node, request.source, endpoint_ips, port_v6)
                port.entries.append(er)
        results.append(port)

    if request.ways_in:
        results = [p for p in results if p.entries]
    problems += _trap_problems(results)
    if state is not None:
        problems += _hairpin_problems(results, node, mode)
    if mode == Mode.IPVS:
        problems += _ipvs_notes(results, node)
    kind = state.services[selector.key].type.value if state is not None and known else _type_of(facts)
    return Explanation(selector.key, node.name, mode, results, _unique(problems), graph.sources, kind,
                       findings=foreign_findings(selector.key, results))


def foreign_findings(service: str, results: Sequence[PortResult]) -> list[Finding]:
    """Other software's rules that take the Service's packets before kube-proxy's do (a
    hostPort DNAT, Docker's DNAT) or stop them (a firewall's DROP, Docker's FORWARD policy):
    one finding per rule, way in and kind, naming the clients it concerns."""
    found: dict[tuple[str, ...], tuple[Finding, list[str]]] = {}
    for port in results:
        spn = port.facts.service_port
        for er in port.entries:
            where = f"{er.facts.kind} {address_text(er.facts.address, er.facts.port)}"
            for path in er.paths:
                for o in path.result.all_outcomes:
                    for finding in _foreign_of(service, spn, where, o):
                        key = (finding.kind, spn, where, finding.chain, finding.message)
                        clients = found.setdefault(key, (finding, []))[1]
                        if path.client not in clients:
                            clients.append(path.client)
    out = []
    for finding, clients in found.values():
        who = " and ".join(_CLIENT_WORDS.get(c, c) for c in clients)
        out.append(replace(finding, message=f"{finding.message} (for {who})"))
    return out


def _entry_of(steps: Sequence[Step], decided: Step) -> str:
    """The first chain of the software that decided: where its rules took the packet."""
    for step in steps:
        if step.owner == decided.owner:
            verb, _, target = step.action.partition(" ")
            return target if verb in ("jump", "goto") and target else step.chain
    return decided.chain


def _rule_of(step: Step) -> str:
    return f"{step.table}/{step.chain} policy" if step.index == 0 else f"{step.table}/{step.chain} rule {step.index}"


def _foreign_of(service: str, spn: str, where: str, o: Any) -> list[Finding]:
    """The findings of one way through: a foreign DNAT on it, a foreign rule that stopped it."""
    out = []
    dnat = next((s for s in o.steps if s.action.startswith("DNAT") and s.foreign), None)
    if dnat is not None:
        what = "a hostPort rule" if dnat.owner == "CNI portmap" else f"{dnat.owner}'s rule"
        entry = _entry_of(o.steps, dnat)
        target = dnat.action.partition(" ")[2] or o.destination
        out.append(Finding("foreign-dnat", "warning", f"{spn}: {where} is taken by {what} in {entry} before "
                           f"kube-proxy's rules see it: DNAT to {target} ({_rule_of(dnat)}), which is not an "
                           "endpoint of the Service", service, spn, entry))
    stop = foreign_step(o) if o.verdict in (Verdict.DROP, Verdict.REJECT) else None
    if stop is not None:
        entry = _entry_of(o.steps, stop) if stop.index else stop.chain
        who = f"{stop.owner}'s {stop.table}/{stop.chain} policy ({stop.action})" if stop.index == 0 else \
            f"{stop.owner}'s rule in {entry} ({_rule_of(stop)})"
        proxied = any(s.action.startswith("DNAT") and not s.foreign for s in o.steps)
        before = "kube-proxy sends it to an endpoint, then " if proxied else ""
        out.append(Finding(f"foreign-{o.verdict.value.lower()}", "warning",
                           f"{spn}: {where}: {before}{who} {'drops' if o.verdict == Verdict.DROP else 'rejects'} it",
                           service, spn, entry))
    return out


def _type_of(facts: Sequence[PortFacts]) -> str:
    """The Service's type as the rules show it: the widest way in any port has."""
    kinds = {e.kind for f in facts for e in f.entries}
    if "LoadBalancer" in kinds:
        return "LoadBalancer"
    if "NodePort" in kinds:
        return "NodePort"
    return "ClusterIP" if kinds else ""


def _paths(graph: RuleGraph, mode: Mode, facts: PortFacts, entry: EntryFacts, client: str, node: NodeContext,
           source: str | None, endpoint_ips: Sequence[str], v6: bool) -> list[PathResult]:
    dst = entry.address or node.node_ip(v6)
    protocol = facts.protocol.lower()
    sources: list[str]
    if source:
        sources = [source]
    elif client == "pod":
        sources = [node.pod_source(endpoint_ips, v6)]
    elif client == "node":
        sources = [node.node_ip(v6)]
    else:
        sources = [EXTERNAL_CLIENT_IP_V6 if v6 else EXTERNAL_CLIENT_IP]
        if entry.source_ranges:
            inside = _first_host(entry.source_ranges[0])
            outside = _outside(entry.source_ranges, v6)
            sources = [s for s in (inside, outside) if s]
    out = []
    for src in sources:
        packet = Packet(src, dst, entry.port, protocol, Origin(client))
        result = reader(mode).trace(graph, packet, node.local)
        out.append(PathResult(client, src, result, sentence(client, entry, result)))
    return out


def _first_host(cidr: str) -> str | None:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return str(net.network_address + 1) if net.num_addresses > 2 else str(net.network_address)


def _outside(cidrs: Sequence[str], v6: bool) -> str | None:
    nets = []
    for c in cidrs:
        try:
            nets.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            continue
    candidates = ((EXTERNAL_CLIENT_IP_V6, "2001:db8:1::200") if v6 else
                  (EXTERNAL_CLIENT_IP, "198.51.100.200", "192.0.2.200", "100.64.0.200"))
    for candidate in candidates:
        addr = ipaddress.ip_address(candidate)
        if not any(addr.version == n.version and addr in n for n in nets):
            return candidate
    return None


def _unique(problems: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _layout_problems(graph: RuleGraph, mode: Mode) -> list[Problem]:
    return reader(mode).layout_problems(graph) + [Problem("warning", note) for note in graph.notes]


def _trap_problems(results: Sequence[PortResult]) -> list[Problem]:
    out: list[Problem] = []
    for port in results:
        spn = port.facts.service_port
        unknown: dict[str, list[str]] = {}  # what could not be decided → the ways and clients it concerns
        for er in port.entries:
            where = f"{er.facts.kind} {address_text(er.facts.address, er.facts.port)}"
            no_local: list[str] = []  # clients dropped for want of a local endpoint
            reached: list[str] = []  # clients that reach an endpoint
            for path in er.paths:
                r = path.result
                kinds = _path_kinds(r)
                if r.verdict == Verdict.DNAT and path.client not in reached:
                    reached.append(path.client)
                if r.verdict == Verdict.REJECT and "unserved-port" in kinds and "no-endpoints" not in kinds:
                    out.append(Problem("error", f"{spn}: {where} from {path.client} is rejected by cluster-ips-check: no "
                                                "service rule took the packet, so it counts as a port the cluster IP "
                                                "does not serve"))
                elif r.verdict == Verdict.REJECT:
                    out.append(Problem("error", f"{spn} has no endpoints: connections to {where} are rejected"))
                elif r.verdict == Verdict.DROP and "no-local-endpoints" in kinds:
                    if er.facts.kind == "ClusterIP":
                        out.append(Problem("warning", f"{spn}: internalTrafficPolicy Local and no endpoint on this "
                                                      f"node: {where} drops traffic from this node"))
                    elif path.client not in no_local:
                        no_local.append(path.client)
                elif r.verdict == Verdict.DROP and path.client == "pod" and er.facts.kind == "LoadBalancer":
                    out.append(Problem("warning", f"{spn}: loadBalancerSourceRanges drop pods calling {where} "
                                                  f"from {path.source} (pods are not in the allowed ranges)"))
                elif r.verdict == Verdict.DROP and ("firewall-drop" in kinds or "firewall-rest" in kinds
                                                    or any("firewall" in o.reason for o in r.outcomes)):
                    out.append(Problem("warning", f"{spn}: loadBalancerSourceRanges: {where} drops sources outside "
                                                  f"{', '.join(er.facts.source_ranges) or 'the allowed ranges'}"))
                elif r.verdict == Verdict.UNKNOWN:
                    unknown.setdefault("; ".join(r.notes), []).append(f"{where} from {path.client}")
                if r.affinity_seconds:
                    out.append(Problem("warning", f"{spn}: sessionAffinity ClientIP ({r.affinity_seconds} s): each "
                                                  "client sticks to one endpoint; the odds shown are for a client's "
                                                  "first connection, and few clients spread load unevenly"))
            if no_local:
                out.append(Problem("warning", _no_local_endpoint_message(spn, where, no_local, reached)))
        for why, ways in unknown.items():
            shown = ways[0] if len(ways) == 1 else f"{ways[0]} and {len(ways) - 1} more way(s) in and client(s)"
            out.append(Problem("warning", f"{spn} {shown}: {why}"))
    return out


_CLIENT_WORDS = {"external": "outside clients", "pod": "pods", "node": "the node itself"}


def _no_local_endpoint_message(spn: str, where: str, dropped: Sequence[str], reached: Sequence[str]) -> str:
    """externalTrafficPolicy Local without a local endpoint: who is dropped, who still gets through."""
    if list(dropped) == ["external"] and set(reached) >= {"pod", "node"}:
        return (f"{spn}: externalTrafficPolicy Local and no endpoint on this node: outside clients of {where} are "
                "dropped here (pods and the node itself still reach the cluster-wide endpoints)")
    who = " and ".join(_CLIENT_WORDS.get(c, c) for c in dropped)
    text = f"{spn}: externalTrafficPolicy Local and no endpoint on this node: {who} calling {where} are dropped here"
    if reached:
        text += f" ({' and '.join(_CLIENT_WORDS.get(c, c) for c in reached)} still reach the cluster-wide endpoints)"
    return text


def _path_kinds(r: TraceResult) -> set[str]:
    """What the rules that decided a path were for: kube-proxy's comment kinds (iptables), or
    for nftables the map or chain that dropped or rejected it (a no-endpoints verdict map
    dropping is a Local traffic policy without a local endpoint, rejecting through
    reject-chain is no endpoints at all; cluster-ips-check rejecting is a cluster IP packet
    that no service rule DNATed)."""
    kinds = {c[1] for c in (parse_comment(_step_comment(s)) for o in r.outcomes for s in o.steps) if c is not None}
    for o in r.outcomes:
        if not o.steps or o.verdict != Verdict.DROP:
            continue
        last = o.steps[-1]
        if "@no-endpoint-services" in last.rule or "@no-endpoint-nodeports" in last.rule:
            kinds.add("no-local-endpoints")
        elif last.chain.startswith("firewall-") and "/" in last.chain:
            kinds.add("firewall-drop")
    for o in r.outcomes:
        if o.steps and o.verdict == Verdict.REJECT:
            chains = {s.chain for s in o.steps}
            if "reject-chain" in chains:
                kinds.add("no-endpoints")
            elif o.steps[-1].chain == "cluster-ips-check":
                kinds.add("unserved-port")
    return kinds


def _step_comment(step: Step) -> str | None:
    marker = '--comment '
    text = step.rule
    i = text.find(marker)
    if i < 0:
        return None
    rest = text[i + len(marker):]
    if rest.startswith('"'):
        end = rest.find('"', 1)
        return rest[1:end] if end > 0 else None
    return rest.split(" ", 1)[0]


def _hairpin_problems(results: Sequence[PortResult], node: NodeContext, mode: Mode) -> list[Problem]:
    out: list[Problem] = []
    how = (" (IPVS mode: the KUBE-LOOP-BACK ipset's rule in KUBE-POSTROUTING masquerades it)"
           if mode == Mode.IPVS else "")
    for port in results:
        if any(p.client == "pod" and socket_rewrite(p.result) for er in port.entries for p in er.paths):
            continue  # connect() was rewritten: no NAT, so no hairpin either
        local = [f"{e.pod_name} ({e.address})" if e.pod_name else e.address
                 for e in port.facts.endpoints or () if node.name and e.node_name == node.name]
        if local:
            out.append(Problem("warning", f"{port.facts.service_port}: endpoint(s) {', '.join(local)} run on this "
                                          f"node: a pod that calls its own Service is SNATed to the node (hairpin){how}; "
                                          "the pod bridge needs hairpin mode for the reply to come back"))
    return out


def _ipvs_notes(results: Sequence[PortResult], node: NodeContext) -> list[Problem]:
    """What IPVS mode does differently, where people get lost (notes, not faults)."""
    addresses = sorted({e.facts.address for port in results for e in port.entries
                        if e.facts.kind in ("ClusterIP", "ExternalIP", "LoadBalancer") and e.facts.address})
    out: list[Problem] = []
    if addresses:
        shown = ", ".join(addresses[:4]) + (", …" if len(addresses) > 4 else "")
        out.append(Problem("note", f"IPVS mode: {shown} {'is a local address' if len(addresses) == 1 else 'are local addresses'} "
                                   "on the node's kube-ipvs0 dummy interface: unlike iptables and nftables modes it "
                                   "answers ping, and connections to ports the Service does not serve are refused by "
                                   "the node itself"))
    if any(node.name and e.node_name == node.name for port in results for e in port.facts.endpoints or ()):
        out.append(Problem("note", "IPVS mode: for pods on this node to reach local endpoints through a Service, the "
                                   "bridge's traffic must pass netfilter (br_netfilter loaded, "
                                   "net.bridge.bridge-nf-call-iptables=1), or the replies skip IPVS's reverse NAT"))
    return out


# --- views -----------------------------------------------------------------------------


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def chain_edges(graph: RuleGraph, mode: Mode, selector: ServiceSelector,
                state: ClusterState | None) -> list[Edge]:
    """The Service's chain graph: entry points → chains → endpoints."""
    return reader(mode).edges(graph, state, selector)


def render_dot(ex: Explanation, graph: RuleGraph, state: ClusterState | None = None) -> str:
    """The Service's chain graph as a Graphviz digraph."""
    selector = ServiceSelector(*ex.service.split("/", 1))
    edges = chain_edges(graph, ex.mode, selector, state)
    lines = [f"digraph {_dot_id(ex.service)} {{", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
    for node in dict.fromkeys(n for e in edges for n in (e.src, e.dst)):
        shape = "ellipse" if node[:1].isdecimal() or node.startswith("[") else "box"
        lines.append(f"  {_dot_id(node)} [shape={shape}];")
    for e in edges:
        attrs = [f"label={_dot_id(e.label)}"] if e.label else []
        if e.dashed:
            attrs.append("style=dashed")
        lines.append(f"  {_dot_id(e.src)} -> {_dot_id(e.dst)}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
