"""The bounded-frequency runner and the full-sync schedule, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import threading
from typing import Iterator

import pytest

from kubectl_proxyctl.engine.runner import FakeClock, FullSyncSchedule, Runner
from waiting import TIMEOUT, wait_for

MIN, MAX, RETRY = 1.0, 60.0, 10.0


class Sync:
    """A sync function that counts its calls, can be told to fail, and notes the clock's waits."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls = 0
        self.fail_next = 0
        self.waits_at_last_call = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.calls += 1
            self.waits_at_last_call = self.clock.waits
            self._cond.notify_all()
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("iptables-restore failed")

    def wait_calls(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.calls >= n, TIMEOUT)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sync(clock: FakeClock) -> Sync:
    return Sync(clock)


@pytest.fixture
def runner(sync: Sync, clock: FakeClock) -> Runner:
    return Runner(sync, MIN, MAX, RETRY, clock=clock)


# -- the scheduling decision, without a thread ---------------------------------------------------


def test_a_burst_of_requests_is_one_sync(runner: Runner, sync: Sync) -> None:
    for _ in range(100):
        runner.run()
    assert runner.run_if_due()
    assert not runner.run_if_due()
    assert sync.calls == 1


def test_requests_within_min_interval_coalesce_into_one_later_sync(
    runner: Runner, sync: Sync, clock: FakeClock,
) -> None:
    runner.run()
    runner.run_if_due()
    for _ in range(100):
        runner.run()
        clock.advance(MIN / 200)
    assert runner.next_run_in() == pytest.approx(MIN / 2)
    assert not runner.run_if_due()
    clock.advance(runner.next_run_in())
    assert runner.run_if_due()
    assert not runner.run_if_due()
    assert sync.calls == 2


def test_min_interval_counts_from_the_end_of_the_previous_run(clock: FakeClock) -> None:
    def slow_sync() -> None:
        clock.advance(5.0)

    runner = Runner(slow_sync, MIN, MAX, RETRY, clock=clock)
    runner.run()
    runner.run_if_due()
    runner.run()
    assert runner.next_run_in() == MIN


def test_periodic_sync_at_max_interval_without_requests(runner: Runner, sync: Sync, clock: FakeClock) -> None:
    assert runner.next_run_in() == MAX
    clock.advance(MAX - 0.001)
    assert not runner.run_if_due()
    clock.advance(0.001)
    assert runner.run_if_due()
    assert runner.next_run_in() == MAX  # the periodic timer restarts after every run


def test_an_exception_schedules_a_retry_and_success_cancels_it(
    runner: Runner, sync: Sync, clock: FakeClock,
) -> None:
    sync.fail_next = 1
    runner.run()
    assert runner.run_if_due()  # the exception is logged, not raised
    assert runner.next_run_in() == RETRY
    clock.advance(RETRY)
    assert runner.run_if_due()
    assert sync.calls == 2
    assert runner.next_run_in() == MAX


def test_retry_after_failure_from_inside_the_sync(clock: FakeClock) -> None:
    holder: list[Runner] = []

    def failing_sync() -> None:
        holder[0].retry_after_failure()

    runner = Runner(failing_sync, MIN, MAX, RETRY, clock=clock)
    holder.append(runner)
    runner.run()
    runner.run_if_due()
    assert runner.next_run_in() == RETRY


def test_a_successful_requested_sync_cancels_a_pending_retry(
    runner: Runner, sync: Sync, clock: FakeClock,
) -> None:
    sync.fail_next = 1
    runner.run()
    runner.run_if_due()
    clock.advance(2.0)
    runner.run()
    assert runner.run_if_due()
    assert runner.next_run_in() == MAX


def test_retry_never_comes_sooner_than_min_interval(sync: Sync, clock: FakeClock) -> None:
    runner = Runner(sync, 5.0, MAX, 0.5, clock=clock)
    sync.fail_next = 1
    runner.run()
    runner.run_if_due()
    assert runner.next_run_in() == 5.0


