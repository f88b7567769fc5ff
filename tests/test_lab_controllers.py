"""The lab's controllers against a real (in-process) lab API server.

Allocation errors are checked over HTTPS (raw requests, the official client, and kubectl for
the text a user sees); slices, Endpoints and pod placement through the API server's own
objects. No network namespaces: this is the control plane only.
"""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from apiserver_fixtures import api_client, apiserver, core, kubectl  # noqa: F401 (fixtures)
from apiserver_fixtures import Kubectl, raw_request, service

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.controllers.controllers import LabControllers, pod_terminated, set_pod_ready
from kubectl_proxyctl.lab.spec import LabSpec
from waiting import TIMEOUT, wait_for

SPEC = LabSpec.build(nodes=3, zones=2)
SERVICES_PATH = "/api/v1/namespaces/default/services"
PODS_PATH = "/api/v1/namespaces/default/pods"


@pytest.fixture
def lab(apiserver: APIServer) -> Iterator[LabControllers]:
    controllers = LabControllers(apiserver, SPEC).start()
    try:
        yield controllers
    finally:
        controllers.stop()


def settle(lab: LabControllers) -> None:
    assert lab.wait_idle(TIMEOUT), "the controllers did not converge"


def make_pod(name: str, labels: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
             grace: int | None = None, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "echo", "image": "proxyctl/echo:0.1"}
    if ports is not None:
        container["ports"] = ports
    pod_spec: dict[str, Any] = {"containers": [container], **spec}
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": pod_spec}


def web_service(name: str = "web", target: int | str = 8080, **spec: Any) -> dict[str, Any]:
    svc = service(name, selector={"app": name}, **spec)
    svc["spec"]["ports"][0]["targetPort"] = target
    return svc


def slices_of(api: APIServer, service_name: str) -> list[dict[str, Any]]:
    return [s for s in api.list("endpointslices", "default")
            if s["metadata"].get("labels", {}).get("kubernetes.io/service-name") == service_name]


def endpoints_by_pod(api: APIServer, service_name: str) -> dict[str, dict[str, Any]]:
    return {ep["targetRef"]["name"]: ep for s in slices_of(api, service_name) for ep in s["endpoints"] or []}


def rejected(api: APIServer, body: dict[str, Any], method: str = "POST", path: str = SERVICES_PATH) -> dict[str, Any]:
    resp = raw_request(api, method, path, body)
    assert resp.status == 422, resp.body
    status = resp.json()
    assert status["kind"] == "Status" and status["reason"] == "Invalid" and status["code"] == 422
    return status  # type: ignore[no-any-return]


# --- nodes and the kubernetes Service ------------------------------------------------------------------


