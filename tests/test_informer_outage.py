"""An informer after an outage: back in about a second when the server could not be reached,
backed off when a reachable server keeps failing."""

from __future__ import annotations

import threading
from typing import Any, Iterator

from kubectl_proxyctl.errors import ClusterError
from kubectl_proxyctl.kube.informer import UNREACHABLE_JITTER, UNREACHABLE_RETRY, Informer


class RecordingStop(threading.Event):
    """`stopped` that records every wait and stops the loop after `limit` of them."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


class FailingAPI:
    def __init__(self, status: int | None, failures: int) -> None:
        self.status, self.failures, self.calls = status, failures, 0

    def list(self, resource: str, namespace: str | None = None, **_: Any) -> tuple[list[dict[str, Any]], str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ClusterError("cannot reach the API server" if self.status is None else "server error", self.status)
        return [{"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "1"}}], "1"

    def watch(self, resource: str, resource_version: str, **_: Any) -> Iterator[dict[str, Any]]:
        raise ClusterError("cannot reach the API server", None)


def run(api: FailingAPI, waits: int) -> tuple[Informer, RecordingStop]:
    informer = Informer(api, "services")  # type: ignore[arg-type]
    stop = RecordingStop(waits)
    informer.stopped = stop
    informer.run()
    return informer, stop


def test_an_unreachable_server_is_tried_again_every_second_however_long_it_is_down() -> None:
    _, stop = run(FailingAPI(None, failures=10**6), waits=40)
    low, high = UNREACHABLE_RETRY * (1 - UNREACHABLE_JITTER), UNREACHABLE_RETRY * (1 + UNREACHABLE_JITTER)
    assert all(low <= w <= high for w in stop.waits), stop.waits  # no growth after 40 attempts


def test_a_failing_reachable_server_is_backed_off_from() -> None:
    _, stop = run(FailingAPI(500, failures=10**6), waits=12)
    assert stop.waits[-1] > 10 * stop.waits[0], stop.waits  # doubled towards the 30 s cap
    assert max(stop.waits) <= 30 * 1.5


def test_the_informer_lists_as_soon_as_the_server_answers_again() -> None:
    api = FailingAPI(None, failures=3)
    informer, stop = run(api, waits=5)
    assert informer.synced.is_set() and [o["metadata"]["name"] for o in informer.items()] == ["a"]
    assert api.calls == 4  # three refused connections, then the list that succeeded
