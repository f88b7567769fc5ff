"""The engine's side of nftables mode: one atomic `nft -f -` transaction per sync.

A full sync (first sync, after a failure, when the node changed or our table was deleted or
flushed) reads our table once when it exists (`nft list table`) and, when its layout is
ours, writes only the difference to the full transaction's result (`reconcile.py`: over the
table a previous run left, a few dozen lines instead of minutes of nft work); without a
table, after a failed read or over another layout it writes the full transaction, which
rebuilds the table. The listing is the start's critical path (at 10,000 services it takes
7-12 s, most of it in the kernel's netlink dumps, which no narrower `nft list` command
avoids: listing even one chain's rules makes nft 1.0.x fetch every rule and every anonymous
set of the table), so it runs in a thread of its own from the moment the first sync starts
(`before_sync`, before the engine plans), and the plan and the desired state are computed
meanwhile on another core. A partial sync rewrites only the changed services' chains and
the map elements that differ (`render.py`). Stale chains are deleted by a separate
small transaction at the start of a later sync without pending changes, at least a second
after they were flushed. Unlike iptables mode there is no hourly full sync (as in
kube-proxy's nftables mode: a full transaction into a populated 10,000-service table takes
minutes, and partial transactions keep the table exact); tampering is caught by
`state_missing()` instead: every sync period it reads the namespace's nf_tables generation
(one netlink request, at any table size); only when that moved since our last transaction, it
lists our table and compares every chain's rule count and every set's and map's element count
with what we wrote. `nft flush table`, `nft delete table`, a deleted or flushed chain, a
deleted map element all show, and make the next sync a full one; other software's
transactions cost that one listing. The listing also runs hourly, whatever the generation.
A listing of a large table takes seconds (12 s at 10,000 services with nft 1.0.6), so after
one that took T seconds the next waits 20 T: on a node where other software commits all the
time, listings cost at most 5 % of a core, and in between only the table's presence (one
small set, cheap at any size) is checked. A failed transaction changes nothing in the kernel (nft batches are
atomic), so there is nothing to roll back: the next sync is a full one.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.base import Mode, Written
from kubectl_proxyctl.modes.nftables.reconcile import ListingError, desired, parse_listing, reconcile
from kubectl_proxyctl.modes.nftables.render import (
    CLUSTER_IPS,
    STALE_CHAIN_DELAY,
    TABLE,
    RenderedNft,
    forget_chains,
    is_affinity_set,
    render,
    stale_deletion,
)
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig

log = logging.getLogger(__name__)

# How kube-proxy's nftables mode configures a node by default (its deliberate differences).
DEFAULT_NODEPORT_ADDRESSES: tuple[str, ...] = ("primary",)  # NodePorts answer on the primary IP only
LOCALHOST_NODEPORTS = False  # no NodePorts on 127.0.0.1, whatever --localhost-nodeports says


class NftablesWriter:
    """Writes kube-proxy's `kube-proxy` table through `system.nftables.NftSystem` (or a fake
    with `run`, `listing`, `chains`, `sets`, `set_present`, `chain_rule_count`, `fam`)."""

    mode = Mode.NFTABLES
    full_sync_period = float("inf")

    # Stale chains are deleted by a sync without pending changes (the periodic ones), so the
    # extra transaction never delays a change; at the latest after this many seconds.
    STALE_CHAIN_MAX_AGE = 30.0
    # The table listing runs at least this often, whatever the generation says (nft 1.0.x needs
    # seconds for it at 10,000 services, so it is not done every sync period).
    DEEP_CHECK_PERIOD = 3600.0
    # After a listing that took T seconds the next one waits LISTING_SPACING * T (a node where
    # other software commits every period then spends at most 1/LISTING_SPACING of a core).
    LISTING_SPACING = 20.0

    def __init__(self, system: Any, *, service_cidrs: tuple[str, ...] = (),
                 monotonic: Callable[[], float] = time.monotonic, table: str = TABLE,
                 entry_points_only: bool = False) -> None:
        self.system = system
        self.service_cidrs = service_cidrs
        self.table = table  # eBPF mode writes its entry points into a table of its own
        self.entry_points_only = entry_points_only
        self.monotonic = monotonic
        self.state: Any = None  # render.NftState after the last transaction
        self._recreated_base_chains = False
        self._last_deep_check = monotonic()
        self._generation: int | None = None  # the ruleset generation after our last write or check
        self._last_listing = float("-inf")  # when the last listing of our table started
        self._listing_seconds = 0.0  # and how long it took
        self._fixed_rules: dict[str, int] = {}  # fixed chain → its rules, from the last full transaction
        self._pending_listing: tuple[float, Future[str | None]] | None = None  # (started, our table's listing)

    def sync(self, plan: NodePlan, full: bool, changed: frozenset[str] | set[str]) -> Written:
        # A transaction by someone else since our last write or check must still be checked,
        # even though this one moves the generation again.
        unchecked = self._generation is None or self._read_generation() != self._generation
        now = self.monotonic()
        # Whatever this sync is, a listing started for it is of no use to a later one.
        pending, self._pending_listing = self._pending_listing, None
        if full:
            rendered = self._reconciled(plan, now, pending or self._start_listing())
            if rendered is None:
                affinity = {s for s in self.system.sets() if is_affinity_set(s)}
                rendered = render(plan, existing_chains=self.system.chains(), existing_affinity_sets=affinity,
                                  first=not self._recreated_base_chains, now=now, service_cidrs=self._cidrs(plan),
                                  table=self.table, entry_points_only=self.entry_points_only)
        else:
            rendered = render(plan, previous=self.state, changed=changed, now=now, service_cidrs=self._cidrs(plan),
                              table=self.table, entry_points_only=self.entry_points_only)
        self.system.run(rendered.text)
        self.state = rendered.state
        self._recreated_base_chains = True
        if not rendered.partial:
            self._fixed_rules = _fixed_rule_counts(rendered.text, rendered.state)
        # The next check lists the table after a full transaction (it takes long enough for
        # someone to change something meanwhile; full ones are rare), and after a partial one
        # when someone else committed before it (None forces the listing).
        self._generation = None if not rendered.partial or unchecked else self._read_generation()
        return Written(not rendered.partial, rendered.rules_written, rendered)

    def _cidrs(self, plan: NodePlan) -> tuple[str, ...]:
        """The service ranges whose unallocated addresses are dropped: the cluster's
        ServiceCIDRs (in the plan), else those this writer was made with."""
        return plan.service_cidrs or self.service_cidrs

    def _reconciled(self, plan: NodePlan, now: float,
                    pending: tuple[float, Future[str | None]] | None) -> RenderedNft | None:
        """The full sync as the difference to what our table holds (`reconcile.py`, the table
        as `pending` lists it), or None when there is no table, it cannot be read or its
        layout is not ours."""
        if pending is None:  # an adapter that cannot read the table back: write it whole
            return None
        started, listing = pending
        options = {"service_cidrs": self._cidrs(plan), "table": self.table,
                   "entry_points_only": self.entry_points_only}
        # Computed while nft lists the table, unless the listing is back already (no table).
        wanted = None if listing.done() else desired(plan, now=now, **options)
        text = self._listed_text(listing)
        if text is None:
            return None
        try:
            listed = parse_listing(text)
        except ListingError as exc:
            log.warning("cannot read the listing of table %s %s (%s): writing it whole",
                        self.system.fam, self.table, exc)
            return None
        wanted = wanted or desired(plan, now=now, **options)
        rendered, problem = reconcile(plan, listed, wanted, now=now, **options)
        if rendered is None:
            log.info("table %s %s is not in our layout (%s): writing it whole", self.system.fam, self.table, problem)
            return None
        log.info("table %s %s read in %.1fs; writing the difference: %d chains, %d element changes",
                 self.system.fam, self.table, self.monotonic() - started, len(rendered.chains_written),
                 rendered.elements_written)
        return rendered

    def _start_listing(self) -> tuple[float, Future[str | None]] | None:
        """Start listing our table in a thread of its own (nft does the work, in another
        process and in the kernel, so the engine's thread runs on meanwhile); None when the
        adapter cannot read the table back."""
        listing = getattr(self.system, "listing", None)
        if listing is None:
            return None
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft-listing")
        try:
            return self.monotonic(), pool.submit(listing, self.table)
        finally:
            pool.shutdown(wait=False)  # the thread ends with its one task

    def _listed_text(self, listing: Future[str | None]) -> str | None:
        """The listing's text; None when there is no table or it cannot be read."""
        try:
            return listing.result()
        except ProxyctlError as exc:
            log.warning("cannot read table %s %s (%s): writing it whole", self.system.fam, self.table, exc)
            return None

    def before_sync(self, pending_changes: bool, metrics: Any, family: str) -> None:
        """Before a process's first sync (a full one): start listing our table, which that
        sync reconciles. Otherwise delete the chains stale for long enough: in a sync without
        pending changes, or once the oldest has waited STALE_CHAIN_MAX_AGE."""
        if self.state is None:
            self._pending_listing = self._start_listing()
            return
        if not self.state.stale:
            return
        now = self.monotonic()
        if pending_changes and now - min(self.state.stale.values()) < self.STALE_CHAIN_MAX_AGE:
            return
        try:
            deleted = self._delete_due_stale_chains(now)
            if deleted:
                log.info("deleted %d stale chains", deleted)
        except ProxyctlError as exc:
            log.warning("cannot delete stale chains yet (%s); will retry", exc)
            if metrics is not None:
                metrics.sync_proxy_rules_nftables_cleanup_failures_total.labels(ip_family=family).inc()

    def after_failure(self, error: Exception) -> None:
        pass  # an nft transaction is atomic: nothing was half-written

    def state_missing(self) -> list[str]:
        """What of our table is gone (see the module docstring); [] when all is there."""
        generation = self._read_generation()
        now = self.monotonic()
        if (generation is not None and self._generation is not None and generation == self._generation
                and now - self._last_deep_check < self.DEEP_CHECK_PERIOD):
            return []
        if now - self._last_listing < self.LISTING_SPACING * self._listing_seconds:
            # Listed a moment ago (other software keeps committing): spend at most 1/LISTING_SPACING
            # of a core on listings; meanwhile only the cheap "table still there" check.
            try:
                return [] if self.system.set_present(CLUSTER_IPS) else [f"table {self.system.fam} {self.table}"]
            except ProxyctlError as exc:
                log.warning("cannot check our nftables table: %s", exc)
                return []
        started = self.monotonic()
        try:
            summary = self.system.summary()
        except ProxyctlError as exc:
            log.warning("cannot check our nftables table: %s", exc)
            return []
        self._last_listing, self._listing_seconds = started, self.monotonic() - started
        self._last_deep_check = now
        missing = self._missing(summary)
        if not missing:
            self._generation = generation  # someone else's transaction: ours is intact
        return missing

    def _read_generation(self) -> int | None:
        try:
            return int(self.system.generation())
        except ProxyctlError as exc:
            log.debug("cannot read the nf_tables generation (%s): listing the table instead", exc)
            return None

    def _missing(self, summary: Any) -> list[str]:
        title = f"{self.system.fam} {self.table}"
        if summary is None:
            return [f"table {title}"]
        if self.state is None:
            return []
        want: dict[str, int] = dict(self._fixed_rules)
        for out in self.state.services.values():
            for chain, rules in out.chains:
                want[chain] = len(rules)
        differ = sorted(c for c, n in want.items() if summary.rules.get(c) != n)
        missing = []
        if differ:
            gone = [c for c in differ if c not in summary.rules]
            what = f"{len(gone)} chains deleted" if gone else "rules changed"
            missing.append(f"the rules of {len(differ)} chains of table {title} ({what}; e.g. {differ[0]})")
        elements = {c: len(store) for c, store in self.state.elements.items()}
        short = sorted(c for c, n in elements.items() if summary.elements.get(c, 0) != n)
        if short:
            missing.append(f"elements of {', '.join(short)} in table {title}")
        return missing

    def delete_stale(self, wait: Callable[[float], None] = time.sleep) -> int:
        """Delete every stale chain now, waiting out STALE_CHAIN_DELAY first if needed (for
        `run --once`, which has no later sync to do it). Returns how many were deleted."""
        if self.state is None or not self.state.stale:
            return 0
        delay = max(self.state.stale.values()) + STALE_CHAIN_DELAY - self.monotonic()
        if delay > 0:
            wait(delay)
        return self._delete_due_stale_chains(self.monotonic())

    def record_metrics(self, metrics: Any, family: str, written: Written) -> None:
        pass  # the shared sync metrics say it all

    def count_failure(self, metrics: Any, family: str, full: bool) -> None:
        metrics.sync_proxy_rules_nftables_sync_failures_total.labels(ip_family=family).inc()

    def _delete_due_stale_chains(self, now: float) -> int:
        """One small transaction deleting the chains stale for long enough; how many."""
        text, due = stale_deletion(self.state, now)
        if text:
            self.system.run(text)
            forget_chains(self.state, due)
        return len(due)


def make_writer(config: ProxyConfig) -> NftablesWriter:
    """The writer for a real node (checks that `nft` is usable first)."""
    from kubectl_proxyctl.system.nftables import NftSystem

    nft = NftSystem(config.family)
    nft.check_available()
    return NftablesWriter(nft)


def dry_run(plan: NodePlan) -> tuple[str, str]:
    """(the `nft -f` script a full sync would run, a one-line summary) for `run --dry-run`."""
    rendered: RenderedNft = render(plan, service_cidrs=plan.service_cidrs)
    return rendered.text, (f"dry run: one nft transaction with {rendered.rules_written} rules and "
                           f"{rendered.elements_written} map/set elements (apply with nft -f)")


def prepare_node(config: ProxyConfig) -> None:
    pass  # nothing node-wide to set


def cleanup(family: IPFamily, config: ProxyConfig | None = None) -> tuple[bool, str]:
    """Delete our table of one family: (deleted?, what)."""
    from kubectl_proxyctl.system.nftables import NftSystem

    try:
        deleted = NftSystem(family).delete_table()
    except Exception as exc:  # no nft binary, or no nf_tables in the kernel
        log.info("%s nftables: nothing to clean (%s)", family, exc)
        deleted = False
    return deleted, f"deleted table {TABLE}" if deleted else f"no table {TABLE}"


def _fixed_rule_counts(text: str, state: Any) -> dict[str, int]:
    """Chain → rules written, for the chains of a full transaction that are not a service's."""
    per_service = {c for out in state.services.values() for c, _ in out.chains}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("add chain "):
            chain = line.split(" ", 5)[4]
            if chain not in per_service:
                counts.setdefault(chain, 0)
        elif line.startswith("add rule "):
            chain = line.split(" ", 5)[4]
            if chain not in per_service:
                counts[chain] = counts.get(chain, 0) + 1
        elif line.startswith("delete chain "):  # a first transaction's old-layout base chains
            counts.pop(line.split(" ", 5)[4], None)
    return counts
