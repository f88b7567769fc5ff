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
whole-document parser checks it; a set or map is decoded the first time it is looked up. The
elements of a big one in the shapes of kube-proxy's sets and maps (plain addresses; verdicts
keyed by address . protocol . port) are read with regular expressions instead, into columns
of plain values that make each element when it is read (`PackedElements`): a question about
one Service then holds under a quarter of the memory a decoded 10,000-element map takes.
An item of another kind nft may print between them (counters, flowtables, …) is checked and
skipped, as the whole-document parser skips it. A malformed item raises RulesetParseError
when it is read, naming its place in the list.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import replace
from itertools import count, groupby, repeat
from operator import itemgetter, lt
from typing import Any, Iterator, Mapping, Sequence

from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.modes.dumpfile import WINDOW, DumpBuffer
from kubectl_proxyctl.modes.nftables.parse import (
    _ADDRESS_TYPES,
    _NUMBER_TYPES,
    NftChain,
    NftElement,
    NftRule,
    NftRuleset,
    NftSet,
    NftTable,
    _chain_of,
    _check_shape,
    _set_of,
)

_STRING = rb'"([^"\\]*)"'
# _STRING where the text holds no backslash: the same matches, found in half the time (the
# regular expression engine has a fast loop for a run of bytes but one)
_UNESCAPED = rb'"([^"]*)"'
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
        self.chain, self.plain_chain = (
            re.compile(rb'\{"chain": \{"family": "' + fam + rb'", "table": "' + tab + rb'", "name": ' + name
                       + rb', "handle": [0-9]+(, "|\}\})') for name in (_STRING, _UNESCAPED))
        self.rule_mark = b'{"rule": {"family": "' + family + b'", "table": "' + table + b'", "chain": "'
        self.rule, self.plain_rule = (re.compile(re.escape(self.rule_mark) + name[1:] + rb', ')
                                      for name in (_STRING, _UNESCAPED))
        # the kind spelled out (no group around it): the search then skips to its start at once
        self.set_items = [(kind.decode(), re.compile(rb'\{"' + kind + rb'": \{"family": "' + fam + rb'", "name": '
                                                     + _STRING + rb', "table": "' + tab + rb'"'))
                          for kind in (b"set", b"map")]

    def rules(self, chunk: bytes, low: int, high: int) -> list[bytes]:
        """The chain names of the rules in chunk[low:high], in order."""
        pattern = self.plain_rule if chunk.find(b"\\", low, high) < 0 else self.rule
        return pattern.findall(chunk, low, high)

    def chains(self, chunk: bytes, low: int, high: int) -> list[tuple[bytes, bytes]]:
        """(name, what follows the handle) of the chains in chunk[low:high], in order."""
        pattern = self.plain_chain if chunk.find(b"\\", low, high) < 0 else self.chain
        return pattern.findall(chunk, low, high)


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
            found = _packed_set(self.doc, start, kind, self.family, self.table)
            if found is None:
                found = _set_of(kind, self.doc.decode(start, kind), self.family, self.table)
            self._done[name] = found
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, name: object) -> bool:
        return name in self.where


# What the values of a packed set's elements may be, by the type of their part of the key:
# JSON strings of printable ASCII without escapes (their bytes are their text), or JSON
# integers; what `_check_elements` accepts for these types without a second look.
_STRINGS = frozenset((*_ADDRESS_TYPES, "inet_proto"))
_INTEGERS = frozenset(_NUMBER_TYPES)
_STRING_BODY = rb"[ !#-\[\]-~]*"
_INTEGER_BODY = rb"0|-?[1-9][0-9]{0,17}"
_ELEM_KEY = b', "elem": ['
_VERDICTS = {b"goto": "goto", b"jump": "jump"}
_PACKED_MIN = 64  # smaller sets are decoded as they are


