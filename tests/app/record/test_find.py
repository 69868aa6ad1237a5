"""Finding things fast (issue item 7) over real HTTP: search across the record, sortable tables, the results filter
and latest values, a report's own results, documents filtered and linked from their encounter."""

from __future__ import annotations

import re
from datetime import datetime
from html import unescape
from pathlib import Path

import pytest

from app.record import find
from app.record.catalogue import CATALOGUE
from app.record.merge import Item, SourceRef, reports, results
from app.services import services
from tests.app.record.test_reachable import synthea_nhs
from tests.app.record.test_record_pages import open_record
from tests.app.record.test_synthea_sections import needs_synthea
from tests.conftest import SYNTHEA_DIR
from tests.html_forms import form_with

JACK = "9991001484"  # a child known to children's social care (sw-campbell may open part of his record)
GP_LETTER = "gp-doc-thompson-find-letter"  # a GP letter for Margaret, written in her post-discharge review


@pytest.fixture
def viewer(sandbox):
    """Margaret with a GP letter besides the hospital's discharge summary: two organisations hold documents."""
    store = sandbox.state.dataset.stores["gp"]
    store.add(
        {
            "resourceType": "DocumentReference",
            "id": GP_LETTER,
            "status": "current",
            "type": {
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "371531000", "display": "Report of clinical encounter"}
                ]
            },
            "subject": {"reference": "Patient/gp-pat-thompson"},
            "date": "2025-06-30T11:00:00Z",
            "description": "Post-discharge review letter",
            "context": {"encounter": [{"reference": "Encounter/gp-enc-thompson-postdischarge"}]},
            "content": [{"attachment": {"contentType": "text/plain", "data": "UmV2aWV3ZWQgYWZ0ZXIgZGlzY2hhcmdlLg=="}}],
        }
    )
    yield sandbox.viewer_app
    sandbox.viewer_app.extensions["launch"].discovery.clear()


def base_of(resp) -> str:
    return re.match(r"(.*/r/[^/]+/)", resp.url).group(1)


def table_rows(html: str, table_id: str) -> list[str]:
    """The body rows of one table (``id=table_id``), each row's HTML; not the "Show more" row."""
    table = re.search(rf'<table[^>]*id="{table_id}".*?<tbody[^>]*>(.*?)</tbody>', html, re.S)
    assert table, f"no table {table_id}"
    return [r for r in re.findall(r"<tr\b.*?</tr>", table.group(1), re.S) if 'class="more-rows"' not in r]


def cell(row: str, label: str) -> str:
    found = re.search(rf'<td data-label="{re.escape(label)}"[^>]*>(.*?)</td>', row, re.S)
    assert found, f"no {label} cell in {row[:200]}"
    return unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


def uk_day(text: str) -> datetime:
    return datetime.strptime(text, "%d-%b-%Y")


def search_groups(html: str) -> dict[str, int]:
    """Section name → the count its heading says."""
    return {
        name: int(n)
        for name, n in re.findall(r'<h3 id="search-(\w+)-heading">[^<]*<span class="count">\((\d+)\)', html)
    }


def hit_links(html: str, section: str) -> list[str]:
    block = re.search(rf'<section class="search-group" id="search-{section}".*?</section>', html, re.S)
    assert block, f"no {section} hits"
    return [unescape(h) for h in re.findall(r'<a href="([^"]+)" class="search-hit__title"', block.group(0))]


def merged(sandbox, resp):
    """The record the pages of this launch are built from (to count what the pages must show)."""
    app = sandbox.viewer_app
    ctx = app.extensions["launch"].contexts.load(re.search(r"/r/([^/]+)/", resp.url).group(1))
    gathering = services(app).record.gather(ctx, "test-find")
    assert gathering.wait(30)
    return services(app).record.merged(gathering)


# ---- search ------------------------------------------------------------------------------------------------------


