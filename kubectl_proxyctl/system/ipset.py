"""ipsets over netlink: the only module that talks to the kernel's ip_set. Creating, listing
and destroying sets go through pyroute2's `IPSet`; members are added and deleted with
requests encoded here and sent many at a time (`system.netlink.Batch`), and, as in
`system/ipvs.py`, held back under `defer(True)` until `flush()` or the next read.

Members are spoken in `ipset save` spelling on both sides (`10.96.0.1,tcp:80`,
`10.244.1.2,tcp:80,10.244.1.2`, `1.2.3.4,tcp:80,10.0.0.0/8`, `30080`, `10.96.0.1`), so callers
never see netlink attributes. Every kernel refusal becomes an ApplyError naming the set.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Iterable, Iterator

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.system import netlink as nl

_PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
_PROTO_NAMES = {v: k for k, v in _PROTO_NUMBERS.items()}
_ENOENT_CODES = {2}  # the set does not exist
_IPSET_ERR_EXIST = 4103  # IPSET_ERR_EXIST: "Element cannot be deleted from the set: it's not added"

# include/uapi/linux/netfilter/ipset/ip_set.h
_NFNL_SUBSYS_IPSET = 6
_IPSET_PROTOCOL = 6  # the oldest protocol every kernel since 2.6.39 takes for add/del
_CMD_ADD, _CMD_DEL = 9, 10
_ATTR_PROTOCOL, _ATTR_SETNAME, _ATTR_DATA = 1, 2, 7
_ATTR_IP, _ATTR_CIDR, _ATTR_PORT, _ATTR_PROTO, _ATTR_IP2, _ATTR_CIDR2 = 1, 3, 4, 7, 20, 21
_ATTR_IPADDR_IPV4, _ATTR_IPADDR_IPV6 = 1, 2
# What the ipset tool says for the kernel's own error codes (errcode.c), for add and del.
_ERRORS = {4097: "Kernel error received: ipset protocol error", 4098: "Kernel error received: set type not supported",
           4102: "The set and the element types do not match",
           4103: "Element cannot be added to the set, or deleted from it: it is already there, or not there",
           4104: "The value of the CIDR parameter of the IP address is invalid",
           4106: "The set family and the address family do not match (or the address is invalid)",
           4352: "Hash is full, cannot add more elements", 4353: "Null-valued element, cannot be stored in a hash type of set",
           4354: "Invalid protocol specified", 4355: "Protocol missing, but must be specified"}


def _family(type_: str, family: str) -> int:
    return socket.AF_INET6 if family == "inet6" else socket.AF_INET


class IpsetKernel:
    """The kernel's ipsets of the current network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPSet  # heavy: only when a sync needs it

        try:
            self._ipset: Any = IPSet()
            self._batch = nl.Batch(nl.NETLINK_NETFILTER, errors=dict(_ERRORS))
        except Exception as exc:  # noqa: BLE001 - pyroute2 raises many kinds
            raise ApplyError(f"cannot open the ipset netlink socket (kernel module ip_set): {exc}") from exc
        self.deferred = False

    def close(self) -> None:
        self._ipset.close()
        self._batch.close()

    def defer(self, on: bool) -> None:
        """Queue member changes until `flush()` (on), or send each at once (off: anything
        still queued is dropped, as after a failed sync)."""
        self.deferred = on
        if not on:
            self._batch.discard()

    def flush(self) -> None:
        self._batch.flush()

    def exists(self, name: str) -> bool:
        self._batch.flush()
        try:
            list(self._ipset.headers(name))
        except Exception:  # noqa: BLE001 - NetlinkError ENOENT, or no ip_set at all
            return False
        return True

    def ensure(self, name: str, type_: str, family: str = "inet") -> bool:
        """Create the set unless it exists (with kube-proxy's options); True when created."""
        if self.exists(name):
            return False
        kwargs: dict[str, Any] = {"stype": type_, "family": _family(type_, family), "exclusive": False}
        if type_.startswith("bitmap:port"):
            kwargs["bitmap_ports_range"] = (0, 65535)
        else:
            kwargs.update(hashsize=1024, maxelem=65536)
        try:
            self._ipset.create(name, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ApplyError(f"ipset create {name} {type_}: {exc}") from exc
        return True

    def destroy(self, name: str) -> bool:
        """Destroy the set; False when it did not exist."""
        try:
            self._ipset.destroy(name)
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "code", None) in _ENOENT_CODES or not self.exists(name):
                return False
            raise ApplyError(f"ipset destroy {name}: {exc}") from exc
        return True

    def members(self, name: str) -> set[str] | None:
        """The set's members in `ipset save` spelling; None when the set does not exist."""
        self._batch.flush()
        try:
            messages = list(self._ipset.list(name))
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "code", None) in _ENOENT_CODES:
                return None
            raise ApplyError(f"ipset list {name}: {exc}") from exc
        out: set[str] = set()
        for msg in messages:
            type_ = msg.get_attr("IPSET_ATTR_TYPENAME") or ""
            adt = msg.get_attr("IPSET_ATTR_ADT")
            if adt is None:
                continue
            for data in adt.get_attrs("IPSET_ATTR_DATA"):
                out.add(_member_text(type_, data))
        return out

    def add(self, name: str, type_: str, members: Iterable[str], family: str = "inet") -> None:
        self._members(_CMD_ADD, "add", name, type_, members, family, ())

    def delete(self, name: str, type_: str, members: Iterable[str], family: str = "inet") -> None:
        self._members(_CMD_DEL, "del", name, type_, members, family, (_IPSET_ERR_EXIST,))  # already gone: fine

    def _members(self, cmd: int, verb: str, name: str, type_: str, members: Iterable[str], family: str,
                 ignore: tuple[int, ...]) -> None:
        header = struct.pack("=BBH", _family(type_, family), 0, 0) + nl.u8(_ATTR_PROTOCOL, _IPSET_PROTOCOL) \
            + nl.string(_ATTR_SETNAME, name)
        for member in members:
            try:
                data = member_attrs(type_, member)
            except ValueError as exc:
                raise ApplyError(f"ipset {verb} {name} {member}: {exc}") from None
            # No NLM_F_EXCL: adding a member that is there is not an error (`ipset add -exist`).
            self._batch.add((_NFNL_SUBSYS_IPSET << 8) | cmd, header + nl.nested(_ATTR_DATA, data),
                            f"ipset {verb} {name} {member}", ignore=ignore)
        if not self.deferred:
            self._batch.flush()


