"""The text view of `explain`: the answer first, the rules on demand.

The answer is a few lines: one header line for the Service (its type and ports), then per
service port one line per verdict, where clients and ways in that end up the same way share
a line ("node, external → cluster IP 10.96.1.1:80 → 1 of 3 endpoints, 33.3 % each, SNAT to
the node"), then the port's endpoints by name (pod, node, zone), then the problems.

`--rules` adds the rule walk of every path, drawn as a tree. A path's ways through the rules
share their beginning (the hooks, the service's entry rule, the masquerade mark) and part at
the step that picks the endpoint (an iptables `statistic` rule, an nft `numgen` verdict
map, an IPVS scheduler): the shared rules are printed once, then one branch per endpoint with
its odds and the rules only that branch crosses. The tree is built from the traced steps,
so it branches wherever the traces do, and every rule of `PathResult.rules()` is in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from kubectl_proxyctl.inspect.addresses import KIND_WORDS
from kubectl_proxyctl.inspect.explain import (
    Explanation,
    PathResult,
    PortResult,
    address_text,
    crossed,
    outcome_phrase,
    percent,
    step_text,
)
from kubectl_proxyctl.model import Endpoint
from kubectl_proxyctl.modes.tracing import Outcome, Step, Verdict

ALIGN_LIMIT = 40  # columns wider than this are not padded (one long line must not push every verdict right)
ROSTER_LINES = 10  # endpoints listed by name per port; more are counted (-o json lists them all)


def render_text(ex: Explanation, rules: bool = False) -> str:
    """The answer; with `rules`, followed by the rule walk of every path."""
    lines = []
    if ex.target:
        lines.append(ex.target)
    lines.append(_header(ex))
    if ex.client:
        lines.append(f"Client: {ex.client}")
    for port in ex.ports:
        lines.append("")
        lines += _port_answer(ex, port)
    if ex.findings:
        lines.append("")
        lines.append("Other software's rules in the way:")
        lines += [f"  {f.message}" for f in ex.findings]
    if ex.problems:
        lines.append("")
        lines.append("Problems:")
        lines += [f"  {p.severity}: {p.message}" for p in ex.problems]
    if rules:
        for port in ex.ports:
            lines.append("")
            lines += _port_walk(ex, port)
    return "\n".join(lines) + "\n"


def _header(ex: Explanation) -> str:
    """`Service ns/name: NodePort, port http 80/TCP (node port 30080); node node1, iptables rules from F`."""
    ports = []
    for port in ex.ports:
        f = port.facts
        text = f"{f.name or '<unnamed>'}" + (f" {f.port}" if f.port else "") + f"/{f.protocol}"
        node_ports = sorted({e.facts.port for e in port.entries if e.facts.kind == "NodePort"})
        if node_ports:
            text += f" (node port {', '.join(map(str, node_ports))})"
        ports.append(text)
    what = [ex.service_type] if ex.service_type else []
    if ports:
        what.append(("ports " if len(ports) > 1 else "port ") + ", ".join(ports))
    where = f"{ex.mode} rules" + (f" from {', '.join(ex.sources)}" if ex.sources else "")
    return f"Service {ex.service}" + (f": {', '.join(what)}" if what else "") + \
        f"; node {ex.node or '<unknown>'}, {where}"


# --- the answer ------------------------------------------------------------------------


@dataclass
class _Roster:
    """A service port's endpoints: from the Service objects when known, plus any address the
    rules send to that they do not list."""

    endpoints: list[Endpoint]
    extra: list[str]  # DNAT destinations the objects do not list (or all, without objects)
    node: str | None

    def __post_init__(self) -> None:
        self._by_address = {e.address: e for e in self.endpoints}

    def name(self, destination: str) -> str:
        """The pod behind an `ip:port`, else the `ip:port`."""
        e = self._by_address.get(destination)
        return e.pod_name if e is not None and e.pod_name else destination

    def node_of(self, destination: str) -> str:
        e = self._by_address.get(destination)
        return e.node_name if e is not None else ""

    @property
    def size(self) -> int:
        return len([e for e in self.endpoints if e.ready or e.serving]) + len(self.extra)


def _roster(ex: Explanation, port: PortResult) -> _Roster:
    known = list(port.facts.endpoints or ())
    listed = {e.address for e in known}
    extra: list[str] = []
    for er in port.entries:
        for path in er.paths:
            extra += [e.destination for e in path.result.endpoints if e.destination not in listed]
    return _Roster(known, list(dict.fromkeys(extra)), ex.node)


def _client_label(ex: Explanation, path: PathResult, several: bool) -> str:
    if ex.client and path.client == "pod":
        return f"pod {ex.client.split(' ', 1)[0]}"
    return f"{path.client} ({path.source})" if several else path.client


@dataclass
class _Row:
    clients: list[str]
    ways: list[tuple[str, str]]  # (kind, address)
    phrase: str

    def ways_text(self) -> str:
        """`cluster IP 10.96.0.1:80`, `node port 172.18.0.2:30080, 10.0.0.2:30080`: the kind once
        for consecutive addresses of one kind."""
        parts: list[str] = []
        last = ""
        for kind, address in self.ways:
            parts.append(address if kind == last else f"{KIND_WORDS.get(kind, kind)} {address}")
            last = kind
        return ", ".join(parts)


def _port_answer(ex: Explanation, port: PortResult) -> list[str]:
    """The port's verdicts, one line per verdict: clients with the same verdict for a way in
    share a line, and so do ways in with the same verdicts for the same clients."""
    f = port.facts
    roster = _roster(ex, port)
    lines = [f"Port {f.name or '<unnamed>'}" + (f" {f.port}" if f.port else "") + f"/{f.protocol}"]
    rows: list[_Row] = []
    for er in port.entries:
        way = (er.facts.kind, address_text(er.facts.address, er.facts.port))
        counts = {c: sum(1 for p in er.paths if p.client == c) for c in {p.client for p in er.paths}}
        by_phrase: dict[str, list[str]] = {}
        for path in er.paths:
            phrase = outcome_phrase(path.result, roster.name, roster.size)
            by_phrase.setdefault(phrase, []).append(_client_label(ex, path, counts[path.client] > 1))
        for phrase, clients in by_phrase.items():
            same = next((r for r in rows if r.clients == clients and r.phrase == phrase), None)
            if same is not None:
                same.ways.append(way)
            else:
                rows.append(_Row(clients, [way], phrase))
    if not rows:
        lines.append("  no way in to explain")
    texts = [(", ".join(r.clients), r.ways_text()) for r in rows]
    w1 = max((len(a) for a, _ in texts), default=0)
    w2 = max((len(b) for _, b in texts), default=0)
    w1, w2 = (w1 if w1 <= ALIGN_LIMIT else 0), (w2 if w2 <= ALIGN_LIMIT else 0)
    for (clients, ways), row in zip(texts, rows):
        lines.append(f"  {clients:<{w1}} → {ways:<{w2}} → {row.phrase}")
    lines += _roster_lines(roster, port)
    return lines


def _reached(port: PortResult) -> set[str]:
    return {e.destination for er in port.entries for p in er.paths for e in p.result.endpoints}


def _roster_lines(roster: _Roster, port: PortResult) -> list[str]:
    reached = _reached(port)
    items: list[tuple[str, str, str]] = []
    for e in roster.endpoints:
        where = []
        if e.node_name:
            where.append(e.node_name + (" (this node)" if roster.node and e.node_name == roster.node else ""))
        if e.zone:
            where.append(f"zone {e.zone}")
        state = [] if e.address in reached else [_unused(e)]
        items.append((e.pod_name, e.address, ", ".join(where + state)))
    items += [("", d, "") for d in roster.extra]
    if not items:
        return ["  endpoints: none"] if port.facts.endpoints is not None else []
    if all(not name for name, _, _ in items) and all(not where for _, _, where in items):
        shown = [d for _, d, _ in items]
        text = ", ".join(shown[:ROSTER_LINES])
        more = len(shown) - ROSTER_LINES
        return [f"  endpoints: {text}" + (f" and {more} more (-o json lists them all)" if more > 0 else "")]
    w1 = max(len(n) for n, _, _ in items[:ROSTER_LINES])
    w2 = max(len(a) for _, a, _ in items[:ROSTER_LINES])
    out = []
    for i, (name, address, where) in enumerate(items[:ROSTER_LINES]):
        lead = "  endpoints: " if i == 0 else " " * len("  endpoints: ")
        named = f"{name or '-':<{w1}}  " if w1 else ""
        out.append(f"{lead}{named}{address:<{w2}}  {where}".rstrip())
    if len(items) > ROSTER_LINES:
        out.append(" " * len("  endpoints: ") + f"… and {len(items) - ROSTER_LINES} more (-o json lists them all)")
    return out


def _unused(e: Endpoint) -> str:
    if e.terminating:
        return "terminating: no new connections here"
    if not e.ready:
        return "not ready: no new connections here"
    return "no path explained here reaches it"


# --- the rule walk ---------------------------------------------------------------------


@dataclass
class _Node:
    step: Step | None
    children: dict[str, "_Node"] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)  # the ways through this step
    ends: list[Outcome] = field(default_factory=list)  # the ways whose last step this is


def walk_tree(path: PathResult) -> _Node:
    """The ways through the rules of one path as a tree of steps: ways that cross the same
    rule in the same order share a node; an nft verdict map that forks is one node."""
    root = _Node(None)
    for outcome in path.result.outcomes:
        node = root
        node.outcomes.append(outcome)
        for step in crossed(outcome.steps):
            key = f"{step.table}\0{step.chain}\0{step.index}\0{step_text(step)}"
            node = node.children.setdefault(key, _Node(step))
            node.outcomes.append(outcome)
        node.ends.append(outcome)
    return root


def render_walk(path: PathResult, name: Callable[[str], str] = str, indent: str = "    ") -> list[str]:
    """The rule walk of one path as indented lines (see the module docstring)."""
    lines: list[str] = []
    _emit(walk_tree(path), indent, lines, name)
    if not lines:
        lines.append(f"{indent}(no rule matched)")
    return lines


def _emit(node: _Node, indent: str, lines: list[str], name: Callable[[str], str]) -> None:
    while len(node.children) == 1 and not node.ends:
        node = next(iter(node.children.values()))
        assert node.step is not None
        lines.append(indent + step_text(node.step))
    branches: list[tuple[list[Outcome], _Node | None]] = [([o], None) for o in node.ends] \
        if node.children else []
    branches += [(child.outcomes, child) for child in node.children.values()]
    if len(branches) < 2 and not node.children:
        return
    for i, (outcomes, child) in enumerate(branches):
        last = i == len(branches) - 1
        odds = percent(sum(o.probability for o in outcomes))
        lines.append(f"{indent}{'└─' if last else '├─'} {odds} → {_where(outcomes, name)}")
        if child is not None:
            inner = indent + ("   " if last else "│  ")
            assert child.step is not None
            lines.append(inner + step_text(child.step))
            _emit(child, inner, lines, name)


def _where(outcomes: Sequence[Outcome], name: Callable[[str], str]) -> str:
    words = []
    for o in outcomes:
        if o.verdict == Verdict.DNAT:
            word = name(o.destination)
        elif o.verdict == Verdict.NONE:
            word = "unchanged"
        else:
            word = o.verdict.value
        if word not in words:
            words.append(word)
    return ", ".join(words)


def _port_walk(ex: Explanation, port: PortResult) -> list[str]:
    f = port.facts
    roster = _roster(ex, port)

    def name(destination: str) -> str:
        """`pod ip:port (node)`, as much of it as is known."""
        label = roster.name(destination)
        node = roster.node_of(destination)
        text = destination if label == destination else f"{label} {destination}"
        return f"{text} ({node})" if node else text

    lines = [f"Rule walk, port {f.name or '<unnamed>'}" + (f" {f.port}" if f.port else "") + f"/{f.protocol}:"]
    if port.desired is not None:
        lines.append(f"  desired (the plan for this node): {port.desired.get('summary', '')}")
    for er in port.entries:
        way = f"{KIND_WORDS.get(er.facts.kind, er.facts.kind)} {address_text(er.facts.address, er.facts.port)}"
        for path in er.paths:
            client = _client_label(ex, path, False)
            lines.append(f"  {client} from {path.source} → {way} → {outcome_phrase(path.result, roster.name, roster.size)}")
            lines += [f"    note: {n}" for n in path.result.notes]
            if path.result.settled:
                lines.append(f"    note: the same answer whether or not {'; '.join(path.result.settled)} "
                             "(the rules ask; every way gives this answer)")
            lines += render_walk(path, name)
    return lines
