"""`kubectl proxyctl run`: the node engine, a drop-in for kube-proxy (iptables, nftables or IPVS
mode), or socket load balancing through cgroup BPF programs (eBPF mode)."""

from __future__ import annotations

import logging
from typing import Any

import click

from kubectl_proxyctl.cli.options import DURATION, ClusterOptions, cluster_options

log = logging.getLogger(__name__)

MODES = ("iptables", "nftables", "ipvs", "ebpf")
LOCAL_MODES = ("ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
# ipvsadm's schedulers (modes/ipvs/render.py SCHEDULERS; repeated here so --help imports nothing).
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos")


def _default_node_name() -> str:
    import os
    import socket

    return (os.environ.get("NODE_NAME") or socket.gethostname()).strip().lower()


@click.command("run")
@click.option("--config", "config", metavar="FILE", type=click.Path(dir_okay=False),
              help="Read kube-proxy's configuration file (KubeProxyConfiguration v1alpha1, e.g. the config.conf "
                   "of the kube-proxy ConfigMap); flags given on the command line override it.")
@click.option("--write-config-to", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the effective configuration (flags over --config) as a KubeProxyConfiguration to FILE "
                   "('-' = stdout) and exit.")
@click.option("--mode", "--proxy-mode", "mode", type=click.Choice(MODES), default="iptables", show_default=True,
              help="Proxy mode: iptables, nftables, ipvs (needs the kernel's ip_vs module) or ebpf (socket load "
                   "balancing through cgroup BPF programs, plus an nftables table for traffic from outside).")
@click.option("--ipvs-scheduler", type=click.Choice(IPVS_SCHEDULERS), default="rr", show_default=True,
              help="The IPVS scheduler of every virtual server (--mode ipvs).")
@click.option("--ipvs-strict-arp", is_flag=True,
              help="Set arp_ignore=1 and arp_announce=2 so the node does not answer ARP for kube-ipvs0's "
                   "addresses (--mode ipvs).")
@click.option("--ipvs-exclude-cidrs", metavar="CIDR[,CIDR]", default="",
              help="Never delete virtual servers whose address is in these ranges, also with --cleanup "
                   "(--mode ipvs).")
@click.option("--ipvs-tcp-timeout", type=DURATION, default="0s", show_default=True,
              help="The IPVS timeout of idle TCP connections, as `ipvsadm --set`; 0 keeps the kernel's "
                   "(--mode ipvs).")
@click.option("--ipvs-tcpfin-timeout", type=DURATION, default="0s", show_default=True,
              help="The IPVS timeout of TCP connections after a FIN; 0 keeps the kernel's (--mode ipvs).")
@click.option("--ipvs-udp-timeout", type=DURATION, default="0s", show_default=True,
              help="The IPVS timeout of UDP flows; 0 keeps the kernel's (--mode ipvs).")
@click.option("--cgroup-path", metavar="DIR", default="",
              help="The cgroup v2 directory whose processes' sockets are load-balanced (--mode ebpf; default: "
                   "the cgroup v2 root, i.e. every process on the node).")
@click.option("--bpf-pin-path", metavar="DIR", default="",
              help="Where the BPF maps and program links are pinned (--mode ebpf; default /sys/fs/bpf/proxyctl).")
@click.option("--node-name", "--hostname-override", "node_name", metavar="NAME",
              help="This node's name: decides which endpoints are local (default: $NODE_NAME, else the hostname).")
@click.option("--node-ip", "node_ips", multiple=True, metavar="IP",
              help="This node's address(es) (repeatable; default: the Node object's addresses).")
@click.option("--ip-family", type=click.Choice(["IPv4", "IPv6"]), default="IPv4", show_default=True,
              help="The IP family this process programs (run one per family for dual stack).")
@click.option("--cluster-cidr", metavar="CIDR[,CIDR]", default="",
              help="Pod CIDR(s); traffic from outside them is masqueraded (with --detect-local-mode ClusterCIDR).")
@click.option("--detect-local-mode", type=click.Choice(LOCAL_MODES), default="ClusterCIDR", show_default=True,
              help="How traffic from local pods is recognised.")
@click.option("--pod-bridge-interface", metavar="IFACE", default="", help="For --detect-local-mode BridgeInterface.")
@click.option("--pod-interface-name-prefix", metavar="PREFIX", default="",
              help="For --detect-local-mode InterfaceNamePrefix.")
@click.option("--masquerade-all", is_flag=True, help="SNAT all traffic sent to cluster IPs.")
@click.option("--masquerade-bit", "--iptables-masquerade-bit", "masquerade_bit", type=click.IntRange(0, 31),
              default=14, show_default=True, help="The fwmark bit that flags packets for SNAT.")
@click.option("--nodeport-addresses", metavar="CIDR[,CIDR]|primary", default="",
              help="Accept NodePort traffic only on these addresses (default: all local addresses in iptables mode, "
                   "the primary node IP in nftables mode).")
@click.option("--localhost-nodeports/--no-localhost-nodeports", default=True, show_default=True,
              help="Accept NodePort connections to 127.0.0.1 (sets route_localnet=1; IPv4, iptables mode only).")
@click.option("--sync-period", "--iptables-sync-period", "--ipvs-sync-period", "sync_period", type=DURATION, default="30s",
              show_default=True, help="Maximum time between syncs (and canary checks).")
@click.option("--min-sync-period", "--iptables-min-sync-period", "--ipvs-min-sync-period", "min_sync_period", type=DURATION,
              default="1s", show_default=True, help="Minimum time between syncs; bursts of changes coalesce.")
@click.option("--healthz-bind-address", default="0.0.0.0:10256", show_default=True,
              help="Serve /healthz and /livez here; empty disables.")
@click.option("--metrics-bind-address", default="127.0.0.1:10249", show_default=True,
              help="Serve /metrics, /proxyMode, /configz here; empty disables.")
@click.option("--bind-address-hard-fail", is_flag=True, help="Exit when a server port cannot be bound.")
@click.option("--cleanup", is_flag=True,
              help="Remove every chain, rule, table, virtual server, ipset and kube-ipvs0 of every mode, and eBPF "
                   "mode's programs and pinned maps (under --bpf-pin-path), then exit.")
@click.option("--dry-run", is_flag=True,
              help="Print the payload one full sync would apply and exit; changes nothing (no root needed).")
@click.option("--once", is_flag=True, help="Apply one full sync and exit.")
@cluster_options(outputs=(), namespaced=False)
def run(cluster: ClusterOptions, **flags: object) -> None:
    """Run the node engine: turn Services and EndpointSlices into iptables, nftables, IPVS or eBPF state.

    Watches Services, EndpointSlices and Nodes and programs kube-proxy's exact layout (same
    chains, hashes, probabilities and comments in iptables mode; the same table, verdict maps
    and chain names in nftables mode; the same virtual servers, kube-ipvs0 addresses, ipsets
    and iptables rules in IPVS mode), so runbooks written for kube-proxy apply. eBPF mode has
    no kube-proxy twin: cgroup programs pick the endpoint when a process calls connect() (no
    NAT, no conntrack entry), and an nftables table serves node ports and external addresses
    reached from outside the node. Nothing is
    programmed until Services and EndpointSlices are listed; when the API server goes away the
    last rules stay in place. Starting in one mode removes the other mode's rules.

    --config reads kube-proxy's own configuration file (KubeProxyConfiguration v1alpha1, the
    config.conf key of the kube-proxy ConfigMap): flags given on the command line override it,
    fields left empty keep the flags' defaults, its clientConnection.kubeconfig is used unless
    --kubeconfig is given, and fields this proxy does not implement are named in a warning.

    \b
    Examples:
      kubectl proxyctl run --node-name node1 --cluster-cidr 10.244.0.0/16
      kubectl proxyctl run --mode nftables --node-name node1 --cluster-cidr 10.244.0.0/16
      kubectl proxyctl run --mode ipvs --ipvs-scheduler wrr --node-name node1 --cluster-cidr 10.244.0.0/16
      kubectl proxyctl run --mode ipvs --ipvs-tcp-timeout 900s --ipvs-exclude-cidrs 192.0.2.0/24 --node-name node1
      kubectl proxyctl run --mode ebpf --node-name node1 --cluster-cidr 10.244.0.0/16
      kubectl proxyctl run --config /var/lib/kube-proxy/config.conf --hostname-override "$NODE_NAME"
      kubectl proxyctl run --dry-run --from-file cluster.yaml --node-name node1
      kubectl proxyctl run --cleanup
    """
    from kubectl_proxyctl.cli.options import SETTINGS, configure_logging
    from kubectl_proxyctl.engine.app import EngineFlags, run_engine

    config_file = flags.pop("config")
    write_config_to = flags.pop("write_config_to")
    if not flags.get("dry_run") and not write_config_to:
        # An engine logs one line per sync by default, like kube-proxy.
        SETTINGS.verbosity = max(SETTINGS.verbosity, 1)
        configure_logging()
    if config_file:
        flags, cluster = _with_config_file(str(config_file), flags, cluster)
    engine_flags = EngineFlags.from_flags(flags, default_node=_default_node_name)
    if write_config_to:
        return _write_config(str(write_config_to), flags, cluster)
    run_engine(cluster, engine_flags)


def _explicit(ctx: click.Context, names: Any) -> set[str]:
    """The parameters the user set (command line or environment), which a config file does not override."""
    from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name for name in names if ctx.get_parameter_source(name) in given}


