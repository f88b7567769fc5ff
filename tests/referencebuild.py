"""The upstream kube-proxy for the tests that run it (tests/reference/, and the IPVS twin in
the VM), built once per version.

`kube_proxy_path()` runs `tests/reference/build-kube-proxy`, which builds
`k8s.io/kubernetes/cmd/kube-proxy` at the version pinned in `tests/reference/go.mod` into
`~/.cache/proxyctl-reference/kube-proxy-<version>` the first time and only prints that path
afterwards. `PROXYCTL_KUBE_PROXY=/path/to/kube-proxy` uses a binary built elsewhere instead.
Without Go the calling test skips with the reason (a failure under CI=true, like every skip).

The binary is a test instrument: the product never runs or ships it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "reference"
BUILD_SCRIPT = REFERENCE / "build-kube-proxy"
BUILD_TIMEOUT = 3600.0  # a cold build on 2 busy cores takes minutes; a warm one, none


def pinned_version() -> str:
    for line in (REFERENCE / "go.mod").read_text().splitlines():
        words = line.split()
        if words[:2] == ["require", "k8s.io/kubernetes"]:
            return words[2]
    raise AssertionError("tests/reference/go.mod requires no k8s.io/kubernetes version")


def kube_proxy_path() -> str:
    given = os.environ.get("PROXYCTL_KUBE_PROXY", "")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"PROXYCTL_KUBE_PROXY={given} is not an executable file")
        return given
    if shutil.which("go") is None:
        pytest.skip("the reference kube-proxy is built from source and needs Go (apt-get install golang-go, "
                    "or set PROXYCTL_KUBE_PROXY to a kube-proxy binary)")
    started = time.monotonic()
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        pytest.fail(f"building kube-proxy {pinned_version()} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    path = done.stdout.strip().splitlines()[-1]
    took = time.monotonic() - started
    if took > 5:
        print(f"\nbuilt kube-proxy {pinned_version()} in {took:.0f} s: {path}")
    return path
