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
