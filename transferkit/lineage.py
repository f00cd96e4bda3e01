"""Lineage graphs: what an expert was made from (or what was made from it), with everything needed to redo it.

`build_lineage` walks the registry's lineage edges (one recursive query) and gives
each expert on the way a node with its task, method, strategy, backbone
fingerprint, run (command, seed, code and package versions) and the fingerprint
of the exact data its run used. Renderers: a rich tree, JSON (`to_json` /
`from_json`), Graphviz DOT and a Mermaid flowchart; `parse_dot` and
`parse_mermaid` read the node ids, labels and edges back from the last two.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from rich.text import Text
from rich.tree import Tree

from transferkit.registry import ExpertRecord, LineageEdge, RegistryStore

FORMATS = ("tree", "dot", "mermaid")


@dataclass(frozen=True)
class LineageNode:
    """One expert in a lineage graph, with the provenance of the run that made it."""

    id: str
    name: str
    task: str
    method: str
    strategy: str | None
    backbone_id: str
    backbone: dict
    run_id: str
    run_kind: str
    seed: int | None
    command: list[str]
    data: dict  # task, fingerprint, split_fingerprints, sizes, protocol (with its source, e.g. derived-subset)
    code_version: dict
    package_versions: dict
    metric: dict  # primary metric name and its dev and test values

    @property
    def data_source(self) -> str | None:
        return (self.data.get("protocol") or {}).get("source")  # imported experts have no data record

    def label_lines(self) -> list[str]:
        """The lines shown for this expert in DOT and Mermaid: identity, task, data, backbone, code, result."""
        strategy = f" ({self.strategy})" if self.strategy else ""
        sizes = self.data.get("sizes") or {}
        size_text = "/".join(str(sizes.get(split, "?")) for split in ("train", "dev", "test"))
        source = f" {self.data_source}" if self.data_source else ""
        test = self.metric.get("test")
        result = f"test {self.metric.get('name')} {test:.4f}" if isinstance(test, (int, float)) else "test -"
        return [
            f"{self.name} [{self.id}]",
            f"{self.task} · {self.method}{strategy}",
            f"data {_prefix(self.data.get('fingerprint'))}{source} train/dev/test {size_text}",
            f"backbone {self.backbone_id}",
            self.code_text,
            result,
        ]

    @property
    def code_text(self) -> str:
        commit = self.code_version.get("git_commit")
        code = f"transferkit {self.code_version.get('transferkit', '?')}"
        if commit:  # keep the -dirty mark: uncommitted changes are part of what made the expert
            code += f" git {commit[:12]}" + (" dirty" if commit.endswith("-dirty") else "")
        return f"{code} · torch {self.package_versions.get('torch', '?')}"


@dataclass(frozen=True)
class LineageGraph:
    """Experts (nodes) and lineage edges reachable from `root` in `direction` (ancestors or descendants)."""

    root: str
    direction: str
    nodes: dict[str, LineageNode]
    edges: list[LineageEdge] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "direction": self.direction,
            "nodes": [asdict(node) for node in self.nodes.values()],
            "edges": [edge.to_dict() for edge in self.edges],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LineageGraph:
        data = json.loads(text)
        nodes = {node["id"]: LineageNode(**node) for node in data["nodes"]}
        return cls(data["root"], data["direction"], nodes, [LineageEdge(**edge) for edge in data["edges"]])

    def to_dot(self) -> str:
        lines = [
            "digraph lineage {",
            f"  graph [rankdir=LR, lineage_root={_dot_quote(self.root)}, lineage_direction={_dot_quote(self.direction)}];",
            '  node [shape=box, fontname="monospace"];',
        ]
        for node in self.nodes.values():
            style = ", penwidth=2" if node.id == self.root else ""
            lines.append(f"  {_dot_quote(node.id)} [label={_dot_quote(chr(10).join(node.label_lines()))}{style}];")
        for edge in self.edges:
            # Own attribute names: Graphviz's `weight` is a layout integer, not a gate weight.
            weight = "" if edge.weight is None else f", lineage_weight={_dot_quote(repr(edge.weight))}"
            lines.append(
                f"  {_dot_quote(edge.parent_id)} -> {_dot_quote(edge.child_id)} "
                f"[label={_dot_quote(_edge_text(edge))}, lineage_role={_dot_quote(edge.role)}{weight}];"
            )
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        lines = ["flowchart LR"]
        for node in self.nodes.values():
            text = "<br/>".join(_mermaid_escape(line) for line in node.label_lines())
            lines.append(f'  {_mermaid_id(node.id)}["{text}"]')
        for edge in self.edges:
            lines.append(f'  {_mermaid_id(edge.parent_id)} -->|"{_mermaid_escape(_edge_text(edge))}"| {_mermaid_id(edge.child_id)}')
        lines.append("  classDef root stroke-width:3px")
        lines.append(f"  class {_mermaid_id(self.root)} root")
        return "\n".join(lines) + "\n"

    def tree(self) -> Tree:
        """Root = the expert; below each expert, its parents (ancestors) or children (descendants), recursively."""
        upward = self.direction == "ancestors"
        below: dict[str, list[LineageEdge]] = {}
        for edge in self.edges:
            below.setdefault(edge.child_id if upward else edge.parent_id, []).append(edge)
        root = Tree(self._tree_text(self.nodes[self.root], None))
        self._add_details(root, self.nodes[self.root])
        shown = {self.root}

        def grow(branch: Tree, node_id: str) -> None:
            for edge in below.get(node_id, []):
                other = edge.parent_id if upward else edge.child_id
                node = self.nodes[other]
                child = branch.add(self._tree_text(node, edge))
                if other in shown:  # a diamond: the expert's own lineage is already in the tree
                    child.add(Text("(lineage shown above)", style="dim"))
                    continue
                shown.add(other)
                self._add_details(child, node)
                grow(child, other)

        grow(root, self.root)
        return root

    @staticmethod
    def _tree_text(node: LineageNode, edge: LineageEdge | None) -> Text:
        text = Text.assemble((node.name, "bold"), " ", (node.id, "dim"), f"  {node.task} · {node.method}")
        if node.strategy:
            text.append(f" ({node.strategy})")
        if edge is not None:
            text.append(f"  {_edge_text(edge)}", style="cyan")
        return text

    @staticmethod
    def _add_details(branch: Tree, node: LineageNode) -> None:
        protocol = node.data.get("protocol") or {}
        splits = node.data.get("split_fingerprints") or {}
        data = f"data {node.data.get('fingerprint') or '-'}"
        if node.data_source:
            data += f" ({node.data_source})"
        branch.add(Text(data, style="green"))
        sizes = node.data.get("sizes") or {}
        split_text = ", ".join(f"{split} {_prefix(fp)} n={sizes.get(split, '?')}" for split, fp in splits.items())
        branch.add(Text(
            f"splits {split_text}; seed {protocol.get('seed')}; {protocol.get('name', 'protocol unknown')}", style="green"
        ))
        branch.add(Text(f"backbone {node.backbone_id} ({node.backbone.get('name')}, weights sha256 "
                        f"{_prefix(node.backbone.get('weights_sha256'))})", style="magenta"))
        branch.add(Text(node.code_text + f" · python {node.package_versions.get('python', '?')}", style="blue"))
        branch.add(Text(f"run {node.run_id} {node.run_kind} seed {node.seed}: {' '.join(node.command)}", style="dim"))


def build_lineage(
    registry: RegistryStore, expert: ExpertRecord, direction: str = "ancestors", max_depth: int = 64
) -> LineageGraph:
    """The lineage graph of a stored expert, read from the registry."""
    edges = registry.lineage_graph(expert.id, direction=direction, max_depth=max_depth)
    ids = dict.fromkeys([expert.id, *(end for edge in edges for end in (edge.parent_id, edge.child_id))])
    nodes = {}
    for expert_id in ids:
        record = expert if expert_id == expert.id else registry.get_expert(expert_id)
        nodes[expert_id] = _node(registry, record)
    return LineageGraph(expert.id, direction, nodes, edges)


def _node(registry: RegistryStore, expert: ExpertRecord) -> LineageNode:
    run = registry.get_run(expert.run_id)
    fingerprint = run.data_fingerprint
    primary = expert.metrics.get("primary")
    return LineageNode(
        id=expert.id,
        name=expert.name,
        task=expert.task_name,
        method=expert.method,
        strategy=expert.extra.get("strategy"),
        backbone_id=expert.backbone_id,
        backbone=expert.backbone,
        run_id=run.id,
        run_kind=run.kind,
        seed=run.seed,
        command=run.command,
        data={key: fingerprint.get(key) for key in ("task", "fingerprint", "split_fingerprints", "sizes", "protocol")},
        code_version=run.code_version,
        package_versions=run.package_versions,
        metric={
            "name": primary,
            "dev": expert.metrics.get("dev", {}).get(primary),
            "test": expert.metrics.get("test", {}).get(primary),
        },
    )


def _prefix(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def _edge_text(edge: LineageEdge) -> str:
    # repr() of a float reads back to the same float, so parsed weights equal the stored ones.
    return edge.role if edge.weight is None else f"{edge.role} ({edge.weight!r})"


def _parse_edge_text(text: str) -> tuple[str, float | None]:
    match = re.fullmatch(r"(.+) \(([^()]+)\)", text)
    return (match.group(1), float(match.group(2))) if match else (text, None)


# DOT: a double-quoted ID may hold anything; only `"` and `\` need a backslash, and a line break is `\n`.

_DOT_STRING = r'"((?:[^"\\]|\\.)*)"'


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_unquote(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), body, flags=re.DOTALL)


def _dot_attributes(text: str) -> dict[str, str]:
    return {key: _dot_unquote(value) for key, value in re.findall(r"(\w+)=" + _DOT_STRING, text)}


def parse_dot(text: str) -> tuple[dict[str, str], list[LineageEdge]]:
    """Node labels by expert id and the edges (role, weight) of a graph written by `LineageGraph.to_dot`."""
    labels: dict[str, str] = {}
    edges: list[LineageEdge] = []
    edge_line = re.compile(rf"\s*{_DOT_STRING} -> {_DOT_STRING} \[(.*)\];")
    node_line = re.compile(rf"\s*{_DOT_STRING} \[(.*)\];")
    for line in text.splitlines():
        if match := edge_line.fullmatch(line):
            attributes = _dot_attributes(match.group(3))
            weight = attributes.get("lineage_weight")
            edges.append(LineageEdge(_dot_unquote(match.group(1)), _dot_unquote(match.group(2)), attributes["lineage_role"],
                                     None if weight is None else float(weight)))
        elif match := node_line.fullmatch(line):
            labels[_dot_unquote(match.group(1))] = _dot_attributes(match.group(2))["label"]
    return labels, edges


# Mermaid: quoted labels take entity codes (#quot; #35; ...) for characters the parser would read as syntax,
# and <br/> for line breaks. Node ids keep ASCII letters and digits; anything else becomes _xxxxxx (hex) so ids read back.

_MERMAID_ENTITIES = {
    '"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;", "|": "#124;", "\n": "#10;",
}
_MERMAID_DECODE = {code: char for char, code in _MERMAID_ENTITIES.items()}


def _mermaid_escape(text: str) -> str:
    return "".join(_MERMAID_ENTITIES.get(char, char) for char in text)


def _mermaid_unescape(text: str) -> str:
    return re.sub(r"#\w+;", lambda m: _MERMAID_DECODE.get(m.group(0), m.group(0)), text)


def _mermaid_id(expert_id: str) -> str:
    return "e_" + "".join(char if char.isascii() and char.isalnum() else f"_{ord(char):06x}" for char in expert_id)


def _mermaid_id_decode(node_id: str) -> str:
    return re.sub(r"_([0-9a-f]{6})", lambda m: chr(int(m.group(1), 16)), node_id.removeprefix("e_"))


def parse_mermaid(text: str) -> tuple[dict[str, str], list[LineageEdge]]:
    """Node labels (lines joined by newlines) by expert id and the edges of a chart written by `to_mermaid`."""
    labels: dict[str, str] = {}
    edges: list[LineageEdge] = []
    for line in text.splitlines():
        if match := re.fullmatch(r'\s*(e_\w+) -->\|"([^"]*)"\| (e_\w+)', line):
            role, weight = _parse_edge_text(_mermaid_unescape(match.group(2)))
            edges.append(LineageEdge(_mermaid_id_decode(match.group(1)), _mermaid_id_decode(match.group(3)), role, weight))
        elif match := re.fullmatch(r'\s*(e_\w+)\["([^"]*)"\]', line):
            lines = match.group(2).split("<br/>")
            labels[_mermaid_id_decode(match.group(1))] = "\n".join(_mermaid_unescape(part) for part in lines)
    return labels, edges
