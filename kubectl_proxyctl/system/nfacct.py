"""nfacct counters (the kernel's nfnetlink_acct, `nfacct list`): named packet and byte
counters that an iptables rule bumps with `-m nfacct --nfacct-name NAME`. kube-proxy's
iptables mode creates two and serves them as metrics; so does ours.

Talks nfnetlink directly (subsystem NFNL_SUBSYS_ACCT over NETLINK_NETFILTER): a request is
the nfgenmsg header (family AF_UNSPEC, version 0, resource id 0) and the NFACCT_NAME
attribute; a counter comes back with NFACCT_PKTS and NFACCT_BYTES (64-bit, big-endian).
Counters belong to the network namespace of the socket.
"""

from __future__ import annotations

import errno
import struct
import threading

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.system import netlink as nl

_SUBSYS_ACCT = 7
_MSG_NEW = 0
_MSG_GET = 1
_NAME = 1
_PACKETS = 2
_BYTES = 3
MAX_NAME = 31  # NFACCT_NAME_MAX - 1


def _header() -> bytes:
    return struct.pack("=BBH", 0, 0, 0)  # AF_UNSPEC, NFNETLINK_V0, res_id


class Nfacct:
    """The nfacct counters of this network namespace. ApplyError when the kernel has no
    nfnetlink_acct (`open_counters()` asks first). Safe to share between threads (the syncs
    create counters, the metrics server reads them)."""

    def __init__(self) -> None:
        self._batch = nl.Batch(nl.NETLINK_NETFILTER)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._batch.close()

    def __enter__(self) -> Nfacct:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, name: str) -> tuple[int, int] | None:
        """(packets, bytes) of counter `name`; None when there is no such counter."""
        _check(name)
        try:
            with self._lock:
                replies = self._batch.request((_SUBSYS_ACCT << 8) | _MSG_GET, _header() + nl.string(_NAME, name),
                                              f"cannot read nfacct counter {name}")
        except nl.NetlinkRefusal as exc:
            if exc.code == errno.ENOENT:
                return None
            raise
        for reply in replies:
            attrs = nl.parse_attrs(reply, 4)
            if _PACKETS in attrs and _BYTES in attrs:
                return struct.unpack("!Q", attrs[_PACKETS][:8])[0], struct.unpack("!Q", attrs[_BYTES][:8])[0]
        raise ApplyError(f"cannot read nfacct counter {name}: the kernel's answer has no packet count")

    def ensure(self, name: str) -> None:
        """Create counter `name` unless it exists (an existing one keeps its counts)."""
        if self.get(name) is not None:
            return
        with self._lock:
            self._batch.add((_SUBSYS_ACCT << 8) | _MSG_NEW, _header() + nl.string(_NAME, name),
                            f"cannot create nfacct counter {name}", flags=nl.NLM_F_CREATE, ignore=(errno.EBUSY,))
            self._batch.flush()


def _check(name: str) -> None:
    if not name or len(name) > MAX_NAME:
        raise ApplyError(f"nfacct counter name {name!r}: 1 to {MAX_NAME} characters")


def open_counters() -> tuple[Nfacct | None, str]:
    """(the counters, "") when this kernel has nfacct counters in this namespace, else
    (None, why not in one line)."""
    try:
        counters = Nfacct()
    except ApplyError as exc:
        return None, f"no nfacct counters ({exc})"
    try:
        counters.get("IMayExist")  # kube-proxy's probe: "not found" means it works
    except ApplyError as exc:
        counters.close()
        return None, f"no nfacct counters ({exc})"
    return counters, ""


def available() -> str:
    """"" when this kernel has nfacct counters in this namespace, else why not (one line)."""
    counters, why = open_counters()
    if counters is not None:
        counters.close()
    return why
