"""Netlink requests written many to a send: what lets a sync of thousands of virtual servers,
real servers, set members and addresses cost a few system calls instead of one round trip
(and one pyroute2 message object) each.

The kernel handles every message of a send in order and acknowledges each one (NLM_F_ACK),
so a batch behaves exactly like the same requests sent one by one: a refused request is
answered with its error and the ones after it are still handled. `Batch.flush` raises an
ApplyError naming the first refused request (in queue order) whose error the caller did not
say to ignore.

Messages are encoded here with `struct` (netlink header, the family's fixed header, then
attributes); the callers (`system/ipvs.py`, `system/ipset.py`) know their attributes.
"""

from __future__ import annotations

import errno as errno_names
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable

from kubectl_proxyctl.errors import ApplyError

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
NETLINK_GENERIC = 16

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000

_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # acknowledgements without the echoed request
_NETLINK_EXT_ACK = 11  # the kernel's error message with a refusal
_NLMSGERR_ATTR_MSG = 1

_SEND_BYTES = 32 * 1024  # per sendmsg at most, and
_SEND_COUNT = 256  # requests: each acknowledgement takes ~1 KiB of the receive buffer below
_RCVBUF = 2 * 1024 * 1024
_SO_RCVBUFFORCE = 33
_QUEUE_LIMIT = 2048  # queued requests before a flush happens on its own

