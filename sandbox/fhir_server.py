"""One read-only FHIR R4 server per organisation, at ``/fhir/<org>``.

Bearer tokens are checked (signature, expiry, audience, SMART scopes); patient-level tokens only see
their patient's compartment. Every request is logged for the launch inspector, and each organisation
can be told to misbehave (latency, down, 500, malformed JSON, hostile paging) for fault tests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from urllib.parse import urlencode

import orjson
from flask import Blueprint, Response, current_app, g, request
from joserfc import jwt
from joserfc.errors import JoseError

from core.identifiers import ODS_SYSTEM, SDS_USER_SYSTEM
from core.nhs_number import NHS_NUMBER_SYSTEM, from_identifiers
from launch.scopes import permits

from .auth_views import oauth_uris, smart_configuration
from .keys import ACCESS_TOKEN_ALG
from .state import FhirRequest, SandboxState
from .store import (
    CHAINED_PATIENT_IDENTIFIER,
    INCLUDES,
    NON_PATIENT_TYPES,
    PATIENT_FIELD,
    SUPPORTED_TYPES,
    OrgStore,
    SearchError,
    reference_id,
)

bp = Blueprint("fhir", __name__, url_prefix="/fhir/<org_id>")

FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_COUNT = 50
MAX_COUNT = 1000
FOREIGN_HOST = "localhost"  # same machine, different origin: a viewer must not follow it
# Identifiers a generic-mode organisation's Practitioners do not carry (no national directory behind them).
NATIONAL_STAFF_SYSTEMS = (SDS_USER_SYSTEM, ODS_SYSTEM)
# Where the organisations that neither advertise nor support chained search are kept (app.extensions): every
# organisation supports ``patient.identifier`` unless a test turns it off (set_chained_search).
UNCHAINED = "sandbox_unchained"
# The `patient` search parameter as this server defines it, contained in its CapabilityStatement: R4 declares
# the chains a reference parameter supports in SearchParameter.chain, reached from searchParam.definition.
PATIENT_PARAM_ID = "patient-chain"


def set_chained_search(app, org_id: str, supported: bool) -> None:
    """Turn the chained ``patient.identifier`` search (and its CapabilityStatement declaration) on or off."""
    off: set[str] = app.extensions.setdefault(UNCHAINED, set())
    if supported:
        off.discard(org_id)
    else:
        off.add(org_id)


def _chaining(org_id: str) -> bool:
    return org_id not in current_app.extensions.get(UNCHAINED, ())


class FhirError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _state() -> SandboxState:
    return current_app.extensions["sandbox_state"]


def _base(org_id: str) -> str:
    return _state().settings.fhir_base(org_id)


@bp.url_value_preprocessor
def _pick_org(endpoint, values):
    g.org_id = values.pop("org_id")


@bp.before_request
def _start():
    g.started = time.perf_counter()
    g.request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
    g.token_claims = None
    state = _state()
    if state.settings.organisation(g.org_id) is None:
        raise FhirError(404, "not-found", f"No organisation '{g.org_id}' in this sandbox.")
    faults = state.faults[g.org_id]
    if faults.latency_ms:
        time.sleep(faults.latency_ms / 1000)
    if request.method != "GET":
        raise FhirError(405, "not-supported", "This server is read-only: only GET is accepted.")
    if faults.mode == "down":
        _drop_connection()
        raise FhirError(503, "transient", "Simulated outage.")
    if faults.mode == "error_500":
        raise FhirError(500, "exception", "Simulated internal server error.")
    if faults.mode == "malformed_json" and not request.path.endswith(("/metadata", "smart-configuration")):
        return Response('{"resourceType": "Bundle", "type": "searchset", "entry": [{"resou', 200, mimetype=FHIR_JSON)
    return None


@bp.after_request
def _log(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    response.headers.setdefault("Cache-Control", "no-store")
    claims = g.get("token_claims") or {}
    _state().record_request(
        FhirRequest(
            at=time.time(),
            org_id=g.get("org_id", "?"),
            method=request.method,
            url=request.url,
            host=request.host,
            status=response.status_code,
            duration_ms=round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1),
            request_id=g.get("request_id", ""),
            client_id=claims.get("client_id"),
            launch_id=claims.get("launch_id"),
            nhs_number=g.get("nhs_number") or claims.get("nhs_number"),
        )
    )
    return response


@bp.errorhandler(FhirError)
def _fhir_error(err: FhirError):
    return _json(operation_outcome(err.code, err.message), err.status, err.headers)


def _drop_connection() -> None:
    """Close the socket under the request, so the client sees a reset rather than an HTTP answer."""
    sock = request.environ.get("werkzeug.socket")
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


# ---- unauthenticated discovery -----------------------------------------------------------------


@bp.get("/.well-known/smart-configuration")
def well_known():
    state = _state()
    if state.smart_profile(g.org_id).discovery == "capability_statement_only":
        raise FhirError(404, "not-found", "No smart-configuration here: see the CapabilityStatement at /metadata.")
    return current_app.response_class(json.dumps(smart_configuration(state, g.org_id)), mimetype="application/json")


@bp.get("/metadata")
def metadata():
    state = _state()
    org = state.settings.organisation(g.org_id)
    chained = _chaining(g.org_id)
    return _json(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-01",
            "kind": "instance",
            "publisher": org.name,
            "software": {"name": "Shared care record sandbox FHIR server", "version": "1"},
            "implementation": {"description": f"{org.name} ({org.ods_code})", "url": _base(g.org_id)},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "service": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                        "code": "SMART-on-FHIR",
                                    }
                                ]
                            }
                        ],
                        "extension": [
                            {
                                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                                "extension": oauth_uris(state, g.org_id),
                            }
                        ],
                    },
                    "resource": [
                        _capability(t, chained)
                        for t in SUPPORTED_TYPES  # what it searches, held or not
                    ],
                }
            ],
        }
        | ({"contained": [_patient_parameter()]} if chained else {})
    )


def _capability(rtype: str, chained: bool) -> dict:
    """One type's entry: its search parameters (``patient`` defined by the contained SearchParameter, whose
    ``chain`` names ``identifier``, when chained search is on) and the ``_include``s it answers."""
    entry: dict = {"type": rtype, "interaction": [{"code": "read"}, {"code": "search-type"}]}
    params: list[dict] = []
    if rtype in PATIENT_FIELD:
        patient = {"name": "patient", "type": "reference"}
        params.append(patient | ({"definition": f"#{PATIENT_PARAM_ID}"} if chained else {}))
    entry["searchParam"] = params
    if rtype in INCLUDES:
        entry["searchInclude"] = list(INCLUDES[rtype])
    return entry


def _patient_parameter() -> dict:
    return {
        "resourceType": "SearchParameter",
        "id": PATIENT_PARAM_ID,
        "url": f"{_base(g.org_id)}/SearchParameter/{PATIENT_PARAM_ID}",
        "derivedFrom": "http://hl7.org/fhir/SearchParameter/clinical-patient",
        "name": "patient",
        "status": "active",
        "description": "The patient the resource is about; chains on the Patient's identifier.",
        "code": "patient",
        "base": list(PATIENT_FIELD),
        "type": "reference",
        "target": ["Patient"],
        "chain": ["identifier"],
    }


# ---- protected reads and searches -----------------------------------------------------------------


@bp.get("/<rtype>")
def search(rtype: str):
    _check_type(rtype)
    level = _authorise(rtype, "s")
    store = _state().dataset.stores[g.org_id]
    params = {k: request.args.getlist(k) for k in request.args}
    count = _int_param("_count", DEFAULT_COUNT, 0, 10**6)
    count = min(count, MAX_COUNT)
    offset = _int_param("_offset", 0, 0, 10**9)
    strict = "handling=strict" in request.headers.get("Prefer", "")
    if level == "patient":
        params = _restrict_to_patient(rtype, params)
    try:
        matches, ignored = store.search(rtype, params, strict=strict, chaining=_chaining(g.org_id))
    except SearchError as exc:
        raise FhirError(400, "invalid", str(exc)) from exc
    _note_patient(store, rtype, params, matches)
    matches = _as_served_all(rtype, matches, params)
    includes = params.get("_include", [])
    if includes and strict:
        unknown = [i for i in includes if i not in INCLUDES.get(rtype, {})]
        if unknown:
            raise FhirError(400, "invalid", f"unsupported _include for {rtype}: {', '.join(unknown)}")
    return _json(_searchset(rtype, matches, offset, count, ignored, store, includes))


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str):
    _check_type(rtype)
    level = _authorise(rtype, "r")
    store = _state().dataset.stores[g.org_id]
    resource = _as_served(store.read(rtype, rid))
    if resource is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known here.")
    if level == "patient" and not _in_compartment(resource, g.token_claims.get("patient")):
        raise FhirError(403, "forbidden", "The token's patient context does not cover this resource.")
    if rtype == "Patient":
        g.nhs_number = _nhs(resource)
    return _json(resource)


def _as_served(resource: dict | None) -> dict | None:
    """The resource as this organisation's SMART profile serves it (generic mode: see ``_as_served_all``)."""
    if resource is None:
        return None
    served = _as_served_all(resource["resourceType"], [resource], {})
    return served[0] if served else None


