#!/usr/bin/env python3
"""Fill in the krew manifest for a release: version, archive URI and the archive's sha256.

    python plugins/render_manifest.py 0.1.0 \\
        https://github.com/kubectl-proxyctl/kubectl-proxyctl/releases/download/v0.1.0/kubectl-proxyctl-v0.1.0-linux-amd64.tar.gz \\
        dist/kubectl-proxyctl-v0.1.0-linux-amd64.tar.gz -o proxyctl.yaml

The template is `plugins/proxyctl.yaml` beside this script; every platform in it gets the
given URI and checksum. Without `-o` the manifest goes to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().with_name("proxyctl.yaml")
SEMVER = re.compile(r"^v\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (description, caveats) as `|` blocks, as the template has them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def render(template: dict[str, Any], version: str, uri: str, archive: Path) -> dict[str, Any]:
    """The template with version, URI and checksum set; raises ValueError on bad input."""
    tag = version if version.startswith("v") else f"v{version}"
    if not SEMVER.match(tag):
        raise ValueError(f"version {version!r} is not semantic (e.g. 0.1.0)")
    if not uri.startswith("https://"):
        raise ValueError(f"archive URI {uri!r} must be https://")
    checksum = sha256_of(archive)
    spec = template["spec"]
    spec["version"] = tag
    for platform in spec["platforms"]:
        platform["uri"] = uri
        platform["sha256"] = checksum
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the krew manifest for a release.")
    parser.add_argument("version", help="release version, e.g. 0.1.0 or v0.1.0")
    parser.add_argument("uri", help="https URI the release archive is downloaded from")
    parser.add_argument("archive", type=Path, help="the release archive (its sha256 goes in)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
        manifest = render(template, args.version, args.uri, args.archive)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = yaml.dump(manifest, Dumper=_ManifestDumper, sort_keys=False, width=100)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
