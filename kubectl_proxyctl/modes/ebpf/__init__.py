"""eBPF mode: socket-level load balancing through cgroup hooks (connect, sendmsg, recvmsg, getpeername)."""
