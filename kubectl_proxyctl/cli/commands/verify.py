"""`kubectl proxyctl verify [svc/NAME]`: the node's rules against what the API says."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kubectl_proxyctl.cli.inspect import NodeOptions, complete_services, node_options
from kubectl_proxyctl.cli.options import TEMPLATE_FORMATS, ClusterOptions, cluster_options, list_options

if TYPE_CHECKING:
    from kubectl_proxyctl.modes.findings import Report

TEXT_LIMIT = 20  # findings of one kind shown in text output before "... and N more"


@click.command("verify")
@click.argument("target", required=False, metavar="[svc/NAME | NAME]", shell_complete=complete_services)
@click.option("--all-nodes", is_flag=True,
              help="Check every Node of the cluster, reached like --node (proxy pod, SSH, debug pod), in "
              "parallel: one line per node.")
@click.option("--parallel", type=click.IntRange(1, 64), default=8, show_default=True, metavar="N",
              help="With --all-nodes: how many nodes are read at once.")
@list_options
@node_options
@cluster_options(outputs=("text", "json", "yaml", "name"), templates=TEMPLATE_FORMATS)
def verify(cluster: ClusterOptions, node: NodeOptions, output: str, target: str | None, all_nodes: bool,
           parallel: int, no_headers: bool, sort_by: str | None) -> int:
    """Check the node's rules against the desired state computed from the API.

    The desired state is what the engine would program on this node (the plan for
    --node-name, from the Services and EndpointSlices of the API or --from-file). Both sides
    are parsed and compared by meaning, not text: per service port, the entry rules as
    multisets (the order across services does not matter), each chain's rules, the endpoint
    odds. Reported: missing services, missing, extra and stale endpoints, wrong odds, chains
    nothing owns, missing jump rules, rules of another proxy mode (an nft kube-proxy table or
    IPVS leftovers on an iptables node) and KUBE- rules split between the nft and legacy
    iptables backends. The proxy's node-wide flags (masquerade bit, cluster CIDR,
    --masquerade-all, node-port addresses) are read back from the rules unless given.

    On an nftables node the `kube-proxy` table (ip or ip6) is checked the same way: map and
    set elements (missing, stale, wrong verdicts), each service, endpoint, external and
    firewall chain (flushed chains, wrong DNAT targets), endpoint odds, affinity sets and
    their timeouts, the fixed chains, and the base chains' jumps in either kube-proxy
    layout (filter chains at priority -110 with filter-output-post-dnat, or the newer
    filter-*-pre-dnat chains with the filter chains at priority 0).

    With --all-nodes every Node of the cluster is read the way --node reads one (exec in its
    proxy pod, else SSH when configured, else a debug pod with --debug-pod) and checked
    against the same desired state: one line per node (mode, verdict, findings, how it was
    reached), a progress line on a terminal, `-o json` for scripts; the table takes
    --no-headers and --sort-by (a column name, e.g. VERDICT, or a JSONPath into the node's
    -o json record), and -o name, custom-columns=... and jsonpath=... work on the nodes.

    Exit status: 0 in sync, 1 drift found (or, with --all-nodes, a node that could not be
    read), 2 error (3 when the API server cannot be reached, as for every command).

    \b
    Examples:
      kubectl proxyctl verify
      kubectl proxyctl verify svc/web -o json
      kubectl proxyctl verify --rules-file node1.iptables --from-file cluster.yaml --node-name node1
      kubectl proxyctl verify --node node2
      kubectl proxyctl verify --all-nodes -o json
    """
    from kubectl_proxyctl import output as out
    from kubectl_proxyctl.cli.inspect import (
        context_for,
        load_cluster_state,
        proxy_mode,
        read_rules,
        resolve_node_name,
        selector_for,
    )
    from kubectl_proxyctl.errors import ConfigError, NotFoundError
    from kubectl_proxyctl.inspect import verify as check

    if target and cluster.all_namespaces:
        raise click.UsageError("a service name cannot be combined with -A/--all-namespaces")
    selector = selector_for(target, cluster) if target else None
    if all_nodes:
        if node.node or node.rules_files or node.node_name:
            raise click.UsageError("--all-nodes reads every node itself: it excludes --node, --node-name and --rules-file")
        from kubectl_proxyctl.cli.allnodes import verify_all_nodes

        return verify_all_nodes(cluster, node, selector, output, parallel, no_headers, sort_by)
    if output == "name" or output.startswith("custom-columns=") or no_headers or sort_by:
        raise click.UsageError("-o name, -o custom-columns, --no-headers and --sort-by list nodes: they need "
                               "--all-nodes")
    graph, addresses = read_rules(node, cluster)
    mode = proxy_mode(graph, node, cluster)
    context = context_for(graph, None, node, addresses)
    if not context.name:
        raise ConfigError("verify needs to know which node the rules belong to: pass --node-name")
    state, _ = load_cluster_state(cluster, node, selector.namespace if selector else None,
                                  selector.name if selector else None, required=True)
    assert state is not None
    if selector is not None and selector.key not in state.services:
        raise NotFoundError(f'service "{selector.name}" not found in namespace "{selector.namespace}"')
    name = resolve_node_name(cluster, node, state, addresses)
    context = context_for(graph, state, node, addresses, name)
    report = check.verify(graph, mode, state, context, selector)

    if output != "text":
        click.echo(out.render_document(report.as_dict(), output), nl=False)
    else:
        click.echo(render_text(report), nl=False)
    return 0 if report.in_sync else 1


def render_text(report: "Report") -> str:
    where = f"node {report.node}" if report.node else "this node"
    notes = [f"note: {n}" for n in report.notes]
    if report.in_sync:
        return "\n".join([f"In sync: {report.services_checked} service port(s) on {where} match the API "
                          f"({report.mode} mode).", *notes]) + "\n"
    lines = [f"Drift on {where} ({report.mode} mode): {len(report.findings)} finding(s) over "
             f"{report.services_checked} service port(s) checked.", *notes, ""]
    shown: dict[str, int] = {}
    hidden: dict[str, int] = {}
    for f in report.findings:
        if shown.get(f.kind, 0) >= TEXT_LIMIT:
            hidden[f.kind] = hidden.get(f.kind, 0) + 1
            continue
        shown[f.kind] = shown.get(f.kind, 0) + 1
        lines.append(f"{f.severity.upper()} [{f.kind}] {f.message}")
        for rule in f.missing:
            lines.append(f"    missing: {rule}")
        for rule in f.extra:
            lines.append(f"    extra:   {rule}")
    for kind, count in hidden.items():
        lines.append(f"... and {count} more [{kind}] (use -o json for all)")
    return "\n".join(lines) + "\n"
