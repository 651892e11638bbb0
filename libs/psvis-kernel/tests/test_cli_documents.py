"""`psvis audit replay`'s line per document, for documents of any shape."""

from __future__ import annotations

from psvis.cli.documents import FIELDS, describe


def test_a_document_with_a_view_is_shown_by_its_state_name_and_version() -> None:
    doc = {"view": {"state": "in_use", "name": "Gate", "version": "4"}, "refusals": []}
    assert describe("gate-1", doc) == "in_use Gate v4"
    assert (
        describe("x", {"view": {}, "refusals": [{}]}) == "nothing registered; 1 refusal(s) recorded"
    )


def test_other_documents_show_their_scalars_then_those_one_level_down() -> None:
    doc = {
        "declared_on": "2024-03-01", "reason": "", "count": 3,
        "site": {"site_id": "fair-1", "category": "fair", "location": {"longitude": 1.0}},
        "tags": ["a"],
    }  # fmt: skip
    assert describe("fair-1", doc) == "declared_on 2024-03-01; count 3; site.category fair"


def test_a_long_document_is_cut_short() -> None:
    doc = {f"f{i}": "x" * 60 for i in range(FIELDS + 2)}
    line = describe("k", doc)
    assert line.endswith("; 2 more") and line.count("…") == FIELDS
    assert describe("k", {}) == "no fields"
    assert describe("k", {"items": [1, 2]}) == "fields items"
