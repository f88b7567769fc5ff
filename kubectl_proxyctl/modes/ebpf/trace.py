"""One connection through an eBPF-mode node: the socket hook first, then the entry-point table.

Theory of operation: in eBPF mode a process on the node (a pod's, or the node's own) that
calls connect() — or sendmsg() on an unconnected UDP socket — runs the cgroup program of its
family (`pxc_connect4`, `pxc_sendmsg4`, …). The program looks the destination up in the
`services` map; on a hit it picks one of the entry's backends (uniformly, or the one the
`affinity` map remembers for this network namespace) and rewrites the socket's destination
before any packet exists. So a rewritten connection has no DNAT and no conntrack entry for the
service address, and nothing masquerades it; `recvmsg`/`getpeername` show the service address
back to the application through `revnat`. An entry flagged `F_REJECT` makes connect() fail
with ECONNREFUSED.

The trace follows that:

* a client on the node (pod or node): when the family's program is attached, the entry for
  (destination, port, protocol) decides — each backend `1/count` of new connections, a
  reject, or no entry (the socket goes on unchanged). A connection the hook leaves alone is
  then traced through the entry-point table (`proxyctl-ebpf`) like any packet, with the
  nftables tracer. When the program is not attached, the hook step says so, a note names the
  missing program, and the packet goes on to the table unchanged — never a silent pass;
* a client outside the node (external): no socket of this node is involved; the packet is
  traced through the `proxyctl-ebpf` table of its family (kube-proxy's nftables layout,
  holding the node ports, external and load-balancer IPs only).

A slot of an entry's range with no `backends` entry cannot be followed: that share ends as
UNKNOWN, never guessed. Affinity entries already in the map belong to clients we cannot name
(a network namespace cookie), so a trace is a client's first connection, and the note counts
how many network namespaces are pinned to a backend now.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from kubectl_proxyctl.modes.base import NodeRules
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.parse import EbpfState, FamilyState, ServiceRecord
from kubectl_proxyctl.modes.nftables.parse import NftTable
from kubectl_proxyctl.modes.nftables.trace import trace_nft
from kubectl_proxyctl.modes.tracing import (
    SOCKET_HOOK,
    LocalNode,
    Origin,
    Outcome,
    Packet,
    Step,
    TraceResult,
    Verdict,
    summarize,
)

NO_ENDPOINTS = "connect() fails with ECONNREFUSED: no endpoints"


def entry_tables(rules: NodeRules, v6: bool | None = None) -> tuple[NftTable, ...]:
    """The `proxyctl-ebpf` nft tables in the input (of one family, or both)."""
    nft = rules.nft
    if nft is None:
        return ()
    families = ("ip", "ip6") if v6 is None else (("ip6",) if v6 else ("ip",))
    return tuple(t for t in nft.tables if t.name == maps.NFT_TABLE and t.family in families)


def hooks_for(protocol: str, family: int) -> list[maps.ProgramSpec]:
    """The programs that rewrite a new connection of `protocol`: connect(), and for UDP also
    sendmsg() (unconnected sockets)."""
    wanted = ("cgroup_inet{f}_connect",) + (("cgroup_udp{f}_sendmsg",) if protocol.lower() == "udp" else ())
    types = {w.format(f=family) for w in wanted}
    return [spec for spec in maps.PROGRAMS if spec.attach_type in types]


def family_of_packet(packet: Packet) -> int:
    return 6 if ":" in packet.dst else 4


def trace_ebpf(rules: NodeRules, packet: Packet, node: LocalNode) -> TraceResult:
    """Where the first packet (or the connect()) of `packet` goes on an eBPF-mode node."""
    state: EbpfState | None = rules.ebpf
    v6 = ":" in packet.dst
    tables = entry_tables(rules, v6)
    if packet.origin == Origin.EXTERNAL or state is None:
        result = _through_table(tables, packet, node, v6)
        if state is None:
            return _noted(result, "no eBPF maps in the input: only the entry-point table was traced")
        return _noted(result, f"from outside the node no socket hook runs: the nft table "
                              f"{_table_title(v6)} serves node ports, external and load-balancer IPs")
    return _trace_socket(state, tables, packet, node)


def _table_title(v6: bool) -> str:
    return f"{'ip6' if v6 else 'ip'} {maps.NFT_TABLE}"


def _through_table(tables: Sequence[NftTable], packet: Packet, node: LocalNode, v6: bool) -> TraceResult:
    if not tables:
        return _noted(summarize(packet, []), f"no nft table {_table_title(v6)} in the input: nothing on this node "
                                             "takes packets to node ports, external or load-balancer IPs")
    return trace_nft(tables, packet, node)


def _noted(result: TraceResult, *notes: str) -> TraceResult:
    return replace(result, notes=tuple(dict.fromkeys(result.notes + notes)))


def _trace_socket(state: EbpfState, tables: Sequence[NftTable], packet: Packet, node: LocalNode) -> TraceResult:
    fam = family_of_packet(packet)
    hooks = hooks_for(packet.protocol, fam)
    call = "connect()/sendmsg()" if packet.protocol == "udp" else "connect()"
    notes: list[str] = []
    if state.programs is None:
        notes.append("the cgroup's programs are not in the input: the trace assumes they are attached")
        missing: list[maps.ProgramSpec] = []
    else:
        missing = [spec for spec in hooks if state.attached(spec) is None]
    where = state.cgroup or "any cgroup"
    connect = hooks[0]
    if connect in missing:
        notes.append(f"the socket hook is missing: {connect.name} ({connect.attach_type}) is not attached to {where}, "
                     f"so {call} to a service is not rewritten")
        step = Step(SOCKET_HOOK, connect.name, 0, f"not attached to {where}", "missing", 1.0)
        return _after_hook(tables, packet, node, step, notes)
    for spec in missing:
        notes.append(f"the socket hook {spec.name} ({spec.attach_type}) is not attached to {where}: sendmsg() on an "
                     "unconnected UDP socket is not rewritten")
    if packet.protocol == "udp":
        notes += _reply_hook_notes(state, fam, where)
    family = state.family(fam == 6)
    record = family.find(packet.dst, packet.dport, packet.protocol)
    if record is None:
        key = f"{_host(packet.dst)}:{packet.dport}/{packet.protocol.upper()}"
        step = Step(SOCKET_HOOK, connect.name, 1, f"services{fam} has no entry {key}", "not rewritten", 1.0)
        return _after_hook(tables, packet, node, step, notes)
    return _rewrite(record, family, packet, connect.name, call, notes)


def _reply_hook_notes(state: EbpfState, fam: int, where: str) -> list[str]:
    out = []
    for spec in maps.PROGRAMS:
        if spec.family == fam and "recvmsg" in spec.attach_type and state.attached(spec) is None:
            out.append(f"{spec.name} ({spec.attach_type}) is not attached to {where}: UDP replies show the "
                       "backend's address, and clients that check the reply's source drop them")
    return out


def _after_hook(tables: Sequence[NftTable], packet: Packet, node: LocalNode, step: Step,
                notes: list[str]) -> TraceResult:
    """The socket left unchanged: the packet meets the entry-point table like any other."""
    v6 = ":" in packet.dst
    rest = _through_table(tables, packet, node, v6)
    outcomes = [replace(o, steps=(step,) + o.steps) for o in rest.outcomes]
    if not outcomes:
        outcomes = [Outcome(Verdict.NONE, 1.0, "", False, (), (step,), "no rule changed or stopped the packet")]
    result = summarize(packet, outcomes)
    return replace(result, notes=tuple(dict.fromkeys(tuple(notes) + rest.notes + result.notes)))


def _rewrite(record: ServiceRecord, family: FamilyState, packet: Packet, program: str, call: str,
             notes: list[str]) -> TraceResult:
    fam = family.family
    what = record.name or f"service id {record.service_id}"
    head = f"services{fam} {record.key} → {what}"
    if record.reject:
        step = Step(SOCKET_HOOK, program, 1, f"{head}: reject", "ECONNREFUSED", 1.0)
        outcome = Outcome(Verdict.REJECT, 1.0, "", False, (), (step,), NO_ENDPOINTS)
        return replace(summarize(packet, [outcome]), notes=tuple(notes))
    count = record.value.count
    if count == 0:
        step = Step(SOCKET_HOOK, program, 1, f"{head}: no backends", "not rewritten", 1.0)
        outcome = Outcome(Verdict.NONE, 1.0, "", False, (), (step,),
                          f"{call} is not rewritten: the entry has no backends and no reject flag")
        return replace(summarize(packet, [outcome]), notes=tuple(notes))
    affinity: tuple[tuple[str, int], ...] = ()
    detail = f"{count} backend{'s' if count != 1 else ''}"
    if record.affinity_seconds:
        affinity = ((f"affinity{fam} (ClientIP affinity per pod network namespace)", record.affinity_seconds),)
        detail += f", ClientIP affinity per pod network namespace, {record.affinity_seconds} s"
        pinned = sum(1 for key, _ in family.affinity if key.service_id == record.service_id)
        notes.append(f"ClientIP affinity per pod network namespace, {record.affinity_seconds} s: the odds are a "
                     f"client's first connection; {pinned} network namespace{'s are' if pinned != 1 else ' is'} "
                     "pinned to a backend now")
    lookup = Step(SOCKET_HOOK, program, 1, f"{head}: {detail}", "lookup", 1.0)
    share = 1.0 / count
    outcomes: list[Outcome] = []
    target = f"{_host(packet.dst)}:{packet.dport}"
    for slot, backend in zip(record.slots, record.backends):
        step = Step(SOCKET_HOOK, program, 2, f"backends{fam} slot {slot}: {backend}{_backend_flags(backend)}",
                    f"rewrite {backend}", share)
        reason = (f"{call} to {target} is rewritten to {backend} (1 of {count}, {share * 100:.0f} %), no NAT: the "
                  "socket was rewritten")
        outcomes.append(Outcome(Verdict.DNAT, share, str(backend), False, affinity, (lookup, step), reason))
    for slot in record.missing_slots:
        step = Step(SOCKET_HOOK, program, 2, f"backends{fam} slot {slot}: no entry", "?", share)
        outcomes.append(Outcome(Verdict.UNKNOWN, share, "", False, affinity, (lookup, step),
                                f"slot {slot} of {record.key} has no entry in backends{fam}: the maps are "
                                "incomplete (a sync was cut short, or someone deleted it)"))
    result = summarize(packet, outcomes)
    return replace(result, notes=tuple(dict.fromkeys(tuple(notes) + result.notes)))


def _backend_flags(backend: maps.Backend) -> str:
    words = [w for flag, w in ((maps.B_LOCAL, "local"), (maps.B_TERMINATING, "terminating")) if backend.flags & flag]
    return f" ({', '.join(words)})" if words else ""


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
