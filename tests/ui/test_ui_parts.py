"""The UI's building blocks without a server: path redaction, bind and token rules, SVG charts, gate views."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from transferkit.errors import InvalidInputError
from transferkit.lineage import LineageGraph, LineageNode
from transferkit.registry import ExpertRecord, LineageEdge
from transferkit.ui import graph, svg, views
from transferkit.ui.graph import lineage_svg
from transferkit.ui.security import TokenGate, check_bind, redact_paths
from transferkit.webserver import is_loopback


@pytest.mark.parametrize("text,shown", [
    ("/tmp/pytest-of-root/x/registry.db", "…/registry.db"),
    ("cannot read /home/alice/data/cr.toml, stopping", "cannot read …/cr.toml, stopping"),
    ("sqlite:////srv/team/registry.db", "sqlite:///…/registry.db"),
    ("file:///var/lib/x/blob.safetensors", "file:///…/blob.safetensors"),
    ("--model=/opt/models/tiny-bert/", "--model=…/tiny-bert"),
    ("C:\\Users\\me\\registry.db", "…/registry.db"),
    ("s3://bucket/prefix/blob", "s3://bucket/prefix/blob"),  # a URL with a host is not a local path
    ("/experts/abc123 and /static/ui.css", "/experts/abc123 and /static/ui.css"),  # this app's own links
    ("glue/rte, superglue/cb, 1/2", "glue/rte, superglue/cb, 1/2"),
    ('<svg xmlns="http://www.w3.org/2000/svg">', '<svg xmlns="http://www.w3.org/2000/svg">'),
])
def test_absolute_paths_are_cut_to_their_last_part(text, shown):
    assert redact_paths(text) == shown


def test_binding_rules():
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        assert not is_loopback(host)
        with pytest.raises(InvalidInputError, match="needs a token"):
            check_bind(host, None)
        check_bind(host, "x" * 16)
    for bad in ("example.com", "db.internal", "", "127.0.0.1:80"):
        with pytest.raises(InvalidInputError, match="must be an IP address"):
            check_bind(bad, "x" * 16)
    for token in ("short", " " + "x" * 20, "x" * 15 + "\n"):
        with pytest.raises(InvalidInputError, match="at least 16 printable"):
            check_bind("127.0.0.1", token)


def test_token_gate():
    assert TokenGate(None).allows(None, None)
    gate = TokenGate("correct-horse-battery")
    assert gate.allows("Bearer correct-horse-battery", None) and gate.allows("bearer  correct-horse-battery ", None)
    assert not gate.allows("Bearer correct-horse-batter", None) and not gate.allows("Basic correct-horse-battery", None)
    assert not gate.allows("Bearer correct-horse-battery\u00e9", None)  # non-ASCII input compares without errors
    assert gate.allows(None, gate.session_value()) and not gate.allows(None, "correct-horse-battery")
    assert TokenGate("correct-horse-battery").session_value() != gate.session_value()  # per server process
    assert "correct-horse-battery" not in gate.session_value()


def test_charts_are_svg_with_every_value():
    heat = svg.heatmap(["a", "b"], ["x", "y", "z"], [[0.1, None, 0.3], [0.4, 0.5, 1.0]], title="t", vmax=1.0)
    assert heat.count('class="cell"') == 5 and heat.count("cell empty") == 1 and 'data-value="0.4"' in heat
    bars = svg.bar_chart(["rte", "cb"], ["scratch", "pemt"], lambda c, s: None if (c, s) == ("cb", "scratch") else (50.0, 40.0, 60.0),
                         title="grid", y_label="score")
    assert bars.count('class="bar"') == 3 and bars.count("<path") == 3 and "style=" not in bars
    lines = svg.line_chart({"loss": [(1, 1.0), (2, 0.5)], "dev": [(2, 0.7)]}, title="curves", x_label="step", y_label="y")
    assert lines.count("<polyline") == 2 and 'data-points="1"' in lines
    assert svg.nice_ticks(0.43, 0.43)[0] < 0.43 < svg.nice_ticks(0.43, 0.43)[-1]  # one value: a band around it
    assert svg.nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert re.fullmatch(r"#[0-9a-f]{6}", svg.color(0.5)) and svg.color(-1) == "#440154" and svg.color(2) == "#fde725"


def test_axis_labels_are_distinct_and_short():
    loss = svg.nice_ticks(1.083, 1.102)  # a loss that barely moves: ticks 0.005 apart
    assert svg.tick_labels(loss) == ["1.080", "1.085", "1.090", "1.095", "1.100", "1.105"]
    assert svg.tick_labels([0, 2000, 4000]) == ["0", "2,000", "4,000"]
    assert svg.tick_labels([0, 2e11, 4e11]) == ["0G", "200G", "400G"] and svg.tick_labels([0, 1e6, 2e6]) == ["0M", "1M", "2M"]
    chart = svg.line_chart({"loss": [(1, 1.083), (2, 1.102)]}, title="t", x_label="step", y_label="loss")
    assert chart.count(">1.085<") == 1 and chart.count(">1.09<") == 0


def _node(expert_id: str, name: str) -> LineageNode:
    return LineageNode(expert_id, name, "glue/rte", "lora", None, "bb", {}, "r", "train-source", 1, [], {"fingerprint": "f" * 64},
                       {}, {}, {"name": "accuracy", "test": 0.5})


def _label_positions(graph: str) -> dict[str, float]:
    """Parent id -> x of its edge's role label."""
    return {m[1]: float(m[2]) for m in re.finditer(r'<g class="edge" data-parent="(\w+)".*?<text x="([\d.]+)"', graph)}


