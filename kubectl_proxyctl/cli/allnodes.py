"""`verify --all-nodes`: every Node's rules against the same desired state, in parallel.

The cluster's Services, EndpointSlices and Nodes are read once; each node's rules are read
the way `--node NODE` reads them (remote.nodeaccess: exec in its proxy pod, SSH, or a debug
pod) by a bounded pool of threads, and checked with the same `inspect.verify` as a single
node. One node that cannot be read is one line saying why; it never hides the others.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from kubectl_proxyctl.cli.inspect import NodeOptions
from kubectl_proxyctl.cli.options import ClusterOptions

if TYPE_CHECKING:
    from kubectl_proxyctl.model import ClusterState
    from kubectl_proxyctl.modes.findings import Report
    from kubectl_proxyctl.modes.owners import ServiceSelector


@dataclass
class NodeVerdict:
    node: str
    status: str  # "in-sync", "drift" or "error"
    seconds: float
    via: str = ""
    report: "Report | None" = None
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"node": self.node, "status": self.status, "via": self.via or None,
                             "seconds": round(self.seconds, 3)}
        if self.report is not None:
            d["report"] = self.report.as_dict()
        if self.error:
            d["error"] = self.error
        return d


def _verify_node(name: str, cluster: ClusterOptions, node: NodeOptions, state: "ClusterState",
                 selector: "ServiceSelector | None", api: Any) -> NodeVerdict:
    from kubectl_proxyctl.cli.inspect import collect_rules, context_for, graph_of, proxy_mode
    from kubectl_proxyctl.errors import ProxyctlError
    from kubectl_proxyctl.inspect import verify as check

    started = time.monotonic()
    one = dataclasses.replace(node, node=name, node_name=name)
    via = ""
    try:
        found, via = collect_rules(one, cluster, api=api)
        graph = graph_of(found, name, via)
        mode = proxy_mode(graph, one)
        context = context_for(graph, state, one, found.addresses, name)
        report = check.verify(graph, mode, state, context, selector)
    except ProxyctlError as exc:
        return NodeVerdict(name, "error", time.monotonic() - started, via, error=str(exc))
    return NodeVerdict(name, "in-sync" if report.in_sync else "drift", time.monotonic() - started, via, report)


# --sort-by COLUMN: the field of a node's -o json record each column shows
COLUMNS = {"NODE": ".node", "MODE": ".report.backend", "VERDICT": ".status", "VIA": ".via", "DETAIL": ".error"}


def verify_all_nodes(cluster: ClusterOptions, node: NodeOptions, selector: "ServiceSelector | None",
                     output: str, parallel: int, no_headers: bool = False, sort_by: str | None = None) -> int:
    from kubectl_proxyctl import output as out
    from kubectl_proxyctl.cli.inspect import api_connector, load_cluster_state
    from kubectl_proxyctl.errors import ConfigError, NotFoundError

    if sort_by:
        try:
            out.sort_path(sort_by, COLUMNS)
        except out.TemplateError as exc:
            raise ConfigError(str(exc)) from None

    if cluster.from_file:
        raise click.UsageError("--all-nodes reads the nodes through the API: it excludes --from-file")
    state, _ = load_cluster_state(cluster, node, selector.namespace if selector else None,
                                  selector.name if selector else None, required=True)
    assert state is not None
    if selector is not None and selector.key not in state.services:
        raise NotFoundError(f'service "{selector.name}" not found in namespace "{selector.namespace}"')
    names = sorted(state.nodes)
    if not names:
        raise NotFoundError("the cluster has no Nodes to verify")
    api = api_connector(cluster)
    progress = _Progress(len(names), enabled=output == "text" and sys.stderr.isatty())
    started = time.monotonic()

    def work(name: str) -> NodeVerdict:
        verdict = _verify_node(name, cluster, node, state, selector, api)
        progress.step(name)
        return verdict

    with ThreadPoolExecutor(max_workers=min(parallel, len(names)), thread_name_prefix="verify") as pool:
        verdicts = list(pool.map(work, names))
    progress.done()
    elapsed = time.monotonic() - started
    counts = {s: sum(v.status == s for v in verdicts) for s in ("in-sync", "drift", "error")}
    try:
        click.echo(out.render_listing(listing(verdicts, counts, elapsed, footer=not no_headers),
                                      "table" if output == "text" else output,
                                      no_headers=no_headers, sort_by=sort_by), nl=False)
    except out.TemplateError as exc:
        raise ConfigError(str(exc)) from None
    return 0 if counts["in-sync"] == len(verdicts) else 1


def listing(verdicts: list[NodeVerdict], counts: dict[str, int], elapsed: float, footer: bool = True) -> Any:
    """The nodes as an output.Listing: the table (with the summary line under it), the
    `-o json` document ({"nodes": [...], "summary": {...}}) and `-o name` (node/NAME)."""
    from kubectl_proxyctl import output as out

    rows = []
    for v in verdicts:
        if v.report is not None:
            verdict = "in sync" if v.report.in_sync else f"drift: {len(v.report.findings)} finding(s)"
            detail = v.report.findings[0].message if v.report.findings else f"{v.report.services_checked} service port(s)"
            rows.append([v.node, v.report.mode.value, verdict, v.via, _short(detail)])
        else:
            rows.append([v.node, "-", "unreachable", "-", _short(v.error)])
    summary = (f"{counts['in-sync']} of {len(verdicts)} node(s) in sync, {counts['drift']} with drift, "
               f"{counts['error']} unreachable ({elapsed:.1f}s)")
    if counts["drift"]:
        first = next(v.node for v in verdicts if v.status == "drift")
        summary += f"; details: kubectl proxyctl verify --node {first}"
    records = [v.as_dict() for v in verdicts]

    def document(nodes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"nodes": nodes,
                "summary": {"nodes": len(verdicts), **{k.replace("-", "_"): n for k, n in counts.items()},
                            "seconds": round(elapsed, 3)}}

    return out.Listing(headers=list(COLUMNS), rows=list(zip(rows, records)), records=records, document=document,
                       name=lambda rec: f"node/{rec['node']}", columns=COLUMNS,
                       footer=summary + "\n" if footer else "")


def render_table(verdicts: list[NodeVerdict], counts: dict[str, int], elapsed: float) -> str:
    from kubectl_proxyctl import output as out

    return out.render_listing(listing(verdicts, counts, elapsed), "table")


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class _Progress:
    """`verifying: 3/10 node(s) read (node4)` on stderr, rewritten in place, only on a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.count = 0
        self.lock = threading.Lock()

    def step(self, name: str) -> None:
        with self.lock:
            self.count += 1
            if self.enabled:
                sys.stderr.write(f"\r\033[Kverifying: {self.count}/{self.total} node(s) read ({name})")
                sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
