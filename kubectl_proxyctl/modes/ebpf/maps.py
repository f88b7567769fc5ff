"""eBPF mode's maps: their names, kinds and byte layouts, and the document the inspector reads.

This is the one place that knows how a Service is spelled in bytes. The programs
(`programs.py`) read these layouts, the writer fills them, and the inspector decodes what
`bpftool map dump -j` (or `system/bpf`) returns — all through the functions here.

Per family (suffix 4 or 6) the mode keeps:

* **services** (hash): (destination address, port, protocol) → which backends serve it.
  One entry per address a socket of this node can connect to: the cluster IP, every
  external and load-balancer IP, and the node port on each node address. The value holds
  the backend count, the first backend slot, the ClientIP affinity timeout and flags.
* **backends** (hash): slot number → endpoint address and port. A service's backends are the
  slots `base .. base+count-1`. An update writes a fresh slot range first and then flips the
  service entry, so a connect() never sees half a service.
* **affinity** (LRU hash): (client network-namespace cookie, service id) → the backend
  chosen last and when. Every pod has its own network namespace, so this is ClientIP
  affinity per pod (the node's own processes share one).
* **revnat** (LRU hash): (socket cookie, backend address, port) → the service address and
  port the application asked for; `recvmsg` and `getpeername` put it back, so replies and
  the peer name show the service address.

and, for both families, **names** (hash): service id → "namespace/name:port/PROTO" (entry 0
holds the layout marker, entry `CGROUP_NAME_ID` the cgroup the programs are attached to),
so a dump read without the API still names every entry and finds the programs.

Entry points reached from outside the node (node ports, external and load-balancer IPs) do
not pass through a socket of this node: the nftables table `NFT_TABLE` (kube-proxy's
nftables layout, holding those entry points only) serves them.

Addresses and ports are in network byte order, as the kernel's `bpf_sock_addr` holds them;
counts, ids and flags in the host's order.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple

LAYOUT_VERSION = 1
LAYOUT_MARKER = f"proxyctl-ebpf layout {LAYOUT_VERSION}"
DOCUMENT_KIND = "proxyctl-ebpf"  # the "kind" of the collected document (see `document`)

PIN_ROOT = "/sys/fs/bpf/proxyctl"  # maps under it, program links under PIN_ROOT/links
LINKS_DIR = "links"
NFT_TABLE = "proxyctl-ebpf"  # the nftables table (ip / ip6) for entry points from outside
MARKER_NAME_ID = 0  # `names` entry holding LAYOUT_MARKER
CGROUP_NAME_ID = 0xFFFFFFFF  # `names` entry holding the cgroup path the programs are attached to

PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}

# service flags
F_REJECT = 0x1  # no endpoints: connect() fails with ECONNREFUSED (as kube-proxy's REJECT)
F_EXTERNAL = 0x2  # an external entry (external IP, load-balancer IP, node port)
F_LOCAL = 0x4  # the backends are this node's endpoints only (traffic policy Local)
F_NODEPORT = 0x8  # the entry is a node port on a node address

# backend flags
B_LOCAL = 0x1  # the endpoint runs on this node
B_TERMINATING = 0x2  # serving but terminating (used only when nothing else is)

NAME_SIZE = 64
MAX_SERVICES = 65536
MAX_BACKENDS = 262144
MAX_AFFINITY = 65536
MAX_REVNAT = 262144


@dataclass(frozen=True)
class MapSpec:
    name: str
    kind: str  # "hash" or "lru_hash"
    key_size: int
    value_size: int
    max_entries: int


def _specs() -> dict[str, MapSpec]:
    out = {}
    for fam, alen in ((4, 4), (6, 16)):
        out[f"services{fam}"] = MapSpec(f"services{fam}", "hash", alen + 4, 16, MAX_SERVICES)
        out[f"backends{fam}"] = MapSpec(f"backends{fam}", "hash", 4, alen + 4, MAX_BACKENDS)
        out[f"affinity{fam}"] = MapSpec(f"affinity{fam}", "lru_hash", 16, _align8(alen + 4) + 8, MAX_AFFINITY)
        out[f"revnat{fam}"] = MapSpec(f"revnat{fam}", "lru_hash", 8 + alen + 4, alen + 4, MAX_REVNAT)
    out["names"] = MapSpec("names", "hash", 4, NAME_SIZE, MAX_SERVICES + 1)
    return out


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


MAPS: dict[str, MapSpec] = _specs()
"""Every map of the mode, by its pinned name (the kernel's map name is `pxc_` + it)."""


def kernel_map_name(name: str) -> str:
    return f"pxc_{name}"[:15]


# --- programs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgramSpec:
    name: str  # the kernel's program name (at most 15 characters)
    attach_type: str  # as bpftool names it
    family: int


PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("pxc_connect4", "cgroup_inet4_connect", 4),
    ProgramSpec("pxc_sendmsg4", "cgroup_udp4_sendmsg", 4),
    ProgramSpec("pxc_recvmsg4", "cgroup_udp4_recvmsg", 4),
    ProgramSpec("pxc_getpeer4", "cgroup_inet4_getpeername", 4),
    ProgramSpec("pxc_connect6", "cgroup_inet6_connect", 6),
    ProgramSpec("pxc_sendmsg6", "cgroup_udp6_sendmsg", 6),
    ProgramSpec("pxc_recvmsg6", "cgroup_udp6_recvmsg", 6),
    ProgramSpec("pxc_getpeer6", "cgroup_inet6_getpeername", 6),
)


