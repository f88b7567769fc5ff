"""nftables mode: kube-proxy's `kube-proxy` nft table (render, writer | parse, names, trace, verify, explain, dump, reader)."""
