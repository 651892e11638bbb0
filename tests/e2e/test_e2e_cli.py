"""The `psvis registry` commands against a running platform, as a user's shell runs them."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from e2e_kit import site, system
from google.protobuf.json_format import MessageToDict
from psvis.server import RunningPlatform
from psvis.settings import Settings


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


async def psvis(
    platform: RunningPlatform,
    settings: Settings,
    *args: str,
    identity: str = "dev-unit",
    pki: Path | None = None,
) -> Run:
    """One `psvis registry ...` in a process of its own (the platform runs in this one)."""
    connection = [
        "--server",
        f"localhost:{platform.port}",
        "--pki",
        str(pki or settings.pki_dir),
        "--as",
        identity,
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "psvis.cli.main", "registry", *args, *connection,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert "Traceback" not in err.decode(), err.decode()
    return Run(proc.returncode or 0, out.decode(), err.decode())


async def test_a_unit_files_and_moves_a_system_through_the_cli(platform, settings):
    registered = MessageToDict(system("gate-1"), preserving_proto_field_name=True)
    run = await psvis(platform, settings, "register", "--data", json.dumps(registered), "--json")
    assert run.status == 0 and run.json["stream_id"] == "system-gate-1", run.stderr
    assert run.json["version"] == "1"
    for step in (["build", "gate-1", "--on", "2024-01-10"],
                 ["accept", "gate-1", "--on", "2024-01-15", "--passed"],
                 ["use", "gate-1", "--on", "2024-02-01"]):  # fmt: skip
        run = await psvis(platform, settings, *step)
        assert run.status == 0 and run.stdout.startswith("ok: system-gate-1 is at version"), run
    view = (await psvis(platform, settings, "get", "gate-1", "--json")).json
    assert (view["state"], view["in_use_on"], view["version"]) == ("in_use", "2024-02-01", "4")
    text = await psvis(platform, settings, "get", "gate-1")
    assert "gate-1  Gate cameras  [in_use]  v4" in text.stdout


async def test_flags_replace_the_lists_of_the_json_payload(platform, settings):
    registered = MessageToDict(system("gate-2"), preserving_proto_field_name=True)
    await psvis(platform, settings, "register", "--data", json.dumps(registered))
    payload = json.dumps({"camera_ids": ["cam-x"], "installed_on": "2024-01-01"})
    run = await psvis(platform, settings, "signage", "gate-2", "--camera", "cam-1", "--on", "2024-01-20",
                      "--data", payload)  # fmt: skip
    assert run.status == 0, run.stderr  # cam-x (no such camera) was replaced, not added to
    view = (await psvis(platform, settings, "get", "gate-2", "--json")).json
    assert view["signed_camera_ids"] == ["cam-1"]


async def test_json_output_keeps_its_keys_when_empty(platform, settings):
    run = await psvis(
        platform, settings, "list", "--unit", "nobody", "--json", identity="dev-police"
    )
    assert run.status == 0 and run.json == {"systems": [], "next_page_token": ""}, run
    text = await psvis(platform, settings, "list", "--unit", "nobody", identity="dev-police")
    assert text.stdout.strip() == "no systems"


async def test_errors_reach_a_json_reader_on_stdout_and_a_person_on_stderr(platform, settings):
    refused = await psvis(
        platform, settings, "use", "no-such-system", "--on", "2024-01-01", "--json"
    )
    assert refused.status == 1
    assert refused.json["error"]["code"] == "NOT_FOUND"
    assert "no-such-system" in refused.json["error"]["message"]
    assert "error: NOT_FOUND" in refused.stderr
    denied = await psvis(platform, settings, "cameras", "--json")  # dev-unit: not the police
    assert denied.status == 1 and denied.json["error"]["code"] == "PERMISSION_DENIED"
    unknown = await psvis(platform, settings, "list", "--json", identity="nobody-here")
    assert unknown.status == 2 and unknown.json["error"]["code"] == "CLIENT_ERROR"
    assert "nobody-here.crt is missing; start the platform once" in unknown.json["error"]["message"]
    assert "nobody-here.crt is missing" in unknown.stderr


async def test_a_construction_projects_milestone_through_the_cli(platform, settings):
    """REG-5: `psvis registry milestone` records a step of the main works; a bad step is the
    parser's usage error (exit 2), a repeated one the server's ALREADY_EXISTS (exit 1)."""
    run = await psvis(platform, settings, "milestone", "plaza-2", "--step", "built", "--on",
                      "2024-03-01", "--json")  # fmt: skip
    assert run.status == 0 and run.json["stream_id"] == "project-plaza-2", run
    assert run.json["version"] == "1"
    run = await psvis(
        platform, settings, "milestone", "plaza-2", "--step", "opened", "--on", "2024-03-01"
    )
    assert run.status == 2 and "invalid choice: 'opened'" in run.stderr, run
    run = await psvis(
        platform, settings, "milestone", "plaza-2", "--step", "built", "--on", "2024-03-02"
    )
    assert run.status == 1 and "ALREADY_EXISTS" in run.stderr, run
    assert "already built on 2024-03-01" in run.stderr, run


@pytest.mark.parametrize(
    ("damaged", "what"),
    [("dev-unit.crt", "certificate"), ("dev-unit.key", "private key"), ("ca.crt", "certificate")],
)
async def test_a_certificate_or_key_file_that_is_not_pem_is_named(
    platform, settings, tmp_path, damaged, what
):
    """Not gRPC's "UNAVAILABLE: empty address list": the file at fault, in one line, as the
    user's TLS configuration found wrong before calling (exit 2, as a missing file is)."""
    pki = tmp_path / "copied-pki"
    shutil.copytree(settings.pki_dir, pki)
    (pki / damaged).write_text("Zm9vYmFyIHJhbmRvbSB0ZXh0\nnot a PEM file at all\n")
    run = await psvis(platform, settings, "list", "--json", pki=pki)
    assert run.status == 2 and run.json["error"]["code"] == "CLIENT_ERROR", run
    message = run.json["error"]["message"]
    assert message == f"{pki / damaged} is not a valid PEM {what}", message
    assert "address" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    swapped = "dev-unit.key" if damaged.endswith(".crt") else "dev-unit.crt"  # PEM, but not this
    shutil.copyfile(settings.pki_dir / swapped, pki / damaged)
    run = await psvis(platform, settings, "list", "--json", pki=pki)
    assert run.status == 2 and f"{pki / damaged} is not a valid PEM {what}" in run.stderr, run


