"""Lineage rendering: JSON, DOT and Mermaid read back to the same graph; labels carry data and backbone fingerprints."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console

from transferkit.lineage import LineageGraph, LineageNode, parse_dot, parse_mermaid
from transferkit.registry import LineageEdge

AWKWARD = 'odd "quoted" [name] {x} <b>#1 & a|b `tick` back\\slash -->\nsecond line'


def node(expert_id: str, name: str, task: str, fingerprint: str, **overrides) -> LineageNode:
    fields = dict(
        id=expert_id, name=name, task=task, method="lora", strategy=None, backbone_id="bert-0123456789abcdef",
        backbone={"name": "minilm", "weights_sha256": "0123456789abcdef" * 4}, run_id=f"run-{expert_id}",
        run_kind="train-source", seed=1, command=["transferkit", "train-source", task],
        data={
            "task": task, "fingerprint": fingerprint, "sizes": {"train": 64, "dev": 138, "test": 139},
            "split_fingerprints": {"train": "aa" * 32, "dev": "bb" * 32, "test": "cc" * 32},
            "protocol": {"name": "small", "seed": 1, "source": "derived-subset"},
        },
        code_version={"transferkit": "0.1.0", "git_commit": "feedfacecafe0000"},
        package_versions={"torch": "2.13.0", "python": "3.12.1"},
        metric={"name": "accuracy", "dev": 0.5, "test": 0.625},
    )
    return LineageNode(**{**fields, **overrides})


@pytest.fixture
def graph() -> LineageGraph:
    """target <- {mnli (0.6), awkward (0.4)}; both <- base (diamond); ids include characters Mermaid ids cannot."""
    nodes = [
        node("t0000000000a", "cb-pemt", "superglue/cb", "1111" * 16, method="mixture", strategy="pemt", run_kind="transfer"),
        node("m0000000000b", "mnli-lora", "glue/mnli", "2222" * 16),
        node("odd-id_3.x", AWKWARD, "glue/rte", "3333" * 16),
        node("b0000000000d", "base", "glue/sst2", "4444" * 16),
    ]
    edges = [
        LineageEdge("m0000000000b", "t0000000000a", "source", 0.6000001),
        LineageEdge("odd-id_3.x", "t0000000000a", "source", 0.3999999),
        LineageEdge("b0000000000d", "m0000000000b", "init", None),
        LineageEdge("b0000000000d", "odd-id_3.x", "init", None),
    ]
    return LineageGraph("t0000000000a", "ancestors", {n.id: n for n in nodes}, edges)


def test_json_round_trip(graph):
    again = LineageGraph.from_json(graph.to_json())
    assert again == graph
    assert again.nodes["odd-id_3.x"].name == AWKWARD


@pytest.mark.parametrize("render, parse", [("to_dot", parse_dot), ("to_mermaid", parse_mermaid)])
def test_dot_and_mermaid_round_trip(graph, render, parse):
    labels, edges = parse(getattr(graph, render)())
    assert edges == graph.edges  # ids, roles and exact weights
    assert labels == {n.id: "\n".join(n.label_lines()) for n in graph.nodes.values()}
    assert AWKWARD in labels["odd-id_3.x"]


@pytest.mark.parametrize("render", ["to_dot", "to_mermaid"])
def test_labels_show_task_data_and_backbone(graph, render):
    text = getattr(graph, render)()
    for n in graph.nodes.values():
        assert n.task in text and n.data["fingerprint"][:12] in text
    assert "bert-0123456789abcdef" in text and "derived-subset" in text and "git feedfacecafe" in text


def test_escaping_keeps_the_syntax_intact(graph):
    mermaid = graph.to_mermaid()
    # Every statement stays on one line and no label leaks a quote, pipe or bracket into Mermaid syntax.
    assert len(mermaid.splitlines()) == 1 + 4 + 4 + 2
    awkward_line = next(line for line in mermaid.splitlines() if line.strip().startswith("e_odd"))
    assert awkward_line.count('"') == 2 and "#quot;quoted#quot;" in awkward_line and "#10;" in awkward_line
    assert "e_odd_00002did_00005f3_00002ex" in awkward_line
    dot = graph.to_dot()
    assert '\\"quoted\\"' in dot and "back\\\\slash" in dot and "\\nsecond line" in dot
    assert len(dot.splitlines()) == 3 + 4 + 4 + 1


def test_weight_none_and_changed_label_are_distinguished(graph):
    changed = replace(graph, edges=[replace(graph.edges[0], weight=0.5), *graph.edges[1:]])
    assert parse_dot(changed.to_dot())[1] != graph.edges
    assert parse_mermaid(changed.to_mermaid())[1][0].weight == 0.5
    assert parse_mermaid(graph.to_mermaid())[1][2].weight is None


def test_tree_shows_sources_recursively_and_diamonds_once(graph):
    console = Console(record=True, width=300)
    console.print(graph.tree())
    text = console.export_text()
    lines = text.splitlines()
    assert lines[0].startswith("cb-pemt t0000000000a") and "(pemt)" in lines[0]
    assert any("mnli-lora" in line and "source (0.6000001)" in line for line in lines)
    assert text.count("base b0000000000d") == 2 and text.count("(lineage shown above)") == 1
    assert "data " + "2222" * 16 + " (derived-subset)" in text
    assert "backbone bert-0123456789abcdef" in text and "transferkit 0.1.0 git feedfacecafe" in text


def test_descendants_tree_goes_down(graph):
    down = replace(graph, root="b0000000000d", direction="descendants")
    console = Console(record=True, width=300)
    console.print(down.tree())
    lines = console.export_text().splitlines()
    assert lines[0].startswith("base b0000000000d")
    assert sum("cb-pemt t0000000000a" in line for line in lines) == 2
