"""Synthea patients split across three organisations' sekmet servers, with deliberate cross-organisation duplicates.

Nothing here comes from the viewer (``app``) or from the sandbox's own split: the only thing taken from the
sandbox is the NHS number it gives each Synthea person (``sandbox_nhs_numbers``), so that a launch of that
person from the sandbox EHR finds the same person at every sekmet server.

The split rule (per patient, deterministic):

- Encounters in date order (``period.start``, then id). Emergency, inpatient, acute and observation-stay
  encounters (class EMER, IMP, ACUTE, OBSENC) are the hospital's. Of the other (ambulatory) encounters,
  every third one (the 3rd, 6th, …) is the community trust's; the rest are the GP practice's.
- Every other clinical resource follows the encounter it was recorded in (``encounter``, or a
  DocumentReference's ``context.encounter``); a resource recorded outside any encounter is the GP's.
- Claim, ExplanationOfBenefit and Provenance are left out (billing and Synthea's own provenance).
- The Patient is at every organisation, with an id of that organisation's own, the sandbox's NHS number as
  its first identifier and the GP practice (by ODS code) as ``generalPractitioner``.
- Organization, Practitioner, PractitionerRole and Location are copied to each server that refers to them.

Deliberate duplicates (the same clinical item held by two organisations, as shared records really are; see
``DUPLICATE_RULES``): each copy keeps the original's id (ids are only unique per server), its references are
rewritten for the server holding it, and some copies differ the way real copies do (a different time on the
same day) or are near-duplicates that must *not* be merged (a day later, a different value).

References: a resource held by the same server is ``Type/id``; one held only by another organisation is an
absolute URL on that organisation's server (as between real systems). Entries are ``PUT Type/id`` so every
id is known before loading, and sekmet never has to resolve a ``urn:uuid`` (an unresolved one fails the
whole transaction: sekmet 0.1.1 answers 400 "unresolved reference" and rolls back). Conditional references
(``Organization?identifier=…``, hiv-r4-2021) are resolved here from the two information bundles.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tests.conftest import ROOT, SYNTHEA_DIR

GP, HOSPITAL, COMMUNITY = "sekmet-gp", "sekmet-hospital", "sekmet-community"  # OrgSpec keys in conftest
ORG_KEYS = (GP, HOSPITAL, COMMUNITY)
GP_ODS = "Y01001"
GP_NAME = "Riverside Medical Practice (sekmet)"

# Two or more patients, one large: every table section and the documents list get rows.
CHOSEN = (
    "smart-r4-2019/Ernest_Labadie_2468bfa8-f32f-46aa-8b1e-18de0adaabc7.json",  # 2178 entries, 1411 Observations
    "smart-r4-2019/Versie_Botsford_56121408-15fe-47a5-8279-6f05dee51464.json",  # allergies, immunisations
    "hiv-r4-2021/Lanell756_Goodwin327_988f3282-6014-affe-fb17-b051fe0380ee.json",  # documents, conditional refs
)

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SYNTHEA_SYSTEM = "https://github.com/synthetichealth/synthea"
SHARED_ENCOUNTER_SYSTEM = "https://scr-interop.example/Id/encounter"  # added to both copies of an encounter
SKIPPED = {"Claim", "ExplanationOfBenefit", "Provenance"}
SUPPORT = {"Organization", "Practitioner", "PractitionerRole", "Location"}
HOSPITAL_CLASSES = {"EMER", "IMP", "ACUTE", "OBSENC"}
ID_NAMESPACE = uuid.UUID("2f0d3c1e-8a47-4c56-9d0b-5b1f3e7a9c42")


def synthea_dir() -> Path:
    return SYNTHEA_DIR


def synthea_present() -> bool:
    return all((SYNTHEA_DIR / name).is_file() for name in CHOSEN)


# ---------------------------------------------------------------- what the split produces


@dataclass(frozen=True)
class Duplicate:
    ref: str  # Type/id (the same at both organisations)
    original: str  # organisation holding the original
    copy: str  # organisation holding the copy
    how: str  # "exact", "same day, other time", "decoy: …" (must stay apart)


@dataclass
class PatientSplit:
    """One Synthea patient as loaded: what each organisation's server holds."""

    file: str
    person_id: str
    name: str
    nhs_number: str
    patient_ids: dict[str, str]  # org key → that server's Patient id
    held: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in ORG_KEYS})  # clinical + Patient
    support: dict[str, dict[str, dict]] = field(default_factory=lambda: {k: {} for k in ORG_KEYS})
    duplicates: list[Duplicate] = field(default_factory=list)

    def resources(self, org: str) -> list[dict]:
        """Everything loaded at ``org`` for this patient (support resources included)."""
        return [*self.held[org], *self.support[org].values()]

    def clinical(self, org: str) -> list[dict]:
        return [r for r in self.held[org] if r["resourceType"] != "Patient"]

    def bundle(self, org: str, base_url: str) -> dict:
        """A transaction of ``PUT Type/id`` entries: ids are ours, so references are known before loading."""
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in self.resources(org)
            ],
        }

    def counts(self, org: str) -> Counter[str]:
        return Counter(r["resourceType"] for r in self.resources(org))


