"""Rows and their organisations as the viewer shows them, read from its HTML pages over HTTP.

The FHIR export (``/r/<ctx>/export.json``) lists every resource behind the rows with its organisation, but
not which resources make one row, so rows are read from the pages themselves:

- table sections (problems, medications, allergies, immunisations, procedures) at ``/r/<ctx>/<name>``,
  encounters at ``/r/<ctx>/encounters`` and results at ``/r/<ctx>/results``: ``table#table-<name>``, one
  ``tr#row-<id>`` per row, the organisations in the last cell's ``ul.provenance``; the pages after the first
  (``page=N``, 100 rows each) are read until there is no "Show more" row;
- reports: ``table#table-reports`` on the results page with ``?all=reports``;
- documents: ``/r/<ctx>/documents?all=documents``, one list per organisation (``h3``), each item linking
  ``/documents/<row id>`` (a row from two organisations is listed under both);
- care plans, care teams, episodes and contacts: the care page with ``?all=care-plans``, the ``ul.card-list``
  under each heading, organisations in each item's ``ul.provenance``.

Flags and consents have no list of their own (flags show on the summary only when active; consents are read
by the access policy), so they are not read here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser

import requests

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
TABLE_SECTIONS = ("problems", "medications", "allergies", "immunisations", "procedures")
CARE_LISTS = {"care_teams": "Care teams", "episodes": "Episodes of care", "care_plans": "Care plans"}
READ_SECTIONS = (*TABLE_SECTIONS, "encounters", "results", "reports", "documents", *CARE_LISTS, "contacts")
MAX_PAGES = 200


# ---------------------------------------------------------------- a small DOM over html.parser


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)  # Node or str
    parent: Node | None = field(default=None, repr=False)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return " ".join(" ".join(c.split()) if isinstance(c, str) else c.text() for c in self.children if c).strip()

    def elements(self) -> list[Node]:
        return [c for c in self.children if isinstance(c, Node)]

    def iter(self):
        yield self
        for c in self.elements():
            yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, id: str | None = None) -> list[Node]:  # noqa: A002
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.classes)
            and (id is None or n.attrs.get("id") == id)
        ]

    def find(self, tag: str | None = None, cls: str | None = None, id: str | None = None) -> Node | None:  # noqa: A002
        found = self.find_all(tag, cls, id)
        return found[0] if found else None


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # close up to the matching element
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


# ---------------------------------------------------------------- what the viewer shows


@dataclass
class ShownRow:
    row_id: str | None  # tr#row-<id> or the document link's id; None where the page gives rows no id
    orgs: list[str]  # the organisation names listed for the row, in order, repeats kept
    text: str = ""


@dataclass
class ShownSection:
    rows: list[ShownRow] = field(default_factory=list)
    pages: int = 0

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def rows_by_org(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for row in self.rows:
            out.update(set(row.orgs))
        return out

    @property
    def mentions_by_org(self) -> Counter[str]:
        return Counter(org for row in self.rows for org in row.orgs)

    def repeated_ids(self) -> list[str]:
        ids = Counter(r.row_id for r in self.rows if r.row_id)
        return sorted(i for i, n in ids.items() if n > 1)

    def as_dict(self) -> dict:
        return {
            "rows": self.count,
            "rows_by_org": dict(sorted(self.rows_by_org.items())),
            "mentions_by_org": dict(sorted(self.mentions_by_org.items())),
        }


def provenance(node: Node) -> list[str]:
    ul = node.find("ul", cls="provenance")
    return [span.text() for span in ul.find_all("span", cls="org")] if ul else []


class PageError(AssertionError):
    pass


def get_page(http: requests.Session, url: str, **params) -> Node:
    r = http.get(url, params=params or None, timeout=120)
    if r.status_code != 200:
        raise PageError(f"GET {r.url}: HTTP {r.status_code}: {r.text[:500]}")
    return parse(r.text)


def read_table(http: requests.Session, url: str, table_id: str) -> ShownSection:
    """Every row of a paged table: the first page in full, the rest as the htmx fragments the page loads. A
    grouped page (current and past medicines) is one table per group, ``#<table_id>-<group>``, each paged on
    its own argument (``<group>-page``)."""
    shown = ShownSection()
    doc = get_page(http, url)
    whole = doc.find("table", id=table_id)
    if whole is not None:
        tables = [(whole, "page", "1")]
    else:
        prefix = table_id + "-"
        groups = [t for t in doc.find_all("table") if t.attrs.get("id", "").startswith(prefix)]
        tables = [(t, f"{t.attrs['id'][len(prefix) :]}-page", t.attrs["id"][len(prefix) :]) for t in groups]
    if not tables:  # an empty section shows a sentence instead of a table
        if doc.find("p", cls="empty") is None and doc.find("p", cls="empty--incomplete") is None:
            raise PageError(f"{url}: neither #{table_id} nor an 'empty' sentence")
        return shown
    for table, page_arg, fragment in tables:
        read_pages(http, url, table, page_arg, fragment, shown)
    return shown


def read_pages(
    http: requests.Session, url: str, table: Node, page_arg: str, fragment: str, shown: ShownSection
) -> None:
    body = table.find("tbody")
    page = 1
    while True:
        shown.pages += 1
        more = None
        for tr in body.find_all("tr") if body else []:
            if "more-rows" in tr.classes:
                more = tr
                continue
            if tr.attrs.get("id", "").startswith("row-"):
                cells = tr.find_all("td")
                shown.rows.append(ShownRow(tr.attrs["id"][4:], provenance(cells[-1]) if cells else [], tr.text()))
        if more is None:
            return
        page += 1
        if page > MAX_PAGES:
            raise PageError(f"{url}: more than {MAX_PAGES} pages")
        params = {page_arg: page, "fragment": fragment}
        r = http.get(url, params=params, headers={"HX-Request": "true"}, timeout=120)
        if r.status_code != 200:
            raise PageError(f"GET {r.url}: HTTP {r.status_code}: {r.text[:500]}")
        body = parse(r.text)


def record_body(doc: Node) -> Node:
    body = doc.find("div", cls="record-body")
    if body is None:
        raise PageError("not a record page (no div.record-body)")
    return body


def read_reports(http: requests.Session, base: str) -> ShownSection:
    doc = get_page(http, f"{base}/results", all="reports")
    table = doc.find("table", id="table-reports")
    shown = ShownSection(pages=1)
    if table is None:
        return shown
    for tr in table.find("tbody").find_all("tr"):
        cells = tr.find_all("td")
        shown.rows.append(ShownRow(None, provenance(cells[-1]), tr.text()))
    if doc.find("p", id="count-reports") is not None:
        raise PageError("the reports list is still shortened with ?all=reports")
    return shown


def read_documents(http: requests.Session, base: str) -> ShownSection:
    """One row per distinct document row id; its organisations are the lists it appears in (with repeats)."""
    doc = get_page(http, f"{base}/documents", all="documents")
    orgs_of: dict[str, list[str]] = {}
    heading = None
    container = record_body(doc)
    for node in container.elements():
        if node.tag == "h3":
            heading = node.text()
        elif node.tag == "ul" and "documents" in node.classes:
            for li in node.find_all("li"):
                link = li.find("a")
                match = re.search(r"/documents/([^/?#]+)$", link.attrs.get("href", "")) if link else None
                if not match:
                    raise PageError(f"a document item without a link to its row: {li.text()[:200]}")
                orgs_of.setdefault(match.group(1), []).append(heading)
        elif "list-count" in node.classes:
            raise PageError(f"the documents list is still shortened with ?all=documents: {node.text()}")
    return ShownSection([ShownRow(rid, orgs) for rid, orgs in orgs_of.items()], pages=1)


def read_care(http: requests.Session, base: str) -> dict[str, ShownSection]:
    doc = get_page(http, f"{base}/care", all="care-plans")
    out = {name: ShownSection(pages=1) for name in (*CARE_LISTS, "contacts")}
    headings = {v: k for k, v in CARE_LISTS.items()} | {"Key contacts": "contacts"}
    current = None
    container = record_body(doc)
    for node in container.elements():
        if node.tag == "h3":
            title = node.text()
            current = next((name for h, name in headings.items() if title.startswith(h)), None)
        elif current and node.tag == "ul" and "card-list" in node.classes:
            for li in node.elements():
                if li.tag == "li":
                    out[current].rows.append(ShownRow(None, provenance(li), li.text()))
        elif current and "list-count" in node.classes:
            raise PageError(f"the {current} list is still shortened: {node.text()}")
    return out


def read_sources(http: requests.Session, base: str) -> dict[str, str]:
    """Organisation name → state (loaded, partial, not-found, failed, waiting) from the record's banner."""
    doc = get_page(http, f"{base}/")
    out = {}
    for li in doc.find_all("li", cls="source"):
        state = next((c.removeprefix("source--") for c in li.classes if c.startswith("source--")), "?")
        name = li.find("span", cls="source__name")
        out[name.text() if name else li.text()] = state
    return out


def read_record(http: requests.Session, viewer_url: str, ctx_id: str) -> dict[str, ShownSection]:
    """Every section the viewer shows for one launch, read in full."""
    base = f"{viewer_url}/r/{ctx_id}"
    out = {name: read_table(http, f"{base}/{name}", f"table-{name}") for name in TABLE_SECTIONS}
    out["encounters"] = read_table(http, f"{base}/encounters", "table-encounters")
    out["results"] = read_table(http, f"{base}/results", "table-results")
    out["reports"] = read_reports(http, base)
    out["documents"] = read_documents(http, base)
    out.update(read_care(http, base))
    return out
