"""What a real kernel printed for a node running `run --mode ipvs` (tests/data/ipvs-vm/, saved
by tests/vm/regenerate-data from the VM suite, with the suite's objects in objects.json), read
back by the inspector: the tools' own output must parse, be recognised as IPVS mode, trace to
the pods the suite served, and verify against the objects (seeded drift found)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from clihelpers import cli

from kubectl_proxyctl.inspect.graph import load_texts
from kubectl_proxyctl.inspect.paths import trace_packet
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, Verdict

DATA = Path(__file__).parent / "data" / "ipvs-vm"
PODS = {"10.244.1.10:8080", "10.244.1.11:8080", "10.244.1.12:8080"}


def graph():  # type: ignore[no-untyped-def]
    return load_texts([(n, (DATA / n).read_text()) for n in ("ipvsadm-save.txt", "ipset-save.txt",
                                                              "iptables-save.txt")])


def test_the_captures_are_ipvs_mode_and_trace_to_the_pods() -> None:
    g = graph()
    assert g.mode == Mode.IPVS
    node = LocalNode(("172.18.0.2",))
    r = trace_packet(g, Mode.IPVS, Packet("172.18.0.100", "10.96.0.10", 80, "tcp", "external"), node)
    assert r.verdict == Verdict.DNAT and {e.destination for e in r.endpoints} == PODS
    local = trace_packet(g, Mode.IPVS, Packet("172.18.0.100", "172.18.0.2", 30081, "tcp", "external"), node)
    assert {e.destination for e in local.endpoints} == {"10.244.1.12:8080"}


def test_the_list_form_parses_too() -> None:
    g = load_texts([(n, (DATA / n).read_text()) for n in ("ipvsadm-list.txt", "ipset-save.txt", "iptables-save.txt")])
    assert g.mode == Mode.IPVS
    assert len(g.ipvs_services()) >= 4


CAPTURED = ["--rules-file", str(DATA / "ipvsadm-save.txt"), "--rules-file", str(DATA / "ipset-save.txt"),
            "--rules-file", str(DATA / "iptables-save.txt"), "--from-file", str(DATA / "objects.json"),
            "--node-name", "node1", "--node-ip", "172.18.0.2", "--node-ip", "10.244.1.1", "-o", "json"]


def verify_captured(capsys: pytest.CaptureFixture[str], tmp_path: Path, edit: Any = None) -> tuple[int, list[Any]]:
    args = list(CAPTURED)
    if edit is not None:
        name, old, new = edit
        text = (DATA / name).read_text()
        assert old in text, old
        seeded = tmp_path / name
        seeded.write_text(text.replace(old, new, 1))
        args[args.index(str(DATA / name))] = str(seeded)
    code, out, err = cli(capsys, "verify", *args)
    assert err == "", err
    return code, [(f["kind"], f["message"]) for f in json.loads(out)["findings"]]


def test_verify_on_the_real_kernels_state_finds_only_the_foreign_virtual_server(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, findings = verify_captured(capsys, tmp_path)
    assert code == 1 and findings == [("stale-service", "IPVS virtual service TCP 192.0.2.50:80 belongs to no "
                                       "Service port of the API (another program's, or stale)")]


def test_verify_finds_a_deleted_real_server_and_a_missing_ipset_member(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, findings = verify_captured(capsys, tmp_path, ("ipvsadm-save.txt", "-a -t 10.96.0.10:80 -r 10.244.1.11:8080 -m -w 1\n", ""))
    assert ("missing-endpoint", "e2e/web:http: TCP 10.96.0.10:80 has no real server 10.244.1.11:8080 (or its "
            "weight is 0)") in findings
    _, findings = verify_captured(capsys, tmp_path, ("ipset-save.txt", "add KUBE-CLUSTER-IP 10.96.0.20,tcp:80\n", ""))
    assert ("missing-set-member", "e2e/sticky: ipset KUBE-CLUSTER-IP lacks 10.96.0.20,tcp:80") in findings
    _, findings = verify_captured(capsys, tmp_path, ("ipvsadm-save.txt", "-A -t 10.96.0.20:80 -s rr -p 600", "-A -t 10.96.0.20:80 -s rr"))
    assert ("wrong-affinity", "e2e/sticky:http: TCP 10.96.0.20:80 has no persistence, the Service asks for ClientIP "
            "affinity of 600 s") in findings


def test_explain_names_what_ipvs_users_trip_over(capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in CAPTURED if a not in ("-o", "json")]
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "e2e", *args)
    assert code == 0
    assert re.search(r"pod +→ cluster IP 10\.96\.0\.10:80 +→ 1 of 3 endpoints, 33\.3 % each, no SNAT", out), out
    assert "KUBE-LOOP-BACK" in out and "kube-ipvs0" in out and "answers ping" in out and "br_netfilter" in out


def test_explain_without_the_iptables_rules_says_the_input_is_incomplete(capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in CAPTURED if a not in ("-o", "json")]
    at = args.index(str(DATA / "iptables-save.txt"))
    del args[at - 1:at + 1]  # --rules-file iptables-save.txt
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "e2e", *args)
    assert "goes on unchanged" not in out
    assert "cannot tell: IPVS mode's iptables rules are not in the input" in out
    assert "error: incomplete input: IPVS virtual servers without kube-proxy's iptables rules" in out


def test_verify_finds_a_service_address_missing_from_kube_ipvs0(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    def links(addresses: list[str]) -> str:
        return json.dumps([{"ifindex": 3, "ifname": "kube-ipvs0", "flags": ["BROADCAST", "NOARP"],
                            "addr_info": [{"family": "inet", "local": ip, "prefixlen": 32, "scope": "global"}
                                          for ip in addresses]}])

    bound = ["10.96.0.10", "10.96.0.20", "10.96.0.30", "10.96.0.40"]
    path = tmp_path / "links.json"
    path.write_text(links(bound))
    code, out, _ = cli(capsys, "verify", *CAPTURED, "--rules-file", str(path))
    assert [f["kind"] for f in json.loads(out)["findings"]] == ["stale-service"]  # the foreign one only
    path.write_text(links([ip for ip in bound if ip != "10.96.0.20"]))
    code, out, _ = cli(capsys, "verify", *CAPTURED, "--rules-file", str(path))
    findings = [(f["kind"], f["message"]) for f in json.loads(out)["findings"]]
    assert code == 1 and ("missing-address", "e2e/sticky: 10.96.0.20 is not on kube-ipvs0: the node does not take "
                          "connections to it, so IPVS never sees them") in findings
    path.write_text("[]")
    code, out, _ = cli(capsys, "verify", *CAPTURED, "--rules-file", str(path))
    assert "missing-link" in {f["kind"] for f in json.loads(out)["findings"]}


def test_node_ports_on_a_pod_bridge_address_are_ours_when_the_node_lists_its_addresses(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """kube-proxy's IPVS mode (and ours) makes NodePort virtual servers on every local address
    but kube-ipvs0's, the pod bridge's included: with the node's `ip -json address` output,
    verify knows them without being told `--node-ip` for each."""
    links = [{"ifindex": i, "ifname": name, "addr_info": [{"family": "inet", "local": ip, "prefixlen": 32}]}
             for i, (name, ip) in enumerate((("lo", "127.0.0.1"), ("eth0", "172.18.0.2"), ("cbr0", "10.244.1.1")))]
    links.append({"ifindex": 9, "ifname": "kube-ipvs0", "addr_info": [
        {"family": "inet", "local": ip, "prefixlen": 32} for ip in ("10.96.0.10", "10.96.0.20", "10.96.0.30", "10.96.0.40")]})
    path = tmp_path / "links.json"
    path.write_text(json.dumps(links))
    args = CAPTURED[:CAPTURED.index("--node-ip")] + ["-o", "json", "--rules-file", str(path)]
    code, out, _ = cli(capsys, "verify", *args)
    assert [f["message"] for f in json.loads(out)["findings"]] == [
        "IPVS virtual service TCP 192.0.2.50:80 belongs to no Service port of the API (another program's, or stale)"]
    path.write_text(json.dumps([link for link in links if link["ifname"] != "cbr0"]))
    code, out, _ = cli(capsys, "verify", *args)
    assert "IPVS virtual service TCP 10.244.1.1:30080 belongs to no Service port" in out
