"""An organisation's FHIR data held in memory, with the searches the viewer needs.

The store is filled once at start-up and then only read, so searches need no locks and ``_offset``
paging is stable: every page of a search sees the same result list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from core.nhs_number import NHS_NUMBER_SYSTEM

# The element that places a resource in a patient's compartment (the FHIR `patient` search parameter).
PATIENT_FIELD = {
    "AllergyIntolerance": "patient",
    "CarePlan": "subject",
    "CareTeam": "subject",
    "Composition": "subject",
    "Condition": "subject",
    "Consent": "patient",
    "DiagnosticReport": "subject",
    "DocumentReference": "subject",
    "Encounter": "subject",
    "EpisodeOfCare": "patient",
    "Flag": "subject",
    "Goal": "subject",
    "ImagingStudy": "subject",
    "Immunization": "patient",
    "List": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "Observation": "subject",
    "Procedure": "subject",
    "RelatedPerson": "patient",
    "ServiceRequest": "subject",
}
NON_PATIENT_TYPES = ("Organization", "Practitioner", "PractitionerRole", "Location", "Medication")
SUPPORTED_TYPES = ("Patient", *PATIENT_FIELD, *NON_PATIENT_TYPES)

# The chained search on the patient's identifier (``Observation?patient.identifier=<system>|<value>``): the
# resources of every Patient carrying that identifier, in one round trip (no Patient search first).
CHAINED_PATIENT_IDENTIFIER = "patient.identifier"

# Search parameters each type understands, beyond _id, _count and _offset.
SEARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "Patient": ("identifier",),
    "Organization": ("identifier",),
    "Practitioner": ("identifier",),
    "PractitionerRole": ("identifier", "practitioner", "organization"),
    "Location": ("identifier",),
    "Medication": ("identifier",),
    **{t: ("patient", "subject", "identifier", CHAINED_PATIENT_IDENTIFIER) for t in PATIENT_FIELD},
}
# `_include`s each type understands: "<type>:<reference parameter>" → (the element, the type it points at).
INCLUDES: dict[str, dict[str, tuple[str, str]]] = {
    "PractitionerRole": {"PractitionerRole:practitioner": ("practitioner", "Practitioner")},
}
CONTROL_PARAMS = ("_count", "_offset", "_format", "_include")


class SearchError(ValueError):
    """A search the server cannot run (unknown parameter under strict handling, bad value)."""


def reference_id(ref: str | None, rtype: str) -> str | None:
    """``Patient/123`` (or an absolute URL ending so) → ``123`` when it names ``rtype``."""
    if not ref:
        return None
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == rtype:
        return parts[-1]
    return None


class OrgStore:
    """One organisation's resources, indexed by id, by patient and by identifier."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        self._by_type: dict[str, dict[str, dict]] = defaultdict(dict)
        self._by_patient: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._by_identifier: dict[tuple[str, str, str], list[str]] = defaultdict(list)

    # -- loading ---------------------------------------------------------------------------------
    def add(self, resource: dict) -> None:
        rtype, rid = resource["resourceType"], resource["id"]
        if rid in self._by_type[rtype]:
            return  # shared resources (Practitioners, Organizations) may be offered more than once
        self._by_type[rtype][rid] = resource
        field = PATIENT_FIELD.get(rtype)
        if field:
            pid = reference_id((resource.get(field) or {}).get("reference"), "Patient")
            if pid:
                self._by_patient[(rtype, pid)].append(rid)
        for ident in resource.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
                self._by_identifier[(rtype, ident["system"], ident["value"])].append(rid)

    def add_all(self, resources: Iterable[dict]) -> None:
        for r in resources:
            self.add(r)

    # -- reading ---------------------------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> dict | None:
        return self._by_type.get(rtype, {}).get(rid)

    def count(self, rtype: str | None = None) -> int:
        if rtype:
            return len(self._by_type.get(rtype, {}))
        return sum(len(v) for v in self._by_type.values())

    def types(self) -> list[str]:
        return sorted(t for t, v in self._by_type.items() if v)

    def all(self, rtype: str) -> list[dict]:
        return list(self._by_type.get(rtype, {}).values())

    def patient_by_nhs_number(self, nhs_number: str) -> dict | None:
        ids = self._by_identifier.get(("Patient", NHS_NUMBER_SYSTEM, nhs_number))
        return self.read("Patient", ids[0]) if ids else None

    def patient_resources(self, patient_id: str) -> list[dict]:
        """Everything in the patient's compartment, in a stable order (type, then load order)."""
        out = []
        for rtype in PATIENT_FIELD:
            out.extend(self._by_type[rtype][rid] for rid in self._by_patient.get((rtype, patient_id), []))
        return out

    def search(
        self, rtype: str, params: Mapping[str, list[str]], strict: bool = False, chaining: bool = True
    ) -> tuple[list[dict], list[str]]:
        """Run a search; returns the matches and the parameters that were ignored.

        Unknown parameters are ignored (as most servers do, and reported back) unless ``strict``. Without
        ``chaining`` the chained ``patient.identifier`` is unknown too (a server that does not support it).
        """
        allowed = SEARCH_PARAMS.get(rtype, ())
        if not chaining:
            allowed = tuple(p for p in allowed if p != CHAINED_PATIENT_IDENTIFIER)
        ignored = [p for p in params if p not in allowed and p not in CONTROL_PARAMS and p != "_id"]
        if ignored and strict:
            raise SearchError(f"unsupported search parameter(s) for {rtype}: {', '.join(sorted(ignored))}")
        candidates: list[str] | None = None
        for name, values in params.items():
            if name in ignored or name in CONTROL_PARAMS:
                continue
            for value in values:
                ids = self._match(rtype, name, value)
                candidates = ids if candidates is None else [i for i in candidates if i in set(ids)]
        table = self._by_type.get(rtype, {})
        if candidates is None:
            return list(table.values()), ignored
        seen: set[str] = set()
        result = []
        for rid in candidates:
            if rid in table and rid not in seen:
                seen.add(rid)
                result.append(table[rid])
        return result, ignored

    def _match(self, rtype: str, name: str, value: str) -> list[str]:
        if name == "_id":
            return [v for v in value.split(",") if v in self._by_type.get(rtype, {})]
        if name in ("patient", "subject"):
            pid = value.split("/")[-1]
            return list(self._by_patient.get((rtype, pid), []))
        if name == CHAINED_PATIENT_IDENTIFIER:
            if "|" not in value:
                raise SearchError("patient.identifier searches need system|value")
            system, _, ident = value.partition("|")
            patients = self._by_identifier.get(("Patient", system, ident), [])
            return [rid for pid in patients for rid in self._by_patient.get((rtype, pid), [])]
        if name == "identifier":
            if "|" not in value:
                raise SearchError("identifier searches need system|value")
            system, _, ident = value.partition("|")
            return list(self._by_identifier.get((rtype, system, ident), []))
        if name in ("practitioner", "organization"):
            target = "Practitioner" if name == "practitioner" else "Organization"
            wanted = value.split("/")[-1]
            return [
                rid
                for rid, r in self._by_type.get(rtype, {}).items()
                if reference_id((r.get(name) or {}).get("reference"), target) == wanted
            ]
        raise SearchError(f"unsupported search parameter {name}")

    def included(self, rtype: str, page: list[dict], specs: list[str]) -> tuple[list[dict], list[str]]:
        """``_include``: the resources the page's resources point at, once each and never one already on the
        page; returns them and the include specs this server does not understand (ignored, reported back)."""
        known = INCLUDES.get(rtype, {})
        unknown = [s for s in specs if s not in known]
        on_page = {(r["resourceType"], r["id"]) for r in page}
        out: list[dict] = []
        for spec in dict.fromkeys(s for s in specs if s in known):
            element, target = known[spec]
            for resource in page:
                rid = reference_id((resource.get(element) or {}).get("reference"), target)
                found = self.read(target, rid) if rid else None
                if found is not None and (target, rid) not in on_page:
                    on_page.add((target, rid))
                    out.append(found)
        return out, unknown
