"""`kubectl proxyctl dump [svc/NAME]`: the node's Service rules, annotated with their owners."""

from __future__ import annotations

import click

from kubectl_proxyctl.cli.inspect import NodeOptions, complete_services, node_options
from kubectl_proxyctl.cli.options import TEMPLATE_FORMATS, ClusterOptions, cluster_options, list_options

# --sort-by COLUMN of `-o table`: the field of the -o json record each column shows
COLUMNS = {"TABLE": ".table", "CHAIN": ".chain", "SERVICE": ".service", "ENDPOINT": ".endpoint", "RULE": ".rule"}


@click.command("dump")
@click.argument("target", required=False, metavar="[svc/NAME | NAME]", shell_complete=complete_services)
@list_options
@node_options
@cluster_options(outputs=("text", "raw", "table", "json", "yaml"), templates=TEMPLATE_FORMATS)
def dump(cluster: ClusterOptions, node: NodeOptions, output: str, target: str | None, no_headers: bool,
         sort_by: str | None) -> None:
    """Show the node's Service rules, each with the service port and endpoint it serves.

    Reads the rules of every proxy mode on the node (iptables from both backends, the nft
    `kube-proxy` table, IPVS virtual services and ipsets, eBPF mode's maps, cgroup programs
    and `proxyctl-ebpf` table) and names kube-proxy's hashed
    chains: from the rule comments, by following the jumps from the entry rules, and by
    recomputing the hashes (which also works in large clusters, where kube-proxy drops the
    SVC/SEP comments). With svc/NAME only that Service's chains and entry rules are shown.

    \b
    Output formats:
      text    the rules in their own syntax, each followed by `# ns/svc:port -> endpoint`
      raw     the rules verbatim (iptables-save blocks, an `nft -f` script, ipvsadm/ipset lines,
              bpftool commands for eBPF maps and programs)
      table   one row per rule: TABLE CHAIN SERVICE ENDPOINT RULE (--no-headers, --sort-by)
      json    the same records as JSON (yaml too; --sort-by sorts them)
      jsonpath=TEMPLATE, jsonpath-as-json=TEMPLATE   kubectl's templates, on
              {"kind": "List", "items": [records]}
      custom-columns=HEADER:JSONPATH,...   columns of your own, one row per record

    \b
    Examples:
      kubectl proxyctl dump svc/kube-dns -n kube-system
      kubectl proxyctl dump --rules-file node1.iptables -o table
      kubectl proxyctl dump svc/web --node node1 --from-file cluster.yaml -o raw
    """
    from kubectl_proxyctl import output as out
    from kubectl_proxyctl.cli.inspect import load_cluster_state, proxy_mode, read_rules, resolve_node_name, selector_for
    from kubectl_proxyctl.errors import ConfigError, NotFoundError
    from kubectl_proxyctl.inspect import dump as view

    if sort_by and output in ("text", "raw"):
        raise click.UsageError(f"--sort-by sorts a list: it does not apply to -o {output}")
    if target and cluster.all_namespaces:
        raise click.UsageError("a service name cannot be combined with -A/--all-namespaces")
    selector = selector_for(target, cluster) if target else None
    graph, addresses = read_rules(node, cluster)
    mode = proxy_mode(graph, node, cluster)
    namespace = selector.namespace if selector else None
    state, _ = load_cluster_state(cluster, node, namespace, selector.name if selector else None, required=False) \
        if (cluster.from_file or mode.value == "ipvs") else (None, None)
    resolve_node_name(cluster, node, state, addresses)  # the rules are this node's: is it a Node?
    node_ips = node.node_ips or tuple(addresses)
    lines = view.dump_lines(graph, mode, state, node_ips, selector)
    if selector is not None and not view.records(lines):
        raise NotFoundError(f"no rules for {selector.key} in the node's {mode} rules")
    if output == "text":
        click.echo(view.render_annotated(lines), nl=False)
    elif output == "raw":
        click.echo(view.render_raw(lines), nl=False)
    else:
        found = view.records(lines)
        records = [r.as_dict() for r in found]
        listing = out.Listing(
            headers=list(COLUMNS),
            rows=[([r.table if r.backend.startswith("iptables") else r.backend, r.chain, r.service, r.endpoint,
                    r.text], rec) for r, rec in zip(found, records)],
            records=records, columns=COLUMNS,
        )
        try:
            click.echo(out.render_listing(listing, output, no_headers=no_headers, sort_by=sort_by), nl=False)
        except out.TemplateError as exc:
            raise ConfigError(str(exc)) from None
