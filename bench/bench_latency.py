"""First-packet latency of a service connection: iptables, nftables, eBPF and IPVS mode (run as root).

  python bench/bench_latency.py [--services 10000] [--endpoints 5] [--samples 2000]
                                [--rounds 2] [--modes iptables,nftables,ebpf]
  scripts/run-in-vm python3 bench/bench_latency.py --modes ipvs --services 1000   # IPVS needs IP_VS

One throw-away network namespace per mode (`pxbench<hex>-lat-*`, removed afterwards), each
programmed by the real engine path with N services x M endpoints (`synth.cluster`):
the iptables writer over iptables-legacy (iptables-restore), the nftables writer over `nft -f`,
the eBPF writer into fresh maps pinned under a throw-away directory with its programs attached
to a throw-away cgroup (`<cgroup2 root>/pxbench-<pid>`, removed afterwards), which the
client joins before it enters the namespace. Inside each namespace:

  * every cluster IP (10.96.0.0/12) and every endpoint IP (10.128.0.0/10) is local (`ip route
    add local ... dev lo`), so one TCP listener on 0.0.0.0:8080 serves all 50,000 endpoints
    and connect() to a cluster IP works only if the engine's DNAT rewrote it (nothing listens
    on port 80);
  * the client's source address 10.244.0.1 lies in the cluster CIDR, so nothing is
    masqueraded: the path measured is nat OUTPUT → the mode's service dispatch → DNAT
    (in eBPF mode: the connect4 program's map lookups and rewrite, then no rule at all);
  * the client (a tight Python loop, pinned to one CPU, the listener to the other) opens a
    new connection each time and closes it with SO_LINGER 0 (an RST: no TIME_WAIT builds up),
    timing connect() alone with perf_counter_ns: one SYN through the rules and the SYN-ACK
    back. It alternates between three targets: the service whose KUBE-SERVICES rule comes
    first, the one whose rule comes last (the same two services in both modes; nftables
    finds both with one map lookup), and an endpoint directly ("direct": no service, no
    DNAT). The direct connection is the floor in nftables mode (one map lookup that misses);
    in iptables mode it walks all of KUBE-SERVICES without a match, as every new connection
    to a non-service address on the node does, so it costs about what the last service does.

IPVS mode runs alone (it needs a kernel with IP_VS: the VM). The engine's IPVS writer
programs the namespace from inside it (the whole bench process enters the namespace first, so
every netlink socket it opens is there), binding every cluster IP to kube-ipvs0; "first" and
"last" are the first and last Service made, a hash lookup apart.

Per mode it prints p50/p90/p99 of each target and the p50 ratio last / first, whose target is
<= 1.2 in nftables and IPVS mode and <= 1.1 in eBPF mode (iptables mode's is reported beside it: it
walks KUBE-SERVICES, so it grows with the service count), and eBPF mode's p50 to the last
service / nftables mode's (expected < 1). Rounds alternate the modes, so both see the same machine.
Nothing here fails on a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from common import median, netns, percentile, remove_all_netns, terminate_as_interrupt
from synth import cluster

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kubectl_proxyctl.plan.planner import ProxyConfig  # noqa: E402
from kubectl_proxyctl.engine.proxier import Proxier  # noqa: E402
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter  # noqa: E402
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter  # noqa: E402
from kubectl_proxyctl.kube.tracker import StateTracker  # noqa: E402
from kubectl_proxyctl.system.conntrack import ConntrackSystem  # noqa: E402
from kubectl_proxyctl.system.executor import SubprocessExecutor  # noqa: E402
from kubectl_proxyctl.system.iptables import Backend, IptablesSystem  # noqa: E402
from kubectl_proxyctl.system.nftables import NftSystem  # noqa: E402

NODE = "node1"
CLUSTER_CIDR = "10.244.0.0/16"
CLIENT_IP = "10.244.0.1"
SERVICE_RANGE = "10.96.0.0/12"  # synth.service
ENDPOINT_RANGE = "10.128.0.0/10"  # synth.endpoint_slice
ENDPOINT_PORT = 8080
SERVICE_PORT = 80

_SERVER = """
import os, socket, sys
cpu = int(sys.argv[1])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

