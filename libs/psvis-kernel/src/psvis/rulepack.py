"""RULES-1..3: jurisdiction rule packs as TOML data, each rule citing its article."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from psvis.errors import Citation

SPEC_ID = re.compile(r"^(REG|RULES|OPS|ING|ACC|RET|SHR|AUD)-\d+$")
BASE_KEYS = {"spec", "article", "summary", "silent", "default"}


class RulePackError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    id: str
    spec: str
    article: str
    summary: str
    silent: bool = False
    default: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def cite(self, reason: str, article: str = "") -> Citation:
        """A citation of this rule; `article` narrows it to one item (e.g. Wuhan 18)."""
        return Citation(
            rule=self.id, article=article or self.article, spec=self.spec, reason=reason
        )

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)


@dataclass(frozen=True)
class ParamSpec:
    """What a service needs of one rule: its parameters and their Python types."""

    rule_id: str
    params: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RulePack:
    city: str
    name: str
    title: str
    in_force: date | None
    source: str
    rules: Mapping[str, Rule]

    def rule(self, rule_id: str) -> Rule:
        try:
            return self.rules[rule_id]
        except KeyError:
            raise RulePackError(f"rule pack {self.city} has no rule {rule_id!r}") from None


def parse_pack(data: Mapping[str, Any], origin: str = "<pack>") -> RulePack:
    meta = data.get("pack")
    if not isinstance(meta, dict) or not meta.get("city") or not meta.get("name"):
        raise RulePackError(f"{origin}: a [pack] table with city and name is required")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, dict) or not raw_rules:
        raise RulePackError(f"{origin}: no [rules.*] tables")
    rules = {
        rid: _parse_rule(rid, body, str(meta["name"]), origin) for rid, body in raw_rules.items()
    }
    in_force = meta.get("in_force")
    return RulePack(
        city=str(meta["city"]),
        name=str(meta["name"]),
        title=str(meta.get("title", "")),
        in_force=in_force if isinstance(in_force, date) else None,
        source=str(meta.get("source", "")),
        rules=rules,
    )


def _parse_rule(rule_id: str, body: Any, city_name: str, origin: str) -> Rule:
    where = f"{origin}: rule {rule_id}"
    if not isinstance(body, dict):
        raise RulePackError(f"{where}: must be a table")
    spec = str(body.get("spec", ""))
    if not SPEC_ID.match(spec):
        raise RulePackError(f"{where}: spec {spec!r} is not a requirement id like REG-4")
    silent = bool(body.get("silent", False))
    article = str(body.get("article", ""))
    default = str(body.get("default", ""))
    if silent and not default:
        raise RulePackError(f"{where}: a silent rule must state the default it applies (RULES-3)")
    if not silent and not article:
        raise RulePackError(f"{where}: cites no article")
    if article and not article.startswith(city_name + " "):
        raise RulePackError(f"{where}: article {article!r} does not cite {city_name}'s own text")
    params = {k: v for k, v in body.items() if k not in BASE_KEYS}
    for item in _cited_items(params):
        if not item.startswith(city_name + " "):
            raise RulePackError(f"{where}: item article {item!r} does not cite {city_name}")
    return Rule(rule_id, spec, article, str(body.get("summary", "")), silent, default, params)


def _cited_items(params: Mapping[str, Any]) -> list[str]:
    """The articles a rule's parameters cite: its list items', and any `*_article` parameter."""
    listed = [
        str(entry["article"])
        for value in params.values()
        if isinstance(value, list)
        for entry in value
        if isinstance(entry, dict) and "article" in entry
    ]
    return listed + [str(value) for name, value in params.items() if name.endswith("_article")]


def load_pack(path: Path) -> RulePack:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RulePackError(f"{path}: not valid TOML: {e}") from e
    except UnicodeDecodeError as e:  # TOML is UTF-8
        raise RulePackError(
            f"{path}: not valid TOML: not UTF-8 ({e.reason} at byte {e.start})"
        ) from e
    except OSError as e:  # missing, a folder, unreadable
        raise RulePackError(f"{path}: cannot be read: {e.strerror or e}") from e
    return parse_pack(data, str(path))


def check_requirements(pack: RulePack, needs: list[ParamSpec]) -> list[str]:
    """Problems that stop a service from using this pack; empty when it is fit."""
    problems = []
    for need in needs:
        rule = pack.rules.get(need.rule_id)
        if rule is None:
            problems.append(f"{pack.city}: missing rule {need.rule_id}")
            continue
        if rule.silent:
            continue
        for name, kind in need.params.items():
            if name not in rule.params:
                problems.append(f"{pack.city}: rule {need.rule_id} lacks parameter {name}")
            elif not isinstance(rule.params[name], kind):
                problems.append(f"{pack.city}: rule {need.rule_id}.{name} has the wrong type")
    return problems


def find_pack(city: str, search: list[Path]) -> Path:
    for folder in search:
        candidate = folder / f"{city}.toml"
        if candidate.exists():
            return candidate
    raise RulePackError(f"no rule pack for {city!r} in {', '.join(map(str, search))}")
