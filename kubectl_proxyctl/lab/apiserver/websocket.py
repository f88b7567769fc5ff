"""RFC 6455 WebSocket framing, server side, with no I/O: bytes in, frames and bytes out.

The API server's streaming subresource (`pods/exec`, remotecommand.py) speaks the
Kubernetes channel protocols over a WebSocket. This module holds only the wire format:

* `accept_key(key)` answers the opening handshake's `Sec-WebSocket-Key`;
* `encode_frame(opcode, payload)` builds one frame. A server sends its frames unmasked;
  `mask=` (four bytes) builds what a client sends, for tests;
* `Decoder.feed(data)` takes bytes as they arrive, in pieces of any size, and returns the
  complete messages: a fragmented message (a first frame with FIN clear, continuation
  frames, FIN set on the last) comes out once, whole; control frames (close, ping, pong)
  come out as they arrive, also between the fragments of a data message.

Payload lengths use the three forms of the RFC: 7 bits (up to 125), 126 + 16 bits, and
127 + 64 bits. A frame that breaks the rules a server must enforce (an unmasked client
frame, a reserved bit, a fragmented or oversized control frame, a continuation without a
start, a message beyond `max_message`) raises `ProtocolError` with the close code to send.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL_OPCODES = (CLOSE, PING, PONG)
DATA_OPCODES = (TEXT, BINARY)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009

MAX_MESSAGE = 16 * 1024 * 1024  # far above what stdin chunks or resize events need


class ProtocolError(Exception):
    """The peer broke the framing rules; `code` is the close code to answer with."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Message:
    """A whole data message (TEXT or BINARY, reassembled) or one control frame."""

    opcode: int
    payload: bytes


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`."""
    digest = hashlib.sha1((key.strip() + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_key(key: str) -> bool:
    """A `Sec-WebSocket-Key` is 16 random bytes, base64-encoded."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        return False


def _apply_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. Servers send unmasked frames; `mask` (4 bytes) makes a client's frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    size = len(payload)
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if mask is None:
        return head + payload
    if len(mask) != 4:
        raise ValueError("a frame's mask is 4 bytes")
    return head + mask + _apply_mask(payload, mask)


def close_payload(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


class Decoder:
    """Frames to messages, incrementally (see the module docstring)."""

    def __init__(self, *, require_mask: bool = True, max_message: int = MAX_MESSAGE) -> None:
        self.require_mask = require_mask
        self.max_message = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return messages
            message = self._assemble(*frame)
            if message is not None:
                messages.append(message)

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise ProtocolError("reserved bits set (no extension was negotiated)")
        masked, size = bool(second & 0x80), second & 0x7F
        offset = 2
        if size == 126:
            if len(buf) < 4:
                return None
            size = struct.unpack_from("!H", buf, 2)[0]
            offset = 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size = struct.unpack_from("!Q", buf, 2)[0]
            offset = 10
            if size >> 63:
                raise ProtocolError("payload length has its most significant bit set")
        if self.require_mask and not masked:
            raise ProtocolError("client frames must be masked")
        if opcode in CONTROL_OPCODES and (size > 125 or not fin):
            raise ProtocolError("control frames are at most 125 bytes and never fragmented")
        if size > self.max_message:
            raise ProtocolError("message too big", CLOSE_TOO_BIG)
        mask = b""
        if masked:
            if len(buf) < offset + 4:
                return None
            mask = bytes(buf[offset:offset + 4])
            offset += 4
        if len(buf) < offset + size:
            return None
        payload = bytes(buf[offset:offset + size])
        del buf[:offset + size]
        return fin, opcode, _apply_mask(payload, mask) if masked else payload

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> Message | None:
        if opcode in CONTROL_OPCODES:
            return Message(opcode, payload)
        if opcode == CONTINUATION:
            if self._fragment_opcode is None:
                raise ProtocolError("a continuation frame without a message to continue")
        elif opcode in DATA_OPCODES:
            if self._fragment_opcode is not None:
                raise ProtocolError("a new message before the previous one was finished")
            self._fragment_opcode = opcode
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}")
        self._fragment_size += len(payload)
        if self._fragment_size > self.max_message:
            raise ProtocolError("message too big", CLOSE_TOO_BIG)
        self._fragments.append(payload)
        if not fin:
            return None
        message = Message(self._fragment_opcode, b"".join(self._fragments))
        self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
        return message
