"""Merge once: the record is merged once per set of answered organisations, and each withholding rule's view
is derived from that one merge (``merge.without``) — equal, row for row, to merging what is left afresh."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.access.policy import Withholding
from app.config import LimitSettings
from app.record import merge
from app.record.catalogue import CATALOGUE, Catalogue, Section
from app.record.fetch import LOADED, FetchJob, SourceResult
from app.record.merge import Item, SourceRef, without
from app.record.service import Gathering, RecordService
from app.record.sources import RecordSource

FIXTURES = Path(__file__).resolve().parents[3] / "sandbox" / "fixtures" / "uk"
ORGS = {"gp": "Y01001", "hospital": "RX9", "community": "RY8", "council": "L90001"}
SENSITIVE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIG = SimpleNamespace(limits=LimitSettings())  # all the record service reads outside a fetch


def source(org: str) -> RecordSource:
    return RecordSource(org, f"{org.title()} organisation", ORGS[org], org, f"http://{org}.test/fhir", 5.0, "none")


def fixture_resources(org: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for entry in json.loads((FIXTURES / f"{org}.json").read_text())["entry"]:
        resource = entry["resource"]
        out.setdefault(resource["resourceType"], []).append(resource)
    return out


def items_of(resources_by_org: dict[str, dict[str, list[dict]]]) -> dict[str, list[Item]]:
    items: dict[str, list[Item]] = {}
    for org, by_type in resources_by_org.items():
        for rtype, resources in by_type.items():
            for r in resources:
                ref = f"{rtype}/{r.get('id')}"
                items.setdefault(rtype, []).append(
                    Item(r, SourceRef(org, org, ORGS[org], ref, f"http://{org}.test/fhir/{ref}", None))
                )
    return items


def fresh(catalogue: Catalogue, items: dict[str, list[Item]], hidden: set[int]) -> dict:
    return catalogue.build({t: [i for i in v if id(i.resource) not in hidden] for t, v in items.items()})


def derived(sections: dict, hidden: set[int]) -> dict:
    return {name: without(rows, hidden) for name, rows in sections.items()}


# ---- merge.without is a fresh merge of what is left -----------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_a_view_derived_from_one_merge_equals_a_fresh_merge_of_what_is_left(seed):
    """Every organisation's fixtures merged together (every kind of rule, conflicts across rows, identifiers),
    then random resources, whole organisations or whole lists left out."""
    items = items_of({org: fixture_resources(org) for org in ORGS})
    everything = [i for v in items.values() for i in v]
    rng = random.Random(seed)
    if seed % 3 == 0:
        hidden = {id(i.resource) for i in rng.sample(everything, len(everything) // 4)}
    elif seed % 3 == 1:
        org = rng.choice(sorted(ORGS))
        hidden = {id(i.resource) for i in everything if i.source.source_id == org}
    else:
        rtype = rng.choice(sorted(items))
        hidden = {id(i.resource) for i in items[rtype]} | {id(rng.choice(everything).resource)}
    full = CATALOGUE.build(items)
    assert derived(full, hidden) == fresh(CATALOGUE, items, hidden)
    assert derived(full, set()) == full  # nothing hidden: the merge itself


def _problem(org: str, rid: str, onset: str, end: str | None) -> Item:
    resource = {
        "resourceType": "Condition",
        "id": rid,
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003", "display": "Hypertension"}]},
        "onsetDateTime": onset,
        "clinicalStatus": {"coding": [{"code": "resolved" if end else "active"}]},
    }
    if end:
        resource["abatementDateTime"] = end
    ref = f"Condition/{rid}"
    return Item(resource, SourceRef(org, org, ORGS[org], ref, f"http://{org}.test/fhir/{ref}", None))


def test_leaving_out_the_link_of_a_chain_splits_its_row():
    """A overlaps B, B overlaps C, A does not overlap C: one row; without B, two rows — as a fresh merge."""
    a = _problem("gp", "a", "2020-01-01", "2020-06-01")
    b = _problem("hospital", "b", "2020-05-01", "2021-01-01")
    c = _problem("community", "c", "2020-12-01", None)
    full = merge.problems([a, b, c])
    assert len(full) == 1
    split = without(full, {id(b.resource)})
    assert len(split) == 2 and split == merge.problems([a, c])
    assert without(full, {id(a.resource), id(b.resource), id(c.resource)}) == []


def _medication(org: str, rid: str, dose: str) -> Item:
    resource = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "active",
        "authoredOn": "2024-01-01",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://snomed.info/sct", "code": "3", "display": "Ramipril"}]
        },
        "dosageInstruction": [{"text": dose}],
    }
    ref = f"MedicationRequest/{rid}"
    return Item(resource, SourceRef(org, org, ORGS[org], ref, f"http://{org}.test/fhir/{ref}", None))


def test_a_conflict_with_a_withheld_item_is_not_shown_and_the_merge_is_not_changed():
    gp, hospital = _medication("gp", "m1", "5 mg daily"), _medication("hospital", "m2", "10 mg daily")
    full = merge.medications([gp, hospital])
    assert full[0].conflicts, "different doses at two organisations are a conflict"
    view = without(full, {id(hospital.resource)})
    assert view == merge.medications([gp]) and view[0].conflicts == []
    assert full[0].conflicts and len(full[0].sources) == 2, "deriving a view never changes the merge"


def test_a_section_merged_by_a_plain_function_is_merged_again_without_the_items():
    calls = []

    def build(items):
        calls.append(len(items))
        return merge.encounters(items)

    catalogue = CATALOGUE.with_sections([Section("visits", resource_types=("Encounter",), build=build)])
    record, service, gathering = _service_record(catalogue)
    assert calls == [sum(len(fixture_resources(org).get("Encounter", [])) for org in ORGS)]
    view = service.merged(gathering, Withholding(withheld_ods=frozenset({"RX9"})))
    assert len(calls) == 2 and calls[1] < calls[0]
    assert view.section("visits") == view.section("encounters") != record.section("encounters")


# ---- RecordService: one merge per gathering, whoever looks ----------------------------------------------


def _gathering(resources_by_org: dict[str, dict[str, list[dict]]]) -> Gathering:
    results = []
    for org, by_type in resources_by_org.items():
        result = SourceResult(source(org), state=LOADED, patient={"resourceType": "Patient", "id": org})
        result.resources = {t: v for t, v in by_type.items() if t != "Patient"}
        result.bytes = len(json.dumps(result.resources))
        results.append(result)
    job = FetchJob.completed(results, "9991000372", "test-merge-once")
    return Gathering(0.0, job, {"resourceType": "Patient", "id": "gp"}, "9991000372", ctx_id="ctx-merge-once")


def _service_record(catalogue: Catalogue = CATALOGUE):
    service = RecordService(CONFIG, catalogue, None, None)
    gathering = _gathering({org: fixture_resources(org) for org in ORGS})
    return service.merged(gathering), service, gathering


def counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = Catalogue.build
    monkeypatch.setattr(Catalogue, "build", lambda self, items: calls.append(1) or original(self, items))
    return calls


def test_two_users_with_different_withholding_share_one_merge(monkeypatch):
    calls = counting(monkeypatch)
    service = RecordService(CONFIG, CATALOGUE, None, None)
    gathering = _gathering({org: fixture_resources(org) for org in ORGS})
    labels = frozenset({"R", "PSY", "ETH", "HIV", "SDV", "SEX", "STD"})
    clinician = service.merged(gathering, Withholding(labels=labels, codes=frozenset({f"{SENSITIVE}|X"})))
    objected = service.merged(gathering, Withholding(withheld_ods=frozenset({"RX9"})))
    everything = service.merged(gathering, Withholding())
    again = service.merged(gathering, Withholding(withheld_ods=frozenset({"RX9"})))
    assert len(calls) == 1, "one merge, whoever looks and whatever they may see"
    assert again is objected
    assert objected.withheld > 0 and everything.withheld == 0
    assert all(r.ods != "RX9" for rows in objected.sections.values() for row in rows for r in row.sources)
    # each view is what a fresh merge without the withheld resources gives
    items = gathering.merged[next(k for k in gathering.merged if k[1] == "merge")].items
    for view, rule in (
        (clinician, Withholding(labels=labels)),
        (objected, Withholding(withheld_ods=frozenset({"RX9"}))),
    ):
        hidden = {id(i.resource) for v in items.values() for i in v if rule.hides(i.source.ods or None, i.resource)}
        assert view.sections == fresh(CATALOGUE, items, hidden)
        assert view.withheld == len(hidden)


def test_concurrent_first_requests_merge_once(monkeypatch):
    calls = counting(monkeypatch)
    service = RecordService(CONFIG, CATALOGUE, None, None)
    gathering = _gathering({org: fixture_resources(org) for org in ORGS})
    rules = [Withholding(), Withholding(withheld_ods=frozenset({"RX9"})), Withholding(labels=frozenset({"PSY"}))]
    seen = []
    threads = [threading.Thread(target=lambda r=r: seen.append(service.merged(gathering, r))) for r in rules * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(seen) == 12
    assert len({id(v) for v in seen}) <= 3


def test_a_new_answer_is_a_new_merge_and_the_old_one_is_dropped(monkeypatch):
    calls = counting(monkeypatch)
    service = RecordService(CONFIG, CATALOGUE, None, None)
    gathering = _gathering({org: fixture_resources(org) for org in ORGS})
    council = gathering.job.results["council"]
    council.state = "waiting"
    first = service.merged(gathering)
    assert not first.complete
    council.state = LOADED
    second = service.merged(gathering, Withholding(withheld_ods=frozenset({"RX9"})))
    assert second.complete and len(calls) == 2
    assert {k[0] for k in gathering.merged} == {("community", "council", "gp", "hospital")}
