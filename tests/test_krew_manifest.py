"""The krew manifest template and the release script that fills it in."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "plugins" / "proxyctl.yaml"
SCRIPT = ROOT / "plugins" / "render_manifest.py"
HOMEPAGE = "https://github.com/kubectl-proxyctl/kubectl-proxyctl"
URI = "https://github.com/kubectl-proxyctl/kubectl-proxyctl/releases/download/v1.2.3/kubectl-proxyctl-v1.2.3-linux-amd64.tar.gz"


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_template_has_the_required_krew_fields() -> None:
    doc = load(MANIFEST.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert doc["kind"] == "Plugin"
    assert doc["metadata"]["name"] == MANIFEST.stem  # krew-index requires name == file name
    spec = doc["spec"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", spec["version"])
    from kubectl_proxyctl import __version__

    assert spec["version"] == f"v{__version__}"  # one version: the package's
    assert "python3" not in spec["caveats"]  # the archive's executable is self-contained
    assert spec["homepage"] == HOMEPAGE
    assert 0 < len(spec["shortDescription"]) <= 50
    assert spec["description"].strip()
    assert "kubectl_complete-proxyctl" in spec["caveats"]
    assert spec["platforms"]
    for platform in spec["platforms"]:
        assert platform["selector"]["matchLabels"]["os"] == "linux"
        assert {"uri", "sha256", "bin"} <= set(platform)
        assert platform["bin"] == "kubectl-proxyctl"
        shipped = {entry["from"] for entry in platform["files"]}
        assert {"kubectl-proxyctl", "kubectl_complete-proxyctl", "LICENSE"} <= shipped


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_render_fills_in_version_uri_and_checksum(tmp_path: Path) -> None:
    archive = tmp_path / "kubectl-proxyctl.tar.gz"
    archive.write_bytes(b"not really a tarball\n" * 1000)
    out = tmp_path / "proxyctl.yaml"
    result = run_script("1.2.3", URI, str(archive), "-o", str(out))
    assert result.returncode == 0, result.stderr
    checksum = hashlib.sha256(archive.read_bytes()).hexdigest()
    expected = load(MANIFEST.read_text(encoding="utf-8"))
    expected["spec"]["version"] = "v1.2.3"
    for platform in expected["spec"]["platforms"]:
        platform.update(uri=URI, sha256=checksum)
    assert load(out.read_text(encoding="utf-8")) == expected


def test_render_to_stdout_accepts_a_v_prefixed_version(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    result = run_script("v1.2.3", URI, str(archive))
    assert result.returncode == 0, result.stderr
    assert load(result.stdout)["spec"]["version"] == "v1.2.3"


def test_render_refuses_bad_input(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    assert "not semantic" in run_script("1.2", URI, str(archive)).stderr
    assert "https://" in run_script("1.2.3", "http://example.invalid/a.tar.gz", str(archive)).stderr
    missing = run_script("1.2.3", URI, str(tmp_path / "missing.tar.gz"))
    assert missing.returncode == 2 and "error:" in missing.stderr
