"""The API path: `endpoints svc/x` against the lab API server, and an informer's initial sync.

  python bench/bench_informer.py

Prints: wall time of `kubectl-proxyctl endpoints svc/svc-1` against a lab API server holding
2,000 services (median of 5, imports included; target ≤ 1.0 s), and the initial sync of
10,000 Services + 10,000 EndpointSlices by the engine's informers (target ≤ 5 s) with the
process's peak RSS (target ≤ 300 MB). The server runs in a separate process so that its
memory and CPU are not counted as the client's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import exe, median, report, time_cmd

SERVER = r"""
import json, signal, sys, threading
sys.path.insert(0, sys.argv[3])
from synth import cluster
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
srv = APIServer(state_dir=None, bookmark_interval=30).start()
srv.load([o for o in cluster(int(sys.argv[1]), int(sys.argv[2]), namespace="default") if o["kind"] != "Node"])
print(json.dumps({"kubeconfig": str(srv.kubeconfig_path)}), flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
srv.stop()
"""

SYNC = r"""
import json, resource, sys, time
from kubectl_proxyctl.kube.client import connect
from kubectl_proxyctl.kube.informer import ClusterInformers
kubeconfig = sys.argv[1]
t0 = time.perf_counter()
inf = ClusterInformers(lambda: connect(kubeconfig, request_timeout=60)).start()
ok = inf.wait_synced(120)
elapsed = time.perf_counter() - t0
n = len(inf.objects())
inf.stop()
print(json.dumps({"ok": ok, "seconds": elapsed, "objects": n,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def start_server(services: int, endpoints: int) -> tuple[subprocess.Popen[str], str]:
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(services), str(endpoints), here],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the lab API server did not start")
    return proc, json.loads(line)["kubeconfig"]


def main() -> int:
    ok = True
    proc, kubeconfig = start_server(2000, 5)
    try:
        t = median(time_cmd([exe("kubectl-proxyctl"), "endpoints", "svc/svc-1", "--kubeconfig", kubeconfig],
                            runs=5))
        ok &= report("endpoints svc/svc-1 via the lab API server (s, median of 5)", t, 1.0)
    finally:
        proc.terminate()
        proc.wait(10)

    t0 = time.perf_counter()
    proc, kubeconfig = start_server(10000, 5)
    print(f"(server loaded 10,000 services + 10,000 slices in {time.perf_counter() - t0:.1f}s)")
    try:
        out = subprocess.run([sys.executable, "-c", SYNC, kubeconfig], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not result["ok"] or result["objects"] != 20000:
            print(f"informers did not sync fully: {result}")
            return 1
        ok &= report("initial sync of 10k services + 10k slices (s)", result["seconds"], 5.0)
        ok &= report("informer process peak RSS (MB)", result["rss_mb"], 300.0)
    finally:
        proc.terminate()
        proc.wait(10)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
