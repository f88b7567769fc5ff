"""The lab's names and command lines, without a kernel: modes, cgroups, pins, the engines'
argv and how adoption reads it, placing pod processes in their node's cgroup, and what
`lab down` removes of cgroups and pins (on plain directories standing in for them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.lab import spec as spec_module
from kubectl_proxyctl.lab import supervisor
from kubectl_proxyctl.lab.dataplane import podexec, topology
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.lab.supervisor import ManagedProcess, engine_argv, strip_netns
from kubectl_proxyctl.system import cgroups

CGROUP_ROOT = "/sys/fs/cgroup/unified"


@pytest.fixture
def cgroup_root(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cgroups, "cgroup2_root", lambda: CGROUP_ROOT)
    return CGROUP_ROOT


def test_the_lab_runs_four_modes_and_names_another_in_one_line() -> None:
    assert LabSpec.build(mode="ebpf").mode == "ebpf"
    assert LabSpec.build(mode="ipvs").mode == "ipvs"
    with pytest.raises(ConfigError) as refused:
        LabSpec.build(mode="userspace")
    assert str(refused.value) == "--mode 'userspace': the lab runs iptables, nftables, ebpf or ipvs"


def test_check_mode_ipvs_points_to_the_vm_where_the_kernel_lacks_ip_vs(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubectl_proxyctl.system import ipvs

    monkeypatch.setattr(ipvs, "ensure_module", lambda name="ip_vs": "kernel module ip_vs is not loaded and cannot "
                        "be loaded (modprobe: FATAL: Module ip_vs not found)")
    monkeypatch.setattr(supervisor, "check_ebpf", lambda: None)
    with pytest.raises(ConfigError) as refused:
        supervisor.check_mode("ipvs")
    message = str(refused.value)
    assert message.startswith("--mode ipvs: this kernel cannot run IPVS engines: kernel module ip_vs")
    assert "scripts/demo --mode ipvs" in message and "\n" not in message
    monkeypatch.setattr(ipvs, "ensure_module", lambda name="ip_vs": "")
    monkeypatch.setattr(ipvs, "ensure_dummy", lambda: "kernel module dummy (the kube-ipvs0 interface) is not loaded")
    with pytest.raises(ConfigError, match="kernel module dummy"):
        supervisor.check_mode("ipvs")


def test_cgroups_and_pins_are_named_from_the_lab_and_the_node() -> None:
    spec = LabSpec.build("demo", nodes=2, mode="ebpf")
    assert spec.cgroup == "proxyctl-demo"
    assert spec.node_cgroup(spec.nodes[1]) == spec.node_cgroup("node2") == "proxyctl-demo/node2"
    assert spec.node_pin_path("node1") == "/sys/fs/bpf/proxyctl-demo-node1"
    assert spec.pin_prefix == "/sys/fs/bpf/proxyctl-demo-"
    assert not "/sys/fs/bpf/proxyctl".startswith(spec.pin_prefix)  # the engine's default pin path is not ours


def test_an_ebpf_engine_enters_its_node_with_nsenter_and_gets_its_cgroup_and_pins(cgroup_root: str) -> None:
    spec = LabSpec.build("demo", nodes=2, mode="ebpf", state_root="/tmp/labs")
    argv = engine_argv(spec, spec.nodes[1])
    assert argv[:3] == ["nsenter", "--net=/run/netns/demo-node2", "--"]
    words = argv[3:]
    assert words[words.index("--mode") + 1] == "ebpf"
    assert words[words.index("--node-name") + 1] == "node2"
    assert words[words.index("--cgroup-path") + 1] == f"{cgroup_root}/proxyctl-demo/node2"
    assert words[words.index("--bpf-pin-path") + 1] == "/sys/fs/bpf/proxyctl-demo-node2"
    assert words[words.index("--kubeconfig") + 1] == "/tmp/labs/demo/kubeconfig-nodes"


@pytest.mark.parametrize("mode", ["nftables", "ipvs"])
def test_other_modes_keep_ip_netns_exec_and_get_no_cgroup(cgroup_root: str, mode: str) -> None:
    spec = LabSpec.build("demo", nodes=1, mode=mode)
    argv = engine_argv(spec, spec.nodes[0])
    assert argv[:4] == ["ip", "netns", "exec", "demo-node1"]
    assert argv[argv.index("--mode") + 1] == mode
    assert "--cgroup-path" not in argv and "--bpf-pin-path" not in argv


def test_adoption_reads_the_command_behind_either_prefix() -> None:
    words = ["/usr/bin/kubectl-proxyctl", "run", "--node-name", "node1"]
    assert strip_netns(["ip", "netns", "exec", "lab-node1", *words]) == words
    assert strip_netns(["nsenter", "--net=/run/netns/lab-node1", "--", *words]) == words
    assert strip_netns(words) == words
    assert strip_netns(["nsenter", "--mount=/x", "--", *words])[:1] == ["nsenter"]  # not a network namespace
    proc = ManagedProcess("engine-node1", ["nsenter", "--net=/run/netns/lab-node1", "--", *words],
                          Path("/dev/null"), Path("/nonexistent/engine-node1.json"))
    assert proc.words == words


def test_check_mode_ebpf_names_what_the_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubectl_proxyctl.system import bpf, executor
    from kubectl_proxyctl.system.nftables import NftSystem

    monkeypatch.setattr(NftSystem, "check_available", lambda self: None)
    monkeypatch.setattr(executor, "require_binary", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(cgroups, "cgroup2_root", lambda: None)
    with pytest.raises(ConfigError) as no_cgroup2:
        supervisor.check_mode("ebpf")
    assert "cgroup v2" in str(no_cgroup2.value) and "\n" not in str(no_cgroup2.value)

    monkeypatch.setattr(cgroups, "cgroup2_root", lambda: CGROUP_ROOT)
    monkeypatch.setattr(bpf, "bpffs_root", lambda: "/sys/fs/bpf")

    def refuse(_spec: Any) -> Any:
        raise bpf.BpfError("bpf(BPF_MAP_CREATE pxc_probe): EPERM (need CAP_BPF/root)")

    monkeypatch.setattr(bpf.BpfMap, "create", staticmethod(refuse))
    with pytest.raises(ConfigError) as refused:
        supervisor.check_mode("ebpf")
    assert str(refused.value) == ("--mode ebpf: this machine refuses BPF: "
                                  "bpf(BPF_MAP_CREATE pxc_probe): EPERM (need CAP_BPF/root)")
    supervisor.check_mode("iptables")  # the other modes ask for none of it


def test_check_mode_ebpf_needs_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubectl_proxyctl.errors import ProxyctlError
    from kubectl_proxyctl.system.nftables import NftSystem

    def missing(self: Any) -> None:
        raise ConfigError("nft not found: install nftables")

    monkeypatch.setattr(NftSystem, "check_available", missing)
    with pytest.raises(ProxyctlError, match="^nft not found: install nftables$"):
        supervisor.check_mode("ebpf")


def test_a_command_in_a_pod_joins_its_nodes_cgroup_and_one_on_a_node_does_not(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cgroups, "cgroup2_root", lambda: str(tmp_path))
    spec = LabSpec.build("demo", nodes=2)
    pod = {"metadata": {"name": "web-1", "namespace": "default"}, "spec": {"nodeName": "node2"}}
    join = podexec.pod_preexec(spec, pod)
    assert join is not None
    procs = tmp_path / "proxyctl-demo" / "node2" / "cgroup.procs"
    assert procs.parent.is_dir()  # made when missing (the kernel fills a real one with its files)
    procs.write_text("")
    join()
    assert procs.read_text() == "0"  # "the writing process", as the kernel reads it
    host = {"metadata": {"name": "proxyctl-node1", "namespace": "kube-system"},
            "spec": {"nodeName": "node1", "hostNetwork": True}}
    assert podexec.pod_preexec(spec, host) is None
    monkeypatch.setattr(cgroups, "cgroup2_root", lambda: None)
    assert topology.pod_preexec(spec, "node1") is None  # no cgroup v2: pods run where they are


def test_joining_a_missing_cgroup_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(cgroups.CgroupError, match=f"^cgroup {tmp_path}/gone does not exist$"):
        cgroups.require(str(tmp_path / "gone"))


def test_remove_tree_removes_the_deepest_cgroups_first(tmp_path: Path) -> None:
    top = tmp_path / "proxyctl-demo"
    for node in ("node1", "node2"):
        (top / node).mkdir(parents=True)
    removed, killed = cgroups.remove_tree(str(top))
    assert removed == [str(top / "node1"), str(top / "node2"), str(top)] or \
        removed == [str(top / "node2"), str(top / "node1"), str(top)]
    assert killed == 0 and not top.exists()
    assert cgroups.remove_tree(str(top)) == ([], 0)


def test_down_unpins_the_labs_pin_directories_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(spec_module, "BPFFS", str(tmp_path))
    spec = LabSpec.build("demo", nodes=1)
    ours = [tmp_path / "proxyctl-demo-node1", tmp_path / "proxyctl-demo-node7"]  # node7: a bigger lab's crash
    for pin in ours:
        (pin / "links").mkdir(parents=True)
        (pin / "services4").write_text("")
        (pin / "links" / "pxc_connect4").write_text("")
    others = [tmp_path / "proxyctl", tmp_path / "proxyctl-demo2-node1", tmp_path / "proxyctl-demo-extra"]
    for other in others:
        other.mkdir()
    assert topology.pin_dirs(spec) == [str(p) for p in ours]
    assert topology.remove_pins(spec) == [str(p) for p in ours]
    assert not any(p.exists() for p in ours)
    assert all(p.is_dir() for p in others)
    assert topology.remove_pins(spec) == []


def test_the_mode_choice_of_lab_up_lists_every_mode() -> None:
    from click.testing import CliRunner

    from kubectl_proxyctl.cli.main import cli

    shown = CliRunner().invoke(cli, ["lab", "up", "--help"])
    assert shown.exit_code == 0, shown.output
    assert "[iptables|nftables|ebpf|ipvs]" in "".join(shown.output.split()), shown.output
