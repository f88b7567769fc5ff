"""CLI start-up and `endpoints` from a file.

  python bench/bench_cli.py

Prints: `kubectl-proxyctl --help` ÷ `python -c pass` (median of 10, same run; target ≤ 2.5),
and the wall time of `endpoints -A` over a 2,000-service × 5-endpoint snapshot (target ≤ 1.0 s).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from common import exe, median, report, time_cmd
from synth import cluster


def main() -> int:
    ok = True
    base = median(time_cmd([sys.executable, "-c", "pass"]))
    helps = median(time_cmd([exe("kubectl-proxyctl"), "--help"]))
    print(f"python -c pass: {base * 1000:.1f} ms   kubectl-proxyctl --help: {helps * 1000:.1f} ms")
    ok &= report("--help / python -c pass (median of 10)", helps / base, 2.5)

    with tempfile.TemporaryDirectory() as tmp:
        objs = cluster(2000, 5)
        import yaml

        yaml_path = os.path.join(tmp, "cluster.yaml")
        with open(yaml_path, "w") as fh:
            yaml.dump({"apiVersion": "v1", "kind": "List", "items": objs}, fh,
                      Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
        json_path = os.path.join(tmp, "cluster.json")
        with open(json_path, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "List", "items": objs}, fh)
        for label, path in (("YAML", yaml_path), ("JSON", json_path)):
            t = median(time_cmd([exe("kubectl-proxyctl"), "endpoints", "-A", "--from-file", path], runs=5))
            ok &= report(f"endpoints -A, 2000 svc x 5 ep, {label} file (s, median of 5)", t, 1.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
