"""Change tracking: watch events in, an up-to-date ClusterState and the set of changed ports out.

Theory of operation (after kube-proxy's ServiceChangeTracker / EndpointsChangeTracker): every
Service, EndpointSlice and Node event is converted once, when it arrives, and kept per object.
A sync asks for `snapshot()`: the ClusterState plus which service ports changed since the
last snapshot and whether anything node-wide changed (then a full re-plan is needed).
Endpoint merging is redone only for the services whose slices changed, so the cost of a
sync after one endpoint change does not grow with the size of the cluster's object set
beyond copying a few dict references.

Thread-safety: `apply` is called from informer threads, `snapshot` from the sync thread; one
lock guards both. Invalid objects are skipped and reported once per resourceVersion.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kubectl_proxyctl.kube.convert import (
    InvalidObject,
    convert_node,
    convert_service,
    merge_endpoints,
    printable,
    service_cidrs_of,
    slice_endpoints,
    slice_ignore_reason,
)
from kubectl_proxyctl.model import ClusterState, Endpoint, NodeInfo, Service, ServicePort, ServicePortName

log = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True)
class Snapshot:
    state: ClusterState
    changed_ports: frozenset[ServicePortName]
    changed_services: frozenset[str]  # ns/name of every Service whose ports or endpoints changed
    node_changed: bool  # the local node (labels, addresses) or the service ranges changed: re-plan everything
    service_changes: int  # events counted since the last snapshot (for metrics)
    endpoint_changes: int


@dataclass
class _Pending:
    services: set[str] = field(default_factory=set)
    node: bool = False
    service_events: int = 0
    endpoint_events: int = 0


def _meta(obj: JSON) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}  # a malformed object is reported by convert


def _key(obj: JSON) -> str:
    """`namespace/name` of a Service or EndpointSlice; a missing namespace means `default`,
    as in conversion (files may omit it), so both sides name the same Service."""
    meta = _meta(obj)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


class StateTracker:
    def __init__(self, node_name: str = "", warn: Callable[[str], None] | None = None) -> None:
        self.node_name = node_name
        self._warn = warn or (lambda m: log.warning("%s", m))
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._slices: dict[str, tuple[str, list[tuple[ServicePortName, Endpoint]]]] = {}  # key → (svc, pairs)
        self._slices_of: dict[str, set[str]] = {}  # svc key → slice keys
        # svc key → sorted slice names, kept up to date by snapshot() for the services that
        # changed (every change to _slices_of marks its service pending), so a snapshot does
        # not sort the slices of every service again.
        self._slice_names: dict[str, tuple[str, ...]] = {}
        # every proxied service port, kept up to date by snapshot() like _slice_names
        self._ports: dict[ServicePortName, ServicePort] = {}
        self._ports_of: dict[str, tuple[ServicePortName, ...]] = {}
        self._endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
        self._eps_of: dict[str, set[ServicePortName]] = {}  # svc key → port names with endpoints
        self._nodes: dict[str, NodeInfo] = {}
        self._service_cidrs: dict[str, tuple[str, ...]] = {}  # ServiceCIDR name → its ranges
        self._pending = _Pending()
        self._warned: set[tuple[str, str]] = set()

    def _report(self, what: str, obj: JSON, exc: Exception) -> None:
        rv = str(_meta(obj).get("resourceVersion", ""))
        if (what, rv) not in self._warned:
            self._warned.add((what, rv))
            self._warn(printable(f"skipping invalid {what}: {exc}"))

    def _note(self, what: str, obj: JSON) -> Callable[[str], None]:
        """A `warn` for conversion notes (legacy address text), said once per resourceVersion."""
        rv = str(_meta(obj).get("resourceVersion", ""))

        def note(message: str) -> None:
            if (f"note {what}", rv) not in self._warned:
                self._warned.add((f"note {what}", rv))
                self._warn(message)

        return note

    def apply(self, kind: str, event: str, obj: JSON) -> None:
        """Record one informer event (ADDED / MODIFIED / DELETED; others are ignored)."""
        if event not in ("ADDED", "MODIFIED", "DELETED"):
            return
        with self._lock:
            if kind == "Service":
                self._apply_service(event, obj)
            elif kind == "EndpointSlice":
                self._apply_slice(event, obj)
            elif kind == "Node":
                self._apply_node(event, obj)
            elif kind == "ServiceCIDR":
                self._apply_service_cidr(event, obj)

    def _apply_service_cidr(self, event: str, obj: JSON) -> None:
        """The service ranges are node-wide (nftables mode drops traffic to their unallocated
        addresses): a change re-plans everything, like a change of this node."""
        name = str(_meta(obj).get("name") or "")
        before = self._service_cidrs.get(name)
        if event == "DELETED":
            self._service_cidrs.pop(name, None)
        else:
            try:
                self._service_cidrs[name] = service_cidrs_of(obj)
            except (InvalidObject, TypeError, AttributeError, ValueError) as exc:
                self._report(f"ServiceCIDR {name}", obj, exc)
                self._service_cidrs.pop(name, None)
        if self._service_cidrs.get(name) != before:
            self._pending.node = True

    def _apply_service(self, event: str, obj: JSON) -> None:
        key = _key(obj)
        self._pending.service_events += 1
        self._pending.services.add(key)
        if event == "DELETED":
            self._services.pop(key, None)
            return
        try:
            self._services[key] = convert_service(obj, self._note(f"Service {key}", obj))
        except (InvalidObject, TypeError, AttributeError, ValueError) as exc:
            self._report(f"Service {key}", obj, exc)
            self._services.pop(key, None)

    def _apply_slice(self, event: str, obj: JSON) -> None:
        key = _key(obj)
        self._pending.endpoint_events += 1
        old = self._slices.pop(key, None)
        if old is not None:
            self._pending.services.add(old[0])
            self._slices_of.get(old[0], set()).discard(key)
        if event == "DELETED":
            return
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("labels") or {}, Mapping):
            # malformed rather than deliberately ignored: say so, as state_from_objects does
            self._report(f"EndpointSlice {key}", obj, InvalidObject("metadata or metadata.labels is not a map"))
            return
        if slice_ignore_reason(obj):
            return
        try:
            ns, svc, pairs = slice_endpoints(obj, self._note(f"EndpointSlice {key}", obj))
        except (InvalidObject, TypeError, AttributeError, ValueError) as exc:
            self._report(f"EndpointSlice {key}", obj, exc)
            return
        svc_key = f"{ns}/{svc}"
        self._slices[key] = (svc_key, pairs)
        self._slices_of.setdefault(svc_key, set()).add(key)
        self._pending.services.add(svc_key)

    def _apply_node(self, event: str, obj: JSON) -> None:
        name = str(_meta(obj).get("name") or "")
        if event == "DELETED":
            self._nodes.pop(name, None)
        else:
            try:
                self._nodes[name] = convert_node(obj, self._note(f"Node {name}", obj))
            except (InvalidObject, TypeError, AttributeError, ValueError) as exc:
                self._report(f"Node {name}", obj, exc)
                return
        if not self.node_name or name == self.node_name:
            self._pending.node = True

    def _remerge(self, svc_key: str) -> set[ServicePortName]:
        """Recompute the merged endpoints of one service; returns the port names touched."""
        pairs: list[tuple[ServicePortName, Endpoint]] = []
        for slice_key in sorted(self._slices_of.get(svc_key, ())):
            pairs.extend(self._slices[slice_key][1])
        merged = merge_endpoints(pairs)
        touched = set(self._eps_of.get(svc_key, ())) | set(merged)
        for name in self._eps_of.get(svc_key, ()):
            self._endpoints.pop(name, None)
        self._endpoints.update(merged)
        self._eps_of[svc_key] = set(merged)
        if not merged:
            self._eps_of.pop(svc_key, None)
        return touched

    def snapshot(self) -> Snapshot:
        with self._lock:
            pending, self._pending = self._pending, _Pending()
            changed_ports: set[ServicePortName] = set()
            for svc_key in pending.services:
                names = self._slices_of.get(svc_key)
                if names:
                    self._slice_names[svc_key] = tuple(sorted(n.split("/", 1)[1] for n in names))
                else:
                    self._slice_names.pop(svc_key, None)
                changed_ports |= self._remerge(svc_key)
                for old_port in self._ports_of.pop(svc_key, ()):
                    self._ports.pop(old_port, None)
                svc = self._services.get(svc_key)
                if svc is not None and svc.proxied:
                    self._ports_of[svc_key] = tuple(p.name for p in svc.ports)
                    self._ports.update((p.name, p) for p in svc.ports)
                if svc is not None:
                    changed_ports.update(p.name for p in svc.ports)
            # Which ports existed before is not kept: deleted services are found by the
            # consumer comparing against its previous plan (changed_services covers them).
            services = dict(self._services)
            state = ClusterState(
                services=services,
                ports=dict(self._ports),
                endpoints=dict(self._endpoints),
                nodes=dict(self._nodes),
                slices_by_service=dict(self._slice_names),
                service_cidrs=tuple(sorted({c for cidrs in self._service_cidrs.values() for c in cidrs})),
            )
            return Snapshot(
                state=state,
                changed_ports=frozenset(changed_ports),
                changed_services=frozenset(pending.services),
                node_changed=pending.node,
                service_changes=pending.service_events,
                endpoint_changes=pending.endpoint_events,
            )

    def pending_changes(self) -> tuple[int, int]:
        """(service events, endpoint events) not yet taken by a snapshot."""
        with self._lock:
            return self._pending.service_events, self._pending.endpoint_events

    def node(self, name: str) -> NodeInfo | None:
        with self._lock:
            return self._nodes.get(name)
