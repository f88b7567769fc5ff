"""What the EndpointSlice and Endpoints controllers want for one Service: pure functions.

These follow kube-controller-manager's endpointslice controller
(k8s.io/endpointslice/reconciler.go) and endpoints controller, for IPv4 Services with a
selector. `plan_slices` takes the Service, its selected pods, the nodes' zones and the
slices that exist now, and returns the writes that make the slices right; `plan_endpoints`
does the same for the Service's legacy Endpoints object. No I/O: the caller (controllers.py)
reads the store and performs the writes.

Theory of operation
-------------------
* A pod is an endpoint if it is not terminal (Succeeded/Failed) and has an IP; a terminating
  pod stays, with `ready: false`, `serving` = its Ready condition and `terminating: true`
  (`publishNotReadyAddresses` makes every endpoint ready). A pod bound to a node that has no
  Node object is left out, as upstream does.
* Each service port is resolved per pod: a number is used as is; a name is looked up in the
  pod's container ports (same protocol). Pods are grouped by the resulting port list, so a
  pod without a named port lands in a slice whose `ports` leave that port out (or are null).
* Reconciling a group keeps what exists where it is: endpoints that are still wanted stay in
  their slice (updated in place if they changed), slices that change anyway are filled up
  first, then slices with room, and only then new slices (at most 100 endpoints each) are
  created. A slice whose content is already right is not written at all. A Service without
  endpoints keeps one empty "placeholder" slice.
* Topology hints (`trafficDistribution: PreferClose`, or the `service.kubernetes.io/
  topology-mode: Auto` annotation): every ready endpoint with a zone gets a hint for its own
  zone. For `Auto`, hints are only set when every zone that has nodes has a ready endpoint
  (upstream's heuristic also weighs zones by CPU; the lab's nodes are all alike).
* The legacy Endpoints object lists ready pods in `addresses` and not-ready ones in
  `notReadyAddresses` (terminating pods are left out), grouped by identical port sets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

Obj = dict[str, Any]
PortsKey = tuple[tuple[str, int, str, str], ...]
EndpointKey = tuple[tuple[str, ...], str, str, str]

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"
TOPOLOGY_AWARE_HINTS = "service.kubernetes.io/topology-aware-hints"
MAX_ENDPOINTS_PER_SLICE = 100
RESERVED_LABELS = (LABEL_SERVICE_NAME, LABEL_MANAGED_BY)


# --- reading Services and Pods ---------------------------------------------------------------------


def selector_of(svc: Mapping[str, Any]) -> dict[str, str] | None:
    """The Service's selector, or None: a Service without one (or with an empty one, which a
    real server stores as none) gets no endpoints from the controllers."""
    spec = svc.get("spec") or {}
    selector = spec.get("selector")
    if spec.get("type") == "ExternalName" or not isinstance(selector, dict) or not selector:
        return None
    return {str(k): str(v) for k, v in selector.items()}


def selects(selector: Mapping[str, str], labels: Mapping[str, Any] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [] if isinstance(c, dict))


def pod_ip(pod: Mapping[str, Any]) -> str:
    st = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in st.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")]
    candidates = ips or ([str(st["podIP"])] if st.get("podIP") else [])
    return next((ip for ip in candidates if ":" not in ip), "")


def is_endpoint(pod: Mapping[str, Any]) -> bool:
    """ShouldPodBeInEndpoints(pod, includeTerminating=true)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and bool(pod_ip(pod))


def find_port(pod: Mapping[str, Any], service_port: Mapping[str, Any]) -> int | None:
    """The pod's port for a service port: a number as is, a name from the containers'
    ports of the same protocol (restartable init containers included), else None."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    protocol = service_port.get("protocol", "TCP")
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    containers += [c for c in spec.get("initContainers") or []
                   if isinstance(c, dict) and c.get("restartPolicy") == "Always"]
    for container in containers:
        for port in (container or {}).get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def endpoint_ports(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> list[Obj]:
    ports: list[Obj] = []
    for sp in (svc.get("spec") or {}).get("ports") or []:
        number = find_port(pod, sp)
        if number is None:
            continue
        port: Obj = {"name": sp.get("name", ""), "port": number, "protocol": sp.get("protocol", "TCP")}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        ports.append(port)
    return ports


def ports_key(ports: Iterable[Mapping[str, Any]] | None) -> PortsKey:
    return tuple(sorted(
        (str(p.get("name") or ""), int(p.get("port") or 0), str(p.get("protocol") or "TCP"),
         str(p.get("appProtocol") or ""))
        for p in ports or []
    ))


def endpoint_key(ep: Mapping[str, Any]) -> EndpointKey:
    ref = ep.get("targetRef") or {}
    return (tuple(sorted(ep.get("addresses") or [])), str(ep.get("hostname") or ""),
            str(ref.get("namespace") or ""), str(ref.get("name") or ""))


def _hostname(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    """A pod's hostname is published when its subdomain names this Service."""
    spec = pod.get("spec") or {}
    same = (spec.get("subdomain") == svc["metadata"]["name"]
            and pod["metadata"].get("namespace") == svc["metadata"].get("namespace"))
    return str(spec.get("hostname") or "") if same else ""


