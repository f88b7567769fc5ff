"""eBPF mode's syncs at scale, against the real kernel (run as root).

  python bench/bench_ebpf.py [--services 10000] [--endpoints 5] [--runs 3] [--partials 20]

Everything happens in a throw-away network namespace (`pxbench<hex>-ebpf`, for the
entry-point nftables table), a throw-away cgroup (`<cgroup2 root>/pxbench-<pid>`, the
programs' attach point) and a throw-away pin directory (`<bpffs>/pxbench-<pid>`), all
removed afterwards. With N services x M endpoints (`synth.cluster`), per run, through the
engine's real path (`Proxier.sync()` with the eBPF writer in-process):

  (a) the first full sync into fresh maps (plan, render, batched map writes, program load
      and attach, the entry-point table); target <= 2 s at 10,000 x 5;
  (b) a restarted engine's first full sync into the populated maps (it reads them back and
      writes only the difference: nothing); no target, compare with (a);
  (c) one endpoint change: the whole partial sync that follows (re-plan of one Service, its
      entries' fresh slot range, the flip, the old slots freed), median of `--partials`
      changes; target <= 5 ms at 10,000 services.

Nothing here fails on a timing; figures are printed with their targets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from common import median, netns, remove_all_netns, report, terminate_as_interrupt
from synth import cluster, moved_endpoint_slice

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kubectl_proxyctl.engine.proxier import Proxier  # noqa: E402
from kubectl_proxyctl.kube.tracker import StateTracker  # noqa: E402
from kubectl_proxyctl.modes.ebpf import maps  # noqa: E402
from kubectl_proxyctl.modes.ebpf.kernel import EbpfKernel  # noqa: E402
from kubectl_proxyctl.modes.ebpf.writer import EbpfWriter  # noqa: E402
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter  # noqa: E402
from kubectl_proxyctl.plan.planner import ProxyConfig  # noqa: E402
from kubectl_proxyctl.system import bpf  # noqa: E402
from kubectl_proxyctl.system.conntrack import ConntrackSystem  # noqa: E402
from kubectl_proxyctl.system.executor import SubprocessExecutor  # noqa: E402
from kubectl_proxyctl.system.nftables import NftSystem  # noqa: E402

NODE = "node1"
CONFIG = ProxyConfig(node_name=NODE, cluster_cidrs=("10.244.0.0/16",), nodeport_addresses=("primary",),
                     localhost_nodeports=False)


def new_proxier(ns: str, pins: str, cgroup: str, objs: list[dict[str, Any]]) -> Proxier:
    executor = SubprocessExecutor(netns=ns)
    kernel = EbpfKernel(pins, cgroup)
    kernel.open()
    entry = NftablesWriter(NftSystem(CONFIG.family, executor=executor, table=maps.NFT_TABLE),
                           table=maps.NFT_TABLE, entry_points_only=True)
    proxier = Proxier(CONFIG, StateTracker(NODE), EbpfWriter(kernel, CONFIG.family, entry),
                      conntrack=ConntrackSystem(executor=executor, family=CONFIG.family))
    for obj in objs:
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier


def timed_sync(proxier: Proxier, full: bool) -> tuple[float, Any]:
    started = time.perf_counter()
    result = proxier.sync()
    seconds = time.perf_counter() - started
    if result is None or result.error or result.full != full:
        raise SystemExit(f"{'full' if full else 'partial'} sync failed: {result}")
    return seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partials", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_ebpf.py needs root (BPF, cgroups, network namespaces)", file=sys.stderr)
        return 2
    n, m = args.services, args.endpoints
    objs = cluster(n, m)
    print(f"{n} services x {m} endpoints, {args.runs} runs, {args.partials} endpoint changes per run; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    cgroup = os.path.join(bpf.cgroup2_root(), f"pxbench-{os.getpid()}")
    pins = os.path.join(bpf.bpffs_root(), f"pxbench-{os.getpid()}")
    full: list[float] = []
    restart: list[float] = []
    partial: list[float] = []
    terminate_as_interrupt()
    os.makedirs(cgroup, exist_ok=True)
    try:
        for run in range(args.runs):
            with netns("ebpf") as ns:
                proxier = new_proxier(ns, pins, cgroup, objs)
                seconds, result = timed_sync(proxier, True)
                full.append(seconds)
                again = new_proxier(ns, pins, cgroup, objs)
                seconds, written = timed_sync(again, True)
                restart.append(seconds)
                times = []
                for k in range(args.partials):
                    i = (run * 7919 + k * 104729) % n
                    again.on_event("EndpointSlice", "MODIFIED", moved_endpoint_slice(i, m, serial=run * 1000 + k))
                    seconds, _ = timed_sync(again, False)
                    times.append(seconds)
                partial += times
                print(f"  run {run + 1}: full sync {full[-1]:.3f}s ({result.rules} writes), restarted engine's "
                      f"full sync {restart[-1]:.3f}s ({written.rules} writes, of which the entry-point table's "
                      f"rules are rewritten), partial sync median {median(times) * 1e3:.2f} ms "
                      f"(max {max(times) * 1e3:.2f} ms)", flush=True)
                EbpfKernel(pins, check_cgroup=False).remove()
    finally:
        remove_all_netns()
        if os.path.isdir(pins):
            EbpfKernel(pins, check_cgroup=False).remove()
        os.rmdir(cgroup)
    print()
    report(f"(a) full sync of {n} x {m}, seconds (median of {args.runs})", median(full), 2.0, "s")
    print(f"(b) a restarted engine's full sync into the populated maps: median {median(restart):.3f}s")
    report(f"(c) one endpoint change, whole partial sync, ms (median of {len(partial)})", median(partial) * 1e3, 5.0,
           " ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
