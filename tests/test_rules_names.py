"""Hashed chain names back to services: comments, the jump graph, recomputed hashes."""

from __future__ import annotations

import re
from pathlib import Path

from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.inspect.graph import load_texts
from kubectl_proxyctl.modes.iptables.parse import parse
from kubectl_proxyctl.modes.ipvs.parse import parse_ipvsadm
from kubectl_proxyctl.modes.iptables.names import parse_comment, resolve_iptables
from kubectl_proxyctl.modes.ipvs.names import ipvs_owner
from kubectl_proxyctl.modes.nftables.names import nft_chain_owner, resolve_nft
from kubectl_proxyctl.modes.owners import ServiceSelector

DATA = Path(__file__).parent / "data" / "rules"
GOLDEN = Path(__file__).parent / "golden"
SIX_OBJECTS = GOLDEN / "upstream-six-services" / "objects.yaml"
SAVE = (DATA / "six-services.nft-save.txt").read_text()


def six_state() -> ClusterState:
    return state_from_objects(load_objects(str(SIX_OBJECTS)), warn=lambda _m: None)


def test_comment_kinds() -> None:
    assert parse_comment("ns1/svc1:p80 cluster IP") == ("ns1/svc1:p80", "cluster-ip", "")
    assert parse_comment("ns1/svc1:p80 -> 10.180.0.1:80") == ("ns1/svc1:p80", "endpoint", "10.180.0.1:80")
    assert parse_comment("default/kubernetes") == ("default/kubernetes", "service", "")
    assert parse_comment("masquerade LOCAL traffic for ns2/svc2:p80 external destinations") == \
        ("ns2/svc2:p80", "external-local-masquerade", "")
    assert parse_comment("kubernetes service portals") is None


def test_every_service_chain_of_a_real_dump_is_named_and_checked() -> None:
    names = resolve_iptables(parse(SAVE, lazy=True))
    nat_service_chains = re.findall(r"^:(KUBE-(?:SVC|SVL|EXT|FW|SEP)-\S+)", SAVE, re.M)
    assert len(nat_service_chains) == 16
    assert set(names.owners) == set(nat_service_chains) and not names.unowned
    assert all(o.verified for o in names.owners.values())
    sep = names.owner("KUBE-SEP-SXIVWICOYRO3J4NJ")
    assert sep is not None and (sep.service_port, sep.endpoint, sep.protocol) == ("ns1/svc1:p80", "10.180.0.1:80", "tcp")
    kinds = {(e.service_port, e.kind) for e in names.entries}
    assert ("ns6/svc6:p80", "no-endpoints") in kinds and ("ns2/svc2:p80", "health-check") in kinds


def test_large_cluster_dumps_without_svc_and_sep_comments() -> None:
    text = (GOLDEN / "large-cluster" / "expected.iptables").read_text()
    assert "-> " not in text  # kube-proxy dropped the endpoint comments
    names = resolve_iptables(parse(text))
    seps = [o for c, o in names.owners.items() if c.startswith("KUBE-SEP-")]
    assert seps and all(o.verified and o.source == "graph" and o.endpoint for o in seps)
    assert not names.unowned


def test_a_flushed_kube_services_needs_the_service_objects() -> None:
    text = re.sub(r"^-A KUBE-SERVICES .*\n", "", SAVE, flags=re.M)
    text = re.sub(r"^-A KUBE-NODEPORTS .*\n", "", text, flags=re.M)
    without = resolve_iptables(parse(text))
    # SEP/SVC rules still carry comments here, so most chains explain themselves...
    assert all(o.source == "comment" for o in without.owners.values())
    with_state = resolve_iptables(parse(text), six_state())
    assert set(with_state.owners) >= set(without.owners)
    assert with_state.owner("KUBE-SVC-XPGD46QRK7WJZT7O").source == "hash"  # type: ignore[union-attr]
    # ...and without comments nothing would, except the hashes.
    bare = re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text)
    assert len(resolve_iptables(parse(bare)).unowned) == 16
    assert not resolve_iptables(parse(bare), six_state()).unowned


def test_a_comment_that_lies_is_not_verified() -> None:
    text = SAVE.replace('"ns1/svc1:p80 cluster IP"', '"ns1/other:p80 cluster IP"')
    names = resolve_iptables(parse(text), selector=ServiceSelector("ns1", "other"))
    owner = names.owner("KUBE-SVC-XPGD46QRK7WJZT7O")
    assert owner is not None and owner.service_port == "ns1/other:p80" and not owner.verified


def test_one_service_only_touches_its_rules() -> None:
    rs = parse(SAVE, lazy=True)
    names = resolve_iptables(rs, selector=ServiceSelector("ns4", "svc4"))
    assert sorted(names.chains_of(ServiceSelector("ns4", "svc4"))) == [
        "KUBE-EXT-4SW47YFZTEDKD3PK", "KUBE-SEP-C6EBXVWJJZMIWKLZ", "KUBE-SEP-UKSFD7AGPMPPLUHC",
        "KUBE-SVC-4SW47YFZTEDKD3PK"]
    assert not rs.tables["nat"].chains.is_built("KUBE-SVC-XPGD46QRK7WJZT7O")  # type: ignore[attr-defined]


def test_nft_chain_names() -> None:
    owner = nft_chain_owner("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
    assert owner is not None and (owner.service_port, owner.role, owner.endpoint, owner.verified) == (
        "ns1/svc1:p80", "endpoint", "10.180.0.1:80", True)
    assert nft_chain_owner("service-ULMVA6XW-ns1/svc1/tcp/p80").verified  # type: ignore[union-attr]
    assert not nft_chain_owner("service-AAAAAAAA-ns1/svc1/tcp/p80").verified  # type: ignore[union-attr]
    unnamed = nft_chain_owner("local-ABCDEFGH-ns/web/udp/")
    assert unnamed is not None and unnamed.service_port == "ns/web" and unnamed.protocol == "udp"
    v6 = nft_chain_owner("endpoint-ABCDEFGH-ns/web/tcp/http__fd00.10.180..1/80")
    assert v6 is not None and v6.endpoint == "[fd00:10:180::1]:80"
    assert nft_chain_owner("services") is None and nft_chain_owner("mark-for-masquerade") is None
    graph = load_texts([("nft", (DATA / "kube-proxy.nft.json").read_text())])
    owners = resolve_nft(graph.nft_tables()).owners
    assert {o.service_port for o in owners.values()} == {"ns1/svc1:p80", "ns2/svc2:p80", "ns5/svc5:p80"}
    assert all(o.verified for o in owners.values())


def test_ipvs_virtual_services_are_matched_by_address() -> None:
    state = state_from_objects(load_objects(str(DATA / "ipvs-cluster.yaml")), warn=lambda _m: None)
    table = parse_ipvsadm((DATA / "ipvsadm-save.txt").read_text())
    found = {vs.key: [(o.service_port, kind) for o, kind in ipvs_owner(vs, state, ["192.168.0.2"])]
             for vs in table.services}
    assert found == {
        "TCP 172.30.0.41:80": [("ns1/svc1:p80", "ClusterIP")],
        "TCP 172.30.0.43:80": [("ns3/svc3:p80", "ClusterIP")],
        "TCP 192.168.0.2:3003": [("ns3/svc3:p80", "NodePort")],
        "TCP 172.30.0.46:80": [("ns6/svc6:p80", "ClusterIP")],
    }
    assert ipvs_owner(table.services[0], None, []) == []
