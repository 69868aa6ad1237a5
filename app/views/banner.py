"""The patient banner (NHS Common User Interface): who this record is about, readable at a glance.

``FAMILY, Given (Title)``, born dd-Mmm-yyyy with age, gender, NHS number 3-3-4, address, and death shown
prominently with its date. When the launching EHR says it already shows the patient (SMART
``need_patient_banner=false``), the viewer shows only a slim identity line, so the patient is still named
in every page, print and screenshot.
"""

from __future__ import annotations

from datetime import date, datetime

from core.names import banner_name
from core.nhs_number import format_nhs_number, from_identifiers, is_valid
from core.ukdates import UK, age_on, uk_date


def age_text(birth: str | None, on: date | None = None) -> str | None:
    """CUI age: years from 2 years old, months under 2, weeks under 4 months... kept to y / m / d here."""
    years = age_on(birth, on)
    if years is None:
        return None
    if years >= 2:
        return f"{years}y"
    born = date.fromisoformat(birth[:10])
    today = on or datetime.now(UK).date()
    months = (today.year - born.year) * 12 + today.month - born.month - (today.day < born.day)
    return f"{months}m" if months >= 1 else f"{(today - born).days}d"


def patient_banner(patient: dict | None, full: bool = True) -> dict | None:
    """What the banner shows; an invalid or missing NHS number is said plainly, never hidden."""
    if patient is None:
        return None
    nhs = from_identifiers(patient.get("identifier"))
    address = next((a for a in patient.get("address") or [] if isinstance(a, dict)), {})
    gp = next((g for g in patient.get("generalPractitioner") or [] if isinstance(g, dict)), {})
    birth = patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None
    died = patient.get("deceasedDateTime") if isinstance(patient.get("deceasedDateTime"), str) else None
    deceased = bool(died) or patient.get("deceasedBoolean") is True
    death_day = date.fromisoformat(died[:10]) if died and len(died) >= 10 and died[:10].count("-") == 2 else None
    lines = [*(address.get("line") or []), address.get("city"), address.get("district"), address.get("postalCode")]
    return {
        "full": full,
        "name": banner_name(patient.get("name")) or "Unknown",
        "birth_date": uk_date(birth) if birth else None,
        "age": age_text(birth, death_day) if birth and (death_day or not deceased) else None,
        "gender": (patient.get("gender") or "").replace("unknown", "not known").capitalize() or None,
        "nhs_number": format_nhs_number(nhs) if nhs else None,
        "nhs_number_valid": bool(nhs and is_valid(nhs)),
        "deceased": deceased,
        "died": uk_date(died) if died else None,
        "address": ", ".join(p for p in lines if isinstance(p, str) and p.strip()),
        "gp": gp.get("display") or (gp.get("identifier") or {}).get("value"),
    }