def _element_source(kind: str, types: tuple[str, ...], data: str | None, group: bytes) -> bytes:
    """The pattern of one element of a set of one plain key (`"10.96.0.1"`), or of a verdict
    map keyed by a concatenation (`[{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target":
    "…"}}]`), each value in a `group` (`(` captures it, `(?:` does not); b"" for other sets."""
    def value(body: bytes) -> bytes:
        return group + body + b")"

    parts = [b'"' + value(_STRING_BODY) + b'"' if t in _STRINGS else value(_INTEGER_BODY) for t in types]
    if kind == "set" and data is None and len(parts) == 1:
        return parts[0]
    if kind == "map" and data == "verdict" and len(parts) > 1:
        return (rb'\[\{"concat": \[' + b", ".join(parts) + rb'\]\}, \{"' + value(b"goto|jump")
                + rb'": \{"target": "' + value(_STRING_BODY) + rb'"\}\}\]')
    return b""


@functools.lru_cache(maxsize=16)
def _element_patterns(kind: str, types: tuple[str, ...], data: str | None) -> tuple[re.Pattern[bytes], ...]:
    """(one element, with its values captured; the whole list) for the shapes of kube-proxy's
    big sets and maps, () for any other set. The list's repetition is possessive: a match of
    10,000 elements then keeps no backtracking state."""
    if not types or not all(t in _STRINGS or t in _INTEGERS for t in types):
        return ()
    one, bare = (_element_source(kind, types, data, group) for group in (b"(", b"(?:"))
    if not one:
        return ()
    return re.compile(one), re.compile(b"(?:" + bare + b", )*+" + bare)


class PackedElements(Sequence[NftElement]):
    """A big set's elements kept as columns of plain values (an address, a protocol, a port,
    a verdict's target), each NftElement made when it is read: 10,000 elements held as
    decoded JSON are some nine megabytes of small dicts and lists, as columns two.
    Compares and hashes like the tuple of its elements."""

    __slots__ = ("parts", "verdicts", "targets")

    def __init__(self, parts: list[list[Any]], verdicts: list[str] | None, targets: list[str] | None) -> None:
        self.parts = parts  # one column per part of the key
        self.verdicts = verdicts  # "goto" / "jump" per element of a verdict map, None for a set
        self.targets = targets

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if self.verdicts is None or self.targets is None:
            return NftElement(self.parts[0][index])
        return NftElement({"concat": [column[index] for column in self.parts]},
                          {self.verdicts[index]: {"target": self.targets[index]}})

    def __iter__(self) -> Iterator[NftElement]:
        if self.verdicts is None or self.targets is None:
            return map(NftElement, self.parts[0])
        return map(_verdict_element, zip(*self.parts), self.verdicts, self.targets)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, PackedElements)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def _verdict_element(parts: tuple[Any, ...], verdict: str, target: str) -> NftElement:
    return NftElement({"concat": list(parts)}, {verdict: {"target": target}})


def _packed_set(doc: _Document, start: int, kind: str, family: str, table: str) -> NftSet | None:
    """The set or map at `start`, its elements read with regular expressions when they all
    have one of the shapes `_element_source` knows (the rest of the item is decoded and
    checked as `_Document.decode` would); None when they do not, and the item is decoded
    whole. The elements must be the item's last key and fill its list exactly."""
    data, end = doc.buf.data, doc.item_end(start)
    at = data.find(_ELEM_KEY, start, end)
    if at < 0 or data[end - 3:end] != b"]}}":
        return None
    try:
        head = json.loads(doc.buf.text(start, at) + "}}")
    except ValueError:
        return None
    obj = head.get(kind) if isinstance(head, dict) and len(head) == 1 else None
    if not isinstance(obj, dict) or "elem" in obj:
        return None
    typ, data_type = obj.get("type"), obj.get("map")
    types = tuple(typ) if isinstance(typ, list) else (typ,)
    if not all(isinstance(t, str) for t in types) or not (data_type is None or isinstance(data_type, str)):
        return None
    patterns = _element_patterns(kind, types, data_type)
    low, high = at + len(_ELEM_KEY), end - 3
    if not patterns or patterns[1].fullmatch(data, low, high) is None:
        return None
    rows: list[Any] = patterns[0].findall(data, low, high)
    if len(rows) < _PACKED_MIN:
        return None
    try:
        _check_shape(kind, obj, -1, doc.source)
    except RulesetParseError:
        return None  # decoded whole, to be reported with its place
    if kind == "set":
        return replace(_set_of(kind, obj, family, table), elements=PackedElements([_strings(rows)], None, None))
    *parts, verdicts, targets = zip(*rows)
    columns = [list(map(int, part)) if t in _INTEGERS else
               list(map(sys.intern, _strings(part))) if t == "inet_proto" else _strings(part)
               for t, part in zip(types, parts)]
    elements = PackedElements(columns, list(map(_VERDICTS.__getitem__, verdicts)), _strings(targets))
    return replace(_set_of(kind, obj, family, table), elements=elements)


