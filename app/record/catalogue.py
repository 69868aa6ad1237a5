"""The catalogue of record sections: one frozen spec per section, from which everything else is derived.

The resource types fetched from every organisation (and so the SMART scopes asked for), the patient
reference each type is filtered on, the merge rule that turns resources into rows, the navigation, the
routes, the table columns and row template, and which capability levels may open the section all come
from here. Adding a section = one ``Section`` entry + its merge rule in ``merge.py`` + one row template
(``templates/record/rows/<name>.html``) + tests.

Two kinds of entries: *pages* (in the navigation, with a URL) and *data* sections (fetched and merged,
shown inside other pages — e.g. care teams on the care page, consents read by the access policy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from core.capabilities import CLINICAL, DEMOGRAPHICS, DETAILED, ONLY_DETAILED, SUMMARY

from . import merge
from .merge import Item, Row

TABLE = "table"  # a page that is one paged table of the section's rows (one generic route serves them all)


@dataclass(frozen=True)
class Section:
    name: str  # key in the record, URL segment for pages
    label: str = ""  # navigation label (pages only)
    heading: str = ""  # page heading and table caption
    resource_types: tuple[str, ...] = ()
    patient_field: str = "subject"  # where these resources name the patient (``Patient?…`` search is by ``patient``)
    build: Callable[[list[Item]], list[Row]] | None = None
    audience: frozenset[str] = ONLY_DETAILED  # capability levels that may open the page
    page: str | None = None  # TABLE, the endpoint of a page of its own (``record.<page>``), or None for data only
    columns: tuple[str, ...] = ()
    volume: int = 0  # larger lists are requested first: their paging chains are the longest
    groups: tuple[tuple[str, str], ...] = ()  # (row status, heading): a table page shown as one table per group
    # (column, sort key): the columns a table page may be sorted by (?sort=<key>&dir=asc|desc); the keys are
    # the row readers in ``find.SORT_KEYS`` — a few explicit ones, so no column sorts by something it does not show
    sorts: tuple[tuple[str, str], ...] = ()
    shown_on: str | None = None  # a data section shown inside a page (reports on results): that page opens it

    @property
    def opened_by(self) -> str | None:
        """The page whose access decides whether this section's rows may be shown (search asks this)."""
        return self.name if self.page is not None else self.shown_on

    @property
    def list_label(self) -> str:
        """The section's list in plain words ("results", "care plans"): completeness banners name it."""
        return (self.label or self.name.replace("_", " ")).lower()

    @property
    def row_template(self) -> str:
        return f"record/rows/{self.name}.html"

    @property
    def endpoint(self) -> str:
        return "record.section" if self.page == TABLE else f"record.{self.page}"


@dataclass(frozen=True)
class Catalogue:
    sections: tuple[Section, ...]
    _by_name: dict[str, Section] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {s.name: s for s in self.sections}
        if len(by_name) != len(self.sections):
            raise ValueError("section names must be unique")
        object.__setattr__(self, "_by_name", by_name)

    def get(self, name: str) -> Section | None:
        return self._by_name.get(name)

    @property
    def pages(self) -> tuple[Section, ...]:
        """Navigation order."""
        return tuple(s for s in self.sections if s.page is not None)

    @property
    def table_pages(self) -> frozenset[str]:
        return frozenset(s.name for s in self.sections if s.page == TABLE)

    @property
    def fetch_types(self) -> tuple[str, ...]:
        """Every resource type read from every organisation, longest lists first."""
        ordered = sorted((s for s in self.sections if s.resource_types), key=lambda s: -s.volume)
        return tuple(dict.fromkeys(t for s in ordered for t in s.resource_types))

    @property
    def patient_fields(self) -> dict[str, str]:
        return {t: s.patient_field for s in self.sections for t in s.resource_types}

    def audiences(self) -> dict[str, frozenset[str]]:
        """Page name → capability levels that may open it (the access decision reads this)."""
        return {s.name: s.audience for s in self.pages}

    def build(self, items_by_type: Mapping[str, list[Item]]) -> dict[str, list[Row]]:
        """Merge each section's resources into rows by its own rule."""
        out = {}
        for s in self.sections:
            if s.build is not None:
                out[s.name] = s.build([i for t in s.resource_types for i in items_by_type.get(t, [])])
        return out

    @property
    def searched(self) -> tuple[Section, ...]:
        """The sections the record search looks in: every merged section a page shows as rows, in page order
        (a data section right after the page that shows it)."""
        order = {s.name: i for i, s in enumerate(self.pages)}
        found = [s for s in self.sections if s.build is not None and s.opened_by in order]
        return tuple(sorted(found, key=lambda s: (order[s.opened_by], s.page is None)))

    def search_audience(self) -> frozenset[str]:
        """Who may search: anyone who may open a page whose rows are searched (they find only those rows)."""
        pages = {s.opened_by for s in self.searched}
        return frozenset(level for s in self.pages if s.name in pages for level in s.audience)

    def with_sections(self, extra: Iterable[Section]) -> Catalogue:
        return Catalogue((*self.sections, *extra))


def _start(r: dict) -> str | None:
    return (r.get("period") or {}).get("start")


def _first_concept(key: str) -> Callable[[dict], dict | None]:
    return lambda r: (r.get(key) or [None])[0]


