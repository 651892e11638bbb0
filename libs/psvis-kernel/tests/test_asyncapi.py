"""The event contract for partner agencies: docs/asyncapi.yaml is what the code generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from psvis.asyncapi import asyncapi_document, render
from psvis.cli.main import main
from psvis.common.v1 import envelope_pb2 as pb

CHECKED_IN = Path(__file__).resolve().parents[3] / "docs" / "asyncapi.yaml"
REGENERATE = ".venv/bin/psvis asyncapi --namespace psvis > docs/asyncapi.yaml"


def the_message(document: dict[str, Any]) -> dict[str, Any]:
    (message,) = document["components"]["messages"].values()
    return message  # type: ignore[no-any-return]


def test_checked_in_asyncapi_is_what_the_code_generates() -> None:
    generated = render(asyncapi_document("psvis"))
    assert CHECKED_IN.read_text(encoding="utf-8") == generated, (
        f"docs/asyncapi.yaml differs from the event contract in the code; if the change is "
        f"meant, regenerate it: {REGENERATE}"
    )


def test_contract_describes_protobuf_envelopes_with_their_headers_and_key() -> None:
    document = asyncapi_document("psvis").to_jsonable()
    assert document["asyncapi"] == "3.0.0"
    channel = document["channels"]["psvis.events"]
    assert channel["bindings"]["kafka"] == {
        "topic": "psvis.events",
        "partitions": 1,
        "bindingVersion": "0.4.0",
    }
    assert document["operations"]["psvis.events"]["action"] == "send"
    message = the_message(document)
    assert message["contentType"] == "application/x-protobuf"
    assert set(message["headers"]["properties"]) == {"psvis-position", "traceparent", "tracestate"}
    assert "stream id" in message["bindings"]["kafka"]["key"]["description"]
    payload = document["components"]["schemas"]["EventEnvelope"]
    assert payload["format"] == "binary"
    assert payload["x-protobuf-message"] == "psvis.common.v1.EventEnvelope"
    for field in pb.EventEnvelope.DESCRIPTOR.fields:
        assert f"`{field.name}`" in payload["description"]


def test_cli_prints_the_contract_as_json_for_a_namespace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["asyncapi", "--json", "--namespace", "city-a", "--server", "k1:9092"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert list(document["channels"]) == ["city-a.events"]
    assert document["servers"]["development"]["host"] == "k1:9092"


def test_cli_prints_yaml_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["asyncapi", "--namespace", "psvis"]) == 0
    assert capsys.readouterr().out == CHECKED_IN.read_text(encoding="utf-8")
