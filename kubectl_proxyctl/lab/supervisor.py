"""The lab's daemons and its state directory: starting, adopting, watching, removing.

Theory of operation
-------------------
`lab up` builds the network (`topology.up`), records the lab's shape in
`<state>/lab.json`, and starts `kubectl-proxyctl lab supervise` in a new session, detached,
logging to `<state>/supervisor.log`. Two long-lived processes then run the lab, and each
one restarts the other:

* the **supervisor** (`Supervisor.run`, `lab supervise`) holds an exclusive lock on
  `<state>/supervisor.lock` for its life (never two per lab; a dead one is recognised at
  once) and starts, watches and restarts, as child processes with their logs in
  `<state>/logs` and their identity (pid + start time + argv) in `<state>/run/*.json`:
  the **control plane** (`lab control-plane`, see `controlplane.py`), one engine per node
  (`ip netns exec <lab>-nodeN kubectl-proxyctl run --node-name nodeN --mode MODE …`) and one
  sshd per node (in eBPF mode both through `nsenter --net=/run/netns/<lab>-nodeN --`, see
  below). It checks them every 0.2 s: a process that exits is started again at
  once, then with a growing delay while it keeps failing soon after its start;
* the **control plane** holds `<state>/control-plane.lock` and runs the lab API server
  (objects and the resourceVersion counter in sqlite under `<state>/api`, HTTPS on
  172.18.0.1:6443 only: the root namespace's end of the lab's veth, so the root namespace
  and every node reach it and no other network does), the controllers (nodes, IP and port
  allocation, scheduling, graceful deletion, EndpointSlices and Endpoints) and the pod
  runtime. The controllers live in the API server's process because allocation happens in
  its admission, inside each write, as kube-apiserver allocates ClusterIPs and NodePorts.
  It writes `<state>/kubeconfig` and `<state>/kubeconfig-nodes` (both
  https://172.18.0.1:6443) and watches the supervisor: when nobody holds the supervisor's
  lock it starts a new supervisor (checked every 0.2 s).

With `--apiserver external` (external.py) the supervisor also runs etcd and kube-apiserver,
before the control plane, which then runs no API server of its own; the credentials and
kubeconfigs are made before either starts, with the same names, so nothing else changes.

So a killed API server is started again by the supervisor, and a killed supervisor by the
control plane, each within about a second: the new control plane reloads every object and
the resourceVersion counter from sqlite, so the engines' informers (which retry every
second while the server is away) resume their watches, or relist when their resourceVersion
predates the restart, and converge; the new supervisor adopts every process whose record
still matches (or, when a record was lost, the one running that command line), so nothing
runs twice. Engines, sshd and pod servers run in sessions of their own and depend on
neither daemon: while either is down, Services keep working with the rules already
programmed. When both are killed at once, `lab up` starts the supervisor again, which
adopts what still runs (engines, sshd, pods) and starts the control plane.

SIGTERM makes the control plane stop cleanly (and its supervisor starts it again); a
supervisor that gets SIGTERM exits and leaves the lab running (its control plane starts a
new one), unless the lab is being removed: then it stops what it runs first.

`down(spec)` works from names and records only, so it also cleans a half-built or crashed
lab: it first writes `<state>/stopping`, which stops both daemons from restarting anything
(a daemon that starts while it exists exits at once), then stops the daemons (found by
their pid files and by their command lines; SIGTERM, then SIGKILL), every recorded process,
every process in a namespace of the lab, removes the namespaces and links, the lab's
cgroups (`proxyctl-<lab>/<node>` under the cgroup v2 mount, with whatever still runs in
them) and its nodes' BPF pin directories (`topology.teardown`), and the files of the state
directory it knows (never anything else). `lab up` removes a `stopping` a `lab down` that
failed half-way left behind.

The engines run with the mode's own defaults, as kube-proxy would: in iptables mode NodePorts
answer on every local address of a node (also 127.0.0.1 and the pod bridge's address); in
nftables mode only on the node's primary IP, its InternalIP (172.18.0.x), which is the
address everything in the lab uses for NodePorts (the client, `probe`, the README's
examples, `scripts/demo`). Passing `--nodeport-addresses` to make nftables mode look like
iptables mode would hide the difference a user of the lab is there to see; it would not
bring localhost NodePorts back anyway (nftables mode has none).

eBPF mode differs in where things run. Each node's engine is started with
`--cgroup-path <cgroup v2 mount>/proxyctl-<lab>/<node> --bpf-pin-path
/sys/fs/bpf/proxyctl-<lab>-<node>` and attaches its programs to that cgroup, which holds the
node's pods (the pod runtime and `pods/exec` put them there, see `topology`): a pod's
connect() to a Service address is sent straight to an endpoint, with no NAT and no conntrack
entry for the Service address, while the engine itself (not in the cgroup: its API
connections stay as they are), node-level commands and the client are not load-balanced by
it. Traffic from outside a node (NodePorts, external and LoadBalancer IPs from the client)
goes through the engine's `proxyctl-ebpf` nftables table in the node's namespace, which
holds those entry points only, on the node's IP as in nftables mode. The engines and sshd
enter their node's network namespace with `nsenter --net=` rather than `ip netns exec`,
whose private /sys would hide the cgroup v2 and bpffs mounts; `ManagedProcess.words`
strips either prefix, so adoption finds the process by what it runs.

This module also holds the small HTTPS client the `lab` commands use (`LabAPI`: token and CA
from the state directory, standard library only, no proxy), the health checks and the
status of every component (`lab_status`, for `lab status`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError, ProxyctlError
from kubectl_proxyctl.lab.dataplane import sshd, topology
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec
from kubectl_proxyctl.system.processes import (
    Child, ProcessRef, command_lines, find_by_argv, kill_pids, parent_pid, spawn,
)

log = logging.getLogger(__name__)

LAB_FILE = "lab.json"
PID_FILE = "supervisor.pid"
LOCK_FILE = "supervisor.lock"
LOG_FILE = "supervisor.log"
CONTROL_PLANE = "control-plane"  # the process's name: its record, log and command
CONTROL_PLANE_PID = "control-plane.pid"
CONTROL_PLANE_LOCK = "control-plane.lock"
STOPPING = "stopping"  # written by `lab down` first: nothing is (re)started while it exists
KUBECONFIG = "kubeconfig"
KUBECONFIG_NODES = "kubeconfig-nodes"
KUBECONFIG_VIEWER = "kubeconfig-viewer"  # the read-only user (get, list, watch)
API_DIR = "api"
RUN_DIR = "run"
LOGS_DIR = "logs"
PODS_DIR = "pods"
ETCD_DIR = "etcd"  # etcd's data, with `--apiserver external` (external.py)
STATE_ENTRIES = (LAB_FILE, PID_FILE, LOCK_FILE, LOG_FILE, CONTROL_PLANE_PID, CONTROL_PLANE_LOCK, STOPPING,
                 KUBECONFIG, KUBECONFIG_NODES, KUBECONFIG_VIEWER, API_DIR, RUN_DIR, LOGS_DIR, PODS_DIR, ETCD_DIR,
                 sshd.SSH_DIR)
DEFAULT_STATE_ROOT = Path("/var/lib/proxyctl-lab")  # LabSpec's default, created by the first lab
HEALTHZ_PORT = 10256
METRICS_ADDRESS = "127.0.0.1:10249"
MIN_SYNC_PERIOD = "100ms"
SUPERVISE_PERIOD = 0.2  # how often each daemon checks on what it keeps running
RESTART_DELAY = 0.5  # the delay before a second quick restart, doubling up to MAX_RESTART_DELAY
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 30.0  # a process that ran this long before it exited has its failures forgotten
CONTROL_PLANE_STABLE_AFTER = 5.0  # it is ready in well under a second; a crash loop shows sooner
LOCK_PATIENCE = 1.0  # a daemon retries its lock this long (another process may be testing it)


# --- the state directory ----------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("the lab needs root (network namespaces, netfilter): run it with sudo")


def check_mode(mode: str) -> None:
    """Fail at once, naming what is missing, when this machine cannot run the engines in
    `mode` (instead of waiting for engines that keep failing to start)."""
    from kubectl_proxyctl.system.executor import require_binary

    if mode in ("nftables", "ebpf"):
        from kubectl_proxyctl.system.nftables import NftSystem

        NftSystem().check_available()  # nft present and new enough, nf_tables in the kernel
    else:
        require_binary("iptables-restore")
    if mode == "ebpf":
        check_ebpf()
    if mode == "ipvs":
        check_ipvs()


def check_ipvs() -> None:
    """What IPVS-mode engines need from the kernel: IP_VS, dummy links (kube-ipvs0) and
    br_netfilter, loaded here when they are modules. Without them, say where the lab runs."""
    from kubectl_proxyctl.system.ipvs import ensure_br_netfilter, ensure_dummy, ensure_module

    why = ensure_module("ip_vs") or ensure_dummy() or ensure_br_netfilter()
    if why:
        raise ConfigError(f"--mode ipvs: this kernel cannot run IPVS engines: {why}. Run the lab in a VM "
                          "booting Debian's kernel instead: `scripts/demo --mode ipvs` does it by itself, and "
                          "`scripts/run-in-vm CMD` runs any command there")


def check_ebpf() -> None:
    """What eBPF-mode engines need from the machine: the cgroup v2 hierarchy (the nodes'
    cgroups), the bpffs at /sys/fs/bpf (their pins), bpf(2) allowed, and nsenter (an engine
    enters its node's network namespace with it: `ip netns exec` would hide both mounts)."""
    from kubectl_proxyctl.errors import ApplyError
    from kubectl_proxyctl.lab.spec import BPFFS
    from kubectl_proxyctl.modes.ebpf.maps import MapSpec
    from kubectl_proxyctl.system import bpf
    from kubectl_proxyctl.system.cgroups import cgroup2_root
    from kubectl_proxyctl.system.executor import require_binary

    require_binary("nsenter")
    if cgroup2_root() is None:
        raise ConfigError("--mode ebpf needs the cgroup v2 hierarchy, and none is mounted (see /proc/mounts)")
    try:
        root = bpf.bpffs_root()
        if root != BPFFS:
            raise ConfigError(f"--mode ebpf: the lab pins under {BPFFS}, but the bpffs is mounted at {root}")
        bpf.BpfMap.create(MapSpec("probe", "hash", 4, 4, 1)).close()
    except ApplyError as exc:
        raise ConfigError(f"--mode ebpf: this machine refuses BPF: {exc}") from exc
def proxyctl_argv() -> list[str]:
    """How to run this program again: the console script next to the interpreter, else -m."""
    script = Path(sys.executable).with_name("kubectl-proxyctl")
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "kubectl_proxyctl"]


