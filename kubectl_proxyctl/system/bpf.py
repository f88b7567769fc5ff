"""bpf(2) through ctypes: maps, program loading, cgroup links, pinning, and what bpftool shows.

Theory of operation: every BPF object (map, program, link) is a file descriptor. The kernel
is driven by one system call, `bpf(cmd, attr, size)`, where `attr` is a union whose layout
depends on the command; here each command packs its few fields into a zeroed buffer at the
offsets of `union bpf_attr` (linux/bpf.h), so no compiler and no library is needed. Unused
bytes stay zero, which is what the kernel checks for ("tail zero") when it does not know a
field. Pointers inside `attr` are the addresses of ctypes buffers this module keeps alive
for the duration of the call.

Objects outlive this process only while something holds them: an open fd, a pin (a file on
a bpffs mount, `pin`/`obj_get`), or, for a program, an attachment. The eBPF mode attaches
its programs to a cgroup through *bpf links* (`link_create`): a pinned link keeps the
program attached after the engine exits, `link_update` swaps the program atomically, and
removing the last reference to the link (unpin and close) detaches it, so a restart can
always find and replace what it attached, and nothing else on the cgroup is touched.

Map writes of a whole sync go through `BpfMap.update_batch`: keys and values are packed
into two contiguous buffers and handed to `BPF_MAP_UPDATE_BATCH` (Linux 5.6+; one system
call per 8,192 entries), so 70,000 entries cost a few tens of milliseconds instead of
70,000 round trips; kernels without the command get the same result from a loop.

Inspection mirrors bpftool byte for byte in shape: `cgroup_programs` is `bpftool -j cgroup
show CGROUP`, `map_dump_json` is `bpftool -j map dump pinned PATH` (maps without BTF), so
the inspector reads a live node and a saved dump through the same parser.

Errors: every failure raises `BpfError` (an `ApplyError`) whose message is one line naming
the command, the object and the errno ("bpf(BPF_MAP_CREATE pxc_services4): EPERM (need
CAP_BPF/root)"); a refused program carries the tail of the verifier's log as `detail`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct
from typing import Any, Iterable, Iterator, Protocol, Sequence

from kubectl_proxyctl.errors import ApplyError

# --- kernel constants (linux/bpf.h) ------------------------------------------------------

SYSCALL_NUMBERS = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34

COMMAND_NAMES = {
    BPF_MAP_CREATE: "BPF_MAP_CREATE", BPF_MAP_LOOKUP_ELEM: "BPF_MAP_LOOKUP_ELEM",
    BPF_MAP_UPDATE_ELEM: "BPF_MAP_UPDATE_ELEM", BPF_MAP_DELETE_ELEM: "BPF_MAP_DELETE_ELEM",
    BPF_MAP_GET_NEXT_KEY: "BPF_MAP_GET_NEXT_KEY", BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_OBJ_PIN: "BPF_OBJ_PIN", BPF_OBJ_GET: "BPF_OBJ_GET", BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_OBJ_GET_INFO_BY_FD: "BPF_OBJ_GET_INFO_BY_FD", BPF_PROG_QUERY: "BPF_PROG_QUERY",
    BPF_MAP_LOOKUP_BATCH: "BPF_MAP_LOOKUP_BATCH", BPF_MAP_UPDATE_BATCH: "BPF_MAP_UPDATE_BATCH",
    BPF_MAP_DELETE_BATCH: "BPF_MAP_DELETE_BATCH", BPF_LINK_CREATE: "BPF_LINK_CREATE",
    BPF_LINK_UPDATE: "BPF_LINK_UPDATE", BPF_LINK_DETACH: "BPF_LINK_DETACH",
}

MAP_TYPES = {"hash": 1, "array": 2, "lru_hash": 9}
MAP_TYPE_NAMES = {v: k for k, v in MAP_TYPES.items()}

PROG_TYPES = {"socket_filter": 1, "cgroup_skb": 8, "cgroup_sock": 9, "cgroup_sock_addr": 18}

# Every cgroup attach type, kernel number → bpftool's name, in the kernel's order (the order
# in which `bpftool cgroup show` lists them).
CGROUP_ATTACH_TYPES: dict[str, int] = {
    "cgroup_inet_ingress": 0,
    "cgroup_inet_egress": 1,
    "cgroup_inet_sock_create": 2,
    "cgroup_sock_ops": 3,
    "cgroup_device": 6,
    "cgroup_inet4_bind": 8,
    "cgroup_inet6_bind": 9,
    "cgroup_inet4_connect": 10,
    "cgroup_inet6_connect": 11,
    "cgroup_inet4_post_bind": 12,
    "cgroup_inet6_post_bind": 13,
    "cgroup_udp4_sendmsg": 14,
    "cgroup_udp6_sendmsg": 15,
    "cgroup_sysctl": 18,
    "cgroup_udp4_recvmsg": 19,
    "cgroup_udp6_recvmsg": 20,
    "cgroup_getsockopt": 21,
    "cgroup_setsockopt": 22,
    "cgroup_inet4_getpeername": 29,
    "cgroup_inet6_getpeername": 30,
    "cgroup_inet4_getsockname": 31,
    "cgroup_inet6_getsockname": 32,
    "cgroup_inet_sock_release": 34,
    "cgroup_unix_connect": 49,  # Linux 6.7+
    "cgroup_unix_sendmsg": 50,
    "cgroup_unix_recvmsg": 51,
    "cgroup_unix_getpeername": 52,
    "cgroup_unix_getsockname": 53,
}
ATTACH_TYPE_NAMES = {v: k for k, v in CGROUP_ATTACH_TYPES.items()}

BPF_ANY = 0
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
ENOTSUPP = 524  # the kernel-internal "not supported" some commands leak to user space

ATTR_SIZE = 128  # at least as large as every command's part of union bpf_attr used here
OBJ_NAME_LEN = 16
BATCH_CHUNK = 8192  # entries per BPF_MAP_*_BATCH call
LOG_SIZE = 1 << 22  # verifier log buffer: 4 MiB, below every kernel's limit (16 MiB before 5.2)
LOG_TAIL_LINES = 30
PROG_INFO_SIZE = 232  # struct bpf_prog_info and then some: the kernel copies what it knows
MAP_INFO_SIZE = 96
PROG_INFO_NAME_OFFSET = 64
MAP_INFO_NAME_OFFSET = 24

BPFFS_DEFAULT = "/sys/fs/bpf"
KERNEL_NAME_PREFIX = "pxc_"  # every map and program this project creates is named pxc_*

_HINTS = {
    errno.EPERM: "need CAP_BPF/root",
    errno.EACCES: "refused by the verifier or by permissions",
    errno.E2BIG: "map full, or too large for the kernel",
    errno.ENOENT: "no such object",
    errno.EEXIST: "already exists",
    errno.EINVAL: "the kernel rejected the arguments",
    errno.ENOSPC: "no space left in the map or buffer",
    errno.ENOMEM: "out of memory (map too large?)",
    errno.EBADF: "not an open bpf object",
    ENOTSUPP: "not supported by this kernel",
    errno.EOPNOTSUPP: "not supported by this kernel",
}


class MapLayout(Protocol):
    """What `BpfMap.create` needs to know of a map (modes/ebpf/maps.MapSpec has it)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def key_size(self) -> int: ...
    @property
    def value_size(self) -> int: ...
    @property
    def max_entries(self) -> int: ...


