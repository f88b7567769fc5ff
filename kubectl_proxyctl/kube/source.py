"""Where an inspector command gets its ClusterState: a file, or the API server.

Commands ask for what they need (one namespace or all; one service or all, or the Services
a label selector picks; pods or not) and get a ClusterState either way. Objects that cannot
be converted are reported as warnings on stderr and skipped; they never abort a command.
Warnings of one kind collapse: objects of kinds nothing here uses are one line with a count
("skipping 30 objects of kind Deployment"), and any other kind of warning is shown 20
times, then counted.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

from kubectl_proxyctl.errors import ClusterError
from kubectl_proxyctl.kube.convert import LABEL_SERVICE_NAME, state_from_objects
from kubectl_proxyctl.model import ClusterState

log = logging.getLogger(__name__)


def _warn_stderr(message: str) -> None:
    import click

    from kubectl_proxyctl.kube.convert import printable

    click.echo(f"warning: {printable(message)}", err=True)  # one line, whatever the objects hold


_UNUSED_KIND = re.compile(r"^skipping (?P<what>.+?): kind (?P<kind>'[^']*'|None) is not used \(only (?P<only>.*)\)$")


class CappedWarnings:
    """Conversion warnings on stderr: the first `limit`, then one line counting the rest
    (a file of thousands of odd objects must not bury the output). Objects skipped for
    their kind are held back and told in one line when the reading ends (`close`)."""

    def __init__(self, limit: int = 20, say: Callable[[str], None] = _warn_stderr) -> None:
        self.limit = limit
        self.say = say
        self.count = 0
        self.unused: dict[str, list[str]] = {}  # kind -> the objects skipped for it
        self.only = ""

    def __call__(self, message: str) -> None:
        m = _UNUSED_KIND.match(message)
        if m:
            kind = m.group("kind").strip("'")
            self.unused.setdefault(kind, []).append(m.group("what"))
            self.only = m.group("only")
            return
        self.count += 1
        if self.count <= self.limit:
            self.say(message)

    def close(self) -> None:
        if self.count > self.limit:
            self.say(f"... and {self.count - self.limit} more warnings like these")
        self.count = 0
        if self.unused:
            self.say(unused_kinds_line(self.unused, self.only))
        self.unused = {}


def unused_kinds_line(unused: dict[str, list[str]], only: str) -> str:
    """`skipping 30 objects of kind Deployment (Deployment default/a, …): only … are used`."""
    total = sum(len(v) for v in unused.values())
    if total == 1:
        ((kind, (what,)),) = unused.items()
        return f"skipping {what}: kind {kind!r} is not used (only {only})"
    kinds = sorted(unused, key=lambda k: (-len(unused[k]), k))
    named = ", ".join(f"{k} ({len(unused[k])})" if len(kinds) > 1 else k for k in kinds)
    examples = [w for k in kinds for w in unused[k]][:3]
    more = ", …" if total > len(examples) else ""
    return (f"skipping {total} objects of kind{'s' if len(kinds) > 1 else ''} {named} "
            f"({', '.join(examples)}{more}): only {only} are used")


def load_state(
    options: Any, *, namespace: str | None, service: str | None = None,
    include_pods: bool = True, include_nodes: bool = True,
    warn: Callable[[str], None] | None = None,
    label_selector: str | None = None, selected: Callable[[dict[str, Any]], bool] | None = None,
) -> ClusterState:
    """Read what the command needs. `namespace=None` means all namespaces.

    `options` is a cli.options.ClusterOptions. With `service`, a missing Service raises
    NotFoundError. `label_selector` picks Services: the API server applies it; for a file,
    `selected` (the same selector as a predicate on a Service object) does.
    """
    capped = CappedWarnings() if warn is None else None
    try:
        return _load_state(options, namespace, service, include_pods, include_nodes, warn or capped,  # type: ignore[arg-type]
                           label_selector, selected)
    finally:
        if capped is not None:
            capped.close()


def _load_state(options: Any, namespace: str | None, service: str | None, include_pods: bool,
                include_nodes: bool, warn: Callable[[str], None], label_selector: str | None,
                selected: Callable[[dict[str, Any]], bool] | None) -> ClusterState:
    if options.from_file:
        from kubectl_proxyctl.kube.snapshot import state_from_file

        wanted = None
        if selected is not None:
            pick = selected

            def wanted(obj: dict[str, Any]) -> bool:
                return obj.get("kind") != "Service" or pick(obj)

        return state_from_file(options.from_file, warn, wanted)  # converted as parsed: no tree of the whole file

    api = options.connect()
    objects: list[dict[str, Any]] = []
    if service:
        objects.append(api.get("services", service, namespace))
        slices, _ = api.list("endpointslices", namespace, label_selector=f"{LABEL_SERVICE_NAME}={service}")
    else:
        svcs, _ = api.list("services", namespace, label_selector=label_selector)
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
