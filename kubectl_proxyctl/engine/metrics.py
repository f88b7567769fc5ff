"""kube-proxy's metrics: a small Prometheus registry, the kubeproxy_* set, and the metrics server.

Theory of operation:

* `Registry` holds counters, gauges and histograms, each with fixed label names; `labels()`
  returns the child for one combination of label values (created on first use, like Go's
  `WithLabelValues`). A metric without labels is used directly. `expose()` renders the
  Prometheus text format 0.0.4 the way client_golang does: families sorted by name, a
  `# HELP` and a `# TYPE` line each, label pairs sorted by name (`le` last), children sorted
  by label values, numbers in Go's shortest `%g` form (`1e+06`, `0.001`, `+Inf`). A labelled
  family with no children yet is left out entirely, as client_golang leaves it out.
* `ProxyMetrics` registers kube-proxy's set (`pkg/proxy/metrics/metrics.go`, v1.33+ label
  sets, "[ALPHA] " help prefix as component-base prints it). Every backend updates only the
  ones it owns, so an iptables engine never shows the nftables failure counters.
* The HTTP plumbing here (`parse_bind_address`, `HTTPResponse`, `HTTPListener`) is shared by
  every server of the engine (this module's `MetricsServer` and `engine/health.py`): a
  listener binds one address, serves each request on a thread by calling a plain function
  `(method, path) -> HTTPResponse`, and stops promptly without polling. Binding translates
  `OSError` into `ProxyctlError` (a malformed address into `ConfigError`), or only logs it when
  the caller asked not to fail hard (kube-proxy's `--bind-address-hard-fail=false`).
* `MetricsServer` serves `/metrics`, `/healthz` (a plain "ok", as component-base's default
  healthz check), `/proxyMode` and `/configz` (the running configuration under the
  `kubeproxy.config.k8s.io` key, as kube-proxy registers it with configz).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import re
import selectors
import socket
import socketserver
import threading
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Generic, Iterable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

from kubectl_proxyctl.errors import ConfigError, ProxyctlError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Number formatting and buckets


def format_value(value: float) -> str:
    """A sample value as client_golang writes it: Go's `strconv.FormatFloat(v, 'g', -1, 64)`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    decimal = Decimal(repr(abs(float(value)))).normalize()
    digits = "".join(map(str, decimal.as_tuple().digits))
    point = len(digits) + int(decimal.as_tuple().exponent)  # decimal point position in `digits`
    exp10 = point - 1
    if exp10 < -4 or exp10 >= 6:  # Go's %g switches to %e here for the shortest form
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """`count` upper bounds `start`, `start*factor`, ... (computed as Go computes them)."""
    bounds = []
    for _ in range(count):
        bounds.append(start)
        start *= factor
    return tuple(bounds)


def linear_buckets(start: float, width: float, count: int) -> tuple[float, ...]:
    """`count` upper bounds `start`, `start+width`, ... (computed as Go computes them)."""
    bounds = []
    for _ in range(count):
        bounds.append(start)
        start += width
    return tuple(bounds)


# ---------------------------------------------------------------------------------------------
# Registry

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "}"


class CounterChild:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter can only go up")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        with self._lock:
            return self._value

    def _samples(self, name: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
        return [f"{name}{_label_text(pairs)} {format_value(self.value)}"]


class GaugeChild:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    @property
    def value(self) -> float:
        with self._lock:
            return self._value

    def _samples(self, name: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
        return [f"{name}{_label_text(pairs)} {format_value(self.value)}"]


class HistogramChild:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._lock = threading.Lock()
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative
        self._count = 0
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self._bounds):
                if value <= bound:
                    self._counts[i] += 1
                    break
            self._count += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    @property
    def sum(self) -> float:
        with self._lock:
            return self._sum

    def _samples(self, name: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        lines = []
        cumulative = 0
        for bound, n in zip(self._bounds, counts):
            cumulative += n
            le = (*pairs, ("le", format_value(bound)))
            lines.append(f"{name}_bucket{_label_text(le)} {cumulative}")
        lines.append(f"{name}_bucket{_label_text((*pairs, ('le', '+Inf')))} {count}")
        lines.append(f"{name}_sum{_label_text(pairs)} {format_value(total)}")
        lines.append(f"{name}_count{_label_text(pairs)} {count}")
        return lines


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Metric(Generic[ChildT]):
    type_name = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], ChildT] = {}

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> ChildT:
        """The child for these label values, positional (in label order) or by name."""
        if values and named:
            raise ValueError("give label values either positionally or by name")
        if named:
            if set(named) != set(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(named)}")
            values = tuple(named[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
            return child

    def _unlabelled(self) -> ChildT:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}; use labels()")
        return self.labels()

    def clear(self) -> None:
        """Forget every child (Go's `Reset`), e.g. before re-setting a gauge vector."""
        with self._lock:
            self._children.clear()

    def _expose(self) -> list[str]:
        with self._lock:
            children = dict(self._children)
        if not self.labelnames and not children:
            children[()] = self._new_child()
        if not children:
            return []
        order = sorted(range(len(self.labelnames)), key=lambda i: self.labelnames[i])
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.type_name}"]
        rows = []
        for values, child in children.items():
            pairs = tuple((self.labelnames[i], values[i]) for i in order)
            rows.append((tuple(v for _, v in pairs), pairs, child))
        for _, pairs, child in sorted(rows, key=lambda r: r[0]):
            lines.extend(child._samples(self.name, pairs))
        return lines


