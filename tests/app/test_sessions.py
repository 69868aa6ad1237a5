"""Sessions that end, over real HTTP against the sandbox: logout, idle and absolute limits, another user's
launch in the same browser, and the sandbox EHR's sign-out (front-channel logout). Each end is audited."""

from __future__ import annotations

import html
import re
from dataclasses import replace
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

from app import create_app
from app.config import ConfigError, SessionSettings, load_config
from app.services import services
from sandbox.serve import SANDBOX_CONFIG

MARGARET = "9991000372"  # at gp, hospital, community, council
ARTHUR = "9991003339"  # at gp and hospital
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def launch(http, sandbox, user="dr-patel", nhs=MARGARET):
    """The whole EHR launch, following every redirect as a browser would; the record page's URL."""
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs})
    assert resp.status_code in (200, 403), resp.text
    assert "/r/" in resp.url, resp.url
    return resp


def ctx_id(url: str) -> str:
    return re.search(r"/r/([^/]+)/", url).group(1)


def csrf_of(page: str) -> str:
    return CSRF.search(page).group(1)


def store(sandbox):
    return sandbox.viewer_app.extensions["launch"].store


def sid(http) -> str:
    return http.cookies.get("scr_sid", domain="127.0.0.1")


def time_travel(sandbox, http, *, idle: float = 0, age: float = 0) -> None:
    """Move the stored session into the past: unused for ``idle`` seconds, begun ``age`` seconds earlier."""
    key = f"session:{sid(http)}"
    stored = store(sandbox).get(key)
    stored["seen"] -= idle
    stored["created"] -= age
    store(sandbox).set(key, stored, ttl=3600)


def ends(sandbox, since: int = 0) -> list[dict]:
    """session-end AuditEvents recorded after sequence number ``since``: their details by name."""
    found = []
    for e in services(sandbox.viewer_app).audit_store.search(limit=200):
        if e.seq > since and e.event["subtype"][-1]["code"] == "session-end":
            details = {d["type"]: d["valueString"] for d in e.event["entity"][-1]["detail"]}
            found.append({**details, "who": e.event["agent"][0]["who"], "subtype": e.event["subtype"][0]})
    return found


def last_seq(sandbox) -> int:
    head = services(sandbox.viewer_app).audit_store.head()
    return head[0] if head else 0


def gone(sandbox, ctx: str) -> bool:
    return store(sandbox).get(f"ctx:{ctx}") is None and store(sandbox).get(f"tok:{ctx}") is None


# ---- logout -----------------------------------------------------------------------------------------------


def test_every_page_has_a_log_out_button_and_get_asks_to_confirm(http, sandbox):
    page = launch(http, sandbox)
    assert 'id="logout"' in page.text and 'action="/logout"' in page.text and csrf_of(page.text)
    confirm = http.get(f"{sandbox.viewer_url}/logout")
    assert confirm.status_code == 200
    assert 'id="logout-form"' in confirm.text and 'method="post"' in confirm.text and csrf_of(confirm.text)
    assert http.get(page.url).status_code == page.status_code  # asking ended nothing


def test_log_out_without_the_form_token_is_refused_and_ends_nothing(http, sandbox):
    page = launch(http, sandbox)
    since = last_seq(sandbox)
    assert http.post(f"{sandbox.viewer_url}/logout").status_code == 403
    assert http.post(f"{sandbox.viewer_url}/logout", data={"csrf": "forged"}).status_code == 403
    assert http.get(page.url).status_code == page.status_code
    assert not gone(sandbox, ctx_id(page.url)) and ends(sandbox, since) == []


def test_log_out_ends_access_to_every_context_of_the_session(http, sandbox):
    first = launch(http, sandbox, nhs=MARGARET)
    second = launch(http, sandbox, nhs=ARTHUR)
    since = last_seq(sandbox)
    resp = http.post(f"{sandbox.viewer_url}/logout", data={"csrf": csrf_of(second.text)}, allow_redirects=False)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/session/ended?reason=logout")
    ended = http.get(urljoin(sandbox.viewer_url, resp.headers["Location"]))
    assert ended.status_code == 200 and "You logged out" in ended.text and "Shared Care Record" in ended.text
    assert 'id="logout"' not in ended.text
    for page in (first, second):
        again = http.get(page.url)
        assert again.status_code == 401 and "Margaret" not in again.text and "Arthur" not in again.text
        assert gone(sandbox, ctx_id(page.url))  # the context and its tokens left the store
    (event,) = ends(sandbox, since)
    assert event["reason"] == "logout" and event["subtype"]["code"] == "110123"
    assert set(event["launch-contexts-ended"].split()) == {ctx_id(first.url), ctx_id(second.url)}
    assert event["who"]["display"] == "Dr Anita Patel"


