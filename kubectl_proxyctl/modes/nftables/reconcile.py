"""A full sync over a populated table: read it once, write only the difference.

Theory of operation: a full transaction re-adds, flushes and refills every chain and flushes
and refills every map. Into an empty table that is quick, but into a table that already holds
10,000 services' chains nft needs minutes for it, and the engine meets such a table at every
start after a restart or an upgrade. So a full sync first reads our table once (`nft list
table`, the text form: cheaper than `-j`, see `NftSystem.listing`) and, when its layout is
ours, writes one transaction that turns what is there into what a full transaction would
leave:

* **Layout check.** The fixed structure is the layout marker: the table's comment (kube-proxy's
  "rules for kube-proxy"), every base chain with its type, hook and priority, every map and
  set with its type and comment, the reject chain's comment, and no base chain of the layout
  before 1.34. That is exactly what the transaction below relies on without rewriting it,
  and it needs nothing in the table that `nft list table` would show beyond kube-proxy's own
  layout (tests/reference compares that listing line by line with the real kube-proxy's).
  A table in that layout written by kube-proxy itself reconciles as well. Anything else (no
  table, a failed read, a listing this module cannot read, another layout) makes the sync a
  plain full transaction, as before.
* **Desired state.** `desired` computes the full transaction's NftState as usual (every
  service port's chains, rules and elements, the affinity sets) without looking at the table,
  so the writer computes it while nft is still listing the table; `reconcile` then adds the
  stale chains the listing shows (service chains no longer used), as `render` does with the
  existing chains. That state is the writer's state afterwards, so later partial syncs work
  as after any full sync.
* **The transaction.** The fixed part as a full transaction writes it (small: the table, the
  base and fixed chains flushed and refilled, `nodeport-ips`), except that the maps and sets
  are declared but not flushed; the service chains that are missing or whose rules differ
  (added, flushed, refilled); the stale chains that still hold rules (flushed, and deleted a
  second later like any stale chain); the affinity sets that are missing or have another
  timeout (added) and those no longer used (deleted); per map and set, the elements that
  differ (deleted, then added). Over an unchanged table that is a few dozen lines.

Rules are compared as nft prints them: equal text, the same with nft's spacing of anonymous
verdict maps, or equal `parse.canonical` forms (nft prints some expressions its own way).
Elements are compared as printed. A spelling this module does not recognise only costs a
rewrite of that chain or element: every comparison errs toward writing, never toward
keeping something that differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.nftables.parse import canonical
from kubectl_proxyctl.modes.nftables.render import (
    BASE_CHAINS,
    CONTAINER_ORDER,
    CONTAINERS,
    LEGACY_BASE_CHAINS,
    NODEPORT_IPS,
    REJECT_CHAIN,
    TABLE,
    table_comment,
    RenderedNft,
    _affinity_set_line,
    _context,
    _element_text,
    _write_elements,
    NftState,
    fixed_lines,
    is_affinity_set,
    is_service_chain,
    render,
)
from kubectl_proxyctl.plan.planner import NodePlan
from kubectl_proxyctl.system.nftables import family_word

REJECT_CHAIN_COMMENT = "helper for @no-endpoint-services / @no-endpoint-nodeports"
NODEPORT_IPS_COMMENT = "IPs that accept NodePort traffic"
# nft prints these priorities by name (`dstnat - 10`) where the family and hook allow it.
PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ELEMENT_RE = re.compile(rf'(?:[^,"]|{_QUOTED})+')
_ELEMENT_KEY_RE = re.compile(rf"^(.*?)(?: comment {_QUOTED})?(?: : .*)?$")
_BASE_RE = re.compile(r"^type (\S+) hook (\S+)(?: device \S+)? priority (.+?); policy \S+;$")
_PRIORITY_RE = re.compile(r"^(?:([a-z]+)\s*)?(?:([+-])?\s*(\d+))?$")
_DURATION_RE = re.compile(r"(\d+)(ms|d|h|m|s)")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class ListingError(ValueError):
    """`nft list table` output this module cannot read."""


@dataclass
class ListedChain:
    header: list[str] = field(default_factory=list)  # `type … policy …;` and `comment "…"`, as printed
    rules: list[str] = field(default_factory=list)


@dataclass
class ListedSet:
    kind: str  # "set" or "map"
    fields: dict[str, str] = field(default_factory=dict)  # type, flags, timeout, size, comment: as printed
    elements: list[str] = field(default_factory=list)  # as printed, one each


@dataclass
class ListedTable:
    comment: str = ""
    chains: dict[str, ListedChain] = field(default_factory=dict)
    sets: dict[str, ListedSet] = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_listing(text: str) -> ListedTable:
    """`nft list table FAMILY NAME` output → its comment, chains (header and rules) and sets
    and maps (declaration fields and elements). Objects of other kinds are skipped. The text
    is cut at each object's closing line with `str.split` (hundreds of thousands of lines at
    10,000 services), then each object's lines are taken whole."""
    first, _, body = text.partition("\n")
    if not first.startswith("table ") or not first.endswith("{"):
        raise ListingError("not an nft table listing")
    out = ListedTable()
    blocks = body.split("\n\t}\n")
    closed = False
    for number, block in enumerate(blocks):
        lines = block.split("\n")
        head = next((k for k, ln in enumerate(lines)
                     if ln.startswith("\t") and not ln.startswith("\t\t") and ln.endswith(" {")), None)
        for line in lines[:len(lines) if head is None else head]:  # the table's own lines
            if line.startswith("\tcomment "):
                out.comment = _unquote(line[len("\tcomment "):])
            elif line.strip() == "}":
                closed = True
            elif line.strip():
                raise ListingError(f"unexpected {line[:80]!r}")
        if head is None:
            continue
        if number == len(blocks) - 1:
            raise ListingError(f"{lines[head].strip()[:80]!r} is not closed")
        kind, _, name = lines[head].strip()[:-2].partition(" ")
        rest = [ln[2:] if ln.startswith("\t\t") else ln.strip() for ln in lines[head + 1:]]
        if kind == "chain":
            out.chains[name] = _chain(rest)
        elif kind in ("set", "map"):
            out.sets[name] = _set(kind, rest)
    if not closed:
        raise ListingError("the table listing is not closed")
    return out


