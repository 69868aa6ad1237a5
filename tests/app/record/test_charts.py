"""Charts that do not mislead (issue 11 item 6): one marker per organisation on every chart of a page and in
every legend, unique SVG ids and each chart named by its own test, round y ticks with the unit, UK dates on
the x axis and the reference range as a shaded band."""

from __future__ import annotations

import math
import re
from collections import Counter
from html import unescape

import pytest

from app.record import merge
from app.record.charts import Point, date_ticks, legend, nice_ticks, trend_svg
from app.record.merge import Item, SourceRef, numeric_range
from app.record.sections import trends
from app.record.service import ConsolidatedRecord

MARGARET = "9991000372"  # gp, hospital, community, council; HbA1c, eGFR, weight, blood pressure over years
UK_DAY = re.compile(r"^\d{2}-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-\d{4}$")
UK_MONTH = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-\d{4}$")
SHAPE_TAG = {
    "circle": "circle",
    "square": "rect",
    "triangle": "polygon",
    "diamond": "polygon",
    "triangle-down": "polygon",
}


def series(source_values: list[tuple[str, float, str]]) -> list[Point]:
    return [Point(when, value, source) for when, value, source in source_values]


def markers(svg: str) -> list[tuple[str, str, str]]:
    """(element, fill, title) for each plotted point."""
    found = re.findall(r'<(circle|rect|polygon) [^>]*?fill="(#[0-9a-f]{6})"[^>]*><title>([^<]*)</title>', svg)
    return [(tag, fill, unescape(title)) for tag, fill, title in found if "Reference range" not in title]


def accessible_name(page: str, svg: str) -> str:
    """The text an assistive technology announces: the element (anywhere on the page) aria-labelledby names."""
    ids = re.search(r'aria-labelledby="([^"]+)"', svg).group(1).split()
    return " ".join(unescape(re.search(rf'id="{re.escape(i)}"[^>]*>([^<]*)<', page).group(1)) for i in ids)


def y_ticks(svg: str) -> list[str]:
    return re.findall(r'class="trend__ytick"[^>]*>([^<]*)<', svg)


def x_ticks(svg: str) -> list[str]:
    return re.findall(r'class="trend__xtick"[^>]*>([^<]*)<', svg)


# ---- one marker per organisation ------------------------------------------------------------------------


def test_an_organisation_has_the_same_marker_on_every_chart_and_legend() -> None:
    hba1c = series(
        [("2020-01-01", 48, "GP practice"), ("2021-01-01", 52, "Hospital"), ("2022-01-01", 50, "GP practice")]
    )
    weight = series([("2020-02-01", 80, "Hospital"), ("2021-02-01", 82, "Hospital"), ("2022-02-01", 81, "Council")])
    # The page's key is worked out once from every organisation, whatever order they come in.
    key = legend(["Hospital", "Council", "GP practice", "Hospital"])
    assert key == legend(["GP practice", "Hospital", "Council"])
    a = markers(trend_svg("HbA1c", "mmol/mol", hba1c, key, ident="hba1c"))
    b = markers(trend_svg("Body weight", "kg", weight, key, ident="body-weight"))
    style = {}
    for tag, fill, title in a + b:
        source = title.rsplit("(", 1)[1].rstrip(")")
        style.setdefault(source, set()).add((tag, fill))
    # Hospital is second on one chart and first on the other; it still has one look everywhere.
    assert {s: len(looks) for s, looks in style.items()} == {"GP practice": 1, "Hospital": 1, "Council": 1}
    assert len({next(iter(looks)) for looks in style.values()}) == 3  # and the three look different
    # Each chart's legend shows exactly its organisations, drawn as the chart draws them.
    for points, drawn in ((hba1c, a), (weight, b)):
        entries = key.entries({p.source for p in points})
        assert [e.label for e in entries] == sorted({title.rsplit("(", 1)[1].rstrip(")") for *_, title in drawn})
        for e in entries:
            (look,) = style[e.label]
            assert look == (SHAPE_TAG[e.shape], e.colour)
            assert f'fill="{e.colour}"' in e.swatch and f"<{SHAPE_TAG[e.shape]} " in e.swatch
            assert 'aria-hidden="true"' in e.swatch


def test_many_organisations_still_get_distinct_markers() -> None:
    key = legend([f"Organisation {i:02d}" for i in range(12)])
    assert len(set(key.markers.values())) == 12