class Counter(_Metric[CounterChild]):
    type_name = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Gauge(_Metric[GaugeChild]):
    type_name = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    @property
    def value(self) -> float:
        return self._unlabelled().value


class Histogram(_Metric[HistogramChild]):
    type_name = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labelnames: Sequence[str]) -> None:
        super().__init__(name, help, labelnames)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"{name}: buckets must be non-empty and strictly increasing")
        self.buckets = bounds

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)


class ReadCounter:
    """An unlabelled counter whose value is read when the registry is exposed (Go's const
    metric from a custom collector): `read()` gives it, or None to leave it out this time."""

    type_name = "counter"

    def __init__(self, name: str, help: str, read: Callable[[], float | None]) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.help = help
        self.read = read

    def _expose(self) -> list[str]:
        try:
            value = self.read()
        except Exception as exc:  # noqa: BLE001 - a failed read leaves the metric out, as kube-proxy does
            log.warning("cannot read %s: %s", self.name, exc)
            value = None
        if value is None:
            return []
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} counter",
                f"{self.name} {format_value(value)}"]


class Registry:
    """A set of metrics with unique names, rendered together by `expose()`."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric[Any] | ReadCounter] = {}

    def _register(self, metric: _Metric[Any] | ReadCounter) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._register(metric)
        return metric

    def histogram(self, name: str, help: str, buckets: Iterable[float],
                  labelnames: Sequence[str] = ()) -> Histogram:
        metric = Histogram(name, help, buckets, labelnames)
        self._register(metric)
        return metric

    def read_counter(self, name: str, help: str, read: Callable[[], float | None]) -> ReadCounter:
        metric = ReadCounter(name, help, read)
        self._register(metric)
        return metric

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._metrics

    def expose(self) -> str:
        """The whole registry in the Prometheus text format 0.0.4."""
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric._expose())
        return "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------------------
# kube-proxy's metric set

SYNC_DURATION_BUCKETS = exponential_buckets(0.001, 2, 15)  # 1 ms .. 16.384 s
# component-base's MergeBuckets starts from a 0 bound, so the first bucket is le="0".
NETWORK_PROGRAMMING_BUCKETS = (
    0.0,
    *linear_buckets(0.25, 0.25, 2),  # 0.25 s, 0.5 s
    *linear_buckets(1, 1, 59),  # 1 s .. 59 s
    *linear_buckets(60, 5, 12),  # 60 s .. 115 s
    *linear_buckets(120, 30, 7),  # 2 min .. 5 min
)

IP_FAMILY = "ip_family"


class ProxyMetrics:
    """kube-proxy's `kubeproxy_*` metrics, registered in `registry` (a new one by default).

    Attribute names are the metric names without the `kubeproxy_` prefix. Labels:
    `ip_family` is "IPv4"/"IPv6", `table` an iptables table name, `traffic_policy`
    "internal"/"external", `code` an HTTP status code.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry

        def name(short: str) -> str:
            return f"kubeproxy_{short}"

        def alpha(text: str) -> str:
            return f"[ALPHA] {text}"

        fam = (IP_FAMILY,)
        self.sync_proxy_rules_duration_seconds = r.histogram(
            name("sync_proxy_rules_duration_seconds"), alpha("SyncProxyRules latency in seconds"),
            SYNC_DURATION_BUCKETS, fam)
        self.sync_full_proxy_rules_duration_seconds = r.histogram(
            name("sync_full_proxy_rules_duration_seconds"),
            alpha("SyncProxyRules latency in seconds for full resyncs"), SYNC_DURATION_BUCKETS, fam)
        self.sync_partial_proxy_rules_duration_seconds = r.histogram(
            name("sync_partial_proxy_rules_duration_seconds"),
            alpha("SyncProxyRules latency in seconds for partial resyncs"), SYNC_DURATION_BUCKETS, fam)
        self.network_programming_duration_seconds = r.histogram(
            name("network_programming_duration_seconds"),
            alpha("In Cluster Network Programming Latency in seconds"), NETWORK_PROGRAMMING_BUCKETS, fam)
        self.sync_proxy_rules_last_timestamp_seconds = r.gauge(
            name("sync_proxy_rules_last_timestamp_seconds"),
            alpha("The last time proxy rules were successfully synced"), fam)
        self.sync_proxy_rules_last_queued_timestamp_seconds = r.gauge(
            name("sync_proxy_rules_last_queued_timestamp_seconds"),
            alpha("The last time a sync of proxy rules was queued"), fam)
        self.sync_proxy_rules_endpoint_changes_pending = r.gauge(
            name("sync_proxy_rules_endpoint_changes_pending"), alpha("Pending proxy rules Endpoint changes"))
        self.sync_proxy_rules_endpoint_changes_total = r.counter(
            name("sync_proxy_rules_endpoint_changes_total"), alpha("Cumulative proxy rules Endpoint changes"))
        self.sync_proxy_rules_service_changes_pending = r.gauge(
            name("sync_proxy_rules_service_changes_pending"), alpha("Pending proxy rules Service changes"))
        self.sync_proxy_rules_service_changes_total = r.counter(
            name("sync_proxy_rules_service_changes_total"), alpha("Cumulative proxy rules Service changes"))
        self.sync_proxy_rules_iptables_total = r.gauge(
            name("sync_proxy_rules_iptables_total"),
            alpha("Total number of iptables rules owned by kube-proxy"), (IP_FAMILY, "table"))
        self.sync_proxy_rules_iptables_last = r.gauge(
            name("sync_proxy_rules_iptables_last"),
            alpha("Number of iptables rules written by kube-proxy in last sync"), (IP_FAMILY, "table"))
        self.sync_proxy_rules_iptables_restore_failures_total = r.counter(
            name("sync_proxy_rules_iptables_restore_failures_total"),
            alpha("Cumulative proxy iptables restore failures"), fam)
        self.sync_proxy_rules_iptables_partial_restore_failures_total = r.counter(
            name("sync_proxy_rules_iptables_partial_restore_failures_total"),
            alpha("Cumulative proxy iptables partial restore failures"), fam)
        self.sync_proxy_rules_nftables_sync_failures_total = r.counter(
            name("sync_proxy_rules_nftables_sync_failures_total"),
            alpha("Cumulative proxy nftables sync failures"), fam)
        self.sync_proxy_rules_nftables_cleanup_failures_total = r.counter(
            name("sync_proxy_rules_nftables_cleanup_failures_total"),
            alpha("Cumulative proxy nftables cleanup failures"), fam)
        self.sync_proxy_rules_no_local_endpoints_total = r.gauge(
            name("sync_proxy_rules_no_local_endpoints_total"),
            alpha("Number of services with a Local traffic policy and no endpoints"),
            (IP_FAMILY, "traffic_policy"))
        self.conntrack_reconciler_sync_duration_seconds = r.histogram(
            name("conntrack_reconciler_sync_duration_seconds"),
            alpha("ReconcileConntrackFlowsLatency latency in seconds"), SYNC_DURATION_BUCKETS, fam)
        self.conntrack_reconciler_deleted_entries_total = r.counter(
            name("conntrack_reconciler_deleted_entries_total"),
            alpha("Cumulative conntrack flows deleted by conntrack reconciler"), fam)
        self.proxy_healthz_total = r.counter(
            name("proxy_healthz_total"), alpha("Cumulative proxy healthz HTTP status"), ("code",))
        self.proxy_livez_total = r.counter(
            name("proxy_livez_total"), alpha("Cumulative proxy livez HTTP status"), ("code",))


