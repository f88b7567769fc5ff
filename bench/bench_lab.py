"""The lab: start-up time, how fast API changes reach every node's data plane, memory.

  sudo python bench/bench_lab.py

Prints, against targets:

* `lab up` of a 3-node lab, wall time (target <= 15 s), and `lab up` again of the running
  lab, which changes nothing (target <= 10 s);
* data-plane latency of 50 changes, from the API write until traffic proves the change on
  every node (p50 and p99, target <= 2 s each): 25 new Services (until an HTTP request to
  the new ClusterIP succeeds from each node's namespace) and 25 selector switches (until
  the newly selected pod answers on each node);
* a 10-node lab with 100 pods: the sum of the RSS of every lab process (daemon, control
  plane, engines, sshd, pod servers), target <= 3 GiB; with the time to start it and to make
  all pods Ready;
* the tests' own namespace harness (tests/netns.py): building a node with 3 pods and a
  client, target <= 2 s (the kernel tests build many).

Each lab gets a unique name and a temporary state directory, and is removed at the end.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from common import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from labfixtures import Lab, http_request, lab_skip_reason, running_lab, wait_for  # noqa: E402
from netns import build_topology  # noqa: E402

from kubectl_proxyctl.lab.dataplane import topology  # noqa: E402

CHANGES = 50
POLL_TIMEOUT = 0.05


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def until_everywhere(lab: Lab, ok: Callable[[str], bool]) -> float:
    """Poll every node in parallel until `ok(node_ns)`; returns when the last one succeeded."""
    done: dict[str, float] = {}

    def poll(netns: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ok(netns):
                done[netns] = time.monotonic()
                return
            time.sleep(0.005)

    threads = [threading.Thread(target=poll, args=(lab.spec.node_ns(n),)) for n in lab.spec.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) != len(threads):
        raise AssertionError("a change did not reach every node within 30s")
    return max(done.values())


def service(name: str, selector: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 80}]}}


def change_latencies(lab: Lab) -> tuple[list[float], list[float]]:
    lab.cli("run", "bench", "--replicas", "3", "--labels", "app=bench", "--port", "80")
    api = lab.api
    pods = [p["metadata"]["name"] for p in api.list("/api/v1/namespaces/default/pods?labelSelector=app%3Dbench")]
    for name in pods:  # a label per pod, so a selector can pick exactly one
        pod = lab.pod(name)
        pod["metadata"]["labels"]["bench-pod"] = name
        api.request("PUT", f"/api/v1/namespaces/default/pods/{name}", pod)

    new_services = []
    for i in range(CHANGES // 2):
        started = time.monotonic()
        ip = api.request("POST", "/api/v1/namespaces/default/services",
                         service(f"bench-{i}", {"app": "bench"}))["spec"]["clusterIP"]
        finished = until_everywhere(lab, lambda ns: http_request(ns, ip, 80, timeout=POLL_TIMEOUT).ok)
        new_services.append(finished - started)

    ip = api.request("POST", "/api/v1/namespaces/default/services",
                     service("bench-switch", {"bench-pod": pods[0]}))["spec"]["clusterIP"]
    until_everywhere(lab, lambda ns: http_request(ns, ip, 80, timeout=POLL_TIMEOUT).pod == pods[0])
    switches = []
    for i in range(CHANGES - CHANGES // 2):
        target = pods[(i + 1) % len(pods)]
        svc = api.request("GET", "/api/v1/namespaces/default/services/bench-switch")
        svc["spec"]["selector"] = {"bench-pod": target}
        started = time.monotonic()
        api.request("PUT", "/api/v1/namespaces/default/services/bench-switch", svc)
        finished = until_everywhere(lab, lambda ns: http_request(ns, ip, 80, timeout=POLL_TIMEOUT).pod == target)
        switches.append(finished - started)
    return new_services, switches


def lab_rss_bytes(lab: Lab) -> tuple[int, int]:
    """(sum of RSS, number of processes) over the daemon, the control plane and every process in
    the lab's namespaces."""
    by_ns = topology.pids_in_netns(topology.lab_namespaces(lab.spec))
    pids = {pid for pids in by_ns.values() for pid in pids} | {lab.supervisor_pid(), lab.control_plane_pid()}
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, len(pids)


def main() -> int:
    reason = lab_skip_reason()
    if reason:
        print(f"bench_lab: cannot run: {reason}", file=sys.stderr)
        return 2
    ok = True
    with tempfile.TemporaryDirectory(prefix="proxyctl-bench-lab-") as tmp:
        started = time.monotonic()
        with running_lab(Path(tmp) / "small", nodes=3) as lab:
            ok &= report("lab up, 3 nodes (s)", time.monotonic() - started, 15.0)
            started = time.monotonic()
            lab.cli("up", "--nodes", "3")
            ok &= report("lab up again, 3 nodes already up (s)", time.monotonic() - started, 10.0)
            new_services, switches = change_latencies(lab)
            both = new_services + switches
            for label, values in (("new Service", new_services), ("selector switch", switches)):
                print(f"  {label:<16} n={len(values):<3} p50 {statistics.median(values):.3f}s   "
                      f"p99 {percentile(values, 99):.3f}s   max {max(values):.3f}s")
            ok &= report(f"API write -> every node's data plane, p50 of {len(both)} (s)", statistics.median(both), 2.0)
            ok &= report(f"API write -> every node's data plane, p99 of {len(both)} (s)", percentile(both, 99), 2.0)

        started = time.monotonic()
        with running_lab(Path(tmp) / "big", nodes=10) as lab:
            up = time.monotonic() - started
            started = time.monotonic()
            lab.cli("run", "mem", "--replicas", "100", "--no-wait")
            wait_for(lambda: sum(
                1 for p in lab.api.list("/api/v1/namespaces/default/pods")
                for c in (p.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready" and c.get("status") == "True") >= 100, 300, "100 Ready pods", 0.5)
            ready = time.monotonic() - started
            rss, count = lab_rss_bytes(lab)
            print(f"  10-node lab up in {up:.1f}s; 100 pods Ready in {ready:.1f}s; {count} processes")
            ok &= report("10 nodes + 100 pods: RSS of all lab processes (GiB)", rss / 2**30, 3.0)
            started = time.monotonic()
            lab.cli("down")
            print(f"  lab down (10 nodes, 100 pods): {time.monotonic() - started:.1f}s")

    started = time.monotonic()
    topo = build_topology(pods=3, client=True)
    try:
        ok &= report("tests/netns.py: a node, 3 pods and a client (s)", time.monotonic() - started, 2.0)
    finally:
        topo.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
