"""`run --config`: kube-proxy's KubeProxyConfiguration gives the same rules as the same flags.

The comparisons are `run --dry-run` payloads: a configuration file and the flags it stands for
must program a node identically, and flags given on the command line win over the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from clihelpers import cli

from kubectl_proxyctl.engine import app
from kubectl_proxyctl.engine.kubeproxyconfig import format_go_duration, parse, parse_go_duration

DATA = Path(__file__).resolve().parent / "data"
SMALL = str(DATA / "small-cluster.yaml")
KUBEADM = yaml.safe_load((DATA / "kube-proxy-configmap-kubeadm.yaml").read_text())["data"]["config.conf"]
HEADER = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


def write(tmp_path: Path, text: str, name: str = "config.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def dry_run(capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[str, str]:
    code, out, err = cli(capsys, "run", "--dry-run", "--from-file", SMALL, "--node-name", "node1", *flags)
    assert code == 0, err
    return out, err


def with_kubeadm(**changes: Any) -> str:
    """kubeadm's config.conf with some fields changed (dotted paths)."""
    doc = yaml.safe_load(KUBEADM)
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = doc
        for p in parents:
            target = target[p]
        target[last] = value
    return yaml.safe_dump(doc)


# --- kubeadm's ConfigMap ------------------------------------------------------------------------


def test_kubeadms_config_gives_the_rules_of_its_cluster_cidr_flag(capsys: pytest.CaptureFixture[str],
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   tmp_path: Path) -> None:
    with caplog.at_level(logging.WARNING, logger="kubectl_proxyctl"):
        from_file, _ = dry_run(capsys, "--config", write(tmp_path, KUBEADM))
    # every field at its zero value: nothing unknown, nothing ignored
    assert not [r for r in caplog.records if "config.conf" in r.getMessage()]
    from_flags, _ = dry_run(capsys, "--cluster-cidr", "10.244.0.0/16")
    assert from_file == from_flags
    assert "! -s 10.244.0.0/16" in from_file  # the cluster CIDR really is in use


def test_kubeadms_config_in_nftables_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, with_kubeadm(mode="nftables", nftables__masqueradeAll=True,
                                          iptables__masqueradeAll=False))
    from_file, _ = dry_run(capsys, "--config", config)
    from_flags, _ = dry_run(capsys, "--mode", "nftables", "--cluster-cidr", "10.244.0.0/16", "--masquerade-all")
    assert from_file == from_flags
    assert "table ip kube-proxy" in from_file


def test_every_supported_field_maps_to_its_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, HEADER + """
mode: iptables
clusterCIDR: 10.244.0.0/16,fd00::/48
hostnameOverride: node1
bindAddressHardFail: true
healthzBindAddress: 0.0.0.0
metricsBindAddress: 127.0.0.1:10555
detectLocalMode: InterfaceNamePrefix
detectLocal: {interfaceNamePrefix: veth}
nodePortAddresses: [10.0.0.0/8]
iptables: {masqueradeAll: true, masqueradeBit: 9, localhostNodePorts: false, syncPeriod: 1m, minSyncPeriod: 2s}
""")
    code, out, err = cli(capsys, "run", "--config", config, "--write-config-to", "-")
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert doc["healthzBindAddress"] == "0.0.0.0:10256"  # kube-proxy appends the default port
    assert doc["metricsBindAddress"] == "127.0.0.1:10555"
    assert doc["iptables"] == {"masqueradeAll": True, "masqueradeBit": 9, "localhostNodePorts": False,
                               "syncPeriod": "1m0s", "minSyncPeriod": "2s"}
    assert (doc["bindAddressHardFail"], doc["detectLocalMode"], doc["nodePortAddresses"]) == (
        True, "InterfaceNamePrefix", ["10.0.0.0/8"])
    from_file, _ = dry_run(capsys, "--config", config)
    from_flags, _ = dry_run(capsys, "--cluster-cidr", "10.244.0.0/16,fd00::/48", "--detect-local-mode",
                            "InterfaceNamePrefix", "--pod-interface-name-prefix", "veth", "--masquerade-all",
                            "--masquerade-bit", "9", "--no-localhost-nodeports", "--nodeport-addresses", "10.0.0.0/8")
    assert from_file == from_flags


