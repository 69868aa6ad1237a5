"""A hostile organisation in a real launch: the sandbox (four organisations) and a viewer whose configuration
adds a fifth ``[[source]]``, the in-process hostile FHIR server (tests/hostile/server.py, Backend Services
with its own token endpoint). For every way it misbehaves: the other organisations' records are intact, no
token goes where it should not (the hostile server only ever sees its own; the other host sees nothing at
all), the launch keeps to the source's deadline and to a memory bound, and the hostile source is shown as
partly loaded or not shown, in plain words.
"""

from __future__ import annotations

import re
import threading
import time
import tracemalloc

import pytest
import requests

from app import create_app
from app.config import load_config
from app.record.catalogue import CATALOGUE
from app.services import services
from core.http import same_origin
from sandbox import create_sandbox_app
from sandbox.serve import SANDBOX_CONFIG
from tests.conftest import LoopbackCookieJar, _bind
from tests.conftest import test_env as sandbox_env
from tests.hostile.server import TOKEN, Hostile, Recorder

MARGARET = "9991000372"  # dr-patel's patient: records at all four sandbox organisations
EDNA = "9991002227"  # dr-evans (Northgate Hospitals, RX9) has no relationship: the reason form
HOSTILE = "Eastgate Independent Hospital"
DEADLINE = 2.0  # the hostile source's timeout
MEMORY_BOUND = 150 * 1024 * 1024  # tracemalloc peak of one whole launch (viewer, sandbox and hostile server)
OTHERS = (
    ("Riverside Medical Practice", "Y01001"),
    ("Northgate Hospitals NHS Foundation Trust", "RX9"),
    ("Northgate Community and Mental Health NHS Trust", "RY8"),
    ("Northgate City Council Social Care", "L90001"),
)
LIMITS = """
[limits]
page_mb = 2
resources_per_type = 2000
resources_per_patient = 5000
launch_mb = 40
cache_mb = 64
"""


class Pair:
    def __init__(self, sandbox_url, viewer_url, viewer_app, hostile, recorder):
        self.sandbox_url, self.viewer_url, self.viewer_app = sandbox_url, viewer_url, viewer_app
        self.hostile, self.recorder = hostile, recorder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    recorder = Recorder()
    hostile = Hostile(recorder)
    sandbox_srv, viewer_srv = _bind(), _bind()
    env = sandbox_env(tmp, sandbox_srv.server_port, viewer_srv.server_port)
    text = SANDBOX_CONFIG.read_text(encoding="utf-8") + (
        f"""
[[source]]
id = "eastgate"
name = "{HOSTILE}"
ods_code = "NT401"
kind = "acute"
base_url = "{hostile.base}"
auth = "backend_services"
client_id = "scr-viewer-backend"
token_url = "{hostile.url}/token"
timeout = {DEADLINE}
"""
        + LIMITS
    )
    path = tmp / "scr.toml"
    path.write_text(text, encoding="utf-8")
    viewer_app = create_app(load_config(path, env=env))  # generates the viewer's keys the sandbox reads
    sandbox_srv.app = create_sandbox_app(load_config(SANDBOX_CONFIG, env=env))
    viewer_srv.app = viewer_app
    for server in (sandbox_srv, viewer_srv):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Pair(env["SANDBOX_URL"], env["VIEWER_URL"], viewer_app, hostile, recorder)
    for server in (sandbox_srv, viewer_srv):
        server.shutdown()
    hostile.close()
    recorder.close()


@pytest.fixture
def http():
    session = requests.Session()
    session.cookies = LoopbackCookieJar()
    yield session
    session.close()


@pytest.fixture
def hostile(pair):
    pair.hostile.mode = "ok"
    pair.hostile.seen.clear()
    pair.recorder.seen.clear()
    yield pair.hostile
    pair.hostile.mode = "ok"


