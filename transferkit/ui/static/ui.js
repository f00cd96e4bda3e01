// transferkit ui: progressive enhancement only. Every page works without this file (links, forms, server-drawn SVG);
// with it: the lineage graph highlights a node's edges and shows its details, pans and zooms; chart legends
// toggle series; heatmap cells highlight their row and column labels; filter selects submit on change.
"use strict";

function lineageGraph(svg) {
  const panel = document.getElementById("graph-detail");
  const nodes = Array.from(svg.querySelectorAll("a.node"));
  const edges = Array.from(svg.querySelectorAll("g.edge"));
  function focus(node) {
    const id = node.dataset.id;
    svg.classList.add("focused");
    const linked = new Set([id]);
    edges.forEach((edge) => {
      const on = edge.dataset.parent === id || edge.dataset.child === id;
      edge.classList.toggle("hl", on);
      if (on) { linked.add(edge.dataset.parent); linked.add(edge.dataset.child); }
    });
    nodes.forEach((other) => other.classList.toggle("hl", linked.has(other.dataset.id)));
    if (panel) {
      const lines = [node.querySelector("title").textContent];
      edges.filter((edge) => edge.classList.contains("hl")).forEach((edge) => lines.push(edge.querySelector("title").textContent));
      panel.textContent = lines.join("\n");
      panel.classList.add("shown");
    }
  }
  function clear() {
    svg.classList.remove("focused");
    nodes.concat(edges).forEach((element) => element.classList.remove("hl"));
    if (panel) panel.classList.remove("shown");
  }
  nodes.forEach((node) => {
    node.addEventListener("mouseenter", () => focus(node));
    node.addEventListener("focus", () => focus(node));
    node.addEventListener("mouseleave", clear);
    node.addEventListener("blur", clear);
  });
  // Pan (drag) and zoom (wheel, buttons) by changing the viewBox; a click without a drag still follows the link.
  const start = svg.viewBox.baseVal;
  const home = [start.x, start.y, start.width, start.height];
  let box = home.slice();
  let drag = null;
  let moved = false;
  const apply = () => svg.setAttribute("viewBox", box.map((v) => v.toFixed(1)).join(" "));
  function zoom(factor, cx, cy) {
    const w = box[2] * factor, h = box[3] * factor;
    box = [cx - (cx - box[0]) * factor, cy - (cy - box[1]) * factor, w, h];
    apply();
  }
  const point = (event) => {
    const rect = svg.getBoundingClientRect();
    return [box[0] + (event.clientX - rect.left) / rect.width * box[2], box[1] + (event.clientY - rect.top) / rect.height * box[3]];
  };
  svg.addEventListener("wheel", (event) => {
    if (!event.ctrlKey && !event.metaKey) return;  // plain scrolling keeps scrolling the page
    event.preventDefault();
    const [x, y] = point(event);
    zoom(event.deltaY > 0 ? 1.15 : 1 / 1.15, x, y);
  }, { passive: false });
  svg.addEventListener("pointerdown", (event) => { drag = [event.clientX, event.clientY, box[0], box[1]]; moved = false; });
  svg.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const rect = svg.getBoundingClientRect();
    const dx = (event.clientX - drag[0]) / rect.width * box[2], dy = (event.clientY - drag[1]) / rect.height * box[3];
    if (Math.abs(event.clientX - drag[0]) + Math.abs(event.clientY - drag[1]) > 4) moved = true;
    if (moved) { box[0] = drag[2] - dx; box[1] = drag[3] - dy; apply(); }
  });
  window.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("click", (event) => { if (moved) { event.preventDefault(); moved = false; } }, true);
  const tools = document.querySelector(".graph-tools");
  if (tools) {
    tools.hidden = false;
    tools.addEventListener("click", (event) => {
      const action = event.target.dataset.graph;
      const cx = box[0] + box[2] / 2, cy = box[1] + box[3] / 2;
      if (action === "zoom-in") zoom(1 / 1.25, cx, cy);
      else if (action === "zoom-out") zoom(1.25, cx, cy);
      else if (action === "reset") { box = home.slice(); apply(); }
    });
  }
}

function chartLegends(svg) {
  svg.querySelectorAll(".legend-item").forEach((item) => {
    const toggle = () => {
      const off = item.classList.toggle("off");
      svg.querySelectorAll(`.bar[data-series="${item.dataset.series}"], .line[data-series="${item.dataset.series}"]`)
        .forEach((mark) => mark.classList.toggle("off", off));
    };
    item.addEventListener("click", toggle);
    item.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); toggle(); } });
  });
}

function heatmapLabels(svg) {
  svg.querySelectorAll(".cell").forEach((cell) => {
    const labels = () => svg.querySelectorAll(`.row-label[data-row="${cell.dataset.row}"], .col-label[data-col="${cell.dataset.col}"]`);
    cell.addEventListener("mouseenter", () => labels().forEach((label) => label.classList.add("hl")));
    cell.addEventListener("mouseleave", () => labels().forEach((label) => label.classList.remove("hl")));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const graph = document.getElementById("lineage-graph");
  if (graph) lineageGraph(graph);
  document.querySelectorAll("svg.chart").forEach(chartLegends);
  document.querySelectorAll("svg.heatmap").forEach(heatmapLabels);
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });
});
