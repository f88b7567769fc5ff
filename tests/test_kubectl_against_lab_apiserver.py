"""The real, unmodified kubectl against the lab API server.

Each test gets its own server and a kubectl with an isolated HOME, KUBECONFIG and cache
directory (see apiserver_fixtures.Kubectl). Validation stays on (no --validate=false):
the server advertises server-side field validation in /openapi/v3.
"""

from __future__ import annotations

import logging

import pytest
import yaml
from apiserver_fixtures import apiserver, kubectl  # noqa: F401 (fixtures)
from apiserver_fixtures import NGINX_SERVICE_YAML, Kubectl, endpoint_slice, node, pod

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from waiting import TIMEOUT, wait_for

pytestmark = pytest.mark.kubectl

SLICE_YAML = yaml.safe_dump(endpoint_slice("nginx-7x2kq", "nginx", ["10.244.1.2", "10.244.2.2", "10.244.3.2"]))


def rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


def apply_nginx(kubectl: Kubectl, manifest: str = NGINX_SERVICE_YAML) -> str:
    return kubectl.run("apply", "-f", "-", input=manifest).stdout.strip()


def test_apply_then_get_svc_prints_a_real_table(kubectl: Kubectl) -> None:
    assert apply_nginx(kubectl) == "service/nginx created"
    header, row = kubectl.run("get", "svc").stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert row.split()[:5] == ["nginx", "NodePort", "10.96.0.100", "<none>", "80:30080/TCP"]
    assert header.index("TYPE") == row.index("NodePort")  # columns are aligned by kubectl


def test_reapply_with_a_changed_label_is_a_strategic_merge(kubectl: Kubectl) -> None:
    apply_nginx(kubectl)
    changed = NGINX_SERVICE_YAML.replace("    app: nginx\nspec:", "    app: nginx\n    tier: web\nspec:")
    assert apply_nginx(kubectl, changed) == "service/nginx configured"
    assert apply_nginx(kubectl, changed) == "service/nginx unchanged"
    svc = kubectl.json("get", "svc", "nginx")
    assert svc["metadata"]["labels"] == {"app": "nginx", "tier": "web"}
    assert svc["spec"]["ports"] == [{"name": "http", "nodePort": 30080, "port": 80, "protocol": "TCP", "targetPort": 80}]
    with_port = changed.replace("    nodePort: 30080\n", "    nodePort: 30080\n  - name: https\n    port: 443\n    targetPort: 8443\n")
    assert apply_nginx(kubectl, with_port) == "service/nginx configured"
    assert [p["port"] for p in kubectl.json("get", "svc", "nginx")["spec"]["ports"]] == [80, 443]


def test_get_svc_wide_yaml_and_json(kubectl: Kubectl) -> None:
    apply_nginx(kubectl)
    header, row = rows(kubectl.run("get", "svc", "-o", "wide").stdout)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert row[-1] == "app=nginx"
    as_yaml = yaml.safe_load(kubectl.run("get", "svc", "nginx", "-o", "yaml").stdout)
    assert as_yaml["spec"]["clusterIP"] == "10.96.0.100" and as_yaml["kind"] == "Service"
    as_list = kubectl.json("get", "svc")
    assert as_list["kind"] == "List" and [i["metadata"]["name"] for i in as_list["items"]] == ["nginx"]
    assert kubectl.run("get", "svc", "-o", "name").stdout.split() == ["service/nginx"]
    assert kubectl.run("get", "services", "-A").stdout.split()[:2] == ["NAMESPACE", "NAME"]


def test_create_and_get_endpointslices(kubectl: Kubectl) -> None:
    assert kubectl.run("create", "-f", "-", input=SLICE_YAML).stdout.strip() == (
        "endpointslice.discovery.k8s.io/nginx-7x2kq created"
    )
    header, row = rows(kubectl.run("get", "endpointslices").stdout)
    assert header == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert row[:4] == ["nginx-7x2kq", "IPv4", "80", "10.244.1.2,10.244.2.2,10.244.3.2"]
    as_yaml = yaml.safe_load(kubectl.run("get", "endpointslices", "-o", "yaml").stdout)
    (item,) = as_yaml["items"]
    assert item["apiVersion"] == "discovery.k8s.io/v1" and item["addressType"] == "IPv4"
    assert [e["addresses"] for e in item["endpoints"]] == [["10.244.1.2"], ["10.244.2.2"], ["10.244.3.2"]]
    assert item["metadata"]["labels"]["kubernetes.io/service-name"] == "nginx"


