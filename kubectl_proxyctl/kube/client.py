"""The API adapter: the only module that imports the `kubernetes` client.

Theory of operation: we use the official client for what it is best at — kubeconfig and
in-cluster configuration (contexts, client certificates, tokens, exec credential plugins,
TLS) and its urllib3 transport — but not its generated models: importing those costs
seconds, and building a pydantic object per Service would dominate a 10,000-service list.
Requests go through `rest.RESTClientObject` and bodies stay plain dicts.

Every failure leaves this module as a `ClusterError` (or `NotFoundError` for a 404) with a
message a user can act on; urllib3 and client exceptions never leak upward.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from kubectl_proxyctl.errors import ClusterError, ConfigError, NotFoundError

if TYPE_CHECKING:
    from urllib3 import HTTPHeaderDict

    from kubectl_proxyctl.kube.kubeconfig import ClientOverrides

log = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    plural: str
    group_version: str  # "v1" or "discovery.k8s.io/v1"
    namespaced: bool
    kind: str

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{urllib.parse.quote(name, safe='')}"
        return base


RESOURCES: Mapping[str, Resource] = {
    "services": Resource("services", "v1", True, "Service"),
    "endpointslices": Resource("endpointslices", "discovery.k8s.io/v1", True, "EndpointSlice"),
    "nodes": Resource("nodes", "v1", False, "Node"),
    "pods": Resource("pods", "v1", True, "Pod"),
    "namespaces": Resource("namespaces", "v1", False, "Namespace"),
    "servicecidrs": Resource("servicecidrs", "networking.k8s.io/v1", False, "ServiceCIDR"),
}


class APIStatusError(ClusterError):
    """The server answered with an error Status (status holds the HTTP code)."""


def _status_message(status: int, body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("message"):
            return str(doc["message"])
    except (ValueError, UnicodeDecodeError):
        pass
    return body.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"


class KubeAPI:
    """A configured connection to one API server."""

    def __init__(self, configuration: Any, request_timeout: float, describe: str,
                 impersonation: Mapping[str, tuple[str, ...]] | None = None) -> None:
        from kubernetes.client import rest

        # One attempt per request: callers own retries (the informer backs off), and a
        # --request-timeout must bound the whole request, not each of urllib3's retries.
        configuration.retries = False
        if configuration.verify_ssl is False:  # asked for (--insecure-skip-tls-verify): no warning per request
            import warnings

            import urllib3

            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self._cfg = configuration
        self._rest = rest.RESTClientObject(configuration)
        self.host = str(configuration.host).rstrip("/")
        self.request_timeout = request_timeout
        self.describe = describe  # e.g. "context lab (https://127.0.0.1:6443)"
        self.impersonation = dict(impersonation or {})  # Impersonate-* header -> values (--as, --as-group)

    @property
    def configuration(self) -> Any:
        """The client library's Configuration: TLS files and verification, for other transports."""
        return self._cfg

    def auth_headers(self) -> "HTTPHeaderDict":
        """The credentials' headers (a bearer token, refreshed by exec plugins), impersonation
        (`Impersonate-User`, one `Impersonate-Group` header per group, ...) and our user agent.
        `.items()` yields a repeated header once per value."""
        from urllib3 import HTTPHeaderDict

        headers = HTTPHeaderDict({"User-Agent": "kubectl-proxyctl"})
        for setting in self._cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        for name, values in self.impersonation.items():
            for value in values:
                headers.add(name, value)
        return headers

    def _headers(self, accept: str = "application/json") -> "HTTPHeaderDict":
        headers = self.auth_headers()
        headers["Accept"] = accept
        return headers

    def _timeout(self, read: float | None = None) -> Any:
        t = self.request_timeout or None
        if read is None:
            return t
        return (t or 30.0, read)

    def request(
        self, method: str, path: str, query: Mapping[str, Any] | None = None, *,
        body: Any = None, read_timeout: float | None = None, stream: bool = False,
        content_type: str | None = None,
    ) -> Any:
        """Send one request; return the urllib3 response (stream) or the decoded JSON body."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        url = self.host + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, "")})
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        try:
            resp = self._rest.request(
                method, url, headers=headers, body=body, _request_timeout=self._timeout(read_timeout)
            )
        except ApiException as exc:  # TLS failures surface this way ("SSLError\n[SSL: ...] ...")
            raise ClusterError(self._failure(str(exc.reason))) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            raise ClusterError(self._unreachable(exc.reason)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(self._unreachable(exc)) from exc
        raw = resp.response
        if raw.status >= 400:
            data = raw.data
            raw.release_conn()
            self._raise_for_status(raw.status, data, path)
        if stream:
            return raw
        try:
            data = raw.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(self._unreachable(exc)) from exc
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ClusterError(f"the API server at {self.host} sent a response that is not JSON") from exc

    def _unreachable(self, reason: object) -> str:
        text = " ".join(str(reason).split())  # one line, whatever the library wrote
        if "timed out" in text.lower() or "timeout" in type(reason).__name__.lower():
            return (f"the API server at {self.host} did not answer within "
                    f"{self.request_timeout:g}s (--request-timeout)")
        if "refused" in text.lower():
            return f"cannot reach the API server at {self.host}: connection refused"
        return self._failure(text, "cannot reach")

    def _failure(self, text: str, verb: str = "cannot talk to") -> str:
        """One line for a transport failure; TLS verification failures say what failed."""
        flat = " ".join(text.split())
        low = flat.lower()
        if "certificate has expired" in low:
            return (f"TLS with the API server at {self.host} failed: its certificate has expired "
                    "(certificate verification failed)")
        if "not yet valid" in low:
            return (f"TLS with the API server at {self.host} failed: its certificate is not valid yet "
                    "(certificate verification failed; check this machine's clock)")
        if "certificate verify failed" in low:
            detail = flat[low.index("certificate verify failed") + len("certificate verify failed"):]
            detail = detail.lstrip(": ").split(" (_ssl.c")[0].strip()
            return (f"TLS with the API server at {self.host} failed: certificate verification failed"
                    + (f" ({detail})" if detail else ""))
        if "certificate" in low or "ssl" in low:
            return f"TLS with the API server at {self.host} failed: {flat}"
        return f"{verb} the API server at {self.host}: {flat}"

    def _raise_for_status(self, status: int, body: bytes, path: str) -> None:
        message = _status_message(status, body)
        if status == 401:
            raise APIStatusError(
                f"the API server at {self.host} rejected our credentials (401 Unauthorized): "
                f"check the token or client certificate of {self.describe}", status)
        if status == 403:
            raise APIStatusError(f"forbidden (403): {message}", status)
        if status == 404:
            raise NotFoundError(message)
        raise APIStatusError(f"API error {status} on {path}: {message}", status)

    # --- reads -------------------------------------------------------------------------

    def get(self, resource: str, name: str, namespace: str | None = None) -> JSON:
        res = RESOURCES[resource]
        obj = self.request("GET", res.path(namespace, name))
        obj.setdefault("kind", res.kind)
        return obj  # type: ignore[no-any-return]

    def list(
        self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
        field_selector: str | None = None, page_size: int = 500,
    ) -> tuple[list[JSON], str]:
        """All objects (paginated); returns (items with kind set, list resourceVersion)."""
        res = RESOURCES[resource]
        items: list[JSON] = []
        cont: str | None = None
        rv = ""
        while True:
            body = self.request("GET", res.path(namespace), {
                "labelSelector": label_selector, "fieldSelector": field_selector,
                "limit": page_size, "continue": cont,
            })
            for item in body.get("items") or []:
                item["kind"] = res.kind
                items.append(item)
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            cont = meta.get("continue")
            if not cont:
                return items, rv

    def watch(
        self, resource: str, resource_version: str, *, namespace: str | None = None,
        label_selector: str | None = None, timeout_seconds: int = 300,
    ) -> Iterator[JSON]:
        """Watch events as dicts, until the server ends the stream. Raises ClusterError."""
        import urllib3

        res = RESOURCES[resource]
        resp = self.request(
            "GET", res.path(namespace),
            {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
             "timeoutSeconds": timeout_seconds, "labelSelector": label_selector},
            read_timeout=timeout_seconds + 30, stream=True,
        )
        self._open = resp
        buf = b""
        try:
            for chunk in resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if buf.strip():
                yield json.loads(buf)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(f"watch of {resource} broke: {exc}") from exc
        except ValueError as exc:
            raise ClusterError(f"watch of {resource}: the server sent a line that is not JSON") from exc
        finally:
            resp.release_conn()

    def close_stream(self) -> None:
        """Abort an open watch from another thread (used to stop an informer promptly)."""
        resp = getattr(self, "_open", None)
        if resp is not None:
            try:
                resp.shutdown()
            except Exception:  # best effort: the stream may be closed already
                try:
                    resp.close()
                except Exception:
                    pass


class _CaptureLogs(logging.Handler):
    """Collects the records the kubernetes client logs while loading a kubeconfig: its exec
    plugin support reports failures with `logging.error(...)` on the root logger and goes on
    without credentials. We turn them into one error instead (and -v still shows them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            try:
                self.messages.append(" ".join(record.getMessage().split()))
            except Exception:  # a bad format string must not hide the real problem
                self.messages.append(str(record.msg))

    def __enter__(self) -> "_CaptureLogs":
        # With a handler on the root logger, `logging.error()` no longer calls basicConfig
        # (which would print "ERROR:root:..."); handlers configured by -v still print.
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        logging.getLogger().removeHandler(self)


def _exec_command(user: Mapping[str, Any] | None) -> str | None:
    spec = user.get("exec") if user else None
    return spec.get("command") if isinstance(spec, dict) else None


def _find_plugin(command: str, kubeconfig_dir: str) -> bool:
    """Whether an exec plugin command can be started (PATH, or relative to the kubeconfig)."""
    import shutil

    if os.sep in command:
        path = command if os.path.isabs(command) else os.path.join(kubeconfig_dir, command)
        return os.path.isfile(path) and os.access(path, os.X_OK)
    return shutil.which(command) is not None


def connect(
    kubeconfig: str | None = None, context: str | None = None, request_timeout: float = 30.0,
    overrides: "ClientOverrides | None" = None,
) -> KubeAPI:
    """Configure a client like kubectl: the flags (`overrides`), over the kubeconfig files ($KUBECONFIG merged in
    order, else ~/.kube/config), else the in-cluster service account.

    The merge and the flags are applied by kube/kubeconfig.py (the client library's own
    merger lets the *last* file's current-context win, kubectl the first); the client
    library's loader then turns the one effective cluster and user into a Configuration:
    tokens, client certificates, exec credential plugins, auth providers, TLS.

    Every problem with the kubeconfig (unreadable, invalid YAML, wrong field types, unknown
    context, an exec credential plugin that cannot run) is a ConfigError naming it; the
    client library's own complaints never reach the user unlogged."""
    from dataclasses import replace

    from kubernetes import config as kconfig
    from kubernetes.client import Configuration

    from kubectl_proxyctl.kube.kubeconfig import ClientOverrides, kubeconfig_paths, resolve

    o = overrides or ClientOverrides()
    if context and not o.context:
        o = replace(o, context=context)
    cfg = Configuration()
    resolved = resolve(kubeconfig, o)
    if resolved is None:  # no kubeconfig file and no --server
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            try:
                kconfig.load_incluster_config(client_configuration=cfg)
            except kconfig.ConfigException as exc:
                log.debug("not using in-cluster config: %s", exc)
            else:
                return _in_cluster(cfg, o, request_timeout)
        paths = kubeconfig_paths(kubeconfig)
        raise ConfigError(
            f"no kubeconfig found ({os.pathsep.join(paths)}); pass --kubeconfig, set KUBECONFIG, "
            "pass --server, or use --from-file")
    where = resolved.where
    name = resolved.context or "(none)"
    plugin = _exec_command(resolved.user)
    if plugin and not _find_plugin(plugin, os.getcwd()):
        written = _exec_command(_written_user(kubeconfig, resolved.user_name)) or plugin
        raise ConfigError(f"kubeconfig {where}: the exec credential plugin {written!r} of user "
                          f"{resolved.user_name!r} (context {name!r}) cannot be run: not found"
                          + ("" if os.sep in written else " on PATH"))
    if not resolved.cluster.get("server"):
        raise ConfigError(f"kubeconfig {where}: context {name!r} names no cluster with a server; "
                          "pass --server (or --cluster)")
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "proxyctl",
        "clusters": [{"name": "cluster", "cluster": resolved.cluster}],
        "users": [{"name": "user", "user": resolved.user}],
        "contexts": [{"name": "proxyctl", "context": {"cluster": "cluster", "user": "user"}}],
    }
    with _CaptureLogs() as captured:
        try:
            kconfig.load_kube_config_from_dict(doc, context="proxyctl", client_configuration=cfg,
                                               persist_config=False)
        except kconfig.ConfigException as exc:
            raise ConfigError(f"kubeconfig {where}: {' '.join(str(exc).split())}") from exc
        except Exception as exc:  # the client library's internals: a kubeconfig it cannot use
            raise ConfigError(f"kubeconfig {where} is not usable (context {name!r}): "
                              f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from exc
    for message in captured.messages:
        log.debug("kubernetes client: %s", message)
    if plugin and captured.messages:
        written = _exec_command(_written_user(kubeconfig, resolved.user_name)) or plugin
        raise ConfigError(f"kubeconfig {where}: the exec credential plugin {written!r} of user "
                          f"{resolved.user_name!r} (context {name!r}) failed: {captured.messages[0][:200]}")
    host = str(cfg.host or "")
    flags = " ".join(o.flags())
    if not host.startswith(("http://", "https://")):
        said = "--server" if o.server else f"kubeconfig {where}: context {name!r}: server"
        raise ConfigError(f"{said} {host!r} is not an http(s) URL")
    describe = f"context {resolved.context} ({cfg.host})" if resolved.context else f"--server {cfg.host}"
    if o.token:
        describe = f"--token ({cfg.host})"
    log.debug("API server %s from %s%s", cfg.host, where, f" with {flags}" if flags else "")
    try:
        return KubeAPI(cfg, request_timeout, describe, resolved.impersonation)
    except (OSError, ValueError, TypeError) as exc:  # e.g. certificate files it cannot load
        raise ConfigError(f"kubeconfig {where}: context {name!r}: {' '.join(str(exc).split())[:200]}") from exc


def _written_user(kubeconfig: str | None, name: str) -> dict[str, Any] | None:
    """The user entry as the file writes it (relative paths kept), for messages."""
    from kubectl_proxyctl.kube.kubeconfig import find, load_merged

    return find(load_merged(kubeconfig), "users", name) if name else None


def _in_cluster(cfg: Any, o: "ClientOverrides", request_timeout: float) -> KubeAPI:
    """The service account's configuration with the flags kubectl honours in a pod applied."""
    from kubectl_proxyctl.kube.kubeconfig import impersonation

    if o.server:
        cfg.host = o.server.rstrip("/")
    if o.token:
        cfg.api_key = {"BearerToken": f"Bearer {o.token}"}
        cfg.refresh_api_key_hook = None
    if o.certificate_authority:
        cfg.ssl_ca_cert = os.path.abspath(os.path.expanduser(o.certificate_authority))
    if o.insecure_skip_tls_verify:
        cfg.verify_ssl = False
    if o.tls_server_name:
        cfg.tls_server_name = o.tls_server_name
    return KubeAPI(cfg, request_timeout, f"in-cluster service account ({cfg.host})", impersonation({}, o))


def list_names(options: Any, resource: str, namespace: str | None = None) -> list[str]:
    """Names of one resource kind, for shell completion. `options` is a ClusterOptions."""
    if options.from_file:
        from kubectl_proxyctl.kube.snapshot import load_objects

        kind = RESOURCES[resource].kind
        names = set()
        for obj in load_objects(options.from_file):
            meta = obj.get("metadata") or {}
            if obj.get("kind") == kind and (namespace is None or meta.get("namespace", "default") == namespace):
                names.add(str(meta.get("name")))
            if resource == "namespaces" and meta.get("namespace"):
                names.add(str(meta["namespace"]))
        return sorted(names)
    api = connect(options.kubeconfig, options.context, options.request_timeout, options.overrides)
    items, _ = api.list(resource, namespace if RESOURCES[resource].namespaced else None)
    return sorted(str((i.get("metadata") or {}).get("name")) for i in items)
