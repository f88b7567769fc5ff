"""Cheap fingerprints of the kernel's packet-filter state: has anything changed since we looked?

The engine must notice within one sync period when someone flushed or deleted its rules, at
a cost that does not grow with the number of services. Reading the rules themselves costs
time proportional to their size (`iptables-legacy -S` of one small chain loads the whole
table: 0.3 s at 10,000 services), so the check is in two stages: a fingerprint here, O(1),
every period; the precise (and proportional) check only when the fingerprint moved.

* **nf_tables** (nftables mode and the iptables-nft backend): the kernel keeps one ruleset
  generation per network namespace, bumped by every committed transaction of anyone.
  `NFT_MSG_GETGEN` over a netfilter netlink socket returns it.
* **x_tables** (the iptables-legacy backend): `IPT_SO_GET_INFO` / `IP6T_SO_GET_INFO` on a raw
  socket returns a table's entry count and blob size, which change with any rule added,
  deleted, flushed or replaced in that table (a whole-table replace of identical rules keeps
  them, which is harmless: nothing was lost).

Both are read inside a network namespace when asked (`netns`), as the engine's tests need.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.system.netns import socket_in_netns

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")

SO_GET_INFO = 64  # IPT_SO_GET_INFO and IP6T_SO_GET_INFO (IPT_BASE_CTL + 0)
_TABLE_NAME_LEN = 32
_HOOKS = 5


class _GetInfo(ctypes.Structure):
    """struct ipt_getinfo (same layout for ip6t_getinfo)."""

    _fields_ = [
        ("name", ctypes.c_char * _TABLE_NAME_LEN),
        ("valid_hooks", ctypes.c_uint),
        ("hook_entry", ctypes.c_uint * _HOOKS),
        ("underflow", ctypes.c_uint * _HOOKS),
        ("num_entries", ctypes.c_uint),
        ("size", ctypes.c_uint),
    ]


def nft_generation(netns: str | None = None) -> int:
    """The nf_tables ruleset generation of the namespace (changes with every commit)."""
    with socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
        sock.send(_NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                              NLM_F_REQUEST, 1, 0) + body)
        data = sock.recv(65536)
    return _parse_generation(data)


def _parse_generation(data: bytes) -> int:
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        if kind == NLMSG_ERROR:
            error = struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
            raise ProxyctlError(f"cannot read the nf_tables generation: {os.strerror(-error)}")
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            attr = offset + _NLMSG.size + _NFGEN.size
            end = offset + length
            while attr + _NLA.size <= end:
                alen, atype = _NLA.unpack_from(data, attr)
                if alen < _NLA.size:
                    break
                if atype & 0x3FFF == NFTA_GEN_ID:
                    return int(struct.unpack_from(">I", data, attr + _NLA.size)[0])
                attr += (alen + 3) & ~3
        offset += (length + 3) & ~3
    raise ProxyctlError("cannot read the nf_tables generation: no generation in the kernel's answer")


def xtables_info(table: str, family: IPFamily = IPFamily.IPv4, netns: str | None = None) -> tuple[int, int]:
    """(entries, size) of one iptables-legacy table; (0, 0) when the table does not exist."""
    domain, level = (socket.AF_INET6, socket.IPPROTO_IPV6) if family == IPFamily.IPv6 else (socket.AF_INET, socket.IPPROTO_IP)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    info = _GetInfo()
    info.name = table.encode()
    length = ctypes.c_uint(ctypes.sizeof(info))
    with socket_in_netns(netns, domain, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        rc = libc.getsockopt(sock.fileno(), level, SO_GET_INFO, ctypes.byref(info), ctypes.byref(length))
    if rc != 0:
        err = ctypes.get_errno()
        if err in (2, 22, 92):  # ENOENT, EINVAL, ENOPROTOOPT: no such table (module not loaded)
            return 0, 0
        raise ProxyctlError(f"cannot read iptables table {table}: {os.strerror(err)}")
    return int(info.num_entries), int(info.size)