def _chain(body: list[str]) -> ListedChain:
    chain = ListedChain()
    for line in body:
        if not chain.rules and line.startswith(("type ", "comment ")):
            chain.header.append(line)
        elif line:
            chain.rules.append(line)
    return chain


def _set(kind: str, body: list[str]) -> ListedSet:
    out = ListedSet(kind)
    i = 0
    while i < len(body):
        line = body[i]
        i += 1
        if line.startswith("elements = {"):
            text = line
            while not text.rstrip().endswith("}") and i < len(body):
                text += " " + body[i].strip()
                i += 1
            inner = text[text.index("{") + 1:text.rstrip().rindex("}")]
            out.elements = [" ".join(e.split()) for e in _ELEMENT_RE.findall(inner) if e.strip()]
        elif line:
            word, _, value = line.partition(" ")
            out.fields[word] = value.strip()
    return out


def priority_value(text: str) -> int | None:
    """A base chain's priority as nft prints it (`dstnat - 10`, `-110`, `filter`) → a number."""
    m = _PRIORITY_RE.match(" ".join(text.split()))
    if m is None or not (m.group(1) or m.group(3)) or (m.group(1) and m.group(1) not in PRIORITY_NAMES):
        return None
    base = PRIORITY_NAMES[m.group(1)] if m.group(1) else 0
    offset = int(m.group(3)) if m.group(3) else 0
    return base - offset if m.group(2) == "-" else base + offset


def duration_seconds(text: str) -> float | None:
    """A timeout as nft prints it (`10m`, `3h`, `1d2h`, `10800s`) → seconds."""
    text = text.strip()
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