# --- flags over the file ------------------------------------------------------------------------


def test_flags_on_the_command_line_override_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, with_kubeadm(mode="nftables"))
    overridden, _ = dry_run(capsys, "--config", config, "--proxy-mode", "iptables", "--cluster-cidr", "10.9.0.0/16")
    plain, _ = dry_run(capsys, "--mode", "iptables", "--cluster-cidr", "10.9.0.0/16")
    assert overridden == plain


def test_a_flag_left_at_its_default_does_not_override_the_file(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    """`--mode iptables` is the default value, but given explicitly it still wins; not given, the file wins."""
    config = write(tmp_path, with_kubeadm(mode="nftables"))
    code, out, _ = cli(capsys, "run", "--config", config, "--write-config-to", "-")
    assert yaml.safe_load(out)["mode"] == "nftables"
    code, out, _ = cli(capsys, "run", "--config", config, "--mode", "iptables", "--write-config-to", "-")
    assert yaml.safe_load(out)["mode"] == "iptables"


def test_the_hostname_override_flag_wins_over_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, with_kubeadm(hostnameOverride="from-file"))
    code, out, err = cli(capsys, "run", "--config", config, "--hostname-override", "from-flag",
                         "--write-config-to", "-")
    assert code == 0, err
    assert yaml.safe_load(out)["hostnameOverride"] == "from-flag"


def test_sync_periods_come_from_the_modes_own_section(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, with_kubeadm(mode="ipvs", iptables__syncPeriod="5s", ipvs__syncPeriod="7s",
                                          ipvs__minSyncPeriod="3s", ipvs__scheduler="wrr", ipvs__strictARP=True))
    code, out, err = cli(capsys, "run", "--config", config, "--node-name", "n1", "--write-config-to", "-")
    assert code == 0, err
    ipvs = yaml.safe_load(out)["ipvs"]
    assert ipvs == {"scheduler": "wrr", "strictARP": True, "excludeCIDRs": None, "tcpTimeout": "0s",
                    "tcpFinTimeout": "0s", "udpTimeout": "0s", "syncPeriod": "7s", "minSyncPeriod": "3s"}


def test_written_config_reads_back_to_the_same_rules(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    flags = ["--mode", "nftables", "--cluster-cidr", "10.244.0.0/16", "--masquerade-bit", "10",
             "--nodeport-addresses", "172.18.0.0/24", "--metrics-bind-address", ""]
    written = tmp_path / "written.conf"
    code, _, err = cli(capsys, "run", "--node-name", "node1", *flags, "--write-config-to", str(written))
    assert code == 0, err
    assert yaml.safe_load(written.read_text())["metricsBindAddress"] == "0"  # off, not "the default"
    from_file, _ = dry_run(capsys, "--config", str(written))
    assert from_file == dry_run(capsys, *flags)[0]


# --- what the file may hold ----------------------------------------------------------------------


def test_unknown_fields_are_one_warning_and_unsupported_ones_another(capsys: pytest.CaptureFixture[str],
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      tmp_path: Path) -> None:
    config = write(tmp_path, with_kubeadm(udpIdleTimeout="250ms", iptables__futureKnob=True, oomScoreAdj=-999,
                                          conntrack__maxPerCore=32768))
    with caplog.at_level(logging.WARNING, logger="kubectl_proxyctl"):
        out, _ = dry_run(capsys, "--config", config, "--cluster-cidr", "10.244.0.0/16")
    assert [r.getMessage() for r in caplog.records if "config.conf" in r.getMessage()] == [
        f"{config}: unknown fields ignored: iptables.futureKnob, udpIdleTimeout",
        f"{config}: fields not supported by this proxy, ignored: conntrack.maxPerCore, oomScoreAdj",
    ]
    assert out == dry_run(capsys, "--cluster-cidr", "10.244.0.0/16")[0]


@pytest.mark.parametrize("text,words", [
    ("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n", "want kind KubeProxyConfiguration"),
    (HEADER + "mode: userspace\n", "mode: 'userspace' is not one of"),
    (HEADER + "iptables: {masqueradeBit: 40}\n", "iptables.masqueradeBit: 40 is not in the range 0<=x<=31"),
    (HEADER + "iptables: {syncPeriod: 30}\n", "iptables.syncPeriod: want a duration such as 30s, got 30"),
    (HEADER + "iptables: {syncPeriod: soon}\n", "iptables.syncPeriod: invalid duration 'soon'"),
    (HEADER + "detectLocalMode: Everything\n", "detectLocalMode: 'Everything' is not one of"),
    (HEADER + "clusterCIDR: [10.0.0.0/8]\n", "clusterCIDR: want a string"),
    (HEADER + "ipvs: true\n", "ipvs: want a mapping"),
    (HEADER + "bindAddress: eth0\n", "bindAddress: 'eth0' is not an IP address"),
    ("mode: [\n", "not valid YAML"),
])
def test_a_bad_file_is_one_error_naming_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str,
                                                  words: str) -> None:
    config = write(tmp_path, text)
    code, out, err = cli(capsys, "run", "--dry-run", "--from-file", SMALL, "--node-name", "n1", "--config", config)
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith(f"error: {config}: ") and words in line, line


