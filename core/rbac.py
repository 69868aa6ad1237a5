"""National RBAC job roles and activities, and purposes of use, by name (docs standards §3.3, §4): screens
show a code with its name ("R8000 Clinical Practitioner Access Role"), never a bare code."""

from __future__ import annotations

ROLE_NAMES = {
    "R8000": "Clinical Practitioner Access Role",
    "R8001": "Nurse Access Role",
    "R8003": "Health Professional Access Role",
    "R8004": "Healthcare Student Access Role",
    "R8006": "Medical Secretary Access Role",
    "R8008": "Admin/Clinical Support Access Role",
    "R8009": "Receptionist Access Role",
    "R8010": "Clerical Access Role",
    "R8012": "Information Officer Access Role",
    "R8015": "Systems Support Access Role",
    "R0001": "Privacy Officer",
    "R5105": "Caldicott Guardian",
}
ACTIVITY_NAMES = {
    "B0264": "Access SCR Application (Perform Patient Trace)",
    "B0370": "View Summary Health Records",
    "B0360": "View Detailed Health Records",
    "B0401": "View Patient Medication",
    "B0168": "Emergency access to view the SCR",
    "B0082": "Legal Override of Consent",
    "B1611": "Access Sensitive (S) Flagged Records",
    "B0020": "Control Consent Status",
    "B0016": "Receive Self-Claimed LR Alerts (Privacy Officer)",
    "B0015": "Receive Legal Override and Emergency View Alerts (Privacy Officer)",
    "B0018": "Receive Sealing Alerts",
}
# v3 ActReason purposes of use recorded in the audit trail.
PURPOSE_NAMES = {
    "TREAT": "Direct care",
    "ETREAT": "Emergency treatment",
    "COC": "Coordination of care",
    "BTG": "Break the glass",
    "ERTREAT": "Emergency room treatment",
    "HOPERAT": "Healthcare operations",
    "PATRQT": "Patient request",
}


def named(code: str, names: dict[str, str]) -> str:
    """``CODE Name`` when the code is known; the code alone otherwise (never dropped)."""
    name = names.get(code)
    return f"{code} {name}" if name else code
