"""Honest words (issue 11 item 9): the pages say what is true of this record, in plain words, and forms lead to
their fields — over real HTTP against the sandbox."""

from __future__ import annotations

import re

import pytest

from tests.app.record.test_record_pages import DAVID, MARGARET, open_record, set_fault, wait_complete
from tests.html_forms import form_with

EDNA = "9991002227"  # needs a reason from an A&E doctor (no relationship)
OLIVER = "9991000747"  # objected to sharing: break-glass


@pytest.fixture
def viewer(sandbox):
    yield sandbox.viewer_app
    sandbox.viewer_app.extensions["launch"].discovery.clear()


def banners(html: str) -> list[str]:
    return re.findall(r'<div class="banner[^>]*>.*?</div>', html, re.S)


def test_a_complete_record_says_every_organisation(http, sandbox, viewer) -> None:
    base = open_record(http, sandbox).url
    problems = http.get(base + "problems").text
    assert "from every organisation that holds a record" in problems
    assert 'id="list-gaps"' not in problems


def test_a_list_cut_at_one_organisation_is_named_where_it_is_read(http, sandbox, viewer, monkeypatch) -> None:
    monkeypatch.setattr("app.record.fetch.PAGE_SIZE", 2)  # lists span pages, so the endless paging is reached
    set_fault(http, sandbox, "community", mode="paging_loop")
    first = open_record(http, sandbox)
    page, _ = wait_complete(http, first.url)
    partial = next(b for b in banners(page) if "Northgate Community and Mental Health NHS Trust may be incomplete" in b)
    assert "Lists that may be missing items:" in partial
    cut = re.search(r"Lists that may be missing items: ([^.]+)\.", partial).group(1).split(", ")
    base = first.url
    encounters = http.get(base + "encounters").text
    if "encounters" in cut:
        gaps = re.search(r'id="list-gaps">(.*?)</div>', encounters, re.S).group(1)
        assert "Northgate Community and Mental Health NHS Trust did not send all of its encounters" in gaps
    problems = http.get(base + "problems").text
    if "problems" in cut:
        assert "from the organisations that could be read" in problems and "from every organisation" not in problems
    assert {"encounters", "problems"} & set(cut), f"the community's cut lists were {cut}"


def test_a_failed_organisation_is_named_on_every_list(http, sandbox, viewer) -> None:
    set_fault(http, sandbox, "council", mode="error_500")
    first = open_record(http, sandbox)
    page, _ = wait_complete(http, first.url)
    assert any("Every section below may be missing what it holds" in b for b in banners(page))
    allergies = http.get(first.url + "allergies").text
    assert "Northgate City Council Social Care could not be read" in allergies
    assert "from every organisation" not in allergies


def test_an_empty_filter_says_nothing_matches(http, sandbox, viewer) -> None:
    base = open_record(http, sandbox).url
    none = http.get(base + "encounters", params={"from": "1900-01-01", "to": "1900-01-02"}).text
    assert 'id="no-match"' in none and "No encounters match these filters" in none
    assert "No encounters recorded by any organisation" not in none


def test_identity_warnings_do_not_look_like_completeness_warnings(http, sandbox, viewer) -> None:
    set_fault(http, sandbox, "council", mode="error_500")
    first = open_record(http, sandbox, nhs=DAVID)
    page, _ = wait_complete(http, first.url)
    identity = [b for b in banners(page) if "Check this is the right person" in b]
    completeness = [b for b in banners(page) if "may be incomplete" in b or "are not shown" in b]
    assert identity and all("banner--identity" in b and "banner--warning" not in b for b in identity)
    assert all("banner--identity" not in b for b in completeness)


def test_the_waiting_page_says_one_thing(http, sandbox, viewer) -> None:
    set_fault(http, sandbox, "council", latency_ms=2500)
    first = open_record(http, sandbox, nhs=MARGARET)
    text = first.text
    assert "Waiting for:</strong> Northgate City Council Social Care" in text
    said = re.findall(r"until every\s+organisation has answered", text)
    assert len(said) == 2  # the page and its banner, in the same words
    assert "Sections show what has arrived" not in text and "Allergy to penicillin" not in text


def test_the_reason_form_links_its_error_and_has_a_way_out(http, sandbox, viewer) -> None:
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-evans", "patient": EDNA})
    assert "/access/reason" in resp.url
    bad = form_with(resp, "reason").submit(http)
    assert bad.status_code == 400
    summary = re.search(r'id="error-summary".*?</div></div>', bad.text, re.S).group(0)
    assert '<a href="#reason-TREAT">Choose why you are looking at this record.</a>' in summary
    assert 'id="reason-TREAT"' in bad.text and 'id="reason-error"' in bad.text
    out = re.search(r'<a href="([^"]+)" id="do-not-open">Do not open the record</a>', resp.text)
    assert out
    left = http.get(sandbox.viewer_url + out.group(1))
    assert left.status_code == 200 and "You did not open this record" in left.text
    assert "Dementia" not in left.text and "Allergies and adverse reactions" not in left.text


def test_break_glass_errors_link_to_their_fields(http, sandbox, viewer) -> None:
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-evans", "patient": OLIVER})
    assert "/access/break-glass" in resp.url
    short = form_with(resp, "justification").submit(http, justification="urgent", confirm="yes")
    assert short.status_code == 400 and re.search(r'<a href="#justification">[^<]+</a>', short.text)
    assert 'id="justification-error"' in short.text
    unconfirmed = form_with(resp, "justification").submit(
        http, justification="Unconscious on arrival in resus, need allergies and medicines now"
    )
    assert unconfirmed.status_code == 400 and '<a href="#confirm">Confirm that this is an emergency' in unconfirmed.text
    assert 'id="confirm-error"' in unconfirmed.text
