"""The lab's control plane: the process (`lab control-plane`) that serves the lab's API.

It runs, in one process, what a cluster's control plane and kubelets do for the lab:

* the lab API server (`apiserver.APIServer`), its objects and resourceVersion counter in
  sqlite under `<state>/api`, HTTPS on 172.18.0.1:6443;
* the controllers (`controllers.LabControllers`), which must live in the API server's
  process: they allocate ClusterIPs, NodePorts and pod IPs in its admission, inside each
  write, as kube-apiserver does;
* the pod runtime (`runtime.PodRuntime`), which starts the pods' echo servers and reports
  them ready through the same in-process API;
* one hostNetwork proxy pod per node, `kube-system/proxyctl-<node>` (`proxypods.ProxyPods`),
  and `pods/exec` for every pod: the API server runs exec commands in the pod's network
  namespace, the node's for hostNetwork pods (`podexec.NetnsExecRunner`), so a node's rules
  can be read through the API (`kubectl exec -n kube-system proxyctl-node1 -- iptables-save`).

It is started and restarted by the supervisor (`supervisor.py`, whose docstring describes
the whole arrangement), and watches it in turn: every 0.2 s it checks that a supervisor
holds the lab's lock, and starts one when none does (unless `lab down` is removing the lab).

Start order matters for clients that reconnect the moment the port opens: the store is
loaded and the controllers and the pod runtime are attached before the server binds, so
the first request after a restart already gets allocations and sees every object with the
resourceVersion it had. The kubeconfigs are written atomically (a reader never sees a
half-written one) and only change when the server's token or CA does: `kubeconfig` (all
rights), `kubeconfig-nodes` (what the nodes' engines use) and `kubeconfig-viewer` (the
read-only user `lab-viewer`: get, list and watch; no writes, no exec).

With `--apiserver external` (external.py) the supervisor runs etcd and kube-apiserver
instead, and this process runs no API server: it waits until kube-apiserver answers, then
runs the external controllers (controllers/external.py) and the same pod runtime on it,
through the API. There are no proxy pods (their exec needs the lab's own server).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from typing import Any

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.lab.supervisor import (
    API_DIR, CONTROL_PLANE_LOCK, CONTROL_PLANE_PID, KUBECONFIG, KUBECONFIG_NODES, KUBECONFIG_VIEWER, MAX_RESTART_DELAY,
    RESTART_DELAY, SUPERVISE_PERIOD, LabAPI, run_daemon, start_supervisor, stopping, supervisor_running,
    write_private,
)
from kubectl_proxyctl.system.processes import Child

log = logging.getLogger(__name__)

SUPERVISOR_START_GRACE = 10.0  # a supervisor we started gets this long to take its lock


class SupervisorWatchdog:
    """Starts a supervisor when none holds the lab's lock (see the module docstring)."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self._child: Child | None = None
        self._started_at = 0.0
        self._failures = 0
        self._next_try = 0.0

    def check(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            self._child = None  # reaped (it was ours)
        if stopping(self.spec):
            return
        if supervisor_running(self.spec):
            self._failures = 0
            return
        now = time.monotonic()
        if self._child is not None and now - self._started_at < SUPERVISOR_START_GRACE:
            return  # still starting
        if now < self._next_try:
            return
        self._failures += 1
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (self._failures - 2)) if self._failures > 1 else 0.0
        self._next_try = now + delay
        try:
            self._child = start_supervisor(self.spec)
        except OSError as exc:
            log.error("cannot start the supervisor: %s", exc)
            return
        self._started_at = now
        log.warning("no supervisor runs lab %s: started one (pid %d)", self.spec.name, self._child.pid)


