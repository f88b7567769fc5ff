"""Reaching a node's rules: through a proxy pod (`pods/exec`), over SSH, or a debug pod.

Theory of operation: `dump`, `explain` and `verify --node NODE` collect a node's rules with
the same collector as on the node itself (system.noderules), through whichever `Executor`
reaches it. `open_node(request)` picks one, in this order, and says which in `Access.where`:

1. **exec**: a proxy pod running on NODE, found through the API with the user's own
   credentials: kube-proxy's (`k8s-app=kube-proxy`) or ours
   (`app.kubernetes.io/name=kubectl-proxyctl`) in kube-system, or `--proxy-pod-selector`.
   Those pods are hostNetwork and carry iptables-save, nft and ipset, so running them
   there reads the node's own tables;
2. **ssh**: when an ssh config (`--ssh-config`, PROXYCTL_SSH_CONFIG) or an `--ssh-*` flag
   says SSH is how this cluster's nodes are reached;
3. **debug-pod** (only when asked for: `--debug-pod`): a short-lived privileged hostNetwork
   pod pinned to NODE — the shape `kubectl debug node/NODE --profile=sysadmin` creates —
   deleted afterwards (and it ends itself after `activeDeadlineSeconds` should that fail).

`--via exec|ssh|debug-pod` forces one. When none works, the error lists what was tried and
why each failed, and the flags that would help. Everything a user types (node names, pod
selectors, images) is validated first and then travels only as API fields, query
parameters or argv elements — never through a shell.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError, ProxyctlError
from kubectl_proxyctl.system.executor import DEFAULT_TIMEOUT, Result

if TYPE_CHECKING:
    from kubectl_proxyctl.kube.client import KubeAPI
    from kubectl_proxyctl.remote.ssh import SSHOptions
    from kubectl_proxyctl.system.executor import Executor

log = logging.getLogger(__name__)

VIAS = ("auto", "exec", "ssh", "debug-pod")
PROXY_POD_NAMESPACE = "kube-system"
PROXY_POD_SELECTORS = ("k8s-app=kube-proxy", "app.kubernetes.io/name=kubectl-proxyctl")
PROXY_CONTAINERS = ("kube-proxy", "proxyctl", "kubectl-proxyctl")
DEBUG_IMAGE = "ghcr.io/kubectl-proxyctl/kubectl-proxyctl:0.1.0"
DEBUG_LABEL = "kubectl-proxyctl-debug"
DEBUG_LIFETIME = 600  # activeDeadlineSeconds: a debug pod we failed to delete ends itself
DEBUG_START_TIMEOUT = 120.0

_SELECTOR = re.compile(r"[A-Za-z0-9._/=!,() -]+\Z")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*\Z")


@dataclass(frozen=True)
class NodeRequest:
    """How the user asked to reach `node`."""

    node: str
    via: str = "auto"
    proxy_pod_selector: str | None = None
    proxy_pod_namespace: str = PROXY_POD_NAMESPACE
    debug_pod: bool = False
    image: str | None = None
    debug_namespace: str = "default"
    ssh: "SSHOptions | None" = None  # None: no SSH configuration given
    ssh_requested: bool = False  # an ssh config or --ssh-* flag was given
    sudo: bool = False
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class Access:
    """An executor on the node, what it is ("pod kube-system/kube-proxy-x"), how it was reached."""

    executor: "Executor"
    via: str
    where: str
    tried: list[str] = field(default_factory=list)


def validate_selector(text: str) -> str:
    """A label selector (`k=v,k2!=v2`, `k in (a,b)`): plain characters only."""
    if not text.strip() or len(text) > 1024 or not _SELECTOR.match(text):
        raise ConfigError(f"--proxy-pod-selector: {text!r} is not a label selector (key=value[,key2=value2])")
    return text.strip()


def validate_image(text: str) -> str:
    """An image reference (registry/name:tag or @digest): no spaces or shell characters."""
    if len(text) > 512 or not _IMAGE.match(text):
        raise ConfigError(f"--image: {text!r} is not an image reference (e.g. registry.example/tools:1.0)")
    return text


def validate_node_name(text: str, what: str = "--node") -> str:
    from kubectl_proxyctl.kube.convert import is_dns_subdomain

    if not is_dns_subdomain(text):
        raise ConfigError(f"{what}: {text!r} is not a valid node name (a DNS subdomain: lower-case letters, "
                          "digits, '-' and '.')")
    return text


def _container(pod: dict[str, Any]) -> str | None:
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name")]
    for wanted in PROXY_CONTAINERS:
        if wanted in names:
            return wanted
    return names[0] if names else None


def _running(pod: dict[str, Any]) -> bool:
    return bool((pod.get("status") or {}).get("phase") == "Running"
                and not (pod.get("metadata") or {}).get("deletionTimestamp"))


def find_proxy_pod(api: "KubeAPI", node: str, selectors: Sequence[str],
                   namespace: str) -> tuple[dict[str, Any] | None, str]:
    """The first running pod on `node` matching one of `selectors`, and what was searched."""
    searched = []
    for selector in selectors:
        items, _ = api.list("pods", namespace, label_selector=selector, field_selector=f"spec.nodeName={node}")
        running = sorted((p for p in items if _running(p)), key=lambda p: str(p["metadata"].get("name")))
        searched.append(f"{selector} in {namespace}")
        if running:
            return running[0], ", ".join(searched)
    return None, "; ".join(searched)


class SSHExecutor:
    """The Executor protocol over one SSH connection (remote.ssh is the paramiko adapter)."""

    def __init__(self, client: Any, host: str, sudo: bool) -> None:
        self.netns: str | None = None
        self.client = client
        self.host = host
        self.sudo = sudo

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        if stdin is not None:
            raise ValueError("commands sent over SSH take no input")
        full = (["sudo", "-n"] if self.sudo else []) + list(argv)
        done = self.client.run(self.host, full, timeout)
        return Result(done.exit_code, done.stdout, done.stderr)


def debug_pod_manifest(node: str, image: str, namespace: str, name: str) -> dict[str, Any]:
    """A privileged hostNetwork pod pinned to `node` that sleeps until deleted."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": DEBUG_LABEL, "app.kubernetes.io/managed-by": "kubectl-proxyctl"}},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "hostPID": True,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "activeDeadlineSeconds": DEBUG_LIFETIME,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "debugger",
                "image": image,
                "command": ["sleep", str(DEBUG_LIFETIME)],
                "securityContext": {"privileged": True},
            }],
        },
    }


