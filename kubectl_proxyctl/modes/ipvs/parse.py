"""IPVS mode's state as its tools print it: `ipvsadm -Sn`, `ipvsadm -Ln` and `ipset save`.

Theory of operation: kube-proxy's IPVS mode keeps one virtual service per (VIP, port,
protocol) and one real server per endpoint, plus ipsets that a constant-size set of iptables
rules matches on (masquerade, source ranges, node ports). Nothing in IPVS carries a service
name: a virtual service is only an address, so names come from the Service objects
(`modes.ipvs.names`), never from here.

* `ipvsadm -Sn` (save form): `-A -t VIP:PORT -s rr [-p SECONDS]` adds a virtual service,
  `-a -t VIP:PORT -r IP:PORT -m -w WEIGHT` a real server (`-t` TCP, `-u` UDP, `--sctp-service`
  SCTP, `-f MARK` firewall mark; `-m` masquerading, `-g` gatewaying, `-i` tunnelling).
* `ipvsadm -Ln` (list form): `TCP  VIP:PORT rr [persistent SECONDS]` then
  `  -> IP:PORT  Masq  WEIGHT  ACTIVE  INACTIVE` lines, under a three-line header.
* `ipset save`: `create NAME TYPE OPTIONS...` and `add NAME MEMBER [comment "..."]`.

Both parsers are pure and strict about what they recognise: a line they do not understand
raises RulesetParseError naming it. IPv6 addresses appear as `[addr]:port`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.modes.iptables.parse import split_line

_PROTOCOL_FLAGS: Mapping[str, str] = {
    "-t": "TCP", "--tcp-service": "TCP",
    "-u": "UDP", "--udp-service": "UDP",
    "--sctp-service": "SCTP",
    "-f": "FWM", "--fwmark-service": "FWM",
}
_FORWARD_FLAGS: Mapping[str, str] = {
    "-m": "Masq", "--masquerading": "Masq",
    "-g": "Route", "--gatewaying": "Route",
    "-i": "Tunnel", "--ipip": "Tunnel",
}
_LIST_HEADERS = ("IP Virtual Server version", "Prot LocalAddress:Port", "-> RemoteAddress:Port")


@dataclass(frozen=True)
class RealServer:
    """One endpoint of a virtual service."""

    address: str
    port: int
    forward: str = "Masq"  # Masq (NAT, kube-proxy's), Route, Tunnel
    weight: int = 1
    active: int | None = None  # connection counts, only in the list form
    inactive: int | None = None

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class VirtualService:
    """One IPVS virtual service and its real servers, in the order ipvsadm printed them."""

    protocol: str  # TCP, UDP, SCTP or FWM
    address: str  # the VIP ("" for a firewall-mark service)
    port: int
    scheduler: str = "rr"
    persistent: int | None = None  # ClientIP affinity timeout in seconds
    fwmark: int | None = None
    reals: tuple[RealServer, ...] = ()
    line: int = 0

    @property
    def key(self) -> str:
        if self.protocol == "FWM":
            return f"FWM {self.fwmark}"
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.protocol} {host}:{self.port}"

    def save_lines(self) -> list[str]:
        """The service as `ipvsadm -Sn` lines (what `dump -o raw` prints)."""
        flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service", "FWM": "-f"}[self.protocol]
        where = str(self.fwmark) if self.protocol == "FWM" else self.key.split(" ", 1)[1]
        head = f"-A {flag} {where} -s {self.scheduler}" + (f" -p {self.persistent}" if self.persistent else "")
        fwd = {"Masq": "-m", "Route": "-g", "Tunnel": "-i"}
        lines = [head]
        for r in self.reals:
            lines.append(f"-a {flag} {where} -r {r.endpoint} {fwd.get(r.forward, '-m')} -w {r.weight}")
        return lines


@dataclass(frozen=True)
class IpvsTable:
    services: tuple[VirtualService, ...] = ()

    def find(self, protocol: str, address: str, port: int) -> VirtualService | None:
        wanted = _canonical(address)
        for vs in self.services:
            if vs.protocol == protocol.upper() and vs.port == port and _canonical(vs.address) == wanted:
                return vs
        return None


def _canonical(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def split_host_port(text: str) -> tuple[str, int]:
    """`1.2.3.4:80` or `[fd00::1]:80` → (address, port); ValueError otherwise."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not ADDRESS:PORT")
    ipaddress.ip_address(host)
    return host, int(port)


