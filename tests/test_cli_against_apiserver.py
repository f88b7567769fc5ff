"""CLI commands against the lab API server: the happy path and every way the API can fail."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from apiserver_fixtures import endpoint_slice, nginx_service

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer


@pytest.fixture
def server() -> Iterator[APIServer]:
    srv = APIServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def proxyctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubectl_proxyctl", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_endpoints_of_the_nginx_service(server: APIServer) -> None:
    server.create(nginx_service())
    server.create(endpoint_slice("nginx-abc", "nginx", ["10.244.1.2", "10.244.2.2"], port=80))
    done = proxyctl("endpoints", "svc/nginx", "--kubeconfig", str(server.kubeconfig_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "PORT", "ENDPOINT"]
    assert [ln.split()[2] for ln in lines[1:]] == ["10.244.1.2:80", "10.244.2.2:80"]


def test_unknown_service_exits_1(server: APIServer) -> None:
    done = proxyctl("endpoints", "svc/ghost", "--kubeconfig", str(server.kubeconfig_path))
    assert done.returncode == 1
    assert done.stderr.strip() == 'error: service "ghost" not found in namespace "default"'


def test_wrong_token_exits_3_with_a_clear_message(server: APIServer, tmp_path: Path) -> None:
    cfg = yaml.safe_load(server.kubeconfig_path.read_text())
    cfg["users"][0]["user"]["token"] = "not-the-token"
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump(cfg))
    done = proxyctl("endpoints", "-A", "--kubeconfig", str(bad))
    assert done.returncode == 3
    assert "rejected our credentials (401 Unauthorized)" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_api_exits_3_within_the_request_timeout(server: APIServer, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    cfg = yaml.safe_load(server.kubeconfig_path.read_text())
    cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump(cfg))
    done = proxyctl("endpoints", "--kubeconfig", str(bad), "--request-timeout", "2s", timeout=15)
    assert done.returncode == 3
    assert "connection refused" in done.stderr and "Traceback" not in done.stderr


def test_unknown_context_is_a_config_error(server: APIServer) -> None:
    done = proxyctl("endpoints", "--kubeconfig", str(server.kubeconfig_path), "--context", "nope")
    assert done.returncode == 2 and "nope" in done.stderr


def test_namespace_defaults_to_the_contexts_namespace(server: APIServer, tmp_path: Path) -> None:
    cfg = yaml.safe_load(server.kubeconfig_path.read_text())
    cfg["contexts"][0]["context"]["namespace"] = "kube-system"
    k = tmp_path / "kubeconfig"
    k.write_text(yaml.safe_dump(cfg))
    server.create(nginx_service())
    done = proxyctl("endpoints", "svc/nginx", "--kubeconfig", str(k))
    assert done.returncode == 1 and 'namespace "kube-system"' in done.stderr
