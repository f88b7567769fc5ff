"""The lab's controllers for a lab on the upstream kube-apiserver (`lab up --apiserver external`).

On its own API server the lab allocates inside each write (allocators.py, an admission
hook). kube-apiserver allocates ClusterIPs and NodePorts itself, so here nothing fights it
for those; what the rest of a cluster would do is done from outside, through the API, as
the scheduler, the kubelets, kube-controller-manager and a load-balancer controller do:

* **Nodes**: one Node per lab node (`node_object`), its status written through
  `nodes/status`; and read-only rights for the lab's viewer user (a ClusterRole and its
  binding, as the lab's own server builds them in);
* **scheduling and pod IPs**: an unbound pod is bound (`pods/binding`) to the least-loaded
  lab node, then given an IP from that node's pod CIDR through `pods/status`
  (`allocators.set_addressed`), the node's own IP for hostNetwork pods;
* **graceful deletion**: kube-apiserver marks a deleted pod with a deletionTimestamp (now +
  grace); once that has passed, the pod is deleted with grace 0, as a kubelet does;
* **load-balancer IPs** from the lab's pool for LoadBalancer Services without a class;
* **EndpointSlices and Endpoints** from the same pure planners as on the lab's own server
  (endpointslices.py), and the slices and Endpoints of deleted Services removed (no garbage
  collector runs).

The pod runtime (`dataplane/runtime.py`) runs unchanged on `RemoteServer`, which gives it
what it uses of the lab's `APIServer` (get, list, update, delete, observers) over HTTPS.

Theory of operation
-------------------
One thread lists Nodes, Pods, Services, EndpointSlices and Endpoints every `PERIOD` and
reconciles from that snapshot; every write is idempotent and computed from what is listed,
so a failed round (the API server away, a conflict) is simply redone by the next one, and
an API server restart needs no resync of its own. Pods whose resourceVersion changed since
the last round are passed to the observers (the pod runtime queues them).
"""

from __future__ import annotations

import calendar
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from kubectl_proxyctl.errors import ClusterError, NotFoundError
from kubectl_proxyctl.lab.apiserver.resources import ENDPOINT_SLICES, ENDPOINTS, PODS, RESOURCES, ResourceType
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.controllers.allocators import TERMINAL_PHASES, Key, set_addressed, timestamp
from kubectl_proxyctl.lab.controllers.controllers import _refreshed_node_status, node_object
from kubectl_proxyctl.lab.controllers.endpointslices import (
    LABEL_SERVICE_NAME, LABEL_ZONE, desired_groups, managed_service_name, plan_endpoints, plan_slices, selector_of, selects,
)
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PERIOD = 0.2  # seconds between two reconcile rounds
LOG_EVERY = 10.0  # a failing round is logged at most this often
VIEWER_USER = "lab-viewer"  # the read-only user of `kubeconfig-viewer`
VIEWER_RULES = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]


class Client(Protocol):
    """A JSON client of the API (the lab's `LabAPI`): NotFoundError for a 404, ClusterError
    with the HTTP status (None: unreachable) for any other failure."""

    def request(self, method: str, path: str, body: Obj | None = None) -> Obj: ...


def _resource(plural: str) -> ResourceType:
    return next(r for r in RESOURCES if r.plural == plural)


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]


@dataclass(frozen=True)
class Change:
    """What the pod runtime's observer reads of a store event: the resource and the key."""

    resource: ResourceType
    key: Key


