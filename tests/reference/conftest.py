"""The upstream kube-proxy binary for the reference tests: `kube_proxy_binary` (session
scope), built once per version by tests/referencebuild.py (or `$PROXYCTL_KUBE_PROXY`)."""

from __future__ import annotations

import pytest

from referencebuild import kube_proxy_path


@pytest.fixture(scope="session")
def kube_proxy_binary() -> str:
    return kube_proxy_path()
