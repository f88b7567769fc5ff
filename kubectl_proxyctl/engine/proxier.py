"""The proxier: tracked state → plan → one Writer's sync, whatever the proxy mode.

Theory of operation (kube-proxy's `syncProxyRules`, reshaped around our pure core; what a
mode writes and how is its Writer's business, `modes/<mode>/writer.py`):

* Informer events land in a StateTracker (`kube/tracker.py`) and ask the Runner for a sync;
  bursts coalesce there. `sync()` runs on the runner's thread only.
* Nothing is programmed until the sources report `synced` (Services and EndpointSlices both
  listed): programming a partial view would delete live services' rules.
* A **full sync** (first sync, after any failure, when the node changed, when the writer's
  state vanished, and at least every `writer.full_sync_period`) plans every service port and
  has the writer rewrite everything it owns.
* A **partial sync** re-plans only the Services that changed (`plan(..., previous, changed)`)
  and has the writer rewrite only those.
* A failed write raises no further: the failure is counted, the writer puts its last good
  state back if the kernel may hold half of the new one, the next sync is a full one and the
  runner retries after `retry_interval`. The previous rules keep serving meanwhile.
* After a successful sync: UDP conntrack entries pointing at endpoints that no longer serve
  are deleted, health-check servers follow the plan, health and metrics are updated, and one
  log line says what was done.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.engine.runner import FullSyncSchedule
from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.model import Protocol
from kubectl_proxyctl.modes.base import Writer

log = logging.getLogger(__name__)


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
class _Applied:
    """What the kernel holds after the last successful sync."""

    plan: NodePlan | None = None
    udp_serving: dict[str, frozenset[str]] = field(default_factory=dict)
    # UDP service port → (its addresses, node port, serving endpoint IPs), for the cleanup
    udp_ports: dict[Any, tuple[tuple[str, ...], int, frozenset[str]]] = field(default_factory=dict)


TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


class Proxier:
    """Drives one Writer: event intake, the sync bookkeeping, conntrack, health-check servers
    and metrics (see the module docstring)."""

    def __init__(
        self,
        config: ProxyConfig,
        tracker: StateTracker,
        writer: Writer,
        *,
        conntrack_cleanup: bool = True,
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
        self.writer = writer
        self.mode = writer.mode
        self.conntrack_cleanup = conntrack_cleanup
        self.synced = synced
        self.metrics = metrics
        self.health = health
        self.service_health = service_health
        self.conntrack = conntrack
        self.schedule = schedule or FullSyncSchedule(writer.full_sync_period)
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

    def state_missing(self) -> list[str]:
        """Checked every sync period by the caller: did someone remove our rules?"""
        return self.writer.state_missing()

    def sync(self) -> SyncResult | None:
        """One sync. Returns None when the sources have not synced yet.

        Python's cyclic garbage collector is paused while it runs: a full sync at 10,000
        services allocates a few hundred thousand small objects, and the collections they
        trigger walk the whole heap (the engine's state and plan) again and again; measured,
        that was 1.5 s of a 2.5 s full sync. What a sync leaves behind is freed by reference
        counting, and the young generations are collected when it returns."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._sync()
        finally:
            if was_enabled:
                gc.enable()
                # The young generations only (what this sync and the informers' threads made
                # meanwhile): cycles holding sockets or pipes go now, and the long-lived heap
                # is not walked.
                gc.collect(1)

    def _sync(self) -> SyncResult | None:
        begun = self._begin()
        if begun is None:
            return None
        snap, full, start = begun
        family = str(self.config.family)
        self.writer.before_sync(bool(self._pending_changed), self.metrics, family)
        try:
            if full:
                node_plan = plan(snap.state, self.config)
            else:
                node_plan = plan(snap.state, self.config, previous=self.applied.plan, changed=self._pending_changed)
            written = self.writer.sync(node_plan, full, self._pending_changed)
        except ProxyctlError as exc:
            return self._failed(exc, full, start)
        result = self._succeeded(node_plan, written.full, start, written.rules, snap)
        if self.metrics is not None:
            self.writer.record_metrics(self.metrics, family, written)
        return result

    def delete_stale_chains(self) -> int:
        """Delete what earlier syncs left stale and still waits for deletion (`run --once`
        calls this after its sync, since no later sync will)."""
        return self.writer.delete_stale()

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
        changed, self._pending_changed = self._pending_changed, set()
        self.schedule.record_success(full)
        deleted = self._conntrack_cleanup(node_plan, full, changed) if self.conntrack_cleanup else 0
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
        if self.metrics is not None:
            self.writer.count_failure(self.metrics, str(self.config.family), full)
        self.writer.after_failure(exc)
        self.schedule.record_failure()
        if self.on_failure is not None:
            self.on_failure()
        result = SyncResult(full=full, services=0, endpoints=0, rules=0,
                            seconds=time.perf_counter() - start, error=str(exc))
        self.last_result = result
        return result

    def _conntrack_cleanup(self, node_plan: NodePlan, full: bool, changed: set[str]) -> int:
        """Delete UDP flows whose reply source is no longer a serving endpoint (kube-proxy ≥ 1.32).

        What each UDP service port serves is kept between syncs, so a partial sync looks at
        the changed Services' ports only, and the conntrack table is read only when what a
        UDP address or node port serves changed."""
        if self.conntrack is None:
            return 0
        udp = self.applied.udp_ports
        if full:
            touched: set[Any] = set(udp) | {sp.name for sp in node_plan.services}
        else:
            touched = {n for svc in changed for n in node_plan.ports_of(svc)}
            touched |= {n for n in udp if n.service in changed}
        moved = False
        for name in touched:
            sp = node_plan.service(name)
            if sp is None or sp.protocol != Protocol.UDP:
                moved |= udp.pop(name, None) is not None
                continue
            now = (tuple(ip for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips) if ip),
                   sp.node_port, frozenset(e.ip for e in sp.endpoints if e.serving))
            if udp.get(name) != now:
                udp[name] = now
                moved = True
        if not moved and self.applied.udp_serving:
            return 0  # nothing about UDP serving endpoints changed since the last cleanup
        by_ip: dict[str, set[str]] = {}
        by_nodeport: dict[int, set[str]] = {}
        for ips, node_port, serving in udp.values():
            for ip in ips:
                by_ip.setdefault(ip, set()).update(serving)
            if node_port:
                by_nodeport.setdefault(node_port, set()).update(serving)
        snapshot = {k: frozenset(v) for k, v in by_ip.items()}
        snapshot.update({f":{k}": frozenset(v) for k, v in by_nodeport.items()})
        if snapshot == self.applied.udp_serving:
            return 0  # nothing about UDP serving endpoints changed since the last cleanup
        started = time.perf_counter()
        try:
            deleted = int(self.conntrack.reconcile_udp(by_ip, by_nodeport))
        except ProxyctlError as exc:
            log.warning("UDP conntrack cleanup failed: %s", exc)
            self.applied.udp_serving = {}  # so the next sync tries again
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


def _parse_rfc3339(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

