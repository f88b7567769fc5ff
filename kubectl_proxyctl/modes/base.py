"""What a proxy mode is: the `Mode` names and the two protocols every mode implements.

A mode is a folder, `modes/<mode>/`, holding both sides of one way to implement Services on
a node, because each side needs the other's names and constants:

* a **Writer** (the engine's side): turns a `NodePlan` into the kernel's state in one full
  or partial sync, says whether its state is still there, deletes what it made stale, and
  removes everything it owns;
* a **Reader** (the inspector's side): from what was read off a node (`NodeRules`: live,
  from dump files, over SSH), tells whether this mode's state is there, traces a packet
  through it, verifies it against a plan, and gives `explain`, `dump` and the chain graph
  their facts.

Both protocols speak of what the commands do, not of chains and rules: IPVS and eBPF have no
chains. The engine drives any Writer; the inspector asks each Reader (a node may hold several
modes' leftovers at once). `modes/__init__.py` is the one list of modes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:  # the shared vocabulary, for annotations only
    from kubectl_proxyctl.model import ClusterState
    from kubectl_proxyctl.modes.facts import DumpLine, Edge, PortFacts, Problem
    from kubectl_proxyctl.modes.findings import Report
    from kubectl_proxyctl.modes.nodecontext import NodeContext
    from kubectl_proxyctl.modes.owners import ServiceSelector
    from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult
    from kubectl_proxyctl.plan.planner import NodePlan


class Mode(enum.StrEnum):
    """The proxy modes, by the name `--mode` takes."""

    IPTABLES = "iptables"
    NFTABLES = "nftables"
    IPVS = "ipvs"
    EBPF = "ebpf"


# --- the engine's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What one sync wrote."""

    full: bool  # the whole state was rewritten (False: only the changed services)
    rules: int  # rules (or entries) written, for the log line
    counts: Any = None  # mode-specific figures for the mode's metrics (`Writer.record_metrics`)


class Writer(Protocol):
    """Programs one mode's state into the kernel. Methods raise ProxyctlError subclasses."""

    mode: Mode
    # Seconds between forced full syncs (inf: only at start, after a failure, on node change).
    full_sync_period: float

    def sync(self, plan: "NodePlan", full: bool, changed: frozenset[str] | set[str]) -> Written:
        """Write `plan`: everything when `full`, else only the `changed` services (by
        "ns/name") on top of the last successful sync. Atomic where the kernel allows; a
        failure raises ApplyError and leaves the previous state serving."""
        ...

    def after_failure(self, error: Exception) -> None:
        """Put the last good state back if a failed sync may have left part of it written."""
        ...

    def before_sync(self, pending_changes: bool, metrics: Any, family: str) -> None:
        """Housekeeping a sync starts with (e.g. deleting chains made stale a while ago);
        failures are logged and counted in `metrics` (may be None), never raised."""
        ...

    def state_missing(self) -> list[str]:
        """What of our state someone removed (named for the log); [] when all is there."""
        ...

    def delete_stale(self) -> int:
        """Delete now what earlier syncs left stale (for `run --once`); how many."""
        ...

    def record_metrics(self, metrics: Any, family: str, written: Written) -> None:
        """Set the mode's own metrics after a successful sync."""
        ...

    def count_failure(self, metrics: Any, family: str, full: bool) -> None:
        """Count a failed sync in the mode's own metrics."""
        ...


# --- the inspector's side ----------------------------------------------------------------


class NodeRules(Protocol):
    """What was read from one node (`inspect.graph.RuleGraph`): one parsed part per kind of
    text, because a mode's state may span several (IPVS mode: virtual services, ipsets and
    iptables companion rules), and a node may hold several modes' leftovers at once."""

    iptables: Any  # the iptables dumps, one per backend found
    nft: Any  # the nft ruleset, or None
    ipvs: Any  # the IPVS table, or None
    ipsets: Any  # name → ipset
    links: Any  # `ip -json address show`: link name → its addresses, or None when not read
    ebpf: Any  # eBPF mode's maps and attached programs (`modes.ebpf.parse.EbpfState`), or None
    notes: tuple[str, ...]

    @property
    def ruleset(self) -> Any: ...  # the iptables rules in use, or None

    @property
    def iptables_dump(self) -> Any: ...

    def nft_tables(self) -> Any: ...

    def ipvs_services(self) -> Any: ...


@dataclass(frozen=True)
class PortsRead:
    """The service ports a Reader found in its state, for `explain`."""

    facts: "list[PortFacts] | None"  # None: the state alone cannot name them (or not asked)
    v6: bool  # the state is IPv6
    unnamed: str = ""  # why the state cannot name service ports, when it cannot


class Reader(Protocol):
    """Reads one mode's state from what was collected on a node."""

    mode: Mode

    def present(self, rules: NodeRules) -> str:
        """Evidence that this mode's state is on the node ("" when there is none)."""
        ...

    def trace(self, rules: NodeRules, packet: "Packet", node: "LocalNode") -> "TraceResult":
        """Where the first packet of a new connection goes through this mode's state."""
        ...

    def verify(self, rules: NodeRules, state: "ClusterState", node: "NodeContext",
               selector: "ServiceSelector | None") -> "Report":
        """This mode's state against the plan for `state` (node-wide checks are the caller's)."""
        ...

    def read_ports(self, rules: NodeRules, state: "ClusterState | None", selector: "ServiceSelector",
                   facts: bool = True) -> PortsRead:
        """The Service's ports and entry points found in the state (when `facts`), and its family."""
        ...

    def layout_problems(self, rules: NodeRules) -> "list[Problem]":
        """Node-wide trouble with the layout itself (e.g. a missing hook jump)."""
        ...

    def dump_lines(self, rules: NodeRules, state: "ClusterState | None", node_ips: Sequence[str],
                   selector: "ServiceSelector | None") -> "list[DumpLine]":
        """Every line of this mode's state, annotated with its service port and endpoint."""
        ...

    def edges(self, rules: NodeRules, state: "ClusterState | None",
              selector: "ServiceSelector") -> "list[Edge]":
        """The graph of this mode's state for one Service (`explain -o dot`)."""
        ...
