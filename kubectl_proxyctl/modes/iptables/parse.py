"""iptables-restore / iptables-save text → tables → chains → rules with structured matches.

Theory of operation: both formats are line based. `*TABLE` opens a table, `:CHAIN POLICY
[packets:bytes]` declares a chain (a built-in chain's policy, `-` for a user chain), `-A CHAIN
ARGS` appends a rule, `-I CHAIN [N] ARGS` inserts one, `-X CHAIN` deletes a chain, `-F`
flushes, `-N` creates, `COMMIT` closes the table; `#` lines are comments. `iptables-save -c`
prefixes rules with `[packets:bytes]`, which is skipped.

A rule's arguments are split like a shell would for iptables (double quotes, backslash
escapes) and read left to right: the basic matches (`-s -d -p -i -o -f`, long forms too),
`-m MODULE` followed by that module's options, `!` negating the next option, and `-j`/`-g`
with the target's options. Each option becomes a `Match(module, option, values, negated)`;
option names are canonical (`--destination-port` → `--dport`, `--src` → `-s`). An option
after `-p tcp` without `-m tcp` (as restore input allows) is attributed to the protocol's
module.

What `iptables-save` normalises (`-d 1.2.3.4/32`, `--set-xmark 0x4000/0x4000` for
`--or-mark 0x4000`, probabilities as the kernel's 2^31 fractions printed with 11 decimals,
`-m recent`'s default `--mask`/`--rsource` spelled out, `-p` moved before `-m`) does not
matter to the tracer, which evaluates values, not text; `Rule.key()` gives a canonical form
in which a restore input rule and its `iptables-save` echo compare equal.

Parsing is pure and lenient: a rule for an undeclared chain creates it; anything that is not
iptables text raises RulesetParseError (a ConfigError) naming the line.

Big dumps: `parse(text, lazy=True)` (and `parse_dump` for a file read in place, see
`modes/dumpfile.py`) cuts iptables-save output into tables and chains by byte offsets, with a
few regular expressions and C-level iterators over one window of the dump at a time, and
keeps one index entry per chain: where its rules start. A chain's rules are parsed only when
it is read, and `Ruleset.candidates` indexes big chains by their single `-d` address, so the
tracer visits the few rules a packet can match: one service of a 230,000-line dump costs the
cut (a few hundredths of a second) and the chains its packets reach. Whatever the cut
cannot read exactly as the full parser would (restore input, a chain written in pieces, a
chain declared twice, quoted chain names, bytes that end or split lines differently) is
parsed in full.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import operator
import re
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.modes.dumpfile import WINDOW, Bytes, DumpBuffer

BUILTIN_CHAINS: Mapping[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# Targets built into iptables (anything else after -j is a chain or an extension target).
STANDARD_TARGETS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})

_BASIC_OPTIONS: Mapping[str, str] = {
    "-s": "-s",
    "--source": "-s",
    "--src": "-s",
    "-d": "-d",
    "--destination": "-d",
    "--dst": "-d",
    "-p": "-p",
    "--protocol": "-p",
    "-i": "-i",
    "--in-interface": "-i",
    "-o": "-o",
    "--out-interface": "-o",
    "-f": "-f",
    "--fragment": "-f",
}

_OPTION_ALIASES: Mapping[str, str] = {
    "--destination-port": "--dport",
    "--source-port": "--sport",
    "--destination-ports": "--dports",
    "--source-ports": "--sports",
}

_ZERO_ARG_OPTIONS = frozenset(
    {
        "-f",
        "--rcheck",
        "--update",
        "--set",
        "--remove",
        "--reap",
        "--rsource",
        "--rdest",
        "--rttl",
        "--random",
        "--random-fully",
        "--persistent",
        "--syn",
        "--log-uid",
        "--log-tcp-sequence",
        "--log-tcp-options",
        "--log-ip-options",
        "--physdev-is-in",
        "--physdev-is-out",
        "--physdev-is-bridged",
        "--return-nomatch",
        "--nodst",
    }
)
_TWO_ARG_OPTIONS = frozenset({"--tcp-flags", "--match-set", "--set-counters"})
_PROTOCOL_MODULES = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
_PORT_OPTIONS = frozenset({"--dport", "--sport"})


@dataclass(frozen=True, slots=True)
class Match:
    """One option of a rule: `module` is "" for the basic matches, the target name for
    target options; `option` is canonical (`-s`, `--dport`, `--comment`)."""

    module: str
    option: str
    values: tuple[str, ...] = ()
    negated: bool = False

    @property
    def value(self) -> str:
        return self.values[0] if self.values else ""

    def __str__(self) -> str:
        parts = ["!"] if self.negated else []
        parts.append(self.option)
        parts += [quote(v) for v in self.values]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule, structured. `text` is the rule as written after `-A CHAIN `."""

    table: str
    chain: str
    matches: tuple[Match, ...] = ()
    modules: tuple[str, ...] = ()  # `-m` modules in order
    target: str = ""  # "" when the rule has no target (it only counts)
    target_options: tuple[Match, ...] = ()
    goto: bool = False
    text: str = ""
    line: int = 0

    @property
    def comment(self) -> str | None:
        for m in self.matches:
            if m.module == "comment" and m.option == "--comment":
                return m.value
        return None

    def find(self, option: str, module: str | None = None) -> Match | None:
        """The first match with this option (and module, when given)."""
        for m in self.matches:
            if m.option == option and (module is None or m.module == module):
                return m
        return None

    def target_option(self, option: str) -> str | None:
        for m in self.target_options:
            if m.option == option:
                return m.value
        return None

    def key(self) -> str:
        """A canonical form: equal for a restore input rule and its iptables-save echo."""
        parts = sorted(_canonical_match(m) for m in self.matches if not _is_default_option(m))
        target = self.target
        opts = [_canonical_target_option(self.target, m) for m in self.target_options]
        if target == "MARK":
            opts = [_canonical_mark_target(self.target_options)]
        elif target == "MASQUERADE":
            opts = sorted(opts)
        elif target == "REJECT":
            # iptables-save spells out the default.
            opts = [o for o in opts if o not in _DEFAULT_REJECT]
        jump = ("-g " if self.goto else "-j ") + target if target else ""
        return " ".join([*parts, jump, *opts]).strip()

    def __str__(self) -> str:
        return f"-A {self.chain} {self.text}".rstrip()


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str  # "-" for a user-defined chain
    rules: tuple[Rule, ...] = ()

    @property
    def builtin(self) -> bool:
        return self.policy != "-"


