"""The REST layer of the lab API server: routing, content negotiation, authentication.

`Dispatcher.handle(Request)` maps the Kubernetes REST URL space onto the registry and
returns either a `Response` or, for `?watch=true`, a `WatchStream`; it does no I/O itself
(httpserver.py does). It knows:

* discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>[/<v>]`), legacy or aggregated
  (`Accept: ...;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`), `/openapi/v3`,
  `/healthz`, `/livez`, `/readyz`; trailing slashes are ignored;
* resource URLs: collections (cluster-wide or per namespace), objects, `/status`;
* content negotiation: plain objects, `as=Table` (kubectl get) and `as=PartialObjectMetadata`;
* `pods/exec`: validated here, then answered with an `ExecSession` that httpserver.py runs on
  the upgraded connection (remotecommand.py);
* bearer-token authentication (health and version also answer anonymous requests), two
  identities (the all-powerful token, and a viewer that may only get, list and watch: anything
  else is 403 Forbidden with kube-apiserver's RBAC message), and the fault switch that makes
  requests fail on purpose.

Request bodies may be JSON, YAML, or protobuf for the few kinds kubectl's typed clients
send that way (protobuf.py); answers are always JSON.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Union

from kubectl_proxyctl.lab.apiserver import protobuf, resources, status, tables, websocket
from kubectl_proxyctl.lab.apiserver.protobuf import ProtobufError
from kubectl_proxyctl.lab.apiserver.registry import FIELD_VALIDATIONS, PATCH_TYPES, WARN, FieldValidation, Registry
from kubectl_proxyctl.lab.apiserver.remotecommand import PROTOCOLS, ExecOptions, ExecRunner, ExecSession, choose_protocol
from kubectl_proxyctl.lab.apiserver.resources import GROUP_VERSIONS, PODS, ResourceType, by_path
from kubectl_proxyctl.lab.apiserver.selectors import SelectorError, combine, field_predicate, label_predicate
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.apiserver.store import Page, Predicate, StoredObject, encode_json
from kubectl_proxyctl.lab.apiserver.watch import EventEncoder, JSONEvents, TableEvents, WatchStream

log = logging.getLogger(__name__)

JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
PUBLIC_PATHS = ("healthz", "livez", "readyz", "version")
HEALTH_PATHS = ("healthz", "livez", "readyz")
READ_VERBS = ("get", "list", "watch")


@dataclass(frozen=True)
class User:
    """Who a token authenticates; a read-only user may only get, list and watch."""

    name: str
    read_only: bool = False


ADMIN = User("lab-admin")
VIEWER = User("lab-viewer", read_only=True)
ANONYMOUS = User("system:anonymous", read_only=True)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    repeated: dict[str, list[str]] = field(default_factory=dict)  # every value of each parameter

    def param(self, name: str, default: str = "") -> str:
        return self.query.get(name, default)

    def params(self, name: str) -> list[str]:
        """Every value of a repeated parameter (`?command=a&command=b`), in order."""
        if name in self.repeated:
            return list(self.repeated[name])
        return [self.query[name]] if name in self.query else []

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("true", "1")

    def int_param(self, name: str) -> int | None:
        text = self.query.get(name, "")
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise status.bad_request(f"invalid value for {name}: {text!r}") from None


@dataclass
class Response:
    code: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


Result = Union[Response, WatchStream, ExecSession]


def json_response(obj: Any, code: int = 200, content_type: str = JSON) -> Response:
    return Response(code, encode_json(obj), content_type)


def error_response(err: APIError) -> Response:
    return Response(err.code, encode_json(err.to_status()), JSON, dict(err.headers))


def _with_warnings(resp: Response, fields: FieldValidation) -> Response:
    if fields.warnings:
        resp.headers["Warning"] = ", ".join(f"299 - {json.dumps(w)}" for w in fields.warnings)
    return resp


class FaultSwitch:
    """Makes API requests fail with a given HTTP status, for a number of requests or until cleared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._code: int | None = None
        self._remaining: int | None = None

    def set(self, code: int, count: int | None = None) -> None:
        with self._lock:
            self._code, self._remaining = code, count

    def clear(self) -> None:
        with self._lock:
            self._code, self._remaining = None, None

    def take(self) -> int | None:
        with self._lock:
            code = self._code
            if code is not None and self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._code, self._remaining = None, None
            return code


