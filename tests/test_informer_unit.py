"""Informer logic against a scripted in-process API (no HTTP): relist diffs, 410, backoff."""

from __future__ import annotations

import random
import threading
from typing import Any, Iterator

from kubectl_proxyctl.errors import ClusterError
from kubectl_proxyctl.kube.informer import Backoff, Informer


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv)}}


class ScriptedAPI:
    """`lists` and `watches` are consumed in order; a watch item is a list of events or an exception."""

    def __init__(self, lists: list[tuple[list[dict[str, Any]], str]], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def list(self, resource: str, namespace: str | None = None, **_: Any) -> tuple[list[dict[str, Any]], str]:
        self.calls.append(("list", ""))
        items, rv = self.lists.pop(0)
        return [dict(i) for i in items], rv

    def watch(self, resource: str, resource_version: str, **_: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("watch", resource_version))
        if not self.watches:
            self.done.set()
            threading.Event().wait(0.05)
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


def run_until_done(inf: Informer, api: ScriptedAPI) -> None:
    inf.start()
    assert api.done.wait(5)
    inf.stop()


def test_relist_after_410_emits_only_real_changes() -> None:
    events: list[tuple[str, str]] = []
    api = ScriptedAPI(
        lists=[([obj("a", 1), obj("b", 2), obj("c", 3)], "3"),
               ([obj("a", 1), obj("c", 7), obj("d", 8)], "8")],
        watches=[
            [{"type": "MODIFIED", "object": obj("b", 4)},
             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}],
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                          "message": "too old resource version: 5 (6)"}}],
        ],
    )
    inf = Informer(api, "services", lambda t, o: events.append((t, o["metadata"].get("name", "-"))))
    run_until_done(inf, api)
    assert events == [
        ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"), ("SYNCED", "-"),
        ("MODIFIED", "b"),
        # relist: b vanished, c changed, d is new, a unchanged → nothing for a
        ("DELETED", "b"), ("MODIFIED", "c"), ("ADDED", "d"),
    ]
    # clean end of stream → re-watch from the bookmark's RV; after the relist, from the list's RV
    assert api.calls == [("list", ""), ("watch", "3"), ("watch", "5"), ("list", ""), ("watch", "8")]
    assert sorted(o["metadata"]["name"] for o in inf.items()) == ["a", "c", "d"]


def test_replayed_added_events_are_not_duplicated() -> None:
    events: list[str] = []
    api = ScriptedAPI(lists=[([obj("a", 1)], "1")],
                      watches=[[{"type": "ADDED", "object": obj("a", 1)}, {"type": "ADDED", "object": obj("b", 2)}]])
    inf = Informer(api, "services", lambda t, o: events.append(t))
    run_until_done(inf, api)
    assert events == ["ADDED", "SYNCED", "ADDED"]


def test_http_410_on_watch_open_relists() -> None:
    api = ScriptedAPI(lists=[([], "1"), ([obj("x", 9)], "9")], watches=[ClusterError("gone", 410)])
    inf = Informer(api, "services")
    run_until_done(inf, api)
    assert [c[0] for c in api.calls] == ["list", "watch", "list", "watch"]
    assert len(inf) == 1


def test_errors_back_off_and_do_not_stop_the_loop() -> None:
    failures = [ClusterError("boom", 500) for _ in range(3)]
    api = ScriptedAPI(lists=[([], "1")], watches=[*failures, [{"type": "ADDED", "object": obj("a", 2)}]])
    inf = Informer(api, "services", backoff=Backoff(initial=0.01, maximum=0.05))
    run_until_done(inf, api)
    assert len(inf) == 1 and inf.last_error == ""


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(initial=0.2, maximum=30.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    for i, d in enumerate(delays):
        base = min(0.2 * 2 ** i, 30.0)
        assert 0.5 * base <= d <= 1.5 * base
    b.reset()
    assert b.next() <= 0.3


class AbsentAPI:
    """A server that does not serve the resource (or forbids it): every list is refused."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.lists = 0

    def list(self, resource: str, namespace: str | None = None, **_: Any) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        raise ClusterError(f"the server could not find the requested resource ({resource})", self.status)

    def watch(self, resource: str, resource_version: str, **_: Any) -> Iterator[dict[str, Any]]:
        raise AssertionError("never watched")


def test_an_optional_resource_the_server_lacks_counts_as_listed_and_empty() -> None:
    for status in (404, 403):
        api = AbsentAPI(status)
        events: list[str] = []
        inf = Informer(api, "servicecidrs", lambda typ, _o: events.append(typ), optional=True)
        inf.start()
        assert inf.synced.wait(5) and len(inf) == 0 and inf.healthy.is_set()
        inf.stop()
        assert events == ["SYNCED"] and api.lists == 1


def test_a_required_resource_the_server_lacks_never_counts_as_listed() -> None:
    api = AbsentAPI(404)
    inf = Informer(api, "services", backoff=Backoff(initial=0.01, maximum=0.02))
    inf.start()
    assert not inf.synced.wait(0.3)
    inf.stop()
    assert api.lists > 1 and "could not find" in inf.last_error