def test_intervals_are_validated(sync: Sync) -> None:
    with pytest.raises(ValueError, match="max_interval"):
        Runner(sync, 10.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="negative"):
        Runner(sync, -1.0, 1.0, 1.0)


# -- the loop on a thread ------------------------------------------------------------------------


@pytest.fixture
def looping(runner: Runner) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(5.0)
        assert not thread.is_alive()


def settle(sync: Sync, clock: FakeClock) -> None:
    """Wait (real time, bounded) until the loop has finished the last sync and blocks again."""
    assert clock.wait_for_waiter(sync.waits_at_last_call, timeout=TIMEOUT)


def absorbed(clock: FakeClock) -> bool:
    """The loop blocks on the clock in a wait nobody has woken: it has reacted to every
    request made so far, and its deadline was computed from the clock's present time (so
    the next `advance()` counts from there)."""
    with clock._cond:  # the fake clock's own view of its waiters
        return any(not event.is_set() for _, event in clock._waiters)


def test_loop_coalesces_and_runs_periodically(
    looping: threading.Event, runner: Runner, sync: Sync, clock: FakeClock,
) -> None:
    settle(sync, clock)
    assert sync.calls == 0  # nothing asked for, nothing due

    runner.run()
    assert sync.wait_calls(1)
    settle(sync, clock)

    for _ in range(100):  # all inside the cool-down after the first sync
        runner.run()
    wait_for(lambda: absorbed(clock), what="the loop to take in the requests and block again")
    clock.advance(MIN / 2)
    assert sync.calls == 1
    clock.advance(MIN / 2)
    assert sync.wait_calls(2)
    settle(sync, clock)
    assert sync.calls == 2

    clock.advance(MAX)
    assert sync.wait_calls(3)
    settle(sync, clock)
    assert sync.calls == 3


def test_loop_retries_after_a_failure(
    looping: threading.Event, runner: Runner, sync: Sync, clock: FakeClock,
) -> None:
    sync.fail_next = 1
    runner.run()
    assert sync.wait_calls(1)
    settle(sync, clock)
    clock.advance(RETRY - 0.5)
    assert sync.calls == 1
    clock.advance(0.5)
    assert sync.wait_calls(2)
    settle(sync, clock)
    assert sync.calls == 2


def test_an_idle_loop_does_not_spin(
    looping: threading.Event, runner: Runner, sync: Sync, clock: FakeClock,
) -> None:
    runner.run()
    assert sync.wait_calls(1)
    settle(sync, clock)
    waits = clock.waits
    threading.Event().wait(0.05)  # a spinning loop would wait (and count) thousands of times here
    assert clock.waits == waits
    assert sync.calls == 1


def test_a_request_made_before_the_loop_starts_is_kept(runner: Runner, sync: Sync, clock: FakeClock) -> None:
    runner.run()
    stop = threading.Event()
    thread = threading.Thread(target=runner.loop, args=(stop,), daemon=True)
    thread.start()
    try:
        assert sync.wait_calls(1)
    finally:
        stop.set()
        thread.join(5.0)
    assert not thread.is_alive()


# -- full sync schedule --------------------------------------------------------------------------


def test_full_sync_at_start_hourly_and_after_failure(clock: FakeClock) -> None:
    schedule = FullSyncSchedule(3600.0, clock=clock)
    assert schedule.due()
    schedule.record_success(full=True)
    assert not schedule.due()

    clock.advance(3599.0)
    schedule.record_success(full=False)  # a partial sync does not restart the hour
    assert not schedule.due()
    clock.advance(1.0)
    assert schedule.due()
    schedule.record_success(full=True)
    assert not schedule.due()

    schedule.record_failure()
    assert schedule.due()
    schedule.record_success(full=True)
    schedule.request()
    assert schedule.due()
