"""What `dump`, `explain` and `verify` share: where the rules come from, and which node.

Options (`node_options`): `--rules-file FILE` (repeatable; iptables-save, nft -j, ipvsadm
and ipset outputs, told apart automatically), `--node NODE` (collect over SSH, with the same
SSH flags as `probe`), otherwise the live node this command runs on (`--ip-family` picks
iptables or ip6tables, nft `ip` or `ip6`); `--node-name`,
`--node-ip` (repeatable) and `--cluster-cidr` say which node the rules belong to and which
sources are pods; `--proxy-mode` overrides the detection of the node's proxy mode.

Heavy imports happen inside the functions: `explain --rules-file` never loads the
kubernetes client (only `load_cluster_state` does, and only when it talks to the API).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import click

from kubectl_proxyctl.cli.options import DURATION, ClusterOptions

from kubectl_proxyctl.remote.nodeaccess import DEBUG_IMAGE, VIAS

if TYPE_CHECKING:
    from kubectl_proxyctl.model import ClusterState
    from kubectl_proxyctl.inspect.graph import RuleGraph
    from kubectl_proxyctl.modes.base import Mode
    from kubectl_proxyctl.modes.owners import ServiceSelector
    from kubectl_proxyctl.modes.nodecontext import NodeContext
    from kubectl_proxyctl.system.noderules import NodeRules

F = TypeVar("F", bound=Callable[..., Any])
PROXY_MODES = ("auto", "iptables", "nftables", "ipvs", "ebpf")


@dataclass(frozen=True)
class NodeOptions:
    rules_files: tuple[str, ...] = ()
    node: str | None = None
    node_name: str | None = None
    node_ips: tuple[str, ...] = ()
    cluster_cidrs: tuple[str, ...] = ()
    proxy_mode: str = "auto"
    ip_family: str = "IPv4"
    sudo: bool = False
    ssh_config: str | None = None
    ssh_user: str | None = None
    ssh_port: int | None = None
    ssh_keys: tuple[str, ...] = ()
    jump: str | None = None
    accept_new_host_keys: bool = False
    ssh_timeout: float | None = None
    via: str = "auto"
    proxy_pod_selector: str | None = None
    debug_pod: bool = False
    image: str | None = None
    bpf_pin_path: str = ""  # eBPF mode's pin directory ("": the default)

    @property
    def ssh_requested(self) -> bool:
        """An ssh config or an --ssh-* flag says SSH is how this cluster's nodes are reached."""
        return bool(self.ssh_config or self.ssh_user or self.ssh_port or self.ssh_keys or self.jump
                    or self.accept_new_host_keys or self.ssh_timeout is not None)

    @property
    def live(self) -> bool:
        return not self.rules_files and not self.node