def test_log_out_with_nothing_open_just_says_so(http, sandbox):
    assert "You are not signed in" in http.get(f"{sandbox.viewer_url}/logout").text
    resp = http.post(f"{sandbox.viewer_url}/logout", allow_redirects=False)
    assert resp.status_code == 303 and "/session/ended" in resp.headers["Location"]


# ---- idle and absolute limits --------------------------------------------------------------------------


def test_an_idle_session_ends_and_the_record_says_so(http, sandbox):
    page = launch(http, sandbox)
    time_travel(sandbox, http, idle=14 * 60)
    assert http.get(page.url).status_code == page.status_code  # 14 minutes: still in use, and refreshed
    time_travel(sandbox, http, idle=15 * 60 + 1)
    since = last_seq(sandbox)
    resp = http.get(page.url)
    assert resp.status_code == 401
    assert "Your Shared Care Record session has ended" in resp.text
    assert "not used for 15 minutes" in resp.text and "toolbar" in resp.text
    assert "Margaret" not in resp.text
    assert gone(sandbox, ctx_id(page.url))
    (event,) = ends(sandbox, since)
    assert event["reason"] == "idle" and event["launch-context"] == ctx_id(page.url)
    assert resp.headers["X-Request-Id"] == event["request-id"]
    assert http.get(page.url).status_code == 401 and ends(sandbox, since) == [event]  # recorded once


def test_an_htmx_request_after_the_timeout_sends_the_whole_page_to_the_ended_message(http, sandbox):
    page = launch(http, sandbox)
    time_travel(sandbox, http, idle=16 * 60)
    resp = http.get(f"{page.url}progress", headers={"HX-Request": "true"})
    assert resp.status_code == 401
    assert resp.headers["HX-Redirect"] == "/session/ended?reason=idle"
    assert "ended because it was not used" in http.get(urljoin(page.url, resp.headers["HX-Redirect"])).text


def test_an_old_tabs_htmx_request_after_a_log_out_elsewhere_shows_the_ended_page(http, sandbox):
    page = launch(http, sandbox)
    http.post(f"{sandbox.viewer_url}/logout", data={"csrf": csrf_of(page.text)})
    resp = http.get(f"{page.url}progress", headers={"HX-Request": "true"})
    assert resp.status_code == 401 and resp.headers["HX-Redirect"] == "/session/ended"


def test_the_absolute_lifetime_ends_a_busy_session(http, sandbox):
    page = launch(http, sandbox)
    time_travel(sandbox, http, age=8 * 3600 + 1)  # used a moment ago, but begun more than 8 hours ago
    since = last_seq(sandbox)
    resp = http.get(page.url)
    assert resp.status_code == 401 and "at most 8 hours" in resp.text
    assert [e["reason"] for e in ends(sandbox, since)] == ["absolute"]


def test_a_launch_after_the_timeout_records_the_end_and_starts_afresh(http, sandbox):
    old = launch(http, sandbox)
    time_travel(sandbox, http, idle=20 * 60)
    since = last_seq(sandbox)
    new = launch(http, sandbox, nhs=ARTHUR)
    assert "Arthur" in new.text
    assert http.get(old.url).status_code == 401
    assert [e["reason"] for e in ends(sandbox, since)] == ["idle"]


# ---- another user in the same browser -----------------------------------------------------------------


def test_a_different_users_launch_ends_every_earlier_context_of_the_previous_user(http, sandbox):
    patel_one = launch(http, sandbox, user="dr-patel", nhs=MARGARET)
    patel_two = launch(http, sandbox, user="dr-patel", nhs=ARTHUR)
    before = sid(http)
    since = last_seq(sandbox)
    morgan = launch(http, sandbox, user="dr-morgan", nhs=MARGARET)
    assert sid(http) != before  # a new session id
    assert http.get(morgan.url).status_code == morgan.status_code  # the new user's own launch works
    for page in (patel_one, patel_two):
        stale = http.get(page.url)
        assert stale.status_code == 401 and "Arthur" not in stale.text
        assert gone(sandbox, ctx_id(page.url))
    (event,) = ends(sandbox, since)
    assert event["reason"] == "replaced"
    assert event["who"]["display"] == "Dr Anita Patel"
    assert set(event["launch-contexts-ended"].split()) == {ctx_id(patel_one.url), ctx_id(patel_two.url)}
    assert event["replaced-by"] and event["replaced-by"] != event["who"].get("identifier", {}).get("value")


def test_the_same_user_launching_again_keeps_their_earlier_tabs(http, sandbox):
    first = launch(http, sandbox, nhs=MARGARET)
    since = last_seq(sandbox)
    launch(http, sandbox, nhs=ARTHUR)
    assert http.get(first.url).status_code == first.status_code
    assert ends(sandbox, since) == []


# ---- the sandbox EHR's sign-out (OpenID Connect Front-Channel Logout) ----------------------------------