# --- ipvsadm -Sn / -Ln ---------------------------------------------------------------


def looks_like_ipvsadm(line: str) -> bool:
    """Whether a line is ipvsadm output (save or list form)."""
    s = line.strip()
    if s.startswith(_LIST_HEADERS) or s.startswith("-> "):
        return True
    words = s.split()
    if len(words) >= 3 and words[0] in ("-A", "-a") and words[1] in _PROTOCOL_FLAGS:
        return True
    return len(words) >= 2 and words[0] in ("TCP", "UDP", "SCTP", "FWM") and (":" in words[1] or words[0] == "FWM")


def parse_ipvsadm(text: str, source: str = "<input>") -> IpvsTable:
    """Virtual services from `ipvsadm -Sn` or `ipvsadm -Ln` output (the forms may be mixed)."""
    order: list[str] = []
    heads: dict[str, VirtualService] = {}
    reals: dict[str, list[RealServer]] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(_LIST_HEADERS) or line.startswith("--set "):
            continue  # `--set`: the connection timeouts of `ipvsadm -R` input (`run --dry-run`), no service
        try:
            words = split_line(line)
            if words[0] in ("-A", "-a"):
                vs, real = _parse_save_line(words, number)
                key = vs.key
                if words[0] == "-A":
                    if key not in heads:
                        order.append(key)
                    heads[key] = vs
                    reals.setdefault(key, [])
                else:
                    if key not in heads:
                        order.append(key)
                        heads[key] = vs
                    assert real is not None
                    reals.setdefault(key, []).append(real)
            elif words[0] == "->":
                if current is None:
                    raise ValueError("a real server before any virtual service")
                reals[current].append(_parse_list_real(words))
            elif words[0] in ("TCP", "UDP", "SCTP", "FWM"):
                vs = _parse_list_service(words, number)
                current = vs.key
                if current not in heads:
                    order.append(current)
                heads[current] = vs
                reals.setdefault(current, [])
            else:
                raise ValueError("not ipvsadm output")
        except (ValueError, IndexError) as exc:
            raise RulesetParseError(f"{exc}: {line[:70]!r}", number, source) from None
    return IpvsTable(tuple(replace(heads[k], reals=tuple(reals.get(k, ()))) for k in order))


def _parse_save_line(words: Sequence[str], number: int) -> tuple[VirtualService, RealServer | None]:
    protocol = _PROTOCOL_FLAGS[words[1]]
    where = words[2]
    if protocol == "FWM":
        address, port, fwmark = "", 0, int(where, 0)
    else:
        address, port = split_host_port(where)
        fwmark = None
    scheduler, persistent = "rr", None
    real_addr: tuple[str, int] | None = None
    forward, weight = "Masq", 1
    i = 3
    while i < len(words):
        w = words[i]
        if w in ("-s", "--scheduler"):
            scheduler = words[i + 1]
            i += 2
        elif w in ("-p", "--persistent"):
            if i + 1 < len(words) and words[i + 1].isdecimal():
                persistent = int(words[i + 1])
                i += 2
            else:
                persistent = 300  # ipvsadm's default persistence timeout
                i += 1
        elif w in ("-r", "--real-server"):
            real_addr = split_host_port(words[i + 1])
            i += 2
        elif w in _FORWARD_FLAGS:
            forward = _FORWARD_FLAGS[w]
            i += 1
        elif w in ("-w", "--weight"):
            weight = int(words[i + 1])
            i += 2
        elif w in ("-M", "--netmask", "-b", "--sched-flags", "-x", "--u-threshold", "-y", "--l-threshold",
                   "--pe"):
            i += 2
        else:
            raise ValueError(f"unknown ipvsadm option {w!r}")
    vs = VirtualService(protocol, address, port, scheduler, persistent, fwmark, (), number)
    if words[0] == "-a":
        if real_addr is None:
            raise ValueError("-a without -r")
        return vs, RealServer(real_addr[0], real_addr[1], forward, weight)
    return vs, None


def _parse_list_service(words: Sequence[str], number: int) -> VirtualService:
    protocol = words[0]
    if protocol == "FWM":
        address, port, fwmark = "", 0, int(words[1], 0)
    else:
        address, port = split_host_port(words[1])
        fwmark = None
    scheduler = words[2] if len(words) > 2 else "rr"
    persistent = None
    if "persistent" in words:
        i = words.index("persistent")
        persistent = int(words[i + 1]) if i + 1 < len(words) and words[i + 1].isdecimal() else 300
    return VirtualService(protocol, address, port, scheduler, persistent, fwmark, (), number)


