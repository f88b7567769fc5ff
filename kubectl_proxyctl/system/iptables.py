"""The iptables adapter: the only code that runs iptables, iptables-save and iptables-restore.

Theory of operation
-------------------
**Backends.** Debian ships two iptables implementations with the same command line:
`iptables-nft*` (rules live in nf_tables tables named `filter`, `nat`, ...) and
`iptables-legacy*` (the old x_tables). Rules written with one are invisible to the other's
`-save`, and a host where kubelet writes one and the proxy the other has broken Services.
`detect_backend` decides like kube-proxy's iptables-wrapper: it saves the tables of both
backends and prefers the one where kubelet created its hint chain (KUBE-IPTABLES-HINT or
KUBE-KUBELET-CANARY), else the one that holds KUBE- chains; when neither or both do, the
one with more rules; on a tie, the backend of the `iptables` alternative (`iptables -V`
says `(nf_tables)` or `(legacy)`). Plain `iptables-legacy-save` lists only tables that
already exist in the namespace, so detection never instantiates legacy tables. When *both* backends hold KUBE- chains the detection carries
a warning string for the user. `IptablesSystem` then uses one binary set throughout, e.g.
`iptables-nft`, `iptables-nft-save`, `iptables-nft-restore` (`ip6tables-*` for IPv6).

**Applying rules.** `restore(payload)` runs `iptables-restore -w 5 --noflush` with the
payload on stdin. Under `--noflush` a chain line `:NAME - [0:0]` creates or flushes that
chain, `-X NAME` deletes it, and chains the payload does not name are left alone. Flags
as verified with iptables 1.8.9 on both backends: `-w 5` (wait for the xtables lock,
which is one file shared by all namespaces), `--noflush`, `--counters` and `--test` are
accepted; `-W` (`--wait-interval`) is accepted by the nft backend but deprecated and
ignored with a warning by the legacy one, so it is not passed.

Atomicity, verified on this kernel with both backends: every `*table ... COMMIT` block is
applied all-or-nothing (a failing rule leaves that table exactly as it was), and the
blocks are committed one after the other in payload order. So when a later block fails,
the earlier blocks of the same payload are already in place. The ApplyError says which
ones (`committed`), so the caller knows that a full resync is needed. Errors are reported
as `Error occurred at line: N` (parse errors; nft reports a missing jump target on the
table's COMMIT line), `line N: RULE_APPEND failed (...)` (nft kernel errors) or `line N
failed` (legacy kernel errors, on the COMMIT line). The ApplyError names that line and
shows three lines either side of it, like kube-proxy's `ExtractLines`.

**Streaming.** `restore_chunks(chunks)` is `restore` of a payload that is still being
produced: iptables-restore starts at once and every chunk goes into its stdin (a pipe
widened to 1 MiB) as soon as it exists, so the process parses the first lines while the
caller renders the later ones. It acts on each `*table ... COMMIT` block as it reads it:
the xtables lock is taken at `*table` and released after COMMIT, so nothing that needs the
lock (`iptables -C`) may run while a block is open. When the process fails it stops
reading; the remaining chunks are still taken (not written) so the ApplyError quotes the
whole payload. When producing a chunk raises, the process is killed before it can commit
the open block; if an earlier block's COMMIT went out, the error is an ApplyError naming
those tables (the caller's cue to restore its last good payload), otherwise the exception
itself.

`test(payload)` is `iptables-restore --test`: it parses and builds every rule without
committing. It catches syntax errors and unknown matches; the nft backend does not check
that jump targets exist, and neither backend can see errors only the kernel reports (a
DNAT target in the filter table).

**Jump rules.** `ensure_jumps` reads the built-in chains involved once: with the nft
backend one `iptables -S CHAIN` each (it fetches only that chain: ~5 ms, against ~350 ms
for `iptables-save -t nat` with 14,000 rules), with legacy one `iptables-save -t TABLE`
per table (legacy always fetches whole tables). It compares the rules as token lists,
confirms any apparent absence with `iptables -C` (iptables normalises some spellings),
and inserts everything still missing in one `--noflush` restore with `-I CHAIN POS`
lines, in the given order: the same final order as one `iptables -I` per rule. Target chains that do
not exist yet (names with a dash or lower-case letters, so never REJECT or MASQUERADE)
are created empty in the same restore. Steady state: those reads, nothing written; for
kube-proxy's 14 jump rules and a 14,000-rule nat table ~35 ms (nft) and ~60 ms (legacy),
where 14 `iptables -C` calls take ~75 ms and ~110 ms.

**One save per full sync.** The iptables writer reads the tables once per full sync
(`iptables-save` without `-t`: every table that exists, nothing instantiated) and takes from
that one text the stale service chains, the jump rules missing from the built-in chains
and the missing canaries (`scan_save`, `repair_lines`); what is missing goes into the
sync's own restore payload, so a full sync is one save and one restore. A jump rule counts
as missing only when no rule of its built-in chain jumps to its target (no other spelling of
it can exist then); a rule with the same target spelled differently is confirmed with one
`iptables -C`, as `ensure_jumps` does.

**Clean-up.** `cleanup()` reads one `iptables-save` and builds one restore payload: every
rule outside our chains that jumps (`-j`/`-g`) into a chain with one of the prefixes is
deleted with `-D` (the saved rule text is valid `-D` input), and every prefixed chain is
flushed and deleted with `-X`. Built-in chains are never declared, so their policies and
all other rules and chains stay exactly as they were.

**Canaries.** `KUBE-PROXY-CANARY`, an empty chain in mangle, nat and filter. When
something flushes the tables by hand, the canary disappears with them: the engine polls
`canaries_present()` and, when it is false, re-creates them and forces a full sync.

This module parses `iptables-save` only as far as it needs to (`parse_save`: chains and
rule lines per table); the inspector's rule parser lives in `kubectl_proxyctl.modes.iptables.parse`.
"""

