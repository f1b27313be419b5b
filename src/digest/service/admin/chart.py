"""The overview's chart of the list over 26 weeks, as SVG drawn here: bars for joined, left and
bounced per week (left axis), the list's size as a line (right axis). Inline in the page, with
presentation attributes only (the CSP allows no inline style and no script), a <title> and
<desc> for screen readers; the page shows the same numbers as a table too."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from digest.service.admin.overview import Week

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 44, 56, 34, 40  # margins: the axes' labels, the legend, the dates
SERIES = (("joined", "#2e7d32"), ("left", "#8a6d3b"), ("bounced", "#b42318"))
SIZE_COLOUR = "#0b5cad"


GRID = 4  # intervals between the grid lines; each axis labels them in whole steps


def nice_step(value: float) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (at least 1), whole:
    a grid step whose multiples read well (25, 50, 75, 100)."""
    scale = 1
    while True:
        for m in (1, 2, 2.5, 5):
            if scale * m >= value and float(scale * m).is_integer():
                return int(scale * m)
        scale *= 10


def size_axis(low: int, high: int) -> tuple[int, int]:
    """(bottom, step) of the list-size axis: GRID whole steps from a multiple of the step that
    cover low..high."""
    step = nice_step((high - low) / GRID)
    while True:
        bottom = low - low % step
        if bottom + GRID * step >= high:
            return bottom, step
        step = nice_step(step + 1)


def weekly_chart(weeks: Sequence[Week]) -> Markup:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h
    count_step = nice_step(max((max(w.joined, w.left, w.bounced) for w in weeks), default=0) / GRID)
    top_count = GRID * count_step
    sizes = [w.size for w in weeks]
    low, high = (min(sizes), max(sizes)) if sizes else (0, 0)
    low, size_step = size_axis(low, high)
    size_top = low + GRID * size_step

    def y_count(n: int) -> float:
        return bottom - plot_h * n / top_count

    def y_size(n: int) -> float:
        return bottom - plot_h * (n - low) / (size_top - low or 1)

    slot = plot_w / max(len(weeks), 1)
    bar = slot * 0.8 / len(SERIES)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img"'
        ' aria-labelledby="chart-title chart-desc" class="chart" font-family="sans-serif" font-size="11">',
        '<title id="chart-title">Subscribers over the last 26 weeks</title>',
        f'<desc id="chart-desc">Bars: subscribers who joined, left and bounced each week. Line: active subscribers'
        f' at the end of each week, from {sizes[0] if sizes else 0:,} to {sizes[-1] if sizes else 0:,}.'
        ' The table below gives every number.</desc>',
    ]
    for i in range(GRID + 1):  # grid and both axes' labels
        y = bottom - plot_h * i / GRID
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#d0d7de"'
                     ' stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#57606a">'
                     f'{count_step * i:,}</text>')
        parts.append(f'<text x="{LEFT + plot_w + 6}" y="{y + 4:.1f}" fill="{SIZE_COLOUR}">'
                     f'{low + size_step * i:,}</text>')
    for i, w in enumerate(weeks):
        x0 = LEFT + slot * i + slot * 0.1
        for k, (name, colour) in enumerate(SERIES):
            n = getattr(w, name)
            if n:
                y = y_count(n)
                parts.append(f'<rect x="{x0 + bar * k:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{bottom - y:.1f}"'
                             f' fill="{colour}"><title>{escape(f"{w.start:%d %b}: {n:,} {name}")}</title></rect>')
        if (len(weeks) - 1 - i) % 4 == 0:  # every 4th week, counted back from this one
            parts.append(f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{bottom + 16}" text-anchor="middle"'
                         f' fill="#57606a">{w.start:%d %b}</text>')
    points = " ".join(f"{LEFT + slot * (i + 0.5):.1f},{y_size(w.size):.1f}" for i, w in enumerate(weeks))
    if points:
        parts.append(f'<polyline points="{points}" fill="none" stroke="{SIZE_COLOUR}" stroke-width="2"/>')
    x = LEFT
    for name, colour in (*SERIES, ("size (right axis)", SIZE_COLOUR)):  # the legend
        parts.append(f'<rect x="{x}" y="10" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="19" fill="#1f2328">{name}</text>')
        x += 14 + 7 * len(name) + 18
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="#57606a">week starting (Monday, UTC)</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
