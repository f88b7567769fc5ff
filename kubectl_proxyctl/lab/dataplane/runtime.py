"""The lab's pod runtime: what a kubelet and a CNI plugin do, for pods that are echo servers.

Theory of operation
-------------------
The runtime lives in the lab's control plane, next to the API server. An observer on the server's
store queues the key (namespace, name) of every pod that changes; a periodic resync queues
every pod and every pod the runtime runs, which also catches a server process that died.
A few worker threads reconcile one key at a time (never the same key in two threads):

* a pod that is scheduled to a lab node (`spec.nodeName`) and has an IP (`status.podIP`)
  gets a network namespace `spec.pod_ns(ns, name)` wired to its node's `cbr0`
  (`topology.add_pod`), and the echo server (`lab/dataplane/echo.py`) on its container
  ports (TCP and UDP as declared; port 80 when none is). Once the node can connect to it
  (a TCP connect, or a UDP exchange for UDP-only pods), the pod is marked Running and Ready.
  The server starts in its node's cgroup (`topology.pod_preexec`), so in eBPF mode its
  connections to Services are load-balanced by its node's engine, as a pod's are;
* a pod with a deletionTimestamp keeps serving: the endpoint controllers take it out of
  rotation, and in-flight connections finish. It is only stopped when the object is gone
  (the controllers remove it when its grace period ends), which is what makes a rolling
  replacement lose no requests. If its server exits meanwhile, the pod is reported
  finished (`controllers.pod_terminated`) and removed at once, as a kubelet would;
* a pod whose object is gone, or was replaced (another UID, IP or node), loses its process
  and namespace; an echo server that died (of a pod not terminating) is reported not
  ready, started again, and ready once it answers;
* a hostNetwork pod (the lab's proxy pods, controllers/proxypods.py) shares its node's
  namespace: nothing is created or started for it. It is reported Running and Ready once
  bound to a lab node whose namespace exists, and finished at once when it is deleted.

Each running pod is recorded in `<state>/pods/<netns>.json` (UID, IP, node, ports, and the
process as pid + start time, which survives pid reuse). A restarted control plane adopts the
pods whose record still matches the API and whose process still runs, so restarting it (the
API server with it) does not interrupt traffic; any other pod namespace of the lab is
removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from kubectl_proxyctl.lab.dataplane import topology
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.system.netns import socket_in_netns
from kubectl_proxyctl.system.processes import Child, ProcessRef, spawn

if TYPE_CHECKING:
    from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
    from kubectl_proxyctl.lab.apiserver.store import Event

log = logging.getLogger(__name__)

Key = tuple[str, str]
RESYNC_PERIOD = 2.0
READY_TIMEOUT = 20.0
PROBE_INTERVAL = 0.02
DEFAULT_PORT = 80


# --- pods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodWant:
    """What the API asks for one pod, reduced to what the runtime acts on."""

    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    tcp: tuple[int, ...]
    udp: tuple[int, ...]
    deleting: bool

    @property
    def identity(self) -> tuple[str, str, str, tuple[int, ...], tuple[int, ...]]:
        """A change in any of these means a different pod."""
        return self.uid, self.node, self.ip, self.tcp, self.udp


def container_ports(pod: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(TCP ports, UDP ports) declared by the pod's containers; port 80 when none is."""
    tcp: list[int] = []
    udp: list[int] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if isinstance(number, int) and 0 < number < 65536:
                protocol = str(port.get("protocol") or "TCP").upper()
                if protocol == "UDP":
                    udp.append(number)
                elif protocol == "TCP":
                    tcp.append(number)
    if not tcp and not udp:
        tcp.append(DEFAULT_PORT)
    return tuple(sorted(set(tcp))), tuple(sorted(set(udp)))


def host_network(pod: dict[str, Any] | None) -> bool:
    return bool(((pod or {}).get("spec") or {}).get("hostNetwork"))