# ---------------------------------------------------------------------------------------------
# HTTP plumbing shared by the engine's servers


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def plain(cls, status: int, text: str) -> "HTTPResponse":
        return cls(status, text.encode(), (("Content-Type", "text/plain; charset=utf-8"),
                                           ("X-Content-Type-Options", "nosniff")))

    @classmethod
    def json_text(cls, status: int, text: str, *extra: tuple[str, str]) -> "HTTPResponse":
        return cls(status, text.encode(), (("Content-Type", "application/json"),
                                           ("X-Content-Type-Options", "nosniff"), *extra))


NOT_FOUND = HTTPResponse.plain(404, "404 page not found\n")

App = Callable[[str, str], HTTPResponse]  # (method, path without query) -> response


def parse_bind_address(address: str) -> tuple[str, int]:
    """`ip:port` / `[ip6]:port` / `:port` into (host, port); ConfigError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ConfigError(f"invalid bind address {address!r}: want IP:port")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"invalid bind address {address!r}: port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ConfigError(f"invalid bind address {address!r}: brackets are for IPv6 only")
    elif ":" in host:
        raise ConfigError(f"invalid bind address {address!r}: write IPv6 as [addr]:port")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"invalid bind address {address!r}: {host!r} is not an IP address") from None
    return host, port


def _is_unspecified(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    timeout = 0  # handle_request() must never block: the listener already saw a connection
    dual_stack = False
    app: App

    def server_bind(self) -> None:
        if self.dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would resolve the host name (getfqdn), which can hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _ServerDualStack(_Server6):
    dual_stack = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may take to send its request
    server: _Server

    def _serve(self) -> None:
        response = self.server.app(self.command, urlsplit(self.path).path)
        self.send_response_only(response.status)
        self.send_header("Date", self.date_time_string())
        for key, value in response.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)


class HTTPListener:
    """One HTTP server on one address, serving `app` from a background thread.

    An unspecified host (`0.0.0.0`, `::`, empty) listens on all addresses of both families
    when the host has IPv6, as Go's `net.Listen("tcp", ...)` does.
    """

    def __init__(self, host: str, port: int, app: App, name: str) -> None:
        self.host, self.port, self.name = host, port, name
        self._app = app
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port), with the real port when 0 was asked for; None when stopped."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def _bind(self) -> _Server:
        host, cls = self.host, _Server
        if _is_unspecified(host):
            if socket.has_ipv6:
                try:
                    return self._make(_ServerDualStack, "::")
                except OSError as exc:
                    if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        raise
            host = "0.0.0.0"  # no IPv6 on this host: all addresses means all IPv4 ones
        elif ":" in host:
            cls = _Server6
        return self._make(cls, host)

    def _make(self, cls: type[_Server], host: str) -> _Server:
        server = cls((host, self.port), _Handler)
        server.app = self._app
        return server

    def start(self) -> None:
        """Bind and start serving; raises ProxyctlError when the address cannot be bound."""
        if self._server is not None:
            return
        try:
            server = self._bind()
        except OSError as exc:
            shown = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            raise ProxyctlError(f"cannot listen on {shown} for {self.name}: {exc.strerror or exc}") from exc
        self._server = server
        self._wakeup = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, args=(server, self._wakeup[0]),
                                        daemon=True, name=f"http-{self.name}")
        self._thread.start()
        log.debug("%s listening on %s", self.name, self.address)

    def _serve(self, server: _Server, wakeup: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wakeup, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is wakeup for key, _ in ready):
                    return
                server.handle_request()

    def stop(self) -> None:
        """Stop accepting, close the socket and wait for the serving thread."""
        server, thread, wakeup = self._server, self._thread, self._wakeup
        if server is None or thread is None or wakeup is None:
            return
        wakeup[1].send(b"x")
        thread.join()
        server.server_close()
        for sock in wakeup:
            sock.close()
        self._server = self._thread = self._wakeup = None
        log.debug("%s stopped", self.name)


def start_listener(listener: HTTPListener, hard_fail: bool) -> bool:
    """Start `listener`; on failure raise (hard_fail) or log and return False."""
    try:
        listener.start()
    except ProxyctlError as exc:
        if hard_fail:
            raise
        log.error("%s", exc)
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The metrics server

CONFIGZ_KEY = "kubeproxy.config.k8s.io"


class ListeningServer:
    """A server owning one HTTPListener: its address, start (raising or logging on a bind
    failure, per `hard_fail`) and stop. Subclasses set `_listener` and `_hard_fail`."""

    _listener: HTTPListener
    _hard_fail: bool

    @property
    def address(self) -> tuple[str, int] | None:
        return self._listener.address

    def start(self) -> bool:
        """Start serving; see `start_listener` for what happens when binding fails."""
        return start_listener(self._listener, self._hard_fail)

    def stop(self) -> None:
        self._listener.stop()


class MetricsServer(ListeningServer):
    """kube-proxy's metrics server (`--metrics-bind-address`, default 127.0.0.1:10249).

    An empty bind address disables the server in kube-proxy; callers decide that and simply
    do not build one. Port 0 binds an ephemeral port (see `address`).
    """

    def __init__(self, bind_address: str, registry: Registry, proxy_mode: str,
                 config: Mapping[str, Any] | None = None, *, hard_fail: bool = True) -> None:
        host, port = parse_bind_address(bind_address)
        self.registry = registry
        self.proxy_mode = proxy_mode
        self.config = config
        self._hard_fail = hard_fail
        self._listener = HTTPListener(host, port, self.respond, "metrics server")

    def respond(self, method: str, path: str) -> HTTPResponse:
        if path == "/metrics":
            return HTTPResponse(200, self.registry.expose().encode(),
                                (("Content-Type", Registry.CONTENT_TYPE),))
        if path == "/healthz":
            return HTTPResponse.plain(200, "ok")
        if path == "/proxyMode":
            return HTTPResponse.plain(200, self.proxy_mode)
        if path == "/configz":
            configs = {} if self.config is None else {CONFIGZ_KEY: self.config}
            return HTTPResponse.json_text(200, json.dumps(configs, separators=(",", ":"), default=str))
        return NOT_FOUND
