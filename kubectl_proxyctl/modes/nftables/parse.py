"""`nft -j list ruleset` (or `nft -j list table ip kube-proxy`) → tables, chains, sets, maps.

Theory of operation: nft's JSON output is a flat list under `"nftables"`: a `metainfo`
object, then `table`, `chain`, `set`, `map` and `rule` objects, each naming its family and
table. This module groups them into NftTable objects and keeps every rule's expression list
as nft printed it (plain JSON values), so the tracer (`modes.nftables.trace`) can evaluate them
and `rule_text` can print them back in nft's own syntax for people.

kube-proxy's nftables mode (reference §3) owns the tables named `kube-proxy` in the `ip` and
`ip6` families; everything else in a ruleset (iptables-nft's `filter`/`nat` tables with
`xt` expressions, firewalld, ...) is kept but never interpreted.

Set and map elements are normalised to NftElement(key, value, comment): nft wraps an
element that carries a comment or timeout as `{"elem": {"val": KEY, "comment": ...}}`, and
a map element is a `[KEY, VALUE]` pair.

`rule_text` covers the expressions kube-proxy writes (matches on payload, meta, ct, fib,
numgen, bitwise mark tests, concatenations, anonymous and named sets, verdict maps, mangle,
dnat, masquerade, reject, set updates, counters); anything else is shown as compact JSON
rather than guessed. What it prints is nft input syntax: `nft -f` accepts it back.

`canonical` reduces a rule (or an element key or value) in nft syntax, as a script writes
it or as `rule_text` prints it, to one form per meaning, so the two can be compared:
comments dropped, `mark` → `meta mark`, `or`/`and`/`xor` → `|`/`&`/`^`, hexadecimal
numbers as decimals, quotes around plain words dropped, addresses in their compressed
form, a `/32` or `/128` prefix as the address, anonymous sets sorted (address sets merged
as nft merges them) and a one-element set as its element, and `reject` with its default
ICMP port-unreachable as plain `reject`. nft prints what it was given in its own way
(`mark or 0x4000` comes back as `meta mark | 16384`, `{ 203.0.113.0/25 }` as
`203.0.113.0/25`); `canonical` makes both spellings equal.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from kubectl_proxyctl.errors import RulesetParseError

KUBE_PROXY_TABLE = "kube-proxy"


@dataclass(frozen=True)
class NftElement:
    key: Any  # a JSON value: "10.96.0.1", 80, {"concat": [...]}, {"prefix": {...}}, ...
    value: Any = None  # for maps: the mapped value (a verdict object for verdict maps)
    comment: str = ""


@dataclass(frozen=True)
class NftSet:
    """A named set or map (`map` is the value type of a map, None for a set)."""

    family: str
    table: str
    name: str
    type: tuple[str, ...]
    map: str | None = None
    flags: tuple[str, ...] = ()
    timeout: int | None = None  # seconds, for dynamic sets (kube-proxy's affinity sets)
    comment: str = ""
    elements: Sequence[NftElement] = ()  # a tuple, or a big set's elements made when read

    @property
    def is_map(self) -> bool:
        return self.map is not None


@dataclass(frozen=True)
class NftRule:
    family: str
    table: str
    chain: str
    expr: tuple[Any, ...]
    comment: str = ""
    handle: int | None = None

    @functools.cached_property
    def text(self) -> str:
        """The rule in nft syntax (computed once: a numgen map over thousands of endpoints is
        long, and the tracer names the rule at every step)."""
        return rule_text(self)


@dataclass(frozen=True)
class NftChain:
    family: str
    table: str
    name: str
    type: str | None = None  # "filter", "nat", ... for base chains
    hook: str | None = None
    priority: int | None = None
    policy: str | None = None
    rules: tuple[NftRule, ...] = ()


@dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    chains: Mapping[str, NftChain] = field(default_factory=dict)
    sets: Mapping[str, NftSet] = field(default_factory=dict)
    comment: str = ""

    @property
    def title(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(frozen=True)
class NftRuleset:
    tables: tuple[NftTable, ...] = ()

    def kube_proxy_tables(self) -> tuple[NftTable, ...]:
        """kube-proxy's own tables (`ip kube-proxy`, `ip6 kube-proxy`)."""
        return tuple(t for t in self.tables if t.name == KUBE_PROXY_TABLE and t.family in ("ip", "ip6", "inet"))


