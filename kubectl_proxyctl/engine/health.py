"""The engine's health: proxy /healthz and /livez, and the per-service health-check node ports.

Theory of operation (after kube-proxy's `pkg/proxy/healthcheck/proxy_health.go` and
`service_health.go`):

* `ProxyHealth` tracks, per IP family, when the rules were last updated and the oldest change
  still waiting to be written. The proxier calls `queued_update(family)` when a change is
  queued and `updated(family)` after a successful sync. A family is unhealthy once a change has
  waited `health_timeout` (kube-proxy uses 2 x the sync period) or longer; a family that has
  never synced counts as healthy ("starting up"). The proxy is healthy when every family is.
* /livez reports exactly that. /healthz also requires this node to be eligible for traffic:
  its Node object exists, is not being deleted, and lacks the cluster autoscaler's
  `ToBeDeletedByClusterAutoscaler` taint. Both answer 200 or 503 with Go's `encoding/json`
  rendering of kube-proxy's `ProxyHealth` struct (compact; RFC 3339 times with up to nine
  fractional digits, trailing zeros trimmed, in UTC; `lastUpdated` is "now" when healthy), and
  count answers by code in `kubeproxy_proxy_{healthz,livez}_total`.
* `ServiceHealthServers` runs one HTTP listener per node-port address for every Service with a
  health-check node port (LoadBalancer, externalTrafficPolicy Local). Any method and path get
  200 when the Service has local Ready endpoints and the proxy is healthy (node eligibility
  is not considered), else 503, with a tab-indented JSON body and the
  `X-Load-Balancing-Endpoint-Weight` header. `sync_services` opens and closes listeners to
  match the desired set (a changed port is a close and an open); a port that cannot be bound
  is reported and retried on the next sync, never fatal.

The response builders are plain methods (`healthz()`, `livez()`, `respond(service)`) so they
can be tested without sockets; the servers only route paths to them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from kubectl_proxyctl.engine.metrics import (
    NOT_FOUND,
    HTTPListener,
    HTTPResponse,
    ListeningServer,
    ProxyMetrics,
    parse_bind_address,
)
from kubectl_proxyctl.engine.runner import REAL_CLOCK, Clock
from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily, NodeInfo, ServicePortName

log = logging.getLogger(__name__)

TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def go_time(wall_ns: int | None) -> str:
    """Go's JSON form of a UTC time.Time (RFC 3339, nanoseconds, trailing zeros trimmed)."""
    if wall_ns is None:
        return GO_ZERO_TIME
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return text + "Z"


def node_eligible(node: NodeInfo | None) -> bool:
    """Whether load balancers may send traffic to this node (kube-proxy's NodeEligible)."""
    return node is not None and not node.deleting and TO_BE_DELETED_TAINT not in node.taints


@dataclass(frozen=True)
class _Instant:
    monotonic: float
    wall_ns: int


@dataclass(frozen=True)
class FamilyHealth:
    last_updated_ns: int
    healthy: bool


@dataclass(frozen=True)
class HealthReport:
    """kube-proxy's ProxyHealth: the state /healthz and /livez render."""

    healthy: bool
    last_updated_ns: int | None  # the most recent update of any family; None before any
    current_time_ns: int
    status: Mapping[IPFamily, FamilyHealth]

    def to_json(self, node_eligible: bool | None = None) -> str:
        """Go's json.Marshal of the struct; `nodeEligible` only when given (/healthz)."""
        body: dict[str, object] = {
            "lastUpdated": go_time(self.last_updated_ns),
            "currentTime": go_time(self.current_time_ns),
        }
        if node_eligible is not None:
            body["nodeEligible"] = node_eligible
        body["healthy"] = self.healthy
        if self.status:
            body["status"] = {
                str(family): {"lastUpdated": go_time(h.last_updated_ns), "healthy": h.healthy}
                for family, h in sorted(self.status.items(), key=lambda item: str(item[0]))
            }
        return json.dumps(body, separators=(",", ":"))