# --- comparing -------------------------------------------------------------------------


def layout_problem(listed: ListedTable, family: IPFamily, entry_points_only: bool = False) -> str:
    """Why the listed table is not in our layout ("" when it is; see the module docstring)."""
    comment = table_comment(entry_points_only)
    if listed.comment != comment:
        return f"the table's comment is {listed.comment!r}, not {comment!r}"
    for name in LEGACY_BASE_CHAINS:
        if name in listed.chains:
            return f"it has the base chain {name} of an older layout"
    for name, typ, hook, prio in BASE_CHAINS:
        chain = listed.chains.get(name)
        if chain is None:
            continue  # created by the fixed part
        m = next((r for r in map(_BASE_RE.match, chain.header) if r is not None), None)
        if m is None or (m.group(1), m.group(2)) != (typ, hook) or priority_value(m.group(3)) != prio:
            return f"its chain {name} is not a {typ} {hook} base chain of priority {prio}"
    addr = "ipv6_addr" if family == IPFamily.IPv6 else "ipv4_addr"
    expected = {name: (kind, typ.format(addr=addr), comment) for name, (kind, typ, comment) in CONTAINERS.items()}
    expected[NODEPORT_IPS] = ("set", addr, NODEPORT_IPS_COMMENT)
    for name, (kind, typ, comment) in expected.items():
        found = listed.sets.get(name)
        if found is None:
            continue  # created by the fixed part
        have = (found.kind, " ".join(found.fields.get("type", "").split()), _unquote(found.fields.get("comment", "")))
        if have != (kind, typ, comment):
            return f"its {found.kind} {name} is {have}, not {(kind, typ, comment)}"
    reject = listed.chains.get(REJECT_CHAIN)
    if reject is not None and reject.header != [f'comment "{REJECT_CHAIN_COMMENT}"']:
        return f"its chain {REJECT_CHAIN} is declared as {reject.header}"
    return ""


def same_rule(listed: str, ours: str) -> bool:
    """Whether a rule as nft listed it is the rule we write (see the module docstring)."""
    if listed == ours or listed == ours.replace(" , ", ", "):
        return True
    try:
        return canonical(listed) == canonical(ours)
    except (ValueError, IndexError, KeyError):
        return False


def _same_rules(listed: list[str], ours: Iterable[str]) -> bool:
    wanted = list(ours)
    return len(listed) == len(wanted) and all(same_rule(a, b) for a, b in zip(listed, wanted))


def _listed_elements(found: ListedSet | None) -> dict[str, str]:
    """Element key → the element as printed."""
    out: dict[str, str] = {}
    for element in (found.elements if found is not None else ()):
        m = _ELEMENT_KEY_RE.match(element)
        out[m.group(1) if m is not None else element] = element
    return out


# --- the transaction -------------------------------------------------------------------


def desired(plan: NodePlan, *, now: float = 0.0, service_cidrs: Iterable[str] = (), table: str = TABLE,
            entry_points_only: bool = False) -> RenderedNft:
    """The state a full transaction leaves, before the stale chains and affinity sets of the
    table are known: it needs no listing, so it is computed while the listing runs."""
    return render(plan, existing_chains=(), existing_affinity_sets=(), now=now, service_cidrs=service_cidrs,
                  table=table, entry_points_only=entry_points_only, state_only=True)


