"""Golden tests: real API objects + a proxy config → the exact `nft -f` transaction.

Every case of tests/golden/<case>/ (objects.yaml, config.yaml, shared with iptables mode) is
rendered by the nftables backend as one full transaction and compared with
tests/golden/<case>/expected.nftables.
Review changes to expected files as diffs; regenerate them with
`PROXYCTL_UPDATE_GOLDEN=1 pytest tests/test_golden_nftables.py`. A case's optional
nftables.yaml overrides config fields and passes render options (see tests/nfthelpers.py).

`upstream-six-services` is kube-proxy's TestOverallNFTablesRules: its nftables.yaml sets what
NewFakeProxier sets (node port addresses 192.168.0.2/32, service CIDR 172.30.0.0/16), and
upstream.nftables holds kube-proxy's expected per-service statements verbatim,
upstream-base.nftables its expected fixed part (`baseRules`, with the base-chain layout of kube-proxy 1.34+, which we
follow). Ours must equal both as multisets of statements, after the normalisations documented
at UPSTREAM_NOTES, and the fixed chains must hold upstream's rules in upstream's order.

(lab) Every golden transaction must load into the real kernel: into a fresh table, over
itself (a full transaction is re-applied on every full sync), and as a process's first
transaction (base chains deleted and re-created).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterator

import golden
import pytest

from kubectl_proxyctl.modes.nftables.render import CONTAINERS, NODEPORT_IPS, is_affinity_set, is_service_chain
from kubectl_proxyctl.model import IPFamily
from nfthelpers import (CASES, GOLDEN, NFT_SKIP, Scratch, load_case, older_layout, render_case, scratch_netns,
                        statements)

SIX = "upstream-six-services"


def test_cases_exist() -> None:
    assert len(CASES) >= 18, CASES


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    golden.check(GOLDEN / case / "expected.nftables", render_case(case).text, f"{case}: the rendered transaction")


_CHAIN_REF = re.compile(r"(?:jump|goto) (\S+)")
_SET_REF = re.compile(r"@(\S+)")


@pytest.mark.parametrize("case", CASES)
def test_golden_transaction_is_consistent(case: str) -> None:
    """Every chain and set a rule or element names is declared; every declared service chain
    is referenced; no localhost address accepts node ports (nftables mode has none)."""
    rendered = render_case(case)
    lines = statements(rendered.text)
    chains = {ln.split()[4] for ln in lines if ln.startswith("add chain ")}
    sets = {ln.split()[4] for ln in lines if ln.startswith(("add set ", "add map "))}
    referenced: set[str] = set()
    for ln in lines:
        if ln.startswith(("add rule ", "add element ")):
            referenced |= set(_CHAIN_REF.findall(ln))
            for name in _SET_REF.findall(ln):
                assert name in sets, f"{ln}: no set {name}"
        if ln.startswith("add rule "):
            assert ln.split()[4] in chains, ln
    assert referenced <= chains, referenced - chains
    service_chains = {c for c in chains if is_service_chain(c)}
    assert service_chains <= referenced, service_chains - referenced
    assert service_chains == set(rendered.chains_written)
    assert {s for s in sets if is_affinity_set(s)} == rendered.state.affinity_sets
    assert not re.search(rf"add element \S+ \S+ {NODEPORT_IPS} {{[^}}]*(127\.|::1\b)", rendered.text)


# --- kube-proxy's TestOverallNFTablesRules ----------------------------------------------------

# Known, deliberate differences between ours and upstream.nftables, normalised before comparing:
UPSTREAM_NOTES = """
* The mark: that test's fake proxier is built with masqueradeMark "0x4000"; the real
  kube-proxy (and we) write fmt.Sprintf("%#08x") = "0x00004000". Zero padding is dropped.
* Grouping: we write all elements of one set or map in one `add element` statement; each
  element is compared on its own.
* `flush`/`delete` statements and `#` comments are ignored: every full transaction of ours
  flushes each chain, set and map it declares (nodeport-ips too, before its element), where
  that test's baseRules only adds them; a first transaction also adds and deletes every base
  chain (those of the layout before 1.34 included) before it re-creates them.
