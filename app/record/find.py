"""Finding things fast in the consolidated record: search across sections, sorting, the results filters and
latest values, a report's own results, and the documents recorded in an encounter.

Everything here works on the merged rows a page is built from (withholding already applied), so it can never
show what the page itself may not; the views decide which sections a user may search (``Decision.sections``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from .catalogue import Section
from .merge import (
    AllergyDetail,
    DocumentDetail,
    EncounterDetail,
    MedicationDetail,
    ReportDetail,
    ResultDetail,
    Row,
)
from .service import ConsolidatedRecord

MIN_QUERY = 2  # one letter matches nearly every row: it finds nothing useful
MAX_QUERY = 100
# Detail fields the search reads (text, or tuples of text): what a clinician sees in the row besides its title.
SEARCHED_FIELDS = ("value", "dose", "doses", "reasons", "reactions", "conclusion", "description", "category", "kind")


# ---- search ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One matching row and where its page shows it: ``index`` in the list (the group's, on a grouped page), so
    a link can open the page of the list that holds it."""

    row: Row
    index: int
    group: str | None = None


@dataclass(frozen=True)
class HitGroup:
    section: Section
    hits: list[Hit]

    @property
    def heading(self) -> str:
        return self.section.label or self.section.heading or self.section.name


def query_problem(query: str) -> str | None:
    """Why a query cannot be searched, in plain words; None when it can."""
    if len(query) < MIN_QUERY:
        return f"Enter at least {MIN_QUERY} characters to search."
    if len(query) > MAX_QUERY:
        return f"Enter no more than {MAX_QUERY} characters to search."
    return None


def search(record: ConsolidatedRecord, sections: Iterable[Section], query: str) -> list[HitGroup]:
    """Rows of ``sections`` matching ``query`` (case-insensitive), one group per section with any, each in the
    section's own order — so a hit's position is its position on the page."""
    needle = query.strip().casefold()
    out = []
    for spec in sections:
        hits = list(_hits(spec, record.section(spec.name), needle))
        if hits:
            out.append(HitGroup(spec, hits))
    return out


def _hits(spec: Section, rows: list[Row], needle: str) -> Iterator[Hit]:
    """Matching rows with their position; on a grouped page the position counts within the row's group."""
    seen: dict[str | None, int] = {}
    grouped = bool(spec.groups)
    for row in rows:
        group = row.status if grouped else None
        index = seen.get(group, 0)
        seen[group] = index + 1
        if matches(row, needle):
            yield Hit(row, index, group)


def matches(row: Row, needle: str) -> bool:
    """``needle`` (already case-folded) in the title or a shown detail, or equal to the row's code (a fragment
    of a code number would match unrelated codes)."""
    if any(needle in text.casefold() for text in _texts(row)):
        return True
    if row.code and not row.code.startswith("text:"):
        return needle in (row.code.casefold(), row.code.rsplit("|", 1)[-1].casefold())
    return False


def _texts(row: Row) -> Iterator[str]:
    yield row.title
    for name in SEARCHED_FIELDS:
        value = getattr(row.detail, name, None)
        if isinstance(value, str):
            yield value
        elif isinstance(value, tuple):
            yield from (v for v in value if isinstance(v, str))


def _counted(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}" if n else ""


_KEY_VALUES: dict[type, Callable] = {
    ResultDetail: lambda d: d.value,
    MedicationDetail: lambda d: d.dose,
    EncounterDetail: lambda d: ", ".join(d.reasons) or d.kind,
    ReportDetail: lambda d: d.conclusion or _counted(d.results, "result"),
    DocumentDetail: lambda d: d.description or "",
    AllergyDetail: lambda d: ", ".join(d.reactions),
}


def key_value(row: Row) -> str:
    """The one value a search hit shows beside its title (a result's value, a medicine's dose…)."""
    reader = _KEY_VALUES.get(type(row.detail))
    shown = reader(row.detail) if reader else ""
    return shown or (row.status or "").replace("-", " ").capitalize()


# ---- sorting ----------------------------------------------------------------------------------------------------


def _organisations(row: Row) -> str:
    return ", ".join(sorted(s.name for s in row.sources)).casefold()


SORT_KEYS: dict[str, Callable[[Row], str]] = {
    "date": lambda r: r.date or "",
    "end": lambda r: r.end or "",
    "title": lambda r: r.title.casefold(),
    "status": lambda r: (r.status or "").casefold(),
    "kind": lambda r: (getattr(r.detail, "kind", "") or "").casefold(),
    "organisation": _organisations,
}


@dataclass(frozen=True)
class Sorting:
    """A table page's sort: the section's sortable columns and the one asked for (none: the default order)."""

    columns: tuple[tuple[str, str], ...] = ()
    key: str | None = None
    descending: bool = False

    def key_for(self, column: str) -> str | None:
        return dict(self.columns).get(column)

    @property
    def aria(self) -> str:
        return "descending" if self.descending else "ascending"

    def args(self) -> dict[str, str]:
        """The query arguments that keep this sort (paging links carry them)."""
        return {"sort": self.key, "dir": "desc" if self.descending else "asc"} if self.key else {}

    def link(self, key: str, kept: Mapping[str, object] | None = None) -> dict[str, object]:
        """Arguments for a column header: the page's filters, sorted by ``key`` — the other way round when the
        table is already sorted by it. Paging starts again: the rows move."""
        args = {k: v for k, v in (kept or {}).items() if v and k not in ("sort", "dir", "page")}
        flip = key == self.key and not self.descending
        return {**args, "sort": key, "dir": "desc" if flip else "asc"}


