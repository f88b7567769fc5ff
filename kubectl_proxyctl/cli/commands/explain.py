"""`kubectl proxyctl explain svc/NAME | ADDRESS`: where a new connection to a Service goes on one node."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kubectl_proxyctl.cli.inspect import NodeOptions, complete_services, node_options
from kubectl_proxyctl.cli.options import ClusterOptions, cluster_options

if TYPE_CHECKING:
    from kubectl_proxyctl.model import ClusterState, Pod
    from kubectl_proxyctl.inspect.addresses import Destination
    from kubectl_proxyctl.inspect.explain import Explanation, Problem, WayIn
    from kubectl_proxyctl.inspect.graph import RuleGraph
    from kubectl_proxyctl.modes.base import Mode
    from kubectl_proxyctl.modes.owners import ServiceSelector
    from kubectl_proxyctl.modes.nodecontext import NodeContext

CLIENT_KINDS = ("pod", "node", "external")


@click.command("explain")
@click.argument("target", metavar="svc/NAME | NAME | IP[:PORT[/PROTOCOL]]", shell_complete=complete_services)
@click.option("--port", "ports", multiple=True, metavar="NAME|NUMBER",
              help="Only this service port (repeatable; default: every port).")
@click.option("--client", "clients", multiple=True, type=click.Choice(CLIENT_KINDS),
              help="Only this kind of client (repeatable; default: pod, node and external).")
@click.option("--source", metavar="IP",
              help="The client's address (default: a pod address of this node, the node's own "
              "address, 203.0.113.10 for an outside client).")
@click.option("--from", "from_pod", metavar="pod/NAME",
              help="The client is this pod (in -n's namespace): its address, read from the API or "
              "--from-file, is the source, and only pod clients are explained.")
@click.option("--rules", "show_rules", is_flag=True,
              help="Add the rules each path crosses, as a tree that branches where the endpoint is chosen.")
@node_options
@cluster_options(outputs=("text", "json", "yaml", "dot"), templates=("jsonpath=", "jsonpath-as-json="),
                 all_namespaces=False)
def explain(cluster: ClusterOptions, node: NodeOptions, output: str, target: str, ports: tuple[str, ...],
            clients: tuple[str, ...], source: str | None, from_pod: str | None, show_rules: bool) -> int:
    """Explain where a new connection to a Service goes on this node, and why.

    For every port, every way in (the cluster IP, the node port on each node address,
    external IPs, load-balancer IPs) and every kind of client (a pod on this node, the node
    itself, a client outside the cluster), the first packet is traced through the node's
    real rules (iptables, nftables, IPVS, or eBPF mode's socket hooks and entry-point table).
    The answer comes first, one line per verdict
    (clients and ways in that end up the same way share a line), with the odds of each
    endpoint and whether it is SNATed, then the endpoints by pod, node and zone, then the
    problems: the classic traps (no endpoints, externalTrafficPolicy Local without a local
    endpoint, load-balancer source ranges, session affinity, hairpin traffic) and drift.
    --rules adds the rules each path crosses: the shared ones once, then one branch per
    endpoint from the step that picks it (statistic, numgen or the IPVS scheduler).

    TARGET is a Service (svc/NAME or NAME, in -n's namespace) or an address: IP:PORT,
    IP:PORT/PROTOCOL or a bare IP (all its ports; IPv6 in brackets before a port). The
    Service that owns the address (a cluster IP, external IP, load-balancer IP, or a node
    port on a node address) is found in the Service objects, else in the rules, and only
    that way in is explained; exit 1 when nothing owns it. --from pod/NAME explains the
    connections of one pod (it needs the API or --from-file).

    The Service's addresses and ports come from the API or --from-file; with --rules-file
    alone they are read back from the rules' comments. With the Service objects, the desired
    state (the plan for this node) and any drift from it are added.

    \b
    Output: text (default), json, yaml, jsonpath=TEMPLATE (on the json document), or dot
    (the Service's chain graph, for Graphviz: `... -o dot | dot -Tsvg > svc.svg`). Exit status 1 when no port of the Service could
    be explained (no rules for it, or IPVS without the Service objects).

    \b
    Examples:
      kubectl proxyctl explain svc/web
      kubectl proxyctl explain svc/web --rules
      kubectl proxyctl explain 10.96.0.10:53/udp
      kubectl proxyctl explain svc/web --from pod/client-7d4f9 -n shop
      kubectl proxyctl explain svc/web --client external --port http -o json
      kubectl proxyctl explain svc/kube-dns -n kube-system --rules-file node1.iptables \\
          --node-ip 172.18.0.2
      kubectl proxyctl explain svc/web --node node1 --sudo
    """
    import dataclasses
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
    from kubectl_proxyctl.inspect.addresses import is_address, parse_destination
    from kubectl_proxyctl.inspect.explain import Problem

    if source is not None:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise ConfigError(f"--source: {source!r} is not an IP address") from None
    pod_name = _pod_name(from_pod) if from_pod is not None else None
    if pod_name is not None and source is not None:
        raise click.UsageError("--from and --source exclude each other: --from takes the pod's own address")
    if pod_name is not None and any(c != "pod" for c in clients):
        raise click.UsageError("--from explains a pod's connections: --client can only be pod with it")
    destination = parse_destination(target) if is_address(target) else None
    selector = selector_for(target, cluster) if destination is None else None
    graph, addresses = read_rules(node, cluster)
    mode = proxy_mode(graph, node, cluster)
    problems: list[Problem] = []
    ways_in: tuple[view.WayIn, ...] = ()
    said = ""
    if destination is None:
        assert selector is not None
        state, why = load_cluster_state(cluster, node, selector.namespace, selector.name, required=False)
        context = context_for(graph, state, node, addresses, resolve_node_name(cluster, node, state, addresses))
    else:
        state, why = load_cluster_state(cluster, node, None, None, required=False)
        context = context_for(graph, state, node, addresses, resolve_node_name(cluster, node, state, addresses))
        selector, ways_in, said, problems = _owner(destination, graph, mode, state, context)
        if not context.ips_known and any(w.kind == "NodePort" for w in ways_in):
            # the address asked about is the node's: NodePort paths use it rather than a stand-in
            node = dataclasses.replace(node, node_ips=(destination.ip,))
            context = context_for(graph, state, node, addresses, context.name)
            ways_in = tuple(dataclasses.replace(w, address=destination.ip) if w.kind == "NodePort" else w
                            for w in ways_in)
    client = ""
    if pod_name is not None:
        pod = _client_pod(cluster, cluster.namespace, pod_name, required=not node.rules_files)
        source, clients = pod.ip, ("pod",)
        client = f"{pod.namespace}/{pod.name} ({pod.ip}, on node {pod.node_name or '<unscheduled>'})"
        if context.name and pod.node_name and pod.node_name != context.name:
            problems.insert(0, Problem("warning", f"the answer is for the rules of node {context.name}, while pod "
                                                  f"{pod.namespace}/{pod.name} runs on node {pod.node_name}: its "
                                                  f"connections meet that node's rules (try --node {pod.node_name})"))
    request = view.Request(selector, tuple(ports), tuple(dict.fromkeys(clients)) or CLIENT_KINDS, source, ways_in)
    explanation = view.explain(graph, mode, request, context, state)
    explanation.target = said
    explanation.client = client
    explanation.problems[:0] = problems
    if why:
        explanation.problems.insert(0, Problem("warning", why))
    if state is not None and context.name and selector.key in state.services:
        _add_desired(explanation, graph, mode, state, context, selector)

    if output == "dot":
        click.echo(view.render_dot(explanation, graph, state), nl=False)
    elif output != "text":
        click.echo(out.render_document(explanation.as_dict(), output), nl=False)
    else:
        from kubectl_proxyctl.inspect.explaintext import render_text

        click.echo(render_text(explanation, rules=show_rules), nl=False)
    return 0 if explanation.ports else 1


def _owner(destination: "Destination", graph: "RuleGraph", mode: "Mode", state: "ClusterState | None",
           context: "NodeContext") -> "tuple[ServiceSelector, tuple[WayIn, ...], str, list[Problem]]":
    """The Service that owns `destination`, the ways in it names, the sentence that says so,
    and a warning when it is a node port on another node's address."""
    from kubectl_proxyctl.errors import ConfigError, NotFoundError
    from kubectl_proxyctl.inspect.addresses import find_owners
    from kubectl_proxyctl.inspect.explain import Problem
    from kubectl_proxyctl.modes.owners import ServiceSelector

    lookup = find_owners(destination, graph, mode, state, context)
    if not lookup.owners:
        if lookup.node and destination.port is None:
            raise ConfigError(f"{destination} is the address of node {lookup.node}: say which node port "
                              f"({destination.ip}:PORT)")
        where = "the Service objects" if state is not None and state.services else f"the {mode} rules"
        raise NotFoundError(f"nothing owns {destination}: no Service's cluster IP, external IP, load-balancer IP "
                            f"or node port in {where}")
    services = sorted({o.service for o in lookup.owners})
    if len(services) > 1:
        ports = ", ".join(f"{o.service} port {o.way.port}/{o.way.protocol}" for o in lookup.owners)
        raise ConfigError(f"{destination} is shared by several Services ({ports}): give the port (IP:PORT)")
    namespace, _, name = services[0].partition("/")
    owners = lookup.owners
    if destination.port is not None:
        said = f"{destination if destination.protocol else f'{destination}/{owners[0].way.protocol}'} is " \
               + "; ".join(dict.fromkeys(o.words() for o in owners))
    else:
        said = f"{destination} is " + "; ".join(dict.fromkeys(o.words() for o in owners))
    problems = []
    for o in owners:
        if o.node:
            problems.append(Problem("warning", f"{destination.ip} is node {o.node}'s address: connections to it "
                                               f"meet node {o.node}'s rules; shown: node port {o.way.port} on "
                                               f"this node (try --node {o.node})"))
    return ServiceSelector(namespace, name), tuple(dict.fromkeys(o.way for o in owners)), said, problems


def _pod_name(ref: str) -> str:
    """`pod/NAME` (or `pods/NAME`, `po/NAME`) → NAME."""
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.kube.convert import is_dns_subdomain

    kind, sep, name = ref.partition("/")
    if not sep or kind.lower() not in ("pod", "pods", "po"):
        raise ConfigError(f"--from: {ref!r} is not pod/NAME")
    if not is_dns_subdomain(name):
        raise ConfigError(f"--from: {name!r} is not a valid pod name")
    return name


def _client_pod(cluster: ClusterOptions, namespace: str, name: str, required: bool) -> "Pod":
    """The Pod from --from-file, else from the API (NotFoundError when there is none, or it
    has no address yet). Not `required` (the rules come from --rules-file, which needs no
    cluster access): no access to the API is a ConfigError saying what --from needs."""
    from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError
    from kubectl_proxyctl.kube.convert import InvalidObject, convert_pod

    obj = None
    if cluster.from_file:
        from kubectl_proxyctl.kube.snapshot import load_objects

        for item in load_objects(cluster.from_file):
            meta = item.get("metadata") if isinstance(item, dict) else None
            if (isinstance(meta, dict) and item.get("kind") == "Pod" and meta.get("name") == name
                    and (meta.get("namespace") or "default") == namespace):
                obj = item
                break
        where = cluster.from_file
    else:
        try:
            obj = cluster.connect().get("pods", name, namespace)
        except NotFoundError:
            obj = None
        except (ConfigError, ClusterError) as exc:
            if required:
                raise
            raise ConfigError(f"--from needs the API or --from-file to read the pod's address and node, and "
                              f"there is no cluster access ({exc})") from None
        where = "the API"
    if obj is None:
        raise NotFoundError(f'--from: pod "{name}" not found in namespace "{namespace}" in {where}')
    try:
        pod = convert_pod(obj)
    except InvalidObject as exc:
        raise ConfigError(f"--from: pod {namespace}/{name} in {where} cannot be read: {exc}") from None
    if not pod.ip:
        raise NotFoundError(f"--from: pod {namespace}/{name} has no address yet (not running)")
    return pod


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