from __future__ import annotations

import enum
import fcntl
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, Mapping, Sequence

from kubectl_proxyctl.errors import ApplyError, ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.system.executor import (
    DEFAULT_TIMEOUT,
    Executor,
    Result,
    SubprocessExecutor,
    netns_path,
    require_binary,
)

LOCK_WAIT_SECONDS = 5
CANARY_CHAIN = "KUBE-PROXY-CANARY"
HINT_CHAINS = frozenset({"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"})  # kubelet's, in mangle
CANARY_TABLES: tuple[str, ...] = ("mangle", "nat", "filter")
CLEANUP_TABLES: tuple[str, ...] = ("filter", "nat", "mangle")
CONTEXT_LINES = 3

_LINE_RE = re.compile(r"\bline:? (\d+)")
_TOKEN_RE = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_UNESCAPE_RE = re.compile(r"\\(.)")
_VERSION_RE = re.compile(r"^\S+ v\d[\w.]* \([^)]*\): ?")  # "iptables-nft-restore v1.8.9 (nf_tables): "
# stderr lines that carry no information about the failure itself.
_NOISE = (
    "Try `",
    "Error occurred at line",
    "# Warning: iptables-legacy tables present",
    "Ignoring deprecated --wait-interval",
)


class Backend(str, enum.Enum):
    NFT = "nft"
    LEGACY = "legacy"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Binaries:
    """The three commands of one family and backend."""

    iptables: str
    save: str
    restore: str

    @classmethod
    def of(cls, family: IPFamily, backend: Backend) -> Binaries:
        base = f"{_command_prefix(family)}-{backend.value}"
        return cls(base, f"{base}-save", f"{base}-restore")