def test_search_box_finds_an_item_in_two_sections_grouped_and_links_to_its_row(http, sandbox, viewer):
    first = open_record(http, sandbox)
    base = base_of(first)
    page = form_with(first, "q").submit(http, q="DIABETES")  # the box on every record page, as a browser sends it
    assert page.status_code == 200 and "/search?q=DIABETES" in page.url
    record = merged(sandbox, first)
    expected_reports = [r for r in record.section("reports") if "diabetes" in r.title.lower()]
    groups = search_groups(page.text)
    assert groups["problems"] == 1 and groups["reports"] == len(expected_reports) > 1
    assert list(groups) == ["problems", "reports"]  # in the order of the record's pages
    row = table_rows(page.text, "hits-problems")[0]
    assert "Type 2 diabetes mellitus" in row and cell(row, "Date") == "18-May-2009" and cell(row, "Value") == "Active"
    assert cell(row, "Organisation") == "Riverside Medical Practice, Northgate Hospitals NHS Foundation Trust"
    # A hit lands on its row: the section page, anchored at the row it names.
    link = hit_links(page.text, "problems")[0]
    path, anchor = link.split("#")
    assert path == f"{urlpath(base)}problems" and anchor.startswith("row-")
    target = http.get(sandbox.viewer_url + path)
    assert f'id="{anchor}"' in target.text and "Type 2 diabetes mellitus" in target.text
    report = hit_links(page.text, "reports")[0]
    assert f'id="{report.split("#")[1]}"' in http.get(sandbox.viewer_url + report.split("#")[0]).text
    # Case-insensitive: the same hits whatever the case.
    assert search_groups(http.get(base + "search", params={"q": "diabetes"}).text) == groups


