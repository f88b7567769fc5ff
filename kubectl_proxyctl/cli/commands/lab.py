"""`kubectl proxyctl lab …`: a real multi-node Service data plane on this machine."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import click

from kubectl_proxyctl.cli.options import DURATION, common_options
from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError, ProxyctlError

if TYPE_CHECKING:
    from kubectl_proxyctl.lab.spec import LabSpec


@click.group("lab")
@common_options
def lab() -> None:
    """A real multi-node Service data plane on this machine (network namespaces)."""


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[IPv6]:PORT` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"invalid --listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:6443")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid --listen {text!r}: port {port} is out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid --listen {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"invalid --listen {text!r}: write IPv6 addresses in brackets, e.g. [::1]:6443")
    return host or "0.0.0.0", port


@lab.command("apiserver", short_help="Run the lab's Kubernetes-compatible API server.")
@click.option(
    "--listen", default="127.0.0.1:6443", show_default=True, metavar="HOST:PORT",
    help="Address to serve HTTPS on (port 0 picks a free port).",
)
@click.option(
    "--state-dir", required=True, metavar="DIR",
    type=click.Path(file_okay=False, writable=True),
    help="Where objects, the CA, the serving certificate, the token and the kubeconfig live.",
)
@click.option(
    "--token", metavar="T", help="Bearer token clients must send (default: generated once, kept in DIR)."
)
@click.option(
    "--san", "sans", multiple=True, metavar="IP_OR_NAME",
    help="Extra IP address or DNS name for the serving certificate (repeatable).",
)
@click.option(
    "--history", default=10000, show_default=True, type=click.IntRange(min=1),
    help="Watch events kept; watches from older resource versions get 410 Expired.",
)
@click.option(
    "--bookmark-interval", type=DURATION, default="5s", show_default=True,
    help="How often watches that allow bookmarks receive one.",
)
@common_options
def apiserver(
    listen: str, state_dir: str, token: str | None, sans: tuple[str, ...], history: int,
    bookmark_interval: float,
) -> None:
    """Serve the lab's Kubernetes-compatible API server until interrupted.

    Namespaces, Services, Endpoints, Nodes, Pods and EndpointSlices, with the real REST
    protocol: discovery, list/watch with resource versions and bookmarks, server-side
    tables, strategic merge patches. kubectl and the official client libraries work against
    it unmodified. Objects and resource versions persist in DIR across restarts.

    Writes ca.crt, apiserver.crt, apiserver.key, token and kubeconfig into DIR, prints the
    kubeconfig path, and serves until SIGINT or SIGTERM.

    \b
    Examples:
      kubectl proxyctl lab apiserver --state-dir /var/lib/proxyctl-lab
      kubectl proxyctl lab apiserver --listen 0.0.0.0:6443 --state-dir ./lab --san 172.18.0.1
      KUBECONFIG=./lab/kubeconfig kubectl get svc -A
    """
    import signal
    import sqlite3
    import threading

    from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

    host, port = parse_listen(listen)
    try:
        server = APIServer(
            host, port, state_dir=state_dir, token=token, history=history,
            bookmark_interval=bookmark_interval, extra_sans=sans,
        )
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot use --state-dir {state_dir}: {reason}") from exc
    try:
        server.start()
    except OSError as exc:
        server.stop()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo(f"serving {server.url}")
        click.echo(f"kubeconfig: {server.kubeconfig_path}")
        click.echo(f"try: KUBECONFIG={server.kubeconfig_path} kubectl get svc -A", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()


# --- the lab itself ------------------------------------------------------------------------------

LAB_NAME_HELP = "The lab's name (1-8 lower-case letters or digits); it prefixes every namespace and link."


def lab_name_option(f: Any) -> Any:
    return click.option("--name", "lab_name", default="lab", show_default=True, metavar="NAME",
                        help=LAB_NAME_HELP)(f)


def _existing(lab_name: str) -> LabSpec:
    from kubectl_proxyctl.lab.supervisor import load_spec, require_root

    require_root()
    return load_spec(lab_name)


def _name_flag(lab_name: str) -> str:
    return "" if lab_name == "lab" else f" --name {lab_name}"


@lab.command("up", short_help="Start a lab: nodes, engines, API server, client (idempotent).")
@lab_name_option
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 50), help="How many nodes.")
@click.option("--mode", type=click.Choice(["iptables", "nftables", "ebpf", "ipvs"]), default="iptables",
              show_default=True, help="The engines' proxy mode.")
@click.option("--zones", default=0, show_default=True, type=click.IntRange(min=0),
              help="Spread the nodes over this many zones (topology.kubernetes.io/zone); 0: none.")
@click.option("--apiserver", type=click.Choice(["lab", "external"]), default="lab", show_default=True,
              help="The lab's own API server, or etcd and the upstream kube-apiserver (found through "
                   "$PROXYCTL_KUBE_APISERVER and $PROXYCTL_ETCD, else PATH).")
@click.option("--timeout", type=DURATION, default="90s", show_default=True,
              help="How long to wait for the lab to become ready.")
@common_options
def up(lab_name: str, nodes: int, mode: str, zones: int, apiserver: str, timeout: float) -> None:
    """Start a multi-node Service data plane on this machine, and wait until it is ready.

    Builds an underlay network (172.18.0.0/24) of network namespaces: one per node, with a pod
    bridge and host-gw routes, and an outside `client`. Starts the lab daemon in the background,
    which starts the control plane (the API server on https://172.18.0.1:6443, on the lab's own
    link only; the controllers that allocate ClusterIPs, NodePorts and pod IPs and maintain
    EndpointSlices; the pod runtime) and on every node `kubectl proxyctl run` and sshd. The
    daemon and the control plane restart each other when one dies. Returns once every
    engine is healthy. Running it again on a running lab changes nothing; on a crashed lab it
    starts what is missing and adopts what still runs.

    --mode picks the engines' proxy mode, with kube-proxy's defaults for it: in iptables
    mode NodePorts answer on every address of a node (also 127.0.0.1), in nftables mode on
    the node's IP (172.18.0.x) only, which is where the examples send them. In ebpf mode
    each engine attaches cgroup BPF programs to its node's cgroup, which holds the node's
    pods: their connections to Services go straight to an endpoint (no NAT, no conntrack
    entry for the Service), and an nftables table serves what comes from outside (NodePorts
    on the node's IP, external and LoadBalancer IPs). It needs the cgroup v2 hierarchy and
    bpf(2). In ipvs mode each node has a kube-ipvs0 interface holding every Service address
    and one IPVS virtual server per address and port; it needs a kernel with IP_VS and dummy
    links (where it has not, `scripts/demo --mode ipvs` runs the lab tour in a VM).

    --apiserver external runs etcd and the upstream kube-apiserver (built by
    tests/reference/build-apiserver) on the same address instead of the lab's API server;
    kube-apiserver allocates ClusterIPs and NodePorts, and the lab's controllers and pod
    runtime work through its API. There are no proxy pods then (`explain --node` works
    over SSH).

    \b
    Examples:
      sudo kubectl proxyctl lab up
      sudo kubectl proxyctl lab up --mode nftables
      sudo kubectl proxyctl lab up --apiserver external
      sudo kubectl proxyctl lab up --mode ebpf
      sudo kubectl proxyctl lab up --mode ipvs      # on a kernel with IP_VS
      sudo kubectl proxyctl lab up --name demo --nodes 5 --zones 2
    """
    import time

    from kubectl_proxyctl.lab import supervisor
    from kubectl_proxyctl.lab.dataplane import topology
    from kubectl_proxyctl.lab.spec import LabSpec

    supervisor.require_root()
    spec = LabSpec.build(lab_name, nodes=nodes, zones=zones, mode=mode, apiserver=apiserver)
    supervisor.check_mode(mode)
    if apiserver == "external":
        from kubectl_proxyctl.lab import external

        external.binaries()
    started = time.monotonic()
    try:
        existing = supervisor.load_spec(lab_name)
    except ProxyctlError:
        existing = None
    if existing is not None and existing != spec and topology.lab_namespaces(spec):
        zones = len({n.zone for n in existing.nodes if n.zone})
        same = (f"--nodes {len(existing.nodes)}{f' --zones {zones}' if zones else ''}"
                f"{' --mode ' + existing.mode if existing.mode != 'iptables' else ''}"
                f"{' --apiserver ' + existing.apiserver if existing.apiserver != 'lab' else ''}")
        raise ConfigError(
            f"lab {lab_name!r} is up with {len(existing.nodes)} nodes"
            f"{f' in {zones} zones' if zones else ''} ({existing.mode}); `kubectl proxyctl lab up"
            f"{_name_flag(lab_name)} {same}` keeps it; to change its shape, "
            f"remove it first with `kubectl proxyctl lab down{_name_flag(lab_name)}`")
    topology.up(spec)
    supervisor.save_spec(spec)
    supervisor.clear_stopping(spec)
    daemon = None if supervisor.supervisor_running(spec) else supervisor.start_supervisor(spec)
    supervisor.wait_ready(spec, timeout, lambda what: click.echo(
        f"  {what} ready ({time.monotonic() - started:.1f}s)", err=True), daemon)
    flag = _name_flag(lab_name)
    server = ", kube-apiserver" if apiserver == "external" else ""
    click.echo(f"lab {lab_name!r} is up: {len(spec.nodes)} nodes ({mode}{server}) "
               f"in {time.monotonic() - started:.1f}s\n")
    click.echo(f"  eval \"$(kubectl proxyctl lab env{flag})\"   # KUBECONFIG and PROXYCTL_SSH_CONFIG")
    click.echo("  kubectl get nodes -o wide")
    click.echo(f"  kubectl proxyctl lab run web --replicas 3 --labels app=web --port 80{flag}")
    click.echo("  kubectl create service nodeport web --tcp=80 --node-port=30080")
    click.echo(f"  kubectl proxyctl lab exec{flag} client -- curl -s http://{spec.nodes[0].ip}:30080/")
    click.echo(f"  kubectl proxyctl lab exec{flag} {spec.nodes[0].name} -- {_rules_command(spec)}")
    click.echo(f"  kubectl proxyctl lab status{flag}")
    click.echo(f"  kubectl proxyctl lab down{flag}")


def _rules_command(spec: LabSpec, node: str = "") -> str:
    """How to look at a node's rules (the first node's, in eBPF mode, unless `node` is given)."""
    if spec.mode == "ebpf":
        return f"bpftool map dump pinned {spec.node_pin_path(node or spec.nodes[0].name)}/services4"
    if spec.mode == "ipvs":
        return "ipvsadm -Ln"
    return "nft list table ip kube-proxy" if spec.mode == "nftables" else "iptables-save -t nat"


@lab.command("env", short_help="Print the shell exports that point kubectl and ssh at a lab.")
@lab_name_option
@common_options
def env(lab_name: str) -> None:
    """Print `export KUBECONFIG=...` and `export PROXYCTL_SSH_CONFIG=...` for a lab.

    \b
    Example:
      eval "$(kubectl proxyctl lab env)"; kubectl get pods -o wide
    """
    import shlex

    from kubectl_proxyctl.lab.dataplane import sshd
    from kubectl_proxyctl.lab.spec import LabSpec
    from kubectl_proxyctl.lab.supervisor import KUBECONFIG

    spec = LabSpec.build(lab_name, nodes=1)
    click.echo(f"export KUBECONFIG={shlex.quote(str(spec.state_dir / KUBECONFIG))}")
    click.echo(f"export PROXYCTL_SSH_CONFIG={shlex.quote(str(sshd.ssh_config_path(spec)))}")


@lab.command("status", short_help="Show a lab's components, nodes, engines, pods and services.")
@lab_name_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format: tables, or every component as JSON.")
@common_options
def status_(lab_name: str, output: str) -> None:
    """Show the lab's daemon and control plane (the API server, whether it answers, the
    controllers and the pod runtime), each node with its engine's health and sshd, the pods and
    the Services with their endpoints. `-o json` gives every component with its pid and
    whether it is alive. Exits 1 when the daemon is down, 3 when the API server does not answer.

    \b
    Examples:
      kubectl proxyctl lab status
      kubectl proxyctl lab status -o json | jq .apiserver
    """
    from kubectl_proxyctl.lab.supervisor import lab_status
    from kubectl_proxyctl.output import table, to_json

    spec = _existing(lab_name)
    report = lab_status(spec)
    supervisor, api = report["supervisor"], report["apiserver"]
    problems = []
    if not supervisor["alive"]:
        problems.append("the lab daemon is not running")
    if not api["answers"]:
        problems.append(f"the API server does not answer ({api.get('error')})")
    if output == "json":
        click.echo(to_json(report), nl=False)
    else:
        daemon = f"running (pid {supervisor['pid']})" if supervisor["alive"] else "NOT running"
        api_state = (f"running (pid {api['pid']}, {'answers' if api['answers'] else 'does NOT answer'})"
                     if api["alive"] else "NOT running")
        server = "kube-apiserver" if spec.apiserver == "external" else "API server"
        click.echo(f"lab {spec.name}: {len(spec.nodes)} nodes, {spec.mode}; daemon {daemon}; "
                   f"{server} {api_state}; state {spec.state_dir}\n")
        click.echo(table(["NODE", "IP", "POD CIDR", "ZONE", "ENGINE", "SSH"], [
            (n["name"], n["ip"], n["podCIDR"], n["zone"], n["engine"]["health"], n["sshd"]["port"])
            for n in report["nodes"]]))
        if spec.mode == "nftables":
            click.echo("NodePorts answer on each node's IP only (nftables mode: not on 127.0.0.1 or a pod "
                       f"bridge's address); rules: `kubectl proxyctl lab exec{_name_flag(lab_name)} NODE -- "
                       f"{_rules_command(spec)}`\n")
        elif spec.mode == "ebpf":
            click.echo("Pods' connections to Services are load-balanced by each node's cgroup programs (no NAT); "
                       "NodePorts and external addresses from outside go through table proxyctl-ebpf on each "
                       f"node's IP. Maps: `kubectl proxyctl lab exec{_name_flag(lab_name)} NODE -- "
                       f"{_rules_command(spec, 'NODE')}`\n")
        elif spec.mode == "ipvs":
            click.echo("Each node binds every Service address to its kube-ipvs0 interface (so a ClusterIP answers "
                       "ping) and has an IPVS virtual server per address and port; NodePorts answer on every node "
                       f"address but 127.0.0.1. Virtual servers: `kubectl proxyctl lab exec{_name_flag(lab_name)} "
                       f"NODE -- {_rules_command(spec)}`\n")
        if report["pods"] is not None:
            click.echo(table(["NAMESPACE", "POD", "NODE", "IP", "READY", "STATUS"], [
                (p["namespace"], p["name"], p["node"], p["ip"], str(p["ready"]).lower(), p["status"])
                for p in report["pods"]]))
            click.echo(table(["NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORTS", "ENDPOINTS"], [
                (s["namespace"], s["name"], s["type"], s["clusterIP"], ",".join(s["externalIPs"]),
                 ",".join(f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}"
                          f"/{p.get('protocol', 'TCP')}" for p in s["ports"]),
                 f"{s['endpoints']['ready']}/{s['endpoints']['total']} ready")
                for s in report["services"]]), nl=False)
    if problems:
        message = f"{'; '.join(problems)}: `kubectl proxyctl lab up{_name_flag(lab_name)}` starts what is missing"
        raise ClusterError(message) if not api["answers"] else ProxyctlError(message)


def _pod_ready(pod: dict[str, Any]) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return "true" if condition.get("status") == "True" else "false"
    return "false"


def _netns_of(spec: LabSpec, target: str, namespace: str) -> tuple[str, str | None]:
    """The network namespace of TARGET, and the node whose pod it is (None for a node or the
    client: their commands join no cgroup)."""
    from kubectl_proxyctl.lab.dataplane import runtime, topology

    if target == "client":
        return spec.client_ns, None
    if target in {n.name for n in spec.nodes}:
        return spec.node_ns(target), None
    pod = target[len("pod/"):] if target.startswith("pod/") else target
    netns = spec.pod_ns(namespace, pod)
    if not topology.netns_exists(netns):
        raise NotFoundError(f"no node, client or running pod {namespace}/{pod} in lab {spec.name!r} "
                            f"(nodes: {', '.join(n.name for n in spec.nodes)})")
    node = runtime.recorded_node(spec, netns)
    if node is None:
        from kubectl_proxyctl.lab.supervisor import LabAPI

        node = (LabAPI(spec).request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}").get("spec") or {}) \
            .get("nodeName")
    if node not in {n.name for n in spec.nodes}:
        raise NotFoundError(f"pod {namespace}/{pod} runs on no node of lab {spec.name!r}")
    return netns, str(node)


@lab.command("exec", short_help="Run a command in a node's, the client's or a pod's network namespace.",
             context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-n", "--namespace", default="default", show_default=True, help="The pod's namespace.")
@lab_name_option
@common_options
def exec_(target: str, command: tuple[str, ...], namespace: str, lab_name: str) -> int:
    """Run COMMAND inside the network namespace of TARGET, with this terminal attached; exit
    with its exit code. TARGET is a node (`node1`), `client`, or a pod (`pod/NAME` or `NAME`).
    A command in a pod also runs in its node's cgroup, as the pod's own processes do (in
    ebpf mode, that is what load-balances its connections to Services). Put `--` before
    COMMAND so that its options are not taken for ours.

    \b
    Examples:
      kubectl proxyctl lab exec client -- curl -s http://172.18.0.2:30080/
      kubectl proxyctl lab exec node1 -- iptables-save -t nat
      kubectl proxyctl lab exec node1 -- nft list table ip kube-proxy   # nftables mode
      kubectl proxyctl lab exec node1 -- bpftool map dump pinned /sys/fs/bpf/proxyctl-lab-node1/services4  # ebpf
      kubectl proxyctl lab exec pod/web-x7k2p -- curl -s http://10.96.0.10/
    """
    from kubectl_proxyctl.lab.dataplane import topology
    from kubectl_proxyctl.system.processes import run_attached

    spec = _existing(lab_name)
    netns, node = _netns_of(spec, target, namespace)
    preexec = topology.pod_preexec(spec, node) if node is not None else None
    try:
        return run_attached(["nsenter", f"--net={topology.netns_path(netns)}", "--", *command], preexec)
    except FileNotFoundError:
        raise ConfigError("nsenter not found: install util-linux") from None


def _parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        for part in filter(None, value.split(",")):
            key, sep, val = part.partition("=")
            if not sep or not key:
                raise ConfigError(f"--labels {part!r}: expected KEY=VALUE")
            labels[key.strip()] = val.strip()
    return labels


def _parse_port(value: str) -> dict[str, Any]:
    """`[NAME=]PORT[/tcp|/udp]` -> a container port."""
    name, _, rest = value.rpartition("=")
    number, _, protocol = rest.partition("/")
    protocol = (protocol or "tcp").upper()
    if not number.isdigit() or not 0 < int(number) < 65536 or protocol not in ("TCP", "UDP"):
        raise ConfigError(f"--port {value!r}: expected [NAME=]PORT[/udp], e.g. 80, http=80 or dns=53/udp")
    return {"containerPort": int(number), "protocol": protocol, **({"name": name} if name else {})}


@lab.command("run", short_help="Create pods that answer with their name (the lab's echo server).")
@click.argument("name")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, 500), help="How many pods.")
@click.option("-l", "--labels", multiple=True, metavar="K=V[,K=V]", help="Pod labels (repeatable).")
@click.option("--port", "ports", multiple=True, metavar="[NAME=]PORT[/udp]",
              help="A container port, optionally named (repeatable; default 80/tcp).")
@click.option("--node", metavar="NODE", help="Put every pod on this node (spec.nodeName) instead of scheduling.")
@click.option("-n", "--namespace", default="default", show_default=True, help="The pods' namespace.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every pod is Ready.")
@lab_name_option
@common_options
def run_(name: str, replicas: int, labels: tuple[str, ...], ports: tuple[str, ...], node: str | None,
         namespace: str, wait: bool, lab_name: str) -> None:
    """Create REPLICAS pods named NAME-<5 characters>, with the given labels and container
    ports. Each pod runs the lab's echo server, which answers on every port with its name and
    the client address it saw.

    \b
    Examples:
      kubectl proxyctl lab run web --replicas 3 --labels app=web --port 80
      kubectl proxyctl lab run nginx --labels app=nginx --port http=80
      kubectl proxyctl lab run dns --labels app=dns --port dns=53/udp --port dns-tcp=53 --node node2
    """
    import time

    from kubectl_proxyctl.lab.supervisor import LabAPI, LabAPIError

    spec = _existing(lab_name)
    if node is not None:
        spec.node(node)
    container: dict[str, Any] = {"name": name, "image": "proxyctl-lab/echo"}
    if ports:
        container["ports"] = [_parse_port(p) for p in ports]
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": f"{name}-", "namespace": namespace, "labels": _parse_labels(labels)},
        "spec": {"containers": [container], **({"nodeName": node} if node else {})},
    }
    api = LabAPI(spec)
    names = []
    for _ in range(replicas):
        try:
            names.append(api.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)["metadata"]["name"])
        except LabAPIError as exc:
            if exc.status == 422:  # what the user gave (name, labels, ports) is invalid
                raise ConfigError(exc.reason) from None
            raise
    for pod in names:
        click.echo(f"pod/{pod} created")
    deadline = time.monotonic() + 60
    pending = list(names)
    while wait and pending:
        if time.monotonic() > deadline:
            raise ProxyctlError(f"not Ready after 60s: {', '.join(pending)} (see `kubectl proxyctl lab status`)")
        time.sleep(0.1)
        for pod in list(pending):
            obj = api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
            if _pod_ready(obj) == "true":
                pending.remove(pod)
                click.echo(f"pod/{pod} ready on {obj['spec'].get('nodeName')} ({obj['status'].get('podIP')})")


@lab.command("set-ready", short_help="Mark a pod Ready or not Ready (its endpoints follow).")
@click.argument("pod")
@click.argument("ready", type=click.BOOL)
@click.option("-n", "--namespace", default="default", show_default=True, help="The pod's namespace.")
@lab_name_option
@common_options
def set_ready(pod: str, ready: bool, namespace: str, lab_name: str) -> None:
    """Set POD's Ready condition to READY (true or false), as a failing or recovering
    readiness probe would: the EndpointSlices, and then every node's rules, follow.

    \b
    Example:
      kubectl proxyctl lab set-ready web-x7k2p false
    """
    from kubectl_proxyctl.lab.controllers.controllers import ready_pod_status
    from kubectl_proxyctl.lab.supervisor import LabAPI

    spec = _existing(lab_name)
    pod = pod[len("pod/"):] if pod.startswith("pod/") else pod
    api = LabAPI(spec)
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
    obj = api.request("GET", path)
    obj["status"] = ready_pod_status(obj, ready)
    api.request("PUT", path + "/status", obj)
    click.echo(f"pod/{pod} ready={str(ready).lower()}")


@lab.command("down", short_help="Remove a lab: processes, namespaces, links, cgroups and files.")
@lab_name_option
@common_options
def down(lab_name: str) -> None:
    """Stop the lab daemon, the control plane, the engines, sshd and every pod, remove the
    lab's namespaces and links, its nodes' cgroups, the BPF pins of ebpf-mode engines and its
    state directory. Also cleans up a half-built or crashed lab; running it again does nothing.

    \b
    Example:
      sudo kubectl proxyctl lab down
    """
    from kubectl_proxyctl.lab import supervisor
    from kubectl_proxyctl.lab.spec import LabSpec

    try:
        spec = supervisor.load_spec(lab_name)
    except ProxyctlError:
        spec = LabSpec.build(lab_name, nodes=1)  # names are all down needs
    report = supervisor.down(spec)
    if not (report.supervisor or report.processes or report.namespaces or report.links or report.cgroups
            or report.pins or report.files):
        click.echo(f"lab {lab_name!r}: nothing to remove")
        return
    bpf = f"{len(report.pins)} BPF pin directories, " if report.pins else ""
    click.echo(f"lab {lab_name!r} removed: daemon {'stopped' if report.supervisor else 'not running'}, "
               f"{report.processes} processes, {len(report.namespaces)} namespaces, {len(report.links)} links, "
               f"{len(report.cgroups)} cgroups, {bpf}"
               f"state {spec.state_dir}")


@lab.command("control-plane", hidden=True)
@lab_name_option
@common_options
def control_plane(lab_name: str) -> int:
    """The lab's control plane: API server, controllers, pod runtime (started by the daemon)."""
    import logging

    from kubectl_proxyctl.lab.controlplane import ControlPlane
    from kubectl_proxyctl.lab.supervisor import load_spec, require_root

    require_root()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return ControlPlane(load_spec(lab_name)).run()


@lab.command("supervise", hidden=True)
@lab_name_option
@common_options
def supervise(lab_name: str) -> int:
    """The lab daemon (started by `lab up`)."""
    import logging

    from kubectl_proxyctl.lab.supervisor import Supervisor, load_spec, require_root

    require_root()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    return Supervisor(load_spec(lab_name)).run()
