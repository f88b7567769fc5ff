"""The iptables engine's sync at scale, against the real kernel (run as root).

  python bench/bench_sync.py [--services 10000] [--endpoints 5] [--backends legacy,nft]
                             [--nft-services 2000] [--runs 3]

Everything happens in throw-away network namespaces (`pxbench<hex>-*`), removed afterwards.
Per backend, with N services x M endpoints (`synth.cluster`):

  (a) our whole full sync (`Proxier.sync()` with the iptables writer in-process, the real IptablesSystem bound
      to a fresh namespace: plan, save, render, restore with the jump rules and canaries; the save runs
      while the render starts, and the payload streams into the restore as it is rendered) / a
      bare `iptables-restore -w 5 --noflush` of the same payload into a fresh namespace;
      medians of `--runs` (target <= 1.3) and best of `--runs` each (target <= 1.2); each
      run prints how many saves and restores the full sync made;
  (b) render alone (plan -> restore payload), median; target <= 1.0 s;
  (c) one endpoint change: the partial sync that follows / the full sync; target <= 10 %;
  (c2) that partial sync / a bare `iptables-restore -w 5 --noflush` of the same partial payload
      into a namespace holding the full payload; target <= 1.3;
  (d) peak RSS of a `kubectl-proxyctl run --once --from-file` process at that scale; target
      <= 400 MB.

Backends: `legacy` (iptables-legacy) and `nft` (iptables-nft, this machine's default: the
engine picks it in a fresh namespace). With iptables-nft 1.8.9 a `--noflush` restore costs
O(commands x distinct chain names) in user space: before talking to the kernel it inserts
the chain name (and jump target) of every command into a sorted linked list, comparing names
with strcmp (about half the profile is strcmp called from that loop). Bare restores of this
layout measured here: 1,000 x 5 in 2.6 s, 2,000 x 5 in 9-12 s, 4,000 x 5 in 60 s, and 10,000
x 5 (60,000 chains, 230,000 lines) did not finish within 600 s; the legacy backend restores
10,000 x 5 in about 6 s. So the nft backend is measured at `--nft-services` (default 2,000);
pass `--nft-services 10000` only if you have the better part of an hour.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Iterator

from common import ENGINE_WITH_RSS, in_ns, median, netns, remove_all_netns, report, rss_mb, terminate_as_interrupt
from synth import cluster

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kubectl_proxyctl.modes.iptables.render import render  # noqa: E402
from kubectl_proxyctl.plan.planner import ProxyConfig, plan  # noqa: E402
from kubectl_proxyctl.engine.proxier import Proxier  # noqa: E402
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter  # noqa: E402
from kubectl_proxyctl.kube.tracker import StateTracker  # noqa: E402
from kubectl_proxyctl.system.conntrack import ConntrackSystem  # noqa: E402
from kubectl_proxyctl.system.executor import SubprocessExecutor  # noqa: E402
from kubectl_proxyctl.system.iptables import Backend, Binaries, IptablesSystem  # noqa: E402

NODE = "node1"
CLUSTER_CIDR = "10.244.0.0/16"


# --- measurements -----------------------------------------------------------------------------


def config() -> ProxyConfig:
    return ProxyConfig(node_name=NODE, cluster_cidrs=(CLUSTER_CIDR,))


class CountingIptablesSystem(IptablesSystem):
    """The real adapter, remembering the payloads it restored and counting its saves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restored: list[list[str]] = []  # each payload as the chunks it was restored in
        self.saves = 0

    @property
    def restored(self) -> list[str]:
        return ["".join(chunks) for chunks in self._restored]

    def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None:
        self._restored.append([payload])
        super().restore(payload, noflush, counters)

    def restore_chunks(self, chunks: Iterable[str], noflush: bool = True) -> None:
        """The streamed restore, keeping the chunks (joined only when read, outside the
        timed sync)."""
        kept: list[str] = []
        self._restored.append(kept)

        def keep() -> Iterator[str]:
            for chunk in chunks:
                kept.append(chunk)
                yield chunk

        super().restore_chunks(keep(), noflush)

    def save(self, table: str | None = None) -> str:
        self.saves += 1
        return super().save(table)

    def calls(self) -> str:
        return f"{self.saves} iptables-save, {len(self._restored)} iptables-restore"


