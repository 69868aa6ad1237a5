"""Interoperability fixtures: sekmet-fhir 0.1.1, an independent FHIR R4 server, run as a real subprocess.

sekmet lives in its own venv (``make install`` creates ``.venv-sekmet``). The ``sekmet`` fixture starts one
server per test session on 127.0.0.1 with SMART Backend Services auth, registers the viewer's freshly
generated public JWKS as client ``scr-viewer-backend`` (``system/*.read``), loads one patient with
Conditions and enough Observations to page through, and stops the server (by PID) on teardown.

Loading data: under ``types: [smart]`` every /fhir request, writes included, needs a token whose scopes
allow it, and a transaction POSTed to the base URL needs create on ``*``. So a second SMART client,
``interop-loader`` (its own key, ``system/*.write``), obtains a token the ordinary way and posts the bundle.
The viewer's client stays read-only, as it would be registered at a real EHR.

``sekmet_organisations`` starts THREE servers at once (a GP practice, a hospital and a community trust), each
its own process with the same two clients registered and no data: ``tests/interop/synthea_split.py`` loads
them. The single-server ``sekmet`` fixture is unchanged.

``installed_python`` is the product wheel installed in a fresh venv (``tests/installed.py``, made once per
session and shared with ``tests/test_packaging.py``): the three organisations test runs that viewer. When a
test fails, the log of any installed viewer among its fixtures is added to the failure report.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from launch.keys import generate_keyset, public_jwks
from tests import installed

ROOT = Path(__file__).resolve().parents[2]
SEKMET_BIN = ROOT / ".venv-sekmet" / "bin" / "sekmet"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

VIEWER_CLIENT_ID = "scr-viewer-backend"
VIEWER_SCOPES = "system/*.read"
LOADER_CLIENT_ID = "interop-loader"
LOADER_SCOPES = "system/*.write"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FHIR_JSON = "application/fhir+json"

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
PATIENT_NHS_NUMBER = "9991000372"
CONDITION_COUNT = 3
OBSERVATION_COUNT = 120

START_TIMEOUT = 30.0  # seconds for GET <base>/metadata to answer
STOP_TIMEOUT = 15.0  # seconds for a graceful stop before SIGKILL
HTTP_TIMEOUT = 30.0  # per request; generous for a loaded 2-core machine
START_ATTEMPTS = 3  # a free port found by bind(0) can be taken before sekmet binds it


@dataclass(frozen=True)
class Sekmet:
    """A running sekmet server with the viewer registered as a SMART Backend Services client."""

    base_url: str  # FHIR base, http://127.0.0.1:<port>/fhir
    token_url: str  # http://127.0.0.1:<port>/auth/token (the exact `aud` for client assertions)
    keyset: KeySet  # the viewer's private keys (RS384 + ES384) whose public JWKS sekmet holds
    client_id: str  # scr-viewer-backend, scopes system/*.read
    patient_nhs_number: str  # identifier value under https://fhir.nhs.uk/Id/nhs-number
    observation_count: int  # Observations loaded for that patient
    pid: int  # the sekmet server process


# ---------------------------------------------------------------- the installed viewer


@pytest.fixture(scope="session")
def installed_python(tmp_path_factory) -> Path:
    """The python of the fresh venv with the product wheel installed (once per session)."""
    return installed.installed_python(tmp_path_factory)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test (or its fixture's teardown) shows the installed viewer's log: its output is the only
    account of what the viewer did, and ``--show-capture=no`` would hide a captured section."""
    report = yield
    if report.failed and hasattr(report.longrepr, "addsection"):
        for title, text in installed.failure_sections(item):
            report.longrepr.addsection(title, text)
    return report