@dataclass(frozen=True)
class BackendDetection:
    """Which backend to use and why. Counts are None for a backend whose tools are missing."""

    backend: Backend
    reason: str
    warning: str | None = None
    kube_chains: Mapping[Backend, int | None] = field(default_factory=dict)
    rules: Mapping[Backend, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedRule:
    chain: str
    line: str  # `-A CHAIN ...` exactly as iptables-save printed it
    target: str | None  # the -j/-g target, if any


@dataclass
class SavedTable:
    name: str
    chains: dict[str, str] = field(default_factory=dict)  # name → policy ("-" for user chains)
    rules: list[SavedRule] = field(default_factory=list)

    def user_chains(self) -> list[str]:
        return [name for name, policy in self.chains.items() if policy == "-"]


@dataclass(frozen=True)
class Jump:
    """A rule in `table`/`chain` (usually a built-in chain), as iptables argv after the chain."""

    table: str
    chain: str
    args: tuple[str, ...]
    position: int = 1

    @property
    def target(self) -> str | None:
        return _target_of(list(self.args))


@dataclass(frozen=True)
class CleanupResult:
    chains: tuple[tuple[str, str], ...] = ()  # (table, chain) deleted
    rules: tuple[tuple[str, str], ...] = ()  # (table, `-A ...` line) deleted

    def __bool__(self) -> bool:
        return bool(self.chains or self.rules)


# --- helpers ---------------------------------------------------------------------------


def _command_prefix(family: IPFamily) -> str:
    return "ip6tables" if family == IPFamily.IPv6 else "iptables"


def _tokens(line: str) -> list[str]:
    """Split a rule line the way iptables-restore does (double quotes, backslash escapes)."""
    if '"' not in line:
        return line.split()
    return [bare or _UNESCAPE_RE.sub(r"\1", quoted) for quoted, bare in _TOKEN_RE.findall(line)]


def _target_of(tokens: Sequence[str]) -> str | None:
    for i, tok in enumerate(tokens[:-1]):
        if tok in ("-j", "--jump", "-g", "--goto"):
            return tokens[i + 1]
    return None


def quote_arg(arg: str) -> str:
    """One argv element as iptables-restore reads it (double quotes when needed)."""
    if arg and not any(c.isspace() or c in "\"'\\#" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_save(text: str) -> dict[str, SavedTable]:
    """Tables → chains (with policies) and rule lines, from `iptables-save` output."""
    tables: dict[str, SavedTable] = {}
    current: SavedTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], SavedTable(line[1:]))
        elif current is None:
            continue
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            current.chains[name] = rest.split(" ", 1)[0] or "-"
        elif line.startswith("-A "):
            tokens = _tokens(line)
            current.rules.append(SavedRule(tokens[1], line, _target_of(tokens)))
        elif line == "COMMIT":
            current = None
    return tables


@dataclass
class RulesSummary:
    """(table, chain) → number of rules, and (table, built-in chain) → the targets it jumps to."""

    rules: dict[tuple[str, str], int] = field(default_factory=dict)
    builtin_targets: dict[tuple[str, str], set[str]] = field(default_factory=dict)


def summarize_save(text: str, out: RulesSummary | None = None) -> RulesSummary:
    """Count `iptables-save` output's rules per chain (cheap at 200,000 rules: no tokenizing
    except for the rules of built-in chains)."""
    out = out if out is not None else RulesSummary()
    table = ""
    counts = out.rules
    for line in text.splitlines():
        if line.startswith("-A "):
            chain = line[3:].split(" ", 1)[0]
            key = (table, chain)
            counts[key] = counts.get(key, 0) + 1
            if not names_chain(chain):  # a built-in chain: remember where it jumps
                target = _target_of(_tokens(line))
                if target:
                    out.builtin_targets.setdefault(key, set()).add(target)
        elif line.startswith(":"):
            counts.setdefault((table, line[1:].split(" ", 1)[0]), 0)
        elif line.startswith("*"):
            table = line[1:].strip()
    return out


BUILTIN_CHAIN_NAMES: tuple[str, ...] = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
_CHAIN_DECL_RE = re.compile(r"\n:([^ \n]+)")  # starts with a literal: the regex engine skips ahead fast


@dataclass
class SavedChains:
    """What one `iptables-save` shows that a full sync needs: the chains of every table, and
    the rules of the built-in chains as token tuples (after `-A CHAIN`)."""

    chains: dict[str, set[str]] = field(default_factory=dict)
    builtin_rules: dict[tuple[str, str], list[tuple[str, ...]]] = field(default_factory=dict)


def scan_save(text: str) -> SavedChains:
    """Scan `iptables-save` output for chain names and the rules of built-in chains. Cheap at
    200,000 rules: it jumps from one `:` or built-in `-A` line to the next (a regular
    expression with a literal start, `str.find`), never splitting the rules of other chains
    into lines."""
    out = SavedChains()
    body = "\n" + text
    heads = []
    at = body.find("\n*")
    while at >= 0:
        heads.append(at)
        at = body.find("\n*", at + 2)
    heads.append(len(body))
    for start, stop in zip(heads, heads[1:]):
        eol = body.find("\n", start + 1)
        table = body[start + 2:eol if 0 <= eol < stop else stop].strip()
        out.chains.setdefault(table, set()).update(_CHAIN_DECL_RE.findall(body, start, stop))
        for chain in BUILTIN_CHAIN_NAMES:
            head = f"\n-A {chain} "
            at = body.find(head, start, stop)
            while at >= 0:
                end = body.find("\n", at + 1, stop)
                line = body[at + 1:end if end >= 0 else stop]
                out.builtin_rules.setdefault((table, chain), []).append(tuple(_tokens(line)[2:]))
                at = body.find(head, at + 1, stop)
    return out


