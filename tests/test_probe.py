"""`probe`: the remote program and its parsing, the expectation rules, the verdicts (pure), and
the whole command against real sshds in network namespaces (lab)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from kubectl_proxyctl.cli.commands import probe as probe_command
from kubectl_proxyctl.cli.main import run
from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.remote import report
from kubectl_proxyctl.remote.expectations import Probing, plan_for_node_port, plan_for_service, plan_without_cluster
from kubectl_proxyctl.remote.matrix import (
    LOCAL,
    Cell,
    ColumnKind,
    Expectation,
    MatrixPlan,
    Node,
    Verdict,
    Want,
    cells,
    judge,
    probes_for,
    summarize,
)
from kubectl_proxyctl.remote.probe import (
    DRIVER,
    Mode,
    Observation,
    ProbeSpec,
    Seen,
    http_observation,
    parse_remote_output,
    remote_argv,
    validate_http_path,
)
from kubectl_proxyctl.system.executor import netns_path, require_binary
from netns import empty_netns
from waiting import TIMEOUT, wait_for
from sshfixtures import SSHCluster, build_ssh_cluster, health_reply, pod_reply, requires_sshd, ssh_skip_reason

NODES = tuple(Node(f"node{i}", f"172.18.0.{i + 1}", f"node{i}") for i in (1, 2, 3))
ALL = (LOCAL, "node1", "node2", "node3")


# --- cluster objects -------------------------------------------------------------------------


def objects(
    nodes: tuple[Node, ...] = NODES,
    policy: str = "Local",
    endpoint_nodes: tuple[str, ...] = ("node1",),
    node_port: int = 31080,
    health_port: int = 32000,
    lb_ips: tuple[str, ...] = (),
    source_ranges: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": {"pool": "a"}},
         "status": {"addresses": [{"type": "InternalIP", "address": n.address}]}} for n in nodes
    ]
    spec: dict[str, Any] = {
        "type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": policy,
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": node_port, "protocol": "TCP"}],
    }
    if policy == "Local":
        spec["healthCheckNodePort"] = health_port
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    items.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                  "spec": spec, "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}})
    items.append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"10.244.{i + 1}.5"], "conditions": {"ready": True}, "nodeName": n,
                       "targetRef": {"kind": "Pod", "name": f"web-{n}"}} for i, n in enumerate(endpoint_nodes)],
    })
    return items


def wants(plan: MatrixPlan, section: int = 0) -> dict[tuple[str, str], str]:
    return {k: str(v.want) if v.http_status is None else str(v.http_status)
            for k, v in plan.sections[section].expectations.items()}


# --- the remote program (pure) ---------------------------------------------------------------


def test_remote_argv_is_the_fixed_driver_plus_validated_words() -> None:
    specs = [ProbeSpec("p0", Mode.TCP, "172.18.0.2", 30080), ProbeSpec("p1", Mode.HTTP, "fd00::1", 80, "/a?b=1")]
    argv = remote_argv(specs, 1.5)
    assert argv[:6] == ["bash", "--norc", "-c", DRIVER, "proxyctl-probe", "1.5"]
    assert argv[6:] == ["p0", "tcp", "172.18.0.2", "30080", "/", "p1", "http", "fd00::1", "80", "/a?b=1"]
    assert remote_argv(specs, 2, shell="sh")[:2] == ["sh", "-c"]
    # what the login shell sees: every word single-quoted, the driver included
    line = shlex.join(argv)
    assert shlex.split(line) == argv


@pytest.mark.parametrize("spec", [
    ProbeSpec("p0", Mode.TCP, "172.18.0.2;id", 80),
    ProbeSpec("p0", Mode.TCP, "$(id)", 80),
    ProbeSpec("p0", Mode.TCP, "node1", 80),
    ProbeSpec("p0", Mode.TCP, "172.18.0.2", 0),
    ProbeSpec("p0", Mode.TCP, "172.18.0.2", 70000),
    ProbeSpec("p0", Mode.HTTP, "172.18.0.2", 80, "/x\r\nX-Evil: 1"),
    ProbeSpec("p0", Mode.HTTP, "172.18.0.2", 80, "/ $(id)"),
    ProbeSpec("p 0", Mode.TCP, "172.18.0.2", 80),
])
def test_remote_argv_rejects_anything_unchecked(spec: ProbeSpec) -> None:
    with pytest.raises((ConfigError, ValueError)):
        remote_argv([spec], 1.0)


def test_http_path_validation() -> None:
    assert validate_http_path("/healthz?verbose=1&x=%20") == "/healthz?verbose=1&x=%20"
    for bad in ("healthz", "/a b", "/a\nb", "/`id`", '/"x"', ""):
        with pytest.raises(ConfigError):
            validate_http_path(bad)


def test_parse_remote_output_maps_exit_codes_not_text() -> None:
    specs = [ProbeSpec(f"p{i}", mode, "10.0.0.1", 80) for i, mode in enumerate(
        [Mode.TCP, Mode.TCP, Mode.TCP, Mode.UDP, Mode.UDP, Mode.TCP, Mode.TCP, Mode.TCP, Mode.HTTP, Mode.TCP,
         Mode.TCP, Mode.UDP, Mode.HTTP])]
    hello = b"HTTP/1.1 503 Service Unavailable\r\nX-Pod-Name: web-1\r\n\r\n{\"localEndpoints\": 0}".hex()
    text = "\n".join([
        "R p0 0 bash 1500",
        "R p1 1 bash 120",
        "R p2 124 bash -",
        "R p3 124 bash -",
        "R p4 0 bash 800 C" + b"pod=web-2\n".hex(),
        "R p5 0 nc -",
        "R p6 28 curl 0.000157",
        "R p7 7 curl 0.000000",
        f"R p8 0 bash 250 C{hello}",
        "R p9 unsupported none",
        "R p10 127 bash -",
        "R p11 unsupported nc",
        "garbage line R p12 0 bash 1",
        "",
    ])
    got = parse_remote_output(text, specs)
    assert got["p0"] == Observation(Seen.OPEN, 1.5)
    assert got["p1"].seen == Seen.CLOSED
    assert got["p2"].seen == Seen.TIMEOUT
    assert got["p3"].seen == Seen.SENT
    assert got["p4"].seen == Seen.OPEN and got["p4"].backend == "web-2"
    assert got["p5"] == Observation(Seen.OPEN, None)
    assert got["p6"].seen == Seen.OPEN and got["p6"].latency_ms == pytest.approx(0.157)
    assert got["p7"].seen == Seen.CLOSED
    assert (got["p8"].http_status, got["p8"].backend, got["p8"].local_endpoints) == (503, "web-1", 0)
    assert got["p9"].seen == Seen.ERROR and "none of bash" in got["p9"].detail
    assert got["p10"].seen == Seen.ERROR and "127" in got["p10"].detail
    assert got["p11"].seen == Seen.ERROR and "need bash" in got["p11"].detail
    assert got["p12"].seen == Seen.ERROR and "no result" in got["p12"].detail


def test_http_observation_names_the_backend() -> None:
    assert http_observation(b"HTTP/1.0 200 OK\r\n\r\nhello pod=web-7 bye", 1.0).backend == "web-7"
    assert http_observation(b"HTTP/1.1 200 OK\r\nX-Pod-Name: web-3\r\n\r\n", 1.0).backend == "web-3"
    assert http_observation(b"SSH-2.0-OpenSSH\r\n", 1.0).http_status is None


# --- expectations (pure) ---------------------------------------------------------------------


def probing(**kwargs: Any) -> Probing:
    return Probing(sources=ALL, **kwargs)


def test_etp_local_expectations_follow_kube_proxy() -> None:
    state = state_from_objects(objects(policy="Local", endpoint_nodes=("node1",)))
    plan = plan_for_service(state, "default", "web", NODES, probing())
    got = wants(plan)
    # from outside (this machine, other nodes): only node1 answers, the others drop
    for source in (LOCAL, "node2", "node3"):
        assert got[(source, "node1")] == "open"
    for source, target in ((LOCAL, "node2"), (LOCAL, "node3"), ("node1", "node2"), ("node3", "node2"),
                           ("node1", "node3"), ("node2", "node3")):
        assert got[(source, target)] == "dropped"
    # a node's own traffic (own address, 127.0.0.1) is short-circuited to any endpoint
    for node in ("node1", "node2", "node3"):
        assert got[(node, node)] == "open"
        assert got[(node, "127.0.0.1")] == "open"
    assert (LOCAL, "127.0.0.1") not in got
    # the health-check node port: 200 where a local endpoint is, 503 elsewhere, from anywhere
    assert plan.sections[1].health_check
    health = wants(plan, 1)
    assert {health[(s, "node1")] for s in ALL} == {"200"}
    assert {health[(s, "node2")] for s in ALL} == {"503"}
    assert plan.sections[1].expectations[(LOCAL, "node1")].local_endpoints == 1


def test_etp_cluster_and_no_endpoints() -> None:
    cluster = plan_for_service(state_from_objects(objects(policy="Cluster")), "default", "web", NODES, probing())
    assert set(wants(cluster).values()) == {"open"}
    assert len(cluster.sections) == 1  # no health check with ETP=Cluster
    empty = plan_for_service(state_from_objects(objects(policy="Local", endpoint_nodes=())), "default", "web",
                             NODES, probing())
    assert set(wants(empty).values()) == {"refused"}
    assert set(wants(empty, 1).values()) == {"503"}


def test_load_balancer_ips_and_source_ranges() -> None:
    state = state_from_objects(objects(policy="Local", lb_ips=("172.18.255.1",), source_ranges=("172.18.0.0/30",)))
    plan = plan_for_service(state, "default", "web", NODES, probing(local_source="172.18.0.100"))
    section = plan.sections[0]
    lb = [c for c in section.columns if c.kind == ColumnKind.LOAD_BALANCER]
    assert [c.label for c in lb] == ["172.18.255.1"] and lb[0].port == 80
    got = wants(plan)
    assert got[(LOCAL, "172.18.255.1")] == "dropped"  # .100 is outside 172.18.0.0/30
    assert got[("node1", "172.18.255.1")] == "open"  # 172.18.0.2 is inside; handled on node1 itself
    assert got[("node3", "172.18.255.1")] == "dropped"  # 172.18.0.4 is outside
    inside = plan_for_service(state, "default", "web", NODES, probing(local_source="172.18.0.1"))
    assert wants(inside)[(LOCAL, "172.18.255.1")] == "open"  # node1 has a local endpoint


def test_node_port_without_and_with_cluster_data() -> None:
    bare = plan_without_cluster(NODES, 30080, "TCP", probing())
    assert set(wants(bare).values()) == {"open"} and "expected open" in bare.basis
    assert [c.label for c in bare.sections[0].columns] == ["node1", "node2", "node3", "127.0.0.1"]
    nft = plan_without_cluster(NODES, 30080, "UDP", probing(proxy_mode="nftables"))
    assert [c.label for c in nft.sections[0].columns] == ["node1", "node2", "node3"]
    assert nft.sections[0].mode == Mode.UDP
    state = state_from_objects(objects(policy="Local"))
    owned = plan_for_node_port(state, 31080, "TCP", NODES, probing())
    assert wants(owned)[(LOCAL, "node2")] == "dropped" and len(owned.sections) == 1
    unowned = plan_for_node_port(state, 30999, "TCP", NODES, probing())
    assert set(wants(unowned).values()) == {"closed"}


def test_probes_for_a_source() -> None:
    plan = plan_without_cluster(NODES, 30080, "TCP", probing(http_path="/x"))
    local = probes_for(plan, LOCAL)
    assert [s.address for _, s in local] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    node = probes_for(plan, "node2")
    assert [(k[2], s.address, s.mode, s.path) for k, s in node][-1] == ("127.0.0.1", "127.0.0.1", Mode.HTTP, "/x")


# --- verdicts and summary (pure) -------------------------------------------------------------


@pytest.mark.parametrize("want, seen, status, expected", [
    (Want.OPEN, Seen.OPEN, None, Verdict.OK),
    (Want.OPEN, Seen.CLOSED, None, Verdict.UNEXPECTED_CLOSED),
    (Want.OPEN, Seen.TIMEOUT, None, Verdict.TIMEOUT),
    (Want.DROPPED, Seen.TIMEOUT, None, Verdict.OK),
    (Want.DROPPED, Seen.CLOSED, None, Verdict.OK),
    (Want.DROPPED, Seen.OPEN, None, Verdict.UNEXPECTED_OPEN),
    (Want.REFUSED, Seen.OPEN, None, Verdict.UNEXPECTED_OPEN),
    (Want.OPEN, Seen.SENT, None, Verdict.OK),
    (Want.OPEN, Seen.ERROR, None, Verdict.SSH_ERROR),
])
def test_judge(want: Want, seen: Seen, status: int | None, expected: Verdict) -> None:
    assert judge(Expectation(want, "why"), Observation(seen, http_status=status)) == expected


def test_judge_health_checks_and_udp_replies() -> None:
    healthy = Expectation(Want.OPEN, "1 local", http_status=200, local_endpoints=1)
    sick = Expectation(Want.OPEN, "none local", http_status=503, local_endpoints=0)
    assert judge(healthy, Observation(Seen.OPEN, http_status=200)) == Verdict.OK
    assert judge(healthy, Observation(Seen.OPEN, http_status=503)) == Verdict.UNEXPECTED_CLOSED
    assert judge(sick, Observation(Seen.OPEN, http_status=200)) == Verdict.UNEXPECTED_OPEN
    assert judge(sick, Observation(Seen.CLOSED)) == Verdict.UNEXPECTED_CLOSED
    assert judge(Expectation(Want.OPEN, "x"), Observation(Seen.SENT), udp_reply=True) == Verdict.TIMEOUT


def test_summary_names_the_misbehaving_node_and_why() -> None:
    state = state_from_objects(objects(policy="Local", endpoint_nodes=("node1",)))
    plan = plan_for_service(state, "default", "web", NODES, probing())
    found = {}
    for i, section in enumerate(plan.sections):
        for (source, label), want in section.expectations.items():
            seen = Observation(Seen.OPEN, http_status=want.http_status) if want.want == Want.OPEN \
                else Observation(Seen.TIMEOUT)
            if i == 0 and label == "node3" and source != "node3":
                seen = Observation(Seen.OPEN)  # node3 forwards although it has no local endpoint
            if source == "node2":
                seen = Observation(Seen.ERROR, detail="cannot connect to 172.18.0.3:22: Connection refused")
            found[(i, source, label)] = seen
    judged = cells(plan, found)
    summary = summarize(plan, judged)
    assert not summary.ok
    by_node = {f.node: f.message for f in summary.findings}
    assert set(by_node) == {"node2", "node3"}
    assert "ETP=Local is not enforced" in by_node["node3"] and "source IP" in by_node["node3"]
    assert "Connection refused" in by_node["node2"] and "not probed" in by_node["node2"]
    assert "misbehaving: node2, node3" in summary.headline(plan.basis)


# --- the driver on a real kernel (no SSH) ----------------------------------------------------


@pytest.fixture
def driver_netns() -> Iterator[str]:
    reason = ssh_skip_reason()
    if reason:
        pytest.skip(reason)
    with empty_netns("drv") as name:
        yield name


def _listen(netns: str, port: int) -> subprocess.Popen[bytes]:
    """A listener inside the namespace: HTTP on TCP `port`, an echo on UDP `port`."""
    code = f"""
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", {port}))
def echo():
    while True:
        _, peer = u.recvfrom(2048)
        u.sendto(b"pod=udp-pod", peer)
