"""List-then-watch informers that never lose an update.

Theory of operation (after client-go's reflector and kopf's watcher):

1. **List** every object (paginated). Compare with the store: objects that vanished since the
   last list are emitted as DELETED, new ones as ADDED, changed ones (different
   resourceVersion) as MODIFIED; unchanged objects emit nothing. Then emit SYNCED once per
   informer life (`synced` event is set) — consumers must not act on a partial view.
2. **Watch** from the list's resourceVersion with bookmarks. Every event advances the
   informer's resourceVersion, BOOKMARKs included, so a re-watch resumes exactly there.
3. A stream that ends cleanly (server `timeoutSeconds`, restart) is re-watched at once from the
   last resourceVersion. A 410 Gone / Expired (in the stream or as the HTTP status) means our
   resourceVersion is too old: relist (step 1) immediately.
4. A server that cannot be reached (connection refused or timed out, a stream broken off) is
   tried again every second (±25 %): a connection attempt costs a server that is down
   nothing, and when it comes back every informer resumes within about a second instead of
   after a backoff that grew during the outage. A server that answers with an error (5xx,
   403...) is backed off from with jittered exponential backoff (0.2 s doubling to 30 s,
   ±50 %), reset after a watch that delivered events. Then it re-watches, or relists when no
   list has succeeded yet (a 410 on the re-watch relists too).

The store keeps plain dicts keyed by `namespace/name`. It is guarded by a lock; readers get a
consistent copy with `items()`.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Callable, Iterator, Protocol

from kubectl_proxyctl.errors import ClusterError

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Handler = Callable[[str, JSON], None]  # (event type, object); type is ADDED|MODIFIED|DELETED|SYNCED


class WatchAPI(Protocol):
    def list(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, page_size: int = 500) -> tuple[list[JSON], str]: ...

    def watch(self, resource: str, resource_version: str, *, namespace: str | None = None,
              label_selector: str | None = None, timeout_seconds: int = 300) -> Iterator[JSON]: ...


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410 / ERROR Expired)."""


