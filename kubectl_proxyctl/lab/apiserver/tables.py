"""Server-side printing: `meta.k8s.io/v1 Table` objects, as `kubectl get` asks for them.

`kubectl get` sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the
columns the server returns. A real server always computes the wide columns (priority 1);
kubectl shows them only with `-o wide`. The cells below follow the printers of
kubernetes/pkg/printers/internalversion so the lab prints exactly what a cluster prints:
`80:30080/TCP`, `<none>`, `<pending>`, `10.244.1.2:80,10.244.2.3:80 + 1 more...`, ages
like `5m3s` or `2d4h`.

Everything here is pure: objects (and `now`) in, Table dicts out.
"""

from __future__ import annotations

import calendar
import time
from typing import Any, Callable, Iterable, Mapping

from kubectl_proxyctl.lab.apiserver.resources import ResourceType

Obj = Mapping[str, Any]
Cells = list[Any]

_NAME_DOC = "Name must be unique within a namespace."
_AGE_DOC = "CreationTimestamp is a timestamp representing the server time when this object was created."


def _col(name: str, doc: str, priority: int = 0, kind: str = "string", fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": doc, "priority": priority}


NAME = _col("Name", _NAME_DOC, fmt="name")
AGE = _col("Age", _AGE_DOC)

COLUMNS: dict[str, list[dict[str, Any]]] = {
    "Service": [
        NAME,
        _col("Type", "How the service is exposed: ClusterIP, NodePort, LoadBalancer or ExternalName."),
        _col("Cluster-IP", "The IP address of the service inside the cluster."),
        _col("External-IP", "Load balancer ingress points and external IPs of the service."),
        _col("Port(s)", "The ports the service exposes (port:nodePort/protocol)."),
        AGE,
        _col("Selector", "Route service traffic to pods with label keys and values matching this selector.", 1),
    ],
    "Endpoints": [NAME, _col("Endpoints", "The addresses and ports of the endpoints."), AGE],
    "EndpointSlice": [
        NAME,
        _col("AddressType", "The type of address carried by this slice: IPv4, IPv6 or FQDN."),
        _col("Ports", "The network ports exposed by each endpoint in this slice."),
        _col("Endpoints", "The addresses of the endpoints in this slice."),
        AGE,
    ],
    "Node": [
        NAME,
        _col("Status", "The status of the node"),
        _col("Roles", "The roles of the node"),
        AGE,
        _col("Version", "Kubelet Version reported by the node."),
        _col("Internal-IP", "The node's internal IP address.", 1),
        _col("External-IP", "The node's external IP address.", 1),
        _col("OS-Image", "OS Image reported by the node.", 1),
        _col("Kernel-Version", "Kernel Version reported by the node.", 1),
        _col("Container-Runtime", "ContainerRuntime Version reported by the node.", 1),
    ],
    "Pod": [
        NAME,
        _col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
        _col("Status", "The aggregate status of the containers in this pod."),
        _col("Restarts", "The number of times the containers in this pod have been restarted and when the "
             "last container in this pod has restarted."),
        AGE,
        _col("IP", "IP address allocated to the pod.", 1),
        _col("Node", "The node the pod is scheduled on.", 1),
        _col("Nominated Node", "The node the scheduler nominated for this pod.", 1),
        _col("Readiness Gates", "Pod readiness gates that are true, of all gates.", 1),
    ],
    "Namespace": [NAME, _col("Status", "The status of the namespace"), AGE],
}


# --- formatting helpers -----------------------------------------------------------------------------


def parse_timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def age(obj: Obj, now: float) -> str:
    created = parse_timestamp(obj.get("metadata", {}).get("creationTimestamp"))
    return "<unknown>" if created is None else human_duration(now - created)


def format_labels(labels: Mapping[str, str] | None) -> str:
    if not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def _with_more(items: list[str], count: int, limit: int = 3) -> str:
    text = ",".join(items[:limit])
    if count > limit:
        return f"{text} + {count - limit} more..."
    return text


def _join_host_port(ip: str, port: Any) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --- Service ----------------------------------------------------------------------------------------


def _lb_ingress(svc: Obj, wide: bool) -> str:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    found = sorted({i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")})
    text = ",".join(found)
    if not wide and len(text) > 16:
        text = text[:13] + "..."
    return text


def service_external_ip(svc: Obj, wide: bool = True) -> str:
    spec = svc.get("spec") or {}
    external = list(spec.get("externalIPs") or [])
    stype = spec.get("type", "ClusterIP")
    if stype in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if stype == "LoadBalancer":
        lb = _lb_ingress(svc, wide)
        if external:
            return ",".join((lb.split(",") if lb else []) + external)
        return lb or "<pending>"
    if stype == "ExternalName":
        return str(spec.get("externalName", ""))
    return "<unknown>"


def service_ports(svc: Obj) -> str:
    pieces = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        node_port = p.get("nodePort") or 0
        proto = p.get("protocol", "")
        pieces.append(f"{p.get('port')}:{node_port}/{proto}" if node_port > 0 else f"{p.get('port')}/{proto}")
    return ",".join(pieces) or "<none>"


def _service(svc: Obj, now: float) -> Cells:
    spec = svc.get("spec") or {}
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [
        svc["metadata"]["name"], spec.get("type", ""), cluster_ips[0] if cluster_ips else "<none>",
        service_external_ip(svc), service_ports(svc), age(svc, now), format_labels(spec.get("selector")),
    ]


# --- Endpoints and EndpointSlices ------------------------------------------------------------------


def format_endpoints(ep: Obj) -> str:
    subsets = ep.get("subsets") or []
    if not subsets:
        return "<none>"
    listed: list[str] = []
    count = 0
    for ss in subsets:
        addresses = [a.get("ip", "") for a in ss.get("addresses") or []]
        ports = ss.get("ports") or []
        if not ports:
            count += len(addresses)
            listed += addresses
            continue
        for port in ports:
            count += len(addresses)
            listed += [_join_host_port(ip, port.get("port")) for ip in addresses]
    return _with_more(listed, count)


def _slice_ports(eps: Obj) -> str:
    ports = eps.get("ports") or []
    names = [str(p["port"]) if p.get("port") is not None else (p.get("name") or "*") for p in ports]
    return _with_more(names, len(names)) or "<unset>"


def _slice_endpoints(eps: Obj) -> str:
    addresses = [a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    return _with_more(addresses, len(addresses)) or "<unset>"


def _endpoints(ep: Obj, now: float) -> Cells:
    return [ep["metadata"]["name"], format_endpoints(ep), age(ep, now)]


def _endpoint_slice(eps: Obj, now: float) -> Cells:
    name, family = eps["metadata"]["name"], eps.get("addressType", "")
    return [name, family, _slice_ports(eps), _slice_endpoints(eps), age(eps, now)]


# --- Node -------------------------------------------------------------------------------------------


def node_status(node: Obj) -> str:
    conditions = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
    ready = conditions.get("Ready")
    states = ["Unknown"] if ready is None else ["Ready" if ready.get("status") == "True" else "NotReady"]
    if (node.get("spec") or {}).get("unschedulable"):
        states.append("SchedulingDisabled")
    return ",".join(states)


def node_roles(node: Obj) -> str:
    roles = set()
    for key, value in (node["metadata"].get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key[len("node-role.kubernetes.io/"):]:
            roles.add(key[len("node-role.kubernetes.io/"):])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _node_address(node: Obj, kind: str) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == kind:
            return str(a.get("address", ""))
    return "<none>"


def _node(node: Obj, now: float) -> Cells:
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return [
        node["metadata"]["name"], node_status(node), node_roles(node), age(node, now),
        info.get("kubeletVersion", ""),
        _node_address(node, "InternalIP"), _node_address(node, "ExternalIP"),
        info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


# --- Pod ----------------------------------------------------------------------------------------------


def _terminated_reason(term: Obj, prefix: str = "") -> str:
    if term.get("reason"):
        return prefix + str(term["reason"])
    if term.get("signal"):
        return f"{prefix}Signal:{term['signal']}"
    return f"{prefix}ExitCode:{term.get('exitCode', 0)}"


def _condition_true(pod: Obj, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _last_finished(cs: Obj) -> float | None:
    return parse_timestamp((((cs.get("lastState") or {}).get("terminated")) or {}).get("finishedAt"))


def pod_summary(pod: Obj, now: float) -> tuple[str, str, str]:
    """(READY, STATUS, RESTARTS) as `kubectl get pods` prints them."""
    spec, st = pod.get("spec") or {}, pod.get("status") or {}
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    restartable = {n for n, c in init_specs.items() if c.get("restartPolicy") == "Always"}
    total = len(spec.get("containers") or []) + len(restartable)
    ready = restarts = sidecar_restarts = 0
    last_restart: float | None = None
    sidecar_last: float | None = None
    reason = st.get("reason") or st.get("phase") or ""
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    initializing = False
    for i, cs in enumerate(st.get("initContainerStatuses") or []):
        restarts += int(cs.get("restartCount", 0))
        finished = _last_finished(cs)
        if finished is not None:
            last_restart = max(last_restart or finished, finished)
        is_sidecar = cs.get("name") in restartable
        if is_sidecar:
            sidecar_restarts += int(cs.get("restartCount", 0))
            if finished is not None:
                sidecar_last = max(sidecar_last or finished, finished)
        state = cs.get("state") or {}
        term, waiting = state.get("terminated"), state.get("waiting")
        if term is not None and term.get("exitCode", 0) == 0:
            continue
        if is_sidecar and cs.get("started"):
            ready += 1 if cs.get("ready") else 0
            continue
        if term is not None:
            reason = _terminated_reason(term, "Init:")
        elif waiting and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = "Init:" + str(waiting["reason"])
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break

    if not initializing or _condition_true(pod, "Initialized"):
        restarts, last_restart = sidecar_restarts, sidecar_last
        has_running = False
        for cs in reversed(st.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount", 0))
            finished = _last_finished(cs)
            if finished is not None:
                last_restart = max(last_restart or finished, finished)
            state = cs.get("state") or {}
            waiting, term = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = str(waiting["reason"])
            elif term is not None:
                reason = _terminated_reason(term)
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if _condition_true(pod, "Ready") else "NotReady"

    if pod["metadata"].get("deletionTimestamp"):
        if st.get("reason") == "NodeLost":
            reason = "Unknown"
        elif st.get("phase") not in ("Succeeded", "Failed"):
            reason = "Terminating"
    restart_text = str(restarts)
    if restarts and last_restart is not None:
        restart_text = f"{restarts} ({human_duration(now - last_restart)} ago)"
    return f"{ready}/{total}", reason, restart_text


def _readiness_gates(pod: Obj) -> str:
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    if not gates:
        return "<none>"
    true = sum(1 for g in gates if _condition_true(pod, g.get("conditionType")))
    return f"{true}/{len(gates)}"


def _pod(pod: Obj, now: float) -> Cells:
    st = pod.get("status") or {}
    ips = st.get("podIPs") or []
    ready, state, restarts = pod_summary(pod, now)
    return [
        pod["metadata"]["name"], ready, state, restarts, age(pod, now),
        (ips[0].get("ip") if ips else "") or "<none>",
        (pod.get("spec") or {}).get("nodeName") or "<none>",
        st.get("nominatedNodeName") or "<none>",
        _readiness_gates(pod),
    ]


_COMPLETED = {
    phase: {"type": "Completed", "status": "True", "reason": phase, "message": message}
    for phase, message in (("Succeeded", "The pod has completed successfully."), ("Failed", "The pod failed."))
}


def _namespace(ns: Obj, now: float) -> Cells:
    return [ns["metadata"]["name"], (ns.get("status") or {}).get("phase", ""), age(ns, now)]


_CELLS: dict[str, Callable[[Obj, float], Cells]] = {
    "Service": _service,
    "Endpoints": _endpoints,
    "EndpointSlice": _endpoint_slice,
    "Node": _node,
    "Pod": _pod,
    "Namespace": _namespace,
}


# --- Table assembly ---------------------------------------------------------------------------------


def partial_metadata(obj: Obj) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {}),
    }


def row(
    r: ResourceType, obj: Obj, include_object: str = "Metadata", now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    cells = _CELLS[r.kind](obj, now) if r.kind in _CELLS else [obj["metadata"]["name"], age(obj, now)]
    out: dict[str, Any] = {"cells": cells}
    if r.kind == "Pod":
        condition = _COMPLETED.get((obj.get("status") or {}).get("phase", ""))
        if condition:
            out["conditions"] = [condition]
    if include_object == "Object":
        out["object"] = obj
    elif include_object != "None":
        out["object"] = partial_metadata(obj)
    return out


def table(
    r: ResourceType,
    objects: Iterable[Obj],
    include_object: str = "Metadata",
    list_meta: Mapping[str, Any] | None = None,
    api_version: str = "meta.k8s.io/v1",
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    columns = COLUMNS.get(r.kind, [NAME, AGE])
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": dict(list_meta or {}),
        "columnDefinitions": columns,
        "rows": [row(r, obj, include_object, now) for obj in objects],
    }
