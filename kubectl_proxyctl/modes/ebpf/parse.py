"""The collected eBPF document (`maps.document`) → an `EbpfState` the inspector can read.

Theory of operation: eBPF mode keeps its state in pinned maps (see `maps.py` for their
layouts) and in the programs attached to one cgroup. The collector dumps every map with
`bpftool -j map dump pinned …` and the cgroup's programs with `bpftool -j cgroup show …`,
and puts the outputs, as bpftool printed them, into one JSON document. This module decodes
that document once:

* per family (4 and 6) every `services` entry with its backends resolved through the slots
  (`slot_base .. slot_base+count-1` in the `backends` map; a slot with no entry is kept as
  a missing slot, never guessed), its name from the `names` map, and the family's live
  `affinity` and `revnat` entries;
* the `names` map's two reserved entries: the layout marker (entry `MARKER_NAME_ID`) and
  the cgroup the programs are attached to (entry `CGROUP_NAME_ID`);
* the programs attached to that cgroup, as bpftool lists them.

A map that is absent from the document (not pinned, or bpftool failed on it) is an empty
map and a note, so the rest still reads; a document that is not the collector's shape (a
map that is not a list of key/value entries, bytes that are not bytes, a key or value of
the wrong size for its map) is a `RulesetParseError` naming the map and the entry.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.maps import (
    AffinityKey,
    AffinityValue,
    Backend,
    ProgramSpec,
    RevNatKey,
    RevNatValue,
    ServiceKey,
    ServiceValue,
)

T = TypeVar("T")
FAMILIES = (4, 6)


@dataclass(frozen=True)
class ServiceRecord:
    """One `services` entry, with what the other maps say about it."""

    key: ServiceKey
    value: ServiceValue
    name: str  # from the `names` map ("" when it has no entry for the service id)
    backends: tuple[Backend, ...]  # the slots that resolve, in slot order
    missing_slots: tuple[int, ...] = ()  # slots of its range with no `backends` entry
    slots: tuple[int, ...] = ()  # the slot of each of `backends`

    @property
    def flags(self) -> int:
        return self.value.flags

    @property
    def affinity_seconds(self) -> int:
        return self.value.affinity_seconds

    @property
    def service_id(self) -> int:
        return self.value.service_id

    @property
    def reject(self) -> bool:
        return self.value.reject

    @property
    def service_port(self) -> str:
        """The name as a service port name (`ns/name:port`), "" when unnamed."""
        return service_port_of(self.name)

    @property
    def kind(self) -> str:
        """ClusterIP, NodePort or ExternalIP (external and load-balancer IPs share a flag)."""
        if self.flags & maps.F_NODEPORT:
            return "NodePort"
        if self.flags & maps.F_EXTERNAL:
            return "ExternalIP"
        return "ClusterIP"


@dataclass(frozen=True)
class AttachedProgram:
    """A program attached to the cgroup, as `bpftool cgroup show` lists it."""

    id: int
    attach_type: str
    name: str
    attach_flags: str = ""


@dataclass(frozen=True)
class FamilyState:
    """One family's maps."""

    family: int
    services: Mapping[ServiceKey, ServiceRecord] = field(default_factory=dict)
    backends: Mapping[int, Backend] = field(default_factory=dict)  # slot → backend
    affinity: tuple[tuple[AffinityKey, AffinityValue], ...] = ()
    revnat: tuple[tuple[RevNatKey, RevNatValue], ...] = ()

    def find(self, ip: str, port: int, protocol: str) -> ServiceRecord | None:
        try:
            return self.services.get(ServiceKey(_canonical_ip(ip), port, protocol.upper()))
        except ValueError:
            return None


