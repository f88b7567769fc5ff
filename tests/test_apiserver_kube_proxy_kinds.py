"""What the upstream kube-proxy asks of the lab API server beyond Services, EndpointSlices and
Nodes: ServiceCIDRs (networking.k8s.io/v1, listed and watched) and Events (events.k8s.io/v1,
POSTed as protobuf). tests/reference/ runs the real kube-proxy against the server; these
tests pin down the pieces without it."""

from __future__ import annotations

import json
import ssl
import urllib.request

from apiserver_fixtures import apiserver, raw_request  # noqa: F401 (fixture)
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.protobuf import MAGIC

PROTOBUF = "application/vnd.kubernetes.protobuf"


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def kube_proxy_event(seconds: int = 1_796_000_000, nanos: int = 702_271_893) -> bytes:
    """The "Starting" event kube-proxy's birth cry POSTs, as client-go encodes it."""
    meta = _field(1, "node1.18eed10efed123d9") + _field(3, "default")
    event = (_field(1, meta) + _field(2, _field(1, seconds) + _field(2, nanos))
             + _field(4, "kube-proxy") + _field(5, "kube-proxy-node1") + _field(6, "StartKubeProxy")
             + _field(7, "Starting") + _field(8, _field(1, "Node") + _field(3, "node1") + _field(4, "node1"))
             + _field(11, "Normal"))
    envelope = _field(1, _field(1, "events.k8s.io/v1") + _field(2, "Event")) + _field(2, event)
    return MAGIC + envelope


def test_discovery_lists_servicecidrs_and_events(apiserver: APIServer) -> None:
    net = raw_request(apiserver, "GET", "/apis/networking.k8s.io/v1").json()
    assert [(r["name"], r["kind"], r["namespaced"]) for r in net["resources"]] == [
        ("servicecidrs", "ServiceCIDR", False), ("servicecidrs/status", "ServiceCIDR", False)]
    events = raw_request(apiserver, "GET", "/apis/events.k8s.io/v1").json()
    assert [(r["name"], r["kind"], r["namespaced"]) for r in events["resources"]] == [("events", "Event", True)]


def test_kube_proxys_protobuf_event_is_stored(apiserver: APIServer) -> None:
    resp = raw_request(apiserver, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", kube_proxy_event(),
                       headers={"Content-Type": PROTOBUF, "Accept": f"{PROTOBUF}, */*"})
    assert resp.status == 201, resp.body
    stored = apiserver.get("events.events.k8s.io", "node1.18eed10efed123d9", "default")
    assert stored is not None
    assert stored["eventTime"].endswith(".702271Z")
    assert (stored["reason"], stored["action"], stored["type"]) == ("Starting", "StartKubeProxy", "Normal")
    assert stored["regarding"] == {"kind": "Node", "name": "node1", "uid": "node1"}
    assert stored["reportingController"] == "kube-proxy"


def test_servicecidrs_are_listed_and_watched_like_kube_proxys_informer(apiserver: APIServer) -> None:
    # An empty list is a valid answer: kube-proxy then adds no unallocated-ClusterIP rule.
    empty = raw_request(apiserver, "GET", "/apis/networking.k8s.io/v1/servicecidrs?limit=500&resourceVersion=0")
    assert empty.status == 200 and empty.json()["items"] == []
    rv = empty.json()["metadata"]["resourceVersion"]
    apiserver.create({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
                      "spec": {"cidrs": ["10.96.0.0/12"]}})
    ctx = ssl.create_default_context(cafile=str(apiserver.ca_path))
    req = urllib.request.Request(
        f"{apiserver.url}/apis/networking.k8s.io/v1/servicecidrs?allowWatchBookmarks=true&resourceVersion={rv}"
        "&timeoutSeconds=1&watch=true",
        headers={"Authorization": f"Bearer {apiserver.token}", "Accept": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        first = json.loads(resp.readline())
    assert first["type"] == "ADDED"
    assert first["object"]["spec"]["cidrs"] == ["10.96.0.0/12"]
