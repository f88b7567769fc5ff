"""The BPF assembler: encodings, labels and errors; helper ids against linux/bpf.h; and, on
the real kernel, that every eBPF-mode program passes the verifier and that what the kernel
holds after loading is, instruction by instruction, what the assembler wrote.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.modes.ebpf import maps, programs
from kubectl_proxyctl.modes.ebpf.asm import FP, HELPERS, R0, R1, R2, R3, R4, R6, R9, AsmError, Program, Reg
from kubectl_proxyctl.system import bpf

BPF_H = Path("/usr/include/linux/bpf.h")


def one(build: Program) -> str:
    return build.assemble().hex()


# --- encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize("emit, expected", [
    (lambda p: p.mov(R0, 1), "b700000001000000"),
    (lambda p: p.mov(R6, R1), "bf16000000000000"),
    (lambda p: p.mov32(R2, -1), "b4020000ffffffff"),
    (lambda p: p.mov32(R2, 0xFFFFFFFF), "b4020000ffffffff"),
    (lambda p: p.add(R2, -8), "07020000f8ffffff"),
    (lambda p: p.sub(R2, R1), "1f12000000000000"),
    (lambda p: p.mul(R3, 1_000_000_000), "2703000000ca9a3b"),
    (lambda p: p.div(R2, 5), "3702000005000000"),
    (lambda p: p.mod32(R0, R6), "9c60000000000000"),
    (lambda p: p.and_(R1, 0xFF), "57010000ff000000"),
    (lambda p: p.or_(R1, R2), "4f21000000000000"),
    (lambda p: p.xor32(R1, 1), "a401000001000000"),
    (lambda p: p.lsh(R1, 32), "6701000020000000"),
    (lambda p: p.rsh32(R1, R2), "7c21000000000000"),
    (lambda p: p.arsh(R1, 3), "c701000003000000"),
    (lambda p: p.neg(R1), "8701000000000000"),
    (lambda p: p.neg32(R1), "8401000000000000"),
    (lambda p: p.be16(R1), "dc01000010000000"),
    (lambda p: p.be32(R1), "dc01000020000000"),
    (lambda p: p.le64(R1), "d401000040000000"),
    (lambda p: p.ldx("w", R2, R6, 24), "6162180000000000"),
    (lambda p: p.ldx("dw", R1, R9, 8), "7991080000000000"),
    (lambda p: p.ldx("b", R1, R9, 1), "7191010000000000"),
    (lambda p: p.stx("h", FP, -4, R1), "6b1afcff00000000"),
    (lambda p: p.stx("dw", FP, -16, R0), "7b0af0ff00000000"),
    (lambda p: p.st("w", FP, -12, 0), "620af4ff00000000"),
    (lambda p: p.st("b", FP, -1, 7), "720affff07000000"),
    (lambda p: p.st("dw", FP, -8, 0), "7a0af8ff00000000"),
    (lambda p: p.ld_imm64(R3, 0x1122334455667788), "1803000088776655" + "0000000044332211"),
    (lambda p: p.ld_map_fd(R1, 7), "1811000007000000" + "0000000000000000"),
    (lambda p: p.call("map_lookup_elem"), "8500000001000000"),
    (lambda p: p.call("set_retval"), "85000000bb000000"),
    (lambda p: p.exit(), "9500000000000000"),
])
def test_single_instructions_encode_as_the_kernel_reads_them(emit, expected) -> None:  # type: ignore[no-untyped-def]
    p = Program()
    emit(p)
    assert one(p) == expected


def test_jumps_resolve_forward_and_backward_counting_ld_imm64_as_two_slots() -> None:
    p = Program()
    p.label("top")
    p.jeq(R0, 0, "end")       # 0: skips ld_imm64 (2 slots) and ja → off 3
    p.ld_imm64(R1, 1)         # 1-2
    p.ja("top")               # 3: back to 0 → off -4
    p.label("end")
    p.jset(R1, R2, "end")     # 4: to itself → off -1
    p.jump("jlt", R1, 5, "end", wide=False)  # 5: JMP32 jlt → off -2
    p.exit()                  # 6
    code = p.assemble()
    assert len(code) == 7 * 8 and len(p) == 7
    assert code[0:8].hex() == "1500030000000000"
    assert code[24:32].hex() == "0500fcff00000000"
    assert code[32:40].hex() == "4d21ffff00000000"
    assert code[40:48].hex() == "a601feff05000000"


def test_label_and_operand_errors() -> None:
    with pytest.raises(AsmError, match="unknown label 'nowhere'"):
        Program().ja("nowhere").assemble()
    with pytest.raises(AsmError, match="duplicate label 'x'"):
        Program().label("x").exit().label("x").assemble()
    far = Program().ja("far")
    for _ in range(40000):
        far.exit()
    far.label("far").exit()
    with pytest.raises(AsmError, match="40000 instructions away"):
        far.assemble()
    with pytest.raises(AsmError, match="use ld_imm64"):
        Program().mov(R1, 1 << 40)
    with pytest.raises(AsmError, match="unknown helper 'printk'"):
        Program().call("printk")
    with pytest.raises(AsmError, match="unknown size"):
        Program().ldx("q", R1, R2, 0)
    with pytest.raises(AsmError, match="no register r11"):
        Reg(11)
    with pytest.raises(AsmError, match="by the constant 0"):
        Program().mod(R1, 0)


def _helper_ids_from_header(text: str) -> dict[str, int]:
    """`enum bpf_func_id` as linux/bpf.h spells it: FN(name) in order (older headers) or
    FN(name, id, ...) (newer)."""
    m = re.search(r"#define ___?BPF_FUNC_MAPPER\((?:FN|FN, ctx\.\.\.)\)(.*?)\n\s*\n", text, re.S)
    assert m, "no __BPF_FUNC_MAPPER in bpf.h"
    out = {}
    for i, found in enumerate(re.finditer(r"FN\((\w+)(?:,\s*(\d+))?", m.group(1))):
        out[found.group(1)] = int(found.group(2)) if found.group(2) else i
    return out


@pytest.mark.skipif(not BPF_H.is_file(), reason="needs /usr/include/linux/bpf.h (linux-libc-dev)")
def test_helper_ids_are_the_headers() -> None:
    ids = _helper_ids_from_header(BPF_H.read_text())
    assert {name: ids[name] for name in HELPERS} == HELPERS


@pytest.mark.skipif(not BPF_H.is_file(), reason="needs /usr/include/linux/bpf.h (linux-libc-dev)")
def test_command_and_attach_type_numbers_are_the_headers() -> None:
    text = BPF_H.read_text()

    def enum(name: str) -> dict[str, int]:
        m = re.search(r"enum %s \{(.*?)\};" % name, text, re.S)
        assert m
        body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
        out, n = {}, 0
        for line in body.split(","):
            word = line.strip()
            if not word:
                continue
            if "=" in word:
                key, value = (s.strip() for s in word.split("="))
                n = out[value] if value in out else int(value, 0)
                out[key] = n
            else:
                out[word] = n
            n += 1
        return out

    cmds = enum("bpf_cmd")
    for number, name in bpf.COMMAND_NAMES.items():
        assert cmds[name] == number, name
    attach = enum("bpf_attach_type")
    for name, number in bpf.CGROUP_ATTACH_TYPES.items():
        if "unix" in name and "BPF_" + name.upper() not in attach:
            continue  # newer than this header (Linux 6.7)
        assert attach["BPF_" + name.upper()] == number, name
    progs = enum("bpf_prog_type")
    for name, number in bpf.PROG_TYPES.items():
        assert progs["BPF_PROG_TYPE_" + name.upper()] == number
    types = enum("bpf_map_type")
    for name, number in bpf.MAP_TYPES.items():
        assert types["BPF_MAP_TYPE_" + name.upper()] == number


def test_system_bpf_names_and_spells_bytes_as_maps_py_does() -> None:
    # system/ may not import modes/, so it carries its own copy of these two rules
    for spec in maps.MAPS.values():
        assert bpf.kernel_name(spec.name) == maps.kernel_map_name(spec.name)
    raw = bytes(range(0, 256, 7))
    assert bpf.hex_bytes(raw) == maps.entry_json(raw) and maps.entry_bytes(bpf.hex_bytes(raw)) == raw


def test_programs_build_for_every_spec_and_keep_a_stable_size() -> None:
    fds = {name: 100 + i for i, name in enumerate(maps.MAPS)}
    built = programs.build(fds)
    assert set(built) == {spec.name for spec in maps.PROGRAMS}
    assert all(len(code) % 8 == 0 and len(code) // 8 < 4096 for code in built.values())
    with pytest.raises(ValueError, match="map fds missing"):
        programs.build({"services4": 3})
    v4_only = {name: fd for name, fd in fds.items() if name.endswith("4")}
    assert set(programs.build(v4_only, family=4)) == {s.name for s in maps.PROGRAMS if s.family == 4}
    with pytest.raises(ValueError, match="affinity4"):  # IPv6 programs serve IPv4-mapped addresses too
        programs.build({name: fd for name, fd in fds.items() if name.endswith("6")}, family=6)


def test_stack_slots_do_not_overlap_and_fit_the_frame() -> None:
    for lay in programs.LAYOUTS.values():
        slots = sorted([
            (lay.svc_key, lay.alen + 4), (lay.aff_key, 16), (lay.slot_key, 4),
            (lay.aff_value, lay.aff_last_ns + 8), (lay.rn_key, 8 + lay.alen + 4), (lay.rn_value, lay.alen + 4),
        ])
        for (off, size), (next_off, _) in zip(slots, slots[1:]):
            assert off + size <= next_off
        assert all(off % 8 == 0 for off, _ in slots) and slots[0][0] >= -512
        assert slots[-1][0] + slots[-1][1] <= 0
        assert lay.aff_last_ns + 8 == maps.MAPS[f"affinity{lay.family}"].value_size


# --- on the kernel -------------------------------------------------------------------------

@pytest.fixture
def map_fds() -> Iterator[dict[str, int]]:
    made = {name: bpf.BpfMap.create(spec) for name, spec in maps.MAPS.items()}
    try:
        yield {name: m.fd for name, m in made.items()}
    finally:
        for m in made.values():
            m.close()


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf(2))")
def test_every_program_passes_the_verifier(map_fds: dict[str, int]) -> None:
    for name, fd in programs.load(map_fds, family=6).items():
        assert name.endswith("6")
        bpf.close_fd(fd)
    fds = programs.load(map_fds)
    try:
        assert set(fds) == {spec.name for spec in maps.PROGRAMS}
        for name, fd in fds.items():
            assert bpf.prog_info(fd)["name"] == name
    finally:
        for fd in fds.values():
            bpf.close_fd(fd)


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bpf(2))")
def test_a_refused_program_reports_the_verifier_log() -> None:
    with pytest.raises(ApplyError) as info:
        bpf.load_program("cgroup_sock_addr", "cgroup_inet4_connect", Program().exit().assemble(), "pxc_bad")
    message = str(info.value)
    assert message.startswith("bpf(BPF_PROG_LOAD pxc_bad): EACCES") and "R0 !read_ok" in message
    assert "\n" not in message and "exit" in info.value.detail  # type: ignore[attr-defined]


def _coverage_program() -> Program:
    """Every kind of instruction the assembler emits, arranged so that the verifier keeps
    them all as written: values come from bpf_get_prandom_u32 (unknown, so no branch is
    dead), no division by a register (the verifier patches those), no context access."""
    p = Program()
    p.call("get_prandom_u32").mov(R6, R0).mov32(R2, R0)
    p.add(R2, 7).sub(R2, R6).mul(R2, 3).div(R2, 5).mod(R2, 11).or_(R2, 0x100).and_(R2, R6)
    p.xor(R2, -1).lsh(R2, 3).rsh(R2, 1).arsh(R2, 2).neg(R2)
    p.add32(R2, R6).sub32(R2, 9).mul32(R2, R6).div32(R2, 3).mod32(R2, 7).and32(R2, 0xFFFF0000)
    p.or32(R2, R6).xor32(R2, 1).lsh32(R2, 4).rsh32(R2, 2).arsh32(R2, 1).neg32(R2)
    p.be16(R2).be32(R2).be64(R2).le16(R2).le32(R2).le64(R2)
    p.ld_imm64(R3, 0x1122334455667788)
    p.stx("dw", FP, -8, R3).stx("w", FP, -12, R2).stx("h", FP, -14, R2).stx("b", FP, -15, R2)
    p.st("b", FP, -16, 7).st("h", FP, -18, 0x1234).st("w", FP, -24, -5).st("dw", FP, -32, 99)
    p.ldx("dw", R4, FP, -8).ldx("w", R4, FP, -12).ldx("h", R4, FP, -14).ldx("b", R4, FP, -15)
    jumps = [("jeq", 1), ("jne", None), ("jgt", 2), ("jge", None), ("jlt", 3), ("jle", None),
             ("jsgt", 4), ("jsge", None), ("jslt", -5), ("jsle", None), ("jset", 0x40)]
    for i, (op, imm) in enumerate(jumps):
        p.call("get_prandom_u32").mov(R6, R0).call("get_prandom_u32")
        p.jump(op, R6, R0 if imm is None else imm, f"j{i}", wide=i % 2 == 0)
        p.mov(R4, i)
        p.label(f"j{i}")
    p.call("get_prandom_u32").jeq(R0, 0, "zero").mov(R0, 1).ja("out")
    p.label("zero").mov(R0, 0)
    p.label("out").exit()
    return p


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("bpftool") is None, reason="needs root and bpftool")
def test_the_kernels_copy_of_a_program_is_what_the_assembler_wrote() -> None:
    code = _coverage_program().assemble()
    fd = bpf.load_program("cgroup_sock_addr", "cgroup_inet4_connect", code, "pxc_asmtest")
    try:
        prog_id = bpf.prog_info(fd)["id"]
        out = subprocess.run(["bpftool", "-j", "prog", "dump", "xlated", "id", str(prog_id), "opcodes"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        bpf.close_fd(fd)
    xlated = json.loads(out)
    ours = [code[i:i + 8] for i in range(0, len(code), 8)]
    pos = 0
    for entry in xlated:
        ops = entry["opcodes"]
        raw = bytes([int(ops["code"], 16), int(ops["src_reg"], 16) << 4 | int(ops["dst_reg"], 16)])
        raw += bytes(int(b, 16) for b in ops["off"]) + bytes(int(b, 16) for b in ops["imm"])
        mine = b"".join(ours[pos:pos + len(raw) // 8])
        if raw[0] == 0x85:  # a helper call: the kernel replaces the id with the function's address
            assert mine[:4] == raw[:4], entry["disasm"]
        else:
            assert mine == raw, entry["disasm"]
        pos += len(raw) // 8
    assert pos == len(ours)
    names = [e["disasm"] for e in xlated if e["opcodes"]["code"] == "0x85"]
    assert names and all("bpf_user_rnd_u32" in n or "prandom" in n for n in names)