async def test_an_encrypted_key_file_is_named_as_such(platform, settings, tmp_path):
    """gRPC takes no password: the user is told to give the key unencrypted."""
    pki = tmp_path / "copied-pki"
    shutil.copytree(settings.pki_dir, pki)
    key = serialization.load_pem_private_key((pki / "dev-unit.key").read_bytes(), None)
    locked = serialization.BestAvailableEncryption(b"a passphrase")
    (pki / "dev-unit.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, locked)
    )
    run = await psvis(platform, settings, "list", pki=pki)
    assert run.status == 2, run
    assert f"{pki / 'dev-unit.key'} is an encrypted private key" in run.stderr, run.stderr


async def test_the_police_declare_and_withdraw_a_site_through_the_cli(platform, settings):
    """REG-3: a site declared for a trade fair, withdrawn once the fair is over."""
    fair = MessageToDict(
        site("fair", category="commerce_leisure_lodging"), preserving_proto_field_name=True
    )
    police = {"identity": "dev-police"}
    run = await psvis(platform, settings, "declare-site", "--on", "2024-03-01", "--data",
                      json.dumps({"site": fair}), **police)  # fmt: skip
    assert run.status == 0 and run.stdout.startswith("ok: site-fair is at version 1"), run
    run = await psvis(platform, settings, "withdraw-site", "fair", "--on", "2024-03-10",
                      "--reason", "the fair is over", "--json", **police)  # fmt: skip
    assert run.status == 0 and (run.json["stream_id"], run.json["version"]) == ("site-fair", "2")
    again = await psvis(platform, settings, "withdraw-site", "fair", "--on", "2024-03-11",
                        "--reason", "over", "--json", **police)  # fmt: skip
    assert again.status == 1 and again.json["error"]["code"] == "FAILED_PRECONDITION", again
    during = await psvis(platform, settings, "findings", "--as-of", "2024-03-09", **police)
    assert "open     REG-3  Wuhan 6(5)" in during.stdout and "site-fair" in during.stdout, during
    after = await psvis(platform, settings, "findings", "--as-of", "2024-03-10", **police)
    assert "resolved REG-3  Wuhan 6(5)" in after.stdout, after
    assert "until 2024-03-10, when its declaration was withdrawn: the fair is over" in after.stdout


