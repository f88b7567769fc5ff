"""The strict fakes (tests/fakes.py, FakeExecutor) refuse what the real tools refuse.

* Unit: each class of bad iptables-restore payload and bad nft script is refused by the
  fake with the failing line, a refused block or script changes nothing, and every payload
  or script our writers produce for the golden cases (full syncs, a partial sync, stale
  chains deleted) is accepted. FakeExecutor fails on a command it was not told about.
* Lab (`lab`): the same samples go to the real tools in a throwaway network namespace,
  `iptables-legacy-restore` and `iptables-nft-restore` (iptables 1.8.9) and `nft -f -`
  (1.0.6), applied for real rather than with `--test`/`-c`, which skip the kernel's checks
  (table and hook restrictions, loops; `iptables-nft-restore --test` does not even check
  jump targets). For every sample: the fake accepts ⇔ the tool accepts, and the state
  afterwards (chains and their rule counts; nft sets and element counts) is the same.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import yaml
from fakes import FakeIptables, FakeNft, service, slice_
from netns import empty_netns, requires_lab

from kubectl_proxyctl.errors import ApplyError, ProxyctlError
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.iptables.parse import parse
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.system.executor import FakeExecutor, Result, SubprocessExecutor, UnscriptedCommand
from kubectl_proxyctl.system.iptables import Jump

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "objects.yaml").is_file())


class Sample(NamedTuple):
    """`setup` payloads (all accepted), then `payload`, which the tools accept iff `ok`."""

    id: str
    setup: tuple[str, ...]
    payload: str
    ok: bool


def block(table: str, *lines: str) -> str:
    return f"*{table}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"


FOO_BAR = block("filter", ":FOO - [0:0]", ":BAR - [0:0]", "-A FOO -j BAR")

IPT_SAMPLES = [
    Sample("kube-proxy-like", (), block(
        "nat", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-SVC-A - [0:0]", ":KUBE-SEP-A - [0:0]", ":KUBE-SEP-OLD - [0:0]",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "needs SNAT" -j MASQUERADE --random-fully',
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-SERVICES -m tcp -p tcp -d 10.96.0.1 --dport 80 -j KUBE-SVC-A",
        "-A KUBE-SVC-A -m statistic --mode random --probability 0.5 -j KUBE-SEP-A",
        "-A KUBE-SEP-A -s 10.244.1.1 -j KUBE-MARK-MASQ",
        "-A KUBE-SEP-A -m tcp -p tcp -j DNAT --to-destination 10.244.1.1:8080",
        "-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES", "-A POSTROUTING -j KUBE-POSTROUTING",
        "-X KUBE-SEP-OLD"), True),
    Sample("no-commit", (), "*filter\n:FOO - [0:0]\n-A FOO -j ACCEPT\n", False),
    Sample("unknown-table", (), block("foo", ":FOO - [0:0]"), False),
    Sample("new-table-before-commit", (), "*filter\n:FOO - [0:0]\n*nat\nCOMMIT\n", False),
    Sample("unparseable-line", (), block("filter", "bogus line"), False),
    Sample("chain-without-policy", (), block("filter", ":FOO"), False),
    Sample("chain-name-28", (), block("filter", f":{'C' * 28} - [0:0]"), True),
    Sample("chain-name-29", (), block("filter", f":{'C' * 29} - [0:0]"), False),
    Sample("append-to-undeclared-chain", (), block("filter", "-A FOO -j ACCEPT"), False),
    Sample("append-to-chain-of-an-earlier-payload", (block("filter", ":FOO - [0:0]"),),
           block("filter", "-A FOO -j ACCEPT"), True),
    Sample("append-to-builtin-of-another-table", (), block("filter", "-A PREROUTING -j ACCEPT"), False),
    Sample("jump-to-missing-chain", (), block("filter", ":FOO - [0:0]", "-A FOO -j BAR"), False),
    Sample("goto-missing-chain", (), block("filter", ":FOO - [0:0]", "-A FOO -g BAR"), False),
    Sample("goto-a-target", (), block("filter", ":FOO - [0:0]", "-A FOO -g ACCEPT"), False),
    Sample("jump-to-builtin-chain", (), block("filter", ":FOO - [0:0]", "-A FOO -j INPUT"), False),
    Sample("jump-to-chain-of-another-table", (block("nat", ":BAR - [0:0]"),),
           block("filter", ":FOO - [0:0]", "-A FOO -j BAR"), False),
    Sample("extension-targets-in-nat", (), block(
        "nat", ":FOO - [0:0]", "-A FOO -j MASQUERADE --random-fully", "-A FOO -j MARK --or-mark 0x4000",
        "-A FOO -j RETURN", "-A FOO -j LOG", "-A FOO -m tcp -p tcp -j DNAT --to-destination 10.0.0.1:80",
        "-A FOO -j DNAT --to-destination 10.0.0.1", "-A FOO -j SNAT --to-source 10.0.0.2", "-A FOO -j ACCEPT"), True),
    Sample("dnat-to-a-port-without-protocol", (),
           block("nat", ":FOO - [0:0]", "-A FOO -j DNAT --to-destination 10.0.0.1:80"), False),
    Sample("redirect-to-a-port-with-protocol", (),
           block("nat", ":FOO - [0:0]", "-A FOO -p udp -j REDIRECT --to-ports 53"), True),
    Sample("extension-targets-in-filter", (), block(
        "filter", ":FOO - [0:0]", "-A FOO -j REJECT", "-A FOO -j LOG", "-A FOO -j MARK --set-mark 1",
        "-A FOO -j DROP", "-A FOO -j RETURN"), True),
    Sample("reject-in-nat", (), block("nat", ":FOO - [0:0]", "-A FOO -j REJECT"), False),
    Sample("dnat-in-filter", (), block("filter", ":FOO - [0:0]", "-A FOO -j DNAT --to-destination 1.2.3.4"), False),
    Sample("masquerade-in-mangle", (), block("mangle", ":FOO - [0:0]", "-A FOO -j MASQUERADE"), False),
    Sample("drop-in-nat", (), block("nat", ":FOO - [0:0]", "-A FOO -j DROP"), False),
    Sample("ct-in-raw", (), block("raw", ":FOO - [0:0]", "-A FOO -j CT --notrack"), True),
    Sample("unknown-match", (), block("filter", ":FOO - [0:0]", "-A FOO -m comments --comment x -j ACCEPT"), False),
    Sample("dport-without-protocol", (), block("filter", ":FOO - [0:0]", "-A FOO --dport 80 -j ACCEPT"), False),
    Sample("dport-with-protocol", (), block("filter", ":FOO - [0:0]", "-A FOO -p tcp --dport 80 -j ACCEPT",
                                            "-A FOO -m tcp -p tcp --dport 81 -j ACCEPT"), True),
    Sample("delete-referenced-chain", (FOO_BAR,), block("filter", "-X BAR"), False),
    Sample("delete-chain-whose-referrer-is-flushed-later", (FOO_BAR,), block("filter", "-X BAR", ":FOO - [0:0]"),
           False),
    Sample("delete-chain-after-its-referrer-is-flushed", (FOO_BAR,), block("filter", ":FOO - [0:0]", "-X BAR"), True),
    Sample("delete-missing-chain", (), block("filter", "-X FOO"), False),
    Sample("delete-builtin-chain", (), block("filter", "-X INPUT"), False),
    Sample("delete-non-empty-chain", (block("filter", ":FOO - [0:0]", "-A FOO -j ACCEPT"),),
           block("filter", "-X FOO"), False),
    Sample("declaring-a-chain-flushes-it", (block("filter", ":FOO - [0:0]", "-A FOO -j ACCEPT"),),
           block("filter", ":FOO - [0:0]", "-X FOO"), True),
    Sample("declaring-a-builtin-chain-keeps-its-rules", (FOO_BAR, block("filter", "-A INPUT -j FOO")),
           block("filter", ":INPUT ACCEPT [0:0]", ":FOO - [0:0]", "-X FOO"), False),
    Sample("later-block-fails-earlier-one-stays", (),
           block("filter", ":FOO - [0:0]", "-A FOO -j ACCEPT") + block("nat", ":BAR - [0:0]", "-A BAR -j NOPE"),
           False),
    Sample("new-existing-chain", (), block("filter", ":FOO - [0:0]", "-N FOO"), False),
    Sample("insert-beyond-the-end", (), block("filter", "-I INPUT 3 -j ACCEPT"), False),
    Sample("insert-and-delete", (block("filter", "-A INPUT -j ACCEPT"),),
           block("filter", "-I INPUT 2 -s 10.0.0.1 -j DROP", "-D INPUT -j ACCEPT", "-D INPUT 1"), True),
    Sample("delete-missing-rule", (), block("filter", "-D INPUT -j ACCEPT"), False),
    Sample("policy-on-user-chain", (), block("filter", ":FOO - [0:0]", "-P FOO DROP"), False),
    Sample("dnat-reachable-from-postrouting", (),
           block("nat", ":FOO - [0:0]", "-A FOO -j DNAT --to-destination 1.2.3.4", "-A POSTROUTING -j FOO"), False),
    Sample("masquerade-reachable-from-output-later", (block("nat", ":FOO - [0:0]", "-A FOO -j MASQUERADE"),),
           block("nat", "-A OUTPUT -j FOO"), False),
    Sample("snat-from-input-and-postrouting", (),
           block("nat", ":FOO - [0:0]", "-A FOO -j SNAT --to-source 1.2.3.4", "-A INPUT -j FOO",
                 "-A POSTROUTING -j FOO"), True),
    Sample("loop-not-reachable", (), block("filter", ":FOO - [0:0]", "-A FOO -j FOO"), True),
    Sample("loop-reachable-from-input", (),
           block("filter", ":FOO - [0:0]", ":BAR - [0:0]", "-A FOO -j BAR", "-A BAR -j FOO", "-A INPUT -j FOO"), False),
]

T = "add table ip t\n"
BASE = "add chain ip t b { type filter hook input priority 0 ; }\n"
NAT_PRE = "add chain ip t pre { type nat hook prerouting priority -100 ; }\n"
VMAP = "add map ip t m { type ipv4_addr . inet_proto . inet_service : verdict ; }\n"
REF = T + "add chain ip t a\nadd chain ip t c\nadd rule ip t a jump c\n"

NFT_SAMPLES = [
    Sample("kube-proxy-like", (), T + (
        'add chain ip t nat-prerouting { type nat hook prerouting priority -100 ; }\n'
        'add chain ip t nat-postrouting { type nat hook postrouting priority 100 ; }\n'
        'add chain ip t services\nadd chain ip t masquerading\nadd chain ip t mark-for-masquerade\n'
        'add chain ip t service-A-ns/a/tcp/p\nadd chain ip t endpoint-B-ns/a/tcp/p__10.244.1.1/8080\n'
        'add set ip t cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }\n'
        + VMAP +
        'add set ip t affinity-X { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }\n'
        'add rule ip t nat-prerouting jump services\nadd rule ip t nat-postrouting jump masquerading\n'
        'add rule ip t mark-for-masquerade mark set mark or 0x00004000\n'
        'add rule ip t masquerading mark and 0x00004000 == 0 return\n'
        'add rule ip t masquerading mark set mark xor 0x00004000\n'
        'add rule ip t masquerading masquerade fully-random\n'
        'add rule ip t services ip daddr . meta l4proto . th dport vmap @m\n'
        'add rule ip t service-A-ns/a/tcp/p ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n'
        'add rule ip t service-A-ns/a/tcp/p numgen random mod 1 vmap { 0 : goto endpoint-B-ns/a/tcp/p__10.244.1.1/8080 }\n'
        'add rule ip t endpoint-B-ns/a/tcp/p__10.244.1.1/8080 ip saddr 10.244.1.1 jump mark-for-masquerade\n'
        'add rule ip t endpoint-B-ns/a/tcp/p__10.244.1.1/8080 update @affinity-X { ip saddr }\n'
        'add rule ip t endpoint-B-ns/a/tcp/p__10.244.1.1/8080 meta l4proto tcp dnat to 10.244.1.1:8080\n'
        'add element ip t cluster-ips { 10.96.0.1 }\n'
        'add element ip t m { 10.96.0.1 . tcp . 80 comment "ns/a:p" : goto service-A-ns/a/tcp/p }\n'), True),
    Sample("unknown-command", (), T + "frob chain ip t a\n", False),
    Sample("unknown-object", (), T + "add thing ip t a\n", False),
    Sample("chain-in-missing-table", (), "add chain ip t a\n", False),
    Sample("rule-for-missing-chain", (), T + "add rule ip t a accept\n", False),
    Sample("jump-to-missing-chain", (), T + "add chain ip t a\nadd rule ip t a jump c\n", False),
    Sample("jump-to-base-chain", (), T + BASE + "add chain ip t a\nadd rule ip t a goto b\n", False),
    Sample("missing-set", (), T + "add chain ip t a\nadd rule ip t a ip daddr @s accept\n", False),
    Sample("inline-vmap-to-missing-chain", (), T + "add chain ip t a\nadd rule ip t a ip daddr vmap { 1.2.3.4 : goto c }\n",
           False),
    Sample("element-to-missing-chain", (), T + VMAP + "add element ip t m { 1.2.3.4 . tcp . 80 : goto c }\n", False),
    Sample("element-of-missing-set", (), T + "add element ip t s { 1.2.3.4 }\n", False),
    Sample("delete-chain-referenced-by-rule", (REF,), "delete chain ip t c\n", False),
    Sample("delete-chain-referenced-by-element", (T + "add chain ip t c\n" + VMAP +
                                                  "add element ip t m { 1.2.3.4 . tcp . 80 : goto c }\n",),
           "delete chain ip t c\n", False),
    Sample("delete-chain-after-element-is-deleted", (T + "add chain ip t c\n" + VMAP +
                                                     "add element ip t m { 1.2.3.4 . tcp . 80 : goto c }\n",),
           "delete element ip t m { 1.2.3.4 . tcp . 80 }\ndelete chain ip t c\n", True),
    Sample("flush-referrer-then-delete", (REF,), "flush chain ip t a\ndelete chain ip t c\n", True),
    Sample("delete-then-flush-referrer", (REF,), "delete chain ip t c\nflush chain ip t a\n", False),
    Sample("delete-non-empty-unreferenced-chain", (T + "add chain ip t a\nadd rule ip t a accept\n",),
           "delete chain ip t a\n", True),
    Sample("delete-missing-chain", (T,), "delete chain ip t a\n", False),
    Sample("flush-missing-chain", (T,), "flush chain ip t a\n", False),
    Sample("delete-missing-table", (), "delete table ip t\n", False),
    Sample("delete-set-used-by-rule", (T + "add set ip t s { type ipv4_addr ; }\nadd chain ip t a\n"
                                       "add rule ip t a ip daddr @s accept\n",), "delete set ip t s\n", False),
    Sample("delete-missing-element", (T + "add set ip t s { type ipv4_addr ; }\n",),
           "delete element ip t s { 1.2.3.4 }\n", False),
    Sample("flushed-set-has-no-elements", (T + "add set ip t s { type ipv4_addr ; }\nadd element ip t s { 1.2.3.4 }\n",),
           "flush set ip t s\ndelete element ip t s { 1.2.3.4 }\n", False),
    Sample("re-add-same-element", (), T + "add chain ip t a\n" + VMAP +
           "add element ip t m { 1.2.3.4 . tcp . 80 : jump a }\nadd element ip t m { 1.2.3.4 . tcp . 80 : jump a }\n", True),
    Sample("re-add-element-with-other-verdict", (), T + "add chain ip t a\nadd chain ip t c\n" + VMAP +
           "add element ip t m { 1.2.3.4 . tcp . 80 : jump a }\nadd element ip t m { 1.2.3.4 . tcp . 80 : jump c }\n",
           False),
    Sample("re-add-set-with-other-flags", (), T + "add set ip t s { type ipv4_addr ; }\n"
           "add set ip t s { type ipv4_addr ; flags interval ; }\n", False),
    Sample("re-add-set-with-other-comment", (), T + 'add set ip t s { type ipv4_addr ; comment "a" ; }\n'
           'add set ip t s { type ipv4_addr ; comment "b" ; }\n', True),
    Sample("regular-chain-becomes-base", (), T + "add chain ip t b\n" + BASE, False),
    Sample("base-chain-changes-priority", (), T + BASE + "add chain ip t b { type filter hook input priority 10 ; }\n",
           False),
    Sample("base-chain-re-created", (T + BASE,),
           "add chain ip t b\ndelete chain ip t b\nadd chain ip t b { type filter hook input priority 10 ; }\n", True),
    Sample("dnat-reachable-from-filter-hook", (),
           T + BASE + "add chain ip t a\nadd rule ip t a dnat to 1.2.3.4\nadd rule ip t b jump a\n", False),
    Sample("masquerade-reachable-from-prerouting", (),
           T + NAT_PRE + "add chain ip t a\nadd rule ip t a masquerade\nadd rule ip t pre jump a\n", False),
    Sample("dnat-reachable-through-a-map-element", (T + NAT_PRE + "add chain ip t a\nadd rule ip t a dnat to 1.2.3.4\n"
                                                    + VMAP + "add rule ip t pre ip daddr . meta l4proto . th dport vmap @m\n",),
           "add element ip t m { 1.2.3.4 . tcp . 80 : goto a }\n", True),
    Sample("masquerade-reachable-through-a-map-element", (
        T + NAT_PRE + "add chain ip t a\nadd rule ip t a masquerade\n" + VMAP
        + "add rule ip t pre ip daddr . meta l4proto . th dport vmap @m\n",),
        "add element ip t m { 1.2.3.4 . tcp . 80 : goto a }\n", False),
    Sample("loop-not-reachable", (), T + "add chain ip t a\nadd rule ip t a jump a\n", True),
    Sample("loop-reachable-from-base", (), T + BASE + "add chain ip t a\nadd rule ip t a jump a\nadd rule ip t b jump a\n",
           False),
    Sample("failed-script-changes-nothing", (T,), "add chain ip t a\nadd rule ip t a accept\nadd rule ip t a jump z\n",
           False),
    Sample("several-commands-on-a-line", (), "add table ip t; add chain ip t a; add rule ip t a accept\n", True),
]


# --- how each side applies a sequence --------------------------------------------------------


def fake_iptables_outcome(sample: Sample) -> tuple[bool, FakeIptables]:
    fake = FakeIptables()
    for setup in sample.setup:
        fake.restore(setup)
    try:
        fake.restore(sample.payload)
    except ApplyError:
        return False, fake
    return True, fake


def fake_nft_outcome(sample: Sample) -> tuple[bool, FakeNft]:
    fake = FakeNft()
    for setup in sample.setup:
        fake.run(setup)
    try:
        fake.run(sample.payload)
    except ApplyError:
        return False, fake
    return True, fake


def iptables_state(tables: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """table → chain → rule count, without empty built-in chains and empty tables."""
    out = {}
    for table, chains in tables.items():
        kept = {c: n for c, n in chains.items() if n or c not in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT",
                                                                   "POSTROUTING")}
        if kept:
            out[table] = kept
    return out


def fake_iptables_state(fake: FakeIptables) -> dict[str, dict[str, int]]:
    return iptables_state({t: {c: len(ch.rules) for c, ch in chains.items()} for t, chains in fake.tables.items()})


def saved_iptables_state(text: str) -> dict[str, dict[str, int]]:
    ruleset = parse(text)
    return iptables_state({t: {c: len(ruleset.chain(t, c).rules) for c in ruleset.chains(t)}  # type: ignore[union-attr]
                           for t in ruleset.tables})


def fake_nft_state(fake: FakeNft) -> dict[str, Any]:
    return {f"{fam} {name}": {"chains": {c: len(ch.rules) for c, ch in t.chains.items()},
                              "sets": {s: len(st.elements) for s, st in t.sets.items()}}
            for (fam, name), t in fake.tables.items()}


def listed_nft_state(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in json.loads(text or "{}").get("nftables", []):
        for kind in ("table", "chain", "rule", "set", "map"):
            obj = item.get(kind)
            if obj is None:
                continue
            key = f"{obj['family']} {obj['table'] if kind != 'table' else obj['name']}"
            t = out.setdefault(key, {"chains": {}, "sets": {}})
            if kind == "chain":
                t["chains"].setdefault(obj["name"], 0)
            elif kind == "rule":
                t["chains"][obj["chain"]] = t["chains"].get(obj["chain"], 0) + 1
            elif kind in ("set", "map"):
                t["sets"][obj["name"]] = len(obj.get("elem", []))
    return out


# --- unit: iptables ---------------------------------------------------------------------------


@pytest.mark.parametrize("sample", IPT_SAMPLES, ids=[s.id for s in IPT_SAMPLES])
def test_fake_iptables_accepts_exactly_the_good_samples(sample: Sample) -> None:
    accepted, _ = fake_iptables_outcome(sample)
    assert accepted == sample.ok


@pytest.mark.parametrize("payload, line, reason", [
    ("*filter\n:FOO - [0:0]\n", 3, "COMMIT expected at line 3"),
    (block("foo", ":FOO - [0:0]"), 1, "unable to initialize table 'foo'"),
    (block("filter", ":FOO - [0:0]", "-A BAR -j ACCEPT"), 3, "chain BAR does not exist"),
    (block("filter", ":FOO - [0:0]", "-A FOO -j KUBE-NOPE"), 3, "Couldn't load target `KUBE-NOPE'"),
    (block("filter", ":FOO - [0:0]", "-A FOO -g KUBE-NOPE"), 3, "goto 'KUBE-NOPE' is not a chain"),
    (block("filter", "-X KUBE-NOPE"), 2, "chain KUBE-NOPE does not exist"),
    (block("filter", ":FOO - [0:0]", ":BAR - [0:0]", "-A FOO -j BAR", "-X BAR"), 5, "still has 1 references"),
    (block("filter", "what is this"), 2, "cannot parse"),
    (block("nat", ":FOO - [0:0]", "-A FOO -j MASQUERADE", "-A PREROUTING -j FOO"), 5, "reachable from PREROUTING"),
])
def test_fake_iptables_names_the_failing_line_like_iptables_restore(payload: str, line: int, reason: str) -> None:
    fake = FakeIptables()
    with pytest.raises(ApplyError) as info:
        fake.restore(payload)
    assert info.value.line == line and reason in str(info.value)
    assert str(info.value).startswith("iptables-restore: ")
    assert fake.payloads == [] and fake.tables == {}


def test_fake_iptables_commits_block_by_block_and_keeps_a_failed_block_out() -> None:
    fake = FakeIptables()
    fake.restore(block("nat", ":KUBE-A - [0:0]", "-A KUBE-A -j RETURN"))
    payload = block("filter", ":KUBE-F - [0:0]") + block("nat", ":KUBE-A - [0:0]", ":KUBE-B - [0:0]", "-A KUBE-B -j NOPE")
    with pytest.raises(ApplyError, match="line 7 failed"):
        fake.restore(payload)
    assert "KUBE-F" in fake.tables["filter"]  # committed before the failing block, as the real tool does
    assert fake.nat_chains == ["KUBE-A"] and len(fake.tables["nat"]["KUBE-A"].rules) == 1  # nat untouched
    assert len(fake.payloads) == 1


def test_fake_iptables_noflush_declaration_flushes_and_save_shows_the_state() -> None:
    fake = FakeIptables()
    fake.restore(block("nat", ":KUBE-A - [0:0]", ":KUBE-B - [0:0]", "-A KUBE-A -j KUBE-B", "-A PREROUTING -j KUBE-A"))
    fake.restore(block("nat", ":KUBE-A - [0:0]", ":PREROUTING ACCEPT [0:0]", "-X KUBE-B"))
    saved = fake.save("nat")
    assert ":KUBE-A - [0:0]" in saved and "KUBE-B" not in saved
    assert "-A PREROUTING -j KUBE-A" in saved  # a built-in chain is not flushed by --noflush
    assert parse(saved).chain("nat", "KUBE-A").rules == ()  # type: ignore[union-attr]
    fake.restore(block("nat", ":KUBE-C - [0:0]"), noflush=False)  # without --noflush: the table is replaced
    assert fake.nat_chains == ["KUBE-C"] and "-A PREROUTING" not in fake.save("nat")


def test_fake_iptables_nat_chains_and_canaries_are_state() -> None:
    fake = FakeIptables()
    fake.nat_chains = ["KUBE-SVC-AAAAAAAAAAAAAAAA", "MY-CHAIN"]
    assert ":MY-CHAIN - [0:0]" in fake.save("nat")
    fake.restore(block("nat", "-A MY-CHAIN -j KUBE-SVC-AAAAAAAAAAAAAAAA"))
    with pytest.raises(ApplyError, match="still has 1 references"):
        fake.restore(block("nat", "-X KUBE-SVC-AAAAAAAAAAAAAAAA"))
    assert fake.missing_canaries() == ["mangle", "nat", "filter"] and not fake.canaries
    fake.ensure_canaries()
    assert fake.missing_canaries() == [] and fake.canaries
    assert all("KUBE-PROXY-CANARY" in fake.tables[t] for t in ("mangle", "nat", "filter"))
    fake.canaries = False  # someone flushed the tables
    assert fake.missing_canaries() == ["mangle", "nat", "filter"]


def test_fake_iptables_ensure_jumps_inserts_missing_rules_once() -> None:
    fake = FakeIptables()
    fake.restore(block("nat", ":KUBE-SERVICES - [0:0]"))
    jumps = [Jump("nat", "PREROUTING", ("-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")),
             Jump("nat", "POSTROUTING", ("-j", "KUBE-POSTROUTING"))]
    assert fake.ensure_jumps(jumps) == jumps
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in fake.save("nat")
    assert "KUBE-POSTROUTING" in fake.nat_chains  # the missing target chain was created
    assert fake.ensure_jumps(jumps) == [] and len(fake.tables["nat"]["PREROUTING"].rules) == 1
    with pytest.raises(ApplyError, match="Couldn't load target `NOPE'"):
        fake.ensure_jumps([Jump("filter", "INPUT", ("-j", "NOPE"))])
    assert fake.payloads == [block("nat", ":KUBE-SERVICES - [0:0]")]  # only restore() payloads are kept


def test_fake_iptables_test_mode_commits_nothing() -> None:
    fake = FakeIptables()
    fake.test(block("filter", ":FOO - [0:0]"))
    assert fake.tables == {} and fake.payloads == []
    with pytest.raises(ApplyError):
        fake.test(block("filter", "-A FOO -j ACCEPT"))


# --- unit: nftables ---------------------------------------------------------------------------


@pytest.mark.parametrize("sample", NFT_SAMPLES, ids=[s.id for s in NFT_SAMPLES])
def test_fake_nft_accepts_exactly_the_good_samples(sample: Sample) -> None:
    accepted, _ = fake_nft_outcome(sample)
    assert accepted == sample.ok


@pytest.mark.parametrize("script, line, reason", [
    (T + "frob chain ip t a\n", 2, "syntax error"),
    (T + "add chain ip nope a\n", 2, "no table ip nope"),
    (T + "add rule ip t a accept\n", 2, "no chain a"),
    (T + "add chain ip t a\nadd rule ip t a jump c\n", 3, "jump/goto c: no such chain"),
    (T + "add chain ip t a\nadd rule ip t a ip daddr @s accept\n", 3, "@s: no such set"),
    (T + VMAP + "add element ip t m { 1.2.3.4 . tcp . 80 : goto c }\n", 3, "no chain c"),
    (REF + "delete chain ip t c\n", 5, "Device or resource busy (chain c is still referenced from a)"),
])
def test_fake_nft_names_the_failing_line(script: str, line: int, reason: str) -> None:
    fake = FakeNft()
    with pytest.raises(ApplyError) as info:
        fake.run(script)
    assert info.value.line == line and reason in str(info.value), str(info.value)
    assert fake.scripts == [] and fake.tables == {}  # atomic: nothing of the script was applied


def test_fake_nft_answers_reads_from_its_state() -> None:
    fake = FakeNft()
    assert fake.chains() == set() and fake.chain_rule_count("masquerading") is None
    assert not fake.set_present("cluster-ips") and fake.masquerading_rules is None
    fake.run("add table ip kube-proxy\nadd chain ip kube-proxy masquerading\n"
             "add rule ip kube-proxy masquerading masquerade fully-random\n"
             "add set ip kube-proxy cluster-ips { type ipv4_addr ; }\n" + VMAP.replace(" t ", " kube-proxy "))
    assert fake.chains() == {"masquerading"} and fake.sets() == {"cluster-ips"}  # maps are not sets
    assert fake.set_present("cluster-ips") and fake.chain_rule_count("masquerading") == 1
    fake.masquerading_rules = 0  # `nft flush table`
    assert fake.chain_rule_count("masquerading") == 0 and fake.set_present("cluster-ips")
    fake.masquerading_rules = None  # `nft delete table`
    assert not fake.set_present("cluster-ips") and fake.chains() == set()
    fake.existing = {"services", "service-X-ns/old/tcp/p"}
    fake.affinity = {"affinity-Y-ns/old/tcp/p__10.0.0.1/80"}
    assert fake.chains() == {"services", "service-X-ns/old/tcp/p"} and fake.sets() == fake.affinity
    fake.run("flush chain ip kube-proxy service-X-ns/old/tcp/p\ndelete set ip kube-proxy affinity-Y-ns/old/tcp/p__10.0.0.1/80\n")
    assert fake.affinity == set()
    fake.run("destroy chain ip kube-proxy nothing-here\n", check=True)
    assert fake.checked and len(fake.scripts) == 2  # a checked script is not applied


# --- unit: every writer output is accepted ----------------------------------------------------


def load_plan(case: str) -> NodePlan:
    directory = GOLDEN / case
    state = state_from_objects(load_objects(str(directory / "objects.yaml")), warn=lambda _m: None)
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config.pop("render", None)
    return plan(state, ProxyConfig.from_mapping(config))


def without(node_plan: NodePlan, count: int) -> NodePlan:
    """The plan with its first `count` service ports gone (a later sync deletes their chains)."""
    return dataclasses.replace(node_plan, services=node_plan.services[count:])


def iptables_writer_flow(case: str) -> FakeIptables:
    """Two full syncs, then a partial one that drops the first service port: all accepted."""
    node_plan = load_plan(case)
    fake = FakeIptables()
    writer = IptablesWriter(fake)
    writer.sync(node_plan, True, frozenset())
    writer.sync(node_plan, True, frozenset())
    if node_plan.services:
        gone = node_plan.services[0].name
        writer.sync(without(node_plan, 1), False, frozenset({gone}))
    return fake


def nft_writer_flow(case: str) -> FakeNft:
    """A process's first full sync, a second full one, a partial one dropping a service port and
    the deletion of its stale chains: all accepted."""
    node_plan = load_plan(case)
    fake = FakeNft()
    if node_plan.family == IPFamily.IPv6:
        fake.fam = "ip6"
    now = [100.0]
    writer = NftablesWriter(fake, monotonic=lambda: now[0])
    writer.sync(node_plan, True, frozenset())
    writer.sync(node_plan, True, frozenset())
    if node_plan.services:
        writer.sync(without(node_plan, 1), False, frozenset({node_plan.services[0].name}))
        now[0] += 60
        writer.before_sync(False, None, "IPv4")
    assert writer.state_missing() == []
    return fake


@pytest.mark.parametrize("case", CASES)
def test_fake_iptables_accepts_every_writer_payload_of_the_golden_cases(case: str) -> None:
    fake = iptables_writer_flow(case)
    assert len(fake.payloads) >= 2 and fake.missing_canaries() == []


@pytest.mark.parametrize("case", CASES)
def test_fake_nft_accepts_every_writer_transaction_of_the_golden_cases(case: str) -> None:
    fake = nft_writer_flow(case)
    assert len(fake.scripts) >= 2


def test_fake_iptables_refuses_a_payload_the_proxier_could_not_apply() -> None:
    """A jump into a chain the kernel does not hold fails the sync, like on a real node."""
    from kubectl_proxyctl.engine.proxier import Proxier
    from kubectl_proxyctl.kube.tracker import StateTracker

    fake = FakeIptables()
    proxier = Proxier(ProxyConfig(node_name="n"), StateTracker("n"), IptablesWriter(fake))
    for obj in (service("a", "10.96.0.1"), slice_("a", ["10.244.1.1"])):
        proxier.on_event(obj["kind"], "ADDED", obj)
    assert not proxier.sync().error  # type: ignore[union-attr]
    with pytest.raises(ApplyError, match="KUBE-SVC-NOPE"):
        fake.restore(block("nat", "-A KUBE-SERVICES -d 10.96.0.9 -j KUBE-SVC-NOPE"))


# --- unit: FakeExecutor -----------------------------------------------------------------------


def test_fake_executor_fails_loudly_on_a_command_it_was_not_told_about() -> None:
    fake = FakeExecutor()
    fake.script(["nft", "-f", "-"], Result(0))
    assert fake.run(["nft", "-f", "-"], stdin="add table ip t\n").ok
    with pytest.raises(UnscriptedCommand, match=r"unscripted command: iptables-save -t nat .*fake\.script"):
        fake.run(["iptables-save", "-t", "nat"])
    assert isinstance(UnscriptedCommand("x"), AssertionError)
    assert fake.argvs() == [("nft", "-f", "-"), ("iptables-save", "-t", "nat")]  # recorded all the same
    assert FakeExecutor(default=Result(1)).run(["anything"]).returncode == 1  # told: everything fails


# --- lab: the fakes agree with the real tools --------------------------------------------------

IPT_BACKENDS = ("legacy", "nft")


@pytest.fixture
def netns() -> Iterator[str]:
    with empty_netns("fakes") as name:
        yield name


def real_restore(executor: SubprocessExecutor, backend: str, payload: str) -> Result:
    return executor.run([f"iptables-{backend}-restore", "-w", "5", "--noflush"], stdin=payload)


@pytest.mark.lab
@requires_lab("iptables-legacy-restore", "iptables-nft-restore")
@pytest.mark.parametrize("backend", IPT_BACKENDS)
@pytest.mark.parametrize("sample", IPT_SAMPLES, ids=[s.id for s in IPT_SAMPLES])
def test_fake_iptables_agrees_with_iptables_restore(netns: str, sample: Sample, backend: str) -> None:
    executor = SubprocessExecutor(netns)
    for setup in sample.setup:
        done = real_restore(executor, backend, setup)
        assert done.ok, done.stderr
    done = real_restore(executor, backend, sample.payload)
    accepted, fake = fake_iptables_outcome(sample)
    assert done.ok == accepted == sample.ok, (done.stderr, accepted)
    saved = executor.run([f"iptables-{backend}-save"]).stdout
    assert saved_iptables_state(saved) == fake_iptables_state(fake)


@pytest.mark.lab
@requires_lab("iptables-legacy-restore", "iptables-nft-restore")
@pytest.mark.parametrize("backend", IPT_BACKENDS)
@pytest.mark.parametrize("case", ["clusterip", "nodeport", "loadbalancer-source-ranges", "affinity"])
def test_writer_payloads_the_fake_accepted_load_into_the_kernel(netns: str, case: str, backend: str) -> None:
    """Everything the fake applied for a writer (payloads, jump rules, canaries), in order, is
    applied by the real tool too, and leaves the same chains."""
    applied: list[str] = []
    original = FakeIptables._apply

    def recording(self: FakeIptables, payload: str, noflush: bool) -> None:
        original(self, payload, noflush)
        applied.append(payload)

    FakeIptables._apply = recording  # type: ignore[method-assign]
    try:
        fake = iptables_writer_flow(case)
    finally:
        FakeIptables._apply = original  # type: ignore[method-assign]
    executor = SubprocessExecutor(netns)
    for payload in applied:
        done = real_restore(executor, backend, payload)
        assert done.ok, done.stderr
    assert saved_iptables_state(executor.run([f"iptables-{backend}-save"]).stdout) == fake_iptables_state(fake)


def real_nft(executor: SubprocessExecutor, script: str) -> Result:
    return executor.run(["nft", "-f", "-"], stdin=script)


@pytest.mark.lab
@requires_lab("nft")
@pytest.mark.parametrize("sample", NFT_SAMPLES, ids=[s.id for s in NFT_SAMPLES])
def test_fake_nft_agrees_with_nft(netns: str, sample: Sample) -> None:
    executor = SubprocessExecutor(netns)
    for setup in sample.setup:
        done = real_nft(executor, setup)
        assert done.ok, done.stderr
    done = real_nft(executor, sample.payload)
    accepted, fake = fake_nft_outcome(sample)
    assert done.ok == accepted == sample.ok, (done.stderr, accepted)
    listed = executor.run(["nft", "-j", "list", "ruleset"]).stdout
    assert listed_nft_state(listed) == fake_nft_state(fake)


@pytest.mark.lab
@requires_lab("nft")
@pytest.mark.parametrize("case", ["clusterip", "nodeport", "loadbalancer-source-ranges", "affinity", "ipv6"])
def test_writer_transactions_the_fake_accepted_load_into_the_kernel(netns: str, case: str) -> None:
    fake = nft_writer_flow(case)
    executor = SubprocessExecutor(netns)
    for script in fake.scripts:
        done = real_nft(executor, script)
        assert done.ok, done.stderr
    assert listed_nft_state(executor.run(["nft", "-j", "list", "ruleset"]).stdout) == fake_nft_state(fake)


def test_sample_ids_are_unique() -> None:
    for samples in (IPT_SAMPLES, NFT_SAMPLES):
        ids = [s.id for s in samples]
        assert len(ids) == len(set(ids))
    assert {s.ok for s in IPT_SAMPLES} == {True, False} and {s.ok for s in NFT_SAMPLES} == {True, False}


def test_errors_are_proxyctl_errors() -> None:
    with pytest.raises(ProxyctlError):
        FakeIptables().restore("*filter\n")
    with pytest.raises(ProxyctlError):
        FakeNft().run("add chain ip t a\n")