_CLIENT = """
import gc, json, os, socket, struct, sys, time
targets, samples, warmup, src, cpu = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
IP_BIND_ADDRESS_NO_PORT = 24
linger = struct.pack("ii", 1, 0)
clock = time.perf_counter_ns
def one(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((src, 0))
    t0 = clock()
    s.connect((ip, port))
    t1 = clock()
    s.close()
    return t1 - t0
out = {name: [] for name, _, _ in targets}
gc.disable()
for k in range(warmup + samples):
    for name, ip, port in (targets if k % 2 == 0 else targets[::-1]):
        ns = one(ip, port)
        if k >= warmup:
            out[name].append(ns)
json.dump(out, sys.stdout)
"""

_KUBE_SERVICES = re.compile(r"^-A KUBE-SERVICES .*?-d (\S+?)(?:/32)? .*--dport (\d+) -j KUBE-SVC-")


def config(mode: str) -> ProxyConfig:
    if mode == "nftables":  # what `run --mode nftables` passes by default
        return ProxyConfig(node_name=NODE, cluster_cidrs=(CLUSTER_CIDR,), nodeport_addresses=("primary",),
                           localhost_nodeports=False)
    return ProxyConfig(node_name=NODE, cluster_cidrs=(CLUSTER_CIDR,))


class EbpfPlace:
    """eBPF mode's throw-away cgroup and pin directory (made by `program`, removed by `remove`)."""

    def __init__(self) -> None:
        from kubectl_proxyctl.system import bpf

        self.cgroup = os.path.join(bpf.cgroup2_root(), f"pxbench-{os.getpid()}")
        self.pins = os.path.join(bpf.bpffs_root(), f"pxbench-{os.getpid()}")
        self.kernel: Any = None

    def remove(self) -> None:
        from kubectl_proxyctl.modes.ebpf.kernel import EbpfKernel

        if os.path.isdir(self.pins):
            EbpfKernel(self.pins, check_cgroup=False).remove()
        if os.path.isdir(self.cgroup):
            os.rmdir(self.cgroup)


EBPF = EbpfPlace()


def program(mode: str, ns: str, objs: list[dict[str, Any]]) -> tuple[float, str]:
    """Run the engine's first (full) sync of `mode` into `ns`: (seconds, iptables payload or "")."""
    cfg = config(mode)
    executor = SubprocessExecutor(netns=ns)
    conntrack = ConntrackSystem(executor=executor, family=cfg.family)
    proxier: Proxier
    if mode == "iptables":
        system = IptablesSystem(executor=executor, backend=Backend.LEGACY)
        proxier = Proxier(cfg, StateTracker(NODE), IptablesWriter(system, random_fully=system.supports_random_fully()),
                          conntrack=conntrack)
    elif mode == "ebpf":
        from kubectl_proxyctl.modes.ebpf import maps
        from kubectl_proxyctl.modes.ebpf.kernel import EbpfKernel
        from kubectl_proxyctl.modes.ebpf.writer import EbpfWriter

        os.makedirs(EBPF.cgroup, exist_ok=True)
        kernel = EbpfKernel(EBPF.pins, EBPF.cgroup)
        kernel.open()
        entry = NftablesWriter(NftSystem(cfg.family, executor=executor, table=maps.NFT_TABLE), table=maps.NFT_TABLE,
                               entry_points_only=True)
        proxier = Proxier(cfg, StateTracker(NODE), EbpfWriter(kernel, cfg.family, entry), conntrack=conntrack)
    elif mode == "ipvs":
        from kubectl_proxyctl.modes.ipvs import writer as ipvs_writer

        enter_netns(ns)
        ipvs_writer.prepare_node(cfg)
        proxier = Proxier(cfg, StateTracker(NODE), ipvs_writer.make_writer(cfg),
                          conntrack=ConntrackSystem(family=cfg.family))
    else:
        proxier = Proxier(cfg, StateTracker(NODE), NftablesWriter(NftSystem(cfg.family, executor=executor)),
                          conntrack=conntrack)
    for obj in objs:
        proxier.on_event(obj["kind"], "ADDED", obj)
    started = time.perf_counter()
    result = proxier.sync()
    seconds = time.perf_counter() - started
    if result is None or result.error or not result.full:
        raise SystemExit(f"{mode}: full sync failed: {result}")
    return seconds, proxier.writer.payload if mode == "iptables" else ""


