"""eBPF mode's objects in the kernel: the pinned maps and the programs' cgroup links.

Everything is pinned under one directory of the bpffs (`/sys/fs/bpf/proxyctl` by default):
the maps by their names in `maps.MAPS`, and one bpf link per program under `links/`. Pinning
is what lets the engine restart (an upgrade, a crash) without a moment of unbalanced
connect()s: the next engine finds the maps holding the last state and the programs still
attached, reads the maps back, writes only the difference, and swaps in its own programs
with `BPF_LINK_UPDATE` (the attachment never goes away). Removing the pins (`remove`)
detaches the programs and frees the maps once no one holds them.

Maps are reused only when they carry our layout marker and the sizes of `maps.MAPS`;
anything else under the directory is replaced. All calls go through `system.bpf`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.modes.ebpf import maps

log = logging.getLogger(__name__)


class EbpfKernel:
    """The pinned maps and program links of one pin directory and one cgroup."""

    def __init__(self, pin_path: str = "", cgroup_path: str = "", check_cgroup: bool = True) -> None:
        from kubectl_proxyctl.system import bpf

        self._bpf = bpf
        self.pin_path = pin_path or maps.PIN_ROOT
        self._maps: dict[str, Any] = {}
        self.reused = False  # the maps were found pinned with our layout (see `open`)
        self.cgroup_path = cgroup_path
        if not check_cgroup:
            return  # only to remove what is pinned
        bpf.bpffs_root()  # mounts the bpffs when the node has none
        root = bpf.cgroup2_root()
        self.cgroup_path = cgroup_path or root
        if not os.path.isdir(self.cgroup_path):
            raise ApplyError(f"--cgroup-path {self.cgroup_path}: no such cgroup directory")
        if not os.path.exists(os.path.join(self.cgroup_path, "cgroup.procs")):
            raise ApplyError(f"--cgroup-path {self.cgroup_path}: not a cgroup v2 directory (the cgroup v2 "
                             f"hierarchy is mounted at {root})")

    # --- maps --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the pinned maps, or create and pin fresh ones when any is missing or of
        another layout (then every old pin is removed first, programs included)."""
        bpf = self._bpf
        found: dict[str, Any] = {}
        try:
            for name, spec in maps.MAPS.items():
                path = os.path.join(self.pin_path, name)
                if not os.path.exists(path):
                    raise LookupError(name)
                found[name] = bpf.BpfMap.open_pinned(path, spec)
            marker = found["names"].lookup(maps.pack_slot(maps.MARKER_NAME_ID))
            if marker is None or maps.unpack_name(marker) != maps.LAYOUT_MARKER:
                raise LookupError("layout marker")
        except (LookupError, ApplyError) as exc:
            for m in found.values():
                m.close()
            if os.path.isdir(self.pin_path):
                log.info("eBPF maps under %s are not ours or of another layout (%s): recreating them",
                         self.pin_path, exc)
                self.remove()
            self._create()
            return
        self._maps = found
        self.reused = True

    def _create(self) -> None:
        bpf = self._bpf
        os.makedirs(os.path.join(self.pin_path, maps.LINKS_DIR), exist_ok=True)
        made: dict[str, Any] = {}
        try:
            for name, spec in maps.MAPS.items():
                m = bpf.BpfMap.create(spec)
                made[name] = m
                m.pin(os.path.join(self.pin_path, name))
            made["names"].update(maps.pack_slot(maps.MARKER_NAME_ID), maps.pack_name(maps.LAYOUT_MARKER))
        except ApplyError:
            for m in made.values():
                m.close()
            self.remove()
            raise
        self._maps = made
        self.reused = False

    def map(self, name: str) -> Any:
        if not self._maps:
            self.open()
        return self._maps[name]

    def map_fds(self) -> dict[str, int]:
        if not self._maps:
            self.open()
        return {name: m.fd for name, m in self._maps.items()}

    # --- programs ----------------------------------------------------------------------

    def attach(self) -> list[str]:
        """Load every program and attach it to the cgroup: a new link where none is pinned,
        else the pinned link is pointed at the new program (no gap). Returns what was newly
        attached. Both families' programs, whatever family the engine serves: an IPv6
        socket reaches IPv4 services by their mapped addresses (::ffff:a.b.c.d) through the
        IPv6 hooks, which the IPv6 programs serve from the IPv4 maps."""
        from kubectl_proxyctl.modes.ebpf import programs

        bpf = self._bpf
        self.map("names").update(maps.pack_slot(maps.CGROUP_NAME_ID), maps.pack_name(self.cgroup_path))
        fds = programs.load(self.map_fds())
        attached: list[str] = []
        cgroup_fd = os.open(self.cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for spec in maps.PROGRAMS:
                path = self._link_path(spec.name)
                prog_fd = fds[spec.name]
                link_fd = -1
                if os.path.exists(path):
                    try:
                        link_fd = bpf.obj_get(path)
                        bpf.link_update(link_fd, prog_fd)
                    except ApplyError as exc:
                        log.info("re-attaching %s: %s", spec.name, exc)
                        bpf.unpin(path)
                        link_fd = -1
                if link_fd < 0:
                    link_fd = bpf.link_create(prog_fd, cgroup_fd, spec.attach_type)
                    bpf.pin(link_fd, path)
                    attached.append(spec.name)
                os.close(link_fd)
        finally:
            os.close(cgroup_fd)
            for fd in fds.values():
                os.close(fd)
        return attached

    def _link_path(self, program: str) -> str:
        return os.path.join(self.pin_path, maps.LINKS_DIR, program)

    def missing(self) -> list[str]:
        """What of our state is gone: a pinned map, a link, or a program detached from the cgroup."""
        out = [f"BPF map {os.path.join(self.pin_path, n)}" for n in maps.MAPS
               if not os.path.exists(os.path.join(self.pin_path, n))]
        wanted = list(maps.PROGRAMS)
        try:
            attached = {(p.get("attach_type"), p.get("name")) for p in self._bpf.cgroup_programs(self.cgroup_path)}
        except ApplyError as exc:
            log.warning("cannot list the programs of %s: %s", self.cgroup_path, exc)
            return out
        out += [f"program {p.name} ({p.attach_type}) on {self.cgroup_path}" for p in wanted
                if (p.attach_type, p.name) not in attached]
        return out

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps = {}

    def remove(self) -> list[str]:
        """Unpin every link (detaching the programs), every map and the directory. Returns
        what was removed."""
        removed: list[str] = []
        links = os.path.join(self.pin_path, maps.LINKS_DIR)
        if os.path.isdir(links):
            for name in sorted(os.listdir(links)):
                self._bpf.unpin(os.path.join(links, name))
                removed.append(f"program {name}")
        self.close()
        if os.path.isdir(self.pin_path):
            for name in sorted(os.listdir(self.pin_path)):
                path = os.path.join(self.pin_path, name)
                if os.path.isdir(path):
                    if not os.listdir(path):
                        os.rmdir(path)
                    continue
                self._bpf.unpin(path)
                removed.append(f"map {name}")
            try:
                os.rmdir(self.pin_path)
            except OSError as exc:
                log.info("cannot remove %s: %s", self.pin_path, exc)
        return removed