def save_spec(spec: LabSpec) -> None:
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    data = {"name": spec.name, "nodes": len(spec.nodes), "mode": spec.mode,
            "zones": len({n.zone for n in spec.nodes if n.zone}), "apiserver": spec.apiserver}
    (spec.state_dir / LAB_FILE).write_text(json.dumps(data, indent=2) + "\n")


def load_spec(name: str, state_root: str | None = None) -> LabSpec:
    """The spec of an existing lab, from its `lab.json` (NotFoundError when there is none)."""
    bare = LabSpec.build(name, nodes=1, state_root=state_root)
    try:
        data = json.loads((bare.state_dir / LAB_FILE).read_text())
        return LabSpec.build(name, nodes=int(data["nodes"]), zones=int(data.get("zones", 0)),
                             mode=str(data.get("mode", "iptables")), state_root=state_root,
                             apiserver=str(data.get("apiserver", "lab")))
    except FileNotFoundError:
        raise NotFoundError(f"no lab {name!r} here ({bare.state_dir} has no {LAB_FILE}): "
                            f"start it with `kubectl proxyctl lab up --name {name}`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{bare.state_dir / LAB_FILE} is not usable: {exc}") from exc


def read_ref(path: Path) -> ProcessRef | None:
    """The live process a record (`{"pid": …, "start": …}`) names, or None."""
    try:
        data = json.loads(path.read_text())
        ref = ProcessRef(int(data["pid"]), int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ref if ref.alive() else None


def read_pid(path: Path) -> tuple[int | None, bool]:
    """(the pid a record names, whether that very process still runs); (None, False)
    without a readable record."""
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, False
    return pid, read_ref(path) is not None


def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Replace `path` atomically (readers see the old or the new content, never a part)."""
    write_private(path, json.dumps(data), mode)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` atomically with `text`, created with `mode`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def lock_held(path: Path) -> bool:
    """True while some process holds an exclusive flock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def take_lock(path: Path, patience: float = LOCK_PATIENCE) -> int | None:
    """An exclusive flock on `path` (its fd, kept open for the holder's life; close-on-exec,
    so no child inherits it), or None when another process holds it. Retries for
    `patience` seconds: `lock_held` in another process holds a shared lock for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def supervisor_running(spec: LabSpec) -> bool:
    """True while a supervisor holds the lab's lock."""
    return lock_held(spec.state_dir / LOCK_FILE)


def control_plane_running(spec: LabSpec) -> bool:
    """True while a control plane (the API server's process) holds its lock."""
    return lock_held(spec.state_dir / CONTROL_PLANE_LOCK)


def stopping(spec: LabSpec) -> bool:
    """True while `lab down` removes the lab (nothing may be started again)."""
    return (spec.state_dir / STOPPING).exists()


def clear_stopping(spec: LabSpec) -> None:
    """Forget a `lab down` that did not finish (`lab up` builds the lab again)."""
    with contextlib.suppress(FileNotFoundError):
        (spec.state_dir / STOPPING).unlink()


def supervisor_argv(spec: LabSpec) -> list[str]:
    return [*proxyctl_argv(), "lab", "supervise", "--name", spec.name]


def control_plane_argv(spec: LabSpec) -> list[str]:
    return [*proxyctl_argv(), "lab", CONTROL_PLANE, "--name", spec.name]


def start_supervisor(spec: LabSpec) -> Child:
    """Start the supervisor detached (new session, no terminal)."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PROXYCTL_LAB_DIR=str(spec.state_root), PYTHONUNBUFFERED="1")
    return spawn(supervisor_argv(spec), spec.state_dir / LOG_FILE, env=env, cwd="/")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- talking to the lab ------------------------------------------------------------------------


class LabAPIError(ClusterError):
    """The lab API server answered with an error; `reason` is its message (one line)."""

    def __init__(self, reason: str, status: int) -> None:
        self.reason = " ".join(reason.split())
        super().__init__(f"the lab API server answered {status}: {self.reason}", status)


class LabAPI:
    """A minimal client of the lab API server for the `lab` commands (JSON over HTTPS)."""

    def __init__(self, spec: LabSpec, timeout: float = 10.0) -> None:
        import ssl
        import urllib.request

        api = spec.state_dir / API_DIR
        try:
            self._token = (api / "token").read_text().strip()
            context = ssl.create_default_context(cafile=str(api / "ca.crt"))
        except (OSError, ssl.SSLError) as exc:
            raise ClusterError(f"lab {spec.name!r} has no API server credentials yet ({api}): {exc}") from exc
        self._base = spec.api_url
        self._timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self._base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message") or exc.reason
            except ValueError:
                message = exc.reason
            if exc.code == 404:
                raise NotFoundError(str(message)) from None
            raise LabAPIError(str(message), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClusterError(f"cannot reach the lab API server at {self._base}: {reason}") from None

    def list(self, path: str) -> list[dict[str, Any]]:
        return list(self.request("GET", path).get("items") or [])


def http_get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    """(status, body) of a plain HTTP GET without proxies; (0, reason) when unreachable."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def engine_health(node: NodeSpec) -> tuple[bool, str]:
    """Is the node's engine healthy (its /healthz answers 200)? With a one-word reason."""
    code, body = http_get(f"http://{node.ip}:{HEALTHZ_PORT}/healthz")
    if code == 200:
        return True, "healthy"
    if code == 0:
        return False, "unreachable"
    return False, f"unhealthy ({code})"


def wait_ready(spec: LabSpec, timeout: float, progress: Callable[[str], None],
               daemon: Child | None = None) -> None:
    """Wait until the API server answers, every node exists and every engine is healthy;
    fail early when the daemon (`daemon`, just started, or the one holding the lock) exits."""
    deadline = time.monotonic() + timeout
    steps: list[tuple[str, Callable[[], str | None]]] = [
        ("API server", lambda: _api_problem(spec)),
        ("nodes", lambda: _nodes_problem(spec)),
        ("engines", lambda: _engines_problem(spec)),
    ]

    def daemon_gone() -> bool:
        # The daemon we started may lose the race for the lock to one the control plane
        # started meanwhile: that one counts as well.
        return (daemon is None or daemon.poll() is not None) and not supervisor_running(spec)

    for what, problem in steps:
        while (issue := problem()) is not None:
            if daemon_gone():
                raise ProxyctlError(f"the lab daemon of {spec.name!r} stopped; its log "
                                    f"({spec.state_dir / LOG_FILE}) ends with:\n"
                                    f"{log_tail(spec.state_dir / LOG_FILE)}")
            if time.monotonic() > deadline:
                raise ProxyctlError(f"lab {spec.name!r} not ready after {timeout:g}s: {what}: {issue} "
                                    f"(logs in {spec.state_dir / LOGS_DIR} and {spec.state_dir / LOG_FILE})")
            time.sleep(0.1)
        progress(what)


def _api_problem(spec: LabSpec) -> str | None:
    try:
        LabAPI(spec, timeout=2.0).request("GET", "/version")
    except ProxyctlError as exc:
        return str(exc)
    return None


def _nodes_problem(spec: LabSpec) -> str | None:
    try:
        names = {n["metadata"]["name"] for n in LabAPI(spec).list("/api/v1/nodes")}
    except ProxyctlError as exc:
        return str(exc)
    missing = [n.name for n in spec.nodes if n.name not in names]
    return f"waiting for Node objects {', '.join(missing)}" if missing else None


def _engines_problem(spec: LabSpec) -> str | None:
    bad = [f"{n.name} {why}" for n in spec.nodes for ok, why in [engine_health(n)] if not ok]
    return ", ".join(bad) if bad else None


# --- status ------------------------------------------------------------------------------------


def _port_open(ip: str, port: int, timeout: float = 0.5) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((ip, port)) == 0


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _service_record(svc: dict[str, Any], slices: list[dict[str, Any]]) -> dict[str, Any]:
    meta, spec = svc["metadata"], svc.get("spec") or {}
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ready = total = 0
    for s in slices:
        labels = s["metadata"].get("labels") or {}
        if s["metadata"].get("namespace") == meta.get("namespace") and \
                labels.get("kubernetes.io/service-name") == meta["name"]:
            for ep in s.get("endpoints") or []:
                total += 1
                ready += bool((ep.get("conditions") or {}).get("ready"))
    return {
        "namespace": meta.get("namespace"), "name": meta["name"], "type": spec.get("type", "ClusterIP"),
        "clusterIP": spec.get("clusterIP"), "externalIPs": [i.get("ip", "") for i in ingress if i.get("ip")],
        "ports": [{k: p[k] for k in ("name", "port", "nodePort", "protocol") if p.get(k) is not None}
                  for p in spec.get("ports") or []],
        "endpoints": {"ready": ready, "total": total},
    }


def lab_status(spec: LabSpec) -> dict[str, Any]:
    """Every component of the lab, with its pid and whether it is alive: the supervisor, the
    control plane (the API server, with whether it answers, and the controllers and pod
    runtime that live in its process), each node's engine (and its /healthz) and sshd (and
    its port), and, when the API answers, the pods (with their servers) and Services."""
    state = spec.state_dir
    supervisor_pid, _ = read_pid(state / PID_FILE)
    control_pid, control_alive = read_pid(state / CONTROL_PLANE_PID)
    control_alive = control_alive and control_plane_running(spec)
    api_pid, api_alive = (control_pid, control_alive) if spec.apiserver == "lab" else \
        read_pid(state / RUN_DIR / "kube-apiserver.json")
    api: dict[str, Any] = {"pid": api_pid, "alive": api_alive, "url": spec.api_url, "answers": False,
                           "resourceVersion": None, "error": None, "kind": spec.apiserver}
    pods: list[dict[str, Any]] | None = None
    services: list[dict[str, Any]] | None = None
    try:
        client = LabAPI(spec, timeout=2.0)
        listed = client.request("GET", "/api/v1/pods")
        api.update(answers=True, resourceVersion=(listed.get("metadata") or {}).get("resourceVersion"))
        slices = client.list("/apis/discovery.k8s.io/v1/endpointslices")
        services = [_service_record(s, slices) for s in client.list("/api/v1/services")]
        pods = []
        for pod in listed.get("items") or []:
            meta, st = pod["metadata"], pod.get("status") or {}
            record = state / PODS_DIR / f"{spec.pod_ns(meta.get('namespace') or 'default', meta['name'])}.json"
            pid, alive = read_pid(record)
            pods.append({
                "namespace": meta.get("namespace"), "name": meta["name"],
                "node": (pod.get("spec") or {}).get("nodeName"), "ip": st.get("podIP"), "ready": _pod_ready(pod),
                "status": "Terminating" if meta.get("deletionTimestamp") else st.get("phase", "Pending"),
                "pid": pid, "alive": alive,
            })
    except ProxyctlError as exc:
        api["error"] = str(exc)
    nodes = []
    for node in spec.nodes:
        engine_pid, engine_alive = read_pid(state / RUN_DIR / f"engine-{node.name}.json")
        sshd_pid, sshd_alive = read_pid(state / RUN_DIR / f"sshd-{node.name}.json")
        nodes.append({
            "name": node.name, "ip": node.ip, "podCIDR": node.pod_cidr, "zone": node.zone,
            "engine": {"pid": engine_pid, "alive": engine_alive, "health": engine_health(node)[1]},
            "sshd": {"pid": sshd_pid, "alive": sshd_alive,
                     "port": "up" if _port_open(node.ip, sshd.SSH_PORT) else "down"},
        })
    in_control_plane = {"pid": control_pid, "alive": control_alive, "process": CONTROL_PLANE}
    supervisor_alive = supervisor_running(spec) and read_ref(state / PID_FILE) is not None
    extra = {}
    if spec.apiserver == "external":
        etcd_pid, etcd_alive = read_pid(state / RUN_DIR / "etcd.json")
        extra["etcd"] = {"pid": etcd_pid, "alive": etcd_alive}
    return {
        "name": spec.name, "mode": spec.mode, "stateDir": str(state),
        "supervisor": {"pid": supervisor_pid, "alive": supervisor_alive},
        "apiserver": api,
        "controllers": dict(in_control_plane),
        "podRuntime": dict(in_control_plane),
        **extra,
        "nodes": nodes,
        "pods": pods,
        "services": services,
    }


# --- tearing down ------------------------------------------------------------------------------


@dataclass
class DownReport:
    supervisor: bool = False
    processes: int = 0
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)  # eBPF-mode engines' pin directories
    files: bool = False


