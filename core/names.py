"""How a person's name is shown: one rule for the banner, the audit trail, contacts and staff."""

from __future__ import annotations


def display_name(names: list | None, *, with_title: bool = False) -> str | None:
    """The official (or usual) name's text, else its given names then family name; None when there is none.

    ``with_title`` keeps a prefix such as "Dr" (staff names); patients are shown without one.
    """
    if not names:
        return None
    chosen = next((n for n in names if isinstance(n, dict) and n.get("use") in ("official", "usual")), names[0])
    if not isinstance(chosen, dict):
        return None
    if chosen.get("text"):
        return chosen["text"]
    parts = [*(chosen.get("prefix") or [] if with_title else []), *(chosen.get("given") or []), chosen.get("family")]
    return " ".join(p for p in parts if p).strip() or None


def banner_name(names: list | None) -> str | None:
    """The NHS CUI patient banner form: ``FAMILY, Given Names (Title)`` — the family name in capitals so it
    cannot be mistaken for a given name. A name recorded only as text is shown as it was written."""
    if not names:
        return None
    chosen = next((n for n in names if isinstance(n, dict) and n.get("use") in ("official", "usual")), names[0])
    if not isinstance(chosen, dict):
        return None
    family = (chosen.get("family") or "").strip()
    given = " ".join(g for g in chosen.get("given") or [] if g).strip()
    if not family:
        return chosen.get("text") or given or None
    title = " ".join(p for p in chosen.get("prefix") or [] if p).strip()
    shown = f"{family.upper()}, {given}" if given else family.upper()
    return f"{shown} ({title})" if title else shown
