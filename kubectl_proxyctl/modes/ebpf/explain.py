"""What `explain` and `dump` need from eBPF mode: service ports read back from the maps, the
lines `dump` prints, the graph of one Service, and node-wide trouble with the layout.

Every `services` entry carries a service id whose `names` entry spells its service port
("ns/name:port/PROTO"), so the maps name themselves; with the Service objects at hand an
entry the `names` map does not name is matched to them by address, port and protocol. The
flags tell a cluster IP (none), a node port (`F_NODEPORT`) and an external entry
(`F_EXTERNAL`); external and load-balancer IPs share that flag, so the entry-point table (its
`firewall-ips` elements) tells a load-balancer IP with source ranges apart, and such an IP,
which gets no socket entry at all, is read from the table alone.

`dump` lists the cgroup and its programs, then per family every service entry with its flags
and its backends (slot by slot), the affinity entries, and then the entry-point table as the
nftables dump shows any table. Its raw form is a script of `bpftool` commands that writes the
same entries and attaches the same programs.
"""

from __future__ import annotations

from typing import Sequence

from kubectl_proxyctl.model import ClusterState, ServicePort
from kubectl_proxyctl.modes.base import NodeRules
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.parse import EbpfState, ServiceRecord, protocol_of
from kubectl_proxyctl.modes.ebpf.trace import entry_tables
from kubectl_proxyctl.modes.ebpf.verify import flag_text
from kubectl_proxyctl.modes.facts import KINDS, DumpLine, Edge, EntryFacts, PortFacts, Problem
from kubectl_proxyctl.modes.nftables.dump import nft_lines
from kubectl_proxyctl.modes.nftables.explain import facts_from_nft, hook_problems, nft_edges
from kubectl_proxyctl.modes.nftables.names import resolve_nft
from kubectl_proxyctl.modes.owners import ServiceSelector

BACKEND = "ebpf"  # DumpLine.backend of the maps' lines
TABLE = "bpf"


# --- names -------------------------------------------------------------------------------


def owner_of(record: ServiceRecord, state: ClusterState | None, node_ips: Sequence[str] = ()) -> str:
    """The service port an entry serves: the `names` map's, else the Service objects' (matched
    by address, port and protocol), else ""."""
    if record.service_port:
        return record.service_port
    if state is None:
        return ""
    key = record.key
    for spn, sp in state.ports.items():
        if sp.protocol.value == key.protocol and _serves(sp, record, node_ips):
            return str(spn)
    return ""


def _serves(sp: ServicePort, record: ServiceRecord, node_ips: Sequence[str]) -> bool:
    key = record.key
    if record.flags & maps.F_NODEPORT:
        return bool(sp.node_port) and key.port == sp.node_port
    if key.port != sp.port:
        return False
    if record.flags & maps.F_EXTERNAL:
        return key.ip in sp.external_ips or key.ip in sp.load_balancer_ips
    return key.ip in sp.cluster_ips


# --- explain -----------------------------------------------------------------------------


def families_of(ebpf: EbpfState, selector: ServiceSelector | None) -> set[int]:
    """The families holding entries (of the selected Service)."""
    return {fam for fam, state in ebpf.families.items()
            for record in state.services.values() if selector is None or selector.matches(record.service_port)}


def facts_from_maps(rules: NodeRules, selector: ServiceSelector, v6: bool) -> list[PortFacts]:
    """The Service's ports and entry points, read back from the maps of one family (and the
    entry-point table of that family)."""
    ebpf: EbpfState | None = rules.ebpf
    ports: dict[tuple[str, str], PortFacts] = {}

    def port_of(spn: str, protocol: str) -> PortFacts:
        if (spn, protocol) not in ports:
            _, _, name = spn.partition(":")
            ports[(spn, protocol)] = PortFacts(spn, name, protocol, None)
        return ports[(spn, protocol)]

    if ebpf is not None:
        for record in ebpf.family(v6).services.values():
            spn = record.service_port
            if not spn or not selector.matches(spn):
                continue
            p = port_of(spn, protocol_of(record.name) or record.key.protocol)
            if record.kind == "ClusterIP":
                p.port = p.port or record.key.port
                p.entries.append(EntryFacts("ClusterIP", record.key.ip, record.key.port))
            elif record.kind == "NodePort":
                p.entries.append(EntryFacts("NodePort", None, record.key.port))
            else:
                p.entries.append(EntryFacts("ExternalIP", record.key.ip, record.key.port))
    tables = entry_tables(rules, v6)
    for nft in facts_from_nft(tables, resolve_nft(tables), selector) if tables else ():
        p = port_of(nft.service_port, nft.protocol.upper())
        p.port = p.port or nft.port
        for entry in nft.entries:
            same = [e for e in p.entries if (e.address, e.port) == (entry.address, entry.port)]
            if entry.kind == "LoadBalancer":
                p.entries = [e for e in p.entries if e not in same]
                p.entries.append(entry)
            elif not same:
                p.entries.append(entry)
    for p in ports.values():
        unique = {(e.kind, e.address, e.port): e for e in p.entries}
        p.entries = sorted(unique.values(), key=lambda e: (KINDS.index(e.kind), e.address or "", e.port))
    return sorted(ports.values(), key=lambda p: (p.service_port, p.protocol))


