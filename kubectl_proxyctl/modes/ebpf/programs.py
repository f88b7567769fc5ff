"""The eBPF mode's programs: socket-level load balancing in cgroup/sock_addr hooks.

Theory of operation: instead of rewriting packets (DNAT, conntrack), the kernel lets a
`cgroup_sock_addr` program see and change the address a socket system call is about to use.
Attached to a cgroup, it runs for every socket of every process in that cgroup, in
whatever network namespace the process is:

* **connect4/6** (`connect()` of TCP, UDP and SCTP sockets): if (address, port, protocol)
  is a service (`services` map), pick a backend and rewrite the address in place, so the
  socket connects straight to the endpoint and no packet ever carries the service address.
  A service without endpoints (`F_REJECT`, or no backends) makes connect() fail with
  ECONNREFUSED, like kube-proxy's REJECT rule: `bpf_set_retval(-ECONNREFUSED)` and return 0
  (returning 0 alone would give EPERM). Kernels before 5.18 lack that helper for these
  hooks; `load` then falls back to programs whose refusal is EPERM.
* **sendmsg4/6** (`sendto()`/`sendmsg()` with an address, on unconnected UDP sockets): the
  same choice for each datagram.
* **recvmsg4/6** (`recvfrom()`/`recvmsg()` on UDP) and **getpeername4/6**: the reverse. The
  forward programs record, per socket (its cookie) and backend, which service address the
  application asked for (`revnat` map); these programs put it back, so replies appear to
  come from the service and `getpeername()` names it.

The IPv6 programs also serve IPv4-mapped addresses (::ffff:a.b.c.d, what a dual-stack
AF_INET6 socket uses to reach an IPv4 address) from the IPv4 maps, with the address in the
last word of `user_ip6`: the same body, assembled a second time with that layout.

The choice: backends of a service are the slots `slot_base .. slot_base+count-1` of the
`backends` map; the slot is `slot_base + prandom % count`, so every backend is equally
likely, as with kube-proxy's iptables probabilities. With ClientIP affinity
(`affinity_seconds` > 0) the pair (network-namespace cookie, service id) remembers the
backend chosen last and when (`affinity` map, LRU); a hit younger than the timeout is
reused and refreshed. Since every pod has its own network namespace, that is per-pod
affinity. An entry is reused as it stands: when a backend leaves a service, the writer
deletes the entries that point at it.

Verifier notes, which the code below follows: context fields are read and written 4 bytes
at a time (`user_port` is a 32-bit field holding the network-order port in its low 16
bits, so a 16-bit load from a map and a 32-bit store into the context is the right
conversion); map keys are built on the stack at 8-byte aligned offsets and fully
initialised (padding included) before a lookup; every lookup result is checked for NULL;
recvmsg and getpeername programs must return 1, and every path returns 1 except the
reject path of connect and sendmsg.

The byte layouts come from `maps.py`; `build` returns the instructions, `load` loads them.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.asm import FP, R0, R1, R2, R3, R4, R6, R7, R8, R9, Program, Reg

PROG_TYPE = "cgroup_sock_addr"
LICENSE = "GPL"  # what the kernel records; with it every helper is available
NS_PER_SECOND = 1_000_000_000

# struct bpf_sock_addr (linux/bpf.h): offsets of the fields used
CTX_USER_IP4 = 4
CTX_USER_IP6 = 8  # __u32 user_ip6[4]
CTX_USER_PORT = 24
CTX_PROTOCOL = 36

# maps.ServiceValue ("=IHHII")
SVC_ID, SVC_COUNT, SVC_FLAGS, SVC_SLOT_BASE, SVC_AFFINITY = 0, 4, 6, 8, 12


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


@dataclass(frozen=True)
class Layout:
    """Where things are for one address family: context offsets, value offsets, and the
    stack slots (negative offsets from the frame pointer) of the keys and values built."""

    family: int
    alen: int  # address length: 4 or 16
    ctx_ip: int

    @property
    def port(self) -> int:
        """Offset of the port after an address (keys and values alike)."""
        return self.alen

    @property
    def aff_last_ns(self) -> int:
        """Offset of last_ns in an affinity value."""
        return _align8(self.alen + 4)

    # stack slots, from the top of the frame down
    @property
    def svc_key(self) -> int:
        return -_align8(self.alen + 4)

    @property
    def aff_key(self) -> int:
        return self.svc_key - 16

    @property
    def slot_key(self) -> int:
        return self.aff_key - 8

    @property
    def aff_value(self) -> int:
        return self.slot_key - (self.aff_last_ns + 8)

    @property
    def rn_key(self) -> int:
        return self.aff_value - _align8(8 + self.alen + 4)

    @property
    def rn_value(self) -> int:
        return self.rn_key - _align8(self.alen + 4)


LAYOUTS = {4: Layout(4, 4, CTX_USER_IP4), 6: Layout(6, 16, CTX_USER_IP6)}
MAPPED = Layout(4, 4, CTX_USER_IP6 + 12)
"""An IPv4-mapped address in an IPv6 context: the IPv4 maps, the address in user_ip6[3]."""
V4_MAPPED_WORD2 = 0xFFFF0000  # user_ip6[2] of ::ffff:a.b.c.d, as a little-endian u32


# --- building blocks ---------------------------------------------------------------------


def _zero(p: Program, off: int, size: int) -> None:
    """Zero `size` bytes of stack at fp+off (off and size multiples of 8)."""
    for o in range(off, off + size, 8):
        p.st("dw", FP, o, 0)


def _copy_addr(p: Program, lay: Layout, dst: Reg, dst_off: int, src: Reg, src_off: int) -> None:
    """Copy an address (1 or 4 words) from src+src_off to dst+dst_off through r1."""
    for w in range(0, lay.alen, 4):
        p.ldx("w", R1, src, src_off + w)
        p.stx("w", dst, dst_off + w, R1)


def _stack_ptr(p: Program, reg: Reg, off: int) -> None:
    """reg = fp + off."""
    p.mov(reg, FP)
    p.add(reg, off)


def _if_v4_mapped(p: Program, label: str) -> None:
    """goto label when ctx->user_ip6 is ::ffff:a.b.c.d (r6 = ctx)."""
    p.ldx("w", R1, R6, CTX_USER_IP6)
    p.jne(R1, 0, "native")
    p.ldx("w", R1, R6, CTX_USER_IP6 + 4)
    p.jne(R1, 0, "native")
    p.ldx("w", R1, R6, CTX_USER_IP6 + 8)
    p.jump("jeq", R1, V4_MAPPED_WORD2, label, wide=False)  # a 32-bit compare: no sign extension
    p.label("native")


def _pass(p: Program, at: str) -> None:
    """Leave the socket call untouched: return 1."""
    p.label(at + "pass")
    p.mov(R0, 1)
    p.exit()


# --- forward: connect and sendmsg --------------------------------------------------------


def balance(lay: Layout, map_fds: dict[str, int], set_retval: bool = True) -> bytes:
    """connect4/6 and sendmsg4/6: service address → a backend (see the module docstring).
    The IPv6 programs treat an IPv4-mapped address (::ffff:a.b.c.d, a dual-stack socket
    reaching an IPv4 service) with the IPv4 maps. Without `set_retval` a refusal is EPERM."""
    p = Program()
    p.mov(R6, R1)  # r6 = ctx, kept across helper calls
    if lay.family == 6:
        _if_v4_mapped(p, "v4mapped")
    _balance(p, lay, map_fds, "", set_retval)
    if lay.family == 6:
        p.label("v4mapped")
        _balance(p, MAPPED, map_fds, "v4mapped.", set_retval)
    return p.assemble()


def _balance(p: Program, lay: Layout, map_fds: dict[str, int], at: str, set_retval: bool) -> None:
    """The body of `balance`; r6 = ctx; labels prefixed with `at`."""
    fam = lay.family
    # Service key on the stack: (user_ip, user_port, protocol, pad), zeroed first.
    _zero(p, lay.svc_key, -lay.svc_key)
    _copy_addr(p, lay, FP, lay.svc_key, R6, lay.ctx_ip)
    p.ldx("w", R1, R6, CTX_USER_PORT)  # network-order port in the low 16 bits
    p.stx("h", FP, lay.svc_key + lay.port, R1)
    p.ldx("w", R1, R6, CTX_PROTOCOL)
    p.stx("b", FP, lay.svc_key + lay.port + 2, R1)

    # r7 = services[key], or leave the call alone.
    p.ld_map_fd(R1, map_fds[f"services{fam}"])
    _stack_ptr(p, R2, lay.svc_key)
    p.call("map_lookup_elem")
    p.jeq(R0, 0, at + "pass")
    p.mov(R7, R0)

    # No endpoints: refuse.
    p.ldx("h", R1, R7, SVC_FLAGS)
    p.jset(R1, maps.F_REJECT, at + "reject")
    p.ldx("h", R8, R7, SVC_COUNT)  # r8 = count, > 0 from here on
    p.jeq(R8, 0, at + "reject")

    # ClientIP affinity: affinity[(netns cookie, service id)] younger than the timeout?
    p.ldx("w", R1, R7, SVC_AFFINITY)
    p.jeq(R1, 0, at + "choose")
    p.mov(R1, R6)
    p.call("get_netns_cookie")
    p.stx("dw", FP, lay.aff_key, R0)
    p.ldx("w", R1, R7, SVC_ID)
    p.stx("w", FP, lay.aff_key + 8, R1)
    p.st("w", FP, lay.aff_key + 12, 0)
    p.ld_map_fd(R1, map_fds[f"affinity{fam}"])
    _stack_ptr(p, R2, lay.aff_key)
    p.call("map_lookup_elem")
    p.jeq(R0, 0, at + "choose")
    p.mov(R9, R0)  # r9 = the affinity entry (address and port first, like a backend)
    p.call("ktime_get_ns")  # r0 = now
    p.ldx("dw", R1, R9, lay.aff_last_ns)
    p.mov(R2, R0)
    p.sub(R2, R1)  # r2 = age in ns
    p.ldx("w", R3, R7, SVC_AFFINITY)
    p.mul(R3, NS_PER_SECOND)  # r3 = timeout in ns
    p.jge(R2, R3, at + "choose")  # expired: choose afresh
    p.stx("dw", R9, lay.aff_last_ns, R0)  # refresh, and use it
    p.ja(at + "rewrite")

    # Choose: slot = slot_base + prandom % count; r9 = backends[slot].
    p.label(at + "choose")
    p.call("get_prandom_u32")
    p.mod32(R0, R8)
    p.ldx("w", R1, R7, SVC_SLOT_BASE)
    p.add32(R0, R1)
    p.stx("w", FP, lay.slot_key, R0)
    p.ld_map_fd(R1, map_fds[f"backends{fam}"])
    _stack_ptr(p, R2, lay.slot_key)
    p.call("map_lookup_elem")
    p.jeq(R0, 0, at + "pass")  # a slot being rewritten: leave the call alone
    p.mov(R9, R0)

    # With affinity, remember the choice: affinity[key] = (address, port, now).
    p.ldx("w", R1, R7, SVC_AFFINITY)
    p.jeq(R1, 0, at + "rewrite")
    _zero(p, lay.aff_value, lay.aff_last_ns + 8)
    _copy_addr(p, lay, FP, lay.aff_value, R9, 0)
    p.ldx("h", R1, R9, lay.port)
    p.stx("h", FP, lay.aff_value + lay.port, R1)
    p.call("ktime_get_ns")
    p.stx("dw", FP, lay.aff_value + lay.aff_last_ns, R0)
    p.ld_map_fd(R1, map_fds[f"affinity{fam}"])
    _stack_ptr(p, R2, lay.aff_key)
    _stack_ptr(p, R3, lay.aff_value)
    p.mov(R4, 0)  # BPF_ANY
    p.call("map_update_elem")

    # Rewrite the destination to the backend r9 points at.
    p.label(at + "rewrite")
    _copy_addr(p, lay, R6, lay.ctx_ip, R9, 0)
    p.ldx("h", R1, R9, lay.port)
    p.stx("w", R6, CTX_USER_PORT, R1)

    # revnat[(socket cookie, backend address, port)] = (service address, port).
    p.mov(R1, R6)
    p.call("get_socket_cookie")
    p.stx("dw", FP, lay.rn_key, R0)
    _copy_addr(p, lay, FP, lay.rn_key + 8, R9, 0)
    p.ldx("h", R1, R9, lay.port)
    p.stx("h", FP, lay.rn_key + 8 + lay.port, R1)
    p.st("h", FP, lay.rn_key + 8 + lay.port + 2, 0)
    _copy_addr(p, lay, FP, lay.rn_value, FP, lay.svc_key)
    p.ldx("h", R1, FP, lay.svc_key + lay.port)
    p.stx("h", FP, lay.rn_value + lay.port, R1)
    p.st("h", FP, lay.rn_value + lay.port + 2, 0)
    p.ld_map_fd(R1, map_fds[f"revnat{fam}"])
    _stack_ptr(p, R2, lay.rn_key)
    _stack_ptr(p, R3, lay.rn_value)
    p.mov(R4, 0)  # BPF_ANY
    p.call("map_update_elem")
    _pass(p, at)

    # Refuse: the system call fails with ECONNREFUSED (EPERM without set_retval).
    p.label(at + "reject")
    if set_retval:
        p.mov(R1, -errno.ECONNREFUSED)
        p.call("set_retval")
    p.mov(R0, 0)
    p.exit()


# --- reverse: recvmsg and getpeername ----------------------------------------------------


def reverse(lay: Layout, map_fds: dict[str, int]) -> bytes:
    """recvmsg4/6 and getpeername4/6: a backend's address → the service address this socket
    asked for, when revnat knows it (IPv4-mapped addresses in the IPv6 programs: revnat4)."""
    p = Program()
    p.mov(R6, R1)  # r6 = ctx
    if lay.family == 6:
        _if_v4_mapped(p, "v4mapped")
    _reverse(p, lay, map_fds, "")
    if lay.family == 6:
        p.label("v4mapped")
        _reverse(p, MAPPED, map_fds, "v4mapped.")
    return p.assemble()


def _reverse(p: Program, lay: Layout, map_fds: dict[str, int], at: str) -> None:
    """The body of `reverse`; r6 = ctx; labels prefixed with `at`."""
    fam = lay.family

    # Key: (socket cookie, user_ip, user_port, pad).
    p.mov(R1, R6)
    p.call("get_socket_cookie")
    p.stx("dw", FP, lay.rn_key, R0)
    _copy_addr(p, lay, FP, lay.rn_key + 8, R6, lay.ctx_ip)
    p.ldx("w", R1, R6, CTX_USER_PORT)
    p.stx("h", FP, lay.rn_key + 8 + lay.port, R1)
    p.st("h", FP, lay.rn_key + 8 + lay.port + 2, 0)

    p.ld_map_fd(R1, map_fds[f"revnat{fam}"])
    _stack_ptr(p, R2, lay.rn_key)
    p.call("map_lookup_elem")
    p.jeq(R0, 0, at + "pass")

    # Put the service address and port back.
    p.mov(R9, R0)
    _copy_addr(p, lay, R6, lay.ctx_ip, R9, 0)
    p.ldx("h", R1, R9, lay.port)
    p.stx("w", R6, CTX_USER_PORT, R1)
    _pass(p, at)


# --- the set -----------------------------------------------------------------------------

FORWARD_ATTACH = ("connect", "sendmsg")
REVERSE_ATTACH = ("recvmsg", "getpeername")


def builder_of(spec: maps.ProgramSpec) -> str:
    """"balance" or "reverse" for a program of maps.PROGRAMS."""
    if any(word in spec.attach_type for word in FORWARD_ATTACH):
        return "balance"
    if any(word in spec.attach_type for word in REVERSE_ATTACH):
        return "reverse"
    raise ValueError(f"no program for attach type {spec.attach_type}")


def specs(family: int | None = None) -> list[maps.ProgramSpec]:
    """The programs of maps.PROGRAMS, all or one family's."""
    return [spec for spec in maps.PROGRAMS if family is None or spec.family == family]


