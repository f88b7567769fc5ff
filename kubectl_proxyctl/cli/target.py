"""Parsing `svc/NAME`-style targets the way kubectl does."""

from __future__ import annotations

import re

from kubectl_proxyctl.errors import ConfigError

SERVICE_KINDS = ("svc", "service", "services")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def parse_service(target: str) -> str:
    """`svc/NAME`, `service/NAME`, `services/NAME` or `NAME` → NAME."""
    kind, sep, name = target.partition("/")
    if not sep:
        kind, name = "svc", target
    if kind.lower() not in SERVICE_KINDS:
        raise ConfigError(f"{target!r}: only services are supported here (svc/NAME or NAME)")
    if not _NAME.match(name) or len(name) > 253:
        raise ConfigError(f"{target!r}: {name!r} is not a valid service name")
    return name
