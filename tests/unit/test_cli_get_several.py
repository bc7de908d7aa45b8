"""`corral get KIND NAME NAME...` and `get -A`: tables joined, Lists, only "not found" said
per name (corral.client.cli.read_commands.several, namespaces.join_tables)."""

from __future__ import annotations

import json

import pytest

from corral.client.api import CorralError, NotFound
from corral.client.cli.namespaces import join_tables, split_table
from corral.client.cli.read_commands import several
from corral.client.cli.tables import render_table


def test_join_tables_keeps_every_column_in_order_and_blanks_what_a_table_lacks() -> None:
    first = split_table(render_table(["NAME", "READY"], [["a", "1/1"]]))
    second = split_table(render_table(["NAME", "READY", "REASON"], [["b", "0/1", "Pending"]]))
    assert first is not None and second is not None
    joined = join_tables([(["ns1"], first), (["ns2"], second)], ["NAMESPACE"])
    assert joined is not None
    assert [line.split() for line in joined.splitlines()] == [
        ["NAMESPACE", "NAME", "READY", "REASON"],
        ["ns1", "a", "1/1"],
        ["ns2", "b", "0/1", "Pending"],
    ]
    assert join_tables([]) is None


def fake_render(known: dict[str, str]):  # type: ignore[no-untyped-def]
    def render(name: str | None, output: str) -> str:
        assert name is not None
        if name not in known:
            raise NotFound(f"node {name!r} not found")
        if output == "json":
            return json.dumps({"name": name, "status": known[name]})
        return render_table(["NAME", "STATUS"], [[name, known[name]]])

    return render


def test_several_names_are_one_table_and_the_missing_are_named() -> None:
    shown, missing = several(
        fake_render({"a": "Ready", "b": "NotReady"}), ["b", "x", "a"], "table", "nodes"
    )
    assert [line.split() for line in shown.splitlines()] == [
        ["NAME", "STATUS"],
        ["b", "NotReady"],
        ["a", "Ready"],
    ]
    assert missing == ["node 'x' not found"]


def test_several_names_in_json_are_a_list() -> None:
    shown, missing = several(fake_render({"a": "Ready"}), ["a", "y"], "json", "nodes")
    listed = json.loads(shown)
    assert listed["kind"] == "List" and listed["items"] == [{"name": "a", "status": "Ready"}]
    assert missing == ["node 'y' not found"]


def test_a_failure_other_than_not_found_is_the_commands() -> None:
    def broken(name: str | None, output: str) -> str:
        raise CorralError("cannot read bucket corral_nodes: timeout")

    with pytest.raises(CorralError, match="timeout"):
        several(broken, ["a", "b"], "table", "nodes")
