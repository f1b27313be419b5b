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


def nice_ceiling(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def weekly_chart(weeks: Sequence[Week]) -> Markup:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bottom = TOP + plot_h
    top_count = nice_ceiling(max((max(w.joined, w.left, w.bounced) for w in weeks), default=0))
    sizes = [w.size for w in weeks]
    low, high = (min(sizes), max(sizes)) if sizes else (0, 0)
    span = nice_ceiling(high - low) if high > low else 1
    low = max(0, low - low % span if span > 1 else low)
    size_top = low + span if low + span >= high else low + 2 * span

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
    for i in range(5):  # grid and both axes' labels
        y = bottom - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#d0d7de"'
                     ' stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#57606a">'
                     f'{top_count * i // 4:,}</text>')
        parts.append(f'<text x="{LEFT + plot_w + 6}" y="{y + 4:.1f}" fill="{SIZE_COLOUR}">'
                     f'{low + (size_top - low) * i // 4:,}</text>')
    for i, w in enumerate(weeks):
        x0 = LEFT + slot * i + slot * 0.1
        for k, (name, colour) in enumerate(SERIES):
            n = getattr(w, name)
            if n:
                y = y_count(n)
                parts.append(f'<rect x="{x0 + bar * k:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{bottom - y:.1f}"'
                             f' fill="{colour}"><title>{escape(f"{w.start:%d %b}: {n:,} {name}")}</title></rect>')
        if i % 4 == 0 or i == len(weeks) - 1:
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
