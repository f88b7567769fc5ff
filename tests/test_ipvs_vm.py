"""IPVS mode on a real kernel: tests/vm/ipvs_kernel_suite.py, ipvs_settings_suite.py,
ipvs_lab_suite.py (the lab in IPVS mode) and ipvs_reference_suite.py (side by side with the
real kube-proxy's IPVS mode) inside ONE VM boot, with the `ipvsadm -Sn` payloads of random
dry runs (tests/test_ipvs_restore_fuzz.py) written beforehand into a directory of the
checkout, the one place the VM shares with the host, and the upstream kube-proxy built on
the host (tests/referencebuild.py; the VM sees the host's files).

The host's kernel has no IP_VS and no dummy links, so the suite runs in a QEMU VM booting
Debian's 6.1 kernel with the host's files visible (`run-in-vm`, TESTING.md). Outside CI the
test is skipped when QEMU is missing; under CI=true a skip is a failure (conftest.py), and
`run-in-vm` installs what it needs itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def run_in_vm() -> Path | None:
    for candidate in (os.environ.get("PROXYCTL_RUN_IN_VM", ""), ROOT / "scripts" / "run-in-vm"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.slow
def test_ipvs_suite_in_a_vm(tmp_path: Path) -> None:
    script = run_in_vm()
    if script is None:
        pytest.skip("no run-in-vm script (PROXYCTL_RUN_IN_VM)")
    if not IN_CI and shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (run-in-vm installs it under CI)")
    if os.geteuid() != 0:
        pytest.skip("the VM suite needs root")
    from referencebuild import kube_proxy_path
    from test_ipvs_restore_fuzz import payloads

    kube_proxy = kube_proxy_path()

    started = time.monotonic()
    log = tmp_path / "vm.log"
    shared = Path(tempfile.mkdtemp(prefix=".ipvsadm-payloads-", dir=ROOT))
    try:
        payloads(shared, count=120)
        argv = [str(script), "env", "PROXYCTL_TEST_SEED=0", f"PROXYCTL_IPVSADM_PAYLOADS={shared}",
                f"PROXYCTL_KUBE_PROXY={kube_proxy}",
                f"PROXYCTL_IPVS_REFERENCE_CASES={os.environ.get('PROXYCTL_IPVS_REFERENCE_CASES', '')}",
                sys.executable,
                "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/vm/ipvs_kernel_suite.py",
                "tests/vm/ipvs_settings_suite.py", "tests/vm/ipvs_lab_suite.py", "tests/vm/ipvs_reference_suite.py"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        with open(log, "w") as out:
            # The VM's output goes to a file as it comes, so a run that times out still shows how far it got.
            done = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=2400, env={**env, "VM_TIMEOUT": "2340"}, check=False)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    took = time.monotonic() - started
    text = log.read_text(errors="replace")
    tail = text[-8000:]
    assert done.returncode == 0, f"the IPVS suite failed in the VM ({took:.0f}s, exit {done.returncode}):\n{tail}"
    assert " passed" in text and " failed" not in text, tail