def test_signing_out_of_the_sandbox_ehr_ends_the_viewer_session(http, sandbox):
    page = launch(http, sandbox)
    ehr_home = http.get(f"{sandbox.sandbox_url}/")
    since = last_seq(sandbox)
    signed_out = http.post(f"{sandbox.sandbox_url}/ehr/sign-out", data={"csrf": csrf_of(ehr_home.text)})
    assert signed_out.status_code == 200 and "You have signed out" in signed_out.text
    (frame_url,) = [
        html.unescape(u) for u in re.findall(r'class="front-channel-logout" src="([^"]+)"', signed_out.text)
    ]
    assert frame_url.startswith(f"{sandbox.viewer_url}/logout/front-channel?")
    assert parse_qs(urlsplit(frame_url).query) == {"iss": [f"{sandbox.sandbox_url}/auth"]}
    frame = http.get(frame_url)  # the browser loads the iframe, with the viewer's cookie
    assert frame.status_code == 200 and "session in this browser has ended" in frame.text
    assert http.get(page.url).status_code == 401
    assert gone(sandbox, ctx_id(page.url))
    assert [e["reason"] for e in ends(sandbox, since)] == ["front-channel"]
    assert ends(sandbox, since)[0]["logout-iss"] == f"{sandbox.sandbox_url}/auth"


def test_a_front_channel_logout_for_another_issuer_ends_nothing(http, sandbox):
    page = launch(http, sandbox)
    resp = http.get(f"{sandbox.viewer_url}/logout/front-channel", params={"iss": "https://other.example/auth"})
    assert resp.status_code == 200 and "no matching" in resp.text
    assert http.get(page.url).status_code == page.status_code


def test_a_front_channel_logout_with_a_sid_the_session_never_had_ends_nothing(http, sandbox):
    page = launch(http, sandbox)
    params = {"iss": f"{sandbox.sandbox_url}/auth", "sid": "not-this-session"}
    assert "no matching" in http.get(f"{sandbox.viewer_url}/logout/front-channel", params=params).text
    assert http.get(page.url).status_code == page.status_code


def test_front_channel_logout_can_be_switched_off(sandbox):
    config = replace(sandbox.config, session=SessionSettings(front_channel_logout=False))
    client = create_app(config).test_client()
    assert client.get("/logout/front-channel").status_code == 404


# ---- configuration ---------------------------------------------------------------------------------------


def write_config(tmp_path, session_table: str):
    path = tmp_path / "scr.toml"
    path.write_text(SANDBOX_CONFIG.read_text(encoding="utf-8") + "\n[session]\n" + session_table, encoding="utf-8")
    return path


def test_the_session_limits_default_to_a_shared_workstation(tmp_path):
    config = load_config(SANDBOX_CONFIG, env={})
    assert (config.session.idle_seconds, config.session.absolute_seconds) == (15 * 60, 8 * 3600)
    assert config.session.front_channel_logout is True


def test_the_session_limits_are_configurable_and_checked(tmp_path):
    config = load_config(write_config(tmp_path, "idle_minutes = 5\nabsolute_hours = 2\n"), env={})
    assert (config.session.idle_seconds, config.session.absolute_seconds) == (300, 7200)
    with pytest.raises(ConfigError, match=r"\[session\] absolute_hours"):
        load_config(write_config(tmp_path, "absolute_hours = 24\n"), env={})
    with pytest.raises(ConfigError, match="idle_minutes must not be longer"):
        load_config(write_config(tmp_path, "idle_minutes = 120\nabsolute_hours = 1\n"), env={})


OLIVER = "9991000747"  # objected to sharing: dr-patel needs break-glass


def test_logging_out_ends_emergency_access_and_records_its_end(http, sandbox):
    resp = launch(http, sandbox, nhs=OLIVER)
    assert "/access/break-glass" in resp.url
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', resp.text))
    why = "Collapsed in surgery, needs his medication history now"
    opened = http.post(resp.url.split("?")[0], data={**fields, "justification": why, "confirm": "yes"})
    assert opened.status_code == 200 and 'id="break-glass-banner"' in opened.text, re.sub(r"\s+", " ", opened.text)[
        -3000:
    ]
    since = last_seq(sandbox)
    out = http.post(f"{sandbox.viewer_url}/logout", data={"csrf": csrf_of(opened.text)}, allow_redirects=False)
    assert out.status_code == 303
    kinds = {
        e.event["subtype"][-1]["code"]: e.event
        for e in services(sandbox.viewer_app).audit_store.search(patient_nhs=OLIVER, limit=50)
        if e.seq > since
    }
    assert "break-glass-end" in kinds, sorted(kinds)
    assert "ended with the session (logout)" in kinds["break-glass-end"]["outcomeDesc"] or any(
        "ended with the session (logout)" in (d.get("valueString") or "")
        for ent in kinds["break-glass-end"].get("entity", [])
        for d in ent.get("detail", [])
    )
    # The override itself is gone: the same user relaunching must break the glass again.
    again = launch(http, sandbox, nhs=OLIVER)
    assert "/access/break-glass" in again.url