def repair_lines(saved: SavedChains, jumps: Iterable[Jump], canary_tables: Sequence[str] = CANARY_TABLES,
                 declared: Mapping[str, Iterable[str]] | None = None,
                 confirm: Callable[[Jump], bool] | None = None) -> dict[str, list[str]]:
    """Table → the restore lines that put back what `saved` lacks: the missing jump rules
    (`-I CHAIN POS ...`, in the given order, so the final order is that of one `iptables -I`
    per rule), the target chains they need that neither exist nor are `declared` by the
    payload they join, and the missing canary chains. `confirm(jump)` (`iptables -C`) is asked
    only about a rule whose chain jumps to the same target with a different spelling."""
    wanted: list[Jump] = []
    for jump in jumps:
        if all((j.table, j.chain, j.args) != (jump.table, jump.chain, jump.args) for j in wanted):
            wanted.append(jump)
    known = {t: set(names) for t, names in (declared or {}).items()}

    def absent(j: Jump) -> bool:
        rules = saved.builtin_rules.get((j.table, j.chain), [])
        if j.args in rules:
            return False
        if all(_target_of(r) != j.target for r in rules) or confirm is None:
            return True
        return not confirm(j)

    lines: dict[str, list[str]] = {}
    for table in canary_tables:
        if CANARY_CHAIN not in saved.chains.get(table, ()):
            lines.setdefault(table, []).append(f":{CANARY_CHAIN} - [0:0]")
    missing = [j for j in wanted if absent(j)]
    for j in missing:
        target = j.target
        exists = target in saved.chains.get(j.table, ()) or target in known.get(j.table, ())
        if target and names_chain(target) and not exists:
            lines.setdefault(j.table, []).append(f":{target} - [0:0]")
            known.setdefault(j.table, set()).add(target)
    for j in missing:
        lines.setdefault(j.table, []).append(f"-I {j.chain} {j.position} " + " ".join(quote_arg(a) for a in j.args))
    return lines


def extract_lines(payload: str, line: int, count: int = CONTEXT_LINES) -> list[tuple[int, str]]:
    """(number, text) for lines `line-count` … `line+count` of payload (1-based)."""
    lines = payload.splitlines()
    start, end = max(1, line - count), min(len(lines), line + count)
    return [(n, lines[n - 1]) for n in range(start, end + 1)]


def _committed_before(payload: str, line: int) -> list[str]:
    """Tables whose COMMIT line comes before `line`: iptables-restore applied them."""
    done: list[str] = []
    table = ""
    for n, text in enumerate(payload.splitlines(), start=1):
        if n >= line:
            break
        text = text.strip()
        if text.startswith("*"):
            table = text[1:]
        elif text == "COMMIT" and table:
            done.append(table)
    return done


def _table_at(payload: str, line: int) -> str | None:
    table = None
    for text in payload.splitlines()[:line]:
        if text.startswith("*"):
            table = text[1:].strip()
    return table


def _reason(stderr: str) -> str:
    keep = [_VERSION_RE.sub("", ln.strip()) for ln in stderr.splitlines() if not ln.strip().startswith(_NOISE)]
    return "; ".join(ln for ln in keep if ln) or "no error message"


def restore_error(binary: str, payload: str, result: Result, testing: bool = False) -> ApplyError:
    """An ApplyError naming the failing line, with the lines around it."""
    reason = _reason(result.stderr)
    match = _LINE_RE.search(result.stderr)
    if match is None:
        return ApplyError(f"{binary} failed (exit status {result.returncode}): {reason}", script=payload)
    line = int(match.group(1))
    table = _table_at(payload, line)
    head = f"{binary} failed at line {line}" + (f" (table {table})" if table else "") + f": {reason}"
    context = [f"{'>' if n == line else ' '} {n:5d}: {text}" for n, text in extract_lines(payload, line)]
    committed = [] if testing else _committed_before(payload, line)
    tail = [f"tables already committed by this restore: {', '.join(committed)}"] if committed else []
    return ApplyError("\n".join([head, *context, *tail]), script=payload, line=line)


def _table_block(table: str, lines: Iterable[str]) -> list[str]:
    body = list(lines)
    return [f"*{table}", *body, "COMMIT"] if body else []