def kernel_name(name: str) -> str:
    """The kernel's name of one of our objects: "pxc_" + name, at most 15 characters (the
    same rule as modes/ebpf/maps.kernel_map_name, which this layer may not import)."""
    return (KERNEL_NAME_PREFIX + name)[:OBJ_NAME_LEN - 1]


def hex_bytes(raw: bytes) -> list[str]:
    """Bytes as bpftool's JSON spells them: ["0x0a", ...]."""
    return [f"0x{b:02x}" for b in raw]


class BpfError(ApplyError):
    """A bpf(2) call (or a bpffs/cgroup file operation) failed. `str()` is one line; `detail`
    holds more (the verifier's log for a refused program)."""

    def __init__(self, message: str, errno_: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.errno = errno_
        self.detail = detail


def errno_text(err: int) -> str:
    """ "EPERM (need CAP_BPF/root)" for an errno number."""
    name = errno.errorcode.get(err, "ENOTSUPP" if err == ENOTSUPP else f"errno {err}")
    hint = _HINTS.get(err)
    return f"{name} ({hint})" if hint else name


# --- the system call ---------------------------------------------------------------------

_libc: ctypes.CDLL | None = None
_memlock_raised = False
_syscall_nr: int | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def syscall_number() -> int:
    """bpf(2)'s number on this machine (x86_64: 321, aarch64: 280)."""
    global _syscall_nr
    if _syscall_nr is None:
        machine = platform.machine().lower()
        if machine not in SYSCALL_NUMBERS:
            raise BpfError(f"bpf(2): unsupported architecture {machine!r} (supported: x86_64, aarch64)")
        _syscall_nr = SYSCALL_NUMBERS[machine]
    return _syscall_nr


def _raise_memlock() -> None:
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it once (best effort)."""
    global _memlock_raised
    if _memlock_raised:
        return
    _memlock_raised = True
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass


class _Attr:
    """A zeroed `union bpf_attr` and the buffers its pointers refer to."""

    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(ATTR_SIZE)
        self._keep: list[Any] = []

    def u32(self, offset: int, value: int) -> "_Attr":
        struct.pack_into("=I", self.buf, offset, value & 0xFFFFFFFF)
        return self

    def u64(self, offset: int, value: int) -> "_Attr":
        struct.pack_into("=Q", self.buf, offset, value)
        return self

    def ptr(self, offset: int, buffer: Any) -> "_Attr":
        """Store the address of `buffer` (a ctypes buffer, or None for NULL)."""
        if buffer is None:
            return self.u64(offset, 0)
        self._keep.append(buffer)
        return self.u64(offset, ctypes.addressof(buffer))

    def text(self, offset: int, value: str, size: int = OBJ_NAME_LEN) -> "_Attr":
        raw = value.encode()[:size - 1]
        self.buf[offset:offset + len(raw)] = raw
        return self

    def read_u32(self, offset: int) -> int:
        return int(struct.unpack_from("=I", self.buf, offset)[0])


def _call(cmd: int, attr: _Attr) -> tuple[int, int]:
    """bpf(cmd, attr): (result, errno); errno 0 on success."""
    rc = _c().syscall(ctypes.c_long(syscall_number()), ctypes.c_long(cmd), attr.buf, ctypes.c_long(ATTR_SIZE))
    if rc < 0:
        return int(rc), ctypes.get_errno()
    return int(rc), 0


def _bpf(cmd: int, attr: _Attr, what: str) -> int:
    """bpf(cmd, attr) or BpfError "bpf(CMD what): ERRNO (hint)"."""
    rc, err = _call(cmd, attr)
    if err:
        raise BpfError(f"bpf({COMMAND_NAMES.get(cmd, str(cmd))} {what}): {errno_text(err)}", err)
    return rc


def _buffer(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A C copy of `data` (exactly its length, no terminating NUL added)."""
    return ctypes.create_string_buffer(data, len(data))


def close_fd(fd: int) -> None:
    """Close an fd this module returned; an already closed fd is not an error."""
    try:
        os.close(fd)
    except OSError:
        pass


# --- pinning and objects by path ---------------------------------------------------------


def pin(fd: int, path: str) -> None:
    """Pin a map, program or link at `path` (on a bpffs mount)."""
    attr = _Attr()
    name = _buffer(os.fsencode(path) + b"\0")
    attr.ptr(0, name).u32(8, fd)
    _bpf(BPF_OBJ_PIN, attr, path)


def obj_get(path: str) -> int:
    """A new fd for the object pinned at `path`."""
    attr = _Attr()
    attr.ptr(0, _buffer(os.fsencode(path) + b"\0"))
    return _bpf(BPF_OBJ_GET, attr, path)


def unpin(path: str) -> bool:
    """Remove a pin (True when there was one). The object lives on while referenced."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise BpfError(f"unpin {path}: {errno_text(exc.errno or 0)}", exc.errno) from exc
    return True


def obj_info(fd: int, size: int, what: str) -> bytes:
    """BPF_OBJ_GET_INFO_BY_FD: the kernel's `struct bpf_*_info` for `fd` (`size` bytes)."""
    info = ctypes.create_string_buffer(size)
    attr = _Attr()
    attr.u32(0, fd).u32(4, size).ptr(8, info)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, what)
    return info.raw


