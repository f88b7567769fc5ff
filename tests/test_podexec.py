"""The exec transport against the lab API server: the client side of `pods/exec`, and the
inspectors reading a node's rules through a proxy pod (no SSH anywhere)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from apiserver_fixtures import LocalExecRunner, apiserver, exec_runner, node, pod  # noqa: F401 (fixtures)
from clihelpers import cli
from kubectl_proxyctl.errors import ClusterError, ExitStatus, NotFoundError
from kubectl_proxyctl.kube.client import connect
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.remotecommand import CommandNotFound, not_found_message
from kubectl_proxyctl.remote.podexec import PodExecutor

DATA = Path(__file__).parent / "data"
LEGACY_SAVE = DATA / "rules" / "six-services.legacy-save.txt"


def proxy_pod(name: str, node_name: str, ip: str, **labels: str) -> dict[str, Any]:
    obj = pod(name, ip, node_name, namespace="kube-system")
    obj["metadata"]["labels"] = labels or {"k8s-app": "kube-proxy"}
    obj["spec"]["hostNetwork"] = True
    obj["spec"]["containers"][0]["name"] = "kube-proxy"
    obj["status"]["containerStatuses"][0]["name"] = "kube-proxy"
    return obj


@pytest.fixture
def proxy(apiserver: APIServer, exec_runner: LocalExecRunner) -> PodExecutor:
    apiserver.create(proxy_pod("kube-proxy-a", "node1", "172.18.0.2"))
    return PodExecutor(connect(str(apiserver.kubeconfig_path)), "kube-system", "kube-proxy-a", "kube-proxy")


def test_stdout_stderr_and_the_exit_code_come_back(proxy: PodExecutor) -> None:
    done = proxy.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert proxy.run(["true"]).ok


def test_input_is_sent_and_closed(proxy: PodExecutor) -> None:
    assert proxy.run(["cat"], stdin="line 1\nline 2\n").stdout == "line 1\nline 2\n"
    assert proxy.run(["wc", "-c"], stdin="").stdout.strip() == "0"


def test_big_outputs_arrive_whole(proxy: PodExecutor) -> None:
    done = proxy.run(["sh", "-c", "seq 1 200000"])
    assert done.ok and done.stdout.splitlines()[-1] == "200000" and len(done.stdout.splitlines()) == 200000


def test_a_missing_tool_is_exit_127_like_a_shell_says(proxy: PodExecutor) -> None:
    done = proxy.run(["no-such-tool-here"])
    assert done.returncode == 127 and "executable file not found" in done.stderr


def test_metacharacters_are_bytes_not_shell(proxy: PodExecutor) -> None:
    assert proxy.run(["echo", "$(id);x", "`uname`", "a b", "*"]).stdout == "$(id);x `uname` a b *\n"


def test_a_deadline_ends_the_command(proxy: PodExecutor, exec_runner: LocalExecRunner) -> None:
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"exec in pod kube-system/kube-proxy-a: sleep timed out after 0.5 s"):
        proxy.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while exec_runner.processes[-1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exec_runner.processes[-1].poll() is not None, "the server must kill a command whose client left"


def test_a_missing_pod_and_a_token_without_exec_rights(apiserver: APIServer, proxy: PodExecutor) -> None:
    gone = PodExecutor(proxy.api, "kube-system", "nope")
    with pytest.raises(NotFoundError, match=r'exec in pod kube-system/nope: pods "nope" not found'):
        gone.run(["true"])
    viewer = PodExecutor(connect(str(apiserver.viewer_kubeconfig_path)), "kube-system", "kube-proxy-a")
    with pytest.raises(ClusterError) as err:
        viewer.run(["true"])
    assert err.value.exit_status == ExitStatus.UNREACHABLE
    assert str(err.value) == ('pods "kube-proxy-a" is forbidden: User "lab-viewer" cannot create resource '
                              '"pods/exec" in API group "" in the namespace "kube-system" (exec needs the '
                              'pods/exec permission in namespace kube-system)')


class CannedNode:
    """A container runtime whose node has the six-services rules in the legacy backend and no
    other tool: what a kube-proxy pod on an iptables-legacy node answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, obj: dict[str, Any], container: str, argv: Any, stdin: bool) -> subprocess.Popen[bytes]:
        argv = list(argv)
        self.calls.append((obj["spec"]["nodeName"], argv))
        if argv == ["iptables-legacy-save"]:
            command = ["cat", str(LEGACY_SAVE)]
        elif argv == ["iptables-nft-save"]:
            command = ["true"]
        else:
            raise CommandNotFound(not_found_message(argv[0]))
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)