def build(map_fds: dict[str, int], set_retval: bool = True, family: int | None = None) -> dict[str, bytes]:
    """Every program of maps.PROGRAMS (or of one family), by name, using the given map fds
    (by map name). The IPv6 programs also use the IPv4 maps (IPv4-mapped addresses)."""
    families = {4, 6} if family is None else {4, family}
    needed = {f"{kind}{fam}" for kind in ("services", "backends", "affinity", "revnat") for fam in families}
    missing = sorted(needed - set(map_fds))
    if missing:
        raise ValueError(f"map fds missing for: {', '.join(missing)}")
    out = {}
    for spec in specs(family):
        lay = LAYOUTS[spec.family]
        if builder_of(spec) == "balance":
            out[spec.name] = balance(lay, map_fds, set_retval)
        else:
            out[spec.name] = reverse(lay, map_fds)
    return out


def load(map_fds: dict[str, int], family: int | None = None) -> dict[str, int]:
    """Build and load every program (or one family's); program fds by name. On a kernel
    without bpf_set_retval for these hooks (before 5.18) the programs are built without it
    (a refusal is then EPERM). A refusal raises BpfError with the verifier's log; programs
    loaded before it are closed."""
    from kubectl_proxyctl.system import bpf

    try:
        return _load_all(build(map_fds, family=family), family)
    except bpf.BpfError as exc:
        if "bpf_set_retval" not in exc.detail:  # "unknown func bpf_set_retval#187" and kin
            raise
    return _load_all(build(map_fds, set_retval=False, family=family), family)


def _load_all(built: dict[str, bytes], family: int | None) -> dict[str, int]:
    from kubectl_proxyctl.system import bpf

    fds: dict[str, int] = {}
    try:
        for spec in specs(family):
            fds[spec.name] = bpf.load_program(PROG_TYPE, spec.attach_type, built[spec.name], spec.name, LICENSE)
    except BaseException:
        for fd in fds.values():
            bpf.close_fd(fd)
        raise
    return fds