class ControlPlane:
    """`lab control-plane`: serves until SIGTERM or SIGINT (see the module docstring)."""

    def __init__(self, spec: LabSpec) -> None:
        self.spec = spec
        self.state = spec.state_dir
        self._stop = threading.Event()

    def run(self) -> int:
        def serve() -> None:
            with contextlib.ExitStack() as stack:
                if self.spec.apiserver == "external":
                    self._serve_external(stack)
                else:
                    self._serve(stack)

        return run_daemon(self.spec, CONTROL_PLANE_LOCK, CONTROL_PLANE_PID, "control plane", self._stop, serve)

    def _serve(self, stack: contextlib.ExitStack) -> None:
        """Start everything (each part is stopped by `stack`, in reverse) and watch the
        supervisor until asked to stop."""
        from kubectl_proxyctl.lab.apiserver.apiserver import APIServer
        from kubectl_proxyctl.lab.apiserver.resources import RESOURCES
        from kubectl_proxyctl.lab.controllers.controllers import LabControllers
        from kubectl_proxyctl.lab.controllers.proxypods import ProxyPods
        from kubectl_proxyctl.lab.dataplane.podexec import NetnsExecRunner
        from kubectl_proxyctl.lab.dataplane.runtime import PodRuntime

        started = time.monotonic()
        spec = self.spec
        try:
            server = APIServer(spec.host_ip, spec.api_port, state_dir=self.state / API_DIR,
                               extra_sans=[spec.host_ip, "127.0.0.1"], exec_runner=NetnsExecRunner(spec))
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the API server's state in {self.state / API_DIR}: {exc}") from exc
        stack.callback(server.stop)
        count = sum(len(server.store.objects(r)) for r in RESOURCES)
        log.info("loaded %d objects, resourceVersion %d", count, server.resource_version)
        stack.callback(LabControllers(server, spec).start().stop)
        stack.callback(PodRuntime(server, spec).start().stop)
        stack.callback(ProxyPods(server, spec).start().stop)
        try:
            server.start()
        except OSError as exc:
            raise ConfigError(f"the API server cannot listen on {spec.host_ip}:{spec.api_port}: "
                              f"{exc.strerror or exc}") from exc
        self._write_kubeconfigs(server)
        log.info("API server on %s, ready in %.2fs (kubeconfig %s)", server.url, time.monotonic() - started,
                 self.state / KUBECONFIG)
        self._watch_supervisor()

    def _serve_external(self, stack: contextlib.ExitStack) -> None:
        """The controllers and the pod runtime on kube-apiserver (see the module docstring).
        The supervisor is watched from the start: kube-apiserver may take a while."""
        from kubectl_proxyctl.lab.controllers.external import ExternalControllers, RemoteServer
        from kubectl_proxyctl.lab.dataplane.runtime import PodRuntime

        started = time.monotonic()
        server = RemoteServer(LabAPI(self.spec, timeout=5.0))
        watchdog = SupervisorWatchdog(self.spec)
        while not server.answers():
            watchdog.check()
            if self._stop.wait(SUPERVISE_PERIOD):
                return
        stack.callback(ExternalControllers(server, self.spec).start().stop)
        stack.callback(PodRuntime(server, self.spec).start().stop)  # type: ignore[arg-type]
        log.info("controllers on kube-apiserver at %s, ready in %.2fs", self.spec.api_url, time.monotonic() - started)
        self._watch_supervisor(watchdog)

    def _watch_supervisor(self, watchdog: SupervisorWatchdog | None = None) -> None:
        """Until asked to stop: start a supervisor whenever none runs."""
        watchdog = watchdog or SupervisorWatchdog(self.spec)
        while not self._stop.is_set():
            watchdog.check()
            self._stop.wait(SUPERVISE_PERIOD)
        log.info("stopping")

    def _write_kubeconfigs(self, server: Any) -> None:
        import yaml

        for name, user in ((KUBECONFIG, "admin"), (KUBECONFIG_NODES, "admin"), (KUBECONFIG_VIEWER, "viewer")):
            text = yaml.safe_dump(server.kubeconfig(server=self.spec.api_url, user=user), sort_keys=False)
            path = self.state / name
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            write_private(path, text)