# ---- ids and accessible names ---------------------------------------------------------------------------


def test_several_charts_on_a_page_have_unique_ids_and_their_own_names() -> None:
    names = ["Systolic blood pressure", "Diastolic blood pressure", "HbA1c", "eGFR", "Body weight"]
    points = series([("2019-03-05", 100, "GP"), ("2020-03-05", 110, "GP"), ("2021-03-05", 105, "Hospital")])
    key = legend(["GP", "Hospital"])
    slugs = [n.lower().replace(" ", "-") for n in names]
    svgs = [trend_svg(n, "u", points, key, ident=s) for n, s in zip(names, slugs, strict=True)]
    page = "".join(svgs)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert ids and not [i for i, n in Counter(ids).items() if n > 1]
    for name, svg in zip(names, svgs, strict=True):
        assert accessible_name(page, svg) == f"{name} trend, 3 results from 05-Mar-2019 to 05-Mar-2021"
        described = re.search(r'aria-describedby="([^"]+)"', svg).group(1)
        assert f'<desc id="{described}">' in svg


def test_series_whose_names_make_the_same_slug_get_different_ones() -> None:
    rows = [result("gp", f"w{i}", f"202{i}-01-01", 80 + i, text="Body weight") for i in range(3)] + [
        result("hospital", f"W{i}", f"202{i}-02-01", 81 + i, text="Body Weight") for i in range(2)
    ]
    found = trends(record(rows))
    assert [t.slug for t in found] == ["body-weight", "body-weight-2"]


# ---- axes ---------------------------------------------------------------------------------------------


def test_y_ticks_are_round_numbers_with_the_unit() -> None:
    assert nice_ticks(97.3, 131.8) == [90, 100, 110, 120, 130, 140]
    points = series([("2020-01-01", 97.3, "GP"), ("2020-06-01", 131.8, "GP"), ("2021-01-01", 112.4, "Hospital")])
    svg = trend_svg("Glucose", "mg/dL", points, legend(["GP", "Hospital"]), ident="glucose")
    assert y_ticks(svg) == ["90", "100", "110", "120", "130", "140"]
    assert re.search(r'class="trend__unit"[^>]*>mg/dL<', svg)
    assert "97.3" not in y_ticks(svg) and "131.8" not in y_ticks(svg)  # the data's extremes are not ticks
    assert "Lowest 97.3 mg/dL, highest 131.8 mg/dL" in svg  # they are in the description
    small = trend_svg("Creatinine ratio", "", series([("2020-01-01", 0.12, "GP"), ("2021-01-01", 0.87, "GP")]),
                      legend(["GP"]), ident="ratio")  # fmt: skip
    assert y_ticks(small) == ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert "trend__unit" not in small  # no unit, no empty label


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(97.3, 131.8), (0.12, 0.87), (4.31, 4.38), (-3, 2), (5, 5), (0, 0), (1200, 98000), (35.9, 36.1), (48, 49)],
)
def test_ticks_are_one_two_two_and_a_half_or_five_times_a_power_of_ten(lo: float, hi: float) -> None:
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5)), (ticks, step)
    assert ticks[0] <= lo and ticks[-1] >= hi
    assert 3 <= len(ticks) <= 7
    assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in zip(ticks, ticks[1:], strict=False))
    assert all(math.isclose(t / step, round(t / step), abs_tol=1e-6) for t in ticks)


def test_x_axis_dates_are_uk_dates_not_iso() -> None:
    years = series([("2019-03-05", 48, "GP"), ("2020-06-01T23:30:00Z", 50, "GP"), ("2023-02-01", 52, "GP")])
    svg = trend_svg("HbA1c", "mmol/mol", years, legend(["GP"]), ident="hba1c")
    labels = x_ticks(svg)
    assert len(labels) >= 3 and all(UK_MONTH.match(label) for label in labels), labels
    assert not re.search(r"\d{4}-\d{2}-\d{2}", svg)  # no ISO date anywhere, titles included
    assert "HbA1c trend, 3 results from 05-Mar-2019 to 01-Feb-2023" in svg
    assert "02-Jun-2020: 50 mmol/mol (GP)" in svg  # 23:30 UTC in June is the next day in the UK
    days = series([("2024-03-05", 5.1, "GP"), ("2024-03-12T09:00:00", 5.3, "GP"), ("2024-03-27", 5.0, "GP")])
    labels = x_ticks(trend_svg("Potassium", "mmol/L", days, legend(["GP"]), ident="potassium"))
    assert labels and all(UK_DAY.match(label) for label in labels), labels
    assert labels[0] == "05-Mar-2024"


