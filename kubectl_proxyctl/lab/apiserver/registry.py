"""The write path of the lab API server: what create, update, patch and delete mean.

This is the layer between the HTTP edge and the store, the lab's counterpart of
k8s.io/apiserver's generic registry. For every write it:

1. checks the object's kind, name and namespace against the request (400 BadRequest), and
   drops fields the kind does not have (rejecting them under `fieldValidation=Strict`);
2. keeps what clients may not change (uid, creationTimestamp) and computes `generation`;
   on a main-resource update the status is kept, on a `/status` update only status changes;
3. applies the kind's defaults and validation (strategy.py; 422 Invalid);
4. runs the admission hooks: callables that see an `Admission` and may mutate the new object
   or raise `APIError` to reject it. This is where a lab controller allocates cluster IPs or
   node ports;
5. checks preconditions under the store lock (409 AlreadyExists / Conflict, 404 NotFound,
   including "namespaces \"x\" not found") and writes, unless it is a dry run.

An update that changes nothing (after defaults) is not written, as on a real server: no
new resourceVersion, no watch event.

Deletes are immediate, except for kinds with a grace policy in `graceful` (the lab's
controllers register one for pods). Deleting such an object only marks it terminating:
`metadata.deletionTimestamp` (now + grace) and `deletionGracePeriodSeconds` are set and the
object stays, as on a real server. A later delete may only shorten the grace period; one
with `gracePeriodSeconds=0` (or a grace the policy computes as 0) removes the object. That
is how whoever plays the kubelet finishes the deletion once the grace period is over.
"""

from __future__ import annotations

import copy
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from kubectl_proxyctl.lab.apiserver import schema, status, strategy, tables
from kubectl_proxyctl.lab.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge
from kubectl_proxyctl.lab.apiserver.resources import NAMESPACES, RESOURCES, ResourceType
from kubectl_proxyctl.lab.apiserver.status import APIError
from kubectl_proxyctl.lab.apiserver.store import ObjectStore, Page, Predicate, StoredObject, encode_json

CREATE, UPDATE, DELETE = "CREATE", "UPDATE", "DELETE"

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class Admission:
    """What an admission hook sees. Mutate `object` to change what gets stored."""

    operation: str  # CREATE | UPDATE | DELETE
    resource: ResourceType
    object: dict[str, Any] | None  # the new object (None for DELETE)
    old: dict[str, Any] | None  # the stored object (None for CREATE); do not mutate
    subresource: str = ""
    dry_run: bool = False


AdmissionHook = Callable[[Admission], None]

# (the stored object, the request's gracePeriodSeconds or None) -> grace in seconds; 0: delete now.
GracePolicy = Callable[[dict[str, Any], "int | None"], int]

STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
FIELD_VALIDATIONS = (IGNORE, STRICT, WARN)


@dataclass
class FieldValidation:
    """What to do about fields the kind does not declare (they are dropped in any case)."""

    mode: str = IGNORE
    warnings: list[str] = field(default_factory=list)

    def check(self, r: ResourceType, obj: dict[str, Any]) -> None:
        unknown = [f'unknown field "{path}"' for path in schema.unknown_fields(r.kind, obj, prune=True)]
        if unknown and self.mode == STRICT:
            raise status.bad_request(
                f'{r.kind} in version "{r.version}" cannot be handled as a {r.kind}: '
                f"strict decoding error: {', '.join(unknown)}"
            )
        if self.mode == WARN:
            self.warnings.extend(unknown)