def _name_at(raw: bytes, offset: int) -> str:
    return raw[offset:offset + OBJ_NAME_LEN].split(b"\0", 1)[0].decode(errors="replace")


# --- maps --------------------------------------------------------------------------------


class BpfMap:
    """An open BPF map (hash or LRU hash): byte keys and values of fixed sizes."""

    def __init__(self, fd: int, name: str, key_size: int, value_size: int, max_entries: int = 0,
                 kind: str = "hash") -> None:
        self.fd = fd
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.kind = kind
        self._batch_ok: bool | None = None  # does the kernel have the batch commands?

    # creation ------------------------------------------------------------------------

    @classmethod
    def create(cls, spec: MapLayout) -> "BpfMap":
        """A new, empty map as `spec` (a maps.MapSpec) describes it, named `pxc_<name>`."""
        if spec.kind not in MAP_TYPES:
            raise BpfError(f"map {spec.name}: unknown kind {spec.kind!r} (known: {', '.join(sorted(MAP_TYPES))})")
        _raise_memlock()
        kname = kernel_name(spec.name)
        attr = _Attr()
        attr.u32(0, MAP_TYPES[spec.kind]).u32(4, spec.key_size).u32(8, spec.value_size)
        attr.u32(12, spec.max_entries).text(28, kname)
        fd = _bpf(BPF_MAP_CREATE, attr, kname)
        return cls(fd, kname, spec.key_size, spec.value_size, spec.max_entries, spec.kind)

    @classmethod
    def open_pinned(cls, path: str, expected: MapLayout | None = None) -> "BpfMap":
        """The map pinned at `path`; with `expected`, its key and value sizes (and kind) must match."""
        fd = obj_get(path)
        try:
            kind_of_fd = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            kind_of_fd = "anon_inode:bpf-map"  # no /proc: trust the pin
        if kind_of_fd != "anon_inode:bpf-map":
            close_fd(fd)
            raise BpfError(f"{path} is not a pinned map ({kind_of_fd.removeprefix('anon_inode:')})")
        try:
            raw = obj_info(fd, MAP_INFO_SIZE, path)
        except BpfError:
            close_fd(fd)
            raise
        mtype, _id, key_size, value_size, max_entries = struct.unpack_from("=IIIII", raw, 0)
        kind = MAP_TYPE_NAMES.get(mtype, f"type{mtype}")
        found = cls(fd, _name_at(raw, MAP_INFO_NAME_OFFSET), key_size, value_size, max_entries, kind)
        if expected is not None:
            wrong = []
            if (key_size, value_size) != (expected.key_size, expected.value_size):
                wrong.append(f"key/value {key_size}/{value_size} bytes, expected "
                             f"{expected.key_size}/{expected.value_size}")
            if kind != expected.kind:
                wrong.append(f"kind {kind}, expected {expected.kind}")
            if wrong:
                found.close()
                raise BpfError(f"pinned map {path} does not have the layout of {expected.name}: "
                               + "; ".join(wrong) + " (left by another version? remove the pin)")
        return found

    def pin(self, path: str) -> None:
        pin(self.fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1

    def __enter__(self) -> "BpfMap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BpfMap({self.name}, fd={self.fd}, key={self.key_size}, value={self.value_size})"

    # single entries ------------------------------------------------------------------

    def _check(self, key: bytes, value: bytes | None = None) -> None:
        if len(key) != self.key_size:
            raise BpfError(f"map {self.name}: key of {len(key)} bytes, the map's keys have {self.key_size}")
        if value is not None and len(value) != self.value_size:
            raise BpfError(f"map {self.name}: value of {len(value)} bytes, the map's values have {self.value_size}")

    def _elem(self, key_buf: Any, value_buf: Any, flags: int = 0) -> _Attr:
        attr = _Attr()
        return attr.u32(0, self.fd).ptr(8, key_buf).ptr(16, value_buf).u64(24, flags)

    def lookup(self, key: bytes) -> bytes | None:
        self._check(key)
        value = ctypes.create_string_buffer(self.value_size)
        rc, err = _call(BPF_MAP_LOOKUP_ELEM, self._elem(_buffer(key), value))
        if err == errno.ENOENT:
            return None
        if err:
            raise BpfError(f"bpf(BPF_MAP_LOOKUP_ELEM {self.name}): {errno_text(err)}", err)
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._check(key, value)
        _bpf(BPF_MAP_UPDATE_ELEM, self._elem(_buffer(key), _buffer(value), flags), self.name)

    def delete(self, key: bytes) -> bool:
        """Delete one entry; False when it was not there."""
        self._check(key)
        rc, err = _call(BPF_MAP_DELETE_ELEM, self._elem(_buffer(key), None))
        if err == errno.ENOENT:
            return False
        if err:
            raise BpfError(f"bpf(BPF_MAP_DELETE_ELEM {self.name}): {errno_text(err)}", err)
        return True

    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after `key` (None: the first key), or None at the end."""
        out = ctypes.create_string_buffer(self.key_size)
        rc, err = _call(BPF_MAP_GET_NEXT_KEY, self._elem(None if key is None else _buffer(key), out))
        if err == errno.ENOENT:
            return None
        if err:
            raise BpfError(f"bpf(BPF_MAP_GET_NEXT_KEY {self.name}): {errno_text(err)}", err)
        return out.raw

    # many entries --------------------------------------------------------------------

    def update_batch(self, items: Sequence[tuple[bytes, bytes]], flags: int = BPF_ANY) -> int:
        """Write every (key, value); returns how many. One BPF_MAP_UPDATE_BATCH per
        BATCH_CHUNK entries, or single updates on kernels without it."""
        keys = b"".join(k for k, _ in items)
        values = b"".join(v for _, v in items)
        n = len(items)
        if len(keys) != n * self.key_size or len(values) != n * self.value_size:
            for key, value in items:
                self._check(key, value)
        if n == 0:
            return 0
        if self._batch_ok is not False:
            done = self._batch(BPF_MAP_UPDATE_BATCH, keys, values, n, flags)
            if done is not None:
                return done
        for key, value in items:
            self.update(key, value, flags)
        return n

    def delete_batch(self, keys: Iterable[bytes]) -> int:
        """Delete every key (absent keys are skipped); returns how many were deleted."""
        wanted = list(keys)
        for key in wanted:
            self._check(key)
        if not wanted:
            return 0
        if self._batch_ok is not False:
            done = self._batch(BPF_MAP_DELETE_BATCH, b"".join(wanted), None, len(wanted), 0)
            if done is not None:
                return done
        return sum(1 for key in wanted if self.delete(key))

    def _batch(self, cmd: int, keys: bytes, values: bytes | None, n: int, flags: int) -> int | None:
        """Run `cmd` over n packed entries in chunks; how many entries it changed, or None
        when the kernel lacks the command. A delete batch stops at the first absent key
        (ENOENT, with the count of those deleted before it): that key is skipped and the
        batch goes on after it."""
        pos = changed = 0
        key_buf = _buffer(keys)
        value_buf = _buffer(values) if values is not None else None
        base_k = ctypes.addressof(key_buf)
        base_v = ctypes.addressof(value_buf) if value_buf is not None else 0
        while pos < n:
            count = min(BATCH_CHUNK, n - pos)
            attr = _Attr()
            attr.u64(16, base_k + pos * self.key_size)
            attr.u64(24, base_v + pos * self.value_size if value_buf is not None else 0)
            attr.u32(32, count).u32(36, self.fd).u64(40, flags)
            rc, err = _call(cmd, attr)
            processed = attr.read_u32(32) if err else count
            if err == errno.ENOENT and cmd == BPF_MAP_DELETE_BATCH:
                self._batch_ok = True
                pos += processed + 1
                changed += processed
                continue
            if err:
                if pos == 0 and processed == 0 and self._batch_ok is None \
                        and err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP):
                    self._batch_ok = False
                    return None
                raise BpfError(f"bpf({COMMAND_NAMES[cmd]} {self.name}): {errno_text(err)} "
                               f"after {changed + processed} of {n} entries", err)
            self._batch_ok = True
            pos += count
            changed += count
        return changed

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value), read BATCH_CHUNK at a time (or key by key on old kernels)."""
        if self._batch_ok is not False:
            batched = self._lookup_batches()
            if batched is not None:
                yield from batched
                return
        key = self.next_key(None)
        while key is not None:
            value = self.lookup(key)
            following = self.next_key(key)
            if value is not None:
                yield key, value
            key = following

    def _lookup_batches(self) -> list[tuple[bytes, bytes]] | None:
        out: list[tuple[bytes, bytes]] = []
        chunk = BATCH_CHUNK
        token_size = max(self.key_size, 8)
        in_batch: Any = None
        while True:
            keys = ctypes.create_string_buffer(chunk * self.key_size)
            values = ctypes.create_string_buffer(chunk * self.value_size)
            out_batch = ctypes.create_string_buffer(token_size)
            attr = _Attr()
            attr.ptr(0, in_batch).ptr(8, out_batch).ptr(16, keys).ptr(24, values)
            attr.u32(32, chunk).u32(36, self.fd)
            rc, err = _call(BPF_MAP_LOOKUP_BATCH, attr)
            got = attr.read_u32(32)
            if err and err != errno.ENOENT:
                if err == errno.ENOSPC and got == 0:
                    chunk *= 2  # one hash bucket holds more than `chunk` entries
                    continue
                if not out and in_batch is None and err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP):
                    self._batch_ok = False
                    return None
                raise BpfError(f"bpf(BPF_MAP_LOOKUP_BATCH {self.name}): {errno_text(err)}", err)
            kraw, vraw = keys.raw, values.raw
            for i in range(got):
                out.append((kraw[i * self.key_size:(i + 1) * self.key_size],
                            vraw[i * self.value_size:(i + 1) * self.value_size]))
            if err == errno.ENOENT:
                return out
            in_batch = ctypes.create_string_buffer(out_batch.raw, token_size)