# ---------------------------------------------------------------- settings and process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(workdir: Path, port: int, viewer_jwks: dict, loader_jwks: dict) -> dict:
    return {
        "host": "127.0.0.1",
        "port": port,
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "data_dir": str(workdir / "data"),
        "own_private_key_path": str(workdir / "keys" / "sekmet_private.pem"),
        "simulator": {"enabled": False},
        "server_auth": {
            "types": ["smart"],
            "smart_clients": [
                {"client_id": VIEWER_CLIENT_ID, "jwks": viewer_jwks, "scopes": VIEWER_SCOPES},
                {"client_id": LOADER_CLIENT_ID, "jwks": loader_jwks, "scopes": LOADER_SCOPES},
            ],
            "token_lifetime": 3600,
            "enforce_scopes": True,
        },
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server if pytest dies without running teardown (no stray servers)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen, base_url: str, log_path: Path) -> bool:
    """True once GET <base>/metadata answers 200; False if the process exited (e.g. port taken)."""
    deadline = time.monotonic() + START_TIMEOUT
    with requests.Session() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                r = s.get(f"{base_url}/metadata", headers={"Accept": FHIR_JSON}, timeout=5)
                if r.status_code == 200 and r.json().get("resourceType") == "CapabilityStatement":
                    return True
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            time.sleep(0.1)
    _stop(proc)
    pytest.fail(f"sekmet did not answer {base_url}/metadata within {START_TIMEOUT:.0f} s:\n{_log_tail(log_path)}")


def _spawn(workdir: Path, viewer_jwks: dict, loader_jwks: dict, attempt: int) -> tuple[subprocess.Popen, str]:
    """Start sekmet on a free port. Call from the main thread: PR_SET_PDEATHSIG fires when the *thread*
    that forked the child exits, so a server spawned from a worker thread would be killed with it."""
    # sekmet's settings honour these environment overrides; never let the caller's environment redirect it
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    env["PYTHONUNBUFFERED"] = "1"
    log_path = workdir / "sekmet.log"
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/fhir"
    settings_path = workdir / "settings.yaml"
    # JSON is YAML 1.2 (and sekmet's yaml.safe_load reads it); the project venv has no YAML library
    settings_path.write_text(json.dumps(_settings(workdir, port, viewer_jwks, loader_jwks), indent=2))
    with log_path.open("ab") as log:
        log.write(f"--- attempt {attempt}, port {port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [str(SEKMET_BIN), "serve", "-c", str(settings_path)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
    return proc, base_url


def _start(workdir: Path, viewer_jwks: dict, loader_jwks: dict) -> tuple[subprocess.Popen, str]:
    for attempt in range(1, START_ATTEMPTS + 1):
        proc, base_url = _spawn(workdir, viewer_jwks, loader_jwks, attempt)
        if _wait_ready(proc, base_url, workdir / "sekmet.log"):
            return proc, base_url
        _stop(proc)
    pytest.fail(f"sekmet exited during start-up {START_ATTEMPTS} times:\n{_log_tail(workdir / 'sekmet.log')}")


# ---------------------------------------------------------------- SMART Backend Services (loader)


def _token(token_url: str, key, client_id: str, scope: str) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "iat": now,
        "jti": secrets.token_urlsafe(24),
    }
    assertion = jwt.encode({"alg": "RS384", "typ": "JWT", "kid": key.kid}, claims, key, algorithms=["RS384"])
    r = requests.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        timeout=HTTP_TIMEOUT,
    )
    assert r.status_code == 200, f"loader token request refused: {r.status_code} {r.text}"
    return r.json()["access_token"]


# ---------------------------------------------------------------- test data