def node_options(f: F) -> F:
    """Add the rule-source and node options; the command receives `node` (NodeOptions)."""

    def collect(**kwargs: Any) -> Any:
        cidrs: list[str] = []
        for value in kwargs.pop("cluster_cidr"):
            cidrs += [c.strip() for c in value.split(",") if c.strip()]
        node_name = kwargs.pop("node_name")
        node = NodeOptions(
            rules_files=tuple(kwargs.pop("rules_files")),
            node=kwargs.pop("node_host"),
            # Node names are lower-case; kube-proxy lower-cases --hostname-override too
            node_name=node_name.strip().lower() if node_name is not None else None,
            node_ips=tuple(kwargs.pop("node_ips")),
            cluster_cidrs=tuple(cidrs),
            proxy_mode=kwargs.pop("proxy_mode"),
            ip_family=kwargs.pop("ip_family"),
            sudo=kwargs.pop("sudo"),
            ssh_config=kwargs.pop("ssh_config"),
            ssh_user=kwargs.pop("ssh_user"),
            ssh_port=kwargs.pop("ssh_port"),
            ssh_keys=tuple(kwargs.pop("ssh_keys")),
            jump=kwargs.pop("jump"),
            accept_new_host_keys=kwargs.pop("accept_new_host_keys"),
            ssh_timeout=kwargs.pop("ssh_timeout"),
            via=kwargs.pop("via"),
            proxy_pod_selector=kwargs.pop("proxy_pod_selector"),
            debug_pod=kwargs.pop("debug_pod"),
            image=kwargs.pop("image"),
            bpf_pin_path=kwargs.pop("bpf_pin_path") or "",
        )
        _validate(node)
        return f(node=node, **kwargs)

    collect.__name__ = f.__name__
    collect.__doc__ = f.__doc__
    g: Any = collect
    if hasattr(f, "__click_params__"):
        g.__click_params__ = f.__click_params__
    ssh = "(with --node over SSH)"
    for decorator in reversed([
        click.option("--rules-file", "rules_files", multiple=True, metavar="FILE",
                     type=click.Path(dir_okay=False, allow_dash=True),
                     help="Read the rules from a file ('-' = stdin): iptables-save (either backend), "
                     "`nft -j list ruleset`, `ipvsadm -Sn`/`-Ln`, `ipset save`, `ip -json address show` or `ip -json route show` output, or "
                     "eBPF mode's maps document (`\"kind\": \"proxyctl-ebpf\"`), "
                     "detected automatically; repeatable, and one file may hold several. Default: this node's live "
                     "rules."),
        click.option("--node", "node_host", metavar="NODE", shell_complete=complete_nodes,
                     help="Collect the rules from NODE instead of this host: through the API, by exec in "
                     "the proxy pod running on NODE (kube-proxy's or ours), else over SSH when an ssh "
                     "config or --ssh-* flag is given, else (with --debug-pod) in a short-lived debug pod."),
        click.option("--via", type=click.Choice(VIAS), default="auto", show_default=True,
                     help="How to reach --node: force exec (a proxy pod), ssh, or debug-pod."),
        click.option("--proxy-pod-selector", metavar="SELECTOR",
                     help="Label selector of the proxy pods in kube-system to exec in (default: "
                     "k8s-app=kube-proxy, then app.kubernetes.io/name=kubectl-proxyctl)."),
        click.option("--debug-pod", is_flag=True,
                     help="When no proxy pod or SSH reaches --node, start a privileged hostNetwork pod on "
                     "it (kubectl debug node's shape), read the rules, delete the pod."),
        click.option("--image", metavar="IMAGE",
                     help=f"The debug pod's image (with --debug-pod; default {DEBUG_IMAGE}); it needs "
                     "iptables-save, nft, ipset and ip."),
        click.option("--node-name", metavar="NAME",
                     help="The Node the rules belong to (decides which endpoints are local; default for "
                     "live rules: $NODE_NAME or the hostname, else the Node with one of this host's "
                     "addresses; with --node: NODE). Checked against the cluster's Nodes (the API, or "
                     "--from-file when it holds Nodes)."),
        click.option("--node-ip", "node_ips", multiple=True, metavar="IP",
                     help="The node's address(es), for NodePort paths (repeatable; default: the Node "
                     "object's addresses, else the live node's)."),
        click.option("--cluster-cidr", multiple=True, metavar="CIDR[,CIDR]",
                     help="Pod CIDR(s): which sources are pods (default: read back from the rules)."),
        click.option("--proxy-mode", type=click.Choice(PROXY_MODES), default="auto", show_default=True,
                     help="Which proxy mode's rules to read when several are present."),
        click.option("--ip-family", type=click.Choice(["IPv4", "IPv6"]), default="IPv4", show_default=True,
                     help="Which family's tables to collect from a live node or over SSH (iptables or "
                     "ip6tables, nft `ip` or `ip6`)."),
        click.option("--bpf-pin-path", metavar="DIR",
                     help="Where eBPF mode's maps are pinned on the node (the engine's --bpf-pin-path; "
                     "default /sys/fs/bpf/proxyctl)."),
        click.option("--sudo", is_flag=True, help=f"Run the node's tools with `sudo -n` {ssh}."),
        click.option("--ssh-config", metavar="PATH", envvar="PROXYCTL_SSH_CONFIG",
                     help=f"ssh config file, like `ssh -F` {ssh} [env: PROXYCTL_SSH_CONFIG]."),
        click.option("--ssh-user", metavar="USER", help=f"SSH user {ssh}."),
        click.option("--ssh-port", type=int, metavar="PORT", help=f"SSH port {ssh}."),
        click.option("--ssh-key", "ssh_keys", multiple=True, metavar="PATH", help=f"SSH identity file {ssh}."),
        click.option("--jump", metavar="[USER@]HOST[:PORT]", help=f"SSH jump host {ssh}."),
        click.option("--accept-new-host-keys", is_flag=True,
                     help=f"Trust and remember unknown SSH host keys {ssh}."),
        click.option("--ssh-timeout", type=DURATION, metavar="DURATION", help=f"SSH connect timeout {ssh}."),
    ]):
        g = decorator(g)
    return g  # type: ignore[no-any-return]


