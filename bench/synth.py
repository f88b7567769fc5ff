"""Synthetic clusters for benchmarks: N Services with M endpoints each, as API objects."""

from __future__ import annotations

from typing import Any


def service(i: int, namespace: str = "bench", node_port: bool = False) -> dict[str, Any]:
    ip = f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    spec: dict[str, Any] = {
        "type": "NodePort" if node_port else "ClusterIP",
        "clusterIP": ip, "clusterIPs": [ip], "selector": {"app": f"svc-{i}"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                   **({"nodePort": 30000 + i % 2768} if node_port else {})}],
    }
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i}", "namespace": namespace, "labels": {"app": f"svc-{i}"}},
            "spec": spec}


def endpoint_slice(i: int, endpoints: int, namespace: str = "bench", nodes: int = 3) -> dict[str, Any]:
    eps = []
    for j in range(endpoints):
        n = i * endpoints + j
        eps.append({
            "addresses": [f"10.{128 + n // 65536}.{(n // 256) % 256}.{n % 256}"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": f"node{j % nodes + 1}",
            "targetRef": {"kind": "Pod", "name": f"svc-{i}-{j}", "namespace": namespace},
        })
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{i}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": f"svc-{i}",
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps}


def node(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"node{i}", "labels": {"kubernetes.io/hostname": f"node{i}"}},
            "spec": {"podCIDR": f"10.244.{i}.0/24", "podCIDRs": [f"10.244.{i}.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.0.{i + 1}"}]}}


def cluster(services: int, endpoints: int, namespace: str = "bench", nodes: int = 3) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [node(n + 1) for n in range(nodes)]
    for i in range(services):
        objs.append(service(i, namespace))
        objs.append(endpoint_slice(i, endpoints, namespace, nodes))
    return objs


def moved_endpoint_slice(i: int, endpoints: int, serial: int = 0, namespace: str = "bench",
                         nodes: int = 3) -> dict[str, Any]:
    """Service i's EndpointSlice (as `cluster` makes it) with its first endpoint moved to a new
    address, 10.200.x.y, different for every `serial`: one endpoint change."""
    sl = endpoint_slice(i, endpoints, namespace, nodes)
    sl["endpoints"][0]["addresses"] = [f"10.{200 + serial // 65536 % 50}.{serial // 256 % 256}.{serial % 256}"]
    return sl