_HOME_NETNS: list[int] = []  # the namespace this process started in, while it is in another one


def _setns(fd: int, what: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise SystemExit(f"cannot enter {what}: {os.strerror(ctypes.get_errno())}")


def enter_netns(ns: str) -> None:
    """Move this process's main thread (and every thread and child it starts later) into `ns`."""
    _HOME_NETNS.append(os.open("/proc/self/ns/net", os.O_RDONLY))
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(fd, ns)
    finally:
        os.close(fd)


def leave_netns() -> None:
    """Back to the namespace the process started in (before its namespaces are removed, which
    kills every process inside them)."""
    while _HOME_NETNS:
        fd = _HOME_NETNS.pop()
        _setns(fd, "the initial network namespace")
        os.close(fd)


def dispatch_order(payload: str) -> list[tuple[str, int]]:
    """(cluster IP, port) of the KUBE-SERVICES rules, in the order iptables evaluates them."""
    out = []
    for line in payload.splitlines():
        match = _KUBE_SERVICES.match(line)
        if match:
            out.append((match.group(1), int(match.group(2))))
    return out


def ns_cmd(ns: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", "--", *argv]


def prepare(ns: str) -> None:
    for argv in (["ip", "addr", "add", f"{CLIENT_IP}/32", "dev", "lo"],
                 ["ip", "route", "add", "local", SERVICE_RANGE, "dev", "lo"],
                 ["ip", "route", "add", "local", ENDPOINT_RANGE, "dev", "lo"]):
        subprocess.run(["ip", "-n", ns, *argv[1:]], check=True)


def start_server(ns: str, cpu: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(ns_cmd(ns, [sys.executable, "-c", _SERVER, str(cpu), str(ENDPOINT_PORT)]),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the listener in {ns} did not start")
    return proc


def sample(ns: str, targets: list[tuple[str, str, int]], samples: int, warmup: int,
           cpu: int, cgroup: str = "") -> dict[str, list[float]]:
    argv = ns_cmd(ns, [sys.executable, "-c", _CLIENT, json.dumps(targets), str(samples), str(warmup), CLIENT_IP,
                       str(cpu)])
    if cgroup:  # join the cgroup first: its programs then see the client's sockets
        argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"client in {ns} failed: {done.stderr.strip()[-800:]}")
    return {name: [ns_ / 1e3 for ns_ in xs] for name, xs in json.loads(done.stdout).items()}  # µs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000, help="connections per target and mode")
    parser.add_argument("--rounds", type=int, default=2, help="the samples are split over this many rounds")
    parser.add_argument("--warmup", type=int, default=100, help="connections per target discarded per round")
    parser.add_argument("--modes", default="iptables,nftables,ebpf")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_latency.py needs root (network namespaces, netfilter)", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("iptables", "nftables", "ebpf", "ipvs"):
            raise SystemExit(f"unknown mode {mode!r}")
    if "ipvs" in modes and modes != ["ipvs"]:
        raise SystemExit("--modes ipvs runs alone (its process enters the namespace it programs)")
    if "ipvs" in modes and not os.path.exists("/proc/net/ip_vs") and \
            subprocess.run(["modprobe", "ip_vs"], capture_output=True).returncode != 0:
        raise SystemExit("--modes ipvs needs a kernel with IP_VS: run it through scripts/run-in-vm")
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (-1, -1)
    n, m = args.services, args.endpoints
    objs = cluster(n, m)
    # The first and last service in KUBE-SERVICES order: render iptables mode's layout once.
    from kubectl_proxyctl.modes.iptables.render import render
    from kubectl_proxyctl.plan.planner import plan

    tracker = StateTracker(NODE)
    for obj in objs:
        tracker.apply(obj["kind"], "ADDED", obj)
    order = dispatch_order(render(plan(tracker.snapshot().state, config("iptables"))).text)
    if len(order) != n:
        raise SystemExit(f"expected {n} service rules in KUBE-SERVICES, found {len(order)}")
    if modes == ["ipvs"]:  # no rule order: the first and the last Service made
        services = [o for o in objs if o["kind"] == "Service"]
        order = [(svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]) for svc in services]
    (first_ip, first_port), (last_ip, last_port) = order[0], order[-1]
    targets = [("first", first_ip, first_port), ("last", last_ip, last_port),
               ("direct", "10.128.0.1", ENDPOINT_PORT)]
    print(f"{n} services x {m} endpoints; first service in dispatch order {first_ip}:{first_port}, "
          f"last (#{len(order)}) {last_ip}:{last_port}; direct endpoint 10.128.0.1:{ENDPOINT_PORT}")
    print(f"client on CPU {client_cpu}, listener on CPU {server_cpu}; {args.samples} samples per target "
          f"and mode in {args.rounds} round(s), {args.warmup} warm-up connections per round; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)

    terminate_as_interrupt()
    results: dict[str, dict[str, list[float]]] = {mode: {t[0]: [] for t in targets} for mode in modes}
    try:
        with contextlib.ExitStack() as stack:
            spaces: dict[str, str] = {}
            for mode in modes:
                ns = spaces[mode] = stack.enter_context(netns(f"lat-{mode[:3]}"))
                prepare(ns)
                seconds, payload = program(mode, ns, objs)
                stack.callback(leave_netns)  # before the namespace goes (IPVS mode entered it)
                if payload and dispatch_order(payload) != order:
                    raise SystemExit("the engine's KUBE-SERVICES order differs from the renderer's")
                start_server(ns, server_cpu)
                print(f"{mode}: programmed by the engine's full sync in {seconds:.2f}s", flush=True)
            per_round = max(1, args.samples // args.rounds)
            for rnd in range(args.rounds):
                for mode in modes:
                    started = time.perf_counter()
                    got = sample(spaces[mode], targets, per_round, args.warmup, client_cpu,
                                 EBPF.cgroup if mode == "ebpf" else "")
                    for name, xs in got.items():
                        results[mode][name] += xs
                    print(f"  round {rnd + 1}, {mode}: {per_round} x {len(targets)} connections in "
                          f"{time.perf_counter() - started:.1f}s; p50 first {median(got['first']):.1f} µs, "
                          f"last {median(got['last']):.1f} µs, direct {median(got['direct']):.1f} µs", flush=True)
    finally:
        leave_netns()
        remove_all_netns()
        EBPF.remove()

    print(f"\nconnect() latency, µs ({n} services x {m} endpoints; load average now {os.getloadavg()[0]:.2f})")
    print(f"{'mode':<10} {'target':<8} {'n':>6} {'p50':>9} {'p90':>9} {'p99':>9}")
    for mode in modes:
        for name, _, _ in targets:
            xs = results[mode][name]
            print(f"{mode:<10} {name:<8} {len(xs):>6} {percentile(xs, 50):9.1f} {percentile(xs, 90):9.1f} "
                  f"{percentile(xs, 99):9.1f}")
    print()
    for mode in modes:
        r = results[mode]
        ratio = percentile(r["last"], 50) / percentile(r["first"], 50)
        extra = percentile(r["last"], 50) - percentile(r["first"], 50)
        limit = {"nftables": 1.2, "ebpf": 1.1, "ipvs": 1.2}.get(mode)
        target = (f"   target <= {limit}   " + ("OK" if ratio <= limit else "MISSED") if limit else
                  "   (reported beside nftables mode; grows with the service count)")
        print(f"{mode}: p50 last / first service {ratio:6.3f} (last - first {extra:+.1f} µs; direct / first "
              f"{percentile(r['direct'], 50) / percentile(r['first'], 50):.3f}){target}")
    if "ebpf" in results and "nftables" in results:
        e, f = percentile(results["ebpf"]["last"], 50), percentile(results["nftables"]["last"], 50)
        print(f"ebpf / nftables: p50 to the last service {e / f:6.3f} ({e:.1f} µs vs {f:.1f} µs; expected < 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
