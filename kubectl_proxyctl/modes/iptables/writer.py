"""The engine's side of iptables mode: one `iptables-restore --noflush` per sync.

* A **full sync** is one `iptables-save` and one restore. The save (every table that exists)
  shows the stale service chains, which the payload deletes with `-X`, the jump rules missing
  from the built-in chains and the missing canaries (`KUBE-PROXY-CANARY` in
  mangle/nat/filter); those are added to the same payload (`system.iptables.repair_lines`,
  `RenderStream.chunks(extra=...)`), so the rules, the jumps into them and the canaries commit
  in one restore. When the save fails, the sync still restores its payload and then ensures
  the jumps and canaries the slow way (`ensure_jumps`, `ensure_canaries`), as it cannot know
  what is missing.
* A full sync overlaps its steps: the save runs in a thread while the entry rules are
  rendered, and the rest of the payload is rendered while iptables-restore reads it
  (`IptablesSystem.restore_chunks`): at 10,000 services the restore spends about a second
  creating the chains declared first, in which Python renders the rules. What is missing
  (`iptables -C` included) is settled before the restore starts, as an open restore block
  holds the xtables lock.
* A **partial sync** writes the top-level chains plus the changed Services' chains; stale
  chains of deleted Services are removed with `-X` in the same payload. It reuses the last
  render's lines of every unchanged service port (`render(previous=...)`): its cost grows
  with the top-level rules it must rewrite, not with all the chains and rules of the table.
* `iptables-restore` commits table by table, so a failure in `nat` may follow a committed
  `filter`: after a failure the last good full payload is restored again.
* **Tamper detection** (`state_missing`, every sync period): first a fingerprint of the
  tables that costs the same at any size (`IptablesSystem.fingerprint`: legacy tables' entry
  counts and sizes, or the nf_tables generation); only when it moved since our last write, a
  precise check of one save per table: the canary chains, every jump from a built-in chain,
  the fixed chains (KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD not empty) and every
  service chain we wrote (present, not empty). `iptables -F` (per table), `-X`, deleted jump
  rules and flushed or deleted chains all show; any loss makes the next sync a full one.
  Changes by others that left ours intact only cost that one check. The precise check also
  runs hourly, whatever the fingerprint says.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator

from kubectl_proxyctl.errors import ApplyError, ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.base import Mode, Written
from kubectl_proxyctl.modes.iptables.render import (
    JUMP_RULES,
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    NFACCT_CT_INVALID,
    NFACCT_LOCALHOST_NODEPORTS,
    JumpRule,
    RenderedRules,
    RenderStream,
    render,
)
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0  # kube-proxy rewrites everything at least hourly in iptables mode
NFACCT_COUNTERS = (NFACCT_CT_INVALID, NFACCT_LOCALHOST_NODEPORTS)
# (metric, nfacct counter, help) of kube-proxy's two packet counters read from nfacct.
NFACCT_METRICS = (
    ("kubeproxy_iptables_ct_state_invalid_dropped_packets_total", NFACCT_CT_INVALID,
     "packets dropped by iptables to work around conntrack problems"),
    ("kubeproxy_iptables_localhost_nodeports_accepted_packets_total", NFACCT_LOCALHOST_NODEPORTS,
     "Number of packets accepted on nodeports of loopback interface"),
)

# How kube-proxy's iptables mode configures a node by default.
DEFAULT_NODEPORT_ADDRESSES: tuple[str, ...] = ()  # NodePorts answer on every local address
LOCALHOST_NODEPORTS = True  # ... and on 127.0.0.1 with --localhost-nodeports

# Every chain of kube-proxy's iptables layout (and only those): what cleanup removes.
OWNED_CHAIN_PREFIXES = (
    "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ",
    "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY", "KUBE-FIREWALL",
    "KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-",
)


class IptablesWriter:
    """Writes kube-proxy's iptables layout through `system.iptables.IptablesSystem` (or a fake
    with `restore`, `save`, `rule_exists`, `ensure_jumps`, `ensure_canaries`; one without
    `restore_chunks` gets each full payload whole)."""

    mode = Mode.IPTABLES

    # The precise tamper check runs at least this often, whatever the fingerprint says.
    DEEP_CHECK_PERIOD = 3600.0
    CANARY_TABLES = ("mangle", "nat", "filter")
    # Fixed chains that are never empty in our layout.
    NEVER_EMPTY = (("nat", KUBE_POSTROUTING), ("nat", KUBE_MARK_MASQ), ("filter", KUBE_FORWARD))

    def __init__(self, system: Any, *, random_fully: bool = True, large_cluster: bool | None = None,
                 full_sync_period: float = FULL_SYNC_PERIOD, counters: Any = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.system = system
        self.random_fully = random_fully
        # The nfacct counters (system.nfacct.Nfacct, or None when the kernel has none): each
        # full sync ensures them, as kube-proxy does, and the rules count into them while
        # they exist.
        self.counters = counters
        self.nfacct = False
        self.large_cluster = large_cluster
        self.full_sync_period = full_sync_period
        self.monotonic = monotonic
        self.payload = ""  # the last good full payload: the rollback point
        self.service_chains: frozenset[str] = frozenset()  # our service chains in the kernel
        self._jumps: tuple[tuple[str, str, str], ...] = ()  # (table, built-in chain, target) ensured
        self._rendered: RenderedRules | None = None  # the last render the kernel holds, reused by partial syncs
        self._fingerprint: object = None  # the tables' fingerprint after our last write or check
        self._last_deep_check = monotonic()

    def sync(self, plan: NodePlan, full: bool, changed: frozenset[str] | set[str]) -> Written:
        # A change by someone else since our last write or check must still be checked, even
        # though this write moves the fingerprint again.
        unchecked = self._fingerprint is None or self._read_fingerprint() != self._fingerprint
        self._rendered, previous = None, self._rendered  # unknown until the restore succeeded
        if full:
            self._ensure_counters()
            rendered = self._full_sync(plan)
        else:
            rendered = render(plan, random_fully=self.random_fully, large_cluster=self.large_cluster,
                              nfacct=self.nfacct, changed=changed, existing_nat_chains=self.service_chains,
                              previous=previous)
            self.system.restore(rendered.text)
        self._rendered = rendered
        self.service_chains = rendered.service_chains
        # The next check looks at the rules themselves after a full sync (it takes long enough
        # for someone to change something meanwhile; full syncs are rare), and after a partial
        # one when someone else changed something before it (None forces that check).
        self._fingerprint = None if full or unchecked else self._read_fingerprint()
        return Written(full, rendered.filter_rules + rendered.nat_rules, rendered)

    def _ensure_counters(self) -> None:
        if self.counters is None:
            return
        try:
            for name in NFACCT_COUNTERS:
                self.counters.ensure(name)
        except ProxyctlError as exc:
            log.error("cannot create the nfacct counters (%s): the rules go without them and their "
                      "metrics are not served", exc)
            self.nfacct = False
        else:
            self.nfacct = True

    def counter_packets(self, name: str) -> float | None:
        """Packets counted by nfacct counter `name`; None when there is none."""
        if self.counters is None or not self.nfacct:
            return None
        found = self.counters.get(name)
        return None if found is None else float(found[0])

    def before_sync(self, pending_changes: bool, metrics: Any, family: str) -> None:
        pass  # stale chains are deleted within the sync itself

    def after_failure(self, error: Exception) -> None:
        if isinstance(error, ApplyError) and self.payload:
            try:  # a table may have committed before the failing one: put the last good state back
                self.system.restore(self.payload)
            except ProxyctlError as again:
                log.error("restoring the last good rules failed too: %s", again)

    def state_missing(self) -> list[str]:
        """What of our rules is gone (see the module docstring); [] when all is there."""
        fingerprint = self._read_fingerprint()
        now = self.monotonic()
        log.debug("tamper check: fingerprint %s, after our last write or check %s", fingerprint, self._fingerprint)
        if (fingerprint is not None and self._fingerprint is not None and fingerprint == self._fingerprint
                and now - self._last_deep_check < self.DEEP_CHECK_PERIOD):
            return []
        try:
            missing = self._missing()
        except ProxyctlError as exc:
            log.warning("cannot check our iptables rules: %s", exc)
            return []
        self._last_deep_check = now
        if not missing:
            self._fingerprint = fingerprint  # someone else's change: ours are intact
        return missing

    def _read_fingerprint(self) -> object:
        try:
            return self.system.fingerprint()
        except ProxyctlError as exc:
            log.debug("cannot read the tables' fingerprint (%s): checking the rules themselves", exc)
            return None

    def _missing(self) -> list[str]:
        summary = self.system.summary(self.CANARY_TABLES)
        rules = summary.rules
        missing = [f"canary chain KUBE-PROXY-CANARY in {table}" for table in self.CANARY_TABLES
                   if (table, CANARY_CHAIN) not in rules]
        missing += [f"the jump from {table} {chain} to {target}" for table, chain, target in self._jumps
                    if target not in summary.builtin_targets.get((table, chain), ())]
        missing += [f"the rules of {table} {chain}" for table, chain in self.NEVER_EMPTY if not rules.get((table, chain))]
        gone = sorted(c for c in self.service_chains if not rules.get(("nat", c)))
        if gone:
            missing.append(f"{len(gone)} service chains or their rules (e.g. nat {gone[0]})")
        return missing

    def delete_stale(self) -> int:
        return 0  # nothing waits: the sync deleted its stale chains

    def record_metrics(self, metrics: Any, family: str, written: Written) -> None:
        rendered: RenderedRules = written.counts
        m = metrics
        m.sync_proxy_rules_iptables_last.labels(ip_family=family, table="filter").set(rendered.filter_rules)
        m.sync_proxy_rules_iptables_last.labels(ip_family=family, table="nat").set(rendered.nat_rules)
        m.sync_proxy_rules_iptables_total.labels(ip_family=family, table="filter").set(rendered.filter_rules)
        m.sync_proxy_rules_iptables_total.labels(ip_family=family, table="nat").set(rendered.nat_rules_total)
        if self.counters is not None:
            # kube-proxy's collectors read the counters at each scrape (no ip_family label).
            for metric, counter, text in NFACCT_METRICS:
                if not m.registry.has(metric):
                    m.registry.read_counter(metric, f"[ALPHA] {text}",
                                            lambda counter=counter: self.counter_packets(counter))

    def count_failure(self, metrics: Any, family: str, full: bool) -> None:
        counter = (metrics.sync_proxy_rules_iptables_restore_failures_total if full
                   else metrics.sync_proxy_rules_iptables_partial_restore_failures_total)
        counter.labels(ip_family=family).inc()

    def _full_sync(self, plan: NodePlan) -> RenderedRules:
        """Save (in a thread) while the entry rules are rendered, then stream the payload, with
        what the save shows missing, into one restore (see the module docstring)."""
        saved_chains = self._save_in_background()
        stream = RenderStream(plan, random_fully=self.random_fully, large_cluster=self.large_cluster,
                              nfacct=self.nfacct)
        saved = saved_chains()
        if saved is None:
            # every service chain we wrote: render picks the stale ones among those it does not write
            self._restore_chunks(_then_collect(stream.chunks(set(self.service_chains))))
            self.system.ensure_jumps(_system_jumps(stream.rendered.jump_rules))
            self.system.ensure_canaries()
        else:
            extra = self._repairs(saved, stream)
            self._restore_chunks(_then_collect(stream.chunks(saved.chains.get("nat", set()), extra)))
        rendered = stream.rendered
        self.payload = rendered.text  # partial syncs after it are redone by the next full sync
        self._jumps = tuple((j.table, j.chain, j.target) for j in rendered.jump_rules)
        return rendered

    def _save_in_background(self) -> Callable[[], Any]:
        """Start the one `iptables-save` of a full sync in a thread; returns what waits for it
        and gives the scanned save (`system.iptables.SavedChains`), or None when it failed."""
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(self._saved_chains())
            except BaseException as exc:  # handed to the waiting sync, which raises it
                future.set_exception(exc)

        threading.Thread(target=run, name="iptables-save", daemon=True).start()
        return future.result

    def _saved_chains(self) -> Any:
        """The one `iptables-save` of a full sync, scanned, or None when it failed."""
        from kubectl_proxyctl.system.iptables import scan_save

        try:
            return scan_save(self.system.save())
        except ProxyctlError as exc:
            log.warning("cannot read the tables (%s); stale chains stay until the next full sync", exc)
            return None

    def _repairs(self, saved: Any, stream: RenderStream) -> dict[str, list[str]]:
        """Table → the jump rules and canaries `saved` lacks (usually nothing), as restore lines."""
        from kubectl_proxyctl.system.iptables import repair_lines

        extra = repair_lines(saved, _system_jumps(JUMP_RULES), self.CANARY_TABLES, stream.top_level_chains,
                             self._confirm)
        if extra:
            log.info("adding to this sync's restore what is missing: %s",
                     "; ".join(f"{t}: {len(lines)} line(s)" for t, lines in extra.items()))
        return extra

    def _restore_chunks(self, chunks: Iterable[str]) -> None:
        """One restore of the payload as it is produced; a system that cannot stream gets it whole."""
        streaming = getattr(self.system, "restore_chunks", None)
        if streaming is None:
            self.system.restore("".join(chunks))
        else:
            streaming(chunks)

    def _confirm(self, jump: Any) -> bool:
        """`iptables -C`: is the rule there in another spelling?"""
        try:
            return bool(self.system.rule_exists(jump.table, jump.chain, jump.args))
        except ProxyctlError:
            return False


CANARY_CHAIN = "KUBE-PROXY-CANARY"


def _then_collect(chunks: Iterator[str]) -> Iterator[str]:
    """The chunks, then a collection of the young generations, which runs while
    iptables-restore commits the last table and Python would only wait. The sync allocated
    a few hundred thousand objects with the collector paused (`Proxier.sync`), whose
    collection afterwards then finds little left to do."""
    yield from chunks
    gc.collect(1)


def _system_jumps(rules: Iterable[JumpRule]) -> list[Any]:
    from kubectl_proxyctl.system.iptables import Jump

    return [Jump(j.table, j.chain, j.args()) for j in rules]


def make_writer(config: ProxyConfig) -> IptablesWriter:
    """The writer for a real node: the iptables backend the host uses, `--random-fully` when
    the kernel and iptables have it."""
    from kubectl_proxyctl.system.iptables import IptablesSystem

    system = IptablesSystem(config.family)
    detection = system.detect()
    if detection.warning:
        log.warning("%s", detection.warning)
    from kubectl_proxyctl.system import nfacct

    counters, why = nfacct.open_counters()
    if why:
        log.warning("%s: the two nfacct metrics are not served", why)
    return IptablesWriter(system, random_fully=system.supports_random_fully(), counters=counters)


def dry_run(plan: NodePlan) -> tuple[str, str]:
    """(the payload a full sync would restore, a one-line summary) for `run --dry-run`."""
    rendered = render(plan)
    summary = (f"dry run: {rendered.filter_rules} filter and {rendered.nat_rules} nat rules; jump rules a real "
               f"sync ensures: {'; '.join(j.restore_line() for j in rendered.jump_rules)}")
    return rendered.text, summary


def prepare_node(config: ProxyConfig) -> None:
    """`--localhost-nodeports` needs route_localnet, or the kernel drops 127.0.0.1 → pod."""
    if config.localhost_nodeports and config.family == IPFamily.IPv4:
        from kubectl_proxyctl.system.sysctl import ROUTE_LOCALNET, Sysctl

        if Sysctl().ensure(ROUTE_LOCALNET, 1):
            log.info("set %s=1 so NodePorts answer on 127.0.0.1", ROUTE_LOCALNET)


def cleanup(family: IPFamily, config: ProxyConfig | None = None) -> tuple[bool, str]:
    """Remove our iptables chains and jumps of one family: (anything removed?, what)."""
    from kubectl_proxyctl.system.iptables import IptablesSystem

    system = IptablesSystem(family)
    try:
        detection = system.detect()
        if detection.warning:
            log.warning("%s", detection.warning)
        result = system.cleanup(prefixes=OWNED_CHAIN_PREFIXES)
    except Exception as exc:  # no ip6tables on an IPv4-only host, no iptables on an nft-only one
        log.info("%s iptables: nothing to clean (%s)", family, exc)
        return False, "removed nothing"
    if not result.chains and not result.rules:
        return False, "removed nothing"
    return True, f"removed {len(result.chains)} chains and {len(result.rules)} jump rules"
