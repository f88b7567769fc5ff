"""The nftables engine's start over a table a previous run left populated (run as root).

  python bench/bench_start.py [--services 10000] [--endpoints 5] [--runs 3] [--no-rewrite]

Everything happens in one throw-away network namespace (`pxbench<hex>-start`), removed
afterwards. With N services x M endpoints (`synth.cluster`), configured as `run --mode
nftables` configures the engine by default:

  1. a first engine programs the empty namespace (a full transaction into a fresh table);
  2. `--runs` times, a new engine (a new Proxier and NftablesWriter, as after a restart)
     starts over that populated table: engine start -> first sync done, in seconds; target
     <= 10 s at 10,000 x 5. After each start the table must list exactly as after step 1
     (blocks compared in name order, elements sorted: nft lists hash-set elements in a
     per-set random order, and re-created objects last);
  3. unless `--no-rewrite`: one full rewrite of the populated table (the transaction a full
     sync without reconciliation runs: every chain flushed and refilled, every map flushed
     and refilled), timed for comparison.

Each nft call the engine makes is timed too, so the split between nft and the engine's own
work shows (the table's listing runs in a thread of its own while the engine plans: the
nft times can add up to more than the sync's).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from typing import Any, Sequence

from common import in_ns, netns, remove_all_netns, report, terminate_as_interrupt
from synth import cluster

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kubectl_proxyctl.engine.proxier import Proxier  # noqa: E402
from kubectl_proxyctl.kube.tracker import StateTracker  # noqa: E402
from kubectl_proxyctl.modes.nftables.reconcile import comparable_listing  # noqa: E402
from kubectl_proxyctl.modes.nftables.render import is_affinity_set, render  # noqa: E402
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter  # noqa: E402
from kubectl_proxyctl.plan.planner import ProxyConfig, plan  # noqa: E402
from kubectl_proxyctl.system.executor import DEFAULT_TIMEOUT, Result, SubprocessExecutor  # noqa: E402
from kubectl_proxyctl.system.nftables import NftSystem  # noqa: E402

NODE = "node1"
CLUSTER_CIDR = "10.244.0.0/16"


def config() -> ProxyConfig:
    # What `run --mode nftables` passes by default.
    return ProxyConfig(node_name=NODE, cluster_cidrs=(CLUSTER_CIDR,), nodeport_addresses=("primary",),
                       localhost_nodeports=False)


class TimedExecutor(SubprocessExecutor):
    """The real executor, remembering every command it ran and how long it took."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns=netns)
        self.calls: list[tuple[str, float]] = []

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        started = time.perf_counter()
        try:
            return super().run(argv, stdin=stdin, timeout=timeout)
        finally:
            self.calls.append((" ".join(argv[:4]), time.perf_counter() - started))


class TimedNft(NftSystem):
    """NftSystem timing its table listing too (done through libnftables, not the executor)."""

    executor: TimedExecutor

    def listing(self, table: str | None = None) -> str | None:
        started = time.perf_counter()
        try:
            return super().listing(table)
        finally:
            self.executor.calls.append(("listing (in a thread)", time.perf_counter() - started))


def new_proxier(ns: str, objs: list[dict[str, Any]]) -> tuple[Proxier, TimedExecutor]:
    cfg = config()
    executor = TimedExecutor(ns)
    proxier = Proxier(cfg, StateTracker(NODE), NftablesWriter(TimedNft(cfg.family, executor=executor)))
    for obj in objs:
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier, executor


def cpu_seconds() -> tuple[float, float]:
    """(user + system CPU seconds of this process, of its finished children)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def timed_sync(proxier: Proxier, executor: TimedExecutor, what: str) -> float:
    """One sync's wall-clock seconds; its nft calls and its CPU time are printed too (the CPU
    time does not grow when other work shares the machine, the wall-clock time does)."""
    del executor.calls[:]
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    result = proxier.sync()
    seconds = time.perf_counter() - started
    own, children = (after - before for after, before in zip(cpu_seconds(), cpu_before))
    if result is None or result.error or not result.full:
        raise SystemExit(f"{what} failed: {result}")
    nft_s = sum(s for _, s in executor.calls)
    calls = ", ".join(f"{argv} {s:.2f}s" for argv, s in executor.calls)
    print(f"  {what}: {seconds:.3f}s (nft: {nft_s:.3f}s in {len(executor.calls)} call(s): {calls}; "
          f"CPU: {own:.2f}s in this process, {children:.2f}s in nft processes)", flush=True)
    return seconds


def listing(ns: str) -> list[str]:
    """`nft list table ip kube-proxy`, comparable (`reconcile.comparable_listing`)."""
    done = in_ns(ns, ["nft", "list", "table", "ip", "kube-proxy"])
    if done.returncode != 0:
        raise SystemExit(f"nft list table failed: {done.stderr.strip()[:300]}")
    return comparable_listing(done.stdout)


def full_rewrite(ns: str, objs: list[dict[str, Any]]) -> float:
    """The full transaction over the populated table (what a start without reconciliation runs)."""
    tracker = StateTracker(NODE)
    for obj in objs:
        tracker.apply(obj["kind"], "ADDED", obj)
    system = NftSystem(config().family, executor=SubprocessExecutor(netns=ns))
    affinity = {s for s in system.sets() if is_affinity_set(s)}
    rendered = render(plan(tracker.snapshot().state, config()), existing_chains=system.chains(),
                      existing_affinity_sets=affinity, first=True, now=time.monotonic())
    started = time.perf_counter()
    done = in_ns(ns, ["nft", "-f", "-"], rendered.text)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the full rewrite failed: {done.stderr.strip()[:300]}")
    print(f"  full rewrite of the populated table (nft -f of the full transaction): {seconds:.3f}s", flush=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-rewrite", action="store_true", help="skip timing the full rewrite (minutes at 10,000)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_start.py needs root (network namespaces, netfilter)", file=sys.stderr)
        return 2
    version = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version}, kernel {os.uname().release}; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    objs = cluster(args.services, args.endpoints)
    terminate_as_interrupt()
    ok = True
    try:
        print(f"\n== nftables start over a populated table, {args.services} services x {args.endpoints} "
              "endpoints ==", flush=True)
        with netns("start") as ns:
            proxier, executor = new_proxier(ns, objs)
            timed_sync(proxier, executor, "populating: first engine, fresh table")
            fresh = listing(ns)
            starts: list[float] = []
            for run in range(args.runs):
                proxier, executor = new_proxier(ns, objs)
                starts.append(timed_sync(proxier, executor, f"run {run + 1}: engine start -> first sync done"))
                if listing(ns) != fresh:
                    raise SystemExit("the table after the start differs from the freshly written one")
            print("  the table after every start lists exactly as the freshly written one")
            rewrite = None if args.no_rewrite else full_rewrite(ns, objs)
            in_ns(ns, ["nft", "delete", "table", "ip", "kube-proxy"])
        best = min(starts)
        ok &= report(f"nftables start with a populated table (s, best of {args.runs})", best, 10.0)
        if rewrite is not None:
            print(f"full rewrite of the populated table: {rewrite:.3f}s ({rewrite / best:.1f} x the start)")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        remove_all_netns()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
