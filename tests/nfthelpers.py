"""Shared helpers for the nftables tests: golden cases, `nft` inside a throwaway network
namespace, a comparable form of `nft -j list table`, and render → load → read back → trace.
`older_layout` rewrites our script into kube-proxy's base-chain layout before 1.34, so the
inspection tools are also tested on tables of nodes that still run it.

The golden cases are shared with iptables mode: tests/golden/<case>/objects.yaml and
config.yaml (whose `render:` options are iptables-only and ignored here). A case may add
tests/golden/<case>/nftables.yaml with `config:` (ProxyConfig fields that override
config.yaml) and `render:` (options of `modes.nftables.render`, e.g. `service_cidrs`).

Everything that touches the kernel goes through `NftSystem` (the product's own adapter) with
a `SubprocessExecutor` bound to the namespace, so a failing script is reported with its
failing line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

from flowhelpers import Obj, default_config, state_of
from kubectl_proxyctl.modes.nftables.render import TABLE, RenderedNft, cleanup_script, render
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.nftables.parse import NftTable, element_text, parse_nft_json, rule_text
from kubectl_proxyctl.modes.nftables.trace import trace_nft
from kubectl_proxyctl.modes.tracing import LocalNode, Origin, Packet, TraceResult
from kubectl_proxyctl.system.executor import SubprocessExecutor
from kubectl_proxyctl.system.nftables import NftSystem
from netns import empty_netns, lab_skip_reason

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden"  # <case>/objects.yaml, config.yaml, [nftables.yaml,] expected.nftables
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "objects.yaml").is_file())

# Why a kernel test cannot run here (root, ip, nsenter, nft), or None.
NFT_SKIP = lab_skip_reason("nft")


# --- golden cases ----------------------------------------------------------------------


def load_case(case: str) -> tuple[NodePlan, dict[str, Any]]:
    """The case's NodePlan and its nftables render options."""
    warnings: list[str] = []
    state = state_from_objects(load_objects(str(GOLDEN / case / "objects.yaml")), warn=warnings.append)
    assert not warnings, warnings
    config = yaml.safe_load((GOLDEN / case / "config.yaml").read_text())
    config.pop("render", None)  # iptables-restore options
    options: dict[str, Any] = {}
    extra = GOLDEN / case / "nftables.yaml"
    if extra.is_file():
        doc = yaml.safe_load(extra.read_text()) or {}
        config.update(doc.get("config") or {})
        options.update(doc.get("render") or {})
    return plan(state, ProxyConfig.from_mapping(config)), options


def render_case(case: str, **overrides: Any) -> RenderedNft:
    node_plan, options = load_case(case)
    options.update(overrides)
    return render(node_plan, **options)


