"""The lab API server: a small Kubernetes-compatible API server, in-process or standalone.

No real kube-apiserver runs on a lab machine, so this one stands in for it. It speaks the
Kubernetes REST protocol closely enough that the official `kubernetes` Python client and an
unmodified `kubectl` work against it, for the kinds a Service data plane needs: Namespaces,
Services, Endpoints, Nodes, Pods (core/v1), EndpointSlices (discovery.k8s.io/v1), ServiceCIDRs
(networking.k8s.io/v1) and Events (events.k8s.io/v1), and `pods/exec` over a WebSocket
(`kubectl exec`, the `kubernetes.stream` client). The upstream kube-proxy runs against it
unmodified (tests/reference/ uses it as a test oracle): its informers list and watch with
label and field selectors and protobuf `Accept` headers (answered in JSON, which client-go
accepts), and it POSTs its Events as protobuf.

Theory of operation
-------------------
::

    kubectl / client ──HTTPS+token──▶ httpserver.py  TLS, a thread per connection, chunked watches
                                        │
                                        ▼
                                      rest.py        routing, discovery, auth, Tables, JSON/YAML/protobuf bodies
                                        │
                                        ▼
                                      registry.py    create/update/patch/delete semantics, defaults
                                        │            and validation (strategy.py, schema.py),
                                        │            admission hooks (mutate or reject)
                                        ▼
                                      store.py       objects + one RV counter + event history,
                                                     consistent pages, optional sqlite journal

* Every write gets the next resourceVersion of one global counter and one history entry.
  Watches replay the history after their RV; an RV older than the bounded history gets an
  in-stream 410 Expired, so clients relist (`compact()` forces that in tests).
* Objects are serialized once per write; lists and watch events are byte concatenation, so
  paging through 10,000 objects costs little more than sending them.
* With `state_dir`, objects and the RV counter survive restarts (sqlite); the CA, the tokens
  and the kubeconfigs are kept there too. Without it everything is in memory and the
  certificate files live in a temporary directory removed by `stop()`.
* Two identities: the token (`token`, `kubeconfig`) may do everything; the viewer token
  (`viewer_token`, `viewer_kubeconfig_path`, user `lab-viewer`) may only get, list and watch,
  and is answered 403 Forbidden, with kube-apiserver's RBAC message, for anything else
  (writes and `pods/exec`).
* `pods/exec` runs commands through `exec_runner` (remotecommand.ExecRunner), which the lab's
  control plane sets to a runner that enters the pod's network namespace. Without one, exec
  requests get a 400 Status that says the server has no container runtime.
* `admission` hooks run inside every write (a controller allocates cluster IPs there);
  `observers` see every committed event in order (a controller queues work there).
* `fail_with(code)` makes API requests fail (health endpoints excepted), to test backoff.

Deliberate differences from kube-apiserver: writes are immediate (no finalizers; graceful
deletion only for pods, and only when the lab's controllers register it; deleting a namespace
deletes its objects at once); status given on create is
kept; validation covers what lab manifests get wrong, not every rule; no server-side
apply, no managedFields, no OpenAPI schemas (`kubectl explain`), protobuf request bodies only
for what `kubectl create namespace|service` sends, no admission webhooks; authorization is two
fixed roles (all-powerful, read-only), not RBAC objects; `pods/exec` speaks WebSocket only
(no SPDY, no TTY), and other streaming subresources (attach, port-forward, logs) are absent.

Example::

    with APIServer() as api:
        api.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, ...})
        # meanwhile `kubectl --kubeconfig <api.kubeconfig_path> get svc` lists it
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable

from kubectl_proxyctl.lab.apiserver import status
from kubectl_proxyctl.lab.apiserver.certs import issue_serving_certificate
from kubectl_proxyctl.lab.apiserver.httpserver import LabHTTPServer
from kubectl_proxyctl.lab.apiserver.registry import (
    MERGE_PATCH, SYSTEM_NAMESPACES, AdmissionHook, Registry,
)
from kubectl_proxyctl.lab.apiserver.remotecommand import ExecRunner
from kubectl_proxyctl.lab.apiserver.resources import ResourceType, by_kind, by_name
from kubectl_proxyctl.lab.apiserver.rest import Dispatcher
from kubectl_proxyctl.lab.apiserver.store import Event, ObjectStore, Persistence

CONTEXT_NAME = "proxyctl-lab"
VIEWER_CONTEXT_NAME = "proxyctl-lab-viewer"
TOKEN_FILE = "token"
VIEWER_TOKEN_FILE = "viewer-token"
KUBECONFIG_FILE = "kubeconfig"
VIEWER_KUBECONFIG_FILE = "kubeconfig-viewer"
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _private(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy (the registry fills in and defaults what it is given)."""
    return json.loads(json.dumps(obj))  # type: ignore[no-any-return]


