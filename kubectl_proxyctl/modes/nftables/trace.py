"""Follow one packet through nftables tables (kube-proxy's `kube-proxy` layout).

Theory of operation: the same model as `modes.iptables.trace`, applied to nft
base chains. A packet meets the hooks in the kernel's order (prerouting, then input or
forward + postrouting; or output + postrouting, then input when it is addressed to the node),
and in each hook the base chains of the traced tables in priority order. A chain is walked
rule by rule; a rule's statements run left to right:

* a match (`ip daddr 10.96.0.10`, `th dport 80`, `fib daddr type local`, `ct state new`,
  `meta mark & 0x4000 == 0`, concatenations, anonymous and named sets, prefixes, ranges)
  either holds or ends the rule;
* `vmap` / `map` look the key up in an anonymous or named map: no element means the rule
  does not match; `numgen random mod N vmap {...}` forks the walk, one branch per index with
  weight 1/N, like iptables' `statistic` cascade (missing indices fall through);
* verdicts: `jump`/`goto`/`return`/`continue`, `accept` (ends this base chain only: the next
  base chain of the hook still runs), `drop` and `reject` (end the journey);
* statements: `meta mark set`, `dnat to` (rewrites the destination and ends the base chain),
  `masquerade`/`snat` (the reply comes from the node), set `update`/`add` (affinity
  bookkeeping), `counter`, `log`, `notrack`.

A named set with flags `dynamic`/`timeout` (kube-proxy's `affinity-…` sets) is looked up as
"this client has no entry yet", the same choice the iptables tracer makes for `-m recent`,
and its timeout is reported as the affinity. Whatever else cannot be known (an interface
name the packet did not give, an expression this module does not implement) ends that
branch as UNKNOWN "cannot evaluate …", never a guess.

Only the tables passed in are traced (by default the ruleset's `kube-proxy` tables of the
packet's family); the results are `modes.tracing.TraceResult` objects, so callers do not care
which backend produced them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from kubectl_proxyctl.modes.nftables.jsondump import PackedElements
from kubectl_proxyctl.modes.nftables.parse import (
    NftChain,
    NftRule,
    NftRuleset,
    NftSet,
    NftTable,
    statement_text,
)
from kubectl_proxyctl.modes.tracing import (
    DROP,
    REJECT,
    UNKNOWN,
    HookPaths,
    LocalNode,
    Origin,
    Packet,
    Step,
    TraceResult,
    arrives_on,
    assumed_value,
    leaves_by,
    walk_hooks,
    with_missing_input,
)

HOOK_PATHS = HookPaths(sending=("output", "postrouting"), arriving=("prerouting",), local_in=("input",),
                       forward=("forward", "postrouting"))
_MAX_DEPTH = 64
_PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58}


class _Unknown(Exception):
    """An expression this tracer cannot evaluate; the message says which."""


@dataclass(frozen=True)
class _State:
    prob: float
    dst: str
    dport: int
    mark: int
    dnat: str = ""
    masquerade: bool = False
    accepted: str = ""
    untracked: bool = False
    steps: tuple[Step, ...] = ()
    affinity: tuple[tuple[str, int], ...] = ()
    reason: str = ""
    assumed: tuple[tuple[str, bool], ...] = ()  # interfaces assumed on this way (see _open_interface)


# statuses of a walk
_MAX_ASSUMED = 6  # open conditions one way may assume before it stops as UNKNOWN
_NEXT = "next"  # the rule did not match, or a non-terminal statement ran: go on
_RETURN = "return"
_ACCEPT = "accept"
_DROP, _REJECT, _FAIL = DROP, REJECT, UNKNOWN  # the stopping statuses walk_hooks() reads


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class _Tracer:
    def __init__(self, tables: Sequence[NftTable], packet: Packet, node: LocalNode) -> None:
        self.tables = tables
        self.packet = packet
        self.node = node
        self.v6 = ":" in packet.dst
        self.hook = ""

    # -- values of the packet --

    def _open_interface(self, match: Any, st: _State) -> str:
        """The open condition of `iifname/oifname == "NAME"` (or `"veth*"`) when neither the
        packet nor the node's routes say the interface: the walk assumes it both ways, as the
        iptables tracer does ("" when the match is decidable or of another shape)."""
        left, right = match.get("left"), match.get("right")
        key = left.get("meta", {}).get("key") if isinstance(left, dict) and isinstance(left.get("meta"), dict) else None
        if key not in ("iifname", "oifname") or not isinstance(right, str) or match.get("op") not in ("==", "!="):
            return ""
        pkt = self.packet
        if key == "iifname" and (pkt.in_interface is not None or pkt.origin == Origin.NODE
                                 or self.node.interface_to(pkt.src) is not None):
            return ""
        if key == "oifname" and (pkt.out_interface is not None or self.node.interface_to(st.dst) is not None):
            return ""
        pattern = right[:-1] + "+" if right.endswith("*") and not right.endswith("\\*") else right
        return arrives_on(pattern) if key == "iifname" else leaves_by(pattern)

    def _left(self, e: Any, st: _State) -> Any:
        pkt = self.packet
        if not isinstance(e, dict) or len(e) != 1:
            raise _Unknown(f"cannot evaluate expression {e!r}")
        k, x = next(iter(e.items()))
        if k == "payload":
            proto, fld = x.get("protocol"), x.get("field")
            if proto in ("ip", "ip6"):
                if (proto == "ip6") != self.v6:
                    return None  # the other family: never matches
                if fld == "saddr":
                    return pkt.src
                if fld == "daddr":
                    return st.dst
            elif proto in ("th", "tcp", "udp", "sctp", "udplite"):
                if proto != "th" and proto != pkt.protocol:
                    return None
                if fld == "dport":
                    return st.dport
                if fld == "sport":
                    if pkt.sport is None:
                        raise _Unknown("cannot evaluate th sport: the packet has no source port")
                    return pkt.sport
            raise _Unknown(f"cannot evaluate {proto} {fld}")
        if k == "meta":
            key = x.get("key")
            if key == "l4proto":
                return pkt.protocol
            if key == "mark":
                return st.mark
            if key == "nfproto":
                return "ipv6" if self.v6 else "ipv4"
            if key == "protocol":
                return "ip6" if self.v6 else "ip"
            if key == "iifname" and pkt.in_interface is not None:
                return pkt.in_interface
            if key == "iifname" and pkt.origin == Origin.NODE:
                # Sent by the node: no input interface on the way out, loopback on the way in.
                return "lo" if self.hook == "input" else ""
            if key == "oifname" and pkt.out_interface is not None:
                return pkt.out_interface
            # Otherwise the node's routes say, when known: back to the source, on to the destination.
            routed = self.node.interface_to(pkt.src if key == "iifname" else st.dst) \
                if key in ("iifname", "oifname") else None
            if routed is not None:
                return routed
            raise _Unknown(f"cannot evaluate meta {key}")
        if k == "ct":
            key = x.get("key")
            if key == "state":
                return {"untracked"} if st.untracked else {"new"}
            if key == "status":
                return {"dnat"} if st.dnat else set()
            raise _Unknown(f"cannot evaluate ct {key}")
        if k == "fib":
            flags = x.get("flags") or []
            flags = flags if isinstance(flags, list) else [flags]
            if x.get("result") != "type" or set(flags) - {"saddr", "daddr"} or len(flags) != 1:
                raise _Unknown(f"cannot evaluate fib {' . '.join(flags)} {x.get('result')}")
            ip = pkt.src if flags[0] == "saddr" else st.dst
            addr = _ip(ip)
            if addr is None:
                raise _Unknown(f"cannot evaluate fib on {ip!r}")
            if self.node.is_local(ip):
                return "local"
            return "multicast" if addr.is_multicast else "unicast"
        if k == "concat":
            return tuple(self._left(p, st) for p in x)
        if k in ("&", "|", "^"):
            left = self._left(x[0], st)
            right = _number(x[1])
            if not isinstance(left, int) or right is None:
                raise _Unknown(f"cannot evaluate {k} on {x!r}")
            return {"&": left & right, "|": left | right, "^": left ^ right}[k]
        raise _Unknown(f"cannot evaluate {k}")

    # -- comparing --

    def _matches(self, have: Any, want: Any, table: NftTable, st: _State) -> bool:
        """Does the packet's value `have` match the right-hand side `want`?"""
        if have is None:
            return False
        if isinstance(want, str) and want.startswith("@"):
            named = table.sets.get(want[1:])
            if named is None:
                raise _Unknown(f"cannot evaluate {want}: no such set in {table.title}")
            if "dynamic" in named.flags or (named.timeout and not named.elements):
                return False  # a dynamic (affinity) set: a new client has no entry yet
            elements = named.elements
            return any(self._matches(have, elements[i].key, table, st) for i in _candidates(named, have))
        if isinstance(want, dict) and len(want) == 1:
            k, x = next(iter(want.items()))
            if k == "set":
                items = x if isinstance(x, list) else [x]
                return any(self._matches(have, i, table, st) for i in items)
            if k == "prefix":
                addr = _ip(str(have))
                try:
                    net = ipaddress.ip_network(f"{x['addr']}/{x['len']}", strict=False)
                except ValueError:
                    raise _Unknown(f"cannot evaluate prefix {x!r}") from None
                return addr is not None and addr.version == net.version and addr in net
            if k == "range":
                low, high = x
                return _compare(have, low) >= 0 and _compare(have, high) <= 0
            if k == "concat":
                if not isinstance(have, tuple) or len(have) != len(x):
                    return False
                return all(self._matches(h, w, table, st) for h, w in zip(have, x))
            if k == "elem":
                return self._matches(have, x.get("val"), table, st)
        if isinstance(want, list):
            if isinstance(have, set):
                return bool(have & {str(w) for w in want})
            return any(self._matches(have, w, table, st) for w in want)
        if isinstance(have, set):
            return str(want) in have
        if isinstance(want, str) and isinstance(have, str) and want.endswith("*") and not want.endswith("\\*"):
            return have.startswith(want[:-1])  # an interface name prefix (`iifname "veth*"`)
        return _compare(have, want) == 0

    def _lookup(self, key: Any, data: Any, table: NftTable, st: _State) -> Any:
        """The value mapped to `key` in a named or anonymous map; None when absent."""
        if isinstance(data, str) and data.startswith("@"):
            named = table.sets.get(data[1:])
            if named is None or not named.is_map:
                raise _Unknown(f"cannot evaluate {data}: no such map in {table.title}")
            elements = named.elements
            pairs = [(elements[i].key, elements[i].value) for i in _candidates(named, key)]
        elif isinstance(data, dict) and "set" in data:
            pairs = [(i[0], i[1]) for i in data["set"] if isinstance(i, list) and len(i) == 2]
        else:
            raise _Unknown(f"cannot evaluate map {data!r}")
        for k, v in pairs:
            if self._matches(key, k, table, st):
                return v
        return None

    # -- rules --

    def _rule(self, table: NftTable, chain: NftChain, index: int, rule: NftRule, st: _State,
              depth: int) -> list[tuple[_State, str]]:
        """Run one rule: [(state, status)] (several after a numgen fork)."""
        branches: list[tuple[_State, int]] = [(st, 0)]
        out: list[tuple[_State, str]] = []
        expr = rule.expr
        while branches:
            s, i = branches.pop()
            finished = False
            while i < len(expr) and not finished:
                stmt = expr[i]
                i += 1
                try:
                    if not isinstance(stmt, dict) or len(stmt) != 1:
                        raise _Unknown(f"cannot evaluate {stmt!r}")
                    k, x = next(iter(stmt.items()))
                    if k == "match":
                        condition = self._open_interface(x, s)
                        if condition and len(s.assumed) < _MAX_ASSUMED:
                            held = assumed_value(condition, s.assumed)
                            if held is None:
                                # Both worlds re-run this statement with the interface decided.
                                branches.append((replace(s, assumed=s.assumed + ((condition, False),)), i - 1))
                                s = replace(s, assumed=s.assumed + ((condition, True),))
                                held = True
                            if held == (x.get("op") == "!="):
                                out.append((s, _NEXT))
                                finished = True
                            continue
                        have = self._left(x.get("left"), s)
                        ok = self._matches(have, x.get("right"), table, s)
                        if x.get("op") == "!=":
                            ok = not ok if have is not None else False
                        if not ok:
                            affinity = _affinity_checked(x, table)
                            if affinity is not None:
                                s = replace(s, affinity=s.affinity + (affinity,))
                            out.append((s, _NEXT))
                            finished = True
                        continue
                    if k == "vmap":
                        key = x.get("key")
                        if isinstance(key, dict) and "numgen" in key:
                            forks = self._numgen(key["numgen"], x.get("data"), table, s)
                            for weight, verdict in forks:
                                s2 = replace(s, prob=s.prob * weight)
                                if verdict is None:
                                    out.append((s2, _NEXT))
                                else:
                                    out.extend(self._verdict(table, chain, index, rule, verdict, s2, depth))
                            finished = True
                            continue
                        verdict = self._lookup(self._left(key, s), x.get("data"), table, s)
                        if verdict is None:
                            out.append((s, _NEXT))
                        else:
                            out.extend(self._verdict(table, chain, index, rule, verdict, s, depth))
                        finished = True
                        continue
                    if k in ("jump", "goto", "accept", "drop", "return", "continue", "reject"):
                        out.extend(self._verdict(table, chain, index, rule, stmt, s, depth))
                        finished = True
                        continue
                    if k == "mangle":
                        target = x.get("key")
                        if target != {"meta": {"key": "mark"}}:
                            raise _Unknown(f"cannot evaluate {statement_text(stmt)}")
                        value = x.get("value")
                        mark = _number(value)
                        if mark is None:
                            mark = self._left(value, s)
                        if not isinstance(mark, int):
                            raise _Unknown(f"cannot evaluate {statement_text(stmt)}")
                        s = replace(s, mark=mark & 0xFFFFFFFF)
                        s = self._step(s, table, chain, index, rule, "MARK")
                        continue
                    if k == "dnat":
                        addr = x.get("addr")
                        port = x.get("port")
                        if not isinstance(addr, str) or _ip(addr) is None or not (port is None or isinstance(port, int)):
                            raise _Unknown(f"cannot evaluate {statement_text(stmt)}")
                        dport = port if isinstance(port, int) else s.dport
                        shown = f"[{addr}]:{dport}" if ":" in addr else f"{addr}:{dport}"
                        s = self._step(s, table, chain, index, rule, f"DNAT {shown}")
                        out.append((replace(s, dst=addr, dport=dport, dnat=shown), _ACCEPT))
                        finished = True
                        continue
                    if k in ("masquerade", "snat"):
                        s = self._step(s, table, chain, index, rule, "MASQUERADE" if k == "masquerade" else "SNAT")
                        out.append((replace(s, masquerade=True), _ACCEPT))
                        finished = True
                        continue
                    if k == "notrack":
                        s = replace(s, untracked=True)
                        continue
                    if k in ("counter", "log", "limit", "set", "quota"):
                        continue
                    raise _Unknown(f"cannot evaluate {statement_text(stmt)}")
                except _Unknown as exc:
                    s = self._step(s, table, chain, index, rule, "?")
                    out.append((replace(s, reason=f"{exc} ({table.title}/{chain.name} rule {index})"), _FAIL))
                    finished = True
            if not finished:
                out.append((s, _NEXT))  # a rule without a verdict: counted, on to the next
        return out

    def _numgen(self, numgen: Any, data: Any, table: NftTable, st: _State) -> list[tuple[float, Any]]:
        if numgen.get("mode") != "random":
            raise _Unknown(f"cannot evaluate numgen {numgen.get('mode')}: only random is predictable as odds")
        mod = int(numgen.get("mod", 0))
        offset = int(numgen.get("offset", 0) or 0)
        if mod <= 0:
            raise _Unknown("cannot evaluate numgen without a modulus")
        forks: dict[int, tuple[float, Any]] = {}
        missing = 0.0
        arms: dict[int, Any] | None = None
        if isinstance(data, dict) and isinstance(data.get("set"), list):
            # kube-proxy's literal `{ 0 : goto …, 1 : goto … }`: one pass, not one lookup per index
            # (a service with thousands of endpoints has thousands of arms).
            items = [i for i in data["set"] if isinstance(i, list) and len(i) == 2]
            if all(isinstance(k, int) and not isinstance(k, bool) for k, _ in items):
                arms = {}
                for k, v in items:
                    arms.setdefault(k, v)
        for n in range(offset, offset + mod):
            verdict = arms.get(n) if arms is not None else self._lookup(n, data, table, st)
            if verdict is None:
                missing += 1.0 / mod
            else:
                key = id(verdict)
                weight, _ = forks.get(key, (0.0, verdict))
                forks[key] = (weight + 1.0 / mod, verdict)
        out = list(forks.values())
        if missing > 1e-12:
            out.append((missing, None))
        return out

    def _step(self, st: _State, table: NftTable, chain: NftChain, index: int, rule: NftRule, action: str) -> _State:
        return replace(st, steps=st.steps + (Step(table.title, chain.name, index, rule.text, action, st.prob),))

    def _verdict(self, table: NftTable, chain: NftChain, index: int, rule: NftRule, verdict: Any, st: _State,
                 depth: int) -> list[tuple[_State, str]]:
        if verdict == "continue":
            return [(st, _NEXT)]
        if not isinstance(verdict, dict) or len(verdict) != 1:
            return [(replace(st, reason=f"cannot evaluate verdict {verdict!r}"), _FAIL)]
        k, x = next(iter(verdict.items()))
        if k == "accept":
            st = self._step(st, table, chain, index, rule, "ACCEPT")
            if chain.type == "filter":
                st = replace(st, accepted=f"{chain.name}: {rule.text}")
            return [(st, _ACCEPT)]
        if k == "drop":
            st = self._step(st, table, chain, index, rule, "DROP")
            return [(replace(st, reason=f"drop in {table.title}/{chain.name}"), _DROP)]
        if k == "reject":
            st = self._step(st, table, chain, index, rule, "REJECT")
            return [(replace(st, reason=f"reject in {table.title}/{chain.name}"), _REJECT)]
        if k == "return":
            return [(self._step(st, table, chain, index, rule, "RETURN"), _RETURN)]
        if k == "continue":
            return [(st, _NEXT)]
        if k in ("jump", "goto"):
            target = x.get("target") if isinstance(x, dict) else None
            sub = table.chains.get(str(target))
            if sub is None:
                return [(replace(st, reason=f"cannot evaluate {k} {target}: no such chain in {table.title}"), _FAIL)]
            st = self._step(st, table, chain, index, rule, f"{k} {target}")
            out: list[tuple[_State, str]] = []
            for s, status in self._chain(table, sub, st, depth + 1):
                if status == _RETURN:
                    out.append((s, _RETURN if k == "goto" else _NEXT))
                else:
                    out.append((s, status))
            return out
        return [(replace(st, reason=f"cannot evaluate verdict {k}"), _FAIL)]

    def _chain(self, table: NftTable, chain: NftChain, st: _State, depth: int) -> list[tuple[_State, str]]:
        if depth > _MAX_DEPTH:
            return [(replace(st, reason=f"cannot evaluate: chains nest deeper than {_MAX_DEPTH} at {chain.name}"),
                     _FAIL)]
        out: list[tuple[_State, str]] = []
        work: list[tuple[_State, int]] = [(st, 0)]
        while work:
            s, i = work.pop()
            if i >= len(chain.rules):
                out.append((s, _RETURN))
                continue
            for s2, status in self._rule(table, chain, i + 1, chain.rules[i], s, depth):
                if status == _NEXT:
                    work.append((s2, i + 1))
                else:
                    out.append((s2, status))
        return out

    # -- hooks --

    def _base_chains(self, hook: str) -> list[tuple[NftTable, NftChain]]:
        found = [(t, c) for t in self.tables for c in base_chains(t) if c.hook == hook]
        return sorted(found, key=lambda tc: tc[1].priority if tc[1].priority is not None else 0)

    def _hook(self, states: list[_State], hook: str, finals: list[tuple[_State, str]]) -> list[_State]:
        self.hook = hook
        for table, chain in self._base_chains(hook):
            nxt: list[_State] = []
            for st in states:
                if chain.type == "nat" and (st.untracked or (st.dnat and hook in ("prerouting", "output"))):
                    nxt.append(st)  # NAT is decided once per connection
                    continue
                for s, status in self._chain(table, chain, st, 0):
                    if status in (_RETURN, _NEXT):
                        if (chain.policy or "accept") == "drop":
                            finals.append((replace(s, reason=f"policy drop of {table.title}/{chain.name}"), _DROP))
                        else:
                            nxt.append(s)
                    elif status == _ACCEPT:
                        nxt.append(s)
                    else:
                        finals.append((s, status))
            states = nxt
        return states

    def run(self) -> TraceResult:
        pkt = self.packet
        start = _State(prob=1.0, dst=pkt.dst, dport=pkt.dport, mark=pkt.mark)
        return walk_hooks(pkt, self.node, start, self._hook, HOOK_PATHS, accept_word="accept")


