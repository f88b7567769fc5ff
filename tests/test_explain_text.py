"""`explain`'s text: the answer first, the rule walk with --rules, addresses and --from.

The README's nginx demo (tests/data/nginx-cluster.yaml: a NodePort Service, three pods on
three nodes) is planned for node1 and rendered by our own renderers: the iptables-restore
payload with kube-proxy's jump rules is read as it is; the nftables transaction is loaded
into a throwaway network namespace and read back with `nft -j list ruleset` (lab tier). On
those rules:

* the default answer fits in 15 lines and names the three pods;
* `--rules` draws every path as a tree: the shared rules once, then one branch per endpoint
  from the step that picks it (the `statistic` rules, the `numgen` verdict map), and every
  rule of every path (the `rules` of `-o json`) is in it;
* an address finds the Service port that owns it (cluster IP, node port on this node's or
  another node's address), from the Service objects or from the rules alone; an address
  nothing owns exits 1; a malformed or hostile one exits 2 with one line, no traceback;
* `--from pod/NAME` traces from the pod's own address, says when the pod runs on another
  node, and exits with a clear line when the pod is missing or there is no API to ask.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from clihelpers import cli

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.inspect.addresses import Destination, is_address, parse_destination
from kubectl_proxyctl.inspect.explain import PathResult
from kubectl_proxyctl.inspect.explaintext import render_walk
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.modes.iptables.render import with_jump_rules
from kubectl_proxyctl.modes.iptables.render import render as render_iptables
from kubectl_proxyctl.modes.nftables.render import render as render_nft
from kubectl_proxyctl.modes.tracing import Outcome, Packet, Step, TraceResult, Verdict
from kubectl_proxyctl.plan.planner import ProxyConfig, plan
from netns import requires_lab

NGINX = str(Path(__file__).parent / "data" / "nginx-cluster.yaml")
PODS = ("nginx-5d9c7b-4xkqm", "nginx-5d9c7b-9wz2n", "nginx-5d9c7b-tq8rl")
NODE1 = ["--from-file", NGINX, "--node-name", "node1"]
CONFIG = {"node_name": "node1", "family": "IPv4", "cluster_cidrs": ["10.244.0.0/16"],
          "detect_local_mode": "ClusterCIDR", "node_ips": ["172.18.0.2"]}


def node1_plan() -> Any:
    warnings: list[str] = []
    state = state_from_objects(load_objects(NGINX), warn=warnings.append)
    assert not warnings, warnings
    return plan(state, ProxyConfig.from_mapping(CONFIG))


def iptables_save_text() -> str:
    """The restore payload plus kube-proxy's jump rules, as iptables-save shows a node's rules."""
    return with_jump_rules(render_iptables(node1_plan(), nfacct=False).text)


@pytest.fixture(scope="module")
def iptables_rules(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("explain-text") / "node1.iptables"
    path.write_text(iptables_save_text())
    return str(path)


@pytest.fixture(scope="module")
def nft_rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from enginehelpers import run_in
    from netns import empty_netns

    path = tmp_path_factory.mktemp("explain-text") / "node1.nft.json"
    with empty_netns("explaintext") as ns:
        run_in(ns, ["nft", "-f", "-"], input=render_nft(node1_plan(), first=True).text)
        path.write_text(run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout)
    yield str(path)


NFT = [pytest.param("nft_rules", marks=[pytest.mark.lab, requires_lab("nft")], id="nftables"),
       pytest.param("iptables_rules", id="iptables")]


def rules_file(request: pytest.FixtureRequest, name: str) -> str:
    return str(request.getfixturevalue(name))


# --- the answer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rules", NFT)
def test_the_nginx_answer_fits_in_fifteen_lines_and_names_the_pods(capsys: pytest.CaptureFixture[str],
                                                                   request: pytest.FixtureRequest, rules: str) -> None:
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", rules_file(request, rules), *NODE1)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) <= 15, out
    assert lines[0].startswith("Service default/nginx: NodePort, port http 80/TCP (node port 30080); node node1, ")
    assert all(pod in out for pod in PODS)
    assert "  pod                 → cluster IP 10.96.1.1:80    → 1 of 3 endpoints, 33.3 % each, no SNAT" in lines
    assert "  node, external      → cluster IP 10.96.1.1:80    → 1 of 3 endpoints, 33.3 % each, SNAT to the node" \
        in lines
    assert "  pod, node, external → node port 172.18.0.2:30080 → 1 of 3 endpoints, 33.3 % each, SNAT to the node" \
        in lines
    assert "  endpoints: nginx-5d9c7b-4xkqm  10.244.1.5:80  node1 (this node)" in lines
    assert "             nginx-5d9c7b-tq8rl  10.244.3.4:80  node3" in lines
    assert "-A KUBE-" not in out and "add rule" not in out  # the rules are on demand
    assert "Problems:" in lines and any("hairpin" in line and PODS[0] in line for line in lines)


def test_zones_and_unused_endpoints_are_named(capsys: pytest.CaptureFixture[str], iptables_rules: str,
                                              tmp_path: Path) -> None:
    text = Path(NGINX).read_text().replace("  nodeName: node2\n", "  nodeName: node2\n  zone: zone-b\n")
    text = text.replace("- addresses: [10.244.3.4]\n  conditions: {ready: true, serving: true, terminating: false}",
                        "- addresses: [10.244.3.4]\n  conditions: {ready: false, serving: false, terminating: false}")
    objects = tmp_path / "objects.yaml"
    objects.write_text(text)
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", iptables_rules, "--from-file", str(objects),
                         "--node-name", "node1", "--client", "pod")
    assert code == 0, err
    assert "nginx-5d9c7b-9wz2n  10.244.2.7:80  node2, zone zone-b" in out
    # the rules still send to it (they were rendered while it was ready): not "unused"
    assert "nginx-5d9c7b-tq8rl  10.244.3.4:80  node3\n" in out


# --- the rule walk -------------------------------------------------------------------------------


def walks(out: str) -> dict[str, list[str]]:
    """`--rules` output → each path's heading line → the lines of its walk."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out[out.index("Rule walk, port "):].splitlines()[1:]:
        if line.startswith("  ") and not line.startswith("   ") and " from " in line:
            current = blocks.setdefault(line.strip(), [])
        elif current is not None and line.startswith("    "):
            current.append(line)
    return blocks


