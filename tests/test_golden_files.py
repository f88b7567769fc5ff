"""The golden files themselves: never rewritten by a run and then compared with themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import golden
import nfthelpers
import pytest
from test_golden_iptables import render_case as render_iptables

RENDERERS = {
    "expected.iptables": lambda case: render_iptables(case).text,
    "expected.nftables": lambda case: nfthelpers.render_case(case).text,
}


def test_no_expected_file_was_rewritten_by_a_run() -> None:
    """An expected file that differs from git's copy *and* equals a fresh rendering was
    rewritten by PROXYCTL_UPDATE_GOLDEN=1 and not yet reviewed and committed: until it is,
    the golden test compares the renderer with itself."""
    changed = golden.rewritten_by_this_checkout()
    if changed is None:
        pytest.skip("not a git checkout: cannot tell rewritten golden files from reviewed ones")
    rewritten = [path for path in changed if path.name in RENDERERS
                 and path.read_text() == RENDERERS[path.name](path.parent.name)]
    assert not rewritten, ("golden files rewritten by a run and not committed (review `git diff "
                           "tests/golden`, then commit them): " + ", ".join(str(p) for p in rewritten))


def test_every_case_has_an_expected_file_per_mode() -> None:
    for case in sorted(d for d in golden.GOLDEN.iterdir() if (d / "objects.yaml").is_file()):
        for name in RENDERERS:
            assert (case / name).is_file(), f"{case.name} has no {name}"


def test_the_update_switch_is_refused_in_ci(tmp_path: Path) -> None:
    """`CI=true PROXYCTL_UPDATE_GOLDEN=1` fails the golden tests and prints the diff instead of
    rewriting; the expected file stays as it was."""
    tests = Path(__file__).parent
    env = {**os.environ, "CI": "true", "PROXYCTL_UPDATE_GOLDEN": "1", "PROXYCTL_TEST_SEED": "0"}
    before = (golden.GOLDEN / "clusterip" / "expected.iptables").read_bytes()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tests / "test_golden_iptables.py::test_golden[clusterip]")],
                            cwd=tests.parent, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "PROXYCTL_UPDATE_GOLDEN=1 is refused under CI=true" in result.stdout, result.stdout
    assert (golden.GOLDEN / "clusterip" / "expected.iptables").read_bytes() == before


def test_a_changed_rendering_shows_a_diff(tmp_path: Path) -> None:
    path = tmp_path / "expected.iptables"
    path.write_text("-A KUBE-SERVICES -j ACCEPT\n")
    if golden.UPDATE:
        pytest.skip("PROXYCTL_UPDATE_GOLDEN=1 rewrites instead of comparing")
    with pytest.raises(pytest.fail.Exception, match=r"(?s)differs from .*\+-A KUBE-SERVICES -j DROP"):
        golden.check(path, "-A KUBE-SERVICES -j DROP\n", "the rules")