# --- streaming into iptables-restore ----------------------------------------------------

PIPE_BYTES = 1 << 20  # room for the producer to run ahead of iptables-restore


def _command_line(netns: str | None, argv: Sequence[str]) -> list[str]:
    """`argv` as `SubprocessExecutor(netns).run` would run it."""
    full = [require_binary(argv[0]), *argv[1:]]
    if netns is None:
        return full
    path = netns_path(netns)
    if not os.path.exists(path):
        raise ProxyctlError(f"network namespace {netns} does not exist ({path})")
    return [require_binary("nsenter"), f"--net={path}", "--", *full]


def _widen(pipe: IO[bytes]) -> None:
    """Give the pipe PIPE_BYTES, so that a producer briefly off the CPU does not leave the
    reader idle (the default 64 KiB is a few milliseconds of iptables-restore's work)."""
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default size still works


def _feed(stdin: IO[bytes], chunks: Iterable[str], taken: list[str]) -> None:
    """Write every chunk to `stdin`, then close it. Once the process stopped reading (it
    failed), the chunks are still taken, so that its error can quote the whole payload."""
    reading = True
    for chunk in chunks:
        taken.append(chunk)
        if reading:
            try:
                stdin.write(chunk.encode())
                stdin.flush()  # a COMMIT must not wait in the buffer for the next chunk
            except BrokenPipeError:
                reading = False
    try:
        stdin.close()
    except BrokenPipeError:
        pass


def _run_streaming(netns: str | None, argv: Sequence[str], chunks: Iterable[str],
                   timeout: float = DEFAULT_TIMEOUT) -> tuple[Result, list[str]]:
    """Run `argv` with the chunks on its stdin as they are produced: (its Result, the
    chunks, joined only when an error quotes them). Killed after `timeout` seconds, like
    `SubprocessExecutor.run`."""
    taken: list[str] = []
    expired = threading.Event()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(_command_line(netns, argv), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err)
        except OSError as exc:
            raise ProxyctlError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        assert proc.stdin is not None
        _widen(proc.stdin)
        watchdog = threading.Timer(timeout, lambda: (expired.set(), proc.kill()))
        watchdog.start()
        try:
            _feed(proc.stdin, chunks, taken)
            proc.wait()
        except BaseException as exc:
            proc.kill()
            proc.wait()
            _raise_if_committed(argv[0], "".join(taken), exc)
            raise
        finally:
            watchdog.cancel()
        if expired.is_set():
            raise ProxyctlError(f"{argv[0]} timed out after {timeout:g} s")
        err.seek(0)
        return Result(proc.returncode, "", err.read().decode(errors="replace")), taken


def _raise_if_committed(binary: str, sent: str, exc: BaseException) -> None:
    """Producing the payload failed midway: when a block sent before may have been committed,
    an ApplyError naming its tables (the caller's cue to put its last good rules back)."""
    committed = _committed_before(sent, sent.count("\n") + 1)
    if committed and isinstance(exc, Exception):
        raise ApplyError(f"{binary} stopped: producing its input failed ({exc}); "
                         f"tables already committed by this restore: {', '.join(committed)}", script=sent) from exc


# --- backend detection -----------------------------------------------------------------


def default_backend(executor: Executor, family: IPFamily = IPFamily.IPv4) -> Backend:
    """The backend of the plain `iptables` command (the Debian alternative)."""
    try:
        result = executor.run([_command_prefix(family), "-V"], timeout=10)
    except ProxyctlError:
        return Backend.NFT
    return Backend.LEGACY if "(legacy)" in result.stdout + result.stderr else Backend.NFT


def _count_save(text: str) -> tuple[int, int, bool]:
    """(KUBE- chains, rules, holds one of kubelet's hint chains) of iptables-save output."""
    kube = rules = 0
    hint = False
    for line in text.splitlines():
        if line.startswith(":KUBE-"):
            kube += 1
            hint = hint or line[1:].split(" ", 1)[0] in HINT_CHAINS
        elif line.startswith("-A "):
            rules += 1
    return kube, rules, hint


