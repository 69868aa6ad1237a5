"""A medicine line as a clinician reads it (NHS CUI medication line): what, how much, how often, acute or
repeat, since when, last issued, until when, and who prescribed it — from a MedicationRequest (a
prescription) or a MedicationStatement (a record that the person takes it), whichever the source sent.
"""

from __future__ import annotations

from . import values

COURSE = "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy"
COURSE_WORDS = {"acute": "Acute", "continuous": "Repeat", "seasonal": "Seasonal"}
REPEAT_EXTENSION = "MedicationRepeatInformation"  # UK Core / CareConnect
STATUS_WORDS = {
    "active": "Active",
    "on-hold": "On hold",
    "intended": "Intended",
    "completed": "Completed",
    "stopped": "Stopped",
    "cancelled": "Cancelled",
    "entered-in-error": "Entered in error",
    "not-taken": "Not taken",
    "draft": "Draft",
    "unknown": "Status not known",
}
DURATION_WORDS = {"d": "day", "wk": "week", "mo": "month", "a": "year", "h": "hour", "min": "minute"}


def dose(r: dict) -> str:
    """The dosage as the prescriber wrote it, else the structured dose."""
    dosages = r.get("dosageInstruction") or r.get("dosage") or []
    dosage = dosages[0] if dosages and isinstance(dosages[0], dict) else {}
    if dosage.get("text"):
        return dosage["text"]
    for dr in dosage.get("doseAndRate") or []:
        if isinstance(dr, dict) and (shown := values.quantity(dr.get("doseQuantity"))):
            return shown
    return ""


def quantity(r: dict) -> str:
    """The quantity supplied (``112 tablets``, ``1 inhaler``)."""
    q = (r.get("dispenseRequest") or {}).get("quantity")
    if not isinstance(q, dict) or q.get("value") is None:
        return ""
    u = (q.get("unit") or "").strip() or values.unit(None, q.get("code"))
    if u and q.get("value") != 1 and u.isalpha() and not u.endswith("s") and u.islower():
        u += "s"  # 112 tablet → 112 tablets, as a prescription reads
    return f"{values.number(q['value'])} {u}".strip()


def course_type(r: dict) -> str:
    """Acute or repeat: courseOfTherapyType, else repeats allowed; empty for a MedicationStatement that says neither."""
    for coding in (r.get("courseOfTherapyType") or {}).get("coding") or []:
        if coding.get("code") in COURSE_WORDS:
            return COURSE_WORDS[coding["code"]]
    text = ((r.get("courseOfTherapyType") or {}).get("text") or "").strip()
    if text:
        return text
    if any(str(e.get("url", "")).endswith(REPEAT_EXTENSION) for e in r.get("extension") or [] if isinstance(e, dict)):
        return "Repeat"
    repeats = (r.get("dispenseRequest") or {}).get("numberOfRepeatsAllowed")
    if isinstance(repeats, int) and not isinstance(repeats, bool):
        return "Repeat" if repeats > 0 else "Acute"
    return ""


def course_length(r: dict) -> str:
    """How long one supply lasts (``28 days``), from the expected supply duration or the dosage's bounds."""
    d = (r.get("dispenseRequest") or {}).get("expectedSupplyDuration")
    if not isinstance(d, dict):
        dosages = r.get("dosageInstruction") or r.get("dosage") or []
        repeat = ((dosages[0] if dosages and isinstance(dosages[0], dict) else {}).get("timing") or {}).get("repeat")
        d = (repeat or {}).get("boundsDuration")
    if not isinstance(d, dict) or d.get("value") is None:
        return ""
    word = DURATION_WORDS.get(d.get("code") or "", "") or (d.get("unit") or "")
    n = values.number(d["value"])
    plural = "" if n == "1" or word.endswith("s") or not word else "s"
    return f"{n} {word}{plural}".strip()


def prescriber(r: dict) -> str:
    """The person who prescribed (or recorded) it, when the source names them; the page shows the
    organisation after it (the row's provenance), so an unnamed prescriber still has an organisation."""
    for key in ("requester", "informationSource", "recorder"):
        ref = r.get(key)
        if isinstance(ref, dict) and ref.get("display"):
            if (ref.get("reference") or "").split("/")[0] in ("Organization", "Patient", "RelatedPerson"):
                continue  # not a prescriber by name
            return ref["display"]
    return ""


def status(r: dict) -> str:
    code = r.get("status")
    return STATUS_WORDS.get(code, (code or "").capitalize())


def recorded_as(r: dict) -> str:
    """A prescription, or what the person or a professional says they take."""
    return "Prescribed" if r.get("resourceType") == "MedicationRequest" else "Recorded as taken"
