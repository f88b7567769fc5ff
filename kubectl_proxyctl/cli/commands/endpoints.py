"""`kubectl proxyctl endpoints [svc/NAME]`: what each service port really sends traffic to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

from kubectl_proxyctl.cli.options import TEMPLATE_FORMATS, ClusterOptions, cluster_options, list_options

if TYPE_CHECKING:
    from kubectl_proxyctl.inspect.endpoints import EndpointRecord, Problem
    from kubectl_proxyctl.model import ClusterState, Service
    from kubectl_proxyctl.output import Listing

HEADERS = ["SERVICE", "PORT", "ENDPOINT", "READY", "SERVING", "TERMINATING", "NODE", "ZONE", "POD"]
WIDE_HEADERS = ["HINTS", "SLICE"]
# --sort-by COLUMN: the field of the -o json record each column shows
COLUMNS = {"NAMESPACE": ".namespace", "SERVICE": ".service", "PORT": ".port_name", "ENDPOINT": ".ip",
           "READY": ".ready", "SERVING": ".serving", "TERMINATING": ".terminating", "NODE": ".node",
           "ZONE": ".zone", "POD": ".pod"}


def _complete_services(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[object]:
    from kubectl_proxyctl.cli.completion import services_for

    return services_for(ctx, incomplete)


@click.command("endpoints")
@click.argument("target", required=False, metavar="[svc/NAME | NAME]", shell_complete=_complete_services)
@click.option("-l", "--selector", metavar="SELECTOR",
              help="Only Services matching this label selector (e.g. app=web, tier in (a,b), !canary).")
@click.option("-w", "--watch", is_flag=True,
              help="After the list, print a row whenever an endpoint or service port changes (Ctrl-C ends it).")
@click.option("--watch-only", is_flag=True, help="Like --watch, without the list first.")
@click.option("--output-watch-events", is_flag=True,
              help="With --watch: add an EVENT column (ADDED, MODIFIED, DELETED); -o json prints watch events.")
@list_options
@cluster_options(outputs=("table", "wide", "name", "json", "yaml"), templates=TEMPLATE_FORMATS)
def endpoints(cluster: ClusterOptions, output: str, target: str | None, selector: str | None, watch: bool,
              watch_only: bool, output_watch_events: bool, no_headers: bool, sort_by: str | None) -> None:
    """Show the endpoints of every service port, and why traffic might not reach them.

    One row per (service port, endpoint) with its conditions (ready, serving, terminating),
    node, zone and pod, merged from all EndpointSlices exactly as kube-proxy merges them.
    On stderr, below the table: a selector matching no ready pod, a named targetPort nothing
    resolves, a service with neither selector nor slices, endpoints that exist but are all
    unready (with -o json|yaml they are in the records' "problems").

    \b
    Output (-o): table (default), wide (adds HINTS and SLICE), name (service/NAME), json and
    yaml (one record per row), jsonpath=TEMPLATE and jsonpath-as-json=TEMPLATE (applied to
    {"kind": "List", "items": [records]}), custom-columns=HEADER:JSONPATH,... (per record).
    --sort-by takes a JSONPath into the record (.node, {.ip}) or a column name (NODE, ZONE).

    \b
    Examples:
      kubectl proxyctl endpoints svc/nginx
      kubectl proxyctl endpoints -A -o wide --sort-by NODE
      kubectl proxyctl endpoints -l app=web -o jsonpath='{.items[?(@.ready==true)].ip}'
      kubectl proxyctl endpoints -o custom-columns=SERVICE:.service,IP:.ip,NODE:.node
      kubectl proxyctl endpoints svc/nginx -w
      kubectl get svc,endpointslices,pods -A -o yaml > cluster.yaml
      kubectl proxyctl endpoints -A --from-file cluster.yaml
    """
    from kubectl_proxyctl.cli.target import parse_service
    from kubectl_proxyctl.errors import NotFoundError
    from kubectl_proxyctl.inspect import endpoints as view
    from kubectl_proxyctl.kube.source import load_state

    name = parse_service(target) if target else None
    if name and cluster.all_namespaces:
        raise click.UsageError("a service name cannot be combined with -A/--all-namespaces")
    if name and selector:
        raise click.UsageError("a service name cannot be combined with -l/--selector")
    if (watch or watch_only) and cluster.from_file:
        raise click.UsageError("--watch follows the API server: it cannot be combined with --from-file")
    if output_watch_events and not (watch or watch_only):
        raise click.UsageError("--output-watch-events needs --watch or --watch-only")
    selected = _selector(selector)
    namespace = None if cluster.all_namespaces else cluster.namespace
    _check_sort_by(sort_by)
    if watch or watch_only:
        _watch(cluster, output, namespace, name, selector, selected, not watch_only, output_watch_events,
               no_headers, sort_by)
        return
    try:
        state = load_state(cluster, namespace=namespace, service=name, label_selector=selector, selected=selected)
    except NotFoundError:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}"') from None
    services = view.select_services(state, namespace, name)
    if name and not services:
        raise NotFoundError(f'service "{name}" not found in namespace "{namespace}"')
    recs = view.records(state, services)
    found = view.problems(state, services)
    machine = output not in ("table", "wide") and not output.startswith("custom-columns=")
    if not services and not machine:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        click.echo(f"No services found in {where}" + (f" matching {selector!r}" if selector else "") + ".",
                   err=True)
        return
    listing = _listing(services, recs, found, output == "wide", cluster.all_namespaces)
    _emit(listing, output, no_headers, sort_by)
    if machine:
        # the problems are in the records; stderr gets one summary line at most
        if found and output != "name":
            click.echo(f"warning: {view.summary(found)}", err=True)
        return
    for p in found:
        click.echo(f"warning: {p.service}: {p.message}", err=True)


def _selector(text: str | None) -> Callable[[dict[str, Any]], bool] | None:
    """-l as a predicate on Service objects (for --from-file; the API server applies it itself)."""
    if text is None:
        return None
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.lab.apiserver.selectors import SelectorError, parse_label_selector

    try:
        requirements = parse_label_selector(text)
    except SelectorError as exc:
        raise ConfigError(f"-l {text!r}: {exc}") from None

    def matches(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        return all(r.matches(labels) for r in requirements)

    return matches


def _check_sort_by(sort_by: str | None) -> None:
    """--sort-by, checked before any request is made."""
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.output import TemplateError, sorted_by

    if sort_by:
        try:
            sorted_by(sort_by, COLUMNS, [])
        except TemplateError as exc:
            raise ConfigError(str(exc)) from None


def _emit(listing: "Listing", output: str, no_headers: bool, sort_by: str | None) -> None:
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.output import TemplateError, render_listing

    try:
        text = render_listing(listing, output, no_headers=no_headers, sort_by=sort_by)
    except TemplateError as exc:
        raise ConfigError(str(exc)) from None
    click.echo(text, nl=False)


def _row(r: "EndpointRecord", wide: bool, all_namespaces: bool) -> list[Any]:
    from kubectl_proxyctl import output as out

    ep = r.endpoint
    port = f"{r.port_name or r.service_port}/{r.protocol}"
    row: list[Any] = [r.service, port]
    if ep is None:
        row += ["<none>", "-", "-", "-", "-", "-", "-"]
    else:
        row += [ep.address, out.yes_no(ep.ready), out.yes_no(ep.serving), out.yes_no(ep.terminating),
                ep.node_name, ep.zone, ep.pod_name]
    if all_namespaces:
        row.insert(0, r.namespace)
    if wide:
        hints = ",".join([f"zone={z}" for z in ep.zone_hints] + [f"node={n}" for n in ep.node_hints]) if ep else ""
        row += [hints, ep.slice_name if ep else ""]
    return row


def _headers(wide: bool, all_namespaces: bool) -> list[str]:
    return (["NAMESPACE"] if all_namespaces else []) + HEADERS + (WIDE_HEADERS if wide else [])


def _listing(services: list["Service"], recs: list["EndpointRecord"], found: list["Problem"], wide: bool,
             all_namespaces: bool) -> "Listing":
    from kubectl_proxyctl.inspect import endpoints as view
    from kubectl_proxyctl.output import Listing

    return Listing(
        headers=_headers(wide, all_namespaces),
        rows=[(_row(r, wide, all_namespaces), r.as_dict()) for r in recs],
        records=view.machine_records(services, recs, found),
        name=lambda rec: f"service/{rec['service']}",
        columns={h: COLUMNS[h] for h in _headers(wide, all_namespaces) if h in COLUMNS},
    )


# --- -w/--watch ------------------------------------------------------------------------------

Rows = dict[tuple[str, ...], tuple[list[Any], dict[str, Any]]]


def _watch(cluster: ClusterOptions, output: str, namespace: str | None, name: str | None, selector: str | None,
           selected: Callable[[dict[str, Any]], bool] | None, list_first: bool, events: bool, no_headers: bool,
           sort_by: str | None) -> None:
    """List, then print the rows that change, as `kubectl get -w` does: Services (of -n, or
    the one named, or those -l picks) and their EndpointSlices, each on its own informer
    (kube/informer.py: list, then watch from the list's resourceVersion, relist on 410).
    A burst of events (a rollout) is one round of changes. Ctrl-C ends it with status 0."""
    import queue

    from kubectl_proxyctl.errors import ClusterError, NotFoundError
    from kubectl_proxyctl.kube.convert import LABEL_SERVICE_NAME, state_from_objects
    from kubectl_proxyctl.kube.informer import Informer
    from kubectl_proxyctl.kube.source import CappedWarnings

    changed: "queue.Queue[str]" = queue.Queue()
    wide = output == "wide"
    all_ns = namespace is None

    def note(typ: str, _obj: dict[str, Any]) -> None:
        changed.put(typ)

    services = Informer(cluster.connect(), "services", note, namespace=namespace, label_selector=selector,
                        kind="Service")
    slices = Informer(cluster.connect(), "endpointslices", note, namespace=namespace, kind="EndpointSlice",
                      label_selector=f"{LABEL_SERVICE_NAME}={name}" if name else LABEL_SERVICE_NAME)
    informers = (services, slices)
    printer = _WatchPrinter(output, events, no_headers, sort_by, _headers(wide, all_ns))
    try:
        for inf in informers:
            inf.start()
        while not all(inf.synced.wait(0.05) for inf in informers):
            failed = [inf.last_error for inf in informers if inf.last_error and not inf.synced.is_set()]
            if failed:  # the first list failed: say why rather than retry in silence
                raise ClusterError(failed[0])
        previous: Rows = {}
        first = True
        while True:
            warn = CappedWarnings()
            try:
                objects = [o for o in services.items()
                           if name is None or (o.get("metadata") or {}).get("name") == name]
                state = state_from_objects(objects + slices.items(), warn)
            finally:
                warn.close()
            if first and name and not state.services:
                raise NotFoundError(f'service "{name}" not found in namespace "{namespace}"')
            current = _current_rows(state, namespace, name, wide, all_ns)
            lines = _changes(previous, current)
            if first:
                printer.start(lines if list_first else [])
            else:
                printer.changes(lines)
            first, previous = False, current
            changed.get()
            while True:
                try:
                    changed.get(timeout=0.05)
                except queue.Empty:
                    break
    except KeyboardInterrupt:
        return
    finally:
        for inf in informers:
            inf.stopped.set()
        for inf in informers:
            inf.stop(timeout=1.0)


def _current_rows(state: "ClusterState", namespace: str | None, name: str | None, wide: bool, all_ns: bool) -> Rows:
    """Every row now, keyed by (namespace, service, port, protocol, endpoint address)."""
    from kubectl_proxyctl.inspect import endpoints as view

    rows: Rows = {}
    for r in view.records(state, view.select_services(state, namespace, name)):
        key = (r.namespace, r.service, r.port_name or str(r.service_port), r.protocol,
               r.endpoint.address if r.endpoint else "")
        rows[key] = (_row(r, wide, all_ns), r.as_dict())
    return rows


def _changes(before: Rows, after: Rows) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """(event, row, record) for every row added, changed or gone, in key order."""
    out: list[tuple[str, list[Any], dict[str, Any]]] = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            out.append(("ADDED", *after[key]))
        elif key not in after:
            out.append(("DELETED", *before[key]))
        elif before[key][0] != after[key][0]:
            out.append(("MODIFIED", *after[key]))
    return out


class _WatchPrinter:
    """The rows of a watch in any -o format. Tables (and custom columns) print their header
    once; later rows keep the first table's column widths so they line up under it."""

    def __init__(self, output: str, events: bool, no_headers: bool, sort_by: str | None,
                 headers: list[str]) -> None:
        from kubectl_proxyctl import output as out

        self.kind, self.template = out.split_format(output)
        self.events = events
        self.no_headers = no_headers
        self.sort_by = sort_by
        self.columns = out.custom_columns(self.template) if self.kind == "custom-columns" else []
        self.headers = (["EVENT"] if events else []) + (
            [h for h, _ in self.columns] if self.columns else headers)
        self.widths: list[int] = []

    def _cells(self, typ: str, row: list[Any], rec: dict[str, Any]) -> list[Any]:
        from kubectl_proxyctl import jsonpath
        from kubectl_proxyctl import output as out

        if self.columns:
            row = [out.column_text(jsonpath.values(nodes, rec)) for _, nodes in self.columns]
        return [typ, *row] if self.events else list(row)

    @property
    def tabular(self) -> bool:
        return self.kind in ("table", "wide", "custom-columns")

    def start(self, lines: list[tuple[str, list[Any], dict[str, Any]]]) -> None:
        from kubectl_proxyctl import output as out

        if self.sort_by:
            lines = out.sorted_by(self.sort_by, COLUMNS, lines, lambda line: line[2])
        if not self.tabular:
            self.changes(lines)
            return
        rows = [self._cells(*line) for line in lines]
        self.widths = out.column_widths(self.headers, rows)
        click.echo(out.table(self.headers, rows, no_headers=self.no_headers), nl=False)

    def changes(self, lines: list[tuple[str, list[Any], dict[str, Any]]]) -> None:
        from kubectl_proxyctl import output as out

        for typ, row, rec in lines:
            if self.tabular:
                cells = [out.NONE if c in (None, "") else str(c) for c in self._cells(typ, row, rec)]
                click.echo("   ".join(c.ljust(self.widths[i]) if i < len(cells) - 1 else c
                                      for i, c in enumerate(cells)).rstrip())
            elif self.kind == "name":
                click.echo(f"service/{rec['service']}")
            elif self.kind in ("json", "yaml"):
                doc: Any = {"type": typ, "object": rec} if self.events else rec
                click.echo(out.to_json(doc) if self.kind == "json" else "---\n" + out.to_yaml(doc), nl=False)
            else:
                click.echo(out.render_template(self.kind, self.template, rec), nl=False)
