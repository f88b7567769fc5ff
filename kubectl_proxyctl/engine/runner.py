"""The engine's sync scheduler: a bounded-frequency runner and the full-sync schedule.

Theory of operation (after kube-proxy's `pkg/proxy/runner/bounded_frequency_runner.go`):

* Watch events call `Runner.run()`. That only records "a sync is wanted" and wakes the loop,
  so a burst of events costs one sync, not one per event.
* The loop runs `fn` when a sync is wanted, when `max_interval` has passed since the last run
  (periodic resync), or when a retry is due. It never starts `fn` sooner than `min_interval`
  after the previous run *finished*; requests that arrive during a run or its cool-down are
  coalesced into the one run that follows it.
* A run fails when `fn` raises (the exception is logged, the loop survives) or when anyone
  calls `retry_after_failure()`. A failure schedules another run `retry_interval` later (no
  sooner than `min_interval`); a run that succeeds cancels the pending retry.
* A sync requested before `loop()` starts is kept and runs as soon as the loop starts
  (kube-proxy drops such requests; its proxier syncs directly once its informers are synced).

All timing goes through a `Clock`: monotonic seconds, wall-clock nanoseconds and a wait on an
event with a timeout. `RealClock` uses the `time` module; `FakeClock` is a stateful stand-in
whose time moves only when told to, so tests (and anything simulating time) never sleep.
`Runner.next_run_in()` and `Runner.run_if_due()` expose the scheduling decision without a
thread at all.

`FullSyncSchedule` answers the other timing question of a sync: must this one rewrite
everything? Yes at start-up, after a failure or an explicit request (canary gone, node labels
changed), and at least every `FULL_SYNC_PERIOD` (kube-proxy's `proxyutil.FullSyncPeriod`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Protocol

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0  # seconds; kube-proxy rewrites every chain at least hourly


class Clock(Protocol):
    """The time source of the runner, the health server and the full-sync schedule."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; for measuring intervals."""
        ...

    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch; for timestamps that are reported."""
        ...

    def wait(self, event: threading.Event, timeout: float) -> None:
        """Block until `event` is set or `timeout` seconds have passed on this clock."""
        ...


class RealClock:
    """The system clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ns(self) -> int:
        return time.time_ns()

    def wait(self, event: threading.Event, timeout: float) -> None:
        event.wait(timeout)


REAL_CLOCK = RealClock()