def test_get_endpoints_nodes_pods_and_namespaces(apiserver: APIServer, kubectl: Kubectl) -> None:
    apiserver.create({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "nginx", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": f"10.244.{i}.2"} for i in range(1, 5)], "ports": [{"port": 80}]}],
    })
    header, row = kubectl.run("get", "endpoints").stdout.splitlines()
    assert header.split() == ["NAME", "ENDPOINTS", "AGE"]
    assert row.startswith("nginx   10.244.1.2:80,10.244.2.2:80,10.244.3.2:80 + 1 more...   ")
    apiserver.create(node("node1", "172.18.0.2", labels={"node-role.kubernetes.io/control-plane": ""}))
    header_cells, node_row = rows(kubectl.run("get", "nodes").stdout)
    assert header_cells == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert node_row[:3] == ["node1", "Ready", "control-plane"] and node_row[4] == "v1.32.4"
    wide_header = kubectl.run("get", "nodes", "-o", "wide").stdout.splitlines()[0].split()
    assert wide_header[5:] == ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    apiserver.create(pod("nginx-1", "10.244.1.2", "node1", app="nginx"))
    pod_header, pod_row = rows(kubectl.run("get", "pods", "-o", "wide").stdout)
    assert pod_header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    assert pod_row[:4] == ["nginx-1", "1/1", "Running", "0"] and pod_row[5:] == ["10.244.1.2", "node1", "<none>", "<none>"]
    namespaces = [r[0] for r in rows(kubectl.run("get", "ns").stdout)[1:]]
    assert namespaces == ["default", "kube-node-lease", "kube-public", "kube-system"]


def test_label_patch_and_delete(kubectl: Kubectl) -> None:
    apply_nginx(kubectl)
    assert kubectl.run("label", "svc", "nginx", "env=prod").stdout.strip() == "service/nginx labeled"
    refused = kubectl.run("label", "svc", "nginx", "env=dev", check=False)
    assert refused.returncode == 1 and "--overwrite is false" in refused.stderr
    kubectl.run("label", "svc", "nginx", "env-")
    kubectl.run("patch", "svc", "nginx", "-p", '{"spec":{"ports":[{"port":80,"targetPort":8080}]}}')
    kubectl.run("patch", "svc", "nginx", "--type=merge", "-p", '{"metadata":{"labels":{"m":"1"}}}')
    kubectl.run("patch", "svc", "nginx", "--type=json", "-p", '[{"op":"add","path":"/metadata/labels/j","value":"2"}]')
    svc = kubectl.json("get", "svc", "nginx")
    assert svc["metadata"]["labels"] == {"app": "nginx", "m": "1", "j": "2"}
    assert svc["spec"]["ports"][0]["targetPort"] == 8080 and svc["spec"]["ports"][0]["name"] == "http"
    assert kubectl.run("get", "svc", "-l", "j=2", "-o", "name").stdout.split() == ["service/nginx"]
    assert kubectl.run("delete", "svc", "nginx").stdout.strip() == 'service "nginx" deleted'
    missing = kubectl.run("get", "svc", "nginx", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): services "nginx" not found'


def test_server_side_validation_errors_reach_kubectl(kubectl: Kubectl) -> None:
    broken = NGINX_SERVICE_YAML.replace("port: 80\n", "port: 0\n")
    result = kubectl.run("apply", "-f", "-", input=broken, check=False)
    assert result.returncode == 1
    assert 'The Service "nginx" is invalid: spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive' in result.stderr


def test_api_resources_and_version(kubectl: Kubectl) -> None:
    table = rows(kubectl.run("api-resources").stdout)
    by_name = {r[0]: r for r in table[1:]}
    assert by_name["services"][1:] == ["svc", "v1", "true", "Service"]
    assert by_name["endpointslices"][1:] == ["discovery.k8s.io/v1", "true", "EndpointSlice"]
    assert kubectl.run("version", "-o", "json").returncode == 0


