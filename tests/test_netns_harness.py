"""The namespace harness itself: the topology answers, it is fast, and it leaves nothing
behind, also when the test body or the build fails. Plus the executor and sysctl adapters
it is built on."""

from __future__ import annotations

import os

import pytest

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.system.executor import FakeExecutor, Result, SubprocessExecutor, package_hint
from kubectl_proxyctl.system.iptables import Backend, IptablesSystem
from kubectl_proxyctl.system.netns import call_in_netns
from kubectl_proxyctl.system.sysctl import (
    BRIDGE_NF_CALL_IPTABLES,
    ICMP_RATELIMIT,
    IP_FORWARD,
    Sysctl,
    key_path,
)

from netns import (
    PREFIX_ROOT,
    Topology,
    build_topology,
    empty_netns,
    list_netns,
    netns_factory,  # noqa: F401  (fixture)
    new_prefix,
    requires_lab,
    topology,
)
from waiting import TIMEOUT

# --- unit --------------------------------------------------------------------------------


def test_fake_executor_scripts_and_records() -> None:
    fake = FakeExecutor(default=None)
    fake.script(["iptables-save"], Result(0, "one"), Result(0, "two"))
    fake.script(["iptables-save", "-t", "nat"], Result(0, "nat"))
    assert fake.run(["iptables-save"]).stdout == "one"
    assert fake.run(["iptables-save", "-t", "nat"]).stdout == "nat"  # longest prefix wins
    assert fake.run(["iptables-save"]).stdout == "two"
    assert fake.run(["iptables-save"]).stdout == "two"  # the last answer repeats
    assert fake.run(["iptables-save"], stdin="x").ok
    assert fake.calls[-1].stdin == "x" and len(fake.calls) == 5
    with pytest.raises(AssertionError, match="unscripted command: nft list ruleset"):
        fake.run(["nft", "list", "ruleset"])
    seen = FakeExecutor(handler=lambda argv, stdin: Result(3) if argv[0] == "nft" else None)
    seen.script(["ip"], Result(0))  # what the handler leaves is answered from the script
    assert seen.run(["nft"]).returncode == 3 and seen.run(["ip"]).returncode == 0
    with pytest.raises(AssertionError, match="unscripted command: conntrack -L"):
        seen.run(["conntrack", "-L"])  # ... and anything else fails the test


def test_package_hints() -> None:
    assert package_hint("ip6tables-legacy-restore") == "iptables"
    assert package_hint("/usr/sbin/nft") == "nftables"
    assert package_hint("conntrack") == "conntrack"
    assert package_hint("ipset") == "ipset"


def test_subprocess_executor_reports_exit_status_output_and_timeouts() -> None:
    ex = SubprocessExecutor()
    result = ex.run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin="in")
    assert result == Result(3, "in", "err\n") and not result.ok
    with pytest.raises(ProxyctlError, match="sleep timed out after 0.2 s"):
        ex.run(["sleep", "5"], timeout=0.2)
    with pytest.raises(ProxyctlError, match="network namespace pxt-no-such-ns does not exist"):
        SubprocessExecutor("pxt-no-such-ns").run(["true"])