@dataclass(frozen=True)
class EbpfState:
    """Everything read from one node in eBPF mode."""

    source: str
    pin_path: str
    cgroup: str  # the cgroup the programs should be attached to ("" when unknown)
    version: int  # the document's layout version
    marker: str | None  # the `names` map's layout marker (None: no such entry)
    names: Mapping[int, str]  # service id → name (the reserved entries left out)
    families: Mapping[int, FamilyState]
    programs: tuple[AttachedProgram, ...] | None  # None: the cgroup's programs were not read
    maps_read: frozenset[str]  # the maps the document holds
    notes: tuple[str, ...] = ()

    def family(self, v6: bool) -> FamilyState:
        return self.families[6 if v6 else 4]

    def service_count(self) -> int:
        return sum(len(f.services) for f in self.families.values())

    def attached(self, spec: ProgramSpec) -> AttachedProgram | None:
        """The attached program `spec` names (by attach type and name), or None."""
        for prog in self.programs or ():
            if prog.attach_type == spec.attach_type and prog.name == spec.name:
                return prog
        return None

    def missing_programs(self, family: int | None = None) -> list[ProgramSpec]:
        """The mode's programs not attached to the cgroup (of one family, or all)."""
        return [spec for spec in maps.PROGRAMS
                if (family is None or spec.family == family) and self.attached(spec) is None]

    def node_addresses(self) -> tuple[str, ...]:
        """The node addresses node ports are served on (the node-port entries' addresses)."""
        seen: dict[str, None] = {}
        for fam in self.families.values():
            for key, record in fam.services.items():
                if record.flags & maps.F_NODEPORT and not _is_loopback(key.ip):
                    seen[key.ip] = None
        return tuple(seen)


def service_port_of(name: str) -> str:
    """`ns/name:port/PROTO` (the names map's spelling) → `ns/name:port`."""
    head, sep, proto = name.rpartition("/")
    if sep and proto in maps.PROTOCOLS and "/" in head:
        return head
    return name


def protocol_of(name: str) -> str:
    _, sep, proto = name.rpartition("/")
    return proto if sep and proto in maps.PROTOCOLS else ""


def looks_like_document(doc: Any) -> bool:
    """Is this decoded JSON the collector's eBPF document?"""
    return isinstance(doc, dict) and doc.get("kind") == maps.DOCUMENT_KIND


class _Bad(ValueError):
    """What is wrong with the document; the parser adds where."""


def parse_document(doc: Any, source: str = "<input>") -> EbpfState:
    """Decode one collected document (see the module docstring); RulesetParseError when it
    is not the collector's shape."""
    try:
        return _parse(doc, source)
    except _Bad as exc:
        raise RulesetParseError(f"eBPF document: {exc}", None, source) from None


def _parse(doc: Any, source: str) -> EbpfState:
    if not looks_like_document(doc):
        raise _Bad(f'not a {maps.DOCUMENT_KIND} document (no "kind": "{maps.DOCUMENT_KIND}")')
    version = doc.get("version", maps.LAYOUT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Bad(f'"version" is {version!r}, not a number')
    raw_maps = doc.get("maps", {})
    if not isinstance(raw_maps, dict):
        raise _Bad('"maps" is not an object of map name → entries')
    notes = [str(n) for n in _list(doc.get("notes", []), '"notes"')]
    unknown = sorted(set(raw_maps) - set(maps.MAPS))
    if unknown:
        notes.append(f"maps this version does not know were left out: {', '.join(map(str, unknown))}")
    read = frozenset(name for name in raw_maps if name in maps.MAPS)

    names_raw = _entries(raw_maps, "names", maps.unpack_slot, maps.unpack_name)
    marker = None
    cgroup_from_map = ""
    names: dict[int, str] = {}
    for sid, text in names_raw:
        if sid == maps.MARKER_NAME_ID:
            marker = text
        elif sid == maps.CGROUP_NAME_ID:
            cgroup_from_map = text
        else:
            names[sid] = text

    families: dict[int, FamilyState] = {}
    for fam in FAMILIES:
        backends = dict(_entries(raw_maps, f"backends{fam}", maps.unpack_slot, Backend.unpack))
        services: dict[ServiceKey, ServiceRecord] = {}
        for key, value in _entries(raw_maps, f"services{fam}", ServiceKey.unpack, ServiceValue.unpack):
            slots = range(value.slot_base, value.slot_base + value.count)
            found = tuple(s for s in slots if s in backends)
            missing = tuple(s for s in slots if s not in backends)
            services[key] = ServiceRecord(key, value, names.get(value.service_id, ""),
                                          tuple(backends[s] for s in found), missing, found)
        families[fam] = FamilyState(
            fam,
            dict(sorted(services.items())),
            backends,
            tuple(_entries(raw_maps, f"affinity{fam}", AffinityKey.unpack, AffinityValue.unpack)),
            tuple(_entries(raw_maps, f"revnat{fam}", RevNatKey.unpack, RevNatValue.unpack)),
        )
    for name in maps.MAPS if read else ():  # none read: the notes say why already
        if name not in raw_maps and not any(name in n for n in notes):
            notes.append(f"map {name} is not in the input: read as empty")

    cgroup = doc.get("cgroup") or cgroup_from_map
    if not isinstance(cgroup, str):
        raise _Bad(f'"cgroup" is {cgroup!r}, not a path')
    programs: tuple[AttachedProgram, ...] | None = None
    if "programs" in doc and doc["programs"] is not None:
        programs = tuple(_program(p, i) for i, p in enumerate(_list(doc["programs"], '"programs"')))
    pin_path = doc.get("pin_path", maps.PIN_ROOT)
    return EbpfState(source, str(pin_path), cgroup, version, marker, names, families, programs, read,
                     tuple(dict.fromkeys(notes)))


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"{what} is not a list")
    return value


