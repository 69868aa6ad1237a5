"""Identity sources tried in the EHR's configured order, read over real HTTP from a small FHIR server.

The server holds a Practitioner (no ODS or SDS identifiers, as generic SMART EHRs serve them) and,
depending on the test, a PractitionerRole with national RBAC codes; the EHR client reads it with a real
token set, exactly as at the callback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from core.identifiers import ACTIVITY_CODE_SYSTEM, JOB_ROLE_SYSTEM, ODS_SYSTEM
from launch.ehr_client import EhrFhirClient
from launch.errors import IdentityUnresolved
from launch.identity import resolve_identity
from launch.roles import IdentityPolicy, Organisation, RoleGrant
from tests.smart import ehr_client

PRACTITIONER = {
    "resourceType": "Practitioner",
    "id": "p1",
    "name": [{"family": "Okafor", "given": ["Ada"], "prefix": ["Dr"]}],
}
CIS2 = {
    "nhsid_useruid": "555000000001",
    "selected_roleid": "role-1",
    "nhsid_nrbac_roles": [
        {
            "person_roleid": "role-1",
            "org_code": "Y01001",
            "role_code": "S8000:G8000:R8000",
            "activity_codes": ["B0370"],
        },
        {"person_roleid": "role-2", "org_code": "RX9", "role_code": "S8000:G8000:R8001", "activity_codes": ["B1611"]},
    ],
}


def role(*codings, active=True, org=None) -> dict:
    return {
        "resourceType": "PractitionerRole",
        "id": "pr1",
        "active": active,
        "practitioner": {"reference": "Practitioner/p1"},
        "organization": org or {"reference": "Organization/o1"},
        "code": [{"coding": [{"system": s, "code": c} for s, c in codings]}],
    }


CLINICIAN_ROLE = role((JOB_ROLE_SYSTEM, "R8000"), (ACTIVITY_CODE_SYSTEM, "B0360"), (ACTIVITY_CODE_SYSTEM, "B0370"))


class Ehr:
    """A loopback FHIR server: Practitioner/p1, Organization/o1 and whatever PractitionerRoles a test sets."""

    def __init__(self) -> None:
        self.roles: list[dict] = []
        self.seen: list[str] = []
        ehr = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802
                ehr.seen.append(self.path)
                path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
                if path.endswith("/Practitioner/p1"):
                    body = PRACTITIONER
                elif path.endswith("/Organization/o1"):
                    ods = [{"system": ODS_SYSTEM, "value": "B86001"}]
                    body = {"resourceType": "Organization", "id": "o1", "name": "Hillside Surgery", "identifier": ods}
                elif path.endswith("/PractitionerRole") and query.get("practitioner") == ["Practitioner/p1"]:
                    body = {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "entry": [{"resource": r} for r in ehr.roles],
                    }
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/fhir"

    def client(self) -> EhrFhirClient:
        return ehr_client(self.base)


@pytest.fixture
def ehr():
    server = Ehr()
    yield server
    server.server.shutdown()


def resolve(ehr: Ehr, claims: dict, order=None, register=None, default=None, bound=None):
    policy = IdentityPolicy(**({"order": tuple(order)} if order else {}), default_grant=default, organisation=bound)
    claims = {"sub": "user-17", **claims}
    return resolve_identity(ehr.client(), "Practitioner/p1", claims, issuer=ehr.base, policy=policy, register=register)


def test_cis2_claims_come_first_by_default_and_only_the_selected_role_counts(ehr):
    ehr.roles = [CLINICIAN_ROLE]
    user = resolve(ehr, CIS2)
    assert (user.role_source, user.role_codes, user.activity_codes) == ("cis2_claims", ("R8000",), ("B0370",))
    assert user.sds_user_id == "555000000001" and user.ods == "Y01001"
    assert user.name == "Dr Ada Okafor"  # no name claim: read from fhirUser


def test_practitioner_role_codes_when_the_ehr_sends_no_nhs_claims(ehr):
    ehr.roles = [CLINICIAN_ROLE]
    user = resolve(ehr, {})
    assert user.role_source == "practitioner_role"
    assert (user.role_codes, user.activity_codes) == (("R8000",), ("B0360", "B0370"))
    assert user.organisation == Organisation("B86001", "Hillside Surgery", "Organization/o1")  # read: no identifier
    assert user.tried == ("cis2_claims: the sign-in carried no national RBAC role (nhsid_nrbac_roles)",)


def test_codes_are_never_mixed_across_sources(ehr):
    ehr.roles = [CLINICIAN_ROLE]
    user = resolve(ehr, CIS2, order=["practitioner_role", "cis2_claims"])
    assert (
        user.role_source == "practitioner_role"
        and "B0370" in user.activity_codes
        and "B1611" not in user.activity_codes
    )
    assert resolve(ehr, CIS2).activity_codes == ("B0370",)  # CIS2 first: nothing from the PractitionerRole


def test_the_register_is_asked_with_the_issuer_and_every_subject(ehr):
    asked = []

    def register(issuer, subjects):
        asked.append((issuer, subjects))
        return RoleGrant(("R8000",), ("B0360",), "register", expires="2027-01-31")

    user = resolve(ehr, {}, register=register)
    assert asked == [(ehr.base, ("user-17", "Practitioner/p1"))]
    assert (user.role_source, user.activity_codes) == ("register", ("B0360",))
    assert [t.split(":")[0] for t in user.tried] == ["cis2_claims", "practitioner_role"]


def test_ehr_default_only_when_configured_and_listed(ehr):
    default = RoleGrant(("R8000",), ("B0370",), "ehr_default")
    order = ["cis2_claims", "practitioner_role", "register", "ehr_default"]
    user = resolve(ehr, {}, order=order, register=lambda i, s: None, default=default)
    assert (user.role_source, user.activity_codes) == ("ehr_default", ("B0370",))
    assert resolve(ehr, {}, register=lambda i, s: None, default=default).role_source is None  # not in the order


def test_nothing_maps_says_what_each_source_lacked(ehr):
    ehr.roles = [role((JOB_ROLE_SYSTEM, "R8000"), active=False)]  # an ended role does not count
    user = resolve(ehr, {}, register=lambda i, s: None)
    assert user.role_source is None and user.activity_codes == () and user.role_codes == ()
    assert user.tried == (
        "cis2_claims: the sign-in carried no national RBAC role (nhsid_nrbac_roles)",
        "practitioner_role: no PractitionerRole with national RBAC codes for this user",
        "register: no current entry for this user",
    )


def test_a_role_without_activities_is_kept_for_administrative_staff(ehr):
    ehr.roles = [role((JOB_ROLE_SYSTEM, "R8009"))]  # receptionist: a job role, no activities
    user = resolve(ehr, {}, register=lambda i, s: None)
    assert (user.role_source, user.role_codes, user.activity_codes) == ("practitioner_role", ("R8009",), ())


def test_the_ehrs_own_organisation_wins_over_claims(ehr):
    user = resolve(ehr, CIS2, bound=Organisation("A12345", "Riverside"))
    assert user.organisation == Organisation("A12345", "Riverside")
    assert not any("/Organization/" in p for p in ehr.seen)  # known from config: no read


def test_fhir_user_must_be_staff(ehr):
    with pytest.raises(IdentityUnresolved, match="not a Practitioner or PractitionerRole"):
        resolve_identity(ehr.client(), "Patient/1", {"sub": "x"}, issuer=ehr.base)
