"""Build each organisation's data: the repo's hand-made UK patients plus, when present, the Synthea set.

Synthea bundles are read in place (``../shared/data/synthea`` or ``synthea_dir`` in config), never copied.
Each Synthea patient is split across the sandbox organisations by a fixed rule (see ``synthea_org_for``)
and given a test-range NHS number derived from its Synthea id, the same at every organisation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.config import ACCESS_DEFAULTS
from app.record.merge import NKA_CODES
from core.identifiers import (
    ACTIVITY_CODE_SYSTEM,
    GMC_SYSTEM,
    JOB_ROLE_SYSTEM,
    ODS_SYSTEM,
    SDS_ROLE_PROFILE_SYSTEM,
    SDS_USER_SYSTEM,
)
from core.nhs_number import NHS_NUMBER_SYSTEM, check_digit, from_identifiers, is_valid
from core.rbac import ACTIVITY_NAMES, ROLE_NAMES

from .settings import Organisation, SandboxSettings
from .store import OrgStore

log = logging.getLogger(__name__)

SYNTHEA_SKIPPED_TYPES = {"Claim", "ExplanationOfBenefit", "Provenance"}
SHARED_TYPES = {"Organization", "Practitioner", "PractitionerRole", "Location"}
SYNTHEA_SYSTEM = "https://github.com/synthetichealth/synthea"
HOSPITAL_CLASSES = {"EMER", "IMP", "ACUTE", "OBSENC"}
ID_NAMESPACE = uuid.UUID("6f1c1a52-52b4-4d7e-9a3e-6b1e5e0b5c11")

# What each hand-made UK patient is for, beyond what ``describe_patients`` finds in the data itself
# (fixtures/uk/README.md tells the whole story). Keyed by NHS number.
UK_LABELS = {
    "9991000372": "Multimorbidity, a medicine dose conflict and a discharge summary",
    "9991001484": "Children's social care",
    "9991002227": "Dementia and falls",
    "9991002960": "Fractured wrist and X-ray report",
    "9991003339": "Clean baseline: no flags or labels",
}
LARGE_RECORD_OBSERVATIONS = 500  # several pages of Observations at every page size the viewer asks for
TREND_READINGS = 8  # numeric readings of one test that make a chart worth drawing
MANY_DOCUMENTS = 10  # documents (clinical notes, letters) that make the documents list worth a look
SENSITIVE_LABELS = frozenset(ACCESS_DEFAULTS["sensitive_labels"])


@dataclass(frozen=True)
class StaffUser:
    """A sandbox EHR user; their Practitioner/PractitionerRole live at their organisation's server."""

    id: str
    display_name: str
    organisation: str
    practitioner_id: str
    role_id: str
    sds_user_id: str
    role_profile_id: str
    job_role_code: str
    job_role_display: str
    job_title: str
    activities: tuple[str, ...]
    nhs_number: str | None
    raw: dict = field(repr=False, compare=False)

    @property
    def role_code(self) -> str:
        """CIS2-style ``Sxxxx:Gxxxx:Rxxxx`` (the sandbox fills S/G with placeholders)."""
        return f"S0000:G0000:{self.job_role_code}"

    @property
    def activities_on_role(self) -> bool:
        """staff.json ``"role_code_form": "national_rbac"``: PractitionerRole.code carries the job role and the
        activity codes as codings (``ACTIVITY_CODE_SYSTEM``); otherwise the job role only, activities in an
        extension."""
        return self.raw.get("role_code_form", "job_role") == "national_rbac"

    @property
    def role_in_generic(self) -> bool:
        """staff.json ``"practitioner_role_in_generic": false``: no PractitionerRole is served for this user
        while their organisation is in generic SMART mode (as EHRs that keep no roles in FHIR)."""
        return bool(self.raw.get("practitioner_role_in_generic", True))

    @property
    def note(self) -> str:
        """What this user is for, shown on the sign-in page and the inspector."""
        return str(self.raw.get("note", ""))

    @property
    def job_role_name(self) -> str:
        """The job role's national RBAC name (core.rbac), or staff.json's display for a role it does not name."""
        return ROLE_NAMES.get(self.job_role_code, self.job_role_display)

    @property
    def activity_names(self) -> list[tuple[str, str]]:
        """Each activity code with its national RBAC name (core.rbac), or "name not known"."""
        return [(code, ACTIVITY_NAMES.get(code, "name not known")) for code in self.activities]