def _media_ranges(accept: str) -> Iterator[tuple[str, dict[str, str]]]:
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        params = dict(p.split("=", 1) for p in pieces[1:] if "=" in p)
        yield pieces[0].lower(), params


def negotiate(accept: str) -> tuple[str, str]:
    """("table" | "partial" | "json", apiVersion of the meta.k8s.io answer)."""
    for media, params in _media_ranges(accept or JSON):
        as_kind, version = params.get("as", ""), params.get("v", "")
        meta_group = params.get("g") == "meta.k8s.io" and version in ("v1", "v1beta1")
        if as_kind == "Table" and meta_group:
            return "table", f"meta.k8s.io/{version}"
        if as_kind.startswith("PartialObjectMetadata") and meta_group:
            return "partial", f"meta.k8s.io/{version}"
        if not as_kind and media in (JSON, "*/*", "application/*"):
            return "json", ""
    return "json", ""


def aggregated_version(accept: str) -> str | None:
    for media, params in _media_ranges(accept or ""):
        if params.get("as") == "APIGroupDiscoveryList" and params.get("g") == "apidiscovery.k8s.io":
            if params.get("v") in ("v2", "v2beta1"):
                return params["v"]
        elif media in (JSON, "*/*"):
            return None
    return None


def decode_body(req: Request, protobuf_kind: str | None = None) -> Any:
    """The request body as JSON-like data, from JSON, YAML or (for the kinds kubectl's typed
    clients send that way) Kubernetes protobuf."""
    if not req.body.strip():
        raise status.bad_request("couldn't get version/kind; json parse error: unexpected end of JSON input")
    ctype = req.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if ctype == PROTOBUF:
        try:
            return protobuf.decode_object(req.body, protobuf_kind)
        except (ProtobufError, UnicodeDecodeError) as exc:
            raise status.unsupported_media_type(f"{ctype}: {exc}", (JSON, "application/yaml")) from None
    if "yaml" in ctype:
        import yaml

        try:
            return yaml.safe_load(req.body)
        except yaml.YAMLError as exc:
            raise status.bad_request(f"error converting YAML to JSON: {exc}") from None
    try:
        return json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise status.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None


def _list_body(r: ResourceType, page: Page, list_meta: dict[str, Any]) -> bytes:
    head = encode_json({"kind": r.list_kind, "apiVersion": r.api_version, "metadata": list_meta})
    return head[:-1] + b',"items":[' + b",".join(so.raw for so in page.items) + b"]}"


def forbidden(user: User, verb: str, r: ResourceType, namespace: str | None, name: str, sub: str) -> APIError:
    """kube-apiserver's answer when the authorizer denies (responsewriters.Forbidden)."""
    resource = f"{r.plural}/{sub}" if sub else r.plural
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    why = f'User "{user.name}" cannot {verb} resource "{resource}" in API group "{r.group}" {where}'
    message = f'{r} "{name}" is forbidden: {why}' if name else f"{r} is forbidden: {why}"
    details: dict[str, Any] = {"name": name} if name else {}
    if r.group:
        details["group"] = r.group
    details["kind"] = r.plural
    return APIError(403, "Forbidden", message, details)


def request_verb(req: Request, name: str | None, sub: str) -> str:
    """The authorization verb of a resource request (RequestInfo's)."""
    if sub == "exec":
        return "create"  # a WebSocket exec arrives as a GET; it still starts a process
    if req.method == "GET":
        return "get" if name else ("watch" if req.flag("watch") else "list")
    if req.method == "DELETE" and not name:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(req.method, req.method.lower())


