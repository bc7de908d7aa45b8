"""Manifests: YAML documents to validated specs, or an error naming the problem."""

from __future__ import annotations

import pytest

from corral.client.api import API_KINDS, CorralError
from corral.client.cli.manifests import MAX_MANIFEST_DEPTH, load_manifests
from corral.contract.specs import Deployment

GOOD = """\
apiVersion: corral/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  template:
    image: nginx:1.27
"""


def test_one_document() -> None:
    [manifest] = load_manifests(GOOD, "web.yaml")
    assert manifest.kind is API_KINDS["Deployment"]
    assert manifest.name == "web" and manifest.where == "web.yaml"
    assert isinstance(manifest.spec, Deployment) and manifest.spec.spec.replicas == 3


def test_several_documents_and_empty_ones() -> None:
    text = "---\n" + GOOD + "---\n---\n" + GOOD.replace("name: web", "name: api")
    manifests = load_manifests(text, "all.yaml")
    assert [m.name for m in manifests] == ["web", "api"]
    assert manifests[1].where == "all.yaml (document 2) Deployment/api"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [oops\n", "web.yaml: not valid YAML"),
        ("", "no manifest in it"),
        ("- a\n- b\n", "expected a mapping"),
        ("metadata: {name: x}\n", "missing `kind`: corral knows Deployment"),
        (
            GOOD.replace("Deployment", "Gadget"),
            "unknown kind 'Gadget' (`kind`): corral knows Deployment, Network, PersistentVolume, "
            "PersistentVolumeClaim, Service, StorageClass",
        ),
        (GOOD.replace("replicas: 3", "replicas: three"), "at `spec.replicas`: Expected `int`"),
        (GOOD.replace("replicas: 3", "replicas: -1"), "at `spec.replicas`"),
        (GOOD.replace("image: nginx:1.27", "imag: nginx"), "unknown field `imag`"),
        (GOOD.replace("  template:\n    image: nginx:1.27\n", ""), "`spec.template`"),
        (GOOD.replace("name: web", "name: Web"), "not a DNS label"),
        (
            GOOD.replace("corral/v1", "apps/v2"),
            "`apiVersion` 'apps/v2' is unknown: corral reads a Deployment as corral/v1 or apps/v1",
        ),
        (GOOD.replace("name: web", "name: web\n  created: 2024-01-01"), "unknown field"),
        (  # the last one taken would apply another object than the one read
            GOOD + "metadata:\n  name: other\n",
            "the key 'metadata' is given twice in a manifest",
        ),
        (GOOD.replace("replicas: 3", "replicas: 3\n  replicas: 4"), "'replicas' is given twice"),
    ],
)
def test_bad_manifests(text: str, message: str) -> None:
    with pytest.raises(CorralError, match=None) as raised:
        load_manifests(text, "web.yaml")
    assert message in str(raised.value), str(raised.value)


def test_the_document_is_named_in_a_stream() -> None:
    text = GOOD + "---\n" + GOOD.replace("replicas: 3", "replicas: x")
    with pytest.raises(
        CorralError,
        match=r"web.yaml \(document 2\) Deployment/web: invalid Deployment at `spec.replicas`",
    ):
        load_manifests(text, "web.yaml")


def test_examples_are_valid() -> None:
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    files = sorted(examples.glob("*.yaml"))
    assert files, "examples/ holds manifests"
    for path in files:
        assert load_manifests(path.read_text(), path.name)


def test_yaml_aliases_are_refused_before_they_can_expand() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
    )
    with pytest.raises(CorralError, match=r"YAML aliases \(\*name\) are not supported"):
        load_manifests(bomb, "bomb.yaml")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 3000,  # 3 KB of "[": a RecursionError traceback before the limit
        "{a: " * 3000,
        "a:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 200)),
        "- " * 1000 + "x\n",
    ],
    ids=["flow-lists", "flow-maps", "block-maps", "block-lists"],
)
def test_deep_nesting_is_refused_with_the_file_and_the_limit(text: str) -> None:
    with pytest.raises(CorralError) as raised:
        load_manifests(text, "deep.yaml")
    assert str(raised.value).startswith("deep.yaml: not valid YAML: ")
    assert f"deeper than {MAX_MANIFEST_DEPTH} levels" in str(raised.value)


def test_nesting_up_to_the_limit_is_read() -> None:
    # the document's mapping is one level, the lists the 63 others
    nested = "[" * (MAX_MANIFEST_DEPTH - 1) + "]" * (MAX_MANIFEST_DEPTH - 1)
    with pytest.raises(CorralError, match="unknown field `deep`"):
        load_manifests(GOOD + f"deep: {nested}\n", "web.yaml")
    with pytest.raises(CorralError, match="deeper than 64"):
        load_manifests(GOOD + f"deep: [{nested}]\n", "web.yaml")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9" * 5000, "an integer of 5000 characters: at most 64"),
        ("0x" + "f" * 5000, "an integer of 5002 characters"),
        ("9" * 30, "Expected `int` <= 10000"),
        ("2024-13-45", "month must be in 1..12"),
    ],
    ids=["5000-digits", "5000-hex-digits", "30-digits", "impossible-date"],
)
def test_values_yaml_cannot_build_are_errors_not_tracebacks(value: str, message: str) -> None:
    with pytest.raises(CorralError) as raised:
        load_manifests(GOOD.replace("replicas: 3", f"replicas: {value}"), "web.yaml")
    assert str(raised.value).startswith("web.yaml: ") and message in str(raised.value)
