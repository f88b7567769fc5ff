"""Driving a whole lab from tests and benchmarks: the CLI, kubectl, and real traffic.

`running_lab(nodes=…, mode=…)` brings a lab up with a fresh name (`t` + 5 hex digits) and
its state under a temporary directory (`PROXYCTL_LAB_DIR`), and always runs `lab down` at
the end. `Lab` wraps what a test does with it:

* `lab.cli("status")` / `lab.kubectl("get", "svc")`: the real commands, as subprocesses,
  with the lab's name, state directory and kubeconfig;
* `lab.api`: the small HTTPS client of the lab API server (`supervisor.LabAPI`);
* `http_request(netns, ip, port)`: one HTTP request on a new connection from inside a
  namespace (a socket opened there by this process), answered by the lab's echo server
  with the pod's name and the client address it saw; `Load` sends them at a steady rate
  from a thread and counts what failed;
* `leftovers(lab)`: every namespace, link, process, cgroup, BPF pin, attached program and
  file of the lab still around (`NOTHING_LEFT` when there is none);
* `api_server_down(lab)`: the API server (the control-plane process) killed and kept down
  for a block, then started again by the supervisor; `kill_daemons(lab)`: the supervisor and
  the control plane both killed (nothing restarts them until `lab up`);
* `node_rules(lab, node)`: a node's NAT rules as its engine's mode writes them (in eBPF mode
  its entry-point table and the service addresses of its BPF map, `ebpf_services`; and
  `programmed(lab, node, ip)`: do they mention a Service's IP?), `in_pod(lab, pod, …)`: a
  command run in a pod the way `lab exec` runs it (in the node's cgroup, which is what eBPF
  mode load-balances; a socket this process opens in a pod's namespace is not), and
  `engine_resources(pid)`: an engine's RSS and open file descriptors;
* `LabSlot`: the one lab a test module keeps up for its tests, brought up again when a test
  needs another shape or left it without a daemon, and handed over for good to a test that
  breaks it (so the module's tests pass in any order);
* `wait_for` (from waiting.py): poll until what a test waits for has happened.

`lab_skip_reason(mode)` says why a machine cannot run a lab in that mode (not root, a tool
missing, no cgroup v2 or bpf(2) for eBPF mode, another lab holding 172.18.0.1 or port 6443).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from kubectl_proxyctl.lab.dataplane import sshd, topology
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.modes.ebpf.maps import NFT_TABLE as EBPF_TABLE
from kubectl_proxyctl.system import cgroups
from kubectl_proxyctl.lab.supervisor import (
    CONTROL_PLANE_PID, KUBECONFIG, PID_FILE, LabAPI, control_plane_running, find_daemons, load_spec, read_ref,
)
from kubectl_proxyctl.system.netns import socket_in_netns
from kubectl_proxyctl.system.processes import ProcessRef

from netns import lab_skip_reason as _tools_skip_reason
from waiting import TIMEOUT, wait_for  # wait_for re-exported: the lab tests and bench/bench_lab.py wait with it

TOOLS = ("iptables", "iptables-save", "iptables-restore", "kubectl")
MODE_TOOLS = {"iptables": (), "nftables": ("nft",), "ebpf": ("nft", "nsenter", "bpftool", "conntrack", "curl")}
NOTHING_LEFT: dict[str, list[str]] = {"namespaces": [], "links": [], "processes": [], "cgroups": [], "pins": [],
                                      "programs": [], "files": []}
NGINX_DEMO = Path(__file__).resolve().parent / "data" / "nginx-demo.yaml"
NGINX_PODS = ("nginx-5d9c7b-4xkqm", "nginx-5d9c7b-9wz2n", "nginx-5d9c7b-tq8rl")


def proxyctl() -> list[str]:
    script = Path(sys.executable).with_name("kubectl-proxyctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kubectl_proxyctl"]


def lab_skip_reason(mode: str = "iptables") -> str | None:
    reason = _tools_skip_reason(*TOOLS, *MODE_TOOLS[mode])
    if reason:
        return reason
    if mode == "ebpf":
        from kubectl_proxyctl.errors import ProxyctlError
        from kubectl_proxyctl.lab.supervisor import check_ebpf

        try:
            check_ebpf()
        except ProxyctlError as exc:
            return str(exc)
    probe = LabSpec.build("probe", nodes=1)
    other = topology.conflicting_lab(probe)
    if other:
        return f"another lab holds {probe.host_ip} (link {other})"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", probe.api_port))
        except OSError:
            return f"port {probe.api_port} is in use (the lab API server needs it)"
    return None


# --- traffic ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange: `pod` answered (seeing us as `client`), or `error` happened."""

    pod: str = ""
    client: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def client_ip(self) -> str:
        return self.client.rsplit(":", 1)[0]


