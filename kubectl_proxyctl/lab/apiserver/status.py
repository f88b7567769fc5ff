"""`Status` objects and the one exception that carries them.

A real API server answers every failure with a `meta/v1 Status` whose `reason`, `code` and
`details` clients act on (`kubectl` prints `message`; informers relist on 410/Expired,
retry on 409/Conflict). `APIError` is raised anywhere in the lab server and turned into that
object at the HTTP edge; the constructors below reproduce the exact messages of
k8s.io/apimachinery/pkg/api/errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubectl_proxyctl.lab.apiserver.resources import ResourceType


@dataclass(frozen=True)
class Cause:
    """One field-level problem (`details.causes[]`)."""

    reason: str  # FieldValueRequired, FieldValueInvalid, FieldValueNotSupported, ...
    message: str
    field: str = ""

    def to_dict(self) -> dict[str, str]:
        d = {"reason": self.reason, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass
class APIError(Exception):
    """A failed request, as the Status a real server would send."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status


def _details(r: ResourceType | None, name: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if r is not None:
        if r.group:
            d["group"] = r.group
        d["kind"] = r.plural
    return d


def not_found(r: ResourceType, name: str) -> APIError:
    return APIError(404, "NotFound", f'{r} "{name}" not found', _details(r, name))


def no_such_path() -> APIError:
    return APIError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(r: ResourceType, name: str) -> APIError:
    return APIError(409, "AlreadyExists", f'{r} "{name}" already exists', _details(r, name))


def conflict(r: ResourceType, name: str, why: str) -> APIError:
    message = f'Operation cannot be fulfilled on {r} "{name}": {why}'
    return APIError(409, "Conflict", message, _details(r, name))


STALE_OBJECT = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(r: ResourceType, name: str, causes: list[Cause]) -> APIError:
    if len(causes) == 1:
        summary = str(causes[0])
    else:
        summary = "[" + ", ".join(str(c) for c in causes) + "]"
    details: dict[str, Any] = {"name": name} if name else {}
    if r.group:
        details["group"] = r.group
    details["kind"] = r.kind
    details["causes"] = [c.to_dict() for c in causes]
    qualified = f"{r.kind}.{r.group}" if r.group else r.kind  # schema.GroupKind's String()
    return APIError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def method_not_allowed() -> APIError:
    return APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def unsupported_media_type(content_type: str, accepted: tuple[str, ...]) -> APIError:
    message = (
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}"
    )
    return APIError(415, "UnsupportedMediaType", message, {"causes": [{"message": content_type}]})


def unauthorized() -> APIError:
    return APIError(401, "Unauthorized", "Unauthorized")


def expired(message: str) -> APIError:
    return APIError(410, "Expired", message)


def too_old_resource_version(requested: int, oldest: int) -> APIError:
    return expired(f"too old resource version: {requested} ({oldest})")


def too_large_resource_version(requested: int, current: int) -> APIError:
    return APIError(
        504, "Timeout", f"Timeout: Too large resource version: {requested}, current: {current}",
        {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
         "retryAfterSeconds": 1},
    )


_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 410: "Gone", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}


def injected(code: int) -> APIError:
    """The fault-injection answer for HTTP status `code`."""
    reason = _REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    message = "Internal error occurred: injected fault" if code == 500 else f"injected fault ({code})"
    details: dict[str, Any] = {"causes": [{"message": "injected fault"}]}
    headers: dict[str, str] = {}
    if code in (429, 503):
        details["retryAfterSeconds"] = 1
        headers["Retry-After"] = "1"
    return APIError(code, reason, message, details, headers)


def success(r: ResourceType, name: str, uid: str) -> dict[str, Any]:
    """What DELETE answers for kinds that do not return the deleted object."""
    details = _details(r, name)
    details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
