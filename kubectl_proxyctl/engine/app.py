"""Wiring the engine together for `kubectl proxyctl run`: sources, proxier, servers, loop.

The four ways to run:

* `--dry-run`: read the objects once (file or API), plan, render, print the payload (an
  `iptables-restore` payload, or with `--mode nftables` an `nft -f` script). Touches
  nothing, needs no root.
* `--once`: the same, then apply it as one full sync (jump rules and canaries included).
* `--cleanup`: remove what every mode's writer owns (kube-proxy's iptables chains and jump
  rules, the nftables `kube-proxy` tables), both families, nothing else.
* the default: list+watch the API (or read `--from-file` once) and keep the node in sync
  until SIGINT/SIGTERM; the rules stay in place when the process exits.

Starting `--once` or the long-running engine in one mode first removes the other modes'
rules, as kube-proxy does, so a node switched between modes never runs both layouts. Nothing
here knows a mode: each mode's writer module (`modes/<mode>/writer.py`) says how to make its
Writer, its defaults, its dry-run text, what a node needs first, and how to clean up.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kubectl_proxyctl.plan.planner import DetectLocalMode, ProxyConfig
from kubectl_proxyctl.errors import ApplyError, ConfigError, ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes import REGISTRY, Mode, writer_factory

log = logging.getLogger(__name__)

def _csv(value: object) -> tuple[str, ...]:
    return tuple(p.strip() for p in str(value or "").split(",") if p.strip())


@dataclass(frozen=True)
class EngineFlags:
    mode: str
    config: ProxyConfig
    sync_period: float
    min_sync_period: float
    healthz_bind_address: str
    metrics_bind_address: str
    hard_fail: bool
    cleanup: bool
    dry_run: bool
    once: bool

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], default_node: Callable[[], str]) -> "EngineFlags":
        if sum(bool(flags[f]) for f in ("cleanup", "dry_run", "once")) > 1:
            raise ConfigError("--cleanup, --dry-run and --once exclude each other")
        sync_period = float(flags["sync_period"])
        min_sync = float(flags["min_sync_period"])
        if sync_period <= 0:
            raise ConfigError("--sync-period must be positive")
        if min_sync > sync_period:
            raise ConfigError("--min-sync-period must not exceed --sync-period")
        import ipaddress

        _cidrs(flags["cluster_cidr"], "--cluster-cidr")
        exclude_cidrs = _cidrs(flags.get("ipvs_exclude_cidrs"), "--ipvs-exclude-cidrs")
        ipvs_timeouts = {name: _timeout(flags.get(name), name) for name in IPVS_TIMEOUTS}
        for ip in flags["node_ips"] or ():  # type: ignore[attr-defined]
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(f"--node-ip: {ip!r} is not an IP address") from None
        np_addresses = _csv(flags["nodeport_addresses"])
        for cidr in np_addresses:
            if cidr != "primary":
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(f"--nodeport-addresses: {cidr!r} is neither a CIDR nor 'primary'") from None
        mode = DetectLocalMode(str(flags["detect_local_mode"]))
        if mode == DetectLocalMode.BridgeInterface and not flags["pod_bridge_interface"]:
            raise ConfigError("--detect-local-mode BridgeInterface needs --pod-bridge-interface")
        if mode == DetectLocalMode.InterfaceNamePrefix and not flags["pod_interface_name_prefix"]:
            raise ConfigError("--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix")
        writer_module = _writer_module(str(flags["mode"]))
        if writer_module is not None and not np_addresses:
            np_addresses = writer_module.DEFAULT_NODEPORT_ADDRESSES  # nftables: the node's primary IP only
        from kubectl_proxyctl.kube.convert import is_dns_subdomain

        given = str(flags["node_name"] or "").strip().lower()
        node_name = given or str(default_node()).strip().lower()
        if not node_name:
            raise ConfigError("cannot tell this node's name: pass --node-name")
        if not is_dns_subdomain(node_name):
            what = f"--node-name {given!r}" if given else f"this host's name {node_name!r}"
            raise ConfigError(f"{what} is not a valid node name (a DNS subdomain: lower-case letters, "
                              "digits, '-' and '.', at most 253 characters)"
                              + ("" if given else "; pass --node-name"))
        from kubectl_proxyctl.engine.metrics import parse_bind_address

        for flag in ("healthz_bind_address", "metrics_bind_address"):
            address = str(flags[flag] or "")
            if address not in ("", "0"):
                try:
                    parse_bind_address(address)
                except ConfigError as exc:
                    raise ConfigError(f"--{flag.replace('_', '-')}: {exc}") from None
        config = ProxyConfig(
            node_name=node_name,
            family=IPFamily(str(flags["ip_family"])),
            cluster_cidrs=_csv(flags["cluster_cidr"]),
            detect_local_mode=mode,
            pod_bridge_interface=str(flags["pod_bridge_interface"] or ""),
            pod_interface_name_prefix=str(flags["pod_interface_name_prefix"] or ""),
            masquerade_all=bool(flags["masquerade_all"]),
            masquerade_bit=int(flags["masquerade_bit"]),  # type: ignore[call-overload]
            nodeport_addresses=np_addresses,
            node_ips=tuple(flags["node_ips"] or ()),  # type: ignore[call-overload]
            # nftables mode has no localhost NodePorts (kube-proxy's deliberate difference)
            localhost_nodeports=bool(flags["localhost_nodeports"]) and (
                writer_module is None or writer_module.LOCALHOST_NODEPORTS),
            ipvs_scheduler=str(flags.get("ipvs_scheduler") or "rr"),
            ipvs_strict_arp=bool(flags.get("ipvs_strict_arp")),
            ipvs_exclude_cidrs=exclude_cidrs,
            **ipvs_timeouts,
            bpf_cgroup_path=str(flags.get("cgroup_path") or ""),
            bpf_pin_path=str(flags.get("bpf_pin_path") or ""),
        )
        return cls(
            mode=str(flags["mode"]), config=config, sync_period=sync_period, min_sync_period=min_sync,
            healthz_bind_address=str(flags["healthz_bind_address"] or ""),
            metrics_bind_address=str(flags["metrics_bind_address"] or ""),
            hard_fail=bool(flags["bind_address_hard_fail"]), cleanup=bool(flags["cleanup"]),
            dry_run=bool(flags["dry_run"]), once=bool(flags["once"]),
        )


IPVS_TIMEOUTS = ("ipvs_tcp_timeout", "ipvs_tcpfin_timeout", "ipvs_udp_timeout")


def _cidrs(value: object, flag: str) -> tuple[str, ...]:
    """A comma-separated list of CIDRs, each checked (ConfigError naming the flag and the bad one)."""
    import ipaddress

    out = _csv(value)
    for cidr in out:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"{flag}: {cidr!r} is not a CIDR") from None
    return out


def _timeout(value: object, name: str) -> int:
    """An IPVS timeout in whole seconds (the kernel's unit; kube-proxy truncates the same way)."""
    seconds = float(value or 0)  # type: ignore[arg-type]
    if seconds < 0:
        raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
    return int(seconds)


def config_warnings(config: ProxyConfig) -> list[str]:
    """What kube-proxy warns about at start: a configuration that is probably incomplete."""
    if config.detect_local_mode == DetectLocalMode.ClusterCIDR and not config.cluster_cidrs:
        return ["no cluster CIDR (--cluster-cidr, or clusterCIDR in --config) with --detect-local-mode "
                "ClusterCIDR: traffic from pods cannot be told from other traffic, so traffic to cluster IPs "
                "from outside the pod network is not masqueraded"]
    return []


def _writer_module(mode: str) -> Any:
    """The writer module of a mode the engine can run (None for one it cannot)."""
    entry = REGISTRY.get(Mode(mode)) if mode in Mode.__members__.values() else None
    return entry.module("writer") if entry is not None and entry.has_writer else None


def _writable_modes() -> list[Mode]:
    return [mode for mode, entry in REGISTRY.items() if entry.has_writer]


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ConfigError(f"{what} needs root (CAP_NET_ADMIN) to program netfilter; "
                          "--dry-run prints the rules without applying them")


def _static_objects(cluster: Any) -> list[dict[str, Any]]:
    """Every Service, EndpointSlice and Node, from the file or one list of the API."""
    if cluster.from_file:
        from kubectl_proxyctl.kube.snapshot import load_objects

        return load_objects(cluster.from_file)
    from kubectl_proxyctl.kube.client import connect
    from kubectl_proxyctl.kube.informer import SERVICE_NAME_SELECTOR

    api = connect(cluster.kubeconfig, cluster.context, cluster.request_timeout, cluster.overrides)
    objects: list[dict[str, Any]] = []
    for resource, selector in (("services", None), ("endpointslices", SERVICE_NAME_SELECTOR), ("nodes", None)):
        items, _ = api.list(resource, label_selector=selector)
        objects.extend(items)
    return objects


def _tracker_from(objects: list[dict[str, Any]], node_name: str) -> Any:
    from kubectl_proxyctl.kube.tracker import StateTracker

    tracker = StateTracker(node_name, warn=lambda m: log.warning("%s", m))
    for obj in objects:
        kind = obj.get("kind")
        if kind in ("Service", "EndpointSlice", "Node"):
            tracker.apply(str(kind), "ADDED", obj)
        else:
            log.warning("skipping %s %s: not a Service, EndpointSlice or Node", kind,
                        (obj.get("metadata") or {}).get("name"))
    return tracker


def _with_local_addresses(config: ProxyConfig) -> ProxyConfig:
    """NodePort CIDR filters need every local address, not only the Node object's."""
    import dataclasses

    if config.node_ips or not any(a != "primary" for a in config.nodeport_addresses):
        return config
    from kubectl_proxyctl.system.addresses import local_addresses

    return dataclasses.replace(config, node_ips=tuple(local_addresses()))


def run_engine(cluster: Any, flags: EngineFlags) -> None:
    writer_factory(flags.mode)  # a ConfigError for a mode the engine cannot run
    if flags.cleanup:
        _require_root("--cleanup")
        return cleanup(flags.config)
    if flags.dry_run:
        return dry_run(cluster, flags)
    _require_root("run" if not flags.once else "run --once")
    for warning in config_warnings(flags.config):
        log.warning("%s", warning)
    if flags.once:
        return once(cluster, flags)
    return serve(cluster, flags)


def dry_run(cluster: Any, flags: EngineFlags) -> None:
    import click

    from kubectl_proxyctl.plan.planner import plan

    tracker = _tracker_from(_static_objects(cluster), flags.config.node_name)
    node_plan = plan(tracker.snapshot().state, flags.config)
    text, summary = _writer_module(flags.mode).dry_run(node_plan)
    click.echo(text, nl=False)
    log.info("%s", summary)


def _proxier(mode: str, config: ProxyConfig, tracker: Any, **kwargs: Any) -> Any:
    from kubectl_proxyctl.engine.proxier import Proxier
    from kubectl_proxyctl.system.conntrack import ConntrackSystem

    writer = writer_factory(mode)(config)
    return Proxier(config, tracker, writer, conntrack=ConntrackSystem(family=config.family), **kwargs)


def _prepare_node(config: ProxyConfig, mode: str) -> None:
    """Starting in one mode removes the other modes' rules (as kube-proxy does), so a node
    switched between modes never runs both layouts; then the mode prepares the node."""
    for other in _writable_modes():
        if other == mode:
            continue
        for family in (IPFamily.IPv4, IPFamily.IPv6):
            removed, what = _writer_module(other).cleanup(family, config)
            if removed:
                log.info("%s-mode rules left from an earlier run (%s): %s", other, family, what)
    _writer_module(mode).prepare_node(config)


def once(cluster: Any, flags: EngineFlags) -> None:
    config = _with_local_addresses(flags.config)
    tracker = _tracker_from(_static_objects(cluster), config.node_name)
    proxier = _proxier(flags.mode, config, tracker)
    _prepare_node(config, flags.mode)
    result = proxier.sync()
    if result is None or result.error:
        raise ApplyError(f"sync failed: {result.error if result else 'sources not synced'}")
    try:  # no later sync will delete the chains this one made stale
        deleted = proxier.delete_stale_chains()
    except ProxyctlError as exc:  # the sync itself succeeded; leftovers are only empty chains
        log.warning("could not delete stale chains: %s", exc)
    else:
        if deleted:
            log.info("deleted %d stale chains", deleted)
    import click

    click.echo(f"synced: {result.services} service ports, {result.endpoints} endpoints, "
               f"{result.rules} rules in {result.seconds:.3f}s", err=True)


def cleanup(config: ProxyConfig | None = None) -> None:
    """Remove every mode's rules for both families (what `run --cleanup` does)."""
    import click

    for family in (IPFamily.IPv4, IPFamily.IPv6):
        for mode in _writable_modes():
            _, what = _writer_module(mode).cleanup(family, config)
            click.echo(f"{family} {mode}: {what}", err=True)


def serve(cluster: Any, flags: EngineFlags) -> None:
    """The long-running engine."""
    from kubectl_proxyctl.engine.health import ProxyHealth, ProxyHealthServer, ServiceHealthServers
    from kubectl_proxyctl.engine.metrics import MetricsServer, ProxyMetrics
    from kubectl_proxyctl.engine.runner import Runner
    from kubectl_proxyctl.kube.tracker import StateTracker

    config = _with_local_addresses(flags.config)
    stop = threading.Event()
    tracker = StateTracker(config.node_name, warn=lambda m: log.warning("%s", m))
    metrics = ProxyMetrics()
    health = ProxyHealth(2 * flags.sync_period, lambda: tracker.node(config.node_name), metrics=metrics)
    service_health = ServiceHealthServers(health, node_addresses=_health_addresses(config))
    informers: Any = None
    if cluster.from_file:
        objects = _static_objects(cluster)
        synced: Callable[[], bool] = lambda: True
    else:
        from kubectl_proxyctl.kube.client import connect
        from kubectl_proxyctl.kube.informer import ClusterInformers

        connect(cluster.kubeconfig, cluster.context, cluster.request_timeout, cluster.overrides)  # fail fast on bad config
        informers = ClusterInformers(
            lambda: connect(cluster.kubeconfig, cluster.context, cluster.request_timeout, cluster.overrides),
            on_change=lambda kind, typ, obj: on_change(kind, typ, obj),
        )
        synced = lambda: informers.synced  # noqa: E731

    runner: Runner | None = None
    proxier = _proxier(flags.mode, config, tracker, synced=synced, metrics=metrics, health=health,
                       service_health=service_health,
                       on_failure=lambda: runner.retry_after_failure() if runner else None)
    _prepare_node(config, flags.mode)

    def on_change(kind: str, typ: str, obj: dict[str, Any]) -> None:
        proxier.on_event(kind, typ, obj)
        if runner is not None:
            runner.run()

    last_canary_check = [0.0]

    def sync() -> None:
        import time

        now = time.monotonic()
        if proxier.applied.plan is not None and now - last_canary_check[0] >= flags.sync_period:
            last_canary_check[0] = now
            missing = proxier.state_missing()
            if missing:
                log.warning("%s gone: someone flushed our rules; resyncing everything", ", ".join(missing))
                proxier.schedule.request()
        proxier.sync()

    runner = Runner(sync, flags.min_sync_period, flags.sync_period, min(flags.sync_period, 5.0))
    servers: list[Any] = []
    if flags.healthz_bind_address not in ("", "0"):
        servers.append(ProxyHealthServer(flags.healthz_bind_address, health, hard_fail=flags.hard_fail))
    if flags.metrics_bind_address not in ("", "0"):
        servers.append(MetricsServer(flags.metrics_bind_address, metrics.registry, flags.mode,
                                     config=_configz(config, flags), hard_fail=flags.hard_fail))
    for server in servers:
        server.start()

    def handle_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d; stopping (the rules stay in place)", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle_signal)
    signal.signal(signal.SIGINT, handle_signal)
    try:
        if informers is not None:
            informers.start()
        else:
            for obj in objects:
                proxier.on_event(str(obj.get("kind")), "ADDED", obj)
        runner.run()
        log.info("engine started for node %s (%s, %s mode)", config.node_name, config.family, flags.mode)
        runner.loop(stop)
    finally:
        if informers is not None:
            informers.stop()
        service_health.stop()
        for server in servers:
            server.stop()


def _health_addresses(config: ProxyConfig) -> tuple[str, ...]:
    return ("0.0.0.0",) if config.family == IPFamily.IPv4 else ("::",)


def _configz(config: ProxyConfig, flags: EngineFlags) -> dict[str, Any]:
    return {
        "mode": flags.mode, "hostnameOverride": config.node_name, "clusterCIDR": ",".join(config.cluster_cidrs),
        "detectLocalMode": str(config.detect_local_mode), "nodePortAddresses": list(config.nodeport_addresses),
        **{str(mode): _mode_configz(mode, config, flags) for mode in _writable_modes()},
        "healthzBindAddress": flags.healthz_bind_address, "metricsBindAddress": flags.metrics_bind_address,
    }


def _mode_configz(mode: Mode, config: ProxyConfig, flags: EngineFlags) -> dict[str, Any]:
    """One mode's section of kube-proxy's /configz (localhostNodePorts only where the mode has them)."""
    section: dict[str, Any] = {"masqueradeAll": config.masquerade_all, "masqueradeBit": config.masquerade_bit}
    if _writer_module(mode).LOCALHOST_NODEPORTS:
        section["localhostNodePorts"] = config.localhost_nodeports
    section.update({"syncPeriod": f"{flags.sync_period:g}s", "minSyncPeriod": f"{flags.min_sync_period:g}s"})
    return section
