"""One packet through a RuleGraph, whatever the proxy mode.

`trace_packet(graph, mode, packet, node)` hands the packet to the tracer of `mode`'s Reader
(`modes/<mode>/trace.py`) and always answers with a `modes.tracing.TraceResult`: iptables
walks the rules in use (ipsets given, so IPVS-style `-m set` rules evaluate too), nftables the
`kube-proxy` tables of the packet's family, IPVS the companion iptables rules and then the
virtual service (see `modes/ipvs/trace.py` for how a real server's share is computed).
"""

from __future__ import annotations

from kubectl_proxyctl.inspect.graph import RuleGraph
from kubectl_proxyctl.modes import reader
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, TraceResult


def trace_packet(graph: RuleGraph, mode: Mode, packet: Packet, node: LocalNode) -> TraceResult:
    """Where this first packet goes under `mode`'s rules on `node`."""
    return reader(mode).trace(graph, packet, node)


