"""Values read as recorded (issue 11 item 1): numbers, UCUM units, blood pressure, components, ranges, words."""

from __future__ import annotations

import pytest

from app.record import values
from app.record.merge import numeric_points

LOINC = "http://loinc.org"


def component(code: str, name: str, value, unit="mm[Hg]") -> dict:
    return {
        "code": {"coding": [{"system": LOINC, "code": code, "display": name}]},
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


SYSTOLIC = ("8480-6", "Systolic blood pressure")
DIASTOLIC = ("8462-4", "Diastolic blood pressure")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("mm[Hg]", "mmHg"),
        ("{score}", ""),
        ("mL/min/{1.73_m2}", "mL/min/1.73m²"),
        ("kg/m2", "kg/m²"),
        ("10*9/L", "10⁹/L"),
        ("10*12/L", "10¹²/L"),
        ("umol/L", "µmol/L"),
        ("ug/L", "µg/L"),
        ("Cel", "°C"),
        ("[lb_av]", "lb"),
        ("mmol/mol", "mmol/mol"),
        ("%", "%"),
        ("/min", "/min"),
        ("breaths/minute", "breaths/minute"),  # human-readable units stay as sent
        ("mg/dL", "mg/dL"),
    ],
)
def test_ucum_units_are_written_as_people_write_them(raw: str, shown: str) -> None:
    assert values.unit(raw) == shown


def test_a_missing_unit_text_falls_back_to_the_ucum_code() -> None:
    assert values.unit(None, "mm[Hg]") == "mmHg"
    assert values.unit(None, None) == ""


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [
        (104.43, "104.43"),
        (0.004, "0.004"),  # the old two-decimal rounding showed "0"
        (5, "5"),
        (5.5, "5.5"),
        (72.4500000001, "72.4500000001"),  # what was sent, not what would look tidy
        (1e-7, "0.0000001"),  # never exponent notation
        (123456789.0, "123456789.0"),
        (3.5999999999999996, "3.6"),  # a generator's binary noise (Synthea), beyond a double's 15 digits
        (236.63796896190124, "236.637968961901"),  # long, but what the source generated, to 15 digits
    ],
)
def test_numbers_keep_the_precision_the_source_gave(recorded, shown: str) -> None:
    assert values.number(recorded) == shown


def test_no_float_noise_from_arithmetic_on_the_way() -> None:
    # The JSON parser turns 104.43 into the nearest double; the shortest repr gives the digits back.
    import json

    assert values.number(json.loads('{"v": 104.43}')["v"]) == "104.43"
    assert values.number(json.loads('{"v": 0.1}')["v"]) == "0.1"


def test_blood_pressure_is_systolic_over_diastolic_whatever_the_order() -> None:
    diastolic_first = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "component": [component(*DIASTOLIC, 72.45), component(*SYSTOLIC, 105.83)],
    }
    assert values.observation_value(diastolic_first) == "105.83/72.45 mmHg"
    systolic_first = dict(diastolic_first, component=list(reversed(diastolic_first["component"])))
    assert values.observation_value(systolic_first) == "105.83/72.45 mmHg"


def test_blood_pressure_with_only_one_component_names_it() -> None:
    only_systolic = {"component": [component(*SYSTOLIC, 140)]}
    assert values.observation_value(only_systolic) == "Systolic blood pressure: 140 mmHg"


def test_other_components_show_each_under_its_own_name() -> None:
    panel = {
        "valueQuantity": {"value": 7, "unit": "{score}"},
        "component": [
            component("1234-5", "Heart rate", 88, "/min"),
            {"code": {"text": "Smoker"}, "valueBoolean": False},
            {"code": {"text": "Comment"}, "valueString": "Patient anxious"},
        ],
    }
    assert values.observation_value(panel) == "7; Heart rate: 88 /min; Smoker: No; Comment: Patient anxious"


@pytest.mark.parametrize(
    ("element", "shown"),
    [
        ({"valueQuantity": {"value": 4.2, "comparator": "<", "unit": "mmol/L"}}, "<4.2 mmol/L"),
        ({"valueQuantity": {"value": 12.5, "unit": "%"}}, "12.5%"),
        ({"valueBoolean": True}, "Yes"),
        ({"valueInteger": 3}, "3"),
        ({"valueString": "Trace"}, "Trace"),
        ({"valueRange": {"low": {"value": 2, "unit": "mg"}, "high": {"value": 4, "unit": "mg"}}}, "2–4 mg"),
        (
            {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}},
            "1 : 128",
        ),
        (
            {"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]}},
            "260385009",
        ),
        (
            {"dataAbsentReason": {"coding": [{"code": "not-performed", "display": "Not Performed"}]}},
            "No value (not performed)",
        ),
    ],
)
def test_every_kind_of_value_reads_as_recorded(element: dict, shown: str) -> None:
    assert values.value_of(element) == shown


def test_reference_range_and_interpretation_in_words() -> None:
    r = {
        "valueQuantity": {"value": 6.1, "unit": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 5.3, "unit": "mmol/L"}}],
        "interpretation": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}
        ],
    }
    assert values.reference_range(r) == "3.5–5.3 mmol/L"
    assert values.interpretation(r) == "High"
    assert values.reference_range({"referenceRange": [{"high": {"value": 5, "unit": "mmol/L"}}]}) == "≤ 5 mmol/L"
    assert values.reference_range({"referenceRange": [{"text": "Negative"}]}) == "Negative"
    assert values.reference_range({}) == ""


def test_category_is_shown_by_display_never_by_bare_code() -> None:
    synthea = {
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "vital-signs",
                    }
                ]
            }
        ]
    }
    assert values.category(synthea) == "Vital signs"
    no_display = {"category": [{"coding": [{"code": "laboratory"}]}]}
    assert values.category(no_display) == "Laboratory"
    # A display the source did write is kept as written.
    own_words = {"category": [{"coding": [{"code": "laboratory", "display": "Pathology"}]}]}
    assert values.category(own_words) == "Pathology"


def test_charts_plot_components_with_readable_units_and_ignore_booleans() -> None:
    r = {
        "code": {"text": "Blood pressure"},
        "component": [
            component(*DIASTOLIC, 80),
            component(*SYSTOLIC, 120),
            {"code": {"text": "x"}, "valueQuantity": {"value": True}},
        ],
    }
    assert numeric_points(r) == {
        "Diastolic blood pressure": (80.0, "mmHg"),
        "Systolic blood pressure": (120.0, "mmHg"),
    }


def test_trend_values_keep_the_recorded_form() -> None:
    r = {"code": {"text": "HbA1c"}, "valueQuantity": {"value": 55, "unit": "mmol/mol"}}
    value, unit = numeric_points(r)["HbA1c"]
    assert values.number(value) == "55" and unit == "mmol/mol"  # not "55.0"
