"""One watch request: a stream of `{"type": ..., "object": ...}` lines, as a real server sends.

Start: with `resourceVersion` unset, "" or "0" the stream first replays the current
objects as synthetic ADDED events; with an RV it continues from the store's history after
that RV, or sends one ERROR event (410 Expired, "too old resource version") and ends when
the history no longer reaches back that far. A watcher that falls behind the history while
streaming gets the same ERROR.

Selectors are applied to both the old and the new state of each change, so an object
that starts matching arrives as ADDED and one that stops matching leaves as DELETED (with
its previous content and the new RV), like the watch cache of kube-apiserver.

The stream ends cleanly (final chunk) at `timeoutSeconds`, when the server stops, or when
the client goes away (checked at least once a second, without writing). BOOKMARK events,
if asked for, carry only kind/apiVersion/metadata.resourceVersion and are sent every
`bookmark_interval` seconds.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from kubectl_proxyctl.lab.apiserver import status, tables
from kubectl_proxyctl.lab.apiserver.resources import ResourceType
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.apiserver.store import (
    ADDED, DELETED, MODIFIED, Event, ObjectStore, Predicate, StoredObject, encode_json,
)

POLL_SECONDS = 1.0
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class EventEncoder(Protocol):
    def event(self, kind: str, so: StoredObject) -> bytes: ...


class JSONEvents:
    """Events carrying the objects themselves."""

    def event(self, kind: str, so: StoredObject) -> bytes:
        return b'{"type":"' + kind.encode() + b'","object":' + so.raw + b"}\n"


class TableEvents:
    """Events carrying one-row Tables (`kubectl get -w`)."""

    def __init__(self, resource: ResourceType, include_object: str, api_version: str) -> None:
        self.resource, self.include_object, self.api_version = resource, include_object, api_version

    def event(self, kind: str, so: StoredObject) -> bytes:
        table = tables.table(
            self.resource, [so.obj], self.include_object, {"resourceVersion": str(so.rv)}, self.api_version
        )
        return encode_json({"type": kind, "object": table}) + b"\n"


class WatchStream:
    def __init__(
        self,
        store: ObjectStore,
        resource: ResourceType,
        namespace: str | None,
        predicate: Predicate | None,
        start_rv: int | None,
        encoder: EventEncoder,
        bookmarks: bool = False,
        bookmark_interval: float = 5.0,
        timeout: float | None = None,
        initial_events_end: bool = False,
    ) -> None:
        self.store, self.resource, self.namespace, self.predicate = store, resource, namespace, predicate
        self.start_rv, self.encoder = start_rv, encoder
        self.bookmarks, self.bookmark_interval = bookmarks, max(0.05, bookmark_interval)
        self.timeout, self.initial_events_end = timeout, initial_events_end

    # --- encoding -------------------------------------------------------------------------------

    def _bookmark(self, rv: int, annotations: dict[str, str] | None = None) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = annotations
        obj = {"kind": self.resource.kind, "apiVersion": self.resource.api_version, "metadata": meta}
        return encode_json({"type": "BOOKMARK", "object": obj}) + b"\n"

    @staticmethod
    def _error(err: APIError) -> bytes:
        return encode_json({"type": "ERROR", "object": err.to_status()}) + b"\n"

    def _matches(self, so: StoredObject) -> bool:
        return self.predicate is None or self.predicate(so.obj)

    def _translate(self, ev: Event) -> bytes | None:
        if ev.resource is not self.resource:
            return None
        if self.namespace is not None and ev.key[0] != self.namespace:
            return None
        now_matches = ev.type != DELETED and self._matches(ev.obj)
        was_matching = ev.prev is not None and self._matches(ev.prev)
        if now_matches:
            return self.encoder.event(MODIFIED if was_matching else ADDED, ev.obj)
        if not was_matching:
            return None
        if ev.type == DELETED:
            return self.encoder.event(DELETED, ev.obj)
        assert ev.prev is not None
        return self.encoder.event(DELETED, StoredObject.seal(ev.prev.thaw(), ev.rv))

    # --- streaming ------------------------------------------------------------------------------

    def _begin(self) -> tuple[list[StoredObject], int]:
        """The synthetic initial objects and the RV to continue after (410 if too old)."""
        with self.store.lock:
            if self.start_rv is None:
                initial = [so for so in self.store.objects(self.resource, self.namespace) if self._matches(so)]
                return initial, self.store.resource_version
            if self.start_rv < self.store.compacted_rv:
                raise status.too_old_resource_version(self.start_rv, self.store.compacted_rv)
            return [], self.start_rv

    def run(self, send: Callable[[bytes], None], client_gone: Callable[[], bool]) -> None:
        """Stream until timeout, server stop or disconnect. `send` raises OSError when the client is gone."""
        started = time.monotonic()
        deadline = started + self.timeout if self.timeout else None
        try:
            initial, last_rv = self._begin()
        except APIError as err:
            send(self._error(err))
            return
        if initial:
            send(b"".join(self.encoder.event(ADDED, so) for so in initial))
        if self.initial_events_end:
            send(self._bookmark(last_rv, {INITIAL_EVENTS_END: "true"}))
        next_bookmark = started + self.bookmark_interval
        while True:
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or self.store.closed or client_gone():
                return
            wait = POLL_SECONDS
            if self.bookmarks:
                wait = min(wait, next_bookmark - now)
            if deadline is not None:
                wait = min(wait, deadline - now)
            self.store.wait(last_rv, max(0.0, wait))
            if self.store.closed:
                return
            try:
                events = self.store.events_after(last_rv)
            except APIError as err:
                send(self._error(err))
                return
            if events:
                last_rv = events[-1].rv
                chunk = b"".join(filter(None, map(self._translate, events)))
                if chunk:
                    send(chunk)
            if self.bookmarks and time.monotonic() >= next_bookmark:
                send(self._bookmark(last_rv))
                next_bookmark = time.monotonic() + self.bookmark_interval
