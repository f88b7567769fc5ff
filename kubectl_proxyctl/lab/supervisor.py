"""The lab daemon and the lab's state directory: starting, adopting, watching, removing.

Theory of operation
-------------------
`lab up` builds the network (`topology.up`), records the lab's shape in
`<state>/lab.json`, and starts `kubectl-proxyctl lab supervise` in a new session, detached,
logging to `<state>/supervisor.log`. That daemon (`Supervisor.run`) holds an exclusive lock
on `<state>/supervisor.lock` for its life (so there is never more than one per lab, and
a crashed one is recognised at once) and runs, in one process:

* the lab API server (state in `<state>/api`, HTTPS on 172.18.0.1:6443 only: the root
  namespace's end of the lab's veth, so the root namespace and every node reach it and no
  other network does) and writes `<state>/kubeconfig` and `<state>/kubeconfig-nodes` (both
  https://172.18.0.1:6443);
* the lab controllers (nodes, IP allocation, scheduling, EndpointSlices and Endpoints);
* the pod runtime (`runtime.PodRuntime`);
* one engine per node (`ip netns exec <lab>-nodeN kubectl-proxyctl run --node-name nodeN
  --mode MODE …`) and one sshd per node, as child processes with their logs in
  `<state>/logs` and their identity (pid + start time + argv) in `<state>/run/*.json`. A
  process that exits is started again, with a growing delay when it keeps failing.

Engines, sshd and pod servers run in sessions of their own and do not depend on the daemon:
when it crashes (or is killed), Services keep working with the rules already programmed.
A new daemon (`lab up` again) adopts every process whose record still matches and restarts
the API server from its journal; the engines' informers reconnect by themselves.

`down(spec)` works from names and records only, so it also cleans a half-built or crashed
lab: it stops the daemon (found by its pid file or its command line; SIGTERM, then
SIGKILL), every recorded process, every process in a namespace of the lab, removes the
namespaces and links (`topology.teardown`), and the files of the state directory it knows
(never anything else).

The engines run with the mode's own defaults, as kube-proxy would: in iptables mode NodePorts
answer on every local address of a node (also 127.0.0.1 and the pod bridge's address); in
nftables mode only on the node's primary IP, its InternalIP (172.18.0.x), which is the
address everything in the lab uses for NodePorts (the client, `probe`, the README's
examples, `scripts/demo`). Passing `--nodeport-addresses` to make nftables mode look like
iptables mode would hide the difference a user of the lab is there to see; it would not
bring localhost NodePorts back anyway (nftables mode has none).

This module also holds the small HTTPS client the `lab` commands use (`LabAPI`: token and CA
from the state directory, standard library only, no proxy) and the health checks.
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
from kubectl_proxyctl.lab.dataplane.runtime import PodRuntime
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec
from kubectl_proxyctl.system.processes import Child, ProcessRef, kill_pids, spawn

log = logging.getLogger(__name__)

LAB_FILE = "lab.json"
PID_FILE = "supervisor.pid"
LOCK_FILE = "supervisor.lock"
LOG_FILE = "supervisor.log"
KUBECONFIG = "kubeconfig"
KUBECONFIG_NODES = "kubeconfig-nodes"
API_DIR = "api"
RUN_DIR = "run"
LOGS_DIR = "logs"
PODS_DIR = "pods"
STATE_ENTRIES = (LAB_FILE, PID_FILE, LOCK_FILE, LOG_FILE, KUBECONFIG, KUBECONFIG_NODES, API_DIR, RUN_DIR,
                 LOGS_DIR, PODS_DIR, sshd.SSH_DIR)
DEFAULT_STATE_ROOT = Path("/var/lib/proxyctl-lab")  # LabSpec's default, created by the first lab
HEALTHZ_PORT = 10256
METRICS_ADDRESS = "127.0.0.1:10249"
MIN_SYNC_PERIOD = "100ms"
SUPERVISE_PERIOD = 0.5
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 30.0


# --- the state directory ----------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise ConfigError("the lab needs root (network namespaces, netfilter): run it with sudo")


def check_mode(mode: str) -> None:
    """Fail at once, naming what is missing, when this machine cannot run the engines in
    `mode` (instead of waiting for engines that keep failing to start)."""
    from kubectl_proxyctl.system.executor import require_binary

    if mode == "nftables":
        from kubectl_proxyctl.system.nftables import NftSystem

        NftSystem().check_available()  # nft present and new enough, nf_tables in the kernel
    else:
        require_binary("iptables-restore")


def proxyctl_argv() -> list[str]:
    """How to run this program again: the console script next to the interpreter, else -m."""
    script = Path(sys.executable).with_name("kubectl-proxyctl")
    return [str(script)] if os.access(script, os.X_OK) else [sys.executable, "-m", "kubectl_proxyctl"]


def save_spec(spec: LabSpec) -> None:
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    data = {"name": spec.name, "nodes": len(spec.nodes), "mode": spec.mode,
            "zones": len({n.zone for n in spec.nodes if n.zone})}
    (spec.state_dir / LAB_FILE).write_text(json.dumps(data, indent=2) + "\n")


def load_spec(name: str, state_root: str | None = None) -> LabSpec:
    """The spec of an existing lab, from its `lab.json` (NotFoundError when there is none)."""
    bare = LabSpec.build(name, nodes=1, state_root=state_root)
    try:
        data = json.loads((bare.state_dir / LAB_FILE).read_text())
        return LabSpec.build(name, nodes=int(data["nodes"]), zones=int(data.get("zones", 0)),
                             mode=str(data.get("mode", "iptables")), state_root=state_root)
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


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def supervisor_running(spec: LabSpec) -> bool:
    """True while a daemon holds the lab's lock."""
    try:
        fd = os.open(spec.state_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def start_supervisor(spec: LabSpec) -> Child:
    """Start the daemon detached (new session, no terminal)."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PROXYCTL_LAB_DIR=str(spec.state_root), PYTHONUNBUFFERED="1")
    return spawn([*proxyctl_argv(), "lab", "supervise", "--name", spec.name], spec.state_dir / LOG_FILE,
                 env=env, cwd="/")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- talking to the lab ------------------------------------------------------------------------


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
            raise ClusterError(f"the lab API server answered {exc.code}: {message}", exc.code) from None
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
        return daemon.poll() is not None if daemon is not None else not supervisor_running(spec)

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


# --- tearing down ------------------------------------------------------------------------------


@dataclass
class DownReport:
    supervisor: bool = False
    processes: int = 0
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    files: bool = False


def down(spec: LabSpec) -> DownReport:
    """Remove everything of the lab: processes, namespaces, links, files. Idempotent."""
    require_root()
    report = DownReport()
    state = spec.state_dir
    daemons = {ref for ref in (read_ref(state / PID_FILE), *find_daemons(spec.name)) if ref is not None}
    for daemon in daemons:
        daemon.stop(grace=15.0)
        report.supervisor = True
    refs = [read_ref(p) for p in (*sorted((state / RUN_DIR).glob("*.json")),
                                  *sorted((state / PODS_DIR).glob("*.json")))]
    live = [r.pid for r in refs if r is not None]
    kill_pids(live)
    removed = topology.teardown(spec)
    report.processes = len(set(live) | set(removed.processes))
    report.namespaces, report.links = removed.namespaces, removed.links
    report.files = remove_state(spec)
    return report


def find_daemons(name: str) -> list[ProcessRef]:
    """The daemons of lab `name`, found by their command line (`... lab supervise --name
    NAME`), so that `lab down` stops them even when their state directory is elsewhere."""
    wanted = ["lab", "supervise", "--name", name]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(argv[i:i + len(wanted)] == wanted for i in range(len(argv))):
            ref = ProcessRef.of(int(entry))
            if ref is not None and ref.pid != os.getpid():
                found.append(ref)
    return found


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
    with contextlib.suppress(OSError):
        state.rmdir()
        if state.parent == DEFAULT_STATE_ROOT:
            state.parent.rmdir()
    return True


# --- the daemon --------------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """A long-running child (an engine, an sshd): started, watched, restarted, adopted."""

    name: str
    argv: list[str]
    log_path: Path
    record_path: Path
    child: Child | None = None
    ref: ProcessRef | None = None
    failures: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    def adopt(self) -> bool:
        """Take over the process a previous daemon started, if it still runs the same argv."""
        try:
            data = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return False
        ref = read_ref(self.record_path)
        if ref is None:
            return False
        if data.get("argv") != self.argv:
            ref.stop()
            return False
        self.ref, self.started_at = ref, time.monotonic()
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
            write_json(self.record_path, {"pid": self.ref.pid, "start": self.ref.start, "argv": self.argv})

    def stop(self) -> None:
        if self.ref is not None:
            self.ref.stop()
        if self.child is not None:
            self.child.wait()
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()


class Supervisor:
    """The lab daemon (`lab supervise`): runs until SIGTERM or SIGINT."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.state = spec.state_dir
        self._stop = threading.Event()
        self._lock_fd: int | None = None

    def run(self) -> int:
        if not self._lock():
            log.error("another daemon already runs lab %s", self.spec.name)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        for directory in (RUN_DIR, LOGS_DIR, PODS_DIR):
            (self.state / directory).mkdir(parents=True, exist_ok=True)
        me = ProcessRef.of(os.getpid())
        assert me is not None
        write_json(self.state / PID_FILE, {"pid": me.pid, "start": me.start})
        try:
            with contextlib.ExitStack() as stack:
                self._serve(stack)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self.state / PID_FILE).unlink()
        return 0

    def _serve(self, stack: contextlib.ExitStack) -> None:
        """Start everything (each part is stopped by `stack`, in reverse) and supervise until
        asked to stop."""
        from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
        from kubectl_proxyctl.lab.controllers.controllers import LabControllers

        server = APIServer(self.spec.host_ip, self.spec.api_port, state_dir=self.state / API_DIR,
                           extra_sans=[self.spec.host_ip, "127.0.0.1"])
        try:
            server.start()
        except OSError as exc:
            server.stop()
            raise ConfigError(f"the API server cannot listen on {self.spec.host_ip}:{self.spec.api_port}: "
                              f"{exc.strerror or exc}") from exc
        stack.callback(server.stop)
        self._write_kubeconfigs(server)
        log.info("API server on %s (kubeconfig %s)", server.url, self.state / KUBECONFIG)
        stack.callback(LabControllers(server, self.spec).start().stop)
        stack.callback(PodRuntime(server, self.spec).start().stop)
        processes = self._processes()
        for proc in processes:
            stack.callback(proc.stop)
        stack.callback(log.info, "stopping")
        for proc in processes:
            if proc.adopt():
                log.info("adopted %s (pid %d)", proc.name, proc.ref.pid if proc.ref else 0)
        while not self._stop.is_set():
            self._supervise(processes)
            self._stop.wait(SUPERVISE_PERIOD)

    def _lock(self) -> bool:
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd  # held until the process exits
        return True

    def _write_kubeconfigs(self, server: Any) -> None:
        import yaml

        for name, url in ((KUBECONFIG, self.spec.api_url), (KUBECONFIG_NODES, self.spec.api_url)):
            fd = os.open(self.state / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                yaml.safe_dump(server.kubeconfig(server=url), fh, sort_keys=False)

    def _processes(self) -> list[ManagedProcess]:
        spec = self.spec
        logs, run = self.state / LOGS_DIR, self.state / RUN_DIR
        processes = []
        for node in spec.nodes:
            netns = ["ip", "netns", "exec", spec.node_ns(node)]
            engine = [*proxyctl_argv(), "run", "--kubeconfig", str(self.state / KUBECONFIG_NODES),
                      "--node-name", node.name, "--cluster-cidr", spec.cluster_cidr, "--mode", spec.mode,
                      "--healthz-bind-address", f"0.0.0.0:{HEALTHZ_PORT}",
                      "--metrics-bind-address", METRICS_ADDRESS, "--min-sync-period", MIN_SYNC_PERIOD, "-v"]
            processes.append(ManagedProcess(f"engine-{node.name}", [*netns, *engine],
                                            logs / f"engine-{node.name}.log", run / f"engine-{node.name}.json"))
        if sshd.sshd_available():
            sshd.prepare(spec)
            for node in spec.nodes:
                processes.append(ManagedProcess(
                    f"sshd-{node.name}", ["ip", "netns", "exec", spec.node_ns(node), *sshd.sshd_argv(spec, node)],
                    logs / f"sshd-{node.name}.log", run / f"sshd-{node.name}.json"))
        else:
            log.warning("%s is missing: the nodes get no SSH (install openssh-server)", sshd.SSHD)
        return processes

    def _supervise(self, processes: list[ManagedProcess]) -> None:
        now = time.monotonic()
        for proc in processes:
            if proc.alive() or now < proc.next_start or self._stop.is_set():
                continue
            if proc.started_at:
                proc.failures = 0 if now - proc.started_at > STABLE_AFTER else proc.failures + 1
                delay = min(MAX_RESTART_DELAY, SUPERVISE_PERIOD * 2 ** proc.failures) if proc.failures else 0.0
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
