"""The lab's container runtime for `pods/exec`: a command in a pod's network namespace.

The lab's pods are network namespaces, not containers, so "in the pod" means "in the pod's
network namespace" (the filesystem, users and processes are the host's):

* a hostNetwork pod (the lab's proxy pods, `kube-system/proxyctl-<node>`) shares its node's
  namespace, `LabSpec.node_ns(node)`: a command there sees the node's links, routes and
  netfilter rules, as `kubectl exec` into a kube-proxy pod does on a cluster;
* any other pod has its own, `LabSpec.pod_ns(namespace, name)` (made by the pod runtime),
  and its processes live in its node's cgroup (`topology.pod_preexec`): a command run in
  such a pod joins that cgroup before it execs, so in eBPF mode its connections to Services
  are load-balanced by the node's engine, as the pod's own are. A command in a hostNetwork
  pod is a node-level command and joins no cgroup.

`NetnsExecRunner` is the API server's `exec_runner` (apiserver/remotecommand.ExecRunner):
it resolves argv[0] on a container's default PATH first (so a missing tool is reported the
way runc reports it, not as nsenter's exit status), then starts
`nsenter --net=/run/netns/NAME -- /path/to/argv0 args...` with pipes, in a new process
group (the API server kills the group when the client goes away). argv is never given to
a shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Callable, Sequence

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.lab.apiserver.remotecommand import CommandNotFound, not_found_message
from kubectl_proxyctl.lab.dataplane import topology
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.system.executor import netns_path, require_binary

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def pod_netns(spec: LabSpec, pod: dict[str, Any]) -> str:
    """The network namespace a command "in" `pod` runs in (see the module docstring)."""
    meta = pod.get("metadata") or {}
    pod_spec = pod.get("spec") or {}
    node = str(pod_spec.get("nodeName") or "")
    if pod_spec.get("hostNetwork"):
        if node not in {n.name for n in spec.nodes}:
            raise OSError(f"pod {meta.get('name')} runs on {node or 'no node'}, not on a node of lab {spec.name}")
        return spec.node_ns(node)
    return spec.pod_ns(str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def resolve(command: str, path: str = CONTAINER_PATH) -> str:
    """argv[0] as an executable path; CommandNotFound (with runc's message) when there is none."""
    found = command if "/" in command else shutil.which(command, path=path)
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise CommandNotFound(not_found_message(command))
    return found


def pod_preexec(spec: LabSpec, pod: dict[str, Any]) -> Callable[[], None] | None:
    """What a command in `pod` runs before it execs: joining its node's cgroup (None for a
    hostNetwork pod, or without a cgroup v2 mount)."""
    pod_spec = pod.get("spec") or {}
    node = str(pod_spec.get("nodeName") or "")
    if pod_spec.get("hostNetwork") or node not in {n.name for n in spec.nodes}:
        return None
    try:
        return topology.pod_preexec(spec, node)
    except ProxyctlError as exc:
        raise OSError(str(exc)) from exc


def start_in_netns(netns: str, argv: Sequence[str], stdin: bool = False,
                   preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start argv inside the named network namespace, with pipes, in its own process group
    (`preexec` runs in the child before it execs: see `pod_preexec`)."""
    if not argv:
        raise ValueError("an empty command")
    path = netns_path(netns)
    if not os.path.exists(path):
        raise OSError(f"network namespace {netns} does not exist ({path})")  # not the command: no ENOENT
    binary = resolve(argv[0])
    try:
        nsenter = require_binary("nsenter")
    except ProxyctlError as exc:
        raise OSError(str(exc)) from exc
    return subprocess.Popen(
        [nsenter, f"--net={path}", "--", binary, *argv[1:]],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, cwd="/", env={"PATH": CONTAINER_PATH, "HOME": "/root", "LANG": "C.UTF-8"},
        preexec_fn=preexec,
    )


class NetnsExecRunner:
    """`APIServer(exec_runner=NetnsExecRunner(spec))`: exec in lab pods (see the module docstring)."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec

    def __call__(self, pod: dict[str, Any], container: str, argv: Sequence[str], stdin: bool) -> subprocess.Popen[bytes]:
        return start_in_netns(pod_netns(self.spec, pod), argv, stdin, pod_preexec(self.spec, pod))
