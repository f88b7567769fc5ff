"""The engine's side of eBPF mode: the service maps, the cgroup programs, and the entry-point
table for traffic from outside the node.

A sync writes the difference between `render(plan)` and what the maps hold:

1. every service entry whose backends changed gets a **fresh slot range** in `backends`
   (entries of one service port with the same backends share a range);
2. the `names` entries of new service ports are written;
3. the service entries are written — each one flips its service to its new range in one
   map update, so a connect() sees the old backends or the new ones, never a mix;
4. service entries no longer planned are deleted, then the slot ranges no entry uses any
   more, the names of service ports that are gone, and the affinity entries that point at a
   backend its service no longer has.

A **full** sync reads the maps back from the kernel first (the truth, after a failure, a
restart with pinned maps, or someone's `bpftool map delete`), so it writes only what
differs: restarting on a node with 10,000 services rewrites nothing. A **partial** sync
touches only the changed Services' entries, from memory. Map updates are batched (one
`bpf(2)` call per map and step).

The programs are attached at the first sync (`kernel.EbpfKernel.attach`), after the maps
hold the state, so no socket sees empty maps. Entry points from outside (node ports,
external and load-balancer IPs) never pass through a socket of this node: the nftables
writer programs them, entry points only, into its own table (`maps.NFT_TABLE`).

A failed map update raises ApplyError; every entry already written is whole (steps 1–3 order
the writes so), and the next sync is a full one that reads the kernel again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.base import Mode, Written
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.render import ServiceEntry, render, render_ports
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig

log = logging.getLogger(__name__)

# Node ports answer on the primary node IP only, as in nftables mode (whose layout the
# entry-point table has); no node ports on 127.0.0.1.
DEFAULT_NODEPORT_ADDRESSES: tuple[str, ...] = ("primary",)
LOCALHOST_NODEPORTS = False

# Service ids of the two families never meet in the shared `names` map.
ID_RANGE = {4: (1, 0x7FFFFFFF), 6: (0x80000000, 0xFFFFFFFE)}


@dataclass(frozen=True)
class SyncCounts:
    services: int  # service entries written (added or changed)
    deleted: int  # service entries deleted
    backends: int  # backend slots written
    slots_freed: int
    entries: int  # service entries held after the sync


def service_of(name: str) -> str:
    """"ns/name" of a `names` spelling ("ns/name:port/PROTO" or "ns/name/PROTO")."""
    head = name.split(":", 1)[0] if ":" in name else name.rsplit("/", 1)[0]
    return head


class EbpfWriter:
    """Writes one family's service maps through `kernel` (`kernel.EbpfKernel`, or a fake with
    `map(name)`, `attach()`, `missing()`), and the entry points through `entry`
    (an nftables writer, or None)."""

    mode = Mode.EBPF
    # The hourly full sync reads the maps back and repairs any difference.
    full_sync_period = 3600.0

    def __init__(self, kernel: Any, family: IPFamily, entry: Any = None) -> None:
        self.kernel = kernel
        self.family = family
        self.fam = 6 if family == IPFamily.IPv6 else 4
        self.entry = entry
        self.services = kernel.map(f"services{self.fam}")
        self.backends = kernel.map(f"backends{self.fam}")
        self.affinity = kernel.map(f"affinity{self.fam}")
        self.names = kernel.map("names")
        # what the maps hold (after a full sync's read, kept by every sync)
        self.entries: dict[maps.ServiceKey, tuple[maps.ServiceValue, str]] = {}
        self.ranges: dict[int, tuple[maps.Backend, ...]] = {}  # slot base → backends
        self.refs: dict[int, int] = {}  # slot base → entries using it
        self.ids: dict[str, int] = {}  # service port name → id (this family's)
        self.used_ids: set[int] = set()  # the values of `ids`
        self.by_service: dict[str, set[maps.ServiceKey]] = {}
        self.name_refs: dict[str, int] = {}  # service port name → entries holding it
        # what the current sync released: candidates for freeing (so a partial sync costs
        # what it changed, not what the maps hold)
        self._touched_bases: set[int] = set()
        self._touched_names: set[str] = set()
        self.next_slot = 1
        self.next_id = ID_RANGE[self.fam][0]
        self.attached = False

    # --- the Writer protocol -----------------------------------------------------------

    def sync(self, plan: NodePlan, full: bool, changed: frozenset[str] | set[str]) -> Written:
        if full:
            self._read_kernel()
            desired = render(plan)
            scope: set[maps.ServiceKey] = set(self.entries)
        else:
            services = set(changed)
            ports = [spn for svc in services for spn in plan.ports_of(svc)]
            desired = render_ports(plan, ports)
            scope = set().union(*(self.by_service.get(s, set()) for s in services)) if services else set()
            # a key another (unchanged) Service holds stays its own
            desired = {k: e for k, e in desired.items()
                       if k not in self.entries or k in scope or service_of(self.entries[k][1]) in services}
        counts = self._apply(desired, scope, everything=full)
        if not self.attached:
            newly = self.kernel.attach()
            self.attached = True
            if newly:
                log.info("attached %s", ", ".join(newly))
        nft_rules = 0
        if self.entry is not None and (full or self._entry_points_changed(plan, changed)):
            nft_rules = self.entry.sync(plan, full, changed).rules
        return Written(full, counts.services + counts.deleted + counts.backends + nft_rules, counts)

    def _entry_points_changed(self, plan: NodePlan, changed: frozenset[str] | set[str]) -> bool:
        """Whether a changed Service has (or had) an entry point from outside the node: only
        then has the entry-point table anything to do."""
        state = getattr(self.entry, "state", None)
        if state is None:
            return True
        for svc in changed:
            if state.ports_of(svc):
                return True
            for spn in plan.ports_of(svc):
                sp = plan.service(spn)
                if sp is not None and sp.externally_accessible:
                    return True
        return False

    def after_failure(self, error: Exception) -> None:
        pass  # every entry written is whole; the next (full) sync reads the maps again

    def before_sync(self, pending_changes: bool, metrics: Any, family: str) -> None:
        if self.entry is not None:
            self.entry.before_sync(pending_changes, metrics, family)

    def state_missing(self) -> list[str]:
        missing: list[str] = list(self.kernel.missing())
        if missing:
            self.attached = False  # the next (full) sync attaches again
        if self.entry is not None:
            missing += self.entry.state_missing()
        return missing

    def delete_stale(self) -> int:
        return self.entry.delete_stale() if self.entry is not None else 0

    def record_metrics(self, metrics: Any, family: str, written: Written) -> None:
        pass  # the shared sync metrics say it all

    def count_failure(self, metrics: Any, family: str, full: bool) -> None:
        pass

    # --- reading the kernel ------------------------------------------------------------

    def _read_kernel(self) -> None:
        """Rebuild what the maps hold from the maps themselves."""
        lo, hi = ID_RANGE[self.fam]
        names: dict[int, str] = {}
        for k, v in self.names.items():
            i = maps.unpack_slot(k)
            if lo <= i <= hi:
                names[i] = maps.unpack_name(v)
        slots = {maps.unpack_slot(k): maps.Backend.unpack(v) for k, v in self.backends.items()}
        self.entries, self.ranges, self.refs, self.by_service, self.name_refs = {}, {}, {}, {}, {}
        broken: list[bytes] = []
        for k, v in self.services.items():
            key, value = maps.ServiceKey.unpack(k), maps.ServiceValue.unpack(v)
            name = names.get(value.service_id, "")
            if value.count:
                members = tuple(slots.get(value.slot_base + i) for i in range(value.count))
                if any(b is None for b in members) or not name:
                    broken.append(k)  # rewritten below with a fresh range
                    continue
                self.ranges[value.slot_base] = tuple(b for b in members if b is not None)
                self.refs[value.slot_base] = self.refs.get(value.slot_base, 0) + 1
            self._hold(key, value, name)
        # slots no service entry uses any more (a sync that failed half-way, a restart)
        used = {base + i for base, b in self.ranges.items() for i in range(len(b))}
        orphans = [maps.pack_slot(s) for s in slots if s not in used]
        if broken:
            self.services.delete_batch(broken)
        if orphans:
            self.backends.delete_batch(orphans)
        self.ids = {name: i for i, name in names.items() if name}
        self.used_ids = set(self.ids.values())
        self.next_slot = max(slots, default=0) + 1
        self.next_id = max(self.ids.values(), default=lo - 1) + 1

    # --- writing -----------------------------------------------------------------------

    def _hold(self, key: maps.ServiceKey, value: maps.ServiceValue, name: str) -> None:
        self.entries[key] = (value, name)
        if name:
            self.by_service.setdefault(service_of(name), set()).add(key)
            self.name_refs[name] = self.name_refs.get(name, 0) + 1

    def _release(self, key: maps.ServiceKey) -> None:
        value, name = self.entries.pop(key)
        self._touched_names.add(name)
        if value.count:
            self._touched_bases.add(value.slot_base)
        if name:
            self.name_refs[name] -= 1
            keys = self.by_service.get(service_of(name))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_service[service_of(name)]
        if value.count:
            self.refs[value.slot_base] -= 1

    def _id_for(self, name: str, new_names: list[tuple[bytes, bytes]]) -> int:
        sid = self.ids.get(name)
        if sid is None:
            lo, hi = ID_RANGE[self.fam]
            used = self.used_ids
            sid = self.next_id
            while sid in used or sid > hi:
                sid = lo if sid > hi else sid + 1
            used.add(sid)
            self.next_id = sid + 1
            self.ids[name] = sid
            new_names.append((maps.pack_slot(sid), maps.pack_name(name)))
        return sid

    def _slots(self, count: int) -> int:
        base = self.next_slot
        if base + count >= 0xFFFFFFFF:
            base = 1  # after four billion slots: start again (the old ones are long freed)
        self.next_slot = base + count
        return base

    def _apply(self, desired: dict[maps.ServiceKey, ServiceEntry], scope: Iterable[maps.ServiceKey],
               everything: bool = False) -> SyncCounts:
        """Write `desired` over the entries in `scope`; with `everything` (a full sync), every
        slot range and name is checked for use, else only those this sync released."""
        self._touched_bases, self._touched_names = set(), set()
        backend_items: list[tuple[bytes, bytes]] = []
        name_items: list[tuple[bytes, bytes]] = []
        service_items: list[tuple[bytes, bytes]] = []
        fresh: dict[tuple[str, tuple[maps.Backend, ...]], int] = {}  # ranges made by this sync
        changed_backends: dict[int, set[tuple[str, int]]] = {}  # service id → its backends now
        writes: list[tuple[maps.ServiceKey, maps.ServiceValue, str]] = []
        for key, e in desired.items():
            sid = self._id_for(e.name, name_items)
            held = self.entries.get(key)
            count = len(e.backends)
            base = 0
            if count:
                if held is not None and held[0].count and self.ranges.get(held[0].slot_base) == e.backends:
                    base = held[0].slot_base
                elif (e.name, e.backends) in fresh:
                    base = fresh[(e.name, e.backends)]
                else:
                    base = self._slots(count)
                    fresh[(e.name, e.backends)] = base
                    self.ranges[base] = e.backends
                    self.refs.setdefault(base, 0)
                    self._touched_bases.add(base)
                    backend_items += [(maps.pack_slot(base + i), b.pack()) for i, b in enumerate(e.backends)]
            value = maps.ServiceValue(sid, count, e.flags, base, e.affinity_seconds)
            if held is not None and held == (value, e.name):
                continue
            if e.affinity_seconds and held is not None and held[0].slot_base != base:
                changed_backends[sid] = {(b.ip, b.port) for b in e.backends}
            service_items.append((key.pack(), value.pack()))
            writes.append((key, value, e.name))
        stale = [k for k in scope if k not in desired and k in self.entries]

        # 1-3: backends, names, then the flip of each service entry
        if backend_items:
            self.backends.update_batch(backend_items)
        if name_items:
            self.names.update_batch(name_items)
        if service_items:
            self.services.update_batch(service_items)
        for key, value, name in writes:
            if key in self.entries:
                self._release(key)
            self._hold(key, value, name)
            if value.count:
                self.refs[value.slot_base] = self.refs.get(value.slot_base, 0) + 1
        # 4: what nothing uses any more
        if stale:
            self.services.delete_batch([k.pack() for k in stale])
            for key in stale:
                self._release(key)
        bases = self.refs if everything else self._touched_bases
        freed = [base for base in bases if self.refs.get(base, 1) <= 0]
        slot_keys = [maps.pack_slot(base + i) for base in freed for i in range(len(self.ranges[base]))]
        if slot_keys:
            self.backends.delete_batch(slot_keys)
        for base in freed:
            del self.ranges[base]
            del self.refs[base]
        names = self.ids if everything else self._touched_names
        gone = [n for n in names if n in self.ids and self.name_refs.get(n, 0) <= 0]
        if gone:
            self.names.delete_batch([maps.pack_slot(self.ids[n]) for n in gone])
            for n in gone:
                sid = self.ids.pop(n)
                self.used_ids.discard(sid)
                changed_backends[sid] = set()
                self.name_refs.pop(n, None)
        if changed_backends:
            self._purge_affinity(changed_backends)
        return SyncCounts(len(service_items), len(stale), len(backend_items), len(slot_keys), len(self.entries))

    def _purge_affinity(self, keep: dict[int, set[tuple[str, int]]]) -> None:
        """Forget the affinity entries of these services that point at a backend they no
        longer have (kube-proxy's affinity ends with the endpoint)."""
        dead = []
        for k, v in self.affinity.items():
            akey = maps.AffinityKey.unpack(k)
            backends = keep.get(akey.service_id)
            if backends is None:
                continue
            val = maps.AffinityValue.unpack(v)
            if (val.ip, val.port) not in backends:
                dead.append(k)
        if dead:
            self.affinity.delete_batch(dead)


def make_writer(config: ProxyConfig) -> EbpfWriter:
    """The writer for a real node: opens (or creates) the pinned maps; a ConfigError when the
    kernel refuses BPF, before anything is written."""
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.modes.ebpf.kernel import EbpfKernel
    from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
    from kubectl_proxyctl.system.nftables import NftSystem

    try:
        kernel = EbpfKernel(config.bpf_pin_path, config.bpf_cgroup_path)
        kernel.open()
    except ProxyctlError as exc:
        raise ConfigError(f"--mode ebpf: {exc}") from exc
    nft = NftSystem(config.family, table=maps.NFT_TABLE)
    nft.check_available()
    entry = NftablesWriter(nft, table=maps.NFT_TABLE, entry_points_only=True)
    return EbpfWriter(kernel, config.family, entry)


def dry_run(plan: NodePlan) -> tuple[str, str]:
    """(the service entries a full sync would write, as text, a one-line summary)."""
    from kubectl_proxyctl.modes.nftables.render import render as render_nft

    entries = render(plan)
    lines = []
    for key, e in sorted(entries.items(), key=lambda kv: (kv[1].name, str(kv[0]))):
        what = "reject (ECONNREFUSED)" if e.flags & maps.F_REJECT else " ".join(str(b) for b in e.backends)
        extra = f" affinity={e.affinity_seconds}s" if e.affinity_seconds else ""
        lines.append(f"{key} {e.name} {e.kind}{extra} -> {what}\n")
    nft = render_nft(plan, table=maps.NFT_TABLE, entry_points_only=True)
    text = "".join(lines) + nft.text
    backends = sum(len(e.backends) for e in entries.values())
    return text, (f"dry run: {len(entries)} service entries with {backends} backend slots in the BPF maps, "
                  f"and an nftables table {maps.NFT_TABLE} for entry points from outside "
                  f"({nft.rules_written} rules, {nft.elements_written} elements)")


def prepare_node(config: ProxyConfig) -> None:
    pass  # nothing node-wide to set: the programs are attached by the first sync


def cleanup(family: IPFamily, config: ProxyConfig | None = None) -> tuple[bool, str]:
    """Remove eBPF mode's state: the entry-point table of the family and, once (the pins are
    shared by both families), every program link and map under the pin directory
    (`--bpf-pin-path`, default /sys/fs/bpf/proxyctl) and the directory."""
    import os

    from kubectl_proxyctl.system.nftables import NftSystem

    pin_path = (config.bpf_pin_path if config is not None else "") or maps.PIN_ROOT
    done: list[str] = []
    if os.path.isdir(pin_path):
        try:
            from kubectl_proxyctl.modes.ebpf.kernel import EbpfKernel

            removed = EbpfKernel(pin_path, check_cgroup=False).remove()
            if removed:
                done.append(f"unpinned {len(removed)} BPF objects under {pin_path}")
        except ProxyctlError as exc:
            log.warning("cannot remove the eBPF state under %s: %s", pin_path, exc)
    try:
        if NftSystem(family, table=maps.NFT_TABLE).delete_table():
            done.append(f"deleted table {maps.NFT_TABLE}")
    except Exception as exc:  # noqa: BLE001 - no nft binary, or no nf_tables in the kernel
        log.info("%s eBPF entry-point table: nothing to clean (%s)", family, exc)
    return bool(done), "; ".join(done) if done else "no eBPF state"