def layout_problems(rules: NodeRules) -> list[Problem]:
    """The socket hooks that are not attached, a missing or foreign layout marker, a missing
    entry-point table, and what could not be read."""
    ebpf: EbpfState | None = rules.ebpf
    if ebpf is None:
        return []
    out: list[Problem] = []
    where = ebpf.cgroup or "any cgroup (the names map does not say which)"
    if ebpf.programs is not None:
        for spec in ebpf.missing_programs():
            what = ("connect() to a service is not rewritten" if "connect" in spec.attach_type
                    else "sendmsg() on unconnected UDP sockets is not rewritten" if "sendmsg" in spec.attach_type
                    else "replies and peer names show the endpoint's address")
            out.append(Problem("error", f"the socket hook is missing: {spec.name} ({spec.attach_type}) is not "
                                        f"attached to {where}: {what}"))
    if ebpf.marker is None:
        out.append(Problem("warning", f"the eBPF names map has no layout marker: the maps under {ebpf.pin_path} may "
                                      "not be this proxy's, or a sync did not finish"))
    elif ebpf.marker != maps.LAYOUT_MARKER:
        out.append(Problem("error", f"the eBPF maps say {ebpf.marker!r}, this version reads {maps.LAYOUT_MARKER!r}: "
                                    "entries may be read wrongly"))
    if ebpf.service_count() and not entry_tables(rules):
        out.append(Problem("warning", f"no nft table {maps.NFT_TABLE} in the input: what clients outside the node "
                                      "meet (node ports, external and load-balancer IPs) cannot be traced"))
    out += hook_problems(entry_tables(rules))
    out += [Problem("warning", note) for note in ebpf.notes]
    if ebpf.service_count():
        out.append(Problem("note", "eBPF mode: a process on this node (a pod's or the node's own) is sent to the "
                                   "endpoint at connect(), before any packet exists: tcpdump and `conntrack -L` show "
                                   "the endpoint's address, never the Service's, and nothing is NATed"))
    return out


def ebpf_edges(rules: NodeRules, state: ClusterState | None, selector: ServiceSelector) -> list[Edge]:
    """The Service's graph: each socket entry → its backends, then the entry-point table's."""
    ebpf: EbpfState | None = rules.ebpf
    edges: list[Edge] = []
    for fam in sorted(ebpf.families) if ebpf is not None else ():
        program = f"connect{fam}"
        for record in ebpf.families[fam].services.values():
            if not selector.matches(owner_of(record, state)):
                continue
            src = f"{program} {record.key}"
            if record.reject:
                edges.append(Edge(src, "ECONNREFUSED", "reject"))
            count = record.value.count
            for backend in record.backends:
                edges.append(Edge(src, str(backend), f"1/{count}"))
    return edges + nft_edges(entry_tables(rules), selector)


# --- dump --------------------------------------------------------------------------------


def ebpf_lines(rules: NodeRules, state: ClusterState | None, node_ips: Sequence[str],
               selector: ServiceSelector | None) -> list[DumpLine]:
    """Every program, entry and backend of the maps (see the module docstring)."""
    ebpf: EbpfState | None = rules.ebpf
    out: list[DumpLine] = []
    if ebpf is not None:
        if selector is None:
            out += _program_lines(ebpf)
        for fam in sorted(ebpf.families):
            out += _family_lines(ebpf, fam, state, node_ips, selector)
    return out + nft_lines(entry_tables(rules), selector)


def _program_lines(ebpf: EbpfState) -> list[DumpLine]:
    cgroup = ebpf.cgroup or "<unknown cgroup>"
    programs = ebpf.programs
    if programs is None:
        head = f"cgroup {cgroup} (its programs were not read)"
    else:
        attached = len(maps.PROGRAMS) - len(ebpf.missing_programs())
        head = f"cgroup {cgroup} ({attached} of {len(maps.PROGRAMS)} programs attached)"
    out = [DumpLine(BACKEND, TABLE, "cgroup", head, kind="table", raw=f"# {head}")]
    for prog in programs or ():
        text = f"{prog.attach_type} {prog.name or '<unnamed>'} id {prog.id}" + \
               (f" {prog.attach_flags}" if prog.attach_flags else "")
        raw = f"bpftool cgroup attach {cgroup} {_bpftool_attach_type(prog.attach_type)} id {prog.id}"
        out.append(DumpLine(BACKEND, TABLE, "cgroup", text, kind="program", raw=raw, indent=2))
    for spec in ebpf.missing_programs() if programs is not None else ():
        text = f"{spec.attach_type} {spec.name}: not attached"
        out.append(DumpLine(BACKEND, TABLE, "cgroup", text, kind="program", raw=f"# {text}", indent=2))
    return out


