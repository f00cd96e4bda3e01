"""The lineage graph of one expert as inline SVG: its ancestors to the left, what was made from it to the right.

Columns are lineage distance (parents at -1, their parents at -2, children at +1, ...). Every node is a link to
that expert's page, so the graph navigates without JavaScript; edges carry the lineage role, the gate weight and
the fingerprint of the data the child's run used. `static/ui.js` adds highlighting, a detail panel and pan/zoom.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

from transferkit.lineage import LineageGraph, LineageNode
from transferkit.registry import LineageEdge

MAX_NODES = 60  # per direction; nearest first (the edges come ordered by distance)
NODE_W, NODE_H, COLUMN_GAP, ROW_GAP = 210, 58, 170, 22
# Edge labels keep a halo of the background colour, so they stay legible where edges cross them.
HALO = 'paint-order="stroke" stroke="#fbfcfd" stroke-width="3" stroke-linejoin="round"'
ROLE_COLORS = {"source": "#0072B2", "init": "#E69F00", "merged-from": "#009E73", "reproduces": "#CC79A7", "imported-from": "#666666"}


def lineage_svg(ancestors: LineageGraph, descendants: LineageGraph) -> tuple[Markup, int]:
    """The combined graph (root in the middle) and how many nodes were left out for size."""
    root = ancestors.root
    depth = {root: 0}
    kept: list[LineageEdge] = []
    left_out = 0
    for graph, sign in ((ancestors, -1), (descendants, 1)):
        shown = 0
        for edge in graph.edges:  # nearest first, so every kept edge's near end already has a depth
            near, far = (edge.child_id, edge.parent_id) if sign < 0 else (edge.parent_id, edge.child_id)
            if near not in depth:
                continue
            if far not in depth:
                if shown >= MAX_NODES:
                    left_out += 1
                    continue
                depth[far] = depth[near] + sign
                shown += 1
            kept.append(edge)
    nodes: dict[str, LineageNode] = {**descendants.nodes, **ancestors.nodes}
    columns: dict[int, list[str]] = {}
    for node_id, level in depth.items():
        columns.setdefault(level, []).append(node_id)
    first = min(columns)
    tallest = max(len(ids) for ids in columns.values())
    height = tallest * (NODE_H + ROW_GAP) + 40
    place = {}
    for level, ids in columns.items():
        ids.sort(key=lambda i: (nodes[i].task, nodes[i].name))
        top = (height - len(ids) * (NODE_H + ROW_GAP)) / 2
        for row, node_id in enumerate(ids):
            place[node_id] = (20 + (level - first) * (NODE_W + COLUMN_GAP), top + row * (NODE_H + ROW_GAP))
    width = (max(columns) - first + 1) * (NODE_W + COLUMN_GAP) - COLUMN_GAP + 40
    drawn = [edge for edge in kept if edge.parent_id in place and edge.child_id in place]
    parents_of: dict[str, int] = {}
    for edge in drawn:
        parents_of[edge.child_id] = parents_of.get(edge.child_id, 0) + 1
    # Labels sit on the spread-out part of an edge: near the parent where several edges meet at one child (a mixture's
    # sources), near the child where one parent fans out to several children.
    body = [_edge(edge, place, nodes, 0.3 if parents_of[edge.child_id] > 1 else 0.65) for edge in drawn]
    body += [_node(nodes[node_id], *place[node_id], node_id == root) for node_id in depth]
    label = f"lineage of {nodes[root].name}: {len(depth) - 1} related experts"
    svg = Markup(
        f'<svg class="lineage" id="lineage-graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f'<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
        f'<path d="M0 0L10 5L0 10z" fill="#555555"/></marker></defs>{"".join(body)}</svg>'
    )
    return svg, left_out


def _edge_labels(edge: LineageEdge, child: LineageNode) -> tuple[str, str]:
    """What an edge says: role and weight (the gate's mean share for a source), and the data the child was trained on."""
    weight = "" if edge.weight is None else f" {edge.weight:.3f}"
    data = child.data.get("fingerprint")
    return f"{edge.role}{weight}", f"data {data[:10]}" if data else "data unknown"


def _edge(edge: LineageEdge, place: dict[str, tuple[float, float]], nodes: dict[str, LineageNode], t: float) -> str:
    """One edge as a curve from the parent's right side to the child's left, labelled at fraction `t` of the curve."""
    (px, py), (cx, cy) = place[edge.parent_id], place[edge.child_id]
    x1, y1, x2, y2 = px + NODE_W, py + NODE_H / 2, cx, cy + NODE_H / 2
    bend = max(40.0, abs(x2 - x1) / 2)
    colour = ROLE_COLORS.get(edge.role, "#555555")
    child = nodes[edge.child_id]
    role, data = _edge_labels(edge, child)
    tip = f"{nodes[edge.parent_id].name} → {child.name}: {role}, {data} ({child.data.get('fingerprint') or '-'})"
    mid_x = (1 - t) ** 3 * x1 + 3 * (1 - t) ** 2 * t * (x1 + bend) + 3 * (1 - t) * t**2 * (x2 - bend) + t**3 * x2
    mid_y = (1 - t) ** 3 * y1 + 3 * (1 - t) ** 2 * t * y1 + 3 * (1 - t) * t**2 * y2 + t**3 * y2
    return (
        f'<g class="edge" data-parent="{escape(edge.parent_id)}" data-child="{escape(edge.child_id)}" data-role="{escape(edge.role)}"'
        f' data-weight="{"" if edge.weight is None else repr(edge.weight)}" data-data="{escape(child.data.get("fingerprint") or "")}">'
        f'<path d="M{x1:.1f} {y1:.1f}C{x1 + bend:.1f} {y1:.1f} {x2 - bend:.1f} {y2:.1f} {x2:.1f} {y2:.1f}" fill="none" '
        f'stroke="{colour}" stroke-width="1.6" marker-end="url(#arrow)"/>'
        f'<text x="{mid_x:.1f}" y="{mid_y - 5:.1f}" font-size="10" text-anchor="middle" fill="{colour}" {HALO}>{escape(role)}</text>'
        f'<text x="{mid_x:.1f}" y="{mid_y + 12:.1f}" font-size="9.5" text-anchor="middle" fill="#555555" {HALO}>{escape(data)}</text>'
        f"<title>{escape(tip)}</title></g>"
    )


def _node(node: LineageNode, x: float, y: float, is_root: bool) -> str:
    strategy = f" ({node.strategy})" if node.strategy else ""
    test = node.metric.get("test")
    result = f"test {node.metric.get('name')} {test:.4f}" if isinstance(test, (int, float)) else "no test metric"
    lines = [node.name, f"{node.task} · {node.method}{strategy}", result]
    tip = "\n".join([f"{node.name} [{node.id}]", *lines[1:], f"data {node.data.get('fingerprint') or '-'}", f"backbone {node.backbone_id}",
                     f"run {node.run_id} ({node.run_kind}, seed {node.seed})"])
    texts = "".join(
        f'<text x="{x + 8:.1f}" y="{y + 17 + 17 * i:.1f}" font-size="{12 if i == 0 else 10.5}" '
        f'font-weight="{"bold" if i == 0 else "normal"}">{escape(_fit(line, 30 if i == 0 else 34))}</text>'
        for i, line in enumerate(lines)
    )
    return (
        f'<a class="node{" root" if is_root else ""}" href="/experts/{escape(node.id)}" data-id="{escape(node.id)}" '
        f'data-name="{escape(node.name)}" data-task="{escape(node.task)}" data-method="{escape(node.method)}">'
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{"#fff4d6" if is_root else "#ffffff"}" '
        f'stroke="{"#b07800" if is_root else "#7a8a99"}" stroke-width="{2.5 if is_root else 1.2}"/>{texts}'
        f"<title>{escape(tip)}</title></a>"
    )


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