# --- programs ----------------------------------------------------------------------------


def attach_type_number(attach_type: str) -> int:
    """The kernel's number for a cgroup attach type named as bpftool names it ("" → 0, for
    program types that take no expected attach type)."""
    if not attach_type:
        return 0
    try:
        return CGROUP_ATTACH_TYPES[attach_type]
    except KeyError:
        raise BpfError(f"unknown attach type {attach_type!r} (known: {', '.join(CGROUP_ATTACH_TYPES)})") from None


def load_program(prog_type: str, attach_type: str, insns: bytes, name: str, license: str = "GPL") -> int:
    """Load a program; its fd. A refusal raises BpfError with the verifier's log (last lines)."""
    if prog_type not in PROG_TYPES:
        raise BpfError(f"program {name}: unknown program type {prog_type!r} (known: {', '.join(PROG_TYPES)})")
    if len(insns) % 8 or not insns:
        raise BpfError(f"program {name}: {len(insns)} bytes is not a whole number of instructions")
    _raise_memlock()
    code = _buffer(insns)
    lic = _buffer(license.encode() + b"\0")

    def attempt(log: Any) -> tuple[int, int]:
        attr = _Attr()
        attr.u32(0, PROG_TYPES[prog_type]).u32(4, len(insns) // 8).ptr(8, code).ptr(16, lic)
        if log is not None:
            attr.u32(24, 1).u32(28, len(log)).ptr(32, log)
        attr.text(48, name).u32(68, attach_type_number(attach_type))
        return _call(BPF_PROG_LOAD, attr)

    fd, err = attempt(None)
    if not err:
        return fd
    log = ctypes.create_string_buffer(LOG_SIZE)
    fd2, err2 = attempt(log)
    if not err2:  # loaded the second time: the first failure was transient
        return fd2
    if err2 == errno.ENOSPC:  # the log did not fit; the refusal itself is the first errno
        err2 = err
    text = log.value.decode(errors="replace").rstrip()
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    statistics = ("processed ", "verification time", "stack depth")
    last = next((line for line in reversed(lines) if line.strip() and not line.startswith(statistics)), "")
    summary = f"bpf(BPF_PROG_LOAD {name}): {errno_text(err2)}"
    if last:
        summary += f": {last.strip()}"
    raise BpfError(summary, err2, detail="\n".join(lines))


def prog_info(fd: int) -> dict[str, Any]:
    """id, type, name and tag of the program behind `fd`."""
    raw = obj_info(fd, PROG_INFO_SIZE, f"program fd {fd}")
    ptype, pid = struct.unpack_from("=II", raw, 0)
    return {"id": pid, "type": ptype, "tag": raw[8:16].hex(), "name": _name_at(raw, PROG_INFO_NAME_OFFSET)}


def prog_fd_by_id(prog_id: int) -> int:
    attr = _Attr()
    attr.u32(0, prog_id)
    return _bpf(BPF_PROG_GET_FD_BY_ID, attr, f"id {prog_id}")


# --- cgroup links ------------------------------------------------------------------------


def link_create(prog_fd: int, cgroup_fd: int, attach_type: str) -> int:
    """Attach a program to a cgroup through a new bpf link; the link's fd. The program stays
    attached while the link is referenced (fd or pin)."""
    attr = _Attr()
    attr.u32(0, prog_fd).u32(4, cgroup_fd).u32(8, attach_type_number(attach_type))
    return _bpf(BPF_LINK_CREATE, attr, attach_type)


def link_update(link_fd: int, new_prog_fd: int) -> None:
    """Replace the link's program atomically."""
    attr = _Attr()
    attr.u32(0, link_fd).u32(4, new_prog_fd)
    _bpf(BPF_LINK_UPDATE, attr, f"link fd {link_fd}")


def link_detach(link_fd: int) -> None:
    """Detach the link's program now (the link fd stays valid, but defunct)."""
    attr = _Attr()
    attr.u32(0, link_fd)
    _bpf(BPF_LINK_DETACH, attr, f"link fd {link_fd}")


def link_info(link_fd: int) -> dict[str, Any]:
    """id, type and program id of a link; for a cgroup link also its cgroup id and attach type."""
    raw = obj_info(link_fd, 64, f"link fd {link_fd}")
    ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    out: dict[str, Any] = {"id": lid, "type": ltype, "prog_id": prog_id}
    if ltype == 3:  # BPF_LINK_TYPE_CGROUP
        cgroup_id, atype = struct.unpack_from("=QI", raw, 16)
        out.update(cgroup_id=cgroup_id, attach_type=ATTACH_TYPE_NAMES.get(atype, str(atype)))
    return out


def open_cgroup(path: str) -> int:
    """An fd of the cgroup directory `path` (what link_create and the queries take)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BpfError(f"open cgroup {path}: {errno_text(exc.errno or 0)}", exc.errno) from exc


def _query(cgroup_fd: int, attach_type: int, ids_buf: Any, count: int) -> tuple[int, int, int]:
    """BPF_PROG_QUERY: (errno, attach_flags, prog_cnt)."""
    attr = _Attr()
    attr.u32(0, cgroup_fd).u32(4, attach_type)
    if ids_buf is not None:
        attr.ptr(16, ids_buf).u32(24, count)
    rc, err = _call(BPF_PROG_QUERY, attr)
    return err, attr.read_u32(12), attr.read_u32(24)


def _attach_flags_text(flags: int) -> str:
    return {0: "", BPF_F_ALLOW_MULTI: "multi", BPF_F_ALLOW_OVERRIDE: "override"}.get(flags, "unknown")


def cgroup_programs(cgroup_path: str) -> list[dict[str, Any]]:
    """The programs attached to the cgroup itself, as `bpftool -j cgroup show CGROUP` lists
    them: [{"id", "attach_type", "attach_flags", "name"}], in attach-type order."""
    fd = open_cgroup(cgroup_path)
    out: list[dict[str, Any]] = []
    try:
        for type_name, number in CGROUP_ATTACH_TYPES.items():
            err, flags, count = _query(fd, number, None, 0)
            if err in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                continue  # not a type this kernel knows for cgroups
            if err:
                raise BpfError(f"bpf(BPF_PROG_QUERY {cgroup_path} {type_name}): {errno_text(err)}", err)
            if not count:
                continue
            ids = (ctypes.c_uint32 * (count + 8))()  # room for a few attached meanwhile
            err, flags, got = _query(fd, number, ids, count + 8)
            if err:
                raise BpfError(f"bpf(BPF_PROG_QUERY {cgroup_path} {type_name}): {errno_text(err)}", err)
            for prog_id in list(ids)[:got]:
                try:
                    pfd = prog_fd_by_id(prog_id)
                except BpfError as exc:
                    if exc.errno == errno.ENOENT:
                        continue  # detached meanwhile
                    raise
                try:
                    name = prog_info(pfd)["name"]
                finally:
                    close_fd(pfd)
                out.append({"id": prog_id, "attach_type": type_name,
                            "attach_flags": _attach_flags_text(flags), "name": name})
    finally:
        close_fd(fd)
    return out


# --- reading maps as bpftool does --------------------------------------------------------


def map_dump_json(path_or_map: "str | BpfMap") -> list[dict[str, list[str]]]:
    """`bpftool -j map dump pinned PATH` for a map without BTF: [{"key": [...], "value": [...]}]."""
    if isinstance(path_or_map, BpfMap):
        return [{"key": hex_bytes(k), "value": hex_bytes(v)} for k, v in path_or_map.items()]
    with BpfMap.open_pinned(path_or_map) as bmap:
        return [{"key": hex_bytes(k), "value": hex_bytes(v)} for k, v in bmap.items()]


# --- mounts ------------------------------------------------------------------------------


def _mounts(fstype: str) -> list[str]:
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise BpfError(f"read /proc/mounts: {errno_text(exc.errno or 0)}", exc.errno) from exc
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == fstype:
            out.append(fields[1].replace("\\040", " "))
    return out


def bpffs_root() -> str:
    """Where bpffs is mounted (/sys/fs/bpf preferred); mounts it there when it is nowhere."""
    found = _mounts("bpf")
    if BPFFS_DEFAULT in found:
        return BPFFS_DEFAULT
    if found:
        return found[0]
    os.makedirs(BPFFS_DEFAULT, exist_ok=True)
    libc = _c()
    if libc.mount(b"bpf", BPFFS_DEFAULT.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise BpfError(f"mount -t bpf bpf {BPFFS_DEFAULT}: {errno_text(err)}", err)
    return BPFFS_DEFAULT


def cgroup2_root() -> str:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on most nodes)."""
    found = _mounts("cgroup2")
    if not found:
        raise BpfError("no cgroup v2 hierarchy is mounted (see /proc/mounts); the eBPF mode needs one")
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in found:
            return preferred
    return found[0]
