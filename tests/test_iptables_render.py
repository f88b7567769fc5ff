"""The iptables renderer: exact rule text, options, partial syncs, and the text parser."""

from __future__ import annotations

import random
import re

import pytest

from flowhelpers import (
    assert_consistent,
    NODE,
    NODE_IP,
    build,
    default_config,
    endpoint,
    endpoint_slice,
    node,
    service,
    state_of,
)
from kubectl_proxyctl.modes.iptables.render import JUMP_RULES, RenderStream, jump_rules_text, render
from kubectl_proxyctl.plan.planner import DetectLocalMode, ProxyConfig, plan
from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.model import IPFamily, Protocol, ServicePortName
from kubectl_proxyctl.modes.iptables.parse import parse, split_line
from kubectl_proxyctl.errors import RulesetParseError

SVC1 = [
    service("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80}]),
    endpoint_slice("ns1", "svc1", [endpoint("10.180.0.1")], [("p80", 80)]),
]

# Reference §2.6, "minimal ClusterIP example" (nat table), as kube-proxy writes it.
MINIMAL_NAT = """\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"""

MINIMAL_FILTER = """\
*filter
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def chain_rules(text: str, table: str, chain: str) -> list[str]:
    c = parse(text).chain(table, chain)
    return [str(r) for r in c.rules] if c else []


def test_minimal_cluster_ip_is_kube_proxys_text() -> None:
    r = build(SVC1 + [node()]).rendered
    assert r.text == MINIMAL_FILTER + MINIMAL_NAT
    assert r.filter_rules == 4 and r.nat_rules == 10 and r.nat_rules_total == 10
    assert r.service_chains == {"KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SXIVWICOYRO3J4NJ"}
    assert r.written_chains == r.service_chains
    assert r.chains_by_service == {
        ServicePortName("ns1", "svc1", "p80"): ("KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SXIVWICOYRO3J4NJ")
    }
    assert r.filter_chains[-1] == "KUBE-FIREWALL"
    assert r.nat_chains == ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
                            "KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SXIVWICOYRO3J4NJ")


def test_render_options() -> None:
    r = build(SVC1, random_fully=False, tcp_be_liberal=True, nfacct=True).rendered
    assert '-j MASQUERADE\n' in r.text
    assert "--ctstate INVALID" not in r.text
    r = build(SVC1, nfacct=True).rendered
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP" in r.text


def test_masquerade_bit() -> None:
    r = build(SVC1, default_config(masquerade_bit=0)).rendered
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00000001" in r.text
    assert "--mark 0x00000001/0x00000001 -j ACCEPT" in r.text


def test_jump_rules_table() -> None:
    assert len(JUMP_RULES) == 14
    nat_pre = [j for j in JUMP_RULES if (j.table, j.chain) == ("nat", "PREROUTING")]
    assert nat_pre[0].args() == ("-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")
    order = jump_rules_text()
    # Each is inserted at position 1, so the final order is the reverse of the table.
    assert order[("filter", "FORWARD")] == [
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
    ]
    assert order[("filter", "INPUT")][0] == "-A INPUT -j KUBE-FIREWALL"
    assert order[("nat", "POSTROUTING")] == ['-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING']


RICH = [
    node(),
    service("ns1", "clusterip", "172.30.0.41", [{"name": "p80", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
    endpoint_slice("ns1", "clusterip", [endpoint("10.180.0.1", NODE), endpoint("10.180.0.2"), endpoint("10.180.0.3")],
                   [("p80", 8080), ("dns", 53, "UDP")]),
    service("ns2", "lb", "172.30.0.42", [{"name": "p80", "port": 80, "nodePort": 30080}], type="LoadBalancer",
            lb_ips=["1.2.3.4"], external_ips=["192.168.99.1"], source_ranges=["192.168.0.0/16"], affinity=300),
    endpoint_slice("ns2", "lb", [endpoint("10.180.1.1"), endpoint("10.180.1.2", NODE)], [("p80", 80)]),
    service("ns3", "local", "172.30.0.43", [{"name": "p80", "port": 80, "nodePort": 30081}], type="NodePort",
            etp="Local", itp="Local"),
    endpoint_slice("ns3", "local", [endpoint("10.180.2.1", NODE), endpoint("10.180.2.2")], [("p80", 80)]),
    service("ns4", "none", "172.30.0.44", [{"name": "p80", "port": 80, "nodePort": 30082}], type="LoadBalancer",
            lb_ips=["5.6.7.8"], external_ips=["192.168.99.2"]),
]


def test_rich_ruleset_is_consistent_and_deterministic() -> None:
    first = build(RICH).rendered
    assert_consistent(first.text)
    shuffled = list(RICH)
    random.Random(3).shuffle(shuffled)
    assert build(shuffled).rendered.text == first.text


def test_cascade_and_affinity() -> None:
    text = build(RICH).rendered.text
    svc = [r for r in chain_rules(text, "nat", "KUBE-SVC-" + _hash("ns1/clusterip:p80tcp")) if "->" in r]
    assert [re.search(r"--probability (\S+)", r).group(1) if "--probability" in r else None for r in svc] == [
        "0.3333333333", "0.5000000000", None]
    lb = chain_rules(text, "nat", "KUBE-SVC-" + _hash("ns2/lb:p80tcp"))
    assert sum("--rcheck --seconds 300 --reap" in r for r in lb) == 2
    assert lb[1].startswith('-A KUBE-SVC-') and "--rcheck" in lb[1] and "--rcheck" in lb[2] and "--rcheck" not in lb[3]


def test_firewall_allows_the_node_and_its_vips() -> None:
    fw = chain_rules(build(RICH).rendered.text, "nat", "KUBE-FW-" + _hash("ns2/lb:p80tcp"))
    ext = "KUBE-EXT-" + _hash("ns2/lb:p80tcp")
    assert fw == [
        f'-A KUBE-FW-{ext[9:]} -m comment --comment "ns2/lb:p80 loadbalancer IP" -s 192.168.0.0/16 -j {ext}',
        f'-A KUBE-FW-{ext[9:]} -m comment --comment "ns2/lb:p80 loadbalancer IP" -s 1.2.3.4 -j {ext}',
        f'-A KUBE-FW-{ext[9:]} -m comment --comment "other traffic to ns2/lb:p80 will be dropped by KUBE-PROXY-FIREWALL"',
    ]


def test_local_policies() -> None:
    text = build(RICH).rendered.text
    h = _hash("ns3/local:p80tcp")
    assert f'-A KUBE-SERVICES -m comment --comment "ns3/local:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVL-{h}' in text
    assert chain_rules(text, "nat", f"KUBE-SVL-{h}")[0].endswith("! -s 10.0.0.0/8 -j KUBE-MARK-MASQ")
    assert chain_rules(text, "nat", f"KUBE-EXT-{h}")[-1] == f"-A KUBE-EXT-{h} -j KUBE-SVL-{h}"
    assert f"-A KUBE-NODEPORTS -m comment --comment ns3/local:p80 -m tcp -p tcp --dport 30081 -j KUBE-EXT-{h}" in text


def test_no_endpoints_reject_everywhere() -> None:
    filt = chain_rules(build(RICH).rendered.text, "filter", "KUBE-EXTERNAL-SERVICES")
    assert filt == [
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns4/none:p80 has no endpoints" -m tcp -p tcp -d 192.168.99.2 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns4/none:p80 has no endpoints" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j REJECT',
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns4/none:p80 has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30082 -j REJECT',
    ]
    assert "ns4/none" not in "\n".join(chain_rules(build(RICH).rendered.text, "nat", "KUBE-SERVICES"))


def test_large_cluster_mode_drops_endpoint_comments() -> None:
    r = build(RICH, large_cluster=True).rendered
    assert r.large_cluster
    for line in r.text.splitlines():
        if line.startswith("-A KUBE-SEP-") or (line.startswith("-A KUBE-SVC-") and "KUBE-SEP-" in line):
            assert "--comment" not in line, line
    h = _hash("ns1/clusterip:p80tcp")
    assert f'-A KUBE-SVC-{h} -m comment --comment "ns1/clusterip:p80 cluster IP"' in r.text
    assert '--comment "ns1/clusterip:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j' in r.text
    assert not build(RICH).rendered.large_cluster


def test_large_cluster_mode_starts_above_1000_endpoints() -> None:
    eps = [endpoint(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(1000)]
    objs = [service("ns", "big", "172.30.0.9", [{"name": "p", "port": 80}]), endpoint_slice("ns", "big", eps, [("p", 80)])]
    assert not build(objs).rendered.large_cluster
    objs.append(endpoint_slice("ns", "big", [endpoint("10.2.0.1")], [("p", 80)], name="big-2"))
    assert build(objs).rendered.large_cluster


def test_partial_sync_writes_only_changed_services() -> None:
    p = plan(state_of(RICH), default_config())
    full = render(p)
    changed = ServicePortName("ns2", "lb", "p80")
    part = render(p, changed=[changed])
    assert part.partial and not full.partial
    assert part.written_chains == set(full.chains_by_service[changed])
    assert part.service_chains == full.service_chains
    assert part.nat_rules_total == full.nat_rules_total == full.nat_rules
    assert part.nat_rules < full.nat_rules
    assert ServicePortName("ns1", "clusterip", "p80") in part.skipped_services
    # Top-level chains are complete in both.
    for table, chain in (("nat", "KUBE-SERVICES"), ("nat", "KUBE-NODEPORTS"), ("filter", "KUBE-EXTERNAL-SERVICES")):
        assert chain_rules(part.text, table, chain) == chain_rules(full.text, table, chain)
    # No rule of an unchanged service chain.
    assert "-A KUBE-SEP-" + _hash("ns1/clusterip:p80tcp10.180.0.1:8080") not in part.text
    # A whole Service by name: both its ports.
    by_service = render(p, changed=["ns1/clusterip"])
    assert by_service.written_chains == set(full.chains_by_service[ServicePortName("ns1", "clusterip", "p80")]) | set(
        full.chains_by_service[ServicePortName("ns1", "clusterip", "dns", Protocol.UDP)])
    assert render(p, changed=[]).written_chains == frozenset()


def test_stale_chains_are_deleted_before_the_nodeports_jump() -> None:
    stale = "KUBE-SVC-AAAAAAAAAAAAAAAA"
    existing = ["KUBE-SERVICES", "KUBE-SVC-" + _hash("ns1/svc1:p80tcp"), stale, "KUBE-SEP-BBBBBBBBBBBBBBBB", "CNI-FOO"]
    r = build(SVC1, existing_nat_chains=existing).rendered
    assert r.deleted_chains == ("KUBE-SEP-BBBBBBBBBBBBBBBB", stale)
    lines = r.text.splitlines()
    assert f":{stale} - [0:0]" in lines and f"-X {stale}" in lines
    assert lines.index(f"-X {stale}") < lines.index(next(l for l in lines if "must be the last rule" in l))
    assert "CNI-FOO" not in r.text
    assert r.nat_rules == 10
    assert parse(r.text).chain("nat", stale) is None
    assert parse(r.text).table("nat").deleted == ("KUBE-SEP-BBBBBBBBBBBBBBBB", stale)



def test_the_stream_is_the_render_in_chunks_with_extra_lines_before_each_commit() -> None:
    built = build(RICH)
    existing = ["KUBE-SVC-AAAAAAAAAAAAAAAA"]
    whole = render(built.plan, existing_nat_chains=existing)
    stream = RenderStream(built.plan)
    assert stream.top_level_chains == {"filter": whole.filter_chains, "nat": whole.nat_chains[:4]}
    with pytest.raises(RuntimeError):
        stream.rendered  # noqa: B018 - complete only once the chunks are taken
    extra = {"filter": ["-I INPUT 1 -j KUBE-FIREWALL"], "nat": [], "mangle": [":KUBE-PROXY-CANARY - [0:0]"]}
    chunks = list(stream.chunks(existing, extra))
    assert all(c.endswith("\n") for c in chunks) and len(chunks) > 4
    filter_block, nat_block = whole.text.split("COMMIT\n")[:2]
    assert "".join(chunks) == (filter_block + "-I INPUT 1 -j KUBE-FIREWALL\nCOMMIT\n" + nat_block + "COMMIT\n"
                               "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n")
    assert stream.rendered == whole  # the payload without the extra lines, and the same bookkeeping
    assert stream.rendered.deleted_chains == ("KUBE-SVC-AAAAAAAAAAAAAAAA",)


def test_the_stream_sends_the_chain_declarations_before_rendering_the_rules() -> None:
    many = [obj for i in range(RenderStream.BATCH_LINES) for obj in (  # more chains than a chunk holds
        service("ns1", f"svc{i}", f"172.30.{i // 250}.{i % 250 + 1}", [{"name": "p80", "port": 80}]),
        endpoint_slice("ns1", f"svc{i}", [endpoint(f"10.180.{i // 250}.{i % 250 + 1}")], [("p80", 80)]),
    )]
    chunks = RenderStream(build(many).plan).chunks()
    head = [next(chunks), next(chunks), next(chunks)]  # filter block, its COMMIT, the first nat chunk
    assert head[0].startswith("*filter\n") and head[1] == "COMMIT\n"
    assert head[2].startswith("*nat\n:KUBE-SERVICES - [0:0]\n") and "-A " not in head[2]

@pytest.mark.parametrize(
    "config,want,firewall",
    [
        (dict(), ["-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"], True),
        (dict(localhost_nodeports=False), ["-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"], False),
        (dict(nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8")),
         [f"-d {NODE_IP} -j KUBE-NODEPORTS", "-d 127.0.0.1 -j KUBE-NODEPORTS"], True),
        (dict(nodeport_addresses=("192.168.0.0/24", "127.0.0.0/8"), localhost_nodeports=False),
         [f"-d {NODE_IP} -j KUBE-NODEPORTS"], False),
        # kube-proxy turns localhost node ports off when the addresses leave loopback out.
        (dict(nodeport_addresses=("primary",)), [f"-d {NODE_IP} -j KUBE-NODEPORTS"], False),
        (dict(nodeport_addresses=("192.168.1.0/24",)), ["-d 192.168.1.2 -j KUBE-NODEPORTS"], False),
    ],
)
def test_nodeports_jump(config: dict, want: list[str], firewall: bool) -> None:
    text = build(SVC1, default_config(**config)).rendered.text
    got = [l.split('this chain" ', 1)[1] for l in text.splitlines() if "must be the last rule" in l]
    assert got == want
    assert ("KUBE-FIREWALL" in text) is firewall


def test_localhost_nodeport_counter_rule() -> None:
    objs = [service("ns", "np", "172.30.0.9", [{"name": "p", "port": 80, "nodePort": 30009}], type="NodePort"),
            endpoint_slice("ns", "np", [endpoint("10.1.0.1")], [("p", 80)])]
    with_counter = chain_rules(build(objs, nfacct=True).rendered.text, "nat", "KUBE-NODEPORTS")
    assert len(with_counter) == 2 and "-d 127.0.0.0/8 --dport 30009 -m nfacct --nfacct-name localhost_nps_accepted_pkts" in with_counter[0]
    assert len(chain_rules(build(objs).rendered.text, "nat", "KUBE-NODEPORTS")) == 1
    no_localhost = build(objs, default_config(localhost_nodeports=False), nfacct=True).rendered.text
    assert len(chain_rules(no_localhost, "nat", "KUBE-NODEPORTS")) == 1


def test_ipv6() -> None:
    objs = [
        node(ips=["2001:db8::1"]),
        service("ns1", "svc1", "fd00:172:30::41", [{"name": "p80", "port": 80, "nodePort": 30001}], type="NodePort",
                cluster_ips=["fd00:172:30::41"]),
        endpoint_slice("ns1", "svc1", [endpoint("fd00:10:180::1"), endpoint("fd00:10:180::2:1", NODE)], [("p80", 80)], family="IPv6"),
    ]
    cfg = ProxyConfig(node_name=NODE, family=IPFamily.IPv6, cluster_cidrs=("fd00:10::/64",), node_ips=("2001:db8::1",))
    r = build(objs, cfg).rendered
    assert r.family == IPFamily.IPv6
    assert "KUBE-FIREWALL" not in r.text and "127.0.0.0" not in r.text
    sep = "KUBE-SEP-" + _hash("ns1/svc1:p80tcp[fd00:10:180::1]:80")
    assert f"-A {sep} -m comment --comment ns1/svc1:p80 -s fd00:10:180::1 -j KUBE-MARK-MASQ" in r.text
    assert f"-A {sep} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination [fd00:10:180::1]:80" in r.text
    assert "! -s fd00:10::/64 -j KUBE-MARK-MASQ" in r.text
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in r.text
    assert_consistent(r.text)


@pytest.mark.parametrize(
    "overrides,masq,pod",
    [
        (dict(detect_local_mode=DetectLocalMode.BridgeInterface, pod_bridge_interface="cbr0"), "! -i cbr0", "-i cbr0"),
        (dict(detect_local_mode=DetectLocalMode.InterfaceNamePrefix, pod_interface_name_prefix="veth"), "! -i veth+", "-i veth+"),
        (dict(cluster_cidrs=()), None, None),
        (dict(masquerade_all=True), "", "-s 10.0.0.0/8"),
    ],
)
def test_local_detectors(overrides: dict, masq: str | None, pod: str | None) -> None:
    objs = [
        service("ns", "s", "172.30.0.9", [{"name": "p", "port": 80, "nodePort": 30009}], type="NodePort", etp="Local"),
        endpoint_slice("ns", "s", [endpoint("10.1.0.1", NODE)], [("p", 80)]),
    ]
    text = build(objs, default_config(**overrides)).rendered.text
    h = _hash("ns/s:ptcp")
    svc = chain_rules(text, "nat", f"KUBE-SVC-{h}")
    ext = chain_rules(text, "nat", f"KUBE-EXT-{h}")
    if masq is None:
        assert not any("KUBE-MARK-MASQ" in r for r in svc)
        assert not any("pod traffic" in r for r in ext)
    else:
        want = f'-A KUBE-SVC-{h} -m comment --comment "ns/s:p cluster IP" -m tcp -p tcp -d 172.30.0.9 --dport 80 {masq} -j KUBE-MARK-MASQ'
        assert svc[0] == re.sub(r"  +", " ", want)
        assert ext[0] == f'-A KUBE-EXT-{h} -m comment --comment "pod traffic for ns/s:p external destinations" {pod} -j KUBE-SVC-{h}'


def test_udp_and_sctp() -> None:
    objs = [
        service("ns", "dns", "172.30.0.10", [{"name": "dns", "port": 53, "protocol": "UDP"},
                                             {"name": "sctp", "port": 9999, "protocol": "SCTP"}]),
        endpoint_slice("ns", "dns", [endpoint("10.1.0.1")], [("dns", 53, "UDP"), ("sctp", 9999, "SCTP")]),
    ]
    text = build(objs).rendered.text
    assert '-A KUBE-SERVICES -m comment --comment "ns/dns:dns cluster IP" -m udp -p udp -d 172.30.0.10 --dport 53 -j KUBE-SVC-' in text
    assert '-m sctp -p sctp -d 172.30.0.10 --dport 9999' in text
    assert f"-A KUBE-SEP-{_hash('ns/dns:dnsudp10.1.0.1:53')} -m comment --comment ns/dns:dns -m udp -p udp -j DNAT --to-destination 10.1.0.1:53" in text


def test_health_check_rule_even_without_local_endpoints() -> None:
    objs = [service("ns", "lb", "172.30.0.9", [{"name": "p", "port": 80, "nodePort": 30009}], type="LoadBalancer",
                    etp="Local", hc_port=32000, lb_ips=["1.2.3.4"])]
    rules = chain_rules(build(objs).rendered.text, "filter", "KUBE-NODEPORTS")
    assert rules == ['-A KUBE-NODEPORTS -m comment --comment "ns/lb:p health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT']


def test_rule_counts_match_the_text() -> None:
    r = build(RICH).rendered
    ruleset = parse(r.text)
    assert r.filter_rules == sum(len(c.rules) for c in ruleset.table("filter").chains.values())
    assert r.nat_rules == sum(len(c.rules) for c in ruleset.table("nat").chains.values())


def _hash(text: str) -> str:
    from kubectl_proxyctl.modes.iptables.naming import hash16

    return hash16(text)


# --- the parser ----------------------------------------------------------------------------

SAVE = """\
# Generated by iptables-nft-save v1.8.10 on Thu Jan  1 00:00:00 2026
*nat
:PREROUTING ACCEPT [10:600]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
[5:300] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SVC-XPGD46QRK7WJZT7O -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -p tcp -m comment --comment ns1/svc1:p80 -m tcp -j DNAT --to-destination 10.180.0.1:80
COMMIT
# Completed on Thu Jan  1 00:00:00 2026
"""

RESTORE = """\
*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
COMMIT
"""


def test_parse_save_output() -> None:
    rs = parse(SAVE)
    nat = rs.table("nat")
    assert list(nat.chains) == ["PREROUTING", "POSTROUTING", "KUBE-MARK-MASQ", "KUBE-SVC-XPGD46QRK7WJZT7O",
                                "KUBE-SEP-SXIVWICOYRO3J4NJ"]
    assert nat.chains["PREROUTING"].policy == "ACCEPT" and nat.chains["PREROUTING"].builtin
    assert not nat.chains["KUBE-MARK-MASQ"].builtin
    masq = nat.chains["KUBE-SVC-XPGD46QRK7WJZT7O"].rules[0]
    assert masq.comment == "ns1/svc1:p80 cluster IP"
    assert masq.find("-d").value == "172.30.0.41/32"
    assert masq.find("--dport").module == "tcp"
    src = masq.find("-s")
    assert src.negated and src.value == "10.0.0.0/8"
    assert masq.target == "KUBE-MARK-MASQ" and masq.modules == ("comment", "tcp")
    assert masq.line == 10


def test_save_and_restore_forms_have_the_same_keys() -> None:
    save = parse(SAVE)
    restore = parse(RESTORE)
    for chain in ("KUBE-MARK-MASQ", "KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SEP-SXIVWICOYRO3J4NJ"):
        a = [r.key() for r in save.chain("nat", chain).rules]
        b = [r.key() for r in restore.chain("nat", chain).rules]
        assert a == b, chain


def test_filter_rules_compare_with_their_save_echo() -> None:
    restore = parse(MINIMAL_FILTER + "*filter\n-A KUBE-SERVICES " + NO_EP_RESTORE + "\nCOMMIT\n")
    save = parse(
        "*filter\n"
        "-A KUBE-FIREWALL -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" "
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n"
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n"
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n"
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A KUBE-SERVICES -d 172.30.0.46/32 -p tcp -m comment --comment \"ns6/svc6:p80 has no endpoints\" -m tcp --dport 80 "
        "-j REJECT --reject-with icmp-port-unreachable\n"
        "COMMIT\n"
    )
    for chain in ("KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES"):
        assert [r.key() for r in save.chain("filter", chain).rules] == [r.key() for r in restore.chain("filter", chain).rules]


NO_EP_RESTORE = '-m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT'


def test_parse_restore_commands() -> None:
    text = """\
*filter
:KUBE-A - [0:0]
:KUBE-B - [0:0]
-A KUBE-A -j ACCEPT
-I KUBE-A 1 -s 10.0.0.1 -j DROP
-A KUBE-B -j RETURN
-X KUBE-B
-N KUBE-C
-D KUBE-A -j ACCEPT
COMMIT
"""
    rs = parse(text)
    assert rs.chains("filter") == ("KUBE-A", "KUBE-C")
    assert [r.target for r in rs.chain("filter", "KUBE-A").rules] == ["DROP"]
    assert rs.table("filter").deleted == ("KUBE-B",)


def test_with_prepended_acts_like_insert_at_one() -> None:
    rs = parse("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n").with_jump_rules(JUMP_RULES)
    pre = rs.chain("nat", "PREROUTING")
    assert pre.policy == "ACCEPT" and [r.target for r in pre.rules] == ["KUBE-SERVICES"]
    assert [r.target for r in rs.chain("filter", "INPUT").rules] == [
        "KUBE-FIREWALL", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"]
    assert rs.chain("filter", "INPUT").rules[3].comment == "kubernetes externally-visible service portals"


@pytest.mark.parametrize(
    "text,message",
    [
        ("-A FOO -j ACCEPT\n", "line outside a table"),
        ("*nat\n-A FOO -j\nCOMMIT\n", "bad rule"),
        ("*nat\n:FOO - [0:0]\n", "has no COMMIT"),
        ("*nat\n-Z FOO\nCOMMIT\n", "unknown command"),
        ('*nat\n-A FOO -m comment --comment "open\nCOMMIT\n', "unterminated quote"),
        ("COMMIT\n", "COMMIT outside a table"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(RulesetParseError, match=message) as info:
        parse(text, "dump.txt")
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith("dump.txt:")


def test_split_line() -> None:
    assert split_line('-A X -m comment --comment "a \\"quoted\\" word" -j Y') == [
        "-A", "X", "-m", "comment", "--comment", 'a "quoted" word', "-j", "Y"]
    assert split_line("-A X -j Y") == ["-A", "X", "-j", "Y"]


def test_rendered_payload_round_trips() -> None:
    r = build(RICH).rendered
    rs = parse(r.text)
    assert tuple(rs.chains("filter")) == r.filter_chains
    assert tuple(rs.chains("nat")) == r.nat_chains
    for rule in rs.rules():
        assert str(rule) in r.text
