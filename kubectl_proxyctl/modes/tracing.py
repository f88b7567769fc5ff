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
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Protocol, Sequence

from kubectl_proxyctl.model import NodeInfo

# The `table` of a Step taken in a socket hook (eBPF mode's cgroup programs): the destination
# is rewritten in the socket at connect() or sendmsg(), before any packet exists, so there is
# no NAT and no conntrack entry for the service address. An outcome whose steps rewrite there
# (action "rewrite …") reached its endpoint that way.
SOCKET_HOOK = "bpf"

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
    """The node the rules live on: its own addresses (loopback always counts as local)."""

    addresses: tuple[str, ...] = ()
    name: str = ""

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


@dataclass(frozen=True)
class EndpointOdds:
    destination: str
    probability: float
    masquerade: bool


@dataclass(frozen=True)
class TraceResult:
    packet: Packet
    verdict: Verdict
    outcomes: tuple[Outcome, ...]
    endpoints: tuple[EndpointOdds, ...]  # DNAT destinations with their total probability
    masquerade: bool | None  # None when outcomes that get through disagree
    affinity_seconds: int | None  # ClientIP affinity timeout, when the path checks one
    notes: tuple[str, ...] = ()

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
    outcomes = [Outcome(verdict_of[status], s.prob, s.dnat, False, s.affinity, s.steps, s.reason, s.mark)
                for s, status in finals]
    for s in done:
        if s.dnat:
            verdict, reason = Verdict.DNAT, f"DNAT to {s.dnat}"
        elif s.accepted:
            verdict, reason = Verdict.ACCEPT, f"{accept_word} by {s.accepted}"
        else:
            verdict, reason = Verdict.NONE, "no rule changed or stopped the packet"
        outcomes.append(Outcome(verdict, s.prob, s.dnat, s.masquerade, s.affinity, s.steps, reason, s.mark))
    return summarize(packet, outcomes)


def summarize(packet: Packet, outcomes: Iterable[Outcome]) -> TraceResult:
    """Merge equal outcomes and sum them up: the overall verdict (UNKNOWN as soon as one way
    could not be evaluated), each DNAT destination's total probability, and whether every way
    through is masqueraded. Shared by the tracers of every backend."""
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

    odds: dict[str, list[float | bool]] = {}
    for o in merged:
        if o.verdict == Verdict.DNAT:
            entry = odds.setdefault(o.destination, [0.0, False])
            entry[0] = float(entry[0]) + o.probability
            entry[1] = bool(entry[1]) or o.masquerade
    endpoints = tuple(EndpointOdds(d, float(p), bool(m)) for d, (p, m) in odds.items())

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
        key = (o.verdict, o.destination, o.masquerade, o.reason, o.mark,
               tuple((s.table, s.chain, s.index) for s in o.steps))
        old = merged.get(key)
        merged[key] = o if old is None else replace(old, probability=old.probability + o.probability)
    return list(merged.values())
