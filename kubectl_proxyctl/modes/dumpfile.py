"""A saved dump read where it lies: the bytes of a rules file, decoded a piece at a time.

Theory of operation: a 10,000-service node dumps 18 MB of iptables-save text or 50 MB of
`nft -j` JSON. Read into a str, a file costs its size twice (the bytes, then the text) before
a single rule is looked at, and one Service needs a few dozen of its lines. The readers of
both formats (`modes/iptables/parse.py`, `modes/nftables/parse.py`) therefore cut a dump up
by byte offsets on a first pass, and decode only the pieces a question reaches.

`DumpBuffer` is that dump: the file mapped read-only (its pages come from the page cache when
touched, and a first pass hands every window back with `MADV_DONTNEED` once it is scanned, so
a pass over the whole file never makes the process hold it), or a text already in memory,
encoded once. `text(start, end)` decodes a piece the way the whole would have been decoded:
UTF-8 with U+FFFD for bad bytes for a file (what `open(..., errors="replace")` gives), and
exactly, surrogates included, for a str. UTF-8 never uses a byte below 0x80 inside a
multi-byte character, so offsets found with ASCII patterns cut the text where the decoded
text would be cut, and pieces decode alone to what they are within the whole.

A mapped file must not change while it is read (as for any reader of a file in place).
"""

from __future__ import annotations

import mmap
import os
import stat
from typing import Any, Iterator, Union

Bytes = Union[bytes, mmap.mmap]

WINDOW = 1 << 20  # bytes scanned at a time by a first pass


class DumpBuffer:
    """The bytes of one dump and how to decode them (see the module notes)."""

    __slots__ = ("data", "size", "errors", "found", "_map")

    def __init__(self, data: Bytes, errors: str, mapped: mmap.mmap | None = None) -> None:
        self.data = data
        self.size = len(data)
        self.errors = errors
        self.found: dict[str, Any] = {}  # what a pass over the whole dump found, for the next reader
        self._map = mapped

    @classmethod
    def from_text(cls, text: str) -> "DumpBuffer":
        return cls(text.encode("utf-8", "surrogatepass"), "surrogatepass")

    @classmethod
    def open(cls, path: str) -> "DumpBuffer | None":
        """The file mapped read-only; None when it cannot be (empty, a pipe, a device)."""
        if not os.path.isfile(path):
            return None  # not opened at all: a pipe read here once would be read no more
        try:
            with open(path, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode) or os.fstat(fh.fileno()).st_size == 0:
                    return None
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # keeps its own descriptor
        except (OSError, ValueError):
            return None
        return cls(mapped, "replace", mapped)

    def text(self, start: int, end: int) -> str:
        return str(self.data[start:end], "utf-8", self.errors)

    def count(self, sub: bytes, start: int, end: int) -> int:
        if isinstance(self.data, bytes):
            return self.data.count(sub, start, end)
        return self.data[start:end].count(sub)

    def release(self, start: int, end: int) -> None:
        """Give the pages wholly inside [start, end) back (a mapped file only)."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        first = -(-start // page) * page
        last = min(end, self.size) // page * page
        if last > first:
            try:
                self._map.madvise(mmap.MADV_DONTNEED, first, last - first)
            except (OSError, ValueError):
                pass

    def windows(self, start: int, end: int, size: int = WINDOW, sep: bytes = b"\n") -> Iterator[tuple[int, int]]:
        """[start, end) in windows of about `size` bytes, each ending just after a `sep` (or
        at `end`); a window's pages are released when the next one is asked for."""
        pos = start
        while pos < end:
            stop = min(pos + size, end)
            if stop < end:
                cut = self.data.find(sep, stop, end)
                stop = end if cut < 0 else cut + len(sep)
            yield pos, stop
            self.release(pos, stop)
            pos = stop


__all__ = ["Bytes", "DumpBuffer", "WINDOW"]
