"""The vocabulary every mode's tracer shares: a packet, the node, the steps, the result.

A tracer (`modes/<mode>/trace.py`) follows the first packet of a new connection through the
rules *on the node* and returns a TraceResult: the verdict, each way the packet can go with
its probability, the DNAT destinations with their total odds, masquerading and affinity.
What differs per mode is how one hook is walked (iptables chains, nftables chains and maps,
IPVS virtual services); the order of the hooks is the kernel's and the same for all of them,
so `walk_hooks` drives every tracer through the hooks a packet meets:

* sent by the node: OUTPUT, POSTROUTING, and INPUT when the (rewritten) destination is local;
* arriving (from a pod or from outside): PREROUTING, then INPUT when the destination is local,
  else FORWARD and POSTROUTING.

A walker state is any object with `prob, dst, dnat, accepted, masquerade, affinity, steps,
reason, mark`; a hook function takes the states that reach it and returns those that get
through, appending the ones that stopped to `finals` with DROP, REJECT or UNKNOWN.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from kubectl_proxyctl.model import NodeInfo

# The `table` of a Step taken in a socket hook (eBPF mode's cgroup programs): the destination
# is rewritten in the socket at connect() or sendmsg(), before any packet exists, so there is
# no NAT and no conntrack entry for the service address. An outcome whose steps rewrite there
# (action "rewrite …") reached its endpoint that way.
SOCKET_HOOK = "bpf"

# The owner of a Service proxy's own rules (ours and kube-proxy's share the layout).
PROXY_OWNER = "kube-proxy"

# How a way through the rules stopped (the statuses `finals` carry).
DROP = "drop"
REJECT = "reject"
UNKNOWN = "unknown"


class Origin(str, enum.Enum):
    POD = "pod"  # from a pod on this node (arrives on a pod interface)
    NODE = "node"  # sent by the node itself
    EXTERNAL = "external"  # from outside the node (arrives on a node interface)

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    DNAT = "DNAT"  # sent to an endpoint
    ACCEPT = "ACCEPT"  # explicitly accepted by a filter rule, not rewritten
    DROP = "DROP"
    REJECT = "REJECT"
    NONE = "NONE"  # no rule decided anything: the packet goes on unchanged
    UNKNOWN = "UNKNOWN"  # a rule on the way could not be evaluated

    def __str__(self) -> str:
        return self.value


class AddressSet(Protocol):
    """An ipset as `-m set --match-set NAME FLAGS` sees it (modes.ipvs.parse.IpSet is one)."""

    @property
    def dimensions(self) -> tuple[str, ...]:
        """Per member part: "ip", "net", "port", or another ipset kind."""
        ...

    def contains(self, parts: Sequence[str]) -> bool | None:
        """Is this member in the set (`ip`, `proto:port` parts)? None when it cannot tell."""
        ...


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection."""

    src: str
    dst: str
    dport: int
    protocol: str = "tcp"
    origin: Origin | str = Origin.POD  # stored as an Origin
    sport: int | None = None
    in_interface: str | None = None  # needed only by rules that match -i
    out_interface: str | None = None  # needed only by rules that match -o
    mark: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", str(self.protocol).lower())
        object.__setattr__(self, "origin", Origin(self.origin))


