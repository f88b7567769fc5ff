"""Follow one packet through iptables rules: where does it go, and with what odds?

Theory of operation: the tracer reads *rules* (a parsed Ruleset), never a plan, so it
explains kube-proxy's own rules as well as ours. A packet is the first packet of a new
connection: source, destination, destination port, protocol and where it comes from:

* `pod` or `external`: it arrives on an interface: raw/mangle/nat PREROUTING, then the routing
  decision (is the destination, after any DNAT, one of this node's addresses?), then either
  mangle/filter/nat INPUT, or mangle/filter FORWARD and mangle/nat POSTROUTING;
* `node`: a process on the node sends it: mangle/nat/filter OUTPUT, mangle/nat POSTROUTING,
  and INPUT too when it is addressed to the node itself.

In each hook the tables run in netfilter priority order (`HOOKS`, a data table); a packet made
untracked in raw (NOTRACK) skips the nat table, as in the kernel. A chain is
walked rule by rule: a rule matches when every one of its matches does; `-j CHAIN` descends
and comes back on RETURN or at the end, `-g CHAIN` does not come back; ACCEPT ends the table
for this hook, DROP and REJECT end the packet's journey, DNAT rewrites the destination and
ends the nat table, MASQUERADE/SNAT mark the packet as masqueraded, MARK changes the packet
mark that `-m mark` later tests. A built-in chain that runs out applies its policy.

`-m statistic --mode random --probability P` forks the walk: one branch takes the rule with
weight P, the other skips it with weight 1-P. So the result is a set of outcomes with
probabilities, e.g. DNAT to each of three endpoints with 1/3 each. `-m recent --rcheck`
(ClientIP affinity) is evaluated as "this client has no entry yet" (true for a first
connection) and its timeout is reported; `--set` always matches. Conntrack state is NEW, plus
DNAT once a DNAT happened.

`-m set` is evaluated when the caller passes the ipsets' contents (IPVS mode's rules). The
interfaces come from the packet when it names them, else from the node's routes when they
are known (`LocalNode.routes`: a packet arrives on the interface of the route back to its
source, and leaves by the one of the route to its destination). A *match* the tracer cannot
decide (an interface nobody said, an ipset it was not given, a physdev, a module it does not
implement) forks the walk into two worlds, one where the match holds and one where it does
not, and each world remembers what it assumed (`assumed`, so the same question gets the same
answer later on that way, and `-i docker0` settles `-i cali+`). `tracing.summarize` then
tells whether the worlds agree (the answer is certain) or on what the answer depends. A
*target* it cannot follow (a chain the input does not hold, a DNAT to a range) ends that
branch as UNKNOWN with "cannot evaluate ..." instead of a guess; a rule whose other matches
already fail is simply skipped.

Big chains are not walked rule by rule: `Ruleset.candidates` hands over only the rules a
packet to the current destination can match, so one service in a 10,000-service
KUBE-SERVICES costs a few rules, not ten thousand.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

from kubectl_proxyctl.model import NodeInfo
from kubectl_proxyctl.modes.iptables.parse import Match, Rule, Ruleset, parse_mark
from kubectl_proxyctl.modes.iptables.software import policy_owner, rule_owner
from kubectl_proxyctl.modes.tracing import (
    DROP,
    REJECT,
    UNKNOWN,
    AddressSet,
    HookPaths,
    LocalNode,
    Origin,
    Packet,
    Outcome,
    Step,
    TraceResult,
    Verdict,
    arrives_on,
    assumed_value,
    interface_matches,
    leaves_by,
    summarize,
    walk_hooks,
    with_missing_input,
)

# Hooks in the order a packet meets them, each with its tables in priority order.
HOOKS: Mapping[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "nat"),
    "FORWARD": ("mangle", "filter"),
    "OUTPUT": ("raw", "mangle", "nat", "filter"),
    "POSTROUTING": ("mangle", "nat"),
}
HOOK_PATHS = HookPaths(sending=("OUTPUT", "POSTROUTING"), arriving=("PREROUTING",), local_in=("INPUT",),
                       forward=("FORWARD", "POSTROUTING"))

# Targets that change nothing the tracer follows and let the walk go on.
_PASSIVE_TARGETS = frozenset(
    {"LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "CHECKSUM", "TCPMSS", "CLASSIFY", "DSCP", "TOS",
     "TTL", "HL", "SET", "NFACCT", "IDLETIMER", "LED", "SECMARK", "CONNSECMARK"}
)
_PROTOCOL_NUMBERS: Mapping[str, str] = {"6": "tcp", "17": "udp", "132": "sctp", "1": "icmp", "58": "ipv6-icmp"}
_MAX_DEPTH = 64
_MAX_BRANCHES = 20000
_MAX_ASSUMED = 6  # open conditions one way may assume before it stops as UNKNOWN


# --- the walk --------------------------------------------------------------------------

_YES, _NO, _UNKNOWN, _PROB, _FORK = 1, 0, 2, 3, 4

# statuses of a chain walk
_CONTINUE = "continue"  # the rule's target let the walk go on
_RETURN = "return"  # back to the calling chain (RETURN, or the end of a user chain)
_ACCEPT = "accept"  # this table is done for this hook
_DROP, _REJECT, _FAIL = DROP, REJECT, UNKNOWN
_FINAL = (_DROP, _REJECT, _FAIL)


@dataclass(frozen=True)
class _State:
    prob: float
    dst: str
    dport: int
    mark: int
    dnat: str = ""
    masquerade: bool = False
    accepted: str = ""  # the filter rule that accepted the packet, if any
    untracked: bool = False  # NOTRACK in raw: no conntrack, so no nat table
    steps: tuple[Step, ...] = ()
    affinity: tuple[tuple[str, int], ...] = ()
    reason: str = ""
    assumed: tuple[tuple[str, bool], ...] = ()  # open conditions this way assumed (see the module doc)

    def step(self, table: str, chain: str, index: int, rule: str, action: str, owner: str = "") -> "_State":
        return replace(self, steps=self.steps + (Step(table, chain, index, rule, action, self.prob, owner),))


def _address_in(value: str, ip: str) -> bool | None:
    try:
        net = ipaddress.ip_network(value, strict=False)
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if net.version != addr.version:
        return False
    return addr in net


def _port_in(spec: str, port: int) -> bool | None:
    lo, sep, hi = spec.partition(":")
    try:
        low = int(lo) if lo else 0
        high = int(hi) if sep and hi else (65535 if sep else low)
    except ValueError:
        return None
    return low <= port <= high


def _set_subject(flags: str) -> str:
    words = {"src": "source", "dst": "destination"}
    parts = [words.get(f, f) for f in flags.split(",")]
    return f"the {parts[0]}" if len(parts) == 1 else f"({', '.join(parts)})"


def condition_of(m: Match) -> str:
    """The open condition an undecidable match asks, phrased positively (negation apart)."""
    if m.module == "" and m.option == "-i":
        return arrives_on(m.value)
    if m.module == "" and m.option == "-o":
        return leaves_by(m.value)
    if m.module == "set" and m.option == "--match-set" and len(m.values) == 2:
        return f"{_set_subject(m.values[1])} is in ipset {m.values[0]}"
    plain = Match(m.module, m.option, m.values)
    return f"`{'-m ' + m.module + ' ' if m.module else ''}{plain}` matches"


class _Tracer:
    def __init__(
        self, ruleset: Ruleset, packet: Packet, node: LocalNode, ipsets: Mapping[str, AddressSet] | None
    ) -> None:
        self.ruleset = ruleset
        self.packet = packet
        self.node = node
        self.ipsets = ipsets
        self.branches = 0
        self.hook = ""

    # -- matches --

    def _addrtype(self, types: str, ip: str) -> int:
        local = self.node.is_local(ip)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return _UNKNOWN
        result = False
        for t in types.upper().split(","):
            if t == "LOCAL":
                result = result or local
            elif t == "UNICAST":
                result = result or (not local and not addr.is_multicast and ip != "255.255.255.255")
            elif t == "MULTICAST":
                result = result or addr.is_multicast
            elif t == "BROADCAST":
                result = result or ip == "255.255.255.255"
            else:
                return _UNKNOWN
        return _YES if result else _NO

    def _one(self, m: Match, st: _State) -> tuple[int, float]:
        """Evaluate one match (negation included) → (_YES/_NO/_UNKNOWN/_PROB, probability)."""
        pkt = self.packet
        module, option, value = m.module, m.option, m.value
        ok: bool | None
        if module == "":
            if option == "-s":
                ok = _address_in(value, pkt.src)
            elif option == "-d":
                ok = _address_in(value, st.dst)
            elif option == "-p":
                proto = _PROTOCOL_NUMBERS.get(value, value.lower())
                ok = proto in ("all", "0") or proto == pkt.protocol or (proto == "icmpv6" and pkt.protocol == "ipv6-icmp")
            elif option == "-i":
                if pkt.origin == Origin.NODE:
                    # Sent by the node: no input interface on the way out, loopback on the way in.
                    ok = self.hook == "INPUT" and interface_matches(value, pkt.in_interface or "lo")
                else:
                    iface = pkt.in_interface or self.node.interface_to(pkt.src)
                    if iface is None:
                        return _UNKNOWN, 0.0
                    ok = interface_matches(value, iface)
            elif option == "-o":
                iface = pkt.out_interface or self.node.interface_to(st.dst)
                if iface is None:
                    return _UNKNOWN, 0.0
                ok = interface_matches(value, iface)
            elif option == "-f":
                ok = False  # a first packet is never a non-first fragment
            else:
                return _UNKNOWN, 0.0
        elif module in ("tcp", "udp", "sctp", "udplite", "dccp"):
            if pkt.protocol != module:
                ok = False
            elif option == "--dport":
                ok = _port_in(value, st.dport)
            elif option == "--sport":
                if pkt.sport is None:
                    return _UNKNOWN, 0.0
                ok = _port_in(value, pkt.sport)
            elif option == "--syn" and module == "tcp":
                ok = True
            else:
                return _UNKNOWN, 0.0
        elif module == "multiport":
            if option in ("--dports", "--destination-ports"):
                ports = [st.dport]
            elif option in ("--sports", "--source-ports"):
                if pkt.sport is None:
                    return _UNKNOWN, 0.0
                ports = [pkt.sport]
            elif option == "--ports":
                if pkt.sport is None:
                    ports = [st.dport]
                else:
                    ports = [st.dport, pkt.sport]
            else:
                return _UNKNOWN, 0.0
            specs = value.split(",")
            found = [_port_in(s, p) for s in specs for p in ports]
            if None in found:
                return _UNKNOWN, 0.0
            ok = any(found)
        elif module in ("comment", "nfacct", "limit"):
            return _YES, 1.0
        elif module == "addrtype":
            if option == "--src-type":
                r = self._addrtype(value, pkt.src)
            elif option == "--dst-type":
                r = self._addrtype(value, st.dst)
            else:
                return _UNKNOWN, 0.0
            if r == _UNKNOWN:
                return r, 0.0
            ok = r == _YES
        elif module in ("conntrack", "state") and option in ("--ctstate", "--state"):
            states = {"UNTRACKED"} if st.untracked else {"NEW"} | ({"DNAT"} if st.dnat else set())
            ok = bool(states & set(value.upper().split(",")))
        elif module == "mark" and option == "--mark":
            try:
                v, mask = parse_mark(value)
            except ValueError:
                return _UNKNOWN, 0.0
            ok = (st.mark & mask) == v
        elif module == "set" and option == "--match-set":
            in_set = self._match_set(m, st)
            if in_set is None:
                return _UNKNOWN, 0.0
            ok = in_set
        elif module == "statistic":
            if option == "--mode":
                if value != "random":
                    return _UNKNOWN, 0.0
                return _YES, 1.0
            if option == "--probability":
                try:
                    p = float(value)
                except ValueError:
                    return _UNKNOWN, 0.0
                p = min(max(p, 0.0), 1.0)
                return _PROB, (1.0 - p) if m.negated else p
            return _UNKNOWN, 0.0
        else:
            return _UNKNOWN, 0.0
        if ok is None:
            return _UNKNOWN, 0.0
        if m.negated:
            ok = not ok
        return (_YES if ok else _NO), 1.0

    def _match_set(self, m: Match, st: _State) -> bool | None:
        """`--match-set NAME src,dst,...` (negation applied by the caller); None when unknown."""
        if len(m.values) != 2 or self.ipsets is None or m.values[0] not in self.ipsets:
            return None
        ipset = self.ipsets[m.values[0]]
        pkt = self.packet
        parts: list[str] = []
        for kind, flag in zip(ipset.dimensions, m.values[1].split(",")):
            if flag not in ("src", "dst"):
                return None
            if kind in ("ip", "net"):
                parts.append(pkt.src if flag == "src" else st.dst)
            elif kind == "port":
                port = pkt.sport if flag == "src" else st.dport
                if port is None:
                    return None
                parts.append(f"{pkt.protocol}:{port}")
            else:
                return None
        if len(parts) != len(ipset.dimensions):
            return None
        return ipset.contains(parts)

    def _evaluate(self, rule: Rule, st: _State) -> tuple[int, float, str, tuple[str, int] | None]:
        """→ (result, probability, note, affinity checked); for _FORK the note is the open
        condition to assume both ways."""
        prob = 1.0
        fork = ""
        recent: list[Match] = []
        for m in rule.matches:
            if m.module == "recent":
                recent.append(m)
                continue
            r, p = self._one(m, st)
            if r == _UNKNOWN:
                condition = condition_of(m)
                held = assumed_value(condition, st.assumed)
                if held is None:
                    fork = fork or condition
                    continue
                r = _YES if held != m.negated else _NO
            if r == _NO:
                return _NO, 0.0, "", None
            if r == _PROB:
                prob *= p
        if fork:
            return _FORK, 0.0, fork, None
        if recent:
            options = {m.option: m for m in recent}
            name = options["--name"].value if "--name" in options else "DEFAULT"
            if "--rcheck" in options or "--update" in options:
                seconds = 0
                if "--seconds" in options:
                    try:
                        seconds = int(options["--seconds"].value)
                    except ValueError:
                        seconds = 0
                check = next(m for m in recent if m.option in ("--rcheck", "--update"))
                # A new client has no entry in the list yet.
                return (_YES if check.negated else _NO), prob, "", (name, seconds)
            if not ("--set" in options or "--remove" in options):
                return _UNKNOWN, 0.0, f"cannot evaluate -m recent {' '.join(str(m) for m in recent)}", None
        if prob < 1.0:
            return _PROB, prob, "", None
        return _YES, 1.0, "", None

    # -- targets --

    def _target(self, table: str, rule: Rule, st: _State, depth: int) -> list[tuple[_State, str]]:
        target = rule.target
        if not target:
            return [(st, _CONTINUE)]
        if target == "ACCEPT":
            if table == "filter":
                st = replace(st, accepted=f"{rule.chain}: {rule.text}")
            return [(st, _ACCEPT)]
        if target == "DROP":
            return [(replace(st, reason=f"DROP in {table}/{rule.chain}"), _DROP)]
        if target == "REJECT":
            return [(replace(st, reason=f"REJECT in {table}/{rule.chain}"), _REJECT)]
        if target == "RETURN":
            return [(st, _RETURN)]
        if target == "DNAT":
            dest = rule.target_option("--to-destination") or ""
            parsed = _parse_nat_destination(dest)
            if parsed is None:
                return [(replace(st, reason=f"cannot evaluate -j DNAT --to-destination {dest}"), _FAIL)]
            ip, port = parsed
            port = port or st.dport
            shown = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            return [(replace(st, dst=ip, dport=port, dnat=shown), _ACCEPT)]
        if target in ("MASQUERADE", "SNAT"):
            return [(replace(st, masquerade=True), _ACCEPT)]
        if target == "MARK":
            mark = _apply_mark(st.mark, rule.target_options)
            if mark is None:
                return [(replace(st, reason=f"cannot evaluate -j MARK {rule.text}"), _FAIL)]
            return [(replace(st, mark=mark), _CONTINUE)]
        if target == "CONNMARK":
            if rule.target_option("--restore-mark") is not None or any(
                m.option == "--restore-mark" for m in rule.target_options
            ):
                mask_text = rule.target_option("--nfmask") or rule.target_option("--mask") or "0xffffffff"
                try:
                    mask = int(mask_text, 0)
                except ValueError:
                    mask = 0xFFFFFFFF
                return [(replace(st, mark=st.mark & ~mask & 0xFFFFFFFF), _CONTINUE)]  # a new connection's ctmark is 0
            return [(st, _CONTINUE)]
        if target == "NOTRACK" or (target == "CT" and any(m.option == "--notrack" for m in rule.target_options)):
            return [(replace(st, untracked=True), _CONTINUE)]
        if target in _PASSIVE_TARGETS or target == "CT":
            return [(st, _CONTINUE)]
        if self.ruleset.policy(table, target) is None:
            return [(replace(st, reason=f"cannot evaluate -j {target}: not a chain of the {table} table in the input "
                                        "(the whole `iptables-save` output of the node settles it)"), _FAIL)]
        out: list[tuple[_State, str]] = []
        for s, status in self._chain(table, target, st, depth + 1):
            if status == _RETURN:
                out.append((s, _RETURN if rule.goto else _CONTINUE))
            else:
                out.append((s, status))
        return out

    # -- chains --

    def _chain(self, table: str, name: str, st: _State, depth: int) -> list[tuple[_State, str]]:
        """Walk a chain; statuses: _RETURN (ran out or RETURN), _ACCEPT, or final ones.

        Only the rules a packet to the current destination can match are visited (see
        Ruleset.candidates); the destination cannot change within one walk, since a DNAT
        ends the table."""
        if depth > _MAX_DEPTH:
            return [(replace(st, reason=f"cannot evaluate: chains nest deeper than {_MAX_DEPTH} at {name}"), _FAIL)]
        rules = self.ruleset.candidates(table, name, st.dst) or ()
        out: list[tuple[_State, str]] = []
        work: list[tuple[_State, int]] = [(st, 0)]
        while work:
            s, i = work.pop()
            while True:
                if i >= len(rules):
                    out.append((s, _RETURN))
                    break
                position, rule = rules[i]
                result, prob, note, affinity = self._evaluate(rule, s)
                if affinity is not None:
                    s = replace(s, affinity=s.affinity + (affinity,))
                if result == _NO:
                    i += 1
                    continue
                if result == _FORK and len(s.assumed) < _MAX_ASSUMED and self.branches < _MAX_BRANCHES:
                    # Both worlds re-evaluate this rule with the condition now decided.
                    self.branches += 1
                    work.append((replace(s, assumed=s.assumed + ((note, False),)), i))
                    s = replace(s, assumed=s.assumed + ((note, True),))
                    continue
                if result == _FORK:
                    s = s.step(table, name, position, rule.text, "?")
                    out.append((replace(s, reason=f"cannot evaluate: {note}, and too many open conditions on the "
                                                  f"way ({table}/{name} rule {position})"), _FAIL))
                    break
                if result == _UNKNOWN:
                    s = s.step(table, name, position, rule.text, "?")
                    out.append((replace(s, reason=f"{note} ({table}/{name} rule {position})"), _FAIL))
                    break
                if result == _PROB:
                    self.branches += 1
                    if self.branches > _MAX_BRANCHES:
                        out.append((replace(s, reason="cannot evaluate: too many random branches"), _FAIL))
                        break
                    if prob < 1.0:
                        work.append((replace(s, prob=s.prob * (1.0 - prob)), i + 1))
                    if prob <= 0.0:
                        break
                    s = replace(s, prob=s.prob * prob)
                action = _describe_target(rule)
                s = s.step(table, name, position, rule.text, action, rule_owner(self.ruleset, rule))
                for s2, status in self._target(table, rule, s, depth):
                    if status == _CONTINUE:
                        work.append((s2, i + 1))
                    else:
                        out.append((s2, status))
                break
        return out

    def _hook(self, states: list[_State], hook: str, finals: list[tuple[_State, str]]) -> list[_State]:
        self.hook = hook
        for table in HOOKS[hook]:
            chain_policy = self.ruleset.policy(table, hook)
            if chain_policy is None:
                continue
            nxt: list[_State] = []
            for st in states:
                if table == "nat" and st.untracked:
                    nxt.append(st)  # untracked packets never see the nat table
                    continue
                for s, status in self._chain(table, hook, st, 0):
                    if status == _RETURN:
                        policy = chain_policy if chain_policy not in ("-", "") else "ACCEPT"
                        if policy == "ACCEPT":
                            nxt.append(s)
                        else:
                            s = s.step(table, hook, 0, f"policy {policy}", policy,
                                       policy_owner(self.ruleset, table, hook, policy))
                            status = _DROP if policy == "DROP" else _FAIL
                            finals.append((replace(s, reason=f"policy {policy} of {table}/{hook}"), status))
                    elif status == _ACCEPT:
                        nxt.append(s)
                    else:
                        finals.append((s, status))
            states = nxt
        return states

    def run(self) -> TraceResult:
        pkt = self.packet
        start = _State(prob=1.0, dst=pkt.dst, dport=pkt.dport, mark=pkt.mark)
        return walk_hooks(pkt, self.node, start, self._hook, HOOK_PATHS)


def _describe_target(rule: Rule) -> str:
    if not rule.target:
        return "count"
    if rule.target == "DNAT":
        return f"DNAT {rule.target_option('--to-destination') or ''}".strip()
    if rule.target in ("ACCEPT", "DROP", "REJECT", "RETURN", "MASQUERADE", "SNAT", "MARK"):
        return rule.target
    return ("goto " if rule.goto else "jump ") + rule.target


def _parse_nat_destination(text: str) -> tuple[str, int] | None:
    """`ip`, `ip:port`, `[v6]:port` → (ip, port or 0); ranges are not followed."""
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        ip, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        ip, port_text = text.split(":")
    else:
        ip, port_text = text, ""
    if "-" in ip or "-" in port_text:
        return None
    try:
        ipaddress.ip_address(ip)
        port = int(port_text) if port_text else 0
    except ValueError:
        return None
    return ip, port


def _apply_mark(mark: int, options: Sequence[Match]) -> int | None:
    for m in options:
        try:
            if m.option == "--set-xmark":
                v, mask = parse_mark(m.value)
                return ((mark & ~mask) ^ v) & 0xFFFFFFFF
            if m.option == "--set-mark":
                v, mask = parse_mark(m.value)
                return ((mark & ~mask) | v) & 0xFFFFFFFF
            if m.option == "--or-mark":
                return (mark | int(m.value, 0)) & 0xFFFFFFFF
            if m.option == "--xor-mark":
                return (mark ^ int(m.value, 0)) & 0xFFFFFFFF
            if m.option == "--and-mark":
                return mark & int(m.value, 0) & 0xFFFFFFFF
        except ValueError:
            return None
    return None


def trace(
    ruleset: Ruleset,
    packet: Packet,
    node: LocalNode | NodeInfo | Iterable[str],
    ipsets: Mapping[str, AddressSet] | None = None,
) -> TraceResult:
    """Follow `packet` through `ruleset` on `node` (a LocalNode, a NodeInfo, or its addresses).

    The ruleset must contain the built-in chains' jumps into the kube chains (a real
    `iptables-save` does; for a bare restore payload add them with `Ruleset.with_jump_rules`).
    `ipsets` (name → set) lets `-m set` matches be evaluated; without them they are
    "cannot evaluate".
    """
    if isinstance(node, LocalNode):
        local = node
    elif isinstance(node, NodeInfo):
        local = LocalNode.from_node_info(node)
    else:
        local = LocalNode(tuple(node))
    return with_missing_input(_marked_for_drop(_Tracer(ruleset, packet, local, ipsets).run()), ipsets, local)


MARK_DROP_CHAIN = "KUBE-MARK-DROP"  # kube-proxy ≤ 1.24 (and the kubelet's) "drop this later" mark
MARK_DROP_BIT = 0x8000


def _marked_for_drop(result: TraceResult) -> TraceResult:
    """kube-proxy ≤ 1.24 drops by marking (KUBE-MARK-DROP, e.g. a load-balancer source range
    not allowed) and leaves the dropping to the kubelet's KUBE-FIREWALL, which runs in INPUT
    and OUTPUT only. A packet it marked that got through anyway was forwarded on unchanged,
    to a load-balancer IP the node does not own: nothing on the way answers it, as if
    dropped. Those ways are told as the drop kube-proxy meant, saying where the packet went."""
    if not any(_carries_drop_mark(o) for o in result.all_outcomes):
        return result
    outcomes = [replace(o, verdict=Verdict.DROP, reason=(
        f"marked by {MARK_DROP_CHAIN} (kube-proxy ≤ 1.24); the kubelet's KUBE-FIREWALL drops marked packets only "
        "in INPUT and OUTPUT, so this one is routed on unchanged, towards an address the node does not own, "
        "and no endpoint answers it")) if _carries_drop_mark(o) else o for o in result.all_outcomes]
    return replace(summarize(result.packet, outcomes), notes=result.notes) if not result.branches else \
        summarize(result.packet, outcomes)


def _carries_drop_mark(o: Outcome) -> bool:
    return (o.verdict in (Verdict.NONE, Verdict.ACCEPT) and bool(o.mark & MARK_DROP_BIT)
            and any(s.action in (f"jump {MARK_DROP_CHAIN}", f"goto {MARK_DROP_CHAIN}") for s in o.steps))




__all__ = ["HOOKS", "HOOK_PATHS", "trace"]