def reconcile(plan: NodePlan, listed: ListedTable, wanted: RenderedNft, *, now: float = 0.0,
              service_cidrs: Iterable[str] = (), table: str = TABLE,
              entry_points_only: bool = False) -> tuple[RenderedNft | None, str]:
    """(the transaction turning the listed table into the full transaction's result, "") or
    (None, why not) when the table is not in our layout. `wanted` is `desired(plan, …)` with
    the same arguments; its state becomes the result's."""
    problem = layout_problem(listed, plan.family, entry_points_only)
    if problem:
        return None, problem
    cidrs = tuple(service_cidrs)
    state = wanted.state
    stale = _add_stale_chains(state, listed, now)
    affinity_deleted = tuple(sorted({s for s in listed.sets if is_affinity_set(s)} - state.affinity_sets))
    ctx = _context(plan, entry_points_only)
    t = f"{family_word(plan.family)} {table}"

    keep_elements = {f"flush {CONTAINERS[name][0]} {t} {name}" for name in CONTAINER_ORDER}
    out = [line for line in fixed_lines(plan, service_cidrs=cidrs, table=table, entry_points_only=entry_points_only)
           if line not in keep_elements]

    for so in state.services.values():
        for name, timeout in so.affinity_sets:
            found = listed.sets.get(name)
            if found is None or duration_seconds(found.fields.get("timeout", "")) != timeout:
                out.append(_affinity_set_line(t, name, timeout, ctx))

    chain_lines: list[str] = []
    rule_lines: list[str] = []
    written: list[str] = []
    for so in state.services.values():
        for chain, rules in so.chains:
            found = listed.chains.get(chain)
            if found is not None and _same_rules(found.rules, rules):
                continue
            chain_lines.append(f"add chain {t} {chain}")
            chain_lines.append(f"flush chain {t} {chain}")
            written.append(chain)
            rule_lines += [f"add rule {t} {chain} {rule}" for rule in rules]
    for chain in stale:
        found = listed.chains.get(chain)
        if found is not None and found.rules:
            chain_lines.append(f"flush chain {t} {chain}")
    out += chain_lines
    out += rule_lines

    n_elements = _write_elements(out, t, *_element_changes(state.elements, listed))
    for name in affinity_deleted:
        out.append(f"delete set {t} {name}")
    return RenderedNft(
        text="\n".join(out) + "\n", family=plan.family, state=state, partial=False,
        rules_written=len(rule_lines), elements_written=n_elements, chains_written=tuple(written),
        stale_flushed=stale, affinity_deleted=affinity_deleted,
    ), ""


def _add_stale_chains(state: NftState, listed: ListedTable, now: float) -> tuple[str, ...]:
    """Record in `state` the listed service chains it does not use, stale since `now` (as
    `render` records the existing chains of a full transaction); returns them."""
    stale = tuple(sorted(c for c in listed.chains if c not in state.chains and is_service_chain(c)))
    for chain in stale:
        state.chains.add(chain)
        state.stale[chain] = now
    return stale


def _element_changes(elements: Mapping[str, Mapping[str, tuple[str, str, object]]],
                     listed: ListedTable) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(container → elements to add, container → keys to delete): what differs."""
    adds: dict[str, list[str]] = {}
    deletes: dict[str, list[str]] = {}
    for name in CONTAINER_ORDER:
        want = {key: _element_text(key, value, comment) for key, (value, comment, _) in elements.get(name, {}).items()}
        have = _listed_elements(listed.sets.get(name))
        gone = [key for key, text in have.items() if want.get(key) != text]
        new = [text for key, text in want.items() if have.get(key) != text]
        if gone:
            deletes[name] = gone
        if new:
            adds[name] = new
    return adds, deletes


def comparable_listing(text: str) -> list[str]:
    """`nft list table` output in an order two listings of the same table share: blocks in
    name order, each set's or map's elements sorted (nft lists hash-set elements in a
    per-set order, and re-created objects last)."""
    head: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if current is None:
            if line.startswith("\t") and not line.startswith("\t\t") and line.endswith(" {"):
                current = line.strip()
                blocks[current] = []
            elif line.strip():
                head.append(line)
        elif line == "\t}":
            current = None
        else:
            blocks[current].append(line.strip())
    out = head
    for name in sorted(blocks):
        body = " ".join(blocks[name])
        start = body.find("elements = {")
        elements: list[str] = []
        if start >= 0:
            end = body.index("}", start)
            elements = sorted(e.strip() for e in body[start + len("elements = {"):end].split(","))
            body = body[:start] + body[end + 1:]
        out += [name, *body.split("  "), *elements]
    return out