# ---------------------------------------------------------------- reading Synthea


@cache
def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def information_index() -> dict[str, dict]:
    """hiv-r4-2021's shared Organization/Location/Practitioner/PractitionerRole, by fullUrl and by
    ``Type?identifier=system|value`` (how the patient bundles refer to them)."""
    index: dict[str, dict] = {}
    for path in sorted(SYNTHEA_DIR.rglob("*Information*.json")):
        for entry in _read(path).get("entry", []):
            r = entry["resource"]
            if entry.get("fullUrl"):
                index[entry["fullUrl"]] = r
            for ident in r.get("identifier") or []:
                index[f"{r['resourceType']}?identifier={ident.get('system')}|{ident.get('value')}"] = r
    return index


def person_id(patient: dict) -> str:
    for ident in patient.get("identifier") or []:
        if ident.get("system") == SYNTHEA_SYSTEM and ident.get("value"):
            return ident["value"]
    return patient["id"]


def sandbox_nhs_numbers() -> dict[str, str]:
    """Synthea person id → the NHS number the sandbox gives that person (the sandbox's own dataset, built
    from its own configuration; about a second)."""
    from app.config import load_config
    from sandbox.dataset import load_dataset
    from sandbox.settings import sandbox_settings

    config = load_config(ROOT / "sandbox" / "config.toml", env={"SCR_SYNTHEA_DIR": str(SYNTHEA_DIR)})
    dataset = load_dataset(sandbox_settings(config))
    return nhs_numbers_of(dataset)


def nhs_numbers_of(dataset) -> dict[str, str]:
    """From a sandbox ``Dataset``: Synthea person id → NHS number."""
    out = {}
    for person in dataset.patients.values():
        if person.origin != "synthea":
            continue
        org, pid = next(iter(person.ids.items()))
        patient = dataset.stores[org].read("Patient", pid)
        out[person_id(patient)] = person.nhs_number
    return out


# ---------------------------------------------------------------- the split


def encounter_ref(r: dict) -> str | None:
    if isinstance(r.get("encounter"), dict):
        return r["encounter"].get("reference")
    context = r.get("context")
    if isinstance(context, dict):
        listed = context.get("encounter")
        if isinstance(listed, list):
            return listed[0].get("reference") if listed else None
        return context.get("reference")
    return None


def encounter_homes(encounters: list[dict]) -> dict[str, str]:
    """Encounter id → organisation: hospital classes to the hospital; every third ambulatory one to the
    community trust, the rest to the GP practice (in date order)."""
    homes, ambulatory = {}, 0
    for e in sorted(encounters, key=lambda e: ((e.get("period") or {}).get("start") or "", e["id"])):
        if (e.get("class") or {}).get("code") in HOSPITAL_CLASSES:
            homes[e["id"]] = HOSPITAL
        else:
            ambulatory += 1
            homes[e["id"]] = COMMUNITY if ambulatory % 3 == 0 else GP
    return homes


def _same_day_other_time(value: str | None) -> str | None:
    """Another time on the same day (what a second system's copy of the same event looks like)."""
    if not isinstance(value, str) or len(value) < 10:
        return value
    return value[:10] + "T23:58:00" + (value[19:] if len(value) > 19 and value[19] in "+-Z" else "Z")


def _next_day(value: str) -> str:
    import datetime as dt

    day = dt.date.fromisoformat(value[:10]) + dt.timedelta(days=1)
    return day.isoformat() + value[10:]


def _every(items: list[dict], n: int, start: int = 0) -> list[dict]:
    return [r for i, r in enumerate(items) if i % n == start]


