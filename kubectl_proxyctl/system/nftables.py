"""The `nft` tool: one adapter for running transactions and reading our table back.

Theory of operation: everything the nftables engine does to the kernel goes through
`NftSystem.run(script)`, which feeds one script to `nft -f -`. nft applies a script as one
netlink batch: either every command commits or none does, so a failed sync leaves the previous
rules in place and there is nothing to roll back. A failure becomes an ApplyError naming the
failing line of the script with the lines around it (nft reports `/dev/stdin:LINE:COL-COL:`).

`listing()` reads our whole table once, in nft's text form: what the engine reconciles a
populated table against when it starts (`modes/nftables/reconcile.py`). With the real
executor it calls libnftables (the library the nft binary is made of) in this process,
through ctypes, inside the executor's network namespace, with nft's output kept in memory:
nft flushes its output after every token it prints (1.6 million writes at 10,000
services), and through a pipe to this process those writes, the reader's wake-ups and the
exec cost a quarter to a third of the listing's CPU time (nft 1.0.6: about 6 CPU-seconds
instead of 8 to 9 for the same text). Without the library, or with an executor that does not run the real
tools (a fake), it runs `nft` through the executor.

Reading back is otherwise cheap and narrow: `chains()` and `sets()` list only names (`nft -j list
chains ip` / `list sets ip`, filtered to our table), which the engine needs on a full sync to
find stale chains; `set_present()` notices that someone deleted our table or flushed the ruleset (the
nftables counterpart of iptables mode's canary chains); it stays cheap on a large table,
where listing even one chain makes nft 1.0.x load the whole table.

`available()` checks the nft binary and the kernel (nft ≥ 1.0.1 is needed for the syntax
kube-proxy uses; a kernel without nf_tables fails the probe transaction).
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass, field
from typing import Any

from kubectl_proxyctl.errors import ApplyError, ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.system.executor import Executor, Result, SubprocessExecutor
from kubectl_proxyctl.system.netns import call_in_netns

CONTEXT_LINES = 2
_LINE_RE = re.compile(r"/dev/stdin:(\d+):")
_VERSION_RE = re.compile(r"nftables v(\d+)\.(\d+)\.(\d+)")
MIN_VERSION = (1, 0, 1)


def nft_error(script: str, result: Result, what: str = "nft") -> ApplyError:
    """An ApplyError naming the failing script line (if nft said which) and nft's reason."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    reason = "; ".join(ln.split(": Error: ", 1)[-1].strip() for ln in lines if "Error:" in ln)
    reason = reason or ("; ".join(ln.strip() for ln in lines[:3]) or f"exit status {result.returncode}")
    match = _LINE_RE.search(result.stderr)
    if match is None:
        return ApplyError(f"{what} failed: {reason}", script=script)
    line = int(match.group(1))
    text = script.splitlines()
    lo, hi = max(1, line - CONTEXT_LINES), min(len(text), line + CONTEXT_LINES)
    context = [f"{'>' if n == line else ' '} {n:5d}: {text[n - 1]}" for n in range(lo, hi + 1)]
    head = f"{what} failed at line {line}: {reason} (nothing was applied: the transaction is atomic)"
    return ApplyError("\n".join([head, *context]), script=script, line=line)


def family_word(family: IPFamily) -> str:
    """The nft family (and address keyword) of an IP family: `ip` or `ip6`."""
    return "ip6" if family == IPFamily.IPv6 else "ip"


KUBE_PROXY_TABLE = "kube-proxy"  # the one table kube-proxy's nftables mode owns, per family


@dataclass
class NftSummary:
    """Chain → number of rules, and set or map → number of elements, of one table."""

    rules: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)