"""

_MARK = re.compile(r"\b0x0*([0-9a-f]+)\b")


def normalized(script: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in statements(script):
        line = _MARK.sub(lambda m: "0x" + m.group(1), line)
        out[line] += 1
    return out


def is_per_service(statement: str) -> bool:
    """A statement about one service port: its chains and affinity sets (named with a `/`)
    and its map and set elements."""
    words = statement.split()
    if statement.startswith("add element "):
        return words[4] != NODEPORT_IPS
    return len(words) > 4 and "/" in words[4]


def split_sections(counts: Counter[str]) -> tuple[Counter[str], Counter[str]]:
    per_service = Counter({k: v for k, v in counts.items() if is_per_service(k)})
    return per_service, counts - per_service


def counter_diff(ours: Counter[str], theirs: Counter[str]) -> list[str]:
    return [f"- {k}" for k in sorted(theirs - ours)] + [f"+ {k}" for k in sorted(ours - theirs)]


def upstream(name: str) -> str:
    return (GOLDEN / SIX / name).read_text()


def test_six_services_per_service_statements_equal_kube_proxys() -> None:
    ours, _ = split_sections(normalized(render_case(SIX).text))
    theirs_all = normalized(upstream("upstream.nftables"))
    theirs, rest = split_sections(theirs_all)
    assert not rest, f"upstream.nftables holds statements that are not per service: {sorted(rest)}"
    assert sum(theirs.values()) > 60
    assert ours == theirs, "\n".join(counter_diff(ours, theirs))


def fixed_rules(script: str) -> dict[str, list[str]]:
    """The rules of the fixed chains (base chains included), chain by chain, in order."""
    out: dict[str, list[str]] = {}
    for line in statements(script):
        line = _MARK.sub(lambda m: "0x" + m.group(1), line)
        if line.startswith("add rule ") and not is_per_service(line):
            words = line.split(" ", 5)
            out.setdefault(words[4], []).append(words[5])
    return out


def test_six_services_fixed_part_equals_kube_proxys_base_rules() -> None:
    _, ours = split_sections(normalized(render_case(SIX).text))
    _, theirs = split_sections(normalized(upstream("upstream-base.nftables")))
    assert sum(theirs.values()) > 40
    assert ours == theirs, "\n".join(counter_diff(ours, theirs))
    # Rule order matters within a chain (the multisets above do not show it).
    assert fixed_rules(render_case(SIX).text) == fixed_rules(upstream("upstream-base.nftables"))
    # The base chains with their hooks and priorities are among the statements compared.
    hooked = [ln for ln in theirs if ln.startswith("add chain ") and " hook " in ln]
    assert len(hooked) == 8 and all(ln in ours for ln in hooked)
    # A first transaction adds (and deletes) every base chain before declaring it, those of the
    # layout before 1.34 too; nothing else differs.
    _, first = split_sections(normalized(render_case(SIX, first=True).text))
    assert first - ours == Counter(f"add chain ip kube-proxy {name}" for name in (
        "filter-prerouting-pre-dnat", "filter-output-pre-dnat", "filter-input", "filter-forward", "filter-output",
        "nat-prerouting", "nat-output", "nat-postrouting", "filter-prerouting", "filter-output-post-dnat"))
    assert not ours - first


def test_comparison_catches_differences() -> None:
    text = render_case(SIX).text
    theirs, _ = split_sections(normalized(upstream("upstream.nftables")))
    broken = text.replace("numgen random mod 2", "numgen random mod 3")
    assert split_sections(normalized(broken))[0] != theirs
    dropped = text.replace(", 172.30.0.46 . tcp . 80 comment", ", 172.30.0.47 . tcp . 80 comment")
    assert split_sections(normalized(dropped))[0] != theirs
    # The ClusterIP masquerade rule is compared as written: kube-proxy 1.33's form, with the
    # protocol and port matched again, is a difference from 1.34's.
    with_port = text.replace("ip daddr 172.30.0.41 ip saddr", "ip daddr 172.30.0.41 tcp dport 80 ip saddr")
    assert with_port != text and split_sections(normalized(with_port))[0] != theirs
    # The fixed part: the layout before 1.34, one priority, one jump in another base chain.
    base = split_sections(normalized(upstream("upstream-base.nftables")))[1]
    assert split_sections(normalized(text))[1] == base
    for changed in (older_layout(text),
                    text.replace("filter-input { type filter hook input priority 0 ;",
                                 "filter-input { type filter hook input priority -110 ;"),
                    text.replace("add rule ip kube-proxy filter-output ct state new jump cluster-ips-check",
                                 "add rule ip kube-proxy filter-input ct state new jump cluster-ips-check")):
        assert changed != text and split_sections(normalized(changed))[1] != base
    # The same statements in another order within a chain.
    first, second = (f"add rule ip kube-proxy filter-input ct state new jump {c}"
                     for c in ("nodeport-endpoints-check", "service-endpoints-check"))
    swapped = text.replace(first, "SWAP").replace(second, first).replace("SWAP", second)
    assert swapped != text and split_sections(normalized(swapped))[1] == base
    assert fixed_rules(swapped) != fixed_rules(upstream("upstream-base.nftables"))


def test_six_services_use_what_the_fake_proxier_sets() -> None:
    node_plan, options = load_case(SIX)
    assert options == {"service_cidrs": ["172.30.0.0/16"]}
    assert not node_plan.nodeport_match_all and node_plan.nodeport_ips == ("192.168.0.2",)
    text = render_case(SIX).text
    assert "add element ip kube-proxy nodeport-ips { 192.168.0.2 }\n" in text
    assert 'ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"' in text


def test_every_container_is_declared_once() -> None:
    counts = Counter(ln.split()[4] for ln in statements(render_case(SIX).text) if ln.startswith(("add set", "add map")))
    for name in (*CONTAINERS, NODEPORT_IPS):
        assert counts[name] == 1, name


# --- the real kernel --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("golden")


@pytest.mark.lab
@pytest.mark.parametrize("case", CASES)
def test_golden_transaction_loads_into_the_kernel(scratch: Scratch, case: str) -> None:
    node_plan, _ = load_case(case)
    family = node_plan.family
    expected = (GOLDEN / case / "expected.nftables").read_text()
    scratch.reset()
    scratch.load(expected, family)
    table = scratch.table(family)
    lines = statements(expected)
    declared = {ln.split()[4] for ln in lines if ln.startswith("add chain ")}
    assert set(table.chains) == declared
    for chain in declared:
        want = sum(1 for ln in lines if ln.startswith("add rule ") and ln.split()[4] == chain)
        assert len(table.chains[chain].rules) == want, chain
    for name, nset in table.sets.items():
        want = sum(1 for ln in lines if ln.startswith("add element ") and ln.split()[4] == name)
        assert len(nset.elements) == want, name
    # Re-applied over itself, and as a new process's first transaction: the same table.
    before = scratch.table(family)
    scratch.load(expected, family)
    scratch.load(render_case(case, first=True).text, family)
    after = scratch.table(family)
    assert {n: len(c.rules) for n, c in after.chains.items()} == {n: len(c.rules) for n, c in before.chains.items()}
    assert {n: len(s.elements) for n, s in after.sets.items()} == {n: len(s.elements) for n, s in before.sets.items()}
    assert expected.startswith(f"add table {'ip6' if family == IPFamily.IPv6 else 'ip'} kube-proxy ")