# --- nft statements ----------------------------------------------------------------------


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside quotes and braces (element lists hold verdicts and comments)."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "{":
            depth += 1
        elif not quoted and ch == "}":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


_ADD_ELEMENT = re.compile(r"^(add element \S+ \S+ \S+) \{ (.*) \}$")


def statements(script: str) -> list[str]:
    """The script's statements with one element per `add element` line; `flush` and
    `delete` statements, blank lines and `#` comments left out."""
    out: list[str] = []
    for raw in script.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("#") or line.startswith(("flush ", "delete ")):
            continue
        m = _ADD_ELEMENT.match(line)
        if m:
            out.extend(f"{m.group(1)} {{ {item} }}" for item in split_top_level(m.group(2)))
        else:
            out.append(line)
    return out


_CHAIN_LINE = re.compile(r"^(add|delete|flush) chain (\S+ \S+) (filter-[a-z-]+)(.*)$")
_FILTER_RULE = re.compile(r"^add rule (\S+ \S+) (filter-[a-z-]+) (.*)$")


def older_layout(script: str) -> str:
    """Our script with kube-proxy's base-chain layout before 1.34 (before kubernetes#132456):
    filter-prerouting, filter-input, filter-forward and filter-output all at priority -110
    (before DNAT), so filter-output also holds the firewall jump, and filter-output-post-dnat
    at -90 for the cluster-ips check of packets the node sends. A first transaction's
    add/delete pairs become that version's (each of its base chains once)."""
    out: list[str] = []
    for line in script.splitlines():
        m = _CHAIN_LINE.match(line)
        if m is not None:
            verb, table, name, rest = m.groups()
            if name in ("filter-prerouting", "filter-output-post-dnat", "filter-output-pre-dnat"):
                continue  # the legacy add/delete pairs of a first transaction, and the merged chain
            if name == "filter-prerouting-pre-dnat":
                name = "filter-prerouting"
            out.append(f"{verb} chain {table} {name}{rest.replace('priority 0 ', 'priority -110 ')}")
            if name == "filter-output" and verb != "add":  # after the pair: the post-DNAT chain
                post = f"{table} filter-output-post-dnat"
                spec = " { type filter hook output priority -90 ; }" if verb == "flush" else ""
                out.extend([f"add chain {post}{spec}", f"{verb} chain {post}"])
            continue
        m = _FILTER_RULE.match(line)
        if m is not None:
            table, chain, rule = m.groups()
            if chain == "filter-prerouting-pre-dnat":
                chain = "filter-prerouting"
            elif chain == "filter-output-pre-dnat":
                chain = "filter-output"
            elif chain == "filter-output" and rule.endswith("jump cluster-ips-check"):
                chain = "filter-output-post-dnat"
            line = f"add rule {table} {chain} {rule}"
        out.append(line)
    return "\n".join(out) + "\n"


# --- nft in a network namespace ---------------------------------------------------------


def nft_system(netns: str, family: IPFamily = IPFamily.IPv4) -> NftSystem:
    return NftSystem(family, SubprocessExecutor(netns=netns))


def reset(netns: str) -> None:
    """Remove our tables of both families (no error when they do not exist)."""
    for family in IPFamily:
        nft_system(netns, family).run(cleanup_script(family))


def load(netns: str, script: str, family: IPFamily = IPFamily.IPv4) -> None:
    nft_system(netns, family).run(script)


def check(netns: str, script: str, family: IPFamily = IPFamily.IPv4) -> None:
    """`nft -c -f -`: the kernel validates the batch and commits nothing."""
    nft_system(netns, family).run(script, check=True)


def read_table(netns: str, family: IPFamily = IPFamily.IPv4) -> NftTable:
    """Our table as `nft -j list table` shows it, parsed."""
    text = nft_system(netns, family).list_table()
    fam = "ip6" if family == IPFamily.IPv6 else "ip"
    tables = [t for t in parse_nft_json(text).tables if t.family == fam and t.name == TABLE]
    assert len(tables) == 1, text[:500]
    return tables[0]


@dataclass(frozen=True)
class TableView:
    """A table's content in comparable form (handles and element order left out)."""

    chains: Mapping[str, tuple[Any, ...]]  # name → (type, hook, priority, rule texts)
    sets: Mapping[str, tuple[Any, ...]]  # name → (type, map, flags, timeout, comment, sorted elements)

    def without(self, chains: Iterable[str]) -> "TableView":
        gone = set(chains)
        return TableView({k: v for k, v in self.chains.items() if k not in gone}, self.sets)


def view(table: NftTable) -> TableView:
    chains = {name: (c.type, c.hook, c.priority, tuple(rule_text(r) for r in c.rules))
              for name, c in table.chains.items()}
    sets = {name: (s.type, s.map, tuple(sorted(s.flags)), s.timeout, s.comment,
                   tuple(sorted(element_text(e) for e in s.elements)))
            for name, s in table.sets.items()}
    return TableView(chains, sets)


def diff_views(got: TableView, want: TableView) -> list[str]:
    """What differs, for an assertion message; [] when equal."""
    problems: list[str] = []
    for kind, a, b in (("chain", got.chains, want.chains), ("set/map", got.sets, want.sets)):
        for name in sorted(set(a) | set(b)):
            if name not in a:
                problems.append(f"{kind} {name} missing")
            elif name not in b:
                problems.append(f"{kind} {name} unexpected")
            elif a[name] != b[name]:
                problems.append(f"{kind} {name} differs:\n  got  {a[name]}\n  want {b[name]}")
    return problems


@dataclass
class Scratch:
    """One network namespace for a test module; `reset()` between cases."""

    netns: str

    def reset(self) -> None:
        reset(self.netns)

    def load(self, script: str, family: IPFamily = IPFamily.IPv4) -> None:
        load(self.netns, script, family)

    def check(self, script: str, family: IPFamily = IPFamily.IPv4) -> None:
        check(self.netns, script, family)

    def table(self, family: IPFamily = IPFamily.IPv4) -> NftTable:
        return read_table(self.netns, family)


def scratch_netns(role: str) -> Iterator[Scratch]:
    """Generator body for a module-scoped fixture: a fresh namespace, removed afterwards
    (also when a test failed)."""
    with empty_netns(role) as name:
        yield Scratch(name)


# --- render → kernel → trace -----------------------------------------------------------


@dataclass
class BuiltNft:
    """A plan rendered, loaded into the kernel and read back as `nft -j` shows it."""

    plan: NodePlan
    rendered: RenderedNft
    table: NftTable
    local: LocalNode

    def trace(self, src: str, dst: str, port: int, origin: str = "pod", protocol: str = "tcp",
              **kw: Any) -> TraceResult:
        return trace_nft([self.table], Packet(src, dst, port, protocol, Origin(origin), **kw), self.local)


def build_nft(scratch: Scratch, objects: Iterable[Obj], config: ProxyConfig | None = None,
              local_ips: Sequence[str] | None = None, older: bool = False, **render_options: Any) -> BuiltNft:
    """`older`: load the script rewritten into the base-chain layout before 1.34 (`older_layout`)."""
    cfg = config or default_config()
    node_plan = plan(state_of(objects), cfg)
    rendered = render(node_plan, **render_options)
    scratch.reset()
    scratch.load(older_layout(rendered.text) if older else rendered.text, cfg.family)
    table = scratch.table(cfg.family)
    return BuiltNft(node_plan, rendered, table, LocalNode(tuple(local_ips if local_ips is not None else cfg.node_ips)))
