"""`nft -j list ruleset` read where it lies: items decoded when a question reaches them.

Theory of operation: a 10,000-service node's `nft -j` output is one 50 MB line, and decoding
it whole (`parse.parse_nft_doc`) makes half a gigabyte of Python objects for a question
about one Service. nft writes its document in a fixed shape, which this reader relies on
and checks:

* items are `{"KIND": {"family": …, …}}` objects, `, `-separated in one `"nftables"` list;
  a table's items follow its `table` item: its sets and maps, then its chains, then its rules
  chain by chain, in the order of the chains;
* the keys of the items that matter come first in a fixed order (`"family", "table",
  "name"` for a chain, `"family", "table", "chain"` for a rule, `"family", "name", "table"`
  for a set or map), and a plain chain is only those and `"handle"`.

A first pass (`parse_nft_dump`) scans the document a window at a time with regular
expressions and C-level iterators: it finds every table, set and map, the names of the chains
in order (a chain with more than a handle, a base chain, is decoded there and then), and
checks that the rules come chain by chain in that order. Every item start (`": {"family": "`,
which nft writes once in every item and nowhere else) must be one it recognised, and only
nft's `metainfo` may come before the first table (an escaped name, another key order, a
table's items out of place: None, and the caller decodes the whole document instead). What
stays is one dict entry per chain.

Then a chain's rules are found by bisecting the table's rules by position (the chain names
at the probes say which way to go), and decoded with `json.loads`, each item checked like the
whole-document parser checks it; a set or map is decoded the first time it is looked up.
An item of another kind nft may print between them (counters, flowtables, …) is checked and
skipped, as the whole-document parser skips it. A malformed item raises RulesetParseError
when it is read, naming its place in the list.
"""

from __future__ import annotations

import json
import re
from itertools import count, groupby, repeat
from operator import contains, itemgetter
from typing import Any, Iterator, Mapping

from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.modes.dumpfile import WINDOW, DumpBuffer
from kubectl_proxyctl.modes.nftables.parse import (
    NftChain,
    NftRule,
    NftRuleset,
    NftSet,
    NftTable,
    _chain_of,
    _check_shape,
    _set_of,
)

_STRING = rb'"([^"\\]*)"'
_TABLE = re.compile(rb'\{"table": \{"family": ' + _STRING + rb', "name": ' + _STRING)
_NEXT_ITEM = re.compile(rb', \{"[a-z][a-z ]*": \{"family": "')
_ANY_ITEM = re.compile(rb'\{"[a-z][a-z ]*": \{"family": "')
_ITEM = b'": {"family": "'  # in every item start, and nowhere else in what nft writes
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def _marker(kind: bytes) -> bytes:
    return b'{"' + kind + b'": {"family": '


class _Patterns:
    """The item starts of one table (family and name spelled out)."""

    def __init__(self, family: bytes, table: bytes) -> None:
        fam, tab = re.escape(family), re.escape(table)
        self.chain = re.compile(rb'\{"chain": \{"family": "' + fam + rb'", "table": "' + tab + rb'", "name": '
                                + _STRING + rb', "handle": \d+(, "|\}\})')
        self.rule_mark = b'{"rule": {"family": "' + family + b'", "table": "' + table + b'", "chain": "'
        self.rule = re.compile(re.escape(self.rule_mark) + rb'([^"\\]*)", ')
        self.set, self.map = (re.compile(rb'\{"(' + kind + rb')": \{"family": "' + fam + rb'", "name": ' + _STRING
                                         + rb', "table": "' + tab + rb'"') for kind in (b"set", b"map"))