def test_edge_labels_sit_where_the_edges_spread_out():
    nodes = {i: _node(i, i) for i in ("a", "b", "m")}
    into_one = lineage_svg(LineageGraph("m", "ancestors", nodes, [LineageEdge("a", "m", "source", 0.6), LineageEdge("b", "m", "source", 0.4)]),
                           LineageGraph("m", "descendants", {"m": nodes["m"]}))[0]
    gap_start = 20 + graph.NODE_W  # the parents' column ends here, the child's starts COLUMN_GAP later
    assert all(x < gap_start + graph.COLUMN_GAP / 2 for x in _label_positions(into_one).values())  # near the parents
    out_of_one = lineage_svg(LineageGraph("a", "ancestors", {"a": nodes["a"]}),
                             LineageGraph("a", "descendants", nodes, [LineageEdge("a", "m", "init", None), LineageEdge("a", "b", "init", None)]))[0]
    assert all(x > gap_start + graph.COLUMN_GAP / 2 for x in _label_positions(out_of_one).values())  # near the children
    labels = [float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)" font-size="10" ', into_one)]
    assert len(labels) == 2 and abs(labels[0] - labels[1]) > 30  # the two sources' labels do not overlap


def _expert(extra: dict) -> ExpertRecord:
    return ExpertRecord("e1", "x", "glue/rte", "mixture", {}, {}, "bb", "sha256/x", "0" * 64, 1, 1, {}, "r1",
                        datetime.now(timezone.utc), extra)


def test_gate_views_for_pemt_attempt_and_mept():
    pemt = views._gates(_expert({"gate_weights": {"sources": ["a", "b"], "mean": {"a": 0.7, "b": 0.3},
                                                  "per_layer": {"encoder.layer.0": [0.6, 0.4], "encoder.layer.1": [0.8, 0.2]},
                                                  "zero_expert": {"per_layer": {"encoder.layer.0": 0.1, "encoder.layer.1": 0.2}}}}))
    assert (pemt["layers"], pemt["columns"]) == (2, 3) and pemt["heatmap"].count('class="cell"') == 6
    attempt = views._gates(_expert({"gate_weights": {"sources": ["a", "b"], "mean": {"a": 0.5, "b": 0.2}, "target": 0.3}}))
    assert "heatmap" not in attempt and attempt["attention"].count('class="bar"') == 3
    assert views._gates(_expert({})) is None
    load = views._expert_load(_expert({"method_statistics": {"expert_load": {"layer.0": [3, 1, 0], "layer.1": [2, 2]}}}))
    assert load.count('class="cell"') == 5 and load.count("cell empty") == 1


def test_bound_sockets_say_they_are_tcp():
    """asyncio switches Nagle off only for sockets whose proto is TCP; otherwise keep-alive clients wait ~40 ms a page."""
    import socket

    from transferkit.webserver import bind

    sock = bind("127.0.0.1", _free_port())
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    with pytest.raises(InvalidInputError, match="--port must be between 1 and 65535"):
        bind("127.0.0.1", 0)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