class RemoteServer:
    """The part of the lab's `APIServer` the pod runtime and `set_pod_ready` /
    `pod_terminated` use, served by kube-apiserver: errors come back as `APIError`, with
    the HTTP status as `code`, as from the in-process server. `registry` is the server
    itself, for `registry.delete`."""

    def __init__(self, api: Client) -> None:
        self._api = api
        self.observers: list[Callable[[Change], None]] = []
        self.registry = self

    @staticmethod
    def path(r: ResourceType, namespace: str = "", name: str = "", subresource: str = "") -> str:
        base = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
        if r.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{r.plural}"
        return base + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")

    def request(self, method: str, path: str, body: Obj | None = None) -> Obj:
        try:
            return self._api.request(method, path, body)
        except NotFoundError as exc:
            raise APIError(404, "NotFound", str(exc)) from None
        except ClusterError as exc:
            if exc.status is None:
                raise APIError(503, "ServiceUnavailable", str(exc)) from None
            raise APIError(exc.status, "", getattr(exc, "reason", str(exc))) from None

    def get(self, resource: str, name: str, namespace: str = "default") -> Obj | None:
        try:
            return self.request("GET", self.path(_resource(resource), namespace, name))
        except APIError as err:
            if err.code == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """The items, each with its kind and apiVersion (a list's items carry neither), so
        they can be written back as they are."""
        r = _resource(resource)
        items = list(self.request("GET", self.path(r, namespace or "")).get("items") or [])
        for item in items:
            item.setdefault("kind", r.kind)
            item.setdefault("apiVersion", r.api_version)
        return items

    def create(self, obj: Obj) -> Obj:
        r = self._of(obj)
        return self.request("POST", self.path(r, obj["metadata"].get("namespace") or "default"), obj)

    def update(self, obj: Obj, subresource: str = "") -> Obj:
        r = self._of(obj)
        namespace, name = _key(obj)
        return self.request("PUT", self.path(r, namespace, name, subresource), obj)

    def delete(self, r: ResourceType, namespace: str, name: str, preconditions: Obj | None = None,
               grace_period: int | None = None) -> Obj:
        """`Registry.delete`'s signature: DeleteOptions with the preconditions and grace."""
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if preconditions:
            options["preconditions"] = preconditions
        if grace_period is not None:
            options["gracePeriodSeconds"] = grace_period
        return self.request("DELETE", self.path(r, namespace, name), options)

    @staticmethod
    def _of(obj: Obj) -> ResourceType:
        return next(r for r in RESOURCES if r.kind == obj.get("kind") and r.api_version == obj.get("apiVersion"))

    def answers(self) -> bool:
        """True once kube-apiserver answers (it starts after etcd, in a few seconds)."""
        try:
            self.request("GET", "/version")
        except APIError:
            return False
        return True

    def notify(self, changes: Iterable[Change]) -> None:
        for change in changes:
            for observer in list(self.observers):
                observer(change)


@dataclass
class Snapshot:
    """One round's listing of everything the controllers read."""

    nodes: list[Obj]
    pods: list[Obj]
    services: list[Obj]
    slices: list[Obj]
    endpoints: list[Obj]
    zones: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, server: RemoteServer) -> Snapshot:
        nodes = server.list("nodes")
        zones = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get(LABEL_ZONE, "") for n in nodes}
        return cls(nodes, server.list("pods"), server.list("services"), server.list("endpointslices"),
                   server.list("endpoints"), zones)


