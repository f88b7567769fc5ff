"""The release artefacts: the sdist installs into a fresh virtualenv and its own tests pass
there, the wheel carries man pages and completions, and the krew archive runs without Python.

Building needs PyPI (or a mirror) for the build tools and the dependencies, so these tests are
`slow`. Each artefact is built once per session, into a temporary directory; the build tools'
virtualenvs are kept under build/ between runs (scripts/build-dist, scripts/build-krew).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from kubectl_proxyctl import __version__

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# A few of the package's own tests that need neither root nor a kernel nor the network.
SDIST_TESTS = ["tests/test_kubeproxyconfig.py", "tests/test_krew_manifest.py", "tests/test_plan.py"]


def run(argv: list[str], timeout: float = 900, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    run([str(ROOT / "scripts" / "build-dist"), str(out)])
    print(f"\nbuild-dist: {time.monotonic() - started:.0f}s")
    yield out


@pytest.fixture(scope="session")
def krew_dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("krew")
    started = time.monotonic()
    run([str(ROOT / "scripts" / "build-krew")], env={**os.environ, "DIST_DIR": str(out)})
    print(f"\nbuild-krew: {time.monotonic() - started:.0f}s")
    yield out


def test_wheel_installs_man_pages_and_completions(dists: Path) -> None:
    (wheel,) = dists.glob(f"kubectl_proxyctl-{__version__}-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = f"kubectl_proxyctl-{__version__}.data/data/share"
    for page in (ROOT / "man").glob("*.1"):
        assert f"{data}/man/man1/{page.name}" in names
    assert f"{data}/bash-completion/completions/kubectl-proxyctl.bash" in names
    assert f"{data}/zsh/site-functions/_kubectl-proxyctl" in names
    assert f"{data}/fish/vendor_completions.d/kubectl-proxyctl.fish" in names
    assert "kubectl_proxyctl/py.typed" in names


def test_wheel_metadata(dists: Path) -> None:
    (wheel,) = dists.glob("*.whl")
    meta = zipfile.ZipFile(wheel).read(f"kubectl_proxyctl-{__version__}.dist-info/METADATA").decode()
    head, _, description = meta.partition("\n\n")
    fields = [line.split(": ", 1) for line in head.splitlines()]
    assert ["Version", __version__] in fields and ["License-Expression", "Apache-2.0"] in fields
    assert not [v for k, v in fields if k == "Classifier" and v.startswith("License ::")]  # PEP 639
    assert any(k == "Project-URL" and v.startswith("Source, https://") for k, v in fields)
    assert ["Requires-Dist", 'yaml-rs<0.2,>=0.1.6; extra == "fast-yaml"'] in fields  # optional, as in the code
    assert not [v for k, v in fields if k == "Requires-Dist" and v.startswith("yaml-rs") and "extra" not in v]
    # On a package index relative paths point nowhere: README's repository paths are links to the tag.
    assert f"(https://github.com/kubectl-proxyctl/kubectl-proxyctl/tree/v{__version__}/deploy/)" in description
    assert "](deploy" not in description and "](./" not in description


def test_sdist_installs_in_a_fresh_venv_and_its_tests_pass(dists: Path, tmp_path: Path) -> None:
    (sdist,) = dists.glob(f"kubectl_proxyctl-{__version__}.tar.gz")
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
        top = f"kubectl_proxyctl-{__version__}"
        for needed in ("tests/conftest.py", "tests/clihelpers.py", "tests/data/small-cluster.yaml",
                       "tests/golden", "man/kubectl-proxyctl.1", "completions/kubectl-proxyctl.bash",
                       "pytest.ini", "LICENSE", "deploy/daemonset.yaml", "plugins/proxyctl.yaml"):
            assert f"{top}/{needed}" in names, needed
        tar.extractall(tmp_path, filter="data")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    started = time.monotonic()
    run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{sdist}[test]"])
    print(f"\npip install sdist: {time.monotonic() - started:.0f}s")
    assert (venv / "share" / "man" / "man1" / "kubectl-proxyctl-run.1").is_file()
    assert (venv / "share" / "bash-completion" / "completions" / "kubectl-proxyctl.bash").is_file()
    assert run([str(venv / "bin" / "kubectl-proxyctl"), "--version"]).stdout.strip().endswith(__version__)
    unpacked = tmp_path / top
    shutil.rmtree(unpacked / "kubectl_proxyctl")  # the tests must use the installed package
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PROXYCTL_", "KUBECONFIG"))}
    done = run([str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", *SDIST_TESTS], cwd=unpacked,
               env={**env, "PROXYCTL_TEST_SEED": "0"})
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_krew_archive_runs_without_python(krew_dist: Path, tmp_path: Path) -> None:
    (archive,) = krew_dist.glob(f"kubectl-proxyctl-v{__version__}-linux-*.tar.gz")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["LICENSE", "kubectl-proxyctl", "kubectl_complete-proxyctl"]
        tar.extractall(tmp_path, filter="data")
    bare = ["env", "-i", "PATH=/usr/bin:/bin"]
    help_text = run([*bare, str(tmp_path / "kubectl-proxyctl"), "--help"], cwd=tmp_path).stdout
    assert help_text.startswith("Usage: kubectl proxyctl")
    table = run([*bare, str(tmp_path / "kubectl-proxyctl"), "endpoints", "--from-file",
                 str(ROOT / "tests" / "data" / "small-cluster.yaml")], cwd=tmp_path).stdout
    assert table.split("\n")[0].split()[:3] == ["SERVICE", "PORT", "ENDPOINT"]
    assert "10.244.1.5:80" in table
    hook = run([*bare, str(tmp_path / "kubectl_complete-proxyctl"), ""], cwd=tmp_path).stdout
    assert "endpoints" in hook and hook.rstrip().splitlines()[-1].startswith(":")


def test_rendered_manifest_names_the_archive(krew_dist: Path) -> None:
    (archive,) = krew_dist.glob("*.tar.gz")
    manifest = yaml.safe_load((krew_dist / "proxyctl.yaml").read_text())
    assert manifest["spec"]["version"] == f"v{__version__}"
    (platform,) = manifest["spec"]["platforms"]
    assert platform["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert platform["uri"].endswith("/" + archive.name)
    assert platform["selector"]["matchLabels"] == {"os": "linux", "arch": "amd64"}
