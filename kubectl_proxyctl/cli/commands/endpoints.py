"""`kubectl proxyctl endpoints [svc/NAME]`: what each service port really sends traffic to."""

from __future__ import annotations

import click

from kubectl_proxyctl.cli.options import ClusterOptions, cluster_options


def _complete_services(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[object]:
    from kubectl_proxyctl.cli.completion import services_for

    return services_for(ctx, incomplete)


@click.command("endpoints")
@click.argument("target", required=False, metavar="[svc/NAME | NAME]", shell_complete=_complete_services)
@cluster_options()
def endpoints(cluster: ClusterOptions, output: str, target: str | None) -> None:
    """Show the endpoints of every service port, and why traffic might not reach them.

    One row per (service port, endpoint) with its conditions (ready, serving, terminating),
    node, zone and pod, merged from all EndpointSlices exactly as kube-proxy merges them.
    Below the table: a selector matching no ready pod, a named targetPort nothing resolves,
    a service with neither selector nor slices, endpoints that exist but are all unready.

    \b
    Examples:
      kubectl proxyctl endpoints svc/nginx
      kubectl proxyctl endpoints -A -o wide
      kubectl get svc,endpointslices,pods -A -o yaml > cluster.yaml
      kubectl proxyctl endpoints -A --from-file cluster.yaml
    """
    from kubectl_proxyctl import output as out
    from kubectl_proxyctl.cli.target import parse_service
    from kubectl_proxyctl.errors import NotFoundError
    from kubectl_proxyctl.kube.source import load_state
    from kubectl_proxyctl.inspect import endpoints as view

    name = parse_service(target) if target else None
    if name and cluster.all_namespaces:
        raise click.UsageError("a service name cannot be combined with -A/--all-namespaces")
    namespace = None if cluster.all_namespaces else cluster.namespace
    try:
        state = load_state(cluster, namespace=namespace, service=name)
    except NotFoundError:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}"') from None
    services = view.select_services(state, namespace, name)
    if name and not services:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}"')
    recs = view.records(state, services)
    found = view.problems(state, services)

    if output in ("json", "yaml"):
        # problems belong in the machine output; stderr gets one summary line at most
        click.echo(out.render(view.machine_records(services, recs, found), output), nl=False)
        if found:
            click.echo(f"warning: {view.summary(found)}", err=True)
        return
    if not services:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        click.echo(f"No services found in {where}.", err=True)
        return
    wide = output == "wide"
    headers = ["SERVICE", "PORT", "ENDPOINT", "READY", "SERVING", "TERMINATING", "NODE", "ZONE", "POD"]
    if cluster.all_namespaces:
        headers.insert(0, "NAMESPACE")
    if wide:
        headers += ["HINTS", "SLICE"]
    rows = []
    for r in recs:
        ep = r.endpoint
        port = f"{r.port_name or r.service_port}/{r.protocol}"
        row: list[object] = [r.service, port]
        if ep is None:
            row += ["<none>", "-", "-", "-", "-", "-", "-"]
        else:
            row += [ep.address, out.yes_no(ep.ready), out.yes_no(ep.serving), out.yes_no(ep.terminating),
                    ep.node_name, ep.zone, ep.pod_name]
        if cluster.all_namespaces:
            row.insert(0, r.namespace)
        if wide:
            hints = ",".join([f"zone={z}" for z in ep.zone_hints] + [f"node={n}" for n in ep.node_hints]) if ep else ""
            row += [hints, ep.slice_name if ep else ""]
        rows.append(row)
    click.echo(out.table(headers, rows), nl=False)
    if found:
        click.echo("")
        for p in found:
            click.echo(f"{p.severity.upper()}: {p.service}: {p.message}")