def sorting(spec: Section, key: str | None, direction: str | None) -> Sorting:
    """The sort asked for, when the section sorts by that key; otherwise none (the section's default order)."""
    allowed = {k for _, k in spec.sorts if k in SORT_KEYS}
    if key not in allowed:
        return Sorting(spec.sorts)
    return Sorting(spec.sorts, key, direction == "desc")


def sort_rows(rows: list[Row], by: Sorting) -> list[Row]:
    """Rows in the asked order (stable: ties keep the default order); rows without the value come last either
    way, so an undated row never heads a list sorted by date."""
    if by.key is None:
        return rows
    read = SORT_KEYS[by.key]
    present = [r for r in rows if read(r)]
    missing = [r for r in rows if not read(r)]
    return sorted(present, key=read, reverse=by.descending) + missing


# ---- results: filters, latest of each test, a report's results ----------------------------------------------------


def result_tests(rows: list[Row]) -> list[tuple[str, str]]:
    """(code, name) of each test with a code, by name: the choices of the test filter."""
    names: dict[str, str] = {}
    for row in rows:
        if row.code and row.code not in names:
            names[row.code] = row.title
    return sorted(names.items(), key=lambda kv: (kv[1].casefold(), kv[0]))


def result_categories(rows: list[Row]) -> list[str]:
    return sorted({r.detail.category for r in rows if isinstance(r.detail, ResultDetail) and r.detail.category})


def filter_results(rows: list[Row], test: str | None, category: str | None) -> list[Row]:
    return [
        r
        for r in rows
        if (not test or r.code == test) and (not category or getattr(r.detail, "category", None) == category)
    ]


def latest_each(rows: list[Row]) -> list[Row]:
    """The newest row of each test (by code), newest first; ``rows`` are newest first, as the record keeps them."""
    latest: dict[str, Row] = {}
    for row in rows:
        if row.code and row.code not in latest:
            latest[row.code] = row
    return list(latest.values())


@dataclass(frozen=True)
class ReportResults:
    """The results a report lists that the record holds, and how many it lists that are not shown here."""

    rows: list[Row]
    unshown: int


def report_results(reports: list[Row], results: list[Row]) -> dict[str, ReportResults]:
    """Report row id → its results: each ``DiagnosticReport.result`` reference resolved against the result rows
    of the same organisation (references are local to the server that holds them)."""
    index = _by_reference(results)
    out = {}
    for report in reports:
        found: dict[str, Row] = {}
        unshown = 0
        for source, resource in zip(report.sources, report.resources, strict=True):
            for ref in resource.get("result") or []:
                row = index.get((source.source_id, ref.get("reference") if isinstance(ref, dict) else None))
                if row is None:
                    unshown += 1
                else:
                    found.setdefault(row.id, row)
        out[report.id] = ReportResults(list(found.values()), unshown)
    return out


def _by_reference(rows: list[Row]) -> dict[tuple[str, str], Row]:
    """(organisation, ``Type/id`` or absolute URL) → the row holding that resource."""
    index = {}
    for row in rows:
        for s in row.sources:
            index[(s.source_id, s.reference)] = row
            index[(s.source_id, s.url)] = row
    return index


# ---- documents: filters, and the documents of an encounter ----------------------------------------------------------


def document_types(rows: list[Row]) -> list[str]:
    return sorted({r.title for r in rows}, key=str.casefold)


def filter_documents(rows: list[Row], kind: str | None, source_id: str | None) -> list[Row]:
    return [r for r in rows if (not kind or r.title == kind) and (not source_id or source_id in r.source_ids)]


def documents_by_encounter(encounters: list[Row], documents: list[Row]) -> dict[str, list[Row]]:
    """Encounter row id → the documents whose ``context.encounter`` names it at the same organisation."""
    index = _by_reference(encounters)
    out: dict[str, list[Row]] = {}
    for doc in documents:
        for source, resource in zip(doc.sources, doc.resources, strict=True):
            for ref in encounter_references(resource):
                encounter = index.get((source.source_id, ref))
                listed = out.setdefault(encounter.id, []) if encounter is not None else None
                if listed is not None and all(d.id != doc.id for d in listed):
                    listed.append(doc)
    return out


def encounter_references(resource: dict) -> list[str]:
    """``DocumentReference.context.encounter`` as references: a list in R4, a single reference in STU3."""
    listed = (resource.get("context") or {}).get("encounter")
    if isinstance(listed, dict):
        listed = [listed]
    return [e["reference"] for e in listed or [] if isinstance(e, dict) and isinstance(e.get("reference"), str)]