def down(spec: LabSpec) -> DownReport:
    """Remove everything of the lab: processes, namespaces, links, cgroups, BPF pins, files.
    Idempotent."""
    require_root()
    report = DownReport()
    state = spec.state_dir
    if state.is_dir():
        (state / STOPPING).touch()  # from now on neither daemon starts anything
    # The supervisors stop what they run; the control planes stop too. Again until none is
    # left: one may have been started just before `stopping` was written (it exits at once).
    for _ in range(5):
        daemons = {ref for ref in (read_ref(state / PID_FILE), read_ref(state / CONTROL_PLANE_PID),
                                   *find_daemons(spec.name)) if ref is not None}
        if not daemons:
            break
        kill_pids([d.pid for d in daemons], grace=15.0)
        report.supervisor = True
    refs = [read_ref(p) for p in (*sorted((state / RUN_DIR).glob("*.json")),
                                  *sorted((state / PODS_DIR).glob("*.json")))]
    live = [r.pid for r in refs if r is not None]
    kill_pids(live)
    removed = topology.teardown(spec)
    report.processes = len(set(live) | set(removed.processes)) + removed.killed_in_cgroups
    report.namespaces, report.links = removed.namespaces, removed.links
    report.cgroups, report.pins = removed.cgroups, removed.pins
    report.files = remove_state(spec)
    return report


