"""The lab in IPVS mode (`lab up --mode ipvs`): runs INSIDE the VM, in the same boot as the
other IPVS suites (tests/test_ipvs_vm.py), because the host's kernel has no IP_VS and no
dummy links. Not collected on the host (the file name does not start with `test_`).

A 2-node lab with the real supervisor, API server, controllers and `kubectl-proxyctl run
--mode ipvs` on each node; the nginx demo applied with kubectl (tests/data/nginx-demo.yaml);
traffic is real: the outside client to each node's NodePort, a pod to the ClusterIP. Then
what a user looks at: kube-ipvs0 holding the ClusterIP, the virtual servers, `explain` and
`verify` run on a node, and `lab down` leaving nothing. Everything is slow under emulation
(each CLI call starts Python in the VM), hence the long timeouts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from labfixtures import (  # noqa: E402
    NGINX_DEMO, NGINX_PODS, NOTHING_LEFT, Lab, http_request, leftovers, running_lab, spread,
)
from waiting import wait_for  # noqa: E402

pytestmark = pytest.mark.lab  # in file order: the last test takes the lab down
NODE_PORT = 30080
SLOW = 600.0  # seconds: under emulation a lab takes minutes to come up


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("labstate"), nodes=2, up_timeout=SLOW, mode="ipvs") as running:
        running.kubectl("apply", "-f", str(NGINX_DEMO))
        wait_for(lambda: len(running.ready_endpoints("nginx")) == 3, SLOW, "3 ready nginx endpoints")
        for node in running.spec.nodes:
            wait_for(lambda: set(spread(running.spec.client_ns, node.ip, NODE_PORT, 15)[0]) == set(NGINX_PODS),
                     SLOW, f"the 3 nginx endpoints in {node.name}'s virtual servers")
        yield running


def cluster_ip(lab: Lab) -> str:
    return str(lab.kubectl_json("get", "svc", "nginx")["spec"]["clusterIP"])


def on_node(lab: Lab, node: str, *argv: str, check: bool = True) -> str:
    return lab.cli("exec", node, "--", *argv, check=check, timeout=SLOW).stdout


def test_nodeport_and_cluster_ip_reach_every_pod(lab: Lab) -> None:
    for node in lab.spec.nodes:
        pods, errors = spread(lab.spec.client_ns, node.ip, NODE_PORT, 60)
        assert errors == [], f"{node.name}: {errors[:3]}"
        assert set(pods) == set(NGINX_PODS), f"{node.name}: {pods}"
    ip = cluster_ip(lab)
    pod_ns = lab.spec.pod_ns("default", NGINX_PODS[0])
    answers = [http_request(pod_ns, ip, 80) for _ in range(30)]
    assert [a.error for a in answers if not a.ok] == []
    assert {a.pod for a in answers} == set(NGINX_PODS)


def test_the_node_shows_kube_ipvs0_and_the_virtual_servers(lab: Lab) -> None:
    ip = cluster_ip(lab)
    node = lab.spec.nodes[0].name
    assert f"{ip}/32" in on_node(lab, node, "ip", "-4", "-o", "addr", "show", "dev", "kube-ipvs0")
    listing = on_node(lab, node, "ipvsadm", "-Ln")
    assert f"TCP  {ip}:80 rr" in listing
    assert f"TCP  {lab.spec.nodes[0].ip}:{NODE_PORT} rr" in listing
    status = lab.cli("status").stdout
    assert "kube-ipvs0" in status and "ipvsadm -Ln" in status


def test_explain_and_verify_on_a_node(lab: Lab) -> None:
    node = lab.spec.nodes[0].name
    kubeconfig = lab.env["KUBECONFIG"]
    report = json.loads(on_node(lab, node, "kubectl-proxyctl", "explain", "svc/nginx", "--kubeconfig", kubeconfig,
                                "-o", "json"))
    text = json.dumps(report)
    assert report and "ipvs" in text.lower(), text[:2000]
    for pod_ip in lab.ready_endpoints("nginx"):
        assert pod_ip in text, f"{pod_ip} missing from explain: {text[:2000]}"
    done = lab.cli("exec", node, "--", "kubectl-proxyctl", "verify", "--kubeconfig", kubeconfig, check=False,
                   timeout=SLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_down_leaves_nothing(lab: Lab) -> None:
    lab.cli("down", timeout=SLOW)
    assert leftovers(lab) == NOTHING_LEFT
