"""The lab on the upstream kube-apiserver and etcd (`lab up --apiserver external`).

kube-apiserver (k8s.io/kubernetes, the release tests/reference's kube-proxy comes from) and
etcd are built once by `tests/reference/build-apiserver` (or taken from
`$PROXYCTL_KUBE_APISERVER` and `$PROXYCTL_ETCD`). The module keeps one 3-node lab on them and
runs a subset of the lab suite against it: the demo flow (the nginx NodePort Service,
reached from the client through every node and from a pod and the root namespace,
`explain` on it, kubectl and the Python client), a rolling replacement under load, and an
API outage (kube-apiserver killed and kept down while traffic flows, then back: the
engines resync), and `lab down`, which leaves nothing (etcd and kube-apiserver included).
The tests run in file order (the last takes the lab down).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from kubectl_proxyctl.lab.supervisor import KUBECONFIG, read_ref

from labfixtures import (
    NGINX_DEMO, NGINX_PODS, NOTHING_LEFT, Lab, Load, http_request, lab_skip_reason, leftovers, proxyctl,
    replace_under_load, spread, wait_for,
)
from waiting import TIMEOUT

SKIP = lab_skip_reason()
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

BUILD_SCRIPT = Path(__file__).resolve().parent / "reference" / "build-apiserver"
BUILD_TIMEOUT = 3600.0  # cold, on 2 busy cores, this takes many minutes
BINARY_VARIABLES = ("PROXYCTL_KUBE_APISERVER", "PROXYCTL_ETCD")
NODES = 3
NODE_PORT = 30080
LOAD_RATE = 20  # new connections per second
OUTAGE = 15 * LOAD_RATE  # connections served while kube-apiserver is down: 15 s of traffic
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


@dataclass
class ExternalLab(Lab):
    """A `Lab` whose `lab up` runs etcd and kube-apiserver (`binaries`: their variables)."""

    binaries: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.binaries}

    @property
    def up_args(self) -> tuple[str, ...]:
        return (*super().up_args, "--apiserver", "external", "--timeout", "180s")

    def process(self, name: str) -> int:
        """The pid of a process the supervisor runs (`kube-apiserver`, `etcd`)."""
        ref = read_ref(self.state_root / self.name / "run" / f"{name}.json")
        assert ref is not None, f"{name} is not running"
        return ref.pid


@pytest.fixture(scope="module")
def binaries() -> dict[str, str]:
    """kube-apiserver's and etcd's paths as `$PROXYCTL_KUBE_APISERVER` / `$PROXYCTL_ETCD`."""
    given = {v: os.environ.get(v, "") for v in BINARY_VARIABLES}
    if all(given.values()):
        return given
    if shutil.which("go") is None:
        pytest.skip("kube-apiserver and etcd are built from source and need Go (apt-get install golang-go, or set "
                    "PROXYCTL_KUBE_APISERVER and PROXYCTL_ETCD to binaries)")
    started = time.monotonic()
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    apiserver, etcd = done.stdout.strip().splitlines()[-2:]
    if time.monotonic() - started > 5:
        print(f"\nbuilt kube-apiserver and etcd in {time.monotonic() - started:.0f} s")
    return dict(zip(BINARY_VARIABLES, (apiserver, etcd)))


@pytest.fixture(scope="module")
def lab(binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalLab]:
    lab = ExternalLab(name="t" + secrets.token_hex(3)[:5], state_root=tmp_path_factory.mktemp("labstate"),
                      nodes=NODES, binaries=binaries)
    try:
        lab.cli("up", *lab.up_args, timeout=240)
        yield lab
    finally:
        lab.cli("down", check=False)


@pytest.fixture(scope="module")
def nginx(lab: ExternalLab) -> dict[str, str]:
    """The demo Service and its three pods, ready and in every node's rules: pod -> node."""
    lab.kubectl("apply", "-f", str(NGINX_DEMO))
    wait_for(lambda: len(lab.ready_endpoints("nginx")) == 3, 60, "3 ready nginx endpoints")
    in_every_nodes_rules(lab, set(NGINX_PODS))
    return {name: lab.pod(name)["spec"]["nodeName"] for name in NGINX_PODS}


def in_every_nodes_rules(lab: Lab, pods: set[str]) -> None:
    for node in lab.spec.nodes:
        wait_for(lambda: set(spread(lab.spec.client_ns, node.ip, NODE_PORT, 15)[0]) == pods, TIMEOUT,
                 f"{sorted(pods)} through {node.name}")


def cluster_ip(lab: Lab, service: str) -> str:
    return str(lab.kubectl_json("get", "svc", service)["spec"]["clusterIP"])


