"""The nftables engine's sync at scale, against the real kernel (run as root).

  python bench/bench_nftables.py [--services 10000] [--endpoints 5] [--small-services 100]
                                 [--runs 3] [--partials 5] [--gap 1.2] [--resync] [--no-rss]

Everything happens in throw-away network namespaces (`pxbench<hex>-*`), removed afterwards.
With N services x M endpoints (`synth.cluster`) and the engine configured as `run --mode
nftables` configures it by default (NodePorts on the primary node IP only, no localhost
NodePorts):

  (a) our whole full sync (`Proxier.sync()` with the nftables writer in-process, the real NftSystem bound to a
      fresh namespace: list chains and sets, plan, render, `nft -f -`) / a bare `nft -f -` of
      the same script into another fresh namespace; medians of `--runs`; target <= 1.3;
  (b) one endpoint change: the whole partial sync (`Proxier.sync()` with the nftables writer after the tracker
      got the change), median of `--partials` changes per run, each to another service, one
      every `--gap` seconds (from the second on, each sync also deletes the chain the previous
      change left stale, as it does on a busy node); target <= 50 ms at N services and
      <= 2 x the same at `--small-services`;
  with `--resync`, each run also times a second full sync into the populated table (what a
      sync after a failure, or every full-sync period, costs); no target;
  (rss) peak RSS of a `kubectl-proxyctl run --mode nftables --once --from-file` process at N
      services (bench_sync.py's target for iptables mode: <= 400 MB).

Timings are printed with their ratios; nothing here fails on a timing. Each nft call the
engine makes is timed too, so the split between the kernel/nft and the engine's own work
shows up next to the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (ENGINE_WITH_RSS, in_ns, median, netns, percentile, remove_all_netns, report, rss_mb,
                    terminate_as_interrupt)
from synth import cluster, moved_endpoint_slice

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kubectl_proxyctl.plan.planner import ProxyConfig  # noqa: E402
from kubectl_proxyctl.engine.proxier import Proxier  # noqa: E402
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter  # noqa: E402
from kubectl_proxyctl.kube.tracker import StateTracker  # noqa: E402
from kubectl_proxyctl.system.conntrack import ConntrackSystem  # noqa: E402
from kubectl_proxyctl.system.executor import SubprocessExecutor  # noqa: E402
from kubectl_proxyctl.system.nftables import NftSystem  # noqa: E402

NODE = "node1"
CLUSTER_CIDR = "10.244.0.0/16"


def config() -> ProxyConfig:
    # What `run --mode nftables` passes by default.
    return ProxyConfig(node_name=NODE, cluster_cidrs=(CLUSTER_CIDR,), nodeport_addresses=("primary",),
                       localhost_nodeports=False)


class TimedNftSystem(NftSystem):
    """The real adapter, remembering every transaction it ran and how long `nft` took."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, float]] = []

    def run(self, script: str, check: bool = False) -> None:
        started = time.perf_counter()
        try:
            super().run(script, check)
        finally:
            self.calls.append((script, time.perf_counter() - started))


def new_proxier(ns: str, objs: list[dict[str, Any]]) -> tuple[Proxier, TimedNftSystem]:
    cfg = config()
    executor = SubprocessExecutor(netns=ns)
    system = TimedNftSystem(cfg.family, executor=executor)
    proxier = Proxier(cfg, StateTracker(NODE), NftablesWriter(system),
                      conntrack=ConntrackSystem(executor=executor, family=cfg.family))
    for obj in objs:
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier, system


def drop_table(ns: str) -> float:
    """Delete our table before the namespace goes, so its teardown is not left to the kernel's
    namespace cleanup worker, running in the background while the next transaction is timed."""
    started = time.perf_counter()
    in_ns(ns, ["nft", "delete", "table", "ip", "kube-proxy"])
    return time.perf_counter() - started


def bare_nft(script: str) -> float:
    with netns("bare") as ns:
        started = time.perf_counter()
        done = in_ns(ns, ["nft", "-f", "-"], script)
        seconds = time.perf_counter() - started
        drop_table(ns)
    if done.returncode != 0:
        raise SystemExit(f"bare nft -f failed: {done.stderr.strip()[:500]}")
    return seconds