def test_a_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "run", "--dry-run", "--config", str(tmp_path / "nope.conf"))
    assert code == 2 and "nope.conf" in err and "No such file" in err


def test_the_kubeconfig_of_the_file_is_used_unless_the_flag_is_given(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    config = write(tmp_path, HEADER + "clientConnection: {kubeconfig: /etc/kube-proxy/kubeconfig}\n")
    _, out, _ = cli(capsys, "run", "--config", config, "--node-name", "n1", "--write-config-to", "-")
    assert yaml.safe_load(out)["clientConnection"]["kubeconfig"] == "/etc/kube-proxy/kubeconfig"
    _, out, _ = cli(capsys, "run", "--config", config, "--node-name", "n1", "--kubeconfig", "/other",
                    "--write-config-to", "-")
    assert yaml.safe_load(out)["clientConnection"]["kubeconfig"] == "/other"


def test_nodeport_keywords_become_cidrs() -> None:
    config = parse(HEADER + "nodePortAddresses: [primary, localhost, 10.0.0.0/8]\n", "c")
    assert config.flag_values("iptables")["nodeport_addresses"] == (
        "nodePortAddresses", "primary,127.0.0.0/8,::1/128,10.0.0.0/8")


def test_a_specific_bind_address_is_the_node_ip_and_an_ipv6_one_the_family() -> None:
    values = parse(HEADER + "bindAddress: 'fd00::5'\n", "c").flag_values("iptables")
    assert values["node_ips"] == ("bindAddress", ("fd00::5",)) and values["ip_family"] == ("bindAddress", "IPv6")
    assert parse(HEADER + "bindAddress: 0.0.0.0\n", "c").flag_values("iptables") == {}


@pytest.mark.parametrize("text,seconds", [("0", 0.0), ("0s", 0.0), ("30s", 30.0), ("1m30s", 90.0),
                                          ("2h22m", 8520.0), ("500ms", 0.5), ("1.5h", 5400.0), ("100us", 1e-4)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)
    assert parse_go_duration(format_go_duration(seconds)) == pytest.approx(seconds)


def test_go_duration_format_matches_go() -> None:
    assert [format_go_duration(s) for s in (0, 1, 30, 90, 3600, 0.25)] == ["0s", "1s", "30s", "1m30s", "1h0m0s",
                                                                           "250ms"]


# --- kube-proxy's warning about a missing cluster CIDR ------------------------------------------


def test_no_cluster_cidr_is_one_warning_when_the_engine_starts(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    started: list[str] = []
    monkeypatch.setattr(app, "_require_root", lambda what: None)
    monkeypatch.setattr(app, "once", lambda cluster, flags: started.append("once"))
    flags = {"mode": "iptables", "cleanup": False, "dry_run": False, "once": True, "sync_period": 30.0,
             "min_sync_period": 1.0, "cluster_cidr": "", "node_ips": (), "nodeport_addresses": "",
             "detect_local_mode": "ClusterCIDR", "pod_bridge_interface": "", "pod_interface_name_prefix": "",
             "node_name": "node1", "healthz_bind_address": "", "metrics_bind_address": "", "ip_family": "IPv4",
             "masquerade_all": False, "masquerade_bit": 14, "localhost_nodeports": True,
             "bind_address_hard_fail": False}
    with caplog.at_level(logging.WARNING, logger="kubectl_proxyctl"):
        app.run_engine(None, app.EngineFlags.from_flags(flags, default_node=lambda: "node1"))
    assert started == ["once"]
    (record,) = caplog.records
    assert "no cluster CIDR" in record.getMessage() and "not masqueraded" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kubectl_proxyctl"):
        app.run_engine(None, app.EngineFlags.from_flags({**flags, "cluster_cidr": "10.244.0.0/16"},
                                                        default_node=lambda: "node1"))
    assert caplog.records == []


# --- IPVS exclusions and timeouts ----------------------------------------------------------------


def test_ipvs_exclusions_and_timeouts_map_to_their_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, with_kubeadm(mode="ipvs", ipvs__excludeCIDRs=["192.0.2.0/24", "fd00::/8"],
                                          ipvs__tcpTimeout="15m", ipvs__tcpFinTimeout="2m", ipvs__udpTimeout="0s"))
    flags = ["--mode", "ipvs", "--cluster-cidr", "10.244.0.0/16", "--ipvs-exclude-cidrs", "192.0.2.0/24,fd00::/8",
             "--ipvs-tcp-timeout", "900s", "--ipvs-tcpfin-timeout", "120s"]
    from_file, _ = dry_run(capsys, "--config", config)
    assert from_file == dry_run(capsys, *flags)[0]
    assert from_file.startswith("# ipvsadm -Sn\n--set 900 120 0\n")
    code, out, err = cli(capsys, "run", "--node-name", "node1", *flags, "--write-config-to", "-")
    assert code == 0, err
    ipvs = yaml.safe_load(out)["ipvs"]
    assert (ipvs["excludeCIDRs"], ipvs["tcpTimeout"], ipvs["tcpFinTimeout"], ipvs["udpTimeout"]) == (
        ["192.0.2.0/24", "fd00::/8"], "15m0s", "2m0s", "0s")


@pytest.mark.parametrize("flags,words", [
    (("--ipvs-exclude-cidrs", "10.0.0.0/8,10.1.0.0/33"), "--ipvs-exclude-cidrs: '10.1.0.0/33' is not a CIDR"),
    (("--ipvs-exclude-cidrs", "eth0"), "--ipvs-exclude-cidrs: 'eth0' is not a CIDR"),
    (("--ipvs-udp-timeout", "soon"), "invalid duration 'soon'"),
])
def test_bad_ipvs_flags_are_one_line_usage_errors(capsys: pytest.CaptureFixture[str], flags: tuple[str, ...],
                                                  words: str) -> None:
    code, out, err = cli(capsys, "run", "--dry-run", "--mode", "ipvs", "--from-file", SMALL, "--node-name", "n1",
                         *flags)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and words in err.splitlines()[0], err  # click adds a --help hint line


def test_a_negative_ipvs_timeout_in_the_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write(tmp_path, HEADER + "ipvs: {tcpTimeout: -5s}\n")
    code, _, err = cli(capsys, "run", "--dry-run", "--from-file", SMALL, "--node-name", "n1", "--config", config)
    assert code == 2 and "--ipvs-tcp-timeout must not be negative" in err
