"""Shared helpers for the engine tests that run `kubectl proxyctl run` against the real kernel.

* API object builders (Services, EndpointSlices, Nodes) as plain dicts, written to a JSON
  objects file for `run --from-file`.
* `engine_argv()`: the command line of the engine (the console script installed next to this
  interpreter, else `python -m kubectl_proxyctl`), run inside a namespace with `ip netns exec`.
* Fast traffic helpers: many TCP connections from one namespace in one thread that entered
  it (no thread or process per connection), and requests from a chosen source address.
* Reading netfilter state inside a namespace (`iptables-save`, chain names, `conntrack -L`,
  nftables tables and the rules of each chain of one table), and `NftDropProbe`, which
  tells whether packets were dropped by the base chains of one nftables priority (kube-proxy's
  nftables rules carry no counters).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from typing import Any, Sequence

from kubectl_proxyctl.system.executor import netns_path
from kubectl_proxyctl.system.netns import call_in_netns

Obj = dict[str, Any]

SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")


# --- objects ------------------------------------------------------------------------------


def service(
    name: str,
    cluster_ip: str,
    ports: Sequence[Obj],
    *,
    ns: str = "e2e",
    type: str = "ClusterIP",
    external_ips: Sequence[str] = (),
    lb_ips: Sequence[str] = (),
    source_ranges: Sequence[str] = (),
    etp: str | None = None,
    affinity: int | None = None,
) -> Obj:
    spec: Obj = {
        "type": type,
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ports": [dict({"protocol": "TCP"}, **p) for p in ports],
    }
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if affinity is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    obj: Obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}
    if lb_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}
    return obj


def endpoint(ip: str, node: str, pod: str = "") -> Obj:
    ep: Obj = {"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False},
               "nodeName": node}
    if pod:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "e2e"}
    return ep


def endpoint_slice(service_name: str, endpoints: Sequence[Obj], ports: Sequence[tuple[str, int, str]],
                   *, ns: str = "e2e", name: str | None = None) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name or f"{service_name}-abcde", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def node(name: str, internal_ip: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]}}


def write_objects(path: str, objects: Sequence[Obj]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"apiVersion": "v1", "kind": "List", "items": list(objects)}, fh)
    return path


# --- the engine ---------------------------------------------------------------------------


def engine_command() -> list[str]:
    """`kubectl-proxyctl` as pip installed it next to this interpreter (no shim), else
    `python -m kubectl_proxyctl`."""
    script = os.path.join(os.path.dirname(sys.executable), "kubectl-proxyctl")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "kubectl_proxyctl"]


def engine_argv(netns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *engine_command(), *args]


# --- traffic ------------------------------------------------------------------------------


def _parse(data: bytes) -> tuple[str, str]:
    parts = data.decode(errors="replace").split()
    if len(parts) != 2:
        return "error", ""
    return parts[0], parts[1].rsplit(":", 1)[0]


def tcp_burst(netns: str, ip: str, port: int, count: int, timeout: float = 2.0) -> Counter[str]:
    """`count` fresh TCP connections to ip:port from `netns`, all made by one thread inside
    the namespace: answering pod name (or the error kind) → how many times."""

    def work() -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                seen[_parse(data)[0]] += 1
            except ConnectionRefusedError:
                seen["refused"] += 1
            except (TimeoutError, socket.timeout):
                seen["timeout"] += 1
            except OSError:
                seen["error"] += 1
            finally:
                s.close()
        return seen

    return call_in_netns(netns, work)


def tcp_from(netns: str, source: str, ip: str, port: int, timeout: float = 2.0) -> tuple[str, str]:
    """One TCP request from `source` (an address of `netns`): (pod or error kind, client IP
    the pod saw)."""

    def work() -> tuple[str, str]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.bind((source, 0))
            s.connect((ip, port))
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return _parse(data)
        except ConnectionRefusedError:
            return "refused", ""
        except (TimeoutError, socket.timeout):
            return "timeout", ""
        except OSError as exc:
            return f"error: {exc}", ""
        finally:
            s.close()

    return call_in_netns(netns, work)


# --- netfilter state ----------------------------------------------------------------------


def run_in(netns: str, argv: Sequence[str], check: bool = True, timeout: float = 30.0,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["nsenter", f"--net={netns_path(netns)}", "--", *argv]
    done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def saved_chains(netns: str, table: str | None = None, save: str = "iptables-save") -> dict[str, set[str]]:
    """table → chain names, from `iptables-save` in the namespace."""
    text = run_in(netns, [save] + (["-t", table] if table else [])).stdout
    out: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            out.setdefault(current, set())
        elif line.startswith(":") and current:
            out[current].add(line[1:].split(" ", 1)[0])
    return out


def udp_flows(netns: str, dst: str) -> list[str]:
    """`conntrack -L -p udp` lines whose original destination is `dst`."""
    done = run_in(netns, ["conntrack", "-L", "-p", "udp", "-f", "ipv4"], check=False)
    out = []
    for line in done.stdout.splitlines():
        dsts = [tok[4:] for tok in line.split() if tok.startswith("dst=")]
        if dsts and dsts[0] == dst:
            out.append(line)
    return out


def forget_flows(netns: str, dst: str | None = None) -> None:
    """Delete the conntrack entries of the namespace (those whose original destination is
    `dst`, or all). A connection tried while no rule DNATed its service IP leaves an entry
    without DNAT; a later connection that happens to reuse its source port follows that
    entry, not the rules, until it expires (120 s for an unanswered SYN)."""
    run_in(netns, ["conntrack", "-D", *(["-d", dst] if dst else []), "-f", "ipv4"], check=False)


def reply_sources(flows: Sequence[str]) -> list[str]:
    """The reply-direction source (the endpoint that answers) of each conntrack line."""
    out = []
    for line in flows:
        srcs = [tok[4:] for tok in line.split() if tok.startswith("src=")]
        if len(srcs) >= 2:
            out.append(srcs[1])
    return out


# --- nftables -----------------------------------------------------------------------------


def nft_tables(netns: str) -> set[tuple[str, str]]:
    """(family, name) of every nftables table in the namespace."""
    data = json.loads(run_in(netns, ["nft", "-j", "list", "tables"]).stdout or "{}")
    return {(t["table"]["family"], t["table"]["name"]) for t in data.get("nftables") or [] if "table" in t}


def nft_chain_rules(netns: str, family: str = "ip", table: str = "kube-proxy") -> dict[str, list[str]]:
    """chain → its rules as `nft list table` prints them ({} when the table does not exist).
    A base chain's `type … hook …` line and a chain's comment are not rules."""
    done = run_in(netns, ["nft", "list", "table", family, table], check=False)
    if done.returncode != 0:
        return {}
    chains: dict[str, list[str]] = {}
    current: str | None = None
    for line in done.stdout.splitlines():
        if line.startswith("\tchain ") and line.endswith("{"):
            current = line[len("\tchain "):-1].strip()
            chains[current] = []
        elif line == "\t}":
            current = None
        elif current is not None and line.startswith("\t\t"):
            rule = line.strip()
            if not rule.startswith(("type ", "comment ")):
                chains[current].append(rule)
    return chains


def nft_base_chains(netns: str, family: str = "ip", table: str = "kube-proxy") -> list[tuple[str, str, int]]:
    """(name, hook, priority) of every base chain of one table, as the kernel lists them."""
    data = json.loads(run_in(netns, ["nft", "-j", "list", "chains", family]).stdout or "{}")
    return sorted((c["chain"]["name"], c["chain"]["hook"], int(c["chain"]["prio"]))
                  for c in data.get("nftables") or []
                  if "chain" in c and c["chain"].get("table") == table and "hook" in c["chain"])


class NftDropProbe:
    """Counts packets matching `match` at one hook just before (priority - 5) and just after
    (priority + 5) the base chains of `priority`, in a table of the test's own. Packets
    counted before but not after were dropped by those base chains. Used as a context
    manager; the table is deleted on exit."""

    def __init__(self, netns: str, hook: str, match: str, priority: int,
                 table: str = "e2e-drop-probe") -> None:
        self.netns, self.table = netns, table
        self.script = (
            f"add table ip {table}\n"
            f"add chain ip {table} before {{ type filter hook {hook} priority {priority - 5} ; }}\n"
            f"add chain ip {table} after {{ type filter hook {hook} priority {priority + 5} ; }}\n"
            f"add rule ip {table} before {match} counter\n"
            f"add rule ip {table} after {match} counter\n"
        )

    def __enter__(self) -> "NftDropProbe":
        run_in(self.netns, ["nft", "-f", "-"], input=self.script)
        return self

    def __exit__(self, *exc: object) -> None:
        run_in(self.netns, ["nft", "delete", "table", "ip", self.table], check=False)

    def counts(self) -> tuple[int, int]:
        """(packets seen before, packets seen after)."""
        data = json.loads(run_in(self.netns, ["nft", "-j", "list", "table", "ip", self.table]).stdout)
        seen = {"before": 0, "after": 0}
        for item in data.get("nftables") or []:
            rule = item.get("rule")
            if rule:
                for expr in rule.get("expr") or []:
                    if "counter" in expr:
                        seen[rule["chain"]] += int(expr["counter"]["packets"])
        return seen["before"], seen["after"]
