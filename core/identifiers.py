"""The UK identifier and code systems the viewer, the sandbox and the audit trail share (one place)."""

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"
SDS_ROLE_PROFILE_SYSTEM = "https://fhir.nhs.uk/Id/sds-role-profile-id"
GMC_SYSTEM = "https://fhir.hl7.org.uk/Id/gmc-number"
JOB_ROLE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode"
# National RBAC activity codes (B-codes) on PractitionerRole.code. There is no published FHIR CodeSystem URL
# for them yet; this is the one the viewer and its sandbox use (docs/configuration.md, "Identity sources").
ACTIVITY_CODE_SYSTEM = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-ActivityCode"
