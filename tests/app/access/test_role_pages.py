"""Each role sees what its job needs (issue 11 item 10): the navigation offers exactly the pages the role may
open, each of them opens, and every other page is refused — for a GP, a social worker and a receptionist."""

from __future__ import annotations

import re

import pytest

from tests.app.access.test_governance_http import JACK, MARGARET, launch

ALL_PAGES = (
    "",
    "problems",
    "medications",
    "allergies",
    "encounters",
    "results",
    "immunisations",
    "procedures",
    "documents",
    "care",
)


def nav(html: str) -> list[str]:
    block = re.search(r'<nav class="record-nav".*?</nav>', html, re.S)
    assert block, "no record navigation"
    return re.findall(r'<a href="/r/[^/]+/([^"]*)"', block.group(0))


@pytest.mark.parametrize(
    ("user", "nhs", "offered"),
    [
        ("dr-patel", MARGARET, set(ALL_PAGES)),
        ("sw-campbell", JACK, {"", "problems", "medications", "allergies", "care"}),
        ("reception-hughes", MARGARET, {"care"}),
    ],
)
def test_the_navigation_offers_exactly_what_the_role_may_open(http, sandbox, user, nhs, offered) -> None:
    resp = launch(http, sandbox, user, nhs)
    assert resp.status_code == 200, resp.text[:300]
    base = re.match(r"(.*/r/[^/]+/)", resp.url).group(1)
    assert set(nav(resp.text)) == offered
    for page in ALL_PAGES[1:]:
        status = http.get(base + page).status_code
        assert status == (200 if page in offered else 403), f"{user} {page}: HTTP {status}"
    home = http.get(base)  # the landing page: the summary, or the first page the role may open
    assert home.status_code == 200 and home.url[len(base) :] in offered


def test_a_social_worker_sees_who_is_involved_in_care(http, sandbox) -> None:
    resp = launch(http, sandbox, "sw-campbell", JACK)
    care = http.get(re.match(r"(.*/r/[^/]+/)", resp.url).group(1) + "care")
    assert care.status_code == 200
    assert "Organisations holding a record" in care.text and "Care teams" in care.text
    assert "last contact" in care.text
