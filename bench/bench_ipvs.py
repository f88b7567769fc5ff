"""IPVS mode's sync cost on a real kernel, as ratios (run inside the VM, as root):

    scripts/run-in-vm python3 bench/bench_ipvs.py [SERVICES] [ENDPOINTS]

* full: a full sync of SERVICES ClusterIP Services × ENDPOINTS endpoints into an empty
  kernel ÷ bare `ipvsadm -R` + `ipset restore` of the same virtual servers and sets (target ≤ 1.3);
* partial: one endpoint changed at that size ÷ the full sync (target ≤ 5 %).

Absolute times under emulation mean little; the ratios compare like with like. Each figure
is the median of three runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.ipvs import writer as ipvs_writer
from kubectl_proxyctl.modes.ipvs.render import DUMMY_DEVICE, render
from kubectl_proxyctl.plan.planner import ProxyConfig, plan


def objects(services: int, endpoints: int, moved: int = -1) -> list[dict]:
    out: list[dict] = [{"kind": "Node", "apiVersion": "v1", "metadata": {"name": "node1"},
                        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}]
    for i in range(services):
        name = f"svc{i}"
        out.append({"kind": "Service", "apiVersion": "v1", "metadata": {"name": name, "namespace": "bench"},
                    "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}", "clusterIPs": [f"10.96.{i // 250}.{i % 250 + 1}"],
                             "ports": [{"name": "p", "port": 80, "protocol": "TCP"}]}})
        eps = [{"addresses": [f"10.{100 + (i * endpoints + j) // 62500}.{(i * endpoints + j) // 250 % 250}."
                              f"{(i * endpoints + j) % 250 + 1}"],
                "conditions": {"ready": True}, "nodeName": "node2"} for j in range(endpoints)]
        if i == moved:
            eps[0]["addresses"] = ["10.250.0.1"]
        out.append({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"name": f"{name}-x", "namespace": "bench",
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]})
    return out


def clean() -> None:
    ipvs_writer.cleanup(IPFamily.IPv4)
    subprocess.run(["ipvsadm", "-C"], check=True)


def main() -> None:
    services = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    endpoints = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    config = ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",))
    base = plan(state_from_objects(objects(services, endpoints), warn=lambda m: None), config)
    moved = plan(state_from_objects(objects(services, endpoints, moved=7), warn=lambda m: None), config)
    text = render(base).save_text()
    ipvsadm_text = text.split("# ipset save\n")[0].removeprefix("# ipvsadm -Sn\n")
    ipset_text = text.split("# ipset save\n")[1].split("# iptables-save\n")[0]
    full, bare, partial = [], [], []
    for _ in range(3):
        clean()
        writer = ipvs_writer.make_writer(config)
        started = time.perf_counter()
        writer.sync(base, True, set())
        full.append(time.perf_counter() - started)
        started = time.perf_counter()
        writer.sync(moved, False, {"bench/svc7"})
        partial.append(time.perf_counter() - started)
        clean()
        subprocess.run(["ip", "link", "add", DUMMY_DEVICE, "type", "dummy"], check=True)
        started = time.perf_counter()
        subprocess.run(["ipvsadm", "-R"], input=ipvsadm_text, text=True, check=True)
        subprocess.run(["ipset", "restore"], input=ipset_text, text=True, check=True)
        bare.append(time.perf_counter() - started)
    f, b, p = statistics.median(full), statistics.median(bare), statistics.median(partial)
    clean()
    print(f"{services} services x {endpoints} endpoints: full sync {f:.2f}s, ipvsadm -R + ipset restore {b:.2f}s, "
          f"one endpoint change {p:.3f}s")
    print(f"full / bare = {f / b:.2f} (target <= 1.3); partial / full = {100 * p / f:.1f} % (target <= 5 %)")


if __name__ == "__main__":
    main()
