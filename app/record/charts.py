"""Trend charts as small server-rendered SVG: no script, no CDN, readable without colour.

Each organisation's points get their own marker shape as well as colour, and the same organisation gets the
same marker on every chart of a page: the ``legend`` is worked out once from every organisation (sorted by
name) and handed to each chart and to each chart's key. Every chart's ids derive from its series' slug, so
that several charts on one page never share an id (a shared ``<title>`` id made every chart announce the
first chart's name). The y axis has round ticks (1, 2, 2.5 or 5 × 10ⁿ apart) and names the unit, the x axis
shows UK dates, the reference range is a shaded band, and the chart carries a text description; the same
numbers are always available as a table beside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from html import escape

from markupsafe import Markup

from core.ukdates import MONTHS, UK, uk_date

from .values import number

MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down")
COLOURS = ("#005eb8", "#da291c", "#007f3b", "#7c2855", "#330072")
UNKNOWN = ("circle", "#425563")  # an organisation the page's legend does not know (never expected)
BAND_FILL, BAND_EDGE = "#dff0e4", "#007f3b"
AXIS, GRID, INK = "#768692", "#e8edee", "#4c6272"
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 420, 200, 48, 12, 24, 30  # a card's chart; wider on its own page
FONT = 12
Band = tuple[float | None, float | None]  # a reference range: low, high (either may be open)


@dataclass(frozen=True)
class Point:
    when: str  # ISO date or dateTime
    value: float
    source: str  # organisation name


@dataclass(frozen=True)
class LegendEntry:
    label: str
    swatch: Markup  # a small aria-hidden SVG drawn exactly as the chart draws it
    shape: str = ""
    colour: str = ""


@dataclass(frozen=True)
class Legend:
    """One marker (shape, colour) per organisation, shared by every chart and key on a page."""

    markers: dict[str, tuple[str, str]] = field(default_factory=dict)

    def marker(self, source: str) -> tuple[str, str]:
        return self.markers.get(source, UNKNOWN)

    def entries(self, sources: Iterable[str], band: Band | None = None, unit: str = "") -> list[LegendEntry]:
        """The key for one chart: its organisations (in the page's order), then the reference range if shaded."""
        shown = set(sources)
        ordered = [s for s in self.markers if s in shown] + sorted(shown - set(self.markers))
        out = []
        for s in ordered:
            shape, colour = self.marker(s)
            out.append(LegendEntry(s, _swatch(_marker(shape, 6, 6, colour)), shape, colour))
        if band_words(band, unit):
            rect = (
                f'<rect x="0" y="2" width="12" height="8" fill="{BAND_FILL}" stroke="{BAND_EDGE}" stroke-width="0.5"/>'
            )
            out.append(LegendEntry(f"Reference range {band_words(band, unit)} (shaded)", _swatch(rect)))
        return out


def legend(sources: Iterable[str]) -> Legend:
    """The page's markers: every organisation (from every chart on the page), sorted by name, each its own
    shape and colour (the shape alone tells them apart; 25 organisations before a pair repeats)."""
    names = sorted({s for s in sources if s})
    n, m = len(MARKERS), len(COLOURS)
    return Legend({s: (MARKERS[i % n], COLOURS[(i + i // n) % m]) for i, s in enumerate(names)})


def band_words(band: Band | None, unit: str = "") -> str:
    """A reference range in words: ``20 to 42 mmol/mol``, ``up to 5``, ``at least 90 mL/min``."""
    low, high = band or (None, None)
    after = f" {unit}" if unit else ""
    if low is not None and high is not None:
        return f"{_num(low)} to {_num(high)}{after}"
    if high is not None:
        return f"up to {_num(high)}{after}"
    if low is not None:
        return f"at least {_num(low)}{after}"
    return ""


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 2.5 or 5 × 10ⁿ apart) from at or below ``lo`` to at or above ``hi``."""
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    exponent = math.floor(math.log10(raw))
    step = next(f * 10**exponent for f in (1, 2, 2.5, 5, 10) if f * 10**exponent >= raw * (1 - 1e-9))
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [_tidy(k * step) for k in range(first, last + 1)]


def tick_label(value: float, ticks: list[float]) -> str:
    """A tick as few decimals as its step needs (2.5 → ``2.5``; 0.25 → ``0.25``; 120 → ``120``)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def date_ticks(first: int, last: int, most: int = 5) -> list[tuple[int, str]]:
    """(day number, label) at round dates between two day numbers: month starts (``Mar-2019``) over two months
    or more, 1, 2, 3, 6, 12… months apart; otherwise days (``05-Mar-2019``)."""
    if last - first >= 60:
        d0, d1 = date.fromordinal(first), date.fromordinal(last)
        months = range(d0.year * 12 + d0.month - 1, d1.year * 12 + d1.month)
        starts = [(m, date(m // 12, m % 12 + 1, 1).toordinal()) for m in months]
        starts = [(m, o) for m, o in starts if first <= o <= last]
        for step in (1, 2, 3, 6, 12, 24, 60, 120, 240, 600):
            ticks = [(o, f"{MONTHS[m % 12]}-{m // 12}") for m, o in starts if m % step == 0]
            if len(ticks) <= most:
                return ticks
        return ticks
    step = next(s for s in (1, 2, 7, 14, 28) if (last - first) // s < most - 1)
    return [(o, uk_date(date.fromordinal(o))) for o in range(first, last + 1, step)]


def trend_svg(
    title: str,
    unit: str,
    points: list[Point],
    key: Legend,
    *,
    ident: str,
    band: Band | None = None,
    width: int = WIDTH,
) -> Markup:
    """An accessible line-and-marker chart of ``points`` over time.

    ``key`` is the page's legend (the same marker for an organisation on every chart); ``ident`` makes the
    chart's ids unique on the page (the series' slug); ``band`` is the reference range, shaded behind the points;
    ``width`` is in the units of its 12-unit text: a chart with a page to itself is drawn wider, so that its text
    is not scaled up with it.
    """
    height = max(HEIGHT, round(width * 0.36))
    readable = ((_day(p.when), p) for p in points if math.isfinite(p.value))
    dated = sorted(((d, p) for d, p in readable if d), key=lambda dp: (dp[0], dp[1].when))
    if len(dated) < 2:
        return Markup("")
    pts = [p for _, p in dated]
    xs = [d for d, _ in dated]
    ys = [p.value for p in pts]
    low, high = band or (None, None)
    if low is None and high is None:
        band = None
    ends = [v for v in (low, high) if v is not None and math.isfinite(v)]
    ticks = nice_ticks(min(ys + ends), max(ys + ends))
    lo, hi = ticks[0], ticks[-1]
    x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1
    pid = escape(f"chart-{ident or 'series'}")
    after = f" {unit}" if unit else ""

    def sx(v: float) -> float:
        return PAD_L + (v - x0) / (x1 - x0) * (width - PAD_L - PAD_R)

    def sy(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * (height - PAD_T - PAD_B)

    name = f"{title} trend, {len(pts)} results from {uk_date(pts[0].when)} to {uk_date(pts[-1].when)}"
    sources = list(dict.fromkeys(s for s in key.markers if any(p.source == s for p in pts)))
    sources += sorted({p.source for p in pts} - set(sources))
    described = [
        f"Lowest {_num(min(ys))}{after}, highest {_num(max(ys))}{after}; "
        f"latest {_num(pts[-1].value)}{after} on {uk_date(pts[-1].when)}."
    ]
    if band:
        described.append(f"Reference range {band_words(band, unit)}, shown as a shaded band.")
    described.append("Markers: " + "; ".join(f"{s}, {key.marker(s)[0].replace('-', ' ')}" for s in sources) + ".")
    parts = [
        f'<svg class="trend" id="{pid}" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{pid}-title" '
        f'aria-describedby="{pid}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{pid}-title">{escape(name)}</title>',
        f'<desc id="{pid}-desc">{escape(" ".join(described))}</desc>',
    ]
    if band:
        top, bottom = sy(hi if high is None else high), sy(lo if low is None else low)
        parts.append(
            f'<rect class="trend__band" x="{PAD_L}" y="{top:.1f}" width="{width - PAD_L - PAD_R}" '
            f'height="{max(bottom - top, 1):.1f}" fill="{BAND_FILL}"><title>'
            f"{escape('Reference range ' + band_words(band, unit))}</title></rect>"
        )
        for edge in (v for v in (low, high) if v is not None):
            parts.append(
                f'<line x1="{PAD_L}" y1="{sy(edge):.1f}" x2="{width - PAD_R}" y2="{sy(edge):.1f}" '
                f'stroke="{BAND_EDGE}" stroke-width="0.75" stroke-dasharray="4 3"/>'
            )
    for t in ticks:
        y = sy(t)
        if t != lo:  # the x axis is drawn there
            parts.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{width - PAD_R}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(
            f'<text class="trend__ytick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="{FONT}" '
            f'fill="{INK}">{escape(tick_label(t, ticks))}</text>'
        )
    if unit:
        parts.append(
            f'<text class="trend__unit" x="4" y="{PAD_T - 10}" font-size="{FONT}" fill="{INK}">{escape(unit)}</text>'
        )
    for day, label in date_ticks(x0, x1, 5 if width < 600 else 8):
        x, half = sx(day), len(label) * FONT * 0.3
        anchor = "start" if x - half < 2 else "end" if x + half > width - 2 else "middle"
        parts.append(
            f'<line x1="{x:.1f}" y1="{height - PAD_B}" x2="{x:.1f}" y2="{height - PAD_B + 4}" stroke="{AXIS}"/>'
        )
        parts.append(
            f'<text class="trend__xtick" x="{x:.1f}" y="{height - 10}" text-anchor="{anchor}" font-size="{FONT}" '
            f'fill="{INK}">{escape(label)}</text>'
        )
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
    parts += [
        f'<line x1="{PAD_L}" y1="{height - PAD_B}" x2="{width - PAD_R}" y2="{height - PAD_B}" stroke="{AXIS}"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{height - PAD_B}" stroke="{AXIS}"/>',
        f'<polyline points="{line}" fill="none" stroke="#425563" stroke-width="1.5"/>',
    ]
    for x, p in zip(xs, pts, strict=True):
        shape, colour = key.marker(p.source)
        label = f"{uk_date(p.when)}: {_num(p.value)}{after} ({p.source})"
        parts.append(_marker(shape, sx(x), sy(p.value), colour, label))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it went through html.escape


def _day(iso: str) -> int:
    """The day number of a date, or of a dateTime's day in UK local time (as ``uk_date`` shows it); 0 if unreadable."""
    text = (iso or "").strip()
    try:
        if len(text) > 10 and "T" in text:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return (moment.astimezone(UK) if moment.tzinfo else moment).date().toordinal()
        return date.fromisoformat(text[:10]).toordinal()
    except ValueError:
        return 0


def _num(value: float) -> str:
    """A value as recorded: ``80`` rather than ``80.0``, never exponent notation."""
    text = number(value)
    return text[:-2] if text.endswith(".0") else text


def _tidy(value: float) -> float:
    value = round(value, 10)
    return 0.0 if value == 0 else float(value)


def _swatch(shape: str) -> Markup:
    return Markup(  # noqa: S704 - built here from fixed shapes and colours
        f'<svg class="legend__swatch" width="12" height="12" viewBox="0 0 12 12" aria-hidden="true" '
        f'focusable="false">{shape}</svg>'
    )


def _marker(shape: str, x: float, y: float, colour: str, label: str = "") -> str:
    title = f"<title>{escape(label)}</title>" if label else ""
    edge = 'stroke="#fff" stroke-width="1"'
    if shape == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{colour}" {edge}>{title}</rect>'
    if shape in ("triangle", "triangle-down", "diamond"):
        if shape == "triangle":
            pts = f"{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} {x + 5:.1f},{y + 4:.1f}"
        elif shape == "triangle-down":
            pts = f"{x:.1f},{y + 5:.1f} {x - 5:.1f},{y - 4:.1f} {x + 5:.1f},{y - 4:.1f}"
        else:
            pts = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{colour}" {edge}>{title}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}" {edge}>{title}</circle>'
