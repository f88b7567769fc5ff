"""`dump`, `explain` and `verify` through the CLI, with --rules-file and --from-file.

The rules are real tool output (see test_rules_parse.py); drift is seeded by editing a copy
of a healthy dump, or the API objects, the way it happens on nodes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clihelpers import cli


DATA = Path(__file__).parent / "data" / "rules"
SMALL = str(Path(__file__).parent / "data" / "small-cluster.yaml")
SIX_OBJECTS = str(Path(__file__).parent / "golden" / "upstream-six-services" / "objects.yaml")
NFT_SAVE = str(DATA / "six-services.nft-save.txt")
LEGACY_SAVE = str(DATA / "six-services.legacy-save.txt")
NFT_JSON = str(DATA / "kube-proxy.nft.json")
NODE = ["--node-name", "test-node", "--node-ip", "192.168.0.2"]


def explain_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "explain", *args, "-o", "json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def paths(doc: dict[str, Any], kind: str, client: str) -> list[dict[str, Any]]:
    return [p for port in doc["ports"] for e in port["entries"] if e["kind"] == kind
            for p in e["paths"] if p["client"] == client]


# --- dump ---------------------------------------------------------------------------------------


def test_dump_one_service_annotated(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "dump", "svc/svc4", "-n", "ns4", "--rules-file", NFT_SAVE)
    assert code == 0
    assert "-A KUBE-SEP-UKSFD7AGPMPPLUHC -p tcp -m comment --comment \"ns4/svc4:p80\" -m tcp -j DNAT " \
           "--to-destination 10.180.0.4:80  # ns4/svc4:p80 → 10.180.0.4:80" in out
    assert ":KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]  # ns4/svc4:p80" in out
    assert "svc1" not in out


def test_dump_raw_is_restorable_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "dump", "svc/svc4", "-n", "ns4", "--rules-file", LEGACY_SAVE, "-o", "raw")
    assert code == 0
    assert out.startswith("*nat\n:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]\n") and out.endswith("COMMIT\n")
    assert "#" not in out
    saved = Path(LEGACY_SAVE).read_text().splitlines()
    assert all(line in saved for line in out.splitlines() if line.startswith("-A "))


def test_dump_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "dump", "--rules-file", NFT_SAVE, "-o", "table")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TABLE", "CHAIN", "SERVICE", "ENDPOINT", "RULE"]
    row = next(ln for ln in lines if "KUBE-SEP-SXIVWICOYRO3J4NJ" in ln and "DNAT" in ln)
    assert row.split()[:4] == ["nat", "KUBE-SEP-SXIVWICOYRO3J4NJ", "ns1/svc1:p80", "10.180.0.1:80"]
    code, out, _ = cli(capsys, "dump", "svc/svc6", "-n", "ns6", "--rules-file", NFT_SAVE, "-o", "json")
    records = json.loads(out)
    assert [r["chain"] for r in records] == ["KUBE-SERVICES"]
    assert records[0]["table"] == "filter" and records[0]["service"] == "ns6/svc6:p80"


def test_dump_nft_and_ipvs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "dump", "svc/svc1", "-n", "ns1", "--rules-file", NFT_JSON, "-o", "raw")
    assert code == 0
    assert "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }" \
        in out
    assert "add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to " \
        "10.180.0.1:80" in out
    code, out, _ = cli(capsys, "dump", "svc/svc3", "-n", "ns3", "--rules-file", str(DATA / "ipvsadm-save.txt"),
                       "--from-file", str(DATA / "ipvs-cluster.yaml"), "-o", "table")
    assert code == 0
    assert [ln.split()[:5] for ln in out.splitlines()[1:]] == [
        ["ipvs", "TCP", "172.30.0.43:80", "ns3/svc3:p80", "<none>"],
        ["ipvs", "TCP", "172.30.0.43:80", "ns3/svc3:p80", "10.180.0.3:80"],
        ["ipvs", "TCP", "192.168.0.2:3003", "ns3/svc3:p80", "<none>"],
        ["ipvs", "TCP", "192.168.0.2:3003", "ns3/svc3:p80", "10.180.0.3:80"]]


def test_dump_unknown_service(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "dump", "svc/nope", "--rules-file", NFT_SAVE)
    assert code == 1 and "no rules for default/nope" in err


# --- explain ------------------------------------------------------------------------------------


def test_explain_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain_json(capsys, "svc/svc4", "-n", "ns4", "--rules-file", NFT_SAVE, "--from-file", SIX_OBJECTS, *NODE)
    assert set(doc) >= {"service", "node", "backend", "ports", "problems"}
    assert (doc["service"], doc["node"], doc["backend"]) == ("ns4/svc4", "test-node", "iptables")
    port = doc["ports"][0]
    assert (port["name"], port["protocol"]) == ("p80", "TCP")
    entry = port["entries"][0]
    assert (entry["kind"], entry["address"], entry["port"]) == ("ClusterIP", "172.30.0.44", 80)
    path = entry["paths"][0]
    assert set(path) >= {"client", "source", "verdict", "masquerade", "affinity_seconds", "endpoints", "rules"}
    assert (path["client"], path["verdict"], path["masquerade"], path["affinity_seconds"]) == ("pod", "DNAT", False, None)
    assert path["endpoints"] == [
        {"ip": "10.180.0.4", "port": 80, "probability": 0.5, "masquerade": False, "dnat_by": "kube-proxy"},
        {"ip": "10.180.0.5", "port": 80, "probability": 0.5, "masquerade": False, "dnat_by": "kube-proxy"}]
    assert (path["depends_on"], path["settled"], doc["findings"]) == ([], [], [])
    assert path["rules"][1].startswith("-A KUBE-SERVICES -d 172.30.0.44/32")
    assert path["sentence"] == "pod → 172.30.0.44:80 → 1 of 2 endpoints, 50.0 % each, no SNAT"
    assert [e["kind"] for e in port["entries"]] == ["ClusterIP", "ExternalIP"]
    assert port["desired"]["cluster_endpoints"] == ["10.180.0.4:80", "10.180.0.5:80"]
    assert not [p for p in doc["problems"] if p["message"].startswith("drift")]


def test_explain_names_the_traps(capsys: pytest.CaptureFixture[str]) -> None:
    rejected = explain_json(capsys, "svc/svc6", "-n", "ns6", "--rules-file", NFT_SAVE, *NODE)
    assert {p["verdict"] for p in paths(rejected, "ClusterIP", "pod")} == {"REJECT"}
    assert any(p["severity"] == "error" and "has no endpoints" in p["message"] for p in rejected["problems"])

    local = explain_json(capsys, "svc/svc2", "-n", "ns2", "--rules-file", NFT_SAVE, "--from-file", SIX_OBJECTS, *NODE)
    assert [p["verdict"] for p in paths(local, "NodePort", "external")] == ["DROP"]
    assert [p["verdict"] for p in paths(local, "NodePort", "pod")] == ["DNAT"]
    assert any("externalTrafficPolicy Local" in p["message"] for p in local["problems"])

    ranges = explain_json(capsys, "svc/svc5", "-n", "ns5", "--rules-file", NFT_SAVE, "--from-file", SIX_OBJECTS, *NODE)
    outside = paths(ranges, "LoadBalancer", "external")
    assert [(p["source"], p["verdict"]) for p in outside] == [("203.0.113.1", "DNAT"), ("198.51.100.200", "DROP")]
    assert outside[0]["affinity_seconds"] == 10800 and outside[0]["masquerade"] is True
    messages = " ".join(p["message"] for p in ranges["problems"])
    assert "loadBalancerSourceRanges" in messages and "sessionAffinity ClientIP" in messages


def test_explain_from_rules_alone(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["explain", "svc2", "-n", "ns2", "--rules-file", LEGACY_SAVE, "--node-ip", "192.168.0.2",
            "--client", "external", "--port", "p80"]
    code, out, _ = cli(capsys, *args)
    assert code == 0
    assert out.startswith("Service ns2/svc2: LoadBalancer, port p80 80/TCP (node port 3001); node <unknown>, "
                          "iptables rules from ")
    assert "  external → cluster IP 172.30.0.42:80 → endpoint 10.180.0.2:80, SNAT to the node\n" in out
    assert "  external → external IP 192.168.99.22:80, load-balancer IP 1.2.3.4:80, node port 192.168.0.2:3001 → " \
           "DROP (the connection times out)\n" in out
    assert "pod" not in out.replace("pods", "") and "-A KUBE-" not in out  # the rules only with --rules
    code, out, _ = cli(capsys, *args, "--rules")
    assert code == 0
    walk = out[out.index("Rule walk, port p80 80/TCP:"):]
    assert "  external from 203.0.113.10 → load-balancer IP 1.2.3.4:80 → DROP (the connection times out)\n" \
           "    -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n" in walk
    assert "    -A KUBE-EXTERNAL-SERVICES -d 1.2.3.4/32 -p tcp -m comment --comment \"ns2/svc2:p80 has no local " \
           "endpoints\" -m tcp --dport 80 -j DROP" in walk


def test_explain_source_and_dot(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain_json(capsys, "svc/svc1", "-n", "ns1", "--rules-file", NFT_SAVE, "--client", "pod",
                       "--source", "10.180.0.1")
    (path,) = paths(doc, "ClusterIP", "pod")
    assert path["source"] == "10.180.0.1" and path["masquerade"] is True  # hairpin
    code, out, _ = cli(capsys, "explain", "svc/svc4", "-n", "ns4", "--rules-file", NFT_SAVE, "-o", "dot")
    assert code == 0 and out.startswith('digraph "ns4/svc4" {')
    assert '"KUBE-SVC-4SW47YFZTEDKD3PK" -> "KUBE-SEP-UKSFD7AGPMPPLUHC" [label="50.0 %"];' in out
    assert '"KUBE-SEP-UKSFD7AGPMPPLUHC" -> "10.180.0.4:80" [label="DNAT"];' in out


def test_explain_nftables_and_ipvs(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain_json(capsys, "svc/svc1", "-n", "ns1", "--rules-file", NFT_JSON, "--client", "pod")
    assert doc["backend"] == "nftables"
    assert [e["probability"] for e in paths(doc, "ClusterIP", "pod")[0]["endpoints"]] == [0.5, 0.5]
    assert paths(doc, "ClusterIP", "pod")[0]["rules"][:2] == [
        "add rule ip kube-proxy nat-prerouting jump services",
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips"]
    ipvs_files = ["--rules-file", str(DATA / "ipvs-node.iptables-ipset.txt"), "--rules-file",
                  str(DATA / "ipvsadm-save.txt")]
    code, out, _ = cli(capsys, "explain", "svc/svc1", "-n", "ns1", *ipvs_files, "-o", "json")
    nameless = json.loads(out)
    assert code == 1
    assert nameless["ports"] == [] and "carry no service names" in nameless["problems"][0]["message"]
    doc = explain_json(capsys, "svc/svc3", "-n", "ns3", *ipvs_files, "--from-file", str(DATA / "ipvs-cluster.yaml"),
                       *NODE)
    assert doc["backend"] == "ipvs"
    assert [(p["verdict"], p["masquerade"]) for p in paths(doc, "NodePort", "external")] == [("DNAT", True)]


@pytest.mark.parametrize("args,code,message", [
    (["explain", "svc/svc1", "--rules-file", "/nonexistent"], 2, "cannot read /nonexistent"),
    (["explain", "svc/svc1", "--rules-file", NFT_SAVE, "--source", "pod-a"], 2, "is not an IP address"),
    (["explain", "svc/svc1", "--rules-file", NFT_SAVE, "-A"], 2, "No such option '-A'"),
    (["explain", "svc/svc1", "--rules-file", NFT_SAVE, "--node", "x"], 2, "exclude each other"),
    (["verify", "--rules-file", NFT_SAVE, "--from-file", SIX_OBJECTS], 2, "pass --node-name"),
    (["dump", "--rules-file", SIX_OBJECTS], 2, "cannot tell what this is"),
])
def test_bad_input(capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str) -> None:
    got, out, err = cli(capsys, *args)
    assert got == code, err
    assert message in err and "Traceback" not in err + out


def test_explain_with_a_rules_file_never_loads_the_api_client() -> None:
    code = (
        "import sys, io, contextlib\n"
        "from kubectl_proxyctl.cli.main import run\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = run(['explain', 'svc/svc4', '-n', 'ns4', '--rules-file', {NFT_SAVE!r}, '-o', 'json'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3', 'paramiko'))\n"
        "print(rc, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "0 []", done.stderr


# --- verify -------------------------------------------------------------------------------------


def verify_json(capsys: pytest.CaptureFixture[str], *args: str, objects: str = SIX_OBJECTS) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(capsys, "verify", *args, "--from-file", objects, *NODE, "-o", "json")
    assert code in (0, 1), err
    return code, json.loads(out)


def kinds(doc: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(f["kind"], f["service"]) for f in doc["findings"]}


@pytest.mark.parametrize("files,objects", [
    ([NFT_SAVE], SIX_OBJECTS),
    ([LEGACY_SAVE], SIX_OBJECTS),
    ([NFT_JSON], str(DATA / "nft-cluster.yaml")),
    ([str(DATA / "ipvs-node.iptables-ipset.txt"), str(DATA / "ipvsadm-save.txt")], str(DATA / "ipvs-cluster.yaml")),
])
def test_a_healthy_node_is_in_sync(capsys: pytest.CaptureFixture[str], files: list[str], objects: str) -> None:
    args = [a for f in files for a in ("--rules-file", f)]
    code, doc = verify_json(capsys, *args, objects=objects)
    assert (code, doc["findings"], doc["in_sync"]) == (0, [], True)
    code, out, _ = cli(capsys, "verify", *args, "--from-file", objects, *NODE)
    assert code == 0 and out.startswith("In sync: ")


def seeded(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SAVE_TEXT = Path(NFT_SAVE).read_text()


def test_a_deleted_sep_chain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = re.sub(r"^(:KUBE-SEP-UKSFD7AGPMPPLUHC|-A KUBE-SEP-UKSFD7AGPMPPLUHC|.*-j KUBE-SEP-UKSFD7AGPMPPLUHC$).*\n", "",
                  SAVE_TEXT, flags=re.M)
    code, doc = verify_json(capsys, "--rules-file", seeded(tmp_path, "sep.txt", text))
    assert code == 1
    assert kinds(doc) == {("missing-endpoint", "ns4/svc4")}
    assert "10.180.0.4:80" in doc["findings"][0]["message"]


def test_an_extra_endpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = Path(SIX_OBJECTS).read_text().replace("- addresses:\n  - 10.180.0.5\n", "- addresses:\n  - 10.180.0.4\n")
    assert objects != Path(SIX_OBJECTS).read_text()
    code, doc = verify_json(capsys, "--rules-file", NFT_SAVE, objects=seeded(tmp_path, "objects.yaml", objects))
    assert code == 1
    assert ("extra-endpoint", "ns4/svc4") in kinds(doc) and ("stale-chain", "ns4/svc4") in kinds(doc)
    extra = next(f for f in doc["findings"] if f["kind"] == "extra-endpoint")
    assert "50.0 % of new connections to 10.180.0.5:80" in extra["message"]


def test_wrong_odds(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = SAVE_TEXT.replace("--probability 0.50000000000", "--probability 0.90000000000")
    code, doc = verify_json(capsys, "--rules-file", seeded(tmp_path, "odds.txt", text))
    assert code == 1 and kinds(doc) == {("wrong-odds", "ns4/svc4")}
    assert "10.180.0.4:80 90.0 % (want 50.0 %)" in doc["findings"][0]["message"]


def test_a_flushed_kube_services(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nat = SAVE_TEXT.index("*nat")
    text = SAVE_TEXT[:nat] + re.sub(r"^-A KUBE-SERVICES .*\n", "", SAVE_TEXT[nat:], flags=re.M)
    code, doc = verify_json(capsys, "--rules-file", seeded(tmp_path, "flushed.txt", text))
    assert code == 1
    assert ("flushed", None) in kinds(doc)
    differ = {f["service"] for f in doc["findings"] if f["kind"] == "rules-differ" and f["service"]}
    assert differ == {"ns1/svc1", "ns2/svc2", "ns3/svc3", "ns4/svc4", "ns5/svc5"}
    code, out, _ = cli(capsys, "verify", "--rules-file", str(tmp_path / "flushed.txt"), "--from-file", SIX_OBJECTS, *NODE)
    assert code == 1 and "ERROR [flushed] nat KUBE-SERVICES is empty" in out
    assert "    missing: -A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\"" in out


def test_leftovers_of_other_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = verify_json(capsys, "--rules-file", NFT_SAVE, "--rules-file", NFT_JSON, "--rules-file",
                            str(DATA / "ipvsadm-save.txt"), "--proxy-mode", "iptables")
    assert code == 1
    messages = [f["message"] for f in doc["findings"] if f["kind"] == "other-mode"]
    assert len(messages) == 2
    assert any("nftables mode" in m and "table ip kube-proxy" in m for m in messages)
    assert any("ipvs mode" in m and "4 IPVS virtual services" in m for m in messages)


def test_rules_split_between_nft_and_legacy(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = verify_json(capsys, "--rules-file", NFT_SAVE, "--rules-file", LEGACY_SAVE)
    assert code == 1 and kinds(doc) == {("backend-split", None)}
    assert "nft: 26, legacy: 26" in doc["findings"][0]["message"]


def test_a_stale_service_and_a_missing_one(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = Path(SIX_OBJECTS).read_text()
    objects = objects.replace("name: svc6", "name: svc7").replace("172.30.0.46", "172.30.0.47")
    code, doc = verify_json(capsys, "--rules-file", NFT_SAVE, objects=seeded(tmp_path, "objects.yaml", objects))
    assert code == 1
    assert ("stale-service", "ns6/svc6") in kinds(doc) and ("missing-service", "ns6/svc7") in kinds(doc)


def test_verify_one_service_and_nft_drift(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = SAVE_TEXT.replace("--probability 0.50000000000", "--probability 0.90000000000")
    path = seeded(tmp_path, "odds.txt", text)
    code, doc = verify_json(capsys, "svc/svc1", "-n", "ns1", "--rules-file", path)
    assert (code, doc["services_checked"]) == (0, 1)
    code, doc = verify_json(capsys, "svc/svc4", "-n", "ns4", "--rules-file", path)
    assert code == 1 and kinds(doc) == {("wrong-odds", "ns4/svc4")}
    objects = Path(DATA / "nft-cluster.yaml").read_text().replace(
        "  - {addresses: [10.180.0.2], nodeName: node2}\n  ports: [{name: p80, port: 80, protocol: TCP}]\n- apiVersion: v1\n"
        "  kind: Service\n  metadata: {name: svc2",
        "  - {addresses: [10.180.0.2], nodeName: node2}\n  - {addresses: [10.180.0.9], nodeName: node2}\n"
        "  ports: [{name: p80, port: 80, protocol: TCP}]\n- apiVersion: v1\n  kind: Service\n  metadata: {name: svc2", 1)
    code, doc = verify_json(capsys, "--rules-file", NFT_JSON, objects=seeded(tmp_path, "nft.yaml", objects))
    assert code == 1 and kinds(doc) == {("missing-endpoint", "ns1/svc1")}
    assert "10.180.0.9:80" in doc["findings"][0]["message"]


def test_verify_ipvs_leftover_virtual_service(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = verify_json(capsys, "--rules-file", str(DATA / "ipvs-node.iptables-ipset.txt"), "--rules-file",
                            str(DATA / "ipvsadm-list.txt"), objects=str(DATA / "ipvs-cluster.yaml"))
    assert code == 1
    assert [f["message"] for f in doc["findings"]] == [
        "ns3/svc3:p80: TCP 172.30.0.43:80 has persistence 10800 s, the Service asks for none",
        "ns3/svc3:p80: no IPVS virtual service TCP 192.168.0.2:3003",
        "ns6/svc6:p80: no IPVS virtual service TCP 172.30.0.46:80",
        "IPVS virtual service TCP 172.30.0.99:443 belongs to no Service port of the API (another program's, or stale)"]


@pytest.mark.parametrize("command", ["explain", "dump", "verify"])
def test_reading_a_node_over_ssh_honours_proxyctl_ssh_config(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """`lab env` exports PROXYCTL_SSH_CONFIG, and `probe` honours it; so do the inspectors."""
    monkeypatch.setenv("PROXYCTL_SSH_CONFIG", "/nonexistent/proxyctl-ssh-config")
    args = [command, "svc/web"] if command != "dump" else [command]
    code, _, err = cli(capsys, *args, "--node", "node2", "--from-file", SMALL)
    assert code == 2 and "ssh config file /nonexistent/proxyctl-ssh-config does not exist" in err, err


def test_no_rules_on_this_node_says_what_to_do_instead() -> None:
    from kubectl_proxyctl.cli.inspect import NodeOptions, proxy_mode
    from kubectl_proxyctl.errors import NotFoundError
    from kubectl_proxyctl.inspect.graph import RuleGraph

    with pytest.raises(NotFoundError, match=r"no Service proxy rules found on this machine: it is not a node, or "
                                            r"no proxy has programmed it yet. Pass --node NODE \(a cluster node, "
                                            r"read through its proxy pod or SSH\) or --rules-file FILE"):
        proxy_mode(RuleGraph(), NodeOptions())
    with pytest.raises(NotFoundError, match=r"found in the input$"):
        proxy_mode(RuleGraph(), NodeOptions(rules_files=("x.rules",)))