def _live(pod: Obj) -> bool:
    """Not finished: a pod that holds its node's capacity and its IP."""
    return (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES


def _seconds(rfc3339: str) -> float:
    return float(calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")))


class ExternalControllers:
    """The controllers on kube-apiserver (see the module docstring)."""

    def __init__(self, server: RemoteServer, spec: LabSpec) -> None:
        self.server = server
        self.spec = spec
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered = False
        self._versions: dict[Key, str] = {}  # pod -> the resourceVersion the observers last saw
        self._cursor: dict[str, int] = {}  # node -> the last pod IP picked (as an offset)
        self._last_failure_log = 0.0

    def start(self) -> ExternalControllers:
        self._thread = threading.Thread(target=self._run, name="lab-external-controllers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # the API away, a conflict, a bad object: the next round retries
                now = time.monotonic()
                if now - self._last_failure_log > LOG_EVERY:
                    log.warning("reconcile failed (retrying every %.1fs): %s", PERIOD,
                                exc.message if isinstance(exc, APIError) else exc,
                                exc_info=not isinstance(exc, APIError))
                    self._last_failure_log = now
            self._stop.wait(PERIOD)

    def reconcile(self) -> None:
        """One round: register, list, then every controller on that snapshot."""
        if not self._registered:
            self._register_nodes()
            self._grant_viewer()
            self._registered = True
        snap = Snapshot.read(self.server)
        self._observe_pods(snap.pods)
        self._place(snap)
        self._end_grace(snap.pods)
        self._load_balancers(snap.services)
        self._sync_endpoints(snap)

    # --- setup --------------------------------------------------------------------------------

    def _register_nodes(self) -> None:
        for node in self.spec.nodes:
            desired = node_object(self.spec, node)
            current = self.server.get("nodes", node.name, "")
            if current is None:
                current = self.server.create(desired)
            current["metadata"]["labels"] = {**(current["metadata"].get("labels") or {}),
                                             **desired["metadata"]["labels"]}
            current.setdefault("spec", {}).update(desired["spec"])
            current = self.server.update(current)
            current["status"] = _refreshed_node_status(current.get("status") or {}, desired["status"])
            self.server.update(current, subresource="status")

    def _grant_viewer(self) -> None:
        """get, list and watch on everything for the lab's viewer user."""
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        objects = [
            (f"{rbac}/clusterroles", {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                      "metadata": {"name": VIEWER_USER}, "rules": VIEWER_RULES}),
            (f"{rbac}/clusterrolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": VIEWER_USER},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": VIEWER_USER},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": VIEWER_USER}]}),
        ]
        for path, body in objects:
            try:
                self.server.request("POST", path, body)
            except APIError as err:
                if err.code != 409:
                    raise

    # --- pods -----------------------------------------------------------------------------------

    def _observe_pods(self, pods: list[Obj]) -> None:
        versions = {_key(p): p["metadata"].get("resourceVersion", "") for p in pods}
        changed = [k for k, rv in versions.items() if self._versions.get(k) != rv]
        changed += [k for k in self._versions if k not in versions]
        self._versions = versions
        self.server.notify(Change(PODS, k) for k in changed)

    def _place(self, snap: Snapshot) -> None:
        """Bind unbound pods, then address bound ones without an IP."""
        nodes = {n.name: n for n in self.spec.nodes}
        live = [p for p in snap.pods if _live(p) and not p["metadata"].get("deletionTimestamp")]
        load = {name: 0 for name in nodes}
        for pod in live:
            bound = (pod.get("spec") or {}).get("nodeName")
            if bound in load:
                load[bound] += 1
        for pod in live:
            spec = pod.get("spec") or {}
            if not spec.get("nodeName"):
                chosen = min(load, key=lambda n: load[n])
                self._bind(pod, chosen)
                load[chosen] += 1
                spec["nodeName"] = chosen
            node = nodes.get(spec["nodeName"])
            if node is not None and not (pod.get("status") or {}).get("podIP"):
                self._address(pod, node, snap.pods)

    def _bind(self, pod: Obj, node: str) -> None:
        namespace, name = _key(pod)
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        self.server.request("POST", self.server.path(PODS, namespace, name, "binding"), binding)

    def _address(self, pod: Obj, node: NodeSpec, pods: list[Obj]) -> None:
        namespace, name = _key(pod)
        if (pod.get("spec") or {}).get("hostNetwork"):
            ip: str | None = node.ip
        else:
            used = {(p.get("status") or {}).get("podIP") for p in pods if _live(p)}
            ip = self._pick_ip(node, used)
            if ip is None:
                return  # the node's pod CIDR is full: the pod stays Pending
        current = self.server.get("pods", name, namespace)
        if current is None:
            return
        set_addressed(current, node.ip, ip, timestamp())
        self.server.update(current, subresource="status")

    def _pick_ip(self, node: NodeSpec, used: set[Any]) -> str | None:
        """The next free address after the last one picked (a freed address is reused last),
        skipping the network address, the bridge's `.1` and the broadcast address."""
        network = ipaddress.ip_network(node.pod_cidr)
        size = network.num_addresses
        start = self._cursor.get(node.name, 1)
        for step in range(1, size):
            offset = (start + step) % size
            if offset < 2 or offset == size - 1:
                continue
            ip = str(network[offset])
            if ip not in used:
                self._cursor[node.name] = offset
                return ip
        return None

    def _end_grace(self, pods: list[Obj]) -> None:
        """Delete, with grace 0, the terminating pods whose grace period has ended."""
        now = time.time()
        for pod in pods:
            meta = pod["metadata"]
            deadline = meta.get("deletionTimestamp")
            if deadline and _seconds(deadline) <= now:
                try:
                    self.server.delete(PODS, meta.get("namespace") or "", meta["name"], {"uid": meta.get("uid")},
                                       grace_period=0)
                except APIError as err:
                    if err.code not in (404, 409):
                        raise

    # --- services -------------------------------------------------------------------------------

    def _load_balancers(self, services: list[Obj]) -> None:
        """Give LoadBalancer Services without a class an IP from the lab's pool."""
        pool = ipaddress.ip_network(self.spec.lb_pool)
        used = {i.get("ip") for s in services
                for i in ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []}
        free = (str(ip) for ip in pool.hosts() if str(ip) not in used)
        for svc in services:
            spec = svc.get("spec") or {}
            ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            if spec.get("type") != "LoadBalancer" or spec.get("loadBalancerClass") or ingress:
                continue
            ip = next(free, None)
            if ip is None:
                return
            svc.setdefault("status", {})["loadBalancer"] = {"ingress": [{"ip": ip, "ipMode": "VIP"}]}
            self.server.update(svc, subresource="status")

    def _sync_endpoints(self, snap: Snapshot) -> None:
        services = {_key(s): s for s in snap.services}
        slices: dict[Key, list[Obj]] = {}
        for eps in snap.slices:
            owner = (eps["metadata"].get("labels") or {}).get(LABEL_SERVICE_NAME)
            if owner:
                slices.setdefault((eps["metadata"].get("namespace") or "", owner), []).append(eps)
        endpoints = {_key(e): e for e in snap.endpoints}
        for key, svc in services.items():
            selector = selector_of(svc)
            if selector is None:
                continue
            pods = [p for p in snap.pods if (p["metadata"].get("namespace") or "") == key[0]
                    and selects(selector, p["metadata"].get("labels"))]
            self._write_slices(key[0], plan_slices(svc, desired_groups(svc, pods, snap.zones),
                                                   slices.get(key, []), None))
            wanted = plan_endpoints(svc, pods, endpoints.get(key), None)
            if wanted is not None and key in endpoints:
                self.server.update(wanted)
            elif wanted is not None:
                self.server.create(wanted)
        for key, owned in slices.items():
            if key not in services:
                for eps in owned:
                    if managed_service_name(eps):
                        self._delete(ENDPOINT_SLICES, eps)
        for key, eps in endpoints.items():
            if key not in services:
                self._delete(ENDPOINTS, eps)

    def _write_slices(self, namespace: str, plan: Any) -> None:
        """Creates first, deletes last, so a Service's endpoints never vanish in between."""
        for obj in plan.create:
            obj["metadata"].setdefault("namespace", namespace)
            self.server.create(obj)
        for obj in plan.update:
            self.server.update(obj)
        for obj in plan.delete:
            self._delete(ENDPOINT_SLICES, obj)

    def _delete(self, r: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        try:
            self.server.delete(r, meta.get("namespace") or "", meta["name"], {"uid": meta.get("uid")})
        except APIError as err:
            if err.code not in (404, 409):
                raise
