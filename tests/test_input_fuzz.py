"""Property: no input makes the CLI fail with an internal error or a wall of text.

The CLI entry point (`cli.main.run`, the root click command behind the one error boundary) is
driven in-process with click's CliRunner isolation (stdin as bytes, stdout and stderr
captured) with generated input:

* kubeconfigs: random YAML structures, and a valid kubeconfig (including exec and
  auth-provider users) with one field replaced by a value of the wrong type;
* byte soup on stdin for `--from-file -`;
* `kubectl get -o yaml|json` Lists cut at every kind of position;
* the upstream six-services objects (Node, Services, EndpointSlices) with one field of one
  object replaced by a value of the wrong type, through endpoints, run --dry-run, verify,
  explain and dump;
* `--rules-file`: `nft -j` output with one field replaced by a value of any type, and
  iptables-save / ipvsadm output with one word of one line replaced by any text.

Asserted: the exit status is 0, 1, 2 or 3; nothing but our own `error:` / `warning:` lines on
stderr (no traceback, no "internal error", no library log line), at most one `error:` line and
it ends the output; inputs without objects (kubeconfigs, soup, cut lists) give at most one
line. Derandomised and bounded: the whole module runs in a few seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kubectl_proxyctl.cli.main import run

GOLDEN = Path(__file__).parent / "golden" / "upstream-six-services"
NFT_SAVE = str(Path(__file__).parent / "data" / "rules" / "six-services.nft-save.txt")
OBJECTS: list[dict[str, Any]] = list(yaml.safe_load_all((GOLDEN / "objects.yaml").read_text()))

FUZZ = settings(derandomize=True, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
RUNNER = CliRunner()


def invoke(args: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    with RUNNER.isolation(input=stdin) as (out, err, _):
        code = run(args, prog_name="kubectl proxyctl")
    return code, out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace")


def check(code: int, err: str, *, max_lines: int | None = None, max_conversion_warnings: int = 0) -> None:
    assert code in (0, 1, 2, 3), (code, err)
    assert "Traceback" not in err and "internal error" not in err and "ERROR:" not in err, err
    lines = err.splitlines()
    assert all(ln.startswith(("error: ", "warning: ")) for ln in lines), err
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) <= 1, err
    if errors:
        assert lines[-1] == errors[0], err
    if code in (2, 3):
        assert errors, err
    if max_lines is not None:
        assert len(lines) <= max_lines, err
    conversion = [ln for ln in lines if ln.startswith(("warning: skipping", "warning: ... and"))
                  or "IPv4 text with leading zeros" in ln]
    assert len(conversion) <= max_conversion_warnings, err
    assert len(lines) - len(conversion) <= 1, err


# --- values of every type ---------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["", "None", "0", "-1", "1.2.3.041", "::", "a" * 300, "nöde",
                                           "x\ny", "10.0.0.1/33", "https://127.0.0.1:1", "List"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a document (maps and lists), the document itself excluded."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


# --- kubeconfigs ------------------------------------------------------------------------------

EXEC_USER = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "true",
                      "args": ["--token"], "env": [{"name": "A", "value": "b"}], "provideClusterInfo": False}}
AUTH_USER = {"auth-provider": {"name": "oidc", "config": {"id-token": "x", "idp-issuer-url": "https://127.0.0.1:1"}}}


def base_kubeconfig(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True,
                                               "certificate-authority-data": "", "tls-server-name": "x"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
        "current-context": "ctx",
    }


BASES = [base_kubeconfig({"token": "t", "username": "a", "password": "b"}), base_kubeconfig(EXEC_USER),
         base_kubeconfig(AUTH_USER), base_kubeconfig({"client-certificate-data": "eA==", "client-key-data": "eA=="})]


@st.composite
def wrong_kubeconfigs(draw: Any) -> str:
    if draw(st.integers(0, 3)) == 0:  # a random YAML structure
        return dump(draw(values))
    base = draw(st.sampled_from(BASES))
    path = draw(st.sampled_from(sorted(paths(base), key=repr)))
    return dump(replaced(base, path, draw(values)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ, max_examples=50)
@given(text=wrong_kubeconfigs())
def test_malformed_kubeconfigs(workdir: Path, text: str) -> None:
    path = workdir / "kubeconfig"
    path.write_text(text)
    code, _, err = invoke(["endpoints", "-A", "-o", "json", "--kubeconfig", str(path), "--request-timeout", "2s"])
    check(code, err, max_lines=1)
    assert code in (2, 3), err  # nothing is listening: never a success


# --- stdin ------------------------------------------------------------------------------------

COMMANDS = [
    ["endpoints", "-A", "-o", "json"],
    ["run", "--dry-run", "--node-name", "test-node"],
    ["verify", "--rules-file", NFT_SAVE, "--node-name", "test-node", "-o", "json"],
    ["explain", "svc/svc2", "-n", "ns2", "--rules-file", NFT_SAVE, "--node-name", "test-node", "-o", "json"],
    ["dump", "--rules-file", NFT_SAVE, "-o", "json"],
]

soup = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda head, tail: head + tail,
              st.sampled_from([b"", b"kind: List\nitems:\n- ", b'{"kind": "List", "items": [', b"---\n"]),
              st.binary(max_size=100)),
)


@settings(FUZZ, max_examples=60)
@given(data=soup, command=st.sampled_from(COMMANDS))
def test_byte_soup_on_stdin(data: bytes, command: list[str]) -> None:
    code, _, err = invoke([*command, "--from-file", "-"], stdin=data)
    check(code, err, max_lines=1, max_conversion_warnings=1)


# --- lists cut short --------------------------------------------------------------------------

LIST = {"apiVersion": "v1", "items": OBJECTS, "kind": "List", "metadata": {"resourceVersion": ""}}
LIST_TEXTS = {"yaml": yaml.safe_dump(LIST), "json": json.dumps(LIST, indent=4)}


@settings(FUZZ, max_examples=60)
@given(fmt=st.sampled_from(sorted(LIST_TEXTS)), where=st.floats(0, 1), command=st.sampled_from(COMMANDS))
def test_lists_cut_short(workdir: Path, fmt: str, where: float, command: list[str]) -> None:
    text = LIST_TEXTS[fmt]
    end_of_items = text.index('"kind": "List"' if fmt == "json" else "\nkind: List") + 1
    cut = int(where * end_of_items)  # always before the List's kind: the items are incomplete
    path = workdir / f"cut.{fmt}"
    path.write_text(text[:cut])
    code, out, err = invoke([*command, "--from-file", str(path)])
    check(code, err, max_lines=1)
    if text[:cut].strip():
        assert code == 2 and f"{path}" in err, (cut, out, err)  # never read as "no services"


# --- wrong types in every field of the objects ------------------------------------------------

OBJECT_PATHS = [(i, p) for i, obj in enumerate(OBJECTS) for p in sorted(paths(obj), key=repr)]


@settings(FUZZ, max_examples=80)
@given(target=st.sampled_from(OBJECT_PATHS), value=values, command=st.sampled_from(COMMANDS))
def test_wrong_types_in_object_fields(workdir: Path, target: tuple[int, tuple[Any, ...]], value: Any,
                                      command: list[str]) -> None:
    index, path = target
    objects = list(OBJECTS)
    objects[index] = replaced(OBJECTS[index], path, value)
    file = workdir / "objects.json"
    file.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, default=str))
    code, _, err = invoke([*command, "--from-file", str(file)])
    check(code, err, max_conversion_warnings=1)  # one object is wrong: at most one warning about it


@settings(FUZZ, max_examples=30)
@given(target=st.sampled_from(OBJECT_PATHS), value=values)
def test_wrong_types_through_stdin(target: tuple[int, tuple[Any, ...]], value: Any) -> None:
    index, path = target
    objects = [*OBJECTS[:index], replaced(OBJECTS[index], path, value), *OBJECTS[index + 1:]]
    data = yaml.safe_dump_all(objects, allow_unicode=True).encode()
    code, _, err = invoke(["endpoints", "-A", "-o", "json", "--from-file", "-"], stdin=data)
    check(code, err, max_conversion_warnings=1)


# --- rules files ------------------------------------------------------------------------------

RULES = Path(__file__).parent / "data" / "rules"
NFT_JSON = json.loads((RULES / "kube-proxy.nft.json").read_text())
NFT_PATHS = sorted(paths(NFT_JSON), key=repr)
SAVES = {name: (RULES / name).read_text().splitlines(keepends=True)
         for name in ("six-services.nft-save.txt", "ipvsadm-save.txt", "ipvs-node.iptables-ipset.txt")}
RULES_COMMANDS = [
    ["dump", "-o", "json"], ["dump", "-o", "raw"],
    ["explain", "svc/svc2", "-n", "ns2", "-o", "json"],
    ["explain", "svc/svc1", "-n", "ns1", "--node-name", "test-node", "--from-file", str(RULES / "nft-cluster.yaml")],
    ["verify", "--node-name", "test-node", "--from-file", str(RULES / "nft-cluster.yaml"), "-o", "json"],
]


@settings(FUZZ, max_examples=60)
@given(path=st.sampled_from(NFT_PATHS), value=values, command=st.sampled_from(RULES_COMMANDS))
def test_nft_json_with_any_field_replaced(workdir: Path, path: tuple[Any, ...], value: Any,
                                          command: list[str]) -> None:
    file = workdir / "ruleset.json"
    file.write_text(json.dumps(replaced(NFT_JSON, path, value), default=str))
    code, _, err = invoke([*command, "--rules-file", str(file)])
    check(code, err, max_lines=1)


@settings(FUZZ, max_examples=40)
@given(name=st.sampled_from(sorted(SAVES)), where=st.floats(0, 1), word=st.integers(0, 30), text=st.text(max_size=40),
       command=st.sampled_from(RULES_COMMANDS))
def test_saved_rules_with_any_word_replaced(workdir: Path, name: str, where: float, word: int, text: str,
                                            command: list[str]) -> None:
    lines = list(SAVES[name])
    i = min(int(where * len(lines)), len(lines) - 1)
    words = lines[i].split() or [""]
    words[word % len(words)] = text
    lines[i] = " ".join(words) + "\n"
    file = workdir / "rules.txt"
    file.write_text("".join(lines))
    code, _, err = invoke([*command, "--rules-file", str(file)])
    check(code, err, max_lines=1)
