"""The pieces the lab's two daemons recover with, without a lab: locks, finding a process by
its command line, adopting processes (by record, by command line, without duplicates), and
removing what a killed daemon left half-written. Real processes (`sleep`), no root needed."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.lab.supervisor import (
    ManagedProcess, lock_held, remove_state, take_lock, write_json,
)
from kubectl_proxyctl.system.processes import argv_contains, command_lines, find_by_argv, spawn

from waiting import wait_for


def test_argv_contains_words_in_a_row_also_in_a_rewritten_title() -> None:
    argv = ["/usr/bin/python3", "/usr/bin/kubectl-proxyctl", "lab", "supervise", "--name", "t1"]
    assert argv_contains(argv, ["lab", "supervise", "--name", "t1"])
    assert not argv_contains(argv, ["lab", "supervise", "--name", "t"])
    assert not argv_contains(argv, ["lab", "control-plane", "--name", "t1"])
    title = ["sshd: /usr/sbin/sshd -D -e -f /s/ssh/sshd_config-node10 [listener] 0 of 10-100 startups"]
    assert argv_contains(title, ["/usr/sbin/sshd", "-D", "-e", "-f", "/s/ssh/sshd_config-node10"])
    assert not argv_contains(title, ["/usr/sbin/sshd", "-D", "-e", "-f", "/s/ssh/sshd_config-node1"])


def test_a_lock_is_seen_held_from_another_process_and_not_taken_twice(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    assert not lock_held(path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from pathlib import Path\n"
        "from kubectl_proxyctl.lab.supervisor import take_lock\n"
        f"assert take_lock(Path({str(path)!r})) is not None\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert lock_held(path)
        assert take_lock(path, patience=0.1) is None
    finally:
        holder.kill()
        holder.wait()
    assert not lock_held(path)  # released with the process, however it ended
    assert take_lock(path, patience=0.1) is not None


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _managed(tmp_path: Path, tag: str) -> ManagedProcess:
    # A command line unique to this test run: `sleep` with a distinctive duration.
    argv = ["sleep", f"{300 + zlib.crc32(f'{tmp_path}/{tag}'.encode()) % 100000}.5"]
    return ManagedProcess("sleeper", argv, tmp_path / "sleeper.log", tmp_path / "sleeper.json")


def test_adopt_by_record_then_by_command_line_and_without_duplicates(
        tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    first = _managed(tmp_path, "a")
    first.start()
    assert first.child is not None
    sleepers.append(first.child)
    pid = first.child.pid
    assert json.loads(first.record_path.read_text())["pid"] == pid

    again = _managed(tmp_path, "a")  # a new supervisor: the record names a live process
    assert again.adopt(command_lines()) and again.ref is not None and again.ref.pid == pid and again.alive()

    first.record_path.unlink()  # a record lost in a crash: found by its command line
    third = _managed(tmp_path, "a")
    assert third.adopt(command_lines()) and third.ref is not None and third.ref.pid == pid
    assert json.loads(third.record_path.read_text())["pid"] == pid, "the record is written again"

    duplicate = spawn(third.argv, tmp_path / "dup.log")  # the same command started twice
    sleepers.append(duplicate)
    wait_for(lambda: Path(f"/proc/{duplicate.pid}/cmdline").read_bytes(), 10,
             "the duplicate's command line (empty for an instant after a vfork)")
    fourth = _managed(tmp_path, "a")
    assert fourth.adopt(command_lines()) and fourth.ref is not None and fourth.ref.pid == pid
    wait_for(lambda: duplicate.poll() is not None, 10, "the duplicate to be stopped")
    assert [r.pid for r in find_by_argv(third.argv)] == [pid]


def test_a_record_of_another_command_line_is_not_adopted(
        tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    old = _managed(tmp_path, "old")
    old.start()
    assert old.child is not None
    sleepers.append(old.child)
    new = _managed(tmp_path, "new")  # the same record path, another argv (an upgrade)
    assert not new.adopt(command_lines())
    wait_for(lambda: old.child is not None and old.child.poll() is not None, 10, "the old process to be stopped")


def test_remove_state_also_removes_half_written_files(tmp_path: Path) -> None:
    spec = LabSpec.build("half", nodes=1, state_root=str(tmp_path))
    state = spec.state_dir
    (state / "run").mkdir(parents=True)
    write_json(state / "supervisor.pid", {"pid": 1, "start": 1})
    (state / "control-plane.pid.1234.tmp").write_text("{")
    (state / "kubeconfig.99.tmp").write_text("apiVersion")
    (state / "stopping").touch()
    assert remove_state(spec)
    assert not state.exists()