def _as_served_all(rtype: str, resources: list[dict], params: dict[str, list[str]]) -> list[dict]:
    """Generic mode: Practitioners without SDS user or ODS identifiers (an identifier search on those systems
    finds nothing), and no PractitionerRole for staff marked ``practitioner_role_in_generic: false``."""
    state = _state()
    if rtype not in ("Practitioner", "PractitionerRole") or not state.is_generic(g.org_id):
        return resources
    if rtype == "PractitionerRole":
        hidden = {
            u.role_id for u in state.dataset.staff.values() if u.organisation == g.org_id and not u.role_in_generic
        }
        return [r for r in resources if r["id"] not in hidden]
    if any(v.split("|", 1)[0] in NATIONAL_STAFF_SYSTEMS for v in params.get("identifier", [])):
        return []
    return [_without_national_identifiers(r) for r in resources]


def _without_national_identifiers(practitioner: dict) -> dict:
    identifiers = practitioner.get("identifier") or []
    kept = [i for i in identifiers if not (isinstance(i, dict) and i.get("system") in NATIONAL_STAFF_SYSTEMS)]
    if len(kept) == len(identifiers):
        return practitioner
    served = {k: v for k, v in practitioner.items() if k != "identifier"}  # the store is shared: never mutate
    if kept:
        served["identifier"] = kept
    return served


