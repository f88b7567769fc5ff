"""Reading another node's rules through the API (exec in its proxy pod) in the lab.

  sudo python bench/bench_nodeaccess.py [--nodes 10] [--runs 5]

Brings up a lab (unique name, temporary state, removed at the end), deploys the README's
nginx demo, and times fresh `kubectl-proxyctl` processes with only the lab's environment
(`lab env`), as a user would run them:

* `explain svc/nginx --node node2` through exec (target <= 1.5 s wall, median);
* the same over SSH (`--via ssh`), for comparison;
* `verify --all-nodes` over every node of a 10-node lab (target <= 5 s wall, median);
* where the time of one exec goes: one `pods/exec` round trip of `true`, in process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from labfixtures import Lab, lab_skip_reason, proxyctl, running_lab  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "tests" / "data" / "nginx-demo.yaml"


def timed(lab: Lab, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run([*proxyctl(), *args], env=lab.env, capture_output=True, text=True, timeout=120, check=False)
    return time.perf_counter() - start, done


def median_of(lab: Lab, runs: int, *args: str, ok: tuple[int, ...] = (0,)) -> float:
    times = []
    for _ in range(runs):
        seconds, done = timed(lab, *args)
        if done.returncode not in ok:
            raise SystemExit(f"kubectl-proxyctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        times.append(seconds)
    return statistics.median(times)


def one_exec(lab: Lab, runs: int) -> float:
    import os

    from kubectl_proxyctl.kube.client import connect
    from kubectl_proxyctl.remote.podexec import PodExecutor

    os.environ["KUBECONFIG"] = lab.env["KUBECONFIG"]
    api = connect()
    pods, _ = api.list("pods", "kube-system", field_selector="spec.nodeName=node2")
    executor = PodExecutor(api, "kube-system", pods[0]["metadata"]["name"])
    times = []
    for _ in range(runs * 4):
        start = time.perf_counter()
        assert executor.run(["true"]).ok
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    reason = lab_skip_reason()
    if reason:
        print(f"cannot run a lab here: {reason}")
        return 2
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-nodeaccess-") as tmp, \
            running_lab(Path(tmp), nodes=args.nodes, up_timeout=300) as lab:
        lab.kubectl("apply", "-f", str(DEMO))
        lab.kubectl("wait", "--for=condition=Ready", "pod", "-l", "app=nginx", "--timeout=120s")
        time.sleep(2)  # the engines program the demo Service
        print(f"lab of {args.nodes} nodes, nginx demo; medians of {args.runs} fresh processes")
        seconds = median_of(lab, args.runs, "explain", "svc/nginx", "--node", "node2")
        ok &= report("explain svc/nginx --node node2 (exec)", seconds, 1.5, " s")
        seconds = median_of(lab, args.runs, "explain", "svc/nginx", "--node", "node2", "--via", "ssh")
        print(f"{'explain svc/nginx --node node2 --via ssh':<60} {seconds:10.3f} s   (comparison)")
        seconds = median_of(lab, args.runs, "verify", "--all-nodes")
        ok &= report(f"verify --all-nodes ({args.nodes} nodes)", seconds, 5.0, " s")
        print(f"{'one pods/exec round trip of `true` (in process)':<60} {one_exec(lab, args.runs) * 1000:10.1f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
