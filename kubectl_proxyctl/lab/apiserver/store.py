"""The object store: current objects, one resourceVersion counter, and a bounded event history.

Theory of operation
-------------------
Every write (create, update, delete) takes the next value of one global counter as its
resourceVersion and appends exactly one `Event` to the history, so the history holds
consecutive RVs: `history[i].rv == compacted_rv + 1 + i`. That makes the three things an
informer needs cheap and exact:

* watch from RV n: the events after n are a slice of the history; if n is older than the
  history (`n < compacted_rv`) the watch must fail with 410 Expired and the client relists;
* consistent paginated lists: a continue token remembers the RV of the first page; later
  pages are served from the state *at that RV*, rebuilt by undoing (with each event's
  `prev`) the events of that resource that happened since — or 410 if they are no longer
  in the history;
* bookmarks: the current counter value is a valid RV to resume from.

Objects are stored as `StoredObject`: the dict plus its JSON bytes, serialized once per
write, so lists and watch events are byte concatenation. A stored dict is never mutated;
writers always store a new dict. With a `Persistence`, every write is also journaled, and a
restarted store continues the counter where it stopped with an empty history (so watches
from before the restart get 410).

The store knows nothing about validation or defaults (see registry.py); it only enforces
ordering. All methods are thread-safe; `lock` is re-entrant so the registry can hold it
across a read-modify-write.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import itertools
import json
import logging
import sqlite3
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kubectl_proxyctl.lab.apiserver import status
from kubectl_proxyctl.lab.apiserver.resources import RESOURCES, ResourceType

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace or "", name)
Predicate = Callable[[dict[str, Any]], bool]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as stored: never mutated, serialized once."""

    obj: dict[str, Any]
    raw: bytes
    rv: int

    @classmethod
    def seal(cls, obj: dict[str, Any], rv: int) -> StoredObject:
        """Stamp `rv` into the object's metadata and freeze it (the dict becomes the store's)."""
        obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
        return cls(obj, encode_json(obj), rv)

    @property
    def key(self) -> Key:
        meta = self.obj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    def thaw(self) -> dict[str, Any]:
        """A private, mutable deep copy."""
        return json.loads(self.raw)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Event:
    """One write. For DELETED, `obj` is the last state stamped with the deletion's RV."""

    rv: int
    type: str
    resource: ResourceType
    key: Key
    obj: StoredObject
    prev: StoredObject | None


@dataclass(frozen=True)
class Page:
    items: list[StoredObject]
    resource_version: int
    continue_token: str = ""
    remaining: int | None = None


