"""Three organisations on sekmet-fhir, Synthea patients split across them, the viewer launched from the sandbox.

Issue item 6: three sekmet servers (a GP practice, a hospital, a community trust), each its own process with
SMART Backend Services (private_key_jwt) and the viewer's JWKS registered; Synthea patients split across them
with deliberate cross-organisation duplicates (``synthea_split.py``); the viewer launched from the sandbox's
generic-SMART GP bound to the GP's sekmet server; every section's rows and per-organisation attribution
compared with counts worked out independently from the raw bundles (``expected.py``). No count may differ.

The viewer is the INSTALLED one: the product wheel in a fresh venv without the sandbox package
(``tests/installed.py``, shared with ``tests/test_packaging.py``), started as ``python -m app`` from a
deployment folder of its own whose one input is the viewer TOML (``SCR_CONFIG``, a clean environment
otherwise). The sandbox runs in this process from the repository. Everything about the viewer is read over
HTTP; a failing test shows the viewer's log (``tests/interop/conftest.py``), and it must stop on SIGTERM
with exit code 0. The clinician, ``dr-haddad``, has her role on her PractitionerRole, and the viewer's TOML
names no per-EHR default role, so the role shown on the record page came from PractitionerRole (or the
register).

The steps before the launch (servers, loading, expectations) are tests of their own, so a failure says where.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.conftest import ROOT, LoopbackCookieJar
from tests.installed import InstalledViewer, start_installed_viewer

from .conftest import NHS_NUMBER_SYSTEM, LoadedOrganisations, SekmetOrganisations
from .expected import SECTION_TYPES, expect, groups
from .synthea_split import CHOSEN, GP, ORG_KEYS, PatientSplit, nhs_numbers_of, synthea_dir
from .viewer_rows import READ_SECTIONS, get_page, parse, read_record, read_sources

FHIR_JSON = "application/fhir+json"
TIMEOUT = 60
USER = "dr-haddad"  # the sandbox GP's clinician: R8000 with B0360/B0370 on her PractitionerRole.code
RECORD_WAIT = 240  # seconds for the viewer to read the largest patient from three servers on 2 cores


def viewer_token(org) -> requests.Session:
    s = requests.Session()
    s.headers.update({"Accept": FHIR_JSON, "Authorization": f"Bearer {org.viewer_token()}"})
    return s


def total(session: requests.Session, url: str, **params) -> int:
    r = session.get(url, params={**params, "_count": "1"}, timeout=TIMEOUT)
    assert r.status_code == 200, f"GET {r.url}: {r.status_code} {r.text[:500]}"
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle["total"]


def names(servers: SekmetOrganisations) -> dict[str, str]:
    return {o.key: o.name for o in servers}


def expectations(split: PatientSplit, servers: SekmetOrganisations):
    return expect({org: split.held[org] for org in ORG_KEYS}, split.patient_ids, names(servers))


# ---------------------------------------------------------------- the three servers


def test_three_separate_servers_with_backend_services(sekmet_organisations: SekmetOrganisations):
    orgs = list(sekmet_organisations)
    assert [o.key for o in orgs] == list(ORG_KEYS)
    assert len({o.pid for o in orgs}) == 3 and len({o.base_url for o in orgs}) == 3
    for org in orgs:
        config = requests.get(f"{org.base_url}/.well-known/smart-configuration", timeout=TIMEOUT).json()
        assert config["token_endpoint"] == org.token_url
        assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    # A token is good only at the server that issued it: three authorisation servers, not one.
    gp, hospital = sekmet_organisations[GP], sekmet_organisations[orgs[1].key]
    token = gp.viewer_token()
    r = requests.get(
        f"{hospital.base_url}/Patient",
        headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401, r.text


# ---------------------------------------------------------------- the data as loaded


def test_each_server_returns_what_was_loaded(synthea_organisations: LoadedOrganisations):
    servers = synthea_organisations.servers
    for org in servers:
        fhir = viewer_token(org)
        loaded = Counter()
        for split in synthea_organisations.splits:
            loaded.update(split.counts(org.key))
            # The person is found by NHS number, once, with the sandbox's number.
            found = fhir.get(
                f"{org.base_url}/Patient",
                params={"identifier": f"{NHS_NUMBER_SYSTEM}|{split.nhs_number}"},
                timeout=TIMEOUT,
            ).json()
            matches = [e["resource"] for e in found.get("entry", []) if e.get("search", {}).get("mode") == "match"]
            assert found["total"] == 1 and [m["id"] for m in matches] == [split.patient_ids[org.key]], found
            # And every clinical type the viewer reads, searched by patient, answers with what was loaded.
            per_patient = Counter(r["resourceType"] for r in split.clinical(org.key))
            for rtype in {t for types in SECTION_TYPES.values() for t in types}:
                got = total(fhir, f"{org.base_url}/{rtype}", patient=split.patient_ids[org.key])
                assert got == per_patient[rtype], (
                    f"{org.key} {split.name} {rtype}: total {got}, loaded {per_patient[rtype]}"
                )
        for rtype, n in sorted(loaded.items()):
            assert total(fhir, f"{org.base_url}/{rtype}") == n, f"{org.key}: {rtype}"
        fhir.close()


def test_split_puts_records_at_all_three_with_duplicates(synthea_organisations: LoadedOrganisations):
    splits = synthea_organisations.splits
    assert [s.file for s in splits] == list(CHOSEN)
    assert max(sum(len(s.clinical(o)) for o in ORG_KEYS) for s in splits) > 1500, "one large patient"
    for split in splits:
        for org in ORG_KEYS:
            assert split.clinical(org), f"{split.name}: nothing at {org}"
        copied = {d.ref for d in split.duplicates}
        assert copied, f"{split.name}: no cross-organisation duplicates"
        for d in split.duplicates:  # each duplicate is at both organisations, with the same id
            for org in (d.original, d.copy):
                assert d.ref in {f"{r['resourceType']}/{r['id']}" for r in split.clinical(org)}, (d, org)


# ---------------------------------------------------------------- the expectation, sanity-checked


def test_section_types_match_the_catalogue():
    """The hand-made copy in expected.py is still what the catalogue fetches (the catalogue is read here
    only to compare, never to compute an expectation)."""
    from app.record.catalogue import CATALOGUE

    built = {s.name: s.resource_types for s in CATALOGUE.sections if s.build is not None}
    assert built == SECTION_TYPES
    from .expected import PATIENT_FIELD

    assert {t: f for t, f in CATALOGUE.patient_fields.items() if f != "subject"} == PATIENT_FIELD


def test_expectations_add_up_to_the_raw_bundles(synthea_organisations: LoadedOrganisations):
    servers = synthea_organisations.servers
    org_names = names(servers)
    for split in synthea_organisations.splits:
        expected = expectations(split, servers)
        raw = Counter()
        for org in ORG_KEYS:
            raw.update(r["resourceType"] for r in split.clinical(org))
        for section, types in SECTION_TYPES.items():
            e = expected[section]
            resources = sum(raw[t] for t in types)
            assert e.resources == resources, (split.name, section)
            assert sum(e.mentions_by_org.values()) == resources, (split.name, section)
            assert e.rows <= resources and (e.rows > 0) == (resources > 0), (split.name, section)
            for org in ORG_KEYS:  # an organisation holding some of the section is on some rows, never more
                held = sum(1 for r in split.clinical(org) if r["resourceType"] in types)
                assert e.mentions_by_org[org_names[org]] == held, (split.name, section, org)
                assert (0 < e.rows_by_org[org_names[org]] <= min(e.rows, held)) or held == 0, (split.name, section)
            assert e.rows <= sum(e.rows_by_org.values()) <= e.rows * len(ORG_KEYS), (split.name, section)
            assert e.shared_rows <= e.rows, (split.name, section)
        # Every exact or same-day copy is one fact with its original; every decoy stays apart.
        by_ref = {}
        for org in ORG_KEYS:
            for r in split.clinical(org):
                by_ref.setdefault(f"{r['resourceType']}/{r['id']}", []).append((org, r))
        section_of = {t: s for s, types in SECTION_TYPES.items() for t in types}
        for d in split.duplicates:
            pair = by_ref[d.ref]
            assert len(pair) == 2, d
            section = section_of.get(d.ref.split("/")[0])
            if section is None:
                continue
            together = len(groups(section, pair)) == 1
            if d.how.startswith("decoy") or d.how.endswith("no identifier"):
                assert not together, f"{split.name}: {d} was merged"
            else:
                assert together, f"{split.name}: {d} was not merged"
    # The comparison is not vacuous: shared rows in most sections, for some patient.
    shared = Counter()
    for split in synthea_organisations.splits:
        for section, e in expectations(split, servers).items():
            shared[section] += e.shared_rows
    for section in ("problems", "medications", "allergies", "encounters", "results", "immunisations", "procedures"):
        assert shared[section] > 0, f"no shared rows in {section}: {dict(shared)}"
    assert shared["documents"] > 0 and shared["reports"] > 0, dict(shared)


def test_the_expectation_rule_on_hand_made_cases():
    subject = {"reference": "Patient/p"}

    def condition(rid, onset, abatement=None, code="44054006"):
        r = {
            "resourceType": "Condition",
            "id": rid,
            "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            "onsetDateTime": onset,
        }
        if abatement:
            r["abatementDateTime"] = abatement
        return r

    held = {
        "a": [condition("1", "2020-01-01", "2020-03-01"), condition("4", "2021-06-01", "2021-07-01")],
        "b": [condition("2", "2020-02-15", "2020-06-01")],
        "c": [condition("3", "2020-05-30T10:00:00Z", "2020-08-01")],  # chains 1–2–3
    }
    e = expect(held, {"a": "p", "b": "p", "c": "p"}, {"a": "A", "b": "B", "c": "C"})["problems"]
    assert e.rows == 2 and e.shared_rows == 1
    assert e.rows_by_org == Counter({"A": 2, "B": 1, "C": 1}) and e.mentions_by_org == Counter(A=2, B=1, C=1)


# ---------------------------------------------------------------- the viewer, launched from the sandbox


@dataclass
class Running:
    sandbox_url: str
    viewer_url: str
    sandbox_app: Flask  # the sandbox runs in this process, from the repository
    viewer: InstalledViewer  # the viewer runs from the installed wheel, in a process of its own
    viewer_config: Path


class _NoDelay(WSGIRequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"


def _bind():
    return make_server("127.0.0.1", 0, Flask("placeholder"), threaded=True, request_handler=_NoDelay)


def sandbox_toml(text: str) -> str:
    """The sandbox's own configuration with its GP practice in generic SMART mode."""
    head = re.search(r'^\[\[sandbox\.organisation\]\]\s*\nid = "gp"\n', text, re.M)
    assert head, 'sandbox/config.toml has no [[sandbox.organisation]] id = "gp"'
    tail = re.compile(r"^\[", re.M).search(text, head.end())
    end = tail.start() if tail else len(text)
    block = text[head.start() : end]
    if re.search(r"^smart_mode\s*=.*$", block, re.M):
        block = re.sub(r"^smart_mode\s*=.*$", 'smart_mode = "generic"', block, count=1, flags=re.M)
    else:
        block = block.replace('id = "gp"\n', 'id = "gp"\nsmart_mode = "generic"\n', 1)
    return text[: head.start()] + block + text[end:]


