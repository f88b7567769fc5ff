"""`dump`: a node's rules, each annotated with the service port and endpoint it serves.

Theory of operation: the rules are listed in the order the tools printed them, one record per
line (an iptables chain declaration or rule, an nft set element or rule, an IPVS virtual or
real server, an ipset member), with the owner the mode's names module found for it. With a selector
only the lines of that Service are kept: its own chains, its entry rules in the shared
chains, its map elements, and (with the Service objects) its virtual services.

Views: `render_annotated` (the rules in their own syntax, an `# ns/svc:port → endpoint`
note after each), `render_raw` (exactly the tools' syntax, nothing added: iptables-save
blocks that `iptables-restore` accepts, an `nft -f` script per nft table (the table, chains
and sets declared first, then rules and map elements, so a whole table loads back as it
was), `ipvsadm -S` and `ipset save` lines, and for eBPF mode the `bpftool map update` and
`bpftool cgroup attach` commands that write the same entries and attach the same programs),
and `records` (TABLE CHAIN SERVICE ENDPOINT RULE, for `-o table` and `-o json`).

In the nft table, a `cluster-ips` element belongs to the service ports whose map elements
send that address to a service-/local- chain or to a no-endpoints verdict.
"""

from __future__ import annotations

from typing import Sequence

from kubectl_proxyctl.inspect.graph import RuleGraph
from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes import reader
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.facts import DumpLine
from kubectl_proxyctl.modes.owners import ServiceSelector


def dump_lines(graph: RuleGraph, mode: Mode, state: ClusterState | None, node_ips: Sequence[str],
               selector: ServiceSelector | None) -> list[DumpLine]:
    """Every line of the node's proxy rules (all modes found; `mode`'s first)."""
    order = [mode] + [m for m in Mode if m != mode]
    out: list[DumpLine] = []
    for m in order:
        out += reader(m).dump_lines(graph, state, node_ips, selector)
    return out


def _note(line: DumpLine) -> str:
    if not line.service:
        return ""
    return f"  # {line.service}" + (f" → {line.endpoint}" if line.endpoint else "")


def render_annotated(lines: Sequence[DumpLine]) -> str:
    out: list[str] = []
    backend = None
    for line in lines:
        if line.backend != backend:
            if out:
                out.append("")
            out.append(f"# --- {line.backend} ---")
            backend = line.backend
        out.append(f"{' ' * line.indent}{line.text}{_note(line)}")
    return "\n".join(out) + ("\n" if out else "")


def render_raw(lines: Sequence[DumpLine]) -> str:
    out: list[str] = []
    script: list[DumpLine] = []

    def flush() -> None:
        # One script per table (`nft -f`): the table, its chains and sets before the rules and
        # map elements that refer to them.
        order = {"table": 0, "chain": 1, "set": 2, "rule": 3, "element": 4}
        out.extend(ln.raw for ln in sorted(script, key=lambda ln: order.get(ln.kind, 5)))
        script.clear()

    for line in lines:
        if line.raw:
            if line.kind == "table":
                flush()
            script.append(line)
            continue
        flush()
        out.append(line.text)
    flush()
    return "\n".join(out) + ("\n" if out else "")


def records(lines: Sequence[DumpLine]) -> list[DumpLine]:
    """The lines that are rules or elements (not table/chain headers); eBPF mode's attached
    programs count as rules."""
    return [ln for ln in lines if ln.kind in ("rule", "element", "real-server", "virtual-service", "member",
                                              "program")]
