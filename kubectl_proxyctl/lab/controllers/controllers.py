"""The lab's controllers: what kube-controller-manager, the scheduler, a load-balancer
controller and the kubelets' API side would do in a real cluster.

`LabControllers(server, spec).start()` attaches to a lab `APIServer` and keeps its objects
the way a real cluster would:

* **Nodes**: one Node object per lab node (labels, pod CIDR, addresses, conditions,
  nodeInfo), created or refreshed at start.
* **Allocation** (allocators.py), inside the API server's writes through an admission hook:
  ClusterIPs, NodePorts and health-check node ports with kube-apiserver's rules and errors,
  load-balancer IPs from the lab's pool, and for pods a node (least loaded, round-robin) and
  an IP from that node's pod CIDR. The `kubernetes` Service (first service IP, port 443)
  and its Endpoints/EndpointSlice point at the API server's lab address.
* **Graceful pod deletion**: a grace policy registered with the registry makes a pod delete
  mark the pod terminating; the pod is removed when its grace period ends, when a delete
  with `gracePeriodSeconds=0` arrives, or when the pod runtime reports it finished
  (`pod_terminated`).
* **EndpointSlices and Endpoints** for every Service with a selector (endpointslices.py).

Theory of operation
-------------------
::

    API write ──▶ registry ──admission──▶ allocators (choose, or reject with 422)
                     │
                     └──commit──▶ observer (in the writer's thread, under the store lock)
                                   ├─ allocators: record what the object now holds
                                   ├─ grace deadlines of terminating pods
                                   └─ queue: the Services a change concerns
                                              │  (coalesced a few ms)
                                              ▼
                                    worker thread: per Service, read the store, compute the
                                    wanted slices/Endpoints, write only the differences

The observer does no I/O and never waits for the worker; it only records and queues (with
the time of the earliest change not yet synced, which becomes the slices'
`endpoints.kubernetes.io/last-change-trigger-time`). Syncs are idempotent: they compare
with what is stored, so a Service can be synced any number of times, and `start()` simply
queues everything (after an API server restart, state converges without remembering
anything). A failed sync (a conflict with a concurrent writer, say) is retried with backoff.
The controllers' own slice and Endpoints writes are recognized (a thread-local flag) and
not queued again; anyone else's change to a managed slice queues its Service to repair it.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import logging
import math
import os
import platform
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from kubectl_proxyctl.lab.apiserver import status, tables
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.registry import Admission
from kubectl_proxyctl.lab.apiserver.resources import (
    ENDPOINT_SLICES, ENDPOINTS, NODES, PODS, SERVICES, SERVER_VERSION, ResourceType,
)
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.apiserver.store import DELETED, Event, ObjectStore
from kubectl_proxyctl.lab.controllers.allocators import TERMINAL_PHASES, Key, PodPlacer, ServiceAllocator, timestamp
from kubectl_proxyctl.lab.controllers.endpointslices import (
    LABEL_SERVICE_NAME, LABEL_ZONE, SlicePlan, desired_groups, managed_service_name, plan_endpoints,
    plan_slices, selector_of, selects,
)
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec

log = logging.getLogger(__name__)

Obj = dict[str, Any]

KUBELET_VERSION = SERVER_VERSION["gitVersion"]
CONTAINER_RUNTIME_VERSION = "proxyctl-lab://0.1.0"
COALESCE_SECONDS = 0.003
RETRY_FIRST, RETRY_MAX = 0.05, 5.0
_SERVICE, _POD = "service", "pod"
KUBERNETES: Key = ("default", "kubernetes")


def rfc3339nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC (trailing zeros of the fraction dropped)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def _zone(node: Obj | None) -> str:
    return str(((node or {}).get("metadata", {}).get("labels") or {}).get(LABEL_ZONE, ""))


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


# --- Node objects ----------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return "Linux"


def _memory() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return line.split()[1] + "Ki"
    return "0"


_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def node_object(spec: LabSpec, node: NodeSpec) -> Obj:
    """The Node object of a lab node, as its kubelet would register it (the host's kernel,
    OS, CPUs and memory; the lab's runtime)."""
    arch = _ARCHITECTURES.get(platform.machine(), platform.machine())
    now = timestamp()
    labels = {
        "beta.kubernetes.io/arch": arch, "beta.kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
        "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
    }
    if node.zone:
        labels[LABEL_ZONE] = node.zone
    resources = {"cpu": str(os.cpu_count() or 1), "memory": _memory(), "pods": "110"}
    machine = uuid.uuid5(uuid.NAMESPACE_DNS, f"{node.name}.{spec.name}.proxyctl-lab")

    def condition(kind: str, value: str, reason: str, message: str) -> Obj:
        return {"type": kind, "status": value, "lastHeartbeatTime": now, "lastTransitionTime": now,
                "reason": reason, "message": message}

    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}],
            "allocatable": dict(resources),
            "capacity": dict(resources),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": arch,
                "bootID": _read("/proc/sys/kernel/random/boot_id").strip(),
                "containerRuntimeVersion": CONTAINER_RUNTIME_VERSION,
                "kernelVersion": os.uname().release,
                "kubeProxyVersion": "",
                "kubeletVersion": KUBELET_VERSION,
                "machineID": machine.hex,
                "operatingSystem": "linux",
                "osImage": _os_image(),
                "systemUUID": str(machine),
            },
        },
    }


