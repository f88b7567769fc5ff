"""Fixtures and builders for tests that talk to the lab API server.

Import the fixtures a test module needs (`from apiserver_fixtures import apiserver, ...`).
Every server is stopped in a `finally`, so a failing test leaves no thread or socket behind.
`Kubectl` runs the real kubectl with an isolated HOME, KUBECONFIG and cache directory.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

# The nginx NodePort Service used throughout the docs.
NGINX_SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: nginx
  namespace: default
  labels:
    app: nginx
spec:
  type: NodePort
  clusterIP: 10.96.0.100
  selector:
    app: nginx
  ports:
  - name: http
    port: 80
    targetPort: 80
    nodePort: 30080
"""
NGINX_SERVICE: dict[str, Any] = yaml.safe_load(NGINX_SERVICE_YAML)


def nginx_service() -> dict[str, Any]:
    return copy.deepcopy(NGINX_SERVICE)


def service(name: str, namespace: str = "default", labels: dict[str, str] | None = None, port: int = 80,
            **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": port}], **spec},
    }


def endpoint_slice(name: str, service_name: str, addresses: list[str], namespace: str = "default",
                   port: int = 80) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": f"node{i + 1}"}
            for i, ip in enumerate(addresses)
        ],
    }


def node(name: str, internal_ip: str, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {
                "kubeletVersion": "v1.32.4", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "kernelVersion": "6.18.44", "containerRuntimeVersion": "containerd://1.7.24",
                "architecture": "amd64", "operatingSystem": "linux", "bootID": "", "kubeProxyVersion": "",
                "machineID": "", "systemUUID": "",
            },
        },
    }


def pod(name: str, ip: str, node_name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node_name, "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]},
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "web", "ready": True, "restartCount": 0, "image": "nginx:1.27", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }],
        },
    }


@pytest.fixture
def apiserver() -> Iterator[APIServer]:
    server = APIServer(bookmark_interval=0.2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api_client(apiserver: APIServer) -> Iterator[Any]:
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(apiserver.kubeconfig_path), persist_config=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def core(api_client: Any) -> Any:
    from kubernetes.client import CoreV1Api

    return CoreV1Api(api_client)


@pytest.fixture
def discovery(api_client: Any) -> Any:
    from kubernetes.client import DiscoveryV1Api

    return DiscoveryV1Api(api_client)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(server: APIServer, method: str, path: str, body: Any = None, token: str | None = "",
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> RawResponse:
    """One HTTPS request without the client library (token "" = the server's, None = none)."""
    ctx = ssl.create_default_context(cafile=str(server.ca_path))
    all_headers = {"Accept": "application/json", **(headers or {})}
    token = server.token if token == "" else token
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return RawResponse(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        return RawResponse(err.code, dict(err.headers), err.read())


class Kubectl:
    """The real kubectl, isolated from the user's config and caches."""

    def __init__(self, server: APIServer, home: Path) -> None:
        self.server = server
        self.home = home
        self.binary = shutil.which("kubectl") or "kubectl"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "KUBECONFIG": str(server.kubeconfig_path),
            "LANG": "C.UTF-8",
        }

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--cache-dir", str(self.home / "cache"), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        cmd = [self.binary, "--cache-dir", str(self.home / "cache"), *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


@pytest.fixture
def kubectl(apiserver: APIServer, tmp_path: Path) -> Kubectl:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    return Kubectl(apiserver, tmp_path / "kubectl-home")


class LocalExecRunner:
    """A stateful fake container runtime for `pods/exec`: runs argv on this machine (no shell,
    its own process group) and remembers every call and process, so tests can check what ran
    and that an abandoned command was killed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str], bool]] = []  # (namespace/pod, container, argv, stdin)
        self.processes: list[subprocess.Popen[bytes]] = []

    def __call__(self, pod: dict[str, Any], container: str, argv: Any, stdin: bool) -> subprocess.Popen[bytes]:
        meta = pod["metadata"]
        self.calls.append((f"{meta['namespace']}/{meta['name']}", container, list(argv), stdin))
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def exec_runner(apiserver: APIServer) -> Iterator[LocalExecRunner]:
    """The `apiserver` fixture's server, given a LocalExecRunner for `pods/exec`."""
    runner = LocalExecRunner()
    apiserver.exec_runner = runner
    try:
        yield runner
    finally:
        runner.close()
