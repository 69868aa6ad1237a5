"""What the viewer must show, worked out from the raw split bundles alone (nothing from ``app.record``).

Sections and the resource types feeding them are copied by hand from the catalogue (``app/record/catalogue.py``;
``test_three_organisations`` checks the copy still matches). The "same fact" rule is the one written down in
``docs/record-rules.md``, re-implemented here from its text:

- a resource's code: its first coding with both system and code (``system|code``), else its lower-cased,
  trimmed text (``text:…``); a resource with neither is never merged on its code;
- two resources sharing an identifier (``identifier[]`` or ``masterIdentifier``, system and value) are the
  same fact, in every section;
- problems: same code and overlapping [start, end] (start: onsetDateTime, onsetPeriod.start, recordedDate,
  else the beginning of time; end: abatementDateTime, abatementPeriod.end, else open-ended);
- medications: same medicine code (medicationCodeableConcept, else medicationReference.display as text) and
  overlapping [start, end] (start: authoredOn, effectivePeriod.start, effectiveDateTime, dateAsserted; end:
  dispenseRequest.validityPeriod.end, effectivePeriod.end, else the start itself when the status is stopped,
  completed, cancelled, entered-in-error or not-taken, else open-ended);
- allergies: same code; results: same code, same time to the minute, same displayed value; reports: same
  code and day; immunisations: same vaccine code and day; procedures: same code and performed day;
- encounters, documents, care plans, care teams, episodes, flags, consents, contacts: identifiers only;
- dates compare on their first 10 characters, the results' time on its first 16; grouping is transitive.

Overlap is pairwise (each starts on or before the other ends) and groups are the connected components of
"same fact" (checked here by a plain breadth-first search over every pair that shares a key or identifier).

A row is attributed to an organisation when one of its resources came from that organisation; ``rows_by_org``
counts rows per organisation name, ``mentions_by_org`` counts the organisation's resources in the section
(a row holding two GP resources lists the GP twice).
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

# section → resource types, and where each type names the patient (copied from the catalogue by hand)
SECTION_TYPES: dict[str, tuple[str, ...]] = {
    "problems": ("Condition",),
    "medications": ("MedicationRequest", "MedicationStatement"),
    "allergies": ("AllergyIntolerance",),
    "encounters": ("Encounter",),
    "results": ("Observation",),
    "immunisations": ("Immunization",),
    "procedures": ("Procedure",),
    "documents": ("DocumentReference",),
    "reports": ("DiagnosticReport",),
    "care_plans": ("CarePlan",),
    "care_teams": ("CareTeam",),
    "episodes": ("EpisodeOfCare",),
    "flags": ("Flag",),
    "consents": ("Consent",),
    "contacts": ("RelatedPerson",),
}
PATIENT_FIELD = {
    "AllergyIntolerance": "patient",
    "Immunization": "patient",
    "EpisodeOfCare": "patient",
    "Consent": "patient",
    "RelatedPerson": "patient",
}
STOPPED = frozenset({"stopped", "completed", "cancelled", "entered-in-error", "not-taken"})
BEGINNING, OPEN_ENDED = "0000-01-01", "9999-12-31"


@dataclass
class SectionExpectation:
    rows: int = 0
    rows_by_org: Counter[str] = field(default_factory=Counter)
    mentions_by_org: Counter[str] = field(default_factory=Counter)
    shared_rows: int = 0  # rows listing more than one organisation
    resources: int = 0  # resources behind the rows

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "rows_by_org": dict(sorted(self.rows_by_org.items())),
            "mentions_by_org": dict(sorted(self.mentions_by_org.items())),
        }


# ---------------------------------------------------------------- readers, from the rule's text


def code_of(concept) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if coding.get("system") and coding.get("code"):
            return f"{coding['system']}|{coding['code']}"
    text = (concept.get("text") or "").strip().lower()
    return f"text:{text}" if text else None


def first(*values):
    return next((v for v in values if v), None)


def day_of(value) -> str | None:
    return value[:10] if isinstance(value, str) and len(value) >= 4 else None


def minute_of(value) -> str | None:
    return value[:16] if isinstance(value, str) and len(value) >= 10 else None


def display_number(v) -> str:
    """How the results table writes a number: floats to at most two decimals, no trailing zeros."""
    if isinstance(v, float):
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return str(v)


def displayed_value(r: dict) -> str:
    """The value as the results table shows it (what the rule compares)."""
    if "valueQuantity" in r:
        q = r["valueQuantity"]
        return f"{display_number(q.get('value'))} {q.get('unit') or q.get('code') or ''}".strip()
    if "valueCodeableConcept" in r:
        c = r["valueCodeableConcept"]
        if c.get("text"):
            return c["text"]
        codings = c.get("coding") or []
        return first(*(x.get("display") for x in codings)) or first(*(x.get("code") for x in codings)) or ""
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in r:
            return str(r[key])
    values = [c["valueQuantity"] for c in r.get("component") or [] if "valueQuantity" in c]
    if values:
        unit = (r["component"][0].get("valueQuantity") or {}).get("unit", "")
        joined = "/".join(display_number(q.get("value")) for q in values)
        return f"{joined} {unit}" if unit else joined
    return ""


def when_observed(r: dict):
    return first(r.get("effectiveDateTime"), (r.get("effectivePeriod") or {}).get("start"), r.get("issued"))


def problem_span(r: dict) -> tuple[str, str]:
    start = day_of(first(r.get("onsetDateTime"), (r.get("onsetPeriod") or {}).get("start"), r.get("recordedDate")))
    start = start or BEGINNING
    end = day_of(first(r.get("abatementDateTime"), (r.get("abatementPeriod") or {}).get("end"))) or OPEN_ENDED
    return start, max(start, end)  # an end written before its start counts as the start


def medicine_of(r: dict) -> str | None:
    concept = r.get("medicationCodeableConcept") or {"text": (r.get("medicationReference") or {}).get("display")}
    return code_of(concept)


def medication_span(r: dict) -> tuple[str, str]:
    start = day_of(
        first(
            r.get("authoredOn"),
            (r.get("effectivePeriod") or {}).get("start"),
            r.get("effectiveDateTime"),
            r.get("dateAsserted"),
        )
    )
    start = start or BEGINNING
    end = day_of(
        first(
            ((r.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end"),
            (r.get("effectivePeriod") or {}).get("end"),
        )
    )
    if end is None:
        end = start if r.get("status") in STOPPED else OPEN_ENDED
    return start, max(start, end)


def identifiers_of(r: dict) -> set[str]:
    out = {
        f"{i['system']}|{i['value']}"
        for i in r.get("identifier") or []
        if isinstance(i, dict) and i.get("system") and i.get("value")
    }
    master = r.get("masterIdentifier") or {}
    if master.get("system") and master.get("value"):
        out.add(f"{master['system']}|{master['value']}")
    return out


def fact_key(section: str, r: dict):
    """What two resources of a section must share (None: merged only by a shared identifier)."""
    match section:
        case "problems" | "allergies":
            return code_of(r.get("code"))
        case "medications":
            return medicine_of(r)
        case "results":
            c = code_of(r.get("code"))
            return None if c is None else (c, minute_of(when_observed(r)), displayed_value(r))
        case "reports":
            c = code_of(r.get("code"))
            return None if c is None else (c, day_of(when_observed(r)))
        case "immunisations":
            c = code_of(r.get("vaccineCode"))
            return None if c is None else (c, day_of(r.get("occurrenceDateTime")))
        case "procedures":
            c = code_of(r.get("code"))
            performed = first(r.get("performedDateTime"), (r.get("performedPeriod") or {}).get("start"))
            return None if c is None else (c, day_of(performed))
    return None


def span(section: str, r: dict) -> tuple[str, str] | None:
    if section == "problems":
        return problem_span(r)
    if section == "medications":
        return medication_span(r)
    return None


def same_fact(section: str, a: dict, b: dict) -> bool:
    if identifiers_of(a) & identifiers_of(b):
        return True
    key = fact_key(section, a)
    if key is None or key != fact_key(section, b):
        return False
    sa, sb = span(section, a), span(section, b)
    return sa is None or (sa[0] <= sb[1] and sb[0] <= sa[1])


# ---------------------------------------------------------------- grouping and counting


def groups(section: str, items: list[tuple[str, dict]]) -> list[list[tuple[str, dict]]]:
    """Connected components of "same fact" over (organisation, resource) pairs."""
    candidates: dict[object, list[int]] = defaultdict(list)  # only these pairs can be the same fact
    for i, (_, r) in enumerate(items):
        key = fact_key(section, r)
        if key is not None:
            candidates[("key", key)].append(i)
        for ident in identifiers_of(r):
            candidates[("identifier", ident)].append(i)
    linked: dict[int, set[int]] = defaultdict(set)
    for members in candidates.values():
        for x in members:
            for y in members:
                if x < y and y not in linked[x] and same_fact(section, items[x][1], items[y][1]):
                    linked[x].add(y)
                    linked[y].add(x)
    out, seen = [], set()
    for i in range(len(items)):
        if i in seen:
            continue
        component, queue = [], deque([i])
        seen.add(i)
        while queue:
            j = queue.popleft()
            component.append(items[j])
            for k in sorted(linked[j] - seen):
                seen.add(k)
                queue.append(k)
        out.append(component)
    return out


def about(r: dict, patient_id: str) -> bool:
    ref = (r.get(PATIENT_FIELD.get(r["resourceType"], "subject")) or {}).get("reference")
    return ref == f"Patient/{patient_id}"


def expect(
    held: dict[str, list[dict]], patient_ids: dict[str, str], names: dict[str, str]
) -> dict[str, SectionExpectation]:
    """``held``: organisation key → every resource loaded there for this patient; ``patient_ids``: that
    organisation's Patient id; ``names``: organisation key → the name the viewer shows for it."""
    out = {}
    for section, types in SECTION_TYPES.items():
        items = [
            (org, r)
            for org, resources in held.items()
            for r in resources
            if r["resourceType"] in types and about(r, patient_ids[org])
        ]
        e = SectionExpectation(resources=len(items))
        for members in groups(section, items):
            orgs = Counter(names[org] for org, _ in members)
            e.rows += 1
            e.rows_by_org.update(orgs.keys())
            e.mentions_by_org.update(orgs)
            e.shared_rows += len(orgs) > 1
        out[section] = e
    return out