def _strings(column: Sequence[bytes]) -> list[str]:
    return list(map(bytes.decode, column))


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
        self.last_chain = b""  # the chain of the last rule scanned
        self.last_place = -1  # its place among the chains

    def scan(self, chunk: bytes, base: int, low: int, high: int, rules: list[bytes] | None = None) -> bool:
        """Index the items in chunk[low:high] (the chunk starts at `base` in the document);
        False when they are not in the shape the module notes describe. `rules`: the rules'
        chain names there, when the caller found them already.

        Every item start of any kind has `": {"family": "` in it: all of them must be rules,
        chains, sets or maps of this table that the patterns read (most windows hold rules
        only, and cost two searches)."""
        p = self.patterns
        starts = chunk.count(_ITEM, low, high)
        if rules is None:
            rules = p.rules(chunk, low, high)
        if len(rules) == starts:
            return not rules or self.rules_in(rules, base + chunk.find(p.rule_mark, low, high))
        # sets and maps come before the chains: after the first chain they are not looked for,
        # and one there is an item start left over
        sets = [] if self.chain_count else [(kind, m) for kind, pattern in p.set_items
                                            for m in pattern.finditer(chunk, low, high)]
        chains = p.chains(chunk, low, high)
        if len(rules) + len(sets) + len(chains) != starts:
            return False
        if sets:
            if self.chain_count or self.first_rule >= 0:
                return False  # a set after the chains
            for kind, m in sorted(sets, key=lambda found: found[1].start()):
                self.sets.where[m.group(1).decode()] = (kind, base + m.start())
        if chains:
            if self.first_rule >= 0 or (rules and chunk.find(p.rule_mark, low, high) < chunk.rfind(b'{"chain": ', low, high)):
                return False  # a chain after the rules
            order = self.chains.order
            if not all(map(bytes.isascii, map(_FIRST, chains))):
                return False  # names compared as bytes must be spelled one way
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
        the chains' order: the places of the runs' chains among the chains only go up (the
        chains all come before the rules, so every place is known; C-level iterators)."""
        if self.first_rule < 0:
            self.first_rule = first
        heads = map(_FIRST, groupby(rules))
        if rules[0] == self.last_chain:
            next(heads)  # the run the last window ended in, going on
        places = list(map(self.chains.order.get, heads, repeat(-1)))
        if not all(map(lt, [self.last_place, *places], places)):
            return False  # a rule out of its chain's place, or of a chain not listed before it
        self.last_chain = rules[-1]
        self.last_place = places[-1] if places else self.last_place
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
        rules = None
        if scans:
            # most windows: rules of the last table only (a table's start is one more item start)
            last = scans[-1]
            rules = last.patterns.rules(chunk, 0, len(chunk))
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
                elif not scans[-1].scan(chunk, low, pos, at, rules if (pos, at) == (0, len(chunk)) else None):
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
        for name, place in list(scan.chains.objects.items()):
            scan.chains.objects[name] = doc.decode(place["at"], "chain")
        end = scans[scans.index(scan) + 1].start if scan is not scans[-1] else tail
        scan.chains.rules_at = (scan.first_rule, end) if scan.first_rule >= 0 else (end, end)
        info = doc.decode(scan.start, "table")
        tables.append(NftTable(scan.chains.family, scan.chains.table, scan.chains, scan.sets,
                               str(info.get("comment", ""))))
    return NftRuleset(tuple(tables))


__all__ = ["parse_nft_dump"]