def _with_config_file(path: str, flags: dict[str, Any], cluster: ClusterOptions
                      ) -> tuple[dict[str, Any], ClusterOptions]:
    """The flags with the file's values under them (kube-proxy's order: command line, file, defaults).

    The file's values pass through each flag's own type, so a bad value fails as the flag would,
    naming the file and the field."""
    import dataclasses

    from kubectl_proxyctl.engine.kubeproxyconfig import load
    from kubectl_proxyctl.errors import ConfigError

    ctx = click.get_current_context()
    explicit = _explicit(ctx, flags)
    config = load(path)
    for warning in config.warnings():
        log.warning("%s", warning)
    mode = flags["mode"] if "mode" in explicit else (config.mode or flags["mode"])
    params = {p.name: p for p in ctx.command.params}
    merged = dict(flags)
    for name, (field, value) in config.flag_values(str(mode)).items():
        if name in explicit:
            continue
        param = params[name]
        try:
            merged[name] = value if isinstance(value, tuple) else param.type.convert(value, param, ctx)
        except click.BadParameter as exc:
            raise ConfigError(f"{path}: {field}: {exc.message}") from None
    if cluster.kubeconfig is None and config.kubeconfig:  # --kubeconfig wins, as kube-proxy's flag does
        cluster = dataclasses.replace(cluster, kubeconfig=config.kubeconfig)
    return merged, cluster


def _write_config(path: str, flags: dict[str, Any], cluster: ClusterOptions) -> None:
    from kubectl_proxyctl.engine.kubeproxyconfig import dump, to_document
    from kubectl_proxyctl.errors import ConfigError

    text = dump(to_document(flags, cluster.kubeconfig))
    if path == "-":
        click.echo(text, nl=False)
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise ConfigError(f"--write-config-to {path}: {exc.strerror}") from None