def new_proxier(ns: str, backend: Backend, objs: list[dict[str, Any]]) -> Proxier:
    executor = SubprocessExecutor(netns=ns)
    system = CountingIptablesSystem(executor=executor, backend=backend)
    proxier = Proxier(config(), StateTracker(NODE), IptablesWriter(system, random_fully=system.supports_random_fully()),
                      conntrack=ConntrackSystem(executor=executor))
    for obj in objs:
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier


def bare_restore(backend: Backend, payload: str, then: str = "") -> tuple[float, float]:
    """(seconds of a bare restore of `payload` into a fresh namespace, seconds of a bare
    restore of `then` after it; 0.0 without `then`)."""
    argv = [Binaries.of(config().family, backend).restore, "-w", "5", "--noflush"]
    times = []
    with netns("bare") as ns:
        for text in (payload, then) if then else (payload,):
            started = time.perf_counter()
            done = in_ns(ns, argv, text)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"bare {' '.join(argv)} failed: {done.stderr.strip()[:500]}")
    return times[0], times[1] if then else 0.0


def changed_slice(objs: list[dict[str, Any]], i: int, services: int) -> dict[str, Any]:
    """Service i's EndpointSlice with its first endpoint replaced by a new address."""
    index = 3 + 2 * (i % services) + 1  # synth.cluster: 3 nodes, then (service, slice) pairs
    sl = copy.deepcopy(objs[index])
    assert sl["kind"] == "EndpointSlice"
    sl["endpoints"][0]["addresses"] = [f"10.200.{i // 256 % 256}.{i % 256}"]
    return sl


def measure_syncs(backend: Backend, objs: list[dict[str, Any]], services: int,
                  runs: int) -> tuple[list[float], list[float], list[float], list[float], str]:
    """(full sync seconds, bare restore seconds, partial sync seconds, bare partial restore
    seconds, payload)."""
    full: list[float] = []
    bare: list[float] = []
    partial: list[float] = []
    bare_partial: list[float] = []
    payload = ""
    for run in range(runs):
        with netns("engine") as ns:
            proxier = new_proxier(ns, backend, objs)
            system = proxier.writer.system  # type: ignore[attr-defined]
            started = time.perf_counter()
            result = proxier.sync()
            full.append(time.perf_counter() - started)
            if result is None or result.error or not result.full:
                raise SystemExit(f"full sync failed: {result}")
            payload = system.restored[0]
            full_calls = system.calls()
            # One endpoint of one service changes; the next sync is a partial one.
            proxier.on_event("EndpointSlice", "MODIFIED", changed_slice(objs, 17 + run * 101, services))
            restored = len(system.restored)
            started = time.perf_counter()
            result = proxier.sync()
            partial.append(time.perf_counter() - started)
            if result is None or result.error or result.full:
                raise SystemExit(f"partial sync failed: {result}")
            partial_payloads = system.restored[restored:]
        b, bp = bare_restore(backend, payload, "".join(partial_payloads))
        bare.append(b)
        bare_partial.append(bp)
        print(f"  run {run + 1}: full sync {full[-1]:.3f}s ({full_calls}), bare restore {bare[-1]:.3f}s, "
              f"partial sync {partial[-1]:.3f}s ({len(partial_payloads)} restore(s), "
              f"{sum(len(p.splitlines()) for p in partial_payloads)} lines), bare restore of the partial "
              f"payload {bare_partial[-1]:.3f}s", flush=True)
    return full, bare, partial, bare_partial, payload


def measure_render(objs: list[dict[str, Any]], runs: int) -> tuple[float, float]:
    tracker = StateTracker(NODE)
    for obj in objs:
        tracker.apply(obj["kind"], "ADDED", obj)
    state = tracker.snapshot().state
    plans, renders = [], []
    for _ in range(runs):
        started = time.perf_counter()
        node_plan = plan(state, config())
        plans.append(time.perf_counter() - started)
        started = time.perf_counter()
        render(node_plan)
        renders.append(time.perf_counter() - started)
    return median(plans), median(renders)