_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_ID = 1
_CTRL_ATTR_FAMILY_NAME = 2


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def u8(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=B", value))


def u16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=H", value))


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def be16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!H", value))


def string(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attribute type (flags stripped) → payload, for the flat attributes of a reply."""
    out: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


class NetlinkRefusal(ApplyError):
    """The kernel refused a request answered with data (`Batch.request`); `code` is the errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Request:
    message: bytes  # without the 16-byte netlink header
    msg_type: int
    flags: int
    what: str  # "cannot add IPVS virtual server TCP 10.96.0.1:80"
    ignore: frozenset[int]


@dataclass
class Batch:
    """A netlink socket of one protocol with a queue of requests, sent many to a write."""

    protocol: int
    errors: dict[int, str] = field(default_factory=dict)  # error code → text, for private codes
    _queue: list[_Request] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.protocol)
            self._sock.bind((0, 0))
        except OSError as exc:
            raise ApplyError(f"cannot open a netlink socket (protocol {self.protocol}): {exc}") from exc
        try:  # room for a whole send's acknowledgements (ENOBUFS otherwise), beyond rmem_max as root
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        for option in (_NETLINK_CAP_ACK, _NETLINK_EXT_ACK):
            try:
                self._sock.setsockopt(_SOL_NETLINK, option, 1)
            except OSError:
                pass  # older kernels: full echoes, no message; both are handled
        self._sock.settimeout(30.0)

    def close(self) -> None:
        self._sock.close()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, msg_type: int, payload: bytes, what: str, *, flags: int = 0,
            ignore: Iterable[int] = ()) -> None:
        """Queue a request (`payload`: the family header and attributes); errors in `ignore`
        (positive errno values) count as done. Flushes on its own once many are queued."""
        self._queue.append(_Request(payload, msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, what, frozenset(ignore)))
        if len(self._queue) >= _QUEUE_LIMIT:
            self.flush()

    def discard(self) -> None:
        """Drop every queued request unsent."""
        self._queue = []

    def flush(self) -> None:
        """Send every queued request and wait for each acknowledgement; ApplyError for the
        first refusal not ignored. The queue is empty afterwards, whatever happened."""
        queue, self._queue = self._queue, []
        first: tuple[int, str] | None = None
        start = 0
        while start < len(queue):
            chunk: list[bytes] = []
            pending: dict[int, _Request] = {}
            size = 0
            while start < len(queue) and (not chunk or (size + 16 + len(queue[start].message) <= _SEND_BYTES
                                                        and len(chunk) < _SEND_COUNT)):
                request = queue[start]
                self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
                header = struct.pack("=IHHII", 16 + len(request.message), request.msg_type, request.flags,
                                     self._seq, 0)
                chunk.append(header + request.message)
                pending[self._seq] = request
                size += 16 + len(request.message)
                start += 1
            order = list(pending)
            try:
                self._sock.sendall(b"".join(chunk))
            except OSError as exc:
                raise ApplyError(f"{pending[order[0]].what}: netlink send failed: {exc}") from exc
            refused = self._acks(pending)
            for seq in order:
                if seq in refused and first is None:
                    first = (seq, refused[seq])
        if first is not None:
            raise ApplyError(first[1])

    def _receive(self, what: str) -> list[tuple[int, int, int, bytes]]:
        """The messages of one read: (type, flags, seq, the whole message)."""
        try:
            data = self._sock.recv(1 << 20)
        except OSError as exc:
            raise ApplyError(f"{what}: no answer from the kernel: {exc}") from exc
        out = []
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                break
            out.append((msg_type, flags, seq, data[offset:offset + length]))
            offset += (length + 3) & ~3
        return out

    def _acks(self, pending: dict[int, _Request]) -> dict[int, str]:
        """Read until every request of `pending` is acknowledged; seq → refusal text."""
        refused: dict[int, str] = {}
        waiting = set(pending)
        while waiting:
            for msg_type, flags, seq, message in self._receive(pending[min(waiting)].what):
                if msg_type == NLMSG_ERROR and seq in waiting:
                    waiting.discard(seq)
                    (code,) = struct.unpack_from("=i", message, 16)
                    request = pending[seq]
                    if code and -code not in request.ignore:
                        refused[seq] = f"{request.what}: {self._describe(-code, message, flags)}"
        return refused

    def _describe(self, code: int, message: bytes, flags: int) -> str:
        text = self.errors.get(code) or (os.strerror(code) if code < 4096 else f"error {code}")
        name = errno_names.errorcode.get(code)
        detail = ""
        if flags & 0x200 and len(message) >= 36:  # NLM_F_ACK_TLVS: the kernel's own words follow
            echoed = 16 if flags & 0x100 else struct.unpack_from("=I", message, 20)[0]  # NLM_F_CAPPED
            tlvs = parse_attrs(message, 20 + ((echoed + 3) & ~3))
            if _NLMSGERR_ATTR_MSG in tlvs:
                detail = tlvs[_NLMSGERR_ATTR_MSG].rstrip(b"\0").decode(errors="replace")
        spelled = f"{text} ({name})" if name else text
        return f"{spelled}: {detail}" if detail else spelled

    def dump(self, msg_type: int, payload: bytes, what: str) -> list[bytes]:
        """A dump request (NLM_F_DUMP): the payload of every reply."""
        return self.request(msg_type, payload, what, flags=NLM_F_DUMP)

    def request(self, msg_type: int, payload: bytes, what: str, flags: int = 0) -> list[bytes]:
        """One request answered with data (not a queued write): the payload of each reply."""
        self.flush()
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        seq = self._seq
        self._sock.sendall(struct.pack("=IHHII", 16 + len(payload), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK,
                                       seq, 0) + payload)
        replies: list[bytes] = []
        while True:
            for kind, msg_flags, got, message in self._receive(what):
                if got != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", message, 16)
                    if code:
                        raise NetlinkRefusal(f"{what}: {self._describe(-code, message, msg_flags)}", -code)
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append(message[16:])


def generic_family(batch: Batch, name: str) -> int:
    """The id of a generic netlink family ("IPVS"), asked of the controller."""
    payload = struct.pack("=BBH", _CTRL_CMD_GETFAMILY, 1, 0) + string(_CTRL_ATTR_FAMILY_NAME, name)
    for reply in batch.request(_GENL_ID_CTRL, payload, f"cannot find the generic netlink family {name}"):
        attrs = parse_attrs(reply, 4)
        if _CTRL_ATTR_FAMILY_ID in attrs:
            return int(struct.unpack("=H", attrs[_CTRL_ATTR_FAMILY_ID][:2])[0])
    raise ApplyError(f"cannot find the generic netlink family {name}: the kernel did not say")