def rule_of(line: str) -> str:
    return re.sub(r"^[\s│├└─]*", "", line)


@pytest.mark.parametrize("rules", NFT)
def test_rules_show_every_rule_of_every_path(capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest,
                                             rules: str) -> None:
    path = rules_file(request, rules)
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", path, *NODE1, "--rules")
    assert code == 0, err
    assert out.startswith(cli(capsys, "explain", "svc/nginx", "--rules-file", path, *NODE1)[1])  # the answer first
    code, doc_text, _ = cli(capsys, "explain", "svc/nginx", "--rules-file", path, *NODE1, "-o", "json")
    doc = json.loads(doc_text)
    blocks = walks(out)
    paths = [(e, p) for port in doc["ports"] for e in port["entries"] for p in e["paths"]]
    assert len(blocks) == len(paths) == 6
    for entry, p in paths:
        kind = {"ClusterIP": "cluster IP", "NodePort": "node port"}[entry["kind"]]
        heading = f"{p['client']} from {p['source']} → {kind} {entry['address']}:{entry['port']} → "
        (block,) = [b for h, b in blocks.items() if h.startswith(heading)]
        shown = {rule_of(line) for line in block}
        missing = [r for r in p["rules"] if r not in shown]
        assert not missing, (heading, missing)


def branch_starts(block: list[str]) -> list[int]:
    return [i for i, line in enumerate(block) if re.match(r"^\s*[│ ]*[├└]─ ", line)]


@pytest.mark.parametrize("rules", NFT)
def test_the_walk_branches_at_the_load_balancing_step(capsys: pytest.CaptureFixture[str],
                                                      request: pytest.FixtureRequest, rules: str) -> None:
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", rules_file(request, rules), *NODE1,
                         "--rules", "--client", "pod")
    assert code == 0, err
    (block,) = [b for h, b in walks(out).items() if "cluster IP 10.96.1.1:80" in h]
    starts = branch_starts(block)
    assert len(starts) == 3, block
    heads = [block[i] for i in starts]
    assert [h.split("─ ", 1)[1] for h in heads] == [
        f"33.3 % → {PODS[0]} 10.244.1.5:80 (node1)", f"33.3 % → {PODS[1]} 10.244.2.7:80 (node2)",
        f"33.3 % → {PODS[2]} 10.244.3.4:80 (node3)"]
    assert heads[-1].lstrip().startswith("└─") and all(h.lstrip().startswith("├─") for h in heads[:-1])
    prefix, branches = block[:starts[0]], [block[a:b] for a, b in zip(starts, starts[1:] + [len(block)])]
    # the shared rules once, before the fork; the service's entry rule is among them
    assert any("cluster IP" in line or "@service-ips" in line for line in prefix)
    if "add rule" in prefix[0]:
        # nftables: the numgen verdict map is the last shared step, shown once
        assert "numgen random mod 3 vmap" in prefix[-1]
        assert sum("numgen" in line for line in block) == 1
    else:
        # iptables: each branch starts with its own statistic (or last, unconditional) rule
        assert not any("statistic" in line for line in prefix)
        assert ["statistic" in branch[1] for branch in branches] == [True, True, False]
        assert all("KUBE-SVC-" in branch[1] for branch in branches)
    for branch, ip in zip(branches, ("10.244.1.5:80", "10.244.2.7:80", "10.244.3.4:80")):
        assert any(f"dnat to {ip}" in line or f"--to-destination {ip}" in line for line in branch[1:])
        assert all(line.startswith(block[starts[0]].split("├─")[0] + ("│  " if branch is not branches[-1] else "   "))
                   for line in branch[1:])


