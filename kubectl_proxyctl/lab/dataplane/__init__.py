"""The lab's data plane: the "machines" a Service's packets really cross.

* `topology`: the network, built over netlink: a namespace per node, for the client and for
  every pod, the underlay and pod bridges, veths, addresses, routes and sysctls;
* `runtime`: the pod runtime (a kubelet plus a CNI plugin, in the lab daemon), which gives
  every scheduled pod a namespace and starts its echo server;
* `echo`: the server every pod runs (`python -m kubectl_proxyctl.lab.dataplane.echo`);
* `sshd`: SSH into the nodes (keys, configurations, known_hosts).

The kernel work itself (netlink, namespaces, starting and stopping processes) is done by
`kubectl_proxyctl.system`; this package decides what the lab's network and pods look like.
"""
