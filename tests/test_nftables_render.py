"""The nftables renderer: names, element diffs, stale chains and affinity sets, and (lab)
partial transactions that leave the kernel exactly as a full one would.

The kernel test loads the full transaction of state A into one namespace, applies the
partial transaction A → B to it, loads the full transaction of B into a fresh namespace, and
compares both tables as `nft -j list table` shows them: chains with their rules, sets and
maps with their elements must be equal, except the stale chains (flushed, empty) the partial
one keeps until `stale_deletion` removes them; after that, the chains are equal too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from base64 import b32encode
from pathlib import Path
from typing import Any, Iterator

import pytest

from flowhelpers import NODE, Obj, default_config, endpoint, endpoint_slice, node, service, state_of
from kubectl_proxyctl.modes.nftables.render import (
    NAME_LENGTH_MAX,
    STALE_CHAIN_DELAY,
    NftState,
    RenderedNft,
    affinity_set,
    endpoint_base,
    endpoint_chain,
    forget_chains,
    hash_and_truncate,
    is_affinity_set,
    is_service_chain,
    render,
    service_base,
    service_chains,
    stale_deletion,
)
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.model import IPFamily, Protocol, ServicePortName
from kubectl_proxyctl.errors import ApplyError
from nfthelpers import NFT_SKIP, Scratch, diff_views, older_layout, scratch_netns, statements, view

T = "ip kube-proxy"
SPN1 = ServicePortName("ns1", "svc1", "p80", Protocol.TCP)


# --- names ------------------------------------------------------------------------------------


def _kube_proxy_hash(name: str) -> str:
    """hashAndTruncate as kube-proxy writes it: base32 of the whole SHA-256, first 8 chars."""
    return b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8] + "-" + name


@pytest.mark.parametrize("spn,ip,port,base,ep", [
    # From kube-proxy's TestOverallNFTablesRules.
    (SPN1, "10.180.0.1", 80, "ULMVA6XW-ns1/svc1/tcp/p80", "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"),
    (ServicePortName("ns2", "svc2", "p80"), "10.180.0.2", 80, "42NFTM6N-ns2/svc2/tcp/p80",
     "SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"),
    (ServicePortName("ns4", "svc4", "p80"), "10.180.0.5", 80, "LAUZTJTB-ns4/svc4/tcp/p80",
     "5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"),
    (ServicePortName("ns5", "svc5", "p80"), "10.180.0.3", 80, "HVFWP5L3-ns5/svc5/tcp/p80",
     "GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"),
])
def test_names_are_kube_proxys(spn: ServicePortName, ip: str, port: int, base: str, ep: str) -> None:
    assert service_base(spn) == base
    assert endpoint_base(spn, ip, port) == ep
    chains = service_chains(spn)
    assert (chains.service, chains.local, chains.external, chains.firewall) == (
        f"service-{base}", f"local-{base}", f"external-{base}", f"firewall-{base}")
    assert endpoint_chain(spn, ip, port) == f"endpoint-{ep}"
    assert affinity_set(spn, ip, port) == f"affinity-{ep}"
    assert all(is_service_chain(c) for c in (chains.service, chains.firewall, endpoint_chain(spn, ip, port)))
    assert is_affinity_set(affinity_set(spn, ip, port)) and not is_affinity_set(chains.service)


def test_names_of_other_protocols_and_unnamed_ports() -> None:
    assert service_base(ServicePortName("ns", "dns", "", Protocol.UDP)) == _kube_proxy_hash("ns/dns/udp/")
    assert service_base(ServicePortName("ns", "s", "x", Protocol.SCTP)) == _kube_proxy_hash("ns/s/sctp/x")


def test_ipv6_endpoint_names_use_dots() -> None:
    name = endpoint_chain(SPN1, "fd00:10:180::1", 8080)
    assert name == "endpoint-" + _kube_proxy_hash("ns1/svc1/tcp/p80__fd00.10.180..1/8080")
    assert ":" not in name and name.endswith("__fd00.10.180..1/8080")


def test_long_names_are_truncated() -> None:
    spn = ServicePortName("n" * 63, "s" * 63, "p" * 15, Protocol.TCP)
    long_ip = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
    base = endpoint_base(spn, long_ip, 65535)
    assert len(base) <= 240
    huge = hash_and_truncate("x" * 300)
    assert len(huge) == 240 and huge.endswith("...") and huge.startswith(_kube_proxy_hash("x" * 300)[:9])
    assert len("endpoint-" + huge) < NAME_LENGTH_MAX


def test_long_element_comments_are_cut_to_what_nft_accepts() -> None:
    ns, name = "n" * 63, "s" * 63  # valid names; with the port name the comment has 141 characters
    objs = [service(ns, name, "172.30.0.1", [{"name": "p" * 13, "port": 80, "nodePort": 30001}], type="NodePort")]
    text = render(plan(state_of(objs), default_config())).text
    comment = f"{ns}/{name}:"
    assert len(comment) == 128
    assert f'172.30.0.1 . tcp . 80 comment "{comment}" : goto reject-chain' in text
    assert f'tcp . 30001 comment "{comment}" : goto reject-chain' in text


def test_affinity_timeouts_beyond_the_api_maximum_are_capped() -> None:
    objs = [service("ns", "s", "172.30.0.1", [{"name": "http", "port": 80}], affinity=2**40),
            endpoint_slice("ns", "s", [endpoint("10.0.0.1")], [("http", 80)])]
    rendered = render(plan(state_of(objs), default_config()))
    assert "timeout 86400s ;" in rendered.text
    assert rendered.state.services[ServicePortName("ns", "s", "http")].affinity_sets[0][1] == 86400


# --- scenario: state A and state B --------------------------------------------------------------


def addr(v6: bool, kind: str, n: int, m: int = 0) -> str:
    """Addresses of the scenario in either family."""
    if kind == "svc":
        return f"fd00:172:30::{n}" if v6 else f"172.30.0.{n}"
    if kind == "pod":
        return f"fd00:10:1:{n}::{m}" if v6 else f"10.1.{n}.{m}"
    if kind == "ext":
        return f"2001:db8:99::{n}" if v6 else f"192.168.99.{n}"
    if kind == "lb":
        return f"2001:db8:1::{n}" if v6 else f"1.1.1.{n}"
    raise ValueError(kind)


def config(v6: bool = False) -> ProxyConfig:
    if v6:
        return ProxyConfig(node_name=NODE, family=IPFamily.IPv6, cluster_cidrs=("fd00:10::/32",),
                           node_ips=("2001:db8::1",))
    return default_config()


def objects(v6: bool, variant: str) -> list[Obj]:
    """State A or B: between them, endpoints are added and removed, services deleted and
    added, ETP and ITP flip, affinity goes on, off and changes its timeout, source ranges are
    added, a service loses all endpoints, and an external IP moves from one service to
    another."""
    b = variant == "B"
    fam = "IPv6" if v6 else "IPv4"
    out: list[Obj] = [node()]

    def svc(name: str, n: int, **kw: Any) -> None:
        ports = kw.pop("ports", [{"name": "http", "port": 80, **({"nodePort": kw.pop("node_port")} if "node_port" in kw else {})}])
        ip = addr(v6, "svc", n)
        out.append(service("ns", name, ip, ports, cluster_ips=[ip], **kw))

    def eps(name: str, n: int, hosts: list[int], nodes: dict[int, str] | None = None,
            ports: list[tuple[str, int]] | None = None) -> None:
        out.append(endpoint_slice("ns", name, [endpoint(addr(v6, "pod", n, h), (nodes or {}).get(h)) for h in hosts],
                                  ports or [("http", 8080)], family=fam))

    svc("keep", 1)
    eps("keep", 1, [1])
    svc("shrink", 2)
    eps("shrink", 2, [1] if b else [1, 2])
    svc("grow", 3)
    eps("grow", 3, [1, 2] if b else [1])
    if not b:
        svc("gone", 4, type="LoadBalancer", node_port=30004, external_ips=[addr(v6, "ext", 4)],
            lb_ips=[addr(v6, "lb", 4)], affinity=100)
        eps("gone", 4, [1, 2])
    else:
        svc("new", 5, type="NodePort", node_port=30005)
        eps("new", 5, [1])
    svc("flip", 6, type="LoadBalancer", node_port=30006, lb_ips=[addr(v6, "lb", 6)],
        etp="Local" if b else "Cluster", hc_port=31006 if b else None)
    eps("flip", 6, [1, 2], {1: NODE, 2: "other"})
    svc("sticky", 7, **({} if b else {"affinity": 300}))
    eps("sticky", 7, [1, 2])
    svc("nowsticky", 8, **({"affinity": 600} if b else {}))
    eps("nowsticky", 8, [1, 2])
    svc("fw", 9, type="LoadBalancer", node_port=30009, lb_ips=[addr(v6, "lb", 9)],
        source_ranges=(["2001:db8:113::/64"] if v6 else ["203.0.113.0/25"]) if b else [])
    eps("fw", 9, [1])
    svc("drain", 10)
    if not b:
        eps("drain", 10, [1])
    svc("mover1", 11, **({} if b else {"external_ips": [addr(v6, "ext", 50)]}))
    eps("mover1", 11, [1])
    svc("mover2", 12, **({"external_ips": [addr(v6, "ext", 50)]} if b else {}))
    eps("mover2", 12, [1])
    svc("timeout", 13, affinity=200 if b else 100)
    eps("timeout", 13, [1])
    svc("itp", 14, itp="Local" if b else None)
    eps("itp", 14, [1, 2], {1: NODE, 2: "other"})
    ports = [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    svc("ports", 15, ports=ports[:1] if b else ports)
    eps("ports", 15, [1], ports=[("http", 8080), ("dns", 53, "UDP")] if not b else [("http", 8080)])  # type: ignore[list-item]
    return out


CHANGED = {f"ns/{n}" for n in ("shrink", "grow", "gone", "new", "flip", "sticky", "nowsticky", "fw", "drain",
                               "mover1", "mover2", "timeout", "itp", "ports")}


def plans(v6: bool = False) -> tuple[NodePlan, NodePlan]:
    cfg = config(v6)
    return plan(state_of(objects(v6, "A")), cfg), plan(state_of(objects(v6, "B")), cfg)


def spn(name: str, port: str = "http", protocol: Protocol = Protocol.TCP) -> ServicePortName:
    return ServicePortName("ns", name, port, protocol)


def elements_of(state: NftState) -> dict[str, dict[str, tuple[str, str]]]:
    return {c: {k: (v, cm) for k, (v, cm, _) in items.items()} for c, items in state.elements.items()}


def test_scenario_is_complete() -> None:
    a, b = plans()
    changed_services = {sp.name.service for sp in a.services} ^ {sp.name.service for sp in b.services}
    changed_services |= {sp.name.service for sp in b.services if a.service(sp.name) != sp}
    changed_services |= {sp.name.service for sp in a.services if b.service(sp.name) is None}
    assert changed_services == CHANGED


# --- partial transactions -----------------------------------------------------------------------


def test_partial_equals_full_in_the_state() -> None:
    a, b = plans()
    full_a = render(a)
    partial = render(b, previous=full_a.state, changed=CHANGED, now=5.0)
    full_b = render(b)
    assert partial.partial and not full_b.partial
    assert elements_of(partial.state) == elements_of(full_b.state)
    assert partial.state.services == full_b.state.services
    assert partial.state.affinity_sets == full_b.state.affinity_sets
    assert partial.state.active_chains == full_b.state.active_chains
    assert set(partial.state.stale) == full_a.state.chains - full_b.state.chains
    assert partial.state.chains == full_b.state.chains | set(partial.state.stale)
    # Only the changed services' chains are written.
    assert all("/keep/" not in c for c in partial.chains_written)
    assert "/keep/" not in partial.text
    # The previous state is left alone (render is pure).
    assert full_a.state.services == render(a).state.services and not full_a.state.stale


def test_element_diffs() -> None:
    a, b = plans()
    prev = render(a).state
    drain = render(b, previous=prev, changed={"ns/drain"})
    ip = addr(False, "svc", 10)
    lines = drain.text.splitlines()
    assert f"delete element {T} service-ips {{ {ip} . tcp . 80 }}" in lines
    assert f'add element {T} no-endpoint-services {{ {ip} . tcp . 80 comment "ns/drain:http" : goto reject-chain }}' in lines
    assert not any("cluster-ips" in ln for ln in lines)  # same key, same value: untouched
    assert drain.elements_written == 2
    # A value that changes is replaced: delete, then add.
    itp = render(b, previous=prev, changed={"ns/itp"})
    key = f"{addr(False, 'svc', 14)} . tcp . 80"
    assert f"delete element {T} service-ips {{ {key} }}" in itp.text.splitlines()
    assert f"add element {T} service-ips {{ {key} : goto {service_chains(spn('itp')).local} }}" in itp.text.splitlines()
    lines = itp.text.splitlines()
    assert lines.index(f"delete element {T} service-ips {{ {key} }}") < lines.index(
        f"add element {T} service-ips {{ {key} : goto {service_chains(spn('itp')).local} }}")
    # Nothing changed: an empty transaction.
    none = render(a, previous=prev, changed=set())
    assert none.text == "" and none.partial and none.elements_written == 0 and none.rules_written == 0
    same = render(a, previous=prev, changed={"ns/keep"})
    assert same.elements_written == 0 and same.rules_written > 0  # chains rewritten, no element touched


def test_changed_as_service_port_names() -> None:
    a, b = plans()
    prev = render(a).state
    by_port = render(b, previous=prev, changed={spn("shrink")})
    by_service = render(b, previous=prev, changed={"ns/shrink"})
    assert by_port.text == by_service.text


def test_stale_chains_are_flushed_then_deleted_after_the_delay() -> None:
    a, b = plans()
    prev = render(a).state
    gone = endpoint_chain(spn("shrink"), "10.1.2.2", 8080)
    rendered = render(b, previous=prev, changed={"ns/shrink"}, now=100.0)
    assert rendered.stale_flushed == (gone,)
    assert f"flush chain {T} {gone}" in rendered.text.splitlines()
    assert f"add chain {T} {gone}" not in rendered.text and f"delete chain {T} {gone}" not in rendered.text
    state = rendered.state
    assert state.stale == {gone: 100.0} and gone in state.chains
    assert stale_deletion(state, 100.0 + STALE_CHAIN_DELAY / 2) == ("", ())
    text, due = stale_deletion(state, 100.0 + STALE_CHAIN_DELAY)
    assert text == f"delete chain {T} {gone}\n" and due == (gone,)
    forget_chains(state, due)
    assert not state.stale and gone not in state.chains
    # A stale chain used again before its deletion is no longer stale.
    stale_state = render(b, previous=prev, changed={"ns/shrink"}, now=100.0).state
    assert gone in stale_state.stale and gone not in stale_state.active_chains
    again = render(a, previous=stale_state, changed={"ns/shrink"}, now=100.5)
    assert gone in again.chains_written and not again.state.stale and not again.stale_flushed
    assert f"add chain {T} {gone}" in again.text.splitlines()


def test_a_deleted_service_leaves_stale_chains_and_deletes_its_affinity_sets() -> None:
    a, b = plans()
    prev = render(a).state
    rendered = render(b, previous=prev, changed={"ns/gone"}, now=7.0)
    names = service_chains(spn("gone"))
    assert {names.service, names.external} <= set(rendered.stale_flushed)
    sets = {affinity_set(spn("gone"), addr(False, "pod", 4, h), 8080) for h in (1, 2)}
    assert set(rendered.affinity_deleted) == sets
    lines = rendered.text.splitlines()
    assert lines[-2:] == [f"delete set {T} {s}" for s in sorted(sets)]  # after the chains that used them
    assert not sets & rendered.state.affinity_sets
    assert all(k.split(" . ")[0] != addr(False, "ext", 4) for k in rendered.state.elements["service-ips"])


def test_affinity_on_off_and_timeout() -> None:
    a, b = plans()
    prev = render(a).state
    off = render(b, previous=prev, changed={"ns/sticky"})
    assert set(off.affinity_deleted) == {affinity_set(spn("sticky"), f"10.1.7.{h}", 8080) for h in (1, 2)}
    on = render(b, previous=prev, changed={"ns/nowsticky"})
    wanted = {affinity_set(spn("nowsticky"), f"10.1.8.{h}", 8080) for h in (1, 2)}
    assert wanted <= on.state.affinity_sets
    for s in wanted:
        assert f"add set {T} {s} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }}" in on.text.splitlines()
    # A new timeout is written even though the set exists (the kernel updates it).
    timeout = render(b, previous=prev, changed={"ns/timeout"})
    s = affinity_set(spn("timeout"), "10.1.13.1", 8080)
    assert f"add set {T} {s} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 200s ; }}" in timeout.text.splitlines()
    assert not timeout.affinity_deleted


@pytest.mark.parametrize("order", ["A to B", "B to A"])
def test_a_key_moving_between_two_changed_services_is_not_lost(order: str) -> None:
    a, b = plans()
    src, dst = (a, b) if order == "A to B" else (b, a)
    owner = "mover2" if order == "A to B" else "mover1"
    prev = render(src).state
    key = f"{addr(False, 'ext', 50)} . tcp . 80"
    for changed in ({"ns/mover1", "ns/mover2"}, {"ns/mover2", "ns/mover1"}, {spn("mover2"), spn("mover1")}):
        rendered = render(dst, previous=prev, changed=changed)
        held = rendered.state.elements["service-ips"][key]
        assert held == (f"goto {service_chains(spn(owner)).external}", "", spn(owner))
        lines = rendered.text.splitlines()
        assert f"add element {T} service-ips {{ {key} : goto {service_chains(spn(owner)).external} }}" in lines
        assert {k: v for k, v in rendered.state.elements["service-ips"].items() if "mover" in v[0]} == {
            k: v for k, v in render(dst).state.elements["service-ips"].items() if "mover" in v[0]}


def _mover_plans() -> tuple[NodePlan, NodePlan, NodePlan]:
    """State A, then mover2 claims mover1's external IP and port too, then mover1 gives it up
    (moving an external IP without downtime). Nothing else changes."""
    a = objects(False, "A")
    b = {o["metadata"]["name"]: o for o in objects(False, "B") if o["kind"] == "Service"}
    shared = [b["mover2"] if o["kind"] == "Service" and o["metadata"]["name"] == "mover2" else o for o in a]
    moved = [b["mover1"] if o["kind"] == "Service" and o["metadata"]["name"] == "mover1" else o for o in shared]
    return tuple(plan(state_of(objs), config()) for objs in (a, shared, moved))  # type: ignore[return-value]


def test_two_changed_services_claiming_one_key() -> None:
    a, shared, moved = _mover_plans()
    key = f"{addr(False, 'ext', 50)} . tcp . 80"
    for start, target in ((a, shared), (moved, shared), (a, moved), (moved, a)):
        rendered = render(target, previous=render(start).state, changed={"ns/mover2", "ns/mover1"})
        assert elements_of(rendered.state) == elements_of(render(target).state)
        assert key in rendered.state.elements["service-ips"]


def test_a_key_an_unchanged_service_still_claims_is_handed_over() -> None:
    a, shared, moved = _mover_plans()
    key = f"{addr(False, 'ext', 50)} . tcp . 80"
    state = render(a).state
    for target, changed in ((shared, {"ns/mover2"}), (moved, {"ns/mover1"})):
        rendered = render(target, previous=state, changed=changed)
        assert elements_of(rendered.state) == elements_of(render(target).state)
        state = rendered.state
    assert state.elements["service-ips"][key][2] == spn("mover2")


def test_partial_transactions_are_deterministic() -> None:
    """The same inputs give the same text in every process (string hashing differs)."""
    script = ("import hashlib, sys; sys.path.insert(0, 'tests'); "
              "from test_nftables_render import CHANGED, plans, render; a, b = plans(); "
              "print(hashlib.sha256(render(b, previous=render(a).state, changed=CHANGED).text.encode()).hexdigest())")
    root = Path(__file__).parent.parent
    digests = {subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1, digests


def test_full_transaction_flushes_existing_stale_chains_and_deletes_unused_affinity_sets() -> None:
    a, _ = plans()
    leftover = endpoint_chain(spn("old"), "10.9.9.9", 80)
    rendered = render(a, existing_chains={leftover, "services", "some-other-chain"},
                      existing_affinity_sets={"affinity-OLD-ns/old/tcp/http__10.9.9.9/80"}, now=3.0)
    lines = rendered.text.splitlines()
    assert f"flush chain {T} {leftover}" in lines and rendered.stale_flushed == (leftover,)
    assert rendered.state.stale == {leftover: 3.0}
    assert "some-other-chain" not in rendered.text  # only service chains (with a `/`) are ours to clean
    assert lines[-1] == f"delete set {T} affinity-OLD-ns/old/tcp/http__10.9.9.9/80"
    # The stamp of a chain already stale is kept by a full transaction after a partial one.
    b = plans()[1]
    partial = render(b, previous=rendered.state, changed=CHANGED, now=4.0)
    assert partial.state.stale[leftover] == 3.0


def test_a_changed_fixed_part_means_a_full_transaction() -> None:
    a, _ = plans()
    prev = render(a).state
    moved = plan(state_of(objects(False, "A")), default_config(nodeport_addresses=("192.168.0.0/24",)))
    rendered = render(moved, previous=prev, changed=set())
    assert not rendered.partial and rendered.text.startswith(f"add table {T}")
    assert f"add element {T} nodeport-ips {{ 192.168.0.2 }}" in rendered.text
    with_cidrs = render(a, previous=prev, changed=set(), service_cidrs=("172.30.0.0/16",))
    assert not with_cidrs.partial and "Drop traffic to unallocated ClusterIPs" in with_cidrs.text


# kube-proxy's base chains (1.34+): the pre-DNAT firewall chains, the filter chains after DNAT.
BASE = ("filter-prerouting-pre-dnat", "filter-output-pre-dnat", "filter-input", "filter-forward", "filter-output",
        "nat-prerouting", "nat-output", "nat-postrouting")
# Base chains of the layout before 1.34 that the current one does not have.
LEGACY_BASE = ("filter-prerouting", "filter-output-post-dnat")


def test_first_transaction_recreates_the_base_chains() -> None:
    a, _ = plans()
    first = render(a, first=True).text.splitlines()
    later = render(a).text.splitlines()
    for name in BASE + LEGACY_BASE:
        i = first.index(f"add chain {T} {name}")
        assert first[i + 1] == f"delete chain {T} {name}"
        assert f"delete chain {T} {name}" not in later
        if name in BASE:  # re-created (with its hook) after it was deleted
            assert any(ln.startswith(f"add chain {T} {name} {{ type ") for ln in first[i + 2:]), name
    # The older layout's own chains are only deleted: no hook or rule of theirs is written.
    for name in LEGACY_BASE:
        assert [ln for ln in first if ln.split()[4:5] == [name]] == [f"add chain {T} {name}", f"delete chain {T} {name}"]
        assert not [ln for ln in later if ln.split()[4:5] == [name]]
    dropped = [ln for ln in first if ln not in later]
    assert len(dropped) == 2 * (len(BASE) + len(LEGACY_BASE))
    assert all(ln.startswith(("add chain", "delete chain")) for ln in dropped)
    assert [ln for ln in first if ln not in dropped] == later
    hooked = {ln.split()[4]: ln.split(" { ", 1)[1] for ln in later if ln.startswith("add chain") and " hook " in ln}
    assert hooked == {
        "filter-prerouting-pre-dnat": "type filter hook prerouting priority -110 ; }",
        "filter-output-pre-dnat": "type filter hook output priority -110 ; }",
        "filter-input": "type filter hook input priority 0 ; }",
        "filter-forward": "type filter hook forward priority 0 ; }",
        "filter-output": "type filter hook output priority 0 ; }",
        "nat-prerouting": "type nat hook prerouting priority -100 ; }",
        "nat-output": "type nat hook output priority -100 ; }",
        "nat-postrouting": "type nat hook postrouting priority 100 ; }",
    }


def test_rendered_counts() -> None:
    a, _ = plans()
    r: RenderedNft = render(a)
    lines = r.text.splitlines()
    service_rules = [ln for ln in lines if ln.startswith("add rule") and "/" in ln.split()[4]]
    assert r.rules_written == len(service_rules) == r.state.rule_count
    assert r.elements_written == r.state.element_count == sum(
        1 for ln in statements(r.text) if ln.startswith("add element") and "nodeport-ips" not in ln)
    assert set(r.chains_written) == r.state.chains == r.state.active_chains


# --- the real kernel ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("partial")


@pytest.fixture(scope="module")
def scratch2() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("fresh")


def _assert_same_table(got: Scratch, want: Scratch, family: IPFamily, stale: set[str]) -> None:
    have, fresh = view(got.table(family)), view(want.table(family))
    for chain in stale:
        assert have.chains.get(chain, (None, None, None, ()))[3] == (), f"stale chain {chain} is not empty"
    problems = diff_views(have.without(stale), fresh)
    assert not problems, "\n".join(problems)


@pytest.mark.lab
@pytest.mark.parametrize("family", list(IPFamily))
def test_partial_transaction_leaves_the_kernel_as_a_full_one(scratch: Scratch, scratch2: Scratch,
                                                             family: IPFamily) -> None:
    v6 = family == IPFamily.IPv6
    a, b = plans(v6)
    now = 1000.0
    for src, dst in ((a, b), (b, a)):
        scratch.reset()
        full_src = render(src, first=True)
        scratch.load(full_src.text, family)
        partial = render(dst, previous=full_src.state, changed=CHANGED, now=now)
        assert partial.partial and partial.stale_flushed
        scratch.load(partial.text, family)
        scratch2.reset()
        scratch2.load(render(dst).text, family)
        stale = set(partial.state.stale)
        assert stale == set(partial.stale_flushed)
        _assert_same_table(scratch, scratch2, family, stale)
        # After the delay the stale chains are deleted: then the chains are equal too.
        text, due = stale_deletion(partial.state, now + STALE_CHAIN_DELAY)
        assert set(due) == stale
        scratch.load(text, family)
        forget_chains(partial.state, due)
        _assert_same_table(scratch, scratch2, family, set())
        # And the next partial transaction (nothing changed) is empty and fine.
        assert render(dst, previous=partial.state, changed=set()).text == ""
        # A full transaction over the result (as after a restart) changes nothing either.
        again = render(dst, existing_chains=scratch.table(family).chains.keys(),
                       existing_affinity_sets={s for s in scratch.table(family).sets if is_affinity_set(s)})
        assert not again.stale_flushed and not again.affinity_deleted
        scratch.load(again.text, family)
        _assert_same_table(scratch, scratch2, family, set())


def _service_of(obj: Obj) -> str:
    meta = obj["metadata"]
    if obj["kind"] == "EndpointSlice":
        return f"{meta['namespace']}/{meta['labels']['kubernetes.io/service-name']}"
    return f"{meta.get('namespace', '')}/{meta['name']}"


def mixed(start: str, target: str, services: set[str]) -> list[Obj]:
    """The objects of state `start`, with those of `services` as in state `target`."""
    return [o for o in objects(False, start) if _service_of(o) not in services] + [
        o for o in objects(False, target) if o["kind"] != "Node" and _service_of(o) in services]


@pytest.mark.lab
def test_a_chain_of_partial_transactions(scratch: Scratch, scratch2: Scratch) -> None:
    """A → B → A, one Service per sync (the two that swap an external IP in one sync), with
    stale chains deleted when due, compared with a full transaction after every sync."""
    scratch.reset()
    full = render(plan(state_of(objects(False, "A")), config()))
    scratch.load(full.text)
    state = full.state
    now = 0.0
    steps = [{n} for n in sorted(CHANGED - {"ns/mover1", "ns/mover2"})] + [{"ns/mover1", "ns/mover2"}]
    for start, target in (("A", "B"), ("B", "A")):
        done: set[str] = set()
        for step in steps:
            done |= step
            now += 0.4
            text, due = stale_deletion(state, now)
            if text:
                scratch.load(text)
                forget_chains(state, due)
            node_plan = plan(state_of(mixed(start, target, done)), config())
            rendered = render(node_plan, previous=state, changed=step, now=now)
            scratch.load(rendered.text)
            state = rendered.state
            scratch2.reset()
            scratch2.load(render(node_plan).text)
            _assert_same_table(scratch, scratch2, IPFamily.IPv4, set(state.stale))


@pytest.mark.lab
@pytest.mark.parametrize("first,then", [((), ("192.168.0.0/24",)), (("192.168.0.0/24",), ()), (("primary",), ())])
def test_changing_the_node_port_addresses(scratch: Scratch, scratch2: Scratch, first: tuple[str, ...],
                                          then: tuple[str, ...]) -> None:
    """The fixed part changes (the nodeport-ips set appears or is deleted while rules used it):
    the full transaction over the old table equals one in a fresh table."""
    objs = objects(False, "A")
    before = render(plan(state_of(objs), default_config(nodeport_addresses=first)))
    scratch.reset()
    scratch.load(before.text)
    after_plan = plan(state_of(objs), default_config(nodeport_addresses=then))
    after = render(after_plan, previous=before.state, changed=set())
    assert not after.partial
    scratch.load(after.text)
    scratch2.reset()
    scratch2.load(render(after_plan).text)
    _assert_same_table(scratch, scratch2, IPFamily.IPv4, set())
    assert ("nodeport-ips" in scratch.table().sets) == bool(then)


@pytest.mark.lab
@pytest.mark.parametrize("family", list(IPFamily))
def test_first_transaction_replaces_the_older_layout(scratch: Scratch, scratch2: Scratch, family: IPFamily) -> None:
    """A node whose table has the base chains of the layout before 1.34 (kube-proxy's, or an
    earlier version of ours): the kernel does not move an existing base chain to another
    priority, so only a first transaction (which deletes every base chain, the older layout's
    own ones included, before adding them) can take it over; after it, the table is the one a
    fresh node gets, with no hook of the older layout left."""
    a, _ = plans(family == IPFamily.IPv6)

    def hooks(s: Scratch) -> dict[str, tuple[Any, ...]]:
        return {name: c[:3] for name, c in view(s.table(family)).chains.items() if c[1]}

    scratch.reset()
    scratch.load(older_layout(render(a).text), family)
    assert hooks(scratch) == {
        "filter-prerouting": ("filter", "prerouting", -110), "filter-input": ("filter", "input", -110),
        "filter-forward": ("filter", "forward", -110), "filter-output": ("filter", "output", -110),
        "filter-output-post-dnat": ("filter", "output", -90), "nat-prerouting": ("nat", "prerouting", -100),
        "nat-output": ("nat", "output", -100), "nat-postrouting": ("nat", "postrouting", 100)}
    with pytest.raises(ApplyError):
        scratch.load(render(a).text, family)  # atomic: nothing changed
    assert "filter-output-post-dnat" in hooks(scratch)
    scratch.load(render(a, first=True).text, family)
    scratch2.reset()
    scratch2.load(render(a).text, family)
    _assert_same_table(scratch, scratch2, family, set())
    assert set(hooks(scratch)) == set(BASE)
