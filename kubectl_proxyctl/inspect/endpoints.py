"""The `endpoints` view: one record per (service port, endpoint), and the problems people hit.

Pure: ClusterState in, records and problems out. The problems are the classic reasons a
Service does not answer even though "it has a selector": the selector matches no pod, pods
match but none is ready, a named targetPort that no pod declares, a Service with neither a
selector nor EndpointSlices, endpoints that exist but are all unready.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubectl_proxyctl.model import ClusterState, Endpoint, Pod, Service, ServicePort


@dataclass(frozen=True)
class EndpointRecord:
    namespace: str
    service: str
    port_name: str
    protocol: str
    service_port: int
    endpoint: Endpoint | None  # None: the port has no endpoints at all

    def as_dict(self) -> dict[str, Any]:
        ep = self.endpoint
        return {
            "namespace": self.namespace,
            "service": self.service,
            "port_name": self.port_name,
            "protocol": self.protocol,
            "ip": ep.ip if ep else None,
            "port": ep.port if ep else None,
            "ready": ep.ready if ep else None,
            "serving": ep.serving if ep else None,
            "terminating": ep.terminating if ep else None,
            "node": (ep.node_name or None) if ep else None,
            "zone": (ep.zone or None) if ep else None,
            "pod": (ep.pod_name or None) if ep else None,
        }


@dataclass(frozen=True)
class Problem:
    service: str  # ns/name
    severity: str  # "error" | "warning" | "info"
    message: str
    port: tuple[str, str] | None = None  # (port name, protocol) of a port's problem; None: the service's

    def as_dict(self) -> dict[str, str]:
        return {"service": self.service, "severity": self.severity, "message": self.message}


def records(state: ClusterState, services: list[Service]) -> list[EndpointRecord]:
    out: list[EndpointRecord] = []
    for svc in services:
        for sp in svc.ports:
            eps = state.endpoints_of(sp.name)
            base = (svc.namespace, svc.name, sp.name.port, sp.protocol.value, sp.port)
            if not eps:
                out.append(EndpointRecord(*base, None))
            out.extend(EndpointRecord(*base, ep) for ep in eps)
    return out


def _selector_text(svc: Service) -> str:
    return ",".join(f"{k}={v}" for k, v in svc.selector)


def _matching_pods(state: ClusterState, svc: Service) -> list[Pod]:
    want = dict(svc.selector)
    return [
        pod for pod in state.pods.values()
        if pod.namespace == svc.namespace and all(dict(pod.labels).get(k) == v for k, v in want.items())
    ]


def _port_problems(
    state: ClusterState, svc: Service, sp: ServicePort, pods: list[Pod]
) -> list[tuple[str, str]]:
    """(severity, message) for one service port."""
    eps = state.endpoints_of(sp.name)
    label = f"port {sp.name.port or sp.port}/{sp.protocol}"
    found: list[tuple[str, str]] = []
    if isinstance(sp.target_port, str) and svc.selector:
        declaring = [p for p in pods if any(n == sp.target_port for n, _, _ in p.container_ports)]
        if pods and state.has_pods and not declaring:
            found.append(("error",
                f"{label}: targetPort {sp.target_port!r} is a port name, and none of the "
                f"{len(pods)} selected pod(s) declares a container port with that name"))
        elif not eps and any(state.endpoints_of(o.name) for o in svc.ports if o is not sp):
            found.append(("error",
                f"{label}: targetPort {sp.target_port!r} is a port name that no endpoint resolves "
                "(other ports of this service have endpoints)"))
    if eps and not any(e.ready for e in eps):
        serving = sum(1 for e in eps if e.serving and e.terminating)
        if serving:
            found.append(("warning", f"{label}: {len(eps)} endpoint(s), none ready; {serving} "
                          "terminating endpoint(s) still serve and receive traffic as a fallback"))
        else:
            found.append(("error", f"{label}: {len(eps)} endpoint(s), none ready and none terminating-but-serving; "
                          "new connections are rejected"))
    return found


def problems(state: ClusterState, services: list[Service]) -> list[Problem]:
    out: list[Problem] = []
    for svc in services:
        key = svc.key
        if not svc.proxied:
            out.append(Problem(key, "info", f"not proxied by kube-proxy: {svc.skip_reason}"))
        has_slices = bool(state.slices_by_service.get(key))
        if not svc.selector and not has_slices:
            out.append(Problem(key, "error", "has no selector and no EndpointSlices: nothing receives its "
                               "traffic (add a selector, or create EndpointSlices for it)"))
            continue
        pods = _matching_pods(state, svc) if svc.selector else []
        if svc.selector and state.has_pods:
            if not pods:
                out.append(Problem(key, "error", f"selector {_selector_text(svc)} matches no pod in "
                                   f"namespace {svc.namespace}"))
            elif not any(p.ready for p in pods):
                out.append(Problem(key, "error", f"selector {_selector_text(svc)} matches {len(pods)} "
                                   "pod(s), none of them ready"))
        elif svc.selector and not has_slices:
            out.append(Problem(key, "error", f"no EndpointSlices for this service: does selector "
                               f"{_selector_text(svc)} match any pod?"))
        for sp in svc.ports:
            port = (sp.name.port, sp.protocol.value)
            out.extend(Problem(key, sev, msg, port) for sev, msg in _port_problems(state, svc, sp, pods))
    return out


def machine_records(services: list[Service], recs: list[EndpointRecord], found: list[Problem]) -> list[dict[str, Any]]:
    """The `-o json|yaml` records: problems go into the records they concern.

    A record gets a `problems` list (severity, message) when its service, or its port, has
    any; a service without ports gets one record of its own (port fields null) to carry them.
    """
    by_service: dict[str, list[Problem]] = {}
    for p in found:
        by_service.setdefault(p.service, []).append(p)
    out: list[dict[str, Any]] = []
    for r in recs:
        row = r.as_dict()
        mine = [p for p in by_service.get(f"{r.namespace}/{r.service}", ())
                if p.port is None or p.port == (r.port_name, r.protocol)]
        if mine:
            row["problems"] = [{"severity": p.severity, "message": p.message} for p in mine]
        out.append(row)
    for svc in services:
        if not svc.ports and by_service.get(svc.key):
            row = EndpointRecord(svc.namespace, svc.name, None, None, 0, None).as_dict()  # type: ignore[arg-type]
            row["problems"] = [{"severity": p.severity, "message": p.message} for p in by_service[svc.key]]
            out.append(row)
    return out


def summary(found: list[Problem]) -> str:
    """One line for stderr under machine output: how many problems, of which kinds."""
    counts: dict[str, int] = {}
    for p in found:
        counts[p.severity] = counts.get(p.severity, 0) + 1
    services = len({p.service for p in found})
    kinds = ", ".join(f"{n} {sev}{'s' if n != 1 and sev != 'info' else ''}"
                      for sev in ("error", "warning", "info") if (n := counts.get(sev)))
    return (f"{len(found)} problem(s) in {services} service(s) ({kinds}): see the \"problems\" "
            "of the records")


def select_services(state: ClusterState, namespace: str | None, name: str | None) -> list[Service]:
    return sorted(
        (s for s in state.services.values()
         if (namespace is None or s.namespace == namespace) and (name is None or s.name == name)),
        key=lambda s: (s.namespace, s.name),
    )
