"""Reaching a node: the proxy pod through exec, SSH when configured, a debug pod when asked."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError
from kubectl_proxyctl.remote import nodeaccess
from kubectl_proxyctl.remote.nodeaccess import NodeRequest, open_node
from kubectl_proxyctl.remote.podexec import PodExecutor, exec_path, exit_code_of


def pod(name: str, node: str, labels: dict[str, str], phase: str = "Running",
        containers: tuple[str, ...] = ("kube-proxy",), namespace: str = "kube-system") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": c} for c in containers]},
            "status": {"phase": phase}}


class FakeAPI:
    """The few KubeAPI calls nodeaccess makes, over a list of pods."""

    host = "https://api.example:6443"

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.requests: list[tuple[str, str]] = []
        self.lists: list[tuple[str | None, str | None, str | None]] = []

    def list(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        assert resource == "pods"
        self.lists.append((namespace, label_selector, field_selector))
        key, _, value = (label_selector or "").partition("=")
        node = (field_selector or "").partition("=")[2]
        found = [p for p in self.pods if p["metadata"]["namespace"] == namespace
                 and p["metadata"]["labels"].get(key) == value and p["spec"]["nodeName"] == node]
        return found, "1"

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        for p in self.pods:
            if p["metadata"]["name"] == name and p["metadata"]["namespace"] == namespace:
                return p
        raise NotFoundError(f'pods "{name}" not found')

    def request(self, method: str, path: str, query: Any = None, *, body: Any = None) -> Any:
        self.requests.append((method, path))
        if method == "POST":
            created = dict(body)
            created["status"] = {"phase": "Running"}
            self.pods.append(created)
            return created
        if method == "DELETE":
            name = path.rsplit("/", 1)[1]
            self.pods = [p for p in self.pods if p["metadata"]["name"] != name]
        return {}


KUBE_PROXY = {"k8s-app": "kube-proxy"}
OURS = {"app.kubernetes.io/name": "kubectl-proxyctl"}


def test_the_proxy_pod_on_the_node_is_used_through_exec() -> None:
    api = FakeAPI([pod("kube-proxy-a", "node1", KUBE_PROXY), pod("kube-proxy-b", "node2", KUBE_PROXY),
                   pod("kube-proxy-old", "node2", KUBE_PROXY, phase="Pending")])
    with open_node(NodeRequest("node2"), lambda: api) as access:
        assert access.via == "exec" and access.where == "pod kube-system/kube-proxy-b"
        assert isinstance(access.executor, PodExecutor) and access.executor.container == "kube-proxy"
    assert api.lists == [("kube-system", "k8s-app=kube-proxy", "spec.nodeName=node2")]


def test_our_daemonset_is_found_when_kube_proxy_is_absent_and_a_selector_replaces_both() -> None:
    api = FakeAPI([pod("proxyctl-x", "node1", OURS, containers=("sidecar", "proxyctl"))])
    with open_node(NodeRequest("node1"), lambda: api) as access:
        assert access.where == "pod kube-system/proxyctl-x" and access.executor.container == "proxyctl"
    api = FakeAPI([pod("cilium-1", "node1", {"k8s-app": "cilium"})])
    with open_node(NodeRequest("node1", proxy_pod_selector="k8s-app=cilium"), lambda: api) as access:
        assert access.where == "pod kube-system/cilium-1"
    assert api.lists == [("kube-system", "k8s-app=cilium", "spec.nodeName=node1")]


def test_nothing_reaches_the_node_says_what_was_tried_and_what_to_pass() -> None:
    api = FakeAPI([])
    with pytest.raises(NotFoundError) as err:
        with open_node(NodeRequest("node3"), lambda: api):
            pass
    text = str(err.value)
    assert "cannot reach node node3: exec: no running proxy pod on node node3 (k8s-app=kube-proxy in kube-system; " \
           "app.kubernetes.io/name=kubectl-proxyctl in kube-system)" in text
    assert "ssh: not configured" in text
    assert "--proxy-pod-selector" in text and "--ssh-config" in text and "--debug-pod" in text


def test_an_unreachable_api_falls_back_to_ssh_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    class Client:
        def __init__(self, options: object) -> None:
            opened.append("ssh")

        def __enter__(self) -> "Client":
            return self

        def __exit__(self, *_exc: object) -> None:
            opened.append("closed")

    def no_api() -> Any:
        raise ClusterError("cannot reach the API server")

    monkeypatch.setattr("kubectl_proxyctl.remote.ssh.SSHClient", Client)
    with open_node(NodeRequest("node1", ssh_requested=True), no_api) as access:
        assert access.via == "ssh" and access.where == "ssh node1"
        assert access.tried == ["exec: cannot reach the API server"]
    assert opened == ["ssh", "closed"]


def test_forced_exec_fails_with_the_api_error_itself() -> None:
    def no_api() -> Any:
        raise ClusterError("forbidden (403): pods is forbidden")

    with pytest.raises(ClusterError, match="forbidden"):
        with open_node(NodeRequest("node1", via="exec", ssh_requested=True), no_api):
            pass
    with pytest.raises(NotFoundError, match="no running proxy pod on node node1.*--via ssh or --via debug-pod"):
        with open_node(NodeRequest("node1", via="exec"), lambda: FakeAPI([])):
            pass


def test_the_debug_pod_is_created_on_the_node_and_deleted_even_when_reading_fails() -> None:
    api = FakeAPI([])
    with pytest.raises(RuntimeError):
        with open_node(NodeRequest("node1", debug_pod=True, image="registry.example/tools:1.0"), lambda: api) as access:
            assert access.via == "debug-pod" and access.where.startswith("debug pod default/proxyctl-debug-node1-")
            created = api.pods[0]
            spec = created["spec"]
            assert spec["nodeName"] == "node1" and spec["hostNetwork"] and spec["restartPolicy"] == "Never"
            assert spec["containers"][0]["image"] == "registry.example/tools:1.0"
            assert spec["containers"][0]["securityContext"] == {"privileged": True}
            assert spec["activeDeadlineSeconds"] == nodeaccess.DEBUG_LIFETIME
            assert spec["tolerations"] == [{"operator": "Exists"}]
            raise RuntimeError("reading failed")
    assert [m for m, _ in api.requests] == ["POST", "DELETE"] and api.pods == []


def test_a_debug_pod_that_never_starts_is_reported_and_deleted() -> None:
    class Stuck(FakeAPI):
        def request(self, method: str, path: str, query: Any = None, *, body: Any = None) -> Any:
            if method == "POST":
                self.requests.append((method, path))
                created = dict(body)
                created["status"] = {"phase": "Pending", "containerStatuses": [
                    {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}
                self.pods.append(created)
                return created
            return super().request(method, path, query, body=body)

    api = Stuck([])
    now = [0.0]
    request = NodeRequest("node1", via="debug-pod")
    with pytest.raises(ClusterError, match=r"did not start within 120 s \(ImagePullBackOff: not found\)"):
        with nodeaccess.debug_pod(api, request, clock=lambda: now[0],
                                  sleep=lambda s: now.__setitem__(0, now[0] + 60)):
            pass
    assert api.requests[-1][0] == "DELETE" and api.pods == []


@pytest.mark.parametrize("node", ["node1;reboot", "$(id)", "node 1", "-oProxyCommand=x", "Node1"])
def test_hostile_node_names_are_refused_for_exec_and_debug_pods(node: str) -> None:
    for via in ("exec", "debug-pod"):
        with pytest.raises(ConfigError, match="is not a valid node name"):
            with open_node(NodeRequest(node, via=via), lambda: FakeAPI([])):
                pass


def test_hostile_node_names_never_reach_a_field_selector_in_auto_mode() -> None:
    api = FakeAPI([])
    with pytest.raises(NotFoundError, match=r"exec: 'node1,metadata.name=x' is not a node name"):
        with open_node(NodeRequest("node1,metadata.name=x"), lambda: api):
            pass
    assert api.lists == []


@pytest.mark.parametrize("selector", ["app=x;rm -rf /", "$(id)", "a=`b`", "x=y|z", ""])
def test_hostile_selectors_are_refused(selector: str) -> None:
    with pytest.raises(ConfigError, match="is not a label selector"):
        nodeaccess.validate_selector(selector)


@pytest.mark.parametrize("image", ["busybox; reboot", "img $(id)", "-image", "a b", "x" * 600])
def test_hostile_images_are_refused(image: str) -> None:
    with pytest.raises(ConfigError, match="is not an image reference"):
        nodeaccess.validate_image(image)


def test_the_argv_travels_as_literal_query_parameters() -> None:
    path = exec_path("kube-system", "p", ["sh", "-c", "echo $(id); rm -rf / &"], None, False)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    assert query["command"] == ["sh", "-c", "echo $(id); rm -rf / &"]
    assert query["stdin"] == ["false"] and "container" not in query
    assert exec_path("a b", "c/d", ["x"], "ctr", True).startswith("/api/v1/namespaces/a%20b/pods/c%2Fd/exec?")


def test_the_final_status_gives_the_exit_code() -> None:
    assert exit_code_of({"metadata": {}, "status": "Success"}) == (0, "")
    failure = {"status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
               "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    assert exit_code_of(failure)[0] == 3
    missing = {"status": "Failure", "reason": "InternalError",
               "message": 'failed to exec in container: exec: "ipvsadm": executable file not found in $PATH'}
    assert exit_code_of(missing)[0] == 127
    with pytest.raises(ClusterError, match="exec failed: container not found"):
        exit_code_of({"status": "Failure", "message": "container not found"})