def _parse_list_real(words: Sequence[str]) -> RealServer:
    address, port = split_host_port(words[1])
    forward = words[2] if len(words) > 2 else "Masq"
    weight = int(words[3]) if len(words) > 3 else 1
    active = int(words[4]) if len(words) > 4 else None
    inactive = int(words[5]) if len(words) > 5 else None
    return RealServer(address, port, forward, weight, active, inactive)


# --- ipset save ----------------------------------------------------------------------


@dataclass(frozen=True)
class IpSet:
    """One ipset: its type (`hash:ip,port`), options and members in `ipset save` spelling."""

    name: str
    type: str
    options: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    comments: Mapping[str, str] = field(default_factory=dict)
    line: int = 0

    @property
    def dimensions(self) -> tuple[str, ...]:
        """`hash:ip,port,net` → ("ip", "port", "net")."""
        _, _, dims = self.type.partition(":")
        return tuple(dims.split(",")) if dims else ()

    def contains(self, parts: Sequence[str]) -> bool | None:
        """Membership of (`ip`, `proto:port`, ...) parts; None for dimensions it cannot judge."""
        dims = self.dimensions
        if len(parts) != len(dims):
            return None
        for member in self._parsed():
            if member is None:
                return None
            if all(_part_matches(kind, want, have) for kind, want, have in zip(dims, parts, member)):
                return True
        return False

    def _parsed(self) -> list[tuple[str, ...] | None]:
        dims = self.dimensions
        out: list[tuple[str, ...] | None] = []
        for text in self.members:
            pieces = text.split(",")
            out.append(tuple(pieces) if len(pieces) == len(dims) else None)
        return out

    def save_lines(self) -> list[str]:
        lines = [" ".join(["create", self.name, self.type, *self.options])]
        for m in self.members:
            comment = self.comments.get(m)
            lines.append(f"add {self.name} {m}" + (f' comment "{comment}"' if comment else ""))
        return lines


def _part_matches(kind: str, want: str, have: str) -> bool | None:
    if kind in ("ip", "net"):
        try:
            if "/" in have or "-" not in have:
                return ipaddress.ip_address(want) in ipaddress.ip_network(have, strict=False)
            first, last = (int(ipaddress.ip_address(x)) for x in have.split("-", 1))
            return first <= int(ipaddress.ip_address(want)) <= last
        except ValueError:
            return None
    if kind == "port":
        want_proto, _, want_port = want.partition(":")
        proto, sep, ports = have.partition(":")
        if not sep:  # bitmap:port members are bare numbers; any protocol
            proto, ports = want_proto, have
        if proto != want_proto:
            return False
        low, _, high = ports.partition("-")
        try:
            return int(low) <= int(want_port) <= int(high or low)
        except ValueError:
            return None
    return None


def looks_like_ipset(line: str) -> bool:
    return line.startswith(("create ", "add ")) and len(line.split()) >= 3


def parse_ipset(text: str, source: str = "<input>") -> dict[str, IpSet]:
    """Sets from `ipset save` output, by name."""
    created: dict[str, tuple[str, tuple[str, ...], int]] = {}
    members: dict[str, list[str]] = {}
    comments: dict[str, dict[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = split_line(line)
        except ValueError as exc:
            raise RulesetParseError(str(exc), number, source) from None
        if words[0] == "create" and len(words) >= 3:
            created[words[1]] = (words[2], tuple(words[3:]), number)
            members.setdefault(words[1], [])
        elif words[0] == "add" and len(words) >= 3:
            members.setdefault(words[1], []).append(words[2])
            if "comment" in words[3:-1]:
                comments.setdefault(words[1], {})[words[2]] = words[words.index("comment", 3) + 1]
        else:
            raise RulesetParseError(f"not ipset save output: {line[:70]!r}", number, source)
    missing = sorted(set(members) - set(created))
    if missing:
        raise RulesetParseError(f"members added to sets never created: {', '.join(missing)}", None, source)
    return {
        name: IpSet(name, kind, options, tuple(members.get(name, ())), comments.get(name, {}), line)
        for name, (kind, options, line) in created.items()
    }

