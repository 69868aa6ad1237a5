"""The record catalogue drives everything: a section added to a catalogue is fetched (and its SMART scope
asked for), merged by its own rule, given a route, shown in the navigation with its columns and row
template — with no other change anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest

from app import create_app
from app.access.policy import AccessRules, Overrides, PatientFacts, Step, Verdict, decide
from app.pipeline import Look
from app.record import merge
from app.record.catalogue import CATALOGUE, TABLE, Catalogue, Section
from app.record.service import RecordService
from app.services import services
from app.views.record import render
from core.capabilities import CLINICAL
from launch.identity import Organisation, UserIdentity
from launch.scopes import launch_scopes

GOALS = Section(
    "goals",
    "Goals",
    "Goals of care",
    ("Goal",),
    build=merge.simple(
        "goals", lambda r: merge.concept_text(r.get("description")) or "Goal", lambda r: r.get("startDate")
    ),
    audience=CLINICAL,
    page=TABLE,
    columns=("Goal", "Status", "Recorded by"),
)
ROW = (
    '{%- from "record/_macros.html" import provenance -%}'
    '<td class="goal">{{ row.title }}</td><td>{{ row.status }}</td><td>{{ provenance(row) }}</td>'
)
GP = UserIdentity("Dr Test", role_codes=("R8000",), activity_codes=("B0360",), organisation=Organisation("Y01001"))


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return CATALOGUE.with_sections([GOALS])


def test_derived_lists(catalogue):
    assert "Goal" in catalogue.fetch_types and "Goal" not in CATALOGUE.fetch_types
    assert catalogue.patient_fields["Goal"] == "subject"
    assert [s.name for s in catalogue.pages][-1] == "goals" and "goals" in catalogue.table_pages
    assert catalogue.audiences()["goals"] == CLINICAL
    assert "patient/Goal.rs" in launch_scopes(catalogue.fetch_types, standalone=False).split()
    assert "patient/Goal.rs" not in launch_scopes(CATALOGUE.fetch_types, standalone=False).split()


def test_names_are_unique():
    with pytest.raises(ValueError, match="unique"):
        Catalogue((*CATALOGUE.sections, Section("problems")))


def test_a_section_may_not_shadow_a_fixed_page(running):
    with pytest.raises(ValueError, match="progress"):
        create_app(running.config, catalogue=CATALOGUE.with_sections([Section("progress", "P", "P", page=TABLE)]))


def test_an_added_section_is_fetched_merged_routed_and_navigable(running, http, catalogue, tmp_path: Path):
    app = create_app(running.config, catalogue=catalogue)
    smart = services(app).launch
    # Scopes: the authorize redirect asks for the new type (discovery over real HTTP to the sandbox).
    client = app.test_client()
    resp = client.get("/launch", query_string={"iss": running.fhir_base("gp"), "launch": "abc"})
    assert resp.status_code == 302 and "patient%2FGoal.rs" in resp.headers["Location"]
    # Routes: the one table route serves it; an unknown name is not a page.
    assert app.url_map.bind("viewer").match("/r/abc/goals") == ("record.section", {"ctx_id": "abc", "name": "goals"})
    assert client.get("/r/abc/goals").status_code == 401  # the page exists; this browser has no such launch
    assert client.get("/r/abc/no-such-section").status_code == 404
    assert create_app(running.config).test_client().get("/r/abc/goals").status_code == 404

    # Fetch and merge: a real launch (on the running viewer), then this catalogue's record service reads it.
    launched = http.get(f"{running.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": "9991000372"})
    ctx_id = re.search(r"/r/([^/]+)/", launched.url).group(1)
    ctx = services(running.viewer_app).launch.contexts.load(ctx_id)
    running_smart = services(running.viewer_app).launch
    records = RecordService(running.config, catalogue, running_smart.tokens, running_smart.backend)
    gathering = records.gather(ctx, "test-catalogue")
    assert gathering.wait(30)
    asked = [r for r in running.state.requests if "/Goal?" in r.url and r.request_id == "test-catalogue"]
    assert asked, "no organisation was asked for Goal"
    assert all("Goal" in r.resources for r in gathering.loaded)
    record = records.merged(gathering)
    assert "goals" in record.sections

    # Navigation and the row template: rendered for a user whose level includes the section.
    item = merge.Item(
        {"resourceType": "Goal", "id": "g1", "description": {"text": "Walk to the shops"}, "lifecycleStatus": "active"},
        merge.SourceRef("gp", "Test GP", "Y01001", "Goal/g1", "http://x/Goal/g1", None),
    )
    record.sections["goals"] = catalogue.get("goals").build([item])
    decision = decide(
        GP,
        PatientFacts(registered_ods=frozenset({"Y01001"})),
        Overrides(),
        AccessRules.from_config(None),
        audiences=catalogue.audiences(),
    )
    assert "goals" in decision.sections and decision.at("goals").step is Step.SHOW
    app.jinja_loader = jinja2.ChoiceLoader([jinja2.DictLoader({"record/rows/goals.html": ROW}), app.jinja_loader])
    from app.record.sections import paginate

    with app.test_request_context(f"/r/{ctx.id}/goals"):
        html = render(
            "record/section.html",
            ctx,
            Look(Verdict(Step.SHOW), decision, record),
            "goals",
            spec=catalogue.get("goals"),
            page=paginate(record.section("goals"), 1),
        )
    assert f'href="/r/{ctx.id}/goals" aria-current="page">Goals</a>' in html
    assert "<h2>Goals of care</h2>" in html and '<th scope="col">Status</th>' in html
    assert '<td class="goal">Walk to the shops</td>' in html
    assert smart.settings.record_types == catalogue.fetch_types
