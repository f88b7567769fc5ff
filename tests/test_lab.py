"""The lab end to end: `lab up`, kubectl, real traffic through every node's engine, `lab down`.

Labs are brought up through the CLI with their state in a temporary directory and removed
whatever happens. Only one lab runs at a time on a machine, so the module keeps one up in a
`LabSlot` and its tests share it: a 4-node iptables lab (one node runs none of the three
nginx pods), or, for `TestNftablesLab` and `TestEbpfLab`, a 3-node lab with its engines in
nftables or eBPF mode.
Traffic is real: HTTP requests from the client's or a pod's network namespace, answered by
the lab's echo servers with their pod name.

Every test starts from a known state, whatever ran before it (the tests pass in any order):

* `lab` is the shared lab of the right shape, brought up again if a test left it without a
  daemon; `nginx` makes sure the demo Service and its three pods are there as
  `NGINX_DEMO` has them, ready and in every node's rules (it puts them back after a test
  replaced pods), and says which node runs each;
* what a test adds (a probe pod, a LoadBalancer Service) it removes, and what it breaks
  on purpose (readiness, an engine, a pod server) it waits to see repaired;
* a test that breaks its lab (kills the daemon or its API server, takes the lab down) is
  marked `@breaks_lab`: it gets a lab no other test will use, which goes down afterwards;
* the tests of `lab down` on a running and a half-built lab build their own, once the
  shared one is down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from kubectl_proxyctl.lab.dataplane import sshd, topology
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.lab.supervisor import LOG_FILE, engine_health
from kubectl_proxyctl.system import cgroups

from labfixtures import (
    NGINX_DEMO, NGINX_PODS, NOTHING_LEFT, Lab, LabSlot, Load, answers_in_pod, api_server_down, cgroup_of,
    ebpf_services, http_request, in_node_netns, kill_daemons, lab_skip_reason, leftovers, programmed, proxyctl,
    replace_under_load, running_lab, spread, udp_request, wait_for,
)
from waiting import TIMEOUT

F = TypeVar("F", bound=Callable[..., object])

SKIP = lab_skip_reason()
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

NODES = 4
NFT_NODES = 3
NODE_PORT = 30080
LOAD_RATE = 20  # new connections per second from `Load`
OUTAGE = 30 * LOAD_RATE  # connections served while the API server is down: 30 s of traffic
SHORT_OUTAGE = 3 * LOAD_RATE  # the same for the repeated outages of the API server's process: 3 s
OUTAGE_CYCLES = 2  # bench/bench_outage.py runs 10 outages of 30 s
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
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSlot]:
    slot = LabSlot(lambda: tmp_path_factory.mktemp("labstate"))
    try:
        yield slot
    finally:
        slot.release()


def breaks_lab(test: F) -> F:
    """Mark a test that breaks its lab (kills the daemon, takes the lab down): its `lab` is
    one no other test will use."""
    test.breaks_lab = True  # type: ignore[attr-defined]
    return test


@pytest.fixture
def lab(labs: LabSlot, request: pytest.FixtureRequest) -> Iterator[Lab]:
    if getattr(request.function, "breaks_lab", False):
        with labs.take(NODES) as own:
            yield own
    else:
        yield labs.get(NODES)


@pytest.fixture
def nginx(lab: Lab) -> dict[str, str]:
    return nginx_in_place(lab)


@pytest.fixture
def no_shared_lab(labs: LabSlot) -> None:
    """For a test that builds labs of its own: the shared one goes down first."""
    labs.release()


NGINX_SELECTOR = "/api/v1/namespaces/default/pods?labelSelector=app%3Dnginx"


def deploy_nginx(lab: Lab) -> dict[str, str]:
    """The demo Service and pods, applied with kubectl, in every node's rules; returns pod
    name -> node."""
    lab.kubectl("apply", "-f", str(NGINX_DEMO))
    wait_for(lambda: len(lab.ready_endpoints("nginx")) == 3, 60, "3 ready nginx endpoints")
    in_every_nodes_rules(lab)
    return {name: lab.pod(name)["spec"]["nodeName"] for name in NGINX_PODS}


def in_every_nodes_rules(lab: Lab) -> None:
    for node in lab.spec.nodes:
        wait_for(lambda: set(spread(lab.spec.client_ns, node.ip, NODE_PORT, 15)[0]) == set(NGINX_PODS), TIMEOUT,
                 f"the 3 endpoints on {node.name}")


def nginx_in_place(lab: Lab) -> dict[str, str]:
    """The known state of the nginx demo: its Service, and exactly its three pods, ready,
    their endpoints in every node's rules. Deployed on a new lab, left alone when it is
    there, put back when a test changed it; returns pod name -> node."""
    pods = {p["metadata"]["name"]: p for p in lab.api.list(NGINX_SELECTOR)}
    ips = {(p.get("status") or {}).get("podIP") for p in pods.values()}
    if (set(pods) == set(NGINX_PODS) and not any(p["metadata"].get("deletionTimestamp") for p in pods.values())
            and lab.ready_endpoints("nginx") == ips):
        in_every_nodes_rules(lab)
        return {name: pod["spec"]["nodeName"] for name, pod in pods.items()}
    # Pods that are not the demo's (replacements) or on their way out go; the demo's are
    # made ready again and the missing ones applied again.
    going = sorted(name for name, pod in pods.items()
                   if name not in NGINX_PODS or pod["metadata"].get("deletionTimestamp"))
    if going:
        lab.kubectl("delete", "pod", *going, "--grace-period=0", "--force", "--wait=false")
        wait_for(lambda: not {p["metadata"]["name"] for p in lab.api.list(NGINX_SELECTOR)} & set(going), TIMEOUT,
                 f"{', '.join(going)} to be removed")
    for name in set(pods) & set(NGINX_PODS) - set(going):
        lab.cli("set-ready", name, "true")
    return deploy_nginx(lab)


def load_balancer_ip(lab: Lab) -> str:
    """Create the nginx-lb Service; its LoadBalancer IP once every node programmed it."""
    lab.kubectl("apply", "-f", "-", stdin=LB_SERVICE)
    svc = wait_for(lambda: (lab.kubectl_json("get", "svc", "nginx-lb").get("status") or {})
                   .get("loadBalancer", {}).get("ingress"), TIMEOUT, "a LoadBalancer IP")
    lb_ip = str(svc[0]["ip"])
    assert lb_ip.startswith("172.18.255.")
    for node in lab.spec.nodes:  # the client's ECMP route may pick any node
        wait_for(lambda: http_request(lab.spec.node_ns(node), lb_ip, 8080, timeout=0.5).ok, TIMEOUT,
                 f"the LB IP to be programmed on {node.name}")
    return lb_ip


def without_load_balancer(lab: Lab) -> None:
    lab.kubectl("delete", "svc", "nginx-lb", "--ignore-not-found")


def delete_pod(lab: Lab, name: str) -> None:
    lab.kubectl("delete", "pod", name, "--grace-period=0", "--force", "--ignore-not-found")


def cluster_ip(lab: Lab, service: str) -> str:
    return str(lab.kubectl_json("get", "svc", service)["spec"]["clusterIP"])


def test_up_again_changes_nothing_and_status_reports_healthy_engines(lab: Lab) -> None:
    pid = lab.supervisor_pid()
    engines = lab.engine_pids()
    assert sorted(engines) == [n.name for n in lab.spec.nodes], engines
    again = lab.cli("up", "--nodes", str(NODES))
    assert "is up" in again.stdout
    assert lab.supervisor_pid() == pid
    assert lab.engine_pids() == engines, "`lab up` of a running lab must not start anything again"
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
    try:
        probe_ip = lab.pod(probe)["status"]["podIP"]
        ip = cluster_ip(lab, "nginx")
        answers = [http_request(lab.spec.pod_ns("default", probe), ip, 80) for _ in range(60)]
        assert [a.error for a in answers if not a.ok] == []
        assert {a.pod for a in answers} == set(NGINX_PODS)
        assert {a.client_ip for a in answers} == {probe_ip}, "pod-to-service traffic must keep the pod's IP"
        # and from the root namespace (kubectl's side), through node1, to the service and a pod
        assert http_request(None, ip, 80).pod in NGINX_PODS
        assert http_request(None, probe_ip, 80).client_ip == lab.spec.host_ip
    finally:
        delete_pod(lab, probe)


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
    try:
        lb_ip = load_balancer_ip(lab)
        pods, errors = spread(lab.spec.client_ns, lb_ip, 8080, 100)
        assert errors == []
        assert set(pods) == set(NGINX_PODS)
    finally:
        without_load_balancer(lab)


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


def test_inspect_any_node_through_the_api_without_ssh(lab: Lab, nginx: dict[str, str]) -> None:
    pods = lab.kubectl_json("get", "pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=kubectl-proxyctl")
    by_node = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in pods["items"]}
    assert set(by_node) == {n.name for n in lab.spec.nodes}
    rules = lab.kubectl("exec", "-n", "kube-system", by_node["node2"], "--", "iptables-save", "-t", "nat").stdout
    assert "KUBE-SERVICES" in rules and '"default/nginx:http' in rules

    # No ssh config at all: whatever works here went through the API.
    env = {k: v for k, v in lab.env.items() if k != "PROXYCTL_SSH_CONFIG"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*proxyctl(), *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    explain = run("explain", "svc/nginx", "--node", "node2")
    assert explain.returncode == 0, explain.stderr
    lines = explain.stdout.rstrip("\n").splitlines()
    assert len(lines) <= 15, explain.stdout
    assert f"node2 (pod kube-system/{by_node['node2']})" in lines[0], lines[0]
    assert all(name in explain.stdout for name in NGINX_PODS), explain.stdout
    dump = run("dump", "--node", "node2")
    assert dump.returncode == 0 and "default/nginx" in dump.stdout, dump.stderr
    verify = run("verify", "--node", "node2")
    assert verify.returncode == 0 and "In sync" in verify.stdout, verify.stdout + verify.stderr
    every = run("verify", "--all-nodes")
    assert every.returncode == 0, every.stdout + every.stderr
    rows = every.stdout.splitlines()
    assert [r.split()[0] for r in rows[1:-1]] == [n.name for n in lab.spec.nodes]
    assert all("in sync" in r and "pod kube-system/proxyctl-" in r for r in rows[1:-1]), every.stdout
    assert rows[-1].startswith(f"{len(lab.spec.nodes)} of {len(lab.spec.nodes)} node(s) in sync")

    # A short-lived debug pod when asked: created on the node, used, deleted.
    debug = run("verify", "--node", "node3", "--via", "debug-pod")
    assert debug.returncode == 0 and "In sync" in debug.stdout, debug.stdout + debug.stderr
    left = lab.kubectl_json("get", "pods", "-A", "-l", "app.kubernetes.io/name=kubectl-proxyctl-debug")["items"]
    assert left == [], [p["metadata"]["name"] for p in left]

    # SSH when asked, with the lab's ssh config.
    ssh = lab.proxyctl("explain", "svc/nginx", "--node", "node2", "--via", "ssh")
    assert "node2 (ssh node2)" in ssh.stdout, ssh.stdout

    # A token without exec rights: one line, exit 3.
    viewer = lab.state_root / lab.name / "kubeconfig-viewer"
    refused = run("explain", "svc/nginx", "--node", "node2", "--kubeconfig", str(viewer))
    assert refused.returncode == 3 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert 'cannot create resource "pods/exec"' in refused.stderr


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
        wait_for(lambda: victim_ip not in lab.ready_endpoints("nginx"), TIMEOUT, "the endpoint to become unready")
        node = lab.spec.nodes[0]
        wait_for(lambda: victim not in spread(lab.spec.client_ns, node.ip, NODE_PORT, 30)[0], TIMEOUT,
                 "traffic to avoid the unready pod")
    finally:
        lab.cli("set-ready", victim, "true")
    wait_for(lambda: victim_ip in lab.ready_endpoints("nginx"), TIMEOUT, "the endpoint to be ready again")


def test_a_dead_engine_or_pod_server_is_started_again(lab: Lab, nginx: dict[str, str]) -> None:
    record = lab.state_root / lab.name / "run" / "engine-node2.json"
    engine = json.loads(record.read_text())["pid"]
    os.kill(engine, signal.SIGKILL)
    wait_for(lambda: json.loads(record.read_text())["pid"] != engine, TIMEOUT, "a new engine on node2")
    wait_for(lambda: engine_health(lab.spec.node("node2"))[0], TIMEOUT, "the new engine to be healthy")

    pod_record = lab.state_root / lab.name / "pods" / f"{lab.spec.pod_ns('default', NGINX_PODS[2])}.json"
    server = json.loads(pod_record.read_text())["pid"]
    os.kill(server, signal.SIGKILL)
    wait_for(lambda: json.loads(pod_record.read_text())["pid"] != server, TIMEOUT, "a new pod server")
    pod_ip = lab.pod(NGINX_PODS[2])["status"]["podIP"]
    node_ns = lab.spec.node_ns(nginx[NGINX_PODS[2]])
    wait_for(lambda: http_request(node_ns, pod_ip, 80).pod == NGINX_PODS[2], TIMEOUT, "the pod to answer again")


def test_rolling_replacement_under_load_loses_nothing(lab: Lab, nginx: dict[str, str]) -> None:
    # The replacements stay behind: the `nginx` fixture of the next test puts the demo pods back.
    node = lab.spec.nodes[0]
    load, replaced = replace_under_load(lab, list(NGINX_PODS), node.ip, NODE_PORT, LOAD_RATE)
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"
    assert len(load.answers) > 60
    late = {a.pod for t, a in load.answers[-10:]}
    assert late <= set(replaced), f"old pods still answer at the end: {late}"
    ip = cluster_ip(lab, "nginx")
    wait_for(lambda: len(lab.ready_endpoints("nginx")) == 3, TIMEOUT, "3 endpoints")
    assert {a.pod for a in (http_request(lab.spec.node_ns(node), ip, 80) for _ in range(30))} == set(replaced)


@breaks_lab
def test_api_server_down_for_30s_then_back(lab: Lab, nginx: dict[str, str]) -> None:
    node = lab.spec.nodes[1]
    load = Load(lab.spec.client_ns, node.ip, NODE_PORT, rate=LOAD_RATE).start()
    engines = lab.engine_pids()
    try:
        kill_daemons(lab)  # the daemon and its API server: each would start the other again
        wait_for(lambda: not lab.supervisor_running(), TIMEOUT, "the killed daemon (and its API server) to be gone")
        # The outage lasts while 30 s worth of connections are served by the rules the
        # engines keep (counted, so a slow machine gets the same outage, only longer).
        down = len(load.answers)
        wait_for(lambda: len(load.answers) >= down + OUTAGE, 4 * 30, f"{OUTAGE} connections while the API is down",
                 interval=0.5)
        lab.cli("up", "--nodes", str(NODES))
        assert lab.engine_pids() == engines, "`lab up` after a crash must adopt the engines, not start others"
        lab.kubectl("apply", "-f", "-", stdin=AFTER_RESTART)
        ip = cluster_ip(lab, "after-restart")
        for each in lab.spec.nodes:  # the engines' informers retry every second (the deadline bounds a hang)
            wait_for(lambda: http_request(lab.spec.node_ns(each), ip, 80, timeout=0.5).ok, 45 + 2 * TIMEOUT,
                     f"the new Service on {each.name}", interval=0.5)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"
    assert len(load.answers) > 500


@breaks_lab
def test_down_after_the_daemon_was_killed_leaves_nothing(lab: Lab) -> None:
    assert any(leftovers(lab).values())
    kill_daemons(lab)
    wait_for(lambda: not lab.supervisor_running(), TIMEOUT, "the killed daemon to be gone")
    done = lab.cli("down")
    assert "removed" in done.stdout
    assert leftovers(lab) == NOTHING_LEFT
    assert "nothing to remove" in lab.cli("down").stdout


def test_status_json_reports_every_component(lab: Lab, nginx: dict[str, str]) -> None:
    report = lab.status()
    assert (report["name"], report["mode"]) == (lab.name, "iptables")
    assert report["supervisor"] == {"pid": lab.supervisor_pid(), "alive": True}
    api = report["apiserver"]
    assert api["pid"] == lab.control_plane_pid() and api["alive"] and api["answers"], api
    assert api["error"] is None and int(api["resourceVersion"]) > 0 and api["url"] == lab.spec.api_url
    for part in ("controllers", "podRuntime"):  # they live in the API server's process
        assert report[part] == {"pid": api["pid"], "alive": True, "process": "control-plane"}
    engines = lab.engine_pids()
    assert [n["name"] for n in report["nodes"]] == [n.name for n in lab.spec.nodes]
    for node in report["nodes"]:
        assert node["engine"] == {"pid": engines[node["name"]], "alive": True, "health": "healthy"}, node
        if sshd.sshd_available():
            assert node["sshd"]["alive"] and isinstance(node["sshd"]["pid"], int) and node["sshd"]["port"] == "up"
    pods = {p["name"]: p for p in report["pods"]}
    for name, node_name in nginx.items():
        pod = pods[name]
        assert (pod["node"], pod["ready"], pod["status"], pod["alive"]) == (node_name, True, "Running", True), pod
        assert isinstance(pod["pid"], int) and pod["ip"] == lab.pod(name)["status"]["podIP"]
    (svc,) = [s for s in report["services"] if (s["namespace"], s["name"]) == ("default", "nginx")]
    assert svc["type"] == "NodePort" and svc["endpoints"] == {"ready": 3, "total": 3}
    assert svc["ports"][0]["nodePort"] == NODE_PORT and svc["clusterIP"] == cluster_ip(lab, "nginx")
    table = lab.cli("status").stdout  # the tables stay
    assert f"daemon running (pid {lab.supervisor_pid()}); API server running (pid {api['pid']}, answers)" in table
    assert "nginx" in table and "3/3 ready" in table


def test_run_with_an_invalid_name_is_a_usage_error(lab: Lab) -> None:
    done = lab.cli("run", "x;y", check=False)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert '"x;y-' in done.stderr and "Invalid value" in done.stderr, done.stderr  # the server's message
    assert not [p for p in lab.api.list("/api/v1/pods") if p["metadata"]["name"].startswith("x;y")]


@breaks_lab
def test_a_killed_api_server_or_daemon_is_started_again_by_the_other(lab: Lab, nginx: dict[str, str]) -> None:
    engines = lab.engine_pids()
    svc = lab.kubectl_json("get", "svc", "nginx")
    ips = {lab.pod(name)["status"]["podIP"] for name in NGINX_PODS}
    rv = int(lab.status()["apiserver"]["resourceVersion"])

    # The API server's process is killed: the supervisor starts it again, with every object.
    control_plane = lab.control_plane_pid()
    killed = time.monotonic()
    os.kill(control_plane, signal.SIGKILL)
    wait_for(lambda: lab.control_plane_running() and lab.control_plane_pid() != control_plane and lab.api_answers(),
             TIMEOUT, "the supervisor to start the API server again")
    print(f"the API server answered again {time.monotonic() - killed:.2f}s after it was killed")
    again = lab.kubectl_json("get", "svc", "nginx")
    assert {k: again["metadata"][k] for k in ("uid", "resourceVersion", "creationTimestamp")} == \
        {k: svc["metadata"][k] for k in ("uid", "resourceVersion", "creationTimestamp")}
    assert again["spec"] == svc["spec"]
    assert int(lab.status()["apiserver"]["resourceVersion"]) >= rv
    assert lab.ready_endpoints("nginx") == ips

    # The supervisor is killed: the control plane starts a new one, which adopts everything.
    supervisor, control_plane = lab.supervisor_pid(), lab.control_plane_pid()
    log = lab.state_root / lab.name / LOG_FILE
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: lab.supervisor_running() and lab.supervisor_pid() != supervisor, TIMEOUT,
             "the control plane to start a new supervisor")
    wait_for(lambda: f"adopted control-plane (pid {control_plane})" in log.read_text(), TIMEOUT,
             "the new supervisor to adopt the control plane")
    assert lab.control_plane_pid() == control_plane and lab.engine_pids() == engines
    assert lab.daemon_pids() == {"supervise": [lab.supervisor_pid()], "control-plane": [control_plane]}
    report = lab.status()
    assert all(n["engine"]["alive"] and n["engine"]["health"] == "healthy" for n in report["nodes"]), report["nodes"]
    lab.cli("up", *lab.up_args)  # changes nothing
    assert lab.daemon_pids() == {"supervise": [lab.supervisor_pid()], "control-plane": [control_plane]}
    assert lab.engine_pids() == engines


@breaks_lab
def test_api_server_outages_lose_no_request_and_new_services_reach_every_node(
        lab: Lab, nginx: dict[str, str]) -> None:
    """The API server's process killed and kept down 3 s, twice; traffic to nginx never
    fails, and a Service created right after each restart reaches every node's rules
    (bench/bench_outage.py measures how fast, over 10 outages of 30 s)."""
    node = lab.spec.nodes[2]
    load = Load(lab.spec.client_ns, node.ip, NODE_PORT, rate=LOAD_RATE).start()
    uid = lab.kubectl_json("get", "svc", "nginx")["metadata"]["uid"]
    figures = []
    try:
        for cycle in range(OUTAGE_CYCLES):
            with api_server_down(lab):
                assert not lab.api_answers()
                down = len(load.answers)
                wait_for(lambda: len(load.answers) >= down + SHORT_OUTAGE, 4 * 3,
                         f"{SHORT_OUTAGE} connections while the API is down", interval=0.2)
            wait_for(lab.api_answers, TIMEOUT, "the supervisor to start the API server again")
            created = time.monotonic()
            body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"outage-{cycle}"},
                    "spec": {"selector": {"app": "nginx"}, "ports": [{"port": 80, "targetPort": "http"}]}}
            ip = lab.api.request("POST", "/api/v1/namespaces/default/services", body)["spec"]["clusterIP"]
            for each in lab.spec.nodes:  # the deadline only bounds a hang
                wait_for(lambda: programmed(lab, each.name, ip), 45 + TIMEOUT,
                         f"outage-{cycle} ({ip}) in {each.name}'s rules", interval=0.02)
            figures.append(time.monotonic() - created)
            assert lab.kubectl_json("get", "svc", "nginx")["metadata"]["uid"] == uid
    finally:
        load.stop()
    print(f"created right after the restart -> in every node's rules: {', '.join(f'{f:.2f}s' for f in figures)}")
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"
    assert len(load.answers) > OUTAGE_CYCLES * SHORT_OUTAGE
    ip = cluster_ip(lab, f"outage-{OUTAGE_CYCLES - 1}")
    assert http_request(lab.spec.node_ns(node), ip, 80).pod in NGINX_PODS


def test_down_of_a_running_lab_and_of_a_half_built_one(no_shared_lab: None, tmp_path: Path) -> None:
    with running_lab(tmp_path, nodes=1) as small:
        small.cli("run", "web", "--port", "80", "--port", "53/udp")
        dns = small.cli("run", "dns", "--port", "5353/udp").stdout.split()[0].removeprefix("pod/")
        dns_ip = small.pod(dns)["status"]["podIP"]
        node1 = small.spec.node_ns(small.spec.nodes[0])
        answer = udp_request(node1, dns_ip, 5353)
        assert answer.startswith(f"pod={dns} client={small.spec.nodes[0].pod_gateway}:"), answer
        small.cli("down")
        assert leftovers(small) == NOTHING_LEFT

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
        assert "3 cgroups" in done.stdout or cgroups.cgroup2_root() is None, done.stdout
        assert stray.wait(timeout=5) < 0
        assert leftovers(half) == NOTHING_LEFT
    finally:
        if stray.poll() is None:
            stray.kill()
        topology.teardown(spec)


# --- nftables mode ----------------------------------------------------------------------------

NFT_SKIP = lab_skip_reason("nftables") if SKIP is None else None


def in_netns(netns: str, *argv: str) -> str:
    return subprocess.run(["nsenter", f"--net={topology.netns_path(netns)}", "--", *argv],
                          capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.fixture
def nft_lab(labs: LabSlot) -> Lab:
    return labs.get(NFT_NODES, "nftables")


@pytest.fixture
def nft_nginx(nft_lab: Lab) -> dict[str, str]:
    return nginx_in_place(nft_lab)


@pytest.mark.skipif(NFT_SKIP is not None, reason=NFT_SKIP or "")
class TestNftablesLab:
    """A lab whose engines run in nftables mode. NodePorts answer on each node's IP only
    (kube-proxy's nftables default, `--nodeport-addresses primary`): the address the client,
    the README and `probe` use, so everything below is what the iptables lab does."""

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
        try:
            probe_ip = nft_lab.pod(probe)["status"]["podIP"]
            ip = cluster_ip(nft_lab, "nginx")
            answers = [http_request(nft_lab.spec.pod_ns("default", probe), ip, 80) for _ in range(45)]
            assert [a.error for a in answers if not a.ok] == []
            assert {a.pod for a in answers} == set(NGINX_PODS)
            assert {nft_nginx[a.pod] for a in answers} - {node}, f"no answer from another node than {node}"
            assert {a.client_ip for a in answers} == {probe_ip}, "pod-to-service traffic must keep the pod's IP"
            assert http_request(None, ip, 80).pod in NGINX_PODS  # from the root namespace, through node1
        finally:
            delete_pod(nft_lab, probe)

    def test_load_balancer_ip_from_the_client(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        try:
            lb_ip = load_balancer_ip(nft_lab)
            pods, errors = spread(nft_lab.spec.client_ns, lb_ip, 8080, 60)
            assert errors == []
            assert set(pods) == set(NGINX_PODS)
        finally:
            without_load_balancer(nft_lab)

    def test_kubectl_and_the_inspectors(self, nft_lab: Lab, nft_nginx: dict[str, str]) -> None:
        table = nft_lab.kubectl("get", "svc", "nginx").stdout
        assert "NodePort" in table and f"80:{NODE_PORT}/TCP" in table
        pod_ips = {nft_lab.pod(name)["status"]["podIP"] for name in NGINX_PODS}
        table = nft_lab.kubectl("get", "endpoints", "nginx").stdout
        assert all(f"{ip}:80" in table for ip in pod_ips), table
        endpoints = nft_lab.proxyctl("endpoints", "svc/nginx").stdout
        assert all(name in endpoints for name in NGINX_PODS), endpoints
        # The inspectors read the nodes' nftables rules over SSH when asked (the lab's ssh config).
        verify = nft_lab.proxyctl("verify", "--node", "node2", "--via", "ssh")
        assert "In sync" in verify.stdout and "nftables mode" in verify.stdout, verify.stdout
        probe = nft_lab.proxyctl("probe", "svc/nginx", "--proxy-mode", "nftables")
        assert "OK: all" in probe.stdout, probe.stdout


# --- eBPF mode --------------------------------------------------------------------------------

EBPF_NODES = 3
EBPF_SKIP = lab_skip_reason("ebpf") if SKIP is None else None


@pytest.fixture
def ebpf_lab(labs: LabSlot) -> Lab:
    return labs.get(EBPF_NODES, "ebpf")


@pytest.fixture
def ebpf_nginx(ebpf_lab: Lab) -> dict[str, str]:
    return nginx_in_place(ebpf_lab)


def probe_pod(lab: Lab, node: str) -> str:
    """A pod on `node` to send requests from (delete it with `delete_pod`)."""
    created = lab.cli("run", "probe", "--node", node, "--labels", "app=probe").stdout
    return created.split()[0].removeprefix("pod/")


@pytest.mark.skipif(EBPF_SKIP is not None, reason=EBPF_SKIP or "")
class TestEbpfLab:
    """A lab whose engines run in eBPF mode: each attaches its programs to its node's cgroup,
    which holds the node's pods and what runs in them, so a pod's connect() to a Service goes
    straight to an endpoint (no NAT, no conntrack entry for the Service address); traffic
    from the client reaches NodePorts and LoadBalancer IPs through each node's
    `proxyctl-ebpf` nftables table. Requests "from a pod" are sent by curl run in the pod
    (`lab exec pod/…`, `kubectl exec`), which joins the node's cgroup as the pod's processes
    do; a socket this test process opens in a pod's namespace would not be load-balanced."""

    def test_up_status_cgroups_and_programs(self, ebpf_lab: Lab, ebpf_nginx: dict[str, str]) -> None:
        lab = ebpf_lab
        again = lab.cli("up", *lab.up_args)
        assert "is up: 3 nodes (ebpf)" in again.stdout
        assert f"-- bpftool map dump pinned /sys/fs/bpf/proxyctl-{lab.name}-node1/services4" in again.stdout
        status = lab.cli("status").stdout
        assert f"lab {lab.name}: 3 nodes, ebpf;" in status and "table proxyctl-ebpf" in status, status
        root = cgroups.cgroup2_root()
        assert root is not None
        engines = lab.engine_pids()
        report = lab.status()
        ip = cluster_ip(lab, "nginx")
        for node in lab.spec.nodes:
            row = next(line for line in status.splitlines() if line.startswith(node.name + " "))
            assert "healthy" in row, row
            cgroup = f"{root}/{lab.spec.node_cgroup(node)}"
            # The engine: in the node's network namespace, with the node's cgroup and pins, in no node cgroup.
            argv = Path(f"/proc/{engines[node.name]}/cmdline").read_bytes().decode().split("\0")
            assert argv[argv.index("--cgroup-path") + 1] == cgroup, argv
            assert argv[argv.index("--bpf-pin-path") + 1] == lab.spec.node_pin_path(node), argv
            assert not cgroup_of(engines[node.name]).startswith(f"/{lab.spec.cgroup}"), "the engine is in a node cgroup"
            assert os.stat(f"/proc/{engines[node.name]}/ns/net").st_ino == \
                os.stat(topology.netns_path(lab.spec.node_ns(node))).st_ino
            # Its programs on the node's cgroup, its maps pinned, its entry-point table.
            shown = subprocess.run(["bpftool", "cgroup", "show", cgroup], capture_output=True, text=True,
                                   check=True).stdout
            assert "connect4" in shown and "sendmsg4" in shown, shown
            assert f"{ip}:80/TCP" in ebpf_services(lab.spec.node_pin_path(node))
            netns = lab.spec.node_ns(node)
            table = in_node_netns(netns, "nft", "list", "table", "ip", "proxyctl-ebpf", check=True).stdout
            assert f"tcp . {NODE_PORT} : goto external-" in table, table
            entries = in_node_netns(netns, "nft", "list", "map", "ip", "proxyctl-ebpf", "service-ips", check=True)
            assert ip not in entries.stdout, "the entry-point table serves no ClusterIP"
            assert "KUBE-" not in in_node_netns(netns, "iptables-save").stdout, f"iptables-mode rules on {node.name}"
        # The pods' servers run in their node's cgroup.
        for pod in report["pods"]:
            if pod["namespace"] == "default" and pod["name"] in NGINX_PODS:
                assert cgroup_of(pod["pid"]) == f"/{lab.spec.node_cgroup(pod['node'])}", pod

    def test_cluster_ip_from_a_pod_across_nodes_without_conntrack(
            self, ebpf_lab: Lab, ebpf_nginx: dict[str, str]) -> None:
        lab = ebpf_lab
        node = lab.spec.nodes[0].name
        probe = probe_pod(lab, node)
        try:
            probe_ip = lab.pod(probe)["status"]["podIP"]
            ip = cluster_ip(lab, "nginx")
            netns = lab.spec.node_ns(node)
            in_node_netns(netns, "conntrack", "-F")
            answers = answers_in_pod(lab, probe, ip, 80, 45)
            assert [a.error for a in answers if not a.ok] == []
            assert {a.pod for a in answers} == set(NGINX_PODS)
            assert {ebpf_nginx[a.pod] for a in answers} - {node}, f"no answer from another node than {node}"
            assert {a.client_ip for a in answers} == {probe_ip}, "pod-to-service traffic must keep the pod's IP"
            # connect() was sent to the endpoint: the node saw no packet for the Service address.
            tracked = in_node_netns(netns, "conntrack", "-L", "-d", ip)
            assert tracked.stdout.strip() == "", tracked.stdout
            # The pods/exec API (kubectl exec) runs commands in the pod's node's cgroup too.
            through_api = lab.kubectl("exec", probe, "--", "curl", "-s", "-m", "2", f"http://{ip}/").stdout
            assert through_api.startswith("pod=") and through_api.split()[0][4:] in NGINX_PODS, through_api
            # Commands in a pod run in its node's cgroup, whichever way they are started; commands
            # on a node or the client in none of the lab's.
            mine = f"0::/{lab.spec.node_cgroup(node)}"
            assert lab.cli("exec", f"pod/{probe}", "--", "cat", "/proc/self/cgroup").stdout.splitlines()[-1] == mine
            assert lab.kubectl("exec", probe, "--", "cat", "/proc/self/cgroup").stdout.splitlines()[-1] == mine
            for target in (node, "client"):
                seen = lab.cli("exec", target, "--", "cat", "/proc/self/cgroup").stdout.splitlines()[-1]
                assert not seen.startswith(f"0::/{lab.spec.cgroup}"), (target, seen)
            # Node-level commands are not load-balanced: the node has no rule for a ClusterIP.
            assert not http_request(netns, ip, 80, timeout=1.0).ok
        finally:
            delete_pod(lab, probe)

    def test_nodeport_from_the_client_through_every_node(self, ebpf_lab: Lab, ebpf_nginx: dict[str, str]) -> None:
        for node in ebpf_lab.spec.nodes:
            pods, errors = spread(ebpf_lab.spec.client_ns, node.ip, NODE_PORT, 90)
            assert errors == [], f"{node.name}: {len(errors)} failed, e.g. {errors[:3]}"
            assert set(pods) == set(NGINX_PODS), f"{node.name}: {pods}"
            assert min(pods.values()) > 10, f"{node.name}: uneven spread {pods}"

    def test_load_balancer_ip_from_the_client(self, ebpf_lab: Lab, ebpf_nginx: dict[str, str]) -> None:
        lab = ebpf_lab
        try:
            lb_ip = load_balancer_ip(lab)  # answered on every node (through its entry-point table)
            assert all(programmed(lab, node.name, lb_ip) for node in lab.spec.nodes)
            pods, errors = spread(lab.spec.client_ns, lb_ip, 8080, 60)
            assert errors == []
            assert set(pods) == set(NGINX_PODS)
        finally:
            without_load_balancer(lab)

    def test_a_new_supervisor_adopts_the_nsenter_engines(self, ebpf_lab: Lab, ebpf_nginx: dict[str, str]) -> None:
        lab = ebpf_lab
        engines = lab.engine_pids()
        supervisor, control_plane = lab.supervisor_pid(), lab.control_plane_pid()
        log = lab.state_root / lab.name / LOG_FILE
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: lab.supervisor_running() and lab.supervisor_pid() != supervisor, TIMEOUT,
                 "the control plane to start a new supervisor")
        wait_for(lambda: all(f"adopted engine-{n.name}" in log.read_text() for n in lab.spec.nodes), TIMEOUT,
                 "the new supervisor to adopt every engine")
        assert lab.engine_pids() == engines and lab.control_plane_pid() == control_plane
        assert all(n["engine"]["alive"] and n["engine"]["health"] == "healthy" for n in lab.status()["nodes"])

    def test_down_leaves_no_cgroup_pin_program_or_namespace(self, labs: LabSlot) -> None:
        with labs.take(EBPF_NODES, "ebpf") as lab:
            nginx_in_place(lab)
            left = leftovers(lab)
            assert left["cgroups"] and left["pins"] and left["programs"], left
            done = lab.cli("down")
            assert "3 BPF pin directories" in done.stdout and "4 cgroups" in done.stdout, done.stdout
            assert leftovers(lab) == NOTHING_LEFT
            assert "nothing to remove" in lab.cli("down").stdout

    def test_down_of_a_half_built_ebpf_lab(self, no_shared_lab: None, tmp_path: Path) -> None:
        from kubectl_proxyctl.lab.spec import BPFFS

        half = Lab(name="thalfb", state_root=tmp_path, nodes=2, mode="ebpf")
        spec = LabSpec.build(half.name, nodes=2, mode="ebpf", state_root=str(tmp_path))
        topology.up(spec)
        root = cgroups.cgroup2_root()
        assert root is not None
        # What a crash leaves: a process in a node's cgroup (outside every lab namespace) and
        # an engine's pins (a map and a directory of links).
        stray = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                 preexec_fn=cgroups.joiner(f"{root}/{spec.node_cgroup('node1')}"))
        pin = spec.node_pin_path("node2")
        os.makedirs(f"{pin}/links")
        subprocess.run(["bpftool", "map", "create", f"{pin}/names", "type", "hash", "key", "4", "value", "4",
                        "entries", "1", "name", "pxc_names"], check=True)
        other = f"{BPFFS}/proxyctl-{half.name}x-node1"  # another lab's name: not ours
        os.makedirs(other)
        try:
            done = subprocess.run([*proxyctl(), "lab", "down", "--name", half.name], env=half.env,
                                  capture_output=True, text=True, timeout=60, check=True)
            assert "1 processes" in done.stdout and "3 cgroups" in done.stdout, done.stdout
            assert "1 BPF pin directories" in done.stdout, done.stdout
            assert stray.wait(timeout=5) < 0
            assert leftovers(half) == NOTHING_LEFT
            assert os.path.isdir(other)
        finally:
            if stray.poll() is None:
                stray.kill()
            os.rmdir(other)
            topology.teardown(spec)
