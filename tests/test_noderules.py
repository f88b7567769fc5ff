"""Collecting a node's rules (system.noderules) through scripted executors, and over SSH."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kubectl_proxyctl.cli.inspect import NodeOptions, read_rules
from kubectl_proxyctl.remote.nodeaccess import SSHExecutor
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.remote.ssh import CommandResult
from kubectl_proxyctl.inspect.graph import load_texts
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.system.executor import FakeExecutor, Result
from kubectl_proxyctl.system.noderules import collect

DATA = Path(__file__).parent / "data" / "rules"
NFT_SAVE = (DATA / "six-services.nft-save.txt").read_text()
LEGACY_SAVE = (DATA / "six-services.legacy-save.txt").read_text()
ADDRESSES = ('[{"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "scope": "host"}]},'
             ' {"ifname": "eth0", "addr_info": [{"local": "172.18.0.2", "scope": "global"}]},'
             ' {"ifname": "kube-ipvs0", "addr_info": [{"local": "10.96.0.1", "scope": "global"}]}]')


ROUTES = ('[{"dst": "default", "gateway": "172.18.0.1", "dev": "eth0", "flags": []},'
          ' {"dst": "10.244.1.0/24", "dev": "cbr0", "protocol": "kernel", "scope": "link", "prefsrc": "10.244.1.1"},'
          ' {"dst": "172.18.0.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link", "prefsrc": "172.18.0.2"}]')
ROUTE_SOURCE = "ip -4 -json route show"


def node_with(legacy: str = "", nft_table: str = "", missing: Sequence[str] = (), ipvs: str = "") -> FakeExecutor:
    ex = FakeExecutor(default=None, missing=set(missing))
    ex.script(["iptables-nft-save"], Result(0, NFT_SAVE))
    ex.script(["iptables-legacy-save"], Result(0, legacy))
    ex.script(["iptables", "-V"], Result(0, "iptables v1.8.9 (nf_tables)\n"))
    ex.script(["nft", "-j", "list", "table", "ip", "kube-proxy"],
              Result(0, nft_table) if nft_table else Result(1, "", "Error: No such file or directory"))
    ex.script(["ipvsadm", "-Sn"], Result(0, ipvs) if ipvs else Result(2, "", "Can't initialize ipvs: Protocol not available"))
    ex.script(["ipset", "save"], Result(0, ""))
    ex.script(["ip", "-json", "address", "show"], Result(0, ADDRESSES))
    ex.script(["ip", "-4", "-json", "route", "show"], Result(0, ROUTES))
    ex.script(["test", "-d"], Result(1))  # nothing pinned under eBPF mode's directory
    return ex


def test_a_healthy_iptables_node() -> None:
    ex = node_with()
    found = collect(ex)
    assert [s for s, _ in found.texts] == ["iptables-nft-save", ROUTE_SOURCE]
    assert found.backend_in_use == "nft" and not found.notes
    assert found.addresses == ["172.18.0.2"]  # not loopback, not IPVS's VIPs
    saves = [c.argv for c in ex.calls if c.argv[0].endswith("-save")]
    assert saves == [("iptables-nft-save",), ("iptables-legacy-save",)]  # each once: detection reused them
    graph = load_texts(found.texts, found.notes, found.backend_in_use)
    assert graph.mode == Mode.IPTABLES


def test_both_backends_and_an_nft_table_are_all_collected() -> None:
    found = collect(node_with(legacy=LEGACY_SAVE, nft_table=(DATA / "kube-proxy.nft.json").read_text(),
                              missing=["ipvsadm", "ipset"]))
    assert [s for s, _ in found.texts] == ["iptables-nft-save", "iptables-legacy-save",
                                           "nft -j list table ip kube-proxy", ROUTE_SOURCE]
    assert "both iptables backends hold KUBE- chains" in found.notes[0]
    graph = load_texts(found.texts, found.notes, found.backend_in_use)
    assert set(graph.modes_present()) == {Mode.IPTABLES, Mode.NFTABLES}
    assert [d.backend for d in graph.iptables] == ["nft", "legacy"]


def test_ipv6_tools_and_a_broken_backend_not_in_use() -> None:
    ex = FakeExecutor(default=Result(1, "", "no"))
    ex.script(["ip6tables-nft-save"], Result(0, "*nat\n:KUBE-SVC-X - [0:0]\nCOMMIT\n"))
    assert collect(ex, IPFamily.IPv6).backend_in_use == "nft"
    argvs = [c.argv for c in ex.calls]
    assert ("ip6tables-legacy-save",) in argvs and ("nft", "-j", "list", "table", "ip6", "kube-proxy") in argvs


class FakeSSH:
    def __init__(self, node: FakeExecutor) -> None:
        self.node = node
        self.hosts: list[str] = []

    def run(self, host: str, argv: Sequence[str], timeout: float) -> CommandResult:
        self.hosts.append(host)
        result = self.node.run(argv[2:] if argv[:2] == ["sudo", "-n"] else argv, None, timeout)
        return CommandResult(result.returncode, result.stdout, result.stderr)


def test_over_ssh_with_sudo(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    node = node_with()
    ssh = FakeSSH(node)
    executor = SSHExecutor(ssh, "node1", sudo=True)
    assert executor.run(["iptables-nft-save"]).stdout == NFT_SAVE and ssh.hosts == ["node1"]

    class Client(FakeSSH):
        def __init__(self, _options: object) -> None:
            super().__init__(node_with())

        def __enter__(self) -> "Client":
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

    monkeypatch.setattr("kubectl_proxyctl.remote.ssh.SSHClient", Client)
    graph, addresses = read_rules(NodeOptions(node="node1", sudo=True, via="ssh"))
    assert graph.sources == ("node1 (ssh node1): iptables-nft-save", f"node1 (ssh node1): {ROUTE_SOURCE}")
    assert addresses == ["172.18.0.2"]
    assert graph.routes == (("default", "eth0"), ("10.244.1.0/24", "cbr0"), ("172.18.0.0/24", "eth0"))


def test_an_ipvs_node_also_gives_kube_ipvs0s_addresses() -> None:
    found = collect(node_with(ipvs="-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 172.18.0.2:6443 -m -w 1\n"))
    assert [s for s, _ in found.texts] == ["iptables-nft-save", "ipvsadm -Sn", ROUTE_SOURCE,
                                           "ip -json address show dev kube-ipvs0"]
    graph = load_texts(found.texts, found.notes, found.backend_in_use)
    assert graph.links == {"kube-ipvs0": ("10.96.0.1",)}
    assert load_texts(collect(node_with()).texts).links is None  # no IPVS: not collected