def test_get_svc_watch(kubectl: Kubectl, apiserver: APIServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kubectl_proxyctl.lab.apiserver.httpserver")  # its access log
    watcher = kubectl.popen("get", "svc", "-w", f"--request-timeout={int(TIMEOUT)}s")
    printed = ""
    try:
        # kubectl lists, then watches from the list's resourceVersion: once its watch request
        # has reached the server, it prints every change made after that.
        wait_for(lambda: any("watch=true" in r.getMessage() for r in caplog.records), what="kubectl's watch request")
        apply_nginx(kubectl)
        kubectl.run("label", "svc", "nginx", "seen=yes")
        kubectl.run("delete", "svc", "nginx")
        assert watcher.stdout is not None
        for _ in range(4):  # the header and a row for each change (the request timeout bounds the wait)
            printed += watcher.stdout.readline()
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=TIMEOUT)
    lines = rows(printed + out)
    assert lines[0] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert [line[:5] for line in lines[1:]] == [["nginx", "NodePort", "10.96.0.100", "<none>", "80:30080/TCP"]] * 3


def test_get_with_many_objects_pages_through_the_table(apiserver: APIServer, kubectl: Kubectl) -> None:
    apiserver.load(yaml.safe_load(NGINX_SERVICE_YAML.replace("name: nginx", f"name: web-{i:04d}").replace(
        "clusterIP: 10.96.0.100", f"clusterIP: 10.96.{i // 250}.{i % 250 + 1}")) for i in range(1200))
    table = rows(kubectl.run("get", "svc", "--chunk-size=500").stdout)
    assert len(table) == 1201 and table[1][0] == "web-0000" and table[-1][0] == "web-1199"
    assert len(kubectl.json("get", "svc")["items"]) == 1200


def test_unknown_fields_fail_strict_validation_like_a_real_cluster(kubectl: Kubectl) -> None:
    typo = NGINX_SERVICE_YAML.replace("  type: NodePort\n", "  type: NodePort\n  selektor: {app: nginx}\n")
    strict = kubectl.run("apply", "-f", "-", input=typo, check=False)
    assert strict.returncode == 1
    assert 'strict decoding error: unknown field "spec.selektor"' in strict.stderr
    warned = kubectl.run("apply", "-f", "-", "--validate=warn", input=typo)
    assert warned.stdout.strip() == "service/nginx created"
    assert 'Warning: unknown field "spec.selektor"' in warned.stderr
    assert "selektor" not in kubectl.json("get", "svc", "nginx")["spec"]


def test_kubectl_create_namespace_and_service_send_protobuf(kubectl: Kubectl) -> None:
    assert kubectl.run("create", "namespace", "team-a").stdout.strip() == "namespace/team-a created"
    assert kubectl.json("get", "ns", "team-a")["status"] == {"phase": "Active"}
    created = kubectl.run("create", "service", "nodeport", "web", "--tcp=80:8080", "--node-port=30090", "-n", "team-a")
    assert created.stdout.strip() == "service/web created"
    header, row = rows(kubectl.run("get", "svc", "-n", "team-a", "-o", "wide").stdout)
    assert row[:5] == ["web", "NodePort", "<none>", "<none>", "80:30090/TCP"] and row[-1] == "app=web"
    assert kubectl.run("delete", "namespace", "team-a").stdout.strip() == 'namespace "team-a" deleted'
    assert kubectl.run("get", "svc", "-A", "-o", "name").stdout == ""


def test_diff_and_server_side_dry_run(kubectl: Kubectl, apiserver: APIServer) -> None:
    apply_nginx(kubectl)
    rv = apiserver.resource_version
    changed = NGINX_SERVICE_YAML.replace("    app: nginx\nspec:", "    app: nginx\n    tier: web\nspec:")
    diff = kubectl.run("diff", "-f", "-", input=changed, check=False)
    assert diff.returncode == 1  # differences found
    changes = [line for line in diff.stdout.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changes == ["+    tier: web"]
    dry = kubectl.run("apply", "-f", "-", "--dry-run=server", input=changed)
    assert dry.stdout.strip() == "service/nginx configured (server dry run)"
    assert apiserver.resource_version == rv and "tier" not in apiserver.get("svc", "nginx")["metadata"]["labels"]