class ProxyHealth:
    """The proxy's own health state, shared by the proxier, the servers and the metrics."""

    def __init__(
        self, health_timeout: float, node: Callable[[], NodeInfo | None], *,
        clock: Clock = REAL_CLOCK, metrics: ProxyMetrics | None = None,
    ) -> None:
        self.health_timeout = health_timeout
        self._node = node
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()
        self._last_updated: dict[IPFamily, _Instant] = {}
        self._oldest_queued: dict[IPFamily, _Instant] = {}

    def _now(self) -> _Instant:
        return _Instant(self._clock.monotonic(), self._clock.wall_ns())

    def queued_update(self, family: IPFamily) -> None:
        """A change for `family` is waiting to be written (keeps the oldest such time)."""
        with self._lock:
            self._oldest_queued.setdefault(family, self._now())

    def updated(self, family: IPFamily) -> None:
        """The rules of `family` were written successfully; nothing is pending any more."""
        with self._lock:
            self._oldest_queued.pop(family, None)
            self._last_updated[family] = self._now()

    def report(self) -> HealthReport:
        with self._lock:
            now = self._now()
            status: dict[IPFamily, FamilyHealth] = {}
            for family, updated in self._last_updated.items():
                queued = self._oldest_queued.get(family)
                late = queued is not None and now.monotonic - queued.monotonic >= self.health_timeout
                status[family] = FamilyHealth(updated.wall_ns, not late)
        last = max((h.last_updated_ns for h in status.values()), default=None)
        return HealthReport(all(h.healthy for h in status.values()), last, now.wall_ns, status)

    def is_healthy(self) -> bool:
        """The proxy's own health, ignoring the node (what service health checks use)."""
        return self.report().healthy

    def node_eligible(self) -> bool:
        return node_eligible(self._node())

    def healthz(self) -> HTTPResponse:
        report = self.report()
        eligible = self.node_eligible()
        return self._answer(report, report.healthy and eligible, eligible, "healthz")

    def livez(self) -> HTTPResponse:
        report = self.report()
        return self._answer(report, report.healthy, None, "livez")

    def _answer(self, report: HealthReport, healthy: bool, eligible: bool | None,
                endpoint: str) -> HTTPResponse:
        code = 200 if healthy else 503
        if self._metrics is not None:
            counter = (self._metrics.proxy_healthz_total if endpoint == "healthz"
                       else self._metrics.proxy_livez_total)
            counter.labels(code=str(code)).inc()
        if healthy:
            # Older kube-proxies reported the last sync-loop run here; "now" keeps that meaning.
            report = HealthReport(report.healthy, self._clock.wall_ns(), report.current_time_ns,
                                  report.status)
        return HTTPResponse.json_text(code, report.to_json(eligible))


class ProxyHealthServer(ListeningServer):
    """kube-proxy's health server (`--healthz-bind-address`, default 0.0.0.0:10256).

    Serves /healthz and /livez (any method); other paths get 404. Port 0 binds an ephemeral
    port (see `address`).
    """

    def __init__(self, bind_address: str, health: ProxyHealth, *, hard_fail: bool = True) -> None:
        host, port = parse_bind_address(bind_address)
        self.health = health
        self._hard_fail = hard_fail
        self._listener = HTTPListener(host, port, self.respond, "proxy health server")

    def respond(self, method: str, path: str) -> HTTPResponse:
        if path == "/healthz":
            return self.health.healthz()
        if path == "/livez":
            return self.health.livez()
        return NOT_FOUND


def service_health_body(namespace: str, name: str, local_endpoints: int, proxy_healthy: bool) -> str:
    """The exact body kube-proxy's service health check writes (tabs, no final newline)."""
    return (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": {json.dumps(namespace)},\n'
        f'\t\t"name": {json.dumps(name)}\n'
        "\t},\n"
        f'\t"localEndpoints": {local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    )


def _service_key(key: ServicePortName | str) -> str:
    if isinstance(key, ServicePortName):
        return key.service
    namespace, sep, name = key.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"service key {key!r} is not namespace/name")
    return key


