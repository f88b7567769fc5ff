"""Allocation in the lab: cluster IPs, node ports, load-balancer IPs, nodes and pod IPs.

In a real cluster this work is spread over several components: kube-apiserver allocates
ClusterIPs and NodePorts inside the Service write, a load-balancer controller fills
`status.loadBalancer`, the scheduler binds pods to nodes, and the kubelet's CNI plugin gives
each pod an IP from its node's pod CIDR. The lab does all of it inside the API server's
admission hook, so the object a client gets back from its create already carries its
addresses, and a failed allocation rejects the write with the real server's error.

Theory of operation
-------------------
Ownership comes from committed objects only. `ServiceAllocator.observe` and
`PodPlacer.observe` are called for every committed Service or Pod event (and for every stored
object at start), and set what that object holds. So:

* a write that admission accepted but that fails later (validation, a conflict, a dry run)
  holds nothing, and nothing leaks;
* deleting an object (or a pod reaching Succeeded/Failed) frees what it held as soon as the
  delete is committed;
* after an API server restart the pools are rebuilt from the stored objects.

The admission side only *chooses*. It checks a requested value against the current owners
(an object keeps what it already holds), and it picks free values with a cursor that only
moves forward, so a freed value is reused last, and objects admitted together before any of
them is committed (a bulk `load`) still get distinct values.

As in kube-apiserver, a range is split in two bands: values picked automatically come from
the upper band first, and the lower band (16 to 256 service IPs, 16 to 128 node ports) is
left for clients that ask for a specific value, so `clusterIP: 10.96.0.100` or
`nodePort: 30080` in a manifest does not collide with an automatic choice. The first service
IP (10.96.0.1) is never picked automatically: it belongs to the `kubernetes` Service.

Everything here runs under the store's lock (admission and observers already do; callers
that rebuild state hold it), so none of it needs a lock of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from kubectl_proxyctl.lab.apiserver import status, strategy
from kubectl_proxyctl.lab.apiserver.registry import DELETE, Admission
from kubectl_proxyctl.lab.apiserver.resources import PODS, SERVICES
from kubectl_proxyctl.lab.apiserver.status import APIError, Cause
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

TERMINAL_PHASES = ("Succeeded", "Failed")
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")


def timestamp(t: float | None = None) -> str:
    """RFC 3339 in UTC, to the second, as metav1.Time serializes."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def ipv4_value(ip: Any) -> int | None:
    """An IPv4 address as an integer, None if `ip` is not one."""
    try:
        return int(ipaddress.IPv4Address(str(ip)))
    except ValueError:
        return None


