"""Reading node rules: format detection, lazy iptables-save parsing, nft JSON, ipvsadm, ipset.

The files under tests/data/rules/ were printed by the real tools on this kernel (see
test_rules_kernel.py, which regenerates and compares them): `six-services.*-save.txt` by
`iptables-nft-save` / `iptables-legacy-save` after restoring our rendering of kube-proxy's
six-service case, `kube-proxy.nft.json` by `nft -j list ruleset` after loading the
hand-written `kube-proxy.nft`, `ipvs-node.iptables-ipset.txt` by `iptables-nft-save` and
`ipset save` for IPVS mode's helper rules. `ipvsadm-*.txt` are hand-written in ipvsadm's
formats (this kernel has no IPVS).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.inspect.graph import load_texts
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.iptables.parse import Chain, Ruleset, parse
from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.modes.ipvs.parse import parse_ipset, parse_ipvsadm
from kubectl_proxyctl.modes.nftables.parse import parse_nft_json, rule_text
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.tracing import LocalNode, Packet

DATA = Path(__file__).parent / "data" / "rules"
GOLDEN = Path(__file__).parent / "golden"
NFT_SAVE = (DATA / "six-services.nft-save.txt").read_text()
LEGACY_SAVE = (DATA / "six-services.legacy-save.txt").read_text()
NFT_JSON = (DATA / "kube-proxy.nft.json").read_text()


def keys(ruleset: Ruleset, table: str, chain: str) -> list[str] | None:
    c = ruleset.chain(table, chain)
    return [r.key() for r in c.rules] if c else None


def chain_of(ruleset: Ruleset, table: str, name: str) -> Chain:
    c = ruleset.chain(table, name)
    assert c is not None, (table, name)
    return c


@pytest.mark.parametrize("text", [NFT_SAVE, LEGACY_SAVE])
def test_lazy_parse_equals_full_parse(text: str) -> None:
    lazy, full = parse(text, lazy=True), parse(text)
    assert type(lazy.tables["nat"].chains).__name__ == "_LazyChains"
    for table in full.tables:
        assert lazy.chains(table) == full.chains(table)
        for chain in full.chains(table):
            assert keys(lazy, table, chain) == keys(full, table, chain)
            assert lazy.policy(table, chain) == chain_of(full, table, chain).policy
    rule = chain_of(lazy, "nat", "KUBE-SVC-XPGD46QRK7WJZT7O").rules[1]
    assert text.splitlines()[rule.line - 1] == str(rule)


@pytest.mark.parametrize("case", sorted(p.name for p in GOLDEN.iterdir() if (p / "expected.iptables").exists()))
def test_rendered_payloads_parse_the_same_lazily(case: str) -> None:
    text = (GOLDEN / case / "expected.iptables").read_text()
    lazy, full = parse(text, lazy=True), parse(text)
    for table in full.tables:
        assert lazy.chains(table) == full.chains(table)
        for chain in full.chains(table):
            assert keys(lazy, table, chain) == keys(full, table, chain)


def test_restore_input_with_deletes_falls_back_to_the_full_parser() -> None:
    text = "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-B - [0:0]\n-A KUBE-SVC-A -j KUBE-SEP-B\n-X KUBE-SEP-C\nCOMMIT\n"
    rs = parse(text, lazy=True)
    assert isinstance(rs.tables["nat"].chains, dict)
    assert rs.tables["nat"].deleted == ("KUBE-SEP-C",)


def test_lazy_errors_name_the_line() -> None:
    rs = parse("*nat\n:X - [0:0]\n-A X -m comment --comment \"open\n-A Y -j X\nCOMMIT\n", "f.txt", lazy=True)
    with pytest.raises(RulesetParseError, match=r"^f.txt:3: bad rule"):
        rs.chain("nat", "X")
    assert chain_of(rs, "nat", "Y").rules[0].target == "X"


def test_candidates_only_skip_rules_that_cannot_match() -> None:
    lines = [f"-A KUBE-SERVICES -d 10.96.{i // 256}.{i % 256}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i:016d}"
             for i in range(100)]
    lines.insert(50, "-A KUBE-SERVICES -d 10.96.0.0/16 -p tcp -m tcp --dport 81 -j KUBE-SVC-WIDE")
    lines.append("-A KUBE-SERVICES ! -d 10.96.0.7/32 -j KUBE-NODEPORTS")
    text = "*nat\n:KUBE-SERVICES - [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"
    for rs in (parse(text), parse(text, lazy=True)):
        found = [pos for pos, _ in rs.candidates("nat", "KUBE-SERVICES", "10.96.0.7") or ()]
        assert found == [8, 51, 102]
        assert len(rs.candidates("nat", "KUBE-SERVICES", None) or ()) == 102


# Rule shapes the destination index must key as the full parser's rules would.
_DESTINATION_SHAPES = [
    "-d {ip}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-X",
    "-d {ip} -p tcp -j KUBE-SVC-X",
    "! -d {ip}/32 -j KUBE-SVC-X",
    "-d {ip}/32 ! -d 10.96.0.9/32 -j KUBE-SVC-X",
    "-d {ip}/32 -d {ip}/32 -j KUBE-SVC-X",
    "-s 10.0.0.0/8 -d {ip}/32 -j KUBE-SVC-X",
    "-d {ip}/31 -j KUBE-SVC-X",
    "-d {ip}/032 -j KUBE-SVC-X",
    "-d 10.96.0.0/16 -j KUBE-SVC-X",
    "--destination {ip} -j KUBE-SVC-X",
    "--dst {ip}/32 -j KUBE-SVC-X",
    "-d  {ip}/32 -j KUBE-SVC-X",
    "-d {ip}/32\t-p tcp -j KUBE-SVC-X",
    "-d {ip}/32",
    '-d {ip}/32 -m comment --comment "a -d 10.96.0.9 word" -j KUBE-SVC-X',
    '-d {ip}/32 -m comment --comment "ünïcode" -j KUBE-SVC-X',
    "-d {ip}/32 -j DNAT --to-destination 10.1.0.1:80",
    "-d {ip}/32 -j KUBE-SVC-X -d 10.96.0.9",
    "-p tcp -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    "-m comment --comment nodeports -j KUBE-NODEPORTS",
    "-d fd00::{n:x} -p tcp -j KUBE-SVC-X",
    "-d fd00:0::{n:x}/128 -p tcp -j KUBE-SVC-X",
    "-d fd00::/64 -j KUBE-SVC-X",
    "-d {ip}:80 -j KUBE-SVC-X",
]


@pytest.mark.parametrize("shapes", [_DESTINATION_SHAPES, [  # and only lone leading -d's (the chain read at once)
    _DESTINATION_SHAPES[0], _DESTINATION_SHAPES[1], _DESTINATION_SHAPES[16], _DESTINATION_SHAPES[18],
    _DESTINATION_SHAPES[19], _DESTINATION_SHAPES[20], _DESTINATION_SHAPES[21], _DESTINATION_SHAPES[23]]])
def test_candidates_by_destination_for_every_rule_shape(shapes: list[str]) -> None:
    lines = [f"-A KUBE-SERVICES {shape}".format(ip=f"10.96.0.{n % 4}", n=n % 4)
             for n in range(8) for shape in shapes]
    text = "*nat\n:KUBE-SERVICES - [0:0]\n" + "\n".join(lines) + "\nCOMMIT\n"
    lazy, full = parse(text, lazy=True), parse(text)
    assert not isinstance(full.tables["nat"].chains, type(lazy.tables["nat"].chains))
    for dst in ("10.96.0.1", "10.96.0.9", "10.96.0.0", "fd00::1", "fd00:0:0::3", "192.0.2.1", None):
        found = [pos for pos, _ in lazy.candidates("nat", "KUBE-SERVICES", dst) or ()]
        assert found == [pos for pos, _ in full.candidates("nat", "KUBE-SERVICES", dst) or ()], dst
        assert [r.key() for _, r in lazy.candidates("nat", "KUBE-SERVICES", dst) or ()] == \
            [r.key() for _, r in full.candidates("nat", "KUBE-SERVICES", dst) or ()]


def test_trace_is_the_same_through_the_index() -> None:
    """A 10,000-rule chain: the index must not change any verdict."""
    lines = [f"-A KUBE-SERVICES -d 10.96.{i // 256}.{i % 256}/32 -p tcp -m tcp --dport 80 -j DNAT "
             f"--to-destination 10.244.{i // 256}.{i % 256}:8080" for i in range(10000)]
    text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n" + \
        "\n".join(lines) + "\nCOMMIT\n"
    rs = parse(text, lazy=True)
    result = trace(rs, Packet("10.244.9.9", "10.96.39.15", 80), LocalNode(("192.168.0.2",)))
    assert result.endpoint_probabilities() == {"10.244.39.15:8080": 1.0}
    assert trace(rs, Packet("10.244.9.9", "10.96.39.15", 81), LocalNode()).verdict.value == "NONE"


# --- format detection -----------------------------------------------------------------------


def test_both_backends_in_one_file_stay_apart() -> None:
    graph = load_texts([("both.txt", NFT_SAVE + LEGACY_SAVE)])
    assert [(d.backend, d.source) for d in graph.iptables] == [("nft", "both.txt"), ("legacy", "both.txt")]
    assert graph.mode == Mode.IPTABLES


def test_every_format_in_one_file() -> None:
    text = "\n".join([
        NFT_SAVE,
        NFT_JSON.strip(),
        (DATA / "ipvs-node.iptables-ipset.txt").read_text().split("COMMIT\n")[-1],  # the ipset part
        (DATA / "ipvsadm-save.txt").read_text(),
    ])
    graph = load_texts([("mixed.txt", text)])
    assert len(graph.iptables) == 1 and graph.nft_tables() and graph.ipvs_services() and graph.ipsets
    assert set(graph.modes_present()) == {Mode.IPTABLES, Mode.NFTABLES, Mode.IPVS}
    assert graph.mode == Mode.IPVS  # virtual services decide


@pytest.mark.parametrize("text,message", [
    ("hello world\n", "cannot tell what this is"),
    ("*nat\n:X - [0:0]\n", "outside a complete"),
    ('{"foo": 1}\n', "not `nft -j` output"),
    ("-A -t 10.0.0.1 -s rr\n", "not ADDRESS:PORT"),
])
def test_unknown_input_is_an_error_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_texts([("bad.txt", text)])


def test_pretty_printed_nft_json_is_recognised() -> None:
    import json

    graph = load_texts([("nft.json", json.dumps(json.loads(NFT_JSON), indent=2))])
    assert graph.mode == Mode.NFTABLES


# --- nft, ipvsadm, ipset ----------------------------------------------------------------------


def test_nft_json_tables_sets_maps_and_rule_text() -> None:
    rs = parse_nft_json(NFT_JSON)
    (table,) = rs.kube_proxy_tables()
    assert table.title == "ip kube-proxy"  # (nft 1.0.6 leaves the table comment out of its JSON)
    assert table.chains["nat-prerouting"].hook == "prerouting" and table.chains["nat-prerouting"].priority == -100
    service_ips = table.sets["service-ips"]
    assert service_ips.is_map and service_ips.type == ("ipv4_addr", "inet_proto", "inet_service")
    assert len(service_ips.elements) == 5
    no_ep = {e.comment for e in table.sets["no-endpoint-services"].elements}
    assert no_ep == {"ns6/svc6:p80", "ns2/svc2:p80"}
    affinity = [s for s in table.sets.values() if s.name.startswith("affinity-")]
    assert affinity[0].timeout == 10800
    texts = [rule_text(r) for r in table.chains["service-ULMVA6XW-ns1/svc1/tcp/p80"].rules]
    assert texts[1].startswith("numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
    assert [rule_text(r) for r in table.chains["masquerading"].rules] == [
        "meta mark & 16384 == 0 return", "meta mark set meta mark ^ 16384", "masquerade fully-random"]


def test_ipvsadm_save_and_list_forms() -> None:
    saved = parse_ipvsadm((DATA / "ipvsadm-save.txt").read_text())
    assert [vs.key for vs in saved.services] == ["TCP 172.30.0.41:80", "TCP 172.30.0.43:80", "TCP 192.168.0.2:3003",
                                                  "TCP 172.30.0.46:80"]
    assert [r.endpoint for r in saved.services[0].reals] == ["10.180.0.1:80", "10.180.0.2:80"]
    listed = parse_ipvsadm((DATA / "ipvsadm-list.txt").read_text())
    vs = listed.find("TCP", "172.30.0.41", 80)
    assert vs is not None and [(r.endpoint, r.weight, r.inactive) for r in vs.reals][-1] == ("10.180.0.9:80", 0, 3)
    assert listed.services[1].persistent == 10800
    v6 = parse_ipvsadm("-A -u [fd00::10]:53 -s rr -p\n-a -u [fd00::10]:53 -r [fd00::2]:53 -m -w 2\n")
    assert v6.services[0].persistent == 300 and v6.services[0].reals[0].endpoint == "[fd00::2]:53"
    assert v6.services[0].save_lines() == ["-A -u [fd00::10]:53 -s rr -p 300",
                                           "-a -u [fd00::10]:53 -r [fd00::2]:53 -m -w 2"]


def test_ipset_membership() -> None:
    sets = parse_ipset((DATA / "ipvs-node.iptables-ipset.txt").read_text().split("COMMIT\n")[-1])
    cluster = sets["KUBE-CLUSTER-IP"]
    assert cluster.dimensions == ("ip", "port")
    assert cluster.contains(["172.30.0.41", "tcp:80"]) is True
    assert cluster.contains(["172.30.0.41", "udp:80"]) is False
    assert sets["KUBE-NODE-PORT-TCP"].contains(["tcp:3003"]) is True
    assert sets["KUBE-LOOP-BACK"].contains(["10.180.0.1", "tcp:80", "10.180.0.1"]) is True
    net = parse_ipset("create S hash:ip,port,net family inet\nadd S 5.6.7.8,tcp:80,203.0.113.0/25\n")["S"]
    assert net.contains(["5.6.7.8", "tcp:80", "203.0.113.5"]) and not net.contains(["5.6.7.8", "tcp:80", "203.0.113.200"])
