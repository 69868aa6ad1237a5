"""The levels of record a role may see. The record catalogue says which levels may open each section;
the access policy says which level a user has. Named once here so both speak the same words."""

from __future__ import annotations

DETAILED = "detailed"  # the whole clinical record
SUMMARY = "summary"  # the summary and its lists (B0370/B0401 summary-record activities)
DEMOGRAPHICS = "demographics"  # administrative roles: who the person is and who is involved in care

CLINICAL = frozenset({DETAILED, SUMMARY})
ONLY_DETAILED = frozenset({DETAILED})
