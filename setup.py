"""The long description for package indexes: README.md with repository paths made absolute.

Everything else is in pyproject.toml. README.md names files of the repository (`deploy/`,
`completions/README.md`, relative Markdown links); on a package index those would point
nowhere, so they become links to the repository at the release's tag.
"""

import re
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/kubectl-proxyctl/kubectl-proxyctl"


def _version() -> str:
    text = (ROOT / "kubectl_proxyctl" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def long_description() -> str:
    tag = f"v{_version()}"
    base = f"{REPOSITORY}/blob/{tag}/"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    # [text](relative/path) -> [text](https://github.com/.../blob/vX.Y.Z/relative/path)
    text = re.sub(r"\]\((?!https?://|#|mailto:)([^)\s]+)\)", lambda m: f"]({base}{m.group(1).lstrip('./')})", text)

    # `deploy/`, `completions/README.md`: a path of the repository, in code, becomes a link to it
    def link(m: re.Match[str]) -> str:
        path = m.group(1)
        target = path.lstrip("./").split(" ")[0]
        if (ROOT / target).exists() and "/" in target:
            kind = "tree" if (ROOT / target).is_dir() else "blob"
            return f"[`{path}`]({REPOSITORY}/{kind}/{tag}/{target})"
        return m.group(0)

    return re.sub(r"(?<!\[)`(\.?/?[\w.-]+/[\w./-]*)`", link, text)


setup(long_description=long_description(), long_description_content_type="text/markdown")
