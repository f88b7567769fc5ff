"""Stateful, strict fakes of the system adapters and small object builders shared by the unit tests.

A fake keeps what it was given (payloads, scripts) and a model of the kernel state the real
tool would leave behind, so a test can read its state; and it refuses what the real tool
refuses, so a unit test cannot pass on a payload the kernel would reject. `fail_next`
makes the next write fail the way the real tool reports it.

* `FakeIptables.restore` is `iptables-restore [--noflush]`: the payload is parsed with our
  own parser (`modes.iptables.parse`) and applied line by line to a model of the tables,
  each `*table ... COMMIT` block all-or-nothing and committed in payload order, like
  both iptables backends do. What it rejects (each checked against iptables 1.8.9, legacy
  and nft backends, in tests/test_fakes.py): a block without COMMIT, an unknown table, a
  line our parser cannot parse, a chain declared without a policy or a policy on a user
  chain, a chain name over 28 characters, a rule (-A/-I/-D/-F) for a chain that does not
  exist, `-N` of an existing chain, `-X` of a built-in, missing, non-empty or still
  referenced chain, `-P` on a user chain, a jump to a chain that does not exist and is no
  known target, a jump to a built-in chain, `-g` to anything but a user chain, an unknown
  `-m` module, `--dport`/`--sport` without a protocol match, a target used outside its
  table (DNAT/SNAT/MASQUERADE/REDIRECT only in nat, REJECT only in filter, CT/NOTRACK only
  in raw, DROP not in nat), a NAT target with a port but no `-p tcp|udp|sctp|dccp`, and
  at COMMIT a NAT target reachable from a hook that does not allow it, or a loop reachable
  from a built-in chain.
* `FakeNft.run` is `nft -f -`: one atomic transaction over a model of the tables, chains
  (regular or base), sets, maps and their elements. It rejects a line that is not
  `add|create|insert|replace|flush|delete|destroy table|chain|rule|set|map|element`
  (or `flush ruleset`), anything in a table that does not exist, a rule for a missing
  chain, a jump/goto/vmap verdict to a missing chain or to a base chain, a `@set` that does
  not exist, `delete`/`flush` of a missing chain/set/table, deleting a chain still
  referenced (by a rule or a map element) or a set still used by a rule, re-adding a chain
  or set with another definition, deleting a missing element or re-adding an element with
  another verdict, and (as the kernel validates the chain graph) a NAT statement reachable
  from a base chain of the wrong type or hook, or a loop. A failed script changes nothing.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from kubectl_proxyctl.errors import ApplyError, RulesetParseError
from kubectl_proxyctl.modes.iptables.parse import (
    BUILTIN_CHAINS,
    STANDARD_TARGETS,
    Rule,
    parse,
    parse_rule_args,
    quote,
    split_line,
)

# --- iptables -------------------------------------------------------------------------------

# Target extensions iptables 1.8.9 ships (libxt_*, libipt_*, libip6t_* with an upper-case name).
EXTENSION_TARGETS = frozenset({
    "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DNAT", "DNPT", "DSCP",
    "ECN", "HL", "HMARK", "IDLETIMER", "LED", "LOG", "MARK", "MASQUERADE", "NETMAP", "NFLOG", "NFQUEUE",
    "NOTRACK", "RATEEST", "REDIRECT", "REJECT", "SECMARK", "SET", "SNAT", "SNPT", "SYNPROXY", "TCPMSS",
    "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG",
})
# Match extensions iptables 1.8.9 ships (what `-m NAME` can load).
MATCH_MODULES = frozenset({
    "addrtype", "ah", "bpf", "cgroup", "cluster", "comment", "connbytes", "connlabel", "connlimit",
    "connmark", "conntrack", "cpu", "dccp", "devgroup", "dscp", "dst", "ecn", "esp", "eui64", "frag",
    "hashlimit", "hbh", "helper", "hl", "icmp", "icmp6", "ipcomp", "iprange", "ipv6header", "ipvs",
    "length", "limit", "mac", "mark", "mh", "multiport", "nfacct", "osf", "owner", "physdev", "pkttype",
    "policy", "quota", "rateest", "realm", "recent", "rpfilter", "rt", "sctp", "set", "socket", "srh",
    "state", "statistic", "string", "tcp", "tcpmss", "time", "tos", "ttl", "u32", "udp", "udplite",
})
# Targets the kernel accepts only in some tables (xt_target.table), and DROP, which
# iptables itself refuses in nat.
TARGET_TABLES = {
    "DNAT": ("nat",), "SNAT": ("nat",), "MASQUERADE": ("nat",), "REDIRECT": ("nat",), "NETMAP": ("nat",),
    "REJECT": ("filter",), "CT": ("raw",), "NOTRACK": ("raw",), "TPROXY": ("mangle",),
    "DROP": ("filter", "mangle", "raw", "security"),
}
# ... and only from some hooks (xt_target.hooks): checked at COMMIT through the jump graph.
TARGET_HOOKS = {
    "DNAT": ("PREROUTING", "OUTPUT"), "REDIRECT": ("PREROUTING", "OUTPUT"),
    "SNAT": ("POSTROUTING", "INPUT"), "MASQUERADE": ("POSTROUTING",),
}
PORT_MODULES = frozenset({"tcp", "udp", "sctp", "dccp", "udplite"})
MAX_CHAIN_NAME = 28
CANARY_CHAIN = "KUBE-PROXY-CANARY"
CANARY_TABLES = ("mangle", "nat", "filter")


class _Refused(Exception):
    """One line refused; the restore turns it into an ApplyError naming that line."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


@dataclass
class IptChain:
    policy: str  # "-" for a user chain
    rules: list[Rule] = field(default_factory=list)

    @property
    def builtin(self) -> bool:
        return self.policy != "-"


def _new_table(name: str) -> dict[str, IptChain]:
    return {chain: IptChain("ACCEPT") for chain in BUILTIN_CHAINS[name]}