def _refreshed_node_status(current: Obj, desired: Obj) -> Obj:
    """The desired status, keeping the transition times of conditions that did not change."""
    st = copy.deepcopy(desired)
    before = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, dict)}
    for c in st["conditions"]:
        old = before.get(c["type"])
        if old is not None and old.get("status") == c["status"] and old.get("lastTransitionTime"):
            c["lastTransitionTime"] = old["lastTransitionTime"]
    return st


# --- the kubernetes Service --------------------------------------------------------------------------------


def kubernetes_objects(spec: LabSpec) -> tuple[Obj, Obj, Obj]:
    """`default/kubernetes`: the Service (first service IP, 443/https), its Endpoints and its
    EndpointSlice, pointing at the API server's lab address `host_ip:api_port`."""
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ServiceAllocator.kubernetes_ip(spec), "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": spec.api_port}]},
    }
    endpoints = {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": spec.host_ip}],
                     "ports": [{"name": "https", "port": spec.api_port, "protocol": "TCP"}]}],
    }
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {LABEL_SERVICE_NAME: "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [spec.host_ip], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": spec.api_port, "protocol": "TCP"}],
    }
    return service, endpoints, endpoint_slice


# --- pod status, as a kubelet reports it ------------------------------------------------------------------


def ready_pod_status(pod: Obj, ready: bool, now: str | None = None) -> Obj:
    """The status a kubelet reports for `pod` once its containers run: phase Running, the
    five pod conditions (Ready and ContainersReady per `ready`) and one running container
    status per container. Transition and start times of what did not change are kept."""
    now = now or timestamp()
    st = copy.deepcopy(pod.get("status") or {})
    containers = [c for c in (pod.get("spec") or {}).get("containers") or [] if isinstance(c, dict)]
    names = " ".join(str(c.get("name", "")) for c in containers)
    before = {c.get("type"): c for c in st.get("conditions") or [] if isinstance(c, dict)}

    def condition(kind: str, value: bool, reason: str = "") -> Obj:
        text = "True" if value else "False"
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == text else None
        c: Obj = {"type": kind, "status": text, "lastProbeTime": None, "lastTransitionTime": since or now}
        if not value and reason:
            c["reason"] = reason
            c["message"] = f"containers with unready status: [{names}]"
        return c

    st["phase"] = "Running"
    st["conditions"] = [
        condition("PodReadyToStartContainers", True),
        condition("Initialized", True),
        condition("Ready", ready, "ContainersNotReady"),
        condition("ContainersReady", ready, "ContainersNotReady"),
        condition("PodScheduled", True),
    ]
    previous = {cs.get("name"): cs for cs in st.get("containerStatuses") or [] if isinstance(cs, dict)}
    uid = pod["metadata"].get("uid", "")
    statuses = []
    for c in containers:
        name = str(c.get("name", ""))
        old = previous.get(name) or {}
        started = ((old.get("state") or {}).get("running") or {}).get("startedAt") or now
        statuses.append({
            "name": name, "image": c.get("image", ""), "imageID": "",
            "containerID": "proxyctl-lab://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest(),
            "ready": ready, "started": True, "restartCount": int(old.get("restartCount", 0)),
            "state": {"running": {"startedAt": started}},
        })
    st["containerStatuses"] = statuses
    st.setdefault("startTime", now)
    st.setdefault("qosClass", "BestEffort")
    return st