def viewer_toml(servers: SekmetOrganisations, sandbox_url: str, viewer_url: str) -> str:
    """What a deployment writes, and all the installed viewer is given: the sandbox GP's EHR (generic SMART)
    bound to the GP's sekmet server, which is read with Backend Services, and the three sekmet servers as the
    organisations. Roles come from PractitionerRole or the local register only (no per-EHR default), so a
    role shown on the record page came from one of them. Relative paths are relative to this file."""
    q = json.dumps
    lines = [
        "[viewer]",
        f"base_url = {q(viewer_url)}",
        'keys_file = "keys/viewer.jwks.json"',
        "generate_dev_keys = false",
        "",
        "[[ehr]]",
        'name = "Riverside Medical Practice clinical system (sandbox, generic SMART)"',
        f"issuer = {q(sandbox_url + '/fhir/gp')}",
        'client_id = "scr-viewer"',
        'client_auth = "private_key_jwt"',
        'signing_alg = "RS384"',
        f"source = {q(GP)}",
        'read_with = "backend_services"',
        'identity_sources = ["practitioner_role", "register"]',
        "",
    ]
    for org in servers:
        lines += [
            "[[source]]",
            f"id = {q(org.key)}",
            f"name = {q(org.name)}",
            f"ods_code = {q(org.spec.ods_code)}",
            f"kind = {q(org.spec.kind)}",
            f"base_url = {q(org.base_url)}",
            'auth = "backend_services"',
            f"client_id = {q(servers.client_id)}",
            'scopes = "system/*.rs"',
            "timeout = 90.0",
            "",
        ]
    lines += ["[audit]", 'sqlite_path = "var/audit.sqlite3"', ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def three_org_viewer(synthea_organisations: LoadedOrganisations, installed_python: Path, tmp_path_factory) -> Running:
    """The sandbox in this process (GP in generic SMART mode) and the viewer installed from the wheel, started
    as ``python -m app`` from a folder of its own with one TOML file (three sekmet sources), on free ports."""
    from app.config import load_config
    from sandbox import create_sandbox_app

    servers = synthea_organisations.servers
    workdir = tmp_path_factory.mktemp("three-orgs")
    site = workdir / "viewer-site"  # the deployment's folder: viewer.toml, keys/, var/audit.sqlite3, the log
    (site / "keys").mkdir(parents=True)
    shutil.copy2(
        servers.keys_file, site / "keys" / "viewer.jwks.json"
    )  # private keys: sekmet and the sandbox hold their JWKS
    sandbox_srv = _bind()
    sandbox_url = f"http://127.0.0.1:{sandbox_srv.server_port}"
    try:  # the viewer reads nothing from the sandbox until a launch, so it is started first
        viewer = start_installed_viewer(installed_python, site, lambda url: viewer_toml(servers, sandbox_url, url))
    except BaseException:
        sandbox_srv.server_close()
        raise
    env = {
        "SANDBOX_URL": sandbox_url,
        "VIEWER_URL": viewer.url,
        "SCR_KEYS_FILE": str(servers.keys_file),  # the sandbox registers the same keys for scr-viewer
        "SCR_SYNTHEA_DIR": str(synthea_dir()),
        "SCR_AUDIT_SQLITE": str(workdir / "sandbox-audit.sqlite3"),
    }
    sandbox_file = workdir / "sandbox.toml"
    sandbox_file.write_text(sandbox_toml((ROOT / "sandbox" / "config.toml").read_text()))
    try:
        sandbox_srv.app = create_sandbox_app(load_config(sandbox_file, env=env))
    except BaseException:
        sandbox_srv.server_close()
        viewer.stop()
        raise
    thread = threading.Thread(target=sandbox_srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield Running(sandbox_url, viewer.url, sandbox_srv.app, viewer, viewer.config)
    finally:
        code = viewer.stop()
        sandbox_srv.shutdown()
        sandbox_srv.server_close()
    # The installed viewer stops cleanly on SIGTERM (its log is added to the report when this fails).
    assert code == 0, f"the installed viewer exited with {code} on SIGTERM (log: {viewer.log})"


def launch(viewer: Running, nhs_number: str) -> tuple[requests.Session, str]:
    """The sandbox EHR's scripted launch, followed like a browser; returns the session and the context id."""
    http = requests.Session()
    http.cookies = LoopbackCookieJar()
    r = http.get(
        f"{viewer.sandbox_url}/ehr/launch",
        params={"user": USER, "patient": nhs_number, "launch_url": f"{viewer.viewer_url}/launch"},
        timeout=RECORD_WAIT,
    )
    assert r.status_code == 200, f"launch of {nhs_number} ended with HTTP {r.status_code} at {r.url}: {r.text[:1500]}"
    match = re.match(rf"{re.escape(viewer.viewer_url)}/r/([^/]+)/", r.url)
    assert match, f"launch of {nhs_number} ended at {r.url}: {r.text[:1500]}"
    ctx = match.group(1)
    if "/access/reason" in r.url:  # not expected (the GP is the registered practice), but not what is tested
        form = parse(r.text).find("form")
        fields = {
            i.attrs["name"]: i.attrs.get("value", "") for i in form.find_all("input") if i.attrs.get("type") == "hidden"
        }
        r = http.post(r.url, data={**fields, "reason": "TREAT"}, timeout=RECORD_WAIT)
        assert r.status_code == 200 and f"/r/{ctx}/" in r.url, r.url
    deadline = time.monotonic() + RECORD_WAIT
    while True:  # until every organisation has answered (the progress fragment tells htmx to reload)
        p = http.get(f"{viewer.viewer_url}/r/{ctx}/progress", timeout=TIMEOUT)
        assert p.status_code == 200, p.text[:500]
        if p.headers.get("HX-Refresh") == "true":
            return http, ctx
        assert time.monotonic() < deadline, f"the record of {nhs_number} was not gathered in {RECORD_WAIT} s"
        time.sleep(0.5)


def test_the_sandbox_runs_the_gp_generic_with_the_loaded_nhs_numbers(
    three_org_viewer: Running, synthea_organisations: LoadedOrganisations
):
    state = three_org_viewer.sandbox_app.extensions["sandbox_state"]
    assert state.is_generic("gp") and not state.is_generic("hospital")
    served = nhs_numbers_of(state.dataset)
    for split in synthea_organisations.splits:
        assert served.get(split.person_id) == split.nhs_number, split.name


@pytest.mark.parametrize("file", CHOSEN, ids=lambda f: Path(f).stem.split("_")[0])
def test_every_section_shows_the_expected_rows_and_organisations(
    three_org_viewer: Running, synthea_organisations: LoadedOrganisations, file: str
):
    servers = synthea_organisations.servers
    split = next(s for s in synthea_organisations.splits if s.file == file)
    expected = expectations(split, servers)
    started = time.monotonic()
    http, ctx = launch(three_org_viewer, split.nhs_number)
    gathered = time.monotonic() - started

    summary = get_page(http, f"{three_org_viewer.viewer_url}/r/{ctx}/")
    opened = summary.find("p", id="launched-from")
    # The clinician and her role came through; the TOML lists no per-EHR default, so the role shown came from
    # her PractitionerRole (or the local register), read by the installed viewer from the generic-SMART EHR.
    assert opened is not None and "Leila Haddad" in opened.text() and "R8000" in opened.text(), opened and opened.text()
    states = read_sources(http, f"{three_org_viewer.viewer_url}/r/{ctx}")
    # Only the three sekmet servers: the GP's record is read at its sekmet base, not at the sandbox EHR.
    assert states == {o.name: "loaded" for o in servers}, f"{split.name}: organisations {states}"
    shown = read_record(http, three_org_viewer.viewer_url, ctx)

    problems = []
    for section in READ_SECTIONS:
        got, want = shown[section].as_dict(), expected[section].as_dict()
        if got != want:
            problems.append(f"{section}: viewer {got}\n{' ' * len(section)}  expected {want}")
        if repeated := shown[section].repeated_ids():
            problems.append(f"{section}: rows shown more than once: {repeated[:5]}")
    for section in set(SECTION_TYPES) - set(READ_SECTIONS):  # not on any page: nothing to show either
        if expected[section].rows:
            problems.append(f"{section}: {expected[section].rows} rows expected but the viewer has no list for them")

    # The export names every resource behind the rows with its organisation: the same resources as loaded.
    export = http.get(f"{three_org_viewer.viewer_url}/r/{ctx}/export.json", timeout=TIMEOUT)
    assert export.status_code == 200, export.text[:500]
    exported = Counter()
    base_of = {o.base_url: o.key for o in servers}
    for entry in export.json()["entry"]:
        full_url, rtype = entry["fullUrl"], entry["resource"]["resourceType"]
        if rtype in ("Patient", "Provenance"):
            continue
        exported[(base_of[full_url.rsplit("/", 2)[0]], f"{rtype}/{entry['resource']['id']}")] += 1
    catalogue_types = {t for types in SECTION_TYPES.values() for t in types}
    loaded = Counter(
        (org, f"{r['resourceType']}/{r['id']}")
        for org in ORG_KEYS
        for r in split.clinical(org)
        if r["resourceType"] in catalogue_types
    )
    if exported != loaded:
        problems.append(
            f"export: {sum(exported.values())} resources, loaded {sum(loaded.values())}; "
            f"missing {sorted(loaded - exported)[:5]}, extra {sorted(exported - loaded)[:5]}"
        )
    read = time.monotonic() - started - gathered
    print(f"\n{split.name}: gathered in {gathered:.1f} s, pages read in {read:.1f} s")
    for section in READ_SECTIONS:
        print(f"  {section:14} {shown[section].pages:3} pages  {json.dumps(shown[section].as_dict())}")
    assert not problems, f"{split.name} ({split.nhs_number}):\n" + "\n".join(problems)


def test_a_page_that_is_not_a_record_fails_loudly():
    """The row reader refuses a page it does not understand rather than counting zero rows."""
    from .viewer_rows import PageError, read_table

    class Fake:
        def get(self, url, params=None, timeout=None, headers=None):
            r = requests.Response()
            r.status_code, r._content, r.url = 200, b"<html><body><p>Sign in</p></body></html>", url
            return r

    with pytest.raises(PageError):
        read_table(Fake(), "http://x/r/1/problems", "table-problems")