def step(chain: str, index: int, rule: str, action: str, p: float = 1.0) -> Step:
    return Step("nat", chain, index, rule, action, p)


def test_a_tree_with_an_early_end_and_a_nested_fork() -> None:
    """Branches end where their ways end, and a fork inside a branch is drawn inside it."""
    a = step("A", 1, "-j B", "jump B")
    b1, b2 = step("B", 1, "-m x -j DROP", "DROP", 0.5), step("B", 2, "-j C", "jump C", 0.5)
    c1, c2 = step("C", 1, "-m s1 -j DNAT", "DNAT 10.0.0.1:80", 0.25), step("C", 2, "-j DNAT", "DNAT 10.0.0.2:80", 0.25)
    outcomes = (
        Outcome(Verdict.DROP, 0.5, "", False, (), (a, b1), "dropped"),
        Outcome(Verdict.DNAT, 0.25, "10.0.0.1:80", False, (), (a, b2, c1), "DNAT to 10.0.0.1:80"),
        Outcome(Verdict.DNAT, 0.25, "10.0.0.2:80", False, (), (a, b2, c2), "DNAT to 10.0.0.2:80"),
    )
    result = TraceResult(Packet("10.1.0.2", "10.96.0.1", 80), Verdict.DROP, outcomes, (), False, None)
    path = PathResult("pod", "10.1.0.2", result, "")
    assert render_walk(path, indent="") == [
        "-A A -j B",
        "├─ 50.0 % → DROP",
        "│  -A B -m x -j DROP",
        "└─ 50.0 % → 10.0.0.1:80, 10.0.0.2:80",
        "   -A B -j C",
        "   ├─ 25.0 % → 10.0.0.1:80",
        "   │  -A C -m s1 -j DNAT",
        "   └─ 25.0 % → 10.0.0.2:80",
        "      -A C -j DNAT",
    ]


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("10.96.1.1:80", Destination("10.96.1.1", 80, None)),
    ("172.18.0.3:30080/tcp", Destination("172.18.0.3", 30080, "TCP")),
    ("10.96.1.1", Destination("10.96.1.1", None, None)),
    ("10.96.0.10/UDP", Destination("10.96.0.10", None, "UDP")),
    ("[fd00:10:96::a]:53/udp", Destination("fd00:10:96::a", 53, "UDP")),
    ("fd00:10:96::A", Destination("fd00:10:96::a", None, None)),
    ("[fd00::1]", Destination("fd00::1", None, None)),
])
def test_addresses_that_parse(text: str, want: Destination) -> None:
    assert is_address(text)
    assert parse_destination(text) == want


@pytest.mark.parametrize("text", ["nginx", "svc/nginx", "service/web-1", "web.v2"])
def test_service_names_are_not_addresses(text: str) -> None:
    assert not is_address(text)


