"""The lab's Kubernetes-compatible API server: what stands in for kube-apiserver.

`apiserver.APIServer` ties the layers together: `httpserver` (TLS, connections, chunked
watches) → `rest` (routing, discovery, auth, content types) → `registry` (create, update,
patch and delete semantics, with `strategy`, `schema`, `patch`, `tables`) → `store`
(objects, resourceVersions, history, journal) and `watch` (event streams); `pods/exec`
streams are `remotecommand` (the Kubernetes channel protocols) over `websocket` (RFC 6455
framing). `resources`, `status` and `selectors` describe the API's kinds, errors and
selectors, and are shared with the lab's controllers; `certs` issues the serving certificate.

This package knows nothing of the lab's controllers or data plane: they build on it.
"""