def detect_backend(executor: Executor, family: IPFamily = IPFamily.IPv4) -> BackendDetection:
    """Choose nft or legacy like iptables-wrapper; warn when both hold KUBE- chains.

    In order: the backend where kubelet left its hint chain (KUBE-IPTABLES-HINT or
    KUBE-KUBELET-CANARY), when only one has it; the one backend holding KUBE- chains; the
    backend with more rules; the backend of the `iptables` command."""
    kube: dict[Backend, int | None] = {}
    rules: dict[Backend, int | None] = {}
    hints: set[Backend] = set()
    for backend in Backend:
        try:
            result = executor.run([Binaries.of(family, backend).save], timeout=30)
        except ProxyctlError:
            result = Result(127)
        if not result.ok:
            kube[backend] = rules[backend] = None
            continue
        kube[backend], rules[backend], hint = _count_save(result.stdout)
        if hint:
            hints.add(backend)
    nft_kube, legacy_kube = kube[Backend.NFT] or 0, kube[Backend.LEGACY] or 0
    nft_rules, legacy_rules = rules[Backend.NFT] or 0, rules[Backend.LEGACY] or 0
    warning = None
    if nft_kube and legacy_kube:
        warning = (
            f"both iptables backends hold KUBE- chains (nft: {nft_kube}, legacy: {legacy_kube}); "
            "rules in the backend not in use still match packets and commonly break Services: "
            "remove the stale set (iptables-nft-save / iptables-legacy-save show them)"
        )
    if len(hints) == 1:
        backend = next(iter(hints))
        reason = f"kubelet's hint chain is in the {backend} backend"
    elif bool(nft_kube) != bool(legacy_kube):
        backend = Backend.NFT if nft_kube else Backend.LEGACY
        reason = f"only the {backend} backend holds KUBE- chains"
    elif nft_rules != legacy_rules:
        backend = Backend.NFT if nft_rules > legacy_rules else Backend.LEGACY
        reason = f"the {backend} backend holds more rules (nft: {nft_rules}, legacy: {legacy_rules})"
    else:
        backend = default_backend(executor, family)
        reason = f"no rules tell the backends apart; `{_command_prefix(family)}` is {backend}"
    return BackendDetection(backend, reason, warning, kube, rules)


# --- the adapter -----------------------------------------------------------------------