@dataclass(frozen=True)
class LocalNode:
    """The node the rules live on: its own addresses (loopback always counts as local), and
    when known its routes, (destination CIDR, interface), connected networks included: they
    say which interface a packet arrives on (the route back to its source, as reverse-path
    filtering assumes) and which one it leaves by."""

    addresses: tuple[str, ...] = ()
    name: str = ""
    routes: tuple[tuple[str, str], ...] = ()

    def interface_to(self, ip: str) -> str | None:
        """The interface the node's routes send `ip` to (`lo` for its own addresses), or
        None when the routes are unknown or none matches."""
        if not self.routes:
            return None
        if self.is_local(ip):
            return "lo"
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        best: tuple[int, str] | None = None
        for cidr, dev in self.routes:
            try:
                net = ipaddress.ip_network("0.0.0.0/0" if cidr == "default" and addr.version == 4 else
                                           "::/0" if cidr == "default" else cidr, strict=False)
            except ValueError:
                continue
            if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, dev)
        return best[1] if best else None

    @classmethod
    def from_node_info(cls, node: NodeInfo) -> "LocalNode":
        return cls(tuple(a for kind, a in node.addresses if kind in ("InternalIP", "ExternalIP")), node.name)

    def is_local(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.is_loopback:
            return True
        return any(_same_ip(addr, a) for a in self.addresses)


def _same_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return addr == ipaddress.ip_address(text)
    except ValueError:
        return False


@dataclass(frozen=True)
class Step:
    """A rule that matched on the way (or a policy that applied: index 0)."""

    table: str
    chain: str
    index: int  # 1-based position in the chain; 0 for the chain's policy
    rule: str
    action: str
    probability: float  # the weight of the branch when it got here
    # Who wrote the rule, when the tracer can tell (iptables: "kube-proxy", "Docker",
    # "Calico", "CNI portmap", … by the chain; see modes.iptables.software); "" for the proxy's
    # own state in modes that read nothing else.
    owner: str = ""

    @property
    def foreign(self) -> bool:
        """Written by other software than a Service proxy."""
        return self.owner not in ("", PROXY_OWNER)

    def __str__(self) -> str:
        where = f"{self.table}/{self.chain}" + (f"#{self.index}" if self.index else "")
        odds = "" if self.probability >= 0.9999999 else f" (p={self.probability:.4f})"
        return f"{where}: {self.rule} => {self.action}{odds}"


@dataclass(frozen=True)
class Outcome:
    """One way the packet can go."""

    verdict: Verdict
    probability: float
    destination: str  # `ip:port` after DNAT, "" when not rewritten
    masquerade: bool
    affinity: tuple[tuple[str, int], ...]  # (recent list, seconds) checked on the way
    steps: tuple[Step, ...]
    reason: str
    mark: int = 0  # the packet mark at the end (IPVS mode decides masquerading by it)
    # what the tracer could not know and assumed on this way: (condition, holds?)
    assumed: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class EndpointOdds:
    destination: str
    probability: float
    masquerade: bool
    dnat_by: str = ""  # the owner of the rule that rewrote the destination ("" : the proxy)

    @property
    def foreign(self) -> bool:
        """Rewritten by other software (a hostPort, Docker, …): not a Service endpoint."""
        return self.dnat_by not in ("", PROXY_OWNER)


def deciding_step(outcome: Outcome) -> Step | None:
    """The rule that rewrote the destination (a DNAT outcome) or stopped the packet (a DROP
    or REJECT rule, or a chain's policy); None when no one rule did."""
    wanted = ("DNAT", "rewrite") if outcome.verdict == Verdict.DNAT else ("DROP", "REJECT", "drop", "reject")
    if outcome.verdict not in (Verdict.DNAT, Verdict.DROP, Verdict.REJECT):
        return None
    for step in reversed(outcome.steps):
        if step.action.startswith(wanted):
            return step
    return None


def foreign_step(outcome: Outcome) -> Step | None:
    """The deciding rule of an outcome when other software than the proxy wrote it."""
    step = deciding_step(outcome)
    return step if step is not None and step.foreign else None


@dataclass(frozen=True)
class TraceResult:
    packet: Packet
    verdict: Verdict
    outcomes: tuple[Outcome, ...]
    endpoints: tuple[EndpointOdds, ...]  # DNAT destinations with their total probability
    masquerade: bool | None  # None when outcomes that get through disagree
    affinity_seconds: int | None  # ClientIP affinity timeout, when the path checks one
    notes: tuple[str, ...] = ()
    # When the answer depends on something the rules leave open (an interface, an ipset not
    # given): each alternative, "condition" → the answer under it; the verdict is then UNKNOWN.
    branches: tuple[tuple[str, "TraceResult"], ...] = ()
    # Conditions the walk forked on whose answer is the same either way.
    settled: tuple[str, ...] = ()
    # Every way through, under every assumption (`outcomes` is one world's when settled).
    raw: tuple[Outcome, ...] = ()

    @property
    def all_outcomes(self) -> tuple[Outcome, ...]:
        return self.raw or self.outcomes

    @property
    def rules_traversed(self) -> tuple[Step, ...]:
        """Every matched rule of every outcome, first appearance first."""
        seen: set[tuple[str, str, int, str]] = set()
        out: list[Step] = []
        for outcome in self.outcomes:
            for step in outcome.steps:
                key = (step.table, step.chain, step.index, step.action)
                if key not in seen:
                    seen.add(key)
                    out.append(step)
        return tuple(out)

    def endpoint_probabilities(self) -> dict[str, float]:
        return {e.destination: e.probability for e in self.endpoints}

    def summary(self) -> str:
        """A few lines for people (and test failures)."""
        p = self.packet
        lines = [f"{p.protocol} {p.src} -> {p.dst}:{p.dport} from {p.origin}: {self.verdict}"]
        for e in self.endpoints:
            lines.append(f"  {e.destination} p={e.probability:.4f}" + (" masquerade" if e.masquerade else ""))
        if self.masquerade is not None and not self.endpoints:
            lines.append(f"  masquerade: {self.masquerade}")
        if self.affinity_seconds:
            lines.append(f"  ClientIP affinity: {self.affinity_seconds}s")
        for n in self.notes:
            lines.append(f"  note: {n}")
        for condition, branch in self.branches:
            lines.append(f"  if {condition}: {branch.verdict} "
                         + " ".join(f"{e.destination} p={e.probability:.4f}" for e in branch.endpoints))
        if self.settled:
            lines.append(f"  the same whether or not: {'; '.join(self.settled)}")
        for o in self.outcomes:
            lines.append(f"  outcome {o.verdict} p={o.probability:.4f} {o.destination} {o.reason}".rstrip())
            for s in o.steps:
                lines.append(f"    {s}")
        return "\n".join(lines)

@dataclass(frozen=True)
class HookPaths:
    """A mode's names for the hooks, in the order a packet meets them."""

    sending: tuple[str, ...]  # a packet the node sends; then local_in when it is addressed to the node
    arriving: tuple[str, ...]  # a packet that arrives on an interface
    local_in: tuple[str, ...]  # delivered to the node itself
    forward: tuple[str, ...]  # routed on (to a pod, or to another node)


HookWalk = Callable[[list[Any], str, list[tuple[Any, str]]], list[Any]]


def walk_hooks(packet: Packet, node: LocalNode, start: Any, hook: HookWalk, paths: HookPaths,
               accept_word: str = "ACCEPT") -> TraceResult:
    """Drive one walker state through the hooks `packet` meets on `node` (see the module
    docstring); `hook(states, name, finals)` walks one hook. Returns the summed-up result."""
    finals: list[tuple[Any, str]] = []
    done: list[Any] = []
    states = [start]
    if packet.origin == Origin.NODE:
        for name in paths.sending:
            states = hook(states, name, finals)
        local = [s for s in states if node.is_local(s.dst)]
        done += [s for s in states if not node.is_local(s.dst)]
        for name in paths.local_in:
            local = hook(local, name, finals)
        done += local
    else:
        for name in paths.arriving:
            states = hook(states, name, finals)
        local = [s for s in states if node.is_local(s.dst)]
        forwarded = [s for s in states if not node.is_local(s.dst)]
        for name in paths.local_in:
            local = hook(local, name, finals)
        for name in paths.forward:
            forwarded = hook(forwarded, name, finals)
        done += local + forwarded
    return result_of(packet, done, finals, accept_word)


def result_of(packet: Packet, done: Sequence[Any], finals: Sequence[tuple[Any, str]],
              accept_word: str = "ACCEPT") -> TraceResult:
    """The TraceResult of a walk, shared by the tracers of every backend.

    `finals` are the ways that stopped (with a drop / reject / unknown status), `done` the
    ways that went through; each way is a walker state with prob, dnat, accepted, masquerade,
    affinity, steps, reason and mark. `accept_word` is the backend's name for an accept.
    """
    verdict_of = {DROP: Verdict.DROP, REJECT: Verdict.REJECT, UNKNOWN: Verdict.UNKNOWN}
    outcomes = [Outcome(verdict_of[status], s.prob, s.dnat, False, s.affinity, s.steps, s.reason, s.mark,
                        getattr(s, "assumed", ()))
                for s, status in finals]
    for s in done:
        if s.dnat:
            verdict, reason = Verdict.DNAT, f"DNAT to {s.dnat}"
        elif s.accepted:
            verdict, reason = Verdict.ACCEPT, f"{accept_word} by {s.accepted}"
        else:
            verdict, reason = Verdict.NONE, "no rule changed or stopped the packet"
        outcomes.append(Outcome(verdict, s.prob, s.dnat, s.masquerade, s.affinity, s.steps, reason, s.mark,
                                getattr(s, "assumed", ())))
    return summarize(packet, outcomes)


def summarize(packet: Packet, outcomes: Iterable[Outcome]) -> TraceResult:
    """Merge equal outcomes and sum them up: the overall verdict (UNKNOWN as soon as one way
    could not be evaluated), each DNAT destination's total probability, and whether every way
    through is masqueraded. Shared by the tracers of every backend.

    Ways that assumed something the rules leave open (`Outcome.assumed`) are sorted into
    worlds, one per combination of the conditions; when every world gives the same answer,
    it is the answer (the conditions are `settled`), else the answer is UNKNOWN with one
    `branches` entry per alternative, named by the fewest conditions that decide it."""
    outcomes = list(outcomes)
    conditions = list(dict.fromkeys(c for o in outcomes for c, _ in o.assumed))
    if not conditions:
        return _summarize_world(packet, outcomes)
    if len(conditions) > MAX_CONDITIONS:
        return _too_open(packet, outcomes, conditions)
    worlds: list[tuple[dict[str, bool], TraceResult]] = []
    for values in itertools.product((True, False), repeat=len(conditions)):
        world = dict(zip(conditions, values))
        if not possible(world):
            continue
        members = [o for o in outcomes if all(world.get(c) == v for c, v in o.assumed)]
        worlds.append((world, _summarize_world(packet, members)))
    answers = {_answer(r) for _, r in worlds}
    if len(answers) == 1:
        return replace(worlds[0][1], settled=tuple(conditions), raw=tuple(outcomes))
    deciding = _deciding(conditions, worlds)
    groups: dict[tuple[object, ...], tuple[set[tuple[bool, ...]], TraceResult]] = {}
    for world, result in worlds:
        groups.setdefault(_answer(result), (set(), result))[0].add(tuple(world[c] for c in deciding))
    seen = set().union(*(cubes for cubes, _ in groups.values()))
    impossible = set(itertools.product((True, False), repeat=len(deciding))) - seen
    labelled = [(_cover_text(_cover(cubes, impossible), deciding), result) for cubes, result in groups.values()]
    last = max(range(len(labelled)), key=lambda i: (len(labelled[i][0]), i))
    branches = tuple(labelled[:last] + labelled[last + 1:] + [("otherwise", labelled[last][1])])
    merged = _merge(outcomes)
    seconds = [sec for o in merged for _, sec in o.affinity]
    which = " and ".join(f"whether {c}" for c in deciding)
    return TraceResult(packet=packet, verdict=Verdict.UNKNOWN, outcomes=tuple(merged), endpoints=(),
                       masquerade=None, affinity_seconds=max(seconds) if seconds else None,
                       notes=(f"the answer depends on {which}",), branches=branches, raw=tuple(outcomes))


Cube = tuple[bool | None, ...]  # one value per deciding condition; None: either


def _cover(minterms: set[tuple[bool, ...]], dont_care: set[tuple[bool, ...]]) -> list[Cube]:
    """The fewest, widest cubes that cover `minterms` (impossible worlds may be covered too):
    two-level minimisation, so "if A: …" is said instead of "if A and B or A and not B: …"."""
    cubes: set[Cube] = set(minterms) | set(dont_care)
    primes: set[Cube] = set()
    while cubes:
        merged: set[Cube] = set()
        used: set[Cube] = set()
        ordered = sorted(cubes, key=repr)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                diff = [k for k, (x, y) in enumerate(zip(a, b)) if x != y]
                if len(diff) == 1 and a[diff[0]] is not None and b[diff[0]] is not None:
                    merged.add(a[:diff[0]] + (None,) + a[diff[0] + 1:])
                    used.update((a, b))
        primes |= cubes - used
        cubes = merged

    def covers(cube: Cube, m: tuple[bool, ...]) -> bool:
        return all(c is None or c == v for c, v in zip(cube, m))

    chosen: list[Cube] = []
    left = set(minterms)
    while left:
        best = max(sorted(primes, key=repr), key=lambda p: (sum(covers(p, m) for m in left),
                                                           -sum(c is not None for c in p)))
        chosen.append(best)
        left = {m for m in left if not covers(best, m)}
    return chosen


def _cover_text(cover: Sequence[Cube], deciding: Sequence[str]) -> str:
    """Cubes as words, leaving out a condition another one implies (arriving on docker0
    implies not arriving on cali+)."""
    terms = []
    for cube in cover:
        shown = {c: v for c, v in zip(deciding, cube) if v is not None}
        for c in list(shown):
            if len(shown) > 1 and not possible({**shown, c: not shown[c]}):
                del shown[c]
        terms.append(" and ".join(c if v else negate(c) for c, v in shown.items()))
    return " or ".join(terms)


# Beyond this many open conditions on one path the worlds are not enumerated.
MAX_CONDITIONS = 8


def _too_open(packet: Packet, outcomes: Sequence[Outcome], conditions: Sequence[str]) -> TraceResult:
    shown = "; ".join(conditions[:3]) + ("; …" if len(conditions) > 3 else "")
    result = _summarize_world(packet, [replace(o, assumed=()) for o in outcomes])
    return replace(result, verdict=Verdict.UNKNOWN, endpoints=(), masquerade=None, raw=tuple(outcomes),
                   notes=(f"cannot evaluate: {len(conditions)} open conditions on the way ({shown})",))


def _answer(r: TraceResult) -> tuple[object, ...]:
    """What a user is told about one world: verdict, endpoints and odds, SNAT, affinity."""
    return (r.verdict, tuple(sorted((e.destination, round(e.probability, 6), e.masquerade) for e in r.endpoints)),
            r.masquerade, r.affinity_seconds, r.notes if r.verdict == Verdict.UNKNOWN else ())


def _deciding(conditions: Sequence[str], worlds: Sequence[tuple[dict[str, bool], TraceResult]]) -> tuple[str, ...]:
    """The fewest conditions whose values alone decide the answer."""
    for size in range(1, len(conditions) + 1):
        for subset in itertools.combinations(conditions, size):
            seen: dict[tuple[bool, ...], tuple[object, ...]] = {}
            if all(seen.setdefault(tuple(w[c] for c in subset), _answer(r)) == _answer(r) for w, r in worlds):
                return subset
    return tuple(conditions)


# The phrasing of the conditions a tracer may assume (see `arrives_on`, `leaves_by`).
_ARRIVES = "the packet arrives on "
_LEAVES = "the packet leaves by "


def arrives_on(pattern: str) -> str:
    """The condition "the input interface is (or matches, `eth+`) PATTERN"."""
    return _ARRIVES + pattern


def leaves_by(pattern: str) -> str:
    """The condition "the output interface is (or matches) PATTERN"."""
    return _LEAVES + pattern


_NEGATIONS = ((" arrives on ", " does not arrive on "), (" leaves by ", " does not leave by "),
              (" is in ", " is not in "), (" matches", " does not match"))


def negate(condition: str) -> str:
    for yes, no in _NEGATIONS:
        if yes in condition:
            return condition.replace(yes, no, 1)
    return f"not ({condition})"


def interface_matches(pattern: str, iface: str) -> bool:
    """iptables' interface match: a trailing `+` matches every name with that prefix."""
    if pattern.endswith("+"):
        return iface.startswith(pattern[:-1])
    return iface == pattern


def assumed_interface(pattern: str, held: Mapping[str, bool]) -> bool | None:
    """Does the interface match `pattern`, given what was assumed about it (pattern → held)?
    None when those assumptions do not decide it."""
    if pattern in held:
        return held[pattern]
    for other, value in held.items():
        if not value:
            if not other.endswith("+") and other == pattern:
                return False
            if not pattern.endswith("+") and interface_matches(other, pattern):
                return False
            continue
        if not other.endswith("+"):
            return interface_matches(pattern, other)
        prefix, mine = other[:-1], pattern.rstrip("+")
        if pattern.endswith("+") and prefix.startswith(mine):
            return True
        if not (prefix.startswith(mine) or mine.startswith(prefix)):
            return False
    return None


def assumed_value(condition: str, assumed: Sequence[tuple[str, bool]]) -> bool | None:
    """What a way already assumed about `condition`: the value it took, or for an interface
    condition what the interfaces assumed so far imply; None when nothing decides it."""
    held = dict(assumed)
    if condition in held:
        return held[condition]
    for lead in (_ARRIVES, _LEAVES):
        if condition.startswith(lead):
            patterns = {c[len(lead):]: v for c, v in held.items() if c.startswith(lead)}
            return assumed_interface(condition[len(lead):], patterns)
    return None


def possible(world: Mapping[str, bool]) -> bool:
    """Can these interface conditions all hold at once (a packet has one input and one
    output interface)?"""
    for lead in (_ARRIVES, _LEAVES):
        held = {c[len(lead):]: v for c, v in world.items() if c.startswith(lead)}
        for pattern, value in held.items():
            others = {p: v for p, v in held.items() if p != pattern}
            if assumed_interface(pattern, others) not in (None, value):
                return False
    return True


def _summarize_world(packet: Packet, outcomes: Iterable[Outcome]) -> TraceResult:
    merged = _merge(outcomes)
    totals: dict[Verdict, float] = {}
    for o in merged:
        totals[o.verdict] = totals.get(o.verdict, 0.0) + o.probability
    if not merged:
        verdict = Verdict.NONE
    elif Verdict.UNKNOWN in totals:
        verdict = Verdict.UNKNOWN
    else:
        verdict = max(totals, key=lambda v: (totals[v], v != Verdict.NONE))

    odds: dict[str, list[float | bool | str]] = {}
    for o in merged:
        if o.verdict == Verdict.DNAT:
            step = deciding_step(o)
            entry = odds.setdefault(o.destination, [0.0, False, step.owner if step is not None else ""])
            entry[0] = float(entry[0]) + o.probability
            entry[1] = bool(entry[1]) or o.masquerade
    endpoints = tuple(EndpointOdds(d, float(p), bool(m), str(by)) for d, (p, m, by) in odds.items())

    passing = [o.masquerade for o in merged if o.verdict in (Verdict.DNAT, Verdict.ACCEPT, Verdict.NONE)]
    masquerade: bool | None
    if not passing:
        masquerade = False
    elif all(passing):
        masquerade = True
    elif not any(passing):
        masquerade = False
    else:
        masquerade = None
    seconds = [sec for o in merged for _, sec in o.affinity]
    notes = sorted({o.reason for o in merged if o.verdict == Verdict.UNKNOWN})
    return TraceResult(
        packet=packet,
        verdict=verdict,
        outcomes=tuple(merged),
        endpoints=endpoints,
        masquerade=masquerade,
        affinity_seconds=max(seconds) if seconds else None,
        notes=tuple(notes),
    )


def _merge(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """Add up outcomes that end the same way along the same rules (e.g. after a fork that
    did not matter)."""
    merged: dict[tuple[object, ...], Outcome] = {}
    for o in outcomes:
        key = (o.verdict, o.destination, o.masquerade, o.reason, o.mark, o.assumed,
               tuple((s.table, s.chain, s.index) for s in o.steps))
        old = merged.get(key)
        merged[key] = o if old is None else replace(old, probability=old.probability + o.probability)
    return list(merged.values())


_IPSET_NAMED = re.compile(r"ipset (\S+)")


def with_missing_input(result: TraceResult, ipsets: Mapping[str, Any] | None, node: LocalNode) -> TraceResult:
    """A result that depends on open conditions, with notes saying which collected output
    would settle them (the ipsets' members, the node's interfaces and routes)."""
    if not result.branches:
        return result
    asked = " ".join(result.notes)  # "the answer depends on whether <condition> and whether …"
    hints: list[str] = []
    absent = sorted({name for name in _IPSET_NAMED.findall(asked) if ipsets is None or name not in ipsets})
    if absent:
        hints.append(f"ipset {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not in the input: "
                     "`ipset save` output (--rules-file, or collected from the node) settles it")
    if (_ARRIVES in asked or _LEAVES in asked) and not node.routes:
        hints.append("the node's interfaces and routes are not in the input: `ip -json address show` and "
                     "`ip -json route show` output (--rules-file, or collected from the node) settle it")
    new = tuple(h for h in hints if h not in result.notes)
    return replace(result, notes=result.notes + new) if new else result