def urlpath(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_search_shows_key_values_codes_and_says_when_it_shortens_a_section(http, sandbox, viewer, monkeypatch):
    monkeypatch.setattr("app.views.record.SEARCH_SHOWN", 10)  # Margaret's lists are short: cut them sooner
    base = base_of(open_record(http, sandbox))
    # "laboratory": the category of every blood test (results) and the words of a procedure.
    page = http.get(base + "search", params={"q": "laboratory"}).text
    groups = search_groups(page)
    assert set(groups) == {"results", "procedures"} and groups["results"] > 10
    shown = table_rows(page, "hits-results")
    assert len(shown) == 10
    assert re.search(rf"Showing 10 of {groups['results']} results that match", page)
    assert all(re.search(r"\d+ (mmol/mol|mL/min)", cell(r, "Value")) for r in shown)  # each hit's value
    everything = re.search(r'id="count-results">[^<]*<a href="([^"]+)"', page).group(1)
    whole = http.get(sandbox.viewer_url + unescape(everything)).text
    assert "q=laboratory" in unescape(everything) and len(table_rows(whole, "hits-results")) == groups["results"]
    # A code finds its row: SNOMED CT 44054006 is type 2 diabetes; a fragment of a code does not.
    assert search_groups(http.get(base + "search", params={"q": "44054006"}).text) == {"problems": 1}
    assert "No matches for" in http.get(base + "search", params={"q": "4405400"}).text
    meds = table_rows(http.get(base + "search", params={"q": "apixaban"}).text, "hits-medications")
    assert len(meds) == 2 and all(cell(r, "Value") != "–" for r in meds)  # each medicine with its dose


def test_a_search_with_no_match_says_so_and_a_short_query_is_refused(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    none = http.get(base + "search", params={"q": "zebra crossing"})
    assert none.status_code == 200
    assert "No matches for “zebra crossing”" in none.text and not search_groups(none.text)
    short = http.get(base + "search", params={"q": "d"}).text
    assert "Enter at least 2 characters to search." in short and not search_groups(short)
    assert 'value="zebra crossing"' in none.text  # the box keeps what was searched


def test_search_finds_only_what_the_user_may_open_and_is_audited(http, sandbox, viewer):
    gp = http.get(base_of(open_record(http, sandbox, nhs=JACK)) + "search", params={"q": "eczema"}).text
    assert {"problems", "encounters"} <= set(search_groups(gp))
    social = open_record(http, sandbox, user="sw-campbell", nhs=JACK)
    assert 'id="record-search"' in social.text
    theirs = http.get(base_of(social) + "search", params={"q": "eczema"})
    assert theirs.status_code == 200 and set(search_groups(theirs.text)) == {"problems"}  # not encounters
    reception = open_record(http, sandbox, user="reception-hughes")
    assert 'id="record-search"' not in reception.text
    assert http.get(base_of(reception) + "search", params={"q": "diabetes"}).status_code == 403
    events = services(sandbox.viewer_app).audit_store.search(patient_nhs=JACK, limit=50)
    viewed = [
        entity.get("description", "")
        for e in events
        if e.event["subtype"][-1]["code"] == "view"
        for entity in e.event["entity"]
    ]
    assert any(w.startswith("search ") and "q=eczema" in w for w in viewed), viewed


# ---- sorting -----------------------------------------------------------------------------------------------------


def test_sorting_by_date_reorders_the_rows_both_ways(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    default = [cell(r, "Date") for r in table_rows(http.get(base + "encounters").text, "table-encounters")]
    up = http.get(base + "encounters", params={"sort": "date", "dir": "asc"}).text
    down = http.get(base + "encounters", params={"sort": "date", "dir": "desc"}).text
    ascending = [uk_day(cell(r, "Date")) for r in table_rows(up, "table-encounters")]
    descending = [uk_day(cell(r, "Date")) for r in table_rows(down, "table-encounters")]
    assert len(ascending) == len(default) > 10
    assert ascending == sorted(ascending) and ascending != sorted(ascending, reverse=True)
    assert descending == sorted(ascending, reverse=True)
    assert re.search(
        r'<th scope="col" class="sortable" aria-sort="ascending"><a href="[^"]*sort=date&amp;dir=desc"', up
    )
    assert up.count("aria-sort=") == 1 and 'aria-sort="descending"' in down
    # A table page of the catalogue: problems by onset, oldest first, then by name.
    problems = http.get(base + "problems", params={"sort": "date", "dir": "asc"}).text
    onsets = [uk_day(cell(r, "Onset")) for r in table_rows(problems, "table-problems")]
    assert onsets == sorted(onsets) and len(set(onsets)) > 2
    names = [
        cell(r, "Problem") for r in table_rows(http.get(base + "problems?sort=title&dir=desc").text, "table-problems")
    ]
    assert names == sorted(names, key=str.casefold, reverse=True)


def test_sort_links_keep_the_filters_and_unknown_sorts_keep_the_default_order(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    council = http.get(base + "encounters", params={"org": "council", "sort": "date", "dir": "asc"}).text
    headers = re.search(r"<thead.*?</thead>", council, re.S).group(0)
    assert 'href="' in headers and all("org=council" in h for h in re.findall(r'href="([^"]+)"', headers))
    assert '<input type="hidden" name="sort" value="date">' in council  # filtering again keeps the sort
    default = http.get(base + "encounters").text
    odd = http.get(base + "encounters", params={"sort": "resources", "dir": "sideways"}).text
    assert table_rows(odd, "table-encounters") == table_rows(default, "table-encounters")
    assert "aria-sort" not in odd


# ---- results -----------------------------------------------------------------------------------------------------


def test_results_filter_narrows_to_one_test_and_one_category(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    page = http.get(base + "results")
    everything = table_rows(page.text, "table-results")
    form = form_with(page, "test")
    hba1c = next(code for code in form.selects["test"].options if code.endswith("|999791000000106"))
    only = form.submit(http, test=hba1c).text
    rows = table_rows(only, "table-results")
    assert 0 < len(rows) < len(everything)
    assert {cell(r, "Test") for r in rows} == {"HbA1c (IFCC)"}
    assert re.search(rf'id="result-count">{len(rows)} results match the filters', only)
    vitals = table_rows(form.submit(http, category="Vital Signs").text, "table-results")
    assert 0 < len(vitals) < len(everything) and {cell(r, "Category") for r in vitals} == {"Vital Signs"}
    assert "HbA1c (IFCC)" not in {cell(r, "Test") for r in vitals}


def test_latest_results_show_one_row_per_test_newest_first_with_a_link_to_every_value(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    page = http.get(base + "results").text
    assert page.index('id="table-latest"') < page.index('id="all-results"')
    latest = table_rows(page, "table-latest")
    tests = [cell(r, "Test") for r in latest]
    assert len(tests) == len(set(tests)) == 4  # blood pressure, body weight, eGFR, HbA1c
    dates = [uk_day(cell(r, "Date")) for r in latest]
    assert dates == sorted(dates, reverse=True)
    hba1c = next(r for r in latest if cell(r, "Test") == "HbA1c (IFCC)")
    link = unescape(re.search(r'<a href="([^"]+)">Show all values', hba1c).group(1))
    values = http.get(sandbox.viewer_url + link.split("#")[0]).text
    every = table_rows(values, "table-results")
    assert {cell(r, "Test") for r in every} == {"HbA1c (IFCC)"} and len(every) > 1
    # The latest value is the newest of them all (the list is newest first).
    assert cell(hba1c, "Latest result") == cell(every[0], "Result").split(" (reference")[0]
    assert cell(hba1c, "Latest result") == "55 mmol/mol"


def test_a_report_opens_to_the_results_it_lists(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    page = http.get(base + "results").text
    reports = re.search(r'id="table-reports".*?</table>', page, re.S).group(0)
    rows = re.findall(r'<tr id="row-\w+">.*?</tr>', reports, re.S)
    newest = rows[0]  # 07-Sep-2026: HbA1c 55 and eGFR 44 at the GP practice
    assert "07-Sep-2026" in newest and "Diabetes review bloods" in newest
    details = re.search(r'<details class="report-results">.*?</details>', newest, re.S).group(0)
    assert "2 results in this report" in details
    listed = re.findall(r'<span class="report-results__test">([^<]+)</span>: <strong>([^<]+)</strong>', details)
    assert sorted(listed) == [("HbA1c (IFCC)", "55 mmol/mol"), ("eGFR (CKD-EPI)", "44 mL/min/1.73m²")]
    # The hospital's report of 11-May-2026 lists the hospital's own results, not the practice's.
    hospital = next(r for r in rows if "11-May-2026" in r and "Clinical biochemistry" in r)
    assert "58 mmol/mol" in hospital and "55 mmol/mol" not in hospital


def test_a_report_reference_resolves_only_at_its_own_organisation():
    def ref(org: str, rtype: str, rid: str) -> SourceRef:
        return SourceRef(org, org.upper(), "", f"{rtype}/{rid}", f"http://x/{org}/{rtype}/{rid}", None)

    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "code": {"text": "Sodium"},
        "effectiveDateTime": "2025-01-01",
        "valueQuantity": {"value": 140, "unit": "mmol/L"},
    }
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "code": {"text": "U&E"},
        "effectiveDateTime": "2025-01-01",
        "result": [{"reference": "Observation/o1"}],
    }
    elsewhere = results([Item(obs, ref("b", "Observation", "o1"))])
    assert find.report_results(reports([Item(report, ref("a", "DiagnosticReport", "r1"))]), elsewhere) == {
        reports([Item(report, ref("a", "DiagnosticReport", "r1"))])[0].id: find.ReportResults([], 1)
    }
    same = results([Item(obs, ref("a", "Observation", "o1"))])
    (found,) = find.report_results(reports([Item(report, ref("a", "DiagnosticReport", "r1"))]), same).values()
    assert [r.title for r in found.rows] == ["Sodium"] and found.unshown == 0


# ---- documents ---------------------------------------------------------------------------------------------------


def test_documents_filter_by_organisation_and_type(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    page = http.get(base + "documents")
    assert re.search(r'id="document-count">2 documents\.', page.text)
    assert "Discharge summary" in page.text and "Report of clinical encounter" in page.text
    gp = form_with(page, "org").submit(http, org="gp").text
    assert re.search(r'id="document-count">1 document matches the filters \(of 2\)', gp)
    assert "Report of clinical encounter" in gp and "Discharge summary</a>" not in gp
    assert "<h3>Northgate Hospitals NHS Foundation Trust</h3>" not in gp
    kind = form_with(page, "type").submit(http, type="Discharge summary").text
    assert "Discharge summary</a>" in kind and "Report of clinical encounter</a>" not in kind
    none = http.get(base + "documents", params={"org": "gp", "type": "Discharge summary"}).text
    assert 'id="no-match"' in none and "to see all 2" in none


def test_an_encounter_links_the_documents_written_in_it(http, sandbox, viewer):
    base = base_of(open_record(http, sandbox))
    rows = table_rows(http.get(base + "encounters").text, "table-encounters")
    with_documents = {cell(r, "Date"): r for r in rows if 'class="encounter-documents"' in r}
    assert set(with_documents) == {"20-Jun-2025", "30-Jun-2025"}  # the admission and the GP's review
    admission = with_documents["20-Jun-2025"]
    assert "Hospital admission" in admission and "Report of clinical encounter" not in admission
    link = re.search(r'<a href="([^"]+)">Discharge summary</a>', admission).group(1)
    letter = http.get(sandbox.viewer_url + link)
    assert letter.status_code == 200 and "<h2>Discharge summary</h2>" in letter.text
    assert "Report of clinical encounter</a>" in with_documents["30-Jun-2025"]


# ---- a Synthea patient ---------------------------------------------------------------------------------------------


def synthea_with_documents() -> Path | None:
    folder = SYNTHEA_DIR / "hiv-r4-2021"
    files = [p for p in folder.glob("*.json") if "Information" not in p.name] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_size, default=None)


@needs_synthea
def test_finding_things_in_a_synthea_record(http, sandbox, viewer):
    path = synthea_with_documents()
    if path is None:
        pytest.skip("no Synthea patient with documents")
    resp = open_record(http, sandbox, nhs=synthea_nhs(sandbox, path))
    base = base_of(resp)
    record = merged(sandbox, resp)
    documents = record.section("documents")
    assert documents, "the Synthea patient has no documents"
    # Search: the documents' type is found, every hit links to a document page that opens.
    kind = documents[0].title
    page = http.get(base + "search", params={"q": kind.lower()}).text
    groups = search_groups(page)
    assert groups.get("documents") == sum(
        1 for d in documents if kind.lower() in d.title.lower() or kind.lower() in (d.detail.description or "").lower()
    )
    for link in hit_links(page, "documents")[:3]:
        assert http.get(sandbox.viewer_url + link).status_code == 200
    # Documents by organisation: each holder's filter shows its own, and together they make up the whole.
    holders = {s.source_id for d in documents for s in d.sources}
    counts = {
        org: int(
            re.search(r'id="document-count">(\d+)', http.get(base + "documents", params={"org": org}).text).group(1)
        )
        for org in holders
    }
    assert all(0 < n <= len(documents) for n in counts.values()) and sum(counts.values()) >= len(documents)
    # Encounters sorted by date, oldest first; some link the notes written in them.
    up = http.get(base + "encounters", params={"sort": "date", "dir": "asc"}).text
    days = [uk_day(cell(r, "Date")) for r in table_rows(up, "table-encounters") if cell(r, "Date") != "–"]
    assert days == sorted(days) and len(days) > 1
    linked = re.findall(
        r'<ul class="encounter-documents".*?<a href="([^"]+)"', http.get(base + "encounters").text, re.S
    )
    assert linked and http.get(sandbox.viewer_url + linked[0]).status_code == 200


@needs_synthea
def test_show_more_keeps_the_sort(http, sandbox, viewer):
    """A list long enough to page: the next page continues the asked order."""
    from tests.app.record.test_reachable import largest_synthea

    resp = open_record(http, sandbox, nhs=synthea_nhs(sandbox, largest_synthea(1)[0]))
    base = base_of(resp)
    up = http.get(base + "encounters", params={"sort": "date", "dir": "asc"}).text
    more = re.search(r'<a href="([^"]+)"\s+hx-get="([^"]+)"', up)
    assert more, "the encounters list is not long enough to page"
    plain, fragment = unescape(more.group(1)), unescape(more.group(2))
    assert "sort=date" in plain and "dir=asc" in plain and "sort=date" in fragment
    first = [uk_day(cell(r, "Date")) for r in table_rows(up, "table-encounters")]
    rest = http.get(sandbox.viewer_url + fragment, headers={"HX-Request": "true"}).text
    following = [uk_day(d) for d in re.findall(r'<td data-label="Date" class="nowrap">([^<]+)</td>', rest)]
    assert following and first + following == sorted(first + following)


def test_every_sort_key_of_the_catalogue_is_known():
    """The catalogue names sort keys; each must be one find can read (an unknown one would never sort)."""
    keys = {key for s in CATALOGUE.sections for _, key in s.sorts}
    assert keys and keys <= set(find.SORT_KEYS)
    for s in CATALOGUE.sections:
        assert {column for column, _ in s.sorts} <= set(s.columns), s.name