def open_record(pair, http, user="dr-patel", nhs=MARGARET):
    """Launch, then poll progress as htmx would until every organisation has answered; the final page."""
    resp = http.get(f"{pair.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs}, timeout=60)
    assert resp.status_code == 200, resp.text[:2000]
    if "/access/reason" in resp.url:
        return resp, resp.text
    ctx = re.search(r"/r/([^/]+)/", resp.url).group(1)
    started = time.monotonic()
    while time.monotonic() - started < 20:
        progress = http.get(f"{pair.viewer_url}/r/{ctx}/progress", headers={"HX-Request": "true"}, timeout=30)
        if progress.headers.get("HX-Refresh") == "true":
            return resp, http.get(resp.url, timeout=30).text
        time.sleep(0.2)
    raise AssertionError("the record never completed")


def hostile_result(pair, url: str):
    ctx = re.search(r"/r/([^/]+)/", url).group(1)
    return services(pair.viewer_app).record._cache[ctx].job.results["eastgate"]


def state_of(page: str, name: str) -> str:
    match = re.search(
        rf'<span class="source__name">{re.escape(name)}</span> \([A-Z0-9]+\):\s*<strong>([^<]+)</strong>', page
    )
    assert match, f"{name} is not listed"
    return match.group(1)


def banners(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", b) for b in re.findall(r'<div class="banner[^"]*"[^>]*>.*?</div>', page, re.S)]


def launch_against(pair, http, hostile, mode: str):
    """One launch with the hostile source in ``mode``: the page, the hostile SourceResult, seconds, peak bytes."""
    hostile.mode = mode
    if mode.startswith("huge"):
        hostile.huge_page()  # built before measuring: the server's own 20 MB is not the viewer's
    if mode == "endless":
        hostile.endless_pages(list(CATALOGUE.patient_fields))  # likewise its own pages
    tracemalloc.start()
    try:
        started = time.monotonic()
        resp, page = open_record(pair, http)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return page, hostile_result(pair, resp.url), took, peak


# What the banner says for each mode (the hostile organisation's plain-words reason, or one of them).
NOT_FOLLOWED = "the organisation sent a link to another server, which was not followed; its list may be incomplete"
MODES = {
    "ok": None,
    "huge": "Records from Eastgate Independent Hospital may be incomplete:",
    "huge_declared": "the organisation sent more data in one answer than the viewer accepts (2 MB), so it was not read",
    "endless": "the organisation sent more than the viewer reads: its record was cut at 5,000 items in all, so ",
    "slow": "the organisation did not respond in time.",
    "stall": "the organisation did not respond in time.",
    "foreign_next": NOT_FOLLOWED,
    "lookalike_next": NOT_FOLLOWED,
    "userinfo_next": NOT_FOLLOWED,
    "backslash_next": NOT_FOLLOWED,
    "malformed": "the organisation returned data that could not be read (malformed).",
    "other_practice": None,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_hostile_organisation_leaves_the_others_intact(pair, http, hostile, mode):
    page, result, took, peak = launch_against(pair, http, hostile, mode)

    # The other organisations' records are all there.
    for name, _ in OTHERS:
        assert state_of(page, name) == "loaded", (name, banners(page))
    assert "Allergy to penicillin" in page and "Adult social care" in page

    # The hostile organisation: partly loaded or not shown, in plain words — never "loaded" when it misbehaved.
    expected = MODES[mode]
    if expected is None:
        assert state_of(page, HOSTILE) == "loaded"
    else:
        assert state_of(page, HOSTILE) in ("partly loaded", "could not be read"), banners(page)
        assert result.state in ("partial", "failed") and result.reasons
        assert any(expected in b for b in banners(page)), banners(page)

    # Tokens: the hostile server only ever saw its own; the other host was never asked anything.
    reads = [s for s in hostile.seen if s.method == "GET"]
    assert reads, "the hostile organisation was not read"
    assert {s.authorization for s in reads} == {f"Bearer {TOKEN}"}
    assert pair.recorder.seen == [], [s.path for s in pair.recorder.seen]

    # The deadline: the hostile source finished within its own, and the launch within the others'.
    assert result.finished - result.started < DEADLINE + 1.0, result.finished - result.started
    assert took < 5.0 + 4.0, f"the record took {took:.1f}s"

    # Memory: the whole launch, whatever the hostile server sent.
    assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.0f} MB in mode {mode}"


def test_huge_pages_are_not_read_past_the_limits(pair, http, hostile):
    """20 MB pages streamed with no Content-Length: reading stops at the page limit (or the source's share of
    the launch), well before the 20 MB; nothing of them is shown."""
    page, result, _, peak = launch_against(pair, http, hostile, "huge")
    assert sum(len(v) for v in result.resources.values()) == 0
    share = 40 * 2**20 // 5  # launch_mb = 40, shared by five organisations
    assert result.bytes == 0 and services(pair.viewer_app).record._cache  # nothing kept
    reasons = " ".join(result.reasons)
    assert "more data in one answer than the viewer accepts (2 MB)" in reasons or f"({share / 2**20:.3g} MB)" in reasons
    assert peak < MEMORY_BOUND


def test_endless_lists_are_cut_and_what_was_read_is_shown(pair, http, hostile):
    page, result, _, _ = launch_against(pair, http, hostile, "endless")
    assert result.kept == 5000 and all(len(v) <= 2000 for v in result.resources.values())
    assert sum(len(v) for v in result.resources.values()) == result.kept  # every item counted is kept
    assert result.resources["Observation"], "the first lists read were not kept"
    ctx = re.search(r'/r/([^/"]+)/', page).group(1)
    results = http.get(f"{pair.viewer_url}/r/{ctx}/results", timeout=30).text
    assert "Hostile test" in results and HOSTILE in results  # what was read before the cut is shown
    assert state_of(page, HOSTILE) == "partly loaded"


def test_foreign_next_links_are_refused_before_any_request(pair):
    """The rule behind the *_next modes, for the links the hostile server sends (and a scheme downgrade)."""
    base = pair.hostile.base
    port, other = pair.hostile.port, pair.recorder.port
    assert same_origin(f"{base}/Observation?page=2", base)
    for link in (
        f"http://127.0.0.1:{other}/fhir/Observation?page=2",
        f"http://127.0.0.1.evil:{port}/fhir/Observation?page=2",
        f"http://127.0.0.1:{port}@127.0.0.1:{other}/fhir/Observation?page=2",
        f"http://127.0.0.1:{other}\\@127.0.0.1:{port}/fhir/Observation?page=2",
        f"https://127.0.0.1:{port}/fhir/Observation?page=2",
    ):
        assert not same_origin(link, base), link


def test_a_patient_claiming_another_practice_grants_no_relationship(pair, http, hostile):
    """Only a GP practice vouches for a registration (app/access/facts.py): a hostile organisation's Patient
    naming the user's own organisation as the GP does not spare the user the reason form."""
    hostile.mode = "other_practice"  # its Patient says: registered at RX9, dr-evans's own organisation
    resp, _ = open_record(pair, http, user="dr-evans", nhs=EDNA)
    assert "/access/reason" in resp.url, "a hostile organisation's registration claim gave access without a reason"