def object_key(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Backoff:
    """Jittered exponential backoff; `next()` returns the delay to wait."""

    def __init__(self, initial: float = 0.2, maximum: float = 30.0, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        self.initial, self.maximum, self.jitter = initial, maximum, jitter
        self._current = initial
        self._rng = rng or random.Random()

    def next(self) -> float:
        base = self._current
        self._current = min(self._current * 2, self.maximum)
        return base * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._current = self.initial


UNREACHABLE_RETRY = 1.0  # seconds between attempts while the server cannot be reached
UNREACHABLE_JITTER = 0.25


OPTIONAL_RETRY = 300.0  # seconds between asks for an optional resource the server did not give


class Informer:
    """One resource kind: list, watch, relist on 410, back off on errors."""

    def __init__(
        self, api: WatchAPI, resource: str, handler: Handler | None = None, *,
        namespace: str | None = None, label_selector: str | None = None,
        watch_timeout: int = 300, page_size: int = 500, backoff: Backoff | None = None,
        kind: str | None = None, optional: bool = False,
    ) -> None:
        self.api, self.resource = api, resource
        # An optional resource the server does not serve (404) or lets us not read (403)
        # counts as listed and empty; it is asked again every OPTIONAL_RETRY seconds.
        self.optional = optional
        self.handler = handler or (lambda _t, _o: None)
        self.namespace, self.label_selector = namespace, label_selector
        self.watch_timeout, self.page_size = watch_timeout, page_size
        self.backoff = backoff or Backoff()
        self.unreachable_retry = UNREACHABLE_RETRY
        self._rng = random.Random()
        self._outage = False  # the server could not be reached at the last attempt
        self.kind = kind
        self.resource_version = ""
        self.synced = threading.Event()
        self.stopped = threading.Event()
        self.last_error: str = ""
        self.healthy = threading.Event()  # set while the last request succeeded
        self._store: dict[str, JSON] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- store -----------------------------------------------------------------------

    def items(self) -> list[JSON]:
        with self._lock:
            return list(self._store.values())

    def get(self, key: str) -> JSON | None:
        with self._lock:
            return self._store.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    # --- the loop ----------------------------------------------------------------------

    def relist(self) -> None:
        items, rv = self.api.list(
            self.resource, self.namespace, label_selector=self.label_selector, page_size=self.page_size
        )
        fresh: dict[str, JSON] = {}
        for obj in items:
            if self.kind:
                obj.setdefault("kind", self.kind)
            fresh[object_key(obj)] = obj
        with self._lock:
            old = self._store
            self._store = fresh
        events: list[tuple[str, JSON]] = [("DELETED", old[k]) for k in sorted(old.keys() - fresh.keys())]
        for k, obj in fresh.items():
            prev = old.get(k)
            if prev is None:
                events.append(("ADDED", obj))
            elif (prev.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get("resourceVersion"):
                events.append(("MODIFIED", obj))
        self.resource_version = rv
        for typ, obj in events:
            self.handler(typ, obj)
        if not self.synced.is_set():
            self.synced.set()
            self.handler("SYNCED", {"metadata": {"resourceVersion": rv}})

    def _apply(self, event: JSON) -> bool:
        """Apply one watch event; returns True when it changed the store."""
        typ = event.get("type")
        obj = event.get("object") or {}
        if typ == "ERROR":
            code = obj.get("code")
            if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise Gone(obj.get("message") or "resource version too old")
            raise ClusterError(f"watch of {self.resource} failed: {obj.get('message') or obj}", code)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if typ == "BOOKMARK":
            return False
        if typ not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("ignoring a watch event of unknown type %r", typ)
            return False
        if self.kind:
            obj.setdefault("kind", self.kind)
        key = object_key(obj)
        with self._lock:
            if typ == "DELETED":
                if self._store.pop(key, None) is None:
                    return False
            else:
                prev = self._store.get(key)
                if prev is not None and (prev.get("metadata") or {}).get("resourceVersion") == rv:
                    return False  # a replayed event we already hold
                typ = "MODIFIED" if prev is not None else "ADDED"
                self._store[key] = obj
        self.handler(typ, obj)
        return True

    def run(self) -> None:
        """Run until stop(); never raises for API trouble."""
        need_list = True
        while not self.stopped.is_set():
            try:
                if need_list:
                    self.relist()
                    need_list = False
                    self._reached()
                got_events = False
                for event in self.api.watch(
                    self.resource, self.resource_version, namespace=self.namespace,
                    label_selector=self.label_selector, timeout_seconds=self.watch_timeout,
                ):
                    if self.stopped.is_set():
                        return
                    self._apply(event)
                    got_events = True
                    self._reached()
                if got_events:
                    self.backoff.reset()
                self.last_error = ""
            except Gone as exc:
                log.info("%s: %s; relisting", self.resource, exc)
                need_list = True
            except ClusterError as exc:
                if self.stopped.is_set():
                    return
                if self.optional and exc.status in (403, 404):
                    self._absent(exc)
                    need_list = True
                    continue
                if exc.status == 410:
                    log.info("%s: resource version expired; relisting", self.resource)
                    need_list = True
                    continue
                self.healthy.clear()
                self.last_error = str(exc)
                if exc.status is None:  # not reached: try again soon, it costs the server nothing
                    delay = self.unreachable_retry * self._rng.uniform(1 - UNREACHABLE_JITTER, 1 + UNREACHABLE_JITTER)
                    # one warning per outage, then quieter: the retries are frequent
                    log.log(logging.INFO if self._outage else logging.WARNING,
                            "%s: %s; retrying every %.0fs", self.resource, exc, self.unreachable_retry)
                    self._outage = True
                else:
                    delay = self.backoff.next()
                    log.warning("%s: %s; retrying in %.1fs", self.resource, exc, delay)
                self.stopped.wait(delay)
            except Exception as exc:  # a bug in a handler must not kill the watch silently
                if self.stopped.is_set():
                    return
                self.healthy.clear()
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = self.backoff.next()
                log.exception("%s: unexpected error; retrying in %.1fs", self.resource, delay)
                self.stopped.wait(delay)

    def _absent(self, exc: ClusterError) -> None:
        """An optional resource is not there for us: empty, synced, asked again later."""
        if not self.synced.is_set() or self.last_error != str(exc):
            log.info("%s: %s; going on without them (asking again every %.0fs)", self.resource, exc, OPTIONAL_RETRY)
        with self._lock:
            gone, self._store = list(self._store.values()), {}
        for obj in gone:
            self.handler("DELETED", obj)
        self.last_error = str(exc)
        self.healthy.set()
        if not self.synced.is_set():
            self.synced.set()
            self.handler("SYNCED", {"metadata": {"resourceVersion": ""}})
        self.stopped.wait(OPTIONAL_RETRY)

    def _reached(self) -> None:
        if self._outage:
            self._outage = False
            log.info("%s: the API server answers again", self.resource)
        self.healthy.set()

    def start(self) -> "Informer":
        self._thread = threading.Thread(target=self.run, name=f"informer-{self.resource}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        close = getattr(self.api, "close_stream", None)
        if close is not None:
            close()
        if self._thread is not None:
            self._thread.join(timeout)


SERVICE_NAME_SELECTOR = "kubernetes.io/service-name"


class ClusterInformers:
    """Services, EndpointSlices (those owned by a Service), Nodes and ServiceCIDRs, each on its
    own connection.

    `on_change(kind, event_type, obj)` is called from informer threads; consumers should only
    mark themselves dirty there and do the work elsewhere.
    """

    def __init__(self, connect: Callable[[], WatchAPI], *, include_pods: bool = False,
                 on_change: Callable[[str, str, JSON], None] | None = None, watch_timeout: int = 300) -> None:
        self._on_change = on_change
        # (resource, kind, label selector, optional): ServiceCIDRs exist from Kubernetes 1.33
        # (older servers answer 404, and a ClusterRole written for them may not grant them)
        specs: list[tuple[str, str, str | None, bool]] = [
            ("services", "Service", None, False),
            ("endpointslices", "EndpointSlice", SERVICE_NAME_SELECTOR, False),
            ("nodes", "Node", None, False),
            ("servicecidrs", "ServiceCIDR", None, True),
        ]
        if include_pods:
            specs.append(("pods", "Pod", None, False))
        self.informers = {
            resource: Informer(connect(), resource, self._handler(kind), label_selector=selector,
                               kind=kind, watch_timeout=watch_timeout, optional=optional)
            for resource, kind, selector, optional in specs
        }

    def _handler(self, kind: str) -> Handler:
        def handle(typ: str, obj: JSON) -> None:
            if self._on_change is not None:
                self._on_change(kind, typ, obj)
        return handle

    def start(self) -> "ClusterInformers":
        for inf in self.informers.values():
            inf.start()
        return self

    def wait_synced(self, timeout: float | None = None) -> bool:
        return all(inf.synced.wait(timeout) for inf in self.informers.values())

    @property
    def synced(self) -> bool:
        return all(inf.synced.is_set() for inf in self.informers.values())

    def objects(self) -> list[JSON]:
        out: list[JSON] = []
        for inf in self.informers.values():
            out.extend(inf.items())
        return out

    def stop(self) -> None:
        for inf in self.informers.values():
            inf.stopped.set()
        for inf in self.informers.values():
            inf.stop()