def _bundle() -> dict:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": PATIENT_NHS_NUMBER}],
        "name": [{"use": "official", "family": "Thompson", "given": ["Margaret"]}],
        "gender": "female",
        "birthDate": "1948-06-14",
    }
    subject = {"reference": patient_url}
    conditions = [
        ("44054006", "Diabetes mellitus type 2", "2009-03-02"),
        ("38341003", "Hypertensive disorder", "2011-07-19"),
        ("13645005", "Chronic obstructive lung disease", "2016-11-08"),
    ][:CONDITION_COUNT]
    entries = [{"fullUrl": patient_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}}]
    for code, display, onset in conditions:
        condition = {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "verificationStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                ]
            },
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]},
            "subject": subject,
            "onsetDateTime": onset,
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": condition,
                "request": {"method": "POST", "url": "Condition"},
            }
        )
    vitals = [  # (LOINC, display, unit, UCUM code, base value)
        ("8867-4", "Heart rate", "beats/minute", "/min", 72),
        ("8480-6", "Systolic blood pressure", "mmHg", "mm[Hg]", 138),
        ("8462-4", "Diastolic blood pressure", "mmHg", "mm[Hg]", 84),
        ("29463-7", "Body weight", "kg", "kg", 68),
    ]
    start = datetime(2020, 1, 6, 9, 30, tzinfo=UTC)
    for i in range(OBSERVATION_COUNT):
        code, display, unit, ucum, value = vitals[i % len(vitals)]
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": subject,
            "effectiveDateTime": (start + timedelta(days=7 * (i // len(vitals)))).isoformat(),
            "valueQuantity": {
                "value": value + (i % 7) - 3,
                "unit": unit,
                "system": "http://unitsofmeasure.org",
                "code": ucum,
            },
        }
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _load(base_url: str, token: str) -> None:
    bundle = _bundle()
    r = requests.post(
        base_url,
        data=json.dumps(bundle),
        headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
        timeout=120,
    )
    assert r.status_code == 200, f"loading the transaction bundle failed: {r.status_code} {r.text[:2000]}"
    response = r.json()
    assert response.get("type") == "transaction-response", response
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert len(statuses) == len(bundle["entry"]) and all(s.startswith("201") for s in statuses), statuses


# ---------------------------------------------------------------- fixture


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory) -> Sekmet:
    """sekmet-fhir on 127.0.0.1 (free port), SMART Backend Services on, test patient loaded."""
    if not SEKMET_BIN.exists():
        message = f"sekmet-fhir is not installed ({SEKMET_BIN.relative_to(ROOT)} missing): run make install"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    workdir = tmp_path_factory.mktemp("sekmet")
    keyset = generate_keyset()
    loader_key = RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, private=True, auto_kid=True)
    loader_jwks = {"keys": [loader_key.as_dict(private=False)]}

    proc, base_url = _start(workdir, public_jwks(keyset), loader_jwks)
    try:
        root = base_url.removesuffix("/fhir")
        token_url = f"{root}/auth/token"
        _load(base_url, _token(token_url, loader_key, LOADER_CLIENT_ID, LOADER_SCOPES))
        yield Sekmet(
            base_url=base_url,
            token_url=token_url,
            keyset=keyset,
            client_id=VIEWER_CLIENT_ID,
            patient_nhs_number=PATIENT_NHS_NUMBER,
            observation_count=OBSERVATION_COUNT,
            pid=proc.pid,
        )
    finally:
        _stop(proc)


# ---------------------------------------------------------------- three organisations, each its own sekmet


@dataclass(frozen=True)
class OrgSpec:
    """An organisation served by a sekmet server of its own; ``key`` is also the viewer's ``[[source]]`` id."""

    key: str
    name: str
    ods_code: str
    kind: str  # a viewer source kind (gp, acute, community, …)


# The GP practice keeps the sandbox GP's ODS code: the sandbox EHR launching the viewer is that practice's
# system, so the practice's user, its EHR and its FHIR server are one organisation. The others are made up.
ORGANISATIONS = (
    OrgSpec("sekmet-gp", "Riverside Medical Practice (sekmet)", "Y01001", "gp"),
    OrgSpec("sekmet-hospital", "Eastbrook Hospitals NHS Trust (sekmet)", "RE1", "acute"),
    OrgSpec("sekmet-community", "Eastbrook Community Health NHS Trust (sekmet)", "RE2", "community"),
)