def debug_pod_name(node: str) -> str:
    return f"proxyctl-debug-{node[:40].rstrip('.-')}-{secrets.token_hex(3)}".replace(".", "-")


@contextmanager
def debug_pod(api: "KubeAPI", request: NodeRequest,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Iterator[Access]:
    """Create the debug pod, wait until it runs, yield its Access, delete it (always)."""
    from kubectl_proxyctl.remote.podexec import PodExecutor

    image = validate_image(request.image or DEBUG_IMAGE)
    name = debug_pod_name(request.node)
    namespace = request.debug_namespace
    manifest = debug_pod_manifest(request.node, image, namespace, name)
    api.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=manifest)
    try:
        deadline = clock() + DEBUG_START_TIMEOUT
        while True:
            pod = api.get("pods", name, namespace)
            phase = (pod.get("status") or {}).get("phase")
            if phase == "Running":
                break
            if phase in ("Succeeded", "Failed"):
                raise ClusterError(f"debug pod {namespace}/{name} on {request.node} ended ({phase}) before it could be used")
            if clock() > deadline:
                waiting = _waiting_reason(pod)
                raise ClusterError(f"debug pod {namespace}/{name} on {request.node} did not start within "
                                   f"{DEBUG_START_TIMEOUT:g} s ({waiting or phase or 'Pending'})")
            sleep(0.5)
        yield Access(PodExecutor(api, namespace, name, "debugger"), "debug-pod", f"debug pod {namespace}/{name}")
    finally:
        try:
            api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", {"gracePeriodSeconds": 0})
        except ProxyctlError as exc:
            log.warning("could not delete debug pod %s/%s: %s (it ends itself after %d s)",
                        namespace, name, exc, DEBUG_LIFETIME)


def _waiting_reason(pod: dict[str, Any]) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return ""


@contextmanager
def open_node(request: NodeRequest, api: Callable[[], "KubeAPI"]) -> Iterator[Access]:
    """An Access to `request.node`, by the first way that works (see the module docstring).

    `api` connects to the API server when called (so SSH-only use needs no kubeconfig)."""
    from kubectl_proxyctl.remote.podexec import PodExecutor

    from kubectl_proxyctl.kube.convert import is_dns_subdomain

    via = request.via
    if via in ("exec", "debug-pod"):
        validate_node_name(request.node)
    selectors = (validate_selector(request.proxy_pod_selector),) if request.proxy_pod_selector else PROXY_POD_SELECTORS
    tried: list[str] = []
    if via == "auto" and not is_dns_subdomain(request.node):
        tried.append(f"exec: {request.node!r} is not a node name")
    elif via in ("auto", "exec"):
        try:
            client = api()
            pod, searched = find_proxy_pod(client, request.node, selectors, request.proxy_pod_namespace)
        except ProxyctlError as exc:
            if via == "exec":
                raise
            tried.append(f"exec: {exc}")
        else:
            if pod is not None:
                meta = pod["metadata"]
                where = f"pod {meta.get('namespace')}/{meta.get('name')}"
                yield Access(PodExecutor(client, str(meta.get("namespace")), str(meta.get("name")), _container(pod)),
                             "exec", where, tried)
                return
            tried.append(f"exec: no running proxy pod on node {request.node} ({searched})")
            if via == "exec":
                raise NotFoundError(f"no running proxy pod on node {request.node} ({searched}); pass "
                                    "--proxy-pod-selector, --via ssh or --via debug-pod")
    if via == "ssh" or (via == "auto" and request.ssh_requested):
        from kubectl_proxyctl.remote.ssh import SSHClient, SSHOptions, validate_host

        validate_host(request.node, "--node")
        with SSHClient(request.ssh or SSHOptions()) as ssh:
            yield Access(SSHExecutor(ssh, request.node, request.sudo), "ssh", f"ssh {request.node}", tried)
        return
    if via == "auto":
        tried.append("ssh: not configured (no --ssh-config, PROXYCTL_SSH_CONFIG or --ssh-* flag)")
    if via == "debug-pod" or (via == "auto" and request.debug_pod):
        with debug_pod(api(), request) as access:
            access.tried = tried
            yield access
        return
    raise NotFoundError(f"cannot reach node {request.node}: " + "; ".join(tried)
                        + ". Pass --proxy-pod-selector SELECTOR (a pod on the node with the tools), --ssh-config "
                        "PATH (SSH to the node), or --debug-pod [--image IMAGE] (a short-lived privileged pod)")
