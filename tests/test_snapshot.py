"""Reading objects from files: YAML streams, JSON, Lists, typed lists, stdin, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.kube.snapshot import load_objects, parse_objects


def test_yaml_stream_and_lists_flatten() -> None:
    text = """
apiVersion: v1
kind: Service
metadata: {name: a}
---
apiVersion: v1
kind: List
items:
- {kind: Node, metadata: {name: n1}}
- kind: ServiceList
  items: [{metadata: {name: b}}]
---
"""
    objs = parse_objects(text)
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [("Service", "a"), ("Node", "n1"), ("Service", "b")]


def test_json_document_and_typed_list() -> None:
    doc = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
           "items": [{"metadata": {"name": "s1"}}]}
    (obj,) = parse_objects(json.dumps(doc))
    assert obj["kind"] == "EndpointSlice"


@pytest.mark.parametrize("text,fragment", [
    ("a: [1, 2", "invalid YAML"),
    ("key: value\n  bad indent: x\n", "invalid YAML at line 2"),
    ("{\"kind\": ", "invalid JSON"),
    ("- 1\n- 2\n", "expected a Kubernetes object"),
])
def test_malformed_input_is_a_config_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_objects(text, "f.yaml")
    assert fragment in str(err.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_objects(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_objects(str(tmp_path))
