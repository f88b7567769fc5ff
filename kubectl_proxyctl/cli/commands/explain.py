"""`kubectl proxyctl explain svc/NAME`: where a new connection to a Service goes on one node."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kubectl_proxyctl.cli.inspect import NodeOptions, complete_services, node_options
from kubectl_proxyctl.cli.options import ClusterOptions, cluster_options

if TYPE_CHECKING:
    from kubectl_proxyctl.model import ClusterState
    from kubectl_proxyctl.inspect.explain import Explanation
    from kubectl_proxyctl.inspect.graph import RuleGraph
    from kubectl_proxyctl.modes.base import Mode
    from kubectl_proxyctl.modes.owners import ServiceSelector
    from kubectl_proxyctl.modes.nodecontext import NodeContext

CLIENT_KINDS = ("pod", "node", "external")


@click.command("explain")
@click.argument("target", metavar="svc/NAME | NAME", shell_complete=complete_services)
@click.option("--port", "ports", multiple=True, metavar="NAME|NUMBER",
              help="Only this service port (repeatable; default: every port).")
@click.option("--client", "clients", multiple=True, type=click.Choice(CLIENT_KINDS),
              help="Only this kind of client (repeatable; default: pod, node and external).")
@click.option("--source", metavar="IP",
              help="The client's address (default: a pod address of this node, the node's own "
              "address, 203.0.113.10 for an outside client).")
@node_options
@cluster_options(outputs=("text", "json", "yaml", "dot"))
def explain(cluster: ClusterOptions, node: NodeOptions, output: str, target: str, ports: tuple[str, ...],
            clients: tuple[str, ...], source: str | None) -> int:
    """Explain where a new connection to a Service goes on this node, and why.

    For every port, every way in (the cluster IP, the node port on each node address,
    external IPs, load-balancer IPs) and every kind of client (a pod on this node, the node
    itself, a client outside the cluster), the first packet is traced through the node's
    real rules (iptables, nftables or IPVS): one plain sentence says where it ends up, with
    the odds of each endpoint and whether it is SNATed, followed by the rules it crosses.
    The classic traps are named: no endpoints (REJECT), externalTrafficPolicy Local without
    a local endpoint, load-balancer source ranges, session affinity, hairpin traffic.

    The Service's addresses and ports come from the API or --from-file; with --rules-file
    alone they are read back from the rules' comments. With the Service objects, the desired
    state (the plan for this node) and any drift from it are added.

    \b
    Output: text (default), json, yaml, or dot (the Service's chain graph, for Graphviz:
    `... -o dot | dot -Tsvg > svc.svg`). Exit status 1 when no port of the Service could
    be explained (no rules for it, or IPVS without the Service objects).

    \b
    Examples:
      kubectl proxyctl explain svc/web
      kubectl proxyctl explain svc/web --client external --port http -o json
      kubectl proxyctl explain svc/kube-dns -n kube-system --rules-file node1.iptables \\
          --node-ip 172.18.0.2
      kubectl proxyctl explain svc/web --node node1 --sudo
    """
    import ipaddress

    from kubectl_proxyctl import output as out
    from kubectl_proxyctl.cli.inspect import (
        context_for,
        load_cluster_state,
        proxy_mode,
        read_rules,
        resolve_node_name,
        selector_for,
    )
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.inspect import explain as view
    from kubectl_proxyctl.inspect.explain import Problem

    if source is not None:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise ConfigError(f"--source: {source!r} is not an IP address") from None
    if cluster.all_namespaces:
        raise click.UsageError("explain is about one Service: -A/--all-namespaces does not apply")
    selector = selector_for(target, cluster)
    graph, addresses = read_rules(node)
    mode = proxy_mode(graph, node)
    state, why = load_cluster_state(cluster, node, selector.namespace, selector.name, required=False)
    context = context_for(graph, state, node, addresses, resolve_node_name(cluster, node, state, addresses))
    request = view.Request(selector, tuple(ports), tuple(dict.fromkeys(clients)) or CLIENT_KINDS, source)
    explanation = view.explain(graph, mode, request, context, state)
    if why:
        explanation.problems.insert(0, Problem("warning", why))
    if state is not None and context.name and selector.key in state.services:
        _add_desired(explanation, graph, mode, state, context, selector)

    if output == "dot":
        click.echo(view.render_dot(explanation, graph, state), nl=False)
    elif output in ("json", "yaml"):
        click.echo(out.render(explanation.as_dict(), output), nl=False)
    else:
        click.echo(view.render_text(explanation), nl=False)
    return 0 if explanation.ports else 1


def _add_desired(explanation: "Explanation", graph: "RuleGraph", mode: "Mode", state: "ClusterState",
                 context: "NodeContext", selector: "ServiceSelector") -> None:
    """The plan for this node, per port, and drift findings as problems."""
    from kubectl_proxyctl.inspect.explain import Problem
    from kubectl_proxyctl.inspect.verify import desired_summary, verify

    v6 = any(":" in (e.facts.address or "") for port in explanation.ports for e in port.entries)
    desired = desired_summary(state, context, selector, v6)
    for port in explanation.ports:
        port.desired = desired.get(port.facts.service_port)
    report = verify(graph, mode, state, context, selector)
    for finding in report.findings:
        explanation.problems.append(Problem(finding.severity, f"drift: {finding.message}"))