def test_sysctl_against_a_directory_tree(tmp_path) -> None:
    (tmp_path / "net" / "ipv4" / "conf" / "all").mkdir(parents=True)
    (tmp_path / "net" / "ipv4" / "ip_forward").write_text("0\n")
    s = Sysctl(root=str(tmp_path))
    assert s.get_int(IP_FORWARD) == 0
    assert s.ensure(IP_FORWARD, 1) is True and s.ensure(IP_FORWARD, 1) is False
    assert (tmp_path / "net" / "ipv4" / "ip_forward").read_text() == "1"
    with pytest.raises(ProxyctlError, match="sysctl net.bridge.bridge-nf-call-iptables does not exist .*br_netfilter"):
        s.get(BRIDGE_NF_CALL_IPTABLES)
    assert key_path("net/ipv4/conf/eth0.100/rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    assert key_path("net.ipv4.conf.all.route_localnet") == "/proc/sys/net/ipv4/conf/all/route_localnet"


def test_prefixes_are_unique_and_recognisable() -> None:
    prefixes = {new_prefix() for _ in range(50)}
    assert len(prefixes) == 50 and all(p.startswith(PREFIX_ROOT) and len(p) <= 9 for p in prefixes)


# --- lab ---------------------------------------------------------------------------------


@pytest.mark.lab
@requires_lab()
def test_three_pods_answer_tcp_and_udp_from_everywhere(netns_factory) -> None:  # noqa: F811
    topo: Topology = netns_factory(pods=3, client=True)  # how fast: bench/bench_lab.py
    assert [p.name for p in topo.pods] == ["pod-a", "pod-b", "pod-c"]
    assert [p.ip for p in topo.pods] == ["10.244.1.10", "10.244.1.11", "10.244.1.12"]
    for pod in topo.pods:
        for source in ("pod-a", "node", "client"):
            assert topo.tcp_request(source, pod.ip, 80) == pod.name
            assert topo.udp_request(source, pod.ip, 53) == pod.name
    # Pods report the client address they saw: no NAT anywhere yet.
    assert topo.tcp_exchange("client", "10.244.1.11", 80).seen_ip == "172.18.0.100"
    assert topo.udp_exchange("pod-a", "10.244.1.12", 53, sport=45678).seen_client == "10.244.1.10:45678"
    assert topo.tcp_exchange("node", "10.244.1.10", 80).seen_ip == "10.244.1.1"
    assert topo.exec("node", ["ip", "-o", "route", "show", "default"]).stdout.startswith("default via 172.18.0.100")


@pytest.mark.lab
@requires_lab()
def test_error_kinds(netns_factory) -> None:  # noqa: F811
    topo: Topology = netns_factory(pods=1)
    assert topo.tcp_request("pod-a", "10.244.1.10", 81) == "refused"
    assert topo.udp_request("node", "10.244.1.10", 54) == "refused"
    assert topo.tcp_request("pod-a", "10.244.1.99", 80, timeout=0.3) in ("timeout", "unreachable")
    assert topo.udp_request("pod-a", "10.244.1.10", 53) == "pod-a"  # a pod reaches itself


@pytest.mark.lab
@requires_lab()
def test_node_sysctls_are_set_in_the_node_only(netns_factory) -> None:  # noqa: F811
    host = Sysctl()
    host_forward = host.get(IP_FORWARD)
    topo: Topology = netns_factory(pods=1)
    node = topo.sysctl("node")
    assert node.get_int(IP_FORWARD) == 1
    assert node.get_int(BRIDGE_NF_CALL_IPTABLES) == 1
    assert node.get_int(ICMP_RATELIMIT) == 0
    assert topo.sysctl("pod-a").get_int(ICMP_RATELIMIT) == 1000
    assert host.get(IP_FORWARD) == host_forward
    out = topo.exec("node", ["ip", "-o", "route", "show", "default"]).stdout
    assert out.startswith("default dev cbr0")
    assert call_in_netns(topo.node, lambda: open("/proc/sys/net/ipv4/ip_forward").read().strip()) == "1"


@pytest.mark.lab
@requires_lab()
def test_everything_is_removed_afterwards() -> None:
    with topology(pods=3, client=True) as topo:
        prefix = topo.prefix
        assert list_netns(prefix) == sorted(topo.namespaces) and len(topo.namespaces) == 5
        sleeper = topo.spawn("node", ["sleep", "60"])
        stray = topo.exec("pod-b", ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"]).stdout.strip()
        assert topo.netns("pod-b") == f"{prefix}-pod-b"
    assert list_netns(prefix) == []
    assert sleeper.poll() is not None
    assert not os.path.exists(f"/proc/{stray}") or _is_zombie_or_other(int(stray))
    with pytest.raises(ValueError):
        topo.netns("some-other-namespace")


def _is_zombie_or_other(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return True
    return " Z " in stat or "sleep" not in stat


@pytest.mark.lab
@requires_lab()
def test_cleanup_runs_when_the_body_raises() -> None:
    prefix = new_prefix()
    with pytest.raises(RuntimeError, match="boom"):
        with topology(pods=2, client=True, prefix=prefix) as topo:
            assert len(list_netns(prefix)) == 4
            topo.spawn("client", ["sleep", "60"])
            raise RuntimeError("boom")
    assert list_netns(prefix) == []


@pytest.mark.lab
@requires_lab()
def test_cleanup_runs_when_the_build_fails_half_way() -> None:
    prefix = new_prefix()
    with pytest.raises(RuntimeError, match="ip netns add"):
        build_topology(pods=["pod-a", "pod-b", "pod-a"], prefix=prefix)  # the second pod-a clashes
    assert list_netns(prefix) == []


@pytest.mark.lab
@requires_lab()
def test_empty_netns_is_clean_and_removed() -> None:
    with empty_netns("x") as name:
        assert list_netns(name) == [name]
        links = SubprocessExecutor(name).run(["ip", "-o", "link"]).stdout.splitlines()
        assert len(links) == 1 and ": lo:" in links[0]
    assert list_netns(name) == []


@pytest.mark.lab
@requires_lab()
def test_custom_ports_and_pod_names(netns_factory) -> None:  # noqa: F811
    topo: Topology = netns_factory(pods=["web-1", "web-2"], tcp_ports=(8080, 9090), udp_ports=())
    assert topo.tcp_request("web-1", topo.pod("web-2").ip, 9090) == "web-2"
    assert topo.tcp_request("web-2", topo.pod("web-1").ip, 8080) == "web-1"
    assert topo.udp_request("web-1", topo.pod("web-2").ip, 53) == "refused"


@pytest.mark.lab
@requires_lab("iptables-nft-restore")
def test_rejects_are_answered_at_once(netns_factory) -> None:  # noqa: F811
    """The node's icmp_ratelimit=0 makes refusals immediate and deterministic."""
    topo: Topology = netns_factory(pods=1, client=True)
    rules = "*filter\n-A FORWARD -d 10.96.0.1/32 -p tcp -j REJECT\nCOMMIT\n"
    IptablesSystem(executor=topo.executor("node"), backend=Backend.NFT).restore(rules)
    sources = ("client", "client", "pod-a", "pod-a", "client")
    before = {source: tcp_retransmissions(topo, source) for source in set(sources)}
    for source in sources:
        assert topo.tcp_request(source, "10.96.0.1", 80, timeout=TIMEOUT) == "refused"
    # At once: every first SYN got its ICMP error back (none was rate-limited away, which
    # would have left the SYN to be sent again a second later).
    assert {source: tcp_retransmissions(topo, source) for source in before} == before


def tcp_retransmissions(topo: Topology, ns: str) -> int:
    """The TCP segments namespace `ns` has sent again (SYNs included): Tcp RetransSegs."""
    header, values = [line.split() for line in topo.exec(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
                      if line.startswith("Tcp:")]
    return int(values[header.index("RetransSegs")])