class FakeClock:
    """A clock that moves only on `advance()`; waits end when their deadline is passed.

    `wait()` really blocks the calling thread (until its event is set, or until `advance()`
    moves time past its deadline, which sets the event), so a loop on another thread can be
    stepped deterministically. `waits` counts the waits that blocked, and
    `wait_for_waiter(after)` lets a test block (in real time, bounded) until a thread has
    entered its wait number `after + 1`, i.e. has finished reacting to the previous wake-up.
    """

    def __init__(self, start: float = 1000.0, wall_start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._start = start
        self._now = start
        self._wall_start_ns = wall_start_ns
        self._cond = threading.Condition()
        self._waiters: list[tuple[float, threading.Event]] = []
        self._waits = 0

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def wall_ns(self) -> int:
        with self._cond:
            return self._wall_start_ns + round((self._now - self._start) * 1e9)

    @property
    def waits(self) -> int:
        with self._cond:
            return self._waits

    def wait(self, event: threading.Event, timeout: float) -> None:
        with self._cond:
            if event.is_set() or timeout <= 0:
                return
            waiter = (self._now + timeout, event)
            self._waiters.append(waiter)
            self._waits += 1
            self._cond.notify_all()
        try:
            event.wait()
        finally:
            with self._cond:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def advance(self, seconds: float) -> None:
        """Move time forward and release every wait whose deadline has now passed."""
        with self._cond:
            self._now += seconds
            due = [w for w in self._waiters if w[0] <= self._now]
            self._waiters = [w for w in self._waiters if w[0] > self._now]
        for _, event in due:
            event.set()

    def wait_for_waiter(self, after: int, timeout: float = 5.0) -> bool:
        """Block (real time) until more than `after` waits have blocked and one is pending."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waits > after and bool(self._waiters), timeout)


class Runner:
    """Runs `fn` on demand, at most every `min_interval`, at least every `max_interval`."""

    def __init__(
        self, fn: Callable[[], object], min_interval: float, max_interval: float,
        retry_interval: float, *, clock: Clock = REAL_CLOCK, name: str = "sync",
    ) -> None:
        if min(min_interval, max_interval, retry_interval) < 0:
            raise ValueError(f"{name}: intervals must not be negative")
        if max_interval < min_interval:
            raise ValueError(
                f"{name}: max_interval ({max_interval}s) must be >= min_interval ({min_interval}s)")
        self.name = name
        self._fn = fn
        self._min_interval = min_interval
        self._max_interval = max_interval
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._serial = threading.Lock()  # one run at a time, whoever drives the runner
        self._wake = threading.Event()
        self._pending = False
        self._retry_at = math.inf
        self._max_at = clock.monotonic() + max_interval
        self._earliest_at = -math.inf
        self._failed = False
        self.runs = 0  # completed runs, successful or not

    def run(self) -> None:
        """Ask for a sync as soon as the minimum interval allows; bursts coalesce."""
        with self._lock:
            self._pending = True
        self._wake.set()

    def retry_after_failure(self) -> None:
        """Schedule a run `retry_interval` from now (or keep an earlier one).

        Called from inside `fn`, it marks the current run as failed, so its success does not
        cancel the retry.
        """
        with self._lock:
            self._retry_at = min(self._retry_at, self._clock.monotonic() + self._retry_interval)
            self._failed = True
        self._wake.set()

    def next_run_in(self) -> float:
        """Seconds until the next run is due; 0 when it is due now."""
        with self._lock:
            now = self._clock.monotonic()
            wanted = min(self._max_at, self._retry_at, now if self._pending else math.inf)
            return max(0.0, max(wanted, self._earliest_at) - now)

    def run_if_due(self) -> bool:
        """Run `fn` once if a run is due now; return whether it ran."""
        with self._serial:
            if self.next_run_in() > 0:
                return False
            with self._lock:
                self._pending = False
                self._retry_at = math.inf
                self._failed = False
            try:
                self._fn()
            except Exception:  # the loop must survive a broken sync; the retry covers it
                log.exception("%s failed; retrying in %ss", self.name, self._retry_interval)
                self.retry_after_failure()
            with self._lock:
                now = self._clock.monotonic()
                if not self._failed:
                    self._retry_at = math.inf
                self._earliest_at = now + self._min_interval
                self._max_at = now + self._max_interval
                self.runs += 1
            return True

    def loop(self, stop: threading.Event) -> None:
        """Run until `stop` is set; meant to be the target of a thread.

        Between runs the thread blocks on the clock until the next run is due, a sync is
        requested or `stop` is set; it never polls.
        """
        log.debug("%s loop running", self.name)
        watcher = threading.Thread(target=self._wake_on, args=(stop,), daemon=True,
                                   name=f"{self.name}-stop")
        watcher.start()
        while not stop.is_set():
            self._wake.clear()
            delay = self.next_run_in()
            if delay > 0:
                self._clock.wait(self._wake, delay)
                continue
            self.run_if_due()
        log.debug("%s loop stopped", self.name)

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._wake.set()


class FullSyncSchedule:
    """Whether the next sync must be a full one.

    A full sync is due at start-up, after a failed sync, after `request()`, and when
    `period` seconds have passed since the last successful full sync.
    """

    def __init__(self, period: float = FULL_SYNC_PERIOD, *, clock: Clock = REAL_CLOCK) -> None:
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._needed = True
        self._last_full = -math.inf

    def due(self) -> bool:
        with self._lock:
            return self._needed or self._clock.monotonic() - self._last_full >= self._period

    def request(self) -> None:
        """Make the next sync a full one (canary gone, node labels changed, ...)."""
        with self._lock:
            self._needed = True

    def record_success(self, full: bool) -> None:
        """A sync succeeded; `full` says whether it rewrote everything."""
        if not full:
            return
        with self._lock:
            self._needed = False
            self._last_full = self._clock.monotonic()

    def record_failure(self) -> None:
        """A sync failed: the kernel state is unknown, so the next one rewrites everything."""
        self.request()