def set_pod_ready(server: APIServer, namespace: str, name: str, ready: bool) -> Obj:
    """Report a pod's containers running and ready (or running and not ready), as a
    kubelet does through `pods/status`: `kubectl get pods` then shows `1/1 Running` (or
    `0/1 Running`), and the pod's endpoints turn ready (or not ready). Retries on write
    conflicts; raises APIError (404) if the pod does not exist. Returns the stored pod.

    Clients of the API server in another process can PUT `ready_pod_status(...)` to
    `/api/v1/namespaces/NS/pods/NAME/status` the same way."""
    attempts = 5
    while True:
        pod = server.get("pods", name, namespace)
        if pod is None:
            raise status.not_found(PODS, name)
        pod["status"] = ready_pod_status(pod, ready)
        try:
            return server.update(pod, subresource="status")
        except APIError as err:
            attempts -= 1
            if err.code != 409 or not attempts:
                raise


def pod_terminated(server: APIServer, namespace: str, name: str, uid: str = "") -> bool:
    """The pod runtime's report that a terminating pod's containers have exited: the pod is
    removed now, as a kubelet does with a delete of grace 0 once the containers stopped.
    Returns False (and changes nothing) if the pod is gone, not terminating, or not the pod
    with `uid`."""
    pod = server.get("pods", name, namespace)
    if pod is None or not pod["metadata"].get("deletionTimestamp"):
        return False
    if uid and pod["metadata"].get("uid") != uid:
        return False
    try:
        server.registry.delete(PODS, namespace, name, {"uid": pod["metadata"]["uid"]}, grace_period=0)
    except APIError as err:
        if err.code in (404, 409):
            return False
        raise
    return True


# --- the controllers ---------------------------------------------------------------------------------------


class _Snapshot:
    """The store's pods, slices and node zones, each read once per batch of syncs. Pods are
    indexed by label, so selecting them costs what they match, not every pod in the
    namespace (a resync syncs every Service)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self._pods: dict[str, list[Obj]] = {}
        self._by_label: dict[str, dict[tuple[str, str], list[int]]] = {}
        self._slices: dict[str, dict[str, list[Obj]]] = {}
        self._zones: dict[str, str] | None = None

    def selected(self, namespace: str, selector: dict[str, str]) -> list[Obj]:
        """The namespace's pods that `selector` (not empty) matches, in name order."""
        if namespace not in self._pods:
            pods = [so.obj for so in self._store.objects(PODS, namespace)]
            index: dict[tuple[str, str], list[int]] = {}
            for i, pod in enumerate(pods):
                for item in (pod["metadata"].get("labels") or {}).items():
                    index.setdefault(item, []).append(i)
            self._pods[namespace], self._by_label[namespace] = pods, index
        pods, index = self._pods[namespace], self._by_label[namespace]
        narrowest = min((index.get(item, []) for item in selector.items()), key=len)
        return [pods[i] for i in narrowest if selects(selector, pods[i]["metadata"].get("labels"))]

    def slices(self, namespace: str, service: str) -> list[Obj]:
        if namespace not in self._slices:
            grouped: dict[str, list[Obj]] = {}
            for so in self._store.objects(ENDPOINT_SLICES, namespace):
                owner = (so.obj["metadata"].get("labels") or {}).get(LABEL_SERVICE_NAME)
                if owner:
                    grouped.setdefault(owner, []).append(so.obj)
            self._slices[namespace] = grouped
        return self._slices[namespace].get(service, [])

    def zones(self) -> dict[str, str]:
        if self._zones is None:
            self._zones = {so.obj["metadata"]["name"]: _zone(so.obj) for so in self._store.objects(NODES)}
        return self._zones


