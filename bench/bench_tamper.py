"""What the engine's tamper check costs at scale (run as root).

  python bench/bench_tamper.py [--services 10000] [--endpoints 5] [--nft-services 2000] [--runs 5]

Every sync period the engine asks its writer whether its rules are still there
(`Writer.state_missing`). The check has two stages: a fingerprint of the kernel's state that
costs the same at any size (iptables-legacy: each table's entry count and size; nf_tables: the
ruleset generation), and only when that moved, a precise check of our rules (one save per
table, or one listing of our nft table). Measured in throw-away namespaces (`pxbench<hex>-*`)
after a real full sync of N services x M endpoints:

  (a) iptables-legacy, nothing changed: one check (fingerprint only), median of `--runs`;
      as a share of one core at the default 30 s sync period; target <= 5 %;
  (b) iptables-legacy, someone else changed a table: one check with the precise stage;
      share of one core if it ran every period (it runs only after changes); reported;
  (c) nftables mode, nothing changed, at `--nft-services` (a full sync of 10,000 services
      into nft takes ~100 s here); target <= 5 % of one core at 30 s;
  (d) nftables mode, someone else's transaction: the precise stage (a listing of our table);
      reported.

Nothing here fails on a timing; the figures go into the issue notes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

from common import in_ns, median, netns, remove_all_netns, report, terminate_as_interrupt
from synth import cluster

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kubectl_proxyctl.engine.proxier import Proxier  # noqa: E402
from kubectl_proxyctl.kube.tracker import StateTracker  # noqa: E402
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter  # noqa: E402
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter  # noqa: E402
from kubectl_proxyctl.plan.planner import ProxyConfig  # noqa: E402
from kubectl_proxyctl.system.executor import SubprocessExecutor  # noqa: E402
from kubectl_proxyctl.system.iptables import Backend, IptablesSystem  # noqa: E402
from kubectl_proxyctl.system.nftables import NftSystem  # noqa: E402

NODE = "node1"
PERIOD = 30.0


def synced(ns: str, writer: Any, objs: list[dict[str, Any]]) -> Proxier:
    proxier = Proxier(ProxyConfig(node_name=NODE, cluster_cidrs=("10.128.0.0/9",)), StateTracker(NODE), writer,
                      conntrack_cleanup=False)
    for obj in objs:
        proxier.on_event(str(obj["kind"]), "ADDED", obj)
    result = proxier.sync()
    if result is None or result.error:
        raise SystemExit(f"full sync failed: {result}")
    return proxier


def timed(check: Callable[[], list[str]], runs: int, between: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if between is not None:
            between()
        started = time.perf_counter()
        missing = check()
        times.append(time.perf_counter() - started)
        if missing:
            raise SystemExit(f"the check reports {missing} although our rules are intact")
    return median(times)


def measure(label: str, quiet_id: str, changed_id: str, ns: str, services: int, endpoints: int, runs: int,
            writer: Any, other_change: Callable[[int], list[str]]) -> None:
    """A full sync of `services` into `ns`, then the check with nothing changed and after another
    program's change (`other_change(n)` is its command)."""
    started = time.perf_counter()
    synced(ns, writer, cluster(services, endpoints))
    print(f"== {label}, {services} services x {endpoints} endpoints (full sync {time.perf_counter() - started:.1f} s)")
    writer.state_missing()  # the one precise check that follows a full sync
    quiet = timed(writer.state_missing, runs)
    print(f"{quiet_id} {label}: one check, nothing changed: {quiet * 1000:.2f} ms")
    report(f"{quiet_id} {label}: share of one core at a 30 s period (%)", quiet / PERIOD * 100, 5)
    counter = iter(range(10**6))
    changed = timed(writer.state_missing, runs, lambda: in_ns(ns, other_change(next(counter))))
    print(f"{changed_id} {label}: one check after another program's change: {changed:.3f} s "
          f"({changed / PERIOD * 100:.1f} % of one core in a period that has such a change)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--nft-services", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    terminate_as_interrupt()
    try:
        with netns("legacy") as ns:
            measure("legacy", "(a)", "(b)", ns, args.services, args.endpoints, args.runs,
                    IptablesWriter(IptablesSystem(executor=SubprocessExecutor(netns=ns), backend=Backend.LEGACY)),
                    lambda n: ["iptables-legacy", "-w", "5", "-t", "nat", "-N", f"OTHER-{n}"])
        with netns("nft") as ns:
            writer = NftablesWriter(NftSystem(executor=SubprocessExecutor(netns=ns)))
            writer.LISTING_SPACING = 0.0  # measure every listing (the engine spaces them out)
            measure("nftables", "(c)", "(d)", ns, args.nft_services, args.endpoints, args.runs, writer,
                    lambda n: ["nft", "add", "table", "inet", f"other{n}"])
    finally:
        remove_all_netns()


if __name__ == "__main__":
    main()