def now_timestamp(at: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


INTERNAL_PACKAGES = {"": "core", "discovery.k8s.io": "discovery", "networking.k8s.io": "networking",
                     "events.k8s.io": "core"}  # where kube-apiserver's internal types live, per group


def _undecodable(r: ResourceType, kind: str) -> str:
    """Why a body of another `kind` cannot become an `r`, as kube-apiserver's decoder says it:
    a kind its group version has cannot be converted, any other one is not registered."""
    if any(other.kind == kind and other.api_version == r.api_version for other in RESOURCES) or \
            kind == r.list_kind:
        return f"converting ({r.version}.{kind}) to ({INTERNAL_PACKAGES.get(r.group, r.group)}.{r.kind}): " \
               "unknown conversion"
    return f'no kind "{kind}" is registered for version "{r.api_version}" in scheme "pkg/runtime/scheme.go:110"'


def _preview(obj: dict[str, Any]) -> StoredObject:
    """A dry-run create's answer: the object as it would be stored, without an RV."""
    obj.get("metadata", {}).pop("resourceVersion", None)
    return StoredObject(obj, encode_json(obj), 0)


class Registry:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.admission: list[AdmissionHook] = []
        self.graceful: dict[ResourceType, GracePolicy] = {}

    # --- reading --------------------------------------------------------------------------------

    def get(self, r: ResourceType, namespace: str, name: str) -> StoredObject:
        found = self.store.get(r, namespace, name)
        if found is None:
            raise status.not_found(r, name)
        return found

    def list_page(
        self, r: ResourceType, namespace: str | None = None, predicate: Predicate | None = None,
        limit: int = 0, continue_token: str = "", exact_rv: int | None = None,
    ) -> Page:
        return self.store.list_page(r, namespace, predicate, limit, continue_token, exact_rv)

    # --- checks ----------------------------------------------------------------------------------

    @staticmethod
    def _typed(r: ResourceType, obj: Any) -> dict[str, Any]:
        """The object with apiVersion/kind checked and filled in (a new top-level dict)."""
        if not isinstance(obj, dict):
            raise status.bad_request(f"the object provided is unrecognized (must be of type {r.kind})")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != r.api_version:
            raise status.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({r.api_version})"
            )
        if kind and kind != r.kind:
            raise status.bad_request(f'{kind} in version "{r.version}" cannot be handled as a {r.kind}: '
                                     f"{_undecodable(r, str(kind))}")
        if not isinstance(obj.get("metadata", {}), dict):
            raise status.bad_request(f"the object provided is unrecognized (must be of type {r.kind})")
        rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        rest.setdefault("metadata", {})
        return {"apiVersion": r.api_version, "kind": r.kind, **rest}

    @staticmethod
    def _place(r: ResourceType, meta: dict[str, Any], namespace: str) -> None:
        """Put the object in the request's namespace (or none, for cluster-scoped kinds)."""
        if not r.namespaced:
            meta.pop("namespace", None)
            return
        body_ns = meta.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise status.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace or body_ns or "default"

    def _require_namespace(self, r: ResourceType, namespace: str) -> None:
        if r.namespaced and self.store.get(NAMESPACES, "", namespace) is None:
            raise status.not_found(NAMESPACES, namespace)

    def _admit(self, review: Admission) -> None:
        for hook in list(self.admission):
            hook(review)

    def _admit_defaulted(self, review: Admission) -> dict[str, Any]:
        """Default, then let the hooks mutate, then default again (a hook may set a field
        whose companions are defaulted, e.g. clusterIP -> clusterIPs)."""
        r, obj = review.resource, review.object
        assert obj is not None
        strategy.apply_defaults(r, obj)
        self._admit(review)
        strategy.apply_defaults(r, obj)
        return obj

    def _admit_valid(self, review: Admission) -> None:
        obj = self._admit_defaulted(review)
        causes = strategy.validate(review.resource, obj)
        if causes:
            raise status.invalid(review.resource, obj["metadata"].get("name", ""), causes)

    # --- create ---------------------------------------------------------------------------------

    def _generate_name(self, r: ResourceType, namespace: str, prefix: str) -> str:
        while True:
            name = prefix + "".join(random.choices(_GENERATE_ALPHABET, k=5))
            if self.store.get(r, namespace, name) is None:
                return name

    def create(
        self, r: ResourceType, obj: Any, namespace: str = "", dry_run: bool = False,
        fields: FieldValidation | None = None,
    ) -> StoredObject:
        obj = self._typed(r, obj)
        (fields or FieldValidation()).check(r, obj)
        meta = obj["metadata"]
        self._place(r, meta, namespace)
        ns = meta.get("namespace", "")
        if meta.get("resourceVersion"):
            raise APIError(
                500, "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be created",
                {"causes": [{"message": "resourceVersion should not be set on objects to be created"}]},
            )
        with self.store.lock:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(r, ns, str(meta["generateName"]))
            if not meta.get("name"):
                cause = strategy.required("metadata.name", "name or generateName is required")
                raise status.invalid(r, "", [cause])
            self._require_namespace(r, ns)
            if self.store.get(r, ns, meta["name"]) is not None:
                raise status.already_exists(r, meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_timestamp()
            meta["generation"] = 1
            for server_set in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
                meta.pop(server_set, None)
            self._admit_valid(Admission(CREATE, r, obj, None, dry_run=dry_run))
            if dry_run:
                return _preview(obj)
            return self.store.write(r, obj).obj

    # --- update and patch ------------------------------------------------------------------------

    def update(
        self, r: ResourceType, obj: Any, namespace: str, name: str, subresource: str = "",
        dry_run: bool = False, fields: FieldValidation | None = None,
    ) -> StoredObject:
        obj = self._typed(r, obj)
        (fields or FieldValidation()).check(r, obj)
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise status.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        self._place(r, meta, namespace)
        with self.store.lock:
            current = self.get(r, meta.get("namespace", ""), name)
            return self._replace(r, obj, current, subresource, dry_run)

    def patch(
        self, r: ResourceType, namespace: str, name: str, patch_type: str, patch: Any,
        subresource: str = "", dry_run: bool = False, fields: FieldValidation | None = None,
    ) -> StoredObject:
        with self.store.lock:
            current = self.get(r, namespace, name)
            try:
                if patch_type == JSON_PATCH:
                    patched = json_patch(current.thaw(), patch)
                elif patch_type == MERGE_PATCH:
                    patched = merge_patch(current.thaw(), patch)
                elif patch_type == STRATEGIC_MERGE_PATCH:
                    patched = strategic_merge(current.obj, patch, r.kind)
                else:
                    raise status.unsupported_media_type(patch_type, PATCH_TYPES)
            except PatchError as exc:
                if patch_type == JSON_PATCH:  # kube-apiserver drops the reason of a failed JSON patch
                    raise APIError(422, "Invalid", "the server rejected our request due to an error in our "
                                   "request", {}) from None
                raise APIError(422, "Invalid", str(exc)) from None
            patched = self._typed(r, patched)
            (fields or FieldValidation()).check(r, patched)
            meta = patched["metadata"]
            if meta.get("name") != name or meta.get("namespace", "") != namespace:
                cause = strategy.invalid("metadata.name", meta.get("name"), "field is immutable")
                raise status.invalid(r, name, [cause])
            return self._replace(r, patched, current, subresource, dry_run)

    def _replace(
        self, r: ResourceType, new: dict[str, Any], current: StoredObject, subresource: str, dry_run: bool
    ) -> StoredObject:
        rv = new["metadata"].get("resourceVersion")
        if rv and rv != str(current.rv):
            raise status.conflict(r, current.key[1], status.STALE_OBJECT)
        old = current.obj
        if subresource == "status":
            status_value = new.get("status")
            new = current.thaw()
            new.pop("status", None)
            if status_value is not None:
                new["status"] = status_value
        elif r.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta = new["metadata"]
        old_meta = old["metadata"]
        for kept in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if kept in old_meta:
                meta[kept] = old_meta[kept]
            else:
                meta.pop(kept, None)
        meta.pop("managedFields", None)
        self._admit_valid(Admission(UPDATE, r, new, old, subresource, dry_run))
        generation = int(old_meta.get("generation", 1))
        meta["generation"] = generation + 1 if _spec_of(new) != _spec_of(old) else generation
        if _without_rv(new) == _without_rv(old):
            return current
        if dry_run:
            return StoredObject.seal(new, current.rv)  # as it would be, still at the current RV
        return self.store.write(r, new).obj

    # --- delete ----------------------------------------------------------------------------------

    def delete(
        self, r: ResourceType, namespace: str, name: str, preconditions: dict[str, Any] | None = None,
        dry_run: bool = False, grace_period: int | None = None,
    ) -> StoredObject:
        """Delete an object, or for a kind with a grace policy, start or shorten its graceful
        deletion (see the module docstring). Returns the deleted or the terminating object."""
        with self.store.lock:
            current = self.get(r, namespace, name)
            self._check_preconditions(r, current, preconditions or {})
            if r is NAMESPACES and name in PROTECTED_NAMESPACES:
                raise APIError(
                    403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                    {"name": name, "kind": "namespaces"},
                )
            self._admit(Admission(DELETE, r, None, current.obj, dry_run=dry_run))
            terminating = self._terminating(r, current, grace_period)
            if terminating is current.obj or (terminating is not None and dry_run):
                return current
            if terminating is not None:
                return self.store.write(r, terminating).obj
            if dry_run:
                return current
            if r is NAMESPACES:
                self._delete_contents(name)
            return self.store.remove(r, namespace, name).obj

    def _terminating(self, r: ResourceType, current: StoredObject, requested: int | None) -> dict[str, Any] | None:
        """The object marked for graceful deletion; `current.obj` itself when a pending
        deletion stays as it is; None when the object must go now."""
        policy = self.graceful.get(r)
        if policy is None:
            return None
        meta = current.obj["metadata"]
        pending = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp"):
            if not pending:
                return None
            if requested is None or requested >= pending:
                return current.obj
            grace = max(0, requested)
            started = tables.parse_timestamp(meta["deletionTimestamp"]) or time.time()
            deadline = started - pending + grace
        else:
            grace = policy(current.obj, requested)
            deadline = time.time() + grace
        if grace <= 0:
            return None
        obj = current.thaw()
        marked = obj["metadata"]
        marked["deletionTimestamp"] = now_timestamp(deadline)
        marked["deletionGracePeriodSeconds"] = grace
        marked["generation"] = int(marked.get("generation", 1)) + 1
        return obj

    @staticmethod
    def _check_preconditions(r: ResourceType, current: StoredObject, pre: dict[str, Any]) -> None:
        meta = current.obj["metadata"]
        uid, rv = pre.get("uid"), pre.get("resourceVersion")
        if uid and uid != meta.get("uid"):
            why = f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta.get('uid')}"
            raise status.conflict(r, meta["name"], why)
        if rv and rv != str(current.rv):
            why = (
                f"Precondition failed: ResourceVersion in precondition: {rv}, "
                f"ResourceVersion in object meta: {current.rv}"
            )
            raise status.conflict(r, meta["name"], why)

    def _delete_contents(self, namespace: str) -> None:
        for r in RESOURCES:
            if r.namespaced:
                for so in self.store.objects(r, namespace):
                    self._admit(Admission(DELETE, r, None, so.obj))
                    self.store.remove(r, namespace, so.key[1])

    def delete_collection(
        self, r: ResourceType, namespace: str | None, predicate: Predicate | None, dry_run: bool = False
    ) -> list[StoredObject]:
        with self.store.lock:
            victims = [so for so in self.store.objects(r, namespace) if predicate is None or predicate(so.obj)]
            return [self.delete(r, so.key[0], so.key[1], dry_run=dry_run) for so in victims]

    # --- bulk ---------------------------------------------------------------------------------------

    def ensure_namespaces(self, names: Iterable[str]) -> None:
        for name in names:
            if self.store.get(NAMESPACES, "", name) is None:
                self.create(NAMESPACES, {"metadata": {"name": name}})

    def load(self, items: Iterable[tuple[ResourceType, dict[str, Any]]]) -> int:
        """Create or replace many objects in one store transaction (unknown fields are dropped,
        defaults and hooks apply; validation and conflict checks do not; missing namespaces are
        created). Returns the RV."""
        stamp = now_timestamp()
        prepared: list[tuple[ResourceType, dict[str, Any]]] = []
        namespaces: set[str] = set()
        for r, raw in items:
            obj = self._typed(r, raw)
            schema.unknown_fields(r.kind, obj, prune=True)
            meta = obj["metadata"]
            self._place(r, meta, meta.get("namespace", ""))
            meta.pop("resourceVersion", None)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", stamp)
            meta.setdefault("generation", 1)
            self._admit_defaulted(Admission(CREATE, r, obj, None))
            if r.namespaced:
                namespaces.add(meta["namespace"])
            prepared.append((r, obj))
        with self.store.lock:
            self.ensure_namespaces(sorted(namespaces))
            return self.store.write_many(prepared)