class LabControllers:
    """The lab's controllers on one APIServer (see the module docstring)."""

    def __init__(self, server: APIServer, spec: LabSpec, *, grace_period_default: float = 30.0) -> None:
        """`grace_period_default` is the grace period of a pod deleted without one in the
        request or in `spec.terminationGracePeriodSeconds` (which the API server defaults to
        30 on every pod it admits, so this concerns objects stored without defaults)."""
        self.server = server
        self.spec = spec
        self.grace_period_default = grace_period_default
        self._store = server.store
        self._registry = server.registry
        self._services = ServiceAllocator(spec)
        self._pods = PodPlacer(spec)
        self._selectors: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> Service -> selector
        self._selector_index: dict[str, dict[tuple[str, str], set[str]]] = {}  # namespace -> label -> Services
        self._cond = threading.Condition()
        self._queue: dict[Key, int | None] = {}  # Service -> earliest unsynced change (ns since the epoch)
        self._timers: list[tuple[float, int, str, Key, str]] = []  # (monotonic time, seq, what, key, uid)
        self._seq = itertools.count()
        self._grace: dict[Key, tuple[float, str]] = {}  # terminating pod -> (monotonic deadline, uid)
        self._retries: dict[Key, tuple[int, int | None]] = {}  # Service -> (failures, trigger)
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> LabControllers:
        """Attach to the API server: rebuild the allocation state from the stored objects,
        install the admission hook, the observer and the pod grace policy, register the
        Nodes and the `kubernetes` Service, allocate for objects stored without allocations,
        queue every Service for a full resync, and start the worker thread."""
        if self._thread is not None:
            return self
        with self._store.lock:
            services = [so.obj for so in self._store.objects(SERVICES)]
            pods = [so.obj for so in self._store.objects(PODS)]
            self._services.rebuild(services)
            self._pods.rebuild(pods)
            for so in self._store.objects(NODES):
                self._pods.observe_node(so.obj["metadata"]["name"], so.obj)
            for svc in services:
                self._remember_selector(_key(svc), svc)
            for pod in pods:
                self._track_grace(_key(pod), pod, None)
            self._registry.admission.append(self._admit)
            self._store.observers.append(self._observe)
            self._registry.graceful[PODS] = self._pod_grace
            resync = [_key(svc) for svc in services]
            resync += [(so.key[0], name) for so in self._store.objects(ENDPOINT_SLICES)
                       if (name := managed_service_name(so.obj))]
            resync += [so.key for so in self._store.objects(ENDPOINTS)]
        self._stopping = False
        self._enqueue(resync, trigger=False)
        self._register_nodes()
        self._register_kubernetes_service()
        self._allocate_for_stored(services, pods)
        self._thread = threading.Thread(target=self._run, name="lab-controllers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Detach from the API server and stop the worker (pending grace periods are picked up
        again from the pods' deletionTimestamp by the next start)."""
        with self._store.lock:
            if self._admit in self._registry.admission:
                self._registry.admission.remove(self._admit)
            if self._observe in self._store.observers:
                self._store.observers.remove(self._observe)
            if self._registry.graceful.get(PODS) == self._pod_grace:
                del self._registry.graceful[PODS]
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> LabControllers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every queued sync is done (pending grace periods do not count). False
        if that did not happen within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy or self._retries:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # --- setup --------------------------------------------------------------------------------------

    def _register_nodes(self) -> None:
        for node in self.spec.nodes:
            desired = node_object(self.spec, node)
            current = self._store.get(NODES, "", node.name)
            try:
                if current is None:
                    self._registry.create(NODES, desired)
                    continue
                obj = current.thaw()
                obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), **desired["metadata"]["labels"]}
                obj.setdefault("spec", {}).update(desired["spec"])
                obj["status"] = _refreshed_node_status(obj.get("status") or {}, desired["status"])
                obj["metadata"].pop("resourceVersion", None)
                self._registry.update(NODES, obj, "", node.name)
                self._registry.update(NODES, obj, "", node.name, subresource="status")
            except APIError as err:
                log.warning("cannot register node %s: %s", node.name, err.message)

    def _register_kubernetes_service(self) -> None:
        """Create `default/kubernetes` if it is missing and make its Endpoints and slice
        point at the API server (as kube-apiserver does at start and after any change)."""
        service, endpoints, endpoint_slice = kubernetes_objects(self.spec)
        try:
            if self._store.get(SERVICES, *KUBERNETES) is None:
                self._registry.create(SERVICES, service, "default")
            for r, desired in ((ENDPOINTS, endpoints), (ENDPOINT_SLICES, endpoint_slice)):
                current = self._store.get(r, *KUBERNETES)
                if current is None:
                    self._write(self._registry.create, r, desired, "default")
                    continue
                obj = {**current.thaw(), **{k: v for k, v in desired.items() if k != "metadata"}}
                obj["metadata"]["labels"] = desired["metadata"]["labels"]
                self._write(self._registry.update, r, obj, *KUBERNETES)
        except APIError as err:
            log.warning("cannot register the kubernetes Service: %s", err.message)

    def _allocate_for_stored(self, services: Iterable[Obj], pods: Iterable[Obj]) -> None:
        """Objects stored while no controller ran (a bulk load, say) get their allocations now:
        rewriting them unchanged lets the admission hook fill in what is missing."""
        lab_nodes = {n.name for n in self.spec.nodes}
        for r, objects, missing in (
            (SERVICES, services, _service_lacks_allocation),
            (PODS, pods, lambda pod: _pod_lacks_placement(pod, lab_nodes)),
        ):
            for obj in objects:
                if not missing(obj):
                    continue
                ns, name = _key(obj)
                current = self._store.get(r, ns, name)
                if current is None:
                    continue
                try:
                    self._registry.update(r, current.thaw(), ns, name)
                except APIError as err:
                    log.warning("cannot allocate for %s %s/%s: %s", r, ns, name, err.message)

    # --- API server hooks (called by writers, under the store lock) ---------------------------------

    def _admit(self, review: Admission) -> None:
        with self._store.lock:  # a bulk load admits outside the lock
            if review.resource is SERVICES:
                self._services.admit(review)
            elif review.resource is PODS:
                self._pods.admit(review)

    def _pod_grace(self, pod: Obj, requested: int | None) -> int:
        """podStrategy.CheckGracefulDelete: the request's grace, else the pod's
        terminationGracePeriodSeconds; 0 for unscheduled and finished pods."""
        spec = pod.get("spec") or {}
        period = requested
        if period is None:
            given = spec.get("terminationGracePeriodSeconds")
            period = int(given) if given is not None else math.ceil(self.grace_period_default)
        if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return 0
        return 1 if period < 0 else period

    def _observe(self, ev: Event) -> None:
        obj = None if ev.type == DELETED else ev.obj.obj
        prev = ev.prev.obj if ev.prev is not None else None
        r = ev.resource
        if r is SERVICES:
            self._services.observe(ev.key, obj)
            self._remember_selector(ev.key, obj)
            self._enqueue([ev.key])
        elif r is PODS:
            self._pods.observe(ev.key, obj)
            self._track_grace(ev.key, obj, prev)
            self._enqueue(self._selecting(ev.key[0], obj, prev))
        elif r is NODES:
            self._pods.observe_node(ev.key[1], obj)
            if obj is None or prev is None or _zone(obj) != _zone(prev):
                self._enqueue([(ns, name) for ns, names in self._selectors.items() for name in names])
        elif r in (ENDPOINT_SLICES, ENDPOINTS) and not getattr(self._local, "writing", False):
            self._enqueue(self._repairs(r, ev.key[0], ev.key[1], obj, prev))

    def _remember_selector(self, key: Key, svc: Obj | None) -> None:
        namespace, name = key
        selector = selector_of(svc) if svc is not None else None
        names = self._selectors.setdefault(namespace, {})
        index = self._selector_index.setdefault(namespace, {})
        for item in (names.pop(name, None) or {}).items():
            index[item].discard(name)
        if selector is not None:
            names[name] = selector
            for item in selector.items():
                index.setdefault(item, set()).add(name)

    def _selecting(self, namespace: str, *pods: Obj | None) -> list[Key]:
        """The Services whose selector matches any of `pods` (found through the label index)."""
        selectors = self._selectors.get(namespace) or {}
        index = self._selector_index.get(namespace) or {}
        found: set[str] = set()
        for pod in pods:
            labels = (pod or {}).get("metadata", {}).get("labels") or {}
            candidates = set().union(*(index.get(item, ()) for item in labels.items()))
            found.update(name for name in candidates if selects(selectors[name], labels))
        return [(namespace, name) for name in sorted(found)]

    def _repairs(self, r: ResourceType, namespace: str, name: str, obj: Obj | None, prev: Obj | None) -> list[Key]:
        """The Services whose managed objects someone else just changed."""
        if (namespace, name) == KUBERNETES:
            return [KUBERNETES]
        if r is ENDPOINTS:
            names = {name}
        else:
            names = {n for o in (obj, prev) if o is not None and (n := managed_service_name(o))}
        selectors = self._selectors.get(namespace) or {}
        return [(namespace, n) for n in sorted(names) if n in selectors]

    def _track_grace(self, key: Key, pod: Obj | None, prev: Obj | None) -> None:
        meta = (pod or {}).get("metadata") or {}
        with self._cond:
            if not meta.get("deletionTimestamp"):
                self._grace.pop(key, None)
                return
            uid = str(meta.get("uid", ""))
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            was = (prev or {}).get("metadata") or {}
            before = self._grace.get(key)
            if before is not None and before[1] == uid and was.get("deletionTimestamp"):
                shift = grace - float(was.get("deletionGracePeriodSeconds") or 0)
                if not shift:
                    return
                deadline = before[0] + shift
            elif prev is not None and not was.get("deletionTimestamp"):
                deadline = time.monotonic() + grace
            else:
                at = tables.parse_timestamp(meta["deletionTimestamp"]) or time.time()
                deadline = time.monotonic() + at - time.time()
            self._grace[key] = (deadline, uid)
            heapq.heappush(self._timers, (deadline, next(self._seq), _POD, key, uid))
            self._cond.notify_all()

    def _enqueue(self, keys: Iterable[Key], trigger: bool = True) -> None:
        now = time.time_ns() if trigger else None
        with self._cond:
            for key in keys:
                if self._queue.get(key) is None:
                    self._queue[key] = now
            self._cond.notify_all()

    # --- the worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not self._due():
                    self._cond.wait(self._until_next_timer())
                if self._stopping:
                    return
                self._busy = True
                coalesce = bool(self._queue)
            try:
                if coalesce:
                    time.sleep(COALESCE_SECONDS)
                with self._cond:
                    batch, self._queue = self._queue, {}
                    due = self._pop_due()
                self._work(batch, due)
            except Exception:
                log.exception("lab controllers: a sync pass failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _due(self) -> bool:
        return bool(self._timers) and self._timers[0][0] <= time.monotonic()

    def _until_next_timer(self) -> float | None:
        return max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None

    def _pop_due(self) -> list[tuple[str, Key, str]]:
        due: list[tuple[str, Key, str]] = []
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            when, _, what, key, uid = heapq.heappop(self._timers)
            if what == _SERVICE or self._grace.get(key) == (when, uid):
                due.append((what, key, uid))
        return due

    def _work(self, batch: dict[Key, int | None], due: list[tuple[str, Key, str]]) -> None:
        for what, key, uid in due:
            if what == _POD:
                self._end_grace(key, uid)
            elif key not in batch or batch[key] is None:
                batch[key] = self._retries.get(key, (0, None))[1]
        snapshot = _Snapshot(self._store)
        for key, trigger in batch.items():
            try:
                self._sync(key, trigger, snapshot)
            except Exception as exc:
                self._retry(key, trigger, exc)
            else:
                with self._cond:
                    self._retries.pop(key, None)

    def _end_grace(self, key: Key, uid: str) -> None:
        with self._cond:
            self._grace.pop(key, None)
        try:
            self._registry.delete(PODS, key[0], key[1], {"uid": uid}, grace_period=0)
        except APIError as err:
            if err.code not in (404, 409):
                log.warning("cannot remove terminated pod %s/%s: %s", *key, err.message)

    def _retry(self, key: Key, trigger: int | None, exc: Exception) -> None:
        with self._cond:
            failures = self._retries.get(key, (0, None))[0] + 1
            self._retries[key] = (failures, trigger)
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1))
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), _SERVICE, key, ""))
        if isinstance(exc, APIError):
            log.info("sync of service %s/%s failed (retry in %.2fs): %s", *key, delay, exc.message)
        else:
            log.error("sync of service %s/%s failed (retry in %.2fs)", *key, delay, exc_info=exc)

    def _sync(self, key: Key, trigger_ns: int | None, snapshot: _Snapshot) -> None:
        """Make the Service's EndpointSlices and Endpoints what its pods call for."""
        if key == KUBERNETES:
            self._register_kubernetes_service()
            return
        namespace, name = key
        trigger = rfc3339nano(trigger_ns) if trigger_ns else None
        current = self._store.get(SERVICES, namespace, name)
        slices = snapshot.slices(namespace, name)
        if current is None:
            self._write_slices(namespace, SlicePlan(delete=[s for s in slices if managed_service_name(s)]))
            self._write(self._registry.delete, ENDPOINTS, namespace, name, missing_ok=True)
            return
        svc = current.obj
        selector = selector_of(svc)
        if selector is None:
            return
        pods = snapshot.selected(namespace, selector)
        groups = desired_groups(svc, pods, snapshot.zones())
        self._write_slices(namespace, plan_slices(svc, groups, slices, trigger))
        existing = self._store.get(ENDPOINTS, namespace, name)
        wanted = plan_endpoints(svc, pods, existing.obj if existing is not None else None, trigger)
        if wanted is not None and existing is None:
            self._write(self._registry.create, ENDPOINTS, wanted, namespace)
        elif wanted is not None:
            self._write(self._registry.update, ENDPOINTS, wanted, namespace, name)

    def _write_slices(self, namespace: str, plan: SlicePlan) -> None:
        """Creates first, deletes last, so a Service's endpoints never vanish in between."""
        for obj in plan.create:
            self._write(self._registry.create, ENDPOINT_SLICES, obj, namespace)
        for obj in plan.update:
            self._write(self._registry.update, ENDPOINT_SLICES, obj, namespace, obj["metadata"]["name"])
        for obj in plan.delete:
            meta = obj["metadata"]
            self._write(self._registry.delete, ENDPOINT_SLICES, namespace, meta["name"], {"uid": meta.get("uid")},
                        missing_ok=True)

    def _write(self, method: Callable[..., Any], *args: Any, missing_ok: bool = False) -> None:
        """One write of the controllers' own: the observer does not queue it again."""
        self._local.writing = True
        try:
            method(*args)
        except APIError as err:
            if not (missing_ok and err.code == 404):
                raise
        finally:
            self._local.writing = False


def _service_lacks_allocation(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    if stype == "ExternalName":
        return False
    if not spec.get("clusterIP"):
        return True
    if stype in ("NodePort", "LoadBalancer"):
        allocate = stype == "NodePort" or spec.get("allocateLoadBalancerNodePorts") is not False
        if allocate and any(isinstance(p, dict) and not p.get("nodePort") for p in spec.get("ports") or []):
            return True
    if stype == "LoadBalancer":
        if spec.get("externalTrafficPolicy") == "Local" and not spec.get("healthCheckNodePort"):
            return True
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        return not spec.get("loadBalancerClass") and not ingress
    return False


def _pod_lacks_placement(pod: Obj, lab_nodes: set[str]) -> bool:
    st = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") or st.get("phase") in TERMINAL_PHASES:
        return False
    node = (pod.get("spec") or {}).get("nodeName")
    return not node or (node in lab_nodes and not st.get("podIP"))
