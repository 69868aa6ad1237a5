"""Clinical values as people read them: numbers as recorded, UCUM units as written by hand, blood pressure
by component code, reference ranges and interpretations in words, and code-system codes by their display.

A value is shown as the source recorded it. Numbers keep the digits the source sent: an integer stays an
integer, a decimal is shown with up to 15 significant digits (what the source wrote, except that trailing
zeros after the first decimal place are not kept: the JSON parser reads decimals as binary floats, and
digits beyond a double's precision are its noise, not a measurement), never rounded to a fixed number of
places (which turned 0.004 into "0") and never padded.
"""

from __future__ import annotations

import re
from decimal import Decimal

LOINC = "http://loinc.org"
SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"  # blood pressure components (standards.md)
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

# Displays for codes that sources often send with no display, or with the code itself as the display
# (Synthea: "vital-signs"); sentence case, as the NHS style guide writes headings.
CATEGORY_DISPLAY = {
    "vital-signs": "Vital signs",
    "laboratory": "Laboratory",
    "social-history": "Social history",
    "survey": "Survey",
    "exam": "Examination",
    "imaging": "Imaging",
    "procedure": "Procedure",
    "therapy": "Therapy",
    "activity": "Activity",
}
INTERPRETATION_DISPLAY = {
    "H": "High",
    "HH": "Critically high",
    "HU": "Significantly high",
    "L": "Low",
    "LL": "Critically low",
    "LU": "Significantly low",
    "A": "Abnormal",
    "AA": "Critically abnormal",
    "N": "Normal",
    "POS": "Positive",
    "NEG": "Negative",
    "DET": "Detected",
    "ND": "Not detected",
    "R": "Resistant",
    "S": "Susceptible",
    "I": "Intermediate",
    ">": "Above the measurable range",
    "<": "Below the measurable range",
}
KNOWN_DISPLAYS = {OBSERVATION_CATEGORY: CATEGORY_DISPLAY, INTERPRETATION: INTERPRETATION_DISPLAY}

# UCUM units whose written form is not the code with brackets removed.
UNIT_WORDS = {
    "Cel": "°C",
    "[degF]": "°F",
    "[in_i]": "in",
    "[in_us]": "in",
    "[ft_i]": "ft",
    "[lb_av]": "lb",
    "[oz_av]": "oz",
    "[stone_av]": "st",
    "[iU]": "IU",
    "[IU]": "IU",
    "1": "",
    "%": "%",
}
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_MICRO = re.compile(r"(?<![A-Za-z])u(?=(g|L|l|mol|m|IU|U|s)\b)")
_POWER_OF_TEN = re.compile(r"10\*(-?\d+)")
_EXPONENT = re.compile(r"(?<=[A-Za-z\]])(-?\d+)(?=$|[/.\s)])")


