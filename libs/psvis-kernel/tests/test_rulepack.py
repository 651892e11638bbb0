"""RULES-2: a pack cites its own city's text, in list items and in `*_article` parameters."""

from __future__ import annotations

import pytest
from psvis.rulepack import RulePackError, parse_pack


def pack(**params: object) -> dict[str, object]:
    rule = {"spec": "REG-9", "article": "Xi'an 22(2)", "summary": "staff", **params}
    return {"pack": {"city": "xian", "name": "Xi'an"}, "rules": {"personnel": rule}}


def test_an_article_parameter_cites_the_citys_own_text() -> None:
    rule = parse_pack(pack(staff_files_article="Xi'an 22(3)")).rule("personnel")
    assert rule.param("staff_files_article") == "Xi'an 22(3)"
    with pytest.raises(RulePackError, match="'Wuhan 16\\(2\\)' does not cite Xi'an"):
        parse_pack(pack(staff_files_article="Wuhan 16(2)"))
    with pytest.raises(RulePackError, match="does not cite Xi'an"):
        parse_pack(pack(places=[{"place": "toilet", "article": "Wuhan 18(3)"}]))
