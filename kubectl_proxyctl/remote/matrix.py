"""The probe matrix: who probes what, what each cell should see, and the verdicts. Pure.

Theory of operation: a MatrixPlan is a list of Sections (one per probed port: a service
port's node port, its load-balancer and external IPs, or a health-check node port). A
section has Columns (where the probe goes: each node's address, the prober's own
127.0.0.1, a load-balancer or external IP) and, for every (source, column) pair that makes
sense, an Expectation; the sources are this machine (`LOCAL`) and the nodes. `probes_for`
turns a source's cells into ProbeSpecs; `judge` compares an Observation with its
Expectation; `summarize` names the nodes that misbehave and says why it matters.

Verdicts: `ok`; `unexpected-open` (answered where kube-proxy would reject or drop, or a
health check said 200 where 503 was due); `unexpected-closed` (refused, unreachable, or a
health check said 503 where 200 was due); `timeout` (no answer where one was due);
`ssh-error` (the probe could not run on the source node). A refusal and a timeout both
meet a "not open" expectation; which one kube-proxy produces is in the expectation
(`refused`: no endpoints anywhere, REJECT; `dropped`: ETP=Local without a local endpoint,
or a source range, DROP).

UDP without a reply is "sent": it meets any expectation, except with `udp_reply` (the
backend answers every datagram), where it counts as a timeout.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from kubectl_proxyctl.remote.probe import Mode, Observation, ProbeSpec, Seen

LOCAL = "(local)"  # the row of probes made from this machine; never a valid node name
LOCALHOST = "127.0.0.1"  # also the label of the column of each node's own loopback


class Want(str, enum.Enum):
    OPEN = "open"
    REFUSED = "refused"  # REJECT: the service has no endpoints
    DROPPED = "dropped"  # DROP: ETP=Local without a local endpoint, or not in the source ranges
    CLOSED = "closed"  # nothing is there: no Service uses the port

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    OK = "ok"
    UNEXPECTED_OPEN = "unexpected-open"
    UNEXPECTED_CLOSED = "unexpected-closed"
    TIMEOUT = "timeout"
    SSH_ERROR = "ssh-error"

    def __str__(self) -> str:
        return self.value


class ColumnKind(str, enum.Enum):
    NODE = "node"  # a node's address
    LOCALHOST = "localhost"  # the source node's own 127.0.0.1
    LOAD_BALANCER = "loadBalancerIP"
    EXTERNAL_IP = "externalIP"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Node:
    """A node to probe from and to: `address` is what gets probed, `ssh_host` where to SSH."""

    name: str
    address: str
    ssh_host: str


@dataclass(frozen=True)
class Column:
    label: str
    kind: ColumnKind
    port: int
    address: str = ""  # empty for LOCALHOST: the source's own loopback
    node: str = ""  # the node of a NODE column

    def target(self) -> str:
        return LOCALHOST if self.kind == ColumnKind.LOCALHOST else self.address


@dataclass(frozen=True)
class Expectation:
    want: Want
    reason: str
    http_status: int | None = None  # health-check node ports: 200 or 503
    local_endpoints: int | None = None


@dataclass(frozen=True)
class Section:
    """One probed port: its columns and the expectation of every cell."""

    title: str  # e.g. "default/web:http NodePort 30080/TCP"
    protocol: str  # "TCP" or "UDP"
    mode: Mode
    columns: tuple[Column, ...]
    expectations: Mapping[tuple[str, str], Expectation]  # (source, column label) → expectation
    path: str = "/"
    service: str = ""
    policy: str = ""  # externalTrafficPolicy, when known
    health_check: bool = False


@dataclass(frozen=True)
class MatrixPlan:
    sections: tuple[Section, ...]
    sources: tuple[str, ...]  # LOCAL and/or node names, in row order
    nodes: tuple[Node, ...]
    basis: str  # where the expectations come from (shown to the user)
    notes: tuple[str, ...] = ()
    udp_reply: bool = False  # UDP backends answer every datagram

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)


@dataclass(frozen=True)
class Cell:
    section: int
    source: str
    column: Column
    expectation: Expectation
    observation: Observation
    verdict: Verdict


CellKey = tuple[int, str, str]  # (section index, source, column label)


def probes_for(plan: MatrixPlan, source: str) -> list[tuple[CellKey, ProbeSpec]]:
    """The probes `source` makes, each with the cell it fills."""
    out: list[tuple[CellKey, ProbeSpec]] = []
    for i, section in enumerate(plan.sections):
        for j, column in enumerate(section.columns):
            if (source, column.label) not in section.expectations:
                continue
            spec = ProbeSpec(f"s{i}c{j}", section.mode, column.target(), column.port, section.path)
            out.append(((i, source, column.label), spec))
    return out


def judge(expectation: Expectation, observation: Observation, udp_reply: bool = False) -> Verdict:
    seen = observation.seen
    if seen == Seen.ERROR:
        return Verdict.SSH_ERROR
    if seen == Seen.SENT:
        if udp_reply and expectation.want == Want.OPEN:
            return Verdict.TIMEOUT
        return Verdict.OK
    if expectation.http_status is not None:
        if seen == Seen.TIMEOUT:
            return Verdict.TIMEOUT
        if seen != Seen.OPEN or observation.http_status is None:
            return Verdict.UNEXPECTED_CLOSED
        if observation.http_status == expectation.http_status:
            return Verdict.OK
        return Verdict.UNEXPECTED_OPEN if observation.http_status == 200 else Verdict.UNEXPECTED_CLOSED
    if expectation.want == Want.OPEN:
        if seen == Seen.OPEN:
            return Verdict.OK
        return Verdict.TIMEOUT if seen == Seen.TIMEOUT else Verdict.UNEXPECTED_CLOSED
    return Verdict.UNEXPECTED_OPEN if seen == Seen.OPEN else Verdict.OK


def cells(plan: MatrixPlan, observations: Mapping[CellKey, Observation]) -> list[Cell]:
    """Every cell of the plan, judged; a cell without an observation is an ssh-error."""
    out: list[Cell] = []
    missing = Observation(Seen.ERROR, detail="not probed")
    for i, section in enumerate(plan.sections):
        for source in plan.sources:
            for column in section.columns:
                want = section.expectations.get((source, column.label))
                if want is None:
                    continue
                seen = observations.get((i, source, column.label), missing)
                out.append(Cell(i, source, column, want, seen, judge(want, seen, plan.udp_reply)))
    return out


# --- the summary -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One misbehaving node (or the load balancer path), and why it matters."""

    node: str
    message: str
    cells: int


