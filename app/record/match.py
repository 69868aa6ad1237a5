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
from core.ukdates import uk_date


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


CHAINED_PARAM = "patient.identifier"


def chained_search(nhs: str) -> dict[str, str]:
    """A resource search by the patient's NHS number directly (``patient.identifier=<system>|<number>``), for
    an organisation that declares the chain: sent alongside the Patient search, so its resources do not wait
    for the patient's id there. What it returns is kept only when it is about the one Patient that search
    finds (the fetch checks every resource against that Patient's id, as for any search)."""
    return {CHAINED_PARAM: f"{NHS_NUMBER_SYSTEM}|{nhs}"}


def chained_search_types(capability_statement: object) -> frozenset[str]:
    """The resource types an organisation's CapabilityStatement says it searches by ``patient.identifier``.

    R4 has no CapabilityStatement element for chaining: a server declares the chains a reference parameter
    supports in ``SearchParameter.chain``, and points ``rest.resource.searchParam.definition`` at that
    SearchParameter. Read without another round trip, so only when it is contained in the statement (the
    definition is ``#<id>`` or the contained SearchParameter's ``url``): ``patient``, of type reference,
    whose ``chain`` names ``identifier``. A ``searchParam`` named ``patient.identifier`` itself counts too.
    Anything else (no declaration, a definition elsewhere, not a CapabilityStatement) is no: the fetch then
    finds the patient first, as it always did."""
    if not isinstance(capability_statement, dict) or capability_statement.get("resourceType") != "CapabilityStatement":
        return frozenset()
    chains: dict[str, bool] = {}
    for contained in _dicts(capability_statement.get("contained")):
        if contained.get("resourceType") != "SearchParameter":
            continue
        ok = (
            contained.get("code") == "patient"
            and contained.get("type") == "reference"
            and "identifier" in (contained.get("chain") or [])
            and "Patient" in (contained.get("target") or ["Patient"])
        )
        for key in (f"#{contained.get('id')}" if contained.get("id") else None, contained.get("url")):
            if isinstance(key, str):
                chains[key] = chains.get(key, False) or ok
    types: set[str] = set()
    for rest in _dicts(capability_statement.get("rest")):
        if rest.get("mode", "server") != "server":
            continue
        for resource in _dicts(rest.get("resource")):
            rtype = resource.get("type")
            for param in _dicts(resource.get("searchParam")):
                declared = param.get("name") == CHAINED_PARAM or (
                    param.get("name") == "patient" and chains.get(str(param.get("definition")), False)
                )
                if isinstance(rtype, str) and declared:
                    types.add(rtype)
    return frozenset(types)


def _dicts(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


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
        "Date of birth": uk_date(d.birth_date),
        "Family name": d.family,
        "First name": d.given.split(" ")[0] if d.given else "",
        "Gender": d.gender,
    }[label]