@dataclass(frozen=True)
class SekmetOrg:
    """One organisation's running sekmet server."""

    spec: OrgSpec
    base_url: str
    token_url: str
    pid: int
    workdir: Path
    viewer_keyset: KeySet = field(repr=False)
    loader_key: RSAKey = field(repr=False)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def name(self) -> str:
        return self.spec.name

    def loader_token(self) -> str:
        """A fresh ``system/*.write`` token for the loader client."""
        return _token(self.token_url, self.loader_key, LOADER_CLIENT_ID, LOADER_SCOPES)

    def viewer_token(self, scope: str = "system/*.rs") -> str:
        """A token for the viewer's client (read-only), obtained with the viewer's own RS384 key."""
        key = next(k for k in self.viewer_keyset if k.get("alg") == "RS384")
        return _token(self.token_url, key, VIEWER_CLIENT_ID, scope)

    def post_transaction(self, bundle: dict, token: str | None = None) -> dict:
        """POST a transaction bundle; every entry must succeed (201 created / 200 updated)."""
        r = requests.post(
            self.base_url,
            data=json.dumps(bundle),
            headers={
                "Authorization": f"Bearer {token or self.loader_token()}",
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "Prefer": "return=minimal",
            },
            timeout=300,
        )
        assert r.status_code == 200, f"{self.key}: transaction failed: {r.status_code} {r.text[:2000]}"
        response = r.json()
        assert response.get("type") == "transaction-response", response
        statuses = [e["response"]["status"] for e in response["entry"]]
        assert len(statuses) == len(bundle["entry"]), (len(statuses), len(bundle["entry"]))
        assert all(s.startswith(("200", "201")) for s in statuses), sorted(set(statuses))
        return response

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.workdir / "sekmet.log", lines)


@dataclass(frozen=True)
class SekmetOrganisations:
    """Three running sekmet servers; the viewer's private keys (``keyset``) match the JWKS each holds."""

    orgs: dict[str, SekmetOrg]
    keyset: KeySet = field(repr=False)
    keys_file: Path  # the viewer's private JWKS as a file, for a viewer configuration's keys_file
    client_id: str = VIEWER_CLIENT_ID

    def __getitem__(self, key: str) -> SekmetOrg:
        return self.orgs[key]

    def __iter__(self):
        return iter(self.orgs.values())


def sekmet_installed_or_skip() -> None:
    if not SEKMET_BIN.exists():
        message = f"sekmet-fhir is not installed ({SEKMET_BIN.relative_to(ROOT)} missing): run make install"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def start_organisations(root: Path, specs: tuple[OrgSpec, ...], keyset: KeySet, loader_key: RSAKey) -> list[SekmetOrg]:
    """Start one sekmet per organisation, in parallel (each waits for its own /metadata); stop all on failure."""
    viewer_jwks = public_jwks(keyset)
    loader_jwks = {"keys": [loader_key.as_dict(private=False)]}
    workdirs = []
    for spec in specs:
        workdir = root / spec.key
        workdir.mkdir(parents=True)
        workdirs.append(workdir)
    # Spawned here (main thread), then all waited for at once: about one start-up time for the three.
    pending = {spec.key: (spec, workdir) for spec, workdir in zip(specs, workdirs, strict=True)}
    started, errors = [], []
    for attempt in range(1, START_ATTEMPTS + 1):
        spawned = [(spec, w, *_spawn(w, viewer_jwks, loader_jwks, attempt)) for spec, w in pending.values()]
        with ThreadPoolExecutor(len(spawned)) as pool:
            futures = [pool.submit(_ready_or_none, proc, url, w / "sekmet.log") for _, w, proc, url in spawned]
            ready = [f.result() for f in futures]
        for (spec, w, proc, url), outcome in zip(spawned, ready, strict=True):
            if outcome is True:
                started.append((spec, w, proc, url))
                del pending[spec.key]
            else:
                _stop(proc)
                if outcome is not False or attempt == START_ATTEMPTS:  # timed out, or exited every time
                    errors.append(f"{spec.key}: {outcome or 'exited during start-up'}\n{_log_tail(w / 'sekmet.log')}")
                    pending.pop(spec.key, None)
        if not pending:
            break
    if errors:
        for _, _, proc, _ in started:
            _stop(proc)
        pytest.fail("sekmet servers did not start:\n" + "\n".join(errors), pytrace=False)
    started.sort(key=lambda t: specs.index(t[0]))
    _PROCS.extend(proc for _, _, proc, _ in started)
    return [
        SekmetOrg(
            spec=spec,
            base_url=base_url,
            token_url=f"{base_url.removesuffix('/fhir')}/auth/token",
            pid=proc.pid,
            workdir=workdir,
            viewer_keyset=keyset,
            loader_key=loader_key,
        )
        for spec, workdir, proc, base_url in started
    ]


