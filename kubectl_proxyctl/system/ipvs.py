"""IPVS over generic netlink and the dummy interface that holds the service addresses: the
only module that talks to the kernel's ip_vs. Reads (dumps, lookups) go through pyroute2's
`IPVS` and `IPRoute`; writes are encoded here and sent through `system.netlink.Batch`, so a
sync's thousands of virtual servers, real servers and addresses cost a few sends. Writes are
sent at once, unless `defer(True)`: then they wait for `flush()` (or for a read, which flushes
first), and `defer(False)` drops what was never flushed.

Virtual servers are keyed by (protocol name, address, port); real servers by (address, port).
The kernel's own flag bits stay here: callers pass `persistent` seconds and scheduler flag
names (`mh-port`, ...). Every kernel refusal becomes an ApplyError naming the object.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Any, Iterable

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.system import netlink as nl

PROC_IP_VS = "/proc/net/ip_vs"
_PROTOCOLS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
_PROTOCOL_NAMES = {v: k for k, v in _PROTOCOLS.items()}
_PERSISTENT = 0x0001
# ipvsadm's scheduler flag names (IP_VS_SVC_F_SCHED1..3); `sh-*` and `mh-*` share the bits.
_SCHED_FLAGS = {"sh-fallback": 0x0008, "sh-port": 0x0010, "mh-fallback": 0x0008, "mh-port": 0x0010,
                "flag-1": 0x0008, "flag-2": 0x0010, "flag-3": 0x0020}
_OUR_FLAGS = _PERSISTENT | 0x0008 | 0x0010 | 0x0020
_MASQ = 0  # IP_VS_CONN_F_MASQ

# include/uapi/linux/ip_vs.h
_GENL_VERSION = 1
_CMD_NEW_SERVICE, _CMD_SET_SERVICE, _CMD_DEL_SERVICE = 1, 2, 3
_CMD_NEW_DEST, _CMD_SET_DEST, _CMD_DEL_DEST = 5, 6, 7
_CMD_ATTR_SERVICE, _CMD_ATTR_DEST = 1, 2
_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT = 1, 2, 3, 4
_SVC_SCHED_NAME, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK = 6, 7, 8, 9
_DEST_ADDR, _DEST_PORT, _DEST_FWD_METHOD, _DEST_WEIGHT = 1, 2, 3, 4
_DEST_U_THRESH, _DEST_L_THRESH, _DEST_ADDR_FAMILY = 5, 6, 11
_ENOENT, _ESRCH, _EEXIST, _EADDRNOTAVAIL = 2, 3, 17, 99


@dataclass(frozen=True)
class KernelReal:
    address: str
    port: int
    weight: int
    active: int = 0
    inactive: int = 0
    masquerade: bool = True


@dataclass(frozen=True)
class KernelService:
    protocol: str
    address: str
    port: int
    scheduler: str
    persistent: int  # seconds; 0 without persistence
    sched_flags: int  # IP_VS_SVC_F_SCHED1..3 bits
    reals: tuple[KernelReal, ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol, self.address, self.port)


def sched_flag_bits(names: Iterable[str]) -> int:
    bits = 0
    for name in names:
        bits |= _SCHED_FLAGS[name]
    return bits


def ensure_module(name: str = "ip_vs") -> str:
    """Load IP_VS if the kernel has it as a module; "" when usable, else why not (one line)."""
    if os.path.exists(PROC_IP_VS):
        return ""
    modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if os.path.exists("/sbin/modprobe") else None)
    detail = "modprobe not found"
    if modprobe:
        try:
            result = subprocess.run([modprobe, name], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            detail = str(exc)
        else:
            lines = (result.stderr or result.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"modprobe exited {result.returncode}"
    if os.path.exists(PROC_IP_VS):
        return ""
    return f"kernel module {name} is not loaded and cannot be loaded ({detail})"


def ensure_loaded(name: str, present: str, *params: str) -> str:
    """Load kernel module `name` unless `present` (a path it creates) exists; "" when usable,
    else why not (one line)."""
    if os.path.exists(present):
        return ""
    modprobe = shutil.which("modprobe") or "/sbin/modprobe"
    try:
        subprocess.run([modprobe, name, *params], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "" if os.path.exists(present) else f"kernel module {name} is not loaded and cannot be loaded"


def ensure_dummy() -> str:
    """The dummy link module (kube-ipvs0), loaded if needed."""
    why = ensure_loaded("dummy", "/sys/module/dummy", "numdummies=0")
    return f"{why} (the kube-ipvs0 interface is a dummy link)" if why else ""


def ensure_br_netfilter() -> str:
    """br_netfilter (bridged pod traffic through netfilter, which IPVS's NAT needs for pods on
    one node), loaded if needed."""
    return ensure_loaded("br_netfilter", "/proc/sys/net/bridge")


class IpvsKernel:
    """The kernel's IPVS table of the current network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPVS  # heavy: only when a sync needs it

        try:
            self._ipvs: Any = IPVS()
            self._batch = nl.Batch(nl.NETLINK_GENERIC)
            self._genl = nl.generic_family(self._batch, "IPVS")
        except Exception as exc:  # noqa: BLE001 - no IPVS generic netlink family
            raise ApplyError(f"cannot open the IPVS netlink socket (kernel module ip_vs): {exc}") from exc
        self.deferred = False

    def close(self) -> None:
        self._ipvs.close()
        self._batch.close()

    def defer(self, on: bool) -> None:
        """Queue writes until `flush()` (on), or send each at once (off: anything still queued
        is dropped, as after a failed sync)."""
        self.deferred = on
        if not on:
            self._batch.discard()

    def flush(self) -> None:
        self._batch.flush()

    def _send(self, cmd: int, attrs: bytes, what: str, ignore: tuple[int, ...] = ()) -> None:
        self._batch.add(self._genl, struct.pack("=BBH", cmd, _GENL_VERSION, 0) + attrs, what, ignore=ignore)
        if not self.deferred:
            self._batch.flush()

    @staticmethod
    def _service(protocol: str, address: str, port: int, **extra: Any) -> Any:
        from pyroute2 import IPVSService

        return IPVSService(addr=address, port=port, protocol=_PROTOCOLS[protocol], **extra)

    def services(self, reals: bool = True) -> list[KernelService]:
        """Every virtual server (with its real servers when `reals`); firewall-mark ones left out."""
        self._batch.flush()
        try:
            messages = list(self._ipvs.service("dump"))
        except Exception as exc:  # noqa: BLE001
            raise ApplyError(f"cannot list IPVS virtual servers: {exc}") from exc
        out = []
        for msg in messages:
            attrs = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            if attrs is None or attrs.get_attr("IPVS_SVC_ATTR_FWMARK"):
                continue
            protocol = _PROTOCOL_NAMES.get(attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL"))
            if protocol is None:
                continue
            address = str(ipaddress.ip_address(attrs.get_attr("IPVS_SVC_ATTR_ADDR")))
            port = int(attrs.get_attr("IPVS_SVC_ATTR_PORT"))
            flags_nla = attrs.get_attr("IPVS_SVC_ATTR_FLAGS") or {}
            flags = int(flags_nla.get("flags", 0)) if isinstance(flags_nla, dict) else 0
            persistent = int(attrs.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0) if flags & _PERSISTENT else 0
            service = KernelService(protocol, address, port, str(attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME")),
                                    persistent, flags & (_OUR_FLAGS & ~_PERSISTENT))
            if reals:
                service = KernelService(*service.key, service.scheduler, service.persistent, service.sched_flags,
                                        tuple(self.reals(service.key)))
            out.append(service)
        return out

    def reals(self, key: tuple[str, str, int]) -> list[KernelReal]:
        self._batch.flush()
        try:
            messages = list(self._ipvs.dest("dump", service=self._service(*key)))
        except Exception as exc:  # noqa: BLE001
            raise ApplyError(f"cannot list the real servers of {_name(key)}: {exc}") from exc
        out = []
        for msg in messages:
            d = msg.get_attr("IPVS_CMD_ATTR_DEST")
            if d is None:
                continue
            out.append(KernelReal(str(ipaddress.ip_address(d.get_attr("IPVS_DEST_ATTR_ADDR"))),
                                  int(d.get_attr("IPVS_DEST_ATTR_PORT")), int(d.get_attr("IPVS_DEST_ATTR_WEIGHT")),
                                  int(d.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0),
                                  int(d.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0),
                                  (int(d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") or 0) & 0x7) == _MASQ))
        return out

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ApplyError(f"{what}: {exc}") from exc

    @staticmethod
    def _key_attrs(key: tuple[str, str, int]) -> bytes:
        protocol, address, port = key
        ip = ipaddress.ip_address(address)
        return (nl.u16(_SVC_AF, socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
                + nl.u16(_SVC_PROTOCOL, _PROTOCOLS[protocol]) + nl.attr(_SVC_ADDR, ip.packed)
                + nl.be16(_SVC_PORT, port))

    def _full_service(self, key: tuple[str, str, int], scheduler: str, persistent: int, sched_flags: int) -> bytes:
        flags = (_PERSISTENT if persistent else 0) | sched_flags
        v6 = ":" in key[1]
        return nl.nested(_CMD_ATTR_SERVICE, self._key_attrs(key), nl.string(_SVC_SCHED_NAME, scheduler),
                         nl.attr(_SVC_FLAGS, struct.pack("=II", flags, _OUR_FLAGS)),
                         nl.u32(_SVC_TIMEOUT, persistent), nl.u32(_SVC_NETMASK, 128 if v6 else 0xFFFFFFFF))

    def add_service(self, key: tuple[str, str, int], scheduler: str, persistent: int, sched_flags: int) -> None:
        self._send(_CMD_NEW_SERVICE, self._full_service(key, scheduler, persistent, sched_flags),
                   f"cannot add IPVS virtual server {_name(key)}")

    def update_service(self, key: tuple[str, str, int], scheduler: str, persistent: int, sched_flags: int) -> None:
        self._send(_CMD_SET_SERVICE, self._full_service(key, scheduler, persistent, sched_flags),
                   f"cannot update IPVS virtual server {_name(key)}")

    def delete_service(self, key: tuple[str, str, int]) -> None:
        self._send(_CMD_DEL_SERVICE, nl.nested(_CMD_ATTR_SERVICE, self._key_attrs(key)),
                   f"cannot delete IPVS virtual server {_name(key)}")

    def _dest(self, key: tuple[str, str, int], address: str, port: int, weight: int) -> bytes:
        ip = ipaddress.ip_address(address)
        return (nl.nested(_CMD_ATTR_SERVICE, self._key_attrs(key))
                + nl.nested(_CMD_ATTR_DEST, nl.attr(_DEST_ADDR, ip.packed), nl.be16(_DEST_PORT, port),
                            nl.u32(_DEST_FWD_METHOD, _MASQ), nl.u32(_DEST_WEIGHT, weight),
                            nl.u32(_DEST_U_THRESH, 0), nl.u32(_DEST_L_THRESH, 0),
                            nl.u16(_DEST_ADDR_FAMILY, socket.AF_INET6 if ip.version == 6 else socket.AF_INET)))

    def add_real(self, key: tuple[str, str, int], address: str, port: int, weight: int = 1) -> None:
        self._send(_CMD_NEW_DEST, self._dest(key, address, port, weight),
                   f"cannot add real server {_host(address)}:{port} to {_name(key)}")

    def set_weight(self, key: tuple[str, str, int], address: str, port: int, weight: int) -> None:
        self._send(_CMD_SET_DEST, self._dest(key, address, port, weight),
                   f"cannot set the weight of {_host(address)}:{port} in {_name(key)}")

    def delete_real(self, key: tuple[str, str, int], address: str, port: int) -> None:
        self._send(_CMD_DEL_DEST, self._dest(key, address, port, 0),
                   f"cannot delete real server {_host(address)}:{port} from {_name(key)}")

    def set_timeouts(self, tcp: int, tcp_fin: int, udp: int) -> None:
        """`ipvsadm --set TCP TCPFIN UDP` (IPVS_CMD_SET_CONFIG), in seconds; the kernel keeps the
        value of each one given as 0, as kube-proxy relies on."""
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST

        msg = _config_message(tcp, tcp_fin, udp)
        self._call(f"cannot set the IPVS timeouts (tcp {tcp}s, tcpfin {tcp_fin}s, udp {udp}s)",
                   self._ipvs._run_with_cleanup, self._ipvs.asyncore._do_request, msg,
                   msg_flags=NLM_F_REQUEST | NLM_F_ACK)


def _config_message(tcp: int, tcp_fin: int, udp: int) -> Any:
    """An IPVS_CMD_SET_CONFIG request. pyroute2's IPVS class has no call for it, and its message
    type declares the timeout attributes as raw bytes: each is given as the native-endian u32
    of seconds the kernel reads (include/uapi/linux/ip_vs.h)."""
    from pyroute2.netlink.generic import ipvs as genl_ipvs

    msg = genl_ipvs.ipvsmsg()
    msg["cmd"] = genl_ipvs.IPVS_CMD_SET_CONFIG
    msg["version"] = genl_ipvs.GENL_VERSION
    msg["attrs"] = [("IPVS_CMD_ATTR_TIMEOUT_TCP", struct.pack("=I", tcp)),
                    ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", struct.pack("=I", tcp_fin)),
                    ("IPVS_CMD_ATTR_TIMEOUT_UDP", struct.pack("=I", udp))]
    return msg


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _name(key: tuple[str, str, int]) -> str:
    protocol, address, port = key
    return f"{protocol} {_host(address)}:{port}"


_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def _address_message(index: int, address: str) -> bytes:
    """An ifaddrmsg for a host address (/32 or /128, scope global) on interface `index`."""
    ip = ipaddress.ip_address(address)
    family, prefix = (socket.AF_INET6, 128) if ip.version == 6 else (socket.AF_INET, 32)
    return (struct.pack("=BBBBI", family, prefix, 0, 0, index)
            + nl.attr(_IFA_LOCAL, ip.packed) + nl.attr(_IFA_ADDRESS, ip.packed))


class DummyDevice:
    """The dummy interface holding the service addresses (kept down, as kube-proxy keeps it)."""

    def __init__(self, name: str) -> None:
        from pyroute2 import IPRoute

        self.name = name
        self._ipr: Any = IPRoute()
        self._batch = nl.Batch(nl.NETLINK_ROUTE)
        self.deferred = False

    def close(self) -> None:
        self._ipr.close()
        self._batch.close()

    def defer(self, on: bool) -> None:
        """As `IpvsKernel.defer`."""
        self.deferred = on
        if not on:
            self._batch.discard()

    def flush(self) -> None:
        self._batch.flush()

    def index(self) -> int | None:
        self._batch.flush()
        found = self._ipr.link_lookup(ifname=self.name)
        return int(found[0]) if found else None

    def ensure(self) -> int:
        index = self.index()
        if index is not None:
            return index
        try:
            self._ipr.link("add", ifname=self.name, kind="dummy")
        except Exception as exc:  # noqa: BLE001
            raise ApplyError(f"cannot create the dummy interface {self.name} (kernel module dummy): {exc}") from exc
        index = self.index()
        if index is None:
            raise ApplyError(f"the dummy interface {self.name} vanished right after it was created")
        return index

    def delete(self) -> bool:
        index = self.index()
        if index is None:
            return False
        try:
            self._ipr.link("del", index=index)
        except Exception as exc:  # noqa: BLE001
            raise ApplyError(f"cannot delete {self.name}: {exc}") from exc
        return True

    def _all_addresses(self) -> list[tuple[int, str]]:
        """(interface index, address) of every address of the namespace: one dump, decoded here
        (kube-ipvs0 holds one per Service address, thousands on a big node)."""
        out = []
        for reply in self._batch.dump(_RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0),
                                      "cannot list the addresses"):
            family, _, _, _, index = struct.unpack_from("=BBBBI", reply)
            attrs = nl.parse_attrs(reply, 8)
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if raw and family in (socket.AF_INET, socket.AF_INET6):
                out.append((index, socket.inet_ntop(family, raw)))
        return out

    def addresses(self) -> set[str]:
        index = self.index()  # flushes
        if index is None:
            return set()
        return {address for i, address in self._all_addresses() if i == index}

    def bind(self, addresses: Iterable[str]) -> None:
        index = self.ensure()
        for address in addresses:
            self._batch.add(_RTM_NEWADDR, _address_message(index, address), f"cannot bind {address} to {self.name}",
                            flags=nl.NLM_F_CREATE | nl.NLM_F_EXCL, ignore=(_EEXIST,))
        if not self.deferred:
            self._batch.flush()

    def unbind(self, addresses: Iterable[str]) -> None:
        index = self.index()
        if index is None:
            return
        for address in addresses:
            self._batch.add(_RTM_DELADDR, _address_message(index, address),
                            f"cannot unbind {address} from {self.name}", ignore=(_EADDRNOTAVAIL, _ENOENT))
        if not self.deferred:
            self._batch.flush()

    def other_addresses(self) -> list[str]:
        """Every local address not on this interface (kube-proxy's node address set)."""
        index = self.index()
        return list(dict.fromkeys(address for i, address in self._all_addresses() if i != index))