async def test_reg3_declared_sites_are_read_with_get_site_and_sites(platform, settings):
    """REG-3: `get-site` shows a site's declaration with its article and its withdrawal, and
    `sites` lists them by address code, category and status; text, or JSON with --json."""
    police = {"identity": "dev-police"}
    for site_id, category, code in [("fair", "commerce_leisure_lodging", "420102001"),
                                    ("metro", "transport", "420103001")]:  # fmt: skip
        declared = MessageToDict(site(site_id, category=category, address_code=code),
                                 preserving_proto_field_name=True)  # fmt: skip
        run = await psvis(platform, settings, "declare-site", "--on", "2024-03-01", "--data",
                          json.dumps({"site": declared}), **police)  # fmt: skip
        assert run.status == 0, run
    await psvis(platform, settings, "withdraw-site", "fair", "--on", "2024-03-10", "--reason",
                "the fair is over", **police)  # fmt: skip
    text = await psvis(platform, settings, "get-site", "fair", **police)
    assert text.status == 0, text
    assert text.stdout.splitlines()[0] == "fair  commerce_leisure_lodging  [withdrawn]  v2"
    assert (
        "  declared 2024-03-01 a commerce_leisure_lodging site (Wuhan 6(5)),"
        " withdrawn 2024-03-10: the fair is over"
    ) in text.stdout.splitlines()
    view = (await psvis(platform, settings, "get-site", "fair", "--json", **police)).json
    assert (view["status"], view["version"], view["earlier"]) == ("withdrawn", "2", [])
    assert view["declaration"]["withdrawal"] == {
        "withdrawn_on": "2024-03-10",
        "reason": "the fair is over",
    }
    listed = await psvis(platform, settings, "sites", "--status", "in_force", "--json", **police)
    assert [s["site_id"] for s in listed.json["sites"]] == ["metro"], listed
    text = await psvis(platform, settings, "sites", "--address-code", "420102", **police)
    (row,) = text.stdout.splitlines()
    assert row.startswith("fair ") and "withdrawn" in row and "Wuhan 6(5)" in row, row
    paged = await psvis(platform, settings, "sites", "--limit", "1", **police)
    assert paged.stdout.splitlines()[1] == "more: --page-token 1", paged
    none = await psvis(platform, settings, "sites", "--category", "transport",
                       "--address-code", "4202", **police)  # fmt: skip
    assert none.stdout.strip() == "no sites", none
    unknown = await psvis(platform, settings, "get-site", "nowhere", "--json", **police)
    assert unknown.status == 1 and unknown.json["error"]["code"] == "NOT_FOUND", unknown
    assert "no site 'nowhere' is declared mandatory" in unknown.json["error"]["message"]
    bad = await psvis(platform, settings, "sites", "--category", "casino", **police)
    assert bad.status == 1 and "INVALID_ARGUMENT" in bad.stderr and "category" in bad.stderr
    usage = await psvis(platform, settings, "sites", "--status", "open", **police)
    assert usage.status == 2 and "invalid choice: 'open'" in usage.stderr, usage
    denied = await psvis(platform, settings, "sites", "--json")  # dev-unit: not the police
    assert denied.status == 1 and denied.json["error"]["code"] == "PERMISSION_DENIED", denied
    helped = await psvis(platform, settings, "sites", "--help")
    assert helped.status == 0 and "--status {declared,in_force,withdrawn}" in helped.stdout, helped