def complete_nodes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    from kubectl_proxyctl.cli.completion import nodes_for

    return nodes_for(ctx, incomplete)


def complete_services(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    from kubectl_proxyctl.cli.completion import services_for

    return services_for(ctx, incomplete)


def _validate(node: NodeOptions) -> None:
    import ipaddress

    from kubectl_proxyctl.errors import ConfigError

    from kubectl_proxyctl.kube.convert import is_dns_subdomain

    if node.rules_files and node.node:
        raise click.UsageError("--rules-file and --node exclude each other")
    if not node.node and (node.via != "auto" or node.proxy_pod_selector or node.debug_pod or node.image):
        raise click.UsageError("--via, --proxy-pod-selector, --debug-pod and --image say how to reach --node NODE: "
                               "pass --node too")
    if node.image and not (node.debug_pod or node.via == "debug-pod"):
        raise click.UsageError("--image is the debug pod's image: pass --debug-pod (or --via debug-pod) too")
    from kubectl_proxyctl.remote.nodeaccess import validate_image, validate_node_name, validate_selector

    if node.node and node.via in ("exec", "debug-pod"):
        validate_node_name(node.node)
    if node.proxy_pod_selector is not None:
        validate_selector(node.proxy_pod_selector)
    if node.image is not None:
        validate_image(node.image)
    if node.node_name is not None and not is_dns_subdomain(node.node_name):
        raise ConfigError(f"--node-name: {node.node_name!r} is not a valid node name (a DNS subdomain: "
                          "lower-case letters, digits, '-' and '.', at most 253 characters)")
    for ip in node.node_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"--node-ip: {ip!r} is not an IP address") from None
    for cidr in node.cluster_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"--cluster-cidr: {cidr!r} is not a CIDR") from None


def default_node_name() -> str:
    return (os.environ.get("NODE_NAME") or socket.gethostname()).strip().lower()


def read_rules(node: NodeOptions, cluster: ClusterOptions | None = None,
               api: Callable[[], Any] | None = None) -> tuple["RuleGraph", list[str]]:
    """The RuleGraph and the node's own addresses (known only for live and remote sources).

    `api` (an api_connector) is shared by callers that read many nodes."""
    from kubectl_proxyctl.inspect.graph import load_files

    if node.rules_files:
        return load_files(node.rules_files), []
    found, where = collect_rules(node, cluster, api)
    return graph_of(found, node.node, where), found.addresses


def collect_rules(node: NodeOptions, cluster: ClusterOptions | None = None,
                  api: Callable[[], Any] | None = None) -> tuple["NodeRules", str]:
    """This host's raw rules, or --node's and how it was reached ("pod kube-system/x", "ssh node2")."""
    from kubectl_proxyctl.model import IPFamily
    from kubectl_proxyctl.system.noderules import collect

    from kubectl_proxyctl.modes.ebpf.parse import collection

    family = IPFamily(node.ip_family)
    pinned = (collection(node.bpf_pin_path),)  # eBPF mode's pinned maps
    if not node.node:
        return collect(family=family, pinned=pinned), ""
    with open_node(node, cluster or ClusterOptions(), api=api) as access:
        return collect(access.executor, family, pinned), access.where


