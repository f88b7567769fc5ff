"""Wiring the engine together for `kubectl proxyctl run`: sources, proxier, servers, loop.

The four ways to run:

* `--dry-run`: read the objects once (file or API), plan, render, print the payload (an
  `iptables-restore` payload, or with `--mode nftables` an `nft -f` script). Touches
  nothing, needs no root.
* `--once`: the same, then apply it as one full sync (jump rules and canaries included).
* `--cleanup`: remove every chain and jump rule of kube-proxy's iptables layout and the
  nftables `kube-proxy` tables, both families, nothing else.

Starting `--once` or the long-running engine in one mode first removes the other mode's
rules, as kube-proxy does, so a node switched between modes never runs both layouts.
* the default: list+watch the API (or read `--from-file` once) and keep the node in sync
  until SIGINT/SIGTERM; the rules stay in place when the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kubectl_proxyctl.engine.plan import DetectLocalMode, ProxyConfig
from kubectl_proxyctl.errors import ApplyError, ConfigError, ProxyctlError
from kubectl_proxyctl.model import IPFamily

log = logging.getLogger(__name__)

# Every chain of kube-proxy's iptables layout (and only those): what --cleanup removes.
OWNED_CHAIN_PREFIXES = (
    "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
    "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-FIREWALL",
    "KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-",
)


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

        for cidr in _csv(flags["cluster_cidr"]):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"--cluster-cidr: {cidr!r} is not a CIDR") from None
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
        nftables = str(flags["mode"]) == "nftables"
        if nftables and not np_addresses:
            np_addresses = ("primary",)  # kube-proxy's nftables default: the node's primary IP only
        node_name = str(flags["node_name"] or default_node()).strip().lower()
        if not node_name:
            raise ConfigError("cannot tell this node's name: pass --node-name")
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
            localhost_nodeports=bool(flags["localhost_nodeports"]) and not nftables,
        )
        return cls(
            mode=str(flags["mode"]), config=config, sync_period=sync_period, min_sync_period=min_sync,
            healthz_bind_address=str(flags["healthz_bind_address"] or ""),
            metrics_bind_address=str(flags["metrics_bind_address"] or ""),
            hard_fail=bool(flags["bind_address_hard_fail"]), cleanup=bool(flags["cleanup"]),
            dry_run=bool(flags["dry_run"]), once=bool(flags["once"]),
        )


def _check_mode(mode: str) -> None:
    if mode == "ipvs":
        if not os.path.exists("/proc/net/ip_vs"):
            raise ConfigError("--mode ipvs needs the kernel's IP_VS support, which this kernel lacks "
                              "(no /proc/net/ip_vs); IPVS mode is not available in this version either; "
                              "use --mode iptables or --mode nftables")
        raise ConfigError("--mode ipvs is not available in this version yet; use --mode iptables or --mode nftables")


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

    api = connect(cluster.kubeconfig, cluster.context, cluster.request_timeout)
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
    _check_mode(flags.mode)
    if flags.cleanup:
        _require_root("--cleanup")
        return cleanup()
    if flags.dry_run:
        return dry_run(cluster, flags)
    _require_root("run" if not flags.once else "run --once")
    if flags.once:
        return once(cluster, flags)
    return serve(cluster, flags)


def dry_run(cluster: Any, flags: EngineFlags) -> None:
    import click

    from kubectl_proxyctl.engine.plan import plan

    tracker = _tracker_from(_static_objects(cluster), flags.config.node_name)
    node_plan = plan(tracker.snapshot().state, flags.config)
    if flags.mode == "nftables":
        from kubectl_proxyctl.backends import nftables

        rendered_nft = nftables.render(node_plan)
        click.echo(rendered_nft.text, nl=False)
        log.info("dry run: one nft transaction with %d rules and %d map/set elements (apply with nft -f)",
                 rendered_nft.rules_written, rendered_nft.elements_written)
        return
    from kubectl_proxyctl.backends.iptables import render

    rendered = render(node_plan)
    click.echo(rendered.text, nl=False)
    log.info("dry run: %d filter and %d nat rules; jump rules a real sync ensures: %s",
             rendered.filter_rules, rendered.nat_rules,
             "; ".join(j.restore_line() for j in rendered.jump_rules))


def _proxier(mode: str, config: ProxyConfig, tracker: Any, **kwargs: Any) -> Any:
    from kubectl_proxyctl.system.conntrack import ConntrackSystem

    if mode == "nftables":
        from kubectl_proxyctl.engine.proxier import NftablesProxier
        from kubectl_proxyctl.system.nftables import NftSystem

        nft = NftSystem(config.family)
        nft.check_available()
        return NftablesProxier(config, tracker, nft, conntrack=ConntrackSystem(family=config.family), **kwargs)

    from kubectl_proxyctl.engine.proxier import IptablesProxier, ProxierOptions
    from kubectl_proxyctl.system.iptables import IptablesSystem

    system = IptablesSystem(config.family)
    detection = system.detect()
    if detection.warning:
        log.warning("%s", detection.warning)
    options = ProxierOptions(random_fully=system.supports_random_fully())
    return IptablesProxier(config, tracker, system, options=options,
                           conntrack=ConntrackSystem(family=config.family), **kwargs)


def _remove_other_mode(mode: str) -> None:
    """Starting in one mode removes the other mode's rules (as kube-proxy does), so a node
    switched between modes never runs both layouts."""
    if mode == "nftables":
        for family in (IPFamily.IPv4, IPFamily.IPv6):
            removed = _cleanup_iptables(family)
            if removed:
                log.info("removed iptables-mode rules (%s) left from an earlier run", removed)
    else:
        for family in (IPFamily.IPv4, IPFamily.IPv6):
            if _cleanup_nftables(family):
                log.info("removed the nftables-mode table (%s) left from an earlier run", family)


def _cleanup_iptables(family: IPFamily) -> str:
    """Remove our iptables chains and jumps of one family; a summary, "" when there were none."""
    from kubectl_proxyctl.system.iptables import IptablesSystem

    system = IptablesSystem(family)
    try:
        detection = system.detect()
        if detection.warning:
            log.warning("%s", detection.warning)
        result = system.cleanup(prefixes=OWNED_CHAIN_PREFIXES)
    except Exception as exc:  # no ip6tables on an IPv4-only host, no iptables on an nft-only one
        log.info("%s iptables: nothing to clean (%s)", family, exc)
        return ""
    if not result.chains and not result.rules:
        return ""
    return f"{len(result.chains)} chains and {len(result.rules)} jump rules"


def _cleanup_nftables(family: IPFamily) -> bool:
    from kubectl_proxyctl.system.nftables import NftSystem

    try:
        return NftSystem(family).delete_table()
    except Exception as exc:  # no nft binary, or no nf_tables in the kernel
        log.info("%s nftables: nothing to clean (%s)", family, exc)
        return False


def _prepare_node(config: ProxyConfig, mode: str) -> None:
    _remove_other_mode(mode)
    if mode == "iptables" and config.localhost_nodeports and config.family == IPFamily.IPv4:
        from kubectl_proxyctl.system.sysctl import ROUTE_LOCALNET, Sysctl

        if Sysctl().ensure(ROUTE_LOCALNET, 1):
            log.info("set %s=1 so NodePorts answer on 127.0.0.1", ROUTE_LOCALNET)


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


def cleanup() -> None:
    """Remove both modes' rules for both families (what `run --cleanup` does)."""
    import click

    for family in (IPFamily.IPv4, IPFamily.IPv6):
        removed = _cleanup_iptables(family)
        click.echo(f"{family} iptables: removed {removed or 'nothing'}", err=True)
        table = _cleanup_nftables(family)
        click.echo(f"{family} nftables: {'deleted table kube-proxy' if table else 'no table kube-proxy'}", err=True)


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

        connect(cluster.kubeconfig, cluster.context, cluster.request_timeout)  # fail fast on bad config
        informers = ClusterInformers(
            lambda: connect(cluster.kubeconfig, cluster.context, cluster.request_timeout),
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
            missing = proxier.canaries_missing()
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
        "iptables": {"masqueradeAll": config.masquerade_all, "masqueradeBit": config.masquerade_bit,
                     "localhostNodePorts": config.localhost_nodeports,
                     "syncPeriod": f"{flags.sync_period:g}s", "minSyncPeriod": f"{flags.min_sync_period:g}s"},
        "nftables": {"masqueradeAll": config.masquerade_all, "masqueradeBit": config.masquerade_bit,
                     "syncPeriod": f"{flags.sync_period:g}s", "minSyncPeriod": f"{flags.min_sync_period:g}s"},
        "healthzBindAddress": flags.healthz_bind_address, "metricsBindAddress": flags.metrics_bind_address,
    }
