"""The lab API server answers as kube-apiserver v1.34.4 does, where the two were seen to differ.

Each expected answer here is what the real kube-apiserver (built by
tests/reference/build-apiserver) returned for the same request; no kernel is needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

from apiserver_fixtures import apiserver, endpoint_slice, raw_request, service  # noqa: F401 (fixture)

NS = "/api/v1/namespaces/default"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def test_an_external_name_service_gets_the_default_session_affinity(apiserver: APIServer) -> None:
    body = service("ext", type="ExternalName", externalName="example.com")
    del body["spec"]["ports"]
    resp = raw_request(apiserver, "POST", f"{NS}/services", body)
    assert resp.status == 201, resp.body
    assert resp.json()["spec"]["sessionAffinity"] == "None"


def test_a_too_large_resource_version_is_a_timeout(apiserver: APIServer) -> None:
    resp = raw_request(apiserver, "GET", f"{NS}/services?resourceVersion=99999999&resourceVersionMatch=NotOlderThan")
    assert resp.status == 504
    assert resp.json()["message"].startswith("Timeout: Too large resource version: 99999999, current: ")


def test_an_invalid_object_of_a_group_is_named_with_its_group(apiserver: APIServer) -> None:
    resp = raw_request(apiserver, "POST", SLICES, endpoint_slice("bad", "web", ["nope"]))
    assert resp.status == 422
    assert resp.json()["message"] == (
        'EndpointSlice.discovery.k8s.io "bad" is invalid: endpoints[0].addresses[0]: Invalid value: "nope": '
        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
    assert resp.json()["details"]["group"] == "discovery.k8s.io"


def test_a_slice_address_of_the_other_family_or_a_loopback_is_refused_as_upstream(apiserver: APIServer) -> None:
    resp = raw_request(apiserver, "POST", SLICES, endpoint_slice("six", "web", ["::1"]))
    assert resp.status == 422
    assert resp.json()["message"] == (
        'EndpointSlice.discovery.k8s.io "six" is invalid: [endpoints[0].addresses: Invalid value: "::1": '
        'must be an IPv4 address, endpoints[0].addresses[0]: Invalid value: "::1": '
        "may not be in the loopback range (127.0.0.0/8, ::1/128)]")


@pytest.mark.parametrize(("ip", "messages"), [
    ("nope", ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)", "must be a valid IP address"]),
    ("169.254.1.1", ["may not be in the link-local range (169.254.0.0/16, fe80::/10)"]),
    ("0.0.0.0", ["may not be unspecified (0.0.0.0)"]),
])
def test_an_endpoints_address_is_checked_twice_as_upstream(apiserver: APIServer, ip: str,
                                                            messages: list[str]) -> None:
    body = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": 80}]}]}
    resp = raw_request(apiserver, "POST", f"{NS}/endpoints", body)
    assert resp.status == 422
    causes: list[dict[str, Any]] = resp.json()["details"]["causes"]
    assert [c["message"] for c in causes] == [f'Invalid value: "{ip}": {m}' for m in messages]
    assert {c["field"] for c in causes} == {"subsets[0].addresses[0].ip"}


@pytest.mark.parametrize(("kind", "why"), [
    ("Node", "converting (v1.Node) to (core.Service): unknown conversion"),
    ("Foo", 'no kind "Foo" is registered for version "v1" in scheme "pkg/runtime/scheme.go:110"'),
])
def test_a_body_of_another_kind_says_why_it_cannot_be_decoded(apiserver: APIServer, kind: str, why: str) -> None:
    resp = raw_request(apiserver, "POST", f"{NS}/services", {"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}})
    assert resp.status == 400
    assert resp.json()["message"] == f'{kind} in version "v1" cannot be handled as a Service: {why}'


def test_a_failed_json_patch_gets_the_generic_message(apiserver: APIServer) -> None:
    assert raw_request(apiserver, "POST", f"{NS}/services", service("web")).status == 201
    resp = raw_request(apiserver, "PATCH", f"{NS}/services/web", [{"op": "test", "path": "/metadata/name", "value": "x"}],
                       headers={"Content-Type": "application/json-patch+json"})
    assert resp.status == 422
    assert resp.json()["message"] == "the server rejected our request due to an error in our request"
