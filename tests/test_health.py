"""Proxy health (/healthz, /livez) and the service health-check node ports, over real loopback HTTP."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Iterator

import pytest

from kubectl_proxyctl.engine.health import (
    ProxyHealth,
    ProxyHealthServer,
    ServiceHealthServers,
    go_time,
    node_eligible,
    service_health_body,
)
from kubectl_proxyctl.engine.metrics import ProxyMetrics
from kubectl_proxyctl.engine.runner import FakeClock
from kubectl_proxyctl.errors import ConfigError, ProxyctlError
from kubectl_proxyctl.model import IPFamily, NodeInfo, ServicePortName
from waiting import TIMEOUT as WAIT  # bounds a hung request, never an expected duration

TIMEOUT = 60.0  # 2 x the default 30 s sync period
START_NS = 1_700_000_000_000_000_000
START = "2023-11-14T22:13:20Z"
V4, V6 = IPFamily.IPv4, IPFamily.IPv6


def fetch(
    address: tuple[str, int], path: str = "/", method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=WAIT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=WAIT).close()
    except ConnectionRefusedError:
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NodeHolder:
    def __init__(self, node: NodeInfo | None) -> None:
        self.node = node

    def __call__(self) -> NodeInfo | None:
        return self.node


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_start_ns=START_NS)


@pytest.fixture
def node() -> NodeHolder:
    return NodeHolder(NodeInfo("node1"))


@pytest.fixture
def metrics() -> ProxyMetrics:
    return ProxyMetrics()


@pytest.fixture
def health(clock: FakeClock, node: NodeHolder, metrics: ProxyMetrics) -> ProxyHealth:
    return ProxyHealth(TIMEOUT, node, clock=clock, metrics=metrics)


@pytest.fixture
def server(health: ProxyHealth) -> Iterator[ProxyHealthServer]:
    srv = ProxyHealthServer("127.0.0.1:0", health)
    assert srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def services(health: ProxyHealth) -> Iterator[ServiceHealthServers]:
    servers = ServiceHealthServers(health, ("127.0.0.1",))
    try:
        yield servers
    finally:
        servers.stop()


# -- pure pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("wall_ns", "text"), [
    (None, "0001-01-01T00:00:00Z"),
    (0, "1970-01-01T00:00:00Z"),
    (START_NS, START),
    (START_NS + 123_456_789, "2023-11-14T22:13:20.123456789Z"),
    (START_NS + 500_000_000, "2023-11-14T22:13:20.5Z"),
    (START_NS + 1_000, "2023-11-14T22:13:20.000001Z"),
])
def test_times_are_rendered_like_go(wall_ns: int | None, text: str) -> None:
    assert go_time(wall_ns) == text


@pytest.mark.parametrize(("node", "eligible"), [
    (NodeInfo("n"), True),
    (NodeInfo("n", taints=("node.kubernetes.io/unschedulable",)), True),
    (None, False),
    (NodeInfo("n", deleting=True), False),
    (NodeInfo("n", taints=("ToBeDeletedByClusterAutoscaler",)), False),
])
def test_node_eligibility(node: NodeInfo | None, eligible: bool) -> None:
    assert node_eligible(node) is eligible


def test_service_health_body_is_byte_exact() -> None:
    assert service_health_body("default", "web", 2, True) == (
        '{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "web"\n\t},\n'
        '\t"localEndpoints": 2,\n\t"serviceProxyHealthy": true\n}'
    )


# -- health state and timeout --------------------------------------------------------------------


def test_fresh_proxy_is_healthy_and_reports_no_families(health: ProxyHealth) -> None:
    response = health.livez()
    assert response.status == 200
    assert response.body == f'{{"lastUpdated":"{START}","currentTime":"{START}","healthy":true}}'.encode()


def test_unhealthy_once_an_update_waits_health_timeout(health: ProxyHealth, clock: FakeClock) -> None:
    health.updated(V4)
    clock.advance(5.0)
    health.queued_update(V4)
    clock.advance(TIMEOUT - 0.001)
    assert health.is_healthy()
    clock.advance(0.001)
    assert not health.is_healthy()
    response = health.livez()
    assert response.status == 503
    assert json.loads(response.body) == {
        "lastUpdated": START,  # when unhealthy: the real last update
        "currentTime": "2023-11-14T22:14:25Z",
        "healthy": False,
        "status": {"IPv4": {"lastUpdated": START, "healthy": False}},
    }
    health.updated(V4)
    assert health.is_healthy()


def test_the_oldest_queued_update_counts(health: ProxyHealth, clock: FakeClock) -> None:
    health.updated(V4)
    health.queued_update(V4)
    clock.advance(TIMEOUT / 2)
    health.queued_update(V4)
    clock.advance(TIMEOUT / 2)
    assert not health.is_healthy()


def test_a_family_that_never_synced_counts_as_starting_up(health: ProxyHealth, clock: FakeClock) -> None:
    health.queued_update(V4)
    clock.advance(TIMEOUT * 10)
    assert health.is_healthy()


def test_dual_stack_is_healthy_only_when_both_families_are(health: ProxyHealth, clock: FakeClock) -> None:
    health.updated(V4)
    health.updated(V6)
    health.queued_update(V6)
    clock.advance(TIMEOUT)
    health.updated(V4)
    body = json.loads(health.livez().body)
    assert body["healthy"] is False
    assert list(body["status"]) == ["IPv4", "IPv6"]
    assert body["status"]["IPv4"] == {"lastUpdated": "2023-11-14T22:14:20Z", "healthy": True}
    assert body["status"]["IPv6"] == {"lastUpdated": START, "healthy": False}
    assert body["lastUpdated"] == "2023-11-14T22:14:20Z"  # the most recent update of any family


@pytest.mark.parametrize("bad_node", [
    None,
    NodeInfo("node1", deleting=True),
    NodeInfo("node1", taints=("ToBeDeletedByClusterAutoscaler",)),
])
def test_ineligible_node_fails_healthz_but_not_livez(
    health: ProxyHealth, node: NodeHolder, bad_node: NodeInfo | None,
) -> None:
    health.updated(V4)
    node.node = bad_node
    healthz, livez = health.healthz(), health.livez()
    assert (healthz.status, livez.status) == (503, 200)
    body = json.loads(healthz.body)
    assert body["nodeEligible"] is False and body["healthy"] is True
    assert "nodeEligible" not in json.loads(livez.body)


def test_answers_are_counted_by_code(health: ProxyHealth, node: NodeHolder, metrics: ProxyMetrics) -> None:
    health.healthz()
    health.healthz()
    node.node = None
    health.healthz()
    health.livez()
    assert metrics.proxy_healthz_total.labels(code="200").value == 2
    assert metrics.proxy_healthz_total.labels(code="503").value == 1
    assert metrics.proxy_livez_total.labels(code="200").value == 1


# -- the proxy health server over HTTP -----------------------------------------------------------


def test_healthz_and_livez_over_http(server: ProxyHealthServer, health: ProxyHealth) -> None:
    assert server.address is not None
    health.updated(V4)
    status, headers, body = fetch(server.address, "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == (
        f'{{"lastUpdated":"{START}","currentTime":"{START}","nodeEligible":true,"healthy":true,'
        f'"status":{{"IPv4":{{"lastUpdated":"{START}","healthy":true}}}}}}'
    ).encode()
    status, _, body = fetch(server.address, "/livez?verbose=1")
    assert status == 200 and b"nodeEligible" not in body
    status, headers, body = fetch(server.address, "/healthz", "HEAD")
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0
    assert fetch(server.address, "/metrics")[0] == 404


def test_healthz_over_http_reports_a_stuck_proxy(
    server: ProxyHealthServer, health: ProxyHealth, clock: FakeClock,
) -> None:
    assert server.address is not None
    health.updated(V4)
    health.queued_update(V4)
    clock.advance(TIMEOUT)
    assert fetch(server.address, "/healthz")[0] == 503
    assert fetch(server.address, "/livez")[0] == 503


def test_bind_failures_are_clear_errors(server: ProxyHealthServer, health: ProxyHealth) -> None:
    assert server.address is not None
    taken = f"127.0.0.1:{server.address[1]}"
    with pytest.raises(ProxyctlError, match=f"cannot listen on {taken}"):
        ProxyHealthServer(taken, health).start()
    assert ProxyHealthServer(taken, health, hard_fail=False).start() is False
    with pytest.raises(ProxyctlError, match="cannot listen"):
        ProxyHealthServer("192.0.2.1:0", health).start()  # not an address of this host


@pytest.mark.parametrize("address", [
    "10256", "localhost:10256", "1.2.3.4:99999", "::1:10256", "[1.2.3.4]:80", "1.2.3.4:",
])
def test_malformed_bind_addresses_are_config_errors(health: ProxyHealth, address: str) -> None:
    with pytest.raises(ConfigError):
        ProxyHealthServer(address, health)


def test_ipv6_loopback_when_available(health: ProxyHealth) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = ProxyHealthServer("[::1]:0", health)
    try:
        try:
            srv.start()
        except ProxyctlError:
            pytest.skip("IPv6 loopback not configured")
        assert srv.address is not None
        assert fetch(("::1", srv.address[1]), "/livez")[0] == 200
    finally:
        srv.stop()


# -- service health checks -----------------------------------------------------------------------


def addresses(servers: ServiceHealthServers, service: str) -> tuple[tuple[str, int], ...]:
    return servers.listening()[service]


def test_service_checks_follow_endpoints_and_proxy_health(
    services: ServiceHealthServers, health: ProxyHealth, clock: FakeClock,
) -> None:
    assert services.sync_services({"shop/web": 0, ServicePortName("shop", "api", "http"): 0}) == {}
    assert sorted(services.listening()) == ["shop/api", "shop/web"]
    web = addresses(services, "shop/web")[0]
    api = addresses(services, "shop/api")[0]

    services.sync_endpoints({"shop/web": 3, "other/unknown": 7})
    status, headers, body = fetch(web, "/anything/at/all")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "3"
    assert body.decode() == service_health_body("shop", "web", 3, True)
    assert not body.endswith(b"\n")

    status, headers, body = fetch(api, "/", "POST")
    assert status == 503
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "0"
    assert json.loads(body) == {"service": {"namespace": "shop", "name": "api"},
                                "localEndpoints": 0, "serviceProxyHealthy": True}

    health.updated(V4)
    health.queued_update(V4)
    clock.advance(TIMEOUT)
    status, _, body = fetch(web)
    assert status == 503
    assert body.decode() == service_health_body("shop", "web", 3, False)

    services.sync_endpoints({})  # Services left out have no local endpoints
    health.updated(V4)
    assert fetch(web)[0] == 503


def test_node_eligibility_does_not_affect_service_checks(
    services: ServiceHealthServers, node: NodeHolder,
) -> None:
    services.sync_services({"shop/web": 0})
    services.sync_endpoints({ServicePortName("shop", "web", "https"): 1})
    node.node = None
    assert fetch(addresses(services, "shop/web")[0])[0] == 200


def test_listeners_open_and_close_as_services_come_and_go(services: ServiceHealthServers) -> None:
    services.sync_services({"shop/web": 0, "shop/api": 0})
    web = addresses(services, "shop/web")[0]
    api = addresses(services, "shop/api")[0]

    services.sync_services({"shop/web": 0})
    assert list(services.listening()) == ["shop/web"]
    assert refused(api)
    assert addresses(services, "shop/web")[0] == web  # an unchanged Service keeps its listener
    assert fetch(web)[0] == 503

    port = free_port()
    services.sync_services({"shop/web": port})  # a changed port is a close and an open
    assert refused(web)
    assert fetch(("127.0.0.1", port))[0] == 503

    services.sync_services({})
    assert services.listening() == {}
    assert refused(("127.0.0.1", port))


def test_one_listener_per_node_address(health: ProxyHealth) -> None:
    servers = ServiceHealthServers(health, ("127.0.0.1", "127.0.0.2"))
    try:
        servers.sync_services({"shop/web": 0})
        servers.sync_endpoints({"shop/web": 1})
        bound = addresses(servers, "shop/web")
        assert [host for host, _ in bound] == ["127.0.0.1", "127.0.0.2"]
        assert all(fetch(address)[0] == 200 for address in bound)
    finally:
        servers.stop()
    assert all(refused(address) for address in bound)


def test_a_port_in_use_is_reported_and_retried(services: ServiceHealthServers) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        failures = services.sync_services({"shop/web": port, "shop/api": 0})
        assert list(failures) == ["shop/web"]
        assert "cannot listen on 127.0.0.1" in failures["shop/web"]
        assert list(services.listening()) == ["shop/api"]
    finally:
        blocker.close()
    assert services.sync_services({"shop/web": port, "shop/api": 0}) == {}
    assert fetch(("127.0.0.1", port))[0] == 503


def test_bad_service_keys_and_ports_are_rejected(services: ServiceHealthServers) -> None:
    with pytest.raises(ValueError, match="namespace/name"):
        services.sync_services({"web": 0})
    with pytest.raises(ValueError, match="out of range"):
        services.sync_services({"shop/web": 70000})
    with pytest.raises(ValueError, match="conflicting"):
        services.sync_services({
            ServicePortName("shop", "web", "a"): 1, ServicePortName("shop", "web", "b"): 2,
        })