def _resource_of(obj: dict[str, Any]) -> ResourceType:
    try:
        return by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    except KeyError:
        raise status.bad_request(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}") from None


class APIServer:
    """A lab API server. `start()` serves it from a background thread; `stop()` ends it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        viewer_token: str | None = None,
        history: int = 10000,
        bookmark_interval: float = 5.0,
        extra_sans: Iterable[str] = (),
        exec_runner: ExecRunner | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._token = token
        self._viewer_token = viewer_token
        self._exec_runner = exec_runner
        self.extra_sans = tuple(extra_sans)
        self.bookmark_interval = bookmark_interval
        persistence = None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            persistence = Persistence(self.state_dir / "apiserver.db")
        self.store = ObjectStore(history=history, persistence=persistence)
        self.registry = Registry(self.store)
        self.registry.ensure_namespaces(SYSTEM_NAMESPACES)
        self._files_dir: Path | None = None
        self._httpd: LabHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._dispatcher: Dispatcher | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> APIServer:
        """Bind, write the certificates, token and kubeconfig, and serve in the background.

        Raises OSError when the address cannot be bound (e.g. already in use)."""
        if self._httpd is not None:
            return self
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.set_alpn_protocols(["http/1.1"])
        self._dispatcher = Dispatcher(self.registry, "", self._server_address, self.bookmark_interval,
                                      exec_runner=self._exec_runner)
        # Bind first: a busy address must not touch the files of the server that holds it.
        self._httpd = LabHTTPServer((self.host, self._requested_port), self._dispatcher, tls)
        try:
            self._prepare_files(tls, self._dispatcher)
        except BaseException:
            self._httpd.server_close()
            self._httpd = None
            self._remove_temporary_files()
            raise
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="lab-apiserver", daemon=True
        )
        self._thread.start()
        return self

    def _prepare_files(self, tls: ssl.SSLContext, dispatcher: Dispatcher) -> None:
        files = self.state_dir or Path(tempfile.mkdtemp(prefix="proxyctl-apiserver-"))
        self._files_dir = files
        self._token = dispatcher.token = self._stored_token(files, self._token)
        self._viewer_token = dispatcher.viewer_token = self._stored_token(files, self._viewer_token,
                                                                          VIEWER_TOKEN_FILE)
        sans = [*self.extra_sans]
        if self.host not in WILDCARD_HOSTS:
            sans.append(self.host)
        certs = issue_serving_certificate(files, sans)
        tls.load_cert_chain(certs.cert_path, certs.key_path)
        self._write_kubeconfig(files / KUBECONFIG_FILE, certs.ca_path)
        self._write_kubeconfig(files / VIEWER_KUBECONFIG_FILE, certs.ca_path, user="viewer")

    def stop(self) -> None:
        """Stop serving: end watches, close connections, join threads, close the journal."""
        httpd, self._httpd = self._httpd, None
        self.store.close()
        if httpd is not None:
            httpd.shutdown()
            httpd.close_connections()
            httpd.server_close()  # joins the connection threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._remove_temporary_files()

    def _remove_temporary_files(self) -> None:
        if self.state_dir is None and self._files_dir is not None:
            shutil.rmtree(self._files_dir, ignore_errors=True)
            self._files_dir = None

    def __enter__(self) -> APIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- where and how to connect -----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the API server is not started")
        return int(self._httpd.server_address[1])

    @property
    def client_host(self) -> str:
        """The address clients should dial (the wildcard addresses map to loopback)."""
        return WILDCARD_HOSTS.get(self.host, self.host)

    def _server_address(self) -> str:
        host = self.client_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self._server_address()}"

    @property
    def token(self) -> str:
        if self._token is None:
            raise RuntimeError("the API server is not started")
        return self._token

    @property
    def viewer_token(self) -> str:
        """The read-only token (user `lab-viewer`: get, list and watch only)."""
        if self._viewer_token is None:
            raise RuntimeError("the API server is not started")
        return self._viewer_token

    @property
    def exec_runner(self) -> ExecRunner | None:
        """What runs `pods/exec` commands (None: exec requests are refused)."""
        return self._exec_runner

    @exec_runner.setter
    def exec_runner(self, runner: ExecRunner | None) -> None:
        self._exec_runner = runner
        if self._dispatcher is not None:
            self._dispatcher.exec_runner = runner

    @property
    def files_dir(self) -> Path:
        if self._files_dir is None:
            raise RuntimeError("the API server is not started")
        return self._files_dir

    @property
    def ca_path(self) -> Path:
        return self.files_dir / "ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        return self.files_dir / KUBECONFIG_FILE

    @property
    def viewer_kubeconfig_path(self) -> Path:
        """A kubeconfig with the read-only viewer token."""
        return self.files_dir / VIEWER_KUBECONFIG_FILE

    @staticmethod
    def _stored_token(directory: Path, given: str | None, name: str = TOKEN_FILE) -> str:
        """The given token, else the one kept in `directory`, else a new one; kept in `directory`."""
        path = directory / name
        kept = path.read_text().strip() if path.exists() else ""
        token = given or kept or secrets.token_urlsafe(32)
        if token != kept:  # written aside and renamed: a client reading it never sees half of it
            tmp = directory / f"{name}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            os.replace(tmp, path)
        return token

    def kubeconfig(self, server: str | None = None, ca_path: Path | None = None, user: str = "admin") -> dict[str, Any]:
        """A kubeconfig for this server at `server` (e.g. `https://172.18.0.1:6443` from a lab
        namespace; default: `url`). `user="admin"`: the all-powerful token, cluster, user and
        context all named `proxyctl-lab`; `user="viewer"`: the read-only token, user and
        context named `proxyctl-lab-viewer`."""
        import base64

        if user not in ("admin", "viewer"):
            raise ValueError(f"user must be 'admin' or 'viewer', not {user!r}")
        name = CONTEXT_NAME if user == "admin" else VIEWER_CONTEXT_NAME
        token = self.token if user == "admin" else self.viewer_token
        ca = (ca_path or self.ca_path).read_bytes()
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": {
                "server": server or self.url, "certificate-authority-data": base64.b64encode(ca).decode(),
            }}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {
                "cluster": CONTEXT_NAME, "user": name, "namespace": "default",
            }}],
            "current-context": name,
            "preferences": {},
        }

    def _write_kubeconfig(self, path: Path, ca_path: Path, user: str = "admin") -> None:
        import yaml

        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # renamed into place: never half-read
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(self.kubeconfig(ca_path=ca_path, user=user), f, sort_keys=False)
        os.replace(tmp, path)

    # --- extension points -------------------------------------------------------------------------

    @property
    def admission(self) -> list[AdmissionHook]:
        """Hooks run on every create/update/delete; they may mutate the object or raise APIError."""
        return self.registry.admission

    @property
    def observers(self) -> list[Callable[[Event], None]]:
        """Callables told about every committed event, in RV order (under the store lock)."""
        return self.store.observers

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def compact(self) -> int:
        """Drop the whole watch history: older RVs now get 410 Expired. Returns the current RV."""
        return self.store.compact()

    def fail_with(self, code: int = 500, count: int | None = None) -> None:
        """Answer API requests with HTTP `code` (a real Status), `count` times or until cleared."""
        if self._dispatcher is None:
            raise RuntimeError("the API server is not started")
        self._dispatcher.fault.set(code, count)

    def clear_fault(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.fault.clear()

    # --- direct object access (the same semantics as the HTTP API; errors raise APIError) ---------

    @staticmethod
    def _namespace(r: ResourceType, namespace: str) -> str:
        return namespace if r.namespaced else ""

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj` (unknown fields are dropped; a namespaced kind defaults to "default")."""
        r = _resource_of(obj)
        return self.registry.create(r, _private(obj), obj.get("metadata", {}).get("namespace", "")).thaw()

    def update(self, obj: dict[str, Any], subresource: str = "") -> dict[str, Any]:
        """Replace an object (conflict-checked if it carries a resourceVersion); with
        `subresource="status"` only its status changes."""
        r = _resource_of(obj)
        meta = obj.get("metadata", {})
        ns = self._namespace(r, meta.get("namespace", "default"))
        return self.registry.update(r, _private(obj), ns, meta.get("name", ""), subresource).thaw()

    def patch(
        self, resource: str, name: str, patch: Any, namespace: str = "default",
        patch_type: str = MERGE_PATCH, subresource: str = "",
    ) -> dict[str, Any]:
        """Patch an object; `patch_type` is one of registry.PATCH_TYPES (a content type)."""
        r = by_name(resource)
        ns = self._namespace(r, namespace)
        return self.registry.patch(r, ns, name, patch_type, patch, subresource).thaw()

    def delete(self, resource: str, name: str, namespace: str = "default") -> dict[str, Any]:
        r = by_name(resource)
        return self.registry.delete(r, self._namespace(r, namespace), name).thaw()

    def get(self, resource: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        r = by_name(resource)
        found = self.store.get(r, self._namespace(r, namespace), name)
        return found.thaw() if found is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        r = by_name(resource)
        return [so.thaw() for so in self.store.objects(r, namespace if r.namespaced else None)]

    def load(self, objects: Iterable[dict[str, Any]]) -> int:
        """Bulk create-or-replace (fast: one transaction, no per-object validation). Returns the RV."""
        return self.registry.load((_resource_of(obj), _private(obj)) for obj in objects)