class _Document:
    """What every lazy table of one document shares: the bytes, and how to decode an item."""

    def __init__(self, buf: DumpBuffer, source: str, end: int) -> None:
        self.buf = buf
        self.source = source
        self.end = end  # where the last item ends (the `]` closing the list)

    def item_end(self, start: int) -> int:
        found = _NEXT_ITEM.search(self.buf.data, start + 1, self.end)
        return found.start() if found is not None else self.end

    def decode(self, start: int, kind: str) -> dict[str, Any]:
        """The `kind` item at `start`, checked; items of other kinds nft printed right after it
        are checked and skipped."""
        end = self.item_end(start)
        text = self.buf.text(start, end)
        decoder = json.JSONDecoder()
        items: list[Any] = []
        pos = 0
        try:
            while True:
                item, pos = decoder.raw_decode(text, pos)
                items.append(item)
                rest = text[pos:].lstrip()
                if not rest:
                    break
                if not rest.startswith(","):
                    raise ValueError("items are not separated by commas")
                pos = len(text) - len(rest) + 1
                while text[pos:pos + 1].isspace():
                    pos += 1
        except ValueError as exc:
            raise RulesetParseError(f"not nft JSON: item {self.index_of(start)}: {exc}", None, self.source) from None
        for n, item in enumerate(items):
            if not isinstance(item, dict) or len(item) != 1:
                raise RulesetParseError(f"not nft JSON: unexpected item {str(item)[:60]!r}", None, self.source)
            (k, obj), = item.items()
            if not isinstance(obj, dict):
                raise RulesetParseError(f"not nft JSON: {k!r} is not an object", None, self.source)
            try:
                _check_shape(k, obj, -1, self.source)
            except RulesetParseError:
                _check_shape(k, obj, self.index_of(start) + n, self.source)  # the message names its place
                raise
            if n == 0 and k != kind:
                raise RulesetParseError(f"not nft JSON: item {self.index_of(start)} is no {kind}", None, self.source)
        first: dict[str, Any] = items[0][kind]
        return first

    def index_of(self, start: int) -> int:
        """The item's place in the `nftables` list (for messages: counted when asked)."""
        n = 1  # metainfo
        data = self.buf.data
        for low, high in self.buf.windows(0, start, WINDOW, b"}}, "):
            n += len(_ANY_ITEM.findall(data, low, high))
        return n if data.find(b'{"metainfo": ', 0, start) >= 0 else n - 1


class _LazySets(Mapping[str, NftSet]):
    """A table's sets and maps, each decoded when first looked up."""

    def __init__(self, doc: _Document, family: str, table: str) -> None:
        self.doc = doc
        self.family = family
        self.table = table
        self.where: dict[str, tuple[str, int]] = {}  # name → (kind, item start)
        self._done: dict[str, NftSet] = {}

    def __getitem__(self, name: str) -> NftSet:
        found = self._done.get(name)
        if found is None:
            kind, start = self.where[name]
            obj = self.doc.decode(start, kind)
            found = self._done[name] = _set_of(kind, obj, self.family, self.table)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, name: object) -> bool:
        return name in self.where