def test_date_ticks_stay_few_and_inside_the_span() -> None:
    from datetime import date

    for start, end in (("1980-01-15", "2024-09-20"), ("2019-03-05", "2019-09-20"), ("2024-01-01", "2024-01-02")):
        first, last = date.fromisoformat(start).toordinal(), date.fromisoformat(end).toordinal()
        ticks = date_ticks(first, last)
        assert 1 <= len(ticks) <= 6, (start, end, ticks)
        assert all(first <= day <= last for day, _ in ticks)


# ---- the reference range --------------------------------------------------------------------------------


def test_the_reference_range_is_a_band_behind_the_points_with_words() -> None:
    points = series([("2020-01-01", 38, "GP"), ("2021-01-01", 47, "GP"), ("2022-01-01", 55, "Hospital")])
    key = legend(["GP", "Hospital"])
    svg = trend_svg("HbA1c", "mmol/mol", points, key, ident="hba1c", band=(20.0, 42.0))
    band = re.search(r'<rect class="trend__band"[^>]*y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', svg)
    assert band, "no band"
    top, bottom = float(band.group(1)), float(band.group(1)) + float(band.group(2))
    ticks = dict(
        (label, float(y) - 4)
        for y, label in re.findall(r'class="trend__ytick" x="[\d.]+" y="([\d.]+)"[^>]*>([^<]*)<', svg)
    )
    assert top < ticks["40"] < bottom and top < ticks["30"] < bottom  # 20–42 covers 30 and 40…
    assert math.isclose(ticks["20"], bottom, abs_tol=0.2)  # …ends at 20…
    assert not top <= ticks["50"] <= bottom and not top <= ticks["60"] <= bottom  # …and not 50 or 60
    assert svg.index("trend__band") < svg.index("<polyline")  # drawn behind the line and the points
    assert "Reference range 20 to 42 mmol/mol, shown as a shaded band." in svg  # in the description
    assert [e.label for e in key.entries(["GP"], (20.0, 42.0), "mmol/mol")][-1] == (
        "Reference range 20 to 42 mmol/mol (shaded)"
    )
    plain = trend_svg("HbA1c", "mmol/mol", points, key, ident="hba1c")
    assert "trend__band" not in plain and "Reference range" not in plain
    assert not any("Reference" in e.label for e in key.entries(["GP"], None, "mmol/mol"))
    # An open end runs to the edge of the plot; the words say which end.
    upper = trend_svg("Cholesterol", "mmol/L", points, key, ident="chol", band=(None, 5.0))
    assert "Reference range up to 5 mmol/L" in upper and "trend__band" in upper
    # A range below the values is still on the chart: the axis reaches down to it.
    assert y_ticks(svg) == ["20", "30", "40", "50", "60"] and y_ticks(plain) == ["35", "40", "45", "50", "55"]


def test_numeric_range_reads_low_and_high_in_the_values_unit() -> None:
    def obs(ranges, unit="mmol/mol", **extra):
        return {
            "code": {"text": "HbA1c"},
            "valueQuantity": {"value": 48, "unit": unit},
            "referenceRange": ranges,
            **extra,
        }

    q = {"unit": "mmol/mol"}
    assert numeric_range(obs([{"low": {"value": 20, **q}, "high": {"value": 42, **q}}])) == {"HbA1c": (20.0, 42.0)}
    assert numeric_range(obs([{"high": {"value": 42, **q}}])) == {"HbA1c": (None, 42.0)}
    assert numeric_range(obs([{"text": "under 42"}])) == {}  # words only: no band
    assert numeric_range(obs([{"low": {"value": 4, "unit": "%"}, "high": {"value": 6, "unit": "%"}}])) == {}
    assert numeric_range(obs([{"low": {"value": True}, "high": {"value": 42}}])) == {}
    assert numeric_range(obs([{"low": {"value": 50}, "high": {"value": 42}}])) == {}  # upside down
    assert numeric_range(obs([{"text": "adult"}, {"low": {"value": 20}, "high": {"value": 42}}])) == {
        "HbA1c": (20.0, 42.0)
    }
    bp = {
        "code": {"text": "Blood pressure"},
        "component": [
            {
                "code": {"text": "Systolic blood pressure"},
                "valueQuantity": {"value": 130, "unit": "mm[Hg]"},
                "referenceRange": [{"low": {"value": 90, "unit": "mm[Hg]"}, "high": {"value": 140, "unit": "mmHg"}}],
            },
            {"code": {"text": "Diastolic blood pressure"}, "valueQuantity": {"value": 80, "unit": "mm[Hg]"}},
        ],
    }
    assert numeric_range(bp) == {"Systolic blood pressure": (90.0, 140.0)}


