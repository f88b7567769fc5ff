"""IPVS mode: kube-proxy's IPVS layout, read and explained (parse, names, trace, verify, explain, reader); the engine cannot write it yet."""
