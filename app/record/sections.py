"""View models for the record pages: the summary, trend series, filters and pages of rows.

Navigation and table columns come from the catalogue (``catalogue.py``), not from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .charts import Point
from .merge import Row, numeric_range
from .service import ConsolidatedRecord

PAGE_ROWS = 100
SUMMARY_ENCOUNTERS = 5
SUMMARY_RESULTS = 8
PRINT_ENCOUNTERS = 20  # the printed summary cannot be scrolled: more, and it says how many of all
KIND_LABELS = {
    "gp": "GP practice",
    "acute": "Hospital",
    "community": "Community services",
    "mental_health": "Mental health",
    "community_mental_health": "Community and mental health",
    "social_care": "Social care",
}


@dataclass
class Trend:
    name: str
    unit: str
    points: list[Point]
    sources: list[str]
    band: tuple[float | None, float | None] | None = None  # the latest numeric reference range (low, high)
    suffix: str = ""  # "-2", "-3"… when another series' name gives the same slug

    @property
    def slug(self) -> str:
        return ("".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-") or "series") + self.suffix


@dataclass
class Page:
    rows: list[Row]
    number: int
    total: int
    size: int = PAGE_ROWS

    @property
    def has_next(self) -> bool:
        return self.number * self.size < self.total


@dataclass
class Group:
    """One group of a grouped table page (current or past medicines), paged on its own."""

    key: str
    heading: str
    page: Page


@dataclass(frozen=True)
class Excerpt:
    """The first items of a long list and how many there are: a shortened list always says so, and
    ``?all=<name>`` shows the whole of it."""

    items: list
    total: int
    name: str

    @property
    def cut(self) -> bool:
        return len(self.items) < self.total


def excerpt(items: list, limit: int, name: str, everything: bool = False) -> Excerpt:
    return Excerpt(items if everything else items[:limit], len(items), name)


def paginate(rows: list[Row], page: int, size: int = PAGE_ROWS) -> Page:
    page = max(page, 1)
    return Page(rows[(page - 1) * size : page * size], page, len(rows), size)


def summary(record: ConsolidatedRecord, everything: bool = False) -> dict:
    """The summary's lists; ``everything``: the printed summary, which cannot be scrolled or expanded, lists
    every recent encounter and latest result instead of the first screen's few."""
    latest: dict[str, Row] = {}
    for row in record.section("results"):  # newest first
        if row.code and row.code not in latest:
            latest[row.code] = row
    return {
        "alerts": [r for r in record.section("flags") if r.status == "active"],
        "allergies": record.section("allergies"),
        "problems": [r for r in record.section("problems") if r.status == "active"],
        "medications": [r for r in record.section("medications") if r.status == "current"],
        "encounters": record.section("encounters")[: PRINT_ENCOUNTERS if everything else SUMMARY_ENCOUNTERS],
        "results": list(latest.values())[: None if everything else SUMMARY_RESULTS],
        "services": involved_services(record),
        "encounter_count": len(record.section("encounters")),  # said beside a shortened list
        "test_count": len(latest),
    }


def involved_services(record: ConsolidatedRecord) -> list[dict]:
    """Each organisation holding a record: its kind, last contact, open episodes and teams."""
    services = []
    for result in record.loaded:
        sid = result.source.id
        encounters = [r for r in record.section("encounters") if sid in r.source_ids]
        episodes = [r for r in record.section("episodes") if sid in r.source_ids and r.status == "active"]
        teams = [r for r in record.section("care_teams") if sid in r.source_ids and r.status == "active"]
        services.append(
            {
                "name": result.source.name,
                "ods": result.source.ods_code,
                "kind": KIND_LABELS.get(result.source.kind, result.source.kind),
                "last_contact": encounters[0].date[:10] if encounters and encounters[0].date else None,
                "episodes": episodes,
                "teams": teams,
            }
        )
    return services


def trends(record: ConsolidatedRecord, minimum: int = 2) -> list[Trend]:
    """Numeric results as series across every organisation, the longest series first."""
    series: dict[str, Trend] = {}
    for row in record.section("results"):  # newest first: the first range found is the latest
        for name, (value, unit) in row.detail.numeric.items():
            if not name or not row.date:
                continue
            trend = series.setdefault(name, Trend(name, unit, [], []))
            if trend.band is None:
                trend.band = next((b[name] for b in map(numeric_range, row.resources) if name in b), None)
            for src in row.sources:
                trend.points.append(Point(row.date, value, src.name))
                if src.name not in trend.sources:
                    trend.sources.append(src.name)
    out = [t for t in series.values() if len(t.points) >= minimum]
    for t in out:
        t.points.sort(key=lambda p: p.when)
        t.sources.sort()
    out.sort(key=lambda t: (-len(t.points), t.name))
    slugs: set[str] = set()
    for t in out:  # every chart's ids and address derive from its slug: no two alike
        n = 1
        while t.slug in slugs:
            n += 1
            t.suffix = f"-{n}"
        slugs.add(t.slug)
    return out


def filter_rows(rows: list[Row], date_from: str | None, date_to: str | None, source_id: str | None) -> list[Row]:
    out = []
    for row in rows:
        d = (row.date or "")[:10]
        if date_from and (not d or d < date_from):
            continue
        if date_to and (not d or d > date_to):
            continue
        if source_id and source_id not in row.source_ids:
            continue
        out.append(row)
    return out