def run_once_rss(backend: Backend, objs: list[dict[str, Any]]) -> tuple[float, float]:
    """(peak RSS of the engine process in MB, wall seconds) of `run --once --from-file` over
    the objects, in a fresh namespace.

    The engine picks its backend like kube-proxy's iptables-wrapper; an empty chain in the
    legacy tables steers it to legacy, as kubelet's hint chain would."""
    with tempfile.TemporaryDirectory() as tmp, netns("once") as ns:
        path = os.path.join(tmp, "cluster.json")
        with open(path, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "List", "items": objs}, fh)
        if backend == Backend.LEGACY:
            in_ns(ns, ["iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"])
        rss_file = os.path.join(tmp, "rss")
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", ENGINE_WITH_RSS, "run", "--once", "--from-file", path,
                "--node-name", NODE, "--cluster-cidr", CLUSTER_CIDR,
                "--healthz-bind-address", "", "--metrics-bind-address", ""]
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PXBENCH_RSS": rss_file})
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait()
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"run --once failed: {err.strip()[-500:]}")
        chosen = in_ns(ns, [f"iptables-{backend.value}-save", "-t", "nat"]).stdout
        if ":KUBE-SERVICES" not in chosen:
            raise SystemExit(f"run --once did not program the {backend} backend: {err.strip()[-300:]}")
        with open(rss_file) as fh:
            return int(fh.read()) / 1024.0, seconds


# --- main -------------------------------------------------------------------------------------


def bench_backend(backend: Backend, services: int, endpoints: int, runs: int, rss: bool = True) -> bool:
    version = subprocess.run([Binaries.of(config().family, backend).restore, "--version"],
                             capture_output=True, text=True).stdout.strip()
    print(f"\n== backend {backend} ({version}), {services} services x {endpoints} endpoints ==", flush=True)
    objs = cluster(services, endpoints)
    ok = True
    full, bare, partial, bare_partial, payload = measure_syncs(backend, objs, services, runs)
    chains = sum(1 for line in payload.splitlines() if line.startswith(":"))
    print(f"payload: {len(payload.splitlines())} lines, {chains} chains, {len(payload) / 1e6:.1f} MB")
    print(f"full sync (median of {runs}): {median(full):.3f}s   bare iptables-restore --noflush "
          f"(median of {runs}, fresh namespace each): {median(bare):.3f}s")
    print(f"best of {runs}: full sync {min(full):.3f}s, bare restore {min(bare):.3f}s, partial sync "
          f"{min(partial):.3f}s, bare restore of the partial payload {min(bare_partial):.3f}s")
    ok &= report(f"(a) {backend}: full sync / bare restore", median(full) / median(bare), 1.3)
    report(f"(a) {backend}: the same, best of {runs} each", min(full) / min(bare), 1.2)
    plan_s, render_s = measure_render(objs, runs)
    print(f"plan alone: {plan_s:.3f}s (median of {runs})")
    ok &= report(f"(b) {backend}: render alone (s, median of {runs})", render_s, 1.0)
    ok &= report(f"(c) {backend}: partial sync after 1 endpoint change / full sync", median(partial) / median(full), 0.10)
    report(f"(c) {backend}: the same, best of {runs} each", min(partial) / min(full), 0.10)
    print(f"partial sync (median of {runs}): {median(partial):.3f}s")
    ok &= report(f"(c2) {backend}: partial sync / bare restore of its payload",
                 median(partial) / median(bare_partial), 1.3)
    report(f"(c2) {backend}: the same, best of {runs} each", min(partial) / min(bare_partial), 1.3)
    if rss:
        peak, once_s = run_once_rss(backend, objs)
        print(f"run --once --from-file: {once_s:.2f}s wall")
        ok &= report(f"(d) {backend}: peak RSS of the run --once process (MB)", peak, 400)
    print(f"(this benchmark process, which holds several copies of everything: peak RSS {rss_mb():.0f} MB)")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=5)
    parser.add_argument("--backends", default="legacy,nft")
    parser.add_argument("--nft-services", type=int, default=2000,
                        help="scale for the nft backend (its --noflush restore is quadratic; see above)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true", help="skip (d), the run --once process")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_sync.py needs root (network namespaces, netfilter)", file=sys.stderr)
        return 2
    detected = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.strip()
    print(f"`iptables` here: {detected}; in a fresh namespace the engine picks the "
          f"{'legacy' if '(legacy)' in detected else 'nft'} backend")
    ok = True
    terminate_as_interrupt()
    try:
        for name in args.backends.split(","):
            backend = Backend(name.strip())
            services = args.nft_services if backend == Backend.NFT else args.services
            ok &= bench_backend(backend, services, args.endpoints, args.runs, not args.no_rss)
    finally:
        remove_all_netns()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
