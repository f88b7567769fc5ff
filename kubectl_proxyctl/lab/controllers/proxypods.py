"""The lab's proxy pods: one hostNetwork pod per node in kube-system, as a cluster shows the
pods of its kube-proxy DaemonSet.

On a cluster, `kubectl -n kube-system get pods -o wide` lists a proxy pod on every node, and
`kubectl exec` into one is how the node's rules are read without SSH. The lab's proxy engine
runs on each node under the lab's supervisor, not as a pod, so these pods stand in for it:

* `kube-system/proxyctl-<node>`, labelled like deploy/daemonset.yaml's pods
  (`app.kubernetes.io/name: kubectl-proxyctl`, plus `k8s-app: kubectl-proxyctl` as
  kube-proxy's are), bound to the node (`spec.nodeName`), `hostNetwork: true`, one container
  `proxyctl`; the API server's admission gives them the node's IP;
* reported Running and Ready here, as the node's kubelet would once the container runs. The
  pod runtime starts nothing for hostNetwork pods: they share the node's network namespace,
  which is where `pods/exec` runs their commands (dataplane/podexec.py).

`ProxyPods(server, spec).start()` creates the missing ones (idempotent: a restarted control
plane finds them in the store) and watches for their deletion: a deleted proxy pod is
created again, as a DaemonSet controller would.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.resources import PODS
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.apiserver.store import DELETED, Event
from kubectl_proxyctl.lab.controllers.controllers import set_pod_ready
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec

log = logging.getLogger(__name__)

NAMESPACE = "kube-system"
NAME_PREFIX = "proxyctl-"
CONTAINER = "proxyctl"
IMAGE = "ghcr.io/kubectl-proxyctl/kubectl-proxyctl:0.1.0"  # deploy/daemonset.yaml's
LABELS = {"app.kubernetes.io/name": "kubectl-proxyctl", "k8s-app": "kubectl-proxyctl"}
SELECTOR = "app.kubernetes.io/name=kubectl-proxyctl"


def proxy_pod_name(node: str) -> str:
    return f"{NAME_PREFIX}{node}"


def proxy_pod(spec: LabSpec, node: NodeSpec) -> dict[str, Any]:
    """The proxy pod of one lab node, as its DaemonSet's template would make it."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": proxy_pod_name(node.name), "namespace": NAMESPACE, "labels": dict(LABELS)},
        "spec": {
            "nodeName": node.name,
            "hostNetwork": True,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "priorityClassName": "system-node-critical",
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": CONTAINER, "image": IMAGE, "command": ["kubectl-proxyctl"],
                "args": ["run", f"--mode={spec.mode}", f"--node-name={node.name}",
                         "--healthz-bind-address=0.0.0.0:10256", "--metrics-bind-address=127.0.0.1:10249"],
                "securityContext": {"privileged": True},
            }],
        },
    }


def _ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [] if isinstance(c, dict)
    )


class ProxyPods:
    """Keeps one proxy pod per lab node (see the module docstring)."""

    def __init__(self, server: APIServer, spec: LabSpec) -> None:
        self.server = server
        self.spec = spec
        self._nodes = {proxy_pod_name(n.name): n for n in spec.nodes}
        self._cond = threading.Condition()
        self._missing: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> ProxyPods:
        if self._thread is not None:
            return self
        self._stopping = False
        self.server.observers.append(self._observe)
        for name in sorted(self._nodes):
            self._ensure(name)
        self._thread = threading.Thread(target=self._run, name="lab-proxy-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.server.observers.remove(self._observe)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ProxyPods:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _observe(self, event: Event) -> None:
        """Called under the store's lock: only note the pod."""
        namespace, name = event.key
        if event.type == DELETED and event.resource is PODS and namespace == NAMESPACE and name in self._nodes:
            with self._cond:
                self._missing.add(name)
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._missing))
                if self._stopping:
                    return
                missing, self._missing = sorted(self._missing), set()
            for name in missing:
                try:
                    self._ensure(name)
                except Exception as exc:  # the store is closing: stop() follows
                    log.debug("proxy pod %s/%s: %s", NAMESPACE, name, exc)

    def _ensure(self, name: str) -> None:
        """Create the pod if it is missing, and report it running and ready."""
        node = self._nodes[name]
        try:
            current = self.server.get("pods", name, NAMESPACE)
            if current is None:
                current = self.server.create(proxy_pod(self.spec, node))
            if current["metadata"].get("deletionTimestamp"):
                return  # its deletion (then our re-creation) is under way
            if not _ready(current):
                set_pod_ready(self.server, NAMESPACE, name, True)
        except APIError as err:  # e.g. a pod of that name created meanwhile by someone else
            log.warning("cannot register proxy pod %s/%s: %s", NAMESPACE, name, err.message)
