"""A full nftables sync over a populated table writes only the difference (`reconcile.py`),
against the stateful fake; and falls back to the full transaction when it cannot."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fakes import Clock, FakeNft, service, slice_

from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.modes.nftables.reconcile import duration_seconds, parse_listing, priority_value
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig, plan

CONFIG = ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",))


def objects(endpoints: dict[str, list[str]]) -> list[dict[str, Any]]:
    out = []
    for i, (name, ips) in enumerate(sorted(endpoints.items())):
        out += [service(name, f"10.96.0.{i + 1}"), slice_(name, ips)]
    return out


CLUSTER = {"a": ["10.244.1.1"], "b": ["10.244.1.2", "10.244.2.2"], "c": [], "d": ["10.244.1.4"]}


def engine(fake: FakeNft, cluster: dict[str, list[str]], **writer: Any) -> Proxier:
    """A new engine process over `fake` (nothing remembered from an earlier one)."""
    proxier = Proxier(CONFIG, StateTracker("node1"), NftablesWriter(fake, monotonic=Clock(), **writer))
    for obj in objects(cluster):
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier


def model(fake: FakeNft) -> dict[str, Any]:
    """What the kernel would list: chains (declaration, rules), sets and maps (declaration,
    elements with comments), the table's comment; no handles, no element order."""
    table = fake.tables[("ip", "kube-proxy")]
    return {
        "comment": table.comment,
        "chains": {n: (c.base, c.comment, [r.text for r in c.rules]) for n, c in table.chains.items()},
        "sets": {n: (s.kind, s.type, s.flags, s.comment, s.timeout, dict(s.elements), dict(s.comments))
                 for n, s in table.sets.items()},
    }


def fresh_model(cluster: dict[str, list[str]]) -> dict[str, Any]:
    fake = FakeNft()
    assert engine(fake, cluster).sync().full
    return model(fake)


def test_a_restart_over_an_unchanged_table_rewrites_only_the_fixed_part() -> None:
    fake = FakeNft()
    assert engine(fake, CLUSTER).sync().full
    before = model(fake)
    result = engine(fake, CLUSTER).sync()
    assert result is not None and result.full and not result.error
    script = fake.scripts[-1]
    assert "ns/" not in script  # no service chain, no element
    assert "add element" not in script and "delete element" not in script
    assert "flush map" not in script and "delete chain" not in script
    assert model(fake) == before


def test_a_restart_after_changes_and_tampering_gives_the_fresh_table() -> None:
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    table = fake.tables[("ip", "kube-proxy")]
    endpoint_chain = next(c for c in table.chains if c.startswith("endpoint-") and "10.244.1.1" in c)
    table.chains[endpoint_chain].rules = []  # someone flushed a chain
    svc = table.sets["service-ips"]
    svc.elements.pop(next(iter(svc.elements)))  # ... and deleted an element
    # While the engine was down: a's endpoint moved, b lost one, c got one, d went, e came.
    cluster = {"a": ["10.244.3.1"], "b": ["10.244.1.2"], "c": ["10.244.1.3"], "e": ["10.244.2.5"]}
    proxier = engine(fake, cluster)
    assert proxier.sync().full
    script = fake.scripts[-1]
    assert "flush map" not in script and "flush set ip kube-proxy cluster-ips" not in script
    got = model(fake)
    want = fresh_model(cluster)
    stale = {n for n in got["chains"] if n not in want["chains"]}
    assert stale and all(got["chains"][n][2] == [] for n in stale)  # flushed, deleted a second later
    assert {n: v for n, v in got["chains"].items() if n not in stale} == want["chains"]
    assert got["sets"] == want["sets"] and got["comment"] == want["comment"]
    assert "ns/b/" in script and "ns/d/" in script  # b rewritten, d's chains flushed
    # Later partial syncs work on the state the reconciliation left.
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("e", ["10.244.2.5", "10.244.2.6"]))
    partial = proxier.sync()
    assert partial is not None and not partial.full and not partial.error
    assert "10.244.2.6:8080" in fake.scripts[-1] and "ns/a/" not in fake.scripts[-1]


def test_an_unknown_layout_gets_the_full_transaction() -> None:
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    fake.tables[("ip", "kube-proxy")].comment = "rules for something else"
    assert engine(fake, CLUSTER).sync().full
    assert "flush map ip kube-proxy service-ips" in fake.scripts[-1]
    assert "delete chain ip kube-proxy nat-prerouting" in fake.scripts[-1]  # first of the process
    assert model(fake)["chains"] == fresh_model(CLUSTER)["chains"]


def test_a_base_chain_of_another_priority_gets_the_full_transaction() -> None:
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    fake.tables[("ip", "kube-proxy")].chains["filter-input"].base = ("filter", "input", -10)
    engine(fake, CLUSTER).sync()
    assert "flush map ip kube-proxy service-ips" in fake.scripts[-1]
    assert model(fake) == fresh_model(CLUSTER)


def test_a_failed_read_gets_the_full_transaction(monkeypatch: Any) -> None:
    fake = FakeNft()
    engine(fake, CLUSTER).sync()

    def broken(name: str = "kube-proxy") -> str:
        raise ProxyctlError("nft list table ip kube-proxy failed: Operation not permitted")

    monkeypatch.setattr(fake, "listing", broken)
    result = engine(fake, CLUSTER).sync()
    assert result is not None and result.full and not result.error
    assert "flush map ip kube-proxy service-ips" in fake.scripts[-1]


def test_an_unreadable_listing_gets_the_full_transaction(monkeypatch: Any) -> None:
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    monkeypatch.setattr(fake, "listing", lambda name="kube-proxy": "table ip kube-proxy {\n\tchain x {\n")
    engine(fake, CLUSTER).sync()
    assert "flush map ip kube-proxy service-ips" in fake.scripts[-1]