@dataclass(frozen=True)
class Summary:
    total: int
    failed: int
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def headline(self, basis: str) -> str:
        if self.ok:
            return f"OK: all {self.total} cells meet their expectation ({basis})."
        nodes = sorted({f.node for f in self.findings})
        return (f"FAIL: {self.failed} of {self.total} cells miss their expectation; "
                f"misbehaving: {', '.join(nodes)} ({basis}).")


def _culprit(cell: Cell) -> str:
    """Whose fault a failing cell is: the source for SSH errors and for traffic the source
    handles itself (its own loopback, a VIP), else the node whose address was probed."""
    if cell.verdict == Verdict.SSH_ERROR or cell.column.kind == ColumnKind.LOCALHOST:
        return cell.source
    if cell.column.kind == ColumnKind.NODE:
        return cell.column.node
    return cell.source if cell.source != LOCAL else f"{cell.column.kind} {cell.column.address}"


def _why(cell: Cell, section: Section, node: str) -> str:
    want, verdict, seen = cell.expectation, cell.verdict, cell.observation
    port = f"{cell.column.port}/{section.protocol}"
    if section.health_check:
        got = seen.http_status if seen.http_status is not None else str(seen.seen)
        if verdict == Verdict.UNEXPECTED_OPEN:
            return (f"health check {port} answers {got} but {node} has no ready local endpoint "
                    "— a load balancer would send it traffic that is dropped")
        return (f"health check {port} answers {got}, expected {want.http_status} ({want.reason}) "
                "— load balancers take the node out of rotation although it could serve")
    if verdict == Verdict.UNEXPECTED_OPEN:
        if want.want == Want.DROPPED:
            return (f"{port} answers although it should drop ({want.reason}) — ETP=Local is not "
                    "enforced: traffic is forwarded to other nodes and loses the client's source IP")
        if want.want == Want.REFUSED:
            return f"{port} answers although the service has no endpoints — something else serves this port"
        return f"{port} answers although no Service uses it — some other process listens there"
    what = {Verdict.TIMEOUT: "does not answer (timeout)", Verdict.UNEXPECTED_CLOSED: "refuses connections"}
    return (f"{port} {what.get(verdict, str(verdict))} although it should be open ({want.reason}) "
            "— clients and load balancers sending traffic there fail")


def summarize(plan: MatrixPlan, judged: Sequence[Cell]) -> Summary:
    """One finding per node whose SSH failed, and one per misbehaving node and section."""
    failing = [c for c in judged if c.verdict != Verdict.OK]
    unreachable: dict[str, list[Cell]] = {}
    wrong: dict[tuple[str, int], list[Cell]] = {}
    for cell in failing:
        if cell.verdict == Verdict.SSH_ERROR:
            unreachable.setdefault(cell.source, []).append(cell)
        else:
            wrong.setdefault((_culprit(cell), cell.section), []).append(cell)
    findings: list[tuple[str, int, Finding]] = []
    for node, group in unreachable.items():
        detail = group[0].observation.detail or "the probe could not run"
        findings.append((node, -1, Finding(node, f"{node}: {detail} — its row ({len(group)} cells) was not probed",
                                           len(group))))
    for (node, index), group in wrong.items():
        first = group[0]
        sources = sorted({c.source for c in group})
        probing = {c.source for c in judged if c.section == index and c.column == first.column
                   and c.verdict != Verdict.SSH_ERROR}
        scope = "from every source" if len(sources) > 1 and set(sources) == probing else f"from {', '.join(sources)}"
        more = f" (+{len(group) - 1} more cells)" if len(group) > 1 else ""
        message = f"{node}: {_why(first, plan.sections[index], node)}; seen {scope}{more}"
        findings.append((node, index, Finding(node, message, len(group))))
    findings.sort(key=lambda f: (f[0], f[1]))
    return Summary(total=len(judged), failed=len(failing), findings=tuple(f for _, _, f in findings))
