"""Golden files: rendered output compared with a reviewed, committed expected file.

`check(path, text, what)` compares; with `PROXYCTL_UPDATE_GOLDEN=1` it rewrites the file
instead (for a developer who then reviews the diff in git and commits it). Under `CI=true`
the update switch is refused and the diff is printed: CI compares, it never rewrites.

A golden test can pass against itself when a run rewrote the expected file;
`rewritten_by_this_checkout()` lists expected files that differ from what git has committed,
and tests/test_golden_files.py fails while any of them equals a fresh rendering (it was
rewritten, not reviewed and committed).
"""

from __future__ import annotations

import difflib
import os
import subprocess
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PROXYCTL_UPDATE_GOLDEN") == "1"
IN_CI = os.environ.get("CI", "").lower() == "true"


def diff(expected: str, text: str, name: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                        f"{name} (expected)", f"{name} (rendered)"))


def check(path: Path, text: str, what: str) -> None:
    """Fail unless `text` equals the expected file at `path` (see the module docstring)."""
    expected = path.read_text() if path.is_file() else ""
    if UPDATE:
        if IN_CI:
            pytest.fail(f"PROXYCTL_UPDATE_GOLDEN=1 is refused under CI=true: golden files are compared in CI, "
                        f"never rewritten. {path} {'matches' if text == expected else 'would change'}:\n"
                        + diff(expected, text, path.name))
        if text != expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return
    assert path.is_file(), f"{path} is missing; run with PROXYCTL_UPDATE_GOLDEN=1 and review the new file"
    if text != expected:
        pytest.fail(f"{what} differs from {path} (PROXYCTL_UPDATE_GOLDEN=1 rewrites it for review):\n"
                    + diff(expected, text, path.name))


def rewritten_by_this_checkout() -> list[Path] | None:
    """Expected files whose content differs from the committed one (None: not a git checkout)."""
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", str(GOLDEN)],
                                cwd=GOLDEN.parent.parent, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    root = GOLDEN.parent.parent
    out = []
    for line in result.stdout.splitlines():
        name = line[3:].split(" -> ")[-1].strip('"')
        path = root / name
        if path.name.startswith("expected.") and path.is_file():
            out.append(path)
    return out