def _target_ref(pod: Mapping[str, Any]) -> Obj:
    meta = pod["metadata"]
    return {"kind": "Pod", "namespace": meta.get("namespace", ""), "name": meta["name"], "uid": meta.get("uid", "")}


# --- EndpointSlices ------------------------------------------------------------------------------------


def pod_endpoint(svc: Mapping[str, Any], pod: Mapping[str, Any], zone: str) -> Obj:
    """podToEndpoint: one endpoint for a pod, with conditions, node, zone and target."""
    serving = is_ready(pod)
    terminating = bool(pod["metadata"].get("deletionTimestamp"))
    ready = bool((svc.get("spec") or {}).get("publishNotReadyAddresses")) or (serving and not terminating)
    ep: Obj = {
        "addresses": [pod_ip(pod)],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
    }
    hostname = _hostname(svc, pod)
    if hostname:
        ep["hostname"] = hostname
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name:
        ep["nodeName"] = node_name
    ep["targetRef"] = _target_ref(pod)
    if zone:
        ep["zone"] = zone
    return ep


def topology_mode(svc: Mapping[str, Any]) -> str:
    """"Auto" (the annotation), "PreferClose" (trafficDistribution) or ""."""
    annotations = svc["metadata"].get("annotations") or {}
    mode = annotations.get(TOPOLOGY_MODE, annotations.get(TOPOLOGY_AWARE_HINTS, ""))
    if mode in ("Auto", "auto"):
        return "Auto"
    if (svc.get("spec") or {}).get("trafficDistribution") == "PreferClose":
        return "PreferClose"
    return ""


def _set_hints(mode: str, endpoints: list[Obj], zones_with_nodes: set[str]) -> None:
    ready = [ep for ep in endpoints if ep["conditions"]["ready"]]
    own_zone = mode == "PreferClose" or (
        mode == "Auto" and all(ep.get("zone") for ep in ready)
        and zones_with_nodes <= {ep["zone"] for ep in ready}
    )
    for ep in endpoints:
        if own_zone and ep["conditions"]["ready"] and ep.get("zone"):
            ep["hints"] = {"forZones": [{"name": ep["zone"]}]}


@dataclass(frozen=True)
class Group:
    ports: list[Obj]
    endpoints: list[Obj]


def desired_groups(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                   zones: Mapping[str, str]) -> dict[PortsKey, Group]:
    """The wanted endpoints of a Service, grouped by port list. `zones` maps every existing
    Node to its zone ("" for none)."""
    publish_not_ready = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    groups: dict[PortsKey, Group] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if not is_endpoint(pod):
            continue
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        if node_name not in zones and not publish_not_ready:
            continue
        ports = endpoint_ports(svc, pod)
        group = groups.setdefault(ports_key(ports), Group(ports, []))
        group.endpoints.append(pod_endpoint(svc, pod, zones.get(node_name, "")))
    mode = topology_mode(svc)
    if mode:
        _set_hints(mode, [ep for g in groups.values() for ep in g.endpoints], {z for z in zones.values() if z})
    return groups


def slice_labels(svc: Mapping[str, Any]) -> dict[str, str]:
    """The Service's labels, the headless marker, the service name and the manager."""
    labels = {k: v for k, v in (svc["metadata"].get("labels") or {}).items() if k not in RESERVED_LABELS}
    labels.pop(LABEL_HEADLESS, None)
    if (svc.get("spec") or {}).get("clusterIP") in (None, "", "None"):
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_SERVICE_NAME] = svc["metadata"]["name"]
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return labels


def owner_reference(svc: Mapping[str, Any]) -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "name": svc["metadata"]["name"],
            "uid": svc["metadata"].get("uid", ""), "controller": True, "blockOwnerDeletion": True}


