"""The lab API server speaks the Kubernetes REST protocol: checked with the official client.

Protocol tests go through HTTPS with the `kubernetes` client (or raw requests where the client
hides what a real server sends); the pure parts (selectors, patches, tables) are tested
directly. Every server is started and stopped by a fixture.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from apiserver_fixtures import api_client, apiserver, core, discovery  # noqa: F401 (fixtures)
from apiserver_fixtures import endpoint_slice, nginx_service, node, pod, raw_request, service

from kubectl_proxyctl.cli.main import run as cli_run
from kubectl_proxyctl.lab.apiserver import tables
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge
from kubectl_proxyctl.lab.apiserver.registry import Admission
from kubectl_proxyctl.lab.apiserver.resources import ENDPOINT_SLICES, ENDPOINTS, NODES, PODS, SERVICES
from kubectl_proxyctl.lab.apiserver.selectors import SelectorError, field_predicate, label_predicate
from kubectl_proxyctl.lab.apiserver.status import APIError
from waiting import TIMEOUT, wait_for

ROOT = Path(__file__).resolve().parent.parent


def api_exception(excinfo: Any) -> dict[str, Any]:
    """The Status object inside an ApiException."""
    return json.loads(excinfo.value.body)


def assert_status(status: dict[str, Any], code: int, reason: str) -> None:
    assert status["kind"] == "Status"
    assert status["apiVersion"] == "v1"
    assert status["status"] == "Failure"
    assert status["code"] == code
    assert status["reason"] == reason


def watch_events(server: APIServer, path: str, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """All events of one watch request (which must end by itself, e.g. with timeoutSeconds;
    `timeout` only bounds a stream that would not)."""
    resp = raw_request(server, "GET", path, timeout=timeout)
    assert resp.status == 200, resp.body
    return [json.loads(line) for line in resp.body.splitlines() if line.strip()]


# --- discovery --------------------------------------------------------------------------------------


def test_discovery_through_the_official_client(api_client: Any) -> None:
    from kubernetes import client

    version = client.VersionApi(api_client).get_code()
    assert (version.major, version.minor, version.git_version) == ("1", "32", "v1.32.4")
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    core_resources = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert set(core_resources) >= {"services", "endpoints", "nodes", "pods", "namespaces", "services/status"}
    svc = core_resources["services"]
    assert (svc.kind, svc.singular_name, svc.namespaced) == ("Service", "service", True)
    assert svc.short_names == ["svc"] and svc.categories == ["all"]
    assert {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(svc.verbs)
    assert core_resources["nodes"].namespaced is False and core_resources["nodes"].short_names == ["no"]
    assert core_resources["pods"].short_names == ["po"] and core_resources["endpoints"].short_names == ["ep"]
    groups = client.ApisApi(api_client).get_api_versions().groups
    assert [g.name for g in groups] == ["discovery.k8s.io", "events.k8s.io", "networking.k8s.io"]
    assert groups[0].preferred_version.group_version == "discovery.k8s.io/v1"
    slices = client.DiscoveryV1Api(api_client).get_api_resources()
    assert slices.group_version == "discovery.k8s.io/v1"
    assert [(r.name, r.kind, r.namespaced) for r in slices.resources] == [("endpointslices", "EndpointSlice", True)]


def test_discovery_paths_with_and_without_trailing_slash(apiserver: APIServer) -> None:
    for path in ("/api", "/api/", "/apis", "/apis/", "/api/v1", "/api/v1/", "/apis/discovery.k8s.io",
                 "/apis/discovery.k8s.io/v1/", "/version", "/version/", "/openapi/v3"):
        assert raw_request(apiserver, "GET", path).status == 200, path
    api = raw_request(apiserver, "GET", "/api").json()
    assert api["serverAddressByClientCIDRs"][0]["serverAddress"] == f"127.0.0.1:{apiserver.port}"
    missing = raw_request(apiserver, "GET", "/apis/apps/v1")
    assert missing.status == 404
    assert_status(missing.json(), 404, "NotFound")


def test_aggregated_discovery_when_asked_for(apiserver: APIServer) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    resp = raw_request(apiserver, "GET", "/apis", headers={"Accept": accept})
    assert resp.headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    doc = resp.json()
    assert doc["kind"] == "APIGroupDiscoveryList"
    groups = {g["metadata"]["name"]: g for g in doc["items"]}
    assert list(groups) == ["discovery.k8s.io", "events.k8s.io", "networking.k8s.io"]
    (resource,) = groups["discovery.k8s.io"]["versions"][0]["resources"]
    assert resource["responseKind"] == {"group": "discovery.k8s.io", "version": "v1", "kind": "EndpointSlice"}
    core_doc = raw_request(apiserver, "GET", "/api", headers={"Accept": accept}).json()
    by_name = {r["resource"]: r for r in core_doc["items"][0]["versions"][0]["resources"]}
    assert by_name["services"]["shortNames"] == ["svc"] and by_name["nodes"]["scope"] == "Cluster"
    assert by_name["services"]["subresources"][0]["subresource"] == "status"


def test_health_endpoints_answer_anonymously(apiserver: APIServer) -> None:
    for path in ("/healthz", "/readyz", "/livez"):
        resp = raw_request(apiserver, "GET", path, token=None)
        assert (resp.status, resp.body) == (200, b"ok")
    assert raw_request(apiserver, "GET", "/version", token=None).status == 200


def test_openapi_v3_advertises_server_side_field_validation(apiserver: APIServer) -> None:
    root = raw_request(apiserver, "GET", "/openapi/v3").json()
    url = root["paths"]["apis/discovery.k8s.io/v1"]["serverRelativeURL"]
    doc = raw_request(apiserver, "GET", url).json()
    op = doc["paths"]["/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}"]["patch"]
    assert op["x-kubernetes-group-version-kind"] == {"group": "discovery.k8s.io", "version": "v1", "kind": "EndpointSlice"}
    assert {"name": "fieldValidation", "in": "query"}.items() <= op["parameters"][2].items()


# --- authentication and fault injection ---------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong"])
def test_requests_without_the_token_get_401(apiserver: APIServer, token: str | None) -> None:
    resp = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services", token=token)
    assert resp.status == 401
    assert resp.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401,
    }


def test_wrong_token_is_refused_even_on_public_paths(apiserver: APIServer) -> None:
    assert raw_request(apiserver, "GET", "/version", token="wrong").status == 401


def test_the_client_library_sees_401(apiserver: APIServer) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = apiserver.url, str(apiserver.ca_path)
    cfg.api_key = {"BearerToken": "wrong"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(cfg) as unauthorized:
        with pytest.raises(ApiException) as exc:
            client.CoreV1Api(unauthorized).list_namespaced_service("default")
    assert exc.value.status == 401
    assert_status(api_exception(exc), 401, "Unauthorized")


def test_fault_injection_for_a_number_of_requests_or_until_cleared(apiserver: APIServer, core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    apiserver.fail_with(500, count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            core.list_namespaced_service("default")
        assert_status(api_exception(exc), 500, "InternalError")
    assert core.list_namespaced_service("default").items == []
    apiserver.fail_with(503)
    assert raw_request(apiserver, "GET", "/healthz").status == 200
    for _ in range(3):
        resp = raw_request(apiserver, "GET", "/api/v1/namespaces")
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    apiserver.clear_fault()
    assert raw_request(apiserver, "GET", "/api/v1/namespaces").status == 200


# --- create, read, update, delete ------------------------------------------------------------------------


def test_create_stamps_metadata_and_applies_defaults(core: Any) -> None:
    created = core.create_namespaced_service("default", nginx_service())
    meta = created.metadata
    assert meta.uid and meta.creation_timestamp and meta.generation == 1
    assert int(meta.resource_version) > 0
    port = created.spec.ports[0]
    assert (port.protocol, port.node_port, port.target_port) == ("TCP", 30080, 80)
    assert created.spec.cluster_ips == ["10.96.0.100"] and created.spec.session_affinity == "None"
    assert created.spec.external_traffic_policy == "Cluster"
    fetched = core.read_namespaced_service("nginx", "default")
    assert fetched.metadata.resource_version == meta.resource_version


def test_generate_name(core: Any) -> None:
    body = service("")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "web-"
    created = core.create_namespaced_service("default", body)
    assert created.metadata.name.startswith("web-") and len(created.metadata.name) == len("web-") + 5


def test_lists_carry_kind_api_version_and_resource_version(apiserver: APIServer) -> None:
    apiserver.create(nginx_service())
    body = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services").json()
    assert body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(apiserver.resource_version)
    assert [i["metadata"]["name"] for i in body["items"]] == ["nginx"]
    slices = raw_request(apiserver, "GET", "/apis/discovery.k8s.io/v1/endpointslices").json()
    assert (slices["kind"], slices["apiVersion"]) == ("EndpointSliceList", "discovery.k8s.io/v1")


def test_errors_are_real_status_objects(core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    core.create_namespaced_service("default", nginx_service())
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", nginx_service())
    status = api_exception(exc)
    assert_status(status, 409, "AlreadyExists")
    assert status["message"] == 'services "nginx" already exists'
    assert status["details"] == {"name": "nginx", "kind": "services"}

    with pytest.raises(ApiException) as exc:
        core.read_namespaced_service("missing", "default")
    assert api_exception(exc)["message"] == 'services "missing" not found'
    assert_status(api_exception(exc), 404, "NotFound")

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("nope", service("web", "nope"))
    status = api_exception(exc)
    assert_status(status, 404, "NotFound")
    assert status["message"] == 'namespaces "nope" not found'
    assert status["details"] == {"name": "nope", "kind": "namespaces"}


def test_stale_resource_version_is_a_conflict(core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    first = core.create_namespaced_service("default", nginx_service())
    current = core.patch_namespaced_service("nginx", "default", {"metadata": {"labels": {"v": "2"}}})
    assert int(current.metadata.resource_version) > int(first.metadata.resource_version)
    stale = nginx_service()
    stale["metadata"]["resourceVersion"] = first.metadata.resource_version
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_service("nginx", "default", stale)
    status = api_exception(exc)
    assert_status(status, 409, "Conflict")
    assert status["message"] == (
        'Operation cannot be fulfilled on services "nginx": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    fresh = nginx_service()
    fresh["metadata"]["resourceVersion"] = current.metadata.resource_version
    fresh["metadata"]["labels"]["v"] = "3"
    replaced = core.replace_namespaced_service("nginx", "default", fresh)
    assert replaced.metadata.labels["v"] == "3" and replaced.metadata.uid == first.metadata.uid


def test_invalid_objects_get_422_with_causes(apiserver: APIServer) -> None:
    nameless = raw_request(apiserver, "POST", "/api/v1/namespaces/default/services", {"spec": {"ports": [{"port": 80}]}})
    status = nameless.json()
    assert_status(status, 422, "Invalid")
    assert status["details"]["causes"] == [{
        "reason": "FieldValueRequired", "message": "Required value: name or generateName is required",
        "field": "metadata.name",
    }]
    bad = service("Bad_Name", port=0)
    status = raw_request(apiserver, "POST", "/api/v1/namespaces/default/services", bad).json()
    assert_status(status, 422, "Invalid")
    assert status["message"].startswith('Service "Bad_Name" is invalid: [metadata.name: Invalid value: "Bad_Name": a DNS-1035 label')
    assert {c["field"] for c in status["details"]["causes"]} == {"metadata.name", "spec.ports[0].port", "spec.ports[0].targetPort"}


def test_undecodable_bodies_get_400(apiserver: APIServer) -> None:
    path = "/api/v1/namespaces/default/services"
    assert_status(raw_request(apiserver, "POST", path, b"{not json").json(), 400, "BadRequest")
    yaml_bad = raw_request(apiserver, "POST", path, b"a: [b", headers={"Content-Type": "application/yaml"})
    assert_status(yaml_bad.json(), 400, "BadRequest")
    wrong_kind = raw_request(apiserver, "POST", path, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
    assert_status(wrong_kind.json(), 400, "BadRequest")
    mismatch = raw_request(apiserver, "POST", path, {**service("web"), "metadata": {"name": "web", "namespace": "kube-system"}})
    assert mismatch.json()["message"] == "the namespace of the provided object does not match the namespace sent on the request"


def test_yaml_bodies_are_accepted(apiserver: APIServer) -> None:
    body = b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n"
    resp = raw_request(apiserver, "POST", "/api/v1/namespaces", body, headers={"Content-Type": "application/yaml"})
    assert resp.status == 201
    assert resp.json()["status"] == {"phase": "Active"}
    assert resp.json()["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}


def test_a_no_op_update_keeps_the_resource_version(apiserver: APIServer, core: Any) -> None:
    created = core.create_namespaced_service("default", nginx_service())
    rv = apiserver.resource_version
    again = core.patch_namespaced_service("nginx", "default", {"metadata": {"labels": {"app": "nginx"}}})
    assert again.metadata.resource_version == created.metadata.resource_version
    assert apiserver.resource_version == rv


def test_generation_moves_with_the_spec_only(core: Any) -> None:
    core.create_namespaced_service("default", nginx_service())
    labelled = core.patch_namespaced_service("nginx", "default", {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1
    changed = core.patch_namespaced_service("nginx", "default", {"spec": {"sessionAffinity": "ClientIP"}})
    assert changed.metadata.generation == 2


def test_status_subresource_and_main_resource_keep_their_halves(apiserver: APIServer, core: Any) -> None:
    lb = service("lb", type="LoadBalancer")
    core.create_namespaced_service("default", lb)
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}}}
    updated = core.patch_namespaced_service_status("lb", "default", {**ingress, "spec": {"type": "ClusterIP"}})
    assert updated.status.load_balancer.ingress[0].ip == "172.18.255.1"
    assert updated.spec.type == "LoadBalancer"
    relabelled = core.patch_namespaced_service("lb", "default", {"metadata": {"labels": {"a": "b"}}, "status": {"loadBalancer": {}}})
    assert relabelled.status.load_balancer.ingress[0].ip == "172.18.255.1"
    assert apiserver.get("svc", "lb")["metadata"]["labels"] == {"a": "b"}


def test_delete_answers_like_kube_apiserver(apiserver: APIServer, core: Any, discovery: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    core.create_namespaced_service("default", nginx_service())
    deleted = core.delete_namespaced_service("nginx", "default")
    assert deleted.metadata.name == "nginx"  # services answer with the object
    discovery.create_namespaced_endpoint_slice("default", endpoint_slice("nginx-1", "nginx", ["10.244.1.2"]))
    status = discovery.delete_namespaced_endpoint_slice("nginx-1", "default")
    assert status["status"] == "Success" and status["details"]["name"] == "nginx-1"
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_service("nginx", "default")
    assert_status(api_exception(exc), 404, "NotFound")


def test_delete_preconditions(apiserver: APIServer) -> None:
    apiserver.create(nginx_service())
    path = "/api/v1/namespaces/default/services/nginx"
    resp = raw_request(apiserver, "DELETE", path, {"preconditions": {"uid": "other"}})
    assert_status(resp.json(), 409, "Conflict")
    assert "Precondition failed: UID in precondition: other" in resp.json()["message"]
    assert raw_request(apiserver, "DELETE", path, {"propagationPolicy": "Background"}).status == 200


def test_dry_run_writes_nothing(apiserver: APIServer) -> None:
    rv = apiserver.resource_version
    resp = raw_request(apiserver, "POST", "/api/v1/namespaces/default/services?dryRun=All", nginx_service())
    assert resp.status == 201 and resp.json()["spec"]["clusterIPs"] == ["10.96.0.100"]
    assert apiserver.get("svc", "nginx") is None and apiserver.resource_version == rv


def test_deleting_a_namespace_deletes_its_objects(apiserver: APIServer, core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    core.create_namespace({"metadata": {"name": "team-a"}})
    core.create_namespaced_service("team-a", service("web", "team-a"))
    core.delete_namespace("team-a")
    assert apiserver.list("svc", "team-a") == [] and apiserver.get("ns", "team-a") is None
    with pytest.raises(ApiException) as exc:
        core.delete_namespace("default")
    assert_status(api_exception(exc), 403, "Forbidden")


def test_delete_collection_with_a_label_selector(apiserver: APIServer) -> None:
    for name, tier in (("a", "web"), ("b", "web"), ("c", "db")):
        apiserver.create(service(name, labels={"tier": tier}))
    resp = raw_request(apiserver, "DELETE", "/api/v1/namespaces/default/services?labelSelector=tier%3Dweb")
    assert resp.status == 200
    assert [i["metadata"]["name"] for i in resp.json()["items"]] == ["a", "b"]
    assert [s["metadata"]["name"] for s in apiserver.list("svc")] == ["c"]


def test_method_and_path_errors(apiserver: APIServer) -> None:
    assert_status(raw_request(apiserver, "POST", "/api/v1/services", service("x")).json(), 405, "MethodNotAllowed")
    assert_status(raw_request(apiserver, "GET", "/api/v1/widgets").json(), 404, "NotFound")
    assert_status(raw_request(apiserver, "GET", "/api/v1/namespaces/default/nodes").json(), 404, "NotFound")
    assert raw_request(apiserver, "GET", "/nothing-here").status == 404


# --- patches ----------------------------------------------------------------------------------------------


def test_three_patch_types_over_http(apiserver: APIServer, core: Any) -> None:
    core.create_namespaced_service("default", nginx_service())
    merged = core.patch_namespaced_service(
        "nginx", "default", {"spec": {"selector": {"app": None, "run": "nginx"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.spec.selector == {"run": "nginx"}
    patched = core.patch_namespaced_service(
        "nginx", "default", [{"op": "add", "path": "/metadata/labels/tier", "value": "web"}]
    )
    assert patched.metadata.labels == {"app": "nginx", "tier": "web"}
    strategic = core.patch_namespaced_service(
        "nginx", "default", {"spec": {"ports": [{"port": 443, "name": "https", "targetPort": 8443}]}}
    )
    assert [(p.name, p.port) for p in strategic.spec.ports] == [("http", 80), ("https", 443)]
    unsupported = raw_request(apiserver, "PATCH", "/api/v1/namespaces/default/services/nginx", {},
                              headers={"Content-Type": "application/apply-patch+yaml"})
    assert_status(unsupported.json(), 415, "UnsupportedMediaType")


def test_strategic_merge_of_service_ports_with_kubectl_directives() -> None:
    current = {"spec": {"ports": [
        {"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "protocol": "TCP"},
    ], "selector": {"app": "nginx", "old": "x"}}}
    patch = {"spec": {
        "$setElementOrder/ports": [{"port": 443}, {"port": 80}],
        "ports": [{"name": "https", "port": 443, "targetPort": 8443}, {"port": 80, "targetPort": 8080},
                  {"port": 9090, "$patch": "delete"}],
        "selector": {"old": None},
    }}
    merged = strategic_merge(current, patch, "Service")
    assert merged["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": 8443},
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
    ]
    assert merged["spec"]["selector"] == {"app": "nginx"}
    assert current["spec"]["selector"] == {"app": "nginx", "old": "x"}  # inputs are not mutated


def test_strategic_merge_of_pod_containers_env_and_volumes() -> None:
    current = {"spec": {
        "containers": [{"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                       {"name": "sidecar", "image": "busybox"}],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }}
    patch = {"spec": {
        "containers": [{"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}],
                        "ports": [{"containerPort": 8080}]}],
        "volumes": [{"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/srv"}}],
    }}
    merged = strategic_merge(current, patch, "Pod")
    web, sidecar = merged["spec"]["containers"]
    assert web["image"] == "nginx:2" and sidecar == {"name": "sidecar", "image": "busybox"}
    assert web["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert web["ports"] == [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 8080}]
    assert merged["spec"]["volumes"] == [{"name": "data", "hostPath": {"path": "/srv"}}]


def test_strategic_merge_atomic_lists_sets_and_replace() -> None:
    eps = {"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}], "metadata": {"finalizers": ["a"]}}
    merged = strategic_merge(eps, {"endpoints": [{"addresses": ["10.0.0.3"]}], "metadata": {"finalizers": ["b"]}},
                             "EndpointSlice")
    assert merged["endpoints"] == [{"addresses": ["10.0.0.3"]}]
    assert merged["metadata"]["finalizers"] == ["a", "b"]
    dropped = strategic_merge(merged, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, "EndpointSlice")
    assert dropped["metadata"]["finalizers"] == ["b"]
    svc = {"spec": {"ports": [{"port": 80}, {"port": 81}]}}
    replaced = strategic_merge(svc, {"spec": {"ports": [{"$patch": "replace"}, {"port": 82}]}}, "Service")
    assert replaced["spec"]["ports"] == [{"port": 82}]
    assert strategic_merge(svc, {"spec": {"$patch": "replace", "type": "ClusterIP"}}, "Service")["spec"] == {"type": "ClusterIP"}


def test_json_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"a": 1}, ["x"]) == ["x"]


def test_json_patch_rfc6902() -> None:
    doc = {"metadata": {"labels": {"a/b": "1"}}, "spec": {"ports": [{"port": 80}]}}
    out = json_patch(doc, [
        {"op": "add", "path": "/spec/ports/-", "value": {"port": 81}},
        {"op": "replace", "path": "/spec/ports/0/port", "value": 8080},
        {"op": "remove", "path": "/metadata/labels/a~1b"},
        {"op": "copy", "from": "/spec/ports/1", "path": "/spec/first"},
        {"op": "move", "from": "/spec/first", "path": "/spec/moved"},
        {"op": "test", "path": "/spec/moved/port", "value": 81},
    ])
    assert out == {"metadata": {"labels": {}}, "spec": {"ports": [{"port": 8080}, {"port": 81}], "moved": {"port": 81}}}
    assert doc["spec"]["ports"] == [{"port": 80}]
    for bad in ([{"op": "test", "path": "/spec", "value": 1}], [{"op": "remove", "path": "/nope"}],
                [{"op": "replace", "path": "/x", "value": 1}], {"op": "add"}):
        with pytest.raises(PatchError):
            json_patch(doc, bad)


# --- selectors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("selector, expected", [
    ("", ["a", "b", "c", "d"]),
    ("app=web", ["a", "b"]),
    ("app==web", ["a", "b"]),
    ("app!=web", ["c", "d"]),
    ("app in (web, db)", ["a", "b", "c"]),
    ("app notin (web)", ["c", "d"]),
    ("tier", ["a", "c"]),
    ("!tier", ["b", "d"]),
    ("app=web,tier", ["a"]),
    ("app in (web),tier notin (front)", ["b"]),
    ("weight>5", ["b"]),
    ("weight<5", ["a"]),
])
def test_label_selector_syntax(selector: str, expected: list[str]) -> None:
    objects = {
        "a": {"app": "web", "tier": "front", "weight": "1"},
        "b": {"app": "web", "weight": "9"},
        "c": {"app": "db", "tier": "back"},
        "d": {},
    }
    predicate = label_predicate(selector)
    matched = [n for n, labels in objects.items() if predicate is None or predicate({"metadata": {"labels": labels}})]
    assert matched == expected


@pytest.mark.parametrize("selector", ["app=", "app in web", "=x", "app=web,", "a b", "app in (x", "a>b"])
def test_bad_label_selectors(selector: str) -> None:
    if selector == "app=":  # an empty value is valid: the key must be present with value ""
        predicate = label_predicate(selector)
        assert predicate is not None and predicate({"metadata": {"labels": {"app": ""}}})
        return
    with pytest.raises(SelectorError):
        label_predicate(selector)


def test_field_selectors() -> None:
    pod_obj = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "node1"}, "status": {"phase": "Running"}}
    assert field_predicate("metadata.name=p,metadata.namespace==ns", PODS)(pod_obj)  # type: ignore[misc]
    assert not field_predicate("spec.nodeName!=node1", PODS)(pod_obj)  # type: ignore[misc]
    assert field_predicate("status.phase=Running", PODS)(pod_obj)  # type: ignore[misc]
    assert field_predicate("", PODS) is None
    with pytest.raises(SelectorError, match="field label not supported: spec.nodeName"):
        field_predicate("spec.nodeName=x", SERVICES)


def test_selectors_over_http(apiserver: APIServer, core: Any) -> None:
    for name, labels in (("a", {"app": "web"}), ("b", {"app": "db"}), ("c", {})):
        apiserver.create(service(name, labels=labels))
    names = lambda **kw: [s.metadata.name for s in core.list_namespaced_service("default", **kw).items]  # noqa: E731
    assert names(label_selector="app") == ["a", "b"]
    assert names(label_selector="app notin (web)") == ["b", "c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b", label_selector="!app") == ["c"]
    everywhere = core.list_service_for_all_namespaces(field_selector="metadata.namespace=default")
    assert len(everywhere.items) == 3
    bad = raw_request(apiserver, "GET", "/api/v1/services?labelSelector=a%20in%20b")
    assert_status(bad.json(), 400, "BadRequest")
    bad = raw_request(apiserver, "GET", "/api/v1/services?fieldSelector=spec.foo%3Dx")
    assert bad.json()["message"] == "field label not supported: spec.foo"


# --- pagination ------------------------------------------------------------------------------------------


def _page(core: Any, **kw: Any) -> dict[str, Any]:
    resp = core.list_service_for_all_namespaces(_preload_content=False, **kw)
    return json.loads(resp.data)


def test_pagination_is_complete_ordered_and_consistent(apiserver: APIServer, core: Any) -> None:
    apiserver.load(service(f"svc-{i:02d}", namespace=f"ns-{i % 3}") for i in range(25))
    first = _page(core, limit=10)
    assert len(first["items"]) == 10 and first["metadata"]["remainingItemCount"] == 15
    list_rv = first["metadata"]["resourceVersion"]
    # Change the world between pages: the rest of the list must still show the first page's RV.
    names = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in first["items"]]
    second = _page(core, limit=10, _continue=first["metadata"]["continue"])
    first_remaining = second["items"][0]["metadata"]
    victim = second["items"][5]["metadata"]
    apiserver.delete("svc", victim["name"], victim["namespace"])
    apiserver.create(service("svc-new", namespace="ns-2"))
    apiserver.patch("svc", first_remaining["name"], {"metadata": {"labels": {"changed": "yes"}}}, first_remaining["namespace"])
    names += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in second["items"]]
    third = _page(core, limit=10, _continue=second["metadata"]["continue"])
    names += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in third["items"]]
    assert "continue" not in third["metadata"]
    assert {p["metadata"]["resourceVersion"] for p in (first, second, third)} == {list_rv}
    assert names == sorted(names) and len(names) == 25 and ("ns-2", "svc-new") not in names
    fresh = core.list_service_for_all_namespaces()
    assert len(fresh.items) == 25 and int(fresh.metadata.resource_version) > int(list_rv)


def test_pages_of_one_namespace_with_a_selector(apiserver: APIServer, core: Any) -> None:
    apiserver.load(service(f"s{i}", labels={"even": str(i % 2 == 0).lower()}) for i in range(9))
    seen, cont = [], None
    while True:
        page = core.list_namespaced_service("default", label_selector="even=true", limit=2, _continue=cont)
        seen += [s.metadata.name for s in page.items]
        assert page.metadata.remaining_item_count is None  # unknown with a selector
        cont = page.metadata.var_continue
        if not cont:
            break
    assert seen == ["s0", "s2", "s4", "s6", "s8"]


def test_continue_tokens_expire_with_the_history(apiserver: APIServer, core: Any) -> None:
    apiserver.load(service(f"s{i}") for i in range(5))
    first = _page(core, limit=2)
    apiserver.create(service("later"))
    apiserver.compact()
    resp = raw_request(apiserver, "GET", f"/api/v1/services?limit=2&continue={first['metadata']['continue']}")
    assert_status(resp.json(), 410, "Expired")
    assert raw_request(apiserver, "GET", "/api/v1/services?continue=garbage!").status == 400


def test_list_at_an_exact_resource_version(apiserver: APIServer) -> None:
    apiserver.create(service("a"))
    rv = apiserver.resource_version
    apiserver.create(service("b"))
    apiserver.delete("svc", "a")
    then = raw_request(apiserver, "GET", f"/api/v1/services?resourceVersion={rv}&resourceVersionMatch=Exact").json()
    assert [i["metadata"]["name"] for i in then["items"]] == ["a"] and then["metadata"]["resourceVersion"] == str(rv)
    future = raw_request(apiserver, "GET", f"/api/v1/services?resourceVersion={rv + 100}")
    assert_status(future.json(), 504, "Timeout")


@pytest.mark.slow
def test_informer_initial_list_of_10k_services_and_10k_slices_is_fast(apiserver: APIServer, core: Any, discovery: Any) -> None:
    """What keeps an informer's initial list fast: pages of at most `limit` objects, each
    continuing where the last ended, so no request carries (or builds) the whole list. The
    speed itself is measured by bench/bench_informer.py (target: 10k+10k synced in ≤ 5 s)."""
    apiserver.load(
        [service(f"svc-{i}", namespace=f"ns-{i % 10}", clusterIP=f"10.96.{i // 250}.{i % 250 + 1}") for i in range(10000)]
        + [endpoint_slice(f"svc-{i}-x1", f"svc-{i}", ["10.244.1.2", "10.244.2.3"], f"ns-{i % 10}") for i in range(10000)]
    )
    total = 0
    pages: list[int] = []
    names: set[tuple[str, str, str]] = set()
    for list_fn in (core.list_service_for_all_namespaces, discovery.list_endpoint_slice_for_all_namespaces):
        cont = None
        while True:
            page = json.loads(list_fn(limit=500, _continue=cont, _preload_content=False).data)
            total += len(page["items"])
            pages.append(len(page["items"]))
            names |= {(page["kind"], i["metadata"]["namespace"], i["metadata"]["name"]) for i in page["items"]}
            cont = page["metadata"].get("continue")
            if not cont:
                break
    assert total == 20000
    assert len(names) == 20000, "a page repeated objects of another"
    assert pages == [500] * 40, pages


# --- watch -------------------------------------------------------------------------------------------------


def test_watch_from_a_resource_version(apiserver: APIServer, core: Any) -> None:
    from kubernetes import watch

    apiserver.create(service("before"))
    rv = core.list_namespaced_service("default").metadata.resource_version

    def write() -> None:  # while the watch starts or runs: from `rv` on, it sees every change
        apiserver.create(service("web"))
        apiserver.patch("svc", "web", {"metadata": {"labels": {"v": "2"}}})
        apiserver.delete("svc", "web")

    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    w = watch.Watch(return_type=object)
    for ev in w.stream(core.list_namespaced_service, "default", resource_version=rv, timeout_seconds=int(TIMEOUT)):
        seen.append((ev["type"], ev["object"]["metadata"]["name"], int(ev["object"]["metadata"]["resourceVersion"])))
        if len(seen) == 3:  # the writer's three changes; the timeout only bounds a stream that lacks them
            w.stop()
    writer.join()
    assert [s[:2] for s in seen] == [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    rvs = [s[2] for s in seen]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


@pytest.mark.parametrize("rv_param", ["", "&resourceVersion=0", "&resourceVersion="])
def test_watch_without_a_resource_version_starts_with_the_current_state(apiserver: APIServer, rv_param: str) -> None:
    apiserver.create(service("a"))
    apiserver.create(service("b"))
    events = watch_events(apiserver, f"/api/v1/namespaces/default/services?watch=1&timeoutSeconds=1{rv_param}")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_selectors_turn_transitions_into_added_and_deleted(apiserver: APIServer) -> None:
    apiserver.create(service("web", labels={"app": "web"}))
    rv = apiserver.resource_version
    apiserver.patch("svc", "web", {"metadata": {"labels": {"app": "db"}}})
    apiserver.patch("svc", "web", {"metadata": {"labels": {"app": "web"}}})
    apiserver.create(service("other", labels={"app": "db"}))
    apiserver.delete("svc", "web")
    events = watch_events(apiserver, f"/api/v1/services?watch=true&resourceVersion={rv}&labelSelector=app%3Dweb&timeoutSeconds=1")
    assert [e["type"] for e in events] == ["DELETED", "ADDED", "DELETED"]
    left = events[0]["object"]
    assert left["metadata"]["labels"] == {"app": "web"}  # the last matching state ...
    assert int(left["metadata"]["resourceVersion"]) == rv + 1  # ... at the RV of the change
    by_name = watch_events(apiserver, f"/api/v1/namespaces/default/services?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dother&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in by_name] == [("ADDED", "other")]


def test_watch_list_sends_initial_events_then_an_annotated_bookmark(apiserver: APIServer) -> None:
    apiserver.create(service("a"))
    events = watch_events(apiserver, "/api/v1/services?watch=true&sendInitialEvents=true"
                          "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1")
    assert [e["type"] for e in events[:2]] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"] == {
        "resourceVersion": str(apiserver.resource_version),
        "annotations": {"k8s.io/initial-events-end": "true"},
    }


def test_watch_bookmarks_are_small_and_periodic(apiserver: APIServer) -> None:
    apiserver.create(service("a"))
    rv = apiserver.resource_version
    events = watch_events(apiserver, f"/api/v1/services?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1")
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert 2 <= len(bookmarks) == len(events)
    assert bookmarks[0]["object"] == {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}


def test_watch_from_a_compacted_resource_version_gets_410_in_stream(apiserver: APIServer, core: Any) -> None:
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    apiserver.create(service("a"))
    old_rv = apiserver.resource_version
    apiserver.create(service("b"))
    compacted = apiserver.compact()
    (event,) = watch_events(apiserver, f"/api/v1/services?watch=true&resourceVersion={old_rv}")
    assert event["type"] == "ERROR"
    assert event["object"] == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {old_rv} ({compacted})", "reason": "Expired", "code": 410,
    }
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch(return_type=object).stream(core.list_namespaced_service, "default",
                                                       resource_version=str(old_rv), timeout_seconds=1):
            pass
    assert exc.value.status == 410
    assert watch_events(apiserver, f"/api/v1/services?watch=true&resourceVersion={compacted}&timeoutSeconds=1") == []


def test_a_watcher_that_falls_behind_a_small_history_gets_410() -> None:
    server = APIServer(history=3).start()
    try:
        server.create(service("a"))
        rv = server.resource_version
        for i in range(5):
            server.create(service(f"b{i}"))
        (event,) = watch_events(server, f"/api/v1/services?watch=true&resourceVersion={rv}")
        assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    finally:
        server.stop()


def test_watch_timeout_seconds_ends_the_stream_cleanly(apiserver: APIServer) -> None:
    started = time.monotonic()
    # The server ends the stream (a clean, empty 200) after timeoutSeconds, long before the
    # client would give up (TIMEOUT).
    assert watch_events(apiserver, "/api/v1/services?watch=true&resourceVersion=1&timeoutSeconds=1") == []
    assert 0.9 <= time.monotonic() - started < TIMEOUT


def test_watch_as_table_rows(apiserver: APIServer) -> None:
    apiserver.create(nginx_service())
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    resp = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services?watch=1&timeoutSeconds=1",
                       headers={"Accept": accept})
    (event,) = [json.loads(line) for line in resp.body.splitlines()]
    assert event["type"] == "ADDED" and event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][:5] == ["nginx", "NodePort", "10.96.0.100", "<none>", "80:30080/TCP"]


def _open_raw_watch(server: APIServer) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(server.ca_path))
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1")
    sock.sendall(
        f"GET /api/v1/services?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n\r\n".encode()
    )
    assert b"200 OK" in sock.recv(4096)
    return sock


def test_client_disconnects_end_the_watch_without_leaking_threads(apiserver: APIServer) -> None:
    # The threads are told apart by identity: threads of other tests that end meanwhile
    # (daemon threads of an earlier server, say) must not count.
    baseline = set(threading.enumerate())
    socks = [_open_raw_watch(apiserver) for _ in range(3)]
    watching = set(threading.enumerate()) - baseline
    assert len(watching) >= 3
    for sock in socks:
        sock.close()
    # The server notices a gone client within a second (watch.POLL_SECONDS).
    wait_for(lambda: not any(t.is_alive() for t in watching), what="the watch threads to end")
    assert set(threading.enumerate()) - baseline == set()


def test_stop_ends_open_watches_and_idle_connections() -> None:
    baseline = set(threading.enumerate())
    server = APIServer().start()
    sock = _open_raw_watch(server)
    idle = socket.create_connection(("127.0.0.1", server.port))
    wait_for(lambda: len(set(threading.enumerate()) - baseline) >= 3, what="the server, watch and idle threads")
    servers = set(threading.enumerate()) - baseline
    stopping = threading.Thread(target=server.stop, name="stopping")
    stopping.start()
    # stop() does not wait for the clients to go: it ends the watch and the idle connection
    # itself (the deadline only bounds a hang).
    stopping.join(TIMEOUT)
    assert not stopping.is_alive(), "stop() hangs on an open watch or an idle connection"
    assert [t for t in servers if t.is_alive()] == []
    sock.close()
    idle.close()


# --- server-side tables -------------------------------------------------------------------------------------

NOW = tables.parse_timestamp("2026-01-01T12:00:00Z") or 0.0


def _cells(resource: Any, obj: dict[str, Any]) -> list[Any]:
    obj["metadata"].setdefault("creationTimestamp", "2026-01-01T11:55:00Z")
    return tables.row(resource, obj, now=NOW)["cells"]  # type: ignore[no-any-return]


def test_service_rows_like_kubectl_get_svc() -> None:
    svc = nginx_service()
    svc["spec"]["ports"][0]["protocol"] = "TCP"
    svc["spec"]["clusterIPs"] = ["10.96.0.100"]
    assert _cells(SERVICES, svc) == ["nginx", "NodePort", "10.96.0.100", "<none>", "80:30080/TCP", "5m", "app=nginx"]
    lb = service("lb", type="LoadBalancer", clusterIPs=["10.96.0.5"])
    lb["spec"]["ports"] = [{"port": 443, "protocol": "TCP", "nodePort": 31443}, {"port": 53, "protocol": "UDP"}]
    assert _cells(SERVICES, lb)[2:5] == ["10.96.0.5", "<pending>", "443:31443/TCP,53/UDP"]
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "172.18.255.2"}, {"hostname": "lb.example"}]}}
    lb["spec"]["externalIPs"] = ["192.0.2.1"]
    assert _cells(SERVICES, lb)[3] == "172.18.255.2,lb.example,192.0.2.1"
    external = service("ext", type="ExternalName", externalName="example.com")
    external["spec"]["ports"] = []
    assert _cells(SERVICES, external)[1:7] == ["ExternalName", "<none>", "example.com", "<none>", "5m", "<none>"]


def test_endpoints_and_endpointslice_rows() -> None:
    ep = {"metadata": {"name": "nginx"}, "subsets": [{
        "addresses": [{"ip": "10.244.1.2"}, {"ip": "10.244.2.3"}, {"ip": "10.244.3.4"}, {"ip": "10.244.3.5"}],
        "ports": [{"port": 80}],
    }]}
    assert _cells(ENDPOINTS, ep)[1] == "10.244.1.2:80,10.244.2.3:80,10.244.3.4:80 + 1 more..."
    assert _cells(ENDPOINTS, {"metadata": {"name": "e"}})[1] == "<none>"
    eps = endpoint_slice("nginx-x", "nginx", ["10.244.1.2", "10.244.2.3"])
    assert _cells(ENDPOINT_SLICES, eps) == ["nginx-x", "IPv4", "80", "10.244.1.2,10.244.2.3", "5m"]
    eps["endpoints"], eps["ports"] = [], [{"name": "http"}]
    assert _cells(ENDPOINT_SLICES, eps)[2:4] == ["http", "<unset>"]


def test_node_and_pod_rows() -> None:
    n = node("node1", "172.18.0.2", labels={"node-role.kubernetes.io/control-plane": ""})
    assert _cells(NODES, n) == [
        "node1", "Ready", "control-plane", "5m", "v1.32.4", "172.18.0.2", "<none>",
        "Debian GNU/Linux 12 (bookworm)", "6.18.44", "containerd://1.7.24",
    ]
    n["spec"]["unschedulable"] = True
    n["status"]["conditions"] = []
    assert _cells(NODES, n)[1] == "Unknown,SchedulingDisabled"
    p = pod("web-1", "10.244.1.7", "node1")
    assert _cells(PODS, p) == ["web-1", "1/1", "Running", "0", "5m", "10.244.1.7", "node1", "<none>", "<none>"]
    status = p["status"]["containerStatuses"][0]
    status.update(ready=False, restartCount=3, state={"waiting": {"reason": "CrashLoopBackOff"}},
                  lastState={"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T11:58:00Z"}})
    assert _cells(PODS, p)[1:4] == ["0/1", "CrashLoopBackOff", "3 (2m ago)"]
    p["metadata"]["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    p["status"]["containerStatuses"][0]["state"] = {"running": {}}
    assert _cells(PODS, p)[2] == "Terminating"


@pytest.mark.parametrize("seconds, text", [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (150, "2m30s"), (600, "10m"),
    (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"), (30 * 3600, "30h"), (50 * 3600, "2d2h"), (10 * 86400, "10d"),
    (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_tables_over_http(apiserver: APIServer) -> None:
    apiserver.create(nginx_service())
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    table = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services?limit=500", headers={"Accept": accept}).json()
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    assert [c["priority"] for c in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 0, 1]
    (row,) = table["rows"]
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "nginx"
    assert "spec" not in row["object"]
    full = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services/nginx?includeObject=Object",
                       headers={"Accept": accept}).json()
    assert full["rows"][0]["object"]["spec"]["type"] == "NodePort"
    bare = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services?includeObject=None", headers={"Accept": accept}).json()
    assert "object" not in bare["rows"][0]
    partial = raw_request(apiserver, "GET", "/api/v1/namespaces/default/services",
                          headers={"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"}).json()
    assert partial["kind"] == "PartialObjectMetadataList" and partial["items"][0]["metadata"]["name"] == "nginx"


# --- hooks -------------------------------------------------------------------------------------------------------


def test_admission_hooks_mutate_or_reject(apiserver: APIServer, core: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    def allocate(review: Admission) -> None:
        if review.resource is SERVICES and review.operation == "CREATE" and review.object is not None:
            review.object["spec"].setdefault("clusterIP", "10.96.0.42")
        if review.operation == "DELETE" and review.old and review.old["metadata"]["name"] == "pinned":
            raise APIError(403, "Forbidden", 'services "pinned" is forbidden: pinned')

    apiserver.admission.append(allocate)
    created = core.create_namespaced_service("default", service("web"))
    assert created.spec.cluster_ip == "10.96.0.42" and created.spec.cluster_ips == ["10.96.0.42"]
    core.create_namespaced_service("default", service("pinned"))
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_service("pinned", "default")
    assert_status(api_exception(exc), 403, "Forbidden")


def test_observers_see_every_committed_event_in_order(apiserver: APIServer) -> None:
    seen: list[tuple[str, str, int]] = []
    apiserver.observers.append(lambda ev: seen.append((ev.type, ev.key[1], ev.rv)))
    apiserver.create(service("a"))
    apiserver.patch("svc", "a", {"metadata": {"labels": {"x": "y"}}})
    apiserver.delete("svc", "a")
    assert [s[:2] for s in seen] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert [s[2] for s in seen] == sorted(s[2] for s in seen)


# --- persistence ---------------------------------------------------------------------------------------------------


def test_restart_with_a_state_dir_keeps_objects_and_resource_versions(tmp_path: Path) -> None:
    first = APIServer(state_dir=tmp_path).start()
    try:
        first.create(nginx_service())
        first.create(endpoint_slice("nginx-1", "nginx", ["10.244.1.2"]))
        first.delete("endpointslices", "nginx-1")
        old_rv, token, ca = first.resource_version, first.token, first.ca_path.read_bytes()
    finally:
        first.stop()
    second = APIServer(state_dir=tmp_path).start()
    try:
        assert second.resource_version == old_rv
        assert second.token == token and second.ca_path.read_bytes() == ca
        assert second.get("svc", "nginx")["spec"]["clusterIP"] == "10.96.0.100"
        assert second.get("endpointslices", "nginx-1") is None
        created = second.create(service("after"))
        assert int(created["metadata"]["resourceVersion"]) == old_rv + 1
        (event,) = watch_events(second, f"/api/v1/services?watch=true&resourceVersion={old_rv - 1}")
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
    finally:
        second.stop()


def test_without_a_state_dir_nothing_is_left_behind() -> None:
    server = APIServer().start()
    files = server.files_dir
    assert (files / "kubeconfig").exists()
    server.stop()
    assert not files.exists()


# --- the CLI ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("listen, message", [
    ("foo", "expected HOST:PORT"),
    ("127.0.0.1:70000", "out of range"),
    ("::1:6443", "brackets"),
])
def test_apiserver_command_rejects_a_bad_listen_address(listen: str, message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_run(["lab", "apiserver", "--listen", listen, "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith("error: ")


def test_apiserver_command_reports_an_address_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli_run(["lab", "apiserver", "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Address already in use" in err and err.count("\n") == 1
    assert not (tmp_path / "kubeconfig").exists()


def test_apiserver_command_reports_an_unusable_state_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    code = cli_run(["lab", "apiserver", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "file" / "dir")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot use --state-dir") and err.count("\n") == 1


def test_apiserver_command_serves_until_sigterm(tmp_path: Path) -> None:
    from kubernetes import client, config

    proc = subprocess.Popen(
        [sys.executable, "-m", "kubectl_proxyctl", "lab", "apiserver", "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path), "--token", "s3cret", "--san", "172.18.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        serving = proc.stdout.readline()
        kubeconfig_line = proc.stdout.readline()
        assert serving.startswith("serving https://127.0.0.1:")
        assert kubeconfig_line.strip() == f"kubeconfig: {tmp_path / 'kubeconfig'}"
        assert (tmp_path / "token").read_text().strip() == "s3cret"
        with config.new_client_from_config(config_file=str(tmp_path / "kubeconfig")) as api:
            names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]
        assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_serving_certificate_names(tmp_path: Path) -> None:
    from cryptography import x509

    server = APIServer(state_dir=tmp_path, extra_sans=["172.18.0.1", "lab.example"]).start()
    try:
        cert = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        assert {"127.0.0.1", "172.18.0.1"} <= ips
        assert {"localhost", "lab.example"} <= set(san.get_values_for_type(x509.DNSName))
    finally:
        server.stop()


# --- field validation ------------------------------------------------------------------------------------------


def test_unknown_fields_are_rejected_warned_about_or_dropped(apiserver: APIServer) -> None:
    body = nginx_service()
    body["spec"]["bogus"] = 1
    body["spec"]["ports"][0]["extra"] = "x"
    path = "/api/v1/namespaces/default/services"
    strict = raw_request(apiserver, "POST", path + "?fieldValidation=Strict", body)
    assert_status(strict.json(), 400, "BadRequest")
    assert strict.json()["message"] == (
        'Service in version "v1" cannot be handled as a Service: strict decoding error: '
        'unknown field "spec.ports[0].extra", unknown field "spec.bogus"'
    )
    warned = raw_request(apiserver, "POST", path, body)  # Warn is the default
    assert warned.status == 201
    assert warned.headers["Warning"] == '299 - "unknown field \\"spec.ports[0].extra\\"", 299 - "unknown field \\"spec.bogus\\""'
    assert "bogus" not in warned.json()["spec"] and "extra" not in warned.json()["spec"]["ports"][0]
    ignored = raw_request(apiserver, "PATCH", path + "/nginx?fieldValidation=Ignore", {"spec": {"bogus": 2}},
                          headers={"Content-Type": "application/merge-patch+json"})
    assert ignored.status == 200 and "Warning" not in ignored.headers and "bogus" not in ignored.json()["spec"]
    bad_mode = raw_request(apiserver, "POST", path + "?fieldValidation=Loose", body)
    assert_status(bad_mode.json(), 400, "BadRequest")


# --- protobuf request bodies (kubectl's typed clients) ----------------------------------------------------------


def _varint(n: int) -> bytes:
    out = b""
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return b"k8s\x00" + _field(1, _field(1, api_version) + _field(2, kind)) + _field(2, raw)


def test_protobuf_service_bodies_decode_like_json(apiserver: APIServer) -> None:
    meta = _field(1, "web") + _field(11, _field(1, "app") + _field(2, "web")) + _field(8, b"")
    port = _field(1, "80-8080") + _field(2, "TCP") + _field(3, 80) + _field(4, _field(1, 0) + _field(2, 8080)) + _field(5, 30090)
    named = _field(1, "dns") + _field(2, "UDP") + _field(3, 53) + _field(4, _field(1, 1) + _field(3, "dns")) + _field(5, 0)
    spec = (_field(1, port) + _field(1, named) + _field(2, _field(1, "app") + _field(2, "web")) + _field(3, "")
            + _field(4, "NodePort") + _field(12, 0) + _field(13, 0))
    body = _envelope("v1", "Service", _field(1, meta) + _field(2, spec) + _field(3, _field(1, b"")))
    resp = raw_request(apiserver, "POST", "/api/v1/namespaces/default/services", body,
                       headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    assert resp.status == 201, resp.body
    svc = resp.json()
    assert svc["metadata"]["labels"] == {"app": "web"} and "creationTimestamp" in svc["metadata"]
    assert svc["spec"]["ports"] == [
        {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30090},
        {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns"},
    ]
    assert "clusterIP" not in svc["spec"] and "healthCheckNodePort" not in svc["spec"]
    options = _envelope("v1", "DeleteOptions", _field(2, _field(1, "not-the-uid")))
    refused = raw_request(apiserver, "DELETE", "/api/v1/namespaces/default/services/web", options,
                          headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    assert_status(refused.json(), 409, "Conflict")
    unsupported = raw_request(apiserver, "POST", "/api/v1/namespaces/default/pods", _envelope("v1", "Pod", b""),
                              headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    assert_status(unsupported.json(), 415, "UnsupportedMediaType")
