"""The proxiers: tracked state → plan → render → one atomic write per sync.

`IptablesProxier` writes with `iptables-restore`, `NftablesProxier` with `nft -f`; both share
`BaseProxier` (event intake, full/partial bookkeeping, conntrack, health, metrics). The
nftables differences are in NftablesProxier's docstring; the rest of this text describes
iptables mode.

Theory of operation (kube-proxy's `syncProxyRules`, reshaped around our pure core):

* Informer events land in a StateTracker (`kube/tracker.py`) and ask the Runner for a sync;
  bursts coalesce there. `sync()` runs on the runner's thread only.
* Nothing is programmed until the sources report `synced` (Services and EndpointSlices both
  listed): programming a partial view would delete live services' rules.
* A **full sync** (first sync, after any failure, when the node changed, when a canary chain
  vanished, at least every `full_sync_period`) plans every service port, rewrites every chain
  of our layout, deletes stale service chains found by `iptables-save`, then ensures the jump
  rules in the built-in chains and the canaries.
* A **partial sync** re-plans only the Services that changed (`plan(..., previous, changed)`)
  and writes the top-level chains plus those Services' chains; stale chains of deleted
  Services are removed with `-X` in the same payload.
* A failed restore raises no further: the failure is counted, the last good payload is
  restored again (iptables-restore commits table by table, so a failure in `nat` may follow a
  committed `filter`), the next sync is a full one and the runner retries after
  `retry_interval`. The previous rules keep serving meanwhile.
* After a successful sync: UDP conntrack entries pointing at endpoints that no longer serve
  are deleted, health-check servers follow the plan, health and metrics are updated, and one
  log line says what was done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol as TypingProtocol

from kubectl_proxyctl.backends.iptables import RenderedRules, render
from kubectl_proxyctl.engine.naming import is_service_chain
from kubectl_proxyctl.engine.plan import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.engine.runner import FullSyncSchedule
from kubectl_proxyctl.errors import ApplyError, ProxyctlError
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.model import Protocol

log = logging.getLogger(__name__)


class IptablesLike(TypingProtocol):
    """What the proxier needs from `system.iptables.IptablesSystem` (a fake in unit tests)."""

    def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None: ...
    def save(self, table: str | None = None) -> str: ...
    def ensure_jumps(self, jumps: Any) -> list[Any]: ...
    def ensure_canaries(self) -> None: ...
    def missing_canaries(self) -> list[str]: ...


@dataclass
class SyncResult:
    full: bool
    services: int
    endpoints: int
    rules: int
    seconds: float
    conntrack_deleted: int = 0
    error: str = ""


@dataclass
class ProxierOptions:
    random_fully: bool = True
    full_sync_period: float = 3600.0
    large_cluster: bool | None = None
    conntrack: bool = True


@dataclass
class _Applied:
    """What the kernel holds after the last successful sync."""

    payload: str = ""
    service_chains: frozenset[str] = frozenset()
    plan: NodePlan | None = None
    udp_serving: dict[str, frozenset[str]] = field(default_factory=dict)


TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


class BaseProxier:
    """What every backend's proxier shares: event intake, the sync bookkeeping, conntrack,
    health-check servers and metrics. Subclasses implement `sync()`."""

    mode = ""

    def __init__(
        self,
        config: ProxyConfig,
        tracker: StateTracker,
        system: IptablesLike,
        *,
        options: ProxierOptions | None = None,
        synced: Callable[[], bool] = lambda: True,
        metrics: Any = None,
        health: Any = None,
        service_health: Any = None,
        conntrack: Any = None,
        schedule: FullSyncSchedule | None = None,
        on_failure: Callable[[], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.system = system
        self.options = options or ProxierOptions()
        self.synced = synced
        self.metrics = metrics
        self.health = health
        self.service_health = service_health
        self.conntrack = conntrack
        self.schedule = schedule or FullSyncSchedule(self.options.full_sync_period)
        self.on_failure = on_failure
        self.wall_clock = wall_clock
        self.applied = _Applied()
        self._pending_changed: set[str] = set()
        self._pending_triggers: list[float] = []
        self.last_result: SyncResult | None = None

    # --- events ----------------------------------------------------------------------------

    def on_event(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        """Informer callback: track the change; the caller then asks the runner for a sync."""
        self.tracker.apply(kind, event, obj)
        if kind == "EndpointSlice" and event in ("ADDED", "MODIFIED"):
            stamp = ((obj.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_TIME_ANNOTATION)
            if stamp:
                parsed = _parse_rfc3339(stamp)
                if parsed is not None:
                    self._pending_triggers.append(parsed)
        if self.health is not None:
            self.health.queued_update(self.config.family)
        if self.metrics is not None:
            self.metrics.sync_proxy_rules_last_queued_timestamp_seconds.labels(
                ip_family=str(self.config.family)).set(self.wall_clock())

    def canaries_missing(self) -> list[str]:
        """Checked every sync period by the caller: someone flushed our rules?"""
        raise NotImplementedError

    def sync(self) -> SyncResult | None:
        raise NotImplementedError

    def _begin(self) -> tuple[Any, bool, float] | None:
        """Start a sync: (tracker snapshot, full?, start time), or None before the sources synced."""
        if not self.synced():
            log.info("waiting for Services and EndpointSlices to be listed before programming rules")
            return None
        start = time.perf_counter()
        snap = self.tracker.snapshot()
        self._pending_changed |= snap.changed_services
        if snap.node_changed:
            self.schedule.request()
        return snap, self.schedule.due() or self.applied.plan is None, start

    def _succeeded(self, node_plan: NodePlan, full: bool, start: float, rules: int, snap: Any) -> SyncResult:
        """Bookkeeping after the kernel accepted a sync; returns the result (also logged)."""
        self.applied.plan = node_plan
        self._pending_changed = set()
        self.schedule.record_success(full)
        deleted = self._conntrack_cleanup(node_plan) if self.options.conntrack else 0
        self._follow_health(node_plan)
        seconds = time.perf_counter() - start
        result = SyncResult(full=full, services=len(node_plan.services), endpoints=node_plan.total_endpoints,
                            rules=rules, seconds=seconds, conntrack_deleted=deleted)
        self._record_common_metrics(result, node_plan, snap.service_changes, snap.endpoint_changes)
        if self.health is not None:
            self.health.updated(self.config.family)
        log.info("sync %s (%s, %s): %d service ports, %d endpoints, %d rules written, %.3fs%s",
                 "full" if full else "partial", self.mode, self.config.family, result.services,
                 result.endpoints, result.rules, seconds,
                 f", {deleted} stale UDP conntrack entries deleted" if deleted else "")
        self.last_result = result
        return result

    def _failed(self, exc: ProxyctlError, full: bool, start: float) -> SyncResult:
        log.error("sync failed, the previous rules stay in place: %s", exc)
        self._count_failure(full)
        self._after_failure(exc)
        self.schedule.record_failure()
        if self.on_failure is not None:
            self.on_failure()
        result = SyncResult(full=full, services=0, endpoints=0, rules=0,
                            seconds=time.perf_counter() - start, error=str(exc))
        self.last_result = result
        return result

    def delete_stale_chains(self) -> int:
        """Delete chains that fell out of use and still wait for deletion (`run --once` calls
        this after its sync). iptables mode deletes them within the sync itself: nothing left."""
        return 0

    def _count_failure(self, full: bool) -> None:
        pass

    def _after_failure(self, exc: ProxyctlError) -> None:
        pass


    def _conntrack_cleanup(self, node_plan: NodePlan) -> int:
        """Delete UDP flows whose reply source is no longer a serving endpoint (kube-proxy ≥ 1.32)."""
        if self.conntrack is None:
            return 0
        by_ip: dict[str, set[str]] = {}
        by_nodeport: dict[int, set[str]] = {}
        for sp in node_plan.services:
            if sp.protocol != Protocol.UDP:
                continue
            serving = {e.ip for e in sp.endpoints if e.serving}
            for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
                if ip:
                    by_ip.setdefault(ip, set()).update(serving)
            if sp.node_port:
                by_nodeport.setdefault(sp.node_port, set()).update(serving)
        snapshot = {k: frozenset(v) for k, v in by_ip.items()}
        snapshot.update({f":{k}": frozenset(v) for k, v in by_nodeport.items()})
        if snapshot == self.applied.udp_serving:
            return 0  # nothing about UDP serving endpoints changed since the last cleanup
        started = time.perf_counter()
        try:
            deleted = int(self.conntrack.reconcile_udp(by_ip, by_nodeport))
        except ProxyctlError as exc:
            log.warning("UDP conntrack cleanup failed: %s", exc)
            return 0
        self.applied.udp_serving = snapshot
        if self.metrics is not None:
            fam = str(self.config.family)
            self.metrics.conntrack_reconciler_sync_duration_seconds.labels(ip_family=fam).observe(
                time.perf_counter() - started)
            self.metrics.conntrack_reconciler_deleted_entries_total.labels(ip_family=fam).inc(deleted)
        return deleted

    def _follow_health(self, node_plan: NodePlan) -> None:
        if self.service_health is None:
            return
        failed = self.service_health.sync_services(node_plan.health_check_node_ports)
        for service, reason in failed.items():
            log.warning("health check node port for %s: %s", service, reason)
        self.service_health.sync_endpoints(node_plan.local_ready_endpoints())

    def _record_common_metrics(self, result: SyncResult, node_plan: NodePlan,
                               service_changes: int, endpoint_changes: int) -> None:
        m = self.metrics
        triggers, self._pending_triggers = self._pending_triggers, []
        if m is None:
            return
        fam = str(self.config.family)
        m.sync_proxy_rules_duration_seconds.labels(ip_family=fam).observe(result.seconds)
        (m.sync_full_proxy_rules_duration_seconds if result.full
         else m.sync_partial_proxy_rules_duration_seconds).labels(ip_family=fam).observe(result.seconds)
        now = self.wall_clock()
        m.sync_proxy_rules_last_timestamp_seconds.labels(ip_family=fam).set(now)
        for t in triggers:
            m.network_programming_duration_seconds.labels(ip_family=fam).observe(max(0.0, now - t))
        m.sync_proxy_rules_service_changes_total.inc(service_changes)
        m.sync_proxy_rules_endpoint_changes_total.inc(endpoint_changes)
        pending_services, pending_endpoints = self.tracker.pending_changes()
        m.sync_proxy_rules_service_changes_pending.set(pending_services)
        m.sync_proxy_rules_endpoint_changes_pending.set(pending_endpoints)
        m.sync_proxy_rules_no_local_endpoints_total.labels(ip_family=fam, traffic_policy="internal").set(
            node_plan.no_local_endpoints_internal)
        m.sync_proxy_rules_no_local_endpoints_total.labels(ip_family=fam, traffic_policy="external").set(
            node_plan.no_local_endpoints_external)


class IptablesProxier(BaseProxier):
    """iptables mode: one `iptables-restore --noflush` per sync (see the module docstring)."""

    mode = "iptables"

    def canaries_missing(self) -> list[str]:
        try:
            return [f"canary chain KUBE-PROXY-CANARY in {table}" for table in self.system.missing_canaries()]
        except ProxyctlError as exc:
            log.warning("cannot check the canary chains: %s", exc)
            return []

    def sync(self) -> SyncResult | None:
        """One sync. Returns None when the sources have not synced yet."""
        begun = self._begin()
        if begun is None:
            return None
        snap, full, start = begun
        try:
            if full:
                node_plan = plan(snap.state, self.config)
                existing = self._existing_nat_chains()
                rendered = render(node_plan, random_fully=self.options.random_fully,
                                  large_cluster=self.options.large_cluster, existing_nat_chains=existing)
            else:
                node_plan = plan(snap.state, self.config, previous=self.applied.plan,
                                 changed=self._pending_changed)
                existing = self.applied.service_chains
                rendered = render(node_plan, random_fully=self.options.random_fully,
                                  large_cluster=self.options.large_cluster,
                                  changed=self._pending_changed, existing_nat_chains=existing)
            self.system.restore(rendered.text)
            if full:
                self.system.ensure_jumps(_system_jumps(rendered))
                self.system.ensure_canaries()
        except ProxyctlError as exc:
            return self._failed(exc, full, start)

        if full:  # the rollback point: partial syncs after it are redone by the next full sync
            self.applied.payload = rendered.text
        self.applied.service_chains = rendered.service_chains
        result = self._succeeded(node_plan, full, start, rendered.filter_rules + rendered.nat_rules, snap)
        if self.metrics is not None:
            m, fam = self.metrics, str(self.config.family)
            m.sync_proxy_rules_iptables_last.labels(ip_family=fam, table="filter").set(rendered.filter_rules)
            m.sync_proxy_rules_iptables_last.labels(ip_family=fam, table="nat").set(rendered.nat_rules)
            m.sync_proxy_rules_iptables_total.labels(ip_family=fam, table="filter").set(rendered.filter_rules)
            m.sync_proxy_rules_iptables_total.labels(ip_family=fam, table="nat").set(rendered.nat_rules_total)
        return result

    def _existing_nat_chains(self) -> set[str]:
        try:
            text = self.system.save("nat")
        except ProxyctlError as exc:
            log.warning("cannot list existing chains (%s); stale chains stay until the next full sync", exc)
            return set(self.applied.service_chains)
        chains = set()
        for line in text.splitlines():
            if line.startswith(":"):
                name = line[1:].split(" ", 1)[0]
                if is_service_chain(name):
                    chains.add(name)
        return chains

    def _count_failure(self, full: bool) -> None:
        if self.metrics is not None:
            counter = (self.metrics.sync_proxy_rules_iptables_restore_failures_total if full
                       else self.metrics.sync_proxy_rules_iptables_partial_restore_failures_total)
            counter.labels(ip_family=str(self.config.family)).inc()

    def _after_failure(self, exc: ProxyctlError) -> None:
        if isinstance(exc, ApplyError) and self.applied.payload:
            try:  # a table may have committed before the failing one: put the last good state back
                self.system.restore(self.applied.payload)
            except ProxyctlError as again:
                log.error("restoring the last good rules failed too: %s", again)


class NftablesProxier(BaseProxier):
    """nftables mode: one atomic `nft -f -` transaction per sync.

    A full transaction (first sync, after a failure, when the node changed or our table was
    deleted or flushed) rebuilds the table; a partial one
    rewrites only the changed services' chains and the map elements that differ
    (`backends/nftables.py`). Stale chains are deleted by a separate small transaction at the
    start of a later sync without pending changes, at least a second after they were flushed.
    Unlike iptables mode there is no hourly full sync (as in kube-proxy's nftables mode). A failed transaction
    changes nothing in the kernel (nft batches are atomic), so there is nothing to roll back:
    the next sync is a full one.
    """

    mode = "nftables"

    # Stale chains are deleted by a sync without pending changes (the periodic ones), so the
    # extra transaction never delays a change; at the latest after this many seconds.
    STALE_CHAIN_MAX_AGE = 30.0
    # How often the cheap "table still there" check also counts the rules of one fixed chain,
    # which notices a table whose chains were flushed; nft 1.0.x loads the whole table for
    # it (seconds at 10,000 services), so it is not done every sync period.
    DEEP_CHECK_PERIOD = 3600.0

    def __init__(self, *args: Any, service_cidrs: tuple[str, ...] = (),
                 monotonic: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        if "schedule" not in kwargs:
            # kube-proxy's nftables mode rewrites everything only at start, after a failure
            # and when the node changed: a full transaction into a populated 10,000-service
            # table takes minutes, and partial transactions keep the table exact. Tampering is
            # caught by canaries_missing() instead.
            kwargs["schedule"] = FullSyncSchedule(float("inf"))
        super().__init__(*args, **kwargs)
        self.service_cidrs = service_cidrs
        self.monotonic = monotonic
        self.state: Any = None  # backends.nftables.NftState after the last transaction
        self._recreated_base_chains = False
        self._last_deep_check = monotonic()

    def canaries_missing(self) -> list[str]:
        """Our table gone (`nft flush ruleset`, `nft delete table`)? Checked through one small
        set, which costs the same at any table size. Once per DEEP_CHECK_PERIOD the rules of
        the `masquerading` chain are counted too, which notices `nft flush table`."""
        from kubectl_proxyctl.backends.nftables import CLUSTER_IPS, MASQUERADING, TABLE

        try:
            if not self.system.set_present(CLUSTER_IPS):
                return [f"table {self.system.fam} {TABLE}"]
            now = self.monotonic()
            if now - self._last_deep_check >= self.DEEP_CHECK_PERIOD:
                self._last_deep_check = now
                if not self.system.chain_rule_count(MASQUERADING):
                    return [f"the rules of table {self.system.fam} {TABLE}"]
        except ProxyctlError as exc:
            log.warning("cannot check our nftables table: %s", exc)
        return []

    def sync(self) -> SyncResult | None:
        from kubectl_proxyctl.backends.nftables import is_affinity_set, render

        begun = self._begin()
        if begun is None:
            return None
        snap, full, start = begun
        now = self.monotonic()
        if self.state is not None and self.state.stale and (
                not self._pending_changed or now - min(self.state.stale.values()) >= self.STALE_CHAIN_MAX_AGE):
            try:
                deleted = self._delete_due_stale_chains(now)
                if deleted:
                    log.info("deleted %d stale chains", deleted)
            except ProxyctlError as exc:
                log.warning("cannot delete stale chains yet (%s); will retry", exc)
                if self.metrics is not None:
                    self.metrics.sync_proxy_rules_nftables_cleanup_failures_total.labels(
                        ip_family=str(self.config.family)).inc()
        try:
            if full:
                node_plan = plan(snap.state, self.config)
                existing = self.system.chains()
                affinity = {s for s in self.system.sets() if is_affinity_set(s)}
                rendered = render(node_plan, existing_chains=existing, existing_affinity_sets=affinity,
                                  first=not self._recreated_base_chains, now=now,
                                  service_cidrs=self.service_cidrs)
            else:
                node_plan = plan(snap.state, self.config, previous=self.applied.plan,
                                 changed=self._pending_changed)
                rendered = render(node_plan, previous=self.state, changed=self._pending_changed, now=now,
                                  service_cidrs=self.service_cidrs)
            self.system.run(rendered.text)
        except ProxyctlError as exc:
            return self._failed(exc, full, start)
        self.state = rendered.state
        self._recreated_base_chains = True
        return self._succeeded(node_plan, not rendered.partial, start, rendered.rules_written, snap)

    def delete_stale_chains(self, wait: Callable[[float], None] = time.sleep) -> int:
        """Delete every stale chain now, waiting out STALE_CHAIN_DELAY first if needed (for
        `run --once`, which has no later sync to do it). Returns how many were deleted."""
        from kubectl_proxyctl.backends.nftables import STALE_CHAIN_DELAY

        if self.state is None or not self.state.stale:
            return 0
        delay = max(self.state.stale.values()) + STALE_CHAIN_DELAY - self.monotonic()
        if delay > 0:
            wait(delay)
        return self._delete_due_stale_chains(self.monotonic())

    def _delete_due_stale_chains(self, now: float) -> int:
        """One small transaction deleting the chains stale for long enough; how many."""
        from kubectl_proxyctl.backends.nftables import forget_chains, stale_deletion

        text, due = stale_deletion(self.state, now)
        if text:
            self.system.run(text)
            forget_chains(self.state, due)
        return len(due)

    def _count_failure(self, full: bool) -> None:
        if self.metrics is not None:
            self.metrics.sync_proxy_rules_nftables_sync_failures_total.labels(
                ip_family=str(self.config.family)).inc()


def _system_jumps(rendered: RenderedRules) -> list[Any]:
    from kubectl_proxyctl.system.iptables import Jump

    return [Jump(j.table, j.chain, j.args()) for j in rendered.jump_rules]


def _parse_rfc3339(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

