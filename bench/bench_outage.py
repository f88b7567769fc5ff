"""The lab's API server killed and kept down, then restarted: does traffic survive, and how
soon do changes reach every node again?

  sudo python bench/bench_outage.py [--outages 10] [--down 30] [--nodes 3] [--mode iptables]

A lab runs the nginx demo (3 pods, NodePort 30080) under steady traffic: 20 new connections
per second from the client through every node in turn. Then, `--outages` times: the API
server's process (the control plane) is killed with SIGKILL while its supervisor is paused
(SIGSTOP), so nothing restarts it; after `--down` seconds the supervisor is resumed and
starts it again. As soon as the API answers, a Service is created, and every node's rules
(`iptables-save -t nat`, or `nft list table ip kube-proxy`, in the node's namespace) are
polled in parallel until they hold its ClusterIP.

Prints, against targets:

* "Service created right after the restart -> programmed on every node", p50 and p99 over
  the outages (target <= 3 s each): the engines' informers retry every ~1 s while the
  server is away, then resume their watches (or relist);
* the requests that failed during the whole run, outages included (target 0);

and, for information, how long the supervisor took from its resumption until the API answered.
The lab gets a unique name and a temporary state directory, and is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import percentile, report, terminate_as_interrupt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from labfixtures import (  # noqa: E402
    NGINX_DEMO, Lab, Load, api_server_down, lab_skip_reason, programmed, running_lab, wait_for,
)

NODE_PORT = 30080
RATE = 20  # new connections per second
TARGET = 3.0  # seconds: created right after the restart -> in every node's rules


class RoundRobinLoad:
    """One `Load` per node, each at RATE / nodes: together RATE connections per second
    through every node in turn."""

    def __init__(self, lab: Lab) -> None:
        spec = lab.spec
        self.loads = [Load(spec.client_ns, n.ip, NODE_PORT, rate=RATE / len(spec.nodes)) for n in spec.nodes]

    def start(self) -> RoundRobinLoad:
        for load in self.loads:
            load.start()
        return self

    def stop(self) -> None:
        for load in self.loads:
            load.stop()

    @property
    def answers(self) -> int:
        return sum(len(load.answers) for load in self.loads)

    @property
    def failures(self) -> list[str]:
        return [f for load in self.loads for f in load.failures]


def programmed_everywhere(lab: Lab, ip: str, timeout: float = 60.0) -> float:
    """Poll every node's rules in parallel until each holds `ip`; when the last one did."""
    done: dict[str, float] = {}

    def poll(node: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if programmed(lab, node, ip):
                done[node] = time.monotonic()
                return
            time.sleep(0.01)

    threads = [threading.Thread(target=poll, args=(n.name,)) for n in lab.spec.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    missing = sorted({n.name for n in lab.spec.nodes} - set(done))
    if missing:
        raise AssertionError(f"{ip} not in the rules of {', '.join(missing)} after {timeout:g}s")
    return max(done.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--down", type=float, default=30.0, help="seconds the API server stays down")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--mode", choices=["iptables", "nftables"], default="iptables")
    args = parser.parse_args()
    reason = lab_skip_reason(args.mode)
    if reason:
        print(f"bench_outage: cannot run: {reason}", file=sys.stderr)
        return 2
    terminate_as_interrupt()
    latencies: list[float] = []
    restarts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="proxyctl-bench-outage-") as tmp:
        with running_lab(Path(tmp), nodes=args.nodes, mode=args.mode) as lab:
            lab.kubectl("apply", "-f", str(NGINX_DEMO))
            wait_for(lambda: len(lab.ready_endpoints("nginx")) == 3, 60, "3 ready nginx endpoints")
            ip = lab.kubectl_json("get", "svc", "nginx")["spec"]["clusterIP"]
            programmed_everywhere(lab, ip)
            load = RoundRobinLoad(lab).start()
            try:
                for i in range(args.outages):
                    with api_server_down(lab):
                        time.sleep(args.down)
                    resumed = time.monotonic()
                    wait_for(lab.api_answers, 60, "the supervisor to start the API server again", interval=0.01)
                    created = time.monotonic()
                    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"after-outage-{i}"},
                            "spec": {"selector": {"app": "nginx"}, "ports": [{"port": 80, "targetPort": "http"}]}}
                    ip = lab.api.request("POST", "/api/v1/namespaces/default/services", body)["spec"]["clusterIP"]
                    latency = programmed_everywhere(lab, ip) - created
                    latencies.append(latency)
                    restarts.append(created - resumed)
                    print(f"  outage {i + 1}/{args.outages}: {args.down:g}s down; API answered "
                          f"{created - resumed:.2f}s after the supervisor resumed; new Service on every node in "
                          f"{latency:.2f}s; "
                          f"{load.answers} requests so far, {len(load.failures)} failed", flush=True)
            finally:
                load.stop()
    print(f"  {len(latencies)} outages of {args.down:g}s, {args.nodes} nodes ({args.mode}); API server back after "
          f"the supervisor resumed: p50 {statistics.median(restarts):.2f}s, max {max(restarts):.2f}s; "
          f"{load.answers} requests")
    ok = report(f"Service after restart -> every node, p50 of {len(latencies)} (s)", statistics.median(latencies),
                TARGET)
    ok &= report(f"Service after restart -> every node, p99 of {len(latencies)} (s)", percentile(latencies, 99),
                 TARGET)
    ok &= report("failed requests during the outages (count)", len(load.failures), 0)
    if load.failures:
        print(f"  e.g. {load.failures[:3]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
