"""Normalise FHIR resources from every organisation into section rows; one fact, one row, all sources.

The rules (also in docs/record-rules.md, which the tests implement independently):

- **Code** of a resource: its first coding with a system and code (``system|code``); without one, the
  lower-cased text (``text:<text>``). Resources without either are never merged with anything.
- **Problems** (Condition): same code and overlapping intervals [onset, abatement or open-ended].
- **Medications** (MedicationRequest, MedicationStatement): same medicine code and overlapping intervals
  [start, end]; start is authoredOn / effective start / dateAsserted; end is the validity or effective
  end, or the start itself when the status is stopped, completed, cancelled, entered-in-error or
  not-taken; otherwise open-ended.
- **Allergies**: same code. **Immunisations**: same vaccine code and date. **Procedures**: same code and
  performed date. **Results** (Observation): same code, same effective time (to the minute) and same
  value. **Reports** (DiagnosticReport): same code and effective date.
- **Encounters, documents, care plans, care teams, episodes, flags, related people**: one row each,
  except that resources sharing an identifier (system and value) are the same fact.
- Dates compare at day granularity unless stated. Any two resources sharing an identifier are always
  the same fact.

Conflicts are flagged, never resolved: an allergy at one organisation against "no known allergies" at
another; different doses (or strengths) of the same medicine among current medications.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from core.names import display_name

from . import medicines, values

OPEN_END = "9999-12-31"
NKA_CODES = {
    "716186003": "No known allergy",
    "409137002": "No known drug allergy",
    "428607008": "No known environmental allergy",
    "429625007": "No known food allergy",
}
STOPPED_STATUSES = {"stopped", "completed", "cancelled", "entered-in-error", "not-taken"}
CURRENT_MED_STATUSES = {"active", "on-hold", "intended"}
STOP_DECISIONS = {"stopped", "cancelled", "entered-in-error", "not-taken"}  # someone decided it is not taken
ACTIVE_PROBLEM_STATUSES = {"active", "recurrence", "relapse"}


@dataclass(slots=True)
class SourceRef:
    source_id: str
    name: str
    ods: str
    reference: str  # Type/id at that source
    url: str  # absolute URL at that source
    last_updated: str | None


@dataclass(slots=True)
class MedicationDetail:
    dose: str
    last_issued: str | None
    doses: tuple[str, ...]  # every distinct dose recorded for this medicine
    quantity: str = ""  # supplied per issue (medicines.quantity)
    course: str = ""  # Acute, Repeat…
    course_length: str = ""  # one supply lasts (28 days)
    prescriber: str = ""  # the person, when the source names them (the organisation is the row's provenance)
    status_text: str = ""  # the latest record's own status in words (Active, Stopped…)
    recorded_as: str = ""  # Prescribed / Recorded as taken


@dataclass(slots=True)
class AllergyDetail:
    nka: bool  # a "no known allergies" statement rather than an allergy
    criticality: str | None
    reactions: tuple[str, ...]
    category: str


@dataclass(slots=True)
class EncounterDetail:
    kind: str
    reasons: tuple[str, ...]


@dataclass(slots=True)
class ResultDetail:
    value: str
    category: str
    numeric: dict[str, tuple[float, str]]  # series name → (value as recorded, int or float; unit), for charts
    interpretation: str
    reference: str = ""  # the reference range in words (values.reference_range)


@dataclass(slots=True)
class ReportDetail:
    conclusion: str | None
    results: int


@dataclass(slots=True)
class DocumentDetail:
    description: str | None
    content_type: str | None
    authors: tuple[str, ...]
    category: str


Detail = MedicationDetail | AllergyDetail | EncounterDetail | ResultDetail | ReportDetail | DocumentDetail


@dataclass(slots=True)
class Row:
    section: str
    title: str
    code: str | None
    date: str | None
    sources: list[SourceRef]
    resources: list[dict]
    status: str | None = None
    end: str | None = None
    detail: Detail | None = None  # the section's own typed fields
    conflicts: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        """Stable across requests: derived from the source references."""
        joined = "|".join(sorted(f"{s.source_id}:{s.reference}" for s in self.sources))
        return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()[:12]

    @property
    def last_updated(self) -> str | None:
        stamps = [s.last_updated for s in self.sources if s.last_updated]
        return max(stamps) if stamps else None

    @property
    def source_ids(self) -> list[str]:
        return sorted({s.source_id for s in self.sources})


@dataclass(slots=True)
class Item:
    """A resource with where it came from: the unit merging works on."""

    resource: dict
    source: SourceRef


# ---- small readers -----------------------------------------------------------------------------------------


def code_key(concept: dict | None) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if coding.get("system") and coding.get("code"):
            return f"{coding['system']}|{coding['code']}"
    text = (concept.get("text") or "").strip().lower()
    return f"text:{text}" if text else None


def concept_text(concept: dict | None) -> str:
    """A CodeableConcept in words (values.concept: known displays for bare codes such as ``vital-signs``)."""
    return values.concept(concept)


def day(value: str | None) -> str | None:
    return value[:10] if isinstance(value, str) and len(value) >= 4 else None


def minute(value: str | None) -> str | None:
    return value[:16] if isinstance(value, str) and len(value) >= 10 else None


def keyed(code: str | None, *parts: object) -> str | None:
    """A merge key, or None (never merged) when the resource has no code."""
    if code is None:
        return None
    return "@".join([code, *(str(p) for p in parts)])


def identifiers(resource: dict) -> list[str]:
    out = [
        f"{i.get('system')}|{i.get('value')}"
        for i in resource.get("identifier") or []
        if isinstance(i, dict) and i.get("system") and i.get("value")
    ]
    master = resource.get("masterIdentifier")
    if isinstance(master, dict) and master.get("system") and master.get("value"):
        out.append(f"{master['system']}|{master['value']}")
    return out


def status_code(concept: dict | None) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return coding["code"]
    return None


# ---- grouping ---------------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group(
    items: list[Item], key: Callable[[Item], str | None], interval: Callable[[Item], tuple[str, str]] | None = None
) -> list[list[Item]]:
    """Groups of the same fact: same key and (when given) overlapping intervals, or a shared identifier."""
    return [[items[i] for i in members] for members in group_indices(items, key, interval)]


def group_indices(
    items: list[Item], key: Callable[[Item], str | None], interval: Callable[[Item], tuple[str, str]] | None = None
) -> list[list[int]]:
    """:func:`group` as positions in ``items``: groups in the order of their first member, members in order.

    The groups are the connected components of "same key (and overlapping interval), or a shared identifier",
    a relation between pairs: leaving items out can only split a group, never join two."""
    uf = _UnionFind(len(items))
    by_ident: dict[str, int] = {}
    for i, item in enumerate(items):
        for ident in identifiers(item.resource):
            if ident in by_ident:
                uf.union(by_ident[ident], i)
            else:
                by_ident[ident] = i
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        k = key(item)
        if k is not None:
            by_key[k].append(i)
    for members in by_key.values():
        if interval is None:
            for i in members[1:]:
                uf.union(members[0], i)
            continue
        spans = sorted((interval(items[i]), i) for i in members)
        current_end, anchor = None, None
        for (start, end), i in spans:
            if anchor is not None and start <= current_end:
                uf.union(anchor, i)
                current_end = max(current_end, end)
            else:
                anchor, current_end = i, end
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        groups[uf.find(i)].append(i)
    return list(groups.values())


# ---- a section's rule, and the record without what may not be shown --------------------------------------


@dataclass(frozen=True)
class Rule:
    """A section's merge rule in three steps: which items are the same fact (``key``, ``interval``), one row
    per group (``row``), then the section as a whole (``finish``: conflicts across rows, the order).

    Calling it merges a list of items; the rows it returns (:class:`Merged`) keep what is needed to derive the
    same section without some items (:func:`without`) by redoing only the groups those items were in."""

    row: Callable[[list[Item]], Row]
    key: Callable[[Item], str | None] = lambda item: None  # None: never merged (identifiers still merge)
    interval: Callable[[Item], tuple[str, str]] | None = None
    finish: Callable[[list[Row]], list[Row]] = lambda rows: newest_first(rows)
    across: bool = False  # ``finish`` adds conflicts to rows: each result gets its own copies of them

    def __call__(self, items: list[Item]) -> Merged:
        groups = group_indices(items, self.key, self.interval)
        rows = [self.row([items[i] for i in members]) for members in groups]
        out = Merged(self.finish([_own(r) for r in rows] if self.across else rows))
        out.rule, out.items, out.groups, out.rows = self, items, groups, rows
        return out


class Merged(list):
    """A section's rows (a plain list to every reader) and how they were made: the rule, the items, the
    groups (positions in ``items``) and each group's row before ``finish`` — the same Row objects as the
    list's own unless the rule's ``finish`` adds conflicts across rows."""

    rule: Rule
    items: list[Item]
    groups: list[list[int]]
    rows: list[Row]


def without(rows: list[Row], hidden: Collection[int]) -> list[Row] | None:
    """The section as if the resources whose ``id()`` is in ``hidden`` had never been there, derived from
    one merge: groups with none of them keep their row; a group with some is grouped again without them
    (it may split); ``finish`` runs on the result. Equal to merging the remaining items afresh.

    None when ``rows`` was not made by a :class:`Rule` (a plain function merges afresh instead)."""
    if not isinstance(rows, Merged):
        return None
    rule, items = rows.rule, rows.items
    gone = {i for i, item in enumerate(items) if id(item.resource) in hidden}
    if not gone:
        return rows
    kept: list[tuple[int, Row]] = []  # (position of the group's first member, its row)
    for members, row in zip(rows.groups, rows.rows, strict=True):
        left = [i for i in members if i not in gone]
        if len(left) == len(members):
            kept.append((members[0], row))
        elif left:
            sub = [items[i] for i in left]
            kept.extend(
                (left[g[0]], rule.row([sub[i] for i in g])) for g in group_indices(sub, rule.key, rule.interval)
            )
    kept.sort(key=lambda pair: pair[0])  # the order a fresh merge of the remaining items finds the groups in
    return rule.finish([_own(r) if rule.across else r for _, r in kept])


def _own(row: Row) -> Row:
    """A copy whose conflicts list can grow without touching ``row``'s."""
    mine = copy.copy(row)
    mine.conflicts = list(row.conflicts)
    return mine