def is_managed(eps: Mapping[str, Any]) -> bool:
    return (eps["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == CONTROLLER_NAME


def managed_service_name(eps: Mapping[str, Any]) -> str | None:
    """The Service a slice of this controller belongs to (None for other slices)."""
    labels = eps["metadata"].get("labels") or {}
    if labels.get(LABEL_MANAGED_BY) != CONTROLLER_NAME:
        return None
    return labels.get(LABEL_SERVICE_NAME) or None


def _owned_by(eps: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("kind") == "Service" and ref.get("uid") == uid
               for ref in eps["metadata"].get("ownerReferences") or [])


@dataclass
class SlicePlan:
    """The writes that make a Service's slices right. `create` items have a generateName;
    `update` items carry the resourceVersion they were computed from."""

    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    delete: list[Obj] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


@dataclass
class _Draft:
    base: Obj | None  # the existing slice, None for a new one
    ports: list[Obj]
    endpoints: list[Obj]
    changed: bool


def _generate_name(service_name: str) -> str:
    return service_name[:58] + "-"  # generated names stay within 63 characters, as upstream's


class _SliceBuilder:
    def __init__(self, svc: Mapping[str, Any], trigger: str | None) -> None:
        self.svc = svc
        self.labels = slice_labels(svc)
        self.owner = [owner_reference(svc)]
        self.trigger = trigger

    def meta_differs(self, eps: Mapping[str, Any]) -> bool:
        meta = eps["metadata"]
        return (meta.get("labels") or {}) != self.labels or meta.get("ownerReferences") != self.owner \
            or eps.get("addressType") != "IPv4"

    def build(self, draft: _Draft) -> Obj:
        if draft.base is not None:
            obj = copy.deepcopy(draft.base)
        else:
            meta = self.svc["metadata"]
            obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"generateName": _generate_name(meta["name"]), "namespace": meta.get("namespace", "")}}
        meta = obj["metadata"]
        meta["labels"] = dict(self.labels)
        meta["ownerReferences"] = copy.deepcopy(self.owner)
        if self.trigger:
            meta.setdefault("annotations", {})[TRIGGER_TIME] = self.trigger
        obj["addressType"] = "IPv4"
        obj["endpoints"] = draft.endpoints or None
        obj["ports"] = draft.ports or None
        return obj


def _fill(drafts: list[_Draft], remaining: list[Obj], only_changed: bool) -> list[Obj]:
    for draft in drafts:
        if not remaining:
            break
        if only_changed and not draft.changed:
            continue
        room = MAX_ENDPOINTS_PER_SLICE - len(draft.endpoints)
        if room > 0:
            draft.endpoints.extend(remaining[:room])
            remaining = remaining[room:]
            draft.changed = True
    return remaining


def _reconcile_group(builder: _SliceBuilder, group: Group, slices: list[Obj]) -> list[_Draft]:
    wanted = {endpoint_key(ep): ep for ep in group.endpoints}
    placed: set[EndpointKey] = set()
    drafts: list[_Draft] = []
    for eps in sorted(slices, key=lambda s: s["metadata"]["name"]):
        kept: list[Obj] = []
        changed = builder.meta_differs(eps)
        for ep in eps.get("endpoints") or []:
            k = endpoint_key(ep)
            if k in wanted and k not in placed and len(kept) < MAX_ENDPOINTS_PER_SLICE:
                placed.add(k)
                kept.append(wanted[k])
                changed = changed or wanted[k] != ep
            else:
                changed = True
        drafts.append(_Draft(eps, group.ports, kept, changed))
    remaining = [ep for k, ep in wanted.items() if k not in placed]
    remaining = _fill(drafts, remaining, only_changed=True)
    remaining = _fill(drafts, remaining, only_changed=False)
    for start in range(0, len(remaining), MAX_ENDPOINTS_PER_SLICE):
        drafts.append(_Draft(None, group.ports, remaining[start:start + MAX_ENDPOINTS_PER_SLICE], True))
    return drafts


def plan_slices(svc: Mapping[str, Any], groups: Mapping[PortsKey, Group], existing: Iterable[Obj],
                trigger: str | None = None) -> SlicePlan:
    """The writes that turn `existing` (the namespace's slices labelled with this Service's
    name) into the slices `groups` call for. Slices of other managers are not touched;
    managed slices of an earlier Service of the same name are deleted."""
    plan = SlicePlan()
    uid = svc["metadata"].get("uid", "")
    builder = _SliceBuilder(svc, trigger)
    by_ports: dict[PortsKey, list[Obj]] = {}
    for eps in existing:
        if not is_managed(eps):
            continue
        if not _owned_by(eps, uid):
            plan.delete.append(eps)
            continue
        by_ports.setdefault(ports_key(eps.get("ports")), []).append(eps)
    drafts: list[_Draft] = []
    for key, group in groups.items():
        drafts += _reconcile_group(builder, group, by_ports.pop(key, []))
    leftovers = [eps for slices in by_ports.values() for eps in slices]  # port lists no longer wanted
    if not groups:
        drafts.append(_placeholder(builder, leftovers))
    for draft in drafts:
        if draft.base is None:
            plan.create.append(builder.build(draft))
        elif groups and not draft.endpoints:
            plan.delete.append(draft.base)
        elif draft.changed:
            plan.update.append(builder.build(draft))
    plan.delete += leftovers
    return plan


