"""Nothing silently missing (issue 11 item 2): every row of every section of the record is reachable from the
pages, by following only what a clinician can click — the navigation, "Show more" and "Show all" links.

For the largest Synthea patients and every hand-made UK patient, the viewer is launched as the GP over real
HTTP; the record the pages are built from (the pipeline's own look, with withholding applied) gives the rows
that must be reachable; the crawl collects every row id the pages show (``id="row-…"``, or a link to a
document). Any list that is cut without a way to the rest fails here.
"""

from __future__ import annotations

import re
from collections import deque
from html import unescape
from pathlib import Path

import pytest

from app.access.policy import Step
from app.services import services
from tests.conftest import SYNTHEA_DIR, synthea_available

NOT_PAGES = ("/export.json", "/progress", "/logout", "/access/", "/results/trend/", "/session")
MAX_REQUESTS = 400


def largest_synthea(n: int = 3) -> list[Path]:
    if not synthea_available():
        return []
    files = [p for p in SYNTHEA_DIR.rglob("*.json") if "Information" not in p.name and p.name != "MANIFEST.json"]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)[:n]


def synthea_nhs(running, path: Path) -> str:
    person = path.stem.rsplit("_", 1)[-1]
    dataset = running.state.dataset
    for p in dataset.patients.values():
        if p.origin == "synthea" and "gp" in p.ids:
            patient = dataset.stores["gp"].read("Patient", p.ids["gp"])
            if any(i.get("value") == person for i in patient.get("identifier") or []):
                return p.nhs_number
    raise AssertionError(f"the sandbox has no NHS number for {path.name}")


def crawl(http, viewer_url: str, ctx_id: str, start: str) -> tuple[set[str], int]:
    """Row ids on every page reachable from ``start`` by links inside this launch."""
    prefix = f"/r/{ctx_id}/"
    seen, queue, found, requests = {start}, deque([start]), set(), 0
    while queue:
        path = queue.popleft()
        requests += 1
        assert requests <= MAX_REQUESTS, f"more than {MAX_REQUESTS} pages to reach every row"
        resp = http.get(viewer_url + path)
        assert resp.status_code == 200, f"{path}: HTTP {resp.status_code}"
        html = resp.text
        found |= set(re.findall(r'id="row-([0-9a-f]{12})"', html))
        found |= set(re.findall(rf'href="{re.escape(prefix)}documents/([0-9a-f]{{12}})"', html))
        for href in re.findall(rf'href="({re.escape(prefix)}[^"#]*)"', html):
            href = unescape(href)
            rest = href[len(prefix) - 1 :]
            if any(rest.startswith(n) for n in NOT_PAGES) or re.match(r"^/documents/[0-9a-f]{12}", rest):
                continue
            if "refresh=1" in href or href in seen:
                continue
            seen.add(href)
            queue.append(href)
    return found, requests


def expected_rows(running, ctx_id: str) -> dict[str, set[str]] | None:
    """The rows the pages are built from; None when this user is not shown the record at once (a reason or
    break-glass first: those journeys are tested in tests/app/access)."""
    app = running.viewer_app
    ctx = app.extensions["launch"].contexts.load(ctx_id)
    with app.test_request_context():
        look = services(app).pipeline.open(ctx, "summary", "test-reachable", 60, audit_as=None)
    if look.verdict.step is not Step.SHOW:
        return None
    assert look.record is not None and look.record.complete, "the record did not complete"
    return {name: {row.id for row in rows} for name, rows in look.record.sections.items()}


def check_reachable(running, http, nhs: str) -> bool:
    resp = http.get(f"{running.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": nhs})
    assert resp.status_code == 200, resp.text[:300]
    m = re.search(r"/r/([^/]+)/$", resp.url)
    assert m, resp.url
    ctx_id = m.group(1)
    expected = expected_rows(running, ctx_id)
    if expected is None:
        return False
    found, _ = crawl(http, running.viewer_url, ctx_id, f"/r/{ctx_id}/")
    missing = {name: ids - found for name, ids in expected.items() if ids - found}
    assert not missing, "rows no page reaches: " + "; ".join(
        f"{name}: {len(ids)} of {len(expected[name])}" for name, ids in missing.items()
    )
    assert sum(len(ids) for ids in expected.values()) > 0
    return True


@pytest.mark.skipif(not synthea_available(), reason=f"Synthea data not present at {SYNTHEA_DIR}")
@pytest.mark.parametrize("path", largest_synthea(), ids=lambda p: p.stem.split("_")[0])
def test_every_row_of_the_largest_synthea_patients_is_reachable(running, http, path: Path) -> None:
    assert check_reachable(running, http, synthea_nhs(running, path)), "the GP was not shown the record"


def test_every_row_of_every_uk_patient_is_reachable(running, http) -> None:
    people = [p for p in running.state.dataset.sorted_patients() if p.origin == "uk" and "gp" in p.ids]
    assert len(people) >= 3
    shown = [p.name for p in people if check_reachable(running, http, p.nhs_number)]
    assert len(shown) >= 3, f"the GP was shown only {shown}"


def test_a_cut_list_says_how_much_it_shows(running, http) -> None:
    """The crawl would pass if every list were shown whole; this checks the notice when one is cut."""
    [path] = largest_synthea(1) or [None]
    if path is None:
        pytest.skip("needs the Synthea data for a list long enough to be cut")
    resp = http.get(
        f"{running.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": synthea_nhs(running, path)}
    )
    results = http.get(resp.url + "results").text
    shown = re.search(r'id="count-reports">Showing (\d+) of (\d+) reports', results)
    more = re.search(r"Show more \((\d+) more\)", results)
    assert shown and int(shown.group(1)) < int(shown.group(2)), "the reports list is cut without saying so"
    assert more, "the results table has no way to the next page"