def _entries(raw_maps: Mapping[str, Any], name: str, key: Callable[[bytes], Any],
             value: Callable[[bytes], T]) -> list[tuple[Any, T]]:
    """A map's entries, decoded (none when the document has no such map)."""
    spec = maps.MAPS[name]
    out: list[tuple[Any, T]] = []
    for index, entry in enumerate(_list(raw_maps.get(name) or [], f"map {name}")):
        where = f"map {name} entry {index + 1}"
        if not isinstance(entry, dict) or "key" not in entry or "value" not in entry:
            raise _Bad(f"{where}: not a {{\"key\": …, \"value\": …}} entry")
        raw_key, raw_value = _bytes(entry["key"], where, "key"), _bytes(entry["value"], where, "value")
        if len(raw_key) != spec.key_size or len(raw_value) != spec.value_size:
            raise _Bad(f"{where}: key of {len(raw_key)} and value of {len(raw_value)} bytes, the layout has "
                       f"{spec.key_size} and {spec.value_size} (another layout version?)")
        try:
            out.append((key(raw_key), value(raw_value)))
        except (ValueError, KeyError, IndexError) as exc:
            raise _Bad(f"{where}: cannot decode it ({exc})") from None
    return out


def _bytes(value: Any, where: str, part: str) -> bytes:
    try:
        return maps.entry_bytes(value)
    except (ValueError, TypeError) as exc:
        raise _Bad(f"{where}: the {part} is not bytes as bpftool prints them ({exc})") from None


def _program(obj: Any, index: int) -> AttachedProgram:
    where = f'"programs" entry {index + 1}'
    if not isinstance(obj, dict):
        raise _Bad(f"{where} is not an object")
    pid = obj.get("id")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise _Bad(f'{where}: "id" is {pid!r}, not a number')
    attach_type = obj.get("attach_type")
    if not isinstance(attach_type, str):
        raise _Bad(f'{where}: "attach_type" is {attach_type!r}, not a name')
    return AttachedProgram(pid, attach_type, str(obj.get("name") or ""), str(obj.get("attach_flags") or ""))


def _canonical_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# --- what the collector reads ------------------------------------------------------------


def cgroup_named(read: Mapping[str, list[Any]]) -> str:
    """The cgroup path the `names` map holds (entry `CGROUP_NAME_ID`), "" when it has none or
    the dump cannot be decoded (the parser says why later)."""
    for entry in read.get("names") or ():
        try:
            if maps.unpack_slot(maps.entry_bytes(entry["key"])) == maps.CGROUP_NAME_ID:
                return maps.unpack_name(maps.entry_bytes(entry["value"]))
        except (KeyError, TypeError, ValueError, IndexError, struct.error):
            continue
    return ""


def _document(root: str, cgroup: str, read: Mapping[str, list[Any]], programs: list[Any] | None,
              notes: list[str]) -> dict[str, Any]:
    doc = maps.document(root, cgroup, read, programs or [], notes)
    if programs is None:
        doc["programs"] = None  # not read, which is not "none attached"
    return doc


def collection(pin_path: str = "") -> Any:
    """What `system.noderules.collect` reads on a node for eBPF mode (a `PinnedMaps`), under
    `pin_path` (default `maps.PIN_ROOT`)."""
    from kubectl_proxyctl.system.noderules import PinnedMaps

    order = ("names",) + tuple(name for name in maps.MAPS if name != "names")
    return PinnedMaps(pin_path or maps.PIN_ROOT, order, cgroup_named, _document, maps.NFT_TABLE)