def base_chains(table: NftTable) -> list[NftChain]:
    """The table's chains with a hook; a table read in place names them without reading
    the others (`jsondump`)."""
    hooked = getattr(table.chains, "hooked", None)
    if hooked is not None:
        return [table.chains[name] for name in hooked()]
    return [c for c in table.chains.values() if c.hook]


# --- named sets and maps by key ----------------------------------------------------------
#
# A map of 10,000 service addresses is looked up several times per packet: it is indexed
# once by a token per element key, such that a packet value can only match an element whose
# token is among the value's (`_tokens`); keys that are not plain literals (prefixes, ranges,
# interface wildcards, numbers written as strings) have no token and are always tried. The
# candidates are tried in element order, with the same `_matches`, so the first match is the
# one a walk over every element finds.

_INDEX_MIN = 32  # smaller sets are simply walked
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_DIGIT = re.compile(r"[0-9]")
_INDEXES: dict[int, tuple[NftSet, dict[Any, Any], list[int]]] = {}


def _key_token(key: Any) -> Any:
    """The token of an element key (an address's one spelling, a number, ("s", text), a
    concatenation's tokens in a tuple); None when the key is no plain literal."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str):
        if key.endswith("*") or key.startswith("@"):
            return None
        if _IPV4.fullmatch(key):
            return key  # an IPv4 address in its one spelling (ipaddress takes no other)
        if ":" in key:
            addr = _ip(key)
            if addr is not None:
                return str(addr)
        if _DIGIT.search(key) and _number(key) is not None:
            return None
        return ("s", key)
    if isinstance(key, dict) and len(key) == 1 and isinstance(key.get("concat"), list):
        parts: list[Any] = []
        for part in key["concat"]:
            if type(part) is int or (type(part) is str and _IPV4.fullmatch(part)):
                parts.append(part)  # the common parts, without a call
                continue
            token = _key_token(part)
            if token is None or (isinstance(token, tuple) and token[0] != "s"):
                return None
            parts.append(token)
        return tuple(parts)
    return None


def _tokens(have: Any) -> list[Any] | None:
    """The tokens an element key must have for `have` to match it; None: any key may."""
    if isinstance(have, bool):
        return None
    if isinstance(have, int):
        return [have]
    if isinstance(have, str):
        addr = _ip(have)
        if addr is not None:
            return [str(addr)]
        out: list[Any] = [("s", have)]
        if have in _PROTOCOL_NUMBERS:
            out.append(_PROTOCOL_NUMBERS[have])
        elif have.lstrip("-").isdecimal() and str(int(have)) == have:
            out.append(int(have))  # the text of a number key
        return out
    if isinstance(have, tuple):
        combos: list[tuple[Any, ...]] = [()]
        for part in have:
            options = _tokens(part)
            if options is None or isinstance(part, tuple):
                return None
            combos = [c + (o,) for c in combos for o in options]
        return combos
    return None


def _packed_candidates(elements: PackedElements, have: Any) -> list[int] | None:
    """A big set read as columns (see jsondump): every key starts with a plain address, so
    the elements an IPv4 address (or a key starting with one) may match are those whose
    address column holds its one spelling; found without building an index."""
    first = have[0] if isinstance(have, tuple) and have else have
    if not isinstance(first, str) or not _IPV4.fullmatch(first) or _ip(first) is None:
        return None
    column = elements.parts[0]
    out: list[int] = []
    i = -1
    try:
        while True:
            i = column.index(first, i + 1)
            out.append(i)
    except ValueError:
        return out


def _candidates(named: NftSet, have: Any) -> Sequence[int]:
    """Positions of the elements of `named` that `have` may match, in element order."""
    elements = named.elements
    if len(elements) < _INDEX_MIN:
        return range(len(elements))
    if isinstance(elements, PackedElements):
        packed = _packed_candidates(elements, have)
        if packed is not None:
            return packed
    wanted = _tokens(have)
    if wanted is None:
        return range(len(elements))
    found = _INDEXES.get(id(named))
    if found is None or found[0] is not named:
        by: dict[Any, Any] = {}  # token → position, or a list of positions
        always: list[int] = []
        for i, e in enumerate(elements):
            token = _key_token(e.key)
            if token is None:
                always.append(i)
            elif token in by:
                held = by[token]
                by[token] = held + [i] if isinstance(held, list) else [held, i]
            else:
                by[token] = i
        if len(_INDEXES) > 64:
            _INDEXES.clear()
        found = _INDEXES[id(named)] = (named, by, always)
    _, by, always = found
    hits: list[int] = []
    for token in wanted:
        held = by.get(token)
        if held is not None:
            hits += held if isinstance(held, list) else [held]
    return sorted(set(hits).union(always)) if always or len(wanted) > 1 else hits


def _affinity_checked(match: Any, table: NftTable) -> tuple[str, int] | None:
    """(set, timeout) when a failed match was a lookup in a dynamic (affinity) set."""
    right = match.get("right")
    if isinstance(right, str) and right.startswith("@"):
        named = table.sets.get(right[1:])
        if named is not None and ("dynamic" in named.flags or named.timeout):
            return named.name, named.timeout or 0
    return None


def _number(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            return None
    return None


def _compare(have: Any, want: Any) -> int:
    """-1/0/1 comparing a packet value with a literal (addresses, numbers, protocol names)."""
    if isinstance(have, str):
        a = _ip(have)
        if a is not None:
            b = _ip(str(want))
            if b is None or a.version != b.version:
                return 1
            return (a > b) - (a < b)  # type: ignore[operator]
        if isinstance(want, int) and have in _PROTOCOL_NUMBERS:
            return (_PROTOCOL_NUMBERS[have] > want) - (_PROTOCOL_NUMBERS[have] < want)
        return 0 if have == str(want) else 1
    if isinstance(have, int):
        w = _number(want)
        if w is None:
            return 1
        return (have > w) - (have < w)
    return 0 if have == want else 1


def family_tables(ruleset: NftRuleset, v6: bool) -> tuple[NftTable, ...]:
    """kube-proxy's tables that see packets of this family."""
    wanted = ("ip6", "inet") if v6 else ("ip", "inet")
    return tuple(t for t in ruleset.kube_proxy_tables() if t.family in wanted)


def trace_nft(tables: Iterable[NftTable], packet: Packet, node: LocalNode) -> TraceResult:
    """Follow `packet` through the base chains of `tables` on `node`."""
    return with_missing_input(_Tracer(tuple(tables), packet, node).run(), None, node)