@dataclass
class _HealthCheck:
    port: int
    listeners: list[HTTPListener]
    local_endpoints: int = 0


class ServiceHealthServers:
    """The health-check node port listeners of this node's ETP=Local LoadBalancer Services.

    `node_addresses` are the IPs to listen on (the node-port addresses); the default, the
    unspecified address, listens on all of them. Port 0 binds ephemeral ports, see `listening()`.
    """

    def __init__(self, health: ProxyHealth, node_addresses: Sequence[str] = ("0.0.0.0",)) -> None:
        if not node_addresses:
            raise ValueError("at least one node address is needed")
        self.health = health
        self.node_addresses = tuple(node_addresses)
        self._lock = threading.Lock()
        self._services: dict[str, _HealthCheck] = {}

    def sync_services(self, services: Mapping[ServicePortName | str, int]) -> dict[str, str]:
        """Make the open health checks match `services` (Service -> health-check node port).

        Keys may be ServicePortNames (several per Service, all with the Service's one port) or
        `namespace/name` strings. Returns the Services whose port could not be opened, with why.
        """
        desired: dict[str, int] = {}
        for key, port in services.items():
            service = _service_key(key)
            if not 0 <= port <= 65535:
                raise ValueError(f"{service}: health check port {port} out of range")
            if desired.setdefault(service, port) != port:
                raise ValueError(f"{service}: conflicting health check ports {desired[service]} and {port}")
        failures: dict[str, str] = {}
        with self._lock:
            for service, check in list(self._services.items()):
                if desired.get(service) != check.port:
                    log.info("closing health check for %s on port %d", service, check.port)
                    for listener in check.listeners:
                        listener.stop()
                    del self._services[service]
            for service, port in sorted(desired.items()):
                if service in self._services:
                    continue
                log.info("opening health check for %s on port %d", service, port)
                try:
                    self._services[service] = _HealthCheck(port, self._open(service, port))
                except ProxyctlError as exc:
                    log.error("failed to start health check for %s: %s", service, exc)
                    failures[service] = str(exc)
        return failures

    def _open(self, service: str, port: int) -> list[HTTPListener]:
        opened: list[HTTPListener] = []
        try:
            for address in self.node_addresses:
                listener = HTTPListener(address, port, lambda _m, _p: self.respond(service),
                                        f"health check {service}")
                listener.start()
                opened.append(listener)
        except ProxyctlError:
            for listener in opened:  # all or nothing, so the next sync can retry cleanly
                listener.stop()
            raise
        return opened

    def sync_endpoints(self, endpoints: Mapping[ServicePortName | str, int]) -> None:
        """Set each open Service's local Ready endpoint count; Services not given get 0.

        With several ServicePortNames of one Service, the largest count wins.
        """
        counts: dict[str, int] = {}
        for key, count in endpoints.items():
            service = _service_key(key)
            counts[service] = max(count, counts.get(service, 0))
        with self._lock:
            for service, check in self._services.items():
                check.local_endpoints = counts.get(service, 0)

    def respond(self, service: str) -> HTTPResponse:
        """The answer of `service`'s health check, whatever the method and path."""
        with self._lock:
            check = self._services.get(service)
            count = check.local_endpoints if check is not None else 0
        if check is None:  # a request that raced with closing the listener
            return HTTPResponse(503)
        healthy = self.health.is_healthy()
        namespace, _, name = service.partition("/")
        return HTTPResponse.json_text(
            200 if count > 0 and healthy else 503,
            service_health_body(namespace, name, count, healthy),
            ("X-Load-Balancing-Endpoint-Weight", str(count)),
        )

    def listening(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """The bound addresses of each open health check, by `namespace/name`."""
        with self._lock:
            return {
                service: tuple(addr for l in check.listeners if (addr := l.address) is not None)
                for service, check in sorted(self._services.items())
            }

    def stop(self) -> None:
        """Close every health check listener."""
        self.sync_services({})