class _LazyChains(Mapping[str, NftChain]):
    """A table's chains, in nft's order; a chain's rules are found and decoded when the chain
    is first looked up (see the module notes)."""

    def __init__(self, doc: _Document, family: str, table: str, patterns: _Patterns) -> None:
        self.doc = doc
        self.family = family
        self.table = table
        self.patterns = patterns
        self.order: dict[bytes, int] = {}  # name (UTF-8, as in the document) → its place among the chains
        self.objects: dict[str, dict[str, Any]] = {}  # the chains with more than a name: base chains
        self.rules_at = (0, 0)  # where the table's rules are
        self._done: dict[str, NftChain] = {}

    def hooked(self) -> list[str]:
        """The chains with a hook (base chains), without reading any other chain."""
        return [name for name, obj in self.objects.items() if obj.get("hook")]

    def __getitem__(self, name: str) -> NftChain:
        found = self._done.get(name)
        if found is None:
            if not isinstance(name, str) or name.encode() not in self.order:
                raise KeyError(name)
            rules = tuple(self._rules(name))
            obj = self.objects.get(name, {})
            found = self._done[name] = _chain_of(obj, self.family, self.table, name, rules)
        return found

    def _chain_at(self, pos: int) -> int:
        data = self.doc.buf.data
        start = pos + len(self.patterns.rule_mark)
        return self.order[data[start:data.find(b'"', start)]]

    def _rules(self, name: str) -> Iterator[NftRule]:
        """The chain's rules: the first rule at or after the smallest position whose next rule
        belongs to this chain or a later one (the rules come chain by chain), then the ones
        after it while they are this chain's."""
        data, mark, want = self.doc.buf.data, self.patterns.rule_mark, self.order[name.encode()]
        low, high = self.rules_at
        while low < high:
            mid = (low + high) // 2
            probe = data.find(mark, mid, self.rules_at[1])
            if probe < 0 or self._chain_at(probe) >= want:
                high = mid
            else:
                low = probe + 1
        pos = data.find(mark, low, self.rules_at[1])
        key = mark + name.encode() + b'", '
        while pos >= 0 and data[pos:pos + len(key)] == key:
            obj = self.doc.decode(pos, "rule")
            expr = obj.get("expr") or []
            yield NftRule(self.family, self.table, name, tuple(expr), str(obj.get("comment", "")), obj.get("handle"))
            pos = data.find(mark, pos + 1, self.rules_at[1])

    def __iter__(self) -> Iterator[str]:
        return map(bytes.decode, self.order)

    def __len__(self) -> int:
        return len(self.order)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.encode() in self.order


class _TableScan:
    """One table's first pass."""

    def __init__(self, doc: _Document, family: bytes, table: bytes, start: int) -> None:
        self.start = start
        self.patterns = _Patterns(family, table)
        fam, tab = family.decode(), table.decode()
        self.chains = _LazyChains(doc, fam, tab, self.patterns)
        self.sets = _LazySets(doc, fam, tab)
        self.chain_count = 0
        self.first_rule = -1
        self.names: list[bytes] = []  # the chains' names in order, while the document is scanned
        self.unpassed: Iterator[bytes] = iter(())
        self.last_chain = b""

    def scan(self, chunk: bytes, base: int, low: int, high: int) -> bool:
        """Index the items in chunk[low:high] (the chunk starts at `base` in the document);
        False when they are not in the shape the module notes describe.

        Every item start of any kind has `": {"family": "` in it: all of them must be rules,
        chains, sets or maps of this table that the patterns read (most windows hold rules
        only, and cost two searches)."""
        p = self.patterns
        starts = chunk.count(_ITEM, low, high)
        rules = p.rule.findall(chunk, low, high)
        if len(rules) == starts:
            return not rules or self.rules_in(rules, base + chunk.find(p.rule_mark, low, high))
        sets = [m for pattern in (p.set, p.map) for m in pattern.finditer(chunk, low, high)]
        chains = p.chain.findall(chunk, low, high)
        if len(rules) + len(sets) + len(chains) != starts:
            return False
        if sets:
            if self.chain_count or self.first_rule >= 0:
                return False  # a set after the chains
            for m in sorted(sets, key=lambda m: m.start()):
                self.sets.where[m.group(2).decode()] = (m.group(1).decode(), base + m.start())
        if chains:
            if self.first_rule >= 0 or (rules and chunk.find(p.rule_mark, low, high) < chunk.rfind(b'{"chain": ', low, high)):
                return False  # a chain after the rules
            order = self.chains.order
            if not all(map(bytes.isascii, map(_FIRST, chains))):
                return False  # names compared as bytes must be spelled one way
            self.names += map(_FIRST, chains)
            order.update(zip(map(_FIRST, chains), count(self.chain_count)))
            self.chain_count += len(chains)
            if len(order) != self.chain_count:
                return False  # a chain listed twice
            if any(map(b', "'.__eq__, map(_SECOND, chains))):
                for m in p.chain.finditer(chunk, low, high):
                    if m.group(2) != b"}}":
                        self.chains.objects[m.group(1).decode()] = {"at": base + m.start()}
        return not rules or self.rules_in(rules, base + chunk.find(p.rule_mark, low, high))

    def rules_in(self, rules: list[bytes], first: int) -> bool:
        """The rules of a window, by their chains' names: they must come chain by chain, in
        the chains' order: each run's chain is found further on in the chains not passed yet
        (C-level iterators: `in` on an iterator consumes it up to the element found)."""
        if self.first_rule < 0:
            self.first_rule = first
            self.unpassed = iter(self.names)
        heads = map(_FIRST, groupby(rules))
        if rules[0] == self.last_chain:
            next(heads)  # the run the last window ended in, going on
        if not all(map(contains, repeat(self.unpassed), heads)):
            return False  # a rule out of its chain's place, or of a chain not listed before it
        self.last_chain = rules[-1]
        return True