class NftSystem:
    """One table of one family (kube-proxy's `kube-proxy` table unless told otherwise),
    through the `nft` binary."""

    def __init__(self, family: IPFamily = IPFamily.IPv4, executor: Executor | None = None,
                 table: str = KUBE_PROXY_TABLE) -> None:
        self.family = family
        self.executor = executor or SubprocessExecutor()
        self.fam = family_word(family)
        self.table = table

    def __repr__(self) -> str:
        return f"NftSystem({self.family}, {self.executor!r})"

    # --- writing --------------------------------------------------------------------------

    def run(self, script: str, check: bool = False) -> None:
        """Apply `script` as one transaction (`check`: only validate it, `nft -c`)."""
        if not script.strip():
            return
        argv = ["nft", "-c", "-f", "-"] if check else ["nft", "-f", "-"]
        result = self.executor.run(argv, stdin=script, timeout=600.0)
        if not result.ok:
            raise nft_error(script, result, "nft -c" if check else "nft")

    def delete_table(self) -> bool:
        """Delete our table; False when there was none."""
        present = self.table_present()
        if present:
            self.run(f"delete table {self.fam} {self.table}\n")
        return present

    # --- reading --------------------------------------------------------------------------

    def _json(self, *args: str) -> list[dict[str, Any]]:
        result = self.executor.run(["nft", "-j", *args], timeout=120.0)
        if not result.ok:
            raise ProxyctlError(f"nft -j {' '.join(args)} failed: {result.stderr.strip() or result.returncode}")
        try:
            data = json.loads(result.stdout or "{}")
        except ValueError as exc:
            raise ProxyctlError(f"nft -j {' '.join(args)}: unreadable output ({exc})") from exc
        return list(data.get("nftables") or [])

    def table_present(self) -> bool:
        for item in self._json("list", "tables", self.fam):
            table = item.get("table")
            if table and table.get("name") == self.table and table.get("family") == self.fam:
                return True
        return False

    def _names(self, kind: str) -> set[str]:
        out: set[str] = set()
        for item in self._json("list", f"{kind}s", self.fam):
            obj = item.get(kind)
            if obj and obj.get("table") == self.table and obj.get("family") == self.fam:
                out.add(str(obj.get("name")))
        return out

    def chains(self) -> set[str]:
        """Names of every chain in our table (none when it does not exist)."""
        return self._names("chain")

    def sets(self) -> set[str]:
        """Names of every named set in our table (maps excluded)."""
        return self._names("set")

    def set_present(self, name: str) -> bool:
        """Whether our table holds the named set. Cheap at any table size (nft loads only that
        set), so it is the engine's periodic "is our table still there" check."""
        result = self.executor.run(["nft", "-j", "list", "set", self.fam, self.table, name], timeout=60.0)
        return result.ok

    def chain_rule_count(self, chain: str) -> int | None:
        """Rules in one chain of our table; None when the table or chain is missing. nft 1.0.x
        loads the whole table to list one chain (seconds at 10,000 services)."""
        result = self.executor.run(["nft", "-j", "list", "chain", self.fam, self.table, chain], timeout=60.0)
        if not result.ok:
            return None
        try:
            data = json.loads(result.stdout or "{}")
        except ValueError:
            return None
        return sum(1 for item in data.get("nftables") or [] if "rule" in item)

    # tamper detection --------------------------------------------------------------

    def generation(self) -> int:
        """The namespace's nf_tables ruleset generation: changes with any commit, read at a cost
        independent of the table's size."""
        from kubectl_proxyctl.system.generation import nft_generation

        return nft_generation(getattr(self.executor, "netns", None))

    def summary(self) -> "NftSummary | None":
        """Our table's chains with their rule counts and its sets and maps with their element
        counts; None when the table does not exist. Costs a whole-table listing."""
        result = self.executor.run(["nft", "-j", "list", "table", self.fam, self.table], timeout=300.0)
        if not result.ok:
            if "No such file" in result.stderr or "does not exist" in result.stderr:
                return None
            raise ProxyctlError(f"nft list table {self.fam} {self.table} failed: {result.stderr.strip()}")
        try:
            items = json.loads(result.stdout or "{}").get("nftables") or []
        except ValueError as exc:
            raise ProxyctlError(f"nft -j list table: unreadable output ({exc})") from exc
        out = NftSummary()
        for item in items:
            if "chain" in item:
                out.rules.setdefault(str(item["chain"].get("name")), 0)
            elif "rule" in item:
                chain = str(item["rule"].get("chain"))
                out.rules[chain] = out.rules.get(chain, 0) + 1
            else:
                for kind in ("set", "map"):
                    if kind in item:
                        out.elements[str(item[kind].get("name"))] = len(item[kind].get("elem") or ())
        return out

    def listing(self, table: str | None = None) -> str | None:
        """`nft list table` of our table (or `table`) in nft's text form, or None when the
        table does not exist. Cheaper than the JSON form (nft 1.0.6, 10,000 services: about
        two thirds of the time, a third of the size) and what people compare. Through
        libnftables when it can (see the module docstring)."""
        name = table or self.table
        command = ["list", "table", self.fam, name]
        library = _libnftables() if isinstance(self.executor, SubprocessExecutor) else None
        if library is None:
            result = self.executor.run(["nft", *command], timeout=300.0)
        else:
            result = call_in_netns(self.executor.netns, lambda: _run_in_library(library, " ".join(command)))
        if not result.ok:
            if "No such file" in result.stderr or "does not exist" in result.stderr:
                return None
            raise ProxyctlError(f"nft list table {self.fam} {name} failed: {result.stderr.strip()}")
        return result.stdout

    def list_table(self) -> str:
        """`nft -j list table` of our table (JSON text), for inspection tools and tests."""
        result = self.executor.run(["nft", "-j", "list", "table", self.fam, self.table], timeout=300.0)
        if not result.ok:
            raise ProxyctlError(f"nft list table {self.fam} {self.table} failed: {result.stderr.strip()}")
        return result.stdout

    def version(self) -> tuple[int, int, int] | None:
        result = self.executor.run(["nft", "--version"], timeout=30.0)
        match = _VERSION_RE.search(result.stdout + result.stderr)
        return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]

    def check_available(self) -> None:
        """Raise a ProxyctlError saying what is missing when nftables mode cannot work here."""
        version = self.version()  # a missing binary raises "nft not found: install nftables"
        if version is not None and version < MIN_VERSION:
            raise ProxyctlError(
                f"nftables mode needs nft >= {'.'.join(map(str, MIN_VERSION))}; this host has "
                f"{'.'.join(map(str, version))}")
        probe = f"add table {self.fam} {self.table}\n"
        result = self.executor.run(["nft", "-c", "-f", "-"], stdin=probe, timeout=30.0)
        if not result.ok:
            raise ProxyctlError(f"the kernel refused an nftables table ({result.stderr.strip() or 'no reason given'}); "
                                "nftables mode needs nf_tables support (kernel >= 5.13)")


_library: list[ctypes.CDLL | None] = []  # loaded once: [the library] or [None] when it is missing


def _libnftables() -> ctypes.CDLL | None:
    """libnftables with the prototypes `_run_in_library` uses, or None without it."""
    if not _library:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            lib = None
        if lib is not None:
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            for getter in (lib.nft_ctx_get_output_buffer, lib.nft_ctx_get_error_buffer):
                getter.restype = ctypes.c_char_p
                getter.argtypes = [ctypes.c_void_p]
        _library.append(lib)
    return _library[0]


def _run_in_library(lib: ctypes.CDLL, command: str) -> Result:
    """One nft command through libnftables, in the calling thread's network namespace, its
    output and errors collected in memory; as `nft COMMAND` would have ended."""
    ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
    if not ctx:
        return Result(1, "", "libnftables: cannot create a context")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        code = lib.nft_run_cmd_from_buffer(ctx, command.encode())
        out = lib.nft_ctx_get_output_buffer(ctx) or b""
        err = lib.nft_ctx_get_error_buffer(ctx) or b""
        return Result(1 if code else 0, out.decode(errors="replace"), err.decode(errors="replace"))
    finally:
        lib.nft_ctx_free(ctx)
