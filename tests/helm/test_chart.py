"""The Helm chart (helm/psvis): linted, rendered, and the rendered manifests checked against
the Kubernetes API's own models (the `kubernetes` client's) and against what psvis reads."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml
from psvis.cli.main import build_parser
from psvis.platform import discover_services
from psvis.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "psvis"
CI_VALUES = CHART / "ci" / "distributed-values.yaml"


@cache
def helm() -> str:
    """The pinned helm, built into the cache by the project's script on first use."""
    built = subprocess.run(
        [str(REPO / "scripts" / "install-helm.sh")], capture_output=True, text=True, timeout=900
    )
    assert built.returncode == 0, f"scripts/install-helm.sh failed:\n{built.stderr}"
    return built.stdout.strip()


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def render(*sets: str) -> list[dict[str, Any]]:
    flags = [f"--set={s}" for s in sets]
    out = run_helm("template", "city", str(CHART), "-f", str(CI_VALUES), *flags)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def check(value: Any, kind: str, where: str) -> list[str]:
    """What in `value` does not fit the API type `kind` (a model name, 'list[...]',
    'dict(str, ...)' or a primitive): unknown fields, wrong types."""
    if kind.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: a list is wanted, not {value!r}"]
        return [p for i, v in enumerate(value) for p in check(v, kind[5:-1], f"{where}[{i}]")]
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{where}: a mapping is wanted, not {value!r}"]
        inner = kind[len("dict(str, ") : -1]
        return [p for k, v in value.items() for p in check(v, inner, f"{where}.{k}")]
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if kind in primitives:
        ok = isinstance(value, primitives[kind]) and not (kind == "int" and value is True)
        return [] if ok else [f"{where}: {kind} wanted, not {value!r}"]
    if kind == "object":  # IntOrString and free-form fields
        return []
    model = getattr(k8s, kind)
    if not isinstance(value, dict):
        return [f"{where}: a {kind} mapping is wanted, not {value!r}"]
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    problems = []
    for key, inner in value.items():
        if key not in fields:
            problems.append(f"{where}.{key}: no such field in {kind}")
        else:
            problems += check(inner, model.openapi_types[fields[key]], f"{where}.{key}")
    return problems


def model_of(doc: dict[str, Any]) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return f"{version.capitalize()}{doc['kind']}"


class _Response:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.data = json.dumps(doc)


def test_the_chart_lints_strictly() -> None:
    out = run_helm("lint", "--strict", str(CHART), "-f", str(CI_VALUES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_rendered_manifests_fit_the_kubernetes_api() -> None:
    docs = render()
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "city-psvis-registry"),
        ("Service", "city-psvis-registry"),
    ]
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert check(doc, model_of(doc), name) == []
        # the client's own deserialiser also refuses missing required fields and bad enums
        k8s.ApiClient().deserialize(_Response(doc), model_of(doc))


def test_the_checker_finds_what_the_api_would_refuse() -> None:
    [deployment] = [d for d in render() if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicy"] = ["IfNotPresent"]
    container["portz"] = []
    assert check(deployment, "V1Deployment", "d") == [
        "d.spec.template.spec.containers[0].imagePullPolicy: str wanted, not ['IfNotPresent']",
        "d.spec.template.spec.containers[0].portz: no such field in V1Container",
    ]
    del deployment["spec"]["selector"]
    with pytest.raises(ValueError, match="selector"):
        k8s.ApiClient().deserialize(_Response(deployment), "V1Deployment")


def test_each_service_runs_psvis_serve_as_the_cli_reads_it() -> None:
    """The container's command line parses with psvis's own parser, names an installed service,
    and mounts the certificates and the notary key where the server looks for them."""
    [deployment] = [d for d in render() if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["psvis", "serve"]
    args = build_parser().parse_args(["serve", *container["args"]])
    assert args.backend == "distributed" and args.services == ["registry"]
    assert {s.name for s in discover_services()} >= set(args.services)
    assert args.kafka_bootstrap == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert [e["name"] for e in container["env"]] == ["PSVIS_MONGO_URL"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "psvis-mongo", "key": "url"}

    settings = Settings(data_dir=args.data_dir)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    pki = volumes[mounts[str(settings.pki_dir)]]["secret"]
    assert pki["secretName"] == "psvis-tls"
    assert {i["path"] for i in pki["items"]} == {"ca.crt", "server.crt", "server.key"}
    keys = volumes[mounts[str(settings.notary_key.parent)]]["secret"]
    assert keys["secretName"] == "psvis-notary"
    assert settings.notary_key.name in {i["path"] for i in keys["items"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.listen == f"0.0.0.0:{ports['grpc']}"
    assert args.metrics_listen == f"0.0.0.0:{ports['metrics']}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_a_mongo_url_given_inline_and_a_rules_folder_are_passed_as_is() -> None:
    [deployment] = [d for d in render("mongo.existingSecret=", "mongo.url=mongodb://m:27017/",
                                      "rulesDir=/opt/psvis/rules")
                    if d["kind"] == "Deployment"]  # fmt: skip
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "PSVIS_MONGO_URL", "value": "mongodb://m:27017/"},
        {"name": "PSVIS_RULES_DIR", "value": "/opt/psvis/rules"},
    ]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["kafka.bootstrap="], "kafka.bootstrap is required"),
        (["tls.secretName="], "tls.secretName is required"),
        (["notary.secretName="], "notary.secretName is required"),
        (["mongo.existingSecret="], "mongo.url or mongo.existingSecret is required"),
        (["services.registry.replicas=-1"], "Must be greater than or equal to 0"),
        (["mongo.url=http://m"], "mongo.url: Does not match pattern"),
        (["kafka.bootstrap=kafka"], "kafka.bootstrap: Does not match pattern"),
        (["grpcPort=0"], "grpcPort: Must be greater than or equal to 1"),
        (["city=Wu Han"], "city: Does not match pattern"),
        (["replicas=1"], "Additional property replicas is not allowed"),
        (
            ["services.Reg_X.enabled=true", "services.Reg_X.replicas=1"],
            'Property name of "Reg_X" does not match',
        ),
    ],
)
def test_values_that_cannot_work_are_refused_by_name(sets: list[str], message: str) -> None:
    flags = [f"--set={s}" for s in sets]
    out = run_helm("template", "city", str(CHART), "-f", str(CI_VALUES), *flags)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_pod_annotations_join_the_scrape_ones_without_repeating_a_key() -> None:
    flags = [
        "--set-string=podAnnotations.team=video",
        "--set-string=podAnnotations.prometheus\\.io/path=/m",
    ]
    out = run_helm("template", "city", str(CHART), "-f", str(CI_VALUES), *flags)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("prometheus.io/path:") == 1  # YAML would keep only one of two
    [deployment] = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "team": "video",
        "prometheus.io/path": "/m",
        "prometheus.io/port": "9464",
        "prometheus.io/scrape": "true",
    }
