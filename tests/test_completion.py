"""Shell completion: the kubectl plugin hook (Cobra `__complete` protocol) and the static scripts.

Anything that could pull modules into this process that another test asserts are absent
(import-cost checks, script generation) runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.shell_completion import CompletionItem

from kubectl_proxyctl.cli import completion
from kubectl_proxyctl.cli.lazy import LazyGroup
from kubectl_proxyctl.cli.main import COMMANDS, cli

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("kubernetes", "paramiko", "pyroute2")

OBJECTS = textwrap.dedent(
    """\
    apiVersion: v1
    kind: List
    items:
    - apiVersion: v1
      kind: Service
      metadata: {name: web, namespace: shop}
      spec: {clusterIP: 10.96.0.10, ports: [{port: 80, protocol: TCP}]}
    - apiVersion: v1
      kind: Service
      metadata: {name: worker, namespace: shop}
      spec: {clusterIP: 10.96.0.11, ports: [{port: 8080, protocol: TCP}]}
    - apiVersion: v1
      kind: Service
      metadata: {name: kubernetes, namespace: default}
      spec: {clusterIP: 10.96.0.1, ports: [{port: 443, protocol: TCP}]}
    - apiVersion: v1
      kind: Namespace
      metadata: {name: kube-system}
    """
)


def hook(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *words: str) -> list[str]:
    """Run `kubectl_complete-proxyctl WORDS...` in-process; its stdout lines. Stderr must stay empty."""
    monkeypatch.setattr(sys, "argv", ["kubectl_complete-proxyctl", *words])
    completion.main()
    out, err = capsys.readouterr()
    assert err == ""
    return out.splitlines()


def values(lines: list[str]) -> list[str]:
    return [line.split("\t", 1)[0] for line in lines[:-1]]


@pytest.fixture
def objects_file(tmp_path: Path) -> str:
    path = tmp_path / "objects.yaml"
    path.write_text(OBJECTS, encoding="utf-8")
    return str(path)


def test_subcommands_with_descriptions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = hook(monkeypatch, capsys, "")
    assert lines[-1] == ":4"
    described = dict(line.split("\t", 1) for line in lines[:-1])
    assert sorted(described) == sorted(COMMANDS)
    assert all(described.values()), described


def test_partial_subcommand(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert values(hook(monkeypatch, capsys, "end")) == ["endpoints"]


def test_flag_names(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    lines = hook(monkeypatch, capsys, "endpoints", "--o")
    assert values(lines) == ["--output-watch-events", "--output"]
    assert lines[1].startswith("--output\t")
    assert lines[-1] == ":4"


def test_output_choices(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    endpoints = cli.get_command(click.Context(cli), "endpoints")
    assert endpoints is not None
    output = next(p for p in endpoints.params if p.name == "output")
    assert isinstance(output.type, click.Choice)
    lines = hook(monkeypatch, capsys, "endpoints", "-o", "")
    assert values(lines) == list(output.type.choices)
    assert lines[-1] == ":4"


def test_path_option_leaves_completion_to_the_shell(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hook(monkeypatch, capsys, "endpoints", "--from-file", "") == [":0"]


def test_namespaces_from_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], objects_file: str
) -> None:
    lines = hook(monkeypatch, capsys, "endpoints", "--from-file", objects_file, "-n", "")
    assert values(lines) == ["default", "kube-system", "shop"]
    assert values(hook(monkeypatch, capsys, "endpoints", "--from-file", objects_file, "-n", "s")) == ["shop"]


def test_services_in_the_chosen_namespace_both_forms(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], objects_file: str
) -> None:
    base = ("endpoints", "--from-file", objects_file, "-n", "shop")
    assert values(hook(monkeypatch, capsys, *base, "")) == ["web", "worker"]
    assert values(hook(monkeypatch, capsys, *base, "wo")) == ["worker"]
    assert values(hook(monkeypatch, capsys, *base, "svc/")) == ["svc/web", "svc/worker"]
    assert values(hook(monkeypatch, capsys, *base, "svc/we")) == ["svc/web"]


def test_cluster_failures_are_silent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-kubeconfig")
    assert hook(monkeypatch, capsys, "endpoints", "--kubeconfig", missing, "-n", "") == [":4"]
    assert hook(monkeypatch, capsys, "endpoints", "--kubeconfig", missing, "") == [":4"]
    # objects from stdin: completion must not block reading it
    assert hook(monkeypatch, capsys, "endpoints", "--from-file", "-", "-n", "") == [":4"]


def test_broken_subcommand_gives_error_directive_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = LazyGroup(name="kubectl-proxyctl", lazy_subcommands={"gone": ("no_such_module:cmd", "Gone.")})
    monkeypatch.setattr("kubectl_proxyctl.cli.main.cli", broken)
    assert hook(monkeypatch, capsys, "") == [":1"]


def test_cobra_lines_are_single_line() -> None:
    items = [
        CompletionItem("a", help="two\nlines\tand tab"),
        CompletionItem("b"),
        CompletionItem("", type="file"),
    ]
    assert completion.cobra_lines(items) == ["a\ttwo lines and tab", "b", ":0"]


def _installed(*names: str) -> bool:
    return all(shutil.which(name) for name in names)


@pytest.mark.kubectl
@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not on PATH")
@pytest.mark.skipif(
    not _installed("kubectl-proxyctl", "kubectl_complete-proxyctl"),
    reason="the package's executables are not on PATH (pip install -e .)",
)
def test_real_kubectl_runs_the_plugin_completion(tmp_path: Path) -> None:
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "kubeconfig"))
    result = subprocess.run(
        ["kubectl", "__complete", "proxyctl", ""], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == ":4", result.stdout
    assert sorted(values(lines)) == sorted(COMMANDS)


def _heavy_modules_after(words: list[str]) -> tuple[list[str], str]:
    code = (
        "import json, sys\n"
        f"sys.argv = ['kubectl_complete-proxyctl', *{words!r}]\n"
        "from kubectl_proxyctl.cli.completion import main\n"
        "main()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    return json.loads(result.stderr.strip().splitlines()[-1]), result.stdout


@pytest.mark.parametrize(
    "words",
    [[""], ["endpoints", "--"], ["endpoints", "-o", ""], ["lab", ""], ["lab", "--"]],
    ids=["commands", "endpoints-flags", "endpoints-output", "lab-commands", "lab-flags"],
)
def test_command_and_flag_completion_imports_nothing_heavy(words: list[str]) -> None:
    heavy, stdout = _heavy_modules_after(words)
    assert stdout.splitlines()[-1] == ":4", stdout
    assert heavy == [], f"completing {words} imported {heavy}"


@pytest.mark.parametrize(
    ("shell", "file_name"),
    [("bash", "kubectl-proxyctl.bash"), ("zsh", "_kubectl-proxyctl"), ("fish", "kubectl-proxyctl.fish")],
)
def test_static_script_is_current(shell: str, file_name: str) -> None:
    env = dict(os.environ, _PROXYCTL_COMPLETE=f"{shell}_source")
    result = subprocess.run(
        [sys.executable, "-m", "kubectl_proxyctl"], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=60, check=True,
    )
    generated = result.stdout.rstrip("\n") + "\n"
    committed = (ROOT / "completions" / file_name).read_text(encoding="utf-8")
    assert "complete" in generated and "kubectl-proxyctl" in generated
    assert committed == generated, (
        f"completions/{file_name} is stale: run "
        f"`_PROXYCTL_COMPLETE={shell}_source python -m kubectl_proxyctl > completions/{file_name}`"
    )
