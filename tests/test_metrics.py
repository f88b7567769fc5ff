"""The Prometheus registry, kube-proxy's metric set and the metrics server (loopback HTTP)."""

from __future__ import annotations

import http.client
import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from kubectl_proxyctl.engine.metrics import (
    NETWORK_PROGRAMMING_BUCKETS,
    MetricsServer,
    ProxyMetrics,
    Registry,
    exponential_buckets,
    format_value,
    linear_buckets,
    parse_bind_address,
)
from kubectl_proxyctl.errors import ConfigError, ProxyctlError
from waiting import TIMEOUT as WAIT  # bounds a hung request, never an expected duration

# -- a small parser for the text format 0.0.4 ----------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


@dataclass
class Family:
    name: str
    help: str = ""
    type: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        assert match, f"bad labels at {text[pos:]!r}"
        labels[match.group(1)] = unescape(match.group(2))
        pos = match.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    """Parse an exposition strictly: HELP then TYPE before a family's samples, nothing else."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} appears twice"
            current = families[name] = Family(name, help=help_text)
        elif line.startswith("# TYPE "):
            name, _, type_name = line[7:].partition(" ")
            assert current is not None and current.name == name and not current.type
            current.type = type_name
        else:
            match = _SAMPLE.match(line)
            assert match, f"bad sample line {line!r}"
            assert current is not None and current.type
            sample_name = match.group(1)
            suffixes = ("_bucket", "_sum", "_count") if current.type == "histogram" else ("",)
            assert any(sample_name == current.name + s for s in suffixes), line
            value = float(match.group(3).replace("Inf", "inf"))
            current.samples.append((sample_name, parse_labels(match.group(2) or ""), value))
    return families


def fetch(address: tuple[str, int], path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# -- formatting and buckets ----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (1, "1"), (-1, "-1"), (0.001, "0.001"), (16.384, "16.384"), (2.5, "2.5"),
    (123456, "123456"), (1e6, "1e+06"), (1234567, "1.234567e+06"), (1.7e9, "1.7e+09"),
    (0.0001, "0.0001"), (0.00001, "1e-05"), (-0.25, "-0.25"),
    (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
])
def test_values_are_formatted_like_client_golang(value: float, text: str) -> None:
    assert format_value(value) == text


def test_bucket_helpers() -> None:
    assert [format_value(b) for b in exponential_buckets(0.001, 2, 15)] == [
        "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256", "0.512",
        "1.024", "2.048", "4.096", "8.192", "16.384"]
    assert linear_buckets(60, 5, 3) == (60, 65, 70)


def test_network_programming_buckets_match_upstream() -> None:
    bounds = [format_value(b) for b in NETWORK_PROGRAMMING_BUCKETS]
    assert bounds[:5] == ["0", "0.25", "0.5", "1", "2"]
    assert bounds[61:64] == ["59", "60", "65"]
    assert bounds[-8:] == ["115", "120", "150", "180", "210", "240", "270", "300"]
    assert len(bounds) == 1 + 2 + 59 + 12 + 7


# -- the registry --------------------------------------------------------------------------------


def test_exposition_of_each_type() -> None:
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests.\nBy code \\ path", ("path", "code"))
    temperature = registry.gauge("app_temperature", "Temperature")
    latency = registry.histogram("app_latency_seconds", "Latency", (0.1, 1, 10), ("path",))
    registry.counter("app_unused_total", "Never touched", ("code",))

    requests.labels(path='/a"b\\c\nd', code="200").inc()
    requests.labels("/", "503").inc(2)
    requests.labels(code="200", path="/").inc()
    temperature.set(-3.5)
    for value in (0.05, 0.1, 0.5, 20):
        latency.labels("/").observe(value)

    text = registry.expose()
    families = parse(text)
    assert list(families) == ["app_latency_seconds", "app_requests_total", "app_temperature"]
    assert families["app_requests_total"].help == "Requests.\\nBy code \\\\ path"
    assert families["app_requests_total"].type == "counter"
    assert families["app_requests_total"].samples == [
        ("app_requests_total", {"code": "200", "path": "/"}, 1.0),
        ("app_requests_total", {"code": "200", "path": '/a"b\\c\nd'}, 1.0),
        ("app_requests_total", {"code": "503", "path": "/"}, 2.0),
    ]
    assert 'app_requests_total{code="200",path="/a\\"b\\\\c\\nd"} 1\n' in text  # label names sorted
    assert "app_temperature -3.5\n" in text
    assert "app_unused_total" not in text  # labelled and never used: left out like client_golang


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    registry = Registry()
    latency = registry.histogram("lat_seconds", "Latency", (0.1, 1, 10))
    for value in (0.05, 0.1, 0.5, 20):
        latency.observe(value)
    samples = parse(registry.expose())["lat_seconds"].samples
    assert samples == [
        ("lat_seconds_bucket", {"le": "0.1"}, 2.0),
        ("lat_seconds_bucket", {"le": "1"}, 3.0),
        ("lat_seconds_bucket", {"le": "10"}, 3.0),
        ("lat_seconds_bucket", {"le": "+Inf"}, 4.0),
        ("lat_seconds_sum", {}, 20.65),
        ("lat_seconds_count", {}, 4.0),
    ]
    assert 'lat_seconds_bucket{le="+Inf"} 4\n' in registry.expose()


def test_unlabelled_metrics_show_zero_before_use() -> None:
    registry = Registry()
    registry.counter("c_total", "C")
    registry.histogram("h_seconds", "H", (1,))
    assert registry.expose() == (
        "# HELP c_total C\n# TYPE c_total counter\nc_total 0\n"
        '# HELP h_seconds H\n# TYPE h_seconds histogram\nh_seconds_bucket{le="1"} 0\n'
        'h_seconds_bucket{le="+Inf"} 0\nh_seconds_sum 0\nh_seconds_count 0\n'
    )


def test_gauge_vector_can_be_cleared() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "G", ("table",))
    gauge.labels("nat").set(3)
    gauge.clear()
    gauge.labels("filter").set(1)
    assert [s[1] for s in parse(registry.expose())["g"].samples] == [{"table": "filter"}]


def test_misuse_is_rejected() -> None:
    registry = Registry()
    counter = registry.counter("x_total", "X", ("code",))
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("x_total", "again")
    with pytest.raises(ValueError, match="label"):
        registry.gauge("y", "Y", ("le",))
    with pytest.raises(ValueError, match="metric name"):
        registry.gauge("1y", "Y")
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("200", "extra")
    with pytest.raises(ValueError, match="use labels"):
        counter.inc()
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("200").inc(-1)
    with pytest.raises(ValueError, match="increasing"):
        registry.histogram("h", "H", (1, 1))


# -- kube-proxy's metric set ---------------------------------------------------------------------

EXPECTED = {
    "sync_proxy_rules_duration_seconds": ("histogram", ("ip_family",)),
    "sync_full_proxy_rules_duration_seconds": ("histogram", ("ip_family",)),
    "sync_partial_proxy_rules_duration_seconds": ("histogram", ("ip_family",)),
    "network_programming_duration_seconds": ("histogram", ("ip_family",)),
    "sync_proxy_rules_last_timestamp_seconds": ("gauge", ("ip_family",)),
    "sync_proxy_rules_last_queued_timestamp_seconds": ("gauge", ("ip_family",)),
    "sync_proxy_rules_endpoint_changes_pending": ("gauge", ()),
    "sync_proxy_rules_endpoint_changes_total": ("counter", ()),
    "sync_proxy_rules_service_changes_pending": ("gauge", ()),
    "sync_proxy_rules_service_changes_total": ("counter", ()),
    "sync_proxy_rules_iptables_total": ("gauge", ("ip_family", "table")),
    "sync_proxy_rules_iptables_last": ("gauge", ("ip_family", "table")),
    "sync_proxy_rules_iptables_restore_failures_total": ("counter", ("ip_family",)),
    "sync_proxy_rules_iptables_partial_restore_failures_total": ("counter", ("ip_family",)),
    "sync_proxy_rules_nftables_sync_failures_total": ("counter", ("ip_family",)),
    "sync_proxy_rules_nftables_cleanup_failures_total": ("counter", ("ip_family",)),
    "sync_proxy_rules_no_local_endpoints_total": ("gauge", ("ip_family", "traffic_policy")),
    "conntrack_reconciler_sync_duration_seconds": ("histogram", ("ip_family",)),
    "conntrack_reconciler_deleted_entries_total": ("counter", ("ip_family",)),
    "proxy_healthz_total": ("counter", ("code",)),
    "proxy_livez_total": ("counter", ("code",)),
}


def exercise(metrics: ProxyMetrics) -> None:
    """Touch every metric once, as a dual-stack iptables engine would over a few syncs."""
    for short, (kind, labelnames) in EXPECTED.items():
        metric = getattr(metrics, short)
        values = {"ip_family": "IPv4", "table": "nat", "traffic_policy": "external", "code": "200"}
        child = metric.labels(**{n: values[n] for n in labelnames}) if labelnames else metric
        if kind == "histogram":
            child.observe(0.003)
        elif kind == "gauge":
            child.set(7)
        else:
            child.inc()


def test_kube_proxy_metric_set() -> None:
    metrics = ProxyMetrics()
    exercise(metrics)
    families = parse(metrics.registry.expose())
    assert set(families) == {f"kubeproxy_{short}" for short in EXPECTED}
    for short, (kind, labelnames) in EXPECTED.items():
        family = families[f"kubeproxy_{short}"]
        assert family.type == kind
        assert family.help.startswith("[ALPHA] ")
        sample_labels = {k for _, labels, _ in family.samples for k in labels} - {"le"}
        assert sample_labels == set(labelnames), short


def test_sync_duration_histogram_has_fifteen_exponential_buckets() -> None:
    metrics = ProxyMetrics()
    metrics.sync_proxy_rules_duration_seconds.labels(ip_family="IPv4").observe(0.003)
    samples = parse(metrics.registry.expose())["kubeproxy_sync_proxy_rules_duration_seconds"].samples
    buckets = [(labels["le"], value) for name, labels, value in samples if name.endswith("_bucket")]
    assert buckets[0] == ("0.001", 0) and buckets[1] == ("0.002", 0) and buckets[2] == ("0.004", 1)
    assert buckets[-2:] == [("16.384", 1), ("+Inf", 1)]
    assert len(buckets) == 16
    assert all(labels["ip_family"] == "IPv4" for _, labels, _ in samples)


def test_fresh_metric_set_shows_only_unlabelled_metrics() -> None:
    families = parse(ProxyMetrics().registry.expose())
    assert sorted(families) == [
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_pending",
        "kubeproxy_sync_proxy_rules_service_changes_total",
    ]


# -- the metrics server --------------------------------------------------------------------------

CONFIG = {"mode": "iptables", "iptables": {"syncPeriod": "30s", "minSyncPeriod": "1s"}}


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    metrics = ProxyMetrics()
    exercise(metrics)
    srv = MetricsServer("127.0.0.1:0", metrics.registry, "iptables", CONFIG)
    assert srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_metrics_endpoint(server: MetricsServer) -> None:
    assert server.address is not None
    status, headers, body = fetch(server.address, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "kubeproxy_proxy_healthz_total" in parse(body.decode())


def test_plain_endpoints(server: MetricsServer) -> None:
    assert server.address is not None
    assert fetch(server.address, "/healthz")[::2] == (200, b"ok")
    status, headers, body = fetch(server.address, "/proxyMode")
    assert (status, body) == (200, b"iptables")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert fetch(server.address, "/debug/pprof")[0] == 404


def test_configz(server: MetricsServer) -> None:
    assert server.address is not None
    status, headers, body = fetch(server.address, "/configz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"kubeproxy.config.k8s.io": CONFIG}


def test_metrics_server_bind_errors(server: MetricsServer) -> None:
    assert server.address is not None
    taken = f"127.0.0.1:{server.address[1]}"
    with pytest.raises(ProxyctlError, match="address already in use|Address already in use"):
        MetricsServer(taken, Registry(), "nftables").start()
    assert MetricsServer(taken, Registry(), "nftables", hard_fail=False).start() is False
    with pytest.raises(ConfigError):
        MetricsServer("127.0.0.1", Registry(), "iptables")


@pytest.mark.parametrize(("address", "parsed"), [
    ("127.0.0.1:10249", ("127.0.0.1", 10249)),
    ("0.0.0.0:10256", ("0.0.0.0", 10256)),
    ("[::1]:10249", ("::1", 10249)),
    (":10256", ("", 10256)),
])
def test_bind_address_parsing(address: str, parsed: tuple[str, int]) -> None:
    assert parse_bind_address(address) == parsed
