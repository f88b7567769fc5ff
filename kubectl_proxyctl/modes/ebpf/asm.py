"""A small BPF assembler: programs written as Python calls that read like commented assembly.

Theory of operation: a BPF instruction is 8 bytes, little-endian on the machines we run on:

    opcode:8  dst_reg:4 src_reg:4 (low nibble dst)  offset:16 (signed)  imm:32 (signed)

The opcode's low 3 bits are the class (LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64); for
ALU/JMP the high 4 bits are the operation and bit 3 says whether the operand is a register
(X) or the immediate (K); for loads and stores bits 3-4 are the size (W, H, B, DW) and the
high 3 bits the mode (MEM). `ld_imm64` is the one 16-byte instruction: its second half
carries the upper 32 bits; with src_reg = BPF_PSEUDO_MAP_FD its immediate is a map fd that
the verifier replaces with the map's address.

`Program` collects instructions and labels; jumps name a label and are resolved in a second
pass (`assemble`), counting ld_imm64 as two slots, so an unknown or duplicate label or an
offset beyond 16 bits is an error before the kernel ever sees the program. Helpers are
called by name (`HELPERS`, ids as in linux/bpf.h's `__BPF_FUNC_MAPPER`).

Registers: r0 return value and helper result; r1-r5 helper arguments (clobbered by every
call); r6-r9 callee-saved; r10 (`FP`) the read-only frame pointer, the stack is below it.

    p = Program()
    p.mov(R6, R1)                    # r6 = ctx
    p.ldx("w", R2, R6, 4)            # r2 = *(u32 *)(ctx + 4)
    p.jeq(R2, 0, "out")              # if r2 == 0 goto out
    p.label("out")
    p.mov(R0, 1)
    p.exit()
    insns: bytes = p.assemble()
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

# --- encodings ---------------------------------------------------------------------------

CLASS_LD, CLASS_LDX, CLASS_ST, CLASS_STX = 0x00, 0x01, 0x02, 0x03
CLASS_ALU, CLASS_JMP, CLASS_JMP32, CLASS_ALU64 = 0x04, 0x05, 0x06, 0x07

SIZES = {"w": 0x00, "h": 0x08, "b": 0x10, "dw": 0x18}
MODE_IMM, MODE_MEM = 0x00, 0x60
SRC_K, SRC_X = 0x00, 0x08

ALU_OPS = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50,
    "lsh": 0x60, "rsh": 0x70, "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0,
    "arsh": 0xC0, "end": 0xD0,
}
END_TO_LE, END_TO_BE = 0x00, 0x08

JMP_OPS = {
    "ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50,
    "jsgt": 0x60, "jsge": 0x70, "call": 0x80, "exit": 0x90, "jlt": 0xA0, "jle": 0xB0,
    "jslt": 0xC0, "jsle": 0xD0,
}

BPF_PSEUDO_MAP_FD = 1

HELPERS: dict[str, int] = {
    "map_lookup_elem": 1,
    "map_update_elem": 2,
    "map_delete_elem": 3,
    "ktime_get_ns": 5,
    "get_prandom_u32": 7,
    "get_socket_cookie": 46,
    "get_netns_cookie": 122,
    "get_retval": 186,
    "set_retval": 187,
}
"""Helper ids (linux/bpf.h, `enum bpf_func_id`); only those the programs use."""


class AsmError(ValueError):
    """A program that cannot be encoded: bad register, operand, size or label."""


@dataclass(frozen=True)
class Reg:
    """A register r0..r10."""

    n: int

    def __post_init__(self) -> None:
        if not 0 <= self.n <= 10:
            raise AsmError(f"no register r{self.n}")

    def __repr__(self) -> str:
        return f"r{self.n}"


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = (Reg(i) for i in range(11))
FP = R10

Operand = Union[Reg, int]


def encode(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One 8-byte instruction."""
    if not -(1 << 15) <= off < (1 << 15):
        raise AsmError(f"offset {off} does not fit in 16 bits")
    if not -(1 << 31) <= imm < (1 << 31):
        raise AsmError(f"immediate {imm} does not fit in 32 signed bits")
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _imm32(value: int, wide: bool) -> int:
    """An immediate operand: signed 32-bit; 32-bit operations also take 0..2**32-1."""
    if not wide and 1 << 31 <= value < 1 << 32:
        return value - (1 << 32)
    if not -(1 << 31) <= value < (1 << 31):
        hint = " (use ld_imm64)" if wide else ""
        raise AsmError(f"immediate {value} does not fit in 32 signed bits{hint}")
    return value


@dataclass
class _Jump:
    code: int
    dst: int
    src: int
    imm: int
    label: str


@dataclass
class _Label:
    name: str


