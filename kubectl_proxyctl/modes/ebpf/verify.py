"""`verify` on an eBPF-mode node: the maps and the attached programs against the plan.

Theory of operation: the desired state is what the engine writes on this node,
`plan(state, config)` → `modes.ebpf.render` (one `ServiceEntry` per address, port and
protocol a socket can connect to), per family. The actual state is the collected document
(`modes.ebpf.parse`). They are compared by meaning, never by slot numbers or service ids
(those are the writer's bookkeeping and change with every update):

* per entry: present (missing-service), its backends as a set of `ip:port`
  (missing-endpoint, extra-endpoint; a backend listed twice gets twice the share:
  wrong-odds; a slot of the range with no backend: missing-endpoint), its flags (reject,
  external, local-only, node port: wrong-flags), its ClientIP affinity timeout
  (wrong-affinity), and its name in the `names` map (wrong-name: a dump read without the API
  would name it wrongly);
* entries no planned service port has (stale-service): connect() to them is still rewritten;
* node-wide, without a selector: the layout marker (`names` entry 0) is there and of this
  version, every program of `maps.PROGRAMS` is attached to the cgroup the `names` map names,
  and the entry-point table `proxyctl-ebpf` exists for a family that has entries reached from
  outside the node;
* the entry-point table itself, as nftables mode checks its `kube-proxy` table
  (`modes.nftables.verify.verify_entry_table`: the same render with `entry_points_only`),
  for the service ports reachable from outside the node.

The node ports' addresses are read back from the map's node-port entries when it has any
(the engine's node-port address selection is not in the input), else the node's addresses
from the node context, as the other modes read `nodeport-ips` back.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from kubectl_proxyctl.model import ClusterState, IPFamily
from kubectl_proxyctl.modes.base import Mode, NodeRules
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.parse import EbpfState, FamilyState, ServiceRecord
from kubectl_proxyctl.modes.ebpf.render import ServiceEntry, port_entries
from kubectl_proxyctl.modes.ebpf.trace import entry_tables
from kubectl_proxyctl.modes.findings import Finding, Report
from kubectl_proxyctl.modes.nftables.verify import verify_entry_table
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan

FLAG_WORDS = ((maps.F_REJECT, "reject"), (maps.F_EXTERNAL, "external"), (maps.F_LOCAL, "local-only"),
              (maps.F_NODEPORT, "node port"))


def flag_text(flags: int) -> str:
    words = [w for bit, w in FLAG_WORDS if flags & bit]
    unknown = flags & ~sum(bit for bit, _ in FLAG_WORDS)
    if unknown:
        words.append(f"0x{unknown:x}")
    return ", ".join(words) or "none"


def desired_entries(state: ClusterState, node: NodeContext, family: IPFamily,
                    ebpf: EbpfState | None = None) -> tuple[NodePlan, dict[maps.ServiceKey, ServiceEntry]]:
    """The plan of one family and the entries the engine would write for it."""
    v6 = family == IPFamily.IPv6
    desired = plan(state, ProxyConfig(node_name=node.name or "", family=family, cluster_cidrs=node.cluster_cidrs,
                                      node_ips=node.ips if node.ips_known else ()))
    addresses = _nodeport_addresses(ebpf.family(v6)) if ebpf is not None else None
    out: dict[maps.ServiceKey, ServiceEntry] = {}
    for sp in desired.services:
        for entry in port_entries(sp, desired, addresses):
            out.setdefault(entry.key, entry)
    return desired, out


def _nodeport_addresses(family: FamilyState) -> tuple[str, ...] | None:
    """The addresses node ports are entered on: read back from the map, else None (the
    render's choice from the node's addresses)."""
    found = [key.ip for key, record in family.services.items() if record.flags & maps.F_NODEPORT]
    if found:
        return tuple(dict.fromkeys(found))
    return None


def verify_ebpf(graph: NodeRules, state: ClusterState, node: NodeContext,
                selector: ServiceSelector | None = None) -> Report:
    """The node's eBPF maps and programs against the plan (see the module notes)."""
    report = Report(node.name, Mode.EBPF)
    ebpf: EbpfState | None = graph.ebpf
    if ebpf is None:
        report.findings.append(Finding("no-rules", "error", f"no eBPF maps were found on this node (nothing pinned "
                                       f"under {maps.PIN_ROOT})"))
        return report
    check = _Check(report, ebpf, selector)
    described: dict[str, Any] = {}
    for family in (IPFamily.IPv4, IPFamily.IPv6):
        v6 = family == IPFamily.IPv6
        desired_plan, want = desired_entries(state, node, family, ebpf)
        have = ebpf.family(v6)
        check.family(desired_plan, want, have)
        tables = entry_tables(graph, v6)
        if selector is None and any(e.flags & maps.F_EXTERNAL for e in want.values()) and not tables:
            title = f"{'ip6' if v6 else 'ip'} {maps.NFT_TABLE}"
            check.add("missing-table", "error", f"there is no nft table {title}: clients outside the node reach no "
                      "node port, external or load-balancer IP of this family")
        for table in tables:
            checked = report.services_checked
            described[table.title] = verify_entry_table(report, table, state, node, selector)
            report.services_checked = checked
        addresses = _nodeport_addresses(have)
        if addresses:
            described[f"nodeport_addresses_ipv{6 if v6 else 4}"] = list(addresses)
    report.services_checked = check.ports_checked
    if selector is None:
        check.layout()
    report.config = {"cgroup": ebpf.cgroup or None, **described}
    return report