def _references(chains: dict[str, IptChain], target: str) -> int:
    return sum(1 for c in chains.values() for r in c.rules if r.target == target)


class FakeIptables:
    """A strict `iptables-restore`/`iptables-save` over a model of the tables (see the module
    docstring); `payloads` keeps every payload `restore` accepted, `fail_next` makes the next
    restore fail as a kernel error would, without touching the state."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.jumps: list[Any] = []
        self.fail_next = 0
        self.tables: dict[str, dict[str, IptChain]] = {}
        self.generation = 0  # bumped by every change of the tables (what fingerprint() shows)

    # --- the adapter's interface ---------------------------------------------------------

    def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ApplyError("iptables-restore: line 3 failed", script=payload, line=3)
        self._apply(payload, noflush)
        self.payloads.append(payload)

    def test(self, payload: str, noflush: bool = True) -> None:
        """`iptables-restore --test`: every check, nothing committed."""
        saved = copy.deepcopy(self.tables)
        try:
            self._apply(payload, noflush)
        finally:
            self.tables = saved

    def save(self, table: str | None = None) -> str:
        """`iptables-save [-t TABLE]` of the model (asking for a table instantiates it, as
        `iptables-save -t` does)."""
        if table is not None:
            if table not in BUILTIN_CHAINS:
                raise ApplyError(f"iptables-save: table '{table}' does not exist")
            self.tables.setdefault(table, _new_table(table))
        out: list[str] = []
        for name, chains in self.tables.items():
            if table is not None and name != table:
                continue
            out.append(f"*{name}")
            out += [f":{c} {chain.policy} [0:0]" for c, chain in chains.items()]
            out += [str(r) for chain in chains.values() for r in chain.rules]
            out.append("COMMIT")
        return "".join(line + "\n" for line in out)

    def ensure_jumps(self, jumps: Any) -> list[Any]:
        """Like IptablesSystem.ensure_jumps: each rule missing from its chain is inserted (its
        target chain created when missing) in one restore; returns those inserted."""
        self.jumps = list(jumps)
        missing: list[Any] = []
        for j in self.jumps:
            chain = self.tables.get(j.table, {}).get(j.chain)
            present = chain is not None and any(split_line(r.text) == list(j.args) for r in chain.rules)
            if not present and all((m.table, m.chain, tuple(m.args)) != (j.table, j.chain, tuple(j.args))
                                   for m in missing):
                missing.append(j)
        lines: dict[str, list[str]] = {}
        for j in missing:
            block = lines.setdefault(j.table, [])
            target = j.target
            if target and ("-" in target or not target.isupper()) and target not in self.tables.get(j.table, {}):
                declare = f":{target} - [0:0]"
                if declare not in block:
                    block.insert(0, declare)
            block.append(f"-I {j.chain} {getattr(j, 'position', 1)} " + " ".join(quote(a) for a in j.args))
        if lines:
            self._apply("".join(f"*{t}\n" + "".join(ln + "\n" for ln in body) + "COMMIT\n"
                                for t, body in lines.items()), noflush=True)
        return missing

    def rule_exists(self, table: str, chain: str, args: Sequence[str]) -> bool:
        """`iptables -C`: the rule is in the chain (compared as argv)."""
        rules = self.tables.get(table, {}).get(chain)
        return rules is not None and any(split_line(r.text) == list(args) for r in rules.rules)

    def ensure_canaries(self) -> None:
        self._apply("".join(f"*{t}\n:{CANARY_CHAIN} - [0:0]\nCOMMIT\n" for t in CANARY_TABLES), noflush=True)

    def missing_canaries(self) -> list[str]:
        return [t for t in CANARY_TABLES if CANARY_CHAIN not in self.tables.get(t, {})]

    def fingerprint(self) -> tuple[object, ...]:
        """Changes with every change of the tables, like IptablesSystem.fingerprint."""
        return ("fake", self.generation)

    def summary(self, tables: Sequence[str] = CANARY_TABLES) -> Any:
        """IptablesSystem.summary of the model: one save per table, summarized."""
        from kubectl_proxyctl.system.iptables import RulesSummary, summarize_save

        out = RulesSummary()
        for table in tables:
            summarize_save(self.save(table), out)
        return out

    # --- test hooks ------------------------------------------------------------------------

    @property
    def canaries(self) -> bool:
        return not self.missing_canaries()

    @canaries.setter
    def canaries(self, present: bool) -> None:
        """True creates the canary chains, False removes them (someone flushed the tables)."""
        self.generation += 1
        for t in CANARY_TABLES:
            chains = self.tables.setdefault(t, _new_table(t))
            if present:
                chains.setdefault(CANARY_CHAIN, IptChain("-"))
            else:
                chains.pop(CANARY_CHAIN, None)

    @property
    def nat_chains(self) -> list[str]:
        """The user chains of the nat table."""
        return [c for c, chain in self.tables.get("nat", {}).items() if not chain.builtin]

    @nat_chains.setter
    def nat_chains(self, names: Iterable[str]) -> None:
        """Make these (empty, unless already there) the user chains of nat: leftovers a test puts
        in the kernel. Other user chains go, with the rules that jumped to them."""
        wanted = list(dict.fromkeys(names))
        chains = self.tables.setdefault("nat", _new_table("nat"))
        self.generation += 1
        for gone in [c for c in self.nat_chains if c not in wanted]:
            del chains[gone]
            for chain in chains.values():
                chain.rules = [r for r in chain.rules if r.target != gone]
        for name in wanted:
            chains.setdefault(name, IptChain("-"))

    # --- the model -------------------------------------------------------------------------

    def _apply(self, payload: str, noflush: bool) -> None:
        """Apply a restore payload block by block; ApplyError at the first refused line (the
        blocks committed before it stay, as with the real tool)."""
        try:
            parse(payload)
            parse_error: RulesetParseError | None = None
        except RulesetParseError as exc:
            parse_error = exc
        lines = payload.splitlines()
        try:
            self._walk(lines, noflush, parse_error)
        except _Refused as refused:
            if refused.reason.startswith("COMMIT expected"):
                message = f"iptables-restore: {refused.reason}"
            else:
                message = f"iptables-restore: line {refused.line} failed: {refused.reason}"
            raise ApplyError(message, script=payload, line=refused.line) from None

    def _walk(self, lines: Sequence[str], noflush: bool, parse_error: RulesetParseError | None) -> None:
        table = ""
        work: dict[str, IptChain] | None = None
        for number, raw in enumerate(lines, start=1):
            if parse_error is not None and parse_error.line == number:
                raise _Refused(number, f"cannot parse: {parse_error}")
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if work is None:
                if not line.startswith("*"):
                    raise _Refused(number, f"not in a table: {line[:60]!r}")
                table = line[1:].strip()
                if table not in BUILTIN_CHAINS:
                    raise _Refused(number, f"unable to initialize table '{table}'")
                work = copy.deepcopy(self.tables.get(table)) or _new_table(table)
                if not noflush:  # without --noflush a table block starts from an empty table
                    work = _new_table(table) | {c: IptChain(ch.policy) for c, ch in work.items() if ch.builtin}
                continue
            if line.startswith("*"):
                raise _Refused(number, f"Bad argument `{line}' (no COMMIT before it)")
            if line == "COMMIT":
                self._check_graph(table, work, number)
                self.tables[table] = work
                self.generation += 1
                work = None
                continue
            if line.startswith(":"):
                self._declare(table, work, line, number)
                continue
            if line.startswith("["):
                line = line[line.find("]") + 1:].strip()
            self._command(table, work, line, number)
        if work is not None:
            raise _Refused(len(lines) + 1, f"COMMIT expected at line {len(lines) + 1}")

    @staticmethod
    def _declare(table: str, chains: dict[str, IptChain], line: str, number: int) -> None:
        fields = line[1:].split()
        if len(fields) < 2:
            raise _Refused(number, f"line {number} policy invalid")
        name, policy = fields[0], fields[1]
        if len(name) > MAX_CHAIN_NAME:
            raise _Refused(number, f"Invalid chain name `{name}' ({MAX_CHAIN_NAME} chars max)")
        if name in BUILTIN_CHAINS[table]:
            if policy not in ("-", "ACCEPT", "DROP"):
                raise _Refused(number, f"Can't set policy `{policy}' on `{name}': Bad policy name")
            if policy != "-":
                chains[name].policy = policy
            return  # --noflush does not flush a built-in chain
        if policy != "-":
            raise _Refused(number, f"Can't set policy `{policy}' on `{name}': Bad built-in chain name")
        chains[name] = IptChain("-")  # created, or flushed when it existed

    def _command(self, table: str, chains: dict[str, IptChain], line: str, number: int) -> None:
        words = split_line(line)
        command, name = words[0], words[1]
        chain = chains.get(name)
        if command in ("-N", "--new-chain"):
            if chain is not None:
                raise _Refused(number, f"Chain already exists: {name}")
            if len(name) > MAX_CHAIN_NAME:
                raise _Refused(number, f"Invalid chain name `{name}' ({MAX_CHAIN_NAME} chars max)")
            chains[name] = IptChain("-")
            return
        if chain is None:
            raise _Refused(number, f"No chain/target/match by that name: chain {name} does not exist in {table}")
        if command in ("-A", "--append", "-I", "--insert"):
            args = words[2:]
            position = len(chain.rules) + 1
            if command in ("-I", "--insert"):
                position = 1
                if args and args[0].isdigit():
                    position = int(args[0])
                    args = args[1:]
                if not 1 <= position <= len(chain.rules) + 1:
                    raise _Refused(number, f"Index of insertion too big: {position} in {name}")
            text = line.split(None, 2)[2] if command in ("-A", "--append") and len(line.split(None, 2)) > 2 else (
                " ".join(quote(a) for a in args))
            rule = parse_rule_args(table, name, args, text, number)
            self._check_rule(table, chains, rule, number)
            chain.rules.insert(position - 1, rule)
        elif command in ("-D", "--delete"):
            args = words[2:]
            if len(args) == 1 and args[0].isdigit():
                index = int(args[0]) - 1
                if not 0 <= index < len(chain.rules):
                    raise _Refused(number, f"Index of deletion too big: {args[0]} in {name}")
                chain.rules.pop(index)
                return
            key = parse_rule_args(table, name, args).key()
            for index, rule in enumerate(chain.rules):
                if rule.key() == key:
                    chain.rules.pop(index)
                    return
            raise _Refused(number, f"Bad rule (does a matching rule exist in that chain?): {name}")
        elif command in ("-F", "--flush"):
            chain.rules = []
        elif command in ("-X", "--delete-chain"):
            if chain.builtin:
                raise _Refused(number, f"cannot delete built-in chain {name}")
            refs = _references(chains, name)
            if refs:
                raise _Refused(number, f"Too many links: chain {name} still has {refs} references")
            if chain.rules:
                raise _Refused(number, f"Directory not empty: chain {name} still has {len(chain.rules)} rules")
            del chains[name]
        elif command in ("-P", "--policy"):
            policy = words[2] if len(words) > 2 else ""
            if not chain.builtin:
                raise _Refused(number, f"Bad built-in chain name: cannot set a policy on {name}")
            if policy not in ("ACCEPT", "DROP"):
                raise _Refused(number, f"Bad policy name `{policy}'")
            chain.policy = policy
        else:
            raise _Refused(number, f"unknown command {command!r}")

    @staticmethod
    def _check_rule(table: str, chains: dict[str, IptChain], rule: Rule, number: int) -> None:
        for module in rule.modules:
            if module not in MATCH_MODULES:
                raise _Refused(number, f"Couldn't load match `{module}':No such file or directory")
        for m in rule.matches:
            if m.option in ("--dport", "--sport") and m.module not in PORT_MODULES:
                raise _Refused(number, f'unknown option "{m.option}" (no -p tcp/udp/sctp before it)')
        target = rule.target
        if not target:
            return
        chain = chains.get(target)
        if chain is not None:
            if chain.builtin:
                raise _Refused(number, f"cannot jump to built-in chain {target}")
            return
        if rule.goto:
            raise _Refused(number, f"goto '{target}' is not a chain")
        if target not in STANDARD_TARGETS and target not in EXTENSION_TARGETS:
            raise _Refused(number, f"Couldn't load target `{target}':No such file or directory "
                                   f"(no chain {target} in {table})")
        allowed = TARGET_TABLES.get(target)
        if allowed is not None and table not in allowed:
            raise _Refused(number, f"Invalid argument: target {target} is not allowed in table {table}")
        if _nat_port(rule):
            protocol = rule.find("-p")
            if protocol is None or protocol.negated or protocol.value.lower() not in PORT_MODULES - {"udplite"}:
                raise _Refused(number, f"Need TCP, UDP, SCTP or DCCP with port specification ({target})")

    @staticmethod
    def _check_graph(table: str, chains: dict[str, IptChain], number: int) -> None:
        """What the kernel checks when a table is committed: no loop reachable from a built-in
        chain, and each NAT target reachable only from the hooks it allows."""
        edges = {c: [r.target for r in chain.rules if r.target in chains] for c, chain in chains.items()}
        for hook in BUILTIN_CHAINS[table]:
            seen: set[str] = set()
            stack: list[tuple[str, Iterator[str]]] = [(hook, iter(edges[hook]))]
            path = {hook}
            while stack:
                name, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    path.discard(name)
                    continue
                if nxt in path:
                    raise _Refused(number, f"Too many links: a loop through {nxt} is reachable from {hook}")
                if nxt not in seen:
                    seen.add(nxt)
                    path.add(nxt)
                    stack.append((nxt, iter(edges[nxt])))
            for name in {hook} | seen:
                for r in chains[name].rules:
                    hooks = TARGET_HOOKS.get(r.target)
                    if hooks is not None and hook not in hooks:
                        raise _Refused(number, f"Invalid argument: {r.target} in chain {name} is reachable "
                                               f"from {hook}, where the kernel does not allow it")


def _nat_port(rule: Rule) -> bool:
    """Whether a NAT target of the rule names a port (which needs `-p tcp|udp|sctp|dccp`)."""
    for m in rule.target_options:
        if m.option in ("--to-destination", "--to-source"):
            address = m.value.split("-")[0] if not m.value.startswith("[") else m.value
            if (address.startswith("[") and "]:" in address) or (not address.startswith("[") and address.count(":") == 1):
                return True
        if m.option == "--to-ports":
            return True
    return False


# --- shared builders ------------------------------------------------------------------------


def service(name: str, ip: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80}]}}


def slice_(name: str, ips: list[str]) -> dict[str, Any]:
    return {"kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "p", "port": 8080}],
            "endpoints": [{"addresses": [ip]} for ip in ips]}


# --- nftables -------------------------------------------------------------------------------

NFT_FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
NFT_COMMANDS = frozenset({"add", "create", "flush", "delete", "destroy", "insert", "replace"})
NFT_OBJECTS = frozenset({"table", "chain", "rule", "set", "map", "element"})
NFT_TABLE = "kube-proxy"
_PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
# NAT statements and the base chains they may be reached from: (chain type, hooks).
_NAT_HOOKS = {
    "dnat": ("prerouting", "output"), "redirect": ("prerouting", "output"),
    "snat": ("postrouting", "input"), "masquerade": ("postrouting", "input"),
}
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_VERDICT = re.compile(r"\b(jump|goto)\s+([^\s,;{}]+)")
_SET_REF = re.compile(r"@([^\s,;{}]+)")
_PAYLOAD_BASES = frozenset({"ll", "nh", "th", "ih"})  # `@th,16,16` is raw payload, not a set
_COMMENT = re.compile(r'\bcomment\s+"((?:[^"\\]|\\.)*)"')
_ELEMENT_OPTIONS = re.compile(r'\s+(?:comment\s+"(?:[^"\\]|\\.)*"|timeout\s+\S+|expires\s+\S+|counter(?:\s+packets\s+\d+\s+bytes\s+\d+)?)')
_ERRNO = {
    "ENOENT": "Could not process rule: No such file or directory",
    "EEXIST": "Could not process rule: File exists",
    "EBUSY": "Could not process rule: Device or resource busy",
    "EOPNOTSUPP": "Could not process rule: Operation not supported",
    "ELOOP": "Could not process rule: Too many links",
    "SYNTAX": "syntax error",
}


@dataclass
class NftRule:
    handle: int
    text: str  # the rule's expression
    line: int
    verdicts: tuple[str, ...] = ()  # chains it jumps/goes to (inline vmaps included)
    sets: tuple[str, ...] = ()  # named sets and maps it uses
    nat: tuple[str, ...] = ()  # NAT statements in it


@dataclass
class NftChain:
    base: tuple[str, str, int] | None = None  # (type, hook, priority) of a base chain
    rules: list[NftRule] = field(default_factory=list)
    comment: str = ""


@dataclass
class NftSet:
    kind: str  # "set" or "map"
    type: str
    flags: frozenset[str] = frozenset()
    verdicts: bool = False  # a verdict map
    elements: dict[str, str] = field(default_factory=dict)  # key → value ("" in a set)
    lines: dict[str, int] = field(default_factory=dict)  # key → line that added it
    comment: str = ""
    timeout: str = ""
    comments: dict[str, str] = field(default_factory=dict)  # key → the element's comment


@dataclass
class NftTable:
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)
    handle: int = 0
    comment: str = ""

    def next_handle(self) -> int:
        self.handle += 1
        return self.handle


class _NftRefused(Exception):
    def __init__(self, line: int, errno: str, detail: str) -> None:
        super().__init__(detail)
        self.line = line
        self.reason = f"{_ERRNO[errno]} ({detail})"


def _statements(script: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every command: `;` outside braces and quotes separates commands, and an
    open brace continues a command on the next lines."""
    buf: list[str] = []
    start = 0
    depth = 0
    for number, raw in enumerate(script.splitlines(), start=1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if not buf:
            start = number
        text = _QUOTED.sub(lambda m: "\0" * len(m.group(0)), line)
        piece_start = 0
        for i, c in enumerate(text):
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            elif c == ";" and depth == 0:
                buf.append(line[piece_start:i])
                yield start, " ".join(buf).strip()
                buf, piece_start, start = [], i + 1, number
        buf.append(line[piece_start:])
        if depth <= 0:
            depth = 0
            text = " ".join(buf).strip()
            if text:
                yield start, text
            buf = []
    if buf and " ".join(buf).strip():
        yield start, " ".join(buf).strip()


def _body(text: str) -> str:
    """What is inside the outermost braces of `text` ("" without braces)."""
    first, last = text.find("{"), text.rfind("}")
    return text[first + 1:last].strip() if 0 <= first < last else ""


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside quotes and braces."""
    out, depth, buf, quoted = [], 0, [], False
    for c in text:
        if c == '"':
            quoted = not quoted
        elif not quoted and c == "{":
            depth += 1
        elif not quoted and c == "}":
            depth -= 1
        if c == sep and not quoted and depth == 0:
            out.append("".join(buf).strip())
            buf = []
        else:
            buf.append(c)
    if "".join(buf).strip():
        out.append("".join(buf).strip())
    return out


def _priority(text: str) -> int:
    m = re.fullmatch(r"([a-z]+)?\s*([+-]?\s*\d+)?", text.strip())
    if m is None or not (m.group(1) or m.group(2)) or (m.group(1) and m.group(1) not in _PRIORITY_NAMES):
        raise ValueError(f"bad priority {text!r}")
    base = _PRIORITY_NAMES[m.group(1)] if m.group(1) else 0
    return base + (int(m.group(2).replace(" ", "")) if m.group(2) else 0)


class FakeNft:
    """A strict `nft -f -` over a model of the ruleset (see the module docstring): `scripts`
    keeps every script `run` applied; `chains()`, `sets()`, `set_present()` and
    `chain_rule_count()` answer from the model, for our table in family `fam`."""

    fam = "ip"

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.checked: list[str] = []  # scripts validated with check=True (nft -c)
        self.fail_next = 0
        self.tables: dict[tuple[str, str], NftTable] = {}
        self.ruleset_generation = 0  # bumped by every committed change (what generation() shows)

    # --- the adapter's interface ---------------------------------------------------------

    def run(self, script: str, check: bool = False) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ApplyError("nft failed at line 3: No such file or directory", script=script, line=3)
        if not script.strip():
            return  # NftSystem.run sends nothing for an empty transaction
        work = copy.deepcopy(self.tables)
        try:
            for number, text in _statements(script):
                self._command(work, number, text)
            self._validate(work)
        except _NftRefused as refused:
            lines = script.splitlines()
            shown = lines[refused.line - 1] if 0 < refused.line <= len(lines) else ""
            raise ApplyError(f"nft failed at line {refused.line}: {refused.reason}\n> {refused.line:5d}: {shown}",
                             script=script, line=refused.line) from None
        if check:
            self.checked.append(script)
            return
        self.tables = work  # the transaction is atomic: all of it or nothing
        self.ruleset_generation += 1
        self.scripts.append(script)

    def _ours(self) -> NftTable | None:
        return self.tables.get((self.fam, NFT_TABLE))

    def chains(self) -> set[str]:
        table = self._ours()
        return set(table.chains) if table else set()

    def listing(self, name: str = NFT_TABLE) -> str | None:
        """`nft list table` of the model, laid out as nft 1.0.6 prints it (rules and
        elements as they were written), or None without the table."""
        table = self.tables.get((self.fam, name))
        if table is None:
            return None
        out = [f"table {self.fam} {name} {{"]
        if table.comment:
            out.append(f'\tcomment "{table.comment}"')
        for set_name, st in table.sets.items():
            out.append(f"\t{st.kind} {set_name} {{")
            out.append(f"\t\ttype {st.type}")
            if st.flags:
                out.append(f"\t\tflags {','.join(sorted(st.flags))}")
            if st.timeout:
                out.append(f"\t\ttimeout {st.timeout}")
            if st.comment:
                out.append(f'\t\tcomment "{st.comment}"')
            if st.elements:
                items = []
                for key, value in st.elements.items():
                    comment = st.comments.get(key, "")
                    items.append(key + (f' comment "{comment}"' if comment else "") + (f" : {value}" if value else ""))
                out.append("\t\telements = { " + ",\n\t\t\t     ".join(items) + " }")
            out += ["\t}", ""]
        for chain_name, chain in table.chains.items():
            out.append(f"\tchain {chain_name} {{")
            if chain.base is not None:
                typ, hook, priority = chain.base
                out.append(f"\t\ttype {typ} hook {hook} priority {priority}; policy accept;")
            if chain.comment:
                out.append(f'\t\tcomment "{chain.comment}"')
            out += [f"\t\t{rule.text}" for rule in chain.rules]
            out += ["\t}", ""]
        if out[-1] == "":
            out.pop()
        return "\n".join(out + ["}"]) + "\n"

    def sets(self) -> set[str]:
        """Named sets of our table (maps excluded), as NftSystem.sets()."""
        table = self._ours()
        return {n for n, s in table.sets.items() if s.kind == "set"} if table else set()

    def set_present(self, name: str) -> bool:
        table = self._ours()
        return table is not None and name in table.sets

    def chain_rule_count(self, chain: str) -> int | None:
        table = self._ours()
        if table is None or chain not in table.chains:
            return None
        return len(table.chains[chain].rules)

    def generation(self) -> int:
        """The ruleset generation: changes with every committed transaction."""
        return self.ruleset_generation

    def summary(self) -> Any:
        """NftSystem.summary of the model: our table's rule and element counts, None without it."""
        from kubectl_proxyctl.system.nftables import NftSummary

        table = self._ours()
        if table is None:
            return None
        return NftSummary(rules={c: len(ch.rules) for c, ch in table.chains.items()},
                          elements={n: len(st.elements) for n, st in table.sets.items()})

    # --- test hooks ------------------------------------------------------------------------

    @property
    def existing(self) -> set[str]:
        """The chains of our table."""
        return self.chains()

    @existing.setter
    def existing(self, names: Iterable[str]) -> None:
        """Make these the chains of our table (leftovers a test puts in the kernel): missing
        ones are added empty, others deleted with the rules and elements that pointed there."""
        wanted = set(names)
        table = self.tables.setdefault((self.fam, NFT_TABLE), NftTable())
        self.ruleset_generation += 1
        for gone in set(table.chains) - wanted:
            del table.chains[gone]
            for chain in table.chains.values():
                chain.rules = [r for r in chain.rules if gone not in r.verdicts]
            for s in table.sets.values():
                s.elements = {k: v for k, v in s.elements.items() if _verdict_chain(v) != gone}
        for name in wanted:
            table.chains.setdefault(name, NftChain())

    @property
    def affinity(self) -> set[str]:
        """The session-affinity sets of our table."""
        return {s for s in self.sets() if s.startswith("affinity-")}

    @affinity.setter
    def affinity(self, names: Iterable[str]) -> None:
        """Make these the affinity sets of our table (as kube-proxy creates them)."""
        wanted = set(names)
        table = self.tables.setdefault((self.fam, NFT_TABLE), NftTable())
        self.ruleset_generation += 1
        for gone in self.affinity - wanted:
            del table.sets[gone]
        addr = "ipv6_addr" if self.fam == "ip6" else "ipv4_addr"
        for name in wanted:
            table.sets.setdefault(name, NftSet("set", addr, frozenset({"dynamic", "timeout"})))

    @property
    def masquerading_rules(self) -> int | None:
        """Rules in our `masquerading` chain (None: no such chain or table)."""
        return self.chain_rule_count("masquerading")

    @masquerading_rules.setter
    def masquerading_rules(self, value: int | None) -> None:
        """None: `nft delete table ip kube-proxy`; 0: `nft flush table ip kube-proxy` (every
        chain emptied, sets and maps kept)."""
        self.ruleset_generation += 1
        if value is None:
            self.tables.pop((self.fam, NFT_TABLE), None)
        elif value == 0:
            table = self._ours()
            for chain in (table.chains.values() if table else ()):
                chain.rules = []
        else:
            raise ValueError("masquerading_rules can only be set to None (table deleted) or 0 (table flushed)")

    # --- the model -------------------------------------------------------------------------

    def _command(self, tables: dict[tuple[str, str], NftTable], number: int, text: str) -> None:
        head = text.split("{", 1)[0].split()
        if len(head) < 2 or head[0] not in NFT_COMMANDS:
            raise _NftRefused(number, "SYNTAX", f"unexpected {head[0] if head else text!r}: not a command")
        verb, obj = head[0], head[1]
        if obj == "ruleset" and verb in ("flush", "delete", "destroy"):
            tables.clear()
            return
        if obj not in NFT_OBJECTS:
            raise _NftRefused(number, "SYNTAX", f"unexpected {obj!r} after {verb}")
        rest = head[2:]
        fam = "ip"
        if rest and rest[0] in NFT_FAMILIES:
            fam, rest = rest[0], rest[1:]
        if not rest:
            raise _NftRefused(number, "SYNTAX", f"{verb} {obj} needs a table name")
        key = (fam, rest[0])
        if obj == "table":
            self._table(tables, number, verb, key)
            comment = _COMMENT.search(_body(text))
            if comment is not None and key in tables:
                tables[key].comment = comment.group(1)
            return
        table = tables.get(key)
        if table is None:
            if verb == "destroy":
                return
            raise _NftRefused(number, "ENOENT", f"no table {fam} {rest[0]}")
        if len(rest) < 2:
            raise _NftRefused(number, "SYNTAX", f"{verb} {obj} needs a name")
        name = rest[1]
        if obj == "chain":
            self._chain(table, number, verb, name, text)
        elif obj in ("set", "map"):
            self._set(table, number, verb, obj, name, text)
        elif obj == "element":
            self._element(table, number, verb, name, text)
        else:
            self._rule(table, number, verb, name, text)

    @staticmethod
    def _table(tables: dict[tuple[str, str], NftTable], number: int, verb: str, key: tuple[str, str]) -> None:
        exists = key in tables
        if verb in ("add", "create"):
            if exists and verb == "create":
                raise _NftRefused(number, "EEXIST", f"table {key[0]} {key[1]} exists")
            tables.setdefault(key, NftTable())
        elif verb in ("delete", "destroy"):
            if not exists and verb == "delete":
                raise _NftRefused(number, "ENOENT", f"no table {key[0]} {key[1]}")
            tables.pop(key, None)
        elif verb == "flush":
            if not exists:
                raise _NftRefused(number, "ENOENT", f"no table {key[0]} {key[1]}")
            for chain in tables[key].chains.values():
                chain.rules = []
        else:
            raise _NftRefused(number, "SYNTAX", f"cannot {verb} a table")

    @staticmethod
    def _chain(table: NftTable, number: int, verb: str, name: str, text: str) -> None:
        chain = table.chains.get(name)
        if verb in ("add", "create"):
            base = None
            fields = {}
            for part in _split_top(_body(text), ";"):
                words = part.split(None, 1)
                if words:
                    fields[words[0]] = words[1] if len(words) > 1 else ""
            if "type" in fields or "hook" in fields:
                try:
                    typ, hook = fields["type"].split()[0], fields["type"].split()[2]
                    priority = _priority(fields.get("priority", "").strip() or fields["type"].split("priority", 1)[1])
                except (KeyError, IndexError, ValueError):
                    raise _NftRefused(number, "SYNTAX", "a base chain needs `type T hook H priority P`") from None
                base = (typ, hook, priority)
            if chain is None:
                table.chains[name] = chain = NftChain(base)
                chain.comment = fields.get("comment", "").strip().strip('"')
            elif verb == "create":
                raise _NftRefused(number, "EEXIST", f"chain {name} exists")
            elif base is not None and chain.base is None:
                raise _NftRefused(number, "EEXIST", f"regular chain {name} cannot become a base chain")
            elif base is not None and chain.base != base:
                raise _NftRefused(number, "EOPNOTSUPP", f"base chain {name} is {chain.base}, not {base}")
        elif verb == "flush":
            if chain is None:
                raise _NftRefused(number, "ENOENT", f"no chain {name}")
            chain.rules = []
        elif verb in ("delete", "destroy"):
            if chain is None:
                if verb == "destroy":
                    return
                raise _NftRefused(number, "ENOENT", f"no chain {name}")
            users = [c for c, ch in table.chains.items() if c != name and any(name in r.verdicts for r in ch.rules)]
            users += [f"@{s}" for s, st in table.sets.items() if any(_verdict_chain(v) == name
                                                                       for v in st.elements.values())]
            if users:
                raise _NftRefused(number, "EBUSY", f"chain {name} is still referenced from {', '.join(sorted(users))}")
            del table.chains[name]
        else:
            raise _NftRefused(number, "SYNTAX", f"cannot {verb} a chain")

    @staticmethod
    def _set(table: NftTable, number: int, verb: str, kind: str, name: str, text: str) -> None:
        current = table.sets.get(name)
        if verb in ("add", "create"):
            fields = {}
            for part in _split_top(_body(text), ";"):
                words = part.split(None, 1)
                if words:
                    fields[words[0]] = words[1].strip() if len(words) > 1 else ""
            typ = " ".join(fields.get("type", "").split())
            if not typ or (kind == "map") != (" : " in f" {typ} "):
                raise _NftRefused(number, "SYNTAX", f"{kind} {name} needs `type KEY{' : VALUE' if kind == 'map' else ''}`")
            flags = frozenset(f.strip() for f in fields.get("flags", "").split(",") if f.strip())
            new = NftSet(kind, typ, flags, verdicts=kind == "map" and typ.endswith(": verdict"))
            new.comment = fields.get("comment", "").strip('"')
            new.timeout = fields.get("timeout", "")
            if current is None:
                table.sets[name] = new
            elif verb == "create" or (current.kind, current.type, current.flags) != (kind, typ, flags):
                raise _NftRefused(number, "EEXIST", f"{current.kind} {name} exists as {current.type}"
                                                    f"{' flags ' + ','.join(sorted(current.flags)) if current.flags else ''}")
        elif verb == "flush":
            if current is None:
                raise _NftRefused(number, "ENOENT", f"no {kind} {name}")
            current.elements.clear()
            current.lines.clear()
        elif verb in ("delete", "destroy"):
            if current is None:
                if verb == "destroy":
                    return
                raise _NftRefused(number, "ENOENT", f"no {kind} {name}")
            users = sorted(c for c, ch in table.chains.items() if any(name in r.sets for r in ch.rules))
            if users:
                raise _NftRefused(number, "EBUSY", f"{kind} {name} is still used by rules in {', '.join(users)}")
            del table.sets[name]
        else:
            raise _NftRefused(number, "SYNTAX", f"cannot {verb} a {kind}")

    @staticmethod
    def _element(table: NftTable, number: int, verb: str, name: str, text: str) -> None:
        target = table.sets.get(name)
        if target is None:
            raise _NftRefused(number, "ENOENT", f"no set or map {name}")
        if verb not in ("add", "create", "delete", "destroy"):
            raise _NftRefused(number, "SYNTAX", f"cannot {verb} an element")
        if "{" not in text:
            raise _NftRefused(number, "SYNTAX", "elements go in braces: { ... }")
        for item in _split_top(_body(text), ","):
            key, value = item, ""
            colon = re.search(r"\s:\s", _QUOTED.sub(lambda m: "\0" * len(m.group(0)), item))
            if colon is not None:
                key, value = item[:colon.start()], " ".join(item[colon.end():].split())
            comment = _COMMENT.search(key)
            key = " ".join(_ELEMENT_OPTIONS.sub("", " " + key).split())
            if verb in ("delete", "destroy"):
                if key not in target.elements:
                    if verb == "destroy":
                        continue
                    raise _NftRefused(number, "ENOENT", f"no element {key} in {name}")
                del target.elements[key]
                target.lines.pop(key, None)
                target.comments.pop(key, None)
                continue
            if (target.kind == "map") != bool(value):
                raise _NftRefused(number, "SYNTAX", f"element {item!r} of {target.kind} {name}: "
                                                    f"{'a value is needed' if target.kind == 'map' else 'a set has no values'}")
            if target.verdicts:
                chain_name = _verdict_chain(value)
                if chain_name is not None:
                    chain = table.chains.get(chain_name)
                    if chain is None:
                        raise _NftRefused(number, "ENOENT", f"verdict {value}: no chain {chain_name}")
                    if chain.base is not None:
                        raise _NftRefused(number, "EOPNOTSUPP", f"verdict {value}: {chain_name} is a base chain")
                elif value not in ("accept", "drop", "return", "continue"):
                    raise _NftRefused(number, "SYNTAX", f"not a verdict: {value!r}")
            held = target.elements.get(key)
            if held is not None and (verb == "create" or held != value):
                raise _NftRefused(number, "EEXIST", f"element {key} of {name} exists" + (f" with {held}" if held else ""))
            target.elements[key] = value
            target.lines[key] = number
            target.comments[key] = comment.group(1) if comment is not None else ""

    @staticmethod
    def _rule(table: NftTable, number: int, verb: str, name: str, text: str) -> None:
        chain = table.chains.get(name)
        if chain is None:
            if verb == "destroy":
                return
            raise _NftRefused(number, "ENOENT", f"no chain {name}")
        expr = text.split(None, 5)[5] if len(text.split(None, 5)) > 5 else ""
        if text.split()[2] not in NFT_FAMILIES:  # family omitted: one word less before the expression
            expr = text.split(None, 4)[4] if len(text.split(None, 4)) > 4 else ""
        position: int | None = None
        m = re.match(r"(position|handle|index)\s+(\d+)\s*", expr)
        if m is not None:
            position = int(m.group(2))
            expr = expr[m.end():]
        if verb in ("delete", "destroy", "replace"):
            if m is None or m.group(1) != "handle":
                raise _NftRefused(number, "SYNTAX", f"{verb} rule needs `handle N`")
            index = next((i for i, r in enumerate(chain.rules) if r.handle == position), None)
            if index is None:
                if verb == "destroy":
                    return
                raise _NftRefused(number, "ENOENT", f"no rule with handle {position} in {name}")
            if verb != "replace":
                chain.rules.pop(index)
                return
        if verb not in ("add", "insert", "replace", "create"):
            raise _NftRefused(number, "SYNTAX", f"cannot {verb} a rule")
        if not expr.strip():
            raise _NftRefused(number, "SYNTAX", "a rule needs an expression")
        bare = _QUOTED.sub('""', expr)
        verdicts = tuple(v for _, v in _VERDICT.findall(bare))
        for target in verdicts:
            jumped = table.chains.get(target)
            if jumped is None:
                raise _NftRefused(number, "ENOENT", f"jump/goto {target}: no such chain")
            if jumped.base is not None:
                raise _NftRefused(number, "EOPNOTSUPP", f"jump/goto {target}: it is a base chain")
        sets = tuple(s for s in _SET_REF.findall(bare) if not (s in _PAYLOAD_BASES and f"@{s}," in bare))
        for s in sets:
            if s not in table.sets:
                raise _NftRefused(number, "ENOENT", f"@{s}: no such set or map")
        if re.search(r"\bvmap\s+@", bare):
            for s in re.findall(r"\bvmap\s+@([^\s,;{}]+)", bare):
                if not table.sets[s].verdicts:
                    raise _NftRefused(number, "SYNTAX", f"vmap @{s}: not a verdict map")
        rule = NftRule(0, " ".join(expr.split()), number, verdicts, sets, _nat_statements(bare))
        if verb == "replace":
            assert position is not None
            index = next(i for i, r in enumerate(chain.rules) if r.handle == position)
            rule.handle = chain.rules[index].handle
            chain.rules[index] = rule
            return
        rule.handle = table.next_handle()
        if position is None:
            if verb == "insert":
                chain.rules.insert(0, rule)
            else:
                chain.rules.append(rule)
            return
        index = next((i for i, r in enumerate(chain.rules) if r.handle == position), None)
        if m is not None and m.group(1) == "index":
            index = position if position <= len(chain.rules) else None
        if index is None:
            raise _NftRefused(number, "ENOENT", f"no rule at {m.group(1) if m else 'position'} {position} in {name}")
        chain.rules.insert(index if verb == "insert" else index + 1, rule)

    @staticmethod
    def _validate(tables: dict[tuple[str, str], NftTable]) -> None:
        """What the kernel checks on the chain graph of each table: no loop reachable from a
        base chain, and NAT statements only under a nat base chain of a hook that allows them.
        The error names the latest line that completed the offending path."""
        for table in tables.values():
            for base_name, base_chain in table.chains.items():
                if base_chain.base is not None:
                    _validate_from(table, base_name, base_chain.base)


def _edges(table: NftTable, name: str) -> Iterator[tuple[str, int]]:
    """(chain, line that made the edge) for every chain `name` jumps or goes to, through its
    rules' verdicts and the verdicts of the maps its rules use."""
    for r in table.chains[name].rules:
        for v in r.verdicts:
            yield v, r.line
        for s in r.sets:
            st = table.sets.get(s)
            if st is not None and st.verdicts:
                for key, value in st.elements.items():
                    target = _verdict_chain(value)
                    if target is not None and target in table.chains:
                        yield target, max(r.line, st.lines.get(key, 0))


def _validate_from(table: NftTable, base_name: str, base: tuple[str, str, int]) -> None:
    """Depth-first from one base chain: a loop, or a NAT statement its type and hook forbid."""
    typ, hook, _ = base

    def visit(name: str, line: int) -> None:
        for r in table.chains[name].rules:
            for stmt in r.nat:
                if typ != "nat" or hook not in _NAT_HOOKS[stmt]:
                    raise _NftRefused(max(line, r.line), "EOPNOTSUPP", f"{stmt} in chain {name} is reachable "
                                      f"from the {typ} {hook} chain {base_name}")

    visit(base_name, 0)
    stack: list[tuple[int, Iterator[tuple[str, int]]]] = [(0, _edges(table, base_name))]
    on_path = [base_name]
    done: set[str] = set()
    while stack:
        line, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            stack.pop()
            done.add(on_path.pop())
            continue
        target, edge_line = nxt
        reach = max(line, edge_line)
        if target in on_path:
            raise _NftRefused(reach, "ELOOP", f"loop through {target}, reachable from {base_name}")
        if target in done:
            continue
        visit(target, reach)
        on_path.append(target)
        stack.append((reach, _edges(table, target)))


def _nat_statements(expr: str) -> tuple[str, ...]:
    """The NAT statements of a rule (not `ct status dnat`, not a chain named `masquerade`)."""
    words = expr.replace("{", " ").replace("}", " ").split()
    return tuple(w for i, w in enumerate(words)
                 if w in _NAT_HOOKS and (i == 0 or words[i - 1] not in ("status", "state", "jump", "goto")))


def _verdict_chain(value: str) -> str | None:
    words = value.split()
    return words[1] if len(words) == 2 and words[0] in ("jump", "goto") else None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