def test_nodes_are_registered_like_kubelets_register_them(apiserver: APIServer, lab: LabControllers,
                                                          kubectl: Kubectl) -> None:
    node1 = apiserver.get("nodes", "node1")
    assert node1 is not None
    labels = node1["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "node1" and labels["kubernetes.io/os"] == "linux"
    assert labels["topology.kubernetes.io/zone"] == "zone-a"
    assert apiserver.get("nodes", "node2")["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-b"
    assert node1["spec"] == {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    assert node1["status"]["addresses"] == [{"type": "InternalIP", "address": "172.18.0.2"},
                                            {"type": "Hostname", "address": "node1"}]
    rows = [line.split() for line in kubectl.run("get", "nodes", "-o", "wide").stdout.splitlines()]
    assert [r[0] for r in rows[1:]] == ["node1", "node2", "node3"]
    assert rows[1][1:2] + rows[1][4:7] == ["Ready", "v1.32.4", "172.18.0.2", "<none>"]
    assert rows[1][-2:] == [node1["status"]["nodeInfo"]["kernelVersion"], "proxyctl-lab://0.1.0"]


def test_the_kubernetes_service_points_at_the_api_server(apiserver: APIServer, lab: LabControllers) -> None:
    svc = apiserver.get("services", "kubernetes")
    assert svc is not None and svc["spec"]["clusterIP"] == "10.96.0.1" and "selector" not in svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
    (eps,) = slices_of(apiserver, "kubernetes")
    assert eps["endpoints"] == [{"addresses": ["172.18.0.1"], "conditions": {"ready": True}}]
    assert eps["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
    assert apiserver.get("endpoints", "kubernetes")["subsets"] == [
        {"addresses": [{"ip": "172.18.0.1"}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}
    ]


# --- ClusterIPs ------------------------------------------------------------------------------------------


def test_cluster_ips_are_allocated_like_kube_apiserver_does(apiserver: APIServer, lab: LabControllers) -> None:
    first = apiserver.create(service("a"))["spec"]
    assert first["clusterIP"] == "10.96.1.1"  # above the static band kept for requested IPs
    assert first["clusterIPs"] == ["10.96.1.1"]
    assert (first["ipFamilies"], first["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    assert apiserver.create(service("b"))["spec"]["clusterIP"] == "10.96.1.2"
    assert apiserver.create(service("c", clusterIP="10.96.0.100"))["spec"]["clusterIPs"] == ["10.96.0.100"]
    headless = apiserver.create(service("d", clusterIP="None", selector={"app": "d"}))["spec"]
    assert headless["clusterIPs"] == ["None"]
    assert (headless["ipFamilies"], headless["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    without_selector = apiserver.create(service("f", clusterIP="None"))["spec"]
    assert (without_selector["ipFamilies"], without_selector["ipFamilyPolicy"]) == (["IPv4"], "RequireDualStack")
    external = apiserver.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "e"},
                                 "spec": {"type": "ExternalName", "externalName": "example.com"}})["spec"]
    assert "clusterIP" not in external and "ipFamilies" not in external


def test_taken_and_out_of_range_cluster_ips_get_the_real_errors(apiserver: APIServer, lab: LabControllers,
                                                                core: Any) -> None:
    apiserver.create(service("web", clusterIP="10.96.0.100"))
    status = rejected(apiserver, service("other", clusterIP="10.96.0.100"))
    assert status["message"] == (
        'Service "other" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.100"}: '
        "failed to allocate IP 10.96.0.100: provided IP is already allocated"
    )
    assert status["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "spec.clusterIPs",
        "message": 'Invalid value: []string{"10.96.0.100"}: '
                   "failed to allocate IP 10.96.0.100: provided IP is already allocated",
    }]
    status = rejected(apiserver, service("other", clusterIP="10.200.0.1"))
    assert status["message"].endswith(
        "failed to allocate IP 10.200.0.1: the provided IP (10.200.0.1) is not in the valid range. "
        "The range of valid IPs is 10.96.0.0/12"
    )
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as excinfo:
        core.create_namespaced_service("default", service("again", clusterIP="10.96.0.1"))
    assert excinfo.value.status == 422 and "provided IP is already allocated" in excinfo.value.body
    assert apiserver.get("services", "other") is None


def test_kubectl_apply_prints_the_real_allocation_error(apiserver: APIServer, lab: LabControllers,
                                                       kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", "-", input=_manifest("web", "10.96.0.100"))
    refused = kubectl.run("apply", "-f", "-", input=_manifest("other", "10.96.0.100"), check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        'The Service "other" is invalid: spec.clusterIPs: Invalid value: []string{"10.96.0.100"}: '
        "failed to allocate IP 10.96.0.100: provided IP is already allocated"
    )
    # Re-applying the manifest a Service was created from keeps what the server allocated.
    kubectl.run("apply", "-f", "-", input=_manifest("auto", ""))
    allocated = apiserver.get("services", "auto")["spec"]["clusterIP"]
    assert kubectl.run("apply", "-f", "-", input=_manifest("auto", "")).stdout.strip() == "service/auto unchanged"
    assert apiserver.get("services", "auto")["spec"]["clusterIP"] == allocated


def _manifest(name: str, cluster_ip: str) -> str:
    ip_line = f"  clusterIP: {cluster_ip}\n" if cluster_ip else ""
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{ip_line}"
            f"  selector:\n    app: {name}\n  ports:\n  - port: 80\n")


def test_cluster_ip_is_immutable_and_kept_when_an_update_leaves_it_out(apiserver: APIServer,
                                                                      lab: LabControllers) -> None:
    created = apiserver.create(service("web"))
    ip = created["spec"]["clusterIP"]
    replacement = service("web", labels={"tier": "front"})
    assert apiserver.update(replacement)["spec"]["clusterIPs"] == [ip]
    status = rejected(apiserver, service("web", clusterIP="10.96.0.200"), "PUT", f"{SERVICES_PATH}/web")
    assert status["message"] == (
        'Service "web" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.96.0.200"}: may not change once set'
    )


def test_addresses_and_ports_are_freed_on_delete_and_reused_last(apiserver: APIServer, lab: LabControllers) -> None:
    pinned = service("pinned", type="NodePort", clusterIP="10.96.0.50")
    pinned["spec"]["ports"][0]["nodePort"] = 30050
    apiserver.create(pinned)
    apiserver.delete("services", "pinned")
    again = apiserver.create({**pinned, "metadata": {"name": "again"}})["spec"]
    assert again["clusterIP"] == "10.96.0.50" and again["ports"][0]["nodePort"] == 30050
    first = apiserver.create(service("a"))["spec"]["clusterIP"]
    apiserver.delete("services", "a")
    assert apiserver.create(service("b"))["spec"]["clusterIP"] != first  # freed values are reused last


# --- NodePorts and load balancers ---------------------------------------------------------------------------


def test_node_ports_are_allocated_kept_and_checked(apiserver: APIServer, lab: LabControllers) -> None:
    auto = apiserver.create(service("auto", type="NodePort"))["spec"]
    assert auto["ports"][0]["nodePort"] == 30086  # above the static band
    assert auto["externalTrafficPolicy"] == "Cluster" and auto["sessionAffinity"] == "None"
    assert auto["internalTrafficPolicy"] == "Cluster" and auto["ports"][0]["protocol"] == "TCP"
    pinned = service("pinned", type="NodePort")
    pinned["spec"]["ports"][0]["nodePort"] = 30080
    assert apiserver.create(pinned)["spec"]["ports"][0]["nodePort"] == 30080
    taken = service("taken", type="NodePort")
    taken["spec"]["ports"][0]["nodePort"] = 30080
    assert rejected(apiserver, taken)["message"] == (
        'Service "taken" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated'
    )
    taken["spec"]["ports"][0]["nodePort"] = 40000
    assert rejected(apiserver, taken)["message"].endswith(
        "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. "
        "The range of valid ports is 30000-32767"
    )
    # An update without nodePort keeps the allocated one; switching to ClusterIP frees it.
    assert apiserver.update(service("auto", type="NodePort"))["spec"]["ports"][0]["nodePort"] == 30086
    as_cluster_ip = apiserver.update(service("auto", type="ClusterIP"))["spec"]
    assert "nodePort" not in as_cluster_ip["ports"][0] and "externalTrafficPolicy" not in as_cluster_ip
    reuse = service("reuse", type="NodePort")
    reuse["spec"]["ports"][0]["nodePort"] = 30086
    assert apiserver.create(reuse)["spec"]["ports"][0]["nodePort"] == 30086


def test_load_balancers_get_an_ingress_ip_from_the_pool(apiserver: APIServer, lab: LabControllers) -> None:
    lb = apiserver.create(service("lb", type="LoadBalancer"))
    assert lb["status"]["loadBalancer"] == {"ingress": [{"ip": "172.18.255.1", "ipMode": "VIP"}]}
    assert lb["spec"]["ports"][0]["nodePort"] and "healthCheckNodePort" not in lb["spec"]
    local = apiserver.create(service("local", type="LoadBalancer", externalTrafficPolicy="Local",
                                     loadBalancerIP="172.18.255.77"))
    assert local["status"]["loadBalancer"]["ingress"][0]["ip"] == "172.18.255.77"
    hc = local["spec"]["healthCheckNodePort"]
    assert 30000 <= hc <= 32767 and hc != local["spec"]["ports"][0]["nodePort"]
    pending = apiserver.create(service("pending", type="LoadBalancer", loadBalancerIP="172.18.255.77"))
    assert pending["status"]["loadBalancer"] == {}  # taken: stays <pending>, as with a cloud controller
    no_ports = apiserver.create(service("no-ports", type="LoadBalancer", allocateLoadBalancerNodePorts=False))
    assert "nodePort" not in no_ports["spec"]["ports"][0]
    # Changing the type releases the IP and the node ports; the pending one can have the IP then.
    cluster_ip = apiserver.update(service("local", type="ClusterIP"))
    assert cluster_ip["status"]["loadBalancer"] == {} and "healthCheckNodePort" not in cluster_ip["spec"]
    assert apiserver.update(service("pending", type="LoadBalancer", loadBalancerIP="172.18.255.77"))[
        "status"]["loadBalancer"]["ingress"][0]["ip"] == "172.18.255.77"
    apiserver.delete("services", "lb")
    assert apiserver.create(service("lb2", type="LoadBalancer", loadBalancerIP="172.18.255.1"))[
        "status"]["loadBalancer"]["ingress"][0]["ip"] == "172.18.255.1"


# --- pods ----------------------------------------------------------------------------------------------------


def test_pods_are_scheduled_round_robin_with_ips_from_their_node(apiserver: APIServer, lab: LabControllers) -> None:
    placed = [apiserver.create(make_pod(f"p{i}")) for i in range(4)]
    assert [p["spec"]["nodeName"] for p in placed] == ["node1", "node2", "node3", "node1"]
    assert [p["status"]["podIP"] for p in placed] == ["10.244.1.2", "10.244.2.2", "10.244.3.2", "10.244.1.3"]
    st = placed[1]["status"]
    assert st["podIPs"] == [{"ip": "10.244.2.2"}] and st["hostIP"] == "172.18.0.3"
    assert st["hostIPs"] == [{"ip": "172.18.0.3"}] and st["phase"] == "Pending"
    pinned = apiserver.create(make_pod("pinned", nodeName="node3"))
    assert pinned["status"]["podIP"] == "10.244.3.3"
    apiserver.delete("pods", "p0", "default")
    assert pod_terminated(apiserver, "default", "p0")
    apiserver.create(make_pod("next", nodeName="node1"))
    assert apiserver.get("pods", "next")["status"]["podIP"] == "10.244.1.4"  # freed IPs are reused last


def test_set_pod_ready_makes_kubectl_show_running(apiserver: APIServer, lab: LabControllers,
                                                  kubectl: Kubectl) -> None:
    apiserver.create(make_pod("echo-1"))
    assert kubectl.run("get", "pods").stdout.split()[5:8] == ["echo-1", "0/1", "ContainerCreating"]
    pod = set_pod_ready(apiserver, "default", "echo-1", True)
    assert [c["type"] for c in pod["status"]["conditions"]] == [
        "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
    assert pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert kubectl.run("get", "pods").stdout.split()[5:8] == ["echo-1", "1/1", "Running"]
    set_pod_ready(apiserver, "default", "echo-1", False)
    assert kubectl.run("get", "pods").stdout.split()[5:8] == ["echo-1", "0/1", "Running"]
    assert apiserver.get("pods", "echo-1")["status"]["podIP"] == "10.244.1.2"  # status writes keep the IP
    with pytest.raises(APIError) as excinfo:
        set_pod_ready(apiserver, "default", "missing", True)
    assert excinfo.value.code == 404


# --- EndpointSlices ------------------------------------------------------------------------------------------


def test_endpoint_slice_for_a_numeric_target_port(apiserver: APIServer, lab: LabControllers) -> None:
    before = int(time.time())  # whole seconds, like the trigger time read below
    svc = apiserver.create(web_service(labels={"tier": "front"}))
    for i in range(3):
        apiserver.create(make_pod(f"web-{i}", {"app": "web"}))
    apiserver.create(make_pod("other", {"app": "other"}))
    set_pod_ready(apiserver, "default", "web-0", True)
    settle(lab)
    after = time.time()
    (eps,) = slices_of(apiserver, "web")
    meta = eps["metadata"]
    assert re.fullmatch(r"web-[a-z0-9]{5}", meta["name"]) and meta["generateName"] == "web-"
    assert meta["labels"] == {"tier": "front", "kubernetes.io/service-name": "web",
                              "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                        "uid": svc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    trigger = meta["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", trigger)
    assert before <= calendar.timegm(time.strptime(trigger[:19], "%Y-%m-%dT%H:%M:%S")) <= after  # when it changed
    assert eps["addressType"] == "IPv4"
    assert eps["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    pod0 = apiserver.get("pods", "web-0")
    assert eps["endpoints"][0] == {
        "addresses": ["10.244.1.2"], "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": "node1", "zone": "zone-a",
        "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-0", "uid": pod0["metadata"]["uid"]},
    }
    assert [(e["addresses"], e["zone"], e["conditions"]["ready"]) for e in eps["endpoints"][1:]] == [
        (["10.244.2.2"], "zone-b", False), (["10.244.3.2"], "zone-a", False)]


def test_named_target_ports_leave_out_pods_without_that_port(apiserver: APIServer, lab: LabControllers) -> None:
    apiserver.create(web_service(target="http"))
    apiserver.create(make_pod("named", {"app": "web"}, ports=[{"name": "http", "containerPort": 8080}]))
    apiserver.create(make_pod("other-port", {"app": "web"}, ports=[{"name": "http", "containerPort": 9090}]))
    apiserver.create(make_pod("unnamed", {"app": "web"}, ports=[{"containerPort": 8080}]))
    settle(lab)
    by_ports = {str(s["ports"]): sorted(e["targetRef"]["name"] for e in s["endpoints"])
                for s in slices_of(apiserver, "web")}
    assert by_ports == {
        str([{"name": "http", "port": 8080, "protocol": "TCP"}]): ["named"],
        str([{"name": "http", "port": 9090, "protocol": "TCP"}]): ["other-port"],
        "None": ["unnamed"],
    }
    subsets = apiserver.get("endpoints", "web")["subsets"]
    assert {tuple(p["port"] for p in s["ports"]) for s in subsets} == {(8080,), (9090,)}


def test_slices_are_updated_in_place_and_unchanged_ones_are_not_rewritten(apiserver: APIServer,
                                                                          lab: LabControllers) -> None:
    apiserver.create(web_service())
    apiserver.create(make_pod("web-0", {"app": "web"}))
    settle(lab)
    (before,) = slices_of(apiserver, "web")
    set_pod_ready(apiserver, "default", "web-0", True)
    settle(lab)
    (after,) = slices_of(apiserver, "web")
    assert after["metadata"]["name"] == before["metadata"]["name"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["endpoints"][0]["conditions"]["ready"] is True
    apiserver.patch("pods", "web-0", {"metadata": {"labels": {"app": "web", "extra": "1"}}})
    settle(lab)
    assert slices_of(apiserver, "web") == [after]  # nothing an endpoint shows changed: no write
    # Someone else's edit of a managed slice is repaired.
    tampered = apiserver.patch("endpointslices", after["metadata"]["name"], {"endpoints": []})
    settle(lab)
    assert slices_of(apiserver, "web")[0]["endpoints"] == after["endpoints"]
    assert tampered["metadata"]["resourceVersion"] != slices_of(apiserver, "web")[0]["metadata"]["resourceVersion"]


def test_a_change_reaches_the_slices_fast(apiserver: APIServer, lab: LabControllers) -> None:
    apiserver.create(web_service())
    apiserver.create(make_pod("web-0", {"app": "web"}))
    settle(lab)
    set_pod_ready(apiserver, "default", "web-0", True)
    # Fast: the pod's change queues the work at once (observers run with the write), so the
    # slice is right as soon as that work is done; no timer or resync is waited for.
    settle(lab)
    assert endpoints_by_pod(apiserver, "web")["web-0"]["conditions"]["ready"]


def test_150_pods_make_two_slices_and_one_endpoints_object(apiserver: APIServer, lab: LabControllers) -> None:
    apiserver.create(web_service())
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    apiserver.load({**make_pod(f"web-{i:03d}", {"app": "web"}), "status": ready} for i in range(150))
    settle(lab)
    slices = slices_of(apiserver, "web")
    assert sorted(len(s["endpoints"]) for s in slices) == [50, 100]
    ips = [ep["addresses"][0] for s in slices for ep in s["endpoints"]]
    assert len(set(ips)) == 150 and all(ep["conditions"]["ready"] for s in slices for ep in s["endpoints"])
    assert {apiserver.get("pods", f"web-{i:03d}")["spec"]["nodeName"] for i in range(3)} == {"node1", "node2", "node3"}
    (subset,) = apiserver.get("endpoints", "web")["subsets"]
    assert len(subset["addresses"]) == 150 and "notReadyAddresses" not in subset


def test_topology_hints_for_prefer_close(apiserver: APIServer, lab: LabControllers) -> None:
    apiserver.create(web_service(trafficDistribution="PreferClose"))
    for i in range(3):
        apiserver.create(make_pod(f"web-{i}", {"app": "web"}))
        set_pod_ready(apiserver, "default", f"web-{i}", True)
    apiserver.create(make_pod("web-3", {"app": "web"}))  # not ready: no hint
    settle(lab)
    hints = {name: ep.get("hints") for name, ep in endpoints_by_pod(apiserver, "web").items()}
    assert hints == {"web-0": {"forZones": [{"name": "zone-a"}]}, "web-1": {"forZones": [{"name": "zone-b"}]},
                     "web-2": {"forZones": [{"name": "zone-a"}]}, "web-3": None}


def test_selectorless_services_are_left_alone_and_deleted_services_lose_their_slices(
        apiserver: APIServer, lab: LabControllers) -> None:
    apiserver.create(service("manual"))
    apiserver.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
                      "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": [{"port": 80}]})
    apiserver.create(web_service())
    apiserver.create(make_pod("web-0", {"app": "web"}))
    settle(lab)
    assert [s["metadata"]["name"] for s in slices_of(apiserver, "manual")] == ["manual-1"]
    assert apiserver.get("endpoints", "manual") is None
    (with_pod,) = slices_of(apiserver, "web")
    assert with_pod["endpoints"]
    apiserver.delete("pods", "web-0", "default")
    pod_terminated(apiserver, "default", "web-0")
    settle(lab)
    (placeholder,) = slices_of(apiserver, "web")  # a Service without endpoints keeps an empty slice
    assert placeholder["endpoints"] is None and placeholder["ports"] is None
    apiserver.delete("services", "web")
    settle(lab)
    assert slices_of(apiserver, "web") == [] and apiserver.get("endpoints", "web") is None
    assert [s["metadata"]["name"] for s in slices_of(apiserver, "manual")] == ["manual-1"]


# --- graceful pod deletion ------------------------------------------------------------------------------------


def test_graceful_deletion_keeps_a_terminating_pod_until_its_grace_period_ends(apiserver: APIServer,
                                                                              lab: LabControllers) -> None:
    apiserver.create(web_service())
    apiserver.create(make_pod("web-0", {"app": "web"}, grace=1))
    set_pod_ready(apiserver, "default", "web-0", True)
    resp = raw_request(apiserver, "DELETE", f"{PODS_PATH}/web-0")
    deleted_at = time.monotonic()
    assert resp.status == 200
    meta = resp.json()["metadata"]
    assert meta["deletionGracePeriodSeconds"] == 1 and meta["deletionTimestamp"]
    assert apiserver.get("pods", "web-0")["metadata"]["deletionTimestamp"] == meta["deletionTimestamp"]
    settle(lab)
    assert endpoints_by_pod(apiserver, "web")["web-0"]["conditions"] == {
        "ready": False, "serving": True, "terminating": True}
    assert "subsets" not in apiserver.get("endpoints", "web")  # legacy Endpoints drop terminating pods
    wait_for(lambda: apiserver.get("pods", "web-0") is None, what="the pod to go when its grace period ends")
    assert time.monotonic() - deleted_at > 0.9  # kept for its 1 s grace period
    settle(lab)
    assert endpoints_by_pod(apiserver, "web") == {}


def test_deleting_again_can_only_shorten_the_grace_period(apiserver: APIServer, lab: LabControllers,
                                                          core: Any) -> None:
    from kubernetes.client import V1DeleteOptions

    apiserver.create(make_pod("slow"))
    core.delete_namespaced_pod("slow", "default")
    assert apiserver.get("pods", "slow")["metadata"]["deletionGracePeriodSeconds"] == 30
    core.delete_namespaced_pod("slow", "default", body=V1DeleteOptions(grace_period_seconds=60))
    assert apiserver.get("pods", "slow")["metadata"]["deletionGracePeriodSeconds"] == 30
    core.delete_namespaced_pod("slow", "default", body=V1DeleteOptions(grace_period_seconds=10))
    assert apiserver.get("pods", "slow")["metadata"]["deletionGracePeriodSeconds"] == 10
    core.delete_namespaced_pod("slow", "default", grace_period_seconds=0)
    assert apiserver.get("pods", "slow") is None
    apiserver.create(make_pod("runtime-done"))
    assert not pod_terminated(apiserver, "default", "runtime-done")  # not terminating: stays
    apiserver.delete("pods", "runtime-done")
    assert pod_terminated(apiserver, "default", "runtime-done")
    assert apiserver.get("pods", "runtime-done") is None
    apiserver.create(service("svc"))
    apiserver.delete("services", "svc")  # other kinds are deleted at once
    assert apiserver.get("services", "svc") is None


def test_kubectl_delete_pod_waits_for_the_removal(apiserver: APIServer, lab: LabControllers,
                                                  kubectl: Kubectl) -> None:
    apiserver.create(make_pod("echo-1", grace=1))
    start = time.monotonic()
    assert kubectl.run("delete", "pod", "echo-1").stdout.strip() == 'pod "echo-1" deleted'
    assert time.monotonic() - start > 0.5 and apiserver.get("pods", "echo-1") is None
    apiserver.create(make_pod("echo-2"))
    forced = kubectl.run("delete", "pod", "echo-2", "--grace-period=0", "--force")
    assert forced.stdout.strip() == 'pod "echo-2" force deleted' and apiserver.get("pods", "echo-2") is None


# --- Endpoints ---------------------------------------------------------------------------------------------------


def test_kubectl_get_endpoints_shows_the_pods(apiserver: APIServer, lab: LabControllers, kubectl: Kubectl) -> None:
    apiserver.create(web_service())
    for i in range(2):
        apiserver.create(make_pod(f"web-{i}", {"app": "web"}))
        set_pod_ready(apiserver, "default", f"web-{i}", True)
    apiserver.create(make_pod("web-2", {"app": "web"}))
    settle(lab)
    rows = dict(line.split()[:2] for line in kubectl.run("get", "endpoints").stdout.splitlines()[1:])
    assert rows == {"kubernetes": "172.18.0.1:6443", "web": "10.244.1.2:8080,10.244.2.2:8080"}
    (subset,) = apiserver.get("endpoints", "web")["subsets"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.244.3.2"]
    assert subset["addresses"][0]["targetRef"]["name"] == "web-0" and subset["addresses"][0]["nodeName"] == "node1"


# --- restarts --------------------------------------------------------------------------------------------------


def test_state_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "apiserver"
    first = APIServer(state_dir=state).start()
    try:
        controllers = LabControllers(first, SPEC).start()
        a = first.create(service("a", type="NodePort"))["spec"]
        first.create(web_service())
        first.create(make_pod("web-0", {"app": "web"}))
        first.create(make_pod("going", grace=1))
        first.delete("pods", "going")
        assert controllers.wait_idle(TIMEOUT)
        slices = slices_of(first, "web")
        controllers.stop()
    finally:
        first.stop()
    second = APIServer(state_dir=state).start()
    try:
        second.load([service("loaded")])  # stored while no controller runs: allocated at start
        controllers = LabControllers(second, SPEC).start()
        assert controllers.wait_idle(TIMEOUT)
        b = second.create(service("b", type="NodePort"))["spec"]
        assert b["clusterIP"] not in (a["clusterIP"], "10.96.0.1")
        assert b["ports"][0]["nodePort"] != a["ports"][0]["nodePort"]
        assert second.get("services", "loaded")["spec"]["clusterIP"] not in (a["clusterIP"], b["clusterIP"], None)
        assert second.create(make_pod("web-1", nodeName="node1"))["status"]["podIP"] != "10.244.1.2"
        assert controllers.wait_idle(TIMEOUT)
        assert slices_of(second, "web") == slices  # converged already: nothing rewritten
        wait_for(lambda: second.get("pods", "going") is None, what="the grace period of `going` to end")
        controllers.stop()
    finally:
        second.stop()


def test_the_kubernetes_service_comes_back_when_deleted(apiserver: APIServer, lab: LabControllers) -> None:
    apiserver.delete("services", "kubernetes")
    apiserver.delete("endpointslices", "kubernetes")
    apiserver.patch("endpoints", "kubernetes", {"subsets": None})
    settle(lab)
    assert apiserver.get("services", "kubernetes")["spec"]["clusterIP"] == "10.96.0.1"
    assert slices_of(apiserver, "kubernetes")[0]["endpoints"][0]["addresses"] == ["172.18.0.1"]
    assert apiserver.get("endpoints", "kubernetes")["subsets"][0]["addresses"] == [{"ip": "172.18.0.1"}]