@dataclass
class SandboxPatient:
    """A person known to one or more organisations, with their id at each."""

    nhs_number: str
    name: str
    birth_date: str
    gender: str
    origin: str  # "uk" (hand-made) or "synthea"
    ids: dict[str, str] = field(default_factory=dict)
    label: str = ""  # hand-written: what a UK sample patient is for (UK_LABELS)
    demonstrates: list[str] = field(default_factory=list)  # the label, then what the data shows (describe_patients)


@dataclass
class Dataset:
    stores: dict[str, OrgStore]
    patients: dict[str, SandboxPatient]
    staff: dict[str, StaffUser]

    def patient(self, nhs_number: str) -> SandboxPatient | None:
        return self.patients.get(nhs_number)

    def sorted_patients(self) -> list[SandboxPatient]:
        """Hand-made UK patients first, then Synthea, each by name."""
        return sorted(self.patients.values(), key=lambda p: (p.origin != "uk", p.name))


def load_dataset(settings: SandboxSettings) -> Dataset:
    stores = {o.id: OrgStore(o.id) for o in settings.organisations}
    for org in settings.organisations:
        stores[org.id].add(organisation_resource(org))
    staff = load_staff(settings.fixtures_dir / "staff.json")
    for user in staff.values():
        if user.organisation in stores:
            stores[user.organisation].add_all(staff_resources(user, _org(settings, user.organisation)))
    patients: dict[str, SandboxPatient] = {}
    load_uk_fixtures(settings.fixtures_dir, stores, patients)
    if settings.synthea_dir and settings.synthea_dir.is_dir():
        load_synthea(settings.synthea_dir, settings, stores, patients)
    else:
        log.info("no Synthea folder at %s: serving the hand-made UK patients only", settings.synthea_dir)
    describe_patients(stores, patients, staff)
    return Dataset(stores=stores, patients=patients, staff=staff)


def _org(settings: SandboxSettings, org_id: str) -> Organisation:
    org = settings.organisation(org_id)
    assert org is not None
    return org


# ---- organisations and staff ----------------------------------------------------------------------


def organisation_resource(org: Organisation) -> dict:
    return {
        "resourceType": "Organization",
        "id": org.id,
        "identifier": [{"system": ODS_SYSTEM, "value": org.ods_code}],
        "active": True,
        "name": org.name,
    }


def load_staff(path: Path) -> dict[str, StaffUser]:
    if not path.exists():
        return {}
    users = {}
    for d in json.loads(path.read_text(encoding="utf-8")):
        name = d["name"]
        display = " ".join([*name.get("prefix", []), *name.get("given", []), name.get("family", "")]).strip()
        users[d["id"]] = StaffUser(
            id=d["id"],
            display_name=display,
            organisation=d["organisation"],
            practitioner_id=d["practitioner_id"],
            role_id=d["role_id"],
            sds_user_id=d["sds_user_id"],
            role_profile_id=d["role_profile_id"],
            job_role_code=d["job_role"]["code"],
            job_role_display=d["job_role"]["display"],
            job_title=d.get("job_title", ""),
            activities=tuple(d.get("activities", [])),
            nhs_number=d.get("nhs_number"),
            raw=d,
        )
    return users


