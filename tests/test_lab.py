"""The lab end to end: `lab up`, kubectl, real traffic through every node's engine, `lab down`.

One lab (4 nodes, so that one node runs none of the three nginx pods) serves the module; it
is brought up through the CLI with its state in a temporary directory and removed at the
end whatever happens. Traffic is real: HTTP requests from the client's or a pod's network
namespace, answered by the lab's echo servers with their pod name. The next tests crash the
daemon and check that `lab down` leaves nothing behind, for a running, a crashed and a
half-built lab.

`TestNftablesLab` comes last (only one lab runs at a time on a machine): a 3-node lab with
its engines in nftables mode, through the same core checks (NodePorts on every node, a
ClusterIP across nodes, a LoadBalancer IP, what kubectl and the inspectors see).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from kubectl_proxyctl.lab.dataplane import topology
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.lab.supervisor import engine_health

from labfixtures import (
    NGINX_DEMO, NGINX_PODS, Lab, Load, http_request, lab_skip_reason, leftovers, proxyctl, running_lab,
    spread, udp_request, wait_for,
)

SKIP = lab_skip_reason()
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

NODES = 4
NODE_PORT = 30080
LB_SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: nginx-lb
spec:
  type: LoadBalancer
  selector:
    app: nginx
  ports:
  - name: http
    port: 8080
    targetPort: http
"""
AFTER_RESTART = """
apiVersion: v1
kind: Service
metadata:
  name: after-restart
spec:
  selector:
    app: nginx
  ports:
  - port: 80
    targetPort: http
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("labstate"), nodes=NODES) as running:
        yield running


def deploy_nginx(lab: Lab) -> dict[str, str]:
    """The demo Service and pods, applied with kubectl, in every node's rules; returns pod
    name -> node."""
    lab.kubectl("apply", "-f", str(NGINX_DEMO))
    wait_for(lambda: len(lab.ready_endpoints("nginx")) == 3, 60, "3 ready nginx endpoints")
    for node in lab.spec.nodes:  # and in every node's rules
        wait_for(lambda: set(spread(lab.spec.client_ns, node.ip, NODE_PORT, 15)[0]) == set(NGINX_PODS), 15,
                 f"the 3 endpoints on {node.name}")
    return {name: lab.pod(name)["spec"]["nodeName"] for name in NGINX_PODS}


@pytest.fixture(scope="module")
def nginx(lab: Lab) -> dict[str, str]:
    return deploy_nginx(lab)


def load_balancer_ip(lab: Lab) -> str:
    """Create the nginx-lb Service; its LoadBalancer IP once every node programmed it."""
    lab.kubectl("apply", "-f", "-", stdin=LB_SERVICE)
    svc = wait_for(lambda: (lab.kubectl_json("get", "svc", "nginx-lb").get("status") or {})
                   .get("loadBalancer", {}).get("ingress"), 30, "a LoadBalancer IP")
    lb_ip = str(svc[0]["ip"])
    assert lb_ip.startswith("172.18.255.")
    for node in lab.spec.nodes:  # the client's ECMP route may pick any node
        wait_for(lambda: http_request(lab.spec.node_ns(node), lb_ip, 8080, timeout=0.5).ok, 10,
                 f"the LB IP to be programmed on {node.name}")
    return lb_ip


def cluster_ip(lab: Lab, service: str) -> str:
    return str(lab.kubectl_json("get", "svc", service)["spec"]["clusterIP"])


def test_up_again_changes_nothing_and_status_reports_healthy_engines(lab: Lab) -> None:
    pid = lab.supervisor_pid()
    started = time.monotonic()
    again = lab.cli("up", "--nodes", str(NODES))
    assert time.monotonic() - started < 10
    assert "is up" in again.stdout
    assert lab.supervisor_pid() == pid
    status = lab.cli("status").stdout
    for node in lab.spec.nodes:
        row = next(line for line in status.splitlines() if line.startswith(node.name + " "))
        assert node.ip in row and "healthy" in row and row.rstrip().endswith("up"), row
    changed = lab.cli("up", "--nodes", "2", check=False)
    assert changed.returncode == 2 and "lab down" in changed.stderr


def test_nodeport_from_the_client_reaches_every_pod_through_every_node(lab: Lab, nginx: dict[str, str]) -> None:
    for node in lab.spec.nodes:
        pods, errors = spread(lab.spec.client_ns, node.ip, NODE_PORT, 300)
        assert errors == [], f"{node.name}: {len(errors)} failed, e.g. {errors[:3]}"
        assert set(pods) == set(NGINX_PODS), f"{node.name}: {pods}"
        assert min(pods.values()) > 40, f"{node.name}: uneven spread {pods}"


def test_cluster_ip_works_across_nodes_from_a_pod(lab: Lab, nginx: dict[str, str]) -> None:
    free = [n.name for n in lab.spec.nodes if n.name not in nginx.values()]
    assert free, f"every node runs nginx: {nginx}"
    created = lab.cli("run", "probe", "--node", free[0], "--labels", "app=probe").stdout
    probe = created.split()[0].removeprefix("pod/")
    probe_ip = lab.pod(probe)["status"]["podIP"]
    ip = cluster_ip(lab, "nginx")
    answers = [http_request(lab.spec.pod_ns("default", probe), ip, 80) for _ in range(60)]
    assert [a.error for a in answers if not a.ok] == []
    assert {a.pod for a in answers} == set(NGINX_PODS)
    assert {a.client_ip for a in answers} == {probe_ip}, "pod-to-service traffic must keep the pod's IP"
    # and from the root namespace (kubectl's side), through node1, to the service and a pod
    assert http_request(None, ip, 80).pod in NGINX_PODS
    assert http_request(None, probe_ip, 80).client_ip == lab.spec.host_ip


def test_a_pod_reaches_itself_through_its_service(lab: Lab, nginx: dict[str, str]) -> None:
    me = NGINX_PODS[0]
    my_ip = lab.pod(me)["status"]["podIP"]
    ip = cluster_ip(lab, "nginx")
    answers = [http_request(lab.spec.pod_ns("default", me), ip, 80) for _ in range(60)]
    assert [a.error for a in answers if not a.ok] == []
    hairpin = [a for a in answers if a.pod == me]
    assert hairpin, "no request came back to the sending pod"
    gateway = lab.spec.node(nginx[me]).pod_gateway
    assert {a.client_ip for a in hairpin} == {gateway}, f"hairpin traffic must be masqueraded, not from {my_ip}"


def test_load_balancer_ip_from_the_client(lab: Lab, nginx: dict[str, str]) -> None:
    lb_ip = load_balancer_ip(lab)
    pods, errors = spread(lab.spec.client_ns, lb_ip, 8080, 100)
    assert errors == []
    assert set(pods) == set(NGINX_PODS)


def test_kubectl_shows_what_a_real_cluster_would(lab: Lab, nginx: dict[str, str]) -> None:
    svc = lab.kubectl_json("get", "svc", "nginx")
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0]["nodePort"] == NODE_PORT
    assert svc["spec"]["clusterIP"].startswith("10.") and svc["spec"]["clusterIPs"] == [svc["spec"]["clusterIP"]]
    pod_ips = {lab.pod(name)["status"]["podIP"]: name for name in NGINX_PODS}

    endpoints = lab.kubectl_json("get", "endpoints", "nginx")
    addresses = [a for subset in endpoints["subsets"] for a in subset.get("addresses") or []]
    assert {a["ip"] for a in addresses} == set(pod_ips)
    assert {a["targetRef"]["name"] for a in addresses} == set(NGINX_PODS)
    assert {a["nodeName"] for a in addresses} == set(nginx.values())
    assert endpoints["subsets"][0]["ports"][0]["port"] == 80

    slices = lab.kubectl_json("get", "endpointslices", "-l", "kubernetes.io/service-name=nginx")["items"]
    eps = [ep for s in slices for ep in s["endpoints"]]
    assert sorted(ep["addresses"][0] for ep in eps) == sorted(pod_ips)
    assert all(ep["conditions"]["ready"] for ep in eps)
    assert {ep["nodeName"] for ep in eps} == set(nginx.values())
    assert slices[0]["ports"][0]["port"] == 80 and slices[0]["addressType"] == "IPv4"

    table = lab.kubectl("get", "svc", "nginx").stdout
    assert "NodePort" in table and f"80:{NODE_PORT}/TCP" in table
    table = lab.kubectl("get", "endpoints", "nginx").stdout
    assert all(f"{ip}:80" in table for ip in pod_ips), table
    nodes = lab.kubectl("get", "nodes").stdout
    assert all(n.name in nodes for n in lab.spec.nodes)


def test_exec_and_set_ready(lab: Lab, nginx: dict[str, str]) -> None:
    assert lab.cli("exec", "client", "--", "sh", "-c", "exit 3", check=False).returncode == 3
    node1 = lab.cli("exec", "node1", "--", "ip", "-4", "-o", "addr", "show", "cbr0").stdout
    assert "10.244.1.1/24" in node1
    pod = lab.cli("exec", f"pod/{NGINX_PODS[0]}", "--", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert lab.pod(NGINX_PODS[0])["status"]["podIP"] in pod
    assert lab.cli("exec", "pod/nope", "--", "true", check=False).returncode == 1

    victim = NGINX_PODS[1]
    victim_ip = lab.pod(victim)["status"]["podIP"]
    lab.cli("set-ready", victim, "false")
    try:
        wait_for(lambda: victim_ip not in lab.ready_endpoints("nginx"), 10, "the endpoint to become unready")
        node = lab.spec.nodes[0]
        wait_for(lambda: victim not in spread(lab.spec.client_ns, node.ip, NODE_PORT, 30)[0], 10,
                 "traffic to avoid the unready pod")
    finally:
        lab.cli("set-ready", victim, "true")
    wait_for(lambda: victim_ip in lab.ready_endpoints("nginx"), 10, "the endpoint to be ready again")


def test_a_dead_engine_or_pod_server_is_started_again(lab: Lab, nginx: dict[str, str]) -> None:
    record = lab.state_root / lab.name / "run" / "engine-node2.json"
    engine = json.loads(record.read_text())["pid"]
    os.kill(engine, signal.SIGKILL)
    wait_for(lambda: json.loads(record.read_text())["pid"] != engine, 10, "a new engine on node2")
    wait_for(lambda: engine_health(lab.spec.node("node2"))[0], 15, "the new engine to be healthy")

    pod_record = lab.state_root / lab.name / "pods" / f"{lab.spec.pod_ns('default', NGINX_PODS[2])}.json"
    server = json.loads(pod_record.read_text())["pid"]
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: json.loads(pod_record.read_text())["pid"] != server, 10, "a new pod server")
    pod_ip = lab.pod(NGINX_PODS[2])["status"]["podIP"]
    node_ns = lab.spec.node_ns(nginx[NGINX_PODS[2]])
    wait_for(lambda: http_request(node_ns, pod_ip, 80).pod == NGINX_PODS[2], 10, "the pod to answer again")


def test_rolling_replacement_under_load_loses_nothing(lab: Lab, nginx: dict[str, str]) -> None:
    node = lab.spec.nodes[0]
    load = Load(lab.spec.client_ns, node.ip, NODE_PORT, rate=20).start()
    replaced = []
    try:
        for old in NGINX_PODS:
            new = lab.cli("run", "nginx", "--labels", "app=nginx", "--port", "http=80").stdout.split()[0]
            replaced.append(new.removeprefix("pod/"))
            lab.kubectl("delete", "pod", old, "--grace-period=2", "--wait=false")
            wait_for(lambda: lab.kubectl("get", "pod", old, check=False).returncode != 0, 20, f"{old} to be removed")
        time.sleep(1)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"
    assert len(load.answers) > 60
    late = {a.pod for t, a in load.answers[-10:]}
    assert late <= set(replaced), f"old pods still answer at the end: {late}"
    ip = cluster_ip(lab, "nginx")
    wait_for(lambda: len(lab.ready_endpoints("nginx")) == 3, 10, "3 endpoints")
    assert {a.pod for a in (http_request(lab.spec.node_ns(node), ip, 80) for _ in range(30))} == set(replaced)


def test_api_server_down_for_30s_then_back(lab: Lab, nginx: dict[str, str]) -> None:
    node = lab.spec.nodes[1]
    load = Load(lab.spec.client_ns, node.ip, NODE_PORT, rate=20).start()
    try:
        os.kill(lab.supervisor_pid(), signal.SIGKILL)
        time.sleep(30)
        lab.cli("up", "--nodes", str(NODES))
        lab.kubectl("apply", "-f", "-", stdin=AFTER_RESTART)
        ip = cluster_ip(lab, "after-restart")
        for each in lab.spec.nodes:  # the engines' informers retry with backoff (up to 45s)
            wait_for(lambda: http_request(lab.spec.node_ns(each), ip, 80, timeout=0.5).ok, 60,
                     f"the new Service on {each.name}", interval=0.5)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"
    assert len(load.answers) > 500


def test_down_after_the_daemon_was_killed_leaves_nothing(lab: Lab) -> None:
    assert any(leftovers(lab).values())
    os.kill(lab.supervisor_pid(), signal.SIGKILL)
    time.sleep(0.5)
    done = lab.cli("down")
    assert "removed" in done.stdout
    assert leftovers(lab) == {"namespaces": [], "links": [], "processes": [], "files": []}
    assert "nothing to remove" in lab.cli("down").stdout


def test_down_of_a_running_lab_and_of_a_half_built_one(tmp_path: Path) -> None:
    with running_lab(tmp_path, nodes=1) as small:
        small.cli("run", "web", "--port", "80", "--port", "53/udp")
        dns = small.cli("run", "dns", "--port", "5353/udp").stdout.split()[0].removeprefix("pod/")
        dns_ip = small.pod(dns)["status"]["podIP"]
        node1 = small.spec.node_ns(small.spec.nodes[0])
        answer = udp_request(node1, dns_ip, 5353)
        assert answer.startswith(f"pod={dns} client={small.spec.nodes[0].pod_gateway}:"), answer
        small.cli("down")
        assert leftovers(small) == {"namespaces": [], "links": [], "processes": [], "files": []}

    half = Lab(name="thalf", state_root=tmp_path, nodes=2)
    spec = LabSpec.build(half.name, nodes=2, state_root=str(tmp_path))
    topology.up(spec)
    topology.add_pod(spec, spec.nodes[0], spec.pod_ns("default", "orphan"), "10.244.1.9")
    stray = subprocess.Popen(["nsenter", f"--net={topology.netns_path(spec.node_ns(spec.nodes[1]))}",
                              "sleep", "300"], start_new_session=True)
    spec.state_dir.mkdir(parents=True)
    (spec.state_dir / "supervisor.log").write_text("crashed\n")
    try:
        done = subprocess.run([*proxyctl(), "lab", "down", "--name", half.name], env=half.env,
                              capture_output=True, text=True, timeout=60, check=True)
        assert "5 namespaces" in done.stdout and "1 processes" in done.stdout, done.stdout
        assert stray.wait(timeout=5) < 0
        assert leftovers(half) == {"namespaces": [], "links": [], "processes": [], "files": []}
    finally:
        if stray.poll() is None:
            stray.kill()
        topology.teardown(spec)


# --- nftables mode ----------------------------------------------------------------------------

NFT_SKIP = lab_skip_reason("nftables") if SKIP is None else None


def in_netns(netns: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={topology.netns_path(netns)}", "--", *argv],
                          capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.mark.skipif(NFT_SKIP is not None, reason=NFT_SKIP or "")
class TestNftablesLab:
    """A lab whose engines run in nftables mode. NodePorts answer on each node's IP only
    (kube-proxy's nftables default, `--nodeport-addresses primary`): the address the client,
    the README and `probe` use, so everything below is what the iptables lab does."""

    @pytest.fixture(scope="class")
    def nft_lab(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
        with running_lab(tmp_path_factory.mktemp("nftlabstate"), nodes=3, mode="nftables") as running:
            yield running

    @pytest.fixture(scope="class")
    def nft_nginx(self, nft_lab: Lab) -> dict[str, str]:
        return deploy_nginx(nft_lab)

    def test_up_status_and_the_nodes_rules(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        again = nft_lab.cli("up", *nft_lab.up_args)
        assert "is up: 3 nodes (nftables)" in again.stdout
        assert "-- nft list table ip kube-proxy" in again.stdout
        other = nft_lab.cli("up", "--nodes", "3", check=False)  # iptables mode: another shape
        assert other.returncode == 2 and "(nftables)" in other.stderr and "lab down" in other.stderr, other.stderr
        assert f"lab up --name {nft_lab.name} --nodes 3 --mode nftables` keeps it" in other.stderr, other.stderr
        status = nft_lab.cli("status").stdout
        assert f"lab {nft_lab.name}: 3 nodes, nftables;" in status
        assert "NodePorts answer on each node's IP only" in status
        for node in nft_lab.spec.nodes:
            row = next(line for line in status.splitlines() if line.startswith(node.name + " "))
            assert "healthy" in row and row.rstrip().endswith("up"), row
            netns = nft_lab.spec.node_ns(node)
            table = in_netns(netns, "nft", "list", "table", "ip", "kube-proxy")
            assert "chain services {" in table and "default/nginx/tcp/http" in table, table
            assert "KUBE-" not in in_netns(netns, "iptables-save"), f"iptables-mode rules on {node.name}"
        via_cli = nft_lab.cli("exec", "node1", "--", "nft", "list", "table", "ip", "kube-proxy").stdout
        assert "default/nginx/tcp/http" in via_cli

    def test_nodeport_on_every_node_reaches_every_pod(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        for node in nft_lab.spec.nodes:
            pods, errors = spread(nft_lab.spec.client_ns, node.ip, NODE_PORT, 90)
            assert errors == [], f"{node.name}: {len(errors)} failed, e.g. {errors[:3]}"
            assert set(pods) == set(NGINX_PODS), f"{node.name}: {pods}"
            assert min(pods.values()) > 10, f"{node.name}: uneven spread {pods}"
        # The nftables difference: no NodePort on a node's 127.0.0.1.
        node1 = nft_lab.spec.nodes[0]
        assert not http_request(nft_lab.spec.node_ns(node1), "127.0.0.1", NODE_PORT, timeout=1.0).ok
        assert http_request(nft_lab.spec.node_ns(node1), node1.ip, NODE_PORT).pod in NGINX_PODS

    def test_cluster_ip_across_nodes_from_a_pod(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        node = nft_lab.spec.nodes[0].name
        created = nft_lab.cli("run", "probe", "--node", node, "--labels", "app=probe").stdout
        probe = created.split()[0].removeprefix("pod/")
        probe_ip = nft_lab.pod(probe)["status"]["podIP"]
        ip = cluster_ip(nft_lab, "nginx")
        answers = [http_request(nft_lab.spec.pod_ns("default", probe), ip, 80) for _ in range(45)]
        assert [a.error for a in answers if not a.ok] == []
        assert {a.pod for a in answers} == set(NGINX_PODS)
        assert {nft_nginx[a.pod] for a in answers} - {node}, f"no answer from another node than {node}"
        assert {a.client_ip for a in answers} == {probe_ip}, "pod-to-service traffic must keep the pod's IP"
        assert http_request(None, ip, 80).pod in NGINX_PODS  # from the root namespace, through node1

    def test_load_balancer_ip_from_the_client(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        lb_ip = load_balancer_ip(nft_lab)
        pods, errors = spread(nft_lab.spec.client_ns, lb_ip, 8080, 60)
        assert errors == []
        assert set(pods) == set(NGINX_PODS)

    def test_kubectl_and_the_inspectors(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        table = nft_lab.kubectl("get", "svc", "nginx").stdout
        assert "NodePort" in table and f"80:{NODE_PORT}/TCP" in table
        pod_ips = {nft_lab.pod(name)["status"]["podIP"] for name in NGINX_PODS}
        table = nft_lab.kubectl("get", "endpoints", "nginx").stdout
        assert all(f"{ip}:80" in table for ip in pod_ips), table
        endpoints = nft_lab.proxyctl("endpoints", "svc/nginx").stdout
        assert all(name in endpoints for name in NGINX_PODS), endpoints
        # The inspectors read the nodes' nftables rules over SSH (the lab's ssh config).
        verify = nft_lab.proxyctl("verify", "--node", "node2", "--ssh-config", nft_lab.env["PROXYCTL_SSH_CONFIG"])
        assert "In sync" in verify.stdout and "nftables mode" in verify.stdout, verify.stdout
        probe = nft_lab.proxyctl("probe", "svc/nginx", "--proxy-mode", "nftables")
        assert "OK: all" in probe.stdout, probe.stdout