def graph_of(found: "NodeRules", node: str | None, where: str) -> "RuleGraph":
    from kubectl_proxyctl.inspect.graph import load_texts

    prefix = f"{node} ({where}): " if node else ""
    return load_texts([(prefix + source, text) for source, text in found.texts], found.notes, found.backend_in_use)


def node_request(node: NodeOptions, name: str | None = None) -> Any:
    """The remote.nodeaccess.NodeRequest for `--node` (or `name`, for --all-nodes)."""
    from kubectl_proxyctl.remote.nodeaccess import NodeRequest
    from kubectl_proxyctl.remote.ssh import SSHOptions, validate_jump

    ssh = SSHOptions(config_file=node.ssh_config, user=node.ssh_user, port=node.ssh_port,
                     identity_files=node.ssh_keys, jump=validate_jump(node.jump) if node.jump else None,
                     accept_new_host_keys=node.accept_new_host_keys, connect_timeout=node.ssh_timeout)
    return NodeRequest(node=name or node.node or "", via=node.via, proxy_pod_selector=node.proxy_pod_selector,
                       debug_pod=node.debug_pod, image=node.image, ssh=ssh, ssh_requested=node.ssh_requested,
                       sudo=node.sudo)


def api_connector(cluster: ClusterOptions) -> Callable[[], Any]:
    """Connect to the API server on first use, once."""
    import threading

    made: list[Any] = []
    lock = threading.Lock()

    def connect() -> Any:
        with lock:
            return made[0] if made else _connect()

    def _connect() -> Any:
        from kubectl_proxyctl.errors import ConfigError

        if cluster.from_file:
            raise ConfigError("--from-file gives no API server to exec through")
        made.append(cluster.connect())
        return made[0]

    return connect


def open_node(node: NodeOptions, cluster: ClusterOptions, name: str | None = None,
              api: Callable[[], Any] | None = None) -> Any:
    """A context manager yielding remote.nodeaccess.Access for --node (or `name`)."""
    from kubectl_proxyctl.remote.nodeaccess import open_node as open_access

    return open_access(node_request(node, name), api or api_connector(cluster))


def node_name_for(node: NodeOptions) -> str | None:
    if node.node_name:
        return node.node_name
    if node.node:
        return node.node
    if node.live:
        return default_node_name()
    return None


def node_origin(node: NodeOptions) -> str:
    """Where node_name_for's answer comes from (for resolve_node and its messages)."""
    if node.node_name:
        return "--node-name"
    return "--node" if node.node else "hostname"


def resolve_node_name(cluster: ClusterOptions, node: NodeOptions, state: "ClusterState | None",
                      addresses: Sequence[str]) -> str | None:
    """The name of the Node the rules belong to, checked against the cluster's Nodes.

    Checked against the API's Nodes, or the --from-file objects when they hold Nodes; with
    no cluster objects at all (--rules-file alone) there is nothing to check against."""
    name = node_name_for(node)
    if name is None or state is None or (cluster.from_file and not state.nodes):
        return name
    from kubectl_proxyctl.inspect.nodeinfo import resolve_node

    return resolve_node(state.nodes, name, node_origin(node), addresses)


def proxy_mode(graph: "RuleGraph", node: NodeOptions, cluster: ClusterOptions | None = None) -> "Mode":
    from kubectl_proxyctl.errors import NotFoundError
    from kubectl_proxyctl.modes.base import Mode

    if node.proxy_mode != "auto":
        return Mode(node.proxy_mode)
    mode = graph.mode
    if mode is None:
        if node.live:
            raise NotFoundError("no Service proxy rules found on this machine: it is not a node, or no proxy has "
                                f"programmed it yet. {_nodes_hint(cluster)}")
        where = ", ".join(graph.sources) or (f"node {node.node}" if node.node else "the input")
        raise NotFoundError(f"no Service proxy rules found in {where}")
    return mode