def staff_resources(user: StaffUser, org: Organisation) -> list[dict]:
    """Practitioner + PractitionerRole, so ``fhirUser`` resolves to a name, organisation and role codes."""
    identifiers = [{"system": SDS_USER_SYSTEM, "value": user.sds_user_id}]
    if user.raw.get("gmc_number"):
        identifiers.append({"system": GMC_SYSTEM, "value": user.raw["gmc_number"]})
    if user.nhs_number:  # the staff record is linked to the person's own patient identity
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": user.nhs_number})
    practitioner = {
        "resourceType": "Practitioner",
        "id": user.practitioner_id,
        "identifier": identifiers,
        "active": True,
        "name": [{"use": "official", **user.raw["name"]}],
    }
    role = {
        "resourceType": "PractitionerRole",
        "id": user.role_id,
        "identifier": [{"system": SDS_ROLE_PROFILE_SYSTEM, "value": user.role_profile_id}],
        "active": True,
        "practitioner": {"reference": f"Practitioner/{user.practitioner_id}", "display": user.display_name},
        "organization": {"reference": f"Organization/{org.id}", "display": org.name},
        "code": [
            {
                "coding": [{"system": JOB_ROLE_SYSTEM, "code": user.job_role_code, "display": user.job_role_display}],
                "text": user.job_title or user.job_role_display,
            }
        ],
        "extension": [
            {
                "url": "https://fhir.nhs.uk/sandbox/StructureDefinition/rbac-activity-codes",
                "valueString": " ".join(user.activities),
            }
        ],
    }
    if user.activities_on_role:
        role["code"] += [{"coding": [{"system": ACTIVITY_CODE_SYSTEM, "code": code}]} for code in user.activities]
    return [practitioner, role]


# ---- hand-made UK fixtures ------------------------------------------------------------------------


def load_uk_fixtures(folder: Path, stores: dict[str, OrgStore], patients: dict[str, SandboxPatient]) -> None:
    for org_id, store in stores.items():
        path = folder / f"{org_id}.json"
        if not path.exists():
            continue
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            if resource["resourceType"] == "Organization" and resource["id"] == org_id:
                store._by_type["Organization"][org_id] = resource  # the fixture's richer record wins
                continue
            store.add(resource)
            if resource["resourceType"] == "Patient":
                _register(patients, resource, org_id, "uk")


def _register(patients: dict[str, SandboxPatient], patient: dict, org_id: str, origin: str) -> None:
    nhs = from_identifiers(patient.get("identifier"))
    if not nhs:
        return
    entry = patients.get(nhs)
    if entry is None:
        name = (patient.get("name") or [{}])[0]
        display = " ".join([*name.get("given", []), name.get("family", "")]).strip()
        entry = patients[nhs] = SandboxPatient(
            nhs_number=nhs,
            name=display,
            birth_date=patient.get("birthDate", ""),
            gender=patient.get("gender", ""),
            origin=origin,
        )
    entry.ids[org_id] = patient["id"]


# ---- what each patient demonstrates --------------------------------------------------------------------


def describe_patients(
    stores: dict[str, OrgStore], patients: dict[str, SandboxPatient], staff: dict[str, StaffUser]
) -> None:
    """Fill each patient's ``label`` (UK_LABELS) and ``demonstrates``: the label, then what the data shows."""
    names = Counter(p.name.casefold() for p in patients.values())
    for person in patients.values():
        person.label = UK_LABELS.get(person.nhs_number, "") if person.origin == "uk" else ""
        found = _demonstrated(person, stores, staff)
        if names[person.name.casefold()] > 1:
            found.append("Same name as another patient")
        person.demonstrates = [*([person.label] if person.label else []), *found]