class _Check:
    def __init__(self, report: Report, ebpf: EbpfState, selector: ServiceSelector | None) -> None:
        self.report = report
        self.ebpf = ebpf
        self.selector = selector
        self.ports: set[str] = set()

    @property
    def ports_checked(self) -> int:
        return len(self.ports)

    def add(self, kind: str, severity: str, message: str, spn: str = "", chain: str = "",
            missing: Iterable[str] = (), extra: Iterable[str] = ()) -> None:
        service = spn.split(":", 1)[0] if spn else ""
        self.report.findings.append(Finding(kind, severity, message, service, spn, chain, tuple(missing),
                                            tuple(extra)))

    def wanted(self, spn: str) -> bool:
        return self.selector is None or (bool(spn) and self.selector.matches(spn))

    def family(self, desired: NodePlan, want: dict[maps.ServiceKey, ServiceEntry], have: FamilyState) -> None:
        fam = have.family
        planned = {str(sp.name) for sp in desired.services}
        for key, entry in sorted(want.items()):
            spn = str(entry.spn)
            if not self.wanted(spn):
                continue
            self.ports.add(f"{spn}/{entry.key.protocol}")
            record = have.services.get(key)
            where = f"services{fam}"
            if record is None:
                self.add("missing-service", "error", f"{spn}: no entry {key} in {where} ({entry.kind}): connect() to "
                         f"it is not {'refused' if entry.flags & maps.F_REJECT else 'rewritten'}", spn, where,
                         missing=(_entry_text(entry),))
                continue
            self.entry(spn, entry, record, fam)
        for key, record in have.services.items():
            if key in want:
                continue
            spn = record.service_port
            if not self.wanted(spn):
                continue
            whose = f" ({record.name})" if record.name else ""
            gone = spn and spn not in planned
            self.add("stale-service", "error", f"services{fam} still has {key}{whose}"
                     + (", which the API does not have" if gone else ", which the plan does not have")
                     + ": connect() to it is still " + ("refused" if record.reject else "rewritten"),
                     spn, f"services{fam}", extra=(_record_text(record),))

    def entry(self, spn: str, want: ServiceEntry, have: ServiceRecord, fam: int) -> None:
        key = want.key
        where = f"services{fam}"
        wanted = Counter(str(b) for b in want.backends)
        found = Counter(str(b) for b in have.backends)
        for ep in sorted(set(wanted) - set(found)):
            self.add("missing-endpoint", "error", f"{spn}: {key} does not send connections to endpoint {ep}",
                     spn, f"backends{fam}")
        for ep in sorted(set(found) - set(wanted)):
            share = found[ep] / max(have.value.count, 1)
            self.add("extra-endpoint", "error", f"{spn}: {key} still sends {share * 100:.1f} % of new connections to "
                     f"{ep}, which is not a usable endpoint in the API", spn, f"backends{fam}")
        if set(wanted) == set(found) and any(found[ep] != wanted[ep] for ep in found):
            detail = ", ".join(f"{ep} {found[ep] / max(have.value.count, 1) * 100:.1f} %" for ep in sorted(found))
            self.add("wrong-odds", "error", f"{spn}: {key}: {detail} (each endpoint should get "
                     f"{100 / max(len(wanted), 1):.1f} %)", spn, f"backends{fam}")
        if have.missing_slots:
            slots = ", ".join(map(str, have.missing_slots))
            self.add("missing-endpoint", "error", f"{spn}: {key} counts {have.value.count} backends but slot(s) "
                     f"{slots} of backends{fam} are empty: those connections cannot be sent anywhere",
                     spn, f"backends{fam}")
        if set(wanted) == set(found):
            want_flags = {str(b): b.flags for b in want.backends}
            differ = sorted(str(b) for b in have.backends if want_flags.get(str(b), b.flags) != b.flags)
            if differ:
                self.add("wrong-flags", "error", f"{spn}: {key}: backend flags of {', '.join(differ)} differ from the "
                         "plan (local / terminating)", spn, f"backends{fam}")
        if have.flags != want.flags:
            self.add("wrong-flags", "error", f"{spn}: {key} has flags {flag_text(have.flags)}, the plan says "
                     f"{flag_text(want.flags)}", spn, where, missing=(_entry_text(want),),
                     extra=(_record_text(have),))
        if have.affinity_seconds != want.affinity_seconds:
            said = f"ClientIP affinity of {have.affinity_seconds} s" if have.affinity_seconds else "no affinity"
            asked = f"ClientIP affinity of {want.affinity_seconds} s" if want.affinity_seconds else "none"
            self.add("wrong-affinity", "error", f"{spn}: {key} has {said}, the Service asks for {asked}", spn, where)
        if have.name != want.name:
            said = f"names it {have.name!r}" if have.name else "has no name for it"
            self.add("wrong-name", "warning", f"{spn}: the names map {said} (service id {have.service_id}), the "
                     f"plan says {want.name!r}: a dump read without the API names it wrongly", spn, "names")

    def layout(self) -> None:
        ebpf = self.ebpf
        if ebpf.marker is None:
            self.add("layout", "error", f"the names map has no layout marker (entry {maps.MARKER_NAME_ID}): the maps "
                     "were not written by this proxy, or the sync that writes them did not finish", chain="names")
        elif ebpf.marker != maps.LAYOUT_MARKER:
            self.add("layout", "error", f"the names map says {ebpf.marker!r}, this version reads "
                     f"{maps.LAYOUT_MARKER!r}: the maps' layout differs, so every entry may be read wrongly",
                     chain="names")
        if ebpf.version != maps.LAYOUT_VERSION:
            self.add("layout", "error", f"the document is of layout version {ebpf.version}, this version reads "
                     f"{maps.LAYOUT_VERSION}")
        if ebpf.programs is None:
            self.add("missing-program", "warning", "the cgroup's programs are not in the input: whether connect() "
                     "is rewritten at all is not checked")
            return
        where = ebpf.cgroup or "the cgroup (the names map does not say which)"
        for spec in ebpf.missing_programs():
            self.add("missing-program", "error", f"{spec.name} ({spec.attach_type}) is not attached to {where}: "
                     f"{_consequence(spec)}", chain=spec.attach_type)


def _consequence(spec: maps.ProgramSpec) -> str:
    fam = f"IPv{spec.family}"
    if "connect" in spec.attach_type:
        return f"no {fam} connect() to a service is rewritten"
    if "sendmsg" in spec.attach_type:
        return f"sendmsg() on unconnected {fam} UDP sockets is not rewritten"
    if "recvmsg" in spec.attach_type:
        return f"{fam} UDP replies show the endpoint's address instead of the service's"
    return f"getpeername() on {fam} sockets shows the endpoint instead of the service"


def _entry_text(entry: ServiceEntry) -> str:
    backends = ", ".join(str(b) for b in entry.backends) or "none"
    extra = f", affinity {entry.affinity_seconds} s" if entry.affinity_seconds else ""
    return f"{entry.key} {entry.name} flags {flag_text(entry.flags)}{extra} → {backends}"


def _record_text(record: ServiceRecord) -> str:
    backends = ", ".join(str(b) for b in record.backends) or "none"
    extra = f", affinity {record.affinity_seconds} s" if record.affinity_seconds else ""
    return f"{record.key} {record.name or '<unnamed>'} flags {flag_text(record.flags)}{extra} → {backends}"

