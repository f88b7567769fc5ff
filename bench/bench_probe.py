"""The full probe matrix over real SSH: 10 node namespaces, each with its own sshd.

  python bench/bench_probe.py [--nodes 10] [--runs 3]

Builds 10 "nodes" (network namespaces on one bridge, sshd on each address, a listener on
NodePort 30080 in every node) and runs `kubectl proxyctl probe --nodeport 30080 --nodes …`
from a client namespace: 10 nodes × 10 node addresses + 10 probes from this machine = 110
cells (`--proxy-mode nftables`, no localhost column), and the default iptables-mode matrix
with each node's 127.0.0.1 as well (120 cells). Target: the 110-cell matrix ≤ 5 s wall,
measured as a fresh `kubectl-proxyctl` process (interpreter start and imports included).

Then where the time goes, phase by phase with the same SSH layer: resolving the ssh config
(`ssh -G` per node), connecting and authenticating (in parallel), one remote command per
node running all its probes at once, and the probes from this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from common import exe, report  # noqa: E402
from sshfixtures import SSHCluster, ssh_cluster, ssh_skip_reason  # noqa: E402

from kubectl_proxyctl.remote import local  # noqa: E402
from kubectl_proxyctl.remote.expectations import Probing, plan_without_cluster  # noqa: E402
from kubectl_proxyctl.remote.matrix import LOCAL, Node, probes_for  # noqa: E402
from kubectl_proxyctl.remote.probe import command_deadline, remote_argv  # noqa: E402
from kubectl_proxyctl.remote.ssh import SSHClient, SSHOptions  # noqa: E402
from kubectl_proxyctl.system.executor import netns_path  # noqa: E402

PORT = 30080
TARGET = 5.0


def _cli(cluster: SSHCluster, extra: list[str]) -> tuple[float, int, str]:
    argv = ["nsenter", f"--net={netns_path(cluster.client)}", "--", exe("kubectl-proxyctl"), "probe",
            "--nodeport", str(PORT), "--nodes", cluster.node_list(), "--ssh-config", cluster.ssh_config, *extra]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done.returncode, done.stdout + done.stderr


def _phases(cluster: SSHCluster) -> dict[str, float]:
    """Each phase of one run, timed on its own (the CLI overlaps the local probes with SSH)."""
    nodes = [Node(n.name, n.address, n.name) for n in cluster.nodes]
    plan = plan_without_cluster(nodes, PORT, "TCP", Probing(sources=(LOCAL, *(n.name for n in nodes))))
    out: dict[str, float] = {}

    def in_client() -> None:
        with SSHClient(SSHOptions(config_file=cluster.ssh_config)) as ssh:
            start = time.perf_counter()
            for node in nodes:
                ssh.resolve(node.ssh_host)
            out["resolve ssh config (ssh -G, 10 hosts, serial)"] = time.perf_counter() - start
            with ThreadPoolExecutor(max_workers=16) as pool:
                start = time.perf_counter()
                list(pool.map(lambda n: ssh.run(n.ssh_host, ["true"], 10), nodes))
                out["connect + authenticate + `true` (10 nodes, parallel)"] = time.perf_counter() - start

                def row(node: Node) -> int:
                    specs = [spec for _, spec in probes_for(plan, node.name)]
                    return ssh.run(node.ssh_host, remote_argv(specs, 3.0), command_deadline(3.0, len(specs))).exit_code

                start = time.perf_counter()
                assert set(pool.map(row, nodes)) == {0}
                out["one remote command per node, 11 probes each (reused connections)"] = time.perf_counter() - start
                start = time.perf_counter()
                list(pool.map(lambda s: local.probe(s[1], 3.0), probes_for(plan, LOCAL)))
                out["10 probes from this machine"] = time.perf_counter() - start

    cluster.in_client(in_client)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import kubectl_proxyctl.cli.commands.probe, kubectl_proxyctl.remote.ssh,"
                    " kubectl_proxyctl.remote.fanout, kubectl_proxyctl.remote.expectations"], check=True)
    out["interpreter start + imports (click, paramiko, planner)"] = time.perf_counter() - start
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    reason = ssh_skip_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    ok = True
    start = time.perf_counter()
    with ssh_cluster(nodes=args.nodes) as cluster:
        print(f"{args.nodes} node namespaces with sshd up in {time.perf_counter() - start:.2f} s")
        for node in cluster.nodes:
            cluster.listen(node.name, PORT)
        cells_110 = args.nodes * args.nodes + args.nodes
        for label, extra, cells in (
            (f"full matrix, {cells_110} cells (--proxy-mode nftables)", ["--proxy-mode", "nftables"], cells_110),
            (f"full matrix, {cells_110 + args.nodes} cells (iptables: + each node's 127.0.0.1)", [],
             cells_110 + args.nodes),
        ):
            times = []
            for _ in range(args.runs):
                wall, code, text = _cli(cluster, extra)
                if code != 0 or f"all {cells} cells meet" not in text:
                    print(text)
                    raise SystemExit(f"probe run failed (exit {code})")
                times.append(wall)
            print(f"  runs: {', '.join(f'{t:.2f}' for t in times)} s")
            best = statistics.median(times)
            if cells == cells_110:
                ok &= report(f"{label}, s (median of {args.runs})", best, TARGET, " s")
            else:
                print(f"{label + ', s (median of ' + str(args.runs) + ')':<60} {best:10.3f} s")
        print("where the time goes (each phase alone):")
        for phase, seconds in _phases(cluster).items():
            print(f"  {phase:<70} {seconds:6.3f} s")
        with open("/proc/loadavg", encoding="ascii") as fh:
            print(f"load average at the end: {' '.join(fh.read().split()[:3])} (2 cores)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