def _demonstrated(person: SandboxPatient, stores: dict[str, OrgStore], staff: dict[str, StaffUser]) -> list[str]:
    local = {org: stores[org].read("Patient", pid) or {} for org, pid in person.ids.items()}
    resources = [r for org, pid in person.ids.items() for r in stores[org].patient_resources(pid)]
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    out = []
    if any(p.get("deceasedDateTime") or p.get("deceasedBoolean") is True for p in local.values()):
        out.append("Deceased")
    if any(
        c.get("status") == "active" and (c.get("provision") or {}).get("type") == "deny"
        for c in by_type.get("Consent", [])
    ):
        out.append("Objection to sharing")
    if any({s.get("code") for s in (r.get("meta") or {}).get("security") or []} & SENSITIVE_LABELS for r in resources):
        out.append("Sensitive items withheld")
    flags = [f for f in by_type.get("Flag", []) if f.get("status") == "active"]
    if any(_codes(c) & {"safety"} for f in flags for c in f.get("category") or []):
        out.append("Safeguarding flag")
    elif flags:
        out.append("Active flag")
    if _allergy_conflict(person, stores):
        out.append("Conflicting allergy records")
    if len({_demographics(p) for p in local.values()}) > 1:
        out.append("Demographics differ between organisations")
    for user in staff.values():
        if user.nhs_number == person.nhs_number:
            out.append(f"Also a staff user ({user.display_name})")
    relatives = {
        i.get("value")
        for r in by_type.get("RelatedPerson", [])
        for i in r.get("identifier") or []
        if i.get("system") == SDS_USER_SYSTEM
    }
    for user in staff.values():
        if user.sds_user_id in relatives:
            out.append(f"Relative of a staff user ({user.display_name})")
    for org, pid in person.ids.items():
        if any(e.get("status") == "in-progress" for e in stores[org].search("Encounter", {"patient": [pid]})[0]):
            out.append(f"Attendance in progress at {org}")
    observations = by_type.get("Observation", [])
    if len(observations) >= LARGE_RECORD_OBSERVATIONS:
        out.append(f"Large record ({len(observations):,} observations)")
    readings = Counter(key for r in observations for key in _numeric_series(r))
    if readings and max(readings.values()) >= TREND_READINGS:
        out.append("Trends worth charting")
    documents = len(by_type.get("DocumentReference", []))
    if documents >= MANY_DOCUMENTS:
        out.append(f"Clinical documents ({documents})")
    return out


def _codes(concept: dict | None) -> set[str]:
    return {c.get("code") for c in (concept or {}).get("coding") or [] if c.get("code")}


def _allergy_conflict(person: SandboxPatient, stores: dict[str, OrgStore]) -> bool:
    """One organisation records an allergy while another records none known."""
    allergic, none_known = set(), set()
    for org, pid in person.ids.items():
        for r in stores[org].search("AllergyIntolerance", {"patient": [pid]})[0]:
            if "entered-in-error" in _codes(r.get("verificationStatus")) or "resolved" in _codes(
                r.get("clinicalStatus")
            ):
                continue
            (none_known if _codes(r.get("code")) & set(NKA_CODES) else allergic).add(org)
    return bool(allergic and none_known - allergic)


def _demographics(patient: dict) -> tuple:
    name = (patient.get("name") or [{}])[0]
    return (patient.get("birthDate"), patient.get("gender"), tuple(name.get("given") or ()), name.get("family"))


def _numeric_series(r: dict) -> list[str]:
    """The series a numeric Observation adds a reading to: its code, or each numeric component's code."""
    parts = [r, *(c for c in r.get("component") or [] if isinstance(c, dict))]
    out = []
    for part in parts:
        q = part.get("valueQuantity")
        if isinstance(q, dict) and isinstance(q.get("value"), int | float) and not isinstance(q.get("value"), bool):
            code = part.get("code") or {}
            out.append(next(iter(sorted(_codes(code))), code.get("text") or ""))
    return out


# ---- Synthea ----------------------------------------------------------------------------------------


def synthea_files(folder: Path) -> list[Path]:
    """Patient bundles (not the hospital/practitioner information bundles), in a fixed order."""
    return sorted(p for p in folder.rglob("*.json") if "Information" not in p.name and p.name != "MANIFEST.json")


