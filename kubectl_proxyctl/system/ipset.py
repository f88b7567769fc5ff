"""ipsets over netlink (pyroute2's `IPSet`): the only module that talks to the kernel's ip_set.

Members are spoken in `ipset save` spelling on both sides (`10.96.0.1,tcp:80`,
`10.244.1.2,tcp:80,10.244.1.2`, `1.2.3.4,tcp:80,10.0.0.0/8`, `30080`, `10.96.0.1`), so callers
never see netlink attributes. Every kernel refusal becomes an ApplyError naming the set.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable, Iterator

from kubectl_proxyctl.errors import ApplyError

_PROTO_NUMBERS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
_PROTO_NAMES = {v: k for k, v in _PROTO_NUMBERS.items()}
_ENOENT_CODES = {2}  # the set does not exist
_IPSET_ERR_EXIST = 4102  # IPSET_ERR_EXIST: "Element cannot be deleted from the set: it's not added"


def _family(type_: str, family: str) -> int:
    return socket.AF_INET6 if family == "inet6" else socket.AF_INET


class IpsetKernel:
    """The kernel's ipsets of the current network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPSet  # heavy: only when a sync needs it

        try:
            self._ipset: Any = IPSet()
        except Exception as exc:  # noqa: BLE001 - pyroute2 raises many kinds
            raise ApplyError(f"cannot open the ipset netlink socket (kernel module ip_set): {exc}") from exc

    def close(self) -> None:
        self._ipset.close()

    def exists(self, name: str) -> bool:
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
        for member in members:
            entry, etype = _entry(type_, member)
            try:
                self._ipset.add(name, entry, family=_family(type_, family), exclusive=False, etype=etype)
            except Exception as exc:  # noqa: BLE001
                raise ApplyError(f"ipset add {name} {member}: {exc}") from exc

    def delete(self, name: str, type_: str, members: Iterable[str], family: str = "inet") -> None:
        for member in members:
            entry, etype = _entry(type_, member)
            try:
                self._ipset.delete(name, entry, family=_family(type_, family), exclusive=False, etype=etype)
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "code", None) == _IPSET_ERR_EXIST:
                    continue  # already gone
                raise ApplyError(f"ipset del {name} {member}: {exc}") from exc


def _entry(type_: str, member: str) -> tuple[Any, str]:
    """A member in save spelling → (pyroute2 entry, etype)."""
    from pyroute2.ipset import PortEntry

    _, _, dims = type_.partition(":")
    if dims == "port":
        return int(member), "port"
    parts: list[Any] = []
    for kind, text in zip(dims.split(","), member.split(",")):
        if kind == "port":
            proto, _, port = text.partition(":")
            parts.append(PortEntry(int(port), _PROTO_NUMBERS[proto]))
        else:
            parts.append(text)
    return tuple(parts), dims


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