CATALOGUE = Catalogue(
    (
        Section("summary", "Summary", "Summary", page="summary", audience=CLINICAL),
        Section(
            "problems",
            "Problems",
            "Problems and diagnoses",
            ("Condition",),
            build=merge.problems,
            audience=CLINICAL,
            page=TABLE,
            columns=("Problem", "Status", "Onset", "Ended", "Recorded by"),
            volume=4,
            sorts=(
                ("Problem", "title"),
                ("Status", "status"),
                ("Onset", "date"),
                ("Ended", "end"),
                ("Recorded by", "organisation"),
            ),
        ),
        Section(
            "medications",
            "Medications",
            "Medications",
            ("MedicationRequest", "MedicationStatement"),
            build=merge.medications,
            audience=CLINICAL,
            page=TABLE,
            columns=("Medicine and dose", "Type", "Status", "Started", "Last issued", "Ends", "Prescribed by"),
            volume=7,
            groups=(("current", "Current medications"), ("past", "Past medications")),
            sorts=(
                ("Medicine and dose", "title"),
                ("Started", "date"),
                ("Ends", "end"),
                ("Prescribed by", "organisation"),
            ),
        ),
        Section(
            "allergies",
            "Allergies",
            "Allergies and adverse reactions",
            ("AllergyIntolerance",),
            patient_field="patient",
            build=merge.allergies,
            audience=CLINICAL,
            page=TABLE,
            columns=("Allergy or reaction", "Reactions", "Status", "Recorded by"),
            volume=2,
            sorts=(("Allergy or reaction", "title"), ("Status", "status"), ("Recorded by", "organisation")),
        ),
        Section(
            "encounters",
            "Encounters",
            "Encounters",
            ("Encounter",),
            build=merge.encounters,
            page="encounters",
            columns=("Date", "Encounter", "Kind", "Reason", "Organisation"),
            volume=9,
            sorts=(("Date", "date"), ("Encounter", "title"), ("Kind", "kind"), ("Organisation", "organisation")),
        ),
        Section(
            "results",
            "Results",
            "All results",
            ("Observation",),
            build=merge.results,
            page="results",
            columns=("Date", "Test", "Result", "Category", "Organisation"),
            volume=10,
        ),
        Section(
            "immunisations",
            "Immunisations",
            "Immunisations",
            ("Immunization",),
            patient_field="patient",
            build=merge.immunisations,
            page=TABLE,
            columns=("Vaccine", "Date", "Status", "Recorded by"),
            volume=5,
            sorts=(("Vaccine", "title"), ("Date", "date"), ("Status", "status"), ("Recorded by", "organisation")),
        ),
        Section(
            "procedures",
            "Procedures",
            "Procedures",
            ("Procedure",),
            build=merge.procedures,
            page=TABLE,
            columns=("Procedure", "Date", "Status", "Recorded by"),
            volume=6,
            sorts=(("Procedure", "title"), ("Date", "date"), ("Status", "status"), ("Recorded by", "organisation")),
        ),
        Section(
            "documents",
            "Documents",
            "Documents and letters",
            ("DocumentReference",),
            build=merge.documents,
            page="documents",
            volume=3,
        ),
        # Who is involved in care is every role's business: social care and other summary-record users
        # coordinate with those teams, administrative roles arrange care around them (docs/access-policy.md).
        Section(
            "care",
            "Care team and services",
            "Care team and involved services",
            page="care",
            audience=frozenset({DETAILED, SUMMARY, DEMOGRAPHICS}),
        ),
        # Data sections: shown inside other pages, or read by the access policy.
        Section(
            "reports",
            heading="Reports",
            resource_types=("DiagnosticReport",),
            build=merge.reports,
            volume=8,
            shown_on="results",
        ),
        Section(
            "care_plans",
            resource_types=("CarePlan",),
            build=merge.simple(
                "care_plans",
                lambda r: r.get("title") or merge.concept_text(_first_concept("category")(r)) or "Care plan",
                lambda r: _start(r) or r.get("created"),
            ),
            volume=1,
        ),
        Section(
            "care_teams",
            resource_types=("CareTeam",),
            build=merge.simple(
                "care_teams",
                lambda r: r.get("name") or merge.concept_text(_first_concept("category")(r)) or "Care team",
                _start,
            ),
            volume=1,
        ),
        Section(
            "episodes",
            resource_types=("EpisodeOfCare",),
            patient_field="patient",
            build=merge.simple(
                "episodes", lambda r: merge.concept_text(_first_concept("type")(r)) or "Episode of care", _start
            ),
            volume=1,
        ),
        Section(
            "flags",
            resource_types=("Flag",),
            build=merge.simple("flags", lambda r: merge.concept_text(r.get("code")) or "Alert", _start),
            volume=1,
        ),
        Section(
            "consents",
            resource_types=("Consent",),
            patient_field="patient",
            build=merge.simple(
                "consents",
                lambda r: merge.concept_text(_first_concept("category")(r)) or "Consent",
                lambda r: r.get("dateTime"),
            ),
        ),
        Section(
            "contacts",
            resource_types=("RelatedPerson",),
            patient_field="patient",
            build=merge.simple("contacts", merge.person_name, _start),
        ),
    )
)

# The export (a FHIR Bundle of everything shown) holds the whole record: detailed-record users only.
EXPORT_AUDIENCE = ONLY_DETAILED