def _nodes_hint(cluster: ClusterOptions | None) -> str:
    """What to pass instead of reading this machine, naming the cluster's nodes when the API answers."""
    import dataclasses

    names: list[str] = []
    if cluster is not None and not cluster.from_file:
        from kubectl_proxyctl.errors import ProxyctlError
        from kubectl_proxyctl.kube.client import list_names

        try:
            names = list_names(dataclasses.replace(cluster, request_timeout=min(cluster.request_timeout, 5.0)),
                               "nodes")
        except ProxyctlError:
            names = []
    if names:
        shown = ", ".join(names[:10]) + (f", … ({len(names)} nodes)" if len(names) > 10 else "")
        return (f"Pass --node NODE with one of the cluster's nodes ({shown}), read through its proxy pod "
                "or SSH, or --rules-file FILE")
    return "Pass --node NODE (a cluster node, read through its proxy pod or SSH) or --rules-file FILE"


def load_cluster_state(cluster: ClusterOptions, node: NodeOptions, namespace: str | None, service: str | None,
                       required: bool) -> tuple["ClusterState | None", str | None]:
    """The Services and EndpointSlices, or (None, why) when they are optional and unavailable.

    With `--from-file` the file; with `--rules-file` and no `--from-file`, nothing unless
    `required` (explain then works from the rules alone and never imports the API client);
    otherwise the API server."""
    if not cluster.from_file and node.rules_files and not required:
        return None, None
    from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError
    from kubectl_proxyctl.kube.source import load_state

    if cluster.from_file and service and namespace:
        return _state_of_one_service(cluster.from_file, namespace, service), None
    try:
        state = load_state(cluster, namespace=namespace, service=service, include_pods=False)
    except NotFoundError:
        if cluster.from_file:
            return None, None
        if required:
            raise
        return None, f'service "{service}" not found in namespace "{namespace}" in the API'
    except (ConfigError, ClusterError) as exc:
        if required or cluster.from_file:
            raise
        return None, f"no cluster access ({exc}): the Service facts come from the rules alone"
    return state, None


def _state_of_one_service(path: str, namespace: str, service: str) -> "ClusterState":
    """One Service, its EndpointSlices and the Nodes from a file: what the API would answer
    for it, without converting every other object of a big snapshot."""
    from kubectl_proxyctl.kube.convert import LABEL_SERVICE_NAME
    from kubectl_proxyctl.kube.snapshot import state_from_file

    def wanted(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata")
        kind = obj.get("kind")
        if kind == "Node":
            return True
        if not isinstance(meta, dict) or (meta.get("namespace") or "default") != namespace:
            return False
        if kind == "Service":
            return bool(meta.get("name") == service)
        labels = meta.get("labels")
        if kind == "EndpointSlice" and isinstance(labels, dict):
            return bool(labels.get(LABEL_SERVICE_NAME) == service)
        return False

    from kubectl_proxyctl.kube.source import CappedWarnings

    warn = CappedWarnings()
    try:
        return state_from_file(path, warn, wanted)  # type: ignore[no-any-return]
    finally:
        warn.close()


def selector_for(target: str, cluster: ClusterOptions) -> "ServiceSelector":
    from kubectl_proxyctl.cli.target import parse_service
    from kubectl_proxyctl.modes.owners import ServiceSelector

    return ServiceSelector(cluster.namespace, parse_service(target))


def context_for(graph: "RuleGraph", state: "ClusterState | None", node: NodeOptions,
                addresses: Sequence[str], name: str | None = None) -> "NodeContext":
    """What is known about the node; `name` is the resolved node name (resolve_node_name),
    else the one the flags or the host give."""
    from kubectl_proxyctl.inspect.nodeinfo import node_context

    return node_context(graph, state, name or node_name_for(node), node.node_ips, node.cluster_cidrs, addresses)