def _row(section: str, members: list[Item], title: str, code: str | None, date: str | None, **kw) -> Row:
    return Row(
        section=section,
        title=title,
        code=code,
        date=date,
        sources=[m.source for m in members],
        resources=[m.resource for m in members],
        **kw,
    )


# ---- sections ---------------------------------------------------------------------------------------------


def _problem_span(item: Item) -> tuple[str, str]:
    r = item.resource
    start = (
        day(r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start") or r.get("recordedDate"))
        or "0000-01-01"
    )
    end = day(r.get("abatementDateTime") or (r.get("abatementPeriod") or {}).get("end")) or OPEN_END
    return start, max(start, end)


def _problem_row(members: list[Item]) -> Row:
    starts, ends = zip(*(_problem_span(m) for m in members), strict=True)
    statuses = {status_code(m.resource.get("clinicalStatus")) for m in members}
    end = max(ends)
    active = bool(statuses & ACTIVE_PROBLEM_STATUSES) and end == OPEN_END
    first = members[0].resource
    return _row(
        "problems",
        members,
        concept_text(first.get("code")) or "Unnamed problem",
        code_key(first.get("code")),
        min(starts),
        end=None if end == OPEN_END else end,
        status="active" if active else (sorted(s for s in statuses if s)[0] if any(statuses) else "unknown"),
    )


problems = Rule(
    _problem_row,
    key=lambda i: code_key(i.resource.get("code")),
    interval=_problem_span,
    finish=lambda rows: newest_first(rows, lambda r: r.status != "active"),
)


def _med_concept(r: dict) -> dict | None:
    return r.get("medicationCodeableConcept") or {"text": (r.get("medicationReference") or {}).get("display")}


def _med_span(r: dict) -> tuple[str, str]:
    start = (
        day(
            r.get("authoredOn")
            or (r.get("effectivePeriod") or {}).get("start")
            or r.get("effectiveDateTime")
            or r.get("dateAsserted")
        )
        or "0000-01-01"
    )
    end = day(
        ((r.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
        or (r.get("effectivePeriod") or {}).get("end")
    )
    if end is None:
        end = start if r.get("status") in STOPPED_STATUSES else OPEN_END
    return start, max(start, end)


dose_text = medicines.dose


def last_issued(r: dict) -> str | None:
    for ext in r.get("extension") or []:
        if ext.get("url", "").endswith("MedicationStatementLastIssueDate") and ext.get("valueDateTime"):
            return day(ext["valueDateTime"])
    validity = ((r.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("start")
    return day(validity or r.get("authoredOn"))


def ingredient(title: str) -> str:
    """The medicine's name without strength or form, to find the same medicine at other strengths."""
    words = re.findall(r"[a-z]+", title.lower())
    return words[0] if words else title.lower()


def _medication_row(members: list[Item]) -> Row:
    spans = [_med_span(m.resource) for m in members]
    end = max(e for _, e in spans)
    newest = max(members, key=lambda m: (_med_span(m.resource)[0], m.source.last_updated or ""))
    latest = newest.resource
    current = _still_current(members) and end == OPEN_END
    issued = [d for d in (last_issued(m.resource) for m in members) if d]
    row = _row(
        "medications",
        members,
        concept_text(_med_concept(latest)) or "Unnamed medicine",
        code_key(_med_concept(latest)),
        min(s for s, _ in spans),
        end=None if end == OPEN_END else end,
        status="current" if current else "past",
        detail=MedicationDetail(
            dose=dose_text(latest),
            last_issued=max(issued) if issued else None,
            doses=tuple(sorted({dose_text(m.resource) for m in members if dose_text(m.resource)})),
            quantity=medicines.quantity(latest),
            course=medicines.course_type(latest),
            course_length=medicines.course_length(latest),
            prescriber=medicines.prescriber(latest),
            status_text=medicines.status(latest),
            recorded_as=medicines.recorded_as(latest),
        ),
    )
    if len(row.detail.doses) > 1 and len(row.source_ids) > 1:
        row.conflicts.append(
            "Different doses recorded: "
            + "; ".join(f"{dose_text(m.resource)} at {m.source.name}" for m in members if dose_text(m.resource))
            + "."
        )
    return row


def _still_current(members: list[Item]) -> bool:
    """Current: some record says it is taken now (open-ended), and no record stops it on or after that start.
    A stopped medicine never looks current; a finished hospital course does not stop a GP's repeat."""
    ongoing = [
        _med_span(m.resource)[0]
        for m in members
        if m.resource.get("status") in CURRENT_MED_STATUSES and _med_span(m.resource)[1] == OPEN_END
    ]
    if not ongoing:
        return False
    stops = [_med_span(m.resource)[1] for m in members if m.resource.get("status") in STOP_DECISIONS]
    return not any(stop >= max(ongoing) for stop in stops)


def _finish_medications(rows: list[Row]) -> list[Row]:
    _flag_dose_conflicts([r for r in rows if r.status == "current"])
    return sorted(rows, key=lambda r: (r.status != "current", r.title.lower()))


medications = Rule(
    _medication_row,
    key=lambda i: code_key(_med_concept(i.resource)),
    interval=lambda i: _med_span(i.resource),
    finish=_finish_medications,
    across=True,
)


def _flag_dose_conflicts(current: list[Row]) -> None:
    """The same medicine at different strengths or doses from different organisations."""
    by_ingredient: dict[str, list[Row]] = defaultdict(list)
    for row in current:
        by_ingredient[ingredient(row.title)].append(row)
    for rows in by_ingredient.values():
        if len(rows) < 2 or len({s for r in rows for s in r.source_ids}) < 2:
            continue
        described = {r.id: f"{r.title} {r.detail.dose or ''}".strip() for r in rows}
        if len(set(described.values())) < 2:
            continue
        for row in rows:
            others = [
                f"{described[o.id]} at {', '.join(s.name for s in o.sources)}"
                for o in rows
                if o is not row and set(o.source_ids) != set(row.source_ids)
            ]
            if others:
                row.conflicts.append("Different dose or strength recorded elsewhere: " + "; ".join(others) + ".")


def _allergy_row(members: list[Item]) -> Row:
    first = members[0].resource
    verification = {status_code(m.resource.get("verificationStatus")) for m in members} - {None}
    code = code_key(first.get("code"))
    nka = bool(code and code.split("|")[-1] in NKA_CODES)
    row = _row(
        "allergies",
        members,
        concept_text(first.get("code")) or (NKA_CODES.get(code.split("|")[-1]) if code else "") or "Unnamed",
        code,
        day(first.get("recordedDate") or first.get("onsetDateTime")),
        status=status_code(first.get("clinicalStatus")) or ("no-known" if nka else None),
        detail=AllergyDetail(
            nka=nka,
            criticality=first.get("criticality"),
            reactions=tuple(
                sorted(
                    {
                        concept_text(m)
                        for r in members
                        for rx in r.resource.get("reaction") or []
                        for m in rx.get("manifestation") or []
                        if concept_text(m)
                    }
                )
            ),
            category=", ".join(first.get("category") or []),
        ),
    )
    if len(verification) > 1:
        row.conflicts.append("Organisations disagree whether this is confirmed: " + ", ".join(sorted(verification)))
    return row


def _finish_allergies(rows: list[Row]) -> list[Row]:
    real = [
        r
        for r in rows
        if not r.detail.nka
        and r.status not in ("inactive", "resolved")
        and "refuted" not in {status_code(x.get("verificationStatus")) for x in r.resources}
    ]
    for nka_row in (r for r in rows if r.detail.nka):
        clashing = [r for r in real if not set(r.source_ids) <= set(nka_row.source_ids)]
        if clashing:
            nka_row.conflicts.append(
                "Allergies are recorded elsewhere: "
                + "; ".join(f"{r.title} at {', '.join(s.name for s in r.sources)}" for r in clashing)
                + "."
            )
            for r in clashing:
                r.conflicts.append(f"Recorded as '{nka_row.title}' at {', '.join(s.name for s in nka_row.sources)}.")
    return sorted(rows, key=lambda r: (r.detail.nka, r.title.lower()))


allergies = Rule(_allergy_row, key=lambda i: code_key(i.resource.get("code")), finish=_finish_allergies, across=True)


ENCOUNTER_CLASSES = {
    "AMB": "Appointment",
    "EMER": "A&E attendance",
    "IMP": "Admission",
    "ACUTE": "Admission",
    "HH": "Home visit",
    "VR": "Remote consultation",
    "OBSENC": "Observation stay",
}


def _encounter_row(members: list[Item]) -> Row:
    r = members[0].resource
    cls = (r.get("class") or {}).get("code")
    reasons = sorted({concept_text(c) for m in members for c in m.resource.get("reasonCode") or [] if concept_text(c)})
    return _row(
        "encounters",
        members,
        concept_text((r.get("type") or [None])[0]) or ENCOUNTER_CLASSES.get(cls, "Encounter"),
        code_key((r.get("type") or [None])[0]),
        (r.get("period") or {}).get("start"),
        end=(r.get("period") or {}).get("end"),
        status=r.get("status"),
        detail=EncounterDetail(kind=ENCOUNTER_CLASSES.get(cls, cls or ""), reasons=tuple(reasons)),
    )


encounters = Rule(_encounter_row)


observation_value = values.observation_value


def observation_time(r: dict) -> str | None:
    return r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start") or r.get("issued")


def _result_key(item: Item) -> str | None:
    r = item.resource
    return keyed(code_key(r.get("code")), minute(observation_time(r)), observation_value(r))


def _result_row(members: list[Item]) -> Row:
    r = members[0].resource
    return _row(
        "results",
        members,
        concept_text(r.get("code")) or "Unnamed result",
        code_key(r.get("code")),
        observation_time(r),
        status=r.get("status"),
        detail=ResultDetail(
            value=observation_value(r),
            category=values.category(r),
            numeric=numeric_points(r),
            interpretation=values.interpretation(r),
            reference=values.reference_range(r),
        ),
    )


results = Rule(_result_row, key=_result_key)


def numeric_points(r: dict) -> dict[str, tuple[float, str]]:
    """Series name → (value as recorded, unit) for charting: the observation itself or each component."""
    out = {}
    q = r.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), int | float) and not isinstance(q.get("value"), bool):
        out[concept_text(r.get("code"))] = (q["value"], values.unit(q.get("unit"), q.get("code")))
    for c in r.get("component") or []:
        cq = c.get("valueQuantity") if isinstance(c, dict) else None
        if isinstance(cq, dict) and isinstance(cq.get("value"), int | float) and not isinstance(cq.get("value"), bool):
            out[concept_text(c.get("code"))] = (cq["value"], values.unit(cq.get("unit"), cq.get("code")))
    return out


def numeric_range(r: dict) -> dict[str, tuple[float | None, float | None]]:
    """Series name (as numeric_points names it) → its reference range as numbers (low, high; either end may be
    open), for the chart's shaded band: the first range with a number at either end, in the value's own unit."""
    out = {}
    for part in [r, *(c for c in r.get("component") or [] if isinstance(c, dict))]:
        q = part.get("valueQuantity")
        if not isinstance(q, dict):
            continue
        shown = values.unit(q.get("unit"), q.get("code"))
        for rr in part.get("referenceRange") or []:
            ends = [_range_end(rr.get(e), shown) if isinstance(rr, dict) else None for e in ("low", "high")]
            if None in ends or ends == [(), ()]:
                continue  # words only, or another unit: no band rather than a wrong one
            low, high = (e[0] if e else None for e in ends)
            if low is None or high is None or low <= high:
                out[concept_text(part.get("code"))] = (low, high)
                break
    return out


def _range_end(q: dict | None, shown: str) -> tuple[float, ...] | None:
    """(value,) for a numeric end in the series' unit, () for an absent end, None for one that cannot be used."""
    if q is None or (isinstance(q, dict) and q.get("value") is None):
        return ()
    value = q.get("value") if isinstance(q, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        return None
    return (float(value),) if values.unit(q.get("unit"), q.get("code")) in ("", shown) else None


def _performed(r: dict) -> str | None:
    return r.get("performedDateTime") or (r.get("performedPeriod") or {}).get("start")


def coded_on_a_day(
    section: str,
    code_of: Callable[[dict], dict | None],
    when: Callable[[dict], str | None],
    fallback: str,
    detail: Callable[[dict], Detail] | None = None,
) -> Rule:
    """Sections whose fact is "this code, on this day": reports, immunisations, procedures."""

    def row(members: list[Item]) -> Row:
        r = members[0].resource
        return _row(
            section,
            members,
            concept_text(code_of(r)) or fallback,
            code_key(code_of(r)),
            when(r),
            status=r.get("status"),
            detail=detail(r) if detail else None,
        )

    return Rule(row, key=lambda i: keyed(code_key(code_of(i.resource)), day(when(i.resource))))


reports = coded_on_a_day(
    "reports",
    lambda r: r.get("code"),
    observation_time,
    "Report",
    lambda r: ReportDetail(conclusion=r.get("conclusion"), results=len(r.get("result") or [])),
)
immunisations = coded_on_a_day(
    "immunisations", lambda r: r.get("vaccineCode"), lambda r: r.get("occurrenceDateTime"), "Vaccine"
)
procedures = coded_on_a_day("procedures", lambda r: r.get("code"), _performed, "Procedure")


def _document_row(members: list[Item]) -> Row:
    r = members[0].resource
    attachment = next((c.get("attachment") or {} for c in r.get("content") or []), {})
    return _row(
        "documents",
        members,
        concept_text(r.get("type")) or r.get("description") or "Document",
        code_key(r.get("type")),
        r.get("date") or (r.get("context") or {}).get("period", {}).get("start"),
        status=r.get("docStatus") or r.get("status"),
        detail=DocumentDetail(
            description=r.get("description"),
            content_type=attachment.get("contentType"),
            authors=tuple(a.get("display") for a in r.get("author") or [] if a.get("display")),
            category=next((concept_text(c) for c in r.get("category") or []), ""),
        ),
    )


documents = Rule(_document_row)


def simple(section: str, title: Callable[[dict], str], date: Callable[[dict], str | None]) -> Rule:
    """Sections where each resource is its own fact unless identifiers say otherwise."""

    def row(members: list[Item]) -> Row:
        first = members[0].resource
        return _row(section, members, title(first) or section.title(), None, date(first), status=first.get("status"))

    return Rule(row)


def newest_first(rows: list[Row], then: Callable[[Row], object] | None = None) -> list[Row]:
    """Newest first, undated last; ``then`` groups before that (a stable second sort)."""
    rows = sorted(rows, key=lambda r: r.date or "", reverse=True)
    return sorted(rows, key=then) if then else rows


def person_name(r: dict) -> str:
    return display_name(r.get("name")) or ""
