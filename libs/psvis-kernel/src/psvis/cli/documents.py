"""One line per read-model document, for `psvis audit replay`: what any service's document
says, without knowing the service."""

from __future__ import annotations

from typing import Any

FIELDS = 8  # fields a line shows at most
VALUE = 40  # characters of a value shown


def describe(key: str, doc: dict[str, Any]) -> str:
    """A document's "view" (a service's own summary of its aggregate: state, name, version),
    if it has one; else its scalar fields, its own first and then those of the objects in it,
    one level down (a site's "site.category"); empty ones and the key itself are left out."""
    view = doc.get("view")
    if isinstance(view, dict):
        if view:
            return f"{view.get('state', '')} {view.get('name', '')} v{view.get('version', '')}"
        # e.g. a refused registration: the refusal is recorded, nothing exists
        return f"nothing registered; {len(doc.get('refusals', []))} refusal(s) recorded"
    fields = _scalars(doc, key, "")
    for name, value in doc.items():
        if isinstance(value, dict):
            fields += _scalars(value, key, f"{name}.")
    if not fields:
        return "no fields" if not doc else f"fields {', '.join(sorted(doc))}"
    more = f"; {len(fields) - FIELDS} more" if len(fields) > FIELDS else ""
    return "; ".join(f"{name} {value}" for name, value in fields[:FIELDS]) + more


def _scalars(doc: dict[str, Any], key: str, prefix: str) -> list[tuple[str, str]]:
    return [
        (prefix + name, _shown(value))
        for name, value in doc.items()
        if isinstance(value, str | int | float) and value != "" and str(value) != key
    ]


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= VALUE else text[: VALUE - 1] + "…"