def test_up_without_the_binaries_is_one_line_naming_the_build_script(tmp_path: Path) -> None:
    env = {**os.environ, "PROXYCTL_LAB_DIR": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "PROXYCTL_KUBE_APISERVER": str(tmp_path / "missing"), "PROXYCTL_ETCD": str(tmp_path / "missing")}
    done = subprocess.run([*proxyctl(), "lab", "up", "--name", "tmissing", "--apiserver", "external"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "tests/reference/build-apiserver" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "tmissing").exists(), "nothing is built when the binaries are missing"


def test_demo_flow(lab: ExternalLab, nginx: dict[str, str]) -> None:
    status = lab.status()
    assert status["apiserver"]["kind"] == "external" and status["apiserver"]["answers"], status["apiserver"]
    assert status["apiserver"]["pid"] == lab.process("kube-apiserver") and status["etcd"]["alive"]
    version = lab.kubectl_json("version")["serverVersion"]
    assert version["gitVersion"] == "v1.34.4", version

    # kube-apiserver allocated the ClusterIP (from the lab's range) and kept the NodePort.
    svc = lab.kubectl_json("get", "svc", "nginx")
    assert svc["spec"]["clusterIP"].startswith("10.") and svc["spec"]["ports"][0]["nodePort"] == NODE_PORT
    for node in lab.spec.nodes:
        pods, errors = spread(lab.spec.client_ns, node.ip, NODE_PORT, 60)
        assert errors == [] and set(pods) == set(NGINX_PODS), f"{node.name}: {pods} {errors[:3]}"

    # From a pod on a node without nginx (if any), and from the root namespace.
    free = [n.name for n in lab.spec.nodes if n.name not in nginx.values()] or [lab.spec.nodes[0].name]
    probe = lab.cli("run", "probe", "--node", free[0], "--labels", "app=probe").stdout.split()[0].removeprefix("pod/")
    try:
        probe_ip = lab.pod(probe)["status"]["podIP"]
        ip = cluster_ip(lab, "nginx")
        answers = [http_request(lab.spec.pod_ns("default", probe), ip, 80) for _ in range(30)]
        assert [a.error for a in answers if not a.ok] == []
        assert {a.pod for a in answers} == set(NGINX_PODS)
        assert {a.client_ip for a in answers} == {probe_ip}
        assert http_request(None, ip, 80).pod in NGINX_PODS
    finally:
        lab.kubectl("delete", "pod", probe, "--grace-period=0", "--force", "--ignore-not-found")

    explain = lab.proxyctl("explain", "svc/nginx", "--node", "node2", "--via", "ssh")
    assert "node2 (ssh node2)" in explain.stdout and all(p in explain.stdout for p in NGINX_PODS), explain.stdout

    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(lab.state_root / lab.name / KUBECONFIG)))
    assert {p.metadata.name for p in api.list_namespaced_pod("default", label_selector="app=nginx").items} \
        == set(NGINX_PODS)


def test_rolling_replacement_under_load_loses_nothing(lab: ExternalLab, nginx: dict[str, str]) -> None:
    load, replaced = replace_under_load(lab, list(NGINX_PODS), lab.spec.nodes[0].ip, NODE_PORT, LOAD_RATE)
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"
    late = {a.pod for t, a in load.answers[-10:]}
    assert late <= set(replaced), f"old pods still answer at the end: {late}"
    in_every_nodes_rules(lab, set(replaced))


def test_api_outage_engines_keep_serving_then_resync(lab: ExternalLab) -> None:
    serving = {a.pod for a in (http_request(lab.spec.client_ns, lab.spec.nodes[1].ip, NODE_PORT) for _ in range(9))}
    assert serving and "" not in serving
    load = Load(lab.spec.client_ns, lab.spec.nodes[1].ip, NODE_PORT, rate=LOAD_RATE).start()
    try:
        with kube_apiserver_down(lab):
            down = len(load.answers)
            wait_for(lambda: len(load.answers) >= down + OUTAGE, 4 * 15, f"{OUTAGE} connections while the API is down",
                     interval=0.5)
        wait_for(lab.api_answers, 120, "kube-apiserver to answer again")

        # A restarted kube-apiserver answers before its ClusterIP allocator has read the
        # ServiceCIDRs back: until then a create fails with "failed to allocate a serviceIP:
        # range is full". Only that is retried, as a client would.
        def created() -> bool:
            done = lab.kubectl("apply", "-f", "-", stdin=AFTER_RESTART, check=False)
            assert done.returncode == 0 or "range is full" in done.stderr, done.stderr
            return done.returncode == 0

        wait_for(created, 60, "the new Service to be created", interval=1.0)
        ip = cluster_ip(lab, "after-restart")
        for node in lab.spec.nodes:  # the engines' informers reconnect and list again
            wait_for(lambda: http_request(lab.spec.node_ns(node), ip, 80, timeout=0.5).ok, 45 + 2 * TIMEOUT,
                     f"the new Service on {node.name}", interval=0.5)
    finally:
        load.stop()
    assert load.failures == [], f"{len(load.failures)} of {len(load.answers)} failed: {load.failures[:5]}"


def test_down_leaves_nothing(lab: ExternalLab) -> None:
    pids = [lab.process("etcd"), lab.process("kube-apiserver")]
    lab.cli("down")
    assert leftovers(lab) == NOTHING_LEFT
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


@contextlib.contextmanager
def kube_apiserver_down(lab: ExternalLab) -> Iterator[None]:
    """kube-apiserver killed and kept down for the block (its supervisor paused); the
    supervisor starts it again afterwards."""
    supervisor, apiserver = lab.supervisor_pid(), lab.process("kube-apiserver")
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(apiserver, signal.SIGKILL)
        wait_for(lambda: not lab.api_answers(), 30, "kube-apiserver to be gone")
        yield
    finally:
        os.kill(supervisor, signal.SIGCONT)