def find_daemons(name: str, lines: dict[int, list[str]] | None = None) -> list[ProcessRef]:
    """The supervisors and control planes of lab `name`, found by their command lines
    (`... lab supervise --name NAME`, `... lab control-plane --name NAME`), so that
    `lab down` stops them even when their records are gone or their state directory is
    elsewhere."""
    lines = command_lines() if lines is None else lines
    return [ref for command in ("supervise", CONTROL_PLANE)
            for ref in find_by_argv(["lab", command, "--name", name], lines)]


def remove_state(spec: LabSpec) -> bool:
    """Delete the files the lab writes in its state directory (only those), then the
    directory if that leaves it empty, and the default state root if no other lab uses it.
    True when something was removed."""
    state = spec.state_dir
    if not state.is_dir():
        return False
    for entry in STATE_ENTRIES:
        path = state / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for tmp in state.glob(f"{entry}.*.tmp"):  # a write a killed daemon did not finish
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    with contextlib.suppress(OSError):
        state.rmdir()
        if state.parent == DEFAULT_STATE_ROOT:
            state.parent.rmdir()
    return True


# --- the supervisor ----------------------------------------------------------------------------


def strip_netns(argv: list[str]) -> list[str]:
    """argv without a leading `ip netns exec NS` or `nsenter --net=PATH --`."""
    if argv[:3] == ["ip", "netns", "exec"]:
        return argv[4:]
    if argv[:1] == ["nsenter"] and len(argv) > 2 and argv[1].startswith("--net=") and argv[2] == "--":
        return argv[3:]
    return argv