@dataclass(frozen=True)
class Table:
    name: str
    chains: Mapping[str, Chain]
    deleted: tuple[str, ...] = ()  # chains the input removed with -X
    _candidates: dict[tuple[str, str], tuple[tuple[int, Rule], ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _indexes: dict[str, "_DestinationIndex"] = field(default_factory=dict, compare=False, repr=False)

    def policy(self, chain: str) -> str | None:
        """The chain's policy (`-` for a user chain), None when the table has no such chain."""
        if isinstance(self.chains, _LazyChains):
            return self.chains.policy(chain)
        c = self.chains.get(chain)
        return c.policy if c is not None else None

    def candidates(self, chain: str, dst: str | None) -> tuple[tuple[int, Rule], ...] | None:
        """(1-based position, rule) of the chain's rules that a packet addressed to `dst` can
        match (every rule when `dst` is None), in order; None when the table has no such chain.

        Exact, not a guess: only rules whose one non-negated `-d` is a single address other
        than `dst` are left out (they cannot match), so a walk over the candidates meets the
        same rules as a walk over the whole chain. Big chains (KUBE-SERVICES of a large
        cluster) are indexed by destination once; in a lazily parsed table only the
        candidates are ever parsed.
        """
        if chain not in self.chains:
            return None
        key = (chain, _canonical_ip(dst) if dst else "*")
        found = self._candidates.get(key)
        if found is not None:
            return found
        index = self._indexes.get(chain)
        if index is None:
            index = self._indexes[chain] = _DestinationIndex.build(self, chain)
        found = index.lookup(self, chain, key[1])
        self._candidates[key] = found
        return found


class JumpLike(Protocol):
    """Anything that describes a rule in a built-in chain (e.g. backends' JumpRule)."""

    @property
    def table(self) -> str: ...

    @property
    def chain(self) -> str: ...

    @property
    def target(self) -> str: ...

    def args(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Ruleset:
    """Parsed tables, in input order."""

    tables: Mapping[str, Table] = field(default_factory=dict)

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)

    def chain(self, table: str, name: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(name) if t else None

    def chains(self, table: str) -> tuple[str, ...]:
        t = self.tables.get(table)
        return tuple(t.chains) if t else ()

    def policy(self, table: str, chain: str) -> str | None:
        t = self.tables.get(table)
        return t.policy(chain) if t else None

    def candidates(self, table: str, chain: str, dst: str | None) -> tuple[tuple[int, Rule], ...] | None:
        """See Table.candidates: the rules of table/chain a packet to `dst` can match."""
        t = self.tables.get(table)
        return t.candidates(chain, dst) if t else None

    def first_rules(self, table: str, chain: str, count: int) -> tuple[Rule, ...]:
        """The chain's first `count` rules (in a lazily parsed table, only those are parsed)."""
        t = self.tables.get(table)
        if t is None or chain not in t.chains:
            return ()
        chains = t.chains
        if isinstance(chains, _LazyChains) and not chains.is_built(chain):
            return tuple(chains.rule(chain, i) for i in range(min(count, len(chains.raw_lines(chain)))))
        return chains[chain].rules[:count]

    def rules_containing(self, table: str, chain: str, needle: str) -> list[tuple[int, Rule]]:
        """(1-based position, rule) of the chain's rules whose text contains `needle`; in a
        lazily parsed table only those rules are parsed."""
        t = self.tables.get(table)
        if t is None or chain not in t.chains:
            return []
        chains = t.chains
        if isinstance(chains, _LazyChains) and not chains.is_built(chain):
            return [(i + 1, chains.rule(chain, i)) for i in chains.containing(chain, needle)]
        return [(i + 1, r) for i, r in enumerate(chains[chain].rules) if needle in r.text]

    def rules(self) -> Iterator[Rule]:
        for t in self.tables.values():
            for c in t.chains.values():
                yield from c.rules

    def with_prepended(self, rules: Iterable[tuple[str, str, Sequence[str]]]) -> "Ruleset":
        """A copy with each (table, chain, argv) inserted at position 1, in order, creating
        built-in chains (policy ACCEPT) as needed: what an applier's `-I CHAIN 1` does."""
        tables = {name: dict(t.chains) for name, t in self.tables.items()}
        deleted = {name: t.deleted for name, t in self.tables.items()}
        for table, chain, args in rules:
            chains = tables.setdefault(table, {})
            current = chains.get(chain)
            if current is None:
                policy = "ACCEPT" if chain in BUILTIN_CHAINS.get(table, ()) else "-"
                current = Chain(chain, policy)
            rule = parse_rule_args(table, chain, list(args), " ".join(quote(a) for a in args))
            chains[chain] = replace(current, rules=(rule, *current.rules))
        return Ruleset({name: Table(name, chains, deleted.get(name, ())) for name, chains in tables.items()})

    def with_jump_rules(self, jumps: Iterable[JumpLike]) -> "Ruleset":
        """A copy with kube-proxy-style jump rules inserted as an applier would: each target
        chain is created (empty) when missing, then the jump is inserted at position 1."""
        jumps = list(jumps)
        tables = {name: dict(t.chains) for name, t in self.tables.items()}
        for j in jumps:
            chains = tables.setdefault(j.table, {})
            chains.setdefault(j.target, Chain(j.target, "-"))
        base = Ruleset({name: Table(name, chains, self.tables[name].deleted if name in self.tables else ())
                        for name, chains in tables.items()})
        return base.with_prepended((j.table, j.chain, j.args()) for j in jumps)


# --- tokenising ------------------------------------------------------------------------


def quote(word: str) -> str:
    """Quote a word for iptables-restore input when it needs it."""
    if word and not any(c in word for c in ' "\\\t'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


_SIMPLE_QUOTED_LINE = re.compile(r'\s*(?:(?:"[^"\\]*"|[^\s"\'\\]+)(?:\s+|$))*')
_SIMPLE_WORD = re.compile(r'"([^"\\]*)"|([^\s"]+)')


def split_line(line: str) -> list[str]:
    """Split one line into words: whitespace separated, double quotes group, `\\` escapes."""
    if '"' not in line and "\\" not in line and "'" not in line:
        return line.split()
    if "\\" not in line and "'" not in line and _SIMPLE_QUOTED_LINE.fullmatch(line):
        # Whole quoted words without escapes (every comment iptables-save prints): C speed.
        return [quoted or bare for quoted, bare in _SIMPLE_WORD.findall(line)]
    words: list[str] = []
    buf: list[str] = []
    in_word = False
    quote_char = ""
    i = 0
    n = len(line)
    while i < n:
        c = line[i]
        if quote_char:
            if c == "\\" and i + 1 < n and line[i + 1] in (quote_char, "\\"):
                buf.append(line[i + 1])
                i += 2
                continue
            if c == quote_char:
                quote_char = ""
            else:
                buf.append(c)
        elif c in "\"'":
            quote_char = c
            in_word = True
        elif c == "\\" and i + 1 < n:
            buf.append(line[i + 1])
            in_word = True
            i += 2
            continue
        elif c.isspace():
            if in_word:
                words.append("".join(buf))
                buf = []
                in_word = False
        else:
            buf.append(c)
            in_word = True
        i += 1
    if quote_char:
        raise ValueError("unterminated quote")
    if in_word:
        words.append("".join(buf))
    return words


# --- rule arguments --------------------------------------------------------------------


def _arity(option: str, args: Sequence[str], i: int) -> int:
    if option in _ZERO_ARG_OPTIONS:
        return 0
    if option in _TWO_ARG_OPTIONS:
        return 2
    if option == "--comment":
        return 1
    if i < len(args) and (not args[i].startswith("-") or _is_number(args[i])):
        return 1
    return 0


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def parse_rule_args(table: str, chain: str, args: Sequence[str], text: str = "", line: int = 0) -> Rule:
    """Structure one rule's argv (what follows `-A CHAIN`)."""
    return _build_rule(table, chain, args, _rule_plan(args), text, line, None)


# A rule's plan: how its words become matches, read once per shape of rule (`_Shared`).
# (module, option, first word, word count, negated) per match; modules; the target's word
# (-1: none); (option, first word, word count, negated) per target option; goto.
# The last element: (position, word) of each module name and lower-cased protocol the plan
# read, which a rule of the same shape must have for the plan to be its own.
_Plan = tuple[tuple[tuple[str, str, int, int, bool], ...], tuple[str, ...], int,
              tuple[tuple[str, int, int, bool], ...], bool, tuple[tuple[int, str], ...]]


def _rule_plan(args: Sequence[str]) -> _Plan:
    """parse_rule_args's reading of `args`, as word positions (ValueError when it is no rule)."""
    matches: list[tuple[str, str, int, int, bool]] = []
    modules: list[str] = []
    target = -1
    target_options: list[tuple[str, int, int, bool]] = []
    checks: list[tuple[int, str]] = []
    goto = False
    module: str | None = None
    protocol = ""
    in_target = False
    negate = False
    i = 0
    n = len(args)
    while i < n:
        word = args[i]
        i += 1
        if word == "!":
            negate = True
            continue
        if word in ("-m", "--match"):
            if i >= n:
                raise ValueError(f"{word} needs a module name")
            module = args[i]
            modules.append(module)
            checks.append((i, module))
            in_target = False
            i += 1
            continue
        if word in ("-j", "--jump", "-g", "--goto"):
            if i >= n:
                raise ValueError(f"{word} needs a target")
            target = i
            goto = word in ("-g", "--goto")
            in_target = True
            i += 1
            continue
        basic = _BASIC_OPTIONS.get(word)
        if basic is not None and not in_target:
            if basic == "-f":
                matches.append(("", "-f", i, 0, negate))
            else:
                if i >= n:
                    raise ValueError(f"{word} needs a value")
                if basic == "-p":
                    protocol = args[i].lower()
                    checks.append((-1 - i, protocol))  # negative: compared lower-cased
                matches.append(("", basic, i, 1, negate))
                i += 1
            negate = False
            continue
        if not word.startswith("-"):
            raise ValueError(f"unexpected word {word!r}")
        option = _OPTION_ALIASES.get(word, word)
        count = _arity(option, args, i)
        if in_target:
            target_options.append((option, i, count, negate))
        else:
            owner = module
            if option in _PORT_OPTIONS and (owner is None or owner not in _PROTOCOL_MODULES):
                owner = protocol or owner or ""
            matches.append((owner or "", option, i, count, negate))
        i += count
        negate = False
    return tuple(matches), tuple(modules), target, tuple(target_options), goto, tuple(checks)


def _fits(plan: _Plan, args: Sequence[str]) -> bool:
    """Whether `plan` (read from a rule of the same shape) reads `args` too: the same module
    names and protocols where it found them."""
    for i, word in plan[5]:
        if (args[i] if i >= 0 else args[-1 - i].lower()) != word:
            return False
    return True


def _build_rule(table: str, chain: str, args: Sequence[str], plan: _Plan, text: str, line: int,
                shared: "_Shared | None") -> Rule:
    match_plan, modules, target_at, option_plan, goto, _ = plan
    target = args[target_at] if target_at >= 0 else ""
    if shared is None:
        matches = tuple(Match(module, option, tuple(args[i:i + count]), neg)
                        for module, option, i, count, neg in match_plan)
        options = tuple(Match(target, option, tuple(args[i:i + count]), neg) for option, i, count, neg in option_plan)
    else:
        match = shared.match
        matches = tuple(match(module, option, tuple(args[i:i + count]), neg)
                        for module, option, i, count, neg in match_plan)
        options = tuple(match(target, option, tuple(args[i:i + count]), neg) for option, i, count, neg in option_plan)
    return Rule(
        table=table,
        chain=chain,
        matches=matches,
        modules=modules,
        target=target,
        target_options=options,
        goto=goto,
        text=text if text else " ".join(quote(a) for a in args),
        line=line,
    )


# Words after which the next word decides how a rule reads (a module, a protocol).
_KEEP_NEXT = frozenset({"-m", "--match", "-p", "--protocol"})
# A value word after the first (not an option, not `!`), in text with single spaces and no
# quotes or escapes (what iptables-save prints): a rule's shape has "\0" in its place.
_VALUE_WORD = re.compile(r" [^-! ][^ ]*")


class _Shared:
    """What the rules of one big table share: equal Matches are one object (a 500,000-rule
    dump holds a few distinct `-p tcp`, not 500,000), and a rule's plan is read once per
    shape (the words that decide it, with addresses, chain names and numbers left out)."""

    __slots__ = ("matches", "plans")

    def __init__(self) -> None:
        self.matches: dict[tuple[str, str, tuple[str, ...], bool], Match] = {}
        self.plans: dict[object, _Plan] = {}

    def rule(self, table: str, chain: str, rest: str, line: int) -> Rule:
        """parse_rule_args(table, chain, split_line(rest), rest, line), sharing what it can."""
        if '"' in rest or "\\" in rest or "'" in rest or "\t" in rest or "  " in rest:
            args: tuple[str, ...] = tuple(split_line(rest))
            shape: object = tuple(w if (w[:1] == "-" or w == "!" or prev in _KEEP_NEXT) else None
                                  for prev, w in zip(("",) + args, args))
        else:
            # the options and `!` as they are, the other words as "\0": module names and
            # protocols too, which `_fits` compares
            args = tuple(rest.split())
            shape = _VALUE_WORD.sub(" \0", rest)
        plan = self.plans.get(shape)
        if plan is None or not _fits(plan, args):
            plan = _rule_plan(args)
            self.plans.setdefault(shape, plan)
        match_plan, modules, target_at, option_plan, goto, _ = plan
        matches = self.matches
        found: list[Match] = []
        for module, option, i, count, neg in match_plan:
            key = (module, option, args[i:i + count], neg)
            m = matches.get(key)
            if m is None:
                m = matches[key] = Match(*key)
            found.append(m)
        target = ""
        options: tuple[Match, ...] = ()
        if target_at >= 0:
            target = args[target_at]
            if option_plan:
                opts: list[Match] = []
                for option, i, count, neg in option_plan:
                    key = (target, option, args[i:i + count], neg)
                    m = matches.get(key)
                    if m is None:
                        m = matches[key] = Match(*key)
                    opts.append(m)
                options = tuple(opts)
        return Rule(table, chain, tuple(found), modules, target, options, goto, rest or " ".join(map(quote, args)),
                    line)


# --- whole text ------------------------------------------------------------------------


class _TableBuilder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.policies: dict[str, str] = {}
        self.rules: dict[str, list[Rule]] = {}
        self.deleted: list[str] = []

    def declare(self, chain: str, policy: str) -> None:
        self.policies[chain] = policy
        self.rules[chain] = []  # a chain line flushes the chain
        if chain in self.deleted:
            self.deleted.remove(chain)

    def ensure(self, chain: str) -> list[Rule]:
        if chain not in self.rules:
            builtin = chain in BUILTIN_CHAINS.get(self.name, ())
            self.policies[chain] = "ACCEPT" if builtin else "-"
            self.rules[chain] = []
        return self.rules[chain]

    def build(self) -> Table:
        chains = {c: Chain(c, self.policies[c], tuple(self.rules[c])) for c in self.rules}
        return Table(self.name, chains, tuple(self.deleted))


class _Lines:
    """Line numbers of byte offsets in one buffer: checkpoints a first pass leaves (offset →
    number of the line starting there), and a count of newlines from the nearest one."""

    __slots__ = ("buf", "offsets", "numbers")

    def __init__(self, buf: DumpBuffer) -> None:
        self.buf = buf
        self.offsets: list[int] = [0]
        self.numbers: list[int] = [1]

    def mark(self, offset: int, number: int) -> None:
        if offset > self.offsets[-1]:
            self.offsets.append(offset)
            self.numbers.append(number)

    def number(self, offset: int) -> int:
        """The number of the line holding `offset`."""
        i = bisect.bisect_right(self.offsets, offset) - 1
        return self.numbers[i] + self.buf.count(b"\n", self.offsets[i], offset)


class _LazyChains(Mapping[str, Chain]):
    """A table's chains whose rules are parsed when a chain is first looked at.

    The index is one dict entry per chain, in the table's order: where its run of `-A` lines
    starts in the dump, -1 for a chain without rules (iptables-save prints a chain's rules
    together; a dump with a chain written in pieces is parsed in full). Policies other than
    `-` sit in `policies`. A run's end and its lines' numbers are found again when
    the chain is read (`_RUN` from its start, `_Lines` for the number), so a 60,000-chain
    table costs one small entry per chain. A malformed rule raises RulesetParseError when its
    chain is read. A chain read in full keeps its rules (the raw lines and single rules read
    before are dropped then); the rules of one table share equal words and Matches
    (`_Shared`)."""

    def __init__(self, table: str, source: str, buf: DumpBuffer, lines: _Lines,
                 shared: "_Shared | None" = None) -> None:
        self.table = table
        self.source = source
        self.buf = buf
        self.lines = lines
        self.index: dict[str, int] = {}  # name → the start of its run of rules, -1: none
        self.policies: dict[str, str] = {}  # every policy other than "-"
        self._raw: dict[str, list[tuple[int, str]]] = {}
        self._texts: dict[str, tuple[int, list[str]]] = {}  # a chain's first line number and lines
        self._built: dict[str, Chain] = {}
        self._rules: dict[str, dict[int, Rule]] = {}
        self._shared = shared if shared is not None else _Shared()

    def policy(self, name: str) -> str | None:
        if name not in self.index:
            return None
        return self.policies.get(name, "-")

    def _run(self, name: str) -> tuple[int, int]:
        """[start, end) of the chain's lines in the dump (empty for a chain without rules)."""
        start = self.index[name]
        if start < 0:
            return 0, 0
        found = _RUN.match(self.buf.data, start - 1)
        return start, found.end() if found is not None else start

    # -- the rules --

    def __getitem__(self, name: str) -> Chain:
        chain = self._built.get(name)
        if chain is None:
            policy = self.policy(name)
            if policy is None:
                raise KeyError(name)
            if name in self._rules:
                lines = self.raw_lines(name)
                rules = tuple(self.rule(name, i) for i in range(len(lines)))
            else:
                rules = self._parse_all(name)
            chain = Chain(name, policy, rules)
            self._built[name] = chain
            self._raw.pop(name, None)
            self._texts.pop(name, None)
            self._rules.pop(name, None)
        return chain

    def _lines_of(self, name: str) -> Iterator[tuple[int, str]]:
        """(line number, text after `-A CHAIN `) of each of the chain's rules, from the dump."""
        start, end = self._run(name)
        if end > start:
            number, skip = self.lines.number(start), len(name) + 4  # "-A " + name + " "
            for offset, line in enumerate(self.buf.text(start, end).split("\n")):
                yield number + offset, line[skip:].strip()

    def _raw_line(self, name: str, index: int) -> tuple[int, str]:
        """raw_lines(name)[index], without making the list: the chain's text is split once
        (a C-level split), and only the lines asked for are trimmed."""
        found = self._raw.get(name)
        if found is not None:
            return found[index]
        number, texts = self._split(name)
        return number + index, texts[index][len(name) + 4:].strip()

    def _split(self, name: str) -> tuple[int, list[str]]:
        """The number of the chain's first line, and its lines (split once, kept until the
        chain is read in full)."""
        found = self._texts.get(name)
        if found is None:
            start, end = self._run(name)
            lines = self.buf.text(start, end).split("\n") if end > start else []
            found = self._texts[name] = (self.lines.number(start), lines)
        return found

    def containing(self, name: str, needle: str) -> list[int]:
        """The indexes of the chain's rules whose text (after `-A CHAIN `) holds `needle`: a
        test on each whole line first, so only the lines that hold it are trimmed."""
        found = self._raw.get(name)
        if found is not None:
            return [i for i, (_, rest) in enumerate(found) if needle in rest]
        skip, lines = len(name) + 4, self._split(name)[1]
        return [i for i, line in enumerate(lines) if needle in line and needle in line[skip:].strip()]

    def destinations(self, name: str) -> list[str]:
        """`_raw_destination` of each of the chain's rules, read from the dump's bytes: one
        regular expression tells apart the lines that start with a lone single-address `-d`
        (their key is that address), the lines without `-d` anywhere (no key), and the others,
        which are the only ones decoded and read with `_raw_destination`."""
        start, end = self._run(name)
        if end <= start:
            return []
        found = _LEADING_DESTINATION.findall(self.buf.data, start, end)
        if not _alone(self.buf.data[start:end], found):
            found = _DESTINATION_LINE.findall(self.buf.data, start, end)
        keys = [v4.decode() if v4 else _canonical_ip(v6.decode()) if v6 else _UNREAD if other else ""
                for v4, v6, other in found]
        if _UNREAD in keys:
            skip, texts = len(name) + 4, self._split(name)[1]
            keys = [_raw_destination(texts[i][skip:].strip()) if key == _UNREAD else key
                    for i, key in enumerate(keys)]
        return keys

    def _parse_all(self, name: str) -> tuple[Rule, ...]:
        """Every rule of a chain none of whose rules was read yet, straight from the dump."""
        parse_one = self._shared.rule
        table = self.table
        out: list[Rule] = []
        number = 0
        try:
            for number, rest in self._lines_of(name):
                out.append(parse_one(table, name, rest, number))
        except ValueError as exc:
            raise RulesetParseError(f"bad rule: {exc}", number, self.source) from None
        return tuple(out)

    def is_built(self, name: str) -> bool:
        return name in self._built

    def rule(self, name: str, index: int) -> Rule:
        """The chain's rule at `index` (0-based), parsed once."""
        built = self._built.get(name)
        if built is not None:
            return built.rules[index]
        done = self._rules.get(name)
        if done is None:
            done = self._rules[name] = {}
        rule = done.get(index)
        if rule is None:
            number, rest = self._raw_line(name, index)
            try:
                rule = self._shared.rule(self.table, name, rest, number)
            except ValueError as exc:
                raise RulesetParseError(f"bad rule: {exc}", number, self.source) from None
            done[index] = rule
        return rule

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def raw_lines(self, name: str) -> list[tuple[int, str]]:
        """(line number, text after `-A CHAIN `) of a chain's rules, unparsed."""
        built = self._built.get(name)
        if built is not None:
            return [(r.line, r.text) for r in built.rules]
        found = self._raw.get(name)
        if found is None:
            found = self._raw[name] = list(self._lines_of(name))
            self._texts.pop(name, None)
        return found


_INDEX_MIN_RULES = 32  # smaller chains are simply walked rule by rule

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_RAW_DESTINATION = re.compile(r"(?:^|\s)(!\s+)?(?:-d|--destination|--dst)\s+(\S+)")
_RAW_TARGET = re.compile(r"(?:^|\s)(?:-j|--jump|-g|--goto)\s")


def _canonical_ip(text: str) -> str:
    """An address as the index keys it: no /32 or /128, IPv6 compressed; "" for a network."""
    value, _, length = text.partition("/")
    if ":" in value:
        try:
            addr = ipaddress.IPv6Address(value)
        except ValueError:
            return ""
        return str(addr) if length in ("", "128") else ""
    return value if length in ("", "32") else ""


def _raw_destination(rest: str) -> str:
    """The one non-negated single-address `-d` of a raw rule, or "" (any destination)."""
    if "-d" not in rest:
        return ""
    body = _QUOTED.sub('""', rest) if '"' in rest else rest
    target = _RAW_TARGET.search(body)
    if target is not None:
        body = body[: target.start()]
    found = _RAW_DESTINATION.findall(body)
    if len(found) != 1 or found[0][0]:
        return ""
    return _canonical_ip(found[0][1])


# One match per line of a chain's run (MULTILINE): group 1 or 2, the address of a line whose
# rule starts with `-d ADDRESS` (one address: /32 or /128 at most), in plain ASCII with no
# other `-d`, `--destination` or `--dst` word; group 3, a line holding `-d` otherwise (read
# with `_raw_destination`); nothing, a line without `-d` anywhere (any destination).
_DESTINATION_LINE = re.compile(
    rb"^-A [!-~]+ -d (?:([0-9.]+)(?:/32)?|([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:/128)?))"
    rb"(?= )(?![ -~]* -(?:d|-destination|-dst) )(?=[ -~]*$)"
    rb"|^(?=[^\n]*(-d))"
    rb"|^",
    re.MULTILINE,
)
_UNREAD = "?"  # no address or network reads so: a line `_raw_destination` reads
# _DESTINATION_LINE without its look at the rest of the line, which `_alone` makes for the
# whole chain at once (twice as fast on a chain of 10,000 rules)
_LEADING_DESTINATION = re.compile(
    rb"^-A [^ ]+ -d (?:([0-9.]+)(?:/32)?|([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:/128)?))(?= )"
    rb"|^(?=[^\n]*(-d))"
    rb"|^",
    re.MULTILINE,
)


def _alone(text: bytes, found: list[tuple[bytes, bytes, bytes]]) -> bool:
    """Whether the leading `-d` of each line `_LEADING_DESTINATION` keyed in `text` is its
    line's only `-d`, `--destination` or `--dst` word, as `_DESTINATION_LINE` asks: true when
    the text is plain ASCII without tabs (a space is the only whitespace then) and holds
    exactly one ` -d ` per keyed line and no other such word."""
    if not text.isascii() or b"\t" in text or b" --destination " in text or b" --dst " in text:
        return False
    v4, v6, _ = zip(*found) if found else ((), (), ())
    return text.count(b" -d ") == len(v4) - v4.count(b"") + len(v6) - v6.count(b"")


def _rule_destination(rule: Rule) -> str:
    found = [m for m in rule.matches if m.option == "-d" and not m.module]
    if len(found) != 1 or found[0].negated:
        return ""
    return _canonical_ip(found[0].value)


@dataclass(frozen=True)
class _DestinationIndex:
    """The single address each rule of one chain names in its `-d` ("" = any), in rule
    order. A destination's rules are found when it is asked, by a scan that runs in C:
    cheaper, for the few destinations one question asks about, than a dict of every address
    of a 10,000-rule chain."""

    keys: Sequence[str]  # empty for a small chain: every rule is a candidate
    wildcards: tuple[int, ...]
    size: int

    @classmethod
    def build(cls, table: Table, chain: str) -> "_DestinationIndex":
        chains = table.chains
        if isinstance(chains, _LazyChains) and not chains.is_built(chain):
            keys = chains.destinations(chain)
        else:
            keys = [_rule_destination(r) for r in chains[chain].rules]
        if len(keys) < _INDEX_MIN_RULES:
            return cls((), tuple(range(len(keys))), len(keys))
        return cls(keys, tuple(_positions(keys, "")), len(keys))

    def lookup(self, table: Table, chain: str, dst: str) -> tuple[tuple[int, Rule], ...]:
        """The candidates for destination `dst` ("*": every rule)."""
        if dst == "*":
            positions: Sequence[int] = range(self.size)
        elif self.keys:
            positions = sorted(_positions(self.keys, dst) + list(self.wildcards))
        else:
            positions = self.wildcards
        chains = table.chains
        if isinstance(chains, _LazyChains):
            return tuple((i + 1, chains.rule(chain, i)) for i in positions)
        rules = chains[chain].rules
        return tuple((i + 1, rules[i]) for i in positions)


def _positions(keys: Sequence[str], key: str) -> list[int]:
    """Where `key` is in `keys`, in order (each search a `list.index`)."""
    found: list[int] = []
    try:
        while True:
            found.append(keys.index(key, found[-1] + 1 if found else 0))
    except ValueError:
        return found


# A run of consecutive rules of one chain (from the newline before its first line), and a
# chain line (from the newline before it). A chain name the full parser would read otherwise
# (quotes, backslashes, anything but printable ASCII) is no match: such a dump is parsed in full.
_NAME = rb"[\x21\x23-\x26\x28-\x5b\x5d-\x7e]+"
_RUN = re.compile(rb"\n-A (" + _NAME + rb") (?:[^\n]*\n-A \1 )*[^\n]*")
_RUN_TEXT = re.compile(rb"(\n-A (" + _NAME + rb") (?:[^\n]*\n-A \2 )*[^\n]*)")
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_DECLARATION = re.compile(rb"\n:(" + _NAME + rb")[ \t]*([\x21-\x7e]*)")
# Bytes the full parser's str.splitlines() would end a line at, and whitespace only str.split()
# knows: a dump holding one is parsed in full.
_ODD_ASCII = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\x1f")
_ODD_UTF8 = (b"\xc2\x85", b"\xc2\xa0", b"\xe2\x80\xa8", b"\xe2\x80\xa9")


def _plain(chunk: bytes) -> bool:
    """No byte in `chunk` that makes lines or words differ between the cut and the full parser."""
    if any(odd in chunk for odd in _ODD_ASCII):
        return False
    return chunk.isascii() or not any(odd in chunk for odd in _ODD_UTF8)


def table_blocks(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every `*table` … `COMMIT` block; `end` is just after COMMIT.

    str.find only, so a 20 MB dump is cut up in milliseconds."""
    return _blocks(text, "\n*", "\nCOMMIT", ("", "\n", " ", "\t", "\r"))  # type: ignore[arg-type]


def _blocks(text: "str | Bytes", opening: "str | bytes", closing: "str | bytes",
            after: tuple[object, ...]) -> Iterator[tuple[int, int]]:
    pos = 0
    star = opening[1:]
    while True:
        if pos == 0 and text[:1] == star:
            start = 0
        else:
            found = text.find(opening, pos)  # type: ignore[arg-type]
            if found < 0:
                return
            start = found + 1
        end = text.find(closing, start)  # type: ignore[arg-type]
        while end >= 0 and text[end + 7: end + 8] not in after:
            end = text.find(closing, end + 7)  # type: ignore[arg-type]
        if end < 0:
            return
        pos = end + 7
        yield start, pos


def _only_comments(buf: DumpBuffer, start: int, end: int) -> bool:
    return not any(ln.strip() and not ln.lstrip().startswith("#") for ln in buf.text(start, end).splitlines())


def _parse_lazy(buf: DumpBuffer, source: str) -> Ruleset | None:
    """iptables-save output cut into tables and chains without parsing a single rule; None
    when the dump holds anything else than chain lines and `-A` rules inside its tables
    (restore input with -X/-I/-D, counters, stray lines, odd bytes, a chain written in
    pieces): the full parser handles those.

    Every line is accounted for: a table must be its chain lines, then runs of `-A CHAIN
    ...` lines that `_RUN` finds back to back up to COMMIT. The dump is scanned a window at a
    time with regular expressions and C-level iterators only (a window's pages are handed
    back once it is scanned), so a 230,000-line dump is cut up in a few hundredths of a second
    and what stays is one index entry per chain."""
    data = buf.data
    lines = _Lines(buf)
    tables: dict[str, _LazyChains] = {}
    shared = _Shared()
    pos, number = 0, 1  # number: the number of the line starting at `pos`
    blocks = dump_blocks(buf)
    buf.release(0, buf.size)  # what finding them touched
    for start, stop in blocks:
        if not _only_comments(buf, pos, start):
            return None
        number += buf.count(b"\n", pos, start)
        pos = stop
        head_end = data.find(b"\n", start)
        name = buf.text(start + 1, head_end).strip()
        if not name or name in tables:
            return None
        body, commit = head_end + 1, stop - len("COMMIT")
        number += 1
        chains = _LazyChains(name, source, buf, lines, shared)
        index, policies = chains.index, chains.policies
        # iptables-save prints every chain line first, then the rules, chain by chain.
        first_rule = data.find(b"\n-A ", body - 1, commit)
        rules_start = commit if first_rule < 0 else first_rule + 1
        declared = 0
        for low, high in buf.windows(body, rules_start, WINDOW // 4):
            head = data[low - 1:high]
            found = _DECLARATION.findall(head)
            if not _plain(head) or len(found) != head.count(b"\n") - 1:
                return None  # something else than chain lines before the first rule
            number += len(found)
            declared += len(found)
            index.update(dict.fromkeys(map(bytes.decode, map(_FIRST, found)), -1))
            given = list(map(_SECOND, found))
            if given.count(b"-") + given.count(b"") != len(given):  # built-in chains: a few windows
                policies.update((chain.decode(), policy.decode()) for chain, policy in found
                                if policy not in (b"-", b""))
        if len(index) != declared:
            return None  # a chain declared twice (restore input): the full parser redoes it
        runs, last = 0, b""
        for low, high in buf.windows(rules_start, commit):
            chunk = data[low:high]
            if not _plain(chunk):
                return None
            lines.mark(low, number)
            number += chunk.count(b"\n")
            del chunk
            found = _RUN_TEXT.findall(data, low - 1, high - 1)
            if sum(map(len, map(_FIRST, found))) != high - low:
                return None  # a line between runs that is not `-A CHAIN ...`
            starts = accumulate(map(len, map(_FIRST, found)), initial=low)
            pairs = zip(map(bytes.decode, map(_SECOND, found)), starts)
            if found and found[0][1] == last:
                next(pairs)  # the run the last window ended in, going on
            runs += len(found) - (found[0][1] == last if found else 0)
            index.update(pairs)
            if found:
                last = found[-1][1]
            del found
        if len(index) - list(index.values()).count(-1) != runs:
            return None  # a chain with several runs of rules (restore input)
        builtin = BUILTIN_CHAINS.get(name, ())
        for chain in list(index)[declared:]:  # rules of chains never declared
            if chain in builtin:
                policies[chain] = "ACCEPT"
        tables[name] = chains
    if not _only_comments(buf, pos, buf.size):
        return None
    return Ruleset({name: Table(name, chains) for name, chains in tables.items()})


def parse_dump(buf: DumpBuffer, source: str) -> Ruleset | None:
    """A dump (a file read in place) cut lazily, or None when it is not plain iptables-save
    output (see `_parse_lazy`)."""
    return _parse_lazy(buf, source)


def dump_blocks(buf: DumpBuffer) -> list[tuple[int, int]]:
    """table_blocks of a dump: (start, end) byte offsets of every `*table` … `COMMIT` block
    (found once: telling a dump's kind and cutting it up both ask, and each search is a pass
    over the whole dump)."""
    found = buf.found.get("iptables blocks")
    if found is None:
        found = buf.found["iptables blocks"] = list(_blocks(buf.data, b"\n*", b"\nCOMMIT",
                                                           (b"", b"\n", b" ", b"\t", b"\r")))
    return list(found)


def parse(text: str, source: str = "<input>", lazy: bool = False) -> Ruleset:
    """Parse iptables-save output or iptables-restore input (one or more tables).

    With `lazy`, iptables-save output is only split into tables and chains here, and each
    chain's rules are parsed when the chain is first read (a 170,000-rule dump is ready in a
    fraction of a second when only a few chains are looked at); input with other commands
    than `-A` (restore input) is parsed in full either way.
    """
    if lazy:
        ruleset = _parse_lazy(DumpBuffer.from_text(text), source)
        if ruleset is not None:
            return ruleset
    tables: dict[str, _TableBuilder] = {}
    current: _TableBuilder | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name = line[1:].strip()
            if not name:
                raise RulesetParseError("table name missing after '*'", number, source)
            current = tables.get(name) or _TableBuilder(name)
            tables[name] = current
            continue
        if line == "COMMIT":
            if current is None:
                raise RulesetParseError("COMMIT outside a table", number, source)
            current = None
            continue
        if current is None:
            raise RulesetParseError(f"line outside a table (no '*table' before it): {line[:60]!r}", number, source)
        if line.startswith(":"):
            fields = line[1:].split()
            if not fields:
                raise RulesetParseError("chain name missing after ':'", number, source)
            current.declare(fields[0], fields[1] if len(fields) > 1 else "-")
            continue
        if line.startswith("["):  # iptables-save -c counters
            end = line.find("]")
            line = line[end + 1 :].strip() if end >= 0 else line
        try:
            words = split_line(line)
        except ValueError as exc:
            raise RulesetParseError(str(exc), number, source) from None
        if len(words) < 2:
            raise RulesetParseError(f"not a rule: {line[:60]!r}", number, source)
        command, chain = words[0], words[1]
        if command in ("-A", "--append"):
            rest = line.split(None, 2)
            rule_text = rest[2] if len(rest) > 2 else ""
            try:
                rule = parse_rule_args(current.name, chain, words[2:], rule_text, number)
            except ValueError as exc:
                raise RulesetParseError(f"bad rule: {exc}", number, source) from None
            current.ensure(chain).append(rule)
        elif command in ("-I", "--insert"):
            args = words[2:]
            position = 1
            if args and args[0].isdecimal():
                position = int(args[0])
                args = args[1:]
            try:
                rule = parse_rule_args(current.name, chain, args, " ".join(quote(a) for a in args), number)
            except ValueError as exc:
                raise RulesetParseError(f"bad rule: {exc}", number, source) from None
            current.ensure(chain).insert(max(position - 1, 0), rule)
        elif command in ("-X", "--delete-chain"):
            current.rules.pop(chain, None)
            current.policies.pop(chain, None)
            if chain not in current.deleted:
                current.deleted.append(chain)
        elif command in ("-F", "--flush"):
            if chain in current.rules:
                current.rules[chain] = []
        elif command in ("-N", "--new-chain"):
            current.ensure(chain)
        elif command in ("-P", "--policy"):
            current.ensure(chain)
            current.policies[chain] = words[2] if len(words) > 2 else "ACCEPT"
        elif command in ("-D", "--delete"):
            rules = current.ensure(chain)
            args = words[2:]
            if len(args) == 1 and args[0].isdecimal():
                idx = int(args[0]) - 1
                if 0 <= idx < len(rules):
                    rules.pop(idx)
            else:
                key = parse_rule_args(current.name, chain, args).key()
                for idx, rule in enumerate(rules):
                    if rule.key() == key:
                        rules.pop(idx)
                        break
        else:
            raise RulesetParseError(f"unknown command {command!r}", number, source)
    if current is not None:
        raise RulesetParseError(f"table {current.name!r} has no COMMIT", None, source)
    return Ruleset({name: builder.build() for name, builder in tables.items()})


# --- canonical forms -------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _canonical_address(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return value
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def parse_mark(text: str) -> tuple[int, int]:
    """`value[/mask]` → (value, mask); the mask defaults to all ones."""
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


_RECENT_DEFAULT_MASKS = frozenset({"255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"})


def _is_default_option(m: Match) -> bool:
    """Options iptables-save spells out although they are the default (`-m recent`)."""
    if m.module != "recent" or m.negated:
        return False
    return m.option == "--rsource" or (m.option == "--mask" and m.value in _RECENT_DEFAULT_MASKS)


def _canonical_match(m: Match) -> str:
    values = m.values
    if m.option in ("-s", "-d"):
        values = tuple(_canonical_address(v) for v in values)
    elif m.option == "-p":
        values = tuple(v.lower() for v in values)
    elif m.module == "mark" and m.option == "--mark" and values:
        try:
            v, mask = parse_mark(values[0])
            values = (f"0x{v:x}/0x{mask:x}",)
        except ValueError:
            pass
    elif m.module == "statistic" and m.option == "--probability" and values:
        # The kernel keeps the probability as a fraction of 2^31 (xt_statistic), which is
        # what iptables-save prints back (11 decimals): compare those fractions.
        try:
            values = (str(round(float(values[0]) * 0x80000000)),)
        except ValueError:
            pass
    prefix = f"-m {m.module} " if m.module else ""
    neg = "! " if m.negated else ""
    return f"{prefix}{neg}{m.option} {' '.join(values)}".strip()


_DEFAULT_REJECT = frozenset({"--reject-with icmp-port-unreachable", "--reject-with icmp6-port-unreachable"})


def _canonical_target_option(target: str, m: Match) -> str:
    return str(m)


def _canonical_mark_target(options: Sequence[Match]) -> str:
    """MARK's option → `--set-xmark value/mask` (what iptables-save prints)."""
    for m in options:
        try:
            if m.option == "--set-xmark":
                v, mask = parse_mark(m.value)
            elif m.option == "--set-mark":
                v, mask = parse_mark(m.value)
                mask = mask if "/" in m.value else 0xFFFFFFFF
            elif m.option == "--or-mark":
                v = int(m.value, 0)
                mask = v
            elif m.option == "--xor-mark":
                v, mask = int(m.value, 0), 0
            elif m.option == "--and-mark":
                v, mask = 0, (~int(m.value, 0)) & 0xFFFFFFFF
            else:
                continue
        except ValueError:
            continue
        return f"--set-xmark 0x{v:x}/0x{mask:x}"
    return " ".join(str(m) for m in options)


def statistic_cascade(rules: Sequence[Rule]) -> dict[int, float]:
    """Rule index → the share of new connections that take it, in a KUBE-SVC/SVL chain's
    `statistic --probability` cascade (each rule sees what the earlier ones left; affinity
    (`recent`) rules and rules not jumping to a KUBE-SEP chain take no share)."""
    remaining = 1.0
    out: dict[int, float] = {}
    for i, rule in enumerate(rules):
        if not rule.target.startswith("KUBE-SEP-") or any(m.module == "recent" for m in rule.matches):
            continue
        p = 1.0
        for m in rule.matches:
            if m.module == "statistic" and m.option == "--probability":
                try:
                    p = float(m.value)
                except ValueError:
                    p = 1.0
        out[i] = remaining * p
        remaining *= 1.0 - p
    return out
