"""`transferkit ui`: a read-only web view of a registry (experts, lineage, tasks, compare grids, cost, runs).

`transferkit.ui.app.create_app(registry, token)` builds the FastAPI app (the same stack as `transferkit serve`);
pages render on the server from Jinja templates, with charts and the lineage graph as inline SVG, so they work
with JavaScript off; `static/ui.js` only adds interaction. Every script, style and font is in `static/`.
"""
