"""Patient matching across organisations: by NHS number only, with a demographic cross-check.

This module says how a person is found at an organisation (``Patient?identifier=<nhs-number system>|
<number>``, run by the fetch), which answers really are that person, checks the number before anything
is fetched, and compares what each organisation says about the person so a mismatch is shown to the
clinician rather than silently merged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.nhs_number import NHS_NUMBER_SYSTEM, from_identifiers, is_valid


@dataclass(frozen=True)
class Demographics:
    source_name: str
    family: str
    given: str
    birth_date: str
    gender: str


def nhs_number_of(patient: dict) -> str | None:
    """The patient's NHS number when present and valid (Modulus 11); None otherwise."""
    value = from_identifiers(patient.get("identifier"))
    return value if value and is_valid(value) else None


def patient_search(nhs: str) -> dict[str, str]:
    """The search that finds the person at an organisation: by NHS number only, never by demographics."""
    return {"identifier": f"{NHS_NUMBER_SYSTEM}|{nhs}"}


def matching_patients(candidates: Iterable[dict], nhs: str) -> list[dict]:
    """Servers may ignore the identifier parameter: keep only Patients that really carry this NHS number."""
    return [
        r for r in candidates if r.get("resourceType") == "Patient" and from_identifiers(r.get("identifier")) == nhs
    ]


def demographics(source_name: str, patient: dict) -> Demographics:
    name = next(
        (n for n in patient.get("name") or [] if n.get("use") in (None, "official", "usual")),
        (patient.get("name") or [{}])[0],
    )
    return Demographics(
        source_name=source_name,
        family=(name.get("family") or "").strip(),
        given=" ".join(name.get("given") or []).strip(),
        birth_date=patient.get("birthDate") or "",
        gender=patient.get("gender") or "",
    )


def _first_given(d: Demographics) -> str:
    return d.given.split(" ")[0].lower() if d.given else ""


def demographic_warnings(people: list[Demographics]) -> list[str]:
    """Plain-words warnings where organisations disagree about the same NHS number."""
    warnings = []
    checks = (
        ("Date of birth", lambda d: d.birth_date),
        ("Family name", lambda d: d.family.lower()),
        ("First name", _first_given),
        ("Gender", lambda d: d.gender),
    )
    for label, value in checks:
        seen: dict[str, list[str]] = {}
        display: dict[str, str] = {}
        for d in people:
            v = value(d)
            if not v:
                continue
            seen.setdefault(v, []).append(d.source_name)
            display.setdefault(v, _display(label, d))
        if len(seen) > 1:
            parts = [f"{display[v]} at {', '.join(names)}" for v, names in seen.items()]
            warnings.append(f"{label} differs between organisations: " + "; ".join(parts) + ".")
    return warnings


def _display(label: str, d: Demographics) -> str:
    return {
        "Date of birth": d.birth_date,
        "Family name": d.family,
        "First name": d.given.split(" ")[0] if d.given else "",
        "Gender": d.gender,
    }[label]
