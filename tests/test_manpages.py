"""Man pages: `man/` matches a fresh generation, and the generator's troff is right."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from kubectl_proxyctl.cli import manpages
from kubectl_proxyctl.cli.lazy import LazyGroup
from kubectl_proxyctl.cli.main import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
REGENERATE = "run `python -m kubectl_proxyctl.cli.manpages man/` and commit man/"


@click.group()
def toy_lab() -> None:
    """Lab things."""


@toy_lab.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Choice(["a", "b"]), default="a", show_default=True, help="Format.")
def apiserver(name: str, output: str) -> None:
    """Run a fake API server.

    Paths look like C:\\dir; a line may start with a dot:

    \b
    .hidden   stays
      indented

    \f
    Developer notes that users never see.
    """


@toy_lab.command(hidden=True)
def secret() -> None:
    """Not documented."""


def toy_cli(lab_target: str = f"{__name__}:toy_lab") -> click.Group:
    return LazyGroup(name="toy", help="The root.", lazy_subcommands={"lab": (lab_target, "Lab things.")})


def test_man_pages_are_current(tmp_path: Path) -> None:
    try:
        written = manpages.write_pages(tmp_path)
    except manpages.ManPageError as exc:
        pytest.fail(f"cannot generate man pages: {exc}")
    committed = {p.name for p in MAN.glob("*.1")}
    missing = sorted(set(written) - committed)
    extra = sorted(committed - set(written))
    changed = sorted(
        name for name in set(written) & committed
        if (tmp_path / name).read_bytes() != (MAN / name).read_bytes()
    )
    assert not (missing or extra or changed), (
        f"man/ is stale (missing: {missing}, extra: {extra}, changed: {changed}): {REGENERATE}"
    )


def test_a_page_for_the_root_and_every_subcommand() -> None:
    pages = manpages.render_pages()
    assert "kubectl-proxyctl.1" in pages
    for name in COMMANDS:
        assert f"kubectl-proxyctl-{name}.1" in pages


def test_nested_pages_and_cross_references() -> None:
    pages = manpages.render_pages(toy_cli())
    assert sorted(pages) == [
        "kubectl-proxyctl-lab-apiserver.1", "kubectl-proxyctl-lab.1", "kubectl-proxyctl.1"
    ]
    assert "See \\fBkubectl\\-proxyctl\\-lab\\-apiserver\\fR(1)." in pages["kubectl-proxyctl-lab.1"]
    assert "See \\fBkubectl\\-proxyctl\\-lab\\fR(1)." in pages["kubectl-proxyctl.1"]
    page = pages["kubectl-proxyctl-lab-apiserver.1"]
    assert page.startswith('.TH "KUBECTL-PROXYCTL-LAB-APISERVER" "1" "" "kubectl-proxyctl ')
    assert "\\fBkubectl proxyctl lab apiserver\\fR [OPTIONS] NAME" in page
    assert "\\fB\\-o\\fR, \\fB\\-\\-output\\fR [a|b]\nFormat. [default: a]" in page
    assert "\\fBkubectl\\-proxyctl\\-lab\\fR(1)" in page.split(".SH SEE ALSO", 1)[1]


def test_help_text_is_escaped_and_click_markers_are_honoured() -> None:
    page = manpages.render_pages(toy_cli())["kubectl-proxyctl-lab-apiserver.1"]
    assert "Paths look like C:\\edir; a line may start with a dot:" in page
    assert ".nf\n\\&.hidden   stays\n  indented\n.fi" in page
    assert "Developer notes" not in page
    assert "secret" not in page


def test_generation_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    first = manpages.render_pages(toy_cli())
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    monkeypatch.setenv("COLUMNS", "40")
    assert manpages.render_pages(toy_cli()) == first


def test_unimportable_subcommand_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = toy_cli("kubectl_proxyctl.cli.commands.no_such_command:cmd")
    expected = r"cannot load subcommand `kubectl proxyctl lab`.*no_such_command"
    with pytest.raises(manpages.ManPageError, match=expected):
        manpages.render_pages(broken)
    monkeypatch.setattr("kubectl_proxyctl.cli.main.cli", broken)
    (tmp_path / "kubectl-proxyctl.1").write_text("old\n")
    assert manpages.main([str(tmp_path)]) == 1
    assert "error: cannot load subcommand `kubectl proxyctl lab`" in capsys.readouterr().err
    assert (tmp_path / "kubectl-proxyctl.1").read_text() == "old\n"


def test_stale_pages_are_removed(tmp_path: Path) -> None:
    (tmp_path / "kubectl-proxyctl-removed.1").write_text("gone\n")
    (tmp_path / "README").write_text("kept\n")
    written = manpages.write_pages(tmp_path, toy_cli())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*written, "README"])


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed")
def test_pages_render_without_troff_warnings(tmp_path: Path) -> None:
    pages = {**manpages.render_pages(), **manpages.render_pages(toy_cli())}
    for name, text in pages.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        result = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stderr == "", f"{name}: {result.stderr}"