def _address(kind: int, text: str) -> bytes:
    ip = ipaddress.ip_address(text)
    inner = _ATTR_IPADDR_IPV6 if ip.version == 6 else _ATTR_IPADDR_IPV4
    return nl.nested(kind, nl.attr(inner | nl.NLA_F_NET_BYTEORDER, ip.packed))


def member_attrs(type_: str, member: str) -> bytes:
    """A member in `ipset save` spelling as the attributes of IPSET_ATTR_DATA for a set of
    `type_` (`hash:ip,port,net`, `bitmap:port`, ...); ValueError when it does not fit the type."""
    _, _, dims = type_.partition(":")
    kinds, texts = dims.split(","), member.split(",")
    if len(kinds) != len(texts):
        raise ValueError(f"a {type_} member has {len(kinds)} parts")
    out: list[bytes] = []
    addresses = 0
    for kind, text in zip(kinds, texts):
        if kind == "port":
            proto, _, port = text.rpartition(":")
            if not port.isdecimal() or int(port) > 65535:
                raise ValueError(f"bad port {text!r}")
            out.append(nl.attr(_ATTR_PORT | nl.NLA_F_NET_BYTEORDER, struct.pack("!H", int(port))))
            if proto:
                if proto not in _PROTO_NUMBERS:
                    raise ValueError(f"unknown protocol {proto!r}")
                out.append(nl.u8(_ATTR_PROTO, _PROTO_NUMBERS[proto]))
        elif kind in ("ip", "net"):
            address, slash, prefix = text.partition("/")
            first = addresses == 0
            addresses += 1
            out.append(_address(_ATTR_IP if first else _ATTR_IP2, address))
            if kind == "net" and slash:
                if not prefix.isdecimal():
                    raise ValueError(f"bad prefix {text!r}")
                out.append(nl.u8(_ATTR_CIDR if first else _ATTR_CIDR2, int(prefix)))
        else:
            raise ValueError(f"sets of type {type_} are not written here")
    return b"".join(out)


def _addr(nla: Any) -> str:
    for key in ("IPSET_ATTR_IPADDR_IPV4", "IPSET_ATTR_IPADDR_IPV6"):
        value = nla.get_attr(key)
        if value is not None:
            return str(value)
    return ""


def _member_text(type_: str, data: Any) -> str:
    _, _, dims = type_.partition(":")
    pieces: list[str] = []
    ips: Iterator[str] = iter(("IPSET_ATTR_IP_FROM", "IPSET_ATTR_IP2"))
    cidrs: Iterator[str] = iter(("IPSET_ATTR_CIDR", "IPSET_ATTR_CIDR2"))
    for kind in dims.split(","):
        if kind == "port":
            port = data.get_attr("IPSET_ATTR_PORT_FROM")
            if port is None:
                port = data.get_attr("IPSET_ATTR_PORT")
            proto = data.get_attr("IPSET_ATTR_PROTO")
            pieces.append(str(port) if proto is None else f"{_PROTO_NAMES.get(proto, proto)}:{port}")
        else:
            address = _addr(data.get_attr(next(ips)))
            cidr = data.get_attr(next(cidrs))
            if kind == "net" and cidr is not None:
                address = f"{address}/{cidr}"
            pieces.append(address)
    return ",".join(pieces)