def partial_syncs(proxier: Proxier, system: TimedNftSystem, services: int, endpoints: int,
                  count: int, gap: float, run: int) -> list[float]:
    """Wall seconds of `count` partial syncs, each after one endpoint of another service moved."""
    out: list[float] = []
    for k in range(count):
        time.sleep(gap)
        i = (17 + 1013 * (run * count + k)) % services
        proxier.on_event("EndpointSlice", "MODIFIED", moved_endpoint_slice(i, endpoints, run * count + k))
        del system.calls[:]
        started = time.perf_counter()
        result = proxier.sync()
        seconds = time.perf_counter() - started
        if result is None or result.error or result.full:
            raise SystemExit(f"partial sync failed: {result}")
        out.append(seconds)
        nft_s = sum(s for _, s in system.calls)
        sizes = "+".join(f"{len(text.splitlines())}" for text, _ in system.calls)
        print(f"    partial sync (svc-{i}): {seconds * 1e3:7.1f} ms; {len(system.calls)} nft call(s) "
              f"({sizes} lines) {nft_s * 1e3:7.1f} ms, the rest {(seconds - nft_s) * 1e3:6.1f} ms", flush=True)
    return out


def resync(proxier: Proxier, system: TimedNftSystem) -> float:
    """A full sync into the populated table (after a failure, or every full-sync period)."""
    proxier.schedule.request()
    del system.calls[:]
    started = time.perf_counter()
    result = proxier.sync()
    seconds = time.perf_counter() - started
    if result is None or result.error or not result.full:
        raise SystemExit(f"full re-sync failed: {result}")
    nft_s = sum(s for _, s in system.calls)
    print(f"    full re-sync into the populated table: {seconds:.3f}s ({len(system.calls)} nft call(s) "
          f"{nft_s:.3f}s, the rest {seconds - nft_s:.3f}s)", flush=True)
    return seconds


def measure(services: int, endpoints: int, runs: int, partials: int, gap: float, with_bare: bool,
            with_resync: bool = False) -> tuple[list[float], list[float], list[float], str, list[float]]:
    """(full sync seconds, bare nft seconds, partial sync seconds, full script, re-sync seconds)."""
    objs = cluster(services, endpoints)
    full: list[float] = []
    bare: list[float] = []
    partial: list[float] = []
    resyncs: list[float] = []
    script = ""
    for run in range(runs):
        # The bare transaction runs after the engine's in odd runs and before it in even ones
        # (with the script of the run before), so neither side always follows a namespace's
        # teardown.
        if with_bare and run % 2 == 1:
            bare.append(bare_nft(script))
            print(f"  run {run + 1}: bare nft -f of the same script {bare[-1]:.3f}s", flush=True)
        with netns("engine") as ns:
            proxier, system = new_proxier(ns, objs)
            started = time.perf_counter()
            result = proxier.sync()
            full.append(time.perf_counter() - started)
            if result is None or result.error or not result.full:
                raise SystemExit(f"full sync failed: {result}")
            scripts = [text for text, _ in system.calls]
            if len(scripts) != 1:
                raise SystemExit(f"expected one transaction in the first full sync, saw {len(scripts)}")
            if script and scripts[0] != script:
                raise SystemExit("the full sync's transaction differs between runs")
            script = scripts[0]
            nft_s = sum(s for _, s in system.calls)
            print(f"  run {run + 1}: full sync {full[-1]:.3f}s (nft -f {nft_s:.3f}s, the rest "
                  f"{full[-1] - nft_s:.3f}s)", flush=True)
            partial += partial_syncs(proxier, system, services, endpoints, partials, gap, run)
            if with_resync:
                resyncs.append(resync(proxier, system))
            dropped = drop_table(ns)
            if dropped > 1.0:
                print(f"  (deleting the table took {dropped:.1f}s, untimed)", flush=True)
        if with_bare and run % 2 == 0:
            bare.append(bare_nft(script))
            print(f"  run {run + 1}: bare nft -f of the same script {bare[-1]:.3f}s", flush=True)
    return full, bare, partial, script, resyncs