def result(org: str, id_: str, when: str, value: float, text: str = "HbA1c", ranges: list | None = None) -> Item:
    resource = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"text": text},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mmol/mol"},
        **({"referenceRange": ranges} if ranges else {}),
    }
    ref = f"Observation/{id_}"
    return Item(resource, SourceRef(org, org.title(), "X1", ref, f"http://{org}.test/fhir/{ref}", None))


def record(items: list[Item]) -> ConsolidatedRecord:
    return ConsolidatedRecord(None, {}, [], sections={"results": merge.results(items)})


def test_a_trend_carries_the_latest_results_range() -> None:
    def rng(low, high):
        return [{"low": {"value": low, "unit": "mmol/mol"}, "high": {"value": high, "unit": "mmol/mol"}}]

    found = trends(
        record(
            [
                result("gp", "a", "2020-01-01", 40, ranges=rng(20, 40)),
                result("hospital", "b", "2022-01-01", 44, ranges=rng(20, 42)),
                result("gp", "c", "2023-01-01", 46),  # the newest says nothing about its range
            ]
        )
    )
    assert [(t.name, t.band) for t in found] == [("HbA1c", (20.0, 42.0))]
    assert trends(record([result("gp", "a", "2020-01-01", 40), result("gp", "c", "2021-01-01", 46)]))[0].band is None


# ---- the real pages -------------------------------------------------------------------------------------


@pytest.fixture
def viewer(sandbox):
    yield sandbox.viewer_app
    sandbox.viewer_app.extensions["launch"].discovery.clear()


def test_the_results_page_charts_are_named_apart_and_share_one_key(http, sandbox, viewer):
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET})
    assert resp.status_code == 200, resp.text[:2000]
    page = http.get(resp.url + "results").text
    figures = re.findall(r'<figure class="trend-card" id="trend-([^"]+)">(.*?)</figure>', page, re.S)
    assert len(figures) >= 4, "expected several trends for Margaret"
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert not [i for i, n in Counter(ids).items() if n > 1], "duplicate ids on the results page"
    names, swatches = [], {}
    for _slug, figure in figures:
        title = unescape(re.search(r"<figcaption><a [^>]*>([^<]+)</a>", figure).group(1))
        svg = re.search(r'<svg class="trend".*?</svg>', figure, re.S).group(0)
        name = accessible_name(page, svg)
        assert name.startswith(f"{title} trend, "), (title, name)
        names.append(name)
        assert y_ticks(svg) and x_ticks(svg)
        assert all(UK_DAY.match(x) or UK_MONTH.match(x) for x in x_ticks(svg))
        for swatch, label in re.findall(r'<li>(<svg class="legend__swatch".*?</svg>)([^<]+)</li>', figure):
            swatches.setdefault(unescape(label), set()).add(swatch)
    assert len(set(names)) == len(names)
    assert not any("blood pressure" in n.lower() for n in names if "hba1c" in n.lower() or "egfr" in n.lower())
    assert {"Riverside Medical Practice", "Northgate Hospitals NHS Foundation Trust"} <= set(swatches)
    assert all(len(drawn) == 1 for drawn in swatches.values()), swatches  # one look per organisation
    assert len({next(iter(d)) for d in swatches.values()}) == len(swatches)  # and no two alike
    # The trend's own page: the same key, and its table's dates are UK dates.
    slug = next(s for s, _ in figures if s.startswith("hba1c"))
    detail = http.get(resp.url + f"results/trend/{slug}").text
    for swatch, label in re.findall(r'<li>(<svg class="legend__swatch".*?</svg>)([^<]+)</li>', detail):
        assert swatches[unescape(label)] == {swatch}
    cells = re.findall(r'<td class="nowrap">([^<]+)</td>', detail)
    assert cells and all(UK_DAY.match(c) for c in cells)