def http_request(netns: str | None, ip: str, port: int, timeout: float = 2.0) -> Answer:
    """GET / on a new connection from inside `netns` (None: the root namespace)."""
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        except OSError as exc:
            return Answer(error=f"{type(exc).__name__}: {exc}")
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(part.split("=", 1) for part in body.decode().split() if "=" in part)
    if not head.startswith(b"HTTP/1.1 200") or "pod" not in fields:
        return Answer(error=f"unexpected answer {data[:200]!r}")
    return Answer(pod=fields["pod"], client=fields.get("client", ""))


def udp_request(netns: str, ip: str, port: int, timeout: float = 1.0) -> str:
    """One datagram from inside `netns`; the answer line, or the error."""
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(b"ping\n", (ip, port))
            return sock.recv(4096).decode().strip()
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"


def spread(netns: str, ip: str, port: int, count: int) -> tuple[Counter[str], list[str]]:
    """`count` requests: how many each pod answered, and the errors."""
    pods: Counter[str] = Counter()
    errors = []
    for _ in range(count):
        answer = http_request(netns, ip, port)
        if answer.ok:
            pods[answer.pod] += 1
        else:
            errors.append(answer.error)
    return pods, errors


@dataclass
class Load:
    """Steady traffic from a thread: `rate` new connections per second until `stop()`."""

    netns: str
    ip: str
    port: int
    rate: float = 20.0
    answers: list[tuple[float, Answer]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="lab-load", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.answers.append((time.monotonic(), http_request(self.netns, self.ip, self.port)))
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> Load:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self

    @property
    def failures(self) -> list[str]:
        return [a.error for _, a in self.answers if not a.ok]


# --- the lab ---------------------------------------------------------------------------------


@dataclass
class Lab:
    name: str
    state_root: Path
    nodes: int
    mode: str = "iptables"

    @property
    def env(self) -> dict[str, str]:
        """What `eval "$(kubectl proxyctl lab env)"` gives a shell, and the state directory."""
        return dict(os.environ, PROXYCTL_LAB_DIR=str(self.state_root),
                    KUBECONFIG=str(self.state_root / self.name / KUBECONFIG),
                    PROXYCTL_SSH_CONFIG=str(sshd.ssh_config_path(self.bare_spec)))

    @property
    def spec(self) -> LabSpec:
        return load_spec(self.name, str(self.state_root))

    @property
    def bare_spec(self) -> LabSpec:
        """The names of this lab, also once its state directory is gone."""
        return LabSpec.build(self.name, nodes=self.nodes, mode=self.mode, state_root=str(self.state_root))

    @property
    def up_args(self) -> tuple[str, ...]:
        """`lab up` options that give this lab's shape again (changing nothing)."""
        return ("--nodes", str(self.nodes), "--mode", self.mode)

    @property
    def api(self) -> LabAPI:
        return LabAPI(self.spec)

    def cli(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`kubectl-proxyctl lab ARGS... --name NAME`."""
        argv = [*proxyctl(), "lab", args[0], "--name", self.name, *args[1:]]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def proxyctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`kubectl-proxyctl ARGS...` (not a lab command) with the lab's kubeconfig and ssh config."""
        done = subprocess.run([*proxyctl(), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl-proxyctl {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["kubectl", *args], env=self.env, input=stdin, capture_output=True, text=True,
                              timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def supervisor_pid(self) -> int:
        ref = read_ref(self.state_root / self.name / PID_FILE)
        assert ref is not None, "the lab daemon is not running"
        return ref.pid

    def supervisor_running(self) -> bool:
        """Is the lab daemon alive? A killed one, even a zombie, is not."""
        return read_ref(self.state_root / self.name / PID_FILE) is not None

    def control_plane_pid(self) -> int:
        """The pid of the control plane: the API server's process (with the controllers)."""
        ref = read_ref(self.state_root / self.name / CONTROL_PLANE_PID)
        assert ref is not None, "the control plane (the API server's process) is not running"
        return ref.pid

    def control_plane_running(self) -> bool:
        return (read_ref(self.state_root / self.name / CONTROL_PLANE_PID) is not None
                and control_plane_running(self.bare_spec))

    def api_answers(self) -> bool:
        """Does the API server answer (a list of Services)?"""
        try:
            LabAPI(self.spec, timeout=1.0).request("GET", "/api/v1/namespaces/default/services")
        except Exception:  # unreachable, credentials being written, 5xx: not yet
            return False
        return True

    def status(self) -> dict[str, Any]:
        """`lab status -o json` (whatever its exit code)."""
        return json.loads(self.cli("status", "-o", "json", check=False).stdout)

    def daemon_pids(self) -> dict[str, list[int]]:
        """Every supervisor and control plane of this lab, found by command line."""
        found: dict[str, list[int]] = {"supervise": [], "control-plane": []}
        for ref in find_daemons(self.name):
            argv = Path(f"/proc/{ref.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            found["supervise" if "supervise" in argv else "control-plane"].append(ref.pid)
        return found

    def engine_pids(self) -> dict[str, int]:
        """Node name -> the pid of its engine, from the daemon's records."""
        run = self.state_root / self.name / "run"
        return {path.stem.removeprefix("engine-"): int(json.loads(path.read_text())["pid"])
                for path in sorted(run.glob("engine-*.json"))}

    def ready_endpoints(self, service: str, namespace: str = "default") -> set[str]:
        slices = self.api.list(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                               f"?labelSelector=kubernetes.io/service-name%3D{service}")
        return {ep["addresses"][0] for s in slices for ep in s.get("endpoints") or []
                if (ep.get("conditions") or {}).get("ready")}

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")


def _gone(pid: int) -> bool:
    return ProcessRef.of(pid) is None  # no such process, or a zombie


@contextlib.contextmanager
def api_server_down(lab: Lab) -> Iterator[None]:
    """The API server's process (the control plane) killed (SIGKILL) and kept down for the
    block: its supervisor is paused (SIGSTOP) meanwhile. At the end the supervisor resumes,
    sees the control plane gone and starts it again (wait for `lab.api_answers()`)."""
    supervisor = lab.supervisor_pid()
    control_plane = lab.control_plane_pid()
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(control_plane, signal.SIGKILL)
        wait_for(lambda: _gone(control_plane), 30, "the killed control plane to be gone")
        yield
    finally:
        os.kill(supervisor, signal.SIGCONT)


def kill_daemons(lab: Lab) -> None:
    """Kill the supervisor and the control plane together (each would restart the other):
    the lab keeps its engines, sshd and pods, and has no API until `lab up`."""
    supervisor = lab.supervisor_pid()
    control_plane = lab.control_plane_pid()
    os.kill(control_plane, signal.SIGSTOP)  # so it cannot start a supervisor in between
    os.kill(supervisor, signal.SIGKILL)
    os.kill(control_plane, signal.SIGKILL)
    wait_for(lambda: _gone(supervisor) and _gone(control_plane), 30, "the killed daemons to be gone")


def in_node_netns(netns: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """argv in a network namespace, the machine's /sys (bpffs, cgroup v2) still in view."""
    return subprocess.run(["nsenter", f"--net={topology.netns_path(netns)}", "--", *argv],
                          capture_output=True, text=True, timeout=30, check=check)


def ebpf_services(pin_path: str, family: int = 4) -> list[str]:
    """The service addresses (`IP:PORT/PROTO`) of an eBPF-mode engine's map, read with bpftool."""
    from kubectl_proxyctl.modes.ebpf.maps import ServiceKey

    done = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", f"{pin_path}/services{family}"],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        return []
    return sorted(str(ServiceKey.unpack(bytes(int(b, 16) for b in entry["key"])))
                  for entry in json.loads(done.stdout or "[]"))


def node_rules(lab: Lab, node: str) -> str:
    """The NAT rules of `node` as its engine writes them (`iptables-save -t nat`, the
    kube-proxy table in nftables mode, the entry-point table and the BPF map's service
    addresses in eBPF mode); empty when they cannot be read."""
    netns = lab.spec.node_ns(node)
    if lab.mode == "ebpf":
        table = in_node_netns(netns, "nft", "list", "table", "ip", EBPF_TABLE).stdout
        return table + "".join(f"{entry}\n" for entry in ebpf_services(lab.spec.node_pin_path(node)))
    argv = (["nft", "list", "table", "ip", "kube-proxy"] if lab.mode == "nftables"
            else ["iptables-save", "-t", "nat"])
    return in_node_netns(netns, *argv).stdout


def programmed(lab: Lab, node: str, ip: str) -> bool:
    """Does `node`'s rule set mention `ip` (as a whole address: 10.96.0.1 is not 10.96.0.10)?"""
    return re.search(rf"(?<![\d.]){re.escape(ip)}(?![\d.])", node_rules(lab, node)) is not None


def in_pod(lab: Lab, pod: str, *argv: str) -> str:
    """`lab exec pod/POD -- argv` (the command joins the pod's node's cgroup): its output."""
    return lab.cli("exec", f"pod/{pod}", "--", *argv).stdout


def answers_in_pod(lab: Lab, pod: str, ip: str, port: int, count: int) -> list[Answer]:
    """`count` HTTP requests with curl from inside `pod` (`in_pod`), one connection each."""
    script = (f"for i in $(seq {count}); do curl -s -m 2 http://{ip}:{port}/ || echo error=curl-$?; echo; done")
    answers = []
    for line in in_pod(lab, pod, "sh", "-c", script).splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if not line.strip():
            continue
        answers.append(Answer(pod=fields["pod"], client=fields.get("client", "")) if "pod" in fields
                       else Answer(error=line.strip()))
    return answers


def cgroup_of(pid: int) -> str:
    """The cgroup v2 path of a process (`0::/…` of /proc/PID/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def engine_resources(pid: int) -> tuple[int, int]:
    """(RSS in kB from /proc/PID/status VmRSS, open file descriptors in /proc/PID/fd)."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def leftovers(lab: Lab) -> dict[str, list[str]]:
    """What of the lab still exists: namespaces, root links, processes, cgroups, BPF pins,
    programs attached to its cgroups (`bpftool cgroup tree`), files."""
    spec = lab.bare_spec
    prefix = f"{spec.name}-"
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    markers = (str(spec.state_dir), f"--name {spec.name}", prefix)
    processes = [line.strip() for line in ps.splitlines()
                 if any(m in line for m in markers) and "pytest" not in line]
    state = spec.state_dir
    root = cgroups.cgroup2_root()
    cgroup = Path(root, spec.cgroup) if root else None
    programs = []
    if shutil.which("bpftool"):
        tree = subprocess.run(["bpftool", "cgroup", "tree"], capture_output=True, text=True, check=False).stdout
        programs = [line.strip() for line in tree.splitlines() if f"/{spec.cgroup}/" in line]
    return {
        "namespaces": topology.list_netns(prefix),
        "links": [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()
                  if line.split(":")[1].strip().startswith(prefix)],
        "processes": processes,
        "cgroups": [str(p) for p in (cgroup, *(cgroup.rglob("*") if cgroup else ())) if p and p.is_dir()],
        "pins": topology.pin_dirs(spec),
        "programs": programs,
        "files": [str(p) for p in state.rglob("*")] + ([str(state)] if state.exists() else []),
    }


@contextlib.contextmanager
def running_lab(state_root: Path, nodes: int = 3, up_timeout: float = 120.0, mode: str = "iptables") -> Iterator[Lab]:
    """A lab with a unique name (its engines in `mode`), up for the block; `lab down`
    afterwards whatever happens."""
    lab = Lab(name="t" + secrets.token_hex(3)[:5], state_root=state_root, nodes=nodes, mode=mode)
    try:
        # `lab up` waits for readiness itself (90 s unless told): as long as the caller allows
        lab.cli("up", *lab.up_args, "--timeout", f"{int(up_timeout)}s", timeout=up_timeout + 30)
        yield lab
    finally:
        lab.cli("down", check=False)


class LabSlot:
    """The one lab a test module keeps up, shared by its tests.

    Labs share 172.18.0.1 and port 6443, so at most one runs at a time. `get(nodes, mode)`
    gives the running lab when it has that shape and its daemon is alive, else takes the
    running one down and brings up a new one (its state in a fresh directory from
    `state_dir()`): so a test gets the lab it needs whatever ran before it. A test that
    breaks its lab (kills its daemons, takes it down) uses `take()`: the lab leaves the slot,
    is never given to another test, and goes down when the test ends. `release()` takes the
    running lab down (for a test that builds labs of its own).
    """

    def __init__(self, state_dir: Callable[[], Path]) -> None:
        self._state_dir = state_dir
        self._lab: Lab | None = None
        self._stack: contextlib.ExitStack | None = None

    def get(self, nodes: int, mode: str = "iptables") -> Lab:
        lab = self._lab
        if (lab is not None and (lab.nodes, lab.mode) == (nodes, mode) and lab.supervisor_running()
                and lab.control_plane_running()):
            return lab
        self.release()
        stack = contextlib.ExitStack()
        self._lab = stack.enter_context(running_lab(self._state_dir(), nodes=nodes, mode=mode))
        self._stack = stack
        return self._lab

    @contextlib.contextmanager
    def take(self, nodes: int, mode: str = "iptables") -> Iterator[Lab]:
        lab = self.get(nodes, mode)
        stack, self._lab, self._stack = self._stack, None, None
        assert stack is not None
        with stack:
            yield lab

    def release(self) -> None:
        stack, self._lab, self._stack = self._stack, None, None
        if stack is not None:
            stack.close()


def replace_under_load(lab: Any, old_pods: list[str], node_ip: str, node_port: int, rate: int) -> tuple["Load", list[str]]:
    """A rolling replacement: under steady traffic to `node_ip:node_port`, start a new nginx pod
    and delete one old pod at a time, then wait for 20 more connections after the last one is
    gone. Returns the (stopped) load and the new pods' names; `lab` is a Lab or an external one
    (both have spec, cli and kubectl)."""
    load = Load(lab.spec.client_ns, node_ip, node_port, rate=rate).start()
    replaced: list[str] = []
    try:
        for old in old_pods:
            new = lab.cli("run", "nginx", "--labels", "app=nginx", "--port", "http=80").stdout.split()[0]
            replaced.append(new.removeprefix("pod/"))
            lab.kubectl("delete", "pod", old, "--grace-period=2", "--wait=false")
            wait_for(lambda: lab.kubectl("get", "pod", old, check=False).returncode != 0, TIMEOUT,
                     f"{old} to be removed")
        # Traffic after the last old pod is gone: 20 more connections (callers check the last 10).
        after = len(load.answers)
        wait_for(lambda: len(load.answers) >= after + 2 * 10, TIMEOUT, "20 connections after the last removal")
    finally:
        load.stop()
    return load, replaced