async def test_reg2_a_relocation_places_each_camera_given_by_flags(platform, settings):
    """REG-2 (Guangzhou 16 para 2): `relocate --camera ID=LON,LAT,CODE` says where each camera
    stands after the move, and the police's camera search finds it there."""
    registered = MessageToDict(system("gate-3"), preserving_proto_field_name=True)
    await psvis(platform, settings, "register", "--data", json.dumps(registered))
    east = {"new_site": {"site_id": "s-east", "category": "other", "address": "9 East Rd",
                         "address_code": "420111", "location": {"longitude": 114.4, "latitude": 30.5}}}  # fmt: skip
    move = ["relocate", "gate-3", "--on", "2024-06-30", "--reported-on", "2024-06-10",
            "--data", json.dumps(east)]  # fmt: skip
    unplaced = await psvis(platform, settings, *move, "--json")
    assert unplaced.status == 1 and unplaced.json["error"]["code"] == "INVALID_ARGUMENT"
    assert "cam-1" in unplaced.json["error"]["message"]
    garbled = await psvis(platform, settings, *move, "--camera", "cam-1=114.41;30.51")
    assert garbled.status == 2 and "CAMERA_ID=LONGITUDE,LATITUDE,ADDRESS_CODE" in garbled.stderr
    run = await psvis(platform, settings, *move, "--camera", "cam-1=114.41,30.51,420111001")
    assert run.status == 0 and "system-gate-3 is at version 2" in run.stdout, run.stderr
    found = await psvis(platform, settings, "cameras", "--address-code", "420111", "--json",
                        identity="dev-police")  # fmt: skip
    (hit,) = found.json["cameras"]
    assert (hit["system_id"], hit["camera"]["camera_id"]) == ("gate-3", "cam-1")
    assert hit["camera"]["location"] == {"longitude": 114.41, "latitude": 30.51, "crs": ""}
    assert hit["camera"]["address_code"] == "420111001"


async def test_reg9_personnel_are_on_file_from_the_day_given_by_on(platform, settings):
    """REG-9: `personnel --on` is the day the person was put on file, required like every
    command's date; findings as of that day on see them."""
    registered = MessageToDict(system("gate-4"), preserving_proto_field_name=True)
    await psvis(platform, settings, "register", "--data", json.dumps(registered))
    who = ["personnel", "gate-4", "--person", "p-1", "--name", "Wang Li", "--duty", "monitoring"]
    run = await psvis(platform, settings, *who)
    assert run.status == 2 and "--on" in run.stderr, run
    run = await psvis(platform, settings, *who, "--on", "2024-03-05", "--trained-on", "2024-03-01")
    assert run.status == 0 and "system-gate-4 is at version 2" in run.stdout, run.stderr
    view = (await psvis(platform, settings, "get", "gate-4", "--json")).json
    assert [p["on_file_since"] for p in view["personnel"]] == ["2024-03-05"]


async def test_reg2_list_and_cameras_are_read_a_page_at_a_time(platform, settings):
    """REG-2: `list` and `cameras` print a page of --limit rows and, when there is more, the
    --page-token that gives the next page; that page follows on where the first one ended."""
    for name in ("p-1", "p-2", "p-3"):
        registered = MessageToDict(system(name), preserving_proto_field_name=True)
        run = await psvis(platform, settings, "register", "--data", json.dumps(registered))
        assert run.status == 0, run
    first = await psvis(platform, settings, "list", "--limit", "2")
    *rows, more = first.stdout.splitlines()
    assert [r.split()[0] for r in rows] == ["p-1", "p-2"] and more == "more: --page-token 2"
    last = await psvis(platform, settings, "list", "--limit", "2", "--page-token", "2")
    assert [r.split()[0] for r in last.stdout.splitlines()] == ["p-3"], last
    police = {"identity": "dev-police"}
    cameras = await psvis(platform, settings, "cameras", "--limit", "2", "--json", **police)
    token = cameras.json["next_page_token"]
    rest = await psvis(platform, settings, "cameras", "--page-token", token, "--json", **police)
    seen = [h["system_id"] for h in cameras.json["cameras"] + rest.json["cameras"]]
    assert sorted(seen) == ["p-1", "p-2", "p-3"] and not rest.json["next_page_token"], rest
    bad = await psvis(platform, settings, "list", "--address-code", "42 01")
    assert bad.status == 1 and "INVALID_ARGUMENT" in bad.stderr and "address_code" in bad.stderr