def static_band(size: int, step: int, maximum: int) -> int:
    """kube-apiserver's lower band of a range of `size` values: min(max(16, size/step), max)."""
    if size <= 16:
        return 0
    return min(max(16, size // step), maximum)


class Pool:
    """The integers `first..last`, each owned by at most one key.

    `pick` returns the next value no key owns, scanning forward from where the last pick
    stopped: first `first + band .. last`, then the lower band. `reserved` values are never
    picked (they can still be assigned on request)."""

    def __init__(self, first: int, last: int, band: int = 0, reserved: Iterable[int] = ()) -> None:
        self.first, self.last = first, last
        self._dynamic = min(first + band, last)
        self._reserved = frozenset(reserved)
        self._owner: dict[int, Key] = {}
        self._held: dict[Key, set[int]] = {}
        self._cursor = self._dynamic

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.first <= value <= self.last

    def available_to(self, value: int, key: Key) -> bool:
        return self._owner.get(value, key) == key

    def assign(self, key: Key, values: Iterable[int]) -> None:
        """Make `values` (those in the pool) exactly what `key` holds."""
        self.release(key)
        mine = {v for v in values if v in self}
        for v in mine:
            other = self._owner.get(v)
            if other is not None:
                log.warning("%s is held by both %s/%s and %s/%s; the last one keeps it", v, *other, *key)
                self._held[other].discard(v)
            self._owner[v] = key
        if mine:
            self._held[key] = mine

    def release(self, key: Key) -> None:
        for v in self._held.pop(key, ()):
            if self._owner.get(v) == key:
                del self._owner[v]

    def _candidates(self) -> Iterator[int]:
        yield from range(self._cursor, self.last + 1)
        yield from range(self._dynamic, min(self._cursor, self.last + 1))
        yield from range(self.first, self._dynamic)

    def pick(self, avoid: Iterable[int] = ()) -> int | None:
        skip = set(avoid)
        for v in self._candidates():
            if v not in self._owner and v not in self._reserved and v not in skip:
                self._cursor = v + 1 if v < self.last else self._dynamic
                return v
        return None

    def resume(self) -> None:
        """Continue after the highest value held in the upper band (after a rebuild)."""
        upper = [v for v in self._owner if v >= self._dynamic]
        self._cursor = max(upper) + 1 if upper and max(upper) < self.last else self._dynamic


class AddressPool(Pool):
    """A Pool over the host addresses of an IPv4 network (network and broadcast excluded),
    handed out and taken back as strings."""

    def __init__(self, cidr: str, skip_first: int = 0, band_step: int = 0, band_max: int = 0,
                 reserved: Iterable[str] = ()) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        base = int(self.network.network_address)
        usable = self.network.num_addresses - 2
        band = static_band(self.network.num_addresses, band_step, band_max) if band_step else 0
        super().__init__(base + 1 + skip_first, base + usable, band,
                         [int(ipaddress.IPv4Address(ip)) for ip in reserved])

    def value(self, ip: Any) -> int | None:
        """The pool value of `ip`, None if it is not an IPv4 address of this pool."""
        v = ipv4_value(ip)
        return v if v is not None and v in self else None

    def pick_ip(self) -> str | None:
        v = self.pick()
        return None if v is None else str(ipaddress.IPv4Address(v))

    def assign_ips(self, key: Key, ips: Iterable[Any]) -> None:
        self.assign(key, [v for v in map(self.value, ips) if v is not None])


def _go_strings(values: list[Any]) -> str:
    """How Go's %#v prints a []string (the real server's messages quote values that way)."""
    return "[]string{" + ", ".join(f'"{v}"' for v in values) + "}"


def _invalid(name: str, path: str, value: str, detail: str) -> APIError:
    return status.invalid(SERVICES, name, [Cause("FieldValueInvalid", f"Invalid value: {value}: {detail}", path)])


def _internal(message: str) -> APIError:
    return APIError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def _needs_cluster_ip(spec: dict[str, Any]) -> bool:
    return bool(spec.get("type", "ClusterIP") != "ExternalName")


def _needs_node_ports(spec: dict[str, Any]) -> bool:
    return spec.get("type") in NODE_PORT_TYPES


def _needs_health_check_port(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _cluster_ips(spec: dict[str, Any]) -> list[Any]:
    return list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))


def _ports(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in spec.get("ports") or [] if isinstance(p, dict)]


def drop_type_dependent_fields(spec: dict[str, Any], old: dict[str, Any]) -> None:
    """On a type change, clear what the old type needed and the client did not change
    (pkg/registry/core/service/strategy.go: dropTypeDependentFields)."""
    if _needs_cluster_ip(old) and not _needs_cluster_ip(spec):
        if _cluster_ips(spec) == _cluster_ips(old):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        for same in ("ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
            if spec.get(same) == old.get(same):
                spec.pop(same, None)
    if _needs_node_ports(old) and not _needs_node_ports(spec):
        if [p.get("nodePort") for p in _ports(spec)] == [p.get("nodePort") for p in _ports(old)]:
            for p in _ports(spec):
                p.pop("nodePort", None)
        if spec.get("externalTrafficPolicy") == old.get("externalTrafficPolicy"):
            spec.pop("externalTrafficPolicy", None)
    if _needs_health_check_port(old) and not _needs_health_check_port(spec):
        if spec.get("healthCheckNodePort") == old.get("healthCheckNodePort"):
            spec.pop("healthCheckNodePort", None)
    if old.get("type") == "LoadBalancer" and spec.get("type") != "LoadBalancer":
        if spec.get("allocateLoadBalancerNodePorts") == old.get("allocateLoadBalancerNodePorts"):
            spec.pop("allocateLoadBalancerNodePorts", None)


def patch_allocated_values(spec: dict[str, Any], old: dict[str, Any]) -> None:
    """Keep what the server allocated when an update leaves it out, so re-applying the
    manifest a Service was created from works (storage.go: patchAllocatedValues)."""
    if _needs_cluster_ip(old) and _needs_cluster_ip(spec):
        if not spec.get("clusterIP") and old.get("clusterIP"):
            spec["clusterIP"] = old["clusterIP"]
        if not spec.get("clusterIPs") and old.get("clusterIPs"):
            spec["clusterIPs"] = list(old["clusterIPs"])
        if _cluster_ips(spec) == _cluster_ips(old):
            for kept in ("ipFamilies", "ipFamilyPolicy"):
                if kept in old:
                    spec.setdefault(kept, old[kept])
    if _needs_node_ports(old) and _needs_node_ports(spec):
        used_before = {p.get("nodePort") for p in _ports(old) if p.get("nodePort")}
        used_now = {p.get("nodePort") for p in _ports(spec) if p.get("nodePort")}
        by_name = {p.get("name", ""): p.get("nodePort") for p in _ports(old)}
        for p in _ports(spec):
            previous = by_name.get(p.get("name", ""))
            if not p.get("nodePort") and previous and previous not in (used_before & used_now):
                p["nodePort"] = previous
    if _needs_health_check_port(old) and _needs_health_check_port(spec):
        if not spec.get("healthCheckNodePort") and old.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old["healthCheckNodePort"]


class ServiceAllocator:
    """ClusterIPs, NodePorts (including health-check node ports) and load-balancer IPs."""

    def __init__(self, spec: LabSpec) -> None:
        self.cluster_ips = AddressPool(spec.service_cidr, band_step=16, band_max=256,
                                       reserved=[self.kubernetes_ip(spec)])
        low, high = spec.nodeport_range
        self.node_ports = Pool(low, high, static_band(high - low + 1, 32, 128))
        self.lb_ips = AddressPool(spec.lb_pool)
        self.service_cidr = spec.service_cidr
        self.nodeport_range = f"{low}-{high}"

    @staticmethod
    def kubernetes_ip(spec: LabSpec) -> str:
        """The first service IP: the `kubernetes` Service's."""
        return str(next(ipaddress.IPv4Network(spec.service_cidr).hosts()))

    # --- committed state ---------------------------------------------------------------------------

    def observe(self, key: Key, svc: dict[str, Any] | None) -> None:
        """Record what a committed Service holds (None: it was deleted)."""
        if svc is None:
            for pool in (self.cluster_ips, self.node_ports, self.lb_ips):
                pool.release(key)
            return
        spec = svc.get("spec") or {}
        self.cluster_ips.assign_ips(key, _cluster_ips(spec) if _needs_cluster_ip(spec) else [])
        ports = [p.get("nodePort") for p in _ports(spec)] + [spec.get("healthCheckNodePort")]
        self.node_ports.assign(key, [p for p in ports if isinstance(p, int)])
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        self.lb_ips.assign_ips(key, [i.get("ip") for i in ingress if isinstance(i, dict)])

    def rebuild(self, services: Iterable[dict[str, Any]]) -> None:
        for svc in services:
            meta = svc["metadata"]
            self.observe((meta.get("namespace", ""), meta["name"]), svc)
        for pool in (self.cluster_ips, self.node_ports, self.lb_ips):
            pool.resume()

    # --- admission ----------------------------------------------------------------------------------

    def admit(self, review: Admission) -> None:
        """Allocate for a Service create or update (raises APIError as kube-apiserver would)."""
        if review.operation == DELETE or review.subresource or review.object is None:
            return
        svc = review.object
        meta = svc["metadata"]
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        spec = svc.setdefault("spec", {})
        old = (review.old or {}).get("spec") if review.old is not None else None
        if old is not None:
            drop_type_dependent_fields(spec, old)
            patch_allocated_values(spec, old)
        if strategy.validate(SERVICES, svc):
            return  # the registry rejects it with the validation errors, as the real server does first
        self._cluster_ip(key, spec, old)
        used = self._node_ports(key, spec)
        self._health_check_node_port(key, spec, old, used)
        self._load_balancer(key, svc)

    def _cluster_ip(self, key: Key, spec: dict[str, Any], old: dict[str, Any] | None) -> None:
        if not _needs_cluster_ip(spec):
            return
        ips = _cluster_ips(spec)
        old_ips = _cluster_ips(old) if old is not None and _needs_cluster_ip(old) else []
        if old_ips and ips and ips[0] != old_ips[0]:
            raise _invalid(key[1], "spec.clusterIPs[0]", _go_strings(ips), "may not change once set")
        requested = str(ips[0]) if ips else ""
        if requested == "None":
            ip = "None"
        elif requested and not (old_ips and requested == old_ips[0]):
            value = self.cluster_ips.value(requested)
            why = ""
            if value is None:
                why = (f"the provided IP ({requested}) is not in the valid range. The range of valid IPs "
                       f"is {self.service_cidr}")
            elif not self.cluster_ips.available_to(value, key):
                why = "provided IP is already allocated"
            if why:
                raise _invalid(key[1], "spec.clusterIPs", _go_strings(ips), f"failed to allocate IP {requested}: {why}")
            ip = requested
        elif requested:
            ip = requested
        else:
            picked = self.cluster_ips.pick_ip()
            if picked is None:
                raise _internal("failed to allocate a serviceIP: range is full")
            ip = picked
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
        spec.setdefault("ipFamilies", ["IPv4"])
        headless_without_selector = ip == "None" and not spec.get("selector")
        spec.setdefault("ipFamilyPolicy", "RequireDualStack" if headless_without_selector else "SingleStack")

    def _port_problem(self, port: int, key: Key) -> str:
        if port not in self.node_ports:
            return f"provided port is not in the valid range. The range of valid ports is {self.nodeport_range}"
        if not self.node_ports.available_to(port, key):
            return "provided port is already allocated"
        return ""

    def _node_ports(self, key: Key, spec: dict[str, Any]) -> set[int]:
        """Fill and check `ports[].nodePort`; returns the node ports the Service now uses."""
        used: set[int] = set()
        if not _needs_node_ports(spec):
            return used
        allocate = spec.get("type") == "NodePort" or spec.get("allocateLoadBalancerNodePorts") is not False
        by_port: dict[Any, int] = {}  # the same port number on another protocol shares its node port
        for i, p in enumerate(_ports(spec)):
            wanted = p.get("nodePort") or 0
            if not wanted:
                if not allocate:
                    continue
                chosen = by_port.get(p.get("port")) or self.node_ports.pick(avoid=used)
                if chosen is None:
                    raise _internal("failed to allocate a nodePort: range is full")
                wanted = chosen
            elif wanted != by_port.get(p.get("port")):
                why = "provided port is already allocated" if wanted in used else self._port_problem(wanted, key)
                if why:
                    raise _invalid(key[1], f"spec.ports[{i}].nodePort", str(wanted), why)
            p["nodePort"] = wanted
            used.add(wanted)
            by_port.setdefault(p.get("port"), wanted)
        return used

    def _health_check_node_port(self, key: Key, spec: dict[str, Any], old: dict[str, Any] | None,
                                used: set[int]) -> None:
        port = spec.get("healthCheckNodePort") or 0
        if not _needs_health_check_port(spec):
            if port:
                raise _invalid(key[1], "spec.healthCheckNodePort", str(port),
                               "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
            return
        before = (old or {}).get("healthCheckNodePort") if old is not None and _needs_health_check_port(old) else 0
        if before and port != before:
            raise _invalid(key[1], "spec.healthCheckNodePort", str(port),
                           "cannot change healthCheckNodePort on loadBalancer service with externalTraffic=Local "
                           "during update")
        if port and port != before:
            why = "provided port is already allocated" if port in used else self._port_problem(port, key)
            if why:
                raise _internal(f"failed to allocate requested HealthCheck NodePort {port}: {why}")
        elif not port:
            picked = self.node_ports.pick(avoid=used)
            if picked is None:
                raise _internal("failed to allocate a HealthCheck NodePort 0: range is full")
            spec["healthCheckNodePort"] = picked

    def _load_balancer(self, key: Key, svc: dict[str, Any]) -> None:
        """The lab's load-balancer controller: one ingress IP from the pool, `ipMode: VIP`.
        A `loadBalancerIP` outside the pool or taken leaves the Service pending, as a
        cloud controller would. Services of another `loadBalancerClass` are not ours."""
        spec = svc["spec"]
        lb = svc.setdefault("status", {}).setdefault("loadBalancer", {})
        if spec.get("type") != "LoadBalancer":
            lb.pop("ingress", None)
            return
        if spec.get("loadBalancerClass"):
            return
        held: list[str] = []
        for ingress in lb.get("ingress") or []:
            value = self.lb_ips.value(ingress.get("ip")) if isinstance(ingress, dict) else None
            if value is not None and self.lb_ips.available_to(value, key):
                held.append(str(ingress["ip"]))
        wanted = spec.get("loadBalancerIP") or ""
        ip: str | None
        if wanted:
            value = self.lb_ips.value(wanted)
            ip = wanted if value is not None and self.lb_ips.available_to(value, key) else None
        else:
            ip = held[0] if held else self.lb_ips.pick_ip()
        if ip is None:
            lb.pop("ingress", None)
        else:
            lb["ingress"] = [{"ip": ip, "ipMode": "VIP"}]


@dataclass
class _NodeState:
    spec: NodeSpec
    pool: AddressPool
    pods: set[Key] = field(default_factory=set)
    schedulable: bool = True


class PodPlacer:
    """The lab's scheduler and pod IPAM: binds pods to the least-loaded schedulable node
    (ties broken round-robin) and gives each an IP from its node's pod CIDR (the network
    address, the bridge's `.1` and the broadcast address excluded)."""

    def __init__(self, spec: LabSpec) -> None:
        self._nodes = {n.name: _NodeState(n, AddressPool(n.pod_cidr, skip_first=1)) for n in spec.nodes}
        self._order = list(self._nodes)
        self._next = 0
        self._bound: dict[Key, _NodeState] = {}  # pod -> its node
        self._addressed: dict[Key, AddressPool] = {}  # pod -> the pool its IP is from

    # --- committed state ---------------------------------------------------------------------------

    def observe(self, key: Key, pod: dict[str, Any] | None) -> None:
        """Record a committed Pod: its node's load and its IP (None: it was deleted)."""
        was_bound = self._bound.pop(key, None)
        if was_bound is not None:
            was_bound.pods.discard(key)
        was_addressed = self._addressed.pop(key, None)
        if was_addressed is not None:
            was_addressed.release(key)
        if pod is None or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return
        bound = self._nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if bound is not None:
            bound.pods.add(key)
            self._bound[key] = bound
        value = ipv4_value((pod.get("status") or {}).get("podIP"))
        if value is None:
            return
        for candidate in self._nodes.values():
            if value in candidate.pool:
                candidate.pool.assign(key, [value])
                self._addressed[key] = candidate.pool
                break

    def observe_node(self, name: str, node: dict[str, Any] | None) -> None:
        """Cordoned (`spec.unschedulable`) and deleted Node objects get no new pods."""
        state = self._nodes.get(name)
        if state is not None:
            state.schedulable = node is not None and not (node.get("spec") or {}).get("unschedulable")

    def rebuild(self, pods: Iterable[dict[str, Any]]) -> None:
        for pod in pods:
            meta = pod["metadata"]
            self.observe((meta.get("namespace", ""), meta["name"]), pod)
        for node in self._nodes.values():
            node.pool.resume()

    # --- admission ----------------------------------------------------------------------------------

    def _schedule(self) -> str | None:
        count = len(self._order)
        rotation = [self._order[(self._next + i) % count] for i in range(count)]
        candidates = [n for n in rotation if self._nodes[n].schedulable]
        if not candidates:
            return None
        best = min(candidates, key=lambda n: len(self._nodes[n].pods))
        self._next = (self._order.index(best) + 1) % count
        return best

    def admit(self, review: Admission) -> None:
        """Bind and address a Pod on create (and an unbound or unaddressed one on update)."""
        if review.operation == DELETE or review.object is None:
            return
        pod = review.object
        meta = pod["metadata"]
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        spec = pod.setdefault("spec", {})
        st = pod.setdefault("status", {})
        old_spec = (review.old or {}).get("spec") or {}
        old_status = (review.old or {}).get("status") or {}
        if old_spec.get("nodeName") and not spec.get("nodeName"):
            spec["nodeName"] = old_spec["nodeName"]  # a binding is permanent
        if old_status.get("podIP") and not st.get("podIP") and st.get("phase") not in TERMINAL_PHASES:
            for sticky in ("podIP", "podIPs", "hostIP", "hostIPs"):
                if sticky in old_status:
                    st[sticky] = old_status[sticky]
        if meta.get("deletionTimestamp") or st.get("phase") in TERMINAL_PHASES:
            return
        if not spec.get("nodeName"):
            if review.subresource:
                return
            chosen = self._schedule()
            if chosen is None:
                return
            spec["nodeName"] = chosen
        node = self._nodes.get(spec["nodeName"])
        if node is None:
            return  # bound to a node the lab does not have: it stays Pending, as on a cluster
        self._address(key, pod, node, old_status.get("podIP"))

    def _address(self, key: Key, pod: dict[str, Any], node: _NodeState, old_ip: Any) -> None:
        st = pod["status"]
        now = timestamp()
        ip = st.get("podIP")
        if pod["spec"].get("hostNetwork"):
            ip = node.spec.ip
        elif ip and ip != old_ip:
            value = node.pool.value(ip)
            if value is not None and not node.pool.available_to(value, key):
                cause = Cause("FieldValueInvalid", f'Invalid value: "{ip}": provided IP is already allocated',
                              "status.podIP")
                raise status.invalid(PODS, key[1], [cause])
        elif not ip:
            ip = node.pool.pick_ip()
            if ip is None:
                return  # the node's pod CIDR is full: no sandbox, the pod stays Pending
        set_addressed(pod, node.spec.ip, ip, now)


def set_addressed(pod: dict[str, Any], host_ip: str, ip: str, now: str) -> None:
    """Fill in `pod`'s status as a kubelet does once the sandbox has an IP and the containers
    are being created: host and pod IPs, PodScheduled, the start time, waiting containers.
    Shared by the admission hook (the lab's API server) and the external controllers, which
    write it through `pods/status`."""
    st = pod.setdefault("status", {})
    st["hostIP"] = host_ip
    st["hostIPs"] = [{"ip": host_ip}]
    st["podIP"] = ip
    st["podIPs"] = [{"ip": ip}]
    conditions = st.setdefault("conditions", [])
    if not any(c.get("type") == "PodScheduled" for c in conditions if isinstance(c, dict)):
        conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                           "lastTransitionTime": now})
    st.setdefault("startTime", now)
    st.setdefault("qosClass", "BestEffort")
    if "containerStatuses" not in st and st.get("phase", "Pending") == "Pending":
        st["containerStatuses"] = [
            {"name": c.get("name", ""), "image": c.get("image", ""), "imageID": "", "ready": False,
             "started": False, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
            for c in pod["spec"].get("containers") or [] if isinstance(c, dict)
        ]
