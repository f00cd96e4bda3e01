"""Charts as inline SVG, drawn on the server: heatmaps, grouped bars with intervals, line charts.

They need no JavaScript (every value is also in a `<title>` tooltip and a `data-value` attribute, which the tests
read); `static/ui.js` adds highlighting and legend toggles on top. Colours and sizes are SVG attributes, never
`style=`, so the pages keep a CSP without inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
# Viridis at 0, 0.25, 0.5, 0.75, 1.
_RAMP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
FONT = 12


def color(fraction: float) -> str:
    """A viridis colour for a value scaled to [0, 1]."""
    x = min(1.0, max(0.0, fraction)) * (len(_RAMP) - 1)
    low = min(int(x), len(_RAMP) - 2)
    t = x - low
    r, g, b = (round(a + (b - a) * t) for a, b in zip(_RAMP[low], _RAMP[low + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def _text_color(fraction: float) -> str:
    return "#000000" if fraction > 0.55 else "#ffffff"


def _short(label: str, limit: int) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _svg(width: float, height: float, label: str, body: list[str], css: str) -> Markup:
    return Markup(
        f'<svg class="{css}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{escape(label)}">'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


def heatmap(
    rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float | None]], *, title: str,
    vmin: float = 0.0, vmax: float | None = None, row_links: Sequence[str] | None = None, fmt: str = "{:.2f}",
) -> Markup:
    """A rows x columns grid of coloured cells with the value written in each (None: an empty cell)."""
    known = [v for row in values for v in row if v is not None]
    top = vmax if vmax is not None else max([vmin + 1e-9, *known])
    span = max(top - vmin, 1e-9)
    label_width = min(240, 7 * max((len(r) for r in rows), default=4) + 12)
    cell_w, cell_h = max(44, min(90, 560 // max(1, len(columns)))), 24
    header = min(130, 6 * max((len(c) for c in columns), default=4) + 16)
    # Column labels slant up to the right from their cell's middle: room for the last one beyond the grid.
    overhang = max(10, round(0.82 * 6.5 * len(_short(columns[-1], 22)) - cell_w / 2)) if columns else 10
    width, height = label_width + cell_w * len(columns) + overhang, header + cell_h * len(rows) + 10
    body = []
    for j, column in enumerate(columns):
        x = label_width + cell_w * (j + 0.5)
        body.append(f'<text class="col-label" x="{x:.1f}" y="{header - 6}" transform="rotate(-35 {x:.1f} {header - 6})" '
                    f'font-size="{FONT - 1}" text-anchor="start" data-col="{j}">{escape(_short(column, 22))}</text>')
    for i, row in enumerate(rows):
        y = header + cell_h * i
        label = f'<text class="row-label" x="{label_width - 6}" y="{y + cell_h * 0.68:.1f}" font-size="{FONT - 1}" ' \
                f'text-anchor="end" data-row="{i}">{escape(_short(row, 34))}</text>'
        if row_links is not None:
            label = f'<a href="{escape(row_links[i])}">{label}</a>'
        body.append(label)
        for j, value in enumerate(values[i]):
            x = label_width + cell_w * j
            tip = f"{row} × {columns[j]}: " + ("no value" if value is None else fmt.format(value))
            if value is None:
                body.append(f'<rect class="cell empty" x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" fill="#eeeeee" '
                            f'data-row="{i}" data-col="{j}"><title>{escape(tip)}</title></rect>')
                continue
            fraction = (value - vmin) / span
            body.append(
                f'<g class="cell" data-row="{i}" data-col="{j}" data-value="{value!r}">'
                f'<rect x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" fill="{color(fraction)}"/>'
                f'<text x="{x + cell_w / 2:.1f}" y="{y + cell_h * 0.68:.1f}" font-size="{FONT - 2}" text-anchor="middle" '
                f'fill="{_text_color(fraction)}">{escape(fmt.format(value))}</text><title>{escape(tip)}</title></g>'
            )
    return _svg(width, height, title, body, "chart heatmap")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        low, high = 0.0, 1.0
    if high - low < 1e-12:  # one value: a small band around it
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """The ticks written with as few decimals as keep them exact and distinct (1.080, 1.085; 0, 5,000, 10,000),
    in thousands, millions, ... from a million up (200M, 400M)."""
    largest = max((abs(tick) for tick in ticks), default=0.0)
    power = min(4, int(math.log10(largest) // 3)) if largest >= 1e6 else 0
    scaled, suffix = [tick / 1000**power for tick in ticks], ("", "k", "M", "G", "T")[power]
    for decimals in range(13):
        labels = [f"{value:,.{decimals}f}" for value in scaled]
        if len(set(labels)) == len(labels) and all(abs(float(label.replace(",", "")) - value) <= 1e-9 * max(1.0, abs(value))
                                                   for label, value in zip(labels, scaled)):
            return [label + suffix for label in labels]
    return [f"{tick:g}" for tick in ticks]


def _legend(series: Sequence[str], x: float, y: float) -> list[str]:
    items, offset = [], 0.0
    for k, name in enumerate(series):
        items.append(f'<g class="legend-item" data-series="{k}" tabindex="0" role="button" aria-label="show or hide {escape(name)}">'
                     f'<rect x="{x + offset:.1f}" y="{y - 10}" width="12" height="12" fill="{PALETTE[k % len(PALETTE)]}"/>'
                     f'<text x="{x + offset + 16:.1f}" y="{y}" font-size="{FONT - 1}">{escape(name)}</text></g>')
        offset += 30 + 7 * len(name)
    return items


def _axis(ticks: list[float], scale: Callable[[float], float], left: float, right: float, label: str, top: float,
          bottom: float) -> list[str]:
    body = [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888888"/>']
    for tick, text in zip(ticks, tick_labels(ticks)):
        y = scale(tick)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                    f'<text x="{left - 5}" y="{y + 4:.1f}" font-size="{FONT - 2}" text-anchor="end">{escape(text)}</text>')
    middle = (top + bottom) / 2
    body.append(f'<text x="14" y="{middle:.1f}" font-size="{FONT - 1}" text-anchor="middle" transform="rotate(-90 14 {middle:.1f})">'
                f"{escape(label)}</text>")
    return body


def bar_chart(
    categories: Sequence[str], series: Sequence[str],
    value: Callable[[str, str], tuple[float, float | None, float | None] | None], *, title: str, y_label: str,
    fmt: str = "{:.1f}", zero: bool = True,
) -> Markup:
    """Grouped bars: one group per category, one bar per series, with a whisker from low to high where given."""
    cells = {(c, s): v for c in categories for s in series if (v := value(c, s)) is not None}
    numbers = [x for mean, low, high in cells.values() for x in (mean, low, high) if x is not None]
    low, high = (min([0.0, *numbers]) if zero else min(numbers, default=0.0)), max(numbers, default=1.0)
    ticks = nice_ticks(low, high)
    left, top, bottom = 64, 34, 270
    group_w = max(60, 18 * len(series) + 26, 7 * max((len(c) for c in categories), default=0) + 14)
    width = left + group_w * len(categories) + 20
    scale = lambda v: bottom - (v - ticks[0]) / max(ticks[-1] - ticks[0], 1e-12) * (bottom - top)  # noqa: E731
    body = _axis(ticks, scale, left, width - 10, y_label, top, bottom)
    bar_w = (group_w - 20) / max(1, len(series))
    for i, category in enumerate(categories):
        x0 = left + group_w * i + 10
        body.append(f'<text x="{x0 + (group_w - 20) / 2:.1f}" y="{bottom + 16}" font-size="{FONT - 1}" text-anchor="middle">'
                    f"{escape(_short(category, max(8, group_w // 7)))}<title>{escape(category)}</title></text>")
        for k, name in enumerate(series):
            if (category, name) not in cells:
                continue
            mean, lo, hi = cells[(category, name)]
            x = x0 + bar_w * k
            y, base = scale(mean), scale(max(ticks[0], 0.0) if zero else ticks[0])
            tip = f"{category}, {name}: {fmt.format(mean)}" + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and hi is not None else "")
            parts = [f'<rect x="{x:.1f}" y="{min(y, base):.1f}" width="{max(bar_w - 2, 1):.1f}" height="{abs(base - y):.1f}" '
                     f'fill="{PALETTE[k % len(PALETTE)]}"/>']
            if lo is not None and hi is not None:
                cx = x + (bar_w - 2) / 2
                parts.append(f'<path d="M{cx:.1f} {scale(lo):.1f}V{scale(hi):.1f}M{cx - 4:.1f} {scale(lo):.1f}h8M{cx - 4:.1f} '
                             f'{scale(hi):.1f}h8" stroke="#222222" stroke-width="1.2" fill="none"/>')
            body.append(f'<g class="bar" data-series="{k}" data-category="{escape(category)}" data-value="{mean!r}">'
                        f'{"".join(parts)}<title>{escape(tip)}</title></g>')
    body += _legend(series, left, 18)
    return _svg(max(width, 320), bottom + 30, title, body, "chart bars")


def line_chart(lines: dict[str, list[tuple[float, float]]], *, title: str, x_label: str, y_label: str, fmt: str = "{:.3g}") -> Markup:
    """One polyline per label over a shared x axis (training step), markers where a line has few points."""
    points = [p for line in lines.values() for p in line]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    left, top, bottom, right = 64, 34, 220, 500
    sx = lambda v: left + (v - x_ticks[0]) / max(x_ticks[-1] - x_ticks[0], 1e-12) * (right - left)  # noqa: E731
    sy = lambda v: bottom - (v - y_ticks[0]) / max(y_ticks[-1] - y_ticks[0], 1e-12) * (bottom - top)  # noqa: E731
    body = _axis(y_ticks, sy, left, right, y_label, top, bottom)
    for tick, text in zip(x_ticks, tick_labels(x_ticks)):
        body.append(f'<text x="{sx(tick):.1f}" y="{bottom + 15}" font-size="{FONT - 2}" text-anchor="middle">{text}</text>')
    body.append(f'<text x="{(left + right) / 2}" y="{bottom + 30}" font-size="{FONT - 1}" text-anchor="middle">{escape(x_label)}</text>')
    for k, (label, line) in enumerate(lines.items()):
        colour = PALETTE[k % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        marks = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"><title>{escape(label)} step {x:g}: '
                        f"{escape(fmt.format(y))}</title></circle>" for x, y in line) if len(line) <= 40 else ""
        body.append(f'<g class="line" data-series="{k}" data-points="{len(line)}"><polyline points="{path}" fill="none" '
                    f'stroke="{colour}" stroke-width="1.6"/>{marks}</g>')
    body += _legend(list(lines), left, 18)
    return _svg(right + 20, bottom + 40, title, body, "chart lines")
