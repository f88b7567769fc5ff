"""iptables mode: kube-proxy's iptables layout (naming, render, writer | parse, names, trace, verify, explain, dump, reader)."""
