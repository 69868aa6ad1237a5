"""Trend charts as small server-rendered SVG: no script, no CDN, readable without colour.

Each organisation's points get their own marker shape as well as colour, and the chart carries a text
description; the same numbers are always available as a table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from html import escape

from markupsafe import Markup

MARKERS = ("circle", "square", "triangle", "diamond")
COLOURS = ("#005eb8", "#da291c", "#007f3b", "#7c2855")
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 560, 180, 48, 12, 12, 28


@dataclass(frozen=True)
class Point:
    when: str  # ISO date or dateTime
    value: float
    source: str  # organisation name


def _day_number(iso: str) -> int:
    try:
        return date.fromisoformat(iso[:10]).toordinal()
    except ValueError:
        return 0


def _marker(shape: str, x: float, y: float, colour: str, label: str) -> str:
    title = f"<title>{escape(label)}</title>"
    if shape == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}">{title}</rect>'
    if shape == "triangle":
        pts = f"{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} {x + 5:.1f},{y + 4:.1f}"
        return f'<polygon points="{pts}" fill="{colour}">{title}</polygon>'
    if shape == "diamond":
        pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{colour}">{title}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">{title}</circle>'


def trend_svg(title: str, unit: str, points: list[Point], sources: list[str]) -> Markup:
    """An accessible line-and-marker chart of ``points`` over time, one marker shape per source."""
    pts = sorted((p for p in points if _day_number(p.when)), key=lambda p: p.when)
    if len(pts) < 2:
        return Markup("")
    xs = [_day_number(p.when) for p in pts]
    ys = [p.value for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    lo, hi = min(ys), max(ys)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    span = hi - lo
    lo, hi = lo - span * 0.1, hi + span * 0.1

    def sx(v: int) -> float:
        return PAD_L + (v - x0) / (x1 - x0) * (WIDTH - PAD_L - PAD_R)

    def sy(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * (HEIGHT - PAD_T - PAD_B)

    style = {s: (MARKERS[i % len(MARKERS)], COLOURS[i % len(COLOURS)]) for i, s in enumerate(sources)}
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
    parts = [
        f'<svg class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="t-{id(pts)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="t-{id(pts)}">{escape(title)}: {len(pts)} results from {escape(pts[0].when[:10])} to '
        f"{escape(pts[-1].when[:10])}, lowest {min(ys):g}, highest {max(ys):g} {escape(unit)}</title>",
        f'<line x1="{PAD_L}" y1="{HEIGHT - PAD_B}" x2="{WIDTH - PAD_R}" y2="{HEIGHT - PAD_B}" stroke="#768692"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{HEIGHT - PAD_B}" stroke="#768692"/>',
        f'<text x="{PAD_L - 6}" y="{sy(max(ys)) + 4:.1f}" text-anchor="end" font-size="11">{max(ys):g}</text>',
        f'<text x="{PAD_L - 6}" y="{sy(min(ys)) + 4:.1f}" text-anchor="end" font-size="11">{min(ys):g}</text>',
        f'<text x="{PAD_L}" y="{HEIGHT - 8}" font-size="11">{escape(pts[0].when[:10])}</text>',
        f'<text x="{WIDTH - PAD_R}" y="{HEIGHT - 8}" text-anchor="end" font-size="11">'
        f"{escape(pts[-1].when[:10])}</text>",
        f'<polyline points="{line}" fill="none" stroke="#425563" stroke-width="1.5"/>',
    ]
    for x, p in zip(xs, pts, strict=True):
        shape, colour = style.get(p.source, (MARKERS[0], COLOURS[0]))
        parts.append(_marker(shape, sx(x), sy(p.value), colour, f"{p.when[:10]}: {p.value:g} {unit} ({p.source})"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it went through html.escape


def legend(sources: list[str]) -> list[tuple[str, str, str]]:
    """(source, marker shape, colour) for the chart legend."""
    return [(s, MARKERS[i % len(MARKERS)], COLOURS[i % len(COLOURS)]) for i, s in enumerate(sources)]
