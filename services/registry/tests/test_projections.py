"""The catalogue read model: JSON folds give exactly the documents of the SystemView fold."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from psvis.common.v1 import envelope_pb2 as pb
from psvis.readstore.port import Document, canonical_json
from psvis.registry.v1 import registry_pb2 as reg
from psvis_registry import domain
from psvis_registry.projections import fold_site, fold_system, view_of

START = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
PERSON_DATES = ("trained_on", "filed_with_police_on", "on_file_since")


def reference_fold(doc: Document | None, event: Message, env: pb.EventEnvelope) -> Document:
    """The fold as it was first written: through a SystemView and back, for every event."""
    doc = json.loads(
        canonical_json(doc or {"view": {}, "refusals": [], "relocations": [], "steps": {}})
    )
    view = view_of(doc)
    view.version = env.stream_version
    on = env.occurred_at.ToDatetime().date().isoformat()
    match event:
        case reg.SystemRegistered():
            view.MergeFrom(
                reg.SystemView(
                    system_id=event.system_id, name=event.name, managing_unit=event.managing_unit,
                    operator=event.operator, state=domain.PLANNED, site=event.site,
                    cameras=event.cameras, registered_on=event.registered_on,
                    connects_to_sharing_platform=event.connects_to_sharing_platform,
                )
            )  # fmt: skip
            doc["pre_existing"], doc["built_on"] = event.pre_existing, event.built_on
            doc["construction_project"] = event.construction_project
        case reg.SystemFiled():
            view.filed_on = view.filed_on or event.filed_on
            doc["filings"] = sorted([*doc.get("filings", []), event.filed_on])
        case reg.DesignReviewed():
            view.state = domain.REVIEWED if event.passed else domain.REJECTED
            if event.passed:
                doc["steps"].setdefault("designed", event.reviewed_on)
        case reg.ConstructionCompleted():
            view.state = domain.BUILT
            doc["steps"].setdefault("built", event.completed_on)
        case reg.AcceptanceRecorded():
            view.state = domain.ACCEPTED if event.passed else domain.RECTIFICATION
            view.accepted_on = event.accepted_on if event.passed else view.accepted_on
        case reg.RectificationCompleted():
            view.state = domain.RECTIFIED
        case reg.SystemPutIntoUse():
            view.state, view.in_use_on = domain.IN_USE, event.in_use_on
        case reg.ChangeFiled():
            view.changes.append(event)
            for camera in view.cameras:
                if camera.camera_id != event.camera_id:
                    continue
                if event.attribute == "orientation":
                    camera.orientation_deg = float(event.new_value)
                elif event.attribute == "position":
                    camera.position = event.new_value
                else:
                    camera.function = event.new_value
        case reg.SystemRelocated():
            moved = MessageToDict(event, preserving_proto_field_name=True)
            doc["relocations"].append({**moved, "from_site_id": view.site.site_id})
            view.site.CopyFrom(event.new_site)
            for placed in event.placements:  # REG-2: each camera where the move placed it
                for camera in view.cameras:
                    if camera.camera_id == placed.camera_id:
                        camera.ClearField("location")
                        if placed.HasField("location"):
                            camera.location.CopyFrom(placed.location)
                        camera.address_code = placed.address_code
        case reg.SystemRemoved():
            view.state = domain.REMOVED
            doc["removed_on"] = event.removed_on
            doc["removal_reported_on"] = event.reported_on
        case reg.ArchiveAttached():
            view.archives.append(event)
        case reg.SignageInstalled():
            signed = set(view.signed_camera_ids) | set(event.camera_ids)
            del view.signed_camera_ids[:]
            view.signed_camera_ids.extend(sorted(signed))
            since = doc.setdefault("signage", {})
            for camera_id in event.camera_ids:
                since[camera_id] = min(since.get(camera_id, event.installed_on), event.installed_on)
        case reg.MonitoringPersonnelRegistered():  # one record per person, merged
            same = [i for i, p in enumerate(view.personnel) if p.person_id == event.person_id]
            if same:
                known = view.personnel[same[0]]
                dates = {f: getattr(known, f) for f in PERSON_DATES}
                known.MergeFrom(event)
                for f, earlier in dates.items():  # a later date never replaces an earlier one
                    if earlier and getattr(event, f):
                        setattr(known, f, min(earlier, getattr(event, f)))
                if not dates["on_file_since"]:  # on file since the system's start (REG-9)
                    known.on_file_since = ""
            else:
                view.personnel.append(event)
        case reg.ClassificationSet():
            view.classification.CopyFrom(event.classification)
        case reg.InspectionRecorded():
            view.inspections.append(event)
        case reg.CommandRefused():
            refusal = {"command": event.command, "on": on, **MessageToDict(env.refusal)}
            doc["refusals"].append(refusal)
    if view.system_id:
        doc["view"] = MessageToDict(view, preserving_proto_field_name=True)
    return doc


texts = st.sampled_from(["", "a", "b", "2024-02-01", "2024-01-15", "武汉"])
cameras_ids = st.sampled_from(["c1", "c2", "c9", ""])
floats = st.sampled_from([0.0, -0.0, 1.5, 114.3, -30.25, math.inf, -math.inf, math.nan])
points = st.builds(reg.GeoPoint, longitude=floats, latitude=floats, crs=texts)
sites = st.builds(
    reg.Site, site_id=texts, category=texts, address=texts, address_code=texts, location=points
)
cameras = st.builds(
    reg.Camera, camera_id=cameras_ids, device_type=texts, location=points,
    address_code=texts, place=texts, orientation_deg=floats, function=texts, position=texts,
)  # fmt: skip
placements = st.builds(
    reg.CameraPlacement, camera_id=cameras_ids, location=st.one_of(st.none(), points),
    address_code=texts,
)  # fmt: skip
many = st.lists(texts, max_size=3)
EVENTS = st.one_of(
    st.builds(
        reg.SystemRegistered, system_id=st.sampled_from(["", "sys-1"]), name=texts,
        managing_unit=texts, operator=texts, site=st.one_of(st.none(), sites),
        cameras=st.lists(cameras, max_size=3), construction_project=texts,
        pre_existing=st.booleans(), built_on=texts, registered_on=texts,
        connects_to_sharing_platform=st.booleans(),
    ),
    st.builds(reg.SystemFiled, filed_on=texts, receiving_agency=texts, contents=many),
    st.builds(reg.DesignReviewed, passed=st.booleans(), reviewed_on=texts, reviewers=many),
    st.builds(reg.ConstructionCompleted, completed_on=texts),
    st.builds(reg.AcceptanceRecorded, passed=st.booleans(), accepted_on=texts, defects=many),
    st.builds(reg.RectificationCompleted, completed_on=texts, notes=texts),
    st.builds(reg.SystemPutIntoUse, in_use_on=texts),
    st.builds(
        reg.ChangeFiled, camera_id=cameras_ids, attribute=st.sampled_from(["position", "function"]),
        new_value=texts, approval_ref=texts,
    ),
    st.builds(
        reg.ChangeFiled, camera_id=cameras_ids, attribute=st.just("orientation"),
        new_value=st.sampled_from(["0", "-0", "90.5", "1e3", "nan", "-inf"]),
    ),
    st.builds(
        reg.SystemRelocated, new_site=st.one_of(st.none(), sites), relocated_on=texts,
        placements=st.lists(placements, max_size=3),
    ),
    st.builds(reg.SystemRemoved, removed_on=texts, reason=texts),
    st.builds(reg.ArchiveAttached, kind=texts, sha256=texts, units=many, technicians=many),
    st.builds(reg.SignageInstalled, camera_ids=st.lists(cameras_ids, max_size=3), installed_on=texts),
    st.builds(
        reg.MonitoringPersonnelRegistered, person_id=texts, name=texts, trained_on=texts,
        on_file_since=texts,
    ),
    st.builds(
        reg.ClassificationSet, set_on=texts,
        classification=st.one_of(st.none(), st.builds(
            reg.Classification, security_key_unit=st.booleans(),
            security_level=st.integers(0, 5), data_grade=texts,
        )),
    ),
    st.builds(reg.InspectionRecorded, inspection_id=texts, scope=many, outcome=texts),
    st.builds(reg.CommandRefused, command=texts, summary=texts),
)  # fmt: skip


def envelope(version: int, event: Message) -> pb.EventEnvelope:
    env = pb.EventEnvelope(stream_version=version, type=event.DESCRIPTOR.full_name)
    env.occurred_at.FromDatetime(START + timedelta(hours=version * 7))
    if isinstance(event, reg.CommandRefused):
        env.refusal.CopyFrom(pb.Citation(rule="r", article="a 1", spec="REG-4", reason="no"))
    return env


def numbered(cameras: list[reg.Camera]) -> list[reg.Camera]:
    for i, camera in enumerate(cameras, start=1):
        camera.camera_id = f"c{i}"  # so that changes and signs find them
    return cameras


REGISTERED = st.builds(
    reg.SystemRegistered, system_id=st.just("sys-1"), site=sites,
    cameras=st.lists(cameras, min_size=2, max_size=3).map(numbered),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.just([]), REGISTERED.map(lambda r: [r])),
    st.lists(EVENTS, max_size=14),
    st.lists(st.booleans(), min_size=15, max_size=15),
)
def test_json_folds_equal_the_systemview_fold(
    first: list[Message], more: list[Message], reloads: list[bool]
) -> None:
    """In place on one document, or on documents read back from the store: the same bytes."""
    events = first + more
    doc: Document | None = None
    expected: Document | None = None
    for version, (event, reload) in enumerate(zip(events, reloads, strict=False), start=1):
        env = envelope(version, event)
        expected = reference_fold(expected, event, env)
        if reload and doc is not None:
            doc = json.loads(canonical_json(doc))  # as the runner gets it from the read store
        doc = fold_system(doc, event, env)
        assert canonical_json(doc) == canonical_json(expected), type(event).__name__


def registration() -> reg.SystemRegistered:
    point = reg.GeoPoint(longitude=114.3, latitude=30.6)
    return reg.SystemRegistered(
        system_id="sys-1", name="Gate", managing_unit="unit-a", operator="Op",
        site=reg.Site(site_id="s-1", category="other", location=point),
        cameras=[reg.Camera(camera_id="c1", location=point, orientation_deg=90.0)],
        registered_on="2024-01-02",
    )  # fmt: skip


def test_view_is_the_proto3_json_of_the_system_view() -> None:
    events: list[Any] = [
        registration(),
        reg.ArchiveAttached(kind="design", sha256="ab", units=["unit-a"]),
        reg.ChangeFiled(camera_id="c1", attribute="orientation", new_value="0"),
        reg.SignageInstalled(camera_ids=["c1"], installed_on="2024-02-01"),
    ]
    doc: Document | None = None
    for version, event in enumerate(events, start=1):
        doc = fold_system(doc, event, envelope(version, event))
    assert doc is not None
    view = doc["view"]
    assert view["version"] == "4" and view["state"] == domain.PLANNED
    assert view["cameras"] == [
        {"camera_id": "c1", "location": {"longitude": 114.3, "latitude": 30.6}}
    ]  # orientation 0 is the default, so proto3 JSON leaves it out
    assert view["archives"] == [{"kind": "design", "sha256": "ab", "units": ["unit-a"]}]
    assert doc["signage"] == {"c1": "2024-02-01"}
    assert view_of(doc).signed_camera_ids == ["c1"]


def test_reg2_a_relocation_places_the_cameras_and_an_older_one_leaves_them() -> None:
    """A relocation recorded before relocations placed cameras still folds: the site moves and
    the cameras stay where they were; one that places them moves them (REG-2)."""
    east = reg.Site(site_id="s-2", category="other", address_code="420111")
    old = reg.SystemRelocated(new_site=east, relocated_on="2024-06-30")
    placed = reg.SystemRelocated(new_site=east, relocated_on="2024-07-30", placements=[
        reg.CameraPlacement(camera_id="c1", address_code="420111001",
                            location=reg.GeoPoint(longitude=114.41, latitude=30.51)),
    ])  # fmt: skip
    doc = fold_system(None, registration(), envelope(1, registration()))
    doc = fold_system(doc, old, envelope(2, old))
    view = view_of(doc)
    assert view.site.site_id == "s-2" and view.cameras[0] == registration().cameras[0]
    doc = fold_system(doc, placed, envelope(3, placed))
    (c1,) = view_of(doc).cameras
    assert (c1.address_code, c1.location.longitude, c1.orientation_deg) == (
        "420111001",
        114.41,
        90.0,
    )


def test_site_declaration_is_the_document_of_its_site() -> None:
    declared = reg.MandatorySiteDeclared(
        site=reg.Site(site_id="s-9", category="school"), declared_on="2024-01-01"
    )
    doc = fold_site(None, declared, envelope(1, declared))
    assert doc == {"site": {"site_id": "s-9", "category": "school"}, "declared_on": "2024-01-01"}
    refused = reg.CommandRefused(command="DeclareMandatorySite")
    assert fold_site(doc, refused, envelope(2, refused)) is doc
    assert fold_site(None, refused, envelope(1, refused)) == {}


def test_reg3_a_withdrawn_sites_document_keeps_the_reason() -> None:
    declared = reg.MandatorySiteDeclared(site=reg.Site(site_id="s-9"), declared_on="2024-01-01")
    withdrawn = reg.MandatorySiteWithdrawn(withdrawn_on="2024-02-01", reason="the fair is over")
    doc = fold_site(
        fold_site(None, declared, envelope(1, declared)), withdrawn, envelope(2, withdrawn)
    )
    assert (doc["withdrawn_on"], doc["withdrawal_reason"]) == ("2024-02-01", "the fair is over")


def test_reg9_a_person_first_filed_without_a_date_stays_on_file_since_the_start() -> None:
    """A record made before on_file_since was kept has none: on file since the system's start,
    which a later registration of the person, dated, does not move (REG-9)."""
    old = reg.MonitoringPersonnelRegistered(person_id="p-1", name="Wang", trained_on="2024-02-01")
    again = reg.MonitoringPersonnelRegistered(person_id="p-1", on_file_since="2024-05-01")
    later = reg.MonitoringPersonnelRegistered(person_id="p-2", on_file_since="2024-05-01")
    doc = fold_system(None, registration(), envelope(1, registration()))
    for version, event in enumerate((old, again, later, again), start=2):
        doc = fold_system(doc, event, envelope(version, event))
    assert [(p.person_id, p.on_file_since) for p in view_of(doc).personnel] == [
        ("p-1", ""),
        ("p-2", "2024-05-01"),
    ]


def test_reg3_a_site_declared_again_keeps_its_earlier_declarations() -> None:
    first = reg.MandatorySiteDeclared(
        site=reg.Site(site_id="s-9", category="a"), declared_on="2024-01-01"
    )
    withdrawn = reg.MandatorySiteWithdrawn(withdrawn_on="2024-02-01", reason="over")
    again = reg.MandatorySiteDeclared(
        site=reg.Site(site_id="s-9", category="b"), declared_on="2024-03-01"
    )
    doc: Document | None = None
    for version, event in enumerate((first, withdrawn, again, withdrawn, again), start=1):
        doc = fold_site(doc, event, envelope(version, event))
    assert doc is not None and doc["declared_on"] == "2024-03-01" and "withdrawn_on" not in doc
    assert [
        (d["site"]["category"], d["declared_on"], d["withdrawn_on"]) for d in doc["earlier"]
    ] == [
        ("a", "2024-01-01", "2024-02-01"),
        ("b", "2024-03-01", "2024-02-01"),
    ]
    assert all("earlier" not in d for d in doc["earlier"])