@pytest.fixture
def cluster(apiserver: APIServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[CannedNode]:
    runtime = CannedNode()
    apiserver.exec_runner = runtime
    for name, ip in (("node1", "192.168.0.2"), ("node2", "192.168.0.3")):
        apiserver.create(node(name, ip))
    apiserver.create(proxy_pod("kube-proxy-a", "node1", "192.168.0.2"))
    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig_path))
    monkeypatch.delenv("PROXYCTL_SSH_CONFIG", raising=False)
    yield runtime


def test_explain_and_dump_read_another_node_through_its_proxy_pod(cluster: CannedNode,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "explain", "svc2", "-n", "ns2", "--node", "node1", "--client", "external")
    assert code == 0, err
    assert "node1 (pod kube-system/kube-proxy-a): iptables-legacy-save" in out
    assert "external → cluster IP 172.30.0.42:80 → endpoint 10.180.0.2:80, SNAT to the node" in out, out
    assert {node for node, _ in cluster.calls} == {"node1"}
    code, out, err = cli(capsys, "dump", "--node", "node1", "-o", "json")
    assert code == 0, err
    assert "KUBE-SVC-" in out


def test_a_node_without_a_proxy_pod_says_what_was_tried(cluster: CannedNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "dump", "--node", "node2")
    assert code == 1
    assert err.strip().splitlines() == [
        "error: cannot reach node node2: exec: no running proxy pod on node node2 (k8s-app=kube-proxy in "
        "kube-system; app.kubernetes.io/name=kubectl-proxyctl in kube-system); ssh: not configured (no "
        "--ssh-config, PROXYCTL_SSH_CONFIG or --ssh-* flag). Pass --proxy-pod-selector SELECTOR (a pod on the "
        "node with the tools), --ssh-config PATH (SSH to the node), or --debug-pod [--image IMAGE] (a "
        "short-lived privileged pod)"]


def test_a_token_without_exec_rights_is_one_line_and_exit_3(apiserver: APIServer, cluster: CannedNode,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "dump", "--node", "node1", "--kubeconfig", str(apiserver.viewer_kubeconfig_path))
    assert code == 3 and out == ""
    assert len(err.strip().splitlines()) == 1 and "cannot create resource \"pods/exec\"" in err, err


def test_verify_all_nodes_is_one_line_per_node(apiserver: APIServer, cluster: CannedNode,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    apiserver.create(proxy_pod("kube-proxy-b", "node2", "192.168.0.3"))
    code, out, err = cli(capsys, "verify", "--all-nodes")
    assert code == 1, err  # the rules hold services the API does not have: drift on both
    lines = out.splitlines()
    assert lines[0].split() == ["NODE", "MODE", "VERDICT", "VIA", "DETAIL"]
    assert lines[1].startswith("node1 ") and "pod kube-system/kube-proxy-a" in lines[1] and "drift" in lines[1]
    assert lines[2].startswith("node2 ") and "pod kube-system/kube-proxy-b" in lines[2]
    assert lines[3].startswith("0 of 2 node(s) in sync, 2 with drift, 0 unreachable")
    code, out, _ = cli(capsys, "verify", "--all-nodes", "-o", "json")
    doc = json.loads(out)
    assert code == 1 and doc["summary"]["nodes"] == 2 and doc["summary"]["drift"] == 2
    assert [n["via"] for n in doc["nodes"]] == ["pod kube-system/kube-proxy-a", "pod kube-system/kube-proxy-b"]
    assert all(n["report"]["findings"] for n in doc["nodes"])


def test_verify_all_nodes_reports_an_unreachable_node_without_hiding_the_others(
        cluster: CannedNode, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "verify", "--all-nodes", "-o", "json")
    doc = json.loads(out)
    assert code == 1
    assert [(n["node"], n["status"]) for n in doc["nodes"]] == [("node1", "drift"), ("node2", "error")]
    assert "no running proxy pod on node node2" in doc["nodes"][1]["error"]


def test_all_nodes_excludes_a_single_node(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "verify", "--all-nodes", "--node", "node1")
    assert code == 2 and "--all-nodes reads every node itself" in err
