"""Running a MatrixPlan: one remote command per node, in parallel, plus this machine's probes.

Theory of operation: each node's row is ONE call of `runner.run(node.ssh_host, argv,
deadline)` — one SSH connection, one remote shell that runs all of the node's probes at
once (see probe.py) — on a bounded thread pool (`parallel` nodes at a time). The probes
from this machine run on a second pool of the same size. A node that cannot be reached,
authenticated or trusted turns its own row into `error` observations (an ssh-error
verdict) and nothing else: one node's failure never stops the run. Progress is reported
as (cells done, cells total) after every row and every local probe.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol, Sequence

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.remote import local
from kubectl_proxyctl.remote.matrix import LOCAL, CellKey, MatrixPlan, Node, probes_for
from kubectl_proxyctl.remote.probe import (
    Observation,
    ProbeSpec,
    Seen,
    command_deadline,
    parse_remote_output,
    remote_argv,
)

log = logging.getLogger(__name__)

NO_BASH = 127  # the login shell's "command not found": run the driver with sh instead
Progress = Callable[[int, int], None]


class CommandResultLike(Protocol):
    @property
    def exit_code(self) -> int: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


class CommandRunner(Protocol):
    """What the fan-out needs from the SSH layer (ssh.SSHClient has it)."""

    def run(self, host: str, argv: Sequence[str], timeout: float, name: str | None = None) -> CommandResultLike:
        ...


def _error_row(probes: Sequence[tuple[CellKey, ProbeSpec]], detail: str) -> dict[CellKey, Observation]:
    return {key: Observation(Seen.ERROR, detail=detail) for key, _ in probes}


def _strip_label(message: str, name: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def node_row(
    node: Node, probes: Sequence[tuple[CellKey, ProbeSpec]], runner: CommandRunner, timeout: float
) -> dict[CellKey, Observation]:
    """Run one node's probes in one remote command; every failure becomes error cells."""
    specs = [spec for _, spec in probes]
    deadline = command_deadline(timeout, len(specs))
    try:
        result = runner.run(node.ssh_host, remote_argv(specs, timeout, "bash"), deadline, name=node.name)
        if result.exit_code == NO_BASH:
            result = runner.run(node.ssh_host, remote_argv(specs, timeout, "sh"), deadline, name=node.name)
    except ProxyctlError as exc:
        return _error_row(probes, _strip_label(str(exc), node.name))
    except Exception as exc:  # a library's surprise must still cost only this node's row
        log.debug("probing from %s failed", node.name, exc_info=True)
        return _error_row(probes, f"unexpected {type(exc).__name__}: {exc}")
    if result.exit_code != 0:
        first = next((ln.strip() for ln in result.stderr.splitlines() if ln.strip()), "")
        return _error_row(probes, f"the probe program exited {result.exit_code}" + (f": {first}" if first else ""))
    found = parse_remote_output(result.stdout, specs)
    return {key: found[spec.id] for key, spec in probes}


def _row_task(record: Callable[[dict[CellKey, Observation]], None], node: Node,
              probes: Sequence[tuple[CellKey, ProbeSpec]], runner: CommandRunner, timeout: float) -> None:
    record(node_row(node, probes, runner, timeout))


def _local_task(record: Callable[[dict[CellKey, Observation]], None], key: CellKey, spec: ProbeSpec,
                timeout: float) -> None:
    record({key: local.probe(spec, timeout)})


def run_plan(
    plan: MatrixPlan,
    runner: CommandRunner | None,
    timeout: float,
    parallel: int,
    progress: Progress | None = None,
) -> dict[CellKey, Observation]:
    """Every cell's observation. `runner` may be None when no row comes from a node."""
    observations: dict[CellKey, Observation] = {}
    lock = threading.Lock()
    rows = {source: probes_for(plan, source) for source in plan.sources}
    total = sum(len(p) for p in rows.values())

    def record(found: dict[CellKey, Observation]) -> None:
        with lock:
            observations.update(found)
            done = len(observations)
        if progress is not None:
            progress(done, total)

    futures: list[Future[None]] = []
    local_probes = rows.pop(LOCAL, [])
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="probe-node") as nodes, \
            ThreadPoolExecutor(max_workers=max(1, min(parallel, len(local_probes) or 1)),
                               thread_name_prefix="probe-local") as here:
        for source, probes in rows.items():
            node = plan.node(source)
            if not probes or node is None:
                continue
            if runner is None:
                raise ValueError("probes from nodes need a command runner")
            futures.append(nodes.submit(_row_task, record, node, probes, runner, timeout))
        for key, spec in local_probes:
            futures.append(here.submit(_local_task, record, key, spec, timeout))
        for future in futures:
            future.result()
    return observations