@pytest.mark.parametrize("text,message", [
    ("10.96.1.1:99999", "'99999' is not a port"),
    ("10.96.1.1:0", "'0' is not a port"),
    ("10.96.1.1:80/icmp", "'icmp' is not a protocol"),
    ("10.96.1:80", "'10.96.1' is not an IP address"),
    ("[fd00::1:53", "not an address"),
    ("fd00::1:53/tcp:", "is not a protocol"),
    ("10.96.1.1:８０", "is not a port"),
    ("10.96.1.1:80;reboot", "is not a port"),
    ("10.96.1.1;rm -rf /", "not an address"),
    ("10.96.1.1:$(reboot)", "is not a port"),
    ("10.96.1.1:`id`", "is not a port"),
    ("1.2.3.4:80\nx", "not an address"),
    ("fe80::1%eth0", "is not an IP address"),
    ("1." + "1" * 200, "not an address"),
])
def test_addresses_that_do_not_parse(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_destination(text)


def test_a_cluster_ip_and_port(capsys: pytest.CaptureFixture[str], iptables_rules: str) -> None:
    code, out, err = cli(capsys, "explain", "10.96.1.1:80", "--rules-file", iptables_rules, *NODE1)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "10.96.1.1:80/TCP is default/nginx port http (cluster IP)"
    assert "node port" not in out  # only the way in asked about
    assert "  pod            → cluster IP 10.96.1.1:80 → 1 of 3 endpoints, 33.3 % each, no SNAT" in lines
    doc = json.loads(cli(capsys, "explain", "10.96.1.1:80", "--rules-file", iptables_rules, *NODE1, "-o", "json")[1])
    assert doc["service"] == "default/nginx" and doc["target"] == lines[0]
    assert [e["kind"] for port in doc["ports"] for e in port["entries"]] == ["ClusterIP"]


def test_a_node_port_on_another_nodes_address(capsys: pytest.CaptureFixture[str], iptables_rules: str) -> None:
    code, out, err = cli(capsys, "explain", "172.18.0.3:30080/tcp", "--rules-file", iptables_rules, *NODE1)
    assert code == 0, err
    assert out.startswith("172.18.0.3:30080/TCP is default/nginx port http (node port)\n")
    assert "  warning: 172.18.0.3 is node node2's address: connections to it meet node node2's rules; shown: node " \
           "port 30080 on this node (try --node node2)" in out
    assert "→ node port 172.18.0.2:30080 →" in out and "cluster IP" not in out


def test_a_bare_address_means_all_its_ports(capsys: pytest.CaptureFixture[str], iptables_rules: str) -> None:
    code, out, err = cli(capsys, "explain", "10.96.1.1", "--rules-file", iptables_rules, *NODE1)
    assert code == 0, err
    assert out.startswith("10.96.1.1 is default/nginx port http (cluster IP)\n")


@pytest.mark.parametrize("rules", NFT)
def test_an_address_from_the_rules_alone(capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest,
                                         rules: str) -> None:
    path = rules_file(request, rules)
    code, out, err = cli(capsys, "explain", "10.96.1.1:80", "--rules-file", path, "--client", "external")
    assert code == 0, err
    assert out.startswith("10.96.1.1:80/TCP is default/nginx port http (cluster IP)\n")
    assert "  external → cluster IP 10.96.1.1:80 → 1 of 3 endpoints, 33.3 % each, SNAT to the node" in out
    code, out, err = cli(capsys, "explain", "172.18.0.2:30080", "--rules-file", path, "--client", "external")
    assert code == 0, err
    assert "  external → node port 172.18.0.2:30080 → 1 of 3 endpoints, 33.3 % each, SNAT to the node" in out
    code, out, err = cli(capsys, "explain", "10.96.1.2:80", "--rules-file", path)
    assert (code, out) == (1, "")
    assert "nothing owns 10.96.1.2:80" in err


@pytest.mark.parametrize("target,code,message", [
    ("10.96.1.1:81", 1, "error: nothing owns 10.96.1.1:81: no Service's cluster IP, external IP, load-balancer IP "
                        "or node port in the Service objects"),
    ("10.96.1.1:80/udp", 1, "error: nothing owns 10.96.1.1:80/UDP"),
    ("172.18.0.2", 2, "error: 172.18.0.2 is the address of node node1: say which node port (172.18.0.2:PORT)"),
    ("10.96.1.1:99999", 2, "'99999' is not a port (1-65535)"),
    ("10.96.1.1;rm -rf /", 2, "error: '10.96.1.1;rm -rf /': not an address"),
    ("10.96.1.1:80&&id", 2, "is not a port"),
    ("$(reboot)", 2, "'$(reboot)' is not a valid service name"),
    ("svc/a|b", 2, "is not a valid service name"),
    ("10.1.2.3:80>/tmp/x", 2, "not a protocol"),
])
def test_addresses_nothing_owns_and_bad_ones(capsys: pytest.CaptureFixture[str], iptables_rules: str, target: str,
                                             code: int, message: str) -> None:
    got, out, err = cli(capsys, "explain", target, "--rules-file", iptables_rules, *NODE1)
    assert (got, out) == (code, ""), err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_ipvs_rules_alone_cannot_name_an_owner(capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "data" / "rules"
    code, out, err = cli(capsys, "explain", "172.30.0.43:80", "--rules-file", str(data / "ipvsadm-save.txt"),
                         "--rules-file", str(data / "ipvs-node.iptables-ipset.txt"))
    assert (code, out) == (1, "")
    assert "cannot tell which Service owns 172.30.0.43:80: IPVS virtual services carry no service names" in err
    code, out, err = cli(capsys, "explain", "172.30.0.43:80", "--rules-file", str(data / "ipvsadm-save.txt"),
                         "--rules-file", str(data / "ipvs-node.iptables-ipset.txt"), "--from-file",
                         str(data / "ipvs-cluster.yaml"), "--node-name", "test-node")
    assert code == 0, err
    assert out.startswith("172.30.0.43:80/TCP is ns3/svc3 port p80 (cluster IP)\n")


# --- --from pod/NAME -----------------------------------------------------------------------------


def test_from_a_pod_on_another_node(capsys: pytest.CaptureFixture[str], iptables_rules: str) -> None:
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", iptables_rules, *NODE1, "--from", "pod/client")
    assert code == 0, err
    assert "Client: default/client (10.244.2.9, on node node2)" in out
    assert "  pod default/client → cluster IP 10.96.1.1:80    → 1 of 3 endpoints, 33.3 % each, no SNAT" in out
    assert "node, external" not in out
    assert "warning: the answer is for the rules of node node1, while pod default/client runs on node node2: its " \
           "connections meet that node's rules (try --node node2)" in out
    doc = json.loads(cli(capsys, "explain", "svc/nginx", "--rules-file", iptables_rules, *NODE1, "--from",
                         "pod/client", "-o", "json")[1])
    assert {(p["client"], p["source"]) for port in doc["ports"] for e in port["entries"] for p in e["paths"]} == {
        ("pod", "10.244.2.9")}


def test_from_a_pod_on_this_node(capsys: pytest.CaptureFixture[str], iptables_rules: str) -> None:
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", iptables_rules, *NODE1,
                         "--from", f"pod/{PODS[0]}")
    assert code == 0, err
    assert "the answer is for the rules of node" not in out
    assert f"  pod default/{PODS[0]} → cluster IP 10.96.1.1:80    → 1 of 3 endpoints, 33.3 % each, SNAT on some paths" \
        in out  # hairpin: SNAT when it picks itself


@pytest.mark.parametrize("args,code,message", [
    (["--from", "pod/nope"], 1, 'error: --from: pod "nope" not found in namespace "default" in '),
    (["--from", "pod/client", "-n", "other"], 1, 'pod "client" not found in namespace "other"'),
    (["--from", "deploy/web"], 2, "error: --from: 'deploy/web' is not pod/NAME"),
    (["--from", "pod/a;b"], 2, "error: --from: 'a;b' is not a valid pod name"),
    (["--from", "pod/$(id)"], 2, "is not a valid pod name"),
    (["--from", "pod/client", "--source", "10.0.0.1"], 2, "--from and --source exclude each other"),
    (["--from", "pod/client", "--client", "external"], 2, "--client can only be pod with it"),
])
def test_from_errors(capsys: pytest.CaptureFixture[str], iptables_rules: str, args: list[str], code: int,
                     message: str) -> None:
    got, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", iptables_rules, *NODE1, *args)
    assert (got, out) == (code, ""), err
    assert message in err and "Traceback" not in err


def test_from_needs_the_api_or_a_file(capsys: pytest.CaptureFixture[str], iptables_rules: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    code, out, err = cli(capsys, "explain", "svc/nginx", "--rules-file", iptables_rules, "--from", "pod/client")
    assert (code, out) == (2, "")
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --from needs the API or --from-file to read the pod's address and node, and "
                           "there is no cluster access (no kubeconfig found")


def test_from_a_pod_read_from_the_api(iptables_rules: str) -> None:
    """--rules-file for the rules, the API for the pod (and a pod the API does not have)."""
    import subprocess
    import sys

    from apiserver_fixtures import pod

    from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

    server = APIServer().start()
    try:
        server.create(pod("client", "10.244.3.9", "node3"))
        base = [sys.executable, "-m", "kubectl_proxyctl", "explain", "svc/nginx", "--rules-file", iptables_rules,
                "--node-name", "node1", "--kubeconfig", str(server.kubeconfig_path)]
        done = subprocess.run([*base, "--from", "pod/client"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "Client: default/client (10.244.3.9, on node node3)" in done.stdout
        assert "(try --node node3)" in done.stdout
        done = subprocess.run([*base, "--from", "pod/ghost"], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr.strip() == 'error: --from: pod "ghost" not found in namespace "default" in the API'
    finally:
        server.stop()