def test_no_table_gets_the_full_transaction() -> None:
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    assert "flush map ip kube-proxy service-ips" in fake.scripts[0]


def test_reconciliation_honours_the_writers_table(monkeypatch: Any) -> None:
    """Another mode's table (another name, only the entry points) is read and written by
    its own name."""
    fake = FakeNft()
    monkeypatch.setattr("fakes.NFT_TABLE", "entry-points")
    engine(fake, CLUSTER, table="entry-points", entry_points_only=True).sync()
    assert ("ip", "entry-points") in fake.tables and ("ip", "kube-proxy") not in fake.tables
    read: list[str] = []
    listing = fake.listing
    monkeypatch.setattr(fake, "listing", lambda name="kube-proxy": read.append(name) or listing(name))
    engine(fake, CLUSTER, table="entry-points", entry_points_only=True).sync()
    assert read == ["entry-points"]
    assert "flush map" not in fake.scripts[-1] and "kube-proxy" not in fake.scripts[-1].replace(
        '"rules for kube-proxy"', "")


def test_the_first_sync_lists_the_table_while_the_engine_plans(monkeypatch: Any) -> None:
    """The listing is the start's critical path: it begins before the plan is computed."""
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    started = threading.Event()
    listing = fake.listing
    monkeypatch.setattr(fake, "listing", lambda name="kube-proxy": started.set() or listing(name))
    listed_before_planning: list[bool] = []

    def planning(*args: Any, **kwargs: Any) -> Any:
        listed_before_planning.append(started.wait(5.0))
        return plan(*args, **kwargs)

    monkeypatch.setattr("kubectl_proxyctl.engine.proxier.plan", planning)
    result = engine(fake, CLUSTER).sync()
    assert result is not None and result.full and not result.error
    assert listed_before_planning == [True]
    assert "ns/" not in fake.scripts[-1]


def test_a_listing_serves_only_the_sync_it_was_started_for(monkeypatch: Any) -> None:
    """A sync that failed before reading its listing leaves it unread; the next one lists again
    (what changed in between is seen)."""
    fake = FakeNft()
    engine(fake, CLUSTER).sync()
    texts: list[str | None] = []
    listing = fake.listing
    monkeypatch.setattr(fake, "listing", lambda name="kube-proxy": texts.append(listing(name)) or texts[-1])

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ProxyctlError("cannot plan")

    proxier = engine(fake, CLUSTER)
    monkeypatch.setattr("kubectl_proxyctl.engine.proxier.plan", failing)
    failed = proxier.sync()
    assert failed is not None and failed.error
    deadline = time.monotonic() + 5.0
    while not texts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(texts) == 1
    table = fake.tables[("ip", "kube-proxy")]
    table.chains[next(c for c in table.chains if c.startswith("endpoint-"))].rules = []
    monkeypatch.setattr("kubectl_proxyctl.engine.proxier.plan", plan)
    result = proxier.sync()
    assert result is not None and result.full and not result.error
    assert len(texts) == 2 and model(fake) == fresh_model(CLUSTER)


@pytest.mark.parametrize("text, value", [("dstnat - 10", -110), ("-110", -110), ("filter", 0), ("srcnat", 100),
                                         ("dstnat", -100), ("mangle + 5", -145), ("bogus", None)])
def test_priorities_as_nft_prints_them(text: str, value: int | None) -> None:
    assert priority_value(text) == value


@pytest.mark.parametrize("text, value", [("10m", 600), ("3h", 10800), ("1d2h", 93600), ("10800s", 10800),
                                         ("", None), ("3x", None)])
def test_timeouts_as_nft_prints_them(text: str, value: float | None) -> None:
    assert duration_seconds(text) == value


def test_the_listing_parser_reads_what_nft_prints() -> None:
    listed = parse_listing(
        'table ip kube-proxy {\n\tcomment "rules for kube-proxy"\n\tmap no-endpoint-services {\n'
        "\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
        '\t\tcomment "vmap to drop or reject packets to services with no endpoints"\n'
        '\t\telements = { 10.96.80.1 . tcp . 80 comment "demo/gone:http" : goto reject-chain,\n'
        '\t\t\t     10.96.80.2 . tcp . 80 comment "demo/a, b" : drop }\n\t}\n\n'
        "\tchain filter-prerouting-pre-dnat {\n\t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n"
        "\t\tct state new jump firewall-check\n\t}\n}\n")
    assert listed.comment == "rules for kube-proxy"
    assert listed.sets["no-endpoint-services"].elements == [
        '10.96.80.1 . tcp . 80 comment "demo/gone:http" : goto reject-chain',
        '10.96.80.2 . tcp . 80 comment "demo/a, b" : drop']
    chain = listed.chains["filter-prerouting-pre-dnat"]
    assert chain.header == ["type filter hook prerouting priority dstnat - 10; policy accept;"]
    assert chain.rules == ["ct state new jump firewall-check"]


def test_comparable_listing_ignores_block_and_element_order() -> None:
    from kubectl_proxyctl.modes.nftables.reconcile import comparable_listing

    one = ("table ip kube-proxy {\n\tset b {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.2, 10.0.0.1 }\n\t}\n"
           "\tchain a {\n\t\tjump b\n\t}\n}\n")
    two = ("table ip kube-proxy {\n\tchain a {\n\t\tjump b\n\t}\n\tset b {\n\t\ttype ipv4_addr\n"
           "\t\telements = { 10.0.0.1, 10.0.0.2 }\n\t}\n}\n")
    assert comparable_listing(one) == comparable_listing(two)
    assert comparable_listing(one) != comparable_listing(two.replace("jump b", "goto b"))
