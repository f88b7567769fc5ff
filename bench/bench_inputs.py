"""Big inputs: 50 MB cluster snapshots (YAML and JSON) and 50 MB rules files (iptables-save
text, `nft -j list ruleset` JSON), read by the inspector commands.

  python bench/bench_inputs.py [--dir DIR] [--mb 50] [--runs 1] [--only NAME[,NAME]]

The inputs are made once in a temp dir (or in DIR, and reused from there when present):

* cluster.yaml: synth.cluster(N, 5) as `kubectl get svc,endpointslices,nodes -A -o yaml`
  prints it (a `v1 List`, keys sorted, sequences not indented, `kind: List` after the
  items), N chosen to reach --mb;
* cluster.json: the same List as `kubectl get -o json` prints it (4-space indent), its own N;
* iptables.rules: the engine's iptables render for cluster.yaml's N services (plus
  kube-proxy's jump rules), through `iptables-legacy-restore`/`-save` in a throwaway network
  namespace when run as root, else normalised like iptables-save (bench_explain.py);
* nft.json: the engine's nftables render loaded with `nft -f` into a throwaway namespace and
  read back with `nft -j list ruleset` (skipped without root or nft), N chosen to reach --mb.

Each command runs as a subprocess; printed: its wall time and its peak RSS (VmHWM, the
process itself: see common.ENGINE_WITH_RSS), targets <= 5 s and <= 400 MB. Nothing fails on
a figure (the exit status is 1 when one is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import ENGINE_WITH_RSS, report
from synth import cluster

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TIME_TARGET = 5.0  # s
RSS_TARGET = 400.0  # MB
ENDPOINTS = 5
NODE = "node1"
NODE_IP = "172.18.0.2"  # synth.node(1)'s InternalIP

# bytes per service (5 endpoints) of each form, measured on synth's objects: a first guess
# at N, corrected once after the first try
_PER_SERVICE = {"yaml": 1700, "json": 4230, "iptables": 1850, "nft": 4950}


def _list_doc(services: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "items": cluster(services, ENDPOINTS), "kind": "List",
            "metadata": {"resourceVersion": ""}}


def write_yaml(path: str, services: int) -> None:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(path, "w", encoding="utf-8") as fh:
        # item by item, so the generator does not hold one 50 MB string
        fh.write("apiVersion: v1\nitems:\n")
        for obj in cluster(services, ENDPOINTS):
            text = yaml.dump([obj], Dumper=dumper, default_flow_style=False, sort_keys=True)
            fh.write(text)
        fh.write('kind: List\nmetadata:\n  resourceVersion: ""\n')


def write_json(path: str, services: int) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(_list_doc(services), fh, indent=4)
        fh.write("\n")


def write_iptables(path: str, services: int) -> str:
    import bench_explain

    bench_explain.SERVICES = services
    text = bench_explain.payload()
    saved = bench_explain.saved_in_namespace(text)
    how = "iptables-legacy-save in a network namespace"
    if saved is None:
        saved, how = bench_explain.normalised(text), "rendered and normalised like iptables-save (no root)"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(saved)
    return how


def write_nft(path: str, services: int) -> str | None:
    """`nft -j list ruleset` of the engine's full nftables transaction; None without root/nft."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "nsenter")):
        return None
    from kubectl_proxyctl.kube.convert import state_from_objects
    from kubectl_proxyctl.modes.nftables.render import render
    from kubectl_proxyctl.plan.planner import ProxyConfig, plan

    state = state_from_objects(cluster(services, ENDPOINTS), warn=lambda _m: None)
    config = ProxyConfig(node_name=NODE, cluster_cidrs=("10.128.0.0/9",), node_ips=(NODE_IP,),
                         nodeport_addresses=("primary",), localhost_nodeports=False)
    script = render(plan(state, config), first=True).text
    name = f"pxinputs{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        enter = ["nsenter", f"--net=/run/netns/{name}", "--"]
        subprocess.run([*enter, "nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
        with open(path, "w", encoding="utf-8") as fh:
            subprocess.run([*enter, "nft", "-j", "list", "ruleset"], stdout=fh, check=True)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    return "nft -j list ruleset in a network namespace"


def make(path: str, kind: str, mb: float, services: int | None = None) -> tuple[int, str]:
    """Write `kind`'s input at `path` near `mb` MB (or for exactly `services`); (N, how)."""
    writer = {"yaml": write_yaml, "json": write_json, "iptables": write_iptables, "nft": write_nft}[kind]
    goal = int(mb * 1e6)
    n = services or max(10, int(goal / _PER_SERVICE[kind]))
    how = writer(path, n) or ""
    if services is None and os.path.exists(path):
        size = os.path.getsize(path)
        if abs(size - goal) > goal * 0.05:  # one correction
            n = max(10, int(n * goal / max(size, 1)))
            how = writer(path, n) or ""
    return n, how


def run(argv: list[str], stdin_path: str | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit status, stderr's last line) of one command."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        env = dict(os.environ, PXBENCH_RSS=rss.name)
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        try:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", ENGINE_WITH_RSS, *argv], stdin=stdin,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            seconds = time.perf_counter() - started
        finally:
            if stdin_path:
                stdin.close()  # type: ignore[union-attr]
        rss.seek(0)
        kb = rss.read().strip()
    err = done.stderr.decode("utf-8", "replace").strip().splitlines()
    return seconds, (int(kb) / 1024.0 if kb else float("nan")), done.returncode, (err[-1] if err else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="keep the inputs here (reused when present)")
    parser.add_argument("--mb", type=float, default=50.0, help="size of each input (default 50)")
    parser.add_argument("--runs", type=int, default=1, help="runs per command; the worst is reported")
    parser.add_argument("--only", default="", help="comma-separated command labels (substring match)")
    args = parser.parse_args()
    tmp = None
    where = args.dir
    if where is None:
        tmp = tempfile.TemporaryDirectory()
        where = tmp.name
    os.makedirs(where, exist_ok=True)
    try:
        paths: dict[str, str] = {}
        meta = os.path.join(where, "services.json")  # N of each input, for reuse
        counts: dict[str, int] = {}
        if os.path.exists(meta):
            with open(meta, encoding="utf-8") as fh:
                counts = json.load(fh)
        for kind, name in (("yaml", "cluster.yaml"), ("json", "cluster.json"), ("iptables", "iptables.rules"),
                           ("nft", "nft.json")):
            path = os.path.join(where, name)
            if not os.path.exists(path):
                started = time.perf_counter()
                # the rules are those of the YAML snapshot's services, so explain/verify match
                n, how = make(path, kind, args.mb, counts.get("yaml") if kind == "iptables" else None)
                if not os.path.exists(path):
                    print(f"{name}: not made ({'no root or no nft' if kind == 'nft' else 'failed'})")
                    continue
                print(f"{name}: {n} services x {ENDPOINTS} endpoints, {os.path.getsize(path) / 1e6:.1f} MB"
                      f"{', ' + how if how else ''}, made in {time.perf_counter() - started:.0f} s")
                counts[kind] = n
                with open(meta, "w", encoding="utf-8") as fh:
                    json.dump(counts, fh)
            else:
                print(f"{name}: reused, {os.path.getsize(path) / 1e6:.1f} MB")
            paths[kind] = path

        n = counts.get("yaml", 0)
        target = f"svc/svc-{n // 2}"
        node = ["--node-name", NODE, "--node-ip", NODE_IP]
        commands: list[tuple[str, list[str], str | None]] = []
        if "yaml" in paths:
            commands += [
                ("endpoints -A --from-file cluster.yaml -o json", ["endpoints", "-A", "--from-file", paths["yaml"],
                                                                   "-o", "json"], None),
                ("endpoints -A --from-file - (YAML on stdin)", ["endpoints", "-A", "--from-file", "-"], paths["yaml"]),
                (f"endpoints {target} -n bench --from-file cluster.yaml",
                 ["endpoints", target, "-n", "bench", "--from-file", paths["yaml"]], None),
            ]
        if "json" in paths:
            commands.append(("endpoints -A --from-file cluster.json -o json",
                             ["endpoints", "-A", "--from-file", paths["json"], "-o", "json"], None))
        if "iptables" in paths:
            rules = paths["iptables"]
            commands += [
                (f"explain {target} --rules-file iptables.rules", ["explain", target, "-n", "bench", "--rules-file",
                                                                   rules, *node, "-o", "json"], None),
                ("dump --rules-file iptables.rules -o raw", ["dump", "--rules-file", rules, "-o", "raw"], None),
                ("dump --rules-file iptables.rules (text)", ["dump", "--rules-file", rules], None),
            ]
            if "yaml" in paths:
                commands += [
                    (f"explain {target} --rules-file iptables.rules --from-file cluster.yaml",
                     ["explain", target, "-n", "bench", "--rules-file", rules, "--from-file", paths["yaml"], *node,
                      "-o", "json"], None),
                    (f"verify {target} --rules-file iptables.rules --from-file cluster.yaml",
                     ["verify", target, "-n", "bench", "--rules-file", rules, "--from-file", paths["yaml"], *node],
                     None),
                    ("verify -A --rules-file iptables.rules --from-file cluster.yaml",
                     ["verify", "-A", "--rules-file", rules, "--from-file", paths["yaml"], *node], None),
                ]
        if "nft" in paths:
            nft = paths["nft"]
            commands += [
                ("dump --rules-file nft.json -o raw", ["dump", "--rules-file", nft, "-o", "raw"], None),
                (f"explain svc/svc-{counts.get('nft', 0) // 2} --rules-file nft.json",
                 ["explain", f"svc/svc-{counts.get('nft', 0) // 2}", "-n", "bench", "--rules-file", nft, *node,
                  "-o", "json"], None),
            ]
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        ok = True
        for label, argv, stdin in commands:
            if wanted and not any(w in label for w in wanted):
                continue
            worst_t, worst_rss, status, err = 0.0, 0.0, 0, ""
            for _ in range(max(1, args.runs)):
                t, rss, status, err = run(argv, stdin)
                worst_t, worst_rss = max(worst_t, t), max(worst_rss, rss)
            note = f"   (exit {status}: {err[:100]})" if status not in (0, 1) else ""
            print(f"{label}{note}")
            ok &= report("    wall time (s)", worst_t, TIME_TARGET)
            ok &= report("    peak RSS (MB)", worst_rss, RSS_TARGET)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
