"""The lab: a real multi-node Service data plane on one machine, in network namespaces.

It reads as three parts, each a package, plus what holds them together:

* `apiserver/`: the Kubernetes-compatible API server (REST, storage, watches, TLS) that the
  engines, `kubectl` and the `kubernetes` client talk to;
* `controllers/`: what a cluster's control plane does to the API's objects (nodes, IP and
  port allocation, scheduling, graceful pod deletion, EndpointSlices and Endpoints);
* `dataplane/`: what runs on the "machines": the network of namespaces, bridges and veths
  (`topology`), the pod runtime and its echo servers, and sshd on every node;
* `spec.py` (the lab's shape: names, addresses, ranges), `controlplane.py` (the process that
  serves the API: the API server, the controllers and the pod runtime) and `supervisor.py`
  (the daemon that runs the control plane, the engines and sshd, restarted by the control
  plane in turn; `lab up`/`lab down` and `lab status`), and `external.py` (etcd and the
  upstream kube-apiserver in place of `apiserver/`, for `lab up --apiserver external`).

Dependencies point one way: `controllers` use `apiserver`, `dataplane` uses both, and
`apiserver` knows neither. Kernel work (netlink, namespaces, processes) goes through
`kubectl_proxyctl.system`, like everywhere else in the project.
"""