class Program:
    """Instructions and labels, in order; `assemble()` gives the program's bytes."""

    def __init__(self) -> None:
        self._items: list[bytes | _Jump | _Label] = []

    # --- ALU ---------------------------------------------------------------------------

    def alu(self, op: str, dst: Reg, src: Operand, wide: bool = True) -> "Program":
        """dst = dst OP src, 64-bit (wide) or 32-bit (upper half zeroed)."""
        if op not in ALU_OPS or op in ("end", "neg"):
            raise AsmError(f"unknown ALU operation {op!r}")
        cls = CLASS_ALU64 if wide else CLASS_ALU
        if isinstance(src, Reg):
            self._items.append(encode(cls | ALU_OPS[op] | SRC_X, dst.n, src.n))
        else:
            if op in ("div", "mod") and src == 0:
                raise AsmError(f"{op} by the constant 0")
            self._items.append(encode(cls | ALU_OPS[op] | SRC_K, dst.n, 0, 0, _imm32(src, wide)))
        return self

    def mov(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("mov", dst, src)

    def add(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("add", dst, src)

    def sub(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("sub", dst, src)

    def mul(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("mul", dst, src)

    def div(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("div", dst, src)

    def mod(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("mod", dst, src)

    def and_(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("and", dst, src)

    def or_(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("or", dst, src)

    def xor(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("xor", dst, src)

    def lsh(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("lsh", dst, src)

    def rsh(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("rsh", dst, src)

    def arsh(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("arsh", dst, src)

    def mov32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("mov", dst, src, wide=False)

    def add32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("add", dst, src, wide=False)

    def sub32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("sub", dst, src, wide=False)

    def mul32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("mul", dst, src, wide=False)

    def div32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("div", dst, src, wide=False)

    def mod32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("mod", dst, src, wide=False)

    def and32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("and", dst, src, wide=False)

    def or32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("or", dst, src, wide=False)

    def xor32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("xor", dst, src, wide=False)

    def lsh32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("lsh", dst, src, wide=False)

    def rsh32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("rsh", dst, src, wide=False)

    def arsh32(self, dst: Reg, src: Operand) -> "Program":
        return self.alu("arsh", dst, src, wide=False)

    def neg(self, dst: Reg, wide: bool = True) -> "Program":
        """dst = -dst."""
        self._items.append(encode((CLASS_ALU64 if wide else CLASS_ALU) | ALU_OPS["neg"], dst.n))
        return self

    def neg32(self, dst: Reg) -> "Program":
        return self.neg(dst, wide=False)

    def endian(self, dst: Reg, bits: int, big: bool) -> "Program":
        """Convert the low `bits` of dst between host order and big (network) or little
        endian, zeroing the rest."""
        if bits not in (16, 32, 64):
            raise AsmError(f"byte swap of {bits} bits (16, 32 or 64)")
        self._items.append(encode(CLASS_ALU | ALU_OPS["end"] | (END_TO_BE if big else END_TO_LE), dst.n, 0, 0, bits))
        return self

    def be16(self, dst: Reg) -> "Program":
        return self.endian(dst, 16, big=True)

    def be32(self, dst: Reg) -> "Program":
        return self.endian(dst, 32, big=True)

    def be64(self, dst: Reg) -> "Program":
        return self.endian(dst, 64, big=True)

    def le16(self, dst: Reg) -> "Program":
        return self.endian(dst, 16, big=False)

    def le32(self, dst: Reg) -> "Program":
        return self.endian(dst, 32, big=False)

    def le64(self, dst: Reg) -> "Program":
        return self.endian(dst, 64, big=False)

    # --- memory ------------------------------------------------------------------------

    @staticmethod
    def _size(size: str) -> int:
        try:
            return SIZES[size]
        except KeyError:
            raise AsmError(f"unknown size {size!r} (b, h, w, dw)") from None

    def ldx(self, size: str, dst: Reg, src: Reg, off: int) -> "Program":
        """dst = *(size *)(src + off) — also how a context field is read (src = ctx)."""
        self._items.append(encode(CLASS_LDX | MODE_MEM | self._size(size), dst.n, src.n, off))
        return self

    def stx(self, size: str, dst: Reg, off: int, src: Reg) -> "Program":
        """*(size *)(dst + off) = src."""
        self._items.append(encode(CLASS_STX | MODE_MEM | self._size(size), dst.n, src.n, off))
        return self

    def st(self, size: str, dst: Reg, off: int, imm: int) -> "Program":
        """*(size *)(dst + off) = imm."""
        self._items.append(encode(CLASS_ST | MODE_MEM | self._size(size), dst.n, 0, off, _imm32(imm, size != "dw")))
        return self

    def ld_imm64(self, dst: Reg, imm: int, src: int = 0) -> "Program":
        """dst = imm (any 64-bit value); two instruction slots."""
        if not -(1 << 63) <= imm < (1 << 64):
            raise AsmError(f"immediate {imm} does not fit in 64 bits")
        imm &= (1 << 64) - 1
        lo, hi = imm & 0xFFFFFFFF, imm >> 32
        self._items.append(encode(CLASS_LD | MODE_IMM | SIZES["dw"], dst.n, src, 0, _imm32(lo, False))
                           + encode(0, 0, 0, 0, _imm32(hi, False)))
        return self

    def ld_map_fd(self, dst: Reg, fd: int) -> "Program":
        """dst = the map behind `fd` (BPF_PSEUDO_MAP_FD, resolved by the verifier)."""
        if fd < 0:
            raise AsmError(f"map fd {fd}")
        return self.ld_imm64(dst, fd, src=BPF_PSEUDO_MAP_FD)

    # --- control flow ------------------------------------------------------------------

    def label(self, name: str) -> "Program":
        """Mark the position of the next instruction."""
        self._items.append(_Label(name))
        return self

    def jump(self, op: str, dst: Reg, src: Operand, label: str, wide: bool = True) -> "Program":
        """if dst OP src goto label (64-bit compare, or 32-bit with wide=False)."""
        if op not in JMP_OPS or op in ("ja", "call", "exit"):
            raise AsmError(f"unknown conditional jump {op!r}")
        cls = CLASS_JMP if wide else CLASS_JMP32
        if isinstance(src, Reg):
            self._items.append(_Jump(cls | JMP_OPS[op] | SRC_X, dst.n, src.n, 0, label))
        else:
            self._items.append(_Jump(cls | JMP_OPS[op] | SRC_K, dst.n, 0, _imm32(src, wide), label))
        return self

    def ja(self, label: str) -> "Program":
        """goto label."""
        self._items.append(_Jump(CLASS_JMP | JMP_OPS["ja"], 0, 0, 0, label))
        return self

    def jeq(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jeq", dst, src, label)

    def jne(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jne", dst, src, label)

    def jgt(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jgt", dst, src, label)

    def jge(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jge", dst, src, label)

    def jlt(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jlt", dst, src, label)

    def jle(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jle", dst, src, label)

    def jsgt(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jsgt", dst, src, label)

    def jsge(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jsge", dst, src, label)

    def jslt(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jslt", dst, src, label)

    def jsle(self, dst: Reg, src: Operand, label: str) -> "Program":
        return self.jump("jsle", dst, src, label)

    def jset(self, dst: Reg, src: Operand, label: str) -> "Program":
        """if dst & src goto label."""
        return self.jump("jset", dst, src, label)

    def call(self, helper: str) -> "Program":
        """r0 = helper(r1, ..., r5); r1-r5 are clobbered."""
        try:
            helper_id = HELPERS[helper]
        except KeyError:
            raise AsmError(f"unknown helper {helper!r} (known: {', '.join(sorted(HELPERS))})") from None
        self._items.append(encode(CLASS_JMP | JMP_OPS["call"], 0, 0, 0, helper_id))
        return self

    def exit(self) -> "Program":
        """return r0."""
        self._items.append(encode(CLASS_JMP | JMP_OPS["exit"]))
        return self

    # --- output ------------------------------------------------------------------------

    def assemble(self) -> bytes:
        """The program's bytes; labels resolved (errors for unknown or duplicate labels, and
        for jumps farther than a signed 16-bit offset)."""
        labels: dict[str, int] = {}
        slot = 0
        for item in self._items:
            if isinstance(item, _Label):
                if item.name in labels:
                    raise AsmError(f"duplicate label {item.name!r}")
                labels[item.name] = slot
            elif isinstance(item, _Jump):
                slot += 1
            else:
                slot += len(item) // 8
        out = bytearray()
        slot = 0
        for item in self._items:
            if isinstance(item, _Label):
                continue
            if isinstance(item, _Jump):
                if item.label not in labels:
                    raise AsmError(f"jump to unknown label {item.label!r}")
                off = labels[item.label] - (slot + 1)
                if not -(1 << 15) <= off < (1 << 15):
                    raise AsmError(f"jump to {item.label!r} is {off} instructions away (limit ±32767)")
                out += encode(item.code, item.dst, item.src, off, item.imm)
                slot += 1
            else:
                out += item
                slot += len(item) // 8
        return bytes(out)

    def __len__(self) -> int:
        """Instruction slots so far (ld_imm64 counts two)."""
        return sum(1 if isinstance(i, _Jump) else len(i) // 8 for i in self._items if not isinstance(i, _Label))