def _bpftool_attach_type(attach_type: str) -> str:
    """bpftool's word for an attach type in `cgroup attach` (`cgroup_inet4_connect` → `connect4`)."""
    rest = attach_type.removeprefix("cgroup_")
    for prefix, fam in (("inet4_", "4"), ("inet6_", "6"), ("udp4_", "4"), ("udp6_", "6")):
        if rest.startswith(prefix):
            return rest[len(prefix):] + fam
    return rest


def _family_lines(ebpf: EbpfState, fam: int, state: ClusterState | None, node_ips: Sequence[str],
                  selector: ServiceSelector | None) -> list[DumpLine]:
    family = ebpf.families[fam]
    services, backends = f"services{fam}", f"backends{fam}"
    body: list[DumpLine] = []
    owners: dict[int, str] = {}
    named: set[int] = set()
    for key, record in family.services.items():
        spn = owner_of(record, state, node_ips)
        owners.setdefault(record.service_id, spn)
        if selector is not None and not (spn and selector.matches(spn)):
            continue
        flags = flag_text(record.flags)
        extra = f", affinity {record.affinity_seconds} s" if record.affinity_seconds else ""
        count = record.value.count
        text = f"{key} flags {flags}{extra} → {count} backend{'s' if count != 1 else ''}" + \
               (f" (slots {record.value.slot_base}..{record.value.slot_base + count - 1})" if count else "")
        body.append(DumpLine(BACKEND, TABLE, services, text, spn, kind="element", indent=2,
                             raw=_update(ebpf.pin_path, services, key.pack(), record.value.pack())))
        for slot, backend in zip(record.slots, record.backends):
            text = f"slot {slot}: {backend}" + _flag_words(backend)
            body.append(DumpLine(BACKEND, TABLE, backends, text, spn, str(backend), "element", indent=4,
                                 raw=_update(ebpf.pin_path, backends, maps.pack_slot(slot), backend.pack())))
        for slot in record.missing_slots:
            body.append(DumpLine(BACKEND, TABLE, backends, f"slot {slot}: no entry", spn, kind="element", indent=4,
                                 raw=f"# {backends} slot {slot}: no entry"))
        if record.name and record.service_id not in named:
            named.add(record.service_id)
            body.append(DumpLine(BACKEND, TABLE, "names", f"name {record.service_id}: {record.name}", spn,
                                 kind="name", indent=4,
                                 raw=_update(ebpf.pin_path, "names", maps.pack_slot(record.service_id), maps.pack_name(record.name))))
    for akey, avalue in family.affinity:
        spn = owners.get(akey.service_id, "")
        if selector is not None and not (spn and selector.matches(spn)):
            continue
        text = f"netns {akey.netns_cookie:#x} service {akey.service_id} → {avalue.ip}:{avalue.port}" \
            if fam == 4 else f"netns {akey.netns_cookie:#x} service {akey.service_id} → [{avalue.ip}]:{avalue.port}"
        body.append(DumpLine(BACKEND, TABLE, f"affinity{fam}", text, spn, text.rsplit(" ", 1)[-1], "element",
                             indent=2, raw=_update(ebpf.pin_path, f"affinity{fam}", akey.pack(), avalue.pack())))
    if not body:
        return []
    head = f"IPv{fam}: {len(family.services)} service entries, {len(family.backends)} backends, " \
           f"{len(family.affinity)} affinity and {len(family.revnat)} reverse-NAT entries"
    return [DumpLine(BACKEND, TABLE, services, head, kind="table", raw=f"# {head}")] + body


def _flag_words(backend: maps.Backend) -> str:
    words = [w for bit, w in ((maps.B_LOCAL, "local"), (maps.B_TERMINATING, "terminating")) if backend.flags & bit]
    return f" ({', '.join(words)})" if words else ""


def _update(pin_path: str, name: str, key: bytes, value: bytes) -> str:
    """The bpftool command that writes one entry."""
    return (f"bpftool map update pinned {pin_path}/{name} key hex {key.hex(' ')} "
            f"value hex {value.hex(' ')}")