def in_node(spec: LabSpec, node: NodeSpec, argv: list[str]) -> list[str]:
    """How a node process is started in its node's network namespace: `ip netns exec`, as
    an administrator would (a mount namespace of its own, with /sys mounted for the network
    namespace), except in eBPF mode, where the engine, and what runs over ssh on the node
    (bpftool, the inspector), need the machine's cgroup v2 and bpffs mounts under /sys,
    which `ip netns exec` hides: `nsenter --net=` enters the network namespace only."""
    if spec.mode == "ebpf":
        return ["nsenter", f"--net={topology.netns_path(spec.node_ns(node))}", "--", *argv]
    return ["ip", "netns", "exec", spec.node_ns(node), *argv]


def engine_argv(spec: LabSpec, node: NodeSpec) -> list[str]:
    """The command line of a node's engine, in its node's network namespace (`in_node`); in
    eBPF mode with its node's cgroup and pin directory. The engine itself joins no cgroup:
    its own connections (to the API server) are never load-balanced."""
    engine = [*proxyctl_argv(), "run", "--kubeconfig", str(spec.state_dir / KUBECONFIG_NODES),
              "--node-name", node.name, "--cluster-cidr", spec.cluster_cidr, "--mode", spec.mode,
              "--healthz-bind-address", f"0.0.0.0:{HEALTHZ_PORT}",
              "--metrics-bind-address", METRICS_ADDRESS, "--min-sync-period", MIN_SYNC_PERIOD, "-v"]
    if spec.mode == "ebpf":
        cgroup = topology.node_cgroup(spec, node)
        if cgroup is None:
            raise ConfigError("--mode ebpf needs the cgroup v2 hierarchy, and none is mounted (see /proc/mounts)")
        engine += ["--cgroup-path", cgroup, "--bpf-pin-path", spec.node_pin_path(node)]
    return in_node(spec, node, engine)