def number(value) -> str:
    """A number as the source recorded it: no rounding, no padding, no exponent notation."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    # 15 significant digits: every decimal a person or device could have written (up to 15 digits) comes back
    # exactly, while the binary noise of a generator's arithmetic (3.5999999999999996) does not show.
    text = format(Decimal(format(value, ".15g")), "f")
    return text if "." in text else text + ".0"  # a decimal stays a decimal (5.0 was sent as 5.0, not 5)


def unit(text: str | None, code: str | None = None) -> str:
    """A UCUM unit as people write it: ``mm[Hg]`` → mmHg, ``{score}`` → nothing, ``mL/min/{1.73_m2}`` →
    mL/min/1.73m², ``kg/m2`` → kg/m², ``10*9/L`` → 10⁹/L, ``umol/L`` → µmol/L. A unit that is not UCUM
    (a human-readable ``unit`` such as "breaths/minute") is kept as it is."""
    raw = (text or code or "").strip()
    if not raw:
        return ""
    if raw in UNIT_WORDS:
        return UNIT_WORDS[raw]
    if raw.startswith("{") and raw.endswith("}") and raw.count("{") == 1:
        return ""  # an annotation alone ({score}, {count}) names what was counted, not a unit
    out = re.sub(r"\{([^}]*)\}", lambda m: m.group(1).replace("_", ""), raw)
    for code_, word in UNIT_WORDS.items():
        if code_.startswith("[") and code_ in out:
            out = out.replace(code_, word)
    out = out.replace("[", "").replace("]", "")
    out = _POWER_OF_TEN.sub(lambda m: "10" + m.group(1).translate(_SUPERSCRIPT), out)
    out = _EXPONENT.sub(lambda m: m.group(1).translate(_SUPERSCRIPT), out)
    out = _MICRO.sub("µ", out)
    return out


def quantity(q: dict | None) -> str:
    """``value unit`` with the comparator (``<5 mmol/L``); an empty string when there is no value."""
    if not isinstance(q, dict) or q.get("value") is None:
        return ""
    shown = f"{q.get('comparator') or ''}{number(q.get('value'))}"
    u = unit(q.get("unit"), q.get("code"))
    return f"{shown} {u}".strip() if not u.startswith("%") else f"{shown}{u}"


def coding_display(coding: dict) -> str:
    """A coding's words: the known display for its system's code when the source sent none or only the code."""
    code, display = coding.get("code"), coding.get("display")
    known = KNOWN_DISPLAYS.get(coding.get("system") or "", {})
    if code in known and (not display or display == code):
        return known[code]
    if not coding.get("system") and code in CATEGORY_DISPLAY and (not display or display == code):
        return CATEGORY_DISPLAY[code]
    return display or ""


def concept(c: dict | None) -> str:
    """A CodeableConcept in words: its text, else a coding's display (known displays for bare codes), else
    the first code."""
    if not isinstance(c, dict):
        return ""
    if c.get("text"):
        return c["text"]
    codings = [x for x in c.get("coding") or [] if isinstance(x, dict)]
    for coding in codings:
        shown = coding_display(coding)
        if shown:
            return shown
    return next((x["code"] for x in codings if x.get("code")), "")


def value_of(element: dict) -> str:
    """The ``value[x]`` of an Observation or one of its components, as recorded; or why there is none."""
    if "valueQuantity" in element:
        return quantity(element["valueQuantity"])
    if "valueCodeableConcept" in element:
        return concept(element["valueCodeableConcept"])
    if "valueBoolean" in element:
        return "Yes" if element["valueBoolean"] else "No"
    if "valueRange" in element:
        r = element["valueRange"] or {}
        return _range(r.get("low"), r.get("high"))
    if "valueRatio" in element:
        r = element["valueRatio"] or {}
        return f"{quantity(r.get('numerator'))} : {quantity(r.get('denominator'))}".strip(" :")
    for key in ("valueInteger", "valueString", "valueDateTime", "valueTime"):
        if key in element:
            return number(element[key]) if key == "valueInteger" else str(element[key])
    if element.get("dataAbsentReason"):
        return f"No value ({concept(element['dataAbsentReason']).lower() or 'not given'})"
    return ""


def _code_in(element: dict, system: str) -> set[str]:
    return {c.get("code") for c in (element.get("code") or {}).get("coding") or [] if c.get("system") == system}


def blood_pressure(components: list[dict]) -> str | None:
    """systolic/diastolic unit, by component code whatever their order; None when either is missing."""
    by_code = {}
    for c in components:
        for code in _code_in(c, LOINC) & {SYSTOLIC, DIASTOLIC}:
            by_code[code] = c.get("valueQuantity") or {}
    if SYSTOLIC not in by_code or DIASTOLIC not in by_code:
        return None
    s, d = by_code[SYSTOLIC], by_code[DIASTOLIC]
    if s.get("value") is None or d.get("value") is None:
        return None
    u = unit(s.get("unit"), s.get("code")) or unit(d.get("unit"), d.get("code"))
    return f"{number(s['value'])}/{number(d['value'])} {u}".strip()


def observation_value(r: dict) -> str:
    """What the Observation says: its own value, then its components (blood pressure as systolic/diastolic,
    any other component by its own name)."""
    parts = []
    own = value_of(r)
    if own:
        parts.append(own)
    components = [c for c in r.get("component") or [] if isinstance(c, dict)]
    if components:
        bp = blood_pressure(components)
        if bp is not None:
            parts.append(bp)
            components = [c for c in components if not _code_in(c, LOINC) & {SYSTOLIC, DIASTOLIC}]
        for c in components:
            shown = value_of(c)
            if shown:
                parts.append(f"{concept(c.get('code')) or 'Component'}: {shown}")
    return "; ".join(parts)


def _range(low: dict | None, high: dict | None) -> str:
    lo, hi = quantity(low), quantity(high)
    if lo and hi:
        lo_unit, hi_unit = (
            unit((low or {}).get("unit"), (low or {}).get("code")),
            unit((high or {}).get("unit"), (high or {}).get("code")),
        )
        if lo_unit == hi_unit and lo_unit:  # 3.5–5.0 mmol/L, not 3.5 mmol/L–5.0 mmol/L
            return f"{number(low['value'])}–{hi}"
        return f"{lo}–{hi}"
    if lo:
        return f"≥ {lo}"
    if hi:
        return f"≤ {hi}"
    return ""


def reference_range(r: dict) -> str:
    """The first reference range in words (``3.5–5.0 mmol/L``, or its text), with whom it applies to."""
    for rr in r.get("referenceRange") or []:
        if not isinstance(rr, dict):
            continue
        shown = _range(rr.get("low"), rr.get("high")) or (rr.get("text") or "")
        if shown:
            applies = concept(rr.get("type")) if rr.get("type") else ""
            return f"{shown} ({applies.lower()})" if applies and applies.lower() != "normal range" else shown
    return ""


def interpretation(r: dict) -> str:
    """High, low, abnormal… in words, from the first interpretation."""
    return concept((r.get("interpretation") or [None])[0])


def category(r: dict) -> str:
    return next((shown for c in r.get("category") or [] if (shown := concept(c))), "")