class Dispatcher:
    def __init__(
        self, registry: Registry, token: str, server_address: Callable[[], str], bookmark_interval: float = 5.0,
        *, viewer_token: str = "", exec_runner: ExecRunner | None = None,
    ) -> None:
        self.registry = registry
        self.token = token
        self.viewer_token = viewer_token
        self.exec_runner = exec_runner
        self.server_address = server_address
        self.bookmark_interval = bookmark_interval
        self.fault = FaultSwitch()

    def handle(self, req: Request) -> Result:
        try:
            segments = [s for s in req.path.split("/") if s]
            top = segments[0] if segments else ""
            user = self._authenticate(req, top)
            if top not in HEALTH_PATHS:
                code = self.fault.take()
                if code is not None:
                    raise status.injected(code)
            return self._route(req, segments, user)
        except APIError as err:
            return error_response(err)
        except SelectorError as err:
            return error_response(status.bad_request(str(err)))
        except Exception as exc:  # a bug in the server: answer like kube-apiserver does
            log.exception("%s %s failed", req.method, req.path)
            return error_response(APIError(500, "InternalError", f"Internal error occurred: {exc}"))

    def _authenticate(self, req: Request, top: str) -> User:
        header = req.headers.get("authorization", "")
        if not header and top in PUBLIC_PATHS:
            return ANONYMOUS
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer":
            given = presented.strip().encode()
            if hmac.compare_digest(given, self.token.encode()):
                return ADMIN
            if self.viewer_token and hmac.compare_digest(given, self.viewer_token.encode()):
                return VIEWER
        raise status.unauthorized()

    # --- routing --------------------------------------------------------------------------------

    def _route(self, req: Request, segs: list[str], user: User = ADMIN) -> Result:
        top = segs[0] if segs else ""
        if top in ("api", "apis") and len(segs) > (2 if top == "api" else 3):
            group, version = ("", segs[1]) if top == "api" else (segs[1], segs[2])
            if version not in GROUP_VERSIONS.get(group, ()):
                raise status.no_such_path()
            return self._resource(req, group, version, segs[2 if top == "api" else 3:], user)
        if req.method != "GET":
            raise status.method_not_allowed()
        if top in HEALTH_PATHS:
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if segs == ["version"]:
            return json_response(resources.SERVER_VERSION)
        if top == "openapi":
            return self._openapi(segs[1:])
        if top == "api":
            return self._core_discovery(req, segs)
        if top == "apis":
            return self._group_discovery(req, segs)
        if not segs:
            return json_response({"paths": sorted(self._paths())})
        return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

    @staticmethod
    def _paths() -> list[str]:
        paths = ["/api", "/apis", "/healthz", "/livez", "/readyz", "/version", "/openapi/v3"]
        for group, versions in GROUP_VERSIONS.items():
            for v in versions:
                paths.append(f"/apis/{group}/{v}" if group else f"/api/{v}")
            if group:
                paths.append(f"/apis/{group}")
        return paths

    def _core_discovery(self, req: Request, segs: list[str]) -> Response:
        if len(segs) == 1:
            agg = aggregated_version(req.headers.get("accept", ""))
            if agg:
                doc = resources.aggregated_discovery(legacy=True, version=agg)
                return json_response(doc, content_type=resources.AGGREGATED_MEDIA_TYPE.format(v=agg))
            return json_response(resources.api_versions(self.server_address()))
        found = resources.api_resource_list("", segs[1])
        if found is None:
            raise status.no_such_path()
        return json_response(found)

    def _group_discovery(self, req: Request, segs: list[str]) -> Response:
        if len(segs) == 1:
            agg = aggregated_version(req.headers.get("accept", ""))
            if agg:
                doc = resources.aggregated_discovery(legacy=False, version=agg)
                return json_response(doc, content_type=resources.AGGREGATED_MEDIA_TYPE.format(v=agg))
            return json_response(resources.api_group_list())
        if len(segs) == 2:
            found = resources.api_group(segs[1])
        else:
            found = resources.api_resource_list(segs[1], segs[2])
        if found is None:
            raise status.no_such_path()
        return json_response(found)

    @staticmethod
    def _openapi(segs: list[str]) -> Response:
        if segs == ["v3"]:
            return json_response(resources.openapi_v3_root())
        doc = None
        if segs[:2] == ["v3", "api"] and len(segs) == 3:
            doc = resources.openapi_v3_document("", segs[2])
        elif segs[:2] == ["v3", "apis"] and len(segs) == 4:
            doc = resources.openapi_v3_document(segs[2], segs[3])
        if doc is None:
            raise status.no_such_path()
        return json_response(doc)

    def _resource(self, req: Request, group: str, version: str, segs: list[str], user: User = ADMIN) -> Result:
        namespace: str | None = None
        if len(segs) >= 3 and segs[0] == "namespaces":
            inner = by_path(group, version, segs[2])
            if inner is not None and inner.namespaced:
                namespace, segs = segs[1], segs[2:]
        r = by_path(group, version, segs[0])
        if r is None or len(segs) > 3:
            raise status.no_such_path()
        name = segs[1] if len(segs) > 1 else None
        sub = segs[2] if len(segs) > 2 else ""
        if namespace is None and r.namespaced and name is not None:
            raise status.no_such_path()  # /api/v1/services/NAME
        if namespace is not None and not r.namespaced:
            raise status.no_such_path()
        exec_request = sub == "exec" and r is PODS and name is not None
        if sub and not (sub == "status" and r.has_status) and not exec_request:
            raise status.no_such_path()
        verb = request_verb(req, name, sub)
        if user.read_only and (verb not in READ_VERBS or exec_request):
            raise forbidden(user, verb, r, namespace, name or "", sub)
        if exec_request:
            return self._exec(req, namespace or "", name or "")
        if name is None:
            return self._collection(req, r, namespace)
        return self._object(req, r, namespace or "", name, sub)

    def _collection(self, req: Request, r: ResourceType, namespace: str | None) -> Result:
        if req.method == "GET":
            if req.flag("watch"):
                return self._watch(req, r, namespace)
            return self._list(req, r, namespace)
        if r.namespaced and namespace is None:
            raise status.method_not_allowed()
        if req.method == "POST":
            fields = self._field_validation(req)
            so = self.registry.create(r, decode_body(req), namespace or "", self._dry_run(req), fields)
            return _with_warnings(Response(201, so.raw), fields)
        if req.method == "DELETE":
            deleted = self.registry.delete_collection(r, namespace, self._predicate(req, r), self._dry_run(req))
            page = Page(deleted, self.registry.store.resource_version)
            return Response(200, _list_body(r, page, {"resourceVersion": str(page.resource_version)}))
        raise status.method_not_allowed()

    def _object(self, req: Request, r: ResourceType, namespace: str, name: str, sub: str) -> Result:
        if req.method == "GET":
            so = self.registry.get(r, namespace, name)
            return self._render_one(req, r, so)
        if req.method == "PUT":
            fields = self._field_validation(req)
            so = self.registry.update(r, decode_body(req), namespace, name, sub, self._dry_run(req), fields)
            return _with_warnings(Response(200, so.raw), fields)
        if req.method == "PATCH":
            return self._patch(req, r, namespace, name, sub)
        if req.method == "DELETE" and not sub:
            return self._delete(req, r, namespace, name)
        raise status.method_not_allowed()

    # --- pods/exec --------------------------------------------------------------------------------

    def _exec(self, req: Request, namespace: str, name: str) -> ExecSession:
        """Check the request and the pod as kube-apiserver and a kubelet would, before the
        connection is upgraded: what fails here is an HTTP Status, not a stream."""
        if req.method not in ("GET", "POST"):
            raise status.method_not_allowed()
        pod = self.registry.get(PODS, namespace, name).thaw()
        options = ExecOptions(
            command=tuple(req.params("command")), container=req.param("container"),
            stdin=req.flag("stdin"), stdout=req.flag("stdout") if "stdout" in req.query else True,
            stderr=req.flag("stderr") if "stderr" in req.query else True, tty=req.flag("tty"),
        )
        spec = pod.get("spec") or {}
        containers = [str(c.get("name", "")) for c in spec.get("containers") or [] if isinstance(c, dict)]
        container = options.container
        if not container:
            if len(containers) != 1:
                message = f"a container name must be specified for pod {name}"
                if containers:
                    message += f", choose one of: [{' '.join(containers)}]"
                raise status.bad_request(message)
            container = containers[0]
        elif container not in containers:
            raise status.bad_request(f"container {container} is not valid for pod {name}")
        if not spec.get("nodeName"):
            raise status.bad_request(f"pod {name} does not have a host assigned")
        if not (options.stdin or options.stdout or options.stderr):
            raise status.bad_request("you must specify at least 1 of stdin, stdout, stderr")
        if not options.command:
            raise status.bad_request("you must specify at least one command for the container")
        st = pod.get("status") or {}
        running = any(
            cs.get("name") == container and "running" in (cs.get("state") or {})
            for cs in st.get("containerStatuses") or [] if isinstance(cs, dict)
        )
        if st.get("phase") != "Running" or not running:
            raise status.bad_request(f'container not found ("{container}")')
        if self.exec_runner is None:
            raise status.bad_request(
                f'cannot exec in pod {name}: this API server has no container runtime to run commands in')
        protocol = self._websocket_upgrade(req)
        return ExecSession(pod, replace(options, container=container), protocol, self.exec_runner)

    @staticmethod
    def _websocket_upgrade(req: Request) -> str:
        """The subprotocol to speak, once the request is a valid WebSocket upgrade (SPDY, the
        older streaming transport, is not served: kubectl and client-go try WebSocket first)."""
        connection = {t.strip().lower() for t in req.headers.get("connection", "").split(",")}
        if "upgrade" not in connection or req.headers.get("upgrade", "").strip().lower() != "websocket":
            raise status.bad_request("Upgrade request required")
        if req.headers.get("sec-websocket-version", "").strip() != "13":
            raise status.bad_request("unable to upgrade: unsupported WebSocket version (13 is)")
        if not websocket.valid_key(req.headers.get("sec-websocket-key", "")):
            raise status.bad_request("unable to upgrade: missing or invalid Sec-WebSocket-Key")
        offered = req.headers.get("sec-websocket-protocol", "")
        protocol = choose_protocol(offered)
        if protocol is None:
            raise status.bad_request(
                f"unable to upgrade: requested protocol(s) are not supported: [{offered}]; "
                f"supports [{' '.join(PROTOCOLS)}]")
        return protocol

    # --- verbs ------------------------------------------------------------------------------------

    @staticmethod
    def _dry_run(req: Request) -> bool:
        value = req.param("dryRun")
        if value and value != "All":
            raise status.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
        return value == "All"

    @staticmethod
    def _field_validation(req: Request) -> FieldValidation:
        mode = req.param("fieldValidation") or WARN
        if mode not in FIELD_VALIDATIONS:
            choices = ", ".join(f'"{m}"' for m in FIELD_VALIDATIONS)
            raise status.bad_request(
                f'fieldValidation: Unsupported value: "{mode}": supported values: {choices}'
            )
        return FieldValidation(mode)

    @staticmethod
    def _predicate(req: Request, r: ResourceType) -> Predicate | None:
        labels = label_predicate(req.param("labelSelector"))
        return combine(labels, field_predicate(req.param("fieldSelector"), r))

    @staticmethod
    def _table(req: Request, r: ResourceType, objects: list[dict[str, Any]], list_meta: dict[str, Any],
               api_version: str) -> Response:
        include = req.param("includeObject", "Metadata")
        return json_response(tables.table(r, objects, include, list_meta, api_version))

    def _render_one(self, req: Request, r: ResourceType, so: StoredObject) -> Response:
        mode, api_version = negotiate(req.headers.get("accept", ""))
        if mode == "table":
            return self._table(req, r, [so.obj], {"resourceVersion": str(so.rv)}, api_version)
        if mode == "partial":
            return json_response({**tables.partial_metadata(so.obj), "apiVersion": api_version})
        return Response(200, so.raw)

    def _exact_rv(self, req: Request) -> int | None:
        """The RV a list must be served at (resourceVersionMatch=Exact), else None: now.

        A plain resourceVersion means "at least this new", which the present always is unless
        the RV is from the future (504, as a real server answers after waiting for it)."""
        rv, match = req.param("resourceVersion"), req.param("resourceVersionMatch")
        if match and not rv:
            raise status.bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if match == "Exact":
            return req.int_param("resourceVersion")
        if match not in ("", "NotOlderThan"):
            raise status.bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        minimum = req.int_param("resourceVersion") or 0
        current = self.registry.store.resource_version
        if minimum > current:
            raise status.too_large_resource_version(minimum, current)
        return None

    def _list(self, req: Request, r: ResourceType, namespace: str | None) -> Response:
        predicate = self._predicate(req, r)
        exact = self._exact_rv(req)
        limit = req.int_param("limit") or 0
        page = self.registry.list_page(r, namespace, predicate, limit, req.param("continue"), exact)
        list_meta: dict[str, Any] = {"resourceVersion": str(page.resource_version)}
        if page.continue_token:
            list_meta["continue"] = page.continue_token
        if page.remaining is not None:
            list_meta["remainingItemCount"] = page.remaining
        mode, api_version = negotiate(req.headers.get("accept", ""))
        if mode == "table":
            return self._table(req, r, [so.obj for so in page.items], list_meta, api_version)
        if mode == "partial":
            items = [tables.partial_metadata(so.obj) for so in page.items]
            return json_response({
                "kind": "PartialObjectMetadataList", "apiVersion": api_version,
                "metadata": list_meta, "items": items,
            })
        return Response(200, _list_body(r, page, list_meta))

    def _watch(self, req: Request, r: ResourceType, namespace: str | None) -> WatchStream:
        predicate = self._predicate(req, r)
        rv = req.param("resourceVersion")
        start = None if rv in ("", "0") else req.int_param("resourceVersion")
        initial_events_end = req.flag("sendInitialEvents")
        if initial_events_end:
            start = None
        timeout = req.int_param("timeoutSeconds")
        mode, api_version = negotiate(req.headers.get("accept", ""))
        encoder: EventEncoder = JSONEvents()
        if mode == "table":
            encoder = TableEvents(r, req.param("includeObject", "Metadata"), api_version)
        return WatchStream(
            self.registry.store, r, namespace, predicate, start, encoder,
            bookmarks=req.flag("allowWatchBookmarks"), bookmark_interval=self.bookmark_interval,
            timeout=float(timeout) if timeout else None, initial_events_end=initial_events_end,
        )

    def _patch(self, req: Request, r: ResourceType, namespace: str, name: str, sub: str) -> Response:
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            raise status.unsupported_media_type(ctype, PATCH_TYPES)
        try:
            patch = json.loads(req.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise status.bad_request(f"error decoding patch: {exc}") from None
        fields = self._field_validation(req)
        so = self.registry.patch(r, namespace, name, ctype, patch, sub, self._dry_run(req), fields)
        return _with_warnings(Response(200, so.raw), fields)

    def _delete(self, req: Request, r: ResourceType, namespace: str, name: str) -> Response:
        options: dict[str, Any] = {}
        if req.body.strip():
            options = decode_body(req, "DeleteOptions")
            if not isinstance(options, dict):
                raise status.bad_request("DeleteOptions must be a JSON object")
        dry_run = self._dry_run(req) or "All" in (options.get("dryRun") or [])
        grace = req.int_param("gracePeriodSeconds")
        if options.get("gracePeriodSeconds") is not None:
            grace = options["gracePeriodSeconds"]
            if isinstance(grace, bool) or not isinstance(grace, int):
                raise status.bad_request(f"invalid value for gracePeriodSeconds: {grace!r}")
        so = self.registry.delete(r, namespace, name, options.get("preconditions"), dry_run, grace)
        if r.returns_deleted_object:
            return Response(200, so.raw)
        return json_response(status.success(r, name, so.obj["metadata"].get("uid", "")))