def synthea_nhs_number(synthea_id: str, taken: set[str]) -> str:
    """A 999-range NHS number derived from the Synthea id: stable across runs and organisations."""
    n = int(hashlib.sha256(synthea_id.encode()).hexdigest(), 16) % 1_000_000
    while True:
        stem = f"999{n:06d}"
        check = check_digit(stem)
        if check is not None and f"{stem}{check}" not in taken:
            number = f"{stem}{check}"
            assert is_valid(number)
            return number
        n = (n + 1) % 1_000_000


def synthea_person_id(patient: dict) -> str:
    """Synthea's own person id (also in the file name); the resource id differs in some bundles."""
    for ident in patient.get("identifier") or []:
        if ident.get("system") == SYNTHEA_SYSTEM and ident.get("value"):
            return ident["value"]
    return patient["id"]


def synthea_org_for(encounter: dict, main_provider: str | None, org_ids: list[str]) -> str:
    """The sandbox organisation that holds an encounter (and everything recorded in it).

    Emergency and inpatient encounters → the acute hospital; ambulatory encounters at the patient's
    usual provider (most ambulatory encounters) → the GP practice; other ambulatory providers → the
    community trust. Resources recorded outside any encounter stay with the GP practice.
    """
    cls = (encounter.get("class") or {}).get("code")
    if cls in HOSPITAL_CLASSES and "hospital" in org_ids:
        return "hospital"
    provider = (encounter.get("serviceProvider") or {}).get("reference")
    if provider == main_provider or "community" not in org_ids:
        return "gp"
    return "community"


def main_provider(encounters: list[dict]) -> str | None:
    counts = Counter(
        (e.get("serviceProvider") or {}).get("reference")
        for e in encounters
        if (e.get("class") or {}).get("code") not in HOSPITAL_CLASSES
    )
    counts.pop(None, None)
    if not counts:
        return None
    return min(counts, key=lambda ref: (-counts[ref], ref))


def load_synthea(
    folder: Path, settings: SandboxSettings, stores: dict[str, OrgStore], patients: dict[str, SandboxPatient]
) -> None:
    shared_index = _information_index(folder)
    for path in synthea_files(folder):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        _load_synthea_patient(bundle, shared_index, settings, stores, patients)