@dataclass
class ManagedProcess:
    """A long-running child (the control plane, an engine, an sshd): started, watched,
    restarted, adopted."""

    name: str
    argv: list[str]
    log_path: Path
    record_path: Path
    requires: Path | None = None  # started only once this file exists
    stable_after: float = STABLE_AFTER
    child: Child | None = None
    ref: ProcessRef | None = None
    failures: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    @property
    def words(self) -> list[str]:
        """What the process runs, without the `ip netns exec NS` or `nsenter --net=NS --` in
        front (both exec it: the process's command line is what follows)."""
        return strip_netns(self.argv)

    def adopt(self, lines: dict[int, list[str]]) -> bool:
        """Take over the process a previous supervisor started: the one its record names if it
        still runs the same argv, else (a record lost in a crash) the one running this
        command line (`lines`: a scan of every process's command line). Duplicates go."""
        ref = read_ref(self.record_path)
        if ref is not None:
            try:
                recorded = json.loads(self.record_path.read_text()).get("argv")
            except (OSError, ValueError):
                recorded = None
            if recorded != self.argv:
                log.info("%s (pid %d) runs an older command line: replacing it", self.name, ref.pid)
                ref.stop()
                ref = None
        found = [r for r in find_by_argv(self.words, lines) if r != ref]
        if ref is None and found:
            ref, found = found[0], found[1:]
            self._record(ref)
        for extra in found:
            if ref is not None and parent_pid(extra.pid) == ref.pid:
                continue  # its own child (sshd forks one per connection), not a second copy
            log.warning("%s runs twice: stopping pid %d", self.name, extra.pid)
            extra.stop()
        if ref is None:
            return False
        self.ref, self.child, self.started_at = ref, None, time.monotonic()
        return True

    def alive(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        return self.ref is not None and self.ref.alive()

    def exit_status(self) -> str:
        code = self.child.returncode if self.child is not None else None
        return f"exit code {code}" if code is not None else "gone"

    def start(self) -> None:
        self.child = spawn(self.argv, self.log_path)
        self.ref = ProcessRef.of(self.child.pid)
        self.started_at = time.monotonic()
        if self.ref is not None:
            self._record(self.ref)

    def _record(self, ref: ProcessRef) -> None:
        write_json(self.record_path, {"pid": ref.pid, "start": ref.start, "argv": self.argv})

    def stop(self) -> None:
        if self.ref is not None:
            self.ref.stop()
        if self.child is not None:
            self.child.wait()
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()


def run_daemon(spec: LabSpec, lock_name: str, pid_name: str, what: str, stop: threading.Event,
               serve: Callable[[], None]) -> int:
    """The start-up and shut-down both lab daemons share: take the daemon's lock (held until
    the process exits; exit 1 when another one holds it), do nothing while the lab is being
    removed, stop on SIGTERM/SIGINT, record our pid while `serve()` runs. Returns the exit code."""
    state = spec.state_dir
    if take_lock(state / lock_name) is None:
        log.error("another %s already runs lab %s", what, spec.name)
        return 1
    if stopping(spec):
        log.info("lab %s is being removed: not starting", spec.name)
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    for directory in (RUN_DIR, LOGS_DIR, PODS_DIR):
        (state / directory).mkdir(parents=True, exist_ok=True)
    me = ProcessRef.of(os.getpid())
    assert me is not None
    write_json(state / pid_name, {"pid": me.pid, "start": me.start})
    try:
        serve()
    finally:
        if read_ref(state / pid_name) == me:
            with contextlib.suppress(FileNotFoundError):
                (state / pid_name).unlink()
    return 0


class Supervisor:
    """The lab's supervisor (`lab supervise`): runs until SIGTERM or SIGINT."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.state = spec.state_dir
        self._stop = threading.Event()

    def run(self) -> int:
        self.state.mkdir(parents=True, exist_ok=True)
        return run_daemon(self.spec, LOCK_FILE, PID_FILE, "supervisor", self._stop, self._serve)

    def _serve(self) -> None:
        """Adopt or start everything, and supervise until asked to stop."""
        processes = self._processes()
        lines = command_lines()
        for proc in processes:
            if proc.adopt(lines):
                log.info("adopted %s (pid %d)", proc.name, proc.ref.pid if proc.ref else 0)
        while not self._stop.is_set():
            self._supervise(processes)
            self._stop.wait(SUPERVISE_PERIOD)
        if stopping(self.spec):
            log.info("stopping: the lab is being removed")
            for proc in reversed(processes):
                proc.stop()
        else:
            log.info("stopping; the lab keeps running (its control plane starts a new supervisor)")

    def _processes(self) -> list[ManagedProcess]:
        spec = self.spec
        logs, run = self.state / LOGS_DIR, self.state / RUN_DIR
        processes = self._external_apiserver() if spec.apiserver == "external" else []
        processes.append(ManagedProcess(CONTROL_PLANE, control_plane_argv(spec), logs / f"{CONTROL_PLANE}.log",
                                        run / f"{CONTROL_PLANE}.json", stable_after=CONTROL_PLANE_STABLE_AFTER))
        for node in spec.nodes:
            processes.append(ManagedProcess(f"engine-{node.name}", engine_argv(spec, node),
                                            logs / f"engine-{node.name}.log", run / f"engine-{node.name}.json",
                                            requires=self.state / KUBECONFIG_NODES))
        if sshd.sshd_available():
            sshd.prepare(spec)
            for node in spec.nodes:
                processes.append(ManagedProcess(
                    f"sshd-{node.name}", in_node(spec, node, sshd.sshd_argv(spec, node)),
                    logs / f"sshd-{node.name}.log", run / f"sshd-{node.name}.json"))
        else:
            log.warning("%s is missing: the nodes get no SSH (install openssh-server)", sshd.SSHD)
        return processes

    def _external_apiserver(self) -> list[ManagedProcess]:
        """etcd and kube-apiserver, with the credentials they and every client need made
        first (`external.prepare`), when the lab runs on the upstream API server."""
        from kubectl_proxyctl.lab import external

        binaries = external.binaries()
        external.prepare(self.spec)
        logs, run = self.state / LOGS_DIR, self.state / RUN_DIR
        return [ManagedProcess(name, argv, logs / f"{name}.log", run / f"{name}.json")
                for name, argv in (("etcd", external.etcd_argv(self.spec, binaries["etcd"])),
                                   ("kube-apiserver", external.apiserver_argv(self.spec, binaries["kube-apiserver"])))]

    def _supervise(self, processes: list[ManagedProcess]) -> None:
        now = time.monotonic()
        if stopping(self.spec):
            return  # `lab down` is removing the lab: start nothing
        for proc in processes:
            if proc.alive() or now < proc.next_start or self._stop.is_set():
                continue
            if proc.requires is not None and not proc.requires.exists():
                continue
            if proc.started_at:
                proc.failures = 0 if now - proc.started_at > proc.stable_after else proc.failures + 1
                # The first restart is immediate; a process that keeps failing soon after its
                # start waits 0.5 s, 1 s, 2 s … up to 10 s.
                delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (proc.failures - 2)) if proc.failures > 1 else 0.0
                log.warning("%s stopped (%s); starting it again%s", proc.name, proc.exit_status(),
                            f" in {delay:.1f}s" if delay else "")
                proc.started_at, proc.next_start = 0.0, now + delay
                if delay:
                    continue
            try:
                proc.start()
                log.info("started %s (pid %d)", proc.name, proc.child.pid if proc.child else 0)
            except OSError as exc:
                log.error("cannot start %s: %s", proc.name, exc)
                proc.failures += 1
                proc.next_start = now + MAX_RESTART_DELAY