class IptablesSystem:
    """iptables for one IP family, on one backend (detected unless given)."""

    def __init__(
        self,
        family: IPFamily = IPFamily.IPv4,
        executor: Executor | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.family = family
        self.executor: Executor = executor if executor is not None else SubprocessExecutor()
        self._backend = backend
        self._detection: BackendDetection | None = None
        self._random_fully: bool | None = None

    def __repr__(self) -> str:
        return f"IptablesSystem({self.family}, backend={self._backend}, executor={self.executor!r})"

    # backend -----------------------------------------------------------------------

    def detect(self) -> BackendDetection:
        """Run backend detection now (also when a backend was given) and remember it."""
        self._detection = detect_backend(self.executor, self.family)
        return self._detection

    @property
    def detection(self) -> BackendDetection | None:
        return self._detection

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = (self._detection or self.detect()).backend
        return self._backend

    @property
    def binaries(self) -> Binaries:
        return Binaries.of(self.family, self.backend)

    @property
    def warning(self) -> str | None:
        return self._detection.warning if self._detection else None

    # raw commands ------------------------------------------------------------------

    def _iptables(self, *args: str) -> Result:
        return self.executor.run([self.binaries.iptables, "-w", str(LOCK_WAIT_SECONDS), *args], timeout=30)

    def _restore_argv(self, noflush: bool, counters: bool) -> list[str]:
        argv = [self.binaries.restore, "-w", str(LOCK_WAIT_SECONDS)]
        argv += ["--noflush"] if noflush else []
        argv += ["--counters"] if counters else []
        return argv

    def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None:
        """Apply `payload` with one iptables-restore; ApplyError (with the line) on failure."""
        result = self.executor.run(self._restore_argv(noflush, counters), stdin=payload)
        if not result.ok:
            raise restore_error(self.binaries.restore, payload, result)

    def restore_chunks(self, chunks: Iterable[str], noflush: bool = True) -> None:
        """`restore` of the concatenated `chunks`, each written to iptables-restore as soon
        as it is produced (see Streaming above). An executor that runs no real process (a
        FakeExecutor) gets the payload whole, as from `restore`."""
        if not isinstance(self.executor, SubprocessExecutor):
            self.restore("".join(chunks), noflush)
            return
        result, taken = _run_streaming(self.executor.netns, self._restore_argv(noflush, False), chunks)
        if not result.ok:
            raise restore_error(self.binaries.restore, "".join(taken), result)

    def test(self, payload: str, noflush: bool = True) -> None:
        """`iptables-restore --test`: parse and build every rule, commit nothing."""
        argv = [self.binaries.restore, "-w", str(LOCK_WAIT_SECONDS), "--test"]
        argv += ["--noflush"] if noflush else []
        result = self.executor.run(argv, stdin=payload)
        if not result.ok:
            raise restore_error(self.binaries.restore, payload, result, testing=True)

    def save(self, table: str | None = None) -> str:
        """`iptables-save [-t TABLE]` output."""
        argv = [self.binaries.save] + (["-t", table] if table else [])
        result = self.executor.run(argv)
        if not result.ok:
            raise ProxyctlError(f"{' '.join(argv)} failed: {_reason(result.stderr)}")
        return result.stdout

    def tables(self, table: str | None = None) -> dict[str, SavedTable]:
        return parse_save(self.save(table))

    def list_rules(self, table: str, chain: str) -> list[str] | None:
        """The chain's rules as `-A CHAIN ...` lines, or None when the chain does not exist."""
        result = self._iptables("-t", table, "-S", chain)
        if not result.ok:
            return None
        return [ln for ln in result.stdout.splitlines() if ln.startswith("-A ")]

    def chain_exists(self, table: str, chain: str) -> bool:
        return self._iptables("-t", table, "-S", chain).ok

    def rule_exists(self, table: str, chain: str, args: Sequence[str]) -> bool:
        """`iptables -C`: does the kernel hold this rule (after normalisation)?"""
        return self._iptables("-t", table, "-C", chain, *args).ok

    # jump rules --------------------------------------------------------------------

    def _present_rules(
        self, chains: Iterable[tuple[str, str]], saved_chains: dict[str, set[str]] | None = None
    ) -> dict[tuple[str, str], set[tuple[str, ...]]]:
        """(table, chain) → its rules as token tuples (after `-A CHAIN`). The nft backend
        lists single chains cheaply; legacy always reads a whole table, so one save per table
        (whose chain names go into `saved_chains`, when given)."""
        present: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        wanted = list(chains)
        if self.backend == Backend.LEGACY:
            for table in dict.fromkeys(t for t, _ in wanted):
                lines = self.save(table).splitlines()
                if saved_chains is not None:
                    saved_chains[table] = {ln[1:].split(" ", 1)[0] for ln in lines if ln.startswith(":")}
                for t, chain in wanted:
                    if t == table:
                        head = f"-A {chain} "
                        present[(t, chain)] = {tuple(_tokens(ln)[2:]) for ln in lines if ln.startswith(head)}
        else:
            for table, chain in wanted:
                present[(table, chain)] = {tuple(_tokens(ln)[2:]) for ln in self.list_rules(table, chain) or []}
        return present

    def ensure_jump(self, table: str, chain: str, rule_args: Sequence[str], position: int = 1) -> bool:
        """Insert the rule at `position` unless present; True when it was inserted."""
        return bool(self.ensure_jumps([Jump(table, chain, tuple(rule_args), position)]))

    def ensure_jumps(self, jumps: Iterable[Jump]) -> list[Jump]:
        """Make every rule present exactly once; returns those inserted (in one restore)."""
        wanted: list[Jump] = []
        for jump in jumps:
            if all((j.table, j.chain, j.args) != (jump.table, jump.chain, jump.args) for j in wanted):
                wanted.append(jump)
        saved_chains: dict[str, set[str]] = {}  # legacy: the chains of each table read whole
        present = self._present_rules(dict.fromkeys((j.table, j.chain) for j in wanted), saved_chains)

        def absent(j: Jump) -> bool:
            rules = present[(j.table, j.chain)]
            if j.args in rules:
                return False
            if self.backend == Backend.LEGACY and all(_target_of(r) != j.target for r in rules):
                # A whole-table save listed nothing that jumps there, so no other spelling of
                # the rule either; with legacy each -C reloads the whole table (~1 s for a
                # 200,000-rule nat table), so do not ask.
                return True
            return not self.rule_exists(j.table, j.chain, j.args)  # spelled differently?

        missing = [j for j in wanted if absent(j)]
        if not missing:
            return []
        new_chains: dict[str, list[str]] = {}
        for table, target in dict.fromkeys((j.table, j.target) for j in missing):
            if not (target and names_chain(target)):
                continue
            known = saved_chains.get(table)  # legacy: -S would read the whole table again
            if (target not in known) if known is not None else not self.chain_exists(table, target):
                new_chains.setdefault(table, []).append(f":{target} - [0:0]")
        payload: list[str] = []
        for table in dict.fromkeys(j.table for j in missing):
            inserts = [
                f"-I {j.chain} {j.position} " + " ".join(quote_arg(a) for a in j.args)
                for j in missing
                if j.table == table
            ]
            payload += _table_block(table, [*new_chains.get(table, []), *inserts])
        self.restore("\n".join(payload) + "\n")
        return missing

    # chains ------------------------------------------------------------------------

    def delete_chains(self, table: str, chains: Iterable[str]) -> None:
        """Flush and delete the chains in one restore (chains still referenced: ApplyError)."""
        names = list(dict.fromkeys(chains))
        if not names:
            return
        lines = [f":{c} - [0:0]" for c in names] + [f"-X {c}" for c in names]
        self.restore("\n".join(_table_block(table, lines)) + "\n")

    def ensure_canaries(self, tables: Sequence[str] = CANARY_TABLES) -> None:
        payload: list[str] = []
        for table in tables:
            payload += _table_block(table, [f":{CANARY_CHAIN} - [0:0]"])
        self.restore("\n".join(payload) + "\n")

    # tamper detection --------------------------------------------------------------

    def fingerprint(self) -> tuple[object, ...]:
        """A token that changes with any change of the rules, read at a cost independent of
        their number (legacy: each table's entry count and size; nft: the ruleset generation)."""
        from kubectl_proxyctl.system.generation import nft_generation, xtables_info

        netns = getattr(self.executor, "netns", None)
        if self.backend == Backend.LEGACY:
            return tuple(xtables_info(table, self.family, netns) for table in CANARY_TABLES)
        return ("nf_tables", nft_generation(netns))

    def summary(self, tables: Sequence[str] = CANARY_TABLES) -> "RulesSummary":
        """The chains of the tables with their rule counts, and the targets the built-in chains
        jump to: one save of each table, scanned without parsing every rule."""
        out = RulesSummary()
        for table in tables:
            summarize_save(self.save(table), out)
        return out

    def missing_canaries(self, tables: Sequence[str] = CANARY_TABLES) -> list[str]:
        return [t for t in tables if not self.chain_exists(t, CANARY_CHAIN)]

    def canaries_present(self, tables: Sequence[str] = CANARY_TABLES) -> bool:
        return not self.missing_canaries(tables)

    def cleanup(
        self,
        prefixes: Sequence[str] = ("KUBE-",),
        tables: Sequence[str] = CLEANUP_TABLES,
    ) -> CleanupResult:
        """Remove every chain named with one of `prefixes` and every rule jumping into one,
        in one restore; all other chains, rules and policies stay untouched."""
        saved = parse_save(self.save())
        prefix_tuple = tuple(prefixes)
        payload: list[str] = []
        chains: list[tuple[str, str]] = []
        rules: list[tuple[str, str]] = []
        for name in tables:
            table = saved.get(name)
            if table is None:
                continue
            ours = [c for c in table.user_chains() if c.startswith(prefix_tuple)]
            refs = [
                r
                for r in table.rules
                if not r.chain.startswith(prefix_tuple) and r.target is not None and r.target in ours
            ]
            lines = [f":{c} - [0:0]" for c in ours]
            lines += ["-D " + r.line[3:] for r in refs]
            lines += [f"-X {c}" for c in ours]
            payload += _table_block(name, lines)
            chains += [(name, c) for c in ours]
            rules += [(name, r.line) for r in refs]
        if payload:
            self.restore("\n".join(payload) + "\n")
        return CleanupResult(tuple(chains), tuple(rules))

    # features ----------------------------------------------------------------------

    def supports_random_fully(self) -> bool:
        """Whether MASQUERADE takes `--random-fully` (iptables ≥ 1.6.2)."""
        if self._random_fully is None:
            result = self.executor.run([self.binaries.iptables, "-j", "MASQUERADE", "--help"], timeout=10)
            self._random_fully = "--random-fully" in result.stdout
        return self._random_fully



def names_chain(target: str) -> bool:
    """Whether a jump target is a chain rather than a built-in verdict or target extension.
    Those (ACCEPT, REJECT, MASQUERADE, CT, ...) are one upper-case word; chains such as
    KUBE-SERVICES carry a dash or lower-case letters."""
    return "-" in target or not target.isupper()
