"""IPVS settings against a real kernel: runs INSIDE the VM, in the same boot and pytest run as
ipvs_kernel_suite.py (tests/test_ipvs_vm.py boots it once), after it.

* `run --once` with `--ipvs-tcp-timeout` and its kin sets what `ipvsadm -L --timeout` shows,
  and a 0 keeps the kernel's value;
* a foreign virtual server on an address of ours survives the sync and `run --cleanup` when
  `--ipvs-exclude-cidrs` covers it, and is deleted when it does not (the control);
* IPv6 (`--ip-family IPv6`): a ClusterIP and a NodePort Service become IPv6 virtual servers
  with their real servers, the address on kube-ipvs0 and the KUBE-6-* set members, and
  `--cleanup` removes them;
* every `ipvsadm -Sn` payload written on the host (tests/test_ipvs_restore_fuzz.py, directory
  in PROXYCTL_IPVSADM_PAYLOADS) passes `ipvsadm -R`, and the kernel then holds exactly it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from enginehelpers import endpoint, endpoint_slice, node, service  # noqa: E402

KEPT, OTHER = "10.96.5.10", "10.96.7.10"  # Service addresses: KEPT's range is excluded
EXCLUDE = "10.96.5.0/24"
PAYLOADS = os.environ.get("PROXYCTL_IPVSADM_PAYLOADS", "")


def sh(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr.strip()}"
    return result.stdout


def proxyctl(*args: str) -> str:
    return sh(sys.executable, "-m", "kubectl_proxyctl", "run", *args)


def objects_file(tmp: Path) -> str:
    items: list[dict[str, Any]] = [node("node1", "172.18.0.2")]
    for name, ip in (("kept", KEPT), ("other", OTHER)):
        items += [service(name, ip, [{"name": "http", "port": 80}]),
                  endpoint_slice(name, [endpoint("10.244.1.10", "node1")], [("http", 8080, "TCP")])]
    path = tmp / "settings-objects.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return str(path)


def virtual_servers() -> set[str]:
    return {line.split()[2] for line in sh("ipvsadm", "-Sn").splitlines() if line.startswith("-A ")}


def once(objects: str, *flags: str) -> None:
    proxyctl("--mode", "ipvs", "--once", "--from-file", objects, "--node-name", "node1",
             "--cluster-cidr", "10.244.0.0/16", *flags)


def test_timeouts_are_set_and_excluded_virtual_servers_survive(tmp_path: Path) -> None:
    objects = objects_file(tmp_path)
    once(objects, "--ipvs-tcp-timeout", "901s", "--ipvs-tcpfin-timeout", "2m1s", "--ipvs-udp-timeout", "301s")
    assert "Timeout (tcp tcpfin udp): 901 121 301" in sh("ipvsadm", "-L", "--timeout")
    for address in (KEPT, OTHER):  # foreign virtual servers on kube-ipvs0's addresses look like stale ones of ours
        sh("ipvsadm", "-A", "-t", f"{address}:81", "-s", "wlc")
    once(objects, "--ipvs-exclude-cidrs", EXCLUDE, "--ipvs-udp-timeout", "302s")
    assert "Timeout (tcp tcpfin udp): 901 121 302" in sh("ipvsadm", "-L", "--timeout")
    assert virtual_servers() >= {f"{KEPT}:81", f"{KEPT}:80", f"{OTHER}:80"}
    assert f"{OTHER}:81" not in virtual_servers()  # not excluded: deleted, as kube-proxy deletes it
    proxyctl("--cleanup", "--ipvs-exclude-cidrs", EXCLUDE)
    assert virtual_servers() >= {f"{KEPT}:81", f"{KEPT}:80"} and f"{OTHER}:80" not in virtual_servers()
    sh("ipvsadm", "-C")


V6_NODE, V6_SERVICE, V6_POD = "fd00:18::2", "fd00:96::10", "fd00:10:244:1::10"


def test_ipv6_virtual_servers_real_servers_addresses_and_sets(tmp_path: Path) -> None:
    sh("ip", "-6", "addr", "add", f"{V6_NODE}/64", "dev", "lo")
    try:
        svc = service("six", V6_SERVICE, [{"name": "http", "port": 80, "nodePort": 30666}], type="NodePort")
        svc["spec"]["ipFamilies"] = ["IPv6"]
        ends = endpoint_slice("six", [endpoint(V6_POD, "node1")], [("http", 8080, "TCP")])
        ends["addressType"] = "IPv6"
        path = tmp_path / "six.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                    "items": [node("node1", V6_NODE), svc, ends]}))
        proxyctl("--mode", "ipvs", "--once", "--from-file", str(path), "--node-name", "node1", "--ip-family", "IPv6",
                 "--cluster-cidr", "fd00:10:244::/56")
        saved = sh("ipvsadm", "-Sn")
        assert f"-A -t [{V6_SERVICE}]:80 -s rr" in saved, saved
        assert f"-a -t [{V6_SERVICE}]:80 -r [{V6_POD}]:8080 -m -w 1" in saved, saved
        assert f"-A -t [{V6_NODE}]:30666 -s rr" in saved, saved
        assert f"{V6_SERVICE}/128" in sh("ip", "-6", "addr", "show", "dev", "kube-ipvs0")
        assert f"{V6_SERVICE},tcp:80" in sh("ipset", "list", "KUBE-6-CLUSTER-IP")
        proxyctl("--cleanup", "--ip-family", "IPv6")
        assert f"[{V6_SERVICE}]" not in sh("ipvsadm", "-Sn")
    finally:
        subprocess.run(["ip", "-6", "addr", "del", f"{V6_NODE}/64", "dev", "lo"], capture_output=True, check=False)
        subprocess.run(["ipvsadm", "-C"], capture_output=True, check=False)


def canonical(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line and not line.startswith("--set "))


def test_every_dry_run_payload_passes_ipvsadm_restore() -> None:
    if not PAYLOADS:
        pytest.skip("no payload directory (PROXYCTL_IPVSADM_PAYLOADS)")
    files = sorted(Path(PAYLOADS).glob("*.ipvsadm"))
    assert files
    # One shell loop for all of them: a process started from Python costs seconds here.
    sh("sh", "-c", 'for f in "$1"/*.ipvsadm; do ipvsadm -C && ipvsadm -R < "$f" && ipvsadm -Sn > "$f.back" '
                   '|| echo "$f" >> "$1/refused"; done; ipvsadm -C', "sh", PAYLOADS)
    refused = Path(PAYLOADS) / "refused"
    assert not refused.exists(), f"ipvsadm -R refused: {refused.read_text().split()[:3]}"
    wrong = [p.name for p in files if canonical(Path(f"{p}.back").read_text()) != canonical(p.read_text())]
    assert not wrong, f"{len(wrong)} of {len(files)} payloads came back different, e.g. {wrong[0]}"
