"""`kubectl proxyctl probe`: NodePort and LoadBalancer reachability from every node, over SSH,
judged against what each Service's policy expects."""

from __future__ import annotations

import os
import socket
import sys
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, TextIO

import click

from kubectl_proxyctl.cli.options import DURATION, ClusterOptions, cluster_options

if TYPE_CHECKING:
    from kubectl_proxyctl.model import ClusterState
    from kubectl_proxyctl.remote.expectations import Probing
    from kubectl_proxyctl.remote.matrix import MatrixPlan, Node
    from kubectl_proxyctl.remote.ssh import SSHClient

PROGRESS_AFTER = 2.0  # seconds before a progress line appears (on a terminal only)


class _ProgressLine:
    """`probing: 40/120 cells` on stderr, redrawn in place, once a run takes over 2 s."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.done = 0
        self.total = 0
        self._stop = threading.Event()
        self._shown = False
        self._thread = threading.Thread(target=self._tick, name="probe-progress", daemon=True)

    def __enter__(self) -> "_ProgressLine":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def _tick(self) -> None:
        if self._stop.wait(PROGRESS_AFTER):
            return
        last = ""
        while not self._stop.is_set():
            text = f"\rprobing: {self.done}/{self.total or '?'} cells done"
            if text != last:
                self._shown = True
                self.stream.write(text)
                self.stream.flush()
                last = text
            self._stop.wait(0.25)


def _color() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _parse_nodes(text: str, ssh: "SSHClient") -> list["Node"]:
    """`--nodes name[=address],...`; without an address, the HostName the ssh config
    gives the name (resolved to an IP address here)."""
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.remote.matrix import Node
    from kubectl_proxyctl.remote.probe import validate_address
    from kubectl_proxyctl.remote.ssh import validate_host

    nodes: list[Node] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, address = item.partition("=")
        name = validate_host(name.strip(), "node")
        if sep:
            address = validate_address(address, f"address of node {name}")
        else:
            host = ssh.resolve(name).hostname
            try:
                address = validate_address(host)
            except ConfigError:
                try:
                    address = str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
                except (OSError, IndexError) as exc:
                    raise ConfigError(f"node {name}: cannot resolve {host}: {exc}") from None
        if any(n.name == name for n in nodes):
            raise ConfigError(f"node {name} is listed twice in --nodes")
        nodes.append(Node(name, address, name))
    if not nodes:
        raise ConfigError("--nodes lists no node")
    return nodes


def _cluster_nodes(state: "ClusterState", selector: str | None, address_type: str, ssh_target: str) -> list["Node"]:
    """Nodes from the API (or --from-file), filtered by `-l`, each with its address of
    `address_type`; names and addresses are validated like --nodes."""
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.lab.apiserver.selectors import SelectorError, parse_label_selector
    from kubectl_proxyctl.remote.matrix import Node
    from kubectl_proxyctl.remote.probe import validate_address
    from kubectl_proxyctl.remote.ssh import validate_host

    try:
        requirements = parse_label_selector(selector) if selector else []
    except SelectorError as exc:
        raise ConfigError(f"-l {selector!r}: {exc}") from None
    nodes: list[Node] = []
    for info in sorted(state.nodes.values(), key=lambda n: n.name):
        labels = dict(info.labels)
        if not all(r.matches(labels) for r in requirements):
            continue
        name = validate_host(info.name, "node name")
        addresses = info.addresses_of(address_type)
        if not addresses:
            click.echo(f"warning: node {name} has no {address_type} address; skipped", err=True)
            continue
        address = validate_address(addresses[0], f"{address_type} of node {name}")
        nodes.append(Node(name, address, address if ssh_target == "address" else name))
    if not nodes:
        raise ConfigError("no nodes to probe" + (f" match -l {selector!r}" if selector else ""))
    return nodes


@click.command("probe")
@click.argument("target", required=False, metavar="[svc/NAME]")
@click.option("--nodeport", type=click.IntRange(1, 65535), metavar="PORT",
              help="Probe this node port instead of a Service's ports.")
@click.option("--protocol", type=click.Choice(["tcp", "udp"], case_sensitive=False), default="tcp",
              show_default=True, help="Protocol of --nodeport.")
@click.option("--nodes", "node_list", metavar="NAME[=ADDRESS],...",
              help="Probe these hosts instead of the cluster's nodes (no cluster access needed with "
              "--nodeport). Without =ADDRESS the ssh config's HostName is probed.")
@click.option("-l", "--selector", metavar="SELECTOR", help="Only nodes matching this label selector.")
@click.option("--address-type", type=click.Choice(["InternalIP", "ExternalIP"]), default="InternalIP",
              show_default=True, help="Which node address to probe (and SSH to).")
@click.option("--ssh-target", type=click.Choice(["address", "name"]), default="address", show_default=True,
              help="SSH to each cluster node by its address or by its name (for ssh config aliases).")
@click.option("--from", "from_", type=click.Choice(["local", "nodes", "all"]), default="all", show_default=True,
              help="Probe from this machine, from every node, or both.")
@click.option("--http", "http_path", metavar="PATH",
              help="Send GET PATH and record the HTTP status and the pod that answered "
              "(X-Pod-Name header or pod=NAME in the body).")
@click.option("--expect-udp-reply", is_flag=True,
              help="UDP backends answer every datagram: no reply counts as a timeout.")
@click.option("--timeout", "probe_timeout", type=DURATION, default="3s", show_default=True,
              help="Per-probe timeout.")
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables", "ipvs"]), default="iptables",
              show_default=True, help="The nodes' kube-proxy mode (node ports on 127.0.0.1 exist only "
              "in iptables mode, IPv4).")
@click.option("--ssh-config", type=click.Path(dir_okay=False), envvar="PROXYCTL_SSH_CONFIG",
              help="ssh config file (like ssh -F) [env: PROXYCTL_SSH_CONFIG].")
@click.option("--ssh-user", metavar="USER", help="Log in as USER (overrides the ssh config).")
@click.option("--ssh-key", multiple=True, type=click.Path(dir_okay=False), metavar="PATH",
              help="Private key to offer first (repeatable); agent keys are offered too.")
@click.option("--ssh-port", type=click.IntRange(1, 65535), metavar="PORT", help="sshd port on the nodes.")
@click.option("--jump", metavar="[USER@]HOST[:PORT]", help="Reach the nodes through this bastion (ProxyJump).")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust host keys seen for the first time and add them to known_hosts. "
              "A changed key is always refused.")
@click.option("--ssh-timeout", type=DURATION, default=None,
              help="Deadline for connecting and for authenticating (default: ConnectTimeout, else 10s).")
@click.option("--parallel", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Nodes probed at the same time.")
@cluster_options(outputs=("table", "wide", "json", "yaml"), templates=("jsonpath=", "jsonpath-as-json="),
                 all_namespaces=False)
def probe(cluster: ClusterOptions, output: str, target: str | None, nodeport: int | None, protocol: str,
          node_list: str | None, selector: str | None, address_type: str, ssh_target: str, from_: str,
          http_path: str | None, expect_udp_reply: bool, probe_timeout: float, proxy_mode: str,
          ssh_config: str | None, ssh_user: str | None, ssh_key: tuple[str, ...], ssh_port: int | None,
          jump: str | None, accept_new_host_keys: bool, ssh_timeout: float | None, parallel: int) -> int:
    """Probe NodePorts, load-balancer IPs and external IPs from every node and from here.

    Every node probes every node's address (and its own 127.0.0.1), over SSH, with bash's
    /dev/tcp (falling back to nc or curl); this machine probes every node too. Each cell is
    judged against what kube-proxy does for the Service: externalTrafficPolicy=Cluster
    answers everywhere; Local answers from outside only on nodes with a ready local endpoint
    (the others drop, and their health-check node port says 503), while a node's own
    traffic is sent to any endpoint; no endpoints at all means refused.

    Verdicts: ok, unexpected-open, unexpected-closed, timeout, ssh-error. Exit 0 when every
    cell meets its expectation, 1 when one does not, 2 on usage or configuration errors.

    \b
    Examples:
      kubectl proxyctl probe svc/web
      kubectl proxyctl probe svc/web --http /healthz -o wide
      kubectl proxyctl probe --nodeport 30080 --nodes node1,node2,node3
      kubectl proxyctl probe svc/dns --jump bastion.example.com -l node-role=worker
    """
    from kubectl_proxyctl import output as out
    from kubectl_proxyctl.cli.target import parse_service
    from kubectl_proxyctl.remote import fanout, report
    from kubectl_proxyctl.remote.expectations import Probing
    from kubectl_proxyctl.remote.matrix import LOCAL, cells, summarize
    from kubectl_proxyctl.remote.probe import validate_http_path
    from kubectl_proxyctl.remote.ssh import SSHClient, SSHOptions, validate_jump

    if bool(target) == bool(nodeport):
        raise click.UsageError("give either svc/NAME or --nodeport PORT")
    if node_list and selector:
        raise click.UsageError("-l/--selector selects cluster nodes; it cannot be combined with --nodes")
    if http_path is not None:
        validate_http_path(http_path)
    name = parse_service(target) if target else None
    options = SSHOptions(
        config_file=ssh_config, user=ssh_user, port=ssh_port, identity_files=ssh_key,
        jump=validate_jump(jump) if jump else None, accept_new_host_keys=accept_new_host_keys,
        connect_timeout=ssh_timeout,
    )
    probing = Probing(sources=(), http_path=http_path, proxy_mode=proxy_mode, udp_reply=expect_udp_reply)
    with SSHClient(options) as ssh:
        plan = _plan(cluster, ssh, probing, name, nodeport, protocol.upper(), node_list, selector, address_type,
                     ssh_target, from_)
        runner = ssh if any(s != LOCAL for s in plan.sources) else None
        if sys.stderr.isatty():
            with _ProgressLine(sys.stderr) as line:
                found = fanout.run_plan(plan, runner, probe_timeout, parallel, line.update)
        else:
            found = fanout.run_plan(plan, runner, probe_timeout, parallel)

    judged = cells(plan, found)
    summary = summarize(plan, judged)
    for detail in sorted({c.observation.detail for c in judged if c.observation.detail.startswith("HOST KEY FOR")}):
        click.echo(f"warning: {detail}", err=True)
    if output not in ("table", "wide"):
        click.echo(out.render_document(report.records(plan, judged, summary), output), nl=False)
    else:
        click.echo(report.table(plan, judged, summary, color=_color(), wide=output == "wide"), nl=False)
    return 0 if summary.ok else 1


def _plan(cluster: ClusterOptions, ssh: "SSHClient", probing: "Probing", name: str | None, nodeport: int | None,
          protocol: str, node_list: str | None, selector: str | None, address_type: str, ssh_target: str,
          from_: str) -> "MatrixPlan":
    """Nodes, sources and every cell's expectation. Cluster data is read for svc/NAME, for
    --nodeport without --nodes, and whenever --from-file is given."""
    from kubectl_proxyctl.errors import ConfigError
    from kubectl_proxyctl.remote import expectations as expect
    from kubectl_proxyctl.remote import local
    from kubectl_proxyctl.remote.matrix import LOCAL, LOCALHOST

    state = None
    if name or not node_list or cluster.from_file:
        from kubectl_proxyctl.kube.source import load_state

        state = load_state(cluster, namespace=cluster.namespace if name else None, service=name, include_pods=False)
    if node_list:
        nodes = _parse_nodes(node_list, ssh)
    else:
        assert state is not None
        nodes = _cluster_nodes(state, selector, address_type, ssh_target)
    if any(n.name == LOCALHOST for n in nodes):
        raise ConfigError(f"a node named {LOCALHOST} cannot be told apart from the loopback column")
    sources = ((LOCAL,) if from_ in ("local", "all") else ()) + (
        tuple(n.name for n in nodes) if from_ in ("nodes", "all") else ())
    probing = replace(probing, sources=sources)
    if name:
        assert state is not None
        if LOCAL in sources:  # loadBalancerSourceRanges are judged against this machine's address
            vips = [ip for sp in state.service_ports(f"{cluster.namespace}/{name}") for ip in sp.load_balancer_ips]
            probing = replace(probing, local_source=local.source_address(vips[0]) if vips else None)
        return expect.plan_for_service(state, cluster.namespace, name, nodes, probing)
    assert nodeport is not None
    if state is not None:
        return expect.plan_for_node_port(state, nodeport, protocol, nodes, probing)
    return expect.plan_without_cluster(nodes, nodeport, protocol, probing)
