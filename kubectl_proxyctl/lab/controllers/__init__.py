"""The lab's control plane: controllers that give the API server's objects real semantics.

`controllers.LabControllers` attaches to a lab API server and does what
kube-controller-manager, the scheduler and a load-balancer controller would: Node objects,
allocation of ClusterIPs, NodePorts, load-balancer IPs, pod nodes and pod IPs
(`allocators`, in the API server's admission), graceful pod deletion, and EndpointSlices and
Endpoints for every Service with a selector (`endpointslices`). `external.ExternalControllers`
does the same through the API of the upstream kube-apiserver, which allocates ClusterIPs and
NodePorts itself (`lab up --apiserver external`).

Controllers build on `lab.apiserver`; they touch no kernel state (that is `lab.dataplane`).
"""
