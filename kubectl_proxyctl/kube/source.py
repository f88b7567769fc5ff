"""Where an inspector command gets its ClusterState: a file, or the API server.

Commands ask for what they need (one namespace or all; one service or all; pods or not) and
get a ClusterState either way. Objects that cannot be converted are reported once as a
warning on stderr and skipped; they never abort a command.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from kubectl_proxyctl.errors import ClusterError
from kubectl_proxyctl.kube.convert import LABEL_SERVICE_NAME, state_from_objects
from kubectl_proxyctl.model import ClusterState

log = logging.getLogger(__name__)


def _warn_stderr(message: str) -> None:
    import click

    from kubectl_proxyctl.kube.convert import printable

    click.echo(f"warning: {printable(message)}", err=True)  # one line, whatever the objects hold


class CappedWarnings:
    """Conversion warnings on stderr: the first `limit`, then one line counting the rest
    (a file of thousands of odd objects must not bury the output)."""

    def __init__(self, limit: int = 20, say: Callable[[str], None] = _warn_stderr) -> None:
        self.limit = limit
        self.say = say
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= self.limit:
            self.say(message)

    def close(self) -> None:
        if self.count > self.limit:
            self.say(f"... and {self.count - self.limit} more warnings like these")
        self.count = 0


def load_state(
    options: Any, *, namespace: str | None, service: str | None = None,
    include_pods: bool = True, include_nodes: bool = True,
    warn: Callable[[str], None] | None = None,
) -> ClusterState:
    """Read what the command needs. `namespace=None` means all namespaces.

    `options` is a cli.options.ClusterOptions. With `service`, a missing Service raises
    NotFoundError.
    """
    capped = CappedWarnings() if warn is None else None
    try:
        return _load_state(options, namespace, service, include_pods, include_nodes, warn or capped)  # type: ignore[arg-type]
    finally:
        if capped is not None:
            capped.close()


def _load_state(options: Any, namespace: str | None, service: str | None, include_pods: bool,
                include_nodes: bool, warn: Callable[[str], None]) -> ClusterState:
    if options.from_file:
        from kubectl_proxyctl.kube.snapshot import state_from_file

        return state_from_file(options.from_file, warn)  # converted as parsed: no tree of the whole file

    from kubectl_proxyctl.kube.client import connect

    api = connect(options.kubeconfig, options.context, options.request_timeout)
    objects: list[dict[str, Any]] = []
    if service:
        objects.append(api.get("services", service, namespace))
        slices, _ = api.list("endpointslices", namespace, label_selector=f"{LABEL_SERVICE_NAME}={service}")
    else:
        svcs, _ = api.list("services", namespace)
        objects.extend(svcs)
        slices, _ = api.list("endpointslices", namespace, label_selector=LABEL_SERVICE_NAME)
    objects.extend(slices)
    if include_nodes:
        nodes, _ = api.list("nodes")
        objects.extend(nodes)
    if include_pods:
        try:
            pods, _ = api.list("pods", namespace)
            objects.extend(pods)
        except ClusterError as exc:  # pods are a nice-to-have (RBAC may forbid them)
            log.info("cannot list pods (%s); pod checks are skipped", exc)
    return state_from_objects(objects, warn)