# The deliberate duplicates: (resource type, holder, rule for which of its items, copy to, how the copy differs).
# Applied in this order to the originals only (a copy is never copied again).
def _plan(placed: dict[str, list[dict]]) -> list[tuple[dict, str, str, str]]:
    def at(org: str, rtype: str) -> list[dict]:
        return [r for r in placed[org] if r["resourceType"] == rtype]

    plan: list[tuple[dict, str, str, str]] = []  # (original, from, to, how)

    def add(items: Iterable[dict], src: str, dst: str, how: str) -> None:
        plan.extend((r, src, dst, how) for r in items)

    # Diagnoses and allergies recorded at the hospital or in the community reach the GP record (letters).
    for src in (HOSPITAL, COMMUNITY):
        add(at(src, "Condition"), src, GP, "exact")
        add(at(src, "AllergyIntolerance"), src, GP, "exact")
    # The hospital records some of the GP's long-term problems and allergies at admission.
    add(_every(at(GP, "Condition"), 3), GP, HOSPITAL, "exact")
    add(_every(at(GP, "AllergyIntolerance"), 2), GP, HOSPITAL, "exact")
    # Hospital and community prescriptions are entered again at the GP later the same day; some GP
    # prescriptions are held by the community team too.
    for src in (HOSPITAL, COMMUNITY):
        add(at(src, "MedicationRequest"), src, GP, "same day, other time")
    add(_every(at(GP, "MedicationRequest"), 2), GP, COMMUNITY, "exact")
    # Immunisations given at the practice, recorded by the community (school) nurses the same day; one
    # recorded a day later by the hospital is a different event and must stay a row of its own.
    add(_every(at(GP, "Immunization"), 3), GP, COMMUNITY, "same day, other time")
    add(_every(at(GP, "Immunization"), 7, 1)[:1], GP, HOSPITAL, "decoy: a day later")
    # Hospital results copied into the GP record; a GP result with another value at the community is not one.
    add(_every(at(HOSPITAL, "Observation"), 5), HOSPITAL, GP, "exact")
    quantities = [r for r in at(GP, "Observation") if "valueQuantity" in r]
    add(_every(quantities, 50, 7), GP, COMMUNITY, "decoy: another value")
    # Procedures done elsewhere, recorded at the GP the same day.
    for src in (HOSPITAL, COMMUNITY):
        add(_every(at(src, "Procedure"), 2), src, GP, "same day, other time")
    add(_every(at(HOSPITAL, "DiagnosticReport"), 3), HOSPITAL, GP, "exact")
    # Hospital attendances (with an identifier both systems carry) and their letters reach the GP.
    add(at(HOSPITAL, "Encounter"), HOSPITAL, GP, "shared identifier")
    add(at(HOSPITAL, "DocumentReference"), HOSPITAL, GP, "exact")
    # A care plan held by two organisations without a shared identifier: two rows by the documented rule.
    add(at(GP, "CarePlan")[:1], GP, COMMUNITY, "exact, no identifier")
    return plan


def _copy(r: dict, how: str) -> dict:
    c = copy.deepcopy(r)
    if how == "same day, other time":
        for key in ("authoredOn", "occurrenceDateTime", "performedDateTime"):
            if key in c:
                c[key] = _same_day_other_time(c[key])
        if isinstance(c.get("performedPeriod"), dict) and c["performedPeriod"].get("start"):
            start = _same_day_other_time(c["performedPeriod"]["start"])
            c["performedPeriod"] = {"start": start, "end": start}
    elif how == "decoy: a day later":
        c["occurrenceDateTime"] = _next_day(c["occurrenceDateTime"])
    elif how == "decoy: another value":
        c["valueQuantity"] = {**c["valueQuantity"], "value": c["valueQuantity"]["value"] + 1}
    return c


