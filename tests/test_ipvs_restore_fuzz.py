"""IPVS mode's `run --dry-run` text is what the real tools restore, for random clusters.

The plans come from the engine fuzz generators (tests/test_engine_fuzz.py: valid objects with
extreme values mixed with broken ones, both families, every NodePort address choice), with a
random scheduler and random timeouts on top. Two tools read the text:

* `ipset restore` (lab): the `ipset save` part, on the host, inside a throw-away network
  namespace (ipsets belong to a namespace, so the host's stay untouched); every set must come
  back with as many members as we wrote, so no member was merged or dropped.
* the engine's own netlink writes (`system/ipset.py`, lab): the same members added through
  `IpsetKernel` into sets made empty must give exactly the `ipset save` output that
  `ipset restore` of the text gave, and deleting them all must leave the sets empty.
* `ipvsadm -R`: the `ipvsadm -Sn` part needs IP_VS, which only the VM has. `payloads()` writes
  the texts to files before the VM boots, and tests/vm/ipvs_settings_suite.py restores them
  all in the same boot as the rest of the VM suite (tests/test_ipvs_vm.py).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kubectl_proxyctl.modes.ipvs import writer as ipvs_writer
from kubectl_proxyctl.modes.ipvs.render import SCHEDULERS
from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.plan.planner import ProxyConfig, plan
from netns import empty_netns, lab_skip_reason
from test_engine_fuzz import FUZZ, Case, cases, configs, convert_and_check_reports

LAB_SKIP = lab_skip_reason("ipset")
timeout = st.sampled_from([0, 0, 1, 120, 900, 86400])
# Schedulers the VM's kernel (Debian's 6.1) does not have: `twos` came with 6.2.
NEWER_SCHEDULERS = ("twos",)
ipvs_configs = st.builds(lambda c, scheduler, t, f, u: dataclasses.replace(
    c, ipvs_scheduler=scheduler, ipvs_tcp_timeout=t, ipvs_tcpfin_timeout=f, ipvs_udp_timeout=u),
    configs, st.sampled_from([s for s in SCHEDULERS if s not in NEWER_SCHEDULERS]), timeout, timeout, timeout)


def dry_run_text(state: ClusterState, config: ProxyConfig) -> str:
    return ipvs_writer.dry_run(plan(state, config))[0]


def part(text: str, header: str) -> str:
    """One tool's section of the dry-run text (`# ipvsadm -Sn`, `# ipset save`)."""
    body = "\n" + text.split(f"{header}\n", 1)[1]  # an empty section is followed by the next header at once
    return body.split("\n# ", 1)[0].strip("\n") + "\n"


def member_counts(ipset_text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in ipset_text.splitlines():
        words = line.split()
        if words[:1] == ["create"]:
            counts.setdefault(words[1], 0)
        elif words[:1] == ["add"]:
            counts[words[1]] = counts.get(words[1], 0) + 1
    return counts


@pytest.fixture(scope="module")
def ipset_netns() -> Iterator[str]:
    if LAB_SKIP:
        pytest.skip(LAB_SKIP)
    with empty_netns("ipset") as name:
        yield name


def ipset(netns: str, *args: str, stdin: str = "") -> str:
    result = subprocess.run(["ip", "netns", "exec", netns, "ipset", *args], input=stdin, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"ipset {' '.join(args)}: {result.stderr.strip()}\n{stdin[:3000]}"
    return result.stdout


@pytest.mark.lab
@given(batch=cases(), config=ipvs_configs)
@settings(FUZZ, max_examples=300)
def test_every_ipset_save_part_passes_ipset_restore(ipset_netns: str, batch: list[Case], config: ProxyConfig) -> None:
    state, _ = convert_and_check_reports(batch)
    assume(state.ports)
    text = part(dry_run_text(state, config), "# ipset save")
    try:
        ipset(ipset_netns, "restore", stdin=text)
        assert member_counts(ipset(ipset_netns, "save")) == member_counts(text)
    finally:
        ipset(ipset_netns, "destroy")


def creates_and_members(text: str) -> tuple[str, list[tuple[str, str, str, str]]]:
    """The `create` lines of an `ipset save` text, and (set, type, family, member) of each `add`."""
    creates, types, members = [], {}, []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["create"]:
            creates.append(line)
            family = words[words.index("family") + 1] if "family" in words else "inet"
            types[words[1]] = (words[2], family)
        elif words[:1] == ["add"]:
            members.append((words[1], *types[words[1]], words[2]))
    return "\n".join(creates) + "\n", members


def added_lines(save: str) -> list[str]:
    """The members of an `ipset save` output, sorted (the sets' random initval left out)."""
    return sorted(line for line in save.splitlines() if line.startswith("add "))


@pytest.mark.lab
@given(batch=cases(), config=ipvs_configs)
@settings(FUZZ, max_examples=150)
def test_netlink_member_writes_match_ipset_restore(ipset_netns: str, batch: list[Case], config: ProxyConfig) -> None:
    from kubectl_proxyctl.system.ipset import IpsetKernel
    from kubectl_proxyctl.system.netns import call_in_netns

    state, _ = convert_and_check_reports(batch)
    assume(state.ports)
    text = part(dry_run_text(state, config), "# ipset save")
    creates, members = creates_and_members(text)
    kernel = call_in_netns(ipset_netns, IpsetKernel)
    try:
        ipset(ipset_netns, "restore", stdin=text)
        restored = added_lines(ipset(ipset_netns, "save"))
        ipset(ipset_netns, "destroy")
        ipset(ipset_netns, "restore", stdin=creates)
        kernel.defer(True)
        for name, type_, family, member in members:
            kernel.add(name, type_, [member], family)
        kernel.flush()
        assert added_lines(ipset(ipset_netns, "save")) == restored
        for name, type_, family, member in members:
            kernel.delete(name, type_, [member, member], family)  # the second delete finds it gone: fine
        kernel.flush()
        assert added_lines(ipset(ipset_netns, "save")) == []
    finally:
        kernel.defer(False)
        kernel.close()
        ipset(ipset_netns, "destroy")


def payloads(directory: Path, count: int = 300) -> int:
    """Write the `ipvsadm -Sn` parts of up to `count` random clusters' dry runs to
    `directory` (one file each, with the ipvsadm `--set` line when there are timeouts);
    how many were written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[int] = [0]

    @given(batch=cases(), config=ipvs_configs)
    @settings(FUZZ, max_examples=count)
    def write(batch: list[Case], config: ProxyConfig) -> None:
        state, _ = convert_and_check_reports(batch)
        if not state.ports:
            return
        written[0] += 1
        (directory / f"{written[0]:04d}.ipvsadm").write_text(part(dry_run_text(state, config), "# ipvsadm -Sn"))

    write()
    return written[0]


def test_the_ipvsadm_payloads_are_written_for_the_vm(tmp_path: Path) -> None:
    assert payloads(tmp_path, count=20) > 0
    texts = [p.read_text() for p in sorted(tmp_path.iterdir())]
    assert all(line.startswith(("-A ", "-a ", "--set ")) for t in texts for line in t.splitlines() if line), texts[0]