def _check_type(rtype: str) -> None:
    if rtype not in SUPPORTED_TYPES:
        raise FhirError(404, "not-supported", f"Resource type {rtype} is not supported by this server.")


def _authorise(rtype: str, permission: str) -> str:
    """Check the bearer token; returns the scope level (patient/user/system) that allows the request."""
    state = _state()
    header = request.headers.get("Authorization", "")
    realm = f'Bearer realm="{_base(g.org_id)}"'
    if not header.startswith("Bearer "):
        raise FhirError(401, "login", "A bearer token is required.", {"WWW-Authenticate": realm})
    try:
        token = jwt.decode(header[7:].strip(), state.keys.keyset, algorithms=[ACCESS_TOKEN_ALG])
        claims = token.claims
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": state.settings.issuer},
            exp={"essential": True},
            aud={"essential": True, "value": _base(g.org_id)},
        ).validate(claims)
    except (JoseError, ValueError) as exc:
        raise FhirError(
            401,
            "login",
            f"Invalid access token ({getattr(exc, 'error', 'malformed')}).",
            {"WWW-Authenticate": f'{realm}, error="invalid_token"'},
        ) from exc
    if claims.get("jti") in state.expired_jtis:
        raise FhirError(
            401,
            "expired",
            "The access token has expired (simulated).",
            {"WWW-Authenticate": f'{realm}, error="invalid_token", error_description="expired"'},
        )
    g.token_claims = claims
    level = permits(claims.get("scope", ""), ("patient", "user", "system"), rtype, permission)
    if level is None:
        raise FhirError(
            403,
            "forbidden",
            f"The token's scopes do not allow {permission} on {rtype}.",
            {"WWW-Authenticate": f'{realm}, error="insufficient_scope"'},
        )
    if level == "patient" and not claims.get("patient"):
        raise FhirError(403, "forbidden", "A patient-level scope needs a patient in the launch context.")
    return level


