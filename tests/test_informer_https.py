"""The informer against the lab API server over real HTTPS with a bearer token.

Initial sync; add / modify / delete; 410 → relist with the right final state and no events
for unchanged objects; a server restart mid-watch; a failing server retried with backoff.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from apiserver_fixtures import endpoint_slice, service

from kubectl_proxyctl.errors import ClusterError
from kubectl_proxyctl.kube.client import KubeAPI, connect
from kubectl_proxyctl.kube.informer import Backoff, ClusterInformers, Informer
from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
from waiting import TIMEOUT, wait_for


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def __call__(self, typ: str, obj: dict[str, Any]) -> None:
        with self.cond:
            self.events.append((typ, (obj.get("metadata") or {}).get("name", "-")))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, str]]], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events so far: {self.events}")
                self.cond.wait(left)

    def since(self, n: int) -> list[tuple[str, str]]:
        with self.cond:
            return self.events[n:]


@pytest.fixture
def server() -> Iterator[APIServer]:
    srv = APIServer(bookmark_interval=0.5).start()
    try:
        yield srv
    finally:
        srv.stop()


def informer_for(server: APIServer, rec: Recorder, **kw: Any) -> Informer:
    api = connect(str(server.kubeconfig_path), request_timeout=5)
    return Informer(api, "services", rec, namespace="default", kind="Service", **kw)


def names(inf: Informer) -> list[str]:
    return sorted(o["metadata"]["name"] for o in inf.items())


def test_initial_sync_then_add_modify_delete(server: APIServer) -> None:
    for n in ("a", "b"):
        server.create(service(n, clusterIP="None"))
    rec = Recorder()
    inf = informer_for(server, rec).start()
    try:
        assert inf.synced.wait(TIMEOUT)
        assert rec.since(0) == [("ADDED", "a"), ("ADDED", "b"), ("SYNCED", "-")]
        n = len(rec.events)
        server.create(service("c", clusterIP="None"))
        svc = server.get("services", "a")
        assert svc is not None
        svc["metadata"].setdefault("labels", {})["x"] = "y"
        server.update(svc)
        server.delete("services", "b")
        rec.wait_for(lambda ev: len(ev) >= n + 3)
        assert rec.since(n) == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert names(inf) == ["a", "c"]
        assert inf.get("default/a")["metadata"]["labels"] == {"x": "y"}  # type: ignore[index]
    finally:
        inf.stop()


def test_410_relists_with_the_right_state_and_no_duplicate_events(server: APIServer) -> None:
    for n in ("keep", "change", "drop"):
        server.create(service(n, clusterIP="None"))
    rec = Recorder()
    inf = informer_for(server, rec, watch_timeout=1).start()
    try:
        assert inf.synced.wait(TIMEOUT)
        n = len(rec.events)
        # The informer cannot reach the server while the world changes and history is compacted.
        server.fail_with(503)
        # its watch ends (watch_timeout=1); the re-watch attempts now fail
        wait_for(lambda: "503" in inf.last_error, what="the informer's requests to fail with the server's 503")
        changed = server.get("services", "change")
        assert changed is not None
        changed["metadata"]["labels"] = {"v": "2"}
        server.update(changed)
        server.delete("services", "drop")
        server.create(service("new", clusterIP="None"))
        server.compact()
        server.clear_fault()
        rec.wait_for(lambda ev: ("ADDED", "new") in ev[n:])
        # A change made after the recovery is a barrier: every event the recovery caused
        # (duplicates included) comes before it.
        server.create(service("barrier", clusterIP="None"))
        rec.wait_for(lambda ev: ("ADDED", "barrier") in ev[n:])
        got = rec.since(n)
        assert got[-1] == ("ADDED", "barrier")
        got = got[:-1]
        assert sorted(got) == [("ADDED", "new"), ("DELETED", "drop"), ("MODIFIED", "change")]
        assert not any(name == "keep" for _, name in got), "unchanged objects must not emit events"
        assert names(inf) == ["barrier", "change", "keep", "new"]
    finally:
        inf.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_restart_mid_watch(tmp_path: Path) -> None:
    port = _free_port()
    state = tmp_path / "state"
    first = APIServer(port=port, state_dir=state, bookmark_interval=0.5).start()
    rec = Recorder()
    inf: Informer | None = None
    try:
        first.create(service("before", clusterIP="None"))
        api = connect(str(first.kubeconfig_path), request_timeout=3)
        inf = Informer(api, "services", rec, namespace="default", kind="Service",
                       backoff=Backoff(initial=0.1, maximum=0.5)).start()
        assert inf.synced.wait(TIMEOUT)
        first.stop()
        wait_for(lambda: not inf.healthy.is_set(), what="the informer to notice that the server is gone")
        second = APIServer(port=port, state_dir=state, bookmark_interval=0.5).start()
        try:
            second.create(service("after", clusterIP="None"))
            rec.wait_for(lambda ev: ("ADDED", "after") in ev)
            assert names(inf) == ["after", "before"]
            assert rec.events.count(("ADDED", "before")) == 1, "the restart must not replay known objects"
        finally:
            second.stop()
    finally:
        if inf is not None:
            inf.stop()
        first.stop()


class CountingAPI:
    """Wraps a KubeAPI and counts every request the informer makes (and notes when)."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        self.requests = 0
        self.times: list[float] = []
        self.lock = threading.Lock()

    def _count(self) -> None:
        with self.lock:
            self.requests += 1
            self.times.append(time.monotonic())

    def list(self, *a: Any, **kw: Any) -> Any:
        self._count()
        return self.api.list(*a, **kw)

    def watch(self, *a: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        self._count()
        return self.api.watch(*a, **kw)

    def close_stream(self) -> None:
        self.api.close_stream()


class RecordingBackoff(Backoff):
    """The default backoff (0.2 s doubling, ±50 %), noting every delay it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


def test_failing_server_is_retried_with_backoff_not_a_hot_loop(server: APIServer) -> None:
    server.fail_with(500)
    counting = CountingAPI(connect(str(server.kubeconfig_path), request_timeout=2))
    backoff = RecordingBackoff()
    inf = Informer(counting, "services", namespace="default", backoff=backoff).start()
    try:
        wait_for(lambda: counting.requests >= 4, what="four failed attempts")
        with counting.lock:
            requests, times = counting.requests, list(counting.times)
        delays = list(backoff.delays)
        assert not inf.synced.is_set()
        assert "500" in inf.last_error
        # Not a hot loop: every failed attempt was followed by a backoff delay, the delays
        # double (within the jitter), and no retry came before its delay was over.
        assert 4 <= requests <= 10, requests
        assert len(delays) >= requests - 1, (requests, delays)
        for i, delay in enumerate(delays[:3]):
            assert 0.1 * 2 ** i <= delay <= 0.3 * 2 ** i, delays
        for i in range(min(len(times), len(delays) + 1) - 1):
            assert times[i + 1] - times[i] >= delays[i] * 0.99, (i, times, delays)
        server.clear_fault()
        assert inf.synced.wait(TIMEOUT + 45)  # the backoff is capped at 30 s (±50 %)
    finally:
        inf.stop()


def test_cluster_informers_track_services_slices_and_nodes(server: APIServer) -> None:
    server.create(service("web", clusterIP="10.96.0.10"))
    server.create(endpoint_slice("web-1", "web", ["10.244.1.5"]))
    unowned = endpoint_slice("stray", "web", ["10.244.1.6"])
    del unowned["metadata"]["labels"]["kubernetes.io/service-name"]
    server.create(unowned)
    seen: list[tuple[str, str]] = []
    informers = ClusterInformers(lambda: connect(str(server.kubeconfig_path), request_timeout=5),
                                 on_change=lambda kind, typ, obj: seen.append((kind, typ)))
    informers.start()
    try:
        assert informers.wait_synced(TIMEOUT)
        kinds = sorted(o["kind"] for o in informers.objects())
        assert kinds == ["EndpointSlice", "Service"], "slices without the service-name label are not watched"
        assert ("Service", "ADDED") in seen and ("EndpointSlice", "ADDED") in seen
    finally:
        informers.stop()


def test_wrong_token_is_a_clear_401(server: APIServer, tmp_path: Path) -> None:
    import yaml

    cfg = yaml.safe_load(server.kubeconfig_path.read_text())
    cfg["users"][0]["user"]["token"] = "wrong"
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ClusterError) as err:
        connect(str(bad)).list("services")
    assert err.value.status == 401
    assert "rejected our credentials (401 Unauthorized)" in str(err.value)


def test_unreachable_server_fails_within_the_request_timeout(server: APIServer, tmp_path: Path) -> None:
    """A server that accepts connections and never answers: the error comes within the timeout."""
    import yaml

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        cfg = yaml.safe_load(server.kubeconfig_path.read_text())
        cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{silent.getsockname()[1]}"
        bad = tmp_path / "kubeconfig"
        bad.write_text(yaml.safe_dump(cfg))
        started = time.monotonic()
        with pytest.raises(ClusterError) as err:
            connect(str(bad), request_timeout=1.0).list("services")
        # The request timeout ended the wait (the silent server would hold it forever); the
        # bound is generous, the message says which timeout it was.
        assert time.monotonic() - started < TIMEOUT
        assert "did not answer within 1s (--request-timeout)" in str(err.value)
    finally:
        silent.close()