def _placeholder(builder: _SliceBuilder, leftovers: list[Obj]) -> _Draft:
    """A Service without endpoints keeps one empty slice: an existing empty one if there is
    one (taken out of `leftovers`), else a new one."""
    for eps in sorted(leftovers, key=lambda s: s["metadata"]["name"]):
        if not eps.get("endpoints") and not eps.get("ports"):
            leftovers.remove(eps)
            return _Draft(eps, [], [], builder.meta_differs(eps))
    return _Draft(None, [], [], True)


# --- legacy Endpoints ----------------------------------------------------------------------------------


def _address(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> Obj:
    address: Obj = {"ip": pod_ip(pod)}
    hostname = _hostname(svc, pod)
    if hostname:
        address["hostname"] = hostname
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name:
        address["nodeName"] = node_name
    address["targetRef"] = _target_ref(pod)
    return address


def desired_subsets(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Obj]:
    """The Endpoints subsets of a Service (the endpoints controller plus RepackSubsets)."""
    spec = svc.get("spec") or {}
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    headless_without_ports = not spec.get("ports") and spec.get("clusterIP") == "None"
    # address identity -> (address, ready, ports)
    entries: dict[tuple[str, str, bool], tuple[Obj, list[Obj]]] = {}
    for pod in pods:
        if not is_endpoint(pod) or (pod["metadata"].get("deletionTimestamp") and not publish_not_ready):
            continue
        ready = publish_not_ready or is_ready(pod)
        address = _address(svc, pod)
        ident = (address["ip"], pod["metadata"].get("uid", ""), ready)
        if headless_without_ports:
            entries.setdefault(ident, (address, []))
            continue
        for sp in spec.get("ports") or []:
            number = find_port(pod, sp)
            if number is None:
                continue
            port: Obj = {"port": number, "protocol": sp.get("protocol", "TCP")}
            if sp.get("name"):
                port = {"name": sp["name"], **port}
            if sp.get("appProtocol"):
                port["appProtocol"] = sp["appProtocol"]
            entries.setdefault(ident, (address, []))[1].append(port)
    subsets: dict[PortsKey, Obj] = {}
    for (_, _, ready), (address, ports) in sorted(entries.items(), key=lambda e: (e[0][0], e[0][1])):
        key = ports_key(ports)
        subset = subsets.setdefault(key, {"ports": sorted(ports, key=lambda p: ports_key([p]))})
        subset.setdefault("addresses" if ready else "notReadyAddresses", []).append(address)
    result = []
    for key in sorted(subsets):
        subset = subsets[key]
        ordered: Obj = {k: subset[k] for k in ("addresses", "notReadyAddresses") if k in subset}
        if subset["ports"]:
            ordered["ports"] = subset["ports"]
        result.append(ordered)
    return result


def endpoints_labels(svc: Mapping[str, Any]) -> dict[str, str]:
    labels = dict(svc["metadata"].get("labels") or {})
    labels.pop(LABEL_HEADLESS, None)
    if (svc.get("spec") or {}).get("clusterIP") in (None, "", "None"):
        labels[LABEL_HEADLESS] = ""
    return labels


def plan_endpoints(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], existing: Obj | None,
                   trigger: str | None = None) -> Obj | None:
    """The Endpoints object to create or update (carrying the resourceVersion it replaces),
    or None when `existing` is already right."""
    subsets = desired_subsets(svc, pods)
    labels = endpoints_labels(svc)
    if existing is not None and (existing.get("subsets") or []) == subsets \
            and (existing["metadata"].get("labels") or {}) == labels:
        return None
    meta = svc["metadata"]
    obj: Obj = copy.deepcopy(existing) if existing is not None else {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "")},
    }
    if labels:
        obj["metadata"]["labels"] = labels
    else:
        obj["metadata"].pop("labels", None)
    if trigger:
        obj["metadata"].setdefault("annotations", {})[TRIGGER_TIME] = trigger
    if subsets:
        obj["subsets"] = subsets
    else:
        obj.pop("subsets", None)
    return obj