_PRIORITY_NAMES: Mapping[str, int] = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50,
                                      "srcnat": 100}


def _priority(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.replace(" ", "")
        for name, base in _PRIORITY_NAMES.items():
            if text.startswith(name):
                rest = text[len(name):]
                try:
                    return base + (int(rest) if rest else 0)
                except ValueError:
                    return None
        try:
            return int(text)
        except ValueError:
            return None
    return None


def _elements(raw: Any) -> tuple[NftElement, ...]:
    out: list[NftElement] = []
    for item in raw or []:
        value = None
        if isinstance(item, list) and len(item) == 2:
            item, value = item
        comment = ""
        if isinstance(item, dict) and isinstance(item.get("elem"), dict):
            inner = item["elem"]
            comment = str(inner.get("comment", ""))
            item = inner.get("val")
        out.append(NftElement(item, value, comment))
    return tuple(out)


# --- the shapes of nft's JSON (libnftables-json(5)) that the readers rely on -----------------

class _Shape(ValueError):
    pass


def _want(ok: bool, what: str) -> None:
    if not ok:
        raise _Shape(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fields(x: Any, name: str, strings: tuple[str, ...] = (), ints: tuple[str, ...] = (),
            exprs: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> None:
    _want(isinstance(x, dict), f'"{name}" takes an object')
    for key in required:
        _want(key in x, f'"{name}" has no "{key}"')
    for key in strings:
        _want(key not in x or isinstance(x[key], str), f'"{name}.{key}" is not a string')
    for key in ints:
        _want(key not in x or _is_int(x[key]), f'"{name}.{key}" is not a number')
    for key in exprs:
        if key in x:
            _check_expr(x[key])


_LITERALS = (str, int, float, bool)  # what json.loads makes of a literal (and None)


def _plain_expr(e: Any) -> bool:
    """A literal, a concatenation of literals or a jump/goto: what `_check_expr` accepts at
    any depth but the last few, told without a call per part (a big map's keys and verdicts)."""
    if e is None or isinstance(e, _LITERALS):
        return True
    if type(e) is not dict or len(e) != 1:
        return False
    parts = e.get("concat")
    if type(parts) is list:
        return all(p is None or isinstance(p, _LITERALS) for p in parts)
    verdict = e.get("goto", e.get("jump"))
    return type(verdict) is dict and isinstance(verdict.get("target"), str)


def _plain_element(item: Any) -> bool:
    """A set or map element (a key, or a [key, value] pair) that `_plain_expr` vouches for."""
    if type(item) is list:
        return all(map(_plain_expr, item))
    return _plain_expr(item)


def _check_expr(e: Any, depth: int = 0) -> None:
    """An expression: a literal, a list of expressions, or a one-key object nft knows.
    (Literals in a list are passed over in the loop: a big set's elements are mostly literals.)"""
    _want(depth < 64, "expressions nested too deeply")
    if e is None or isinstance(e, _LITERALS):
        return
    if isinstance(e, list):
        deep = depth + 4 >= 64
        for item in e:
            if deep or not (item is None or isinstance(item, _LITERALS) or _plain_element(item)):
                _check_expr(item, depth + 1)
        return
    _want(isinstance(e, dict) and len(e) == 1, f"an expression is not a one-key object: {str(e)[:40]!r}")
    k, x = next(iter(e.items()))
    if k in ("jump", "goto") and isinstance(x, dict) and isinstance(x.get("target"), str):
        return  # what `_fields(x, k, strings=("target",), required=("target",))` accepts
    if k in ("concat", "range", "&", "|", "^", "<<", ">>"):
        _want(isinstance(x, list), f'"{k}" takes a list')
        _want(k == "concat" or len(x) == 2, f'"{k}" takes two operands')
        deep = depth + 1 >= 64
        for item in x:
            if deep or not (item is None or isinstance(item, _LITERALS)):
                _check_expr(item, depth + 1)
    elif k == "set":
        _check_expr(x, depth + 1)
    elif k in ("map", "vmap"):
        _fields(x, k, required=("key", "data"))
        _check_expr(x["key"], depth + 1)
        _check_expr(x["data"], depth + 1)
    elif k == "prefix":
        _fields(x, k, ints=("len",), required=("addr", "len"))
        _want(isinstance(x["addr"], str), '"prefix.addr" is not a string')
    elif k == "payload":
        _fields(x, k, strings=("protocol", "field", "base"), ints=("offset", "len"))
        _want("field" in x if "protocol" in x else True, '"payload" has a protocol but no field')
    elif k in ("meta", "ct", "rt", "socket", "osf"):
        _fields(x, k, strings=("key", "dir", "family"), required=("key",))
    elif k == "fib":
        _fields(x, k, strings=("result",))
        flags = x.get("flags")
        _want(flags is None or isinstance(flags, str) or
              (isinstance(flags, list) and all(isinstance(f, str) for f in flags)), '"fib.flags" are not strings')
    elif k == "numgen":
        _fields(x, k, strings=("mode",), ints=("mod", "offset"))
    elif k == "elem":
        _fields(x, k, strings=("comment",), required=("val",))
        _check_expr(x["val"], depth + 1)
    elif k in ("jump", "goto"):
        _fields(x, k, strings=("target",), required=("target",))
    elif k in ("jhash", "symhash"):
        _fields(x, k, ints=("mod", "offset", "seed"), exprs=("expr",))


_ADDRESS_TYPES = ("ipv4_addr", "ipv6_addr", "ifname", "string")
_NUMBER_TYPES = ("inet_service", "mark", "integer", "ct_state", "fib_addrtype")


def _check_key_part(value: Any, typ: str) -> None:
    """One part of a set element's key, against its declared type (nft -j writes addresses
    as strings, ports and marks as numbers, intervals as prefix/range objects)."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("prefix", "range"):
        return  # an interval (checked as an expression)
    if typ in _ADDRESS_TYPES:
        _want(isinstance(value, str), f"an element's {typ} is not a string: {str(value)[:40]!r}")
    elif typ in _NUMBER_TYPES:
        _want(_is_int(value) or (isinstance(value, str) and value.isascii() and value.isdecimal()),
              f"an element's {typ} is not a number: {str(value)[:40]!r}")
    elif typ == "inet_proto":
        _want(isinstance(value, str) or _is_int(value), f"an element's {typ} is not a protocol: {str(value)[:40]!r}")


def _check_elements(elements: list[Any], types: tuple[str, ...], data_type: str | None) -> None:
    for item in elements:
        value = None
        if isinstance(item, list):
            _want(len(item) == 2 and data_type is not None, "a set element is a list but the set is no map")
            item, value = item
        if isinstance(item, dict) and "elem" in item:
            _fields(item["elem"], "elem", strings=("comment",), required=("val",))
            item = item["elem"]["val"]
        parts = item["concat"] if isinstance(item, dict) and "concat" in item else [item]
        if len(types) > 1 or isinstance(item, dict) and "concat" in item:
            _want(isinstance(parts, list) and len(parts) == len(types),
                  f"an element does not have the {len(types)} parts of its type")
        for part, typ in zip(parts, types):
            if not ((typ in _ADDRESS_TYPES and isinstance(part, str))
                    or (typ in _NUMBER_TYPES and isinstance(part, int) and not isinstance(part, bool))):
                _check_key_part(part, typ)
        if data_type == "verdict" and value is not None:
            _want(isinstance(value, dict) and len(value) == 1, f"a map verdict is not an object: {str(value)[:40]!r}")


def _check_statement(stmt: Any) -> None:
    _want(isinstance(stmt, dict) and len(stmt) == 1, f"not a one-key object: {str(stmt)[:40]!r}")
    k, x = next(iter(stmt.items()))
    if k == "match":
        _fields(x, k, strings=("op",), exprs=("left", "right"), required=("left", "right"))
    elif k in ("jump", "goto"):
        _fields(x, k, strings=("target",), required=("target",))
    elif k in ("vmap", "map"):
        _fields(x, k, exprs=("key", "data"), required=("key", "data"))
    elif k == "mangle":
        _fields(x, k, exprs=("key", "value"), required=("key", "value"))
    elif k in ("dnat", "snat", "redirect"):
        if x is not None:
            _fields(x, k, strings=("family",), exprs=("addr", "port"))
            flags = x.get("flags")
            _want(flags is None or isinstance(flags, str) or
                  (isinstance(flags, list) and all(isinstance(f, str) for f in flags)), f'"{k}.flags" are not strings')
    elif k in ("masquerade", "reject", "counter", "log", "limit", "quota"):
        _want(x is None or isinstance(x, (dict, str)), f'"{k}" takes an object')
        if isinstance(x, dict) and k == "reject":
            _fields(x, k, strings=("type",), exprs=("expr",))
        if isinstance(x, dict) and k == "masquerade":
            flags = x.get("flags")
            _want(flags is None or isinstance(flags, str) or
                  (isinstance(flags, list) and all(isinstance(f, str) for f in flags)),
                  '"masquerade.flags" are not strings')
    elif k == "set":
        _fields(x, k, strings=("op", "set"), exprs=("elem",), required=("elem",))


def _check_shape(kind: str, obj: Mapping[str, Any], index: int, source: str) -> None:
    """What the reader relies on, checked once here: names are strings, a rule's `expr` is a
    list of statements (one-key objects), a set's `elem` is a list. `nft -j` always writes
    these; anything else is not its output (a hand edit, or another tool's JSON)."""
    def bad(what: str) -> RulesetParseError:
        label = obj.get("name") if kind != "rule" else obj.get("chain")
        where = f"{kind} {label!r}" if isinstance(label, str) else kind
        return RulesetParseError(f"not nft JSON: item {index} ({where}): {what}", None, source)

    for key in ("family", "table", "name", "chain", "comment"):
        if key in obj and not isinstance(obj[key], str):
            raise bad(f'"{key}" is not a string: {str(obj[key])[:40]!r}')
    if kind in ("chain", "set", "map") and not obj.get("name"):
        raise bad('no "name"')
    if kind == "rule":
        expr = obj.get("expr")
        if expr is not None and not isinstance(expr, list):
            raise bad(f'"expr" is not a list of statements: {str(expr)[:40]!r}')
        for n, stmt in enumerate(expr or []):
            try:
                _check_statement(stmt)
            except _Shape as exc:
                raise bad(f'statement {n} of "expr": {exc}') from None
            except RecursionError:
                raise bad(f'statement {n} of "expr" is nested too deeply') from None
    if kind in ("set", "map"):
        typ = obj.get("type")
        if typ is not None and not isinstance(typ, str) and not (
                isinstance(typ, list) and all(isinstance(t, str) for t in typ)):
            raise bad(f'"type" is neither a string nor a list of strings: {str(typ)[:40]!r}')
        flags = obj.get("flags")
        if flags is not None and not isinstance(flags, str) and not (
                isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
            raise bad(f'"flags" are not strings: {str(flags)[:40]!r}')
        for key in ("map", "policy"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise bad(f'"{key}" is not a string: {str(obj[key])[:40]!r}')
        timeout = obj.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
            raise bad(f'"timeout" is not a number: {str(timeout)[:40]!r}')
        elem = obj.get("elem")
        if elem is not None and not isinstance(elem, list):
            raise bad(f'"elem" is not a list: {str(elem)[:40]!r}')
        try:
            _check_expr(elem)
            types = tuple(typ) if isinstance(typ, list) else (typ,) if isinstance(typ, str) else ()
            if elem and types:
                _check_elements(elem, types, obj.get("map") if kind == "map" else None)
        except _Shape as exc:
            raise bad(f'"elem": {exc}') from None
    if kind == "chain":
        for key in ("type", "hook", "policy"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise bad(f'"{key}" is not a string: {str(obj[key])[:40]!r}')
        prio = obj.get("prio")
        if prio is not None and not isinstance(prio, str) and not _is_int(prio):
            raise bad(f'"prio" is neither a number nor a name: {str(prio)[:40]!r}')


def parse_nft_json(text: str, source: str = "<input>") -> NftRuleset:
    """Parse `nft -j list ruleset` output; RulesetParseError when it is not that."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RulesetParseError(f"not nft JSON: {exc}", None, source) from None
    return parse_nft_doc(doc, source)


def parse_nft_doc(doc: Any, source: str = "<input>") -> NftRuleset:
    """parse_nft_json for a document already decoded (a reader that had to decode the text
    to tell what it is need not decode 50 MB twice)."""
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RulesetParseError('not nft JSON: no top-level "nftables" list', None, source)
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    chains: dict[tuple[str, str, str], dict[str, Any]] = {}
    rules: dict[tuple[str, str, str], list[NftRule]] = {}
    sets: dict[tuple[str, str], dict[str, NftSet]] = {}

    def table_of(obj: Mapping[str, Any]) -> tuple[str, str]:
        key = (str(obj.get("family", "")), str(obj.get("table", obj.get("name", ""))))
        tables.setdefault(key, {"comment": ""})
        return key

    for index, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise RulesetParseError(f"not nft JSON: unexpected item {str(item)[:60]!r}", None, source)
        kind, obj = next(iter(item.items()))
        if kind == "metainfo":
            continue
        if not isinstance(obj, dict):
            raise RulesetParseError(f"not nft JSON: {kind!r} is not an object", None, source)
        _check_shape(kind, obj, index, source)
        if kind == "table":
            key = (str(obj.get("family", "")), str(obj.get("name", "")))
            tables.setdefault(key, {})["comment"] = str(obj.get("comment", ""))
        elif kind == "chain":
            fam, tab = table_of(obj)
            chains[(fam, tab, str(obj["name"]))] = obj
            rules.setdefault((fam, tab, str(obj["name"])), [])
        elif kind in ("set", "map"):
            fam, tab = table_of(obj)
            sets.setdefault((fam, tab), {})[str(obj["name"])] = _set_of(kind, obj, fam, tab)
        elif kind == "rule":
            fam, tab = table_of(obj)
            chain = str(obj.get("chain", ""))
            expr = obj.get("expr") or []
            rules.setdefault((fam, tab, chain), []).append(
                NftRule(fam, tab, chain, tuple(expr), str(obj.get("comment", "")), obj.get("handle"))
            )
        # elements, flowtables, counters, quotas, ... are not part of the proxy's layout

    out: list[NftTable] = []
    for (fam, tab), info in tables.items():
        table_chains: dict[str, NftChain] = {}
        for (cf, ct, name), obj in chains.items():
            if (cf, ct) != (fam, tab):
                continue
            table_chains[name] = _chain_of(obj, fam, tab, name, tuple(rules.get((fam, tab, name), ())))
        for (cf, ct, name), chain_rules in rules.items():
            if (cf, ct) == (fam, tab) and name not in table_chains:
                table_chains[name] = NftChain(fam, tab, name, rules=tuple(chain_rules))
        out.append(NftTable(fam, tab, table_chains, sets.get((fam, tab), {}), str(info.get("comment", ""))))
    return NftRuleset(tuple(out))


def _set_of(kind: str, obj: Mapping[str, Any], fam: str, tab: str) -> NftSet:
    typ = obj.get("type")
    types = tuple(typ) if isinstance(typ, list) else (str(typ),)
    flags = obj.get("flags") or []
    timeout = obj.get("timeout")
    return NftSet(
        family=fam, table=tab, name=str(obj["name"]), type=types,
        map=str(obj["map"]) if kind == "map" else None,
        flags=tuple(str(f) for f in flags) if isinstance(flags, list) else (str(flags),),
        timeout=int(timeout) if isinstance(timeout, (int, float)) else None,
        comment=str(obj.get("comment", "")), elements=_elements(obj.get("elem")),
    )


def _chain_of(obj: Mapping[str, Any], fam: str, tab: str, name: str, rules: tuple[NftRule, ...]) -> NftChain:
    return NftChain(fam, tab, name, obj.get("type"), obj.get("hook"), _priority(obj.get("prio")), obj.get("policy"),
                    rules)


# --- nft syntax ------------------------------------------------------------------------


def value_text(v: Any) -> str:
    """A JSON value (right-hand side, element key, map value) in nft syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "{ " + ", ".join(value_text(x) for x in v) + " }"
    if isinstance(v, dict) and len(v) == 1:
        k, x = next(iter(v.items()))
        if k == "prefix":
            return f"{x['addr']}/{x['len']}"
        if k == "range":
            return f"{value_text(x[0])}-{value_text(x[1])}"
        if k == "concat":
            return " . ".join(value_text(p) for p in x)
        if k == "set":
            items = x if isinstance(x, list) else [x]
            return "{ " + ", ".join(_set_item_text(i) for i in items) + " }"
        if k == "elem":
            return value_text(x.get("val"))
        if k in ("jump", "goto"):
            return f"{k} {x['target']}"
        if k in ("accept", "drop", "continue", "return"):
            return str(k)
        if k in ("payload", "meta", "ct", "fib", "numgen", "&", "|", "^"):
            return expr_text(v)
    return json.dumps(v, separators=(",", ":"))


def _set_item_text(item: Any) -> str:
    if isinstance(item, list) and len(item) == 2:
        return f"{value_text(item[0])} : {value_text(item[1])}"
    return value_text(item)


def expr_text(e: Any) -> str:
    """A left-hand expression (what a match or a map key reads)."""
    if not isinstance(e, dict) or len(e) != 1:
        return value_text(e)
    k, x = next(iter(e.items()))
    if k == "payload":
        if "protocol" in x:
            return f"{x['protocol']} {x['field']}"
        return f"@{x.get('base')},{x.get('offset')},{x.get('len')}"
    if k == "meta":
        return f"meta {x['key']}"
    if k == "ct":
        return f"ct {x['key']}"
    if k == "fib":
        flags = x.get("flags") or []
        flags = flags if isinstance(flags, list) else [flags]
        return f"fib {' . '.join(flags)} {x.get('result')}"
    if k == "numgen":
        return f"numgen {x.get('mode')} mod {x.get('mod')}" + (f" offset {x['offset']}" if x.get("offset") else "")
    if k == "concat":
        return " . ".join(expr_text(p) for p in x)
    if k in ("&", "|", "^"):
        return f"{expr_text(x[0])} {k} {value_text(x[1])}"
    return value_text(e)


def statement_text(s: Any) -> str:
    """One element of a rule's expression list."""
    if not isinstance(s, dict) or len(s) != 1:
        return json.dumps(s, separators=(",", ":"))
    k, x = next(iter(s.items()))
    if k == "match":
        op = x.get("op", "==")
        right = value_text(x.get("right"))
        left = x.get("left")
        if op in ("==", "in") and not (isinstance(left, dict) and set(left) & {"&", "|", "^"}):
            return f"{expr_text(left)} {right}"
        return f"{expr_text(left)} {op} {right}"
    if k in ("jump", "goto"):
        return f"{k} {x['target']}"
    if k in ("accept", "drop", "continue", "return"):
        return str(k)
    if k == "reject":
        if not x:
            return "reject"
        return f"reject with {x.get('type', 'icmp')} {x.get('expr', '')}".rstrip()
    if k == "vmap":
        return f"{expr_text(x['key'])} vmap {value_text(x['data'])}"
    if k == "map":
        return f"{expr_text(x['key'])} map {value_text(x['data'])}"
    if k == "mangle":
        return f"{expr_text(x['key'])} set {expr_text(x['value'])}"
    if k == "dnat" or k == "snat":
        addr = value_text(x.get("addr", ""))
        port = f":{value_text(x['port'])}" if "port" in x else ""
        if port and ":" in addr and not addr.startswith("["):
            addr = f"[{addr}]"  # nft's own syntax for an IPv6 address with a port
        family = f"{x['family']} " if x.get("family") else ""
        return f"{k} {family}to {addr}{port}"
    if k == "masquerade":
        flags = x.get("flags") if isinstance(x, dict) else None
        flags = flags if isinstance(flags, list) else ([flags] if flags else [])
        return "masquerade" + (" " + " ".join(flags) if flags else "")
    if k == "set":
        return f"{x.get('op', 'add')} {x.get('set')} {{ {expr_text(x.get('elem'))} }}"
    if k == "counter":
        return "counter" if not isinstance(x, dict) else f"counter packets {x.get('packets', 0)} bytes {x.get('bytes', 0)}"
    if k == "notrack":
        return "notrack"
    if k == "log":
        return "log"
    if k == "limit":
        return f"limit rate {x.get('rate')}/{x.get('per')}"
    return json.dumps(s, separators=(",", ":"))


def rule_text(rule: NftRule) -> str:
    text = " ".join(statement_text(s) for s in rule.expr)
    if rule.comment:
        text += f' comment "{rule.comment}"'
    return text


def element_text(element: NftElement) -> str:
    key = value_text(element.key)
    if element.comment:
        key += f' comment "{element.comment}"'
    return key if element.value is None else f"{key} : {value_text(element.value)}"



def set_declaration(nset: NftSet) -> str:
    """The body of a set's or map's declaration: `type … ; flags … ; timeout …s`."""
    parts = [f"type {' . '.join(nset.type)}" + (f" : {nset.map}" if nset.map else "")]
    if nset.flags:
        parts.append(f"flags {','.join(nset.flags)}")
    if nset.timeout is not None:
        parts.append(f"timeout {nset.timeout}s")
    if nset.comment:
        parts.append(f'comment "{nset.comment}"')
    return " ; ".join(parts)


# --- one form per meaning ----------------------------------------------------------------

_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[{},]|[^\s{},]+')
_META_KEYS = frozenset({"mark", "iifname", "oifname", "iif", "oif", "iiftype", "oiftype", "skuid", "skgid",
                        "nfproto", "l4proto"})
_OPERATORS = {"or": "|", "and": "&", "xor": "^"}
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_./:*-]+$")


def _address(token: str) -> str | None:
    """The compressed form of an address or prefix token; None when it is neither."""
    if not token or not (token[0].isdecimal() or token[0] in "abcdefABCDEF:[") or token.count("/") > 1:
        return None
    try:
        net = ipaddress.ip_network(token, strict=False)
    except ValueError:
        return None
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _endpoint(token: str) -> str | None:
    """`[fd00::1]:80` / `10.0.0.1:80` in one form; None when it is not an address and port."""
    if token.startswith("["):
        host, _, rest = token[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = token.rpartition(":")
        if not sep or ":" in host:
            return None
    if not port.isdecimal():
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _word(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        inner = token[1:-1]
        return inner if _PLAIN_WORD.match(inner) else token
    if token in _OPERATORS:
        return _OPERATORS[token]
    if re.fullmatch(r"0x[0-9a-fA-F]+", token):
        return str(int(token, 16))
    return _address(token) or _endpoint(token) or token


def _group(tokens: list[str], i: int) -> tuple[str, int]:
    """The canonical text of the anonymous set starting after tokens[i - 1] == "{"."""
    items: list[list[str]] = [[]]
    while i < len(tokens) and tokens[i] != "}":
        t = tokens[i]
        if t == "{":
            text, i = _group(tokens, i + 1)
            items[-1].append(text)
            continue
        if t == ",":
            items.append([])
        else:
            items[-1].append(t)
        i += 1
    elements = [" ".join(item) for item in items if item]
    if elements and all(_address(e) is not None for e in elements):
        nets = [ipaddress.ip_network(e, strict=False) for e in elements]
        v4 = ipaddress.collapse_addresses([n for n in nets if isinstance(n, ipaddress.IPv4Network)])
        v6 = ipaddress.collapse_addresses([n for n in nets if isinstance(n, ipaddress.IPv6Network)])
        elements = [_address(str(n)) or str(n) for n in (*v4, *v6)]
    if len(elements) == 1 and " : " not in f" {elements[0]} ":
        return elements[0], i + 1
    return "{ " + ", ".join(sorted(elements)) + " }", i + 1


def canonical(text: str) -> str:
    """One form for every spelling of the same rule, key or value (see the module notes)."""
    raw = _TOKENS.findall(text)
    tokens: list[str] = []
    skip = False
    for n, t in enumerate(raw):
        if skip:
            skip = False
            continue
        if t == "comment" and n + 1 < len(raw) and raw[n + 1].startswith('"'):
            skip = True
            continue
        if t in _META_KEYS and (not tokens or tokens[-1] not in ("meta", "ct")):
            tokens.append("meta")
        tokens.append(_word(t) if t not in "{}," else t)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t == "{":
            text, i = _group(tokens, i + 1)
            out.append(text)
            continue
        if t == "with" and out and out[-1] == "reject" and tokens[i + 1:i + 2] in (["icmp"], ["icmpv6"], ["icmpx"]):
            rest = tokens[i + 2:i + 4]
            if rest[:1] == ["port-unreachable"]:
                i += 3
                continue
            if rest == ["type", "port-unreachable"]:
                i += 4
                continue
        out.append(t)
        i += 1
    return " ".join(out)