def _information_index(folder: Path) -> dict[str, dict]:
    """Resources that hiv-r4-2021 bundles reference conditionally (``Organization?identifier=…``)."""
    index: dict[str, dict] = {}
    for path in sorted(folder.rglob("*Information*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for entry in bundle.get("entry", []):
            r = entry["resource"]
            if entry.get("fullUrl"):
                index[entry["fullUrl"]] = r
            for ident in r.get("identifier") or []:
                index[f"{r['resourceType']}?identifier={ident.get('system')}|{ident.get('value')}"] = r
    return index


def _load_synthea_patient(
    bundle: dict,
    shared_index: dict[str, dict],
    settings: SandboxSettings,
    stores: dict[str, OrgStore],
    patients: dict[str, SandboxPatient],
) -> None:
    org_ids = list(stores)
    entries = [e for e in bundle.get("entry", []) if e["resource"]["resourceType"] not in SYNTHEA_SKIPPED_TYPES]
    by_full_url = {e["fullUrl"]: e["resource"] for e in entries if "fullUrl" in e}
    patient = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Patient")
    encounters = {r["id"]: r for r in by_full_url.values() if r["resourceType"] == "Encounter"}
    usual = main_provider(list(encounters.values()))
    # Where each encounter lives, then each resource follows its encounter (or stays at the GP).
    encounter_org = {eid: synthea_org_for(e, usual, org_ids) for eid, e in encounters.items()}
    placed: dict[str, list[dict]] = {org: [] for org in org_ids}
    home: dict[str, str] = {}  # resource id -> organisation holding it
    for r in by_full_url.values():
        rtype = r["resourceType"]
        if rtype in SHARED_TYPES or rtype == "Patient":
            continue
        if rtype == "Encounter":
            org = encounter_org[r["id"]]
        else:
            enc_ref = _encounter_ref(r)
            enc = by_full_url.get(enc_ref) if enc_ref else None
            org = (encounter_org.get(enc["id"]) if enc else None) or "gp"
        placed[org].append(r)
        home[r["id"]] = org

    nhs = synthea_nhs_number(synthea_person_id(patient), set(patients))
    for org_id, resources in placed.items():
        if not resources and org_id != "gp":
            continue
        local_patient = _local_patient(patient, org_id, nhs)
        rewrite = _Rewriter(by_full_url, shared_index, local_patient["id"], org_id, home, settings)
        store = stores[org_id]
        for r in resources:
            store.add(rewrite.resource(r))
        store.add(rewrite.resource(local_patient))
        for shared in rewrite.shared_resources():
            store.add(shared)
        _register(patients, local_patient, org_id, "synthea")


def _encounter_ref(r: dict) -> str | None:
    if isinstance(r.get("encounter"), dict):
        return r["encounter"].get("reference")
    context = r.get("context")
    if isinstance(context, dict):
        if isinstance(context.get("encounter"), list) and context["encounter"]:
            return context["encounter"][0].get("reference")
        return context.get("reference")
    return None


def _local_patient(patient: dict, org_id: str, nhs: str) -> dict:
    """The organisation's own copy of the patient: its own id, the shared NHS number."""
    local = copy.deepcopy(patient)
    local["id"] = str(uuid.uuid5(ID_NAMESPACE, f"{org_id}:{patient['id']}"))
    local["identifier"] = [
        {
            "system": NHS_NUMBER_SYSTEM,
            "value": nhs,
            "extension": [
                {
                    "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                    "valueCodeableConcept": {
                        "coding": [
                            {
                                "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                                "code": "01",
                                "display": "Number present and verified",
                            }
                        ]
                    },
                }
            ],
        },
        *[i for i in patient.get("identifier", []) if i.get("system") != NHS_NUMBER_SYSTEM],
    ]
    if org_id == "gp":
        local["generalPractitioner"] = [{"reference": "Organization/gp"}]
    else:
        local["generalPractitioner"] = [{"identifier": {"system": ODS_SYSTEM, "value": "Y01001"}}]
    return local


class _Rewriter:
    """Turns a transaction bundle's ``urn:uuid:`` and conditional references into ``Type/id``.

    A reference to something another organisation holds (a hospital procedure citing the GP's diagnosis)
    becomes an absolute URL on that organisation's server, as it would between real systems.
    """

    def __init__(
        self,
        by_full_url: dict[str, dict],
        shared_index: dict[str, dict],
        patient_id: str,
        org_id: str,
        home: dict[str, str],
        settings: SandboxSettings,
    ) -> None:
        self.by_full_url = by_full_url
        self.shared_index = shared_index
        self.patient_id = patient_id
        self.org_id = org_id
        self.home = home
        self.settings = settings
        self._shared: dict[str, dict] = {}

    def resource(self, r: dict) -> dict:
        return self._walk(copy.deepcopy(r) if r["resourceType"] == "Patient" else r)

    def shared_resources(self) -> list[dict]:
        return list(self._shared.values())

    def _walk(self, node):
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                node["reference"] = self._target(ref)
            for key, value in node.items():
                if key != "reference":
                    self._walk(value)
        elif isinstance(node, list):
            for item in node:
                self._walk(item)
        return node

    def _target(self, ref: str) -> str:
        target = self.by_full_url.get(ref) or self.shared_index.get(ref)
        if target is None:
            return ref
        rtype = target["resourceType"]
        if rtype == "Patient":
            return f"Patient/{self.patient_id}"
        if rtype in SHARED_TYPES:
            key = f"{rtype}/{target['id']}"
            if key not in self._shared:
                self._shared[key] = shared = copy.deepcopy(target)  # each organisation gets its own copy
                self._walk(shared)
            return key
        holder = self.home.get(target["id"], self.org_id)
        if holder != self.org_id:
            return f"{self.settings.fhir_base(holder)}/{rtype}/{target['id']}"
        return f"{rtype}/{target['id']}"