def split_patient(file: str, nhs_numbers: dict[str, str], bases: dict[str, str]) -> PatientSplit:
    """Split one Synthea bundle over the three organisations (``bases``: org key → FHIR base URL)."""
    bundle = _read(SYNTHEA_DIR / file)
    entries = [e for e in bundle["entry"] if e["resource"]["resourceType"] not in SKIPPED]
    skipped_urls = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] in SKIPPED}
    by_url = {e["fullUrl"]: copy.deepcopy(e["resource"]) for e in entries}
    patient = next(r for r in by_url.values() if r["resourceType"] == "Patient")
    person = person_id(patient)
    nhs = nhs_numbers.get(person)
    assert nhs, f"{file}: the sandbox gives Synthea person {person} no NHS number"
    name = (patient.get("name") or [{}])[0]
    split = PatientSplit(
        file=file,
        person_id=person,
        name=" ".join([*name.get("given", []), name.get("family", "")]).strip(),
        nhs_number=nhs,
        patient_ids={org: str(uuid.uuid5(ID_NAMESPACE, f"{org}:{person}")) for org in ORG_KEYS},
    )

    homes = encounter_homes([r for r in by_url.values() if r["resourceType"] == "Encounter"])
    placed: dict[str, list[dict]] = {org: [] for org in ORG_KEYS}
    home_of: dict[str, str] = {}  # "Type/id" → organisation holding the original
    for r in by_url.values():
        if r["resourceType"] == "Patient" or r["resourceType"] in SUPPORT:
            continue
        if r["resourceType"] == "Encounter":
            org = homes[r["id"]]
        else:
            enc = by_url.get(encounter_ref(r) or "")
            org = homes[enc["id"]] if enc is not None else GP
        placed[org].append(r)
        home_of[f"{r['resourceType']}/{r['id']}"] = org

    copies: list[tuple[dict, str]] = []
    held_at: dict[str, set[str]] = defaultdict(set)  # "Type/id" → organisations holding it (original or copy)
    for ref, org in home_of.items():
        held_at[ref].add(org)
    for original, src, dst, how in _plan(placed):
        ref = f"{original['resourceType']}/{original['id']}"
        if dst in held_at[ref]:
            continue
        if how == "shared identifier":
            ident = {"system": SHARED_ENCOUNTER_SYSTEM, "value": original["id"]}
            original.setdefault("identifier", []).append(ident)  # the original carries it too
        copies.append((_copy(original, how), dst))
        held_at[ref].add(dst)
        split.duplicates.append(Duplicate(ref, src, dst, how))

    rewriter = _Rewriter(by_url, skipped_urls, split, home_of, held_at, bases)
    for org in ORG_KEYS:
        split.held[org].append(_local_patient(patient, org, split.patient_ids[org], nhs))
        for r in placed[org]:
            split.held[org].append(rewriter.rewrite(copy.deepcopy(r), org))
    for c, org in copies:
        split.held[org].append(rewriter.rewrite(c, org))
    for org in ORG_KEYS:
        ids = [f"{r['resourceType']}/{r['id']}" for r in split.resources(org)]
        assert len(ids) == len(set(ids)), f"{file}: {org} would hold a resource twice"
    return split


def _local_patient(patient: dict, org: str, pid: str, nhs: str) -> dict:
    local = copy.deepcopy(patient)
    local["id"] = pid
    local["identifier"] = [
        {"system": NHS_NUMBER_SYSTEM, "value": nhs},
        *[i for i in patient.get("identifier") or [] if i.get("system") != NHS_NUMBER_SYSTEM],
    ]
    local["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": GP_ODS}, "display": GP_NAME}]
    local.pop("managingOrganization", None)
    return local


class _Rewriter:
    """References for the server holding a resource: local ``Type/id``, or an absolute URL elsewhere."""

    def __init__(self, by_url, skipped_urls, split: PatientSplit, home_of, held_at, bases) -> None:
        self.by_url = by_url
        self.skipped_urls = skipped_urls
        self.split = split
        self.home_of = home_of
        self.held_at = held_at
        self.bases = bases
        self.index = information_index()

    def rewrite(self, resource: dict, org: str) -> dict:
        self._walk(resource, org)
        return resource

    def _walk(self, node, org: str) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                target = self._target(ref, org)
                if target is None:  # a reference to something left out (billing): keep the words only
                    del node["reference"]
                    node.setdefault("display", "(not shared)")
                else:
                    node["reference"] = target
            for key, value in list(node.items()):
                if key != "reference":
                    self._walk(value, org)
        elif isinstance(node, list):
            for item in node:
                self._walk(item, org)

    def _target(self, ref: str, org: str) -> str | None:
        if ref.startswith("#"):
            return ref
        if ref in self.skipped_urls:
            return None
        target = self.by_url.get(ref) or self.index.get(ref)
        if target is None:
            assert not ref.startswith("urn:") and "?" not in ref, f"{self.split.file}: unresolved reference {ref}"
            return ref
        rtype = target["resourceType"]
        if rtype == "Patient":
            return f"Patient/{self.split.patient_ids[org]}"
        if rtype in SUPPORT:
            key = f"{rtype}/{target['id']}"
            if key not in self.split.support[org]:
                self.split.support[org][key] = shared = copy.deepcopy(target)
                self._walk(shared, org)
            return key
        key = f"{rtype}/{target['id']}"
        if org in self.held_at.get(key, ()):
            return key
        return f"{self.bases[self.home_of[key]]}/{key}"


def split_all(
    nhs_numbers: dict[str, str], bases: dict[str, str], files: tuple[str, ...] = CHOSEN
) -> list[PatientSplit]:
    return [split_patient(f, nhs_numbers, bases) for f in files]