class Persistence:
    """A journal of the current objects and the RV counter, in sqlite (one file)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (resource TEXT, namespace TEXT, name TEXT, "
            "body BLOB, PRIMARY KEY (resource, namespace, name))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")

    def load(self) -> tuple[int, list[tuple[str, bytes]]]:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'resourceVersion'").fetchone()
        rows = self._db.execute("SELECT resource, body FROM objects").fetchall()
        return (int(row[0]) if row else 0), [(r, bytes(b)) for r, b in rows]

    def save(
        self,
        rv: int,
        upserts: Iterable[tuple[str, str, str, bytes]],
        deletes: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", upserts)
            db.executemany("DELETE FROM objects WHERE resource = ? AND namespace = ? AND name = ?", deletes)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('resourceVersion', ?)", (str(rv),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


def _encode_continue(rv: int, key: Key) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": list(key)}
    return base64.urlsafe_b64encode(encode_json(token)).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, Key]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        rv, (ns, name) = int(data["rv"]), data["start"]
        return rv, (str(ns), str(name))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise status.bad_request(f"continue key is not valid: {exc}") from None


INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


class ObjectStore:
    def __init__(self, history: int = 10000, persistence: Persistence | None = None) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._objects: dict[ResourceType, dict[Key, StoredObject]] = {r: {} for r in RESOURCES}
        self._keys: dict[ResourceType, list[Key]] = {r: [] for r in RESOURCES}
        self._history: deque[Event] = deque()
        self._history_size = max(1, history)
        self._rv = 0
        self._compacted_rv = 0
        self._persistence = persistence
        self._closed = False
        # Called under the lock after every committed write, in RV order. Keep them quick.
        self.observers: list[Callable[[Event], None]] = []
        if persistence is not None:
            self._load(persistence)

    def _load(self, persistence: Persistence) -> None:
        by_id = {r.id: r for r in RESOURCES}
        rv, rows = persistence.load()
        for rid, raw in rows:
            r = by_id.get(rid)
            if r is None:
                continue
            obj = json.loads(raw)
            so = StoredObject(obj, raw, int(obj["metadata"]["resourceVersion"]))
            self._objects[r][so.key] = so
            rv = max(rv, so.rv)
        for r in RESOURCES:
            self._keys[r] = sorted(self._objects[r])
        self._rv = self._compacted_rv = rv

    # --- reading ----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def compacted_rv(self) -> int:
        """Every event with a larger RV is still in the history."""
        return self._compacted_rv

    def get(self, r: ResourceType, namespace: str, name: str) -> StoredObject | None:
        return self._objects[r].get((namespace, name))

    def objects(self, r: ResourceType, namespace: str | None = None) -> list[StoredObject]:
        """The current objects in key order (one namespace, or all)."""
        with self.lock:
            objs = self._objects[r]
            return [objs[k] for k in self._range(r, namespace)]

    def _range(self, r: ResourceType, namespace: str | None, after: Key | None = None) -> Iterator[Key]:
        keys = self._keys[r]
        if after is not None:
            lo = bisect.bisect_right(keys, after)
        elif namespace is not None:
            lo = bisect.bisect_left(keys, (namespace,))
        else:
            lo = 0
        for i in range(lo, len(keys)):
            k = keys[i]
            if namespace is not None and k[0] != namespace:
                return
            yield k

    def list_page(
        self,
        r: ResourceType,
        namespace: str | None = None,
        predicate: Predicate | None = None,
        limit: int = 0,
        continue_token: str = "",
        exact_rv: int | None = None,
    ) -> Page:
        """One page of a list, consistent with the page before it (see the module docstring)."""
        with self.lock:
            after: Key | None = None
            at_rv = self._rv
            if continue_token:
                at_rv, after = _decode_continue(continue_token)
                if namespace is not None and after[0] != namespace:
                    raise status.bad_request("continue key is not valid: namespace mismatch")
            elif exact_rv is not None:
                at_rv = exact_rv
            if at_rv > self._rv:
                raise status.too_large_resource_version(at_rv, self._rv)
            if at_rv < self._compacted_rv:
                if continue_token:
                    raise status.expired(INCONSISTENT_CONTINUE)
                raise status.too_old_resource_version(at_rv, self._compacted_rv)
            overlay = self._overlay(r, at_rv)
            return self._page(r, namespace, predicate, limit, after, at_rv, overlay)

    def _overlay(self, r: ResourceType, at_rv: int) -> dict[Key, StoredObject | None]:
        """For keys of `r` written after `at_rv`: their state at `at_rv` (None: absent)."""
        overlay: dict[Key, StoredObject | None] = {}
        if at_rv >= self._rv:
            return overlay
        start = at_rv - self._compacted_rv
        for ev in reversed(list(itertools.islice(self._history, start, None))):
            if ev.resource is r:
                overlay[ev.key] = ev.prev
        return overlay

    def _page(
        self,
        r: ResourceType,
        namespace: str | None,
        predicate: Predicate | None,
        limit: int,
        after: Key | None,
        at_rv: int,
        overlay: dict[Key, StoredObject | None],
    ) -> Page:
        objs = self._objects[r]
        keys: Iterator[Key] = self._range(r, namespace, after)
        if overlay:
            extra = sorted(
                k for k in overlay
                if (after is None or k > after) and (namespace is None or k[0] == namespace)
            )
            keys = (k for k, _ in itertools.groupby(heapq.merge(keys, extra)))

        def state(k: Key) -> StoredObject | None:
            return overlay[k] if k in overlay else objs.get(k)

        items: list[StoredObject] = []
        for k in keys:
            so = state(k)
            if so is None or (predicate is not None and not predicate(so.obj)):
                continue
            items.append(so)
            if limit and len(items) >= limit:
                break
        else:
            return Page(items, at_rv)
        if not any(state(k) is not None for k in keys):
            return Page(items, at_rv)
        last = items[-1].key
        remaining = None
        if predicate is None and not overlay:
            all_keys = self._keys[r]
            end = len(all_keys) if namespace is None else bisect.bisect_left(all_keys, (namespace + "\0",))
            remaining = end - bisect.bisect_right(all_keys, last)
        return Page(items, at_rv, _encode_continue(at_rv, last), remaining)

    def events_after(self, rv: int) -> list[Event]:
        """The events with a larger RV than `rv`; 410 Expired if some are no longer kept."""
        with self.lock:
            if rv < self._compacted_rv:
                raise status.too_old_resource_version(rv, self._compacted_rv)
            return list(itertools.islice(self._history, max(0, rv - self._compacted_rv), None))

    def wait(self, after_rv: int, timeout: float) -> None:
        """Block until the RV moves past `after_rv`, the store closes, or `timeout` passes."""
        with self._changed:
            if self._rv <= after_rv and not self._closed:
                self._changed.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- writing ------------------------------------------------------------------------------------

    def write(self, r: ResourceType, obj: dict[str, Any]) -> Event:
        """Create or replace `obj` (the dict becomes the store's) at the next RV."""
        with self.lock:
            self._rv += 1
            so = StoredObject.seal(obj, self._rv)
            key = so.key
            objs = self._objects[r]
            prev = objs.get(key)
            if prev is None:
                bisect.insort(self._keys[r], key)
            objs[key] = so
            ev = self._record(r, ADDED if prev is None else MODIFIED, key, so, prev)
            if self._persistence is not None:
                self._persistence.save(self._rv, [(r.id, key[0], key[1], so.raw)])
            self._committed([ev])
            return ev

    def remove(self, r: ResourceType, namespace: str, name: str) -> Event:
        """Delete an existing object at the next RV (KeyError if it does not exist)."""
        with self.lock:
            key = (namespace, name)
            prev = self._objects[r].pop(key)
            del self._keys[r][bisect.bisect_left(self._keys[r], key)]
            self._rv += 1
            last = StoredObject.seal(prev.thaw(), self._rv)
            ev = self._record(r, DELETED, key, last, prev)
            if self._persistence is not None:
                self._persistence.save(self._rv, [], [(r.id, namespace, name)])
            self._committed([ev])
            return ev

    def write_many(self, items: Iterable[tuple[ResourceType, dict[str, Any]]]) -> int:
        """Create or replace many objects at once (one journal transaction). Returns the last RV."""
        with self.lock:
            events: list[Event] = []
            touched: set[ResourceType] = set()
            for r, obj in items:
                self._rv += 1
                so = StoredObject.seal(obj, self._rv)
                prev = self._objects[r].get(so.key)
                self._objects[r][so.key] = so
                if prev is None:
                    self._keys[r].append(so.key)
                    touched.add(r)
                events.append(self._record(r, ADDED if prev is None else MODIFIED, so.key, so, prev))
            for r in touched:
                self._keys[r].sort()
            if self._persistence is not None:
                self._persistence.save(
                    self._rv, [(e.resource.id, e.key[0], e.key[1], e.obj.raw) for e in events]
                )
            self._committed(events)
            return self._rv

    def _record(
        self, r: ResourceType, kind: str, key: Key, obj: StoredObject, prev: StoredObject | None
    ) -> Event:
        ev = Event(self._rv, kind, r, key, obj, prev)
        if len(self._history) >= self._history_size:
            self._compacted_rv = self._history.popleft().rv
        self._history.append(ev)
        return ev

    def _committed(self, events: list[Event]) -> None:
        self._changed.notify_all()
        for ev in events:
            for observe in list(self.observers):
                try:
                    observe(ev)
                except Exception:  # an observer must not fail the write it observes
                    log.exception("store observer %r failed on %s %s", observe, ev.type, ev.key)

    def compact(self) -> int:
        """Forget the whole history: watches and continues from older RVs now get 410."""
        with self.lock:
            self._history.clear()
            self._compacted_rv = self._rv
            return self._rv

    def close(self) -> None:
        """Wake every waiting watch for good and close the journal."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            if self._persistence is not None:
                self._persistence.close()
                self._persistence = None