# --- layouts -----------------------------------------------------------------------------

def family_of(ip: str) -> int:
    return 6 if ":" in ip else 4


def _addr(ip: str) -> bytes:
    # inet_pton: a full sync packs some 60,000 addresses (ipaddress is ten times slower)
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    except OSError:
        raise ValueError(f"{ip!r} is not an IP address") from None


def _ip(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    return str(ipaddress.ip_address(raw))  # Python's spelling of IPv6, as everywhere else


class ServiceKey(NamedTuple):
    """(address, port, protocol) a socket connects to. A tuple: a full sync makes tens of
    thousands of keys and backends."""

    ip: str
    port: int
    protocol: str  # "TCP", "UDP", "SCTP"

    @property
    def family(self) -> int:
        return family_of(self.ip)

    def pack(self) -> bytes:
        return _addr(self.ip) + struct.pack("!H", self.port) + bytes((PROTOCOLS[self.protocol], 0))

    @classmethod
    def unpack(cls, raw: bytes) -> "ServiceKey":
        alen = len(raw) - 4
        port = struct.unpack("!H", raw[alen:alen + 2])[0]
        proto = raw[alen + 2]
        return cls(_ip(raw[:alen]), port, PROTOCOL_NAMES.get(proto, str(proto)))

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class ServiceValue:
    service_id: int  # the key of its name in `names`, and of its affinity entries
    count: int  # backends at slots base .. base+count-1
    flags: int
    slot_base: int
    affinity_seconds: int  # 0: no ClientIP affinity

    _FMT = "=IHHII"

    def pack(self) -> bytes:
        return struct.pack(self._FMT, self.service_id, self.count, self.flags, self.slot_base, self.affinity_seconds)

    @classmethod
    def unpack(cls, raw: bytes) -> "ServiceValue":
        return cls(*struct.unpack(cls._FMT, raw[:16]))

    @property
    def reject(self) -> bool:
        return bool(self.flags & F_REJECT)


def pack_slot(slot: int) -> bytes:
    return struct.pack("=I", slot)


def unpack_slot(raw: bytes) -> int:
    return int(struct.unpack("=I", raw[:4])[0])


class Backend(NamedTuple):
    ip: str
    port: int
    flags: int = 0

    def pack(self) -> bytes:
        return _addr(self.ip) + struct.pack("!H", self.port) + struct.pack("=H", self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> "Backend":
        alen = len(raw) - 4
        return cls(_ip(raw[:alen]), struct.unpack("!H", raw[alen:alen + 2])[0],
                   struct.unpack("=H", raw[alen + 2:alen + 4])[0])

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class AffinityKey:
    netns_cookie: int
    service_id: int

    def pack(self) -> bytes:
        return struct.pack("=QII", self.netns_cookie, self.service_id, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "AffinityKey":
        cookie, sid, _ = struct.unpack("=QII", raw[:16])
        return cls(cookie, sid)


@dataclass(frozen=True)
class AffinityValue:
    ip: str
    port: int
    last_ns: int  # bpf_ktime_get_ns() of the last connect() that used it

    def pack(self) -> bytes:
        head = _addr(self.ip) + struct.pack("!H", self.port)
        head += bytes(_align8(len(head) + 2) - len(head))
        return head + struct.pack("=Q", self.last_ns)

    @classmethod
    def unpack(cls, raw: bytes) -> "AffinityValue":
        alen = 4 if len(raw) == 16 else 16  # v4: 4+2+2 then 8; v6: 16+2+6 then 8
        port = struct.unpack("!H", raw[alen:alen + 2])[0]
        return cls(_ip(raw[:alen]), port, struct.unpack("=Q", raw[-8:])[0])


@dataclass(frozen=True)
class RevNatKey:
    socket_cookie: int
    ip: str  # the backend
    port: int

    def pack(self) -> bytes:
        return struct.pack("=Q", self.socket_cookie) + _addr(self.ip) + struct.pack("!H", self.port) + b"\0\0"

    @classmethod
    def unpack(cls, raw: bytes) -> "RevNatKey":
        alen = len(raw) - 12
        return cls(struct.unpack("=Q", raw[:8])[0], _ip(raw[8:8 + alen]),
                   struct.unpack("!H", raw[8 + alen:10 + alen])[0])


@dataclass(frozen=True)
class RevNatValue:
    ip: str  # the service address the application asked for
    port: int

    def pack(self) -> bytes:
        return _addr(self.ip) + struct.pack("!H", self.port) + b"\0\0"

    @classmethod
    def unpack(cls, raw: bytes) -> "RevNatValue":
        alen = len(raw) - 4
        return cls(_ip(raw[:alen]), struct.unpack("!H", raw[alen:alen + 2])[0])


def pack_name(text: str) -> bytes:
    raw = text.encode()[:NAME_SIZE - 1]
    return raw + bytes(NAME_SIZE - len(raw))


def unpack_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def service_name(namespace: str, name: str, port_name: str, protocol: str) -> str:
    """The `names` map's spelling of a service port: "ns/name:port/PROTO" ("ns/name/PROTO"
    for an unnamed port)."""
    port = f":{port_name}" if port_name else ""
    return f"{namespace}/{name}{port}/{protocol}"


# --- the collected document --------------------------------------------------------------

def document(pin_path: str, cgroup: str, maps: Mapping[str, list[dict[str, Any]]],
             programs: list[dict[str, Any]], notes: Iterable[str] = ()) -> dict[str, Any]:
    """What the inspector reads from a node in eBPF mode, as one JSON document:

    * `maps`: map name → `bpftool -j map dump pinned PIN/NAME` (a list of {"key": [...],
      "value": [...]}, bytes as "0x0a" strings or ints);
    * `programs`: `bpftool -j cgroup show CGROUP` (a list of {"id", "attach_type",
      "attach_flags", "name"});
    * `notes`: what could not be read, one line each.
    """
    return {"kind": DOCUMENT_KIND, "version": LAYOUT_VERSION, "pin_path": pin_path, "cgroup": cgroup,
            "maps": dict(maps), "programs": list(programs), "notes": list(notes)}


def entry_bytes(value: Any) -> bytes:
    """A key or value as bpftool's JSON spells it (["0x0a", ...], or ints), as bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return bytes(int(b, 16) for b in value.split())
    return bytes(int(b, 16) if isinstance(b, str) else int(b) for b in value)


def entry_json(raw: bytes) -> list[str]:
    """Bytes as bpftool's JSON spells them."""
    return [f"0x{b:02x}" for b in raw]