def _only_metainfo(buf: DumpBuffer, start: int, end: int, table_follows: bool) -> bool:
    """What comes before the first table (or the list's end) is nft's `metainfo` item, or
    nothing (anything else is left to the whole-document parser, which names it)."""
    text = buf.text(start, end).strip()
    if not text:
        return True
    if table_follows:
        if not text.endswith(","):
            return False
        text = text[:-1]
    try:
        item = json.loads(text)
    except ValueError:
        return False
    return isinstance(item, dict) and list(item) == ["metainfo"] and isinstance(item["metainfo"], dict)


def parse_nft_dump(buf: DumpBuffer, source: str) -> NftRuleset | None:
    """An `nft -j` document read in place (see the module notes), or None when it is not in the
    shape nft writes (the caller then decodes it whole)."""
    data = buf.data
    head = re.compile(rb'[ \t\n\r]*\{"nftables": \[').match(data, 0, 4096)
    tail = data.rfind(b"]")
    if head is None or tail < 0 or data[tail + 1:].strip() != b"}":
        return None
    doc = _Document(buf, source, tail)
    scans: list[_TableScan] = []
    seen: set[tuple[bytes, bytes]] = set()
    for low, high in buf.windows(head.end(), tail, WINDOW, b"}}, "):
        chunk = data[low:high]
        if scans:
            # most windows: rules of the last table only (a table's start is one more item start)
            last = scans[-1]
            rules = last.patterns.rule.findall(chunk)
            if len(rules) == chunk.count(_ITEM):
                if rules and not last.rules_in(rules, low + chunk.find(last.patterns.rule_mark)):
                    return None
                continue
        cuts = [(m.start(), m.end(), m.group(1), m.group(2)) for m in _TABLE.finditer(chunk)]
        if len(cuts) != chunk.count(_marker(b"table")):
            return None
        pos = 0
        for at, after, family, table in [*cuts, (len(chunk), len(chunk), b"", b"")]:
            if at > pos:
                if not scans:
                    if chunk.count(_ITEM, pos, at):
                        return None  # items before the first table
                elif not scans[-1].scan(chunk, low, pos, at):
                    return None
            if family or table:
                if (family, table) in seen:
                    return None
                seen.add((family, table))
                scans.append(_TableScan(doc, family, table, low + at))
            pos = after
        del chunk
    if not _only_metainfo(buf, head.end(), scans[0].start if scans else tail, bool(scans)):
        return None
    tables: list[NftTable] = []
    for scan in scans:
        scan.names = []
        for name, place in list(scan.chains.objects.items()):
            scan.chains.objects[name] = doc.decode(place["at"], "chain")
        end = scans[scans.index(scan) + 1].start if scan is not scans[-1] else tail
        scan.chains.rules_at = (scan.first_rule, end) if scan.first_rule >= 0 else (end, end)
        info = doc.decode(scan.start, "table")
        tables.append(NftTable(scan.chains.family, scan.chains.table, scan.chains, scan.sets,
                               str(info.get("comment", ""))))
    return NftRuleset(tuple(tables))


__all__ = ["parse_nft_dump"]