def _restrict_to_patient(rtype: str, params: dict[str, list[str]]) -> dict[str, list[str]]:
    patient = g.token_claims["patient"]
    if rtype == "Patient":
        return {**params, "_id": [patient]}
    if rtype in NON_PATIENT_TYPES:
        return params
    asked = params.get("patient", []) + params.get("subject", [])
    if any(v.split("/")[-1] != patient for v in asked):
        raise FhirError(403, "forbidden", "The token's patient context does not cover that patient.")
    return {k: v for k, v in params.items() if k not in ("patient", "subject")} | {"patient": [patient]}


def _in_compartment(resource: dict, patient_id: str | None) -> bool:
    rtype = resource["resourceType"]
    if rtype == "Patient":
        return resource["id"] == patient_id
    if rtype in NON_PATIENT_TYPES:
        return True
    field = PATIENT_FIELD.get(rtype)
    return bool(field) and reference_id((resource.get(field) or {}).get("reference"), "Patient") == patient_id


def _note_patient(store: OrgStore, rtype: str, params: dict[str, list[str]], matches: list[dict]) -> None:
    """Remember which patient a request concerned, so the inspector can group requests by launch."""
    for value in params.get("identifier", []) + params.get(CHAINED_PATIENT_IDENTIFIER, []):
        if value.startswith(f"{NHS_NUMBER_SYSTEM}|"):
            g.nhs_number = value.split("|", 1)[1]
            return
    for value in params.get("patient", []) + params.get("subject", []) + params.get("_id", []):
        patient = store.read("Patient", value.split("/")[-1])
        if patient:
            g.nhs_number = _nhs(patient)
            return


def _nhs(patient: dict) -> str | None:
    return from_identifiers(patient.get("identifier"))


def _int_param(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FhirError(400, "invalid", f"{name} must be a whole number.") from None
    if not low <= value <= high:
        raise FhirError(400, "invalid", f"{name} is out of range.")
    return value


def _searchset(
    rtype: str,
    matches: list[dict],
    offset: int,
    count: int,
    ignored: list[str],
    store: OrgStore | None = None,
    includes: list[str] | None = None,
) -> dict:
    base = _base(g.org_id)
    mode = _state().faults[g.org_id].mode
    page = matches[offset : offset + count]
    included: list[dict] = []
    if store is not None and includes:
        included, unknown = store.included(rtype, page, includes)
        included = _permitted_includes(included)
        ignored = [*ignored, *(f"_include={u}" for u in unknown)]
    links = [{"relation": "self", "url": _page_url(base, rtype, offset, count)}]
    if offset + count < len(matches) and count > 0:
        next_offset = offset + count
        if mode == "paging_loop":
            next_offset = offset  # the same page again, forever
        url = _page_url(base, rtype, next_offset, count)
        if mode == "foreign_next":
            url = url.replace(f"//{request.host}", f"//{FOREIGN_HOST}:{request.host.rsplit(':', 1)[-1]}", 1)
        links.append({"relation": "next", "url": url})
    entries = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in page
    ] + [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
        for r in included
    ]
    if ignored:
        entries.append(
            {
                "resource": operation_outcome(
                    "not-supported",
                    f"Ignored unsupported search parameter(s): {', '.join(sorted(ignored))}",
                    severity="warning",
                ),
                "search": {"mode": "outcome"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "type": "searchset",
        "total": len(matches),
        "link": links,
        "entry": entries,
    }


def _permitted_includes(included: list[dict]) -> list[dict]:
    """Included resources the token may read, as this organisation serves them; the rest are left out."""
    claims = g.token_claims or {}
    out: list[dict] = []
    for resource in included:
        rtype = resource["resourceType"]
        if permits(claims.get("scope", ""), ("patient", "user", "system"), rtype, "r") is None:
            continue
        out.extend(_as_served_all(rtype, [resource], {}))
    return out


def _page_url(base: str, rtype: str, offset: int, count: int) -> str:
    params = [(k, v) for k in request.args for v in request.args.getlist(k) if k not in ("_offset", "_count")]
    params += [("_count", str(count)), ("_offset", str(offset))]
    return f"{base}/{rtype}?{urlencode(params)}"


def operation_outcome(code: str, message: str, severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    resp = Response(orjson.dumps(body), status=status, mimetype=FHIR_JSON)
    resp.headers["Content-Type"] = FHIR_JSON
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp
