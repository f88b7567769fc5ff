"""A soak: a lab under steady traffic while its pods and Services keep changing.

For `PROXYCTL_SOAK_SECONDS` (20 unless set; CI runs it so, a longer run is e.g.
`PROXYCTL_SOAK_SECONDS=600 python3 -m pytest -s tests/test_lab_soak.py`), after a warm-up:

* traffic at a steady rate: the nginx demo's NodePort from the client through every node,
  and the `churn` Service's ClusterIP from two nodes;
* every second a `churn` pod is replaced the way a rolling update does it (a new pod, once
  Ready, then the oldest deleted with a grace period, so the Service always keeps ready
  endpoints), and a Service is created and the one created two seconds before deleted.

Then: not one request failed; every node's engine is the one that started (no restart)
and its RSS (/proc/PID/status VmRSS) and open file descriptors (/proc/PID/fd) at the end
are within 10 % of what they were after the warm-up; and `kubectl proxyctl verify --node
NODE` (over SSH, with the lab's ssh config) finds every node's rules in sync with the API.
The figures are printed (run with `-s` to see them).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any, Iterator

import pytest

from kubectl_proxyctl.lab.dataplane import sshd

from labfixtures import (
    NGINX_DEMO, NGINX_PODS, Lab, Load, engine_resources, http_request, lab_skip_reason, running_lab, wait_for,
)
from waiting import TIMEOUT

SKIP = lab_skip_reason()
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

SOAK_SECONDS = float(os.environ.get("PROXYCTL_SOAK_SECONDS") or 20)
WARM_UP = min(10.0, max(5.0, SOAK_SECONDS / 4))  # seconds of the workload before the first measurement
NODES = 3
NODE_PORT = 30080
RATE = 10  # new connections per second, per `Load`
CHURN_PODS = 3  # the churn Service's pods; one is replaced every PERIOD
PERIOD = 1.0
GRACE = 2  # seconds a replaced pod keeps serving (the Service's rules drop it meanwhile)
FLAT = 0.10  # RSS and open fds at the end within 10 % of the start
PODS = "/api/v1/namespaces/default/pods"
SERVICES = "/api/v1/namespaces/default/services"


def _ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


class Churn:
    """Every `PERIOD`: a new `churn` pod, once Ready the oldest deleted (grace `GRACE`), and
    a new Service while the one of two periods before goes. Errors are kept, not raised."""

    def __init__(self, lab: Lab, pods: list[str]) -> None:
        self.lab = lab
        self.pods = list(pods)
        self.services: list[str] = []
        self.replaced = self.created = self.deleted = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-churn", daemon=True)

    def start(self) -> Churn:
        self._thread.start()
        return self

    def stop(self) -> Churn:
        self._stop.set()
        self._thread.join()
        return self

    def _run(self) -> None:
        api = self.lab.api
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._replace_one(api)
                name = f"soak-{n}"
                n += 1
                api.request("POST", SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                                               "spec": {"selector": {"app": "churn"}, "ports": [{"port": 80}]}})
                self.services.append(name)
                self.created += 1
                while len(self.services) > 2:
                    api.request("DELETE", f"{SERVICES}/{self.services.pop(0)}")
                    self.deleted += 1
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, PERIOD - (time.monotonic() - started)))

    def _replace_one(self, api: Any) -> None:
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "churn-", "labels": {"app": "churn"}},
                "spec": {"containers": [{"name": "churn", "image": "proxyctl-lab/echo",
                                         "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}
        new = api.request("POST", PODS, body)["metadata"]["name"]
        deadline = time.monotonic() + TIMEOUT
        while not _ready(api.request("GET", f"{PODS}/{new}")):
            if time.monotonic() > deadline:
                raise AssertionError(f"{new} not Ready after {TIMEOUT:g}s")
            time.sleep(0.05)
        self.pods.append(new)
        while len(self.pods) > CHURN_PODS:
            api.request("DELETE", f"{PODS}/{self.pods.pop(0)}?gracePeriodSeconds={GRACE}")
        self.replaced += 1


def engine_sample(pid: int, samples: int = 5) -> tuple[float, int]:
    """(median RSS in kB, fewest open fds) over a few samples: a sync's iptables-restore
    pipes are open for an instant, a leak stays."""
    rss, fds = [], []
    for _ in range(samples):
        r, f = engine_resources(pid)
        rss.append(r)
        fds.append(f)
        time.sleep(0.1)
    return statistics.median(rss), min(fds)


def _answers(netns: str, ip: str, port: int) -> bool:
    return http_request(netns, ip, port, timeout=0.5).ok


def in_sync(lab: Lab, node: str) -> bool:
    done = lab.proxyctl("verify", "--node", node, "--ssh-config", lab.env["PROXYCTL_SSH_CONFIG"], check=False)
    return done.returncode == 0 and "In sync" in done.stdout


@pytest.fixture(scope="module")
def soak_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("soakstate"), nodes=NODES) as lab:
        yield lab


@pytest.mark.skipif(not sshd.sshd_available(), reason="verify reaches the nodes over SSH: install openssh-server")
def test_soak_under_churn(soak_lab: Lab) -> None:
    lab = soak_lab
    spec = lab.spec
    lab.kubectl("apply", "-f", str(NGINX_DEMO))
    churn_pods = [line.split()[0].removeprefix("pod/") for line in
                  lab.cli("run", "churn", "--replicas", str(CHURN_PODS), "--labels", "app=churn", "--port", "80")
                  .stdout.splitlines() if line.endswith("created")]
    lab.kubectl("create", "service", "clusterip", "churn", "--tcp=80")  # selects app=churn
    wait_for(lambda: len(lab.ready_endpoints("nginx")) == len(NGINX_PODS), TIMEOUT, "the nginx endpoints")
    churn_ip = lab.kubectl_json("get", "svc", "churn")["spec"]["clusterIP"]
    for node in spec.nodes:
        wait_for(lambda: _answers(spec.client_ns, node.ip, NODE_PORT), TIMEOUT, f"nginx through {node.name}")
        wait_for(lambda: _answers(spec.node_ns(node), churn_ip, 80), TIMEOUT, f"churn on {node.name}")

    loads = [Load(spec.client_ns, node.ip, NODE_PORT, rate=RATE) for node in spec.nodes]
    loads += [Load(spec.node_ns(node), churn_ip, 80, rate=RATE) for node in spec.nodes[:2]]
    churn = Churn(lab, churn_pods)
    for load in loads:
        load.start()
    churn.start()
    try:
        time.sleep(WARM_UP)
        engines = lab.engine_pids()
        start = {node: engine_sample(pid) for node, pid in engines.items()}
        time.sleep(SOAK_SECONDS)
        end = {node: engine_sample(pid) for node, pid in engines.items()}
        assert lab.engine_pids() == engines, "an engine was restarted during the soak"
    finally:
        churn.stop()
        for load in loads:
            load.stop()
    requests = sum(len(load.answers) for load in loads)
    failures = [f for load in loads for f in load.failures]
    print(f"\nsoak: {SOAK_SECONDS:g}s after a {WARM_UP:g}s warm-up; {requests} requests, {len(failures)} failed; "
          f"{churn.replaced} pods replaced, {churn.created} Services created and {churn.deleted} deleted")
    for node in sorted(engines):
        (rss0, fds0), (rss1, fds1) = start[node], end[node]
        print(f"  engine {node}: RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB ({(rss1 - rss0) / rss0:+.1%}), "
              f"open fds {fds0} -> {fds1}")
    assert churn.errors == [], f"{len(churn.errors)} changes failed: {churn.errors[:3]}"
    assert failures == [], f"{len(failures)} of {requests} requests failed: {failures[:5]}"
    assert churn.replaced >= SOAK_SECONDS / PERIOD / 2, f"only {churn.replaced} pods replaced"
    for node in sorted(engines):
        (rss0, fds0), (rss1, fds1) = start[node], end[node]
        assert abs(rss1 - rss0) <= FLAT * rss0, f"engine {node}: RSS {rss0:.0f} -> {rss1:.0f} kB"
        assert abs(fds1 - fds0) <= FLAT * fds0, f"engine {node}: open fds {fds0} -> {fds1}"
    for node in spec.nodes:  # the last changes may still be syncing: in sync soon, not at once
        wait_for(lambda: in_sync(lab, node.name), TIMEOUT, f"`verify --node {node.name}` in sync", interval=0.5)