def pod_want(spec: LabSpec, pod: dict[str, Any] | None) -> PodWant | None:
    """The pod as the runtime should run it, or None when it should not run here (yet, or
    ever: a hostNetwork pod has no namespace or process of its own)."""
    if pod is None or host_network(pod):
        return None
    meta = pod.get("metadata") or {}
    node = (pod.get("spec") or {}).get("nodeName") or ""
    ip = (pod.get("status") or {}).get("podIP") or ""
    if not ip or node not in {n.name for n in spec.nodes}:
        return None
    tcp, udp = container_ports(pod)
    return PodWant(
        namespace=meta.get("namespace") or "default", name=meta.get("name") or "", uid=meta.get("uid") or "",
        node=node, ip=ip, tcp=tcp, udp=udp, deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass
class PodRecord:
    """A pod this runtime runs (persisted as JSON, so a restarted daemon can adopt it)."""

    namespace: str
    name: str
    uid: str
    node: str
    ip: str
    tcp: tuple[int, ...]
    udp: tuple[int, ...]
    netns: str
    pid: int = 0
    start: int = 0
    marked_ready: bool = False

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def identity(self) -> tuple[str, str, str, tuple[int, ...], tuple[int, ...]]:
        return self.uid, self.node, self.ip, self.tcp, self.udp

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start)

    @classmethod
    def load(cls, path: Path) -> PodRecord | None:
        try:
            data = json.loads(path.read_text())
            data["tcp"], data["udp"] = tuple(data["tcp"]), tuple(data["udp"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None


def echo_argv(want: PodWant) -> list[str]:
    argv = [sys.executable, "-m", "kubectl_proxyctl.lab.dataplane.echo", "--name", want.name]
    for port in want.tcp:
        argv += ["--tcp", str(port)]
    for port in want.udp:
        argv += ["--udp", str(port)]
    return argv


def recorded_node(spec: LabSpec, netns: str) -> str | None:
    """The node of the running pod whose namespace is `netns`, from its record; None when
    the runtime keeps none."""
    record = PodRecord.load(spec.state_dir / "pods" / f"{netns}.json")
    return record.node if record is not None else None


class PodRuntime:
    """Runs the lab's pods; `start()` adopts what survived a restart and begins to reconcile."""

    def __init__(self, server: APIServer, spec: LabSpec, workers: int = 4) -> None:
        self.server = server
        self.spec = spec
        self.records_dir = spec.state_dir / "pods"
        self.logs_dir = spec.state_dir / "logs" / "pods"
        self._workers = workers
        self._records: dict[Key, PodRecord] = {}
        self._children: dict[int, Child] = {}
        self._lock = threading.Condition()
        self._queue: dict[Key, None] = {}  # ordered set
        self._busy: set[Key] = set()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PodRuntime:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._adopt()
        self.server.observers.append(self._observe)
        self._enqueue_all()
        for i in range(self._workers):
            self._spawn(self._work, f"pod-runtime-{i}")
        self._spawn(self._resync, "pod-runtime-resync")
        return self

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop reconciling. The pods keep running, as a node's containers outlive a kubelet
        restart: a new daemon adopts them, `lab down` removes them all at once."""
        with contextlib.suppress(ValueError):
            self.server.observers.remove(self._observe)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    # --- queue -------------------------------------------------------------------------------

    def _observe(self, event: Event) -> None:
        """Called under the store's lock: only queue the key."""
        if event.resource.plural == "pods":
            self._enqueue([event.key])

    def _enqueue(self, keys: Iterable[Key]) -> None:
        with self._lock:
            for key in keys:
                self._queue[key] = None
            self._lock.notify_all()

    def _enqueue_all(self) -> None:
        keys: list[Key] = []
        for pod in self.server.list("pods"):
            meta = pod.get("metadata") or {}
            keys.append((meta.get("namespace") or "default", meta.get("name") or ""))
        with self._lock:
            keys += list(self._records)
        self._enqueue(keys)

    def _next(self) -> Key | None:
        with self._lock:
            while not self._stopping:
                for key in self._queue:
                    if key not in self._busy:
                        del self._queue[key]
                        self._busy.add(key)
                        return key
                self._lock.wait(1.0)
            return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            try:
                self._reconcile(key)
            except Exception as exc:  # keep the worker alive; the resync retries the pod
                log.warning("pod %s/%s: %s", key[0], key[1], exc, exc_info=log.isEnabledFor(logging.DEBUG))
            finally:
                with self._lock:
                    self._busy.discard(key)
                    self._lock.notify_all()

    def _resync(self) -> None:
        while True:
            with self._lock:
                if self._stopping or self._lock.wait_for(lambda: self._stopping, RESYNC_PERIOD):
                    return
            try:
                self._enqueue_all()
            except Exception as exc:  # the store is closing: the next round or stop() decides
                log.debug("resync: %s", exc)

    # --- reconcile ---------------------------------------------------------------------------

    def _reconcile(self, key: Key) -> None:
        namespace, name = key
        pod = self.server.get("pods", name, namespace)
        want = pod_want(self.spec, pod)
        record = self._records.get(key)
        if record is not None and (want is None or record.identity != want.identity):
            self._remove(record)
            record = None
        if want is None:
            if pod is not None and host_network(pod):
                self._reconcile_host_network(pod)
            return
        if record is None:
            self._make_room(want)
            record = PodRecord(want.namespace, want.name, want.uid, want.node, want.ip, want.tcp, want.udp,
                               self.spec.pod_ns(want.namespace, want.name))
            topology.add_pod(self.spec, self.spec.node(want.node), record.netns, want.ip)
            with self._lock:
                self._records[key] = record
        from kubectl_proxyctl.lab.controllers.controllers import pod_terminated, set_pod_ready

        if not self._running(record):
            if not topology.netns_exists(self.spec.node_ns(want.node)):
                return  # the lab is being removed (or must be repaired by `lab up` first)
            if want.deleting and record.pid:
                # It stopped while terminating: done, as a kubelet reports a finished pod.
                self._remove(record)
                pod_terminated(self.server, want.namespace, want.name, want.uid)
                return
            if record.pid:  # it died: not ready until it answers again
                log.warning("pod %s/%s: the server exited; starting it again", *key)
                set_pod_ready(self.server, want.namespace, want.name, False)
            if not topology.netns_exists(record.netns):
                topology.add_pod(self.spec, self.spec.node(want.node), record.netns, want.ip)
            self._start(record, want)
        if not record.marked_ready and not want.deleting:
            set_pod_ready(self.server, want.namespace, want.name, True)
            record.marked_ready = True
            self._save(record)

    def _reconcile_host_network(self, pod: dict[str, Any]) -> None:
        """A hostNetwork pod runs as soon as its node does; deleted, it is finished at once."""
        from kubectl_proxyctl.lab.controllers.controllers import pod_terminated, set_pod_ready

        meta, st = pod.get("metadata") or {}, pod.get("status") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if node not in {n.name for n in self.spec.nodes} or not st.get("podIP"):
            return
        if st.get("phase") in ("Succeeded", "Failed"):
            return
        if meta.get("deletionTimestamp"):
            pod_terminated(self.server, namespace, name, meta.get("uid") or "")
            return
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in st.get("conditions") or [] if isinstance(c, dict))
        if (st.get("phase") != "Running" or not ready) and topology.netns_exists(self.spec.node_ns(node)):
            set_pod_ready(self.server, namespace, name, True)

    def _make_room(self, want: PodWant) -> None:
        """Remove a pod that still holds this IP on this node but is no longer wanted there."""
        for other in list(self._records.values()):
            if other.node == want.node and other.ip == want.ip and other.key != (want.namespace, want.name):
                self._remove(other)

    def _running(self, record: PodRecord) -> bool:
        child = self._children.get(record.pid)
        if child is not None and child.poll() is not None:
            del self._children[record.pid]
            return False
        return record.pid > 0 and record.process.alive()

    def _start(self, record: PodRecord, want: PodWant) -> None:
        log_path = self._log_path(record)
        argv = ["nsenter", f"--net={topology.netns_path(record.netns)}", "--", *echo_argv(want)]
        child = spawn(argv, log_path, preexec=topology.pod_preexec(self.spec, record.node))
        ref = ProcessRef.of(child.pid)
        record.pid, record.start = child.pid, ref.start if ref else 0
        record.marked_ready = False
        self._children[child.pid] = child
        self._save(record)
        if not self._answers(record, child):
            raise RuntimeError(f"the echo server of {record.namespace}/{record.name} did not answer "
                               f"within {READY_TIMEOUT:g}s (log: {log_path})")

    def _answers(self, record: PodRecord, child: Child) -> bool:
        """Probe the pod from its node until it answers (like a kubelet's probe)."""
        node_ns = self.spec.node_ns(record.node)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and child.poll() is None and not self._stopping:
            if record.tcp:
                with socket_in_netns(node_ns, socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1.0)
                    if sock.connect_ex((record.ip, record.tcp[0])) == 0:
                        return True
            else:
                with socket_in_netns(node_ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(0.2)
                    try:
                        sock.sendto(b"probe\n", (record.ip, record.udp[0]))
                        sock.recv(512)
                        return True
                    except OSError:
                        pass
            time.sleep(PROBE_INTERVAL)
        return False

    def _remove(self, record: PodRecord) -> None:
        record.process.stop(grace=1.0)
        child = self._children.pop(record.pid, None)
        if child is not None:
            child.wait()
        topology.remove_pod(record.netns)
        with self._lock:
            if self._records.get(record.key) is record:
                del self._records[record.key]
        with contextlib.suppress(FileNotFoundError):
            self._record_path(record.netns).unlink()
        with contextlib.suppress(FileNotFoundError):
            self._log_path(record).unlink()

    # --- records -----------------------------------------------------------------------------

    def _record_path(self, netns: str) -> Path:
        return self.records_dir / f"{netns}.json"

    def _log_path(self, record: PodRecord) -> Path:
        return self.logs_dir / f"{record.namespace}_{record.name}.log"

    def _save(self, record: PodRecord) -> None:
        path = self._record_path(record.netns)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, path)

    def _adopt(self) -> None:
        """Keep the pods a previous daemon left running when the API still wants them as they
        are; remove every other pod namespace and record of this lab."""
        adopted: set[str] = set()
        for path in sorted(self.records_dir.glob("*.json")):
            record = PodRecord.load(path)
            want = None
            if record is not None:
                want = pod_want(self.spec, self.server.get("pods", record.name, record.namespace))
            if (record is not None and want is not None and want.identity == record.identity
                    and record.process.alive() and topology.netns_exists(record.netns)):
                self._records[record.key] = record
                adopted.add(record.netns)
                continue
            if record is not None:
                record.process.stop(grace=1.0)
            path.unlink()
        for netns in topology.list_netns(topology.pod_ns_prefix(self.spec)):
            if netns not in adopted:
                topology.remove_pod(netns)
        if adopted:
            log.info("adopted %d running pods", len(adopted))