def run_once_rss(objs: list[dict[str, Any]]) -> tuple[float, float]:
    """(peak RSS of the engine process in MB, wall seconds) of `run --mode nftables --once
    --from-file` over the objects, in a fresh namespace."""
    with tempfile.TemporaryDirectory() as tmp, netns("once") as ns:
        path = os.path.join(tmp, "cluster.json")
        with open(path, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "List", "items": objs}, fh)
        rss_file = os.path.join(tmp, "rss")
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", ENGINE_WITH_RSS, "run", "--mode", "nftables",
                "--once", "--from-file", path, "--node-name", NODE, "--cluster-cidr", CLUSTER_CIDR,
                "--healthz-bind-address", "", "--metrics-bind-address", ""]
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PXBENCH_RSS": rss_file})
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait()
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"run --mode nftables --once failed: {err.strip()[-500:]}")
        listed = in_ns(ns, ["nft", "list", "chain", "ip", "kube-proxy", "services"])
        if listed.returncode != 0 or "vmap @service-ips" not in listed.stdout:
            raise SystemExit(f"run --mode nftables --once did not program the table: {err.strip()[-300:]}")
        with open(rss_file) as fh:
            return int(fh.read()) / 1024.0, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--small-services", type=int, default=100,
                        help="the small cluster (b) compares the partial sync with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partials", type=int, default=5, help="partial syncs measured per run")
    parser.add_argument("--gap", type=float, default=1.2,
                        help="seconds between partial syncs (stale chains are deleted after 1 s)")
    parser.add_argument("--resync", action="store_true",
                        help="also time a second full sync into the populated table in each run")
    parser.add_argument("--no-rss", action="store_true", help="skip (rss), the run --once process")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_nftables.py needs root (network namespaces, netfilter)", file=sys.stderr)
        return 2
    version = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}, kernel {os.uname().release}", flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (other work on the machine skews every timing)")
    terminate_as_interrupt()
    try:
        n, m = args.services, args.endpoints
        print(f"\n== nftables mode, {n} services x {m} endpoints ==", flush=True)
        full, bare, partial, script, resyncs = measure(n, m, args.runs, args.partials, args.gap,
                                                       with_bare=True, with_resync=args.resync)
        print(f"\n== nftables mode, {args.small_services} services x {m} endpoints (partial syncs only) ==",
              flush=True)
        _, _, small, _, _ = measure(args.small_services, m, args.runs, args.partials, args.gap, with_bare=False)

        lines = script.splitlines()
        print(f"\nfull script: {len(lines)} lines, {len(script) / 1e6:.1f} MB, "
              f"{sum(1 for ln in lines if ln.startswith('add rule'))} rules")
        print(f"full sync (median of {args.runs}): {median(full):.3f}s   bare nft -f (median of {args.runs}, "
              f"fresh namespace each): {median(bare):.3f}s")
        report(f"(a) full sync / bare nft -f, {n} services", median(full) / median(bare), 1.3)
        if resyncs:
            print(f"full re-sync into the populated table (median of {len(resyncs)}): {median(resyncs):.3f}s, "
                  f"{median(resyncs) / median(full):.2f} x the first full sync")
        for label, xs in ((f"{n} services", partial), (f"{args.small_services} services", small)):
            print(f"partial sync at {label} ({len(xs)} changes): median {median(xs) * 1e3:.1f} ms, "
                  f"p90 {percentile(xs, 90) * 1e3:.1f} ms, max {max(xs) * 1e3:.1f} ms")
        report(f"(b) partial sync after 1 endpoint change, {n} services (ms)", median(partial) * 1e3, 50)
        report(f"(b) the same: {n} services / {args.small_services} services", median(partial) / median(small), 2)
        if not args.no_rss:
            rss, once_s = run_once_rss(cluster(n, m))
            print(f"run --mode nftables --once --from-file: {once_s:.2f}s wall")
            report(f"(rss) peak RSS of the run --once process, {n} services (MB)", rss, 400)
        print(f"(this benchmark process, which holds several copies of everything: peak RSS {rss_mb():.0f} MB)")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        remove_all_netns()
    return 0


if __name__ == "__main__":
    sys.exit(main())
