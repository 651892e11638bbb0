"""REG-9 findings of read models folded from older logs: pure, no I/O."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from google.protobuf.message import Message
from psvis.common.v1 import envelope_pb2 as pb
from psvis.readstore.port import Document
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import load_pack
from psvis_registry.findings import all_findings
from psvis_registry.projections import fold_system

RULES = Path(__file__).resolve().parents[3] / "rules"


def folded(*events: Message) -> Document:
    doc: Document | None = None
    for version, event in enumerate(events, start=1):
        doc = fold_system(doc, event, pb.EventEnvelope(stream_version=version))
    assert doc is not None
    return doc


def in_use(*more: Message) -> Document:
    registered = reg.SystemRegistered(
        system_id="sys-1", name="Gate", managing_unit="unit-a", operator="Op",
        site=reg.Site(site_id="s-1", category="other"), registered_on="2024-01-02",
    )  # fmt: skip
    return folded(registered, reg.SystemPutIntoUse(in_use_on="2024-02-01"), *more)


def reg9(doc: Document, as_of: str) -> list[tuple[str, str, str]]:
    found = all_findings([doc], [], [], load_pack(RULES / "wuhan.toml"), date.fromisoformat(as_of))
    return [(f.status, f.since, f.detail) for f in found if f.spec == "REG-9"]


def test_reg9_a_person_recorded_without_a_date_is_on_file_from_the_systems_start() -> None:
    """Logs written before on_file_since was kept fold to a person on file since the system
    went into use: untrained and unfiled until the days recorded, then resolved with them."""
    person = reg.MonitoringPersonnelRegistered(
        person_id="p-1", name="Wang", duty="monitoring",
        trained_on="2024-03-01", filed_with_police_on="2024-03-01",
    )  # fmt: skip
    doc = in_use(person)
    assert reg9(doc, "2024-02-10") == [
        ("open", "2024-02-01", "p-1 has no recorded training"),
        ("open", "2024-02-01", "p-1 is not filed with the police"),
    ]
    assert reg9(doc, "2024-03-01") == [
        ("resolved", "2024-02-01", "p-1 had no recorded training until 2024-03-01"),
        ("resolved", "2024-02-01", "p-1 was not filed with the police until 2024-03-01"),
    ]


def test_reg9_a_person_trained_and_filed_by_the_day_they_are_on_file_is_no_finding() -> None:
    person = reg.MonitoringPersonnelRegistered(
        person_id="p-1", name="Wang", duty="monitoring", on_file_since="2024-03-05",
        trained_on="2024-03-05", filed_with_police_on="2024-01-12",
    )  # fmt: skip
    doc = in_use(person)
    assert [status for status, _, _ in reg9(doc, "2024-06-01")] == ["resolved"]  # nobody, before


def test_reg9_nobody_on_file_resolves_on_the_day_the_first_person_is() -> None:
    person = reg.MonitoringPersonnelRegistered(
        person_id="p-1", name="Wang", duty="monitoring", on_file_since="2024-03-05",
        trained_on="2024-01-10", filed_with_police_on="2024-01-12",
    )  # fmt: skip
    doc = in_use(person)
    ((status, since, _),) = reg9(doc, "2024-03-04")
    assert (status, since) == ("open", "2024-02-01")
    ((status, since, detail),) = reg9(doc, "2024-03-05")
    assert (status, since) == ("resolved", "2024-02-01") and "until 2024-03-05" in detail