_PROCS: list[subprocess.Popen] = []  # the organisations' servers, stopped by the fixture (by PID)


def _ready_or_none(proc: subprocess.Popen, base_url: str, log_path: Path) -> bool | str:
    """True when ready, False when the process exited (retry on another port), else why it failed."""
    try:
        return _wait_ready(proc, base_url, log_path)
    except BaseException as exc:  # noqa: BLE001 - pytest.fail (a timeout) raises Failed, a BaseException
        return str(exc) or exc.__class__.__name__


def stop_organisations(orgs: list[SekmetOrg]) -> None:
    pids = {o.pid for o in orgs}
    for proc in [p for p in _PROCS if p.pid in pids]:
        _stop(proc)
        _PROCS.remove(proc)


@pytest.fixture(scope="session")
def sekmet_organisations(tmp_path_factory) -> SekmetOrganisations:
    """Three sekmet-fhir servers (GP, hospital, community), SMART Backend Services on, no data yet."""
    sekmet_installed_or_skip()
    root = tmp_path_factory.mktemp("sekmet-orgs")
    keyset = generate_keyset()
    keys_file = root / "viewer.jwks.json"
    keys_file.write_text(json.dumps(keyset.as_dict(private=True)))
    keys_file.chmod(0o600)
    loader_key = RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, private=True, auto_kid=True)
    orgs = start_organisations(root, ORGANISATIONS, keyset, loader_key)
    try:
        yield SekmetOrganisations({o.key: o for o in orgs}, keyset, keys_file)
    finally:
        stop_organisations(orgs)


# ---------------------------------------------------------------- three organisations with Synthea patients


@dataclass(frozen=True)
class LoadedOrganisations:
    """The three servers with Synthea patients split across them (``tests/interop/synthea_split.py``)."""

    servers: SekmetOrganisations
    splits: list  # list[synthea_split.PatientSplit], in CHOSEN order
    nhs_numbers: dict[str, str]  # Synthea person id → the sandbox's NHS number
    load_seconds: float


@pytest.fixture(scope="session")
def synthea_organisations(sekmet_organisations) -> LoadedOrganisations:
    """Every chosen Synthea patient loaded at the three servers: one transaction per patient per server,
    the three servers loaded in parallel. Skipped (even in CI) when the Synthea folder is absent, as every
    Synthea test is: a clean clone has no ../shared."""
    from .synthea_split import SYNTHEA_DIR, sandbox_nhs_numbers, split_all, synthea_present

    if not synthea_present():
        pytest.skip(f"Synthea data not present at {SYNTHEA_DIR} (set SCR_SYNTHEA_DIR)")
    started = time.monotonic()
    nhs_numbers = sandbox_nhs_numbers()
    splits = split_all(nhs_numbers, {o.key: o.base_url for o in sekmet_organisations})

    def load(org: SekmetOrg) -> None:
        token = org.loader_token()
        for split in splits:
            org.post_transaction(split.bundle(org.key, org.base_url), token)

    with ThreadPoolExecutor(len(sekmet_organisations.orgs)) as pool:
        for future in [pool.submit(load, org) for org in sekmet_organisations]:
            future.result()
    return LoadedOrganisations(sekmet_organisations, splits, nhs_numbers, time.monotonic() - started)