threading.Thread(target=echo, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(8)
print("up", flush=True)
while True:
    c, _ = s.accept()
    d = b""
    while b"\\r\\n\\r\\n" not in d:
        x = c.recv(4096)
        d += x
        if not x:
            break
    c.sendall(b"HTTP/1.0 200 OK\\r\\nX-Pod-Name: drv-pod\\r\\n\\r\\n")
    c.close()
"""
    proc = subprocess.Popen(["nsenter", f"--net={netns_path(netns)}", "--", sys.executable, "-c", code],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


# Every probe below is answered at once (open, refused, or an ICMP error): the probe timeout
# only bounds a hang, so it is generous, and so is the deadline of the whole command. The
# exception is curl (a node without bash): its telnet session to an open port lasts until
# the timeout, so that run takes the whole timeout whatever happens.
PROBE_TIMEOUT = 10.0
CURL_PROBE_TIMEOUT = 3.0


@pytest.mark.lab
def test_driver_runs_under_bash_sh_and_without_bash(driver_netns: str, tmp_path: Path) -> None:
    server = _listen(driver_netns, 30080)
    try:
        specs = [ProbeSpec("a", Mode.TCP, "127.0.0.1", 30080), ProbeSpec("b", Mode.TCP, "127.0.0.1", 30081),
                 ProbeSpec("c", Mode.HTTP, "127.0.0.1", 30080, "/x"), ProbeSpec("d", Mode.UDP, "127.0.0.1", 30080),
                 ProbeSpec("e", Mode.UDP, "127.0.0.1", 30081)]
        enter = [require_binary("nsenter"), f"--net={netns_path(driver_netns)}", "--"]
        for shell in ("bash", "sh"):
            done = subprocess.run(enter + remote_argv(specs, PROBE_TIMEOUT, shell), capture_output=True, text=True,
                                  timeout=TIMEOUT)
            got = parse_remote_output(done.stdout, specs)
            assert (done.returncode, got["a"].seen, got["b"].seen) == (0, Seen.OPEN, Seen.CLOSED), shell
            assert (got["c"].http_status, got["c"].backend) == (200, "drv-pod"), shell
            assert (got["d"].seen, got["d"].backend, got["e"].seen) == (Seen.OPEN, "udp-pod", Seen.CLOSED), shell
        # a node without bash: curl is the fallback for TCP; HTTP needs bash
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for tool in ("curl", "timeout", "od", "head", "tr", "dd"):
            os.symlink(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip(), bin_dir / tool)
        argv = remote_argv(specs, CURL_PROBE_TIMEOUT, "sh")
        done = subprocess.run(enter + ["/bin/sh", *argv[1:]], capture_output=True, text=True, timeout=TIMEOUT,
                              env={"PATH": str(bin_dir)})
        got = parse_remote_output(done.stdout, specs)
        assert (got["a"].seen, got["b"].seen, got["c"].seen, got["d"].seen) == (
            Seen.OPEN, Seen.CLOSED, Seen.ERROR, Seen.ERROR)
        assert "http probes need bash" in got["c"].detail and "udp probes need bash" in got["d"].detail
    finally:
        server.kill()
        server.wait()


# --- the command, against real sshds ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[SSHCluster]:
    reason = ssh_skip_reason("iptables")
    if reason:
        pytest.skip(reason)
    built = build_ssh_cluster(nodes=3, bastion=True)
    try:
        for node in built.nodes:
            built.listen(node.name, 30080)
        yield built
    finally:
        built.close()


def probe_cli(cluster: SSHCluster, capsys: pytest.CaptureFixture[str], *args: str,
              config: str | None = None) -> tuple[int, str, str]:
    argv = ["probe", *args, "--ssh-config", config or cluster.ssh_config, "--timeout", "1s"]
    code = cluster.in_client(lambda: run(argv, prog_name="kubectl proxyctl"))
    out, err = capsys.readouterr()
    return code, out, err


def verdicts(out: str) -> dict[tuple[str, str], str]:
    data = json.loads(out)
    return {(c["from"], c["to"]): c["verdict"] for s in data["sections"] for c in s["cells"]}


@pytest.mark.lab
@requires_sshd("iptables")
def test_all_open_is_ok(cluster: SSHCluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = probe_cli(cluster, capsys, "--nodeport", "30080", "--nodes", cluster.node_list())
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "NodePort 30080/TCP"
    assert lines[1].split() == ["FROM", "\\", "TO", "node1", "node2", "node3", "127.0.0.1"]
    assert lines[2].split()[:2] == ["(local)", "open"] and lines[2].rstrip().endswith("-")
    assert all(row.split()[1] == "open" for row in lines[3:6])
    assert "OK: all 15 cells meet their expectation (no cluster data: every cell is expected open)" in out
    for node in cluster.nodes:
        cluster.listen(node.name, 30053, protocol="udp")
    code, out, err = probe_cli(cluster, capsys, "--nodeport", "30053", "--protocol", "udp", "--expect-udp-reply",
                               "--nodes", cluster.node_list(), "-o", "yaml")
    assert code == 0, out + err
    data = yaml.safe_load(out)
    assert {(c["observed"], c["backend"]) for c in data["sections"][0]["cells"]} == {
        ("open", f"{n.name}-pod") for n in cluster.nodes}


@pytest.mark.lab
@requires_sshd("iptables")
def test_etp_local_pattern_from_objects_file(cluster: SSHCluster, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(cluster.workdir, "objects.json")
    nodes = tuple(Node(n.name, n.address, n.name) for n in cluster.nodes)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"apiVersion": "v1", "kind": "List", "items": objects(nodes, "Local", ("node1",))}, fh)
    # node1 serves; node2/node3 only short-circuit their own traffic and drop the rest, like kube-proxy
    cluster.listen("node1", 31080, pod_reply("web-node1"))
    cluster.listen("node1", 32000, health_reply("default", "web", 1))
    for name in ("node2", "node3"):
        cluster.listen(name, 31080, pod_reply("web-node1"))
        cluster.drop_external(name, 31080)
        cluster.listen(name, 32000, health_reply("default", "web", 0))
    code, out, err = probe_cli(cluster, capsys, "svc/web", "--from-file", path, "--http", "/", "-o", "json")
    assert code == 0, out + err
    data = json.loads(out)
    node_port, health = data["sections"]
    observed = {(c["from"], c["to"]): c["observed"] for c in node_port["cells"]}
    assert {k for k, v in observed.items() if v == "open"} == {
        (LOCAL, "node1"), ("node1", "node1"), ("node2", "node1"), ("node3", "node1"),
        ("node2", "node2"), ("node3", "node3"),
        ("node1", "127.0.0.1"), ("node2", "127.0.0.1"), ("node3", "127.0.0.1"),
    }
    assert {v for k, v in observed.items() if v != "open"} == {"timeout"}  # dropped, not refused
    assert {c["backend"] for c in node_port["cells"] if c["observed"] == "open"} == {"web-node1"}
    statuses = {(c["from"], c["to"]): (c["http_status"], c["local_endpoints"]) for c in health["cells"]}
    assert {statuses[(s, "node1")] for s in ALL} == {(200, 1)}
    assert {statuses[(s, "node3")] for s in ALL} == {(503, 0)}
    assert data["summary"]["ok"] and data["summary"]["cells"] == 27


@pytest.mark.lab
@requires_sshd("iptables")
def test_seeded_fault_only_that_nodes_cells(cluster: SSHCluster, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.unlisten("node3", 30080)
    try:
        code, out, _ = probe_cli(cluster, capsys, "--nodeport", "30080", "--nodes", cluster.node_list(), "-o", "json")
    finally:
        cluster.listen("node3", 30080)
    assert code == 1
    bad = {k: v for k, v in verdicts(out).items() if v != "ok"}
    assert bad == {(s, "node3"): "unexpected-closed" for s in ALL} | {("node3", "127.0.0.1"): "unexpected-closed"}
    summary = json.loads(out)["summary"]
    assert [f["node"] for f in summary["findings"]] == ["node3"]
    assert "refuses connections" in summary["findings"][0]["message"]


@pytest.mark.lab
@requires_sshd("iptables")
def test_changed_host_key_is_refused_loudly(cluster: SSHCluster, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    lines = Path(cluster.known_hosts).read_text().splitlines()
    lines = [f"172.18.0.2 {other[0]} {other[1]}" if ln.startswith("172.18.0.2 ") else ln for ln in lines]
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    config = tmp_path / "ssh_config"  # first value wins: this known_hosts, then everything else
    config.write_text(f"Host *\n  UserKnownHostsFile {tmp_path / 'known_hosts'}\nInclude {cluster.ssh_config}\n")
    code, out, err = probe_cli(cluster, capsys, "--nodeport", "30080", "--nodes", cluster.node_list(),
                               config=str(config))
    assert code == 1
    assert "warning: HOST KEY FOR node1 HAS CHANGED" in err
    assert "ssh-keygen -R" in err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:6]}
    assert rows["node1"] == ["*ssh-error"] * 4
    assert rows["node2"][0] == "open"
    assert "node1: HOST KEY FOR node1 HAS CHANGED" in out


@pytest.mark.lab
@requires_sshd("iptables")
def test_stopped_sshd_is_an_ssh_error_row(cluster: SSHCluster, capsys: pytest.CaptureFixture[str]) -> None:
    node2 = cluster.node("node2")
    cluster.stop_sshd(node2)
    try:
        code, out, _ = probe_cli(cluster, capsys, "--nodeport", "30080", "--nodes", cluster.node_list(), "-o", "json")
    finally:
        cluster.start_sshd(node2)
    assert code == 1
    bad = {k: v for k, v in verdicts(out).items() if v != "ok"}
    assert bad == {("node2", t): "ssh-error" for t in ("node1", "node2", "node3", "127.0.0.1")}
    finding = json.loads(out)["summary"]["findings"][0]
    assert finding["node"] == "node2" and "Connection refused" in finding["message"]


@pytest.mark.lab
@requires_sshd("iptables")
def test_proxy_jump_reaches_a_hidden_node(cluster: SSHCluster, capsys: pytest.CaptureFixture[str]) -> None:
    cluster.listen("hidden", 30090)
    # ProxyJump from the ssh config; the probed address is the config's HostName
    code, out, err = probe_cli(cluster, capsys, "--nodeport", "30090", "--nodes", "hidden", "--from", "nodes",
                               "-o", "json")
    assert code == 0, out + err
    data = json.loads(out)
    assert data["nodes"] == [{"name": "hidden", "address": "10.99.0.2", "ssh_host": "hidden"}]
    assert set(verdicts(out).values()) == {"ok"}
    # --jump on the command line, to a host the config knows only by address
    code, out, err = probe_cli(cluster, capsys, "--nodeport", "30090", "--nodes", "10.99.0.2", "--jump", "bastion",
                               "--from", "nodes")
    assert code == 0, out + err


@pytest.mark.parametrize("nodes", [
    "node1;rm -rf /", "$(id)", "`id`", "node1\nnode2", "-oProxyCommand=id", "node1 node2",
    "node1=172.18.0.2;id", "node1=$(id)",
])
def test_crafted_node_names_and_addresses_are_rejected(nodes: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["probe", "--nodeport", "30080", "--nodes", nodes, "--ssh-config", os.devnull])
    _, err = capsys.readouterr()
    assert code == 2
    assert "error:" in err and ("not a valid host name" in err or "not an IP address" in err)


@pytest.mark.parametrize("field, value", [("name", "node1;id"), ("name", "$(reboot)"), ("address", "172.18.0.2`id`")])
def test_crafted_cluster_nodes_are_rejected(field: str, value: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    items = objects()
    node = items[0]
    if field == "name":
        node["metadata"]["name"] = value
    else:
        node["status"]["addresses"][0]["address"] = value
    path = tmp_path / "objects.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    code = run(["probe", "svc/web", "--from-file", str(path), "--ssh-config", os.devnull])
    _, err = capsys.readouterr()
    assert code == 2 and repr(value) in err


@pytest.mark.parametrize("args", [
    ["--nodeport", "30080", "--nodes", "node1", "--http", "/a b"],
    ["--nodeport", "30080", "--nodes", "node1", "--jump", "bastion;id"],
    ["--nodeport", "30080", "--nodes", "node1", "--ssh-user", "root;id"],
    ["svc/web", "--nodeport", "30080"],
    [],
])
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["probe", *args, "--ssh-config", os.devnull]) == 2
    capsys.readouterr()


def test_cell_records_carry_the_expectation() -> None:
    plan = plan_without_cluster(NODES[:1], 30080, "TCP", Probing(sources=(LOCAL,)))
    judged = cells(plan, {(0, LOCAL, "node1"): Observation(Seen.OPEN, 0.5)})
    assert judged == [Cell(0, LOCAL, plan.sections[0].columns[0], plan.sections[0].expectations[(LOCAL, "node1")],
                           Observation(Seen.OPEN, 0.5), Verdict.OK)]


# --- output ----------------------------------------------------------------------------------


def _small_run() -> tuple[MatrixPlan, list[Cell]]:
    plan = plan_without_cluster(NODES[:2], 30080, "TCP", Probing(sources=(LOCAL, "node1")))
    found = {
        (0, LOCAL, "node1"): Observation(Seen.OPEN, 0.5), (0, LOCAL, "node2"): Observation(Seen.CLOSED),
        (0, "node1", "node1"): Observation(Seen.OPEN, 0.25), (0, "node1", "node2"): Observation(Seen.CLOSED),
        (0, "node1", "127.0.0.1"): Observation(Seen.OPEN, 0.125, http_status=200, backend="web-1"),
    }
    return plan, cells(plan, found)


def test_table_marks_failures_and_colours_only_when_asked() -> None:
    plan, judged = _small_run()
    summary = summarize(plan, judged)
    text = report.table(plan, judged, summary)
    assert text.splitlines()[:4] == [
        "NodePort 30080/TCP",
        "FROM \\ TO   node1        node2     127.0.0.1",
        "(local)     open 0.5ms   *closed   -",
        "node1       open 0.2ms   *closed   200 web-1 0.1ms",
    ]
    assert "FAIL: 2 of 5 cells miss their expectation; misbehaving: node2" in text
    assert "node2: 30080/TCP refuses connections although it should be open" in text
    assert "\033[" not in text
    coloured = report.table(plan, judged, summary, color=True)
    assert "\033[31m*closed\033[0m" in coloured and "\033[32mopen 0.5ms\033[0m" in coloured
    assert re.sub(r"\033\[\d+m", "", coloured).splitlines()[1:4] == text.splitlines()[1:4]
    wide = report.table(plan, judged, summary, wide=True)
    assert "FROM      TO          ADDRESS            EXPECTED   OBSERVED" in wide


def test_colour_follows_the_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert probe_command._color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not probe_command._color()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.delenv("NO_COLOR")
    assert not probe_command._color()


def test_progress_line_appears_only_for_long_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run that ends before PROGRESS_AFTER shows nothing (an hour: never reached here).
    monkeypatch.setattr(probe_command, "PROGRESS_AFTER", 3600.0)
    quick = io.StringIO()
    with probe_command._ProgressLine(quick) as line:
        line.update(1, 2)
    assert quick.getvalue() == ""
    monkeypatch.setattr(probe_command, "PROGRESS_AFTER", 0.01)
    slow = io.StringIO()
    with probe_command._ProgressLine(slow) as line:
        line.update(3, 10)
        wait_for(lambda: "\rprobing: 3/10 cells done" in slow.getvalue(), what="the progress line")
    assert "\rprobing: 3/10 cells done" in slow.getvalue() and slow.getvalue().endswith("\r\033[K")


def test_udp_without_replies_is_sent_not_failed() -> None:
    plan = plan_without_cluster(NODES[:1], 30053, "UDP", Probing(sources=(LOCAL,)))
    judged = cells(plan, {(0, LOCAL, "node1"): Observation(Seen.SENT, detail="no reply within the timeout")})
    assert judged[0].verdict == Verdict.OK
    text = report.table(plan, judged, summarize(plan, judged))
    assert "(local)     sent" in text and "note: sent = UDP datagram sent, no reply expected" in text
    assert report.records(plan, judged, summarize(plan, judged))["sections"][0]["cells"][0]["detail"] == (
        "sent, no reply expected")


def test_cluster_nodes_by_selector_and_address_type() -> None:
    items = objects()
    items[0]["status"]["addresses"].append({"type": "ExternalIP", "address": "203.0.113.2"})
    items[1]["metadata"]["labels"] = {"pool": "b"}
    state = state_from_objects(items)
    assert probe_command._cluster_nodes(state, "pool=a", "InternalIP", "address") == [
        Node("node1", "172.18.0.2", "172.18.0.2"), Node("node3", "172.18.0.4", "172.18.0.4")]
    assert probe_command._cluster_nodes(state, "pool in (a)", "ExternalIP", "name") == [
        Node("node1", "203.0.113.2", "node1")]
    with pytest.raises(ConfigError, match="no nodes to probe"):
        probe_command._cluster_nodes(state, "pool=c", "InternalIP", "address")
    with pytest.raises(ConfigError):
        probe_command._cluster_nodes(state, "pool in (", "InternalIP", "address")


def test_ssh_config_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PROXYCTL_SSH_CONFIG", str(tmp_path / "missing"))
    assert run(["probe", "--nodeport", "30080", "--nodes", "node1=172.18.0.2"]) == 2
    assert f"ssh config file {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
